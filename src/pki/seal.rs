//! Seals: HMAC-SHA256 tags by an operator-held key over records that live in
//! places tenants can write (a grant's annotations and status).
//!
//! Writ's mutating webhook seals the admission stamps it writes and the
//! controller seals the status it records; the controller then trusts such a
//! record only when its seal verifies. A MAC (not a signature) is enough: only
//! Writ's replicas make and check seals, and they share the key through a
//! Secret in the operator's namespace.
//!
//! A [`SealKeys`] set holds the current key and earlier keys still accepted
//! after a rotation, each named by a key id that every seal carries.

use std::collections::BTreeMap;

use aws_lc_rs::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};
use serde::{Deserialize, Serialize};

use super::{b64url, b64url_decode, PkiError};
use crate::api::names::SEAL_KEYS_KEY;

/// Bytes of key material per seal key (HMAC-SHA256's block-sized key).
const KEY_BYTES: usize = 32;

/// The version prefix of every seal.
const VERSION: &str = "v1";

/// One seal key as stored.
#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// base64url key material.
    key: String,
    /// Unix seconds after which seals made with it are no longer accepted
    /// (`None` for the current key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retire_after: Option<i64>,
}

/// The seal keys: the current one (which seals) and retired ones (which only verify).
#[derive(Clone)]
pub struct SealKeys {
    /// Current key last.
    keys: Vec<(StoredKey, hmac::Key)>,
}

impl std::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.kid.as_str()).collect();
        f.debug_struct("SealKeys").field("kids", &kids).finish_non_exhaustive()
    }
}

/// Why a seal does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No seal where one is required.
    #[error("no seal")]
    Missing,
    /// The seal is not `v1.<kid>.<tag>`.
    #[error("the seal is malformed")]
    Malformed,
    /// The seal names a key this operator does not hold (or no longer accepts).
    #[error("the seal was made with an unknown key")]
    UnknownKey,
    /// The tag does not match the record: something sealed was changed.
    #[error("the seal does not match the sealed fields")]
    Mismatch,
}

fn new_key(rng: &SystemRandom) -> Result<StoredKey, PkiError> {
    let mut raw = [0u8; KEY_BYTES];
    rng.fill(&mut raw).map_err(|_| PkiError::Key("no randomness for a seal key".into()))?;
    let mut id = [0u8; 8];
    rng.fill(&mut id).map_err(|_| PkiError::Key("no randomness for a seal key id".into()))?;
    Ok(StoredKey { kid: b64url(&id), key: b64url(&raw), retire_after: None })
}

fn load(stored: StoredKey) -> Result<(StoredKey, hmac::Key), PkiError> {
    let raw =
        b64url_decode(&stored.key).map_err(|_| PkiError::Key(format!("seal key {} is not base64url", stored.kid)))?;
    if raw.len() != KEY_BYTES {
        return Err(PkiError::Key(format!("seal key {} is not {KEY_BYTES} bytes", stored.kid)));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, &raw);
    Ok((stored, key))
}

/// The message a tag covers: the purpose, then every field length-prefixed,
/// so no two different field lists encode alike.
fn message(purpose: &str, fields: &[&str]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + fields.iter().map(|f| f.len() + 8).sum::<usize>());
    for part in std::iter::once(purpose).chain(fields.iter().copied()) {
        m.extend_from_slice(part.len().to_string().as_bytes());
        m.push(b':');
        m.extend_from_slice(part.as_bytes());
        m.push(b'\n');
    }
    m
}

impl SealKeys {
    /// A new set with one fresh key.
    pub fn generate() -> Result<Self, PkiError> {
        let rng = SystemRandom::new();
        Ok(Self { keys: vec![load(new_key(&rng)?)?] })
    }

    /// Reads the set from Secret data ([`SEAL_KEYS_KEY`]).
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, PkiError> {
        let raw = data.get(SEAL_KEYS_KEY).ok_or_else(|| PkiError::Key(format!("the Secret has no {SEAL_KEYS_KEY}")))?;
        let stored: Vec<StoredKey> = serde_json::from_slice(raw).map_err(PkiError::Json)?;
        if stored.is_empty() {
            return Err(PkiError::Key("the seal key set is empty".into()));
        }
        Ok(Self { keys: stored.into_iter().map(load).collect::<Result<_, _>>()? })
    }

    /// The set as Secret data.
    pub fn to_secret_data(&self) -> Result<BTreeMap<String, Vec<u8>>, PkiError> {
        let stored: Vec<&StoredKey> = self.keys.iter().map(|(k, _)| k).collect();
        Ok([(SEAL_KEYS_KEY.to_string(), serde_json::to_vec(&stored).map_err(PkiError::Json)?)].into())
    }

    /// The current key's id.
    pub fn current_kid(&self) -> &str {
        self.keys.last().map(|(k, _)| k.kid.as_str()).unwrap_or_default()
    }

    /// Makes a new current key; the previous one keeps verifying until
    /// `now + keep_secs` (long enough for every record it sealed to be
    /// re-sealed or to end). Retired keys past their time are dropped.
    pub fn rotate(&mut self, now: i64, keep_secs: i64) -> Result<(), PkiError> {
        let rng = SystemRandom::new();
        self.keys.retain(|(k, _)| k.retire_after.is_none_or(|t| t >= now));
        if let Some((last, _)) = self.keys.last_mut() {
            last.retire_after = Some(now + keep_secs);
        }
        self.keys.push(load(new_key(&rng)?)?);
        Ok(())
    }

    /// Seals `fields` for `purpose` with the current key: `v1.<kid>.<tag>`.
    pub fn seal(&self, purpose: &str, fields: &[&str]) -> String {
        let Some((stored, key)) = self.keys.last() else { return String::new() };
        let tag = hmac::sign(key, &message(purpose, fields));
        format!("{VERSION}.{}.{}", stored.kid, b64url(tag.as_ref()))
    }

    /// Checks a seal made by [`SealKeys::seal`] over the same `purpose` and
    /// `fields`, with a key still accepted at `now`. Constant-time in the tag.
    pub fn verify(&self, purpose: &str, fields: &[&str], seal: &str, now: i64) -> Result<(), SealError> {
        let mut parts = seal.splitn(3, '.');
        let (Some(VERSION), Some(kid), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Malformed);
        };
        let tag = b64url_decode(tag).map_err(|_| SealError::Malformed)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| k.kid == kid && k.retire_after.is_none_or(|t| t >= now))
            .ok_or(SealError::UnknownKey)?;
        hmac::verify(key, &message(purpose, fields), &tag).map_err(|_| SealError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_verifies_over_the_same_fields_only() {
        let keys = SealKeys::generate().expect("keys");
        let seal = keys.seal("grant", &["ns", "name", "alice"]);
        assert!(seal.starts_with("v1."), "{seal}");
        assert_eq!(keys.verify("grant", &["ns", "name", "alice"], &seal, 0), Ok(()));
        assert_eq!(keys.verify("grant", &["ns", "name", "mallory"], &seal, 0), Err(SealError::Mismatch));
        assert_eq!(keys.verify("status", &["ns", "name", "alice"], &seal, 0), Err(SealError::Mismatch));
        // Length prefixes: moving a boundary between fields changes the message.
        assert_eq!(keys.verify("grant", &["ns", "namealice", ""], &seal, 0), Err(SealError::Mismatch));
        assert_eq!(keys.verify("grant", &["ns", "name", "alice"], "v1.x.AAAA", 0), Err(SealError::UnknownKey));
        assert_eq!(keys.verify("grant", &["ns", "name", "alice"], "garbage", 0), Err(SealError::Malformed));
        let other = SealKeys::generate().expect("keys");
        assert_eq!(other.verify("grant", &["ns", "name", "alice"], &seal, 0), Err(SealError::UnknownKey));
    }

    #[test]
    fn a_rotated_key_verifies_until_it_retires_and_the_set_round_trips() {
        let mut keys = SealKeys::generate().expect("keys");
        let old = keys.seal("p", &["f"]);
        keys.rotate(1_000, 60).expect("rotate");
        let new = keys.seal("p", &["f"]);
        assert_ne!(old, new);
        let restored = SealKeys::from_secret_data(&keys.to_secret_data().expect("data")).expect("load");
        assert_eq!(restored.current_kid(), keys.current_kid());
        assert_eq!(restored.verify("p", &["f"], &old, 1_060), Ok(()));
        assert_eq!(restored.verify("p", &["f"], &old, 1_061), Err(SealError::UnknownKey));
        assert_eq!(restored.verify("p", &["f"], &new, 9_999_999), Ok(()));
        assert!(!format!("{restored:?}").contains(&keys.keys[0].0.key), "Debug never shows key material");
    }
}

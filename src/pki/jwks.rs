//! JSON Web Keys (RFC 7517) for Ed25519 (RFC 8037), and the rotating token-signing [`KeySet`].
//!
//! Rotation keeps old and new keys side by side: after [`KeySet::rotate`] the new key signs at
//! once, and the old public key stays in the published JWKS until every token it signed has
//! expired (`retire_after`), so resource servers never see a valid token with an unknown `kid`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pki::{b64url, b64url_decode, PkiError, SigningKey};

/// Secret data key holding the current signing key, PKCS#8 PEM.
pub const SECRET_KEY_SIGNING_KEY: &str = "signing-key.pem";
/// Secret data key holding the rotation state (previous public keys), JSON.
pub const SECRET_KEY_KEYSET: &str = "keyset.json";

/// One public key in JWK form. Writ only publishes Ed25519 signing keys:
/// `{"kty":"OKP","crv":"Ed25519","x":…,"kid":…,"use":"sig","alg":"EdDSA"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `OKP`.
    pub kty: String,
    /// Curve: `Ed25519`.
    pub crv: String,
    /// The public key, base64url without padding.
    pub x: String,
    /// Key ID: the RFC 7638 thumbprint.
    pub kid: String,
    /// Intended use: `sig`.
    #[serde(rename = "use", default)]
    pub use_: String,
    /// Algorithm: `EdDSA`.
    #[serde(default)]
    pub alg: String,
}

impl Jwk {
    /// The JWK of a 32-byte Ed25519 public key, `kid` set to its RFC 7638 thumbprint.
    pub fn ed25519(public_key: &[u8]) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: b64url(public_key),
            kid: Self::thumbprint_for(public_key),
            use_: "sig".into(),
            alg: "EdDSA".into(),
        }
    }

    /// The RFC 7638 thumbprint of an Ed25519 public key: base64url SHA-256 of
    /// `{"crv":"Ed25519","kty":"OKP","x":"<base64url key>"}`.
    pub fn thumbprint_for(public_key: &[u8]) -> String {
        Jwk::ed25519_thumbprint_of_x(&b64url(public_key))
    }

    /// The RFC 7638 thumbprint of this key, computed from its `crv`, `kty` and `x` (the required
    /// members for OKP keys, in lexicographic order, no whitespace).
    pub fn thumbprint(&self) -> String {
        let canonical = serde_json::json!({"crv": self.crv, "kty": self.kty, "x": self.x}).to_string();
        b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    fn ed25519_thumbprint_of_x(x: &str) -> String {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: x.into(),
            kid: String::new(),
            use_: String::new(),
            alg: String::new(),
        }
        .thumbprint()
    }

    /// The raw Ed25519 public key, if this JWK is one Writ can verify with: `kty` OKP, `crv`
    /// Ed25519, `alg` EdDSA (or absent), `use` sig (or absent), and a 32-byte `x`.
    pub fn ed25519_public_key(&self) -> Option<[u8; 32]> {
        if self.kty != "OKP" || self.crv != "Ed25519" {
            return None;
        }
        if !(self.alg.is_empty() || self.alg == "EdDSA") || !(self.use_.is_empty() || self.use_ == "sig") {
            return None;
        }
        b64url_decode(&self.x).ok()?.try_into().ok()
    }
}

/// A JWK Set (RFC 7517 §5): `{"keys":[…]}`, as served at `/.well-known/jwks.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys, current signing key first.
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// The key with this `kid`, if any.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// Parses a JWKS document.
    pub fn from_json(json: &str) -> Result<Self, PkiError> {
        Ok(serde_json::from_str(json)?)
    }

    /// Serialises to a JWKS document.
    pub fn to_json(&self) -> Result<String, PkiError> {
        Ok(serde_json::to_string(self)?)
    }
}

/// A previous signing key's public half, kept in the JWKS until `retire_after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetiredKey {
    /// The public key.
    pub jwk: Jwk,
    /// Unix seconds after which no token signed by this key can still be valid (the latest `exp`
    /// it could have signed); the key is published until then.
    pub retire_after: i64,
}

/// The stored rotation state (everything except the current private key).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredKeySet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current_since: Option<i64>,
    #[serde(default)]
    previous: Vec<RetiredKey>,
}

/// The token-signing keys: one current private key plus the public halves of previous keys that
/// may still have valid tokens outstanding.
#[derive(Debug, Clone)]
pub struct KeySet {
    current: SigningKey,
    current_since: Option<i64>,
    previous: Vec<RetiredKey>,
}

impl KeySet {
    /// A key set with a freshly generated current key, in use since `now`.
    pub fn generate(now: i64) -> Result<Self, PkiError> {
        Ok(KeySet { current: SigningKey::generate()?, current_since: Some(now), previous: Vec::new() })
    }

    /// A key set around an existing key (e.g. brought by the user), with no history.
    pub fn from_key(current: SigningKey) -> Self {
        KeySet { current, current_since: None, previous: Vec::new() }
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// When the current key started signing, unix seconds; `None` for a key whose history is
    /// unknown (brought by the user). Use it to schedule the next rotation.
    pub fn current_since(&self) -> Option<i64> {
        self.current_since
    }

    /// Previous public keys still kept (some may already be past `retire_after` until [`prune`](Self::prune)).
    pub fn previous(&self) -> &[RetiredKey] {
        &self.previous
    }

    /// Replaces the current key with a new one. The old public key stays published until
    /// `now + max_token_ttl`, the latest expiry a token it signed can have; pass the longest token
    /// lifetime the operator allows (plus any clock skew verifiers tolerate). Already retired keys
    /// are dropped.
    pub fn rotate(&mut self, now: i64, max_token_ttl: i64) -> Result<(), PkiError> {
        let next = SigningKey::generate()?;
        let old = std::mem::replace(&mut self.current, next);
        self.previous.push(RetiredKey { jwk: old.public_jwk(), retire_after: now.saturating_add(max_token_ttl) });
        self.current_since = Some(now);
        self.prune(now);
        Ok(())
    }

    /// Drops previous keys whose `retire_after` has passed; returns how many were dropped.
    pub fn prune(&mut self, now: i64) -> usize {
        let before = self.previous.len();
        self.previous.retain(|k| k.retire_after >= now);
        before - self.previous.len()
    }

    /// The JWKS to publish at `now`: the current key first, then previous keys not yet retired.
    pub fn jwks(&self, now: i64) -> JwkSet {
        let mut keys = vec![self.current.public_jwk()];
        keys.extend(self.previous.iter().filter(|k| k.retire_after >= now).map(|k| k.jwk.clone()));
        JwkSet { keys }
    }

    /// The Secret data that stores this key set: [`SECRET_KEY_SIGNING_KEY`] (PKCS#8 PEM of the
    /// current key) and [`SECRET_KEY_KEYSET`] (JSON: `currentSince`, `previous`).
    pub fn to_secret_data(&self) -> Result<BTreeMap<String, Vec<u8>>, PkiError> {
        let stored = StoredKeySet { current_since: self.current_since, previous: self.previous.clone() };
        let mut data = BTreeMap::new();
        data.insert(SECRET_KEY_SIGNING_KEY.to_owned(), self.current.to_pkcs8_pem().into_bytes());
        data.insert(SECRET_KEY_KEYSET.to_owned(), serde_json::to_vec(&stored)?);
        Ok(data)
    }

    /// Loads a key set from Secret data. Only [`SECRET_KEY_SIGNING_KEY`] is required, so a user
    /// can bring their own key; every previous key must be a well-formed Ed25519 JWK whose `kid` is
    /// its thumbprint.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, PkiError> {
        let pem_bytes = data
            .get(SECRET_KEY_SIGNING_KEY)
            .ok_or_else(|| PkiError::KeySet(format!("missing {SECRET_KEY_SIGNING_KEY}")))?;
        let pem_str = std::str::from_utf8(pem_bytes)
            .map_err(|_| PkiError::KeySet(format!("{SECRET_KEY_SIGNING_KEY} is not UTF-8")))?;
        let current = SigningKey::from_pkcs8_pem(pem_str)?;
        let stored: StoredKeySet = match data.get(SECRET_KEY_KEYSET) {
            Some(bytes) => serde_json::from_slice(bytes)?,
            None => StoredKeySet::default(),
        };
        for key in &stored.previous {
            if key.jwk.ed25519_public_key().is_none() {
                return Err(PkiError::KeySet(format!("previous key {} is not an Ed25519 signing key", key.jwk.kid)));
            }
            if key.jwk.kid != key.jwk.thumbprint() {
                return Err(PkiError::KeySet(format!(
                    "previous key {} has a kid that is not its thumbprint",
                    key.jwk.kid
                )));
            }
        }
        Ok(KeySet { current, current_since: stored.current_since, previous: stored.previous })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8037_appendix_a3_thumbprint() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let public_key = b64url_decode(x).expect("x");
        assert_eq!(Jwk::thumbprint_for(&public_key), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        let jwk = Jwk::ed25519(&public_key);
        assert_eq!(jwk.x, x);
        assert_eq!(jwk.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(jwk.ed25519_public_key().map(|k| k.to_vec()), Some(public_key));
    }

    #[test]
    fn jwk_serialises_as_rfc7517() {
        let jwk = Jwk::ed25519(&[7u8; 32]);
        let json = serde_json::to_value(&jwk).expect("json");
        assert_eq!(json["kty"], "OKP");
        assert_eq!(json["crv"], "Ed25519");
        assert_eq!(json["use"], "sig");
        assert_eq!(json["alg"], "EdDSA");
        assert_eq!(json["kid"], jwk.kid.as_str());
        let set = JwkSet { keys: vec![jwk.clone()] };
        let back = JwkSet::from_json(&set.to_json().expect("json")).expect("parse");
        assert_eq!(back, set);
        assert_eq!(back.find(&jwk.kid), Some(&jwk));
        assert_eq!(back.find("nope"), None);
    }

    #[test]
    fn unusable_jwks_yield_no_public_key() {
        let good = Jwk::ed25519(&[1u8; 32]);
        let mut rsa = good.clone();
        rsa.kty = "RSA".into();
        let mut short = good.clone();
        short.x = b64url(&[1u8; 31]);
        let mut enc = good.clone();
        enc.use_ = "enc".into();
        let mut es256 = good.clone();
        es256.alg = "ES256".into();
        for bad in [rsa, short, enc, es256] {
            assert!(bad.ed25519_public_key().is_none(), "{bad:?}");
        }
        let minimal: Jwk =
            serde_json::from_str(&format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{}","kid":"{}"}}"#, good.x, good.kid))
                .expect("use/alg are optional");
        assert!(minimal.ed25519_public_key().is_some());
    }

    #[test]
    fn rotation_keeps_the_old_key_until_retire_after() {
        let now = 1_000_000;
        let mut set = KeySet::generate(now).expect("keys");
        let old_kid = set.current().kid().to_owned();
        assert_eq!(set.jwks(now).keys.len(), 1);

        set.rotate(now + 100, 900).expect("rotate");
        let new_kid = set.current().kid().to_owned();
        assert_ne!(old_kid, new_kid);
        assert_eq!(set.current_since(), Some(now + 100));
        let jwks = set.jwks(now + 100);
        assert_eq!(jwks.keys[0].kid, new_kid, "current key first");
        assert!(jwks.find(&old_kid).is_some());
        assert!(set.jwks(now + 1000).find(&old_kid).is_some(), "kept through retire_after");
        assert!(set.jwks(now + 1001).find(&old_kid).is_none(), "gone after retire_after");
        assert_eq!(set.prune(now + 1000), 0);
        assert_eq!(set.prune(now + 1001), 1);
        assert!(set.previous().is_empty());
    }

    #[test]
    fn key_set_round_trips_through_secret_data() {
        let mut set = KeySet::generate(10).expect("keys");
        set.rotate(20, 900).expect("rotate");
        set.rotate(30, 900).expect("rotate");
        let data = set.to_secret_data().expect("data");
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![SECRET_KEY_KEYSET, SECRET_KEY_SIGNING_KEY]
        );
        let back = KeySet::from_secret_data(&data).expect("load");
        assert_eq!(back.current().kid(), set.current().kid());
        assert_eq!(back.current_since(), Some(30));
        assert_eq!(back.previous(), set.previous());
        assert_eq!(back.jwks(40), set.jwks(40));
        assert_eq!(back.jwks(40).keys.len(), 3);
    }

    #[test]
    fn a_user_key_alone_is_a_key_set() {
        let key = SigningKey::generate().expect("key");
        let mut data = BTreeMap::new();
        data.insert(SECRET_KEY_SIGNING_KEY.to_owned(), key.to_pkcs8_pem().into_bytes());
        let set = KeySet::from_secret_data(&data).expect("load");
        assert_eq!(set.current().kid(), key.kid());
        assert_eq!(set.current_since(), None);
        assert_eq!(KeySet::from_key(key).jwks(0), set.jwks(0));
    }

    #[test]
    fn broken_secret_data_is_rejected() {
        let set = KeySet::generate(0).expect("keys");
        assert!(matches!(KeySet::from_secret_data(&BTreeMap::new()), Err(PkiError::KeySet(_))));
        let mut data = set.to_secret_data().expect("data");
        data.insert(SECRET_KEY_KEYSET.into(), b"{not json".to_vec());
        assert!(KeySet::from_secret_data(&data).is_err());
        let mut tampered = Jwk::ed25519(&[3u8; 32]);
        tampered.kid = "someone-else".into();
        let stored = serde_json::json!({"previous": [{"jwk": tampered, "retireAfter": 5}]});
        data.insert(SECRET_KEY_KEYSET.into(), serde_json::to_vec(&stored).expect("json"));
        assert!(matches!(KeySet::from_secret_data(&data), Err(PkiError::KeySet(_))));
        data.insert(SECRET_KEY_SIGNING_KEY.into(), vec![0xff, 0xfe]);
        assert!(KeySet::from_secret_data(&data).is_err());
    }
}

//! JSON Web Keys (RFC 7517) for P-256 (RFC 7518 §6.2) and Ed25519 (RFC 8037), and the rotating
//! token-signing [`KeySet`].
//!
//! Rotation keeps old and new keys side by side: after [`KeySet::rotate`] the new key signs at
//! once, and the old public key stays in the published JWKS until every token it signed has
//! expired (`retire_after`), so resource servers never see a valid token with an unknown `kid`.
//! A change of signing algorithm is such a rotation, and a change of issuer keeps the previous
//! issuer accepted the same way ([`KeySet::set_issuer`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::names::{KEYSET_KEY, SIGNING_KEY_KEY};
use crate::pki::{b64url, b64url_decode, token::TokenAlgorithm, PkiError, SigningKey};

/// One public key in JWK form. Writ signs with P-256
/// (`{"kty":"EC","crv":"P-256","x":…,"y":…,"kid":…,"use":"sig","alg":"ES256"}`) or Ed25519
/// (`{"kty":"OKP","crv":"Ed25519","x":…,"kid":…,"use":"sig","alg":"EdDSA"}`) keys; the SPIFFE
/// bundle also carries its CAs' keys (`use` `x509-svid`, with `x5c`), which may be RSA (`n`, `e`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `EC`, `OKP` or `RSA`.
    pub kty: String,
    /// Curve: `P-256`, `P-384` or `Ed25519` (absent for RSA).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub crv: String,
    /// The public key (OKP) or its x coordinate (EC), base64url without padding.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub x: String,
    /// The y coordinate of an EC key, base64url without padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// The modulus of an RSA key, base64url without padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// The exponent of an RSA key, base64url without padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Key ID: the RFC 7638 thumbprint (absent on `x509-svid` keys, as the X509-SVID standard
    /// §6.1 requires).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kid: String,
    /// Intended use: `sig` in the JWKS; `jwt-svid` or `x509-svid` in the SPIFFE bundle.
    #[serde(rename = "use", default)]
    pub use_: String,
    /// Algorithm: `ES256` or `EdDSA` (absent on SPIFFE bundle keys).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alg: String,
    /// The CA certificate of an `x509-svid` key (RFC 7517 §4.7: base64 DER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
}

/// A public key Writ verifies token signatures with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyingKey {
    /// An Ed25519 public key (`EdDSA`).
    Ed25519([u8; 32]),
    /// A P-256 public key as the uncompressed point `04 || x || y` (`ES256`).
    P256([u8; 65]),
}

impl VerifyingKey {
    /// The JWS algorithm this key verifies.
    pub fn algorithm(&self) -> TokenAlgorithm {
        match self {
            VerifyingKey::Ed25519(_) => TokenAlgorithm::EdDsa,
            VerifyingKey::P256(_) => TokenAlgorithm::Es256,
        }
    }

    /// Whether `signature` (JWS form: 64 bytes for either algorithm) is this key's over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};
        match self {
            VerifyingKey::Ed25519(k) => UnparsedPublicKey::new(&ED25519, k).verify(message, signature).is_ok(),
            VerifyingKey::P256(k) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k).verify(message, signature).is_ok()
            }
        }
    }
}

impl Jwk {
    fn empty(kty: &str, crv: &str) -> Jwk {
        Jwk {
            kty: kty.into(),
            crv: crv.into(),
            x: String::new(),
            y: None,
            n: None,
            e: None,
            kid: String::new(),
            use_: String::new(),
            alg: String::new(),
            x5c: None,
        }
    }

    /// The JWK of a 32-byte Ed25519 public key, `kid` set to its RFC 7638 thumbprint.
    pub fn ed25519(public_key: &[u8]) -> Jwk {
        let mut jwk =
            Jwk { x: b64url(public_key), use_: "sig".into(), alg: "EdDSA".into(), ..Jwk::empty("OKP", "Ed25519") };
        jwk.kid = jwk.thumbprint();
        jwk
    }

    /// The JWK of a P-256 public key given as the 65-byte uncompressed point, `kid` set to its
    /// RFC 7638 thumbprint; `None` for anything else.
    pub fn p256(point: &[u8]) -> Option<Jwk> {
        let jwk = Jwk::ec_point("P-256", 32, point)?;
        Some(Jwk { use_: "sig".into(), alg: "ES256".into(), ..jwk })
    }

    /// An EC key of `crv` from its uncompressed point of two `len`-byte coordinates.
    pub(crate) fn ec_point(crv: &str, len: usize, point: &[u8]) -> Option<Jwk> {
        if point.len() != 1 + 2 * len || point[0] != 4 {
            return None;
        }
        let mut jwk =
            Jwk { x: b64url(&point[1..1 + len]), y: Some(b64url(&point[1 + len..])), ..Jwk::empty("EC", crv) };
        jwk.kid = jwk.thumbprint();
        Some(jwk)
    }

    /// An RSA key from its big-endian modulus and exponent (leading zeros dropped).
    pub(crate) fn rsa(modulus: &[u8], exponent: &[u8]) -> Jwk {
        let strip = |b: &[u8]| {
            let start = b.iter().position(|&x| x != 0).unwrap_or(b.len().saturating_sub(1));
            b64url(&b[start..])
        };
        let mut jwk = Jwk { n: Some(strip(modulus)), e: Some(strip(exponent)), ..Jwk::empty("RSA", "") };
        jwk.kid = jwk.thumbprint();
        jwk
    }

    /// The RFC 7638 thumbprint of an Ed25519 public key: base64url SHA-256 of
    /// `{"crv":"Ed25519","kty":"OKP","x":"<base64url key>"}`.
    pub fn thumbprint_for(public_key: &[u8]) -> String {
        Jwk { x: b64url(public_key), ..Jwk::empty("OKP", "Ed25519") }.thumbprint()
    }

    /// The RFC 7638 thumbprint of this key: base64url SHA-256 of its required members in
    /// lexicographic order without whitespace (`crv`, `kty`, `x` for OKP; `crv`, `kty`, `x`, `y`
    /// for EC; `e`, `kty`, `n` for RSA).
    pub fn thumbprint(&self) -> String {
        let canonical = match self.kty.as_str() {
            "EC" => serde_json::json!({"crv": self.crv, "kty": self.kty, "x": self.x, "y": self.y.as_deref().unwrap_or_default()}),
            "RSA" => serde_json::json!({"e": self.e.as_deref().unwrap_or_default(), "kty": self.kty, "n": self.n.as_deref().unwrap_or_default()}),
            _ => serde_json::json!({"crv": self.crv, "kty": self.kty, "x": self.x}),
        }
        .to_string();
        b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// The key to verify tokens with, if this JWK is a signing key Writ accepts: `kty` OKP with
    /// `crv` Ed25519 and a 32-byte `x` (`alg` EdDSA or absent), or `kty` EC with `crv` P-256 and
    /// 32-byte `x` and `y` (`alg` ES256 or absent); `use` `sig`, `jwt-svid` or absent.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        if !(self.use_.is_empty() || self.use_ == "sig" || self.use_ == "jwt-svid") {
            return None;
        }
        match (self.kty.as_str(), self.crv.as_str()) {
            ("OKP", "Ed25519") if self.alg.is_empty() || self.alg == "EdDSA" => {
                Some(VerifyingKey::Ed25519(b64url_decode(&self.x).ok()?.try_into().ok()?))
            }
            ("EC", "P-256") if self.alg.is_empty() || self.alg == "ES256" => {
                let x: [u8; 32] = b64url_decode(&self.x).ok()?.try_into().ok()?;
                let y: [u8; 32] = b64url_decode(self.y.as_deref()?).ok()?.try_into().ok()?;
                let mut point = [0u8; 65];
                point[0] = 4;
                point[1..33].copy_from_slice(&x);
                point[33..].copy_from_slice(&y);
                Some(VerifyingKey::P256(point))
            }
            _ => None,
        }
    }

    /// The raw Ed25519 public key, if this JWK is an Ed25519 key Writ can verify with.
    pub fn ed25519_public_key(&self) -> Option<[u8; 32]> {
        match self.verifying_key()? {
            VerifyingKey::Ed25519(k) => Some(k),
            VerifyingKey::P256(_) => None,
        }
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

/// A previous token issuer (`iss`), still accepted until `retire_after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetiredIssuer {
    /// The issuer.
    pub issuer: String,
    /// Unix seconds after which no token naming it can still be valid.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    previous_issuers: Vec<RetiredIssuer>,
}

/// The token-signing keys: one current private key plus the public halves of previous keys that
/// may still have valid tokens outstanding; and the issuer the tokens name, with previous issuers
/// whose tokens may still be valid.
#[derive(Debug, Clone)]
pub struct KeySet {
    current: SigningKey,
    current_since: Option<i64>,
    previous: Vec<RetiredKey>,
    issuer: Option<String>,
    previous_issuers: Vec<RetiredIssuer>,
}

impl KeySet {
    /// A key set with a freshly generated current key of the default algorithm (ES256), in use
    /// since `now`.
    pub fn generate(now: i64) -> Result<Self, PkiError> {
        Self::generate_for(now, TokenAlgorithm::default())
    }

    /// A key set with a freshly generated current key of `algorithm`, in use since `now`.
    pub fn generate_for(now: i64, algorithm: TokenAlgorithm) -> Result<Self, PkiError> {
        Ok(KeySet {
            current: SigningKey::generate_for(algorithm)?,
            current_since: Some(now),
            previous: Vec::new(),
            issuer: None,
            previous_issuers: Vec::new(),
        })
    }

    /// A key set around an existing key (e.g. brought by the user), with no history.
    pub fn from_key(current: SigningKey) -> Self {
        KeySet { current, current_since: None, previous: Vec::new(), issuer: None, previous_issuers: Vec::new() }
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

    /// Replaces the current key with a new one of the same algorithm. The old public key stays
    /// published until `now + max_token_ttl`, the latest expiry a token it signed can have; pass
    /// the longest token lifetime the operator allows (plus any clock skew verifiers tolerate).
    /// Already retired keys are dropped.
    pub fn rotate(&mut self, now: i64, max_token_ttl: i64) -> Result<(), PkiError> {
        self.rotate_to(now, max_token_ttl, self.current.algorithm())
    }

    /// Replaces the current key with a new one of `algorithm`, keeping the old public key as
    /// [`rotate`](Self::rotate) does: a change of algorithm is a rotation.
    pub fn rotate_to(&mut self, now: i64, max_token_ttl: i64, algorithm: TokenAlgorithm) -> Result<(), PkiError> {
        let next = SigningKey::generate_for(algorithm)?;
        let old = std::mem::replace(&mut self.current, next);
        self.previous.push(RetiredKey { jwk: old.public_jwk(), retire_after: now.saturating_add(max_token_ttl) });
        self.current_since = Some(now);
        self.prune(now);
        Ok(())
    }

    /// Drops previous keys and issuers whose `retire_after` has passed; returns how many keys
    /// were dropped.
    pub fn prune(&mut self, now: i64) -> usize {
        let before = self.previous.len();
        self.previous.retain(|k| k.retire_after >= now);
        self.previous_issuers.retain(|i| i.retire_after >= now);
        before - self.previous.len()
    }

    /// The JWKS to publish at `now`: the current key first, then previous keys not yet retired.
    pub fn jwks(&self, now: i64) -> JwkSet {
        let mut keys = vec![self.current.public_jwk()];
        keys.extend(self.previous.iter().filter(|k| k.retire_after >= now).map(|k| k.jwk.clone()));
        JwkSet { keys }
    }

    /// The issuer new tokens name, if one was recorded.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// Makes `issuer` the issuer of new tokens. A different issuer recorded before stays accepted
    /// until `now + max_token_ttl` (its tokens live until then); so does `legacy`, the issuer
    /// tokens named before any was recorded, when there was none. Returns whether anything changed.
    pub fn set_issuer(&mut self, issuer: &str, legacy: Option<&str>, now: i64, max_token_ttl: i64) -> bool {
        if self.issuer.as_deref() == Some(issuer) {
            return false;
        }
        let old = self.issuer.take().or_else(|| legacy.map(str::to_owned));
        if let Some(old) = old.filter(|o| o != issuer) {
            self.previous_issuers.retain(|i| i.issuer != old && i.issuer != issuer);
            self.previous_issuers.push(RetiredIssuer { issuer: old, retire_after: now.saturating_add(max_token_ttl) });
        }
        self.previous_issuers.retain(|i| i.issuer != issuer && i.retire_after >= now);
        self.issuer = Some(issuer.to_owned());
        true
    }

    /// The issuers a token may name at `now`: the current one first, then previous ones whose
    /// tokens may still be valid.
    pub fn issuers(&self, now: i64) -> Vec<String> {
        let mut out: Vec<String> = self.issuer.iter().cloned().collect();
        out.extend(self.previous_issuers.iter().filter(|i| i.retire_after >= now).map(|i| i.issuer.clone()));
        out
    }

    /// The unix time of the latest change to the published keys at `now`: the current key's
    /// start, or the moment a previous key left the JWKS (`retire_after + 1`), whichever is
    /// later. It never decreases, since a key is only pruned by a rotation, whose start is later
    /// than its departure.
    pub fn changed_at(&self, now: i64) -> i64 {
        let left = self.previous.iter().filter(|k| k.retire_after < now).map(|k| k.retire_after + 1);
        left.chain(self.current_since).max().unwrap_or(0)
    }

    /// The Secret data that stores this key set: [`SIGNING_KEY_KEY`] (PKCS#8 PEM of the
    /// current key) and [`KEYSET_KEY`] (JSON: `currentSince`, `previous`, `issuer`,
    /// `previousIssuers`).
    pub fn to_secret_data(&self) -> Result<BTreeMap<String, Vec<u8>>, PkiError> {
        let stored = StoredKeySet {
            current_since: self.current_since,
            previous: self.previous.clone(),
            issuer: self.issuer.clone(),
            previous_issuers: self.previous_issuers.clone(),
        };
        let mut data = BTreeMap::new();
        data.insert(SIGNING_KEY_KEY.to_owned(), self.current.to_pkcs8_pem().into_bytes());
        data.insert(KEYSET_KEY.to_owned(), serde_json::to_vec(&stored)?);
        Ok(data)
    }

    /// Loads a key set from Secret data. Only [`SIGNING_KEY_KEY`] is required, so a user
    /// can bring their own key (P-256 or Ed25519); every previous key must be a well-formed P-256
    /// or Ed25519 JWK whose `kid` is its thumbprint.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, PkiError> {
        let pem_bytes =
            data.get(SIGNING_KEY_KEY).ok_or_else(|| PkiError::KeySet(format!("missing {SIGNING_KEY_KEY}")))?;
        let pem_str =
            std::str::from_utf8(pem_bytes).map_err(|_| PkiError::KeySet(format!("{SIGNING_KEY_KEY} is not UTF-8")))?;
        let current = SigningKey::from_pkcs8_pem(pem_str)?;
        let stored: StoredKeySet = match data.get(KEYSET_KEY) {
            Some(bytes) => serde_json::from_slice(bytes)?,
            None => StoredKeySet::default(),
        };
        for key in &stored.previous {
            if key.jwk.verifying_key().is_none() {
                return Err(PkiError::KeySet(format!(
                    "previous key {} is not a P-256 or Ed25519 signing key",
                    key.jwk.kid
                )));
            }
            if key.jwk.kid != key.jwk.thumbprint() {
                return Err(PkiError::KeySet(format!(
                    "previous key {} has a kid that is not its thumbprint",
                    key.jwk.kid
                )));
            }
        }
        Ok(KeySet {
            current,
            current_since: stored.current_since,
            previous: stored.previous,
            issuer: stored.issuer,
            previous_issuers: stored.previous_issuers,
        })
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
        let mut x509 = good.clone();
        x509.use_ = "x509-svid".into();
        for bad in [rsa, short, enc, es256, x509] {
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
    fn a_change_of_algorithm_is_a_rotation_that_keeps_the_old_key() {
        let now = 1_000_000;
        let mut set = KeySet::generate_for(now, TokenAlgorithm::EdDsa).expect("keys");
        assert_eq!(set.current().algorithm(), TokenAlgorithm::EdDsa);
        let old = set.current().public_jwk();
        set.rotate_to(now + 10, 900, TokenAlgorithm::Es256).expect("rotate");
        assert_eq!(set.current().algorithm(), TokenAlgorithm::Es256);
        let jwks = set.jwks(now + 10);
        assert_eq!((jwks.keys[0].kty.as_str(), jwks.keys[0].alg.as_str()), ("EC", "ES256"));
        assert_eq!(jwks.find(&old.kid), Some(&old), "the EdDSA key stays until its tokens expire");
        assert!(set.jwks(now + 911).find(&old.kid).is_none());
        // Plain rotation keeps the algorithm; the stored set round-trips with both kinds of key.
        set.rotate(now + 20, 900).expect("rotate");
        assert_eq!(set.current().algorithm(), TokenAlgorithm::Es256);
        let back = KeySet::from_secret_data(&set.to_secret_data().expect("data")).expect("load");
        assert_eq!(back.jwks(now + 20), set.jwks(now + 20));
        assert_eq!(back.jwks(now + 20).keys.len(), 3);
    }

    #[test]
    fn a_change_of_issuer_keeps_the_old_one_accepted_until_its_tokens_expire() {
        let now = 1_000_000;
        let mut set = KeySet::generate(now).expect("keys");
        assert_eq!(set.issuer(), None);
        // The first issuer of an upgraded operator: the legacy one stays accepted.
        assert!(set.set_issuer("https://a.example", Some("spiffe://td/writ"), now, 900));
        assert_eq!(set.issuers(now), vec!["https://a.example".to_string(), "spiffe://td/writ".to_string()]);
        assert!(!set.set_issuer("https://a.example", Some("spiffe://td/writ"), now + 1, 900), "no change");
        assert!(set.set_issuer("https://b.example", None, now + 100, 900));
        assert_eq!(set.issuer(), Some("https://b.example"));
        assert_eq!(set.issuers(now + 100), vec!["https://b.example", "spiffe://td/writ", "https://a.example"]);
        assert_eq!(set.issuers(now + 1000), vec!["https://b.example", "https://a.example"]);
        assert_eq!(set.issuers(now + 1001), vec!["https://b.example"], "both old issuers retired");
        // Stored and loaded with the keys.
        let back = KeySet::from_secret_data(&set.to_secret_data().expect("data")).expect("load");
        assert_eq!(back.issuers(now + 100), set.issuers(now + 100));
        // Back to an earlier issuer: it is current again, not also a retired one.
        set.set_issuer("https://a.example", None, now + 200, 900);
        assert_eq!(set.issuers(now + 200), vec!["https://a.example", "spiffe://td/writ", "https://b.example"]);
        // A fresh operator has no legacy issuer to keep.
        let mut fresh = KeySet::generate(now).expect("keys");
        fresh.set_issuer("https://a.example", None, now, 900);
        assert_eq!(fresh.issuers(now), vec!["https://a.example"]);
    }

    #[test]
    fn changed_at_moves_with_every_change_of_the_published_keys_and_never_back() {
        let now = 1_000_000;
        let mut set = KeySet::generate(now).expect("keys");
        assert_eq!(set.changed_at(now + 5), now);
        set.rotate(now + 100, 900).expect("rotate");
        assert_eq!(set.changed_at(now + 100), now + 100);
        assert_eq!(set.changed_at(now + 1000), now + 100, "the old key is still published at retire_after");
        assert_eq!(set.changed_at(now + 1001), now + 1001, "its departure is a change");
        assert_eq!(set.changed_at(now + 5000), now + 1001);
        set.rotate(now + 6000, 900).expect("rotate prunes the departed key");
        assert_eq!(set.changed_at(now + 6000), now + 6000);
    }

    #[test]
    fn key_set_round_trips_through_secret_data() {
        let mut set = KeySet::generate(10).expect("keys");
        set.rotate(20, 900).expect("rotate");
        set.rotate(30, 900).expect("rotate");
        let data = set.to_secret_data().expect("data");
        assert_eq!(data.keys().map(String::as_str).collect::<Vec<_>>(), vec![KEYSET_KEY, SIGNING_KEY_KEY]);
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
        data.insert(SIGNING_KEY_KEY.to_owned(), key.to_pkcs8_pem().into_bytes());
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
        data.insert(KEYSET_KEY.into(), b"{not json".to_vec());
        assert!(KeySet::from_secret_data(&data).is_err());
        let mut tampered = SigningKey::generate().expect("key").public_jwk();
        tampered.kid = "someone-else".into();
        let stored = serde_json::json!({"previous": [{"jwk": tampered, "retireAfter": 5}]});
        data.insert(KEYSET_KEY.into(), serde_json::to_vec(&stored).expect("json"));
        assert!(matches!(KeySet::from_secret_data(&data), Err(PkiError::KeySet(_))));
        data.insert(SIGNING_KEY_KEY.into(), vec![0xff, 0xfe]);
        assert!(KeySet::from_secret_data(&data).is_err());
    }
}

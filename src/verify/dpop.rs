//! DPoP proofs (RFC 9449): a JWT signed with the pod's own key, sent in the
//! `DPoP` header, that proves possession of that key for one HTTP request.
//!
//! [`check_proof`] applies the checks of RFC 9449 §4.3 that need no state
//! (form, `typ`, `alg`, signature by the header's `jwk`, no private key in it,
//! `htm`, `htu`, `iat` window, `ath`); [`ReplayCache`] refuses a proof `jti`
//! seen within the window. Writ accepts ES256 (P-256, the default pod key)
//! and EdDSA (Ed25519) proofs.

use std::{collections::HashMap, sync::Mutex};

use serde::Deserialize;

use crate::pki::{b64url, b64url_decode};

/// How far a proof's `iat` may be from the verifier's clock, in seconds.
pub const DEFAULT_WINDOW_SECS: i64 = 60;
/// Longest proof accepted, in bytes.
pub const MAX_PROOF_LEN: usize = 4096;
/// Most proof `jti`s a [`ReplayCache`] holds; when full of live entries it refuses new proofs.
pub const MAX_REPLAY_ENTRIES: usize = 200_000;

/// Why a DPoP proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// Not a compact JWS with a DPoP header and claims.
    #[error("DPoP proof is malformed: {0}")]
    Malformed(String),
    /// `typ` is not `dpop+jwt`.
    #[error("DPoP proof typ is not dpop+jwt")]
    Type,
    /// An algorithm other than ES256 or EdDSA.
    #[error("DPoP proof algorithm {0:?} is not accepted (ES256 or EdDSA)")]
    Algorithm(String),
    /// The `jwk` is not a public P-256 or Ed25519 key matching `alg`.
    #[error("DPoP proof jwk: {0}")]
    Key(String),
    /// The signature does not verify with the `jwk`.
    #[error("the DPoP proof signature does not verify")]
    Signature,
    /// `htm` is not the request's method.
    #[error("DPoP proof htm {got:?} is not the request method {expected:?}")]
    Method {
        /// The request's method.
        expected: String,
        /// The proof's `htm`.
        got: String,
    },
    /// `htu` is not the request's URI.
    #[error("DPoP proof htu {got:?} is not the request URI {expected:?}")]
    Uri {
        /// The request's URI.
        expected: String,
        /// The proof's `htu`.
        got: String,
    },
    /// `iat` is outside the window.
    #[error("DPoP proof iat {iat} is outside {window}s of now ({now})")]
    Time {
        /// The proof's `iat`.
        iat: i64,
        /// The verifier's clock.
        now: i64,
        /// The window.
        window: i64,
    },
    /// `ath` is missing or is not the hash of the access token.
    #[error("DPoP proof ath does not match the access token")]
    AccessTokenHash,
    /// The proof's `jti` was seen within the window.
    #[error("DPoP proof jti was already used")]
    Replay,
    /// The proof's key is not the one the token is bound to (`cnf.jkt`).
    #[error("the DPoP proof key is not the one the token is bound to (cnf.jkt)")]
    Binding,
}

#[derive(Deserialize)]
struct ProofHeader {
    typ: Option<String>,
    alg: String,
    jwk: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: i64,
    #[serde(default)]
    ath: Option<String>,
}

/// A proof that passed [`check_proof`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 thumbprint of the proof's key (what `cnf.jkt` binds to).
    pub jkt: String,
    /// The proof's public key: the uncompressed P-256 point or the 32-byte Ed25519 key, as an
    /// X.509 `subjectPublicKey` holds it.
    pub public_key: Vec<u8>,
    /// The proof's `jti` (for [`ReplayCache`]).
    pub jti: String,
    /// The proof's `iat`.
    pub iat: i64,
}

fn member<'a>(jwk: &'a serde_json::Map<String, serde_json::Value>, name: &str) -> Result<&'a str, DpopError> {
    jwk.get(name).and_then(|v| v.as_str()).ok_or_else(|| DpopError::Key(format!("no {name}")))
}

fn coordinate(jwk: &serde_json::Map<String, serde_json::Value>, name: &str, len: usize) -> Result<Vec<u8>, DpopError> {
    let bytes = b64url_decode(member(jwk, name)?).map_err(|e| DpopError::Key(format!("{name}: {e}")))?;
    if bytes.len() != len {
        return Err(DpopError::Key(format!("{name} is not {len} bytes")));
    }
    Ok(bytes)
}

fn sha256_b64(data: &[u8]) -> String {
    b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// The RFC 9449 `ath` of an access token: base64url SHA-256 of its ASCII bytes.
pub fn access_token_hash(token: &str) -> String {
    sha256_b64(token.as_bytes())
}

/// `uri` without its query and fragment (RFC 9449 §4.3 check 9).
fn without_query(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or(uri)
}

/// Checks a DPoP proof for a request with method `htm` to `htu` at `now`;
/// with `access_token`, also that `ath` is its hash. Does not check replay
/// (see [`ReplayCache`]) nor the key's binding.
pub fn check_proof(
    proof: &str,
    htm: &str,
    htu: &str,
    access_token: Option<&str>,
    now: i64,
    window: i64,
) -> Result<Proof, DpopError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(DpopError::Malformed(format!("longer than {MAX_PROOF_LEN} bytes")));
    }
    let mut parts = proof.trim().split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(DpopError::Malformed("expected three '.'-separated parts".into()));
    };
    let decode = |part: &str, what: &str| {
        b64url_decode(part).map_err(|e| DpopError::Malformed(format!("{what} is not base64url: {e}")))
    };
    let header: ProofHeader =
        serde_json::from_slice(&decode(h, "header")?).map_err(|e| DpopError::Malformed(format!("header: {e}")))?;
    let claims: ProofClaims =
        serde_json::from_slice(&decode(p, "payload")?).map_err(|e| DpopError::Malformed(format!("claims: {e}")))?;
    let signature = decode(s, "signature")?;
    if header.typ.as_deref() != Some("dpop+jwt") {
        return Err(DpopError::Type);
    }
    if header.jwk.contains_key("d") {
        return Err(DpopError::Key("contains a private key".into()));
    }
    let kty = member(&header.jwk, "kty")?;
    let crv = member(&header.jwk, "crv")?;
    let (public_key, canonical, algorithm): (
        Vec<u8>,
        String,
        &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
    ) = match (header.alg.as_str(), kty, crv) {
        ("ES256", "EC", "P-256") => {
            let (x, y) = (coordinate(&header.jwk, "x", 32)?, coordinate(&header.jwk, "y", 32)?);
            let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, b64url(&x), b64url(&y));
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (point, canonical, &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED)
        }
        ("EdDSA", "OKP", "Ed25519") => {
            let x = coordinate(&header.jwk, "x", 32)?;
            let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64url(&x));
            (x, canonical, &aws_lc_rs::signature::ED25519)
        }
        ("ES256" | "EdDSA", _, _) => return Err(DpopError::Key(format!("{kty}/{crv} does not match {}", header.alg))),
        (other, _, _) => return Err(DpopError::Algorithm(other.into())),
    };
    let signing_input = &proof.trim()[..h.len() + 1 + p.len()];
    aws_lc_rs::signature::UnparsedPublicKey::new(algorithm, &public_key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| DpopError::Signature)?;
    if claims.htm != htm {
        return Err(DpopError::Method { expected: htm.into(), got: claims.htm });
    }
    if without_query(&claims.htu) != without_query(htu) {
        return Err(DpopError::Uri { expected: htu.into(), got: claims.htu });
    }
    if (claims.iat - now).abs() > window {
        return Err(DpopError::Time { iat: claims.iat, now, window });
    }
    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err(DpopError::Malformed("jti must be 1-256 characters".into()));
    }
    if let Some(token) = access_token {
        let expected = access_token_hash(token);
        if claims.ath.as_deref().is_none_or(|a| !crate::verify::constant_time_eq(a.as_bytes(), expected.as_bytes())) {
            return Err(DpopError::AccessTokenHash);
        }
    }
    Ok(Proof { jkt: sha256_b64(canonical.as_bytes()), public_key, jti: claims.jti, iat: claims.iat })
}

/// The proof `jti`s seen within the window, bounded: expired entries are
/// dropped as it fills, and a cache full of live entries refuses (fails
/// closed) rather than forget one.
#[derive(Debug, Default)]
pub struct ReplayCache {
    seen: Mutex<HashMap<String, i64>>,
}

impl ReplayCache {
    /// Records `proof`'s `jti`; `Err(Replay)` when it was seen within `window` seconds.
    pub fn check(&self, proof: &Proof, now: i64, window: i64) -> Result<(), DpopError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let live_until = proof.iat.max(now) + window;
        if seen.get(&proof.jti).is_some_and(|until| *until >= now) {
            return Err(DpopError::Replay);
        }
        if seen.len() >= MAX_REPLAY_ENTRIES {
            seen.retain(|_, until| *until >= now);
            if seen.len() >= MAX_REPLAY_ENTRIES {
                return Err(DpopError::Replay);
            }
        }
        seen.insert(proof.jti.clone(), live_until);
        Ok(())
    }

    /// How many `jti`s it holds.
    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `subjectPublicKey` bytes of a certificate (DER), to compare with [`Proof::public_key`].
pub fn certificate_public_key(der: &[u8]) -> Option<Vec<u8>> {
    let cert = crate::pki::cert::parse_x509(der).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

    const NOW: i64 = 1_750_000_000;
    const HTU: &str = "https://writ.example/token";

    fn key() -> EcdsaKeyPair {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).expect("key")
    }

    fn proof(key: &EcdsaKeyPair, header_extra: serde_json::Value, claims: serde_json::Value) -> String {
        let point = key.public_key().as_ref();
        let mut header = serde_json::json!({
            "typ": "dpop+jwt", "alg": "ES256",
            "jwk": {"kty": "EC", "crv": "P-256", "x": b64url(&point[1..33]), "y": b64url(&point[33..65])}
        });
        for (k, v) in header_extra.as_object().expect("object") {
            header[k] = v.clone();
        }
        let input = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header).expect("json")),
            b64url(&serde_json::to_vec(&claims).expect("json"))
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = key.sign(&rng, input.as_bytes()).expect("sign");
        format!("{input}.{}", b64url(sig.as_ref()))
    }

    fn claims(jti: &str) -> serde_json::Value {
        serde_json::json!({"jti": jti, "htm": "POST", "htu": HTU, "iat": NOW})
    }

    #[test]
    fn a_good_proof_passes_and_binds_its_key() {
        let k = key();
        let p = check_proof(&proof(&k, serde_json::json!({}), claims("a")), "POST", HTU, None, NOW, 60).expect("ok");
        assert_eq!(p.public_key, k.public_key().as_ref());
        assert_eq!(p.jkt.len(), 43);
        let with_query = format!("{HTU}?x=1");
        assert!(check_proof(&proof(&k, serde_json::json!({}), claims("a")), "POST", &with_query, None, NOW, 60).is_ok());
    }

    #[test]
    fn each_check_refuses_its_case() {
        let k = key();
        let ok = |c: serde_json::Value| proof(&k, serde_json::json!({}), c);
        assert_eq!(
            check_proof(&proof(&k, serde_json::json!({"typ": "JWT"}), claims("a")), "POST", HTU, None, NOW, 60),
            Err(DpopError::Type)
        );
        assert!(matches!(
            check_proof(&proof(&k, serde_json::json!({"alg": "HS256"}), claims("a")), "POST", HTU, None, NOW, 60),
            Err(DpopError::Algorithm(_))
        ));
        let mut with_d = serde_json::json!({"kty": "EC", "crv": "P-256", "x": "", "y": "", "d": "secret"});
        with_d["x"] = b64url(&k.public_key().as_ref()[1..33]).into();
        assert!(matches!(
            check_proof(&proof(&k, serde_json::json!({"jwk": with_d}), claims("a")), "POST", HTU, None, NOW, 60),
            Err(DpopError::Key(_))
        ));
        let other = key();
        let point = other.public_key().as_ref();
        let foreign = serde_json::json!({"jwk": {"kty": "EC", "crv": "P-256", "x": b64url(&point[1..33]), "y": b64url(&point[33..65])}});
        assert_eq!(
            check_proof(&proof(&k, foreign, claims("a")), "POST", HTU, None, NOW, 60),
            Err(DpopError::Signature)
        );
        assert!(matches!(check_proof(&ok(claims("a")), "GET", HTU, None, NOW, 60), Err(DpopError::Method { .. })));
        assert!(matches!(
            check_proof(&ok(claims("a")), "POST", "https://other/token", None, NOW, 60),
            Err(DpopError::Uri { .. })
        ));
        assert!(matches!(check_proof(&ok(claims("a")), "POST", HTU, None, NOW + 61, 60), Err(DpopError::Time { .. })));
        assert_eq!(check_proof(&ok(claims("a")), "POST", HTU, Some("tok"), NOW, 60), Err(DpopError::AccessTokenHash));
        let mut with_ath = claims("a");
        with_ath["ath"] = access_token_hash("tok").into();
        assert!(check_proof(&ok(with_ath.clone()), "POST", HTU, Some("tok"), NOW, 60).is_ok());
        assert_eq!(check_proof(&ok(with_ath), "POST", HTU, Some("other"), NOW, 60), Err(DpopError::AccessTokenHash));
        assert!(matches!(check_proof("a.b", "POST", HTU, None, NOW, 60), Err(DpopError::Malformed(_))));
    }

    #[test]
    fn a_replayed_jti_is_refused_within_the_window() {
        let k = key();
        let cache = ReplayCache::default();
        let p = check_proof(&proof(&k, serde_json::json!({}), claims("j1")), "POST", HTU, None, NOW, 60).expect("ok");
        assert_eq!(cache.check(&p, NOW, 60), Ok(()));
        assert_eq!(cache.check(&p, NOW + 1, 60), Err(DpopError::Replay));
        assert_eq!(cache.check(&p, NOW + 61, 60), Ok(()), "after the window the entry has expired");
        assert_eq!(cache.len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn check_proof_never_panics(s in ".{0,512}") {
            let _ = check_proof(&s, "POST", HTU, Some("t"), NOW, 60);
        }
    }
}

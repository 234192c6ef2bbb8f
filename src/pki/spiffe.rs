//! The SPIFFE bundle (SPIFFE Trust Domain and Bundle standard, §4): one JWK Set carrying the
//! trust domain's X.509 authorities (`use` `x509-svid`, each with exactly its CA certificate in
//! `x5c` and no `kid`, as the X509-SVID standard's §6.1 requires) and JWT authorities (`use`
//! `jwt-svid`, each with its `kid`), with `spiffe_sequence` and `spiffe_refresh_hint`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_SIG_ED25519};
use x509_parser::public_key::PublicKey;

use crate::pki::{cert::parse_x509, Jwk, JwkSet, PkiError};

/// `use` of an X.509 authority in a SPIFFE bundle.
pub const USE_X509_SVID: &str = "x509-svid";
/// `use` of a JWT authority in a SPIFFE bundle.
pub const USE_JWT_SVID: &str = "jwt-svid";
/// The `spiffe_refresh_hint` Writ publishes, seconds: consumers re-read the bundle about this
/// often. Rotations keep old keys and CAs published for a whole token or certificate lifetime, so
/// a consumer this late still trusts everything in use.
pub const REFRESH_HINT_SECS: u64 = 300;

/// A SPIFFE bundle document, as served at `/spiffe-bundle` and stored in the ConfigMap
/// `writ-spiffe-bundle` (key `bundle.spiffe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpiffeBundle {
    /// The X.509 authorities first (current CA first), then the JWT authorities (current key first).
    pub keys: Vec<Jwk>,
    /// Increases whenever the contents change (§4.1.1): the unix time of the latest change.
    pub spiffe_sequence: u64,
    /// How often consumers should check for updates, seconds (§4.1.2).
    pub spiffe_refresh_hint: u64,
}

impl SpiffeBundle {
    /// The bundle of the CA certificates `ca_ders` (DER, current first) and the token keys `jwks`.
    pub fn new(ca_ders: &[Vec<u8>], jwks: &JwkSet, sequence: u64) -> Result<Self, PkiError> {
        let mut keys = Vec::with_capacity(ca_ders.len() + jwks.keys.len());
        for der in ca_ders {
            keys.push(x509_authority(der)?);
        }
        keys.extend(jwks.keys.iter().map(|k| Jwk { use_: USE_JWT_SVID.into(), alg: String::new(), ..k.clone() }));
        Ok(SpiffeBundle { keys, spiffe_sequence: sequence, spiffe_refresh_hint: REFRESH_HINT_SECS })
    }

    /// The DER of every X.509 authority's certificate.
    pub fn x509_authorities(&self) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .filter(|k| k.use_ == USE_X509_SVID)
            .filter_map(|k| k.x5c.as_ref()?.first().and_then(|c| STANDARD.decode(c).ok()))
            .collect()
    }

    /// The JWT authorities, as a JWK Set a [`crate::verify::Verifier`] takes.
    pub fn jwt_authorities(&self) -> JwkSet {
        JwkSet { keys: self.keys.iter().filter(|k| k.use_ == USE_JWT_SVID).cloned().collect() }
    }

    /// Parses a bundle document.
    pub fn from_json(json: &str) -> Result<Self, PkiError> {
        Ok(serde_json::from_str(json)?)
    }

    /// Serialises the bundle document.
    pub fn to_json(&self) -> Result<String, PkiError> {
        Ok(serde_json::to_string(self)?)
    }
}

/// The `x509-svid` JWK of a CA certificate: its public key (EC P-256 or P-384, RSA, or Ed25519)
/// and the certificate itself in `x5c`; no `kid` (X509-SVID §6.1: it "MUST NOT be set").
pub fn x509_authority(der: &[u8]) -> Result<Jwk, PkiError> {
    let cert = parse_x509(der)?;
    let spki = cert.public_key();
    let unsupported =
        |what: &str| PkiError::Parse { what: "CA public key", reason: format!("{what} is not supported") };
    let parsed = spki.parsed().map_err(|e| PkiError::Parse { what: "CA public key", reason: e.to_string() })?;
    let mut jwk = match parsed {
        PublicKey::EC(point) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve {
                Some(oid) if oid == OID_EC_P256 => Jwk::ec_point("P-256", 32, point.data()),
                Some(oid) if oid == OID_NIST_EC_P384 => Jwk::ec_point("P-384", 48, point.data()),
                _ => None,
            }
            .ok_or_else(|| unsupported("this elliptic curve"))?
        }
        PublicKey::RSA(rsa) => Jwk::rsa(rsa.modulus, rsa.exponent),
        PublicKey::Unknown(raw) if spki.algorithm.algorithm == OID_SIG_ED25519 => {
            Jwk { use_: String::new(), alg: String::new(), ..Jwk::ed25519(raw) }
        }
        _ => return Err(unsupported("this key type")),
    };
    jwk.use_ = USE_X509_SVID.into();
    jwk.kid = String::new();
    jwk.x5c = Some(vec![STANDARD.encode(der)]);
    Ok(jwk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, SigningKey};

    #[test]
    fn the_bundle_has_x509_and_jwt_authorities_in_the_standard_form() {
        let ca = CertificateAuthority::generate("writ test CA", 1_750_000_000, 86_400).expect("ca");
        let der = crate::pki::cert::parse_certificates(ca.cert_pem().as_bytes()).expect("der").remove(0);
        let es = SigningKey::generate().expect("key");
        let ed = SigningKey::generate_for(crate::pki::token::TokenAlgorithm::EdDsa).expect("key");
        let jwks = JwkSet { keys: vec![es.public_jwk(), ed.public_jwk()] };
        let bundle = SpiffeBundle::new(std::slice::from_ref(&der), &jwks, 42).expect("bundle");
        let json: serde_json::Value = serde_json::from_str(&bundle.to_json().expect("json")).expect("value");
        assert_eq!(json["spiffe_sequence"], 42);
        assert_eq!(json["spiffe_refresh_hint"], REFRESH_HINT_SECS);
        let keys = json["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0]["use"], "x509-svid");
        assert_eq!(keys[0]["kty"], "EC");
        assert_eq!(keys[0]["crv"], "P-256");
        assert_eq!(keys[0]["x5c"].as_array().map(Vec::len), Some(1));
        assert!(keys[0].get("alg").is_none() && keys[0].get("kid").is_none(), "{}", keys[0]);
        assert_eq!(keys[1]["use"], "jwt-svid");
        assert_eq!(keys[1]["kid"], es.kid());
        assert_eq!(keys[2]["kid"], ed.kid());
        assert_eq!(bundle.x509_authorities(), vec![der]);
        let jwt = bundle.jwt_authorities();
        assert_eq!(jwt.keys.len(), 2);
        assert!(jwt.find(es.kid()).and_then(Jwk::verifying_key).is_some(), "jwt-svid keys verify tokens");
        assert_eq!(SpiffeBundle::from_json(&bundle.to_json().expect("json")).expect("parse"), bundle);
    }

    #[test]
    fn a_leaf_or_garbage_is_no_authority() {
        assert!(x509_authority(b"junk").is_err());
    }
}

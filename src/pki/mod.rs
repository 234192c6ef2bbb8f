//! Credentials: the certificate authority, pod certificates, capability tokens and signing key sets.
//!
//! This module is pure: it knows nothing about Kubernetes. Callers hand it plain values (names,
//! UIDs, PEM strings) and explicit unix-second timestamps, and get plain values back, so the
//! controller, the webhook and `writ verify` share one implementation and tests control the clock.
//!
//! - [`ca`]: the [`CertificateIssuer`] trait and the self-signed ECDSA P-256
//!   [`CertificateAuthority`] that mints pod (X.509-SVID) and webhook serving certificates.
//! - [`cert`]: what a pod certificate request and an issued certificate look like, SPIFFE IDs,
//!   and [`CertificateInfo`] to read back a stored certificate.
//! - [`token`]: Ed25519 [`SigningKey`]s, the capability token [`Claims`] and compact JWS signing.
//! - [`jwks`]: RFC 7517 JSON Web Keys and the rotating [`KeySet`].
//! - [`seal`]: HMAC seals over records Writ writes where tenants can write too.
//!
//! One crypto backend is used throughout: `aws-lc-rs` (directly, and through `rcgen` and
//! `x509-parser`'s `verify-aws` feature).

pub mod ca;
pub mod cert;
pub mod jwks;
pub mod seal;
pub mod spiffe;
pub mod token;

pub use ca::{CertificateAuthority, CertificateIssuer};
pub use cert::{
    spiffe_id, thumbprint, validate_spiffe_id, CertificateInfo, IssuedCertificate, KeyAlgorithm, PodCertificateRequest,
};
pub use jwks::{Jwk, JwkSet, KeySet, RetiredIssuer, RetiredKey, VerifyingKey};
pub use spiffe::SpiffeBundle;
pub use token::{
    decode_unverified, new_jti, sign, Actor, Capability, Claims, Confirmation, GrantRef, Header, PodRef, SigningKey,
    Task, TokenAlgorithm,
};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Everything that can go wrong while minting, parsing or signing credentials.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A request to issue a credential was rejected before any key was made.
    #[error("invalid certificate request: {0}")]
    InvalidRequest(String),

    /// A SPIFFE ID does not follow the SPIFFE ID specification.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The offending ID.
        id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// `rcgen` failed to build, sign or load a certificate or key.
    #[error("{operation}: {source}")]
    Certificate {
        /// What was being done, e.g. "signing pod certificate".
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// A user-provided CA certificate or key cannot be used as the issuing CA.
    #[error("invalid CA: {0}")]
    InvalidCa(String),

    /// PEM, DER or X.509 input could not be parsed.
    #[error("parsing {what}: {reason}")]
    Parse {
        /// What was being parsed, e.g. "certificate PEM".
        what: &'static str,
        /// Why it failed.
        reason: String,
    },

    /// A signing key could not be generated or loaded.
    #[error("signing key: {0}")]
    Key(String),

    /// A compact JWS token is not well formed.
    #[error("malformed token: {0}")]
    Token(String),

    /// A key set stored in a Secret is incomplete or inconsistent.
    #[error("key set: {0}")]
    KeySet(String),

    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,

    /// JSON (de)serialisation failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// PEM with `\n` line endings (the `pem` crate writes `\r\n` by default,
/// which some tools and byte-for-byte comparisons trip over).
pub(crate) fn pem_lf(block: &pem::Pem) -> String {
    pem::encode_config(block, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

/// The current time in unix seconds.
///
/// The only place in the library that reads the system clock: everything else takes `now` as an
/// argument so that tests control time.
pub fn now_unix() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// base64url without padding (RFC 4648 §5), the encoding JOSE uses everywhere.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Appends base64url without padding of `bytes` to `out`.
pub(crate) fn b64url_into(bytes: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(bytes, out);
}

/// Strict base64url-without-padding decoding (padding and non-canonical trailing bits rejected).
pub(crate) fn b64url_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(s)
}

/// Fills `N` bytes from the system random number generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut buf = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut buf).map_err(|_| PkiError::Random)?;
    Ok(buf)
}

/// Lowercase hex without separators.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Canonical form of a certificate serial number written as hex: lowercase, no `:` separators and
/// no leading zeros, so `00:AB:cd` and `abcd` compare equal.
pub fn normalize_serial_hex(serial: &str) -> String {
    let s: String = serial.chars().filter(|c| *c != ':').map(|c| c.to_ascii_lowercase()).collect();
    let trimmed = s.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_unix_is_after_2024() {
        assert!(now_unix() > 1_704_067_200);
    }

    #[test]
    fn serials_normalise_case_separators_and_leading_zeros() {
        assert_eq!(normalize_serial_hex("00:AB:cd"), "abcd");
        assert_eq!(normalize_serial_hex("abcd"), "abcd");
        assert_eq!(normalize_serial_hex("0000"), "0");
    }

    #[test]
    fn hex_and_base64url_encode_as_expected() {
        assert_eq!(to_hex(&[0x00, 0xab, 0x10]), "00ab10");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64url_decode("-_8").ok(), Some(vec![0xfb, 0xff]));
        assert!(b64url_decode("-_8=").is_err(), "padding is rejected");
    }

    #[test]
    fn random_bytes_differ() {
        let a = random_bytes::<16>().expect("rng");
        let b = random_bytes::<16>().expect("rng");
        assert_ne!(a, b);
    }
}

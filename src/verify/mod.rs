//! Verifying a Writ capability token, for resource servers.
//!
//! A request from an agent carries two things: the pod's X.509-SVID (as the
//! TLS client certificate, or forwarded by a proxy) and a capability token
//! (`Authorization: Bearer …`). [`Verifier::verify`] checks them together,
//! with nothing but published data: the trust bundle (`/trust-bundle`), the
//! JWKS (`/.well-known/jwks.json`) and the revocation list (`/revocations`).
//! It needs no access to the Kubernetes API and none of the operator's
//! controller code.
//!
//! ```no_run
//! use writ::pki::JwkSet;
//! use writ::verify::{Attempt, RevocationList, Verifier};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bundle = std::fs::read_to_string("trust-bundle.pem")?;
//! let jwks = JwkSet::from_json(&std::fs::read_to_string("jwks.json")?)?;
//! let revocations: RevocationList = serde_json::from_str(&std::fs::read_to_string("revocations.json")?)?;
//! let verifier = Verifier::new(&bundle, jwks)?.with_revocations(revocations);
//!
//! let token = std::fs::read_to_string("grant.deploy-web.jwt")?;
//! let client_cert = std::fs::read("tls.crt")?; // PEM or DER
//! let attempt = Attempt {
//!     audience: "deploy-api",
//!     action: "k8s:deployments.patch",
//!     resource: "k8s:staging/deployments/web",
//! };
//! match verifier.verify(&token, &client_cert, &attempt, writ::pki::now_unix()) {
//!     Ok(claims) => println!("{} may do it for task {}", claims.sub, claims.task.id),
//!     Err(e) => println!("refused ({}): {e}", e.code()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The checks, in order: the token is well formed, is signed `ES256` or
//! `EdDSA` by a key of that algorithm in the JWKS, is within `nbf`..`exp`
//! (with bounded clock skew), names an accepted issuer (when the verifier is
//! given issuers: [`Verifier::with_issuers`]), is not revoked and is for the
//! audience; the certificate is within its validity, and a path leads from it
//! through the intermediate CAs the client presents (after the leaf, in the
//! same PEM) to a CA of the bundle, every certificate on it valid and every CA
//! allowed to issue (basic constraints, path length, key usage), the leaf an
//! end entity fit for TLS client authentication (extended key usage
//! clientAuth, when it names any); the certificate is not revoked and carries
//! the token's `sub` as its SPIFFE ID; its SHA-256 thumbprint equals
//! `cnf.x5t#S256`; and the token grants exactly the action on exactly the
//! resource. The first failing check is returned as a [`VerifyError`] variant.
//!
//! The path is built and checked by rustls-webpki (the validator rustls uses
//! for TLS, here on the aws-lc-rs backend), not by code of ours: a bundle may
//! hold an offline root alone while pods present the intermediate that
//! issued them, as with a CA brought to the operator that is an
//! intermediate under a company root.

pub mod dpop;
pub mod fetch;

use std::{collections::HashSet, sync::Arc};

use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::X509Certificate;

use crate::pki::{
    cert::{parse_certificates, parse_x509, serial_hex, spiffe_id_of, thumbprint},
    normalize_serial_hex,
    token::{self, Claims, TokenAlgorithm},
    JwkSet,
};

/// Clock skew tolerated by default on `nbf`, `exp` and certificate validity.
pub const DEFAULT_SKEW_SECS: i64 = 30;
/// The largest clock skew a [`Verifier`] accepts: more would make expiry meaningless.
pub const MAX_SKEW_SECS: i64 = 300;

/// The published revocation list: whole on `/revocations`; in parts, each in
/// this same format, in the ConfigMaps `writ-revocations`,
/// `writ-revocations-1` … `writ-revocations-7` (join them with
/// [`RevocationList::merged`]; a consumer that reads only some of the parts
/// misses revocations).
///
/// Each entry stays listed until the credential's own expiry (plus a margin),
/// after which signature and time checks refuse it anyway.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevocationList {
    /// Increases with every change; also the HTTP ETag.
    pub version: u64,
    /// Revoked capability tokens.
    #[serde(default)]
    pub tokens: Vec<RevokedToken>,
    /// Revoked pod certificates.
    #[serde(default)]
    pub certificates: Vec<RevokedCertificate>,
}

impl RevocationList {
    /// One list from its parts (the ConfigMaps `writ-revocations`,
    /// `writ-revocations-1` …; an absent part is an empty one): their entries
    /// together, and as version the sum of theirs, which grows whenever any
    /// part changes.
    pub fn merged<'a>(parts: impl IntoIterator<Item = &'a RevocationList>) -> RevocationList {
        parts.into_iter().fold(RevocationList::default(), |mut all, part| {
            all.version += part.version;
            all.tokens.extend_from_slice(&part.tokens);
            all.certificates.extend_from_slice(&part.certificates);
            all
        })
    }
}

/// A revoked token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RevokedToken {
    /// The token's `jti`.
    pub jti: String,
    /// The token's `exp` (unix seconds).
    pub expires_at: i64,
}

/// A revoked certificate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RevokedCertificate {
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
    /// The certificate's `notAfter` (unix seconds).
    pub expires_at: i64,
}

/// What the caller is about to allow.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// This resource server's audience name; must be in the token's `aud`.
    pub audience: &'a str,
    /// The action, e.g. `k8s:deployments.patch`; must be granted exactly.
    pub action: &'a str,
    /// The resource, e.g. `k8s:staging/deployments/web`; must be granted exactly.
    pub resource: &'a str,
}

/// Why a token (with its certificate) was refused. Each variant is one check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The token is not a compact JWS carrying Writ claims.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token is signed with an algorithm other than ES256 and EdDSA (including `none`), or
    /// with one its key is not for.
    #[error("token algorithm {0:?} is not accepted (only ES256 and EdDSA, each with a key of its own type)")]
    Algorithm(String),
    /// No key in the JWKS has the token's `kid`.
    #[error("no key {0:?} in the JWKS (unknown or retired signing key)")]
    UnknownKey(String),
    /// The signature does not verify with the key named by `kid`.
    #[error("the token signature does not verify")]
    Signature,
    /// `exp` has passed (beyond the allowed skew).
    #[error("the token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// The verifier's clock.
        now: i64,
    },
    /// `nbf` is in the future (beyond the allowed skew).
    #[error("the token is not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
        /// The verifier's clock.
        now: i64,
    },
    /// The token's `iss` is not one the verifier accepts.
    #[error("the token is issued by {got:?}, not by {expected:?}")]
    Issuer {
        /// The accepted issuers.
        expected: Vec<String>,
        /// The token's `iss`.
        got: String,
    },
    /// The token's `jti` is on the revocation list.
    #[error("token {0} has been revoked")]
    Revoked(String),
    /// This resource server is not among the token's audiences.
    #[error("the token is for {got:?}, not for audience {expected:?}")]
    Audience {
        /// The audience asked for.
        expected: String,
        /// The token's `aud`.
        got: Vec<String>,
    },
    /// The presented certificate cannot be read.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    /// No valid path leads from the presented certificate (through the
    /// intermediates presented with it) to a CA of the trust bundle.
    #[error("the certificate does not chain to the trust bundle: {0}")]
    UntrustedCertificate(String),
    /// The presented certificate is outside its validity period.
    #[error("the certificate is not valid now ({not_before}..{not_after}, now {now})")]
    CertificateExpired {
        /// `notBefore`.
        not_before: i64,
        /// `notAfter`.
        not_after: i64,
        /// The verifier's clock.
        now: i64,
    },
    /// The presented certificate's serial is on the revocation list.
    #[error("certificate {0} has been revoked")]
    CertificateRevoked(String),
    /// The certificate's SPIFFE ID is not the token's `sub`.
    #[error("the certificate is for {certificate:?} but the token is for {token:?}")]
    Subject {
        /// The token's `sub`.
        token: String,
        /// The certificate's URI SAN (empty if none).
        certificate: String,
    },
    /// The certificate is not the one the token is bound to (`cnf.x5t#S256`).
    #[error("the token is bound to another certificate (cnf.x5t#S256 mismatch)")]
    ConfirmationMismatch,
    /// The token is DPoP-bound and its proof is missing or refused (RFC 9449).
    #[error("{0}")]
    Dpop(dpop::DpopError),
    /// The token does not grant this action on this resource.
    #[error("the token does not grant {action} on {resource}")]
    NotGranted {
        /// The attempted action.
        action: String,
        /// The attempted resource.
        resource: String,
    },
}

impl VerifyError {
    /// A stable, machine-readable name for the failed check (for logs and metrics).
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::Algorithm(_) => "algorithm",
            VerifyError::UnknownKey(_) => "unknown-kid",
            VerifyError::Signature => "signature",
            VerifyError::Expired { .. } => "expired",
            VerifyError::NotYetValid { .. } => "not-yet-valid",
            VerifyError::Issuer { .. } => "issuer",
            VerifyError::Revoked(_) => "revoked",
            VerifyError::Audience { .. } => "audience",
            VerifyError::MalformedCertificate(_) => "malformed-certificate",
            VerifyError::UntrustedCertificate(_) => "untrusted-certificate",
            VerifyError::CertificateExpired { .. } => "certificate-expired",
            VerifyError::CertificateRevoked(_) => "certificate-revoked",
            VerifyError::Subject { .. } => "subject-mismatch",
            VerifyError::ConfirmationMismatch => "cnf-mismatch",
            VerifyError::NotGranted { .. } => "not-granted",
            VerifyError::Dpop(_) => "dpop",
        }
    }
}

/// Errors building a [`Verifier`].
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// The trust bundle has no usable CA certificate.
    #[error("trust bundle: {0}")]
    Bundle(String),
    /// The skew is out of range.
    #[error("clock skew {0}s is outside 0..={MAX_SKEW_SECS}s")]
    Skew(i64),
}

/// Checks tokens and certificates against published trust data.
///
/// Build it once and refresh it when the JWKS, bundle or revocation list
/// changes (they are small; poll with the ETag). It is cheap to share.
#[derive(Clone, Debug)]
pub struct Verifier {
    anchors: Vec<Anchor>,
    jwks: JwkSet,
    revoked_tokens: HashSet<String>,
    revoked_serials: HashSet<String>,
    issuers: Vec<String>,
    skew: i64,
    /// DPoP proof `jti`s seen within the window, shared by clones.
    replay: Arc<dpop::ReplayCache>,
}

impl Verifier {
    /// A verifier trusting the CA certificates of `bundle_pem` and the keys of `jwks`.
    pub fn new(bundle_pem: &str, jwks: JwkSet) -> Result<Self, VerifierError> {
        let ders = parse_certificates(bundle_pem.as_bytes()).map_err(|e| VerifierError::Bundle(e.to_string()))?;
        let mut anchors = Vec::new();
        for der in ders {
            anchors.push(Anchor::from_der(&der)?);
        }
        if anchors.is_empty() {
            return Err(VerifierError::Bundle("no CERTIFICATE in the bundle".into()));
        }
        Ok(Verifier {
            anchors,
            jwks,
            revoked_tokens: HashSet::new(),
            revoked_serials: HashSet::new(),
            issuers: Vec::new(),
            skew: DEFAULT_SKEW_SECS,
            replay: Arc::default(),
        })
    }

    /// Uses this revocation list (replacing any earlier one).
    pub fn with_revocations(mut self, list: RevocationList) -> Self {
        self.revoked_tokens = list.tokens.into_iter().map(|t| t.jti).collect();
        self.revoked_serials = list.certificates.into_iter().map(|c| normalize_serial_hex(&c.serial)).collect();
        self
    }

    /// Accepts only tokens whose `iss` is one of `issuers` (the operator's `--issuer`, and after a
    /// change of issuer the previous one too until its tokens expire). Without it, `iss` is not
    /// checked: a signature by a key of the JWKS already proves the operator issued the token.
    pub fn with_issuers<I: Into<String>>(mut self, issuers: impl IntoIterator<Item = I>) -> Self {
        self.issuers = issuers.into_iter().map(Into::into).collect();
        self
    }

    /// Tolerates this much clock skew (default [`DEFAULT_SKEW_SECS`]).
    pub fn with_skew(mut self, secs: i64) -> Result<Self, VerifierError> {
        if !(0..=MAX_SKEW_SECS).contains(&secs) {
            return Err(VerifierError::Skew(secs));
        }
        self.skew = secs;
        Ok(self)
    }

    /// Verifies `token`, presented with `certificate` (DER of the leaf, or
    /// PEM: the leaf first, then the intermediate CAs the client presented
    /// with it, as in a pod's `tls.crt`), for `attempt` at `now` (unix
    /// seconds). Returns the claims.
    pub fn verify(
        &self,
        token: &str,
        certificate: &[u8],
        attempt: &Attempt<'_>,
        now: i64,
    ) -> Result<Claims, VerifyError> {
        match parse_certificates(certificate) {
            Ok(chain) => self.verify_chain(token, &chain, attempt, now),
            Err(e) => {
                self.check_token(token, attempt, now)?;
                Err(VerifyError::MalformedCertificate(e.to_string()))
            }
        }
    }

    /// The checks of the token alone: signature, time, revocation, audience.
    fn check_token(&self, token: &str, attempt: &Attempt<'_>, now: i64) -> Result<Claims, VerifyError> {
        let claims = verify_signed(token, &self.jwks, now, self.skew)?;
        check_issuer(&claims, &self.issuers)?;
        if self.revoked_tokens.contains(&claims.jti) {
            return Err(VerifyError::Revoked(claims.jti));
        }
        // A per-call token dies with the grant token it was exchanged for.
        if let Some(gjti) = claims.gjti.as_ref().filter(|g| self.revoked_tokens.contains(*g)) {
            return Err(VerifyError::Revoked(gjti.clone()));
        }
        if !claims.aud.iter().any(|a| a == attempt.audience) {
            return Err(VerifyError::Audience { expected: attempt.audience.into(), got: claims.aud });
        }
        Ok(claims)
    }

    /// As [`Verifier::verify`], with the certificates already decoded: DER,
    /// the leaf first, then the intermediate CAs presented with it (e.g. a
    /// TLS server's `peer_certificates()`).
    pub fn verify_chain(
        &self,
        token: &str,
        chain: &[Vec<u8>],
        attempt: &Attempt<'_>,
        now: i64,
    ) -> Result<Claims, VerifyError> {
        let claims = self.check_token(token, attempt, now)?;
        let Some((der, intermediates)) = chain.split_first() else {
            return Err(VerifyError::MalformedCertificate("no certificate".into()));
        };
        let leaf = parse_x509(der).map_err(|e| VerifyError::MalformedCertificate(e.to_string()))?;
        self.check_chain(der, &leaf, intermediates, now)?;
        let spiffe = spiffe_id_of(&leaf).unwrap_or_default();
        if spiffe != claims.sub {
            return Err(VerifyError::Subject { token: claims.sub, certificate: spiffe });
        }
        if !constant_time_eq(thumbprint(der).as_bytes(), claims.cnf.x5t_s256.as_bytes()) {
            return Err(VerifyError::ConfirmationMismatch);
        }
        if !claims.grants(attempt.action, attempt.resource) {
            return Err(VerifyError::NotGranted { action: attempt.action.into(), resource: attempt.resource.into() });
        }
        Ok(claims)
    }

    /// Verifies a DPoP-bound token (`cnf.jkt`) presented with its DPoP `proof`
    /// for a request with method `htm` to `htu`, where no client certificate
    /// reaches this server (a gateway terminated TLS): the token's signature,
    /// time, revocation (`jti` and `gjti`), audience and capability as in
    /// [`Self::verify`]; the proof per RFC 9449 §4.3 (signature, `htm`, `htu`,
    /// `iat` within the skew window, `ath`, `jti` not replayed), signed by the
    /// key the token is bound to.
    pub fn verify_dpop(
        &self,
        token: &str,
        proof: &str,
        htm: &str,
        htu: &str,
        attempt: &Attempt<'_>,
        now: i64,
    ) -> Result<Claims, VerifyError> {
        let claims = self.check_token(token, attempt, now)?;
        let Some(jkt) = claims.cnf.jkt.as_deref() else {
            return Err(VerifyError::Dpop(dpop::DpopError::Binding));
        };
        let window = self.skew.max(dpop::DEFAULT_WINDOW_SECS);
        let p = dpop::check_proof(proof, htm, htu, Some(token.trim()), now, window).map_err(VerifyError::Dpop)?;
        if !constant_time_eq(p.jkt.as_bytes(), jkt.as_bytes()) {
            return Err(VerifyError::Dpop(dpop::DpopError::Binding));
        }
        self.replay.check(&p, now, window).map_err(VerifyError::Dpop)?;
        if !claims.grants(attempt.action, attempt.resource) {
            return Err(VerifyError::NotGranted { action: attempt.action.into(), resource: attempt.resource.into() });
        }
        Ok(claims)
    }

    /// A path leads from the leaf, through `intermediates` (DER, in any
    /// order), to a bundle CA (rustls-webpki: signatures, validity, basic
    /// constraints and path lengths, key usages, clientAuth), every
    /// certificate on it valid at `now` within the skew; the leaf is not
    /// revoked.
    fn check_chain(
        &self,
        der: &[u8],
        leaf: &X509Certificate<'_>,
        intermediates: &[Vec<u8>],
        now: i64,
    ) -> Result<(), VerifyError> {
        let (not_before, not_after) = (leaf.validity().not_before.timestamp(), leaf.validity().not_after.timestamp());
        if leaf.is_ca() {
            return Err(VerifyError::UntrustedCertificate("a CA certificate cannot be a client identity".into()));
        }
        if now + self.skew < not_before || now - self.skew > not_after {
            return Err(VerifyError::CertificateExpired { not_before, not_after, now });
        }
        // The path is judged at the moment closest to `now` at which the
        // leaf is valid (at most the skew away), so that every certificate
        // on it gets the same tolerance.
        let at = now.clamp(not_before, not_after);
        let leaf_der = CertificateDer::from(der);
        let end_entity = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|e| VerifyError::MalformedCertificate(format!("the certificate cannot be used: {e}")))?;
        let intermediates: Vec<CertificateDer<'_>> =
            intermediates.iter().map(|d| CertificateDer::from(d.as_slice())).collect();
        let anchors: Vec<TrustAnchor<'_>> = self.anchors.iter().map(|a| a.anchor.clone()).collect();
        // Why a path webpki built was turned down by the checks it leaves to
        // us (the anchor's own validity and path length).
        let refused = std::cell::RefCell::new(None::<String>);
        let anchor_ok = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
            let depth = path.intermediate_certificates().count();
            let anchor = self.anchors.iter().find(|a| a.anchor == *path.anchor());
            match anchor.map(|a| a.admits(depth, at, self.skew)) {
                Some(Ok(())) => Ok(()),
                Some(Err(why)) => {
                    *refused.borrow_mut() = Some(why);
                    Err(webpki::Error::UnknownIssuer)
                }
                None => Err(webpki::Error::UnknownIssuer),
            }
        };
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(u64::try_from(at).unwrap_or(0)));
        end_entity
            .verify_for_usage(
                supported_signature_algorithms(),
                &anchors,
                &intermediates,
                time,
                webpki::KeyUsage::client_auth(),
                None,
                Some(&anchor_ok),
            )
            .map_err(|e| {
                VerifyError::UntrustedCertificate(refused.borrow_mut().take().unwrap_or_else(|| path_error(&e, leaf)))
            })?;
        let serial = serial_hex(leaf);
        if self.revoked_serials.contains(&serial) {
            return Err(VerifyError::CertificateRevoked(serial));
        }
        Ok(())
    }
}

/// A CA of the trust bundle, as webpki takes it, with what webpki leaves to
/// the caller about a trust anchor: its validity and its path length limit.
#[derive(Clone, Debug)]
struct Anchor {
    anchor: TrustAnchor<'static>,
    subject: String,
    not_before: i64,
    not_after: i64,
    /// `basicConstraints` pathLenConstraint: how many intermediate CAs may follow it.
    path_len: Option<u32>,
}

impl Anchor {
    /// A bundle certificate: it must be a CA (`basicConstraints` CA:true, and
    /// keyCertSign if it has a key usage extension).
    fn from_der(der: &[u8]) -> Result<Self, VerifierError> {
        let cert = parse_x509(der).map_err(|e| VerifierError::Bundle(e.to_string()))?;
        let subject = cert.subject().to_string();
        let constraints = match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => bc.value,
            _ => return Err(VerifierError::Bundle(format!("{subject} is not a CA certificate"))),
        };
        if matches!(cert.key_usage(), Ok(Some(ku)) if !ku.value.key_cert_sign()) {
            return Err(VerifierError::Bundle(format!("{subject} is a CA whose key usage does not allow keyCertSign")));
        }
        let der = CertificateDer::from(der);
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| VerifierError::Bundle(format!("{subject} cannot be a trust anchor: {e}")))?
            .to_owned();
        Ok(Anchor {
            anchor,
            subject,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            path_len: constraints.path_len_constraint,
        })
    }

    /// Whether a path with `depth` intermediates may end at this anchor at `at`.
    fn admits(&self, depth: usize, at: i64, skew: i64) -> Result<(), String> {
        if at + skew < self.not_before || at - skew > self.not_after {
            return Err(format!("the trust anchor {} is not valid now", self.subject));
        }
        match self.path_len {
            Some(max) if depth > max as usize => Err(format!(
                "the trust anchor {} allows {max} intermediate CA(s) below it, the path has {depth}",
                self.subject
            )),
            _ => Ok(()),
        }
    }
}

/// The signature algorithms of the one crypto backend (aws-lc-rs), as rustls
/// offers them to webpki.
fn supported_signature_algorithms() -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.all
}

/// Why no path could be built, in words.
fn path_error(e: &webpki::Error, leaf: &X509Certificate<'_>) -> String {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => format!(
            "no path from it to a CA of the bundle: its issuer {} is neither in the bundle nor among the \
             intermediate certificates presented with it (or none of them verifies)",
            leaf.issuer()
        ),
        E::InvalidSignatureForPublicKey => {
            "a signature on the path does not verify with its issuer's key (a forged or mismatched CA)".into()
        }
        E::CertExpired { .. } | E::CertNotValidYet { .. } => "an intermediate CA on the path is not valid now".into(),
        E::EndEntityUsedAsCa => "a certificate on the path that issues it is not a CA (basicConstraints)".into(),
        E::CaUsedAsEndEntity => "a CA certificate cannot be a client identity".into(),
        E::PathLenConstraintViolated => {
            "a CA on the path has more CAs below it than its pathLenConstraint allows".into()
        }
        E::RequiredEkuNotFoundContext(_) => {
            "it is not for TLS client authentication (its extended key usage lacks clientAuth)".into()
        }
        E::UnsupportedCriticalExtension => "a certificate on the path has an unsupported critical extension".into(),
        other => format!("the path does not validate: {other}"),
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks only what a token proves by itself: form, algorithm, signature by
/// a key of `jwks`, and time (with `skew`). Used by introspection; a resource
/// server should use [`Verifier::verify`], which also checks the holder.
pub fn verify_signed(token: &str, jwks: &JwkSet, now: i64, skew: i64) -> Result<Claims, VerifyError> {
    let parsed = token::parse(token.trim()).map_err(|e| match e {
        crate::pki::PkiError::Token(m) => VerifyError::Malformed(m),
        other => VerifyError::Malformed(other.to_string()),
    })?;
    let Some(alg) = TokenAlgorithm::from_alg(&parsed.header.alg) else {
        return Err(VerifyError::Algorithm(parsed.header.alg));
    };
    let kid = parsed.header.kid.clone().unwrap_or_default();
    let key = jwks.find(&kid).and_then(|k| k.verifying_key()).ok_or(VerifyError::UnknownKey(kid))?;
    // The header's `alg` must be the key's own: a key is never used with another algorithm.
    if key.algorithm() != alg {
        return Err(VerifyError::Algorithm(parsed.header.alg));
    }
    if !key.verify(parsed.signing_input.as_bytes(), &parsed.signature) {
        return Err(VerifyError::Signature);
    }
    let claims = parsed.claims;
    if now - skew >= claims.exp {
        return Err(VerifyError::Expired { exp: claims.exp, now });
    }
    if now + skew < claims.nbf {
        return Err(VerifyError::NotYetValid { nbf: claims.nbf, now });
    }
    Ok(claims)
}

/// `iss` is one of `issuers` (any, when none are given).
pub fn check_issuer(claims: &Claims, issuers: &[String]) -> Result<(), VerifyError> {
    if issuers.is_empty() || issuers.contains(&claims.iss) {
        return Ok(());
    }
    Err(VerifyError::Issuer { expected: issuers.to_vec(), got: claims.iss.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{
        token::{sign, tests::sample_claims},
        CertificateAuthority, CertificateIssuer as _, KeyAlgorithm, PodCertificateRequest, SigningKey,
    };

    const NOW: i64 = 1_750_000_000;
    const SPIFFE: &str = "spiffe://cluster.local/ns/ci/agent/release-bot";

    struct World {
        ca: CertificateAuthority,
        key: SigningKey,
        cert_pem: String,
        token: String,
        claims: Claims,
    }

    fn issue(ca: &CertificateAuthority, spiffe: &str) -> String {
        let req = PodCertificateRequest {
            spiffe_id: spiffe.into(),
            namespace: "ci".into(),
            pod_name: "release-bot-1".into(),
            pod_uid: "uid-1".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            not_before: NOW - 60,
            ttl_secs: 3600,
        };
        ca.issue(&req).expect("issue").cert_pem
    }

    fn world() -> World {
        let ca = CertificateAuthority::generate("writ test CA", NOW - 3600, 86_400 * 365).expect("ca");
        let cert_pem = issue(&ca, SPIFFE);
        let thumb = crate::pki::CertificateInfo::from_pem(&cert_pem).expect("info").thumbprint;
        let key = SigningKey::generate().expect("key");
        let claims = sample_claims(&thumb, NOW);
        let token = sign(&key, &claims).expect("sign");
        World { ca, key, cert_pem, token, claims }
    }

    fn verifier(w: &World) -> Verifier {
        Verifier::new(w.ca.cert_pem(), JwkSet { keys: vec![w.key.public_jwk()] }).expect("verifier")
    }

    const ATTEMPT: Attempt<'static> =
        Attempt { audience: "deploy-api", action: "k8s:deployments.patch", resource: "k8s:staging/deployments/web" };

    #[test]
    fn a_good_token_with_its_certificate_verifies() {
        let w = world();
        let claims = verifier(&w).verify(&w.token, w.cert_pem.as_bytes(), &ATTEMPT, NOW + 10).expect("verifies");
        assert_eq!(claims, w.claims);
        // DER works as well as PEM.
        let der = parse_certificates(w.cert_pem.as_bytes()).expect("der").remove(0);
        verifier(&w).verify(&w.token, &der, &ATTEMPT, NOW + 10).expect("DER verifies");
    }

    #[test]
    fn each_check_fails_with_its_own_error() {
        let w = world();
        let v = verifier(&w);
        let cert = w.cert_pem.as_bytes();
        let code = |r: Result<Claims, VerifyError>| r.expect_err("refused").code();
        assert_eq!(code(v.verify(&w.token, cert, &ATTEMPT, NOW + 900 + DEFAULT_SKEW_SECS)), "expired");
        assert_eq!(code(v.verify(&w.token, cert, &ATTEMPT, NOW - DEFAULT_SKEW_SECS - 1)), "not-yet-valid");
        assert_eq!(code(v.verify(&w.token, cert, &Attempt { audience: "billing", ..ATTEMPT }, NOW)), "audience");
        assert_eq!(
            code(v.verify(&w.token, cert, &Attempt { action: "k8s:deployments.delete", ..ATTEMPT }, NOW)),
            "not-granted"
        );
        assert_eq!(
            code(v.verify(&w.token, cert, &Attempt { resource: "k8s:prod/deployments/web", ..ATTEMPT }, NOW)),
            "not-granted"
        );
        // Another pod of the same agent: right SPIFFE ID, wrong certificate.
        let other = issue(&w.ca, SPIFFE);
        assert_eq!(code(v.verify(&w.token, other.as_bytes(), &ATTEMPT, NOW)), "cnf-mismatch");
        // Another agent's certificate.
        let stranger = issue(&w.ca, "spiffe://cluster.local/ns/ci/agent/auditor");
        assert_eq!(code(v.verify(&w.token, stranger.as_bytes(), &ATTEMPT, NOW)), "subject-mismatch");
        // A certificate from another CA with the same names.
        let rogue = CertificateAuthority::generate("writ test CA", NOW - 3600, 86_400).expect("ca");
        assert_eq!(code(v.verify(&w.token, issue(&rogue, SPIFFE).as_bytes(), &ATTEMPT, NOW)), "untrusted-certificate");
        // The certificate's own expiry (one hour).
        let late = NOW + 3600;
        let long = sign(&w.key, &Claims { exp: late + 3600, ..w.claims.clone() }).expect("sign");
        assert_eq!(code(v.verify(&long, cert, &ATTEMPT, late + DEFAULT_SKEW_SECS)), "certificate-expired");
        assert_eq!(code(v.verify(&w.token, b"garbage", &ATTEMPT, NOW)), "malformed-certificate");
        assert_eq!(code(v.verify("a.b", cert, &ATTEMPT, NOW)), "malformed");
    }

    #[test]
    fn revoked_tokens_and_certificates_are_refused() {
        let w = world();
        let serial = crate::pki::CertificateInfo::from_pem(&w.cert_pem).expect("info").serial_hex;
        let list = |tokens, certificates| RevocationList { version: 1, tokens, certificates };
        let v = verifier(&w)
            .with_revocations(list(vec![RevokedToken { jti: w.claims.jti.clone(), expires_at: w.claims.exp }], vec![]));
        assert_eq!(
            v.verify(&w.token, w.cert_pem.as_bytes(), &ATTEMPT, NOW),
            Err(VerifyError::Revoked(w.claims.jti.clone()))
        );
        let v = verifier(&w).with_revocations(list(
            vec![],
            vec![RevokedCertificate { serial: format!("00{}", serial.to_uppercase()), expires_at: NOW + 3600 }],
        ));
        assert_eq!(
            v.verify(&w.token, w.cert_pem.as_bytes(), &ATTEMPT, NOW),
            Err(VerifyError::CertificateRevoked(serial))
        );
    }

    #[test]
    fn a_per_call_token_is_refused_when_its_grant_token_is_revoked() {
        let w = world();
        let mut per_call = w.claims.clone();
        per_call.jti = crate::pki::token::new_jti().expect("jti");
        per_call.gjti = Some(w.claims.jti.clone());
        per_call.txn = Some("txn-1".into());
        let token = sign(&w.key, &per_call).expect("sign");
        let revoke = |jti: &str| {
            verifier(&w).with_revocations(RevocationList {
                version: 1,
                tokens: vec![RevokedToken { jti: jti.into(), expires_at: w.claims.exp }],
                certificates: vec![],
            })
        };
        let ok = verifier(&w).verify(&token, w.cert_pem.as_bytes(), &ATTEMPT, NOW).expect("valid per-call token");
        assert_eq!((ok.gjti.as_deref(), ok.txn.as_deref()), (Some(w.claims.jti.as_str()), Some("txn-1")));
        assert_eq!(
            revoke(&w.claims.jti).verify(&token, w.cert_pem.as_bytes(), &ATTEMPT, NOW),
            Err(VerifyError::Revoked(w.claims.jti.clone())),
            "its gjti is revoked"
        );
        assert_eq!(
            revoke(&per_call.jti).verify(&token, w.cert_pem.as_bytes(), &ATTEMPT, NOW),
            Err(VerifyError::Revoked(per_call.jti.clone())),
            "its own jti is revoked"
        );
    }

    #[test]
    fn signatures_keys_and_algorithms_are_checked() {
        let w = world();
        let v = verifier(&w);
        let cert = w.cert_pem.as_bytes();
        // Signed by a key that is not in the JWKS, under a kid that is.
        let other = SigningKey::generate().expect("key");
        let forged = sign(&other, &w.claims).expect("sign");
        let (_, rest) = forged.split_once('.').expect("dot");
        let (h, _) = w.token.split_once('.').expect("dot");
        assert_eq!(v.verify(&format!("{h}.{rest}"), cert, &ATTEMPT, NOW), Err(VerifyError::Signature));
        assert_eq!(v.verify(&forged, cert, &ATTEMPT, NOW), Err(VerifyError::UnknownKey(other.kid().into())));
        // A changed claim breaks the signature.
        let (h, p_s) = w.token.split_once('.').expect("dot");
        let (_, s) = p_s.split_once('.').expect("dot");
        let widened = Claims { cap: vec![], ..w.claims.clone() };
        let p = crate::pki::b64url(&serde_json::to_vec(&widened).expect("json"));
        assert_eq!(v.verify(&format!("{h}.{p}.{s}"), cert, &ATTEMPT, NOW), Err(VerifyError::Signature));
        // alg=none and HS256 are refused before any key lookup.
        for alg in ["none", "HS256"] {
            let header = crate::pki::b64url(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, w.key.kid()).as_bytes());
            assert_eq!(
                v.verify(&format!("{header}.{p}.{s}"), cert, &ATTEMPT, NOW),
                Err(VerifyError::Algorithm(alg.into()))
            );
        }
    }

    #[test]
    fn eddsa_tokens_verify_as_the_option_and_a_key_is_used_only_with_its_own_algorithm() {
        let w = world();
        let ed = SigningKey::generate_for(crate::pki::TokenAlgorithm::EdDsa).expect("key");
        let token = sign(&ed, &w.claims).expect("sign");
        let jwks = JwkSet { keys: vec![w.key.public_jwk(), ed.public_jwk()] };
        let v = Verifier::new(w.ca.cert_pem(), jwks).expect("verifier");
        assert_eq!(w.key.algorithm(), crate::pki::TokenAlgorithm::Es256, "ES256 is the default");
        v.verify(&w.token, w.cert_pem.as_bytes(), &ATTEMPT, NOW).expect("ES256 verifies");
        v.verify(&token, w.cert_pem.as_bytes(), &ATTEMPT, NOW).expect("EdDSA verifies");
        // An EdDSA header naming the ES256 key (and the reverse) is refused before any signature check.
        let (_, rest) = w.token.split_once('.').expect("dot");
        for (alg, kid) in [("EdDSA", w.key.kid()), ("ES256", ed.kid())] {
            let header = crate::pki::b64url(format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#).as_bytes());
            assert_eq!(
                v.verify(&format!("{header}.{rest}"), w.cert_pem.as_bytes(), &ATTEMPT, NOW),
                Err(VerifyError::Algorithm(alg.into()))
            );
        }
    }

    #[test]
    fn issuers_are_checked_when_given() {
        let w = world();
        let cert = w.cert_pem.as_bytes();
        verifier(&w).verify(&w.token, cert, &ATTEMPT, NOW).expect("no issuers given: iss is not checked");
        let both = verifier(&w).with_issuers(["https://new.example", w.claims.iss.as_str()]);
        both.verify(&w.token, cert, &ATTEMPT, NOW).expect("the previous issuer is still accepted");
        let new_only = verifier(&w).with_issuers(["https://new.example"]);
        let err = new_only.verify(&w.token, cert, &ATTEMPT, NOW).expect_err("refused");
        assert_eq!(err.code(), "issuer");
        assert!(err.to_string().contains(&w.claims.iss), "{err}");
    }

    #[test]
    fn a_rotated_bundle_trusts_old_and_new_cas() {
        let w = world();
        let next = CertificateAuthority::generate("writ test CA 2", NOW - 60, 86_400).expect("ca");
        let bundle = format!("{}{}", w.ca.cert_pem(), next.cert_pem());
        let v = Verifier::new(&bundle, JwkSet { keys: vec![w.key.public_jwk()] }).expect("verifier");
        v.verify(&w.token, w.cert_pem.as_bytes(), &ATTEMPT, NOW).expect("old CA still trusted");
        let new_cert = issue(&next, SPIFFE);
        let thumb = crate::pki::CertificateInfo::from_pem(&new_cert).expect("info").thumbprint;
        let token = sign(&w.key, &sample_claims(&thumb, NOW)).expect("sign");
        v.verify(&token, new_cert.as_bytes(), &ATTEMPT, NOW).expect("new CA trusted");
    }

    #[test]
    fn skew_is_bounded_and_bundles_must_hold_cas() {
        let w = world();
        assert!(verifier(&w).with_skew(MAX_SKEW_SECS + 1).is_err());
        assert!(verifier(&w).with_skew(-1).is_err());
        let v = verifier(&w).with_skew(0).expect("skew");
        assert_eq!(
            v.verify(&w.token, w.cert_pem.as_bytes(), &ATTEMPT, NOW + 900).expect_err("expired").code(),
            "expired"
        );
        assert!(Verifier::new(&w.cert_pem, JwkSet::default()).is_err(), "a leaf is not a trust anchor");
        assert!(Verifier::new("", JwkSet::default()).is_err());
    }

    /// An offline company root (path length `root_len`) and, under it, an
    /// intermediate CA brought to Writ (its PEM with the root after it, as a
    /// user puts it into the CA Secret).
    struct Company {
        root_pem: String,
        root: rcgen::Issuer<'static, rcgen::KeyPair>,
        intermediate: CertificateAuthority,
    }

    fn ca_params(name: &str, constraints: rcgen::BasicConstraints) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(constraints);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        params
    }

    fn company(root_len: rcgen::BasicConstraints) -> Company {
        let root_key = KeyAlgorithm::EcdsaP256.generate_key().expect("root key");
        let root_params = ca_params("Company Root", root_len);
        let root_pem = root_params.self_signed(&root_key).expect("root").pem();
        let root = rcgen::Issuer::new(root_params, root_key);
        let key = KeyAlgorithm::EcdsaP256.generate_key().expect("intermediate key");
        let cert = ca_params("Company Writ Intermediate", rcgen::BasicConstraints::Constrained(0))
            .signed_by(&key, &root)
            .expect("intermediate");
        let intermediate = CertificateAuthority::from_pem(&format!("{}{root_pem}", cert.pem()), &key.serialize_pem())
            .expect("brought intermediate");
        Company { root_pem, root, intermediate }
    }

    /// A token for the certificate (PEM, leaf first) and a verifier trusting only `bundle`.
    fn token_for(cert_pem: &str, bundle: &str) -> (String, Verifier) {
        let thumb = crate::pki::CertificateInfo::from_pem(cert_pem).expect("info").thumbprint;
        let key = SigningKey::generate().expect("key");
        let token = sign(&key, &sample_claims(&thumb, NOW)).expect("sign");
        (token, Verifier::new(bundle, JwkSet { keys: vec![key.public_jwk()] }).expect("verifier"))
    }

    fn untrusted(r: Result<Claims, VerifyError>) -> String {
        match r {
            Err(VerifyError::UntrustedCertificate(why)) => why,
            other => panic!("expected untrusted-certificate, got {other:?}"),
        }
    }

    #[test]
    fn a_leaf_of_an_intermediate_verifies_against_the_offline_root_through_the_presented_chain() {
        let c = company(rcgen::BasicConstraints::Unconstrained);
        let issued = c.intermediate.issue(&PodCertificateRequest {
            spiffe_id: SPIFFE.into(),
            namespace: "ci".into(),
            pod_name: "release-bot-1".into(),
            pod_uid: "uid-1".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            not_before: NOW - 60,
            ttl_secs: 3600,
        });
        let issued = issued.expect("issue");
        let (token, v) = token_for(&issued.chain_pem, &c.root_pem);
        // The pod's tls.crt: the leaf, then the intermediate.
        let claims = v.verify(&token, issued.chain_pem.as_bytes(), &ATTEMPT, NOW).expect("verifies through the chain");
        assert_eq!(claims.sub, SPIFFE);
        // The same, with the certificates handed over decoded.
        let ders = parse_certificates(issued.chain_pem.as_bytes()).expect("ders");
        v.verify_chain(&token, &ders, &ATTEMPT, NOW).expect("verify_chain");
        // The leaf alone: nothing leads from it to the root.
        let why = untrusted(v.verify(&token, issued.cert_pem.as_bytes(), &ATTEMPT, NOW));
        assert!(why.contains("CN=Company Writ Intermediate") && why.contains("neither in the bundle"), "{why}");
        // An impostor intermediate: same name, another key, signed by the root.
        let key = KeyAlgorithm::EcdsaP256.generate_key().expect("key");
        let impostor = ca_params("Company Writ Intermediate", rcgen::BasicConstraints::Constrained(0))
            .signed_by(&key, &c.root)
            .expect("impostor");
        let forged = format!("{}{}", issued.cert_pem, impostor.pem());
        let why = untrusted(v.verify(&token, forged.as_bytes(), &ATTEMPT, NOW));
        assert!(!why.is_empty(), "a reason is given");
        // The intermediate as the anchor verifies too (the bundle Writ publishes holds both).
        let (_, both) = token_for(&issued.chain_pem, &c.intermediate.bundle_pem());
        let with_key = Verifier { jwks: v.jwks.clone(), ..both };
        with_key.verify(&token, issued.cert_pem.as_bytes(), &ATTEMPT, NOW).expect("the intermediate is an anchor");
    }

    #[test]
    fn ca_constraints_on_the_path_are_enforced() {
        // A root that allows no CA below it cannot anchor a path through an intermediate.
        let c = company(rcgen::BasicConstraints::Constrained(0));
        let req = PodCertificateRequest {
            spiffe_id: SPIFFE.into(),
            namespace: "ci".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            not_before: NOW - 60,
            ttl_secs: 3600,
        };
        let issued = c.intermediate.issue(&req).expect("issue");
        let (token, v) = token_for(&issued.chain_pem, &c.root_pem);
        let why = untrusted(v.verify(&token, issued.chain_pem.as_bytes(), &ATTEMPT, NOW));
        assert!(why.contains("allows 0 intermediate CA(s) below it, the path has 1"), "{why}");
        // An "intermediate" that is not a CA cannot issue.
        let root_key = KeyAlgorithm::EcdsaP256.generate_key().expect("key");
        let root_params = ca_params("Root", rcgen::BasicConstraints::Unconstrained);
        let root_pem = root_params.self_signed(&root_key).expect("root").pem();
        let root = rcgen::Issuer::new(root_params, root_key);
        let ee_key = KeyAlgorithm::EcdsaP256.generate_key().expect("key");
        let mut ee = rcgen::CertificateParams::default();
        ee.distinguished_name.push(rcgen::DnType::CommonName, "Not A CA");
        ee.is_ca = rcgen::IsCa::ExplicitNoCa;
        let ee_cert = ee.clone().signed_by(&ee_key, &root).expect("ee");
        let not_a_ca = rcgen::Issuer::new(ee, ee_key);
        let leaf = leaf_params(vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]);
        let leaf_key = KeyAlgorithm::EcdsaP256.generate_key().expect("key");
        let leaf = leaf.signed_by(&leaf_key, &not_a_ca).expect("leaf");
        let chain = format!("{}{}", leaf.pem(), ee_cert.pem());
        let (token, v) = token_for(&chain, &root_pem);
        let why = untrusted(v.verify(&token, chain.as_bytes(), &ATTEMPT, NOW));
        assert!(why.contains("not a CA"), "{why}");
    }

    fn leaf_params(ekus: Vec<rcgen::ExtendedKeyUsagePurpose>) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, "release-bot-1");
        params.subject_alt_names = vec![rcgen::SanType::URI(SPIFFE.try_into().expect("uri"))];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params
    }

    #[test]
    fn a_certificate_not_for_client_authentication_is_refused() {
        let root_key = KeyAlgorithm::EcdsaP256.generate_key().expect("key");
        let root_params = ca_params("Root", rcgen::BasicConstraints::Constrained(0));
        let root_pem = root_params.self_signed(&root_key).expect("root").pem();
        let root = rcgen::Issuer::new(root_params, root_key);
        let key = KeyAlgorithm::EcdsaP256.generate_key().expect("key");
        let server_only =
            leaf_params(vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]).signed_by(&key, &root).expect("leaf").pem();
        let (token, v) = token_for(&server_only, &root_pem);
        let why = untrusted(v.verify(&token, server_only.as_bytes(), &ATTEMPT, NOW));
        assert!(why.contains("clientAuth"), "{why}");
        // With clientAuth (or no extended key usage at all) it verifies.
        for ekus in [vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth], vec![]] {
            let client = leaf_params(ekus).signed_by(&key, &root).expect("leaf").pem();
            let (token, v) = token_for(&client, &root_pem);
            v.verify(&token, client.as_bytes(), &ATTEMPT, NOW).expect("a client certificate verifies");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tokens_never_verify_or_panic(t in ".{0,400}") {
            let w = world();
            proptest::prop_assert!(verifier(&w).verify(&t, w.cert_pem.as_bytes(), &ATTEMPT, NOW).is_err());
        }
    }
}

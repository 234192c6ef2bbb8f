//! Pod certificates (X.509-SVID compatible): requests, issued certificates, SPIFFE IDs, and
//! reading back what is stored.
//!
//! A pod certificate has:
//! - exactly one URI SAN, the SPIFFE ID `spiffe://<trust-domain>/ns/<ns>/agent/<name>`, and no
//!   other SANs;
//! - subject `CN=<pod name>, O=<namespace>, serialNumber=<pod UID>` (the X.520 `serialNumber`
//!   attribute, OID 2.5.4.5, carries the pod UID so a certificate names exactly one pod
//!   incarnation, not just a pod name that can be reused);
//! - `basicConstraints` CA:false (critical), `keyUsage` digitalSignature only (critical), as the
//!   X.509-SVID specification requires for leaf SVIDs, and `extendedKeyUsage` clientAuth +
//!   serverAuth;
//! - a random positive 128-bit serial, subject and authority key identifiers.

use std::fmt;
use std::str::FromStr;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use crate::pki::{b64url, random_bytes, to_hex, PkiError};

/// OID of the X.520 `serialNumber` attribute, used for the pod UID in the subject.
pub const OID_SUBJECT_SERIAL_NUMBER: [u64; 4] = [2, 5, 4, 5];

/// Longest SPIFFE ID accepted, in bytes (SPIFFE ID specification §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// The key algorithm of a pod's key pair.
///
/// The CA always signs with its own key (ECDSA P-256 for a generated CA); this only chooses the
/// pod's key. Serialised as in the AgentIdentity spec: `ECDSA-P256` or `Ed25519`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256: the most widely supported choice for TLS peers.
    #[default]
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
    /// Ed25519: smaller and faster, but not every TLS stack accepts it for client certificates.
    #[serde(rename = "Ed25519")]
    Ed25519,
}

impl KeyAlgorithm {
    /// The name used in specs and on the command line (`ECDSA-P256` or `Ed25519`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ECDSA-P256",
            KeyAlgorithm::Ed25519 => "Ed25519",
        }
    }

    fn signature_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// Generates a fresh key pair of this algorithm.
    pub fn generate_key(self) -> Result<KeyPair, PkiError> {
        KeyPair::generate_for(self.signature_algorithm())
            .map_err(|source| PkiError::Certificate { operation: "generating key pair", source })
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ECDSA-P256" => Ok(KeyAlgorithm::EcdsaP256),
            "Ed25519" => Ok(KeyAlgorithm::Ed25519),
            other => Err(PkiError::InvalidRequest(format!(
                "unknown key algorithm {other:?} (expected ECDSA-P256 or Ed25519)"
            ))),
        }
    }
}

/// What the controller asks the CA for: a certificate for one pod claiming one agent identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCertificateRequest {
    /// The SPIFFE ID to put in the single URI SAN (see [`spiffe_id`]).
    pub spiffe_id: String,
    /// The pod's namespace (subject `O`).
    pub namespace: String,
    /// The pod's name (subject `CN`).
    pub pod_name: String,
    /// The pod's UID (subject `serialNumber`).
    pub pod_uid: String,
    /// Which key pair to generate for the pod.
    pub key_algorithm: KeyAlgorithm,
    /// Start of validity, unix seconds. Callers usually pass `now` minus a small backdate so that
    /// peers with a slightly slow clock accept the certificate at once.
    pub not_before: i64,
    /// Lifetime in seconds from `not_before`; the certificate never outlives the CA.
    pub ttl_secs: i64,
}

impl PodCertificateRequest {
    /// Checks the request before any key is generated.
    pub fn validate(&self) -> Result<(), PkiError> {
        validate_spiffe_id(&self.spiffe_id)?;
        for (field, value) in [("namespace", &self.namespace), ("pod_name", &self.pod_name), ("pod_uid", &self.pod_uid)]
        {
            if value.is_empty() {
                return Err(PkiError::InvalidRequest(format!("{field} is empty")));
            }
            if value.chars().any(char::is_control) {
                return Err(PkiError::InvalidRequest(format!("{field} contains control characters")));
            }
        }
        if self.ttl_secs <= 0 {
            return Err(PkiError::InvalidRequest(format!("ttl_secs must be positive, got {}", self.ttl_secs)));
        }
        if self.not_before < 0 {
            return Err(PkiError::InvalidRequest(format!("not_before must not precede 1970, got {}", self.not_before)));
        }
        Ok(())
    }

    /// Builds the rcgen parameters for this request, valid until `not_after` (already clamped to
    /// the CA's lifetime by the caller).
    pub(crate) fn certificate_params(&self, not_after: i64, serial: &[u8]) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.pod_name.as_str());
        dn.push(DnType::OrganizationName, self.namespace.as_str());
        let uid = match rcgen::string::PrintableString::try_from(self.pod_uid.as_str()) {
            Ok(printable) => DnValue::PrintableString(printable),
            Err(_) => DnValue::Utf8String(self.pod_uid.clone()),
        };
        dn.push(DnType::CustomDnType(OID_SUBJECT_SERIAL_NUMBER.to_vec()), uid);
        params.distinguished_name = dn;
        let uri = rcgen::string::Ia5String::try_from(self.spiffe_id.as_str())
            .map_err(|source| PkiError::Certificate { operation: "encoding SPIFFE ID", source })?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(serial));
        set_validity(&mut params, self.not_before, not_after)?;
        Ok(params)
    }
}

/// A freshly issued certificate with its private key, ready to be written to the pod's Secret.
///
/// `Debug` never prints `key_pem`.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf followed by the CA certificates between it and its root, PEM (what a TLS peer
    /// presents): the leaf alone when a self-signed root signs it (the root is in the bundle).
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`). Secret.
    pub key_pem: String,
    /// The serial number as lowercase hex without separators or leading zeros; this is the value
    /// published in the revocation list.
    pub serial_hex: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// base64url (no padding) SHA-256 of the leaf DER: the RFC 8705 `x5t#S256` confirmation
    /// value that capability tokens carry in `cnf`.
    pub thumbprint: String,
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial_hex", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("thumbprint", &self.thumbprint)
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("chain_pem", &format_args!("<{} bytes>", self.chain_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl IssuedCertificate {
    /// Reads the stored fields back from `cert_pem` (what the controller sees after a restart).
    pub fn info(&self) -> Result<CertificateInfo, PkiError> {
        CertificateInfo::from_pem(&self.cert_pem)
    }
}

/// What the controller needs to know about a stored certificate to decide whether to rotate it
/// and what to revoke, parsed from the certificate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Serial number, lowercase hex without separators or leading zeros.
    pub serial_hex: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// The SPIFFE ID, if the certificate has exactly one URI SAN and it is a `spiffe://` URI.
    pub spiffe_id: Option<String>,
    /// The subject common name, if any.
    pub common_name: Option<String>,
    /// Whether `basicConstraints` says this is a CA.
    pub is_ca: bool,
    /// base64url (no padding) SHA-256 of the DER (RFC 8705 `x5t#S256`).
    pub thumbprint: String,
}

impl CertificateInfo {
    /// Parses the first certificate of a PEM document (a leaf or a chain starting with the leaf).
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let ders = parse_certificates(pem.as_bytes())?;
        let first = ders
            .first()
            .ok_or_else(|| PkiError::Parse { what: "certificate PEM", reason: "no CERTIFICATE block".into() })?;
        Self::from_der(first)
    }

    /// Parses one DER-encoded certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse_x509(der)?;
        let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
        let info = CertificateInfo {
            serial_hex: serial_hex(&cert),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            spiffe_id: spiffe_id_of(&cert),
            common_name,
            is_ca: cert.is_ca(),
            thumbprint: thumbprint(der),
        };
        Ok(info)
    }

    /// Whether the certificate should be replaced now: it is expired, or at most
    /// `rotate_before_secs` of its lifetime is left.
    pub fn needs_rotation(&self, now: i64, rotate_before_secs: i64) -> bool {
        now >= self.not_after.saturating_sub(rotate_before_secs)
    }

    /// Seconds of validity left at `now` (negative once expired).
    pub fn remaining_secs(&self, now: i64) -> i64 {
        self.not_after.saturating_sub(now)
    }
}

/// The RFC 8705 `x5t#S256` thumbprint of a DER certificate: base64url (no padding) of its SHA-256.
pub fn thumbprint(der: &[u8]) -> String {
    b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// The SPIFFE ID of an agent: `spiffe://<trust_domain>/ns/<namespace>/agent/<agent>`.
///
/// This only formats; [`validate_spiffe_id`] checks the result (the CA does so before issuing).
pub fn spiffe_id(trust_domain: &str, namespace: &str, agent: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/agent/{agent}")
}

/// Checks a workload SPIFFE ID against the SPIFFE ID specification.
///
/// Rules: scheme `spiffe://`; a trust domain of 1–255 characters from `[a-z0-9.-_]`; a non-empty
/// path (an X.509-SVID leaf must not carry the bare trust-domain ID) of `/`-separated segments,
/// each non-empty, not `.` or `..`, from `[A-Za-z0-9.-_]`; no query, fragment, port, user info,
/// percent-encoding or trailing `/`; at most 2048 bytes.
pub fn validate_spiffe_id(id: &str) -> Result<(), PkiError> {
    let err = |reason| Err(PkiError::InvalidSpiffeId { id: id.to_owned(), reason });
    if id.len() > MAX_SPIFFE_ID_LEN {
        return err("longer than 2048 bytes");
    }
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return err("scheme must be spiffe://");
    };
    let (trust_domain, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if trust_domain.is_empty() {
        return err("trust domain is empty");
    }
    if trust_domain.len() > 255 {
        return err("trust domain is longer than 255 characters");
    }
    if !trust_domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)) {
        return err("trust domain may contain only lowercase letters, digits, '.', '-' and '_'");
    }
    if path.is_empty() {
        return err("path is empty (a workload ID needs a path)");
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return err("path has an empty segment or a trailing '/'");
        }
        if segment == "." || segment == ".." {
            return err("path has a '.' or '..' segment");
        }
        if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return err("path may contain only letters, digits, '.', '-' and '_'");
        }
    }
    Ok(())
}

/// Splits PEM (one or more `CERTIFICATE` blocks) or a single DER certificate into DER blobs.
///
/// Input that starts (after whitespace) with `-----BEGIN` is read as PEM; anything else as DER.
/// Non-certificate PEM blocks are ignored.
pub fn parse_certificates(bytes: &[u8]) -> Result<Vec<Vec<u8>>, PkiError> {
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let blocks =
            pem::parse_many(trimmed).map_err(|e| PkiError::Parse { what: "certificate PEM", reason: e.to_string() })?;
        let ders: Vec<Vec<u8>> =
            blocks.into_iter().filter(|p| p.tag() == "CERTIFICATE").map(pem::Pem::into_contents).collect();
        if ders.is_empty() {
            return Err(PkiError::Parse { what: "certificate PEM", reason: "no CERTIFICATE block".into() });
        }
        Ok(ders)
    } else if trimmed.is_empty() {
        Err(PkiError::Parse { what: "certificate", reason: "empty input".into() })
    } else {
        Ok(vec![bytes.to_vec()])
    }
}

/// Parses one DER certificate, rejecting trailing data.
pub(crate) fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(PkiError::Parse { what: "certificate DER", reason: "trailing data after certificate".into() }),
        Err(e) => Err(PkiError::Parse { what: "certificate DER", reason: e.to_string() }),
    }
}

/// The serial of a parsed certificate in the canonical hex form (see [`crate::pki::normalize_serial_hex`]).
pub(crate) fn serial_hex(cert: &X509Certificate<'_>) -> String {
    crate::pki::normalize_serial_hex(&to_hex(cert.raw_serial()))
}

/// The certificate's SPIFFE ID: its URI SAN if there is exactly one URI SAN and it starts with
/// `spiffe://` (X.509-SVID allows no more than one).
pub(crate) fn spiffe_id_of(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) if uri.starts_with("spiffe://") => Some(uri.to_owned()),
        _ => None,
    }
}

/// A random positive serial number (about 126 random bits) whose first byte is in `0x10..=0x7f`:
/// positive, so DER adds no padding byte, and without a leading zero nibble, so its hex form is
/// always 32 characters and equal to its normalised form (see [`crate::pki::normalize_serial_hex`]).
pub(crate) fn random_serial() -> Result<[u8; 16], PkiError> {
    loop {
        let serial = random_bytes::<16>()?;
        if (0x10..=0x7f).contains(&serial[0]) {
            return Ok(serial);
        }
    }
}

/// Sets `not_before`/`not_after` from unix seconds (rejecting times before 1970 or after 9999).
pub(crate) fn set_validity(params: &mut CertificateParams, not_before: i64, not_after: i64) -> Result<(), PkiError> {
    if not_before < 0 || not_after <= not_before {
        return Err(PkiError::InvalidRequest(format!("empty or negative validity window {not_before}..{not_after}")));
    }
    let to_time = |secs: i64| {
        x509_parser::time::ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|_| PkiError::InvalidRequest(format!("time {secs} is out of range for a certificate")))
    };
    params.not_before = to_time(not_before)?;
    params.not_after = to_time(not_after)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;
    use crate::pki::CertificateIssuer as _;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};

    const NOW: i64 = 1_750_000_000;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("Writ test CA", NOW - 3600, 365 * 86400).expect("CA")
    }

    fn request(alg: KeyAlgorithm) -> PodCertificateRequest {
        PodCertificateRequest {
            spiffe_id: spiffe_id("cluster.local", "ci", "release-bot"),
            namespace: "ci".into(),
            pod_name: "release-bot-7d9f-abcde".into(),
            pod_uid: "0b6c6f0e-6a4f-4f55-9c1e-3f0f5d9a1b2c".into(),
            key_algorithm: alg,
            not_before: NOW - 60,
            ttl_secs: 3600,
        }
    }

    fn leaf_der(issued: &IssuedCertificate) -> Vec<u8> {
        parse_certificates(issued.cert_pem.as_bytes()).expect("pem").remove(0)
    }

    fn check_pod_certificate(alg: KeyAlgorithm) {
        let ca = ca();
        let issued = ca.issue(&request(alg)).expect("issue");
        let der = leaf_der(&issued);
        let cert = parse_x509(&der).expect("parse");

        // Exactly one SAN, the SPIFFE URI; no DNS names.
        let san = cert.subject_alternative_name().expect("san ext").expect("san present");
        assert_eq!(san.value.general_names.len(), 1);
        assert!(matches!(
            san.value.general_names[0],
            GeneralName::URI("spiffe://cluster.local/ns/ci/agent/release-bot")
        ));

        // Subject: CN = pod name, O = namespace, serialNumber = pod UID.
        let subject = cert.subject();
        assert_eq!(subject.iter_common_name().next().and_then(|a| a.as_str().ok()), Some("release-bot-7d9f-abcde"));
        assert_eq!(subject.iter_organization().next().and_then(|a| a.as_str().ok()), Some("ci"));
        let uid =
            subject.iter_attributes().find(|a| a.attr_type().to_id_string() == "2.5.4.5").and_then(|a| a.as_str().ok());
        assert_eq!(uid, Some("0b6c6f0e-6a4f-4f55-9c1e-3f0f5d9a1b2c"));

        // Not a CA; basic constraints present and critical.
        let bc = cert.basic_constraints().expect("bc").expect("bc present");
        assert!(bc.critical);
        assert!(!bc.value.ca);
        assert!(!cert.is_ca());

        // Key usage: digitalSignature only, critical.
        let ku = cert.key_usage().expect("ku").expect("ku present");
        assert!(ku.critical);
        assert!(ku.value.digital_signature());
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign() && !ku.value.key_encipherment());

        // EKU: clientAuth + serverAuth.
        let eku = cert.extended_key_usage().expect("eku").expect("eku present");
        assert!(eku.value.client_auth && eku.value.server_auth);

        // SKI and AKI present; AKI matches the CA's SKI.
        let ca_der = parse_certificates(ca.cert_pem().as_bytes()).expect("ca pem").remove(0);
        let ca_cert = parse_x509(&ca_der).expect("ca parse");
        let ski = |c: &X509Certificate<'_>| {
            c.extensions().iter().find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
        };
        let aki = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        });
        assert!(ski(&cert).is_some(), "leaf has SKI");
        assert_eq!(aki, ski(&ca_cert), "AKI matches CA SKI");

        // Serial is positive and matches serial_hex; validity window as requested.
        assert!(cert.raw_serial()[0] & 0x80 == 0 || cert.raw_serial()[0] == 0, "DER INTEGER is positive");
        assert_eq!(serial_hex(&cert), issued.serial_hex);
        assert_eq!(issued.serial_hex.len(), 32);
        assert_eq!(cert.validity().not_before.timestamp(), NOW - 60);
        assert_eq!(cert.validity().not_after.timestamp(), NOW - 60 + 3600);
        assert_eq!((issued.not_before, issued.not_after), (NOW - 60, NOW - 60 + 3600));

        // Chains to the CA: issuer name and signature.
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        cert.verify_signature(Some(ca_cert.public_key())).expect("signed by CA");

        // Subject key algorithm as requested.
        let alg_oid = &cert.public_key().algorithm.algorithm;
        match alg {
            KeyAlgorithm::EcdsaP256 => assert_eq!(alg_oid, &OID_KEY_TYPE_EC_PUBLIC_KEY),
            KeyAlgorithm::Ed25519 => assert_eq!(alg_oid, &OID_SIG_ED25519),
        }

        // The private key matches the certificate.
        let key = KeyPair::from_pem(&issued.key_pem).expect("key");
        assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(key.public_key_raw(), cert.public_key().subject_public_key.data.as_ref());

        // Chain = the leaf alone (its self-signed root is the bundle); thumbprint over the leaf DER.
        let chain = parse_certificates(issued.chain_pem.as_bytes()).expect("chain");
        assert_eq!(chain, vec![der.clone()]);
        assert_eq!(parse_certificates(ca.bundle_pem().as_bytes()).expect("bundle"), vec![ca_der]);
        assert_eq!(issued.thumbprint, thumbprint(&der));
    }

    #[test]
    fn ecdsa_pod_certificate_has_svid_fields_and_chains_to_ca() {
        check_pod_certificate(KeyAlgorithm::EcdsaP256);
    }

    #[test]
    fn ed25519_pod_certificate_has_svid_fields_and_chains_to_ca() {
        check_pod_certificate(KeyAlgorithm::Ed25519);
    }

    #[test]
    fn serials_and_keys_are_distinct_across_mints() {
        let ca = ca();
        let mut serials = std::collections::HashSet::new();
        let mut thumbprints = std::collections::HashSet::new();
        for _ in 0..20 {
            let issued = ca.issue(&request(KeyAlgorithm::EcdsaP256)).expect("issue");
            assert!(serials.insert(issued.serial_hex.clone()));
            assert!(thumbprints.insert(issued.thumbprint.clone()));
        }
    }

    #[test]
    fn certificate_info_reads_back_what_was_issued() {
        let issued = ca().issue(&request(KeyAlgorithm::Ed25519)).expect("issue");
        for pem in [&issued.cert_pem, &issued.chain_pem] {
            let info = CertificateInfo::from_pem(pem).expect("info");
            assert_eq!(info.serial_hex, issued.serial_hex);
            assert_eq!(info.not_before, issued.not_before);
            assert_eq!(info.not_after, issued.not_after);
            assert_eq!(info.thumbprint, issued.thumbprint);
            assert_eq!(info.spiffe_id.as_deref(), Some("spiffe://cluster.local/ns/ci/agent/release-bot"));
            assert_eq!(info.common_name.as_deref(), Some("release-bot-7d9f-abcde"));
            assert!(!info.is_ca);
        }
        assert_eq!(issued.info().expect("info").serial_hex, issued.serial_hex);
    }

    #[test]
    fn rotation_is_due_when_little_lifetime_is_left() {
        let issued = ca().issue(&request(KeyAlgorithm::EcdsaP256)).expect("issue");
        let info = issued.info().expect("info");
        let not_after = info.not_after;
        assert!(!info.needs_rotation(not_after - 1201, 1200));
        assert!(info.needs_rotation(not_after - 1200, 1200));
        assert!(info.needs_rotation(not_after + 5, 0));
        assert_eq!(info.remaining_secs(not_after - 10), 10);
    }

    #[test]
    fn certificate_lifetime_is_clamped_to_the_ca() {
        let ca = CertificateAuthority::generate("short CA", NOW - 60, 600).expect("CA");
        let issued = ca.issue(&request(KeyAlgorithm::EcdsaP256)).expect("issue");
        assert_eq!(issued.not_after, ca.not_after());
    }

    #[test]
    fn invalid_requests_are_rejected() {
        let ca = ca();
        let mut bad = request(KeyAlgorithm::EcdsaP256);
        bad.ttl_secs = 0;
        assert!(matches!(ca.issue(&bad), Err(PkiError::InvalidRequest(_))));
        let mut bad = request(KeyAlgorithm::EcdsaP256);
        bad.spiffe_id = "https://example.com/x".into();
        assert!(matches!(ca.issue(&bad), Err(PkiError::InvalidSpiffeId { .. })));
        let mut bad = request(KeyAlgorithm::EcdsaP256);
        bad.pod_uid = String::new();
        assert!(matches!(ca.issue(&bad), Err(PkiError::InvalidRequest(_))));
        let mut bad = request(KeyAlgorithm::EcdsaP256);
        bad.not_before = NOW + 400 * 86400;
        assert!(ca.issue(&bad).is_err(), "a certificate starting after the CA expires is refused");
    }

    #[test]
    fn issued_certificate_debug_hides_the_key() {
        let issued = ca().issue(&request(KeyAlgorithm::Ed25519)).expect("issue");
        let debug = format!("{issued:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("PRIVATE KEY"));
        assert!(debug.contains(&issued.serial_hex));
    }

    #[test]
    fn spiffe_ids_are_validated() {
        let good = spiffe_id("cluster.local", "ci", "release-bot");
        assert_eq!(good, "spiffe://cluster.local/ns/ci/agent/release-bot");
        assert!(validate_spiffe_id(&good).is_ok());
        assert!(validate_spiffe_id("spiffe://example.org/a_b/C-d.e").is_ok());
        for bad in [
            "",
            "spiffe://",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe:///ns/ci",
            "SPIFFE://example.org/a",
            "spiffe://Example.org/a",
            "spiffe://example.org:8080/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/./b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a%20b",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#frag",
            "spiffe://example.org/a/",
            "https://example.org/a",
        ] {
            assert!(validate_spiffe_id(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert!(validate_spiffe_id(&long).is_err());
    }

    #[test]
    fn key_algorithm_names_round_trip() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
            assert_eq!(alg.as_str().parse::<KeyAlgorithm>().expect("parse"), alg);
            let json = serde_json::to_string(&alg).expect("json");
            assert_eq!(json, format!("\"{}\"", alg.as_str()));
            assert_eq!(serde_json::from_str::<KeyAlgorithm>(&json).expect("json"), alg);
        }
        assert!("RSA".parse::<KeyAlgorithm>().is_err());
    }

    #[test]
    fn parse_certificates_accepts_pem_and_der_and_rejects_junk() {
        let issued = ca().issue(&request(KeyAlgorithm::EcdsaP256)).expect("issue");
        let der = leaf_der(&issued);
        assert_eq!(parse_certificates(&der).expect("der"), vec![der.clone()]);
        assert_eq!(
            parse_certificates(format!("{}{}", issued.cert_pem, ca().cert_pem()).as_bytes()).expect("pem").len(),
            2
        );
        assert!(parse_certificates(b"").is_err());
        assert!(parse_certificates(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
        assert!(CertificateInfo::from_der(b"not a certificate").is_err());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(CertificateInfo::from_der(&trailing).is_err());
    }
}

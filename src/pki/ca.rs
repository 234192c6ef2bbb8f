//! The certificate authority that signs pod certificates and the webhook's serving certificate.
//!
//! [`CertificateIssuer`] is the seam for other CA backends (Vault, cert-manager): the controller
//! only ever asks an issuer to [`issue`](CertificateIssuer::issue) a pod certificate and for the
//! [`bundle_pem`](CertificateIssuer::bundle_pem) to publish. [`CertificateAuthority`] is the
//! built-in backend: a self-signed ECDSA P-256 CA generated on first start, or a CA certificate
//! and key brought by the user, kept in a Secret as PEM.

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

use crate::pki::cert::{parse_certificates, parse_x509, random_serial, set_validity, thumbprint};
use crate::pki::{to_hex, IssuedCertificate, KeyAlgorithm, PkiError, PodCertificateRequest};

/// Something that can sign pod certificates.
///
/// Implemented by [`CertificateAuthority`]; an external CA backend would implement it too.
pub trait CertificateIssuer: Send + Sync {
    /// Generates a key pair for the pod and issues a certificate for it.
    fn issue(&self, req: &PodCertificateRequest) -> Result<IssuedCertificate, PkiError>;

    /// The CA certificates a peer needs to verify issued certificates, PEM (the trust bundle).
    fn bundle_pem(&self) -> String;
}

/// A certificate authority held in memory: its certificate(s) and signing key.
///
/// `Debug` never prints the key.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of every CA certificate, issuing certificate first.
    bundle_pem: String,
    /// PEM of the CA certificates an issued certificate's chain carries
    /// after the leaf: those of the bundle that are not self-signed (the
    /// intermediates of a brought CA). A self-signed root is a trust
    /// anchor, which a chain may leave out (RFC 8446 §4.4.2) and a peer
    /// takes from `ca.crt`: leaving it out makes each credential Secret
    /// about a fifth smaller, a fifth less for etcd to store and for every
    /// watch to carry (cert-manager leaves the root out of `tls.crt` too).
    chain_pem: String,
    not_before: i64,
    not_after: i64,
    serial_hex: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("serial_hex", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertificateAuthority {
    /// Generates a self-signed ECDSA P-256 root CA named `common_name`, valid from `now` for
    /// `validity_secs`.
    ///
    /// The CA has `basicConstraints` CA:true with path length 0 (it signs leaves only), key usage
    /// keyCertSign + cRLSign + digitalSignature, a random serial and a subject key identifier.
    pub fn generate(common_name: &str, now: i64, validity_secs: i64) -> Result<Self, PkiError> {
        if common_name.is_empty() {
            return Err(PkiError::InvalidRequest("CA common name is empty".into()));
        }
        if validity_secs <= 0 {
            return Err(PkiError::InvalidRequest(format!("CA validity must be positive, got {validity_secs}")));
        }
        let key = KeyAlgorithm::EcdsaP256.generate_key()?;
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let not_after = now.saturating_add(validity_secs);
        set_validity(&mut params, now, not_after)?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Certificate { operation: "self-signing CA certificate", source })?;
        Ok(CertificateAuthority {
            bundle_pem: cert.pem(),
            chain_pem: String::new(),
            issuer: Issuer::new(params, key),
            not_before: now,
            not_after,
            serial_hex: crate::pki::normalize_serial_hex(&to_hex(&serial)),
        })
    }

    /// Loads a CA brought by the user.
    ///
    /// `cert_pem` holds the issuing CA certificate first, optionally followed by the certificates
    /// above it (all of them become the trust bundle). `key_pem` is the issuing certificate's
    /// private key as unencrypted PKCS#8 (`-----BEGIN PRIVATE KEY-----`; convert a SEC1
    /// `EC PRIVATE KEY` with `openssl pkcs8 -topk8 -nocrypt`). The certificate must be a CA
    /// (`basicConstraints` CA:true, and keyCertSign if it has a key usage extension) and the key
    /// must be its key. Validity is not checked here: see [`not_after`](Self::not_after).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let ders = parse_certificates(cert_pem.as_bytes())?;
        let Some(issuing_der) = ders.first() else {
            return Err(PkiError::InvalidCa("no certificate in CA PEM".into()));
        };
        let cert = parse_x509(issuing_der)?;
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(PkiError::InvalidCa("certificate is not a CA (basicConstraints CA:true is missing)".into()));
        }
        match cert.key_usage() {
            Ok(Some(ku)) if !ku.value.key_cert_sign() => {
                return Err(PkiError::InvalidCa("certificate's key usage does not allow keyCertSign".into()));
            }
            Ok(_) => {}
            Err(e) => return Err(PkiError::InvalidCa(format!("unreadable key usage extension: {e}"))),
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidCa(format!("unusable CA key: {e}")))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::InvalidCa("private key does not match the CA certificate".into()));
        }
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let serial_hex = crate::pki::cert::serial_hex(&cert);
        let issuer = Issuer::from_ca_cert_der(&issuing_der.as_slice().into(), key)
            .map_err(|source| PkiError::Certificate { operation: "loading CA certificate", source })?;
        let pem_of = |der: &Vec<u8>| crate::pki::pem_lf(&pem::Pem::new("CERTIFICATE", der.clone()));
        let bundle_pem = ders.iter().map(pem_of).collect();
        let mut chain_pem = String::new();
        for der in &ders {
            let cert = parse_x509(der)?;
            if cert.subject().as_raw() != cert.issuer().as_raw() {
                chain_pem.push_str(&pem_of(der));
            }
        }
        Ok(CertificateAuthority { issuer, bundle_pem, chain_pem, not_before, not_after, serial_hex })
    }

    /// The CA certificate(s), PEM, issuing certificate first (store this in the CA Secret).
    pub fn cert_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The CA private key, PKCS#8 PEM (store this in the CA Secret; never log it).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Start of the issuing certificate's validity, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// End of the issuing certificate's validity, unix seconds. Issued certificates never outlive
    /// it; the operator should rotate the CA well before.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The issuing certificate's serial, lowercase hex.
    pub fn serial_hex(&self) -> &str {
        &self.serial_hex
    }

    /// Issues a TLS serving certificate (for the webhook and trust endpoints), valid from `now`
    /// for `ttl_secs` (clamped to the CA's lifetime), with the given DNS and IP SANs.
    ///
    /// The key is ECDSA P-256; the certificate is not a CA, has key usage digitalSignature and
    /// extended key usage serverAuth; its CN is the first DNS name (or IP).
    pub fn mint_serving_certificate(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        now: i64,
        ttl_secs: i64,
    ) -> Result<IssuedCertificate, PkiError> {
        if dns_names.is_empty() && ips.is_empty() {
            return Err(PkiError::InvalidRequest("a serving certificate needs at least one DNS name or IP".into()));
        }
        if ttl_secs <= 0 {
            return Err(PkiError::InvalidRequest(format!("ttl_secs must be positive, got {ttl_secs}")));
        }
        let mut params = CertificateParams::default();
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            let ia5 = rcgen::string::Ia5String::try_from(name.as_str())
                .map_err(|source| PkiError::Certificate { operation: "encoding DNS name", source })?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        let common_name = match (dns_names.first(), ips.first()) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => String::new(),
        };
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let not_after = self.clamp_not_after(now, ttl_secs)?;
        set_validity(&mut params, now, not_after)?;
        self.sign(params, KeyAlgorithm::EcdsaP256, &serial, now, not_after, "signing serving certificate")
    }

    fn clamp_not_after(&self, not_before: i64, ttl_secs: i64) -> Result<i64, PkiError> {
        let not_after = not_before.saturating_add(ttl_secs).min(self.not_after);
        if not_after <= not_before {
            return Err(PkiError::InvalidRequest(format!(
                "the CA expires at {} before a certificate starting at {not_before} would be valid",
                self.not_after
            )));
        }
        Ok(not_after)
    }

    fn sign(
        &self,
        params: CertificateParams,
        algorithm: KeyAlgorithm,
        serial: &[u8],
        not_before: i64,
        not_after: i64,
        operation: &'static str,
    ) -> Result<IssuedCertificate, PkiError> {
        let err = |source| PkiError::Certificate { operation, source };
        let (cert, key_pem) = match fresh_p256_key(algorithm)? {
            // The pod key never signs here: hand rcgen only its public half
            // (loading it as a signing key would re-derive the public key, a
            // second P-256 multiplication per mint).
            Some((pkcs8, public)) => (
                params.signed_by(&public, &self.issuer).map_err(err)?,
                crate::pki::pem_lf(&pem::Pem::new("PRIVATE KEY", pkcs8)),
            ),
            None => {
                let key = algorithm.generate_key()?;
                (params.signed_by(&key, &self.issuer).map_err(err)?, key.serialize_pem())
            }
        };
        let cert_pem = cert.pem();
        let chain_pem = format!("{cert_pem}{}", self.chain_pem);
        Ok(IssuedCertificate {
            thumbprint: thumbprint(cert.der()),
            cert_pem,
            chain_pem,
            key_pem,
            serial_hex: crate::pki::normalize_serial_hex(&to_hex(serial)),
            not_before,
            not_after,
        })
    }
}

/// An uncompressed P-256 public key, for rcgen.
struct RawP256(Vec<u8>);

impl rcgen::PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// For ECDSA P-256: a new PKCS#8 key from aws-lc-rs and its public key, read from
/// the document it wrote (it ends with `BIT STRING 00 04 x y`). `None` for
/// other algorithms, or if the layout is not the expected one (then the
/// caller takes the general path).
fn fresh_p256_key(algorithm: KeyAlgorithm) -> Result<Option<(Vec<u8>, RawP256)>, PkiError> {
    if algorithm != KeyAlgorithm::EcdsaP256 {
        return Ok(None);
    }
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc =
        aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| PkiError::Random)?;
    let der = doc.as_ref();
    if der.len() < 68 || der[der.len() - 68..der.len() - 64] != [0x03, 0x42, 0x00, 0x04] {
        return Ok(None);
    }
    Ok(Some((der.to_vec(), RawP256(der[der.len() - 65..].to_vec()))))
}

impl CertificateIssuer for CertificateAuthority {
    /// Issues an X.509-SVID for a pod (see [`crate::pki::cert`] for the exact profile), valid from
    /// `req.not_before` for `req.ttl_secs`, clamped to the CA's lifetime.
    fn issue(&self, req: &PodCertificateRequest) -> Result<IssuedCertificate, PkiError> {
        req.validate()?;
        let not_after = self.clamp_not_after(req.not_before, req.ttl_secs)?;
        let serial = random_serial()?;
        let params = req.certificate_params(not_after, &serial)?;
        self.sign(params, req.key_algorithm, &serial, req.not_before, not_after, "signing pod certificate")
    }

    fn bundle_pem(&self) -> String {
        self.bundle_pem.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::cert::spiffe_id;
    use crate::pki::CertificateInfo;
    use x509_parser::extensions::GeneralName;

    const NOW: i64 = 1_750_000_000;

    fn request() -> PodCertificateRequest {
        PodCertificateRequest {
            spiffe_id: spiffe_id("example.org", "ci", "bot"),
            namespace: "ci".into(),
            pod_name: "bot-1".into(),
            pod_uid: "uid-1".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            not_before: NOW,
            ttl_secs: 600,
        }
    }

    fn first_der(pem: &str) -> Vec<u8> {
        parse_certificates(pem.as_bytes()).expect("pem").remove(0)
    }

    #[test]
    fn generated_ca_is_a_path_length_zero_p256_root() {
        let ca = CertificateAuthority::generate("Writ CA", NOW, 86400).expect("CA");
        let der = first_der(ca.cert_pem());
        let cert = parse_x509(&der).expect("parse");
        let bc = cert.basic_constraints().expect("bc").expect("present");
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().expect("ku").expect("present");
        assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
        assert_eq!(cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()), Some("Writ CA"));
        assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
        cert.verify_signature(None).expect("self-signed");
        assert_eq!((ca.not_before(), ca.not_after()), (NOW, NOW + 86400));
        assert_eq!(cert.validity().not_after.timestamp(), NOW + 86400);
        assert_eq!(ca.bundle_pem(), ca.cert_pem());
        assert_eq!(ca.serial_hex(), CertificateInfo::from_pem(ca.cert_pem()).expect("info").serial_hex);
    }

    #[test]
    fn user_provided_ca_round_trips_and_keeps_issuing() {
        let original = CertificateAuthority::generate("Writ CA", NOW, 86400).expect("CA");
        let reloaded = CertificateAuthority::from_pem(original.cert_pem(), &original.key_pem()).expect("reload");
        assert_eq!(reloaded.cert_pem(), original.cert_pem());
        assert_eq!(reloaded.key_pem(), original.key_pem());
        assert_eq!(reloaded.not_after(), original.not_after());
        assert_eq!(reloaded.serial_hex(), original.serial_hex());

        // A certificate from the reloaded CA chains to the original CA certificate.
        let issued = reloaded.issue(&request()).expect("issue");
        let ca_der = first_der(original.cert_pem());
        let ca_cert = parse_x509(&ca_der).expect("ca");
        let leaf_der = first_der(&issued.cert_pem);
        let leaf = parse_x509(&leaf_der).expect("leaf");
        assert_eq!(leaf.issuer().as_raw(), ca_cert.subject().as_raw());
        leaf.verify_signature(Some(ca_cert.public_key())).expect("chains");
    }

    #[test]
    fn an_issued_chain_carries_a_brought_intermediate_but_no_self_signed_root() {
        // Company root, and an intermediate it signs that Writ is given (with the root after it).
        let root_key = KeyAlgorithm::EcdsaP256.generate_key().expect("root key");
        let mut root_params = CertificateParams::default();
        root_params.distinguished_name.push(DnType::CommonName, "Company Root");
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        set_validity(&mut root_params, NOW - 60, NOW + 86400).expect("validity");
        let root = root_params.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(root_params, root_key);
        let key = KeyAlgorithm::EcdsaP256.generate_key().expect("intermediate key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "Company Writ Intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        set_validity(&mut params, NOW - 60, NOW + 86400).expect("validity");
        let intermediate = params.signed_by(&key, &root_issuer).expect("intermediate");

        let brought =
            CertificateAuthority::from_pem(&format!("{}{}", intermediate.pem(), root.pem()), &key.serialize_pem())
                .expect("brought CA");
        let issued = brought.issue(&request()).expect("issue");
        let chain = parse_certificates(issued.chain_pem.as_bytes()).expect("chain");
        assert_eq!(chain, vec![first_der(&issued.cert_pem), intermediate.der().to_vec()], "leaf, intermediate");
        let bundle = parse_certificates(brought.bundle_pem().as_bytes()).expect("bundle");
        assert_eq!(bundle, vec![intermediate.der().to_vec(), root.der().to_vec()], "the bundle keeps both");

        // Writ's own CA is a self-signed root: the chain is the leaf alone.
        let own = CertificateAuthority::generate("Writ CA", NOW, 86400).expect("CA");
        let issued = own.issue(&request()).expect("issue");
        assert_eq!(parse_certificates(issued.chain_pem.as_bytes()).expect("chain"), vec![first_der(&issued.cert_pem)]);
    }

    #[test]
    fn user_provided_ca_rejects_non_ca_certificates_and_wrong_keys() {
        let ca = CertificateAuthority::generate("Writ CA", NOW, 86400).expect("CA");
        let leaf = ca.issue(&request()).expect("issue");
        let err = CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem).expect_err("leaf is not a CA");
        assert!(matches!(err, PkiError::InvalidCa(ref m) if m.contains("not a CA")), "{err}");

        let other = CertificateAuthority::generate("Other CA", NOW, 86400).expect("CA");
        let err = CertificateAuthority::from_pem(ca.cert_pem(), &other.key_pem()).expect_err("wrong key");
        assert!(matches!(err, PkiError::InvalidCa(ref m) if m.contains("does not match")), "{err}");

        assert!(CertificateAuthority::from_pem("", &ca.key_pem()).is_err());
        assert!(CertificateAuthority::from_pem(ca.cert_pem(), "not a key").is_err());
    }

    #[test]
    fn serving_certificate_has_dns_and_ip_sans_and_server_auth() {
        let ca = CertificateAuthority::generate("Writ CA", NOW, 86400).expect("CA");
        let dns = vec!["writ-webhook.writ-system.svc".to_owned(), "writ-webhook.writ-system.svc.cluster.local".into()];
        let ips = vec![IpAddr::from([127, 0, 0, 1])];
        let issued = ca.mint_serving_certificate(&dns, &ips, NOW, 3600).expect("serving");
        let der = first_der(&issued.cert_pem);
        let cert = parse_x509(&der).expect("parse");
        let san = cert.subject_alternative_name().expect("san").expect("present");
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("other:{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            vec![
                "dns:writ-webhook.writ-system.svc".to_owned(),
                "dns:writ-webhook.writ-system.svc.cluster.local".into(),
                "ip:[127, 0, 0, 1]".into()
            ]
        );
        let eku = cert.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.server_auth && !eku.value.client_auth);
        assert!(!cert.is_ca());
        assert_eq!(cert.validity().not_after.timestamp(), NOW + 3600);
        let ca_der = first_der(ca.cert_pem());
        cert.verify_signature(Some(parse_x509(&ca_der).expect("ca").public_key())).expect("chains");
        assert!(ca.mint_serving_certificate(&[], &[], NOW, 60).is_err());
        assert!(ca.mint_serving_certificate(&dns, &[], NOW, 0).is_err());
    }

    #[test]
    fn debug_hides_the_ca_key() {
        let ca = CertificateAuthority::generate("Writ CA", NOW, 86400).expect("CA");
        let debug = format!("{ca:?}");
        assert!(debug.contains("<redacted>") && !debug.contains("PRIVATE KEY"));
    }

    #[test]
    fn issuer_trait_is_object_safe() {
        let ca = CertificateAuthority::generate("Writ CA", NOW, 86400).expect("CA");
        let issuer: &dyn CertificateIssuer = &ca;
        assert!(issuer.issue(&request()).is_ok());
        assert!(issuer.bundle_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    }
}

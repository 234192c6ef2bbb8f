//! `writ inspect`: decode a capability token or a certificate and show its
//! fields, for people debugging a refusal. It never prints key material, and
//! says plainly that nothing was verified.

use std::fmt::Write as _;

use serde::Serialize;

use crate::pki::{cert::parse_certificates, token::decode_unverified, CertificateInfo};

/// What a file turned out to be.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Inspected {
    /// A capability token (JWT).
    #[serde(rename_all = "camelCase")]
    Token {
        /// The JOSE header.
        header: crate::pki::token::Header,
        /// The claims, unverified.
        claims: Box<crate::pki::token::Claims>,
    },
    /// One or more certificates.
    #[serde(rename_all = "camelCase")]
    Certificates {
        /// Each certificate's fields.
        certificates: Vec<CertificateFields>,
    },
}

/// The readable fields of a certificate.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateFields {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// `notBefore`, RFC 3339.
    pub not_before: String,
    /// `notAfter`, RFC 3339.
    pub not_after: String,
    /// The SPIFFE ID (URI SAN), if any.
    pub spiffe_id: Option<String>,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
    /// Public key algorithm.
    pub key_algorithm: String,
    /// RFC 8705 `x5t#S256` thumbprint (what a token's `cnf` must equal).
    pub thumbprint: String,
}

/// Errors from `writ inspect`.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The input holds a private key; it is not printed.
    #[error("the input holds a private key; writ inspect never prints key material")]
    PrivateKey,
    /// The input is neither a token nor a certificate.
    #[error("not a Writ token or a PEM/DER certificate: {0}")]
    Unrecognised(String),
}

/// Decodes `input` (a JWT, or PEM/DER certificates) without verifying it.
pub fn inspect(input: &[u8]) -> Result<Inspected, InspectError> {
    let text = String::from_utf8_lossy(input);
    if text.contains("PRIVATE KEY-----") {
        return Err(InspectError::PrivateKey);
    }
    if text.contains("-----BEGIN") || input.first() == Some(&0x30) {
        let ders = parse_certificates(input).map_err(|e| InspectError::Unrecognised(e.to_string()))?;
        let certificates = ders.iter().map(|der| fields(der)).collect::<Result<Vec<_>, _>>()?;
        if certificates.is_empty() {
            return Err(InspectError::Unrecognised("no CERTIFICATE block".into()));
        }
        return Ok(Inspected::Certificates { certificates });
    }
    let (header, claims) = decode_unverified(text.trim()).map_err(|e| InspectError::Unrecognised(e.to_string()))?;
    Ok(Inspected::Token { header, claims: Box::new(claims) })
}

fn fields(der: &[u8]) -> Result<CertificateFields, InspectError> {
    let bad = |e: crate::pki::PkiError| InspectError::Unrecognised(e.to_string());
    let info = CertificateInfo::from_der(der).map_err(bad)?;
    let cert = crate::pki::cert::parse_x509(der).map_err(bad)?;
    let oid = cert.public_key().algorithm.algorithm.to_id_string();
    let key_algorithm = match oid.as_str() {
        "1.2.840.10045.2.1" => "ECDSA".to_string(),
        "1.3.101.112" => "Ed25519".to_string(),
        "1.2.840.113549.1.1.1" => "RSA".to_string(),
        other => other.to_string(),
    };
    Ok(CertificateFields {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: info.serial_hex,
        not_before: rfc3339(info.not_before),
        not_after: rfc3339(info.not_after),
        spiffe_id: info.spiffe_id,
        is_ca: info.is_ca,
        key_algorithm,
        thumbprint: info.thumbprint,
    })
}

fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map(|t| t.to_string()).unwrap_or_else(|_| unix.to_string())
}

/// A time claim with its RFC 3339 form and how far it is from `now`.
fn when(unix: i64, now: i64) -> String {
    let delta = unix - now;
    let rel = if delta >= 0 { format!("in {}", human(delta)) } else { format!("{} ago", human(-delta)) };
    format!("{} ({rel})", rfc3339(unix))
}

fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

impl Inspected {
    /// A readable rendering at `now`.
    pub fn render(&self, now: i64) -> String {
        let mut out = String::new();
        match self {
            Inspected::Token { header, claims } => {
                let _ = writeln!(out, "Capability token (signature NOT verified; use `writ verify`)");
                let _ =
                    writeln!(out, "  algorithm:   {}  key id: {}", header.alg, header.kid.as_deref().unwrap_or("-"));
                let _ = writeln!(out, "  issuer:      {}", claims.iss);
                let _ = writeln!(out, "  subject:     {}", claims.sub);
                let _ = writeln!(out, "  audience:    {}", claims.aud.join(", "));
                let _ = writeln!(out, "  issued:      {}", when(claims.iat, now));
                let _ = writeln!(out, "  not before:  {}", when(claims.nbf, now));
                let _ = writeln!(out, "  expires:     {}", when(claims.exp, now));
                let _ = writeln!(out, "  token id:    {}", claims.jti);
                let _ = writeln!(
                    out,
                    "  grant:       {}/{} (uid {})",
                    claims.grant.namespace, claims.grant.name, claims.grant.uid
                );
                let _ = writeln!(out, "  pod:         {} (uid {})", claims.pod.name, claims.pod.uid);
                let intent = claims.task.intent.as_deref().map(|i| format!(": {i}")).unwrap_or_default();
                let _ = writeln!(out, "  task:        {}{intent}", claims.task.id);
                let _ = writeln!(out, "  requested:   {}", claims.req);
                let _ = writeln!(out, "  approved:    {}", claims.apr.as_deref().unwrap_or("-"));
                let _ = writeln!(out, "  bound to:    certificate x5t#S256 {}", claims.cnf.x5t_s256);
                let _ = writeln!(out, "  capabilities:");
                for c in &claims.cap {
                    let _ = writeln!(out, "    - {} on {}", c.action, c.resource);
                }
                let mut chain = Vec::new();
                let mut act = claims.act.as_ref();
                while let Some(a) = act {
                    chain.push(a.sub.as_str());
                    act = a.act.as_deref();
                }
                if !chain.is_empty() {
                    let _ = writeln!(out, "  delegated by: {}", chain.join(" <- "));
                }
            }
            Inspected::Certificates { certificates } => {
                for (i, c) in certificates.iter().enumerate() {
                    let what = if c.is_ca { "CA certificate" } else { "Certificate" };
                    let _ = writeln!(out, "{what} {} of {}", i + 1, certificates.len());
                    let _ = writeln!(out, "  subject:     {}", c.subject);
                    let _ = writeln!(out, "  issuer:      {}", c.issuer);
                    let _ = writeln!(out, "  SPIFFE ID:   {}", c.spiffe_id.as_deref().unwrap_or("-"));
                    let _ = writeln!(out, "  serial:      {}", c.serial);
                    let _ = writeln!(out, "  valid:       {} .. {}", c.not_before, c.not_after);
                    let _ = writeln!(out, "  key:         {}", c.key_algorithm);
                    let _ = writeln!(out, "  x5t#S256:    {}", c.thumbprint);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{token::sign, token::tests::sample_claims, CertificateAuthority, SigningKey};

    #[test]
    fn tokens_are_decoded_and_marked_unverified() {
        let key = SigningKey::generate().expect("key");
        let token = sign(&key, &sample_claims("thumb", 1_750_000_000)).expect("sign");
        let inspected = inspect(format!("{token}\n").as_bytes()).expect("token");
        let text = inspected.render(1_750_000_100);
        assert!(text.contains("NOT verified"), "{text}");
        assert!(text.contains("spiffe://cluster.local/ns/ci/agent/release-bot"), "{text}");
        assert!(text.contains("k8s:deployments.patch on k8s:staging/deployments/web"), "{text}");
        assert!(text.contains("in 13m"), "{text}");
        assert!(text.contains("delegated by: spiffe://cluster.local/ns/ci/agent/planner <- alice@example.com"));
        assert!(!text.contains(token.rsplit('.').next().expect("sig")), "the signature is not echoed");
    }

    #[test]
    fn certificates_show_their_identity_and_thumbprint() {
        let ca = CertificateAuthority::generate("Writ CA", 1_750_000_000, 86_400).expect("ca");
        let Inspected::Certificates { certificates } = inspect(ca.cert_pem().as_bytes()).expect("cert") else {
            panic!("not a certificate");
        };
        assert_eq!(certificates.len(), 1);
        assert!(certificates[0].is_ca && certificates[0].subject.contains("Writ CA"));
        assert_eq!(certificates[0].key_algorithm, "ECDSA");
        assert_eq!(certificates[0].not_before, "2025-06-15T15:06:40Z");
    }

    #[test]
    fn private_keys_and_junk_are_refused() {
        let ca = CertificateAuthority::generate("Writ CA", 1_750_000_000, 86_400).expect("ca");
        let both = format!("{}{}", ca.cert_pem(), ca.key_pem());
        assert!(matches!(inspect(both.as_bytes()), Err(InspectError::PrivateKey)));
        assert!(matches!(inspect(b"hello"), Err(InspectError::Unrecognised(_))));
    }
}

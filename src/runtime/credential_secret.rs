//! What the operator keeps of a pod's credential Secret.
//!
//! The leader caches every credential Secret, and a `k8s_openapi` `Secret`
//! holds its data as written: a certificate chain (about 1.4 KB of PEM) and a
//! JWT per grant (about 1 KB each), in a `BTreeMap` whose single node is
//! already 544 bytes, next to another for the labels. The controllers only
//! ever read a few facts out of that data (the leaf certificate's serial,
//! validity, SPIFFE ID and thumbprint; each token's `jti`, expiry, key id and
//! bindings), so [`CredentialSecret`] is the same API object decoded into
//! just those facts (with it, the live heap of a leader holding 4,000 pods,
//! credentials and grants went from 47 to 30 MB). It is served by the
//! same `secrets` endpoint, so it watches, caches and is owned like a
//! `Secret`. Key material never enters it: the private key is only noted as
//! present.

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use serde::Deserialize;

use crate::{
    api::AGENT_LABEL,
    controller::{
        credentials::{keys, stored_tokens, POD_LABEL},
        FINALIZER,
    },
    pki::{token, CertificateInfo},
};

/// A credential Secret as Writ reads it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "Secret")]
pub struct CredentialSecret {
    /// Name, namespace, creation and deletion timestamps, and finalizers
    /// other than Writ's; no uid (nothing reads it), no labels, annotations,
    /// owner references or field-ownership records, and, once the cache has
    /// it ([`CredentialSecret::trim`]), the `resourceVersion` only when it is
    /// not a plain number (see [`CredentialSecret::resource_version`] and
    /// [`CredentialSecret::finalizers`]).
    pub metadata: ObjectMeta,
    /// Whether Writ's finalizer is on the Secret (a flag, not a list and a
    /// string per Secret).
    writ_finalizer: bool,
    /// The `resourceVersion` when it is a plain number, as every API server
    /// backed by etcd writes it: a `u64` here instead of a string in the
    /// metadata and another in the cache's key for it.
    version: Option<u64>,
    /// The `writ.dev/pod` label: the pod the credential belongs to.
    pub pod: Option<String>,
    /// The `writ.dev/agent` label: the AgentIdentity of that pod.
    pub agent: Option<String>,
    /// Whether the private key is there (what marks a live credential).
    pub has_key: bool,
    /// The leaf certificate of `tls.crt`, if present and parseable.
    leaf: Option<StoredCertificate>,
    /// The capability tokens, `grant.<name>.jwt`, by grant name.
    pub tokens: Vec<StoredToken>,
}

/// A capability token held in a credential Secret: the grant it was minted
/// for (from its data key) and, when it decodes, the claims the controllers
/// decide on. Its six strings (grant, key id, `jti`, thumbprint and two
/// uids) are kept end to end in one allocation: apart, they were six heap
/// blocks and a 152-byte struct per token (about 2.5 MB at 10,000 tokens).
#[derive(Clone, PartialEq)]
pub struct StoredToken {
    /// The grant, then (if decoded) the key id, `jti`, thumbprint, grant uid
    /// and pod uid.
    text: Packed<6>,
    /// `exp`.
    exp: i64,
    /// `nbf`.
    nbf: i64,
    /// Whether the token decoded (else `text` is the grant alone).
    decoded: bool,
    /// Whether its header named a key id.
    has_kid: bool,
}

/// Strings kept end to end in one allocation (one heap block instead of one
/// per string, and 16 bytes plus 4 per string inline instead of 24 each).
#[derive(Clone, PartialEq)]
struct Packed<const N: usize> {
    text: Box<str>,
    /// Where each string ends in `text`.
    ends: [u32; N],
}

impl<const N: usize> Packed<N> {
    fn new(parts: [&str; N]) -> Self {
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u32; N];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            // What is packed comes from one Secret: at most 1.5 MB (the API server's limit).
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Self { text: text.into_boxed_str(), ends }
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize).unwrap_or_default()
    }
}

/// The claims of a stored token the controllers decide on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenFacts<'a> {
    /// Header `kid`: the signing key.
    pub kid: Option<&'a str>,
    /// `jti`.
    pub jti: &'a str,
    /// `exp`, unix seconds.
    pub exp: i64,
    /// `nbf`, unix seconds: the grant's activation time when it was minted.
    pub nbf: i64,
    /// `cnf.x5t#S256`: the certificate the token is bound to.
    pub thumbprint: &'a str,
    /// `grant.uid`.
    pub grant_uid: &'a str,
    /// `pod.uid`.
    pub pod_uid: &'a str,
}

impl StoredToken {
    /// The token for grant `grant`, with what it says when it decodes.
    pub fn new(grant: &str, facts: Option<TokenFacts<'_>>) -> Self {
        let parts = match &facts {
            Some(f) => [grant, f.kid.unwrap_or_default(), f.jti, f.thumbprint, f.grant_uid, f.pod_uid],
            None => [grant, "", "", "", "", ""],
        };
        Self {
            text: Packed::new(parts),
            exp: facts.map_or(0, |f| f.exp),
            nbf: facts.map_or(0, |f| f.nbf),
            decoded: facts.is_some(),
            has_kid: facts.is_some_and(|f| f.kid.is_some()),
        }
    }

    /// The grant the token was minted for.
    pub fn grant(&self) -> &str {
        self.text.get(0)
    }

    /// What the token says, `None` if it could not be decoded.
    pub fn facts(&self) -> Option<TokenFacts<'_>> {
        self.decoded.then(|| TokenFacts {
            kid: self.has_kid.then(|| self.text.get(1)),
            jti: self.text.get(2),
            exp: self.exp,
            nbf: self.nbf,
            thumbprint: self.text.get(3),
            grant_uid: self.text.get(4),
            pod_uid: self.text.get(5),
        })
    }
}

/// The leaf certificate of a credential Secret, as the controllers read it
/// (its serial, validity, SPIFFE ID and thumbprint; its strings in one
/// allocation).
#[derive(Clone, PartialEq)]
pub struct StoredCertificate {
    /// Serial, SPIFFE ID, thumbprint.
    text: Packed<3>,
    not_before: i64,
    not_after: i64,
    has_spiffe_id: bool,
}

/// What the controllers read of a stored certificate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CertificateFacts<'a> {
    /// Serial number, lowercase hex.
    pub serial_hex: &'a str,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// The SPIFFE ID, if the certificate has one.
    pub spiffe_id: Option<&'a str>,
    /// base64url SHA-256 of the DER (`x5t#S256`).
    pub thumbprint: &'a str,
}

impl StoredCertificate {
    /// What is kept of `info`.
    pub fn new(info: &CertificateInfo) -> Self {
        Self {
            text: Packed::new([&info.serial_hex, info.spiffe_id.as_deref().unwrap_or_default(), &info.thumbprint]),
            not_before: info.not_before,
            not_after: info.not_after,
            has_spiffe_id: info.spiffe_id.is_some(),
        }
    }

    /// Its facts.
    pub fn facts(&self) -> CertificateFacts<'_> {
        CertificateFacts {
            serial_hex: self.text.get(0),
            not_before: self.not_before,
            not_after: self.not_after,
            spiffe_id: self.has_spiffe_id.then(|| self.text.get(1)),
            thumbprint: self.text.get(2),
        }
    }
}

impl std::fmt::Debug for StoredCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.facts().fmt(f)
    }
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken").field("grant", &self.grant()).field("facts", &self.facts()).finish()
    }
}

impl From<Secret> for CredentialSecret {
    fn from(secret: Secret) -> Self {
        let tokens = stored_tokens(&secret)
            .into_iter()
            .map(|(grant, jwt)| {
                let decoded = token::decode_unverified(&jwt).ok();
                StoredToken::new(
                    &grant,
                    decoded.as_ref().map(|(h, c)| TokenFacts {
                        kid: h.kid.as_deref(),
                        jti: &c.jti,
                        exp: c.exp,
                        nbf: c.nbf,
                        thumbprint: &c.cnf.x5t_s256,
                        grant_uid: &c.grant.uid,
                        pod_uid: &c.pod.uid,
                    }),
                )
            })
            .collect();
        let data = secret.data.unwrap_or_default();
        let leaf = data
            .get(keys::CERT)
            .and_then(|pem| CertificateInfo::from_pem(&String::from_utf8_lossy(&pem.0)).ok())
            .map(|info| StoredCertificate::new(&info));
        let mut metadata = secret.metadata;
        let mut labels = metadata.labels.take().unwrap_or_default();
        metadata.annotations = None;
        metadata.managed_fields = None;
        // The owning pod is the `writ.dev/pod` label, written with it; the
        // garbage collector, not Writ, reads the owner reference.
        metadata.owner_references = None;
        metadata.uid = None;
        let mut finalizers = metadata.finalizers.take().unwrap_or_default();
        let all = finalizers.len();
        finalizers.retain(|f| f != FINALIZER);
        let writ_finalizer = finalizers.len() != all;
        metadata.finalizers = (!finalizers.is_empty()).then_some(finalizers);
        let version =
            metadata.resource_version.as_deref().and_then(|rv| rv.parse::<u64>().ok().filter(|v| v.to_string() == rv));
        Self {
            metadata,
            writ_finalizer,
            version,
            pod: labels.remove(POD_LABEL),
            agent: labels.remove(AGENT_LABEL),
            has_key: data.contains_key(keys::KEY),
            leaf,
            tokens,
        }
    }
}

super::served_as!(CredentialSecret, k8s_openapi::api::core::v1::Secret);

impl CredentialSecret {
    /// The stored certificate of a live credential: `None` without a private
    /// key (a revoked credential keeps its certificate but not its key).
    pub fn certificate(&self) -> Option<CertificateFacts<'_>> {
        self.leaf().filter(|_| self.has_key)
    }

    /// The leaf certificate of `tls.crt`, if present and parseable (live or
    /// not).
    pub fn leaf(&self) -> Option<CertificateFacts<'_>> {
        self.leaf.as_ref().map(StoredCertificate::facts)
    }

    /// The `resourceVersion` the API server gave this version of the
    /// Secret (the same as `ResourceExt::resource_version`, which reads only
    /// the metadata and so must not be used on a `CredentialSecret`).
    pub fn resource_version(&self) -> Option<String> {
        self.version.map(|v| v.to_string()).or_else(|| self.metadata.resource_version.clone())
    }

    /// Drops the metadata's `resourceVersion` when it is kept as a number,
    /// once the watch has read it: applied to every watch event before the
    /// cache stores it. Not before: the watch resumes from each event's
    /// `resourceVersion`, and re-lists everything when one has none.
    pub fn trim(&mut self) {
        if self.version.is_some() {
            self.metadata.resource_version = None;
        }
    }

    /// Whether Writ's finalizer (`writ.dev/revoke`) is on the Secret.
    pub fn has_writ_finalizer(&self) -> bool {
        self.writ_finalizer
    }

    /// Every finalizer on the Secret, Writ's too (`ResourceExt::finalizers`
    /// would miss it: it is kept as a flag).
    pub fn finalizers(&self) -> Vec<String> {
        let others = self.metadata.finalizers.iter().flatten().cloned();
        self.writ_finalizer.then(|| FINALIZER.to_string()).into_iter().chain(others).collect()
    }

    /// The `resourceVersion` as a number, when it is one (`None` for an
    /// opaque one: it cannot be ordered).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The token held for grant `grant`, if any.
    pub fn token(&self, grant: &str) -> Option<&StoredToken> {
        self.tokens.iter().find(|t| t.grant() == grant)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;
    use crate::pki::{
        ca::{CertificateAuthority, CertificateIssuer},
        cert::{IssuedCertificate, KeyAlgorithm, PodCertificateRequest},
    };

    const NOW: i64 = 1_750_000_000;

    fn issue(key_algorithm: KeyAlgorithm) -> IssuedCertificate {
        let ca = CertificateAuthority::generate("Writ CA", NOW, 86_400).expect("ca");
        ca.issue(&PodCertificateRequest {
            spiffe_id: "spiffe://test.writ.dev/ns/ns/sa/bot".into(),
            namespace: "ns".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            key_algorithm,
            not_before: NOW,
            ttl_secs: 600,
        })
        .expect("issue")
    }

    fn secret(data: &[(&str, String)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("writ-cred-1".into()),
                namespace: Some("ns".into()),
                resource_version: Some("7".into()),
                labels: Some(BTreeMap::from([
                    (POD_LABEL.to_string(), "p".to_string()),
                    (AGENT_LABEL.to_string(), "bot".to_string()),
                    ("app.kubernetes.io/managed-by".to_string(), "writ".to_string()),
                ])),
                annotations: Some(BTreeMap::from([("note".to_string(), "x".to_string())])),
                ..Default::default()
            },
            data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes()))).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_facts_and_drops_the_material() {
        let issued = issue(KeyAlgorithm::Ed25519);
        let key = token::SigningKey::generate().expect("signing key");
        let jwt = token::sign(&key, &token::tests::sample_claims(&issued.thumbprint, NOW)).expect("sign");
        let s = CredentialSecret::from(secret(&[
            (keys::CERT, issued.chain_pem.clone()),
            (keys::KEY, issued.key_pem.clone()),
            ("grant.g1.jwt", jwt.clone()),
            ("grant.bad.jwt", "not a jwt".into()),
        ]));
        assert_eq!((s.pod.as_deref(), s.agent.as_deref()), (Some("p"), Some("bot")));
        assert!(s.metadata.labels.is_none() && s.metadata.annotations.is_none());
        assert_eq!((s.resource_version().as_deref(), s.version()), (Some("7"), Some(7)));
        let wire = kube::ResourceExt::resource_version(&s);
        assert_eq!(wire.as_deref(), Some("7"), "the watch reads it from the decoded object");
        let mut cached = s.clone();
        cached.trim();
        assert_eq!((cached.resource_version().as_deref(), cached.version()), (Some("7"), Some(7)));
        assert!(cached.metadata.resource_version.is_none() && cached.metadata.uid.is_none(), "kept once, as a number");
        let cert = s.certificate().expect("a live certificate");
        let info = CertificateInfo::from_pem(&issued.chain_pem).expect("leaf");
        assert_eq!(
            (cert.serial_hex, cert.not_before, cert.not_after, cert.spiffe_id, cert.thumbprint),
            (
                info.serial_hex.as_str(),
                info.not_before,
                info.not_after,
                info.spiffe_id.as_deref(),
                info.thumbprint.as_str()
            )
        );
        assert_eq!(cert.thumbprint, issued.thumbprint);
        let facts = s.token("g1").and_then(StoredToken::facts).expect("decoded token");
        let (header, claims) = token::decode_unverified(&jwt).expect("sample decodes");
        assert_eq!(facts.jti, claims.jti);
        assert_eq!((facts.exp, facts.nbf), (claims.exp, claims.nbf));
        assert_eq!(facts.kid, header.kid.as_deref());
        assert_eq!(facts.thumbprint, issued.thumbprint);
        assert_eq!((facts.grant_uid, facts.pod_uid), (claims.grant.uid.as_str(), claims.pod.uid.as_str()));
        // An undecodable token is still held (and so still removed on revocation).
        assert_eq!(s.token("bad").map(|t| (t.grant(), t.facts().is_none())), Some(("bad", true)));
        // Nothing of the key or the raw token is kept.
        let kept = format!("{s:?}");
        assert!(!kept.contains("PRIVATE KEY") && !kept.contains(&jwt), "{kept}");
    }

    #[test]
    fn a_stored_token_gives_back_each_string_as_it_was() {
        let facts = TokenFacts {
            kid: Some("k-1"),
            jti: "j\u{e9}",
            exp: 42,
            nbf: 7,
            thumbprint: "",
            grant_uid: "g-uid",
            pod_uid: "p",
        };
        let t = StoredToken::new("grant-a", Some(facts));
        assert_eq!((t.grant(), t.facts()), ("grant-a", Some(facts)));
        let no_kid = TokenFacts { kid: None, ..facts };
        assert_eq!(StoredToken::new("g", Some(no_kid)).facts(), Some(no_kid));
        let empty_kid = TokenFacts { kid: Some(""), ..facts };
        assert_eq!(
            StoredToken::new("g", Some(empty_kid)).facts(),
            Some(empty_kid),
            "an empty kid is not an absent one"
        );
        let undecoded = StoredToken::new("g", None);
        assert_eq!((undecoded.grant(), undecoded.facts()), ("g", None));
    }

    #[test]
    fn writs_finalizer_is_a_flag_and_the_others_stay() {
        for (on, expected) in [
            (vec![], vec![]),
            (vec![FINALIZER], vec![FINALIZER]),
            (vec!["other/f", FINALIZER], vec![FINALIZER, "other/f"]),
            (vec!["other/f"], vec!["other/f"]),
        ] {
            let mut s = secret(&[]);
            s.metadata.finalizers = Some(on.iter().map(|f| f.to_string()).collect());
            let cached = CredentialSecret::from(s);
            assert_eq!(cached.finalizers(), expected, "{on:?}");
            assert_eq!(cached.has_writ_finalizer(), on.contains(&FINALIZER), "{on:?}");
            assert!(!cached.metadata.finalizers.iter().flatten().any(|f| f == FINALIZER), "kept once, as the flag");
        }
    }

    #[test]
    fn an_opaque_resource_version_is_kept_as_it_is() {
        for (rv, number) in [("007", None), ("abc", None), ("18446744073709551616", None), ("42", Some(42))] {
            let mut s = secret(&[]);
            s.metadata.resource_version = Some(rv.into());
            let mut cached = CredentialSecret::from(s);
            cached.trim();
            assert_eq!((cached.resource_version().as_deref(), cached.version()), (Some(rv), number), "{rv}");
        }
    }

    #[test]
    fn a_certificate_without_its_key_is_not_a_live_credential() {
        let issued = issue(KeyAlgorithm::EcdsaP256);
        let s = CredentialSecret::from(secret(&[(keys::CERT, issued.chain_pem)]));
        assert!(s.leaf().is_some() && s.certificate().is_none());
        let empty = CredentialSecret::from(secret(&[]));
        assert!(empty.leaf().is_none() && empty.tokens.is_empty() && !empty.has_key);
    }

    #[test]
    fn it_is_the_secrets_resource() {
        use kube::Resource as _;
        assert_eq!(CredentialSecret::url_path(&(), Some("ci")), Secret::url_path(&(), Some("ci")));
        assert_eq!(
            (CredentialSecret::kind(&()), CredentialSecret::api_version(&())),
            (Secret::kind(&()), Secret::api_version(&()))
        );
    }

    #[test]
    fn decodes_from_the_watch_as_a_secret_does() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "ns", "labels": {"writ.dev/pod": "p"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u", "controller": true}]},
            "data": {"tls.key": "eA=="}
        });
        let s: CredentialSecret = serde_json::from_value(json).expect("decodes");
        assert_eq!(s.pod.as_deref(), Some("p"));
        assert!(s.has_key && s.leaf().is_none());
        assert!(s.metadata.owner_references.is_none(), "the owner is the pod label");
    }
}

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
    controller::credentials::{keys, stored_tokens, POD_LABEL},
    pki::{token, CertificateInfo},
};

/// A credential Secret as Writ reads it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "Secret")]
pub struct CredentialSecret {
    /// Name, namespace, uid, `resourceVersion`, finalizers and deletion
    /// timestamp; no labels, annotations, owner references or
    /// field-ownership records.
    pub metadata: ObjectMeta,
    /// The `writ.dev/pod` label: the pod the credential belongs to.
    pub pod: Option<String>,
    /// The `writ.dev/agent` label: the AgentIdentity of that pod.
    pub agent: Option<String>,
    /// Whether the private key is there (what marks a live credential).
    pub has_key: bool,
    /// The leaf certificate of `tls.crt`, if present and parseable.
    pub leaf: Option<CertificateInfo>,
    /// The capability tokens, `grant.<name>.jwt`, by grant name.
    pub tokens: Vec<StoredToken>,
}

/// A capability token held in a credential Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredToken {
    /// The grant it was minted for (from the data key).
    pub grant: String,
    /// What the token says, `None` if it cannot be decoded.
    pub facts: Option<TokenFacts>,
}

/// The claims of a stored token the controllers decide on.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenFacts {
    /// Header `kid`: the signing key.
    pub kid: Option<String>,
    /// `jti`.
    pub jti: String,
    /// `exp`, unix seconds.
    pub exp: i64,
    /// `cnf.x5t#S256`: the certificate the token is bound to.
    pub thumbprint: String,
    /// `grant.uid`.
    pub grant_uid: String,
    /// `pod.uid`.
    pub pod_uid: String,
}

impl From<Secret> for CredentialSecret {
    fn from(secret: Secret) -> Self {
        let tokens = stored_tokens(&secret)
            .into_iter()
            .map(|(grant, jwt)| StoredToken {
                grant,
                facts: token::decode_unverified(&jwt).ok().map(|(h, c)| TokenFacts {
                    kid: h.kid,
                    jti: c.jti,
                    exp: c.exp,
                    thumbprint: c.cnf.x5t_s256,
                    grant_uid: c.grant.uid,
                    pod_uid: c.pod.uid,
                }),
            })
            .collect();
        let data = secret.data.unwrap_or_default();
        let leaf =
            data.get(keys::CERT).and_then(|pem| CertificateInfo::from_pem(&String::from_utf8_lossy(&pem.0)).ok());
        let mut metadata = secret.metadata;
        let mut labels = metadata.labels.take().unwrap_or_default();
        metadata.annotations = None;
        metadata.managed_fields = None;
        // The owning pod is the `writ.dev/pod` label, written with it; the
        // garbage collector, not Writ, reads the owner reference.
        metadata.owner_references = None;
        Self {
            metadata,
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
    pub fn certificate(&self) -> Option<&CertificateInfo> {
        self.leaf.as_ref().filter(|_| self.has_key)
    }

    /// The token held for grant `grant`, if any.
    pub fn token(&self, grant: &str) -> Option<&StoredToken> {
        self.tokens.iter().find(|t| t.grant == grant)
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
        assert_eq!(s.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(s.certificate().map(|c| c.serial_hex.clone()), Some(issued.serial_hex.clone()));
        let facts = s.token("g1").and_then(|t| t.facts.clone()).expect("decoded token");
        let (header, claims) = token::decode_unverified(&jwt).expect("sample decodes");
        assert_eq!(facts.jti, claims.jti);
        assert_eq!(facts.exp, claims.exp);
        assert_eq!(facts.kid, header.kid);
        assert_eq!(facts.thumbprint, issued.thumbprint);
        // An undecodable token is still held (and so still removed on revocation).
        assert_eq!(s.token("bad").map(|t| t.facts.is_none()), Some(true));
        // Nothing of the key or the raw token is kept.
        let kept = format!("{s:?}");
        assert!(!kept.contains("PRIVATE KEY") && !kept.contains(&jwt), "{kept}");
    }

    #[test]
    fn a_certificate_without_its_key_is_not_a_live_credential() {
        let issued = issue(KeyAlgorithm::EcdsaP256);
        let s = CredentialSecret::from(secret(&[(keys::CERT, issued.chain_pem)]));
        assert!(s.leaf.is_some() && s.certificate().is_none());
        let empty = CredentialSecret::from(secret(&[]));
        assert!(empty.leaf.is_none() && empty.tokens.is_empty() && !empty.has_key);
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
        assert!(s.has_key && s.leaf.is_none());
        assert!(s.metadata.owner_references.is_none(), "the owner is the pod label");
    }
}

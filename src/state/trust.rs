//! Trust material in the operator's namespace: the CA and the token-signing
//! key set, each in a Secret, created once (create-if-absent, then re-read,
//! so two replicas starting together agree on one CA) and reused afterwards.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::{
    api::core::v1::{ConfigMap, Secret},
    ByteString,
};
use kube::{
    api::{Api, ObjectMeta, PostParams},
    Client,
};

use crate::api::names::{CA_SECRET, MANAGED_BY, PREVIOUS_CA_KEY, PREVIOUS_CA_RETIRE_KEY, SEAL_SECRET, SIGNING_SECRET};
use crate::pki::{
    ca::{CertificateAuthority, CertificateIssuer},
    cert::{IssuedCertificate, PodCertificateRequest},
    jwks::{JwkSet, KeySet},
    seal::SealKeys,
    spiffe::SpiffeBundle,
    token::{SigningKey, TokenAlgorithm},
    PkiError,
};

/// Errors while loading or creating trust material.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The API server refused or failed.
    #[error("{op} Secret {namespace}/{name}: {source}")]
    Kube {
        /// What we were doing.
        op: &'static str,
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The Secret's contents are not usable.
    #[error("Secret {namespace}/{name} is not usable: {source}")]
    Invalid {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Cause.
        #[source]
        source: PkiError,
    },
    /// A configured Secret does not exist.
    #[error("the configured CA Secret {namespace}/{name} does not exist (it needs tls.crt and tls.key)")]
    Missing {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
}

/// How the operator signs tokens: the algorithm of its key and the issuer its tokens name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// The algorithm new signing keys have; a stored key of another algorithm is rotated.
    pub algorithm: TokenAlgorithm,
    /// The `iss` of new tokens (an `https://` URL).
    pub issuer: String,
    /// How long a replaced key or issuer stays accepted: the longest token lifetime plus skew.
    pub keep_secs: i64,
}

impl TokenSettings {
    /// ES256 and the in-cluster default issuer `https://writ-webhook.<namespace>.svc`, keeping a
    /// replaced key for an hour and a half (the default longest grant plus margin).
    pub fn defaults(namespace: &str) -> Self {
        TokenSettings {
            algorithm: TokenAlgorithm::default(),
            issuer: format!("https://writ-webhook.{namespace}.svc"),
            keep_secs: 5400,
        }
    }
}

/// The issuer tokens named before the issuer was configurable (`spiffe://<trust-domain>/writ`):
/// accepted, after an upgrade, until the tokens it named have expired.
pub fn legacy_issuer(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/writ")
}

/// The CA and signing keys of a running operator.
pub struct Trust {
    ca: RwLock<Arc<CertificateAuthority>>,
    previous_cas: RwLock<PreviousCas>,
    keys: RwLock<KeySet>,
    seal: RwLock<Arc<SealKeys>>,
}

/// CA certificates kept in the bundle after a rotation, with their retirement times.
#[derive(Debug, Default, Clone)]
struct PreviousCas {
    pem: String,
    retire_after: BTreeMap<String, i64>,
}

impl PreviousCas {
    fn from_data(d: &BTreeMap<String, Vec<u8>>) -> Self {
        let retire_after =
            d.get(PREVIOUS_CA_RETIRE_KEY).and_then(|v| serde_json::from_slice(v).ok()).unwrap_or_default();
        PreviousCas { pem: text(d, PREVIOUS_CA_KEY), retire_after }
    }

    /// The PEM of the previous CAs still needed at `now` (a CA without a
    /// recorded retirement time is kept).
    fn bundle(&self, now: i64) -> String {
        let Ok(blocks) = pem::parse_many(self.pem.as_bytes()) else {
            return self.pem.clone();
        };
        let mut out = String::new();
        for block in blocks {
            let serial = crate::pki::CertificateInfo::from_der(block.contents()).map(|i| i.serial_hex).ok();
            let retired = serial.and_then(|s| self.retire_after.get(&s).copied()).is_some_and(|t| t < now);
            if !retired {
                out.push_str(&crate::pki::pem_lf(&block));
            }
        }
        out
    }
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trust { .. }")
    }
}

fn data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
}

fn text(map: &BTreeMap<String, Vec<u8>>, key: &str) -> String {
    map.get(key).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
}

fn secret(name: &str, type_: &str, data: BTreeMap<String, Vec<u8>>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("app.kubernetes.io/managed-by".to_string(), "writ".to_string())].into()),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    }
}

/// Reads `name`, or creates it from `make()` when absent; on a lost creation
/// race (409) reads the winner's. Never overwrites an existing Secret.
async fn get_or_create(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    make: impl FnOnce() -> Result<Secret, PkiError>,
) -> Result<Secret, TrustError> {
    let kube_err = |op, source| TrustError::Kube { op, namespace: namespace.into(), name: name.into(), source };
    if let Some(s) = api.get_opt(name).await.map_err(|e| kube_err("reading", e))? {
        return Ok(s);
    }
    let new =
        make().map_err(|source| TrustError::Invalid { namespace: namespace.into(), name: name.into(), source })?;
    match api.create(&PostParams::default(), &new).await {
        Ok(s) => {
            tracing::info!(secret = name, namespace, "created trust material");
            Ok(s)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => api.get(name).await.map_err(|e| kube_err("re-reading", e)),
        Err(e) => Err(kube_err("creating", e)),
    }
}

impl Trust {
    /// Loads or creates the CA and signing keys in `namespace`, signing with
    /// [`TokenSettings::defaults`].
    pub async fn bootstrap(
        client: &Client,
        namespace: &str,
        ca_secret: Option<&str>,
        ca_ttl_secs: i64,
        trust_domain: &str,
    ) -> Result<Self, TrustError> {
        Self::bootstrap_with(
            client,
            namespace,
            ca_secret,
            ca_ttl_secs,
            trust_domain,
            &TokenSettings::defaults(namespace),
        )
        .await
    }

    /// Loads or creates the CA and signing keys in `namespace`. A stored signing key of another
    /// algorithm than `token.algorithm` is rotated (the old key stays in the JWKS for
    /// `token.keep_secs`), and a stored issuer other than `token.issuer` is replaced (the old one
    /// stays accepted as long); the Secret is replaced with its `resourceVersion`, so replicas
    /// starting together make the change once.
    pub async fn bootstrap_with(
        client: &Client,
        namespace: &str,
        ca_secret: Option<&str>,
        ca_ttl_secs: i64,
        trust_domain: &str,
        token: &TokenSettings,
    ) -> Result<Self, TrustError> {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let now = crate::pki::now_unix();
        let ca_secret_obj = match ca_secret {
            Some(name) => api
                .get_opt(name)
                .await
                .map_err(|source| TrustError::Kube {
                    op: "reading",
                    namespace: namespace.into(),
                    name: name.into(),
                    source,
                })?
                .ok_or_else(|| TrustError::Missing { namespace: namespace.into(), name: name.into() })?,
            None => {
                get_or_create(&api, namespace, CA_SECRET, || {
                    let ca = CertificateAuthority::generate(&format!("Writ CA {trust_domain}"), now, ca_ttl_secs)?;
                    Ok(secret(
                        CA_SECRET,
                        "kubernetes.io/tls",
                        [
                            ("tls.crt".to_string(), ca.cert_pem().as_bytes().to_vec()),
                            ("tls.key".to_string(), ca.key_pem().into_bytes()),
                        ]
                        .into(),
                    ))
                })
                .await?
            }
        };
        let name = ca_secret.unwrap_or(CA_SECRET);
        let d = data(&ca_secret_obj);
        let ca = CertificateAuthority::from_pem(&text(&d, "tls.crt"), &text(&d, "tls.key"))
            .map_err(|source| TrustError::Invalid { namespace: namespace.into(), name: name.into(), source })?;
        let previous = PreviousCas::from_data(&d);

        let mut created = false;
        let keys_secret = get_or_create(&api, namespace, SIGNING_SECRET, || {
            created = true;
            let mut keys = KeySet::generate_for(now, token.algorithm)?;
            keys.set_issuer(&token.issuer, None, now, token.keep_secs);
            Ok(secret(SIGNING_SECRET, "Opaque", keys.to_secret_data()?))
        })
        .await?;
        let legacy = (!created).then(|| legacy_issuer(trust_domain));
        let keys = align_signing_keys(&api, namespace, keys_secret, token, legacy.as_deref(), now).await?;
        let seal_secret = get_or_create(&api, namespace, SEAL_SECRET, || {
            Ok(secret(SEAL_SECRET, "Opaque", SealKeys::generate()?.to_secret_data()?))
        })
        .await?;
        let seal = SealKeys::from_secret_data(&data(&seal_secret)).map_err(|source| TrustError::Invalid {
            namespace: namespace.into(),
            name: SEAL_SECRET.into(),
            source,
        })?;
        Ok(Self {
            ca: RwLock::new(Arc::new(ca)),
            previous_cas: RwLock::new(previous),
            keys: RwLock::new(keys),
            seal: RwLock::new(Arc::new(seal)),
        })
    }

    /// Trust material made in memory, for tests: a fresh CA, signing key and seal key.
    pub fn generate(trust_domain: &str, now: i64, ca_ttl_secs: i64) -> Result<Self, PkiError> {
        Ok(Self {
            ca: RwLock::new(Arc::new(CertificateAuthority::generate(
                &format!("Writ CA {trust_domain}"),
                now,
                ca_ttl_secs,
            )?)),
            previous_cas: RwLock::new(PreviousCas::default()),
            keys: RwLock::new({
                let mut keys = KeySet::generate(now)?;
                keys.set_issuer(&TokenSettings::defaults("writ-system").issuer, None, now, 0);
                keys
            }),
            seal: RwLock::new(Arc::new(SealKeys::generate()?)),
        })
    }

    /// The keys that seal admission stamps and grant status.
    pub fn seal_keys(&self) -> Arc<SealKeys> {
        self.seal.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current CA.
    pub fn ca(&self) -> Arc<CertificateAuthority> {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Issues a pod certificate with the current CA.
    pub fn issue(&self, req: &PodCertificateRequest) -> Result<IssuedCertificate, PkiError> {
        self.ca().issue(req)
    }

    /// The PEM bundle of every trusted CA certificate: the current CA and
    /// those kept after a rotation until what they signed has expired.
    pub fn bundle_pem(&self) -> String {
        let mut out = self.ca().cert_pem().to_string();
        let previous = self.previous_cas.read().unwrap_or_else(|e| e.into_inner()).bundle(crate::pki::now_unix());
        if !previous.trim().is_empty() {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&previous);
        }
        out
    }

    /// The current token-signing key.
    pub fn signing_key(&self) -> SigningKey {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).current().clone()
    }

    /// The published JWKS: the current key and previous keys still needed.
    pub fn jwks(&self, now: i64) -> JwkSet {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).jwks(now)
    }

    /// The issuer (`iss`) of new tokens.
    pub fn issuer(&self) -> String {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).issuer().unwrap_or_default().to_owned()
    }

    /// The issuers a token may name at `now`: the current one, and a previous one until the
    /// tokens that named it have expired.
    pub fn issuers(&self, now: i64) -> Vec<String> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).issuers(now)
    }

    /// The SPIFFE bundle at `now`: every trusted CA as an `x509-svid` key, every token key still
    /// needed as a `jwt-svid` key. Its `spiffe_sequence` is the unix time of the latest change to
    /// either (a rotation, or a replaced CA or key leaving), so it increases with every change and
    /// every replica computes the same one.
    pub fn spiffe_bundle(&self, now: i64) -> Result<SpiffeBundle, PkiError> {
        let ca = self.ca();
        let previous = self.previous_cas.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut ders = crate::pki::cert::parse_certificates(ca.cert_pem().as_bytes())?;
        let kept = previous.bundle(now);
        if !kept.trim().is_empty() {
            ders.extend(crate::pki::cert::parse_certificates(kept.as_bytes())?);
        }
        let ca_since =
            ders.first().and_then(|der| crate::pki::CertificateInfo::from_der(der).ok()).map_or(0, |i| i.not_before);
        let ca_left = previous.retire_after.values().filter(|t| **t < now).map(|t| t + 1).max().unwrap_or(0);
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let sequence = keys.changed_at(now).max(ca_since).max(ca_left);
        SpiffeBundle::new(&ders, &keys.jwks(now), u64::try_from(sequence).unwrap_or(0))
    }

    /// Whether a key id is in the JWKS (tokens signed with a retired key are re-minted).
    pub fn has_kid(&self, kid: &str, now: i64) -> bool {
        self.jwks(now).keys.iter().any(|k| k.kid == kid)
    }

    /// Re-reads both Secrets (followers pick up a rotation made by the leader).
    pub async fn reload(&self, client: &Client, namespace: &str, ca_secret: Option<&str>) -> Result<(), TrustError> {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let name = ca_secret.unwrap_or(CA_SECRET);
        let kube_err = |name: &str, source| TrustError::Kube {
            op: "reading",
            namespace: namespace.into(),
            name: name.into(),
            source,
        };
        if let Some(s) = api.get_opt(name).await.map_err(|e| kube_err(name, e))? {
            let d = data(&s);
            if let Ok(ca) = CertificateAuthority::from_pem(&text(&d, "tls.crt"), &text(&d, "tls.key")) {
                *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ca);
                *self.previous_cas.write().unwrap_or_else(|e| e.into_inner()) = PreviousCas::from_data(&d);
            }
        }
        if let Some(s) = api.get_opt(SIGNING_SECRET).await.map_err(|e| kube_err(SIGNING_SECRET, e))? {
            if let Ok(keys) = KeySet::from_secret_data(&data(&s)) {
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
            }
        }
        if let Some(s) = api.get_opt(SEAL_SECRET).await.map_err(|e| kube_err(SEAL_SECRET, e))? {
            if let Ok(keys) = SealKeys::from_secret_data(&data(&s)) {
                *self.seal.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
        }
        Ok(())
    }
}

/// Brings the stored signing key set in line with `token` (algorithm and issuer), replacing the
/// Secret when that changes anything; on a conflict (another replica wrote first) it re-reads and
/// checks again.
async fn align_signing_keys(
    api: &Api<Secret>,
    namespace: &str,
    mut stored: Secret,
    token: &TokenSettings,
    legacy: Option<&str>,
    now: i64,
) -> Result<KeySet, TrustError> {
    let invalid = |source| TrustError::Invalid { namespace: namespace.into(), name: SIGNING_SECRET.into(), source };
    let kube_err =
        |op, source| TrustError::Kube { op, namespace: namespace.into(), name: SIGNING_SECRET.into(), source };
    for _ in 0..5 {
        let mut keys = KeySet::from_secret_data(&data(&stored)).map_err(invalid)?;
        let mut changed = keys.set_issuer(&token.issuer, legacy, now, token.keep_secs);
        let previous_kid = keys.current().kid().to_owned();
        let previous_alg = keys.current().algorithm();
        if previous_alg != token.algorithm {
            keys.rotate_to(now, token.keep_secs, token.algorithm).map_err(invalid)?;
            changed = true;
        }
        if !changed {
            return Ok(keys);
        }
        stored.data =
            Some(keys.to_secret_data().map_err(invalid)?.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
        match api.replace(SIGNING_SECRET, &PostParams::default(), &stored).await {
            Ok(_) => {
                if previous_alg != token.algorithm {
                    tracing::info!(target: "audit", previous_kid = %previous_kid, previous_alg = %previous_alg,
                        kid = %keys.current().kid(), alg = %token.algorithm,
                        "rotated the token-signing key to the configured algorithm");
                }
                tracing::info!(issuer = %token.issuer, "token issuer");
                return Ok(keys);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                stored = api.get(SIGNING_SECRET).await.map_err(|e| kube_err("re-reading", e))?;
            }
            Err(e) => return Err(kube_err("replacing", e)),
        }
    }
    Err(invalid(PkiError::KeySet("the signing key Secret kept changing while it was being updated".into())))
}

/// What a rotation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The replaced key id or CA serial.
    pub previous: String,
    /// The new key id or CA serial.
    pub current: String,
    /// Until when (unix seconds) the previous one stays published.
    pub previous_kept_until: i64,
}

/// Replaces the token-signing key. The previous public key stays in the JWKS
/// for `keep_secs` (at least the longest grant TTL the operator allows, plus
/// verifiers' clock skew), so tokens it signed keep verifying until their own
/// `exp`; running operators pick the new key up within seconds. Uses the
/// Secret's resourceVersion, so two concurrent rotations cannot both win.
///
/// With `algorithm`, the new key is of that algorithm (a change of algorithm is a rotation);
/// without, of the current key's. Running operators configured with another
/// `--token-algorithm` rotate back at their next start.
pub async fn rotate_signing_key(
    client: &Client,
    namespace: &str,
    keep_secs: i64,
    now: i64,
    algorithm: Option<TokenAlgorithm>,
) -> Result<Rotation, TrustError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err =
        |op, source| TrustError::Kube { op, namespace: namespace.into(), name: SIGNING_SECRET.into(), source };
    let invalid = |source| TrustError::Invalid { namespace: namespace.into(), name: SIGNING_SECRET.into(), source };
    let mut current = api.get(SIGNING_SECRET).await.map_err(|e| kube_err("reading", e))?;
    let mut keys = KeySet::from_secret_data(&data(&current)).map_err(invalid)?;
    let previous = keys.current().kid().to_string();
    let algorithm = algorithm.unwrap_or_else(|| keys.current().algorithm());
    keys.rotate_to(now, keep_secs, algorithm).map_err(invalid)?;
    current.data = Some(keys.to_secret_data().map_err(invalid)?.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
    api.replace(SIGNING_SECRET, &PostParams::default(), &current).await.map_err(|e| kube_err("replacing", e))?;
    tracing::info!(target: "audit", previous_kid = %previous, kid = %keys.current().kid(), "rotated the token-signing key");
    Ok(Rotation { previous, current: keys.current().kid().to_string(), previous_kept_until: now + keep_secs })
}

/// Replaces the seal key. The previous key keeps verifying for `keep_secs`
/// (at least the longest grant TTL plus the longest approval wait, so every
/// record it sealed is re-sealed or ended first); running operators pick the
/// new key up at their next trust reload.
pub async fn rotate_seal_key(
    client: &Client,
    namespace: &str,
    keep_secs: i64,
    now: i64,
) -> Result<Rotation, TrustError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err = |op, source| TrustError::Kube { op, namespace: namespace.into(), name: SEAL_SECRET.into(), source };
    let invalid = |source| TrustError::Invalid { namespace: namespace.into(), name: SEAL_SECRET.into(), source };
    let mut current = api.get(SEAL_SECRET).await.map_err(|e| kube_err("reading", e))?;
    let mut keys = SealKeys::from_secret_data(&data(&current)).map_err(invalid)?;
    let previous = keys.current_kid().to_string();
    keys.rotate(now, keep_secs).map_err(invalid)?;
    current.data = Some(keys.to_secret_data().map_err(invalid)?.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
    api.replace(SEAL_SECRET, &PostParams::default(), &current).await.map_err(|e| kube_err("replacing", e))?;
    tracing::info!(target: "audit", previous_kid = %previous, kid = %keys.current_kid(), "rotated the seal key");
    Ok(Rotation { previous, current: keys.current_kid().to_string(), previous_kept_until: now + keep_secs })
}

/// Replaces the generated CA with a new one. The previous CA certificate
/// stays in the trust bundle for `keep_secs` (at least the longest credential
/// TTL, so every certificate it signed expires first); pods get certificates
/// from the new CA at their next rotation. Refused for a user-provided CA.
pub async fn rotate_ca(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
    ca_ttl_secs: i64,
    keep_secs: i64,
    now: i64,
) -> Result<Rotation, TrustError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err = |op, source| TrustError::Kube { op, namespace: namespace.into(), name: CA_SECRET.into(), source };
    let invalid = |source| TrustError::Invalid { namespace: namespace.into(), name: CA_SECRET.into(), source };
    let mut current = api.get(CA_SECRET).await.map_err(|e| kube_err("reading", e))?;
    let mut d = data(&current);
    let old = CertificateAuthority::from_pem(&text(&d, "tls.crt"), &text(&d, "tls.key")).map_err(invalid)?;
    let next = CertificateAuthority::generate(&format!("Writ CA {trust_domain}"), now, ca_ttl_secs).map_err(invalid)?;
    let mut previous = PreviousCas::from_data(&d);
    // Drop CAs that have retired, keep the rest, add the one being replaced.
    previous.pem = previous.bundle(now);
    previous.retire_after.retain(|_, t| *t >= now);
    if !previous.pem.is_empty() && !previous.pem.ends_with('\n') {
        previous.pem.push('\n');
    }
    previous.pem.push_str(old.cert_pem());
    previous.retire_after.insert(old.serial_hex().to_string(), now + keep_secs);
    d.insert("tls.crt".into(), next.cert_pem().as_bytes().to_vec());
    d.insert("tls.key".into(), next.key_pem().into_bytes());
    d.insert(PREVIOUS_CA_KEY.into(), previous.pem.into_bytes());
    d.insert(
        PREVIOUS_CA_RETIRE_KEY.into(),
        serde_json::to_vec(&previous.retire_after).map_err(|e| invalid(PkiError::Json(e)))?,
    );
    current.data = Some(d.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
    api.replace(CA_SECRET, &PostParams::default(), &current).await.map_err(|e| kube_err("replacing", e))?;
    tracing::info!(target: "audit", previous = %old.serial_hex(), serial = %next.serial_hex(), "rotated the CA");
    Ok(Rotation {
        previous: old.serial_hex().to_string(),
        current: next.serial_hex().to_string(),
        previous_kept_until: now + keep_secs,
    })
}

/// The SPIFFE bundle document to publish at `now` (pretty JSON), or why it cannot be built.
pub fn spiffe_bundle_json(trust: &Trust, now: i64) -> Result<String, crate::pki::PkiError> {
    Ok(serde_json::to_string_pretty(&trust.spiffe_bundle(now)?)?)
}

/// A ConfigMap Writ publishes: one key, labelled as managed by Writ.
pub fn published_config_map(name: &str, key: &str, value: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(key.to_string(), value)])),
        ..Default::default()
    }
}

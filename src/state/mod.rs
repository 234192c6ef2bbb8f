//! What every part of a running operator shares, below the controllers, the
//! webhooks and the endpoints: configuration, the caches and the cached
//! types they hold, trust material, the revocation ledger, metrics and the
//! serving certificate. Nothing here imports from a layer above
//! (`docs/design.md`, "Layers").

/// Implements `kube::Resource` for `$projection`, a namespaced object read
/// as less than its `k8s_openapi` type `$served`: same kind, group, version
/// and plural, so it is watched, cached and owned as that type is.
macro_rules! served_as {
    ($projection:ty, $served:ty) => {
        impl kube::Resource for $projection {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                <$served as k8s_openapi::Resource>::KIND.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                <$served as k8s_openapi::Resource>::GROUP.into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                <$served as k8s_openapi::Resource>::VERSION.into()
            }
            fn api_version(_: &()) -> std::borrow::Cow<'_, str> {
                <$served as k8s_openapi::Resource>::API_VERSION.into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                <$served as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
            }
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
use served_as;

mod agent_pod;
mod cached_grant;
pub mod config;
mod credential_secret;
pub mod metrics;
pub mod revocations;
pub mod tls;
pub mod trust;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use kube::{
    runtime::reflector::{ObjectRef, Store},
    Client, ResourceExt,
};

pub use agent_pod::{
    effective_service_account, secret_references, AgentPod, AgentPodSpec, AgentPodStatus, PodPhase, SecretReference,
};
pub use cached_grant::CachedGrant;
pub use config::RunConfig;
pub use credential_secret::{
    is_minted_jti, trust_read_back, CertificateFacts, CredentialSecret, Holder, ReadBackTrust, StoredCertificate,
    StoredToken, TokenFacts, Untrusted,
};

use crate::api::{AgentIdentity, DelegationPolicy};
use revocations::RevocationStore;
use tls::CertSlot;
use trust::Trust;

/// Builds a [`Shared`] (see [`Shared::builder`]).
pub struct SharedBuilder(Shared);

impl SharedBuilder {
    /// The AgentIdentity cache.
    pub fn identities(mut self, store: Store<AgentIdentity>) -> Self {
        self.0.identities = store;
        self
    }

    /// The DelegationPolicy cache.
    pub fn policies(mut self, store: Store<DelegationPolicy>) -> Self {
        self.0.policies = store;
        self
    }

    /// The CapabilityGrant cache.
    pub fn grants(mut self, store: Store<CachedGrant>) -> Self {
        self.0.grants = store;
        self
    }

    /// The agent pod cache.
    pub fn pods(mut self, store: Store<AgentPod>) -> Self {
        self.0.pods = store;
        self
    }

    /// The metrics registry.
    pub fn metrics(mut self, metrics: Arc<metrics::Metrics>) -> Self {
        self.0.metrics = metrics;
        self
    }

    /// The serving certificate slot.
    pub fn serving(mut self, serving: Arc<CertSlot>) -> Self {
        self.0.serving = serving;
        self
    }

    /// The shared state.
    pub fn build(self) -> Shared {
        self.0
    }
}

/// What every part of a running operator shares: the client, the
/// configuration, caches of the watched kinds, trust material, the
/// revocation list, metrics and readiness.
pub struct Shared {
    /// API client.
    pub client: Client,
    /// Configuration.
    pub config: RunConfig,
    /// Cache of AgentIdentities (all namespaces).
    pub identities: Store<AgentIdentity>,
    /// Cache of DelegationPolicies.
    pub policies: Store<DelegationPolicy>,
    /// Cache of CapabilityGrants (as [`CachedGrant`]s).
    pub grants: Store<CachedGrant>,
    /// Cache of agent pods (label `writ.dev/agent`).
    pub pods: Store<AgentPod>,
    /// CA and token-signing keys.
    pub trust: Arc<Trust>,
    /// Revoked certificates and tokens.
    pub revocations: Arc<RevocationStore>,
    /// Metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The webhook serving certificate.
    pub serving: Arc<CertSlot>,
    synced: AtomicBool,
    all_synced: AtomicBool,
}

impl Shared {
    /// Starts building the shared state from what it cannot do without: the
    /// client, the configuration, trust material and the revocation ledger.
    /// The caches' stores, metrics and the serving certificate start empty.
    pub fn builder(
        client: Client,
        config: RunConfig,
        trust: Arc<Trust>,
        revocations: Arc<RevocationStore>,
    ) -> SharedBuilder {
        SharedBuilder(Self {
            client,
            config,
            identities: kube::runtime::reflector::store().0,
            policies: kube::runtime::reflector::store().0,
            grants: kube::runtime::reflector::store().0,
            pods: kube::runtime::reflector::store().0,
            trust,
            revocations,
            metrics: Arc::default(),
            serving: Arc::default(),
            synced: AtomicBool::new(false),
            all_synced: AtomicBool::new(false),
        })
    }

    /// Marks the caches admission reads (identities and policies) as synced.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    /// Whether the caches admission reads, AgentIdentities and
    /// DelegationPolicies, have their initial lists (admission fails closed
    /// until then). The webhooks and the trust endpoints read nothing else
    /// of the caches: a grant's delegation chain is read from the API server.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Marks every cache as synced, the grant, pod and credential Secret caches too.
    pub fn set_all_synced(&self) {
        self.all_synced.store(true, Ordering::SeqCst);
        self.metrics.caches_synced.set(1);
    }

    /// Whether every cache has its initial list: the controllers decide on
    /// the grant, pod and Secret caches, and do not start before (an empty cache
    /// would have them revoke and re-issue).
    pub fn is_all_synced(&self) -> bool {
        self.all_synced.load(Ordering::SeqCst)
    }

    /// Ready to serve webhooks: certificate loaded and caches synced.
    pub fn is_ready(&self) -> bool {
        self.is_synced() && self.serving.is_loaded()
    }

    /// An AgentIdentity from the cache.
    pub fn identity(&self, namespace: &str, name: &str) -> Option<Arc<AgentIdentity>> {
        self.identities.get(&ObjectRef::new(name).within(namespace))
    }

    /// The AgentIdentity from the cache, or from the API server when the cache
    /// does not have it (yet): a lagging watch must not make an identity that
    /// exists look absent.
    pub async fn identity_or_api(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<AgentIdentity>>, kube::Error> {
        if let Some(found) = self.identity(namespace, name) {
            return Ok(Some(found));
        }
        let api: kube::Api<AgentIdentity> = kube::Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?.map(Arc::new))
    }

    /// Every AgentIdentity of a namespace.
    pub fn identities_in(&self, namespace: &str) -> Vec<AgentIdentity> {
        self.identities_where(namespace, |_| true)
    }

    /// The AgentIdentities of a namespace whose pods run as service account `sa`.
    pub fn identities_running_as(&self, namespace: &str, sa: &str) -> Vec<AgentIdentity> {
        self.identities_where(namespace, |i| i.spec.service_account_name == sa)
    }

    /// Copies of the cached AgentIdentities of a namespace that `keep` accepts.
    fn identities_where(&self, namespace: &str, keep: impl Fn(&AgentIdentity) -> bool) -> Vec<AgentIdentity> {
        self.identities
            .state()
            .iter()
            .filter(|i| i.namespace().as_deref() == Some(namespace) && keep(i))
            .map(|i| (**i).clone())
            .collect()
    }

    /// Every DelegationPolicy of a namespace (not those being deleted).
    pub fn policies_in(&self, namespace: &str) -> Vec<DelegationPolicy> {
        self.policies
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace) && p.metadata.deletion_timestamp.is_none())
            .map(|p| (**p).clone())
            .collect()
    }
}

#[cfg(any(test, feature = "testing"))]
impl Shared {
    /// Shared state for tests, over `client` (usually a fake API server from
    /// [`crate::testing`]): the default configuration, trust material
    /// bootstrapped through the client, and the revocation list it holds;
    /// the caches empty until given to the builder.
    pub async fn test(client: Client) -> SharedBuilder {
        let config = RunConfig::test();
        let trust = Arc::new(
            Trust::bootstrap(&client, &config.namespace, None, 86_400, &config.trust_domain)
                .await
                .expect("trust material through the fake API server"),
        );
        let revocations = RevocationStore::load(&client, &config.namespace)
            .await
            .expect("the revocation list through the fake API server");
        let metrics = Arc::new(metrics::Metrics::default());
        trust_read_back(
            &trust,
            &config.trust_domain,
            config.max_grant_ttl.as_secs_i64(),
            config.max_credential_ttl.as_secs_i64(),
            &metrics,
        );
        Self::builder(client, config, trust, Arc::new(revocations)).metrics(metrics)
    }
}

/// Unix seconds of a Kubernetes timestamp.
pub fn unix(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

/// A Kubernetes timestamp from unix seconds.
pub fn time(secs: i64) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

/// What the caches keep of an object: everything but `managedFields` (the
/// field-ownership bookkeeping of server-side apply, often the larger part of
/// an object) and `kubectl apply`'s copy of the whole object in the
/// `last-applied-configuration` annotation (grants and policies applied from
/// GitOps carry one). Nothing in Writ reads either.
pub fn strip<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// The annotation where client-side `kubectl apply` keeps the applied object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[cfg(test)]
mod tests {
    use kube::ResourceExt as _;

    use super::*;
    use crate::api::CapabilityGrant;

    #[test]
    fn caches_drop_field_ownership_and_kubectls_copy_but_keep_writs_annotations() {
        let mut g: CapabilityGrant = serde_json::from_value(serde_json::json!({
            "apiVersion": "writ.dev/v1alpha1", "kind": "CapabilityGrant",
            "metadata": {
                "name": "g", "namespace": "ci",
                "annotations": {LAST_APPLIED: "{\"whole\":\"object\"}", "writ.dev/requested-by": "alice"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {"agent": "a", "task": {"id": "T"}, "capabilities": [], "audiences": ["x"], "ttl": "5m"}
        }))
        .expect("grant");
        strip(&mut g);
        assert!(g.metadata.managed_fields.is_none());
        assert_eq!(g.annotations().len(), 1);
        assert_eq!(g.annotations().get("writ.dev/requested-by").map(String::as_str), Some("alice"));
        let mut only_kubectl = g.clone();
        only_kubectl.metadata.annotations = Some([(LAST_APPLIED.to_string(), "{}".to_string())].into());
        strip(&mut only_kubectl);
        assert!(only_kubectl.metadata.annotations.is_none());
    }
}

//! The controllers, run by the leader: pod credentials, credential Secrets,
//! identity status and grants. Each controller's module holds its reconcile,
//! its error policy, its pure decisions and the `controller` function that
//! wires its triggers; [`run`] starts them for a leadership term, and
//! [`machinery`] holds what they are built from.

pub mod credentials;
pub mod grant;
pub mod identity;
pub mod machinery;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::ObjectReference;

use crate::api::names::{FINALIZER, MANAGER};
use crate::api::{AgentIdentity, DelegationPolicy};
use crate::state::{time, unix};
use crate::state::{AgentPod, CachedGrant, CredentialSecret, Shared};
use machinery::{authorities, batch, cache::Cache, events, retry};

/// Reconciles in flight per controller: each holds an API connection.
pub const RECONCILES_IN_FLIGHT: u16 = 32;

/// The kinds every replica watches, one watch and one cache each, shared by
/// every controller and the webhooks.
pub struct Caches {
    /// AgentIdentities.
    pub identities: Cache<AgentIdentity>,
    /// DelegationPolicies.
    pub policies: Cache<DelegationPolicy>,
    /// CapabilityGrants.
    pub grants: Cache<CachedGrant>,
    /// Agent pods.
    pub pods: Cache<AgentPod>,
    /// Credential Secrets.
    pub secrets: Cache<CredentialSecret>,
}

/// Runs every controller for one leadership term: until the term ends,
/// when this future is dropped.
///
/// Every controller starts with one full pass, then follows the changes.
/// Reconciles in flight are bounded ([`RECONCILES_IN_FLIGHT`]); what waits
/// behind them waits in an intake ([`machinery::intake`]), and timed work
/// (rotations, expiries) is found by a sweep of the caches each second
/// rather than kept as a requeue per object.
pub async fn run(shared: Arc<Shared>, caches: Arc<Caches>, me: String) {
    // Decisions read the shared caches (does this pod's identity exist?): a
    // controller that ran before they are filled would revoke and re-issue
    // on the word of an empty cache. (Polled: kube's `Store::wait_until_ready`
    // wakes only its latest waiter, and the boot task already waits on it.)
    while !shared.is_all_synced() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = events::Events::new(shared.client.clone(), crate::api::names::EVENT_REPORTER, &me);
    let ctx = Arc::new(Context::new(shared, events, caches.secrets.store()));
    // Token writes still queued when the term ends must not go out.
    let _stop_writes = StopOnDrop(ctx.secret_writes.clone());
    tracing::info!("controllers started");
    tokio::join!(
        credentials::pod_controller(ctx.clone(), &caches),
        credentials::secret_controller(ctx.clone(), &caches),
        batch::forget_when_seen(ctx.secret_writes.clone(), &caches.secrets),
        identity::controller(ctx.clone(), &caches),
        grant::controller(ctx.clone(), &caches),
        credentials::guard_credential_mounts(ctx.clone()),
    );
}

/// Stops a term's Secret writer when the term's controllers are dropped.
struct StopOnDrop(batch::SecretWriter);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// What every reconciler gets.
pub struct Context {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Events.
    pub events: events::Events,
    /// Batched writes of tokens into credential Secrets, and cached reads of them.
    pub secret_writes: batch::SecretWriter,
    /// `(issuedAt, expiresAt)` this term decided per grant uid, until its
    /// status shows them (then the entry goes): a reconcile that runs on a
    /// cached grant from before its own status write must not pick a new
    /// issue time (and re-mint).
    pub activations: std::sync::Mutex<std::collections::HashMap<String, (i64, i64)>>,
    /// Trust bundle last published per namespace, and when (unix seconds).
    pub published_bundles: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
    /// A namespace's identities and policies listed from the API server,
    /// shared by the grant reconciles that ask together.
    pub authorities: authorities::AuthorityLists,
    /// Failures on record per object, for the error policies' back-off.
    pub retries: retry::Retries,
}

impl Context {
    /// The seal keys as re-read from their Secret: for a seal that names a
    /// key this replica does not hold. Another replica's webhook may have
    /// sealed with a key made by a rotation that this replica's periodic
    /// trust reload has not read yet, and a seal refused for that would end
    /// a grant for good.
    pub async fn reload_seal_keys(&self) -> Arc<crate::pki::seal::SealKeys> {
        let config = &self.shared.config;
        if let Err(e) =
            self.shared.trust.reload(&self.shared.client, &config.namespace, config.ca_secret.as_deref()).await
        {
            tracing::warn!(error = %e, "re-reading trust material to check a seal");
        }
        self.shared.trust.seal_keys()
    }

    /// The context for one leadership term.
    pub fn new(
        shared: Arc<Shared>,
        events: events::Events,
        secrets: kube::runtime::reflector::Store<crate::state::CredentialSecret>,
    ) -> Self {
        let secret_writes = batch::SecretWriter::new(shared.client.clone(), secrets);
        let authorities = authorities::AuthorityLists::new(shared.client.clone());
        Self {
            shared,
            events,
            secret_writes,
            activations: Default::default(),
            published_bundles: Default::default(),
            authorities,
            retries: Default::default(),
        }
    }

    /// Publishes an Event; failures are logged, never fatal.
    pub async fn event(&self, on: &ObjectReference, warning: bool, reason: &str, action: &str, note: String) {
        self.events.publish(events::Event { regarding: on, warning, reason, action, note }).await;
    }
}

impl Drop for Context {
    /// The term's back-off ends with it: a replica that stops leading has no
    /// object waiting for a retry.
    fn drop(&mut self) {
        self.shared.metrics.reconcile_retrying.set(0);
    }
}

/// What every error policy does: counts the error, backs off per object
/// (see [`retry`]) and logs the failure with the object, how many times in a
/// row it failed and when it is tried again. The log takes the 1st, 2nd,
/// 4th, 8th, ... failure in a row of an object at `warn` and the others at
/// `debug`: an object stuck for a day is then a few lines, not one per
/// retry (`writ_reconcile_errors_total` counts every one).
pub fn back_off<K: kube::Resource>(
    ctx: &Context,
    controller: &'static str,
    obj: &K,
    err: &Error,
    first: std::time::Duration,
) -> kube::runtime::controller::Action {
    use kube::ResourceExt;
    let (delay, failures) = ctx.retries.failed(controller, obj, first);
    ctx.shared.metrics.reconcile_error(controller, err.metric_label());
    ctx.shared.metrics.reconcile_retrying.set(ctx.retries.len() as i64);
    let (namespace, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let retry_in_secs = delay.as_secs();
    if failures.is_power_of_two() {
        tracing::warn!(controller, namespace, name, failures, retry_in_secs, error = %err, "reconcile failed");
    } else {
        tracing::debug!(controller, namespace, name, failures, retry_in_secs, error = %err, "reconcile failed");
    }
    kube::runtime::controller::Action::requeue(delay)
}

/// `reconcile`, forgetting the object's failures (its back-off) once it
/// reconciles.
pub fn forgetting_failures<K, F, Fut>(
    controller: &'static str,
    reconcile: F,
) -> impl Fn(Arc<K>, Arc<Context>) -> futures::future::BoxFuture<'static, Result<kube::runtime::controller::Action, Error>>
where
    K: kube::Resource + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Result<kube::runtime::controller::Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "reconcile",
            controller,
            namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
            name = obj.meta().name.as_deref().unwrap_or_default(),
        );
        Box::pin(async move {
            let out = reconcile(obj.clone(), ctx.clone()).instrument(span).await;
            if out.is_ok() {
                if let Some(left) = ctx.retries.succeeded(controller, &*obj) {
                    ctx.shared.metrics.reconcile_retrying.set(left as i64);
                }
            }
            out
        })
    }
}

#[cfg(any(test, feature = "testing"))]
impl Context {
    /// A reconcilers' context for tests over `shared`, with the credential
    /// Secrets cache `secrets`.
    pub fn test(
        shared: Arc<Shared>,
        secrets: kube::runtime::reflector::Store<crate::state::CredentialSecret>,
    ) -> Arc<Self> {
        let events = events::Events::new(shared.client.clone(), "test", "test");
        Arc::new(Self::new(shared, events, secrets))
    }
}

/// Errors of the reconcilers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{op} {object}: {source}")]
    Kube {
        /// What we were doing.
        op: &'static str,
        /// `Kind namespace/name`.
        object: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// A batched API call failed (shared by every caller it served: a
    /// Secret write, every change it carried; a list of authorities).
    #[error("{op} {object}: {source}")]
    Write {
        /// What we were doing.
        op: &'static str,
        /// `Kind namespace/name`.
        object: String,
        /// Cause.
        #[source]
        source: Arc<kube::Error>,
    },
    /// Minting or parsing a credential failed.
    #[error("{op} for {object}: {source}")]
    Pki {
        /// What we were doing.
        op: &'static str,
        /// `Kind namespace/name`.
        object: String,
        /// Cause.
        #[source]
        source: crate::pki::PkiError,
    },
    /// Persisting a revocation failed (credentials stay until it succeeds).
    #[error("recording revocations for {object}: {source}")]
    Revocation {
        /// `Kind namespace/name`.
        object: String,
        /// Cause.
        #[source]
        source: crate::state::revocations::RevocationError,
    },
    /// The finalizer helper failed.
    #[error("finalizer of {object}: {message}")]
    Finalizer {
        /// `Kind namespace/name`.
        object: String,
        /// What happened.
        message: String,
    },
    /// A status write would take a grant along an edge the state machine does not have.
    #[error("refusing to move {object} from {from} to {to}: the grant state machine has no such transition")]
    Transition {
        /// `Kind namespace/name`.
        object: String,
        /// The phase it is in.
        from: crate::api::GrantPhase,
        /// The phase it would have gone to.
        to: crate::api::GrantPhase,
    },
}

impl Error {
    /// A static label for metrics and Event reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } | Self::Write { .. } => "kube",
            Self::Pki { .. } => "pki",
            Self::Revocation { .. } => "revocation",
            Self::Finalizer { .. } => "finalizer",
            Self::Transition { .. } => "transition",
        }
    }
}

/// Whether the API server refused a write because its namespace is being
/// deleted (`NamespaceTerminating`, from the NamespaceLifecycle admission):
/// nothing new can be made there, and a retry would be refused the same way.
pub fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 403
        && status.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

/// A finalizer that cannot be removed because its object is gone has been
/// removed: by the controller's previous pass, when a second pass started
/// from a cache that had not yet seen the deletion (half the grants of a
/// burst of deletions, each a warning and a reconcile error; an identity at
/// the end of the 10k scale run's teardown).
pub fn finalized<E>(
    result: Result<kube::runtime::controller::Action, kube::runtime::finalizer::Error<E>>,
) -> Result<kube::runtime::controller::Action, kube::runtime::finalizer::Error<E>>
where
    E: std::error::Error + 'static,
{
    match result {
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(e))) if e.code == 404 => {
            Ok(kube::runtime::controller::Action::await_change())
        }
        other => other,
    }
}

/// Whether a kube error is a 404 (counts as success during cleanup).
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

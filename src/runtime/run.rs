//! `writ run`: bootstrap trust material, serve webhooks and endpoints on
//! every replica, run the controllers on the leader.

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use futures::{future, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    api::{Api, ObjectMeta, PostParams},
    runtime::{controller::Controller, reflector::ObjectRef, watcher},
    Client, ResourceExt,
};
use tokio::sync::watch;

use super::leader::LeaderElector;
use crate::{
    api::{AgentIdentity, DelegationPolicy, GrantPhase, AGENT_LABEL},
    controller::{
        self, credentials,
        machinery::{
            cache::{Cache, Resync},
            intake::{self, Intake},
        },
        Context,
    },
    publish,
    state::{
        metrics::{self, Metrics},
        revocations::RevocationStore,
        tls as server,
        trust::Trust,
        AgentPod, CachedGrant, CredentialSecret, RunConfig, Shared,
    },
    webhook::{self, register},
};

/// Lifetime of the webhook serving certificate; re-minted at half-life.
const SERVING_CERT_TTL: i64 = 30 * 86_400;

/// Keeps `revocations` as its ConfigMaps hold it, from a watch of the
/// ConfigMaps in the operator's namespace (restarted with backoff when it
/// fails): one watch for all parts; the namespace holds only Writ's own
/// published material besides.
async fn follow_revocations(client: Client, namespace: String, revocations: Arc<RevocationStore>) {
    use kube::runtime::WatchStreamExt;
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, &namespace);
    let events = watcher(api, watcher::Config::default()).default_backoff().applied_objects();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let outcome = match event {
            Ok(cm) => revocations.absorb(cm).await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("watching the ConfigMaps of namespace {namespace}: {e}")),
        };
        if let Err(error) = outcome {
            tracing::warn!(%error, "following the revocation list");
        }
    }
}

async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(crate::api::names::IGNORE_NAMESPACE_LABEL.to_string(), "disabled".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => tracing::info!(namespace = name, "created the operator namespace"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).context("creating the operator namespace"),
        }
    }
    Ok(())
}

fn serving_names(config: &RunConfig) -> (Vec<String>, Vec<IpAddr>) {
    let svc = &config.service_name;
    let ns = &config.namespace;
    let mut dns = vec!["localhost".to_string(), svc.clone(), format!("{svc}.{ns}"), format!("{svc}.{ns}.svc")];
    dns.push(format!("{svc}.{ns}.svc.cluster.local"));
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    if !config.webhook_addr.ip().is_unspecified() && !ips.contains(&config.webhook_addr.ip()) {
        ips.push(config.webhook_addr.ip());
    }
    if let Some(host) = config
        .webhook_url
        .as_deref()
        .and_then(|u| u.strip_prefix("https://"))
        .map(|r| r.split(['/']).next().unwrap_or(r))
    {
        let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).trim_matches(['[', ']']);
        match host.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !dns.iter().any(|d| d == host) => dns.push(host.to_string()),
            Err(_) => {}
        }
    }
    (dns, ips)
}

fn mint_serving(shared_trust: &Trust, config: &RunConfig, slot: &server::CertSlot) -> anyhow::Result<()> {
    let (dns, ips) = serving_names(config);
    let cert = shared_trust
        .ca()
        .mint_serving_certificate(&dns, &ips, crate::pki::now_unix(), SERVING_CERT_TTL)
        .context("minting the webhook serving certificate")?;
    slot.set(&cert.chain_pem, &cert.key_pem).context("loading the webhook serving certificate")?;
    Ok(())
}

/// Readiness before and after bootstrap.
#[derive(Default)]
struct Boot {
    metrics: Arc<Metrics>,
    shared: std::sync::OnceLock<Arc<Shared>>,
    waiting: std::sync::Mutex<Option<String>>,
}

impl Boot {
    fn set_waiting(&self, why: String) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    fn readiness(&self) -> (StatusCode, String) {
        match self.shared.get() {
            Some(s) if s.is_ready() => (StatusCode::OK, "ready".into()),
            Some(s) if !s.serving.is_loaded() => {
                (StatusCode::SERVICE_UNAVAILABLE, "not ready: no webhook serving certificate yet".into())
            }
            Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: caches not synced".into()),
            None => {
                let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let why = waiting.unwrap_or_else(|| "loading trust material".into());
                (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}"))
            }
        }
    }
}

/// Registers the webhook configurations at `--webhook-url`, or (in-cluster)
/// patches `caBundle` into the installed ones.
async fn register_webhooks(client: &Client, config: &RunConfig, ca_bundle: &[u8]) -> anyhow::Result<()> {
    match &config.webhook_url {
        Some(url) => {
            register::apply(client, &config.webhook_config_name, &register::Endpoint::Url(url.clone()), ca_bundle)
                .await
                .context("registering webhook configurations")?
        }
        None => register::patch_ca_bundle(client, &config.webhook_config_name, ca_bundle)
            .await
            .context("patching caBundle into the webhook configurations")?,
    }
    Ok(())
}

/// Runs the operator until SIGINT/SIGTERM.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    tracing::info!(config = %config.summary(), "starting writ");
    let kubeconfig = kube::Config::infer().await.context("reading KUBECONFIG or the in-cluster configuration")?;
    let client = super::client::build(kubeconfig).context("connecting to the API server")?;
    let serving = Arc::new(server::CertSlot::default());

    // Listeners first, so a port clash fails fast and /healthz answers during bootstrap.
    let tls_listener = server::bind(config.webhook_addr).await?;
    let endpoints_listener = match config.endpoints_addr {
        Some(addr) => Some(server::bind(addr).await?),
        None => None,
    };
    let metrics_listener = server::bind(config.metrics_addr).await?;
    let token_listener = server::bind(config.token_addr).await?;

    // Health and metrics (plain HTTP) answer from now on: /readyz says what
    // the operator is waiting for until it can serve webhooks.
    let boot = Arc::new(Boot::default());
    let health = Router::new()
        .route("/metrics", get(|State(b): State<Arc<Boot>>| async move { b.metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|State(b): State<Arc<Boot>>| async move { b.readiness() }))
        .with_state(boot.clone());
    let boot_metrics = boot.metrics.clone();
    tokio::spawn(server::serve_plain(metrics_listener, health));
    let metrics = boot_metrics;

    ensure_namespace(&client, &config.namespace).await?;
    let token_settings = crate::state::trust::TokenSettings {
        algorithm: config.token_algorithm,
        issuer: config.effective_issuer().map_err(|e| anyhow::anyhow!(e))?,
        // A replaced key or issuer is kept as long as the longest token can live, plus skew.
        keep_secs: config.max_grant_ttl.as_secs_i64() + crate::verify::MAX_SKEW_SECS,
    };
    let trust = loop {
        match Trust::bootstrap_with(
            &client,
            &config.namespace,
            config.ca_secret.as_deref(),
            config.ca_ttl.as_secs_i64(),
            &config.trust_domain,
            &token_settings,
        )
        .await
        {
            Ok(t) => break Arc::new(t),
            // A configured CA Secret may be created after the operator (GitOps
            // ordering, cert-manager): wait for it instead of crash-looping.
            Err(e @ crate::state::trust::TrustError::Missing { .. }) => {
                boot.set_waiting(e.to_string());
                tracing::warn!(error = %e, "waiting for the CA Secret");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e).context("loading trust material"),
        }
    };
    // Credentials read back from Secrets count only when this trust issued
    // them (see [`crate::state::trust_read_back`]): registered before any cache
    // decodes a Secret.
    crate::state::trust_read_back(
        &trust,
        &config.trust_domain,
        config.max_grant_ttl.as_secs_i64(),
        config.max_credential_ttl.as_secs_i64(),
        &metrics,
    );
    let revocations = Arc::new(
        RevocationStore::load(&client, &config.namespace)
            .await?
            .with_namespace_quota(config.revocation_namespace_quota),
    );

    // Caches (every replica: the webhooks read them; the leader's
    // controllers share them).
    let agent_pods = watcher::Config::default().labels(AGENT_LABEL);
    let caches = Arc::new(Caches {
        identities: Cache::spawn(
            Api::all(client.clone()),
            watcher::Config::default(),
            crate::state::strip,
            metrics.cache_lists("agentidentities"),
        ),
        policies: Cache::spawn(
            Api::all(client.clone()),
            watcher::Config::default(),
            crate::state::strip,
            metrics.cache_lists("delegationpolicies"),
        ),
        // Stripped as it is decoded (see [`CachedGrant`]); the resourceVersion
        // goes once the watch has read it.
        grants: Cache::spawn(
            Api::all(client.clone()),
            watcher::Config::default(),
            CachedGrant::trim,
            metrics.cache_lists("capabilitygrants"),
        ),
        pods: Cache::spawn(Api::all(client.clone()), agent_pods, AgentPod::trim, metrics.cache_lists("pods")),
        // Only the leader's controllers read credential Secrets, but every
        // replica keeps them cached: a replica that takes over acts at once
        // instead of first listing every credential Secret in the cluster
        // (0.6 s of a new leader's first second at 10,000, with the API
        // server and etcd busy serving it), and a standby holds what the
        // leader holds anyway.
        secrets: Cache::spawn(
            Api::all(client.clone()),
            watcher::Config::default().labels(crate::api::names::POD_LABEL),
            CredentialSecret::trim,
            metrics.cache_lists("secrets"),
        ),
    });
    let shared = Arc::new(Shared::new(
        client.clone(),
        config.clone(),
        caches.identities.store(),
        caches.policies.store(),
        caches.grants.store(),
        caches.pods.store(),
        trust.clone(),
        revocations.clone(),
        metrics.clone(),
        serving.clone(),
    ));

    let _ = boot.shared.set(shared.clone());
    if config.per_object_metrics {
        let source = metrics::cache_object_source(&shared, caches.secrets.store(), config.per_object_metrics_max);
        metrics.set_object_source(source);
    }

    // Serving certificate, then the HTTPS listener (webhooks + trust endpoints).
    mint_serving(&trust, &config, &serving)?;
    // Client certificates are requested (introspection callers, and the API
    // server under --webhook-client-ca), never required.
    let webhook_client_ca = match &config.webhook_client_ca {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading --webhook-client-ca {}", path.display()))?,
        ),
        None => None,
    };
    let clients = Arc::new(
        server::ClientTrust::new(&trust.bundle_pem(), webhook_client_ca.as_deref())
            .context("--webhook-client-ca / the CA bundle")?,
    );
    let tls = server::tls_config_with_clients(serving.clone(), clients.clone())?;
    let mut hooks = webhook::router(shared.clone());
    if clients.has_webhook_client_ca() {
        hooks = server::require_webhook_client(hooks);
    }
    let router = hooks.merge(publish::endpoints::router(shared.clone()));
    tokio::spawn(server::serve_tls_with_clients(tls_listener, tls.clone(), router, Some(clients.clone())));
    if let Some(listener) = endpoints_listener {
        let router = publish::endpoints::router(shared.clone());
        tokio::spawn(server::serve_tls_with_clients(listener, tls, router, Some(clients.clone())));
    }
    // The token exchange on its own listener (mutual TLS with pod certificates).
    let exchange = crate::exchange::server::ExchangeSettings {
        ttl_secs: config.exchange_ttl.as_secs_i64(),
        rate_per_sec: f64::from(config.exchange_rate.max(1)),
        burst: f64::from(config.exchange_burst.max(1)),
    };
    tokio::spawn(crate::exchange::server::serve(token_listener, shared.clone(), serving.clone(), exchange));

    // Admission reads only the identity and policy caches: the replica
    // serves once they are filled, while the grant, pod and Secret caches (ten
    // thousand objects each at scale, most of a restart's wait) are still
    // being listed. The controllers wait for those (`run_controllers`).
    {
        let (shared, secrets) = (shared.clone(), caches.secrets.store());
        tokio::spawn(async move {
            let _ = tokio::join!(shared.identities.wait_until_ready(), shared.policies.wait_until_ready());
            shared.set_synced();
            tracing::info!("identity and policy caches synced; webhooks ready");
            let _ = tokio::join!(
                shared.grants.wait_until_ready(),
                shared.pods.wait_until_ready(),
                secrets.wait_until_ready()
            );
            shared.set_all_synced();
            tracing::info!("grant, pod and credential Secret caches synced");
        });
    }

    register_webhooks(&client, &config, trust.bundle_pem().as_bytes()).await?;
    publish::publish_configmaps(&shared).await;

    // Every replica serves `/revocations` and introspection, so each follows
    // the revocation list as the leader writes it: through a watch of its
    // ConfigMaps. Re-reading it every 5 s, as replicas did, left a revoked
    // token active on a follower for up to 5 s, and read up to a mebibyte
    // each time.
    tokio::spawn(follow_revocations(client.clone(), config.namespace.clone(), shared.revocations.clone()));

    // Followers keep their copies of leader-written state fresh; everyone
    // keeps the grant gauges and the published ConfigMaps current.
    {
        let shared = shared.clone();
        let serving = serving.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let mut published = (shared.trust.bundle_pem(), shared.trust.jwks(crate::pki::now_unix()));
            let mut serving_minted = crate::pki::now_unix();
            for round in 0u64.. {
                tick.tick().await;
                release_free_memory();
                // A backstop for the watch (e.g. RBAC without list/watch on
                // ConfigMaps in this namespace): a full re-read once a minute.
                if round % 12 == 11 {
                    if let Err(e) = shared.revocations.refresh().await {
                        tracing::warn!(error = %e, "re-reading the revocation list");
                    }
                }
                let _ = shared
                    .trust
                    .reload(&shared.client, &shared.config.namespace, shared.config.ca_secret.as_deref())
                    .await;
                // A CA or signing-key rotation (or a retirement) changes what
                // is published: re-issue the serving certificate from the
                // current CA, re-point the webhooks' caBundle, republish.
                let now = crate::pki::now_unix();
                let current = (shared.trust.bundle_pem(), shared.trust.jwks(now));
                let ca_changed = current.0 != published.0;
                if ca_changed || now - serving_minted > SERVING_CERT_TTL / 2 {
                    match mint_serving(&shared.trust, &shared.config, &serving) {
                        Ok(()) => serving_minted = now,
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "re-issuing the serving certificate"),
                    }
                }
                if ca_changed {
                    if let Err(e) = clients.set_writ_bundle(&current.0) {
                        tracing::error!(error = %e, "trusting the new CA bundle for client certificates");
                    }
                    if let Err(e) = register_webhooks(&shared.client, &shared.config, current.0.as_bytes()).await {
                        tracing::error!(error = %format!("{e:#}"), "updating the webhooks' caBundle");
                    }
                }
                if current != published {
                    tracing::info!(ca_changed, "trust material changed; republishing");
                    publish::publish_configmaps(&shared).await;
                    published = current;
                }
                let (bytes, entries) = shared.revocations.size().await;
                shared.metrics.revocation_list_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
                shared.metrics.revocation_list_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
                shared.metrics.revocation_usage(&shared.revocations.usage(now).await);
                for phase in GrantPhase::ALL {
                    let n = shared.grants.state().iter().filter(|g| g.phase == phase).count();
                    shared.metrics.grants.get_or_create(&metrics::PhaseLabels { phase: phase.as_str() }).set(n as i64);
                }
            }
        });
    }

    // Leader election: the controllers run only on the leader.
    let me = config
        .replica_id
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("writ-{}", std::process::id()));
    let (tx, mut rx) = watch::channel(false);
    let elector = LeaderElector::new(client.clone(), &config.namespace, me.clone(), config.lease_duration.to_std());
    let election = tokio::spawn(elector.clone().run(tx));

    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                election.abort();
                if let Some(h) = running.take() {
                    h.abort();
                    let _ = h.await;
                }
                release_lease(&elector).await;
                return Ok(());
            }
            changed = rx.changed() => {
                if changed.is_err() { return Ok(()); }
                let leading = *rx.borrow();
                metrics.leader.set(i64::from(leading));
                match (leading, running.is_some()) {
                    (true, false) => {
                        let _ = revocations.refresh().await;
                        let _ = trust.reload(&client, &config.namespace, config.ca_secret.as_deref()).await;
                        running = Some(tokio::spawn(run_controllers(shared.clone(), caches.clone(), me.clone())));
                    }
                    (false, true) => {
                        if let Some(h) = running.take() { h.abort(); }
                        tracing::warn!("stopped controllers after losing leadership");
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Hands the leader Lease over on shutdown (the controllers have stopped):
/// a waiting replica takes it within a second instead of a lease duration.
async fn release_lease(elector: &LeaderElector) {
    match tokio::time::timeout(Duration::from_secs(2), elector.release()).await {
        Ok(Ok(true)) => tracing::info!("released the leader Lease"),
        Ok(Ok(false)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "releasing the leader Lease"),
        Err(_) => tracing::warn!("releasing the leader Lease: no answer within 2s"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Hands memory that the allocator holds free back to the system. glibc
/// returns only the top of its heap by itself: after a burst (a re-list, ten
/// thousand admissions) the freed middle stays resident. A pass over a heap
/// of a few hundred MiB takes a few milliseconds; this runs every 5 s.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reconciles in flight per controller.
const RECONCILES_IN_FLIGHT: u16 = 32;
/// Reconciles in flight of the grant controller: each grant is re-triggered
/// by its own status write and by its token's Secret write, so a burst of new
/// grants queued behind those at 32 (p99 time to Active 26 s at 10k).
const GRANT_RECONCILES_IN_FLIGHT: u16 = 256;

/// Requests a controller's intake lets into kube's scheduler, per reconcile
/// it runs at a time (see [`Intake`]).
const INTAKE_PER_RECONCILE: usize = 4;
/// How often the caches are swept for timed work: certificates due for
/// rotation, grants past their expiry.
const SWEEP: Duration = Duration::from_secs(1);

/// A controller on `store` that takes every request from `requests` through
/// an [`Intake`] sized for `in_flight` reconciles at a time (drain its results
/// with [`Intake::drain`]).
fn through_intake<K>(
    store: kube::runtime::reflector::Store<K>,
    requests: impl futures::Stream<Item = ObjectRef<K>> + Send + 'static,
    in_flight: u16,
) -> (Controller<K>, Intake)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let intake = Intake::new(INTAKE_PER_RECONCILE * usize::from(in_flight));
    let controller = Controller::for_shared_stream(futures::stream::pending(), store)
        .reconcile_on(intake.feed(requests))
        .with_config(kube::runtime::controller::Config::default().concurrency(in_flight));
    (controller, intake)
}

/// A reference to every cached object each time `passes` asks (a full pass),
/// read from the cache as the intake takes them.
fn every_object<K>(
    passes: impl futures::Stream<Item = ()> + Send + 'static,
    store: kube::runtime::reflector::Store<K>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    passes.flat_map(move |()| futures::stream::iter(store.state()).map(|obj| ObjectRef::from_obj(&*obj)))
}

/// The kinds every replica watches.
struct Caches {
    identities: Cache<AgentIdentity>,
    policies: Cache<DelegationPolicy>,
    grants: Cache<CachedGrant>,
    pods: Cache<AgentPod>,
    secrets: Cache<CredentialSecret>,
}

/// The controllers, on the leader.
/// Stops a term's Secret writer when the term's controllers are dropped.
struct StopOnDrop(controller::machinery::batch::SecretWriter);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

async fn run_controllers(shared: Arc<Shared>, caches: Arc<Caches>, me: String) {
    // Decisions read the shared caches (does this pod's identity exist?): a
    // controller that ran before they are filled would revoke and re-issue
    // on the word of an empty cache (found by the SIGKILL churn test).
    // (Polled: kube's `Store::wait_until_ready` wakes only its latest waiter,
    // and the boot task already waits on it.)
    while !shared.is_all_synced() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = shared.client.clone();
    let secrets = &caches.secrets;
    let ctx = Arc::new(Context::new(
        shared.clone(),
        controller::machinery::events::Events::new(client.clone(), crate::api::names::EVENT_REPORTER, &me),
        secrets.store(),
    ));
    // This future is dropped when the Lease is lost: token writes still
    // queued then must not go out.
    let _stop_writes = StopOnDrop(ctx.secret_writes.clone());

    // Every controller starts with one full pass (its `Resync` channel holds
    // the first request), then follows the changes. Reconciles in flight are
    // bounded: each holds an API connection, and a backlog of thousands of
    // pods (a new leader, a re-list) reconciled all at once had the operator
    // open thousands of TLS connections, several times the memory of its
    // caches, for a slower result than a few dozen at a time. What waits
    // behind them waits in an `Intake` (at most `INTAKE_PER_RECONCILE` times
    // as many requests go into kube's scheduler, whose tables never shrink),
    // and timed work (rotations, expiries) is found by a sweep of the caches
    // each second rather than kept there as a requeue per object.
    let bounded = |n| kube::runtime::controller::Config::default().concurrency(n);
    let (resync, all) = Resync::channel();
    let pods_store = shared.pods.clone();
    // A pod's credential depends on its identity's spec and existence, not
    // its status: the status (pod and grant counts) is rewritten about once
    // a second while pods come and go, and re-queueing every pod of the agent
    // on each write kept the controller busy with thousands of no-op
    // reconciles while new pods waited for their credentials.
    let pod_identity_gate = controller::machinery::gate::GenerationGate::seeded(&caches.identities.store());
    let identity_cache = shared.identities.clone();
    let requests = futures::stream::select_all([
        caches.pods.changes(&resync).map(|p| ObjectRef::from_obj(&*p)).boxed(),
        // The pod a credential Secret belongs to, by its `writ.dev/pod` label
        // (Writ writes it with the pod as the Secret's owner).
        secrets
            .changes(&resync)
            .filter_map(|s| {
                future::ready(s.pod.as_ref().map(|pod| ObjectRef::new(pod).within(&s.namespace().unwrap_or_default())))
            })
            .boxed(),
        caches
            .identities
            .changes(&resync)
            .flat_map(move |id| {
                if !pod_identity_gate.changed(id.as_ref(), &identity_cache) {
                    return futures::stream::iter(Vec::new());
                }
                let ns = id.namespace().unwrap_or_default();
                let name = id.name_any();
                futures::stream::iter(
                    pods_store
                        .state()
                        .iter()
                        .filter(|p| p.namespace().as_deref() == Some(&ns) && p.agent() == Some(name.as_str()))
                        .map(|p| ObjectRef::from_obj(&**p))
                        .collect::<Vec<_>>(),
                )
            })
            .boxed(),
        every_object(all, caches.pods.store()).boxed(),
        {
            let (shared, secrets) = (shared.clone(), secrets.store());
            intake::every(SWEEP)
                .flat_map(move |()| {
                    futures::stream::iter(credentials::rotations_due(&shared, &secrets, crate::pki::now_unix()))
                })
                .boxed()
        },
    ]);
    let (controller, intake) = through_intake(caches.pods.store(), requests, RECONCILES_IN_FLIGHT);
    let pods = intake.drain(controller.run(
        controller::forgetting_failures(credentials::POD_CONTROLLER, credentials::reconcile),
        credentials::error_policy,
        ctx.clone(),
    ));

    let (resync, all) = Resync::channel();
    let requests = futures::stream::select(
        secrets.changes(&resync).map(|s| ObjectRef::from_obj(&*s)),
        every_object(all, secrets.store()),
    );
    let (controller, intake) = through_intake(secrets.store(), requests, RECONCILES_IN_FLIGHT);
    let secrets_controller = intake.drain(controller.run(
        controller::forgetting_failures(credentials::SECRET_CONTROLLER, credentials::reconcile_secret),
        credentials::secret_error_policy,
        ctx.clone(),
    ));

    // Our writes to credential Secrets are remembered (so that reads do not
    // return an older cached version) until the cache has them.
    let (resync, relisted) = Resync::channel();
    let writes = ctx.secret_writes.clone();
    let forget_seen = secrets.changes(&resync).for_each(move |s| {
        writes.seen(&s);
        future::ready(())
    });
    // Re-lists need nothing here: a record the watch never confirms goes
    // with the next sweep.
    let relisted = relisted.for_each(|()| future::ready(()));

    let (resync, all) = Resync::channel();
    let identities = Controller::for_shared_stream(caches.identities.changes(&resync), caches.identities.store())
        .watches_shared_stream(caches.pods.changes(&resync), |p| {
            p.agent().map(|a| ObjectRef::new(a).within(&p.namespace().unwrap_or_default()))
        })
        .watches_shared_stream(caches.grants.changes(&resync), |g| {
            Some(ObjectRef::new(&g.agent).within(&g.namespace().unwrap_or_default()))
        })
        .reconcile_all_on(all)
        // An identity's status counts its pods and active grants: during a
        // burst of grants, one status write a second instead of one per grant.
        .with_config(bounded(RECONCILES_IN_FLIGHT).debounce(Duration::from_secs(1)))
        .run(
            controller::forgetting_failures(controller::identity::CONTROLLER, controller::identity::reconcile),
            controller::identity::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    let (g1, g2, g3, g4, g5, g6) = (
        shared.grants.clone(),
        shared.grants.clone(),
        shared.grants.clone(),
        shared.grants.clone(),
        shared.grants.clone(),
        shared.grants.clone(),
    );
    let (identity_gate, policy_gate) = (
        controller::machinery::gate::GenerationGate::seeded(&caches.identities.store()),
        controller::machinery::gate::GenerationGate::seeded(&caches.policies.store()),
    );
    let (identity_cache, policy_cache) = (shared.identities.clone(), shared.policies.clone());
    let (resync, all) = Resync::channel();
    let each = |refs: Vec<ObjectRef<CachedGrant>>| futures::stream::iter(refs);
    let requests = futures::stream::select_all([
        caches.grants.changes(&resync).map(|g| ObjectRef::from_obj(&*g)).boxed(),
        caches
            .pods
            .changes(&resync)
            .flat_map(move |p| {
                // The grants that bind this pod: its agent's, unless bound to another pod.
                let agent = p.agent().unwrap_or_default().to_string();
                let pod = p.name_any();
                each(controller::grant::grants_where(&g1, &p.namespace().unwrap_or_default(), |g| {
                    g.agent == agent && g.pod.as_ref().is_none_or(|bound| *bound == pod)
                }))
            })
            .boxed(),
        secrets.changes(&resync).flat_map(move |s| each(controller::grant::grants_for_secret(&g2, &s))).boxed(),
        caches
            .grants
            .changes(&resync)
            .flat_map(move |parent| {
                let name = parent.name_any();
                each(controller::grant::grants_where(&g3, &parent.namespace().unwrap_or_default(), |g| {
                    g.parent.as_deref() == Some(&name)
                }))
            })
            .boxed(),
        caches
            .identities
            .changes(&resync)
            .flat_map(move |id| {
                if !identity_gate.changed(id.as_ref(), &identity_cache) {
                    return each(Vec::new());
                }
                let name = id.name_any();
                each(controller::grant::grants_where(&g4, &id.namespace().unwrap_or_default(), |g| g.agent == name))
            })
            .boxed(),
        caches
            .policies
            .changes(&resync)
            .flat_map(move |p| {
                if !policy_gate.changed(p.as_ref(), &policy_cache) {
                    return each(Vec::new());
                }
                each(controller::grant::grants_where(&g5, &p.namespace().unwrap_or_default(), |_| true))
            })
            .boxed(),
        every_object(all, caches.grants.store()).boxed(),
        intake::every(SWEEP)
            .flat_map(move |()| {
                let now = crate::pki::now_unix();
                let mut due = controller::grant::expired(&g6, now);
                due.extend(controller::grant::approval_overdue(&g6, now));
                each(due)
            })
            .boxed(),
    ]);
    let (grant_controller, intake) = through_intake(caches.grants.store(), requests, GRANT_RECONCILES_IN_FLIGHT);
    let grants = intake.drain(grant_controller.run(
        controller::forgetting_failures(controller::grant::CONTROLLER, controller::grant::reconcile),
        controller::grant::error_policy,
        ctx.clone(),
    ));

    // Pods reading another pod's credential Secret (past the `Ignore`
    // webhook) have that credential rotated.
    let mounts = credentials::guard_credential_mounts(ctx.clone());

    tracing::info!("controllers started");
    tokio::join!(pods, secrets_controller, identities, grants, forget_seen, relisted, mounts);
}

//! `writ run`: bootstrap trust material, serve webhooks and endpoints on
//! every replica, run the controllers on the leader.

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    api::{Api, ObjectMeta, PostParams},
    runtime::watcher,
    Client,
};
use tokio::sync::watch;
use tracing::Instrument as _;

use super::leader::LeaderElector;
use crate::{
    api::{GrantPhase, AGENT_LABEL},
    controller::{self, machinery::cache::Cache, Caches},
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

/// Runs the operator until SIGINT/SIGTERM: five boot steps, each a function
/// below. Every replica loads trust, fills the caches, serves and maintains;
/// the leader also runs the controllers.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    tracing::info!(config = %config.summary(), "starting writ");
    let kubeconfig = kube::Config::infer().await.context("reading KUBECONFIG or the in-cluster configuration")?;
    let client = super::client::build(kubeconfig).context("connecting to the API server")?;
    // Listeners first, so a port clash fails fast and /healthz answers during bootstrap.
    let listeners = Listeners::bind(&config).await?;
    let boot = serve_health(listeners.metrics);
    let (trust, revocations) = load_trust(&client, &config, &boot).await?;
    let caches = Arc::new(start_caches(&client, &boot.metrics));
    let shared = Arc::new(
        Shared::builder(client, config, trust, revocations)
            .identities(caches.identities.store())
            .policies(caches.policies.store())
            .grants(caches.grants.store())
            .pods(caches.pods.store())
            .metrics(boot.metrics.clone())
            .build(),
    );
    let _ = boot.shared.set(shared.clone());
    let clients = serve(&shared, &caches, listeners.webhooks, listeners.endpoints, listeners.token).await?;
    maintain(&shared, clients);
    lead(shared, caches).await
}

/// The listeners, bound before anything else.
struct Listeners {
    webhooks: tokio::net::TcpListener,
    endpoints: Option<tokio::net::TcpListener>,
    metrics: tokio::net::TcpListener,
    token: tokio::net::TcpListener,
}

impl Listeners {
    async fn bind(config: &RunConfig) -> anyhow::Result<Self> {
        Ok(Self {
            webhooks: server::bind(config.webhook_addr).await?,
            endpoints: match config.endpoints_addr {
                Some(addr) => Some(server::bind(addr).await?),
                None => None,
            },
            metrics: server::bind(config.metrics_addr).await?,
            token: server::bind(config.token_addr).await?,
        })
    }
}

/// Serves health and metrics (plain HTTP) from now on: /readyz says what the
/// operator is waiting for until it can serve webhooks.
fn serve_health(listener: tokio::net::TcpListener) -> Arc<Boot> {
    let boot = Arc::new(Boot::default());
    let health = Router::new()
        .route("/metrics", get(|State(b): State<Arc<Boot>>| async move { b.metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|State(b): State<Arc<Boot>>| async move { b.readiness() }))
        .with_state(boot.clone());
    tokio::spawn(server::serve_plain(listener, health).instrument(tracing::info_span!("serve", listener = "metrics")));
    boot
}

/// Boot step 1, trust: the operator namespace, the CA, signing and seal
/// keys, and the revocation ledger.
async fn load_trust(
    client: &Client,
    config: &RunConfig,
    boot: &Boot,
) -> anyhow::Result<(Arc<Trust>, Arc<RevocationStore>)> {
    ensure_namespace(client, &config.namespace).await?;
    let token_settings = crate::state::trust::TokenSettings {
        algorithm: config.token_algorithm,
        issuer: config.effective_issuer().map_err(|e| anyhow::anyhow!(e))?,
        // A replaced key or issuer is kept as long as the longest token can live, plus skew.
        keep_secs: config.max_grant_ttl.as_secs_i64() + crate::verify::MAX_SKEW_SECS,
    };
    let trust = loop {
        match Trust::bootstrap_with(
            client,
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
        &boot.metrics,
    );
    let revocations = Arc::new(
        RevocationStore::load(client, &config.namespace).await?.with_namespace_quota(config.revocation_namespace_quota),
    );
    Ok((trust, revocations))
}

/// Boot step 2, caches: one watch per kind, on every replica (the webhooks
/// read them; the leader's controllers share them).
fn start_caches(client: &Client, metrics: &Metrics) -> Caches {
    Caches {
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
        pods: Cache::spawn(
            Api::all(client.clone()),
            watcher::Config::default().labels(AGENT_LABEL),
            AgentPod::trim,
            metrics.cache_lists("pods"),
        ),
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
    }
}

/// Boot step 3, serve: the webhooks and trust endpoints (HTTPS), the token
/// exchange (mutual TLS), readiness as the caches fill, the webhook
/// registration and the published ConfigMaps. Returns the client-certificate
/// trust, which follows CA rotations.
async fn serve(
    shared: &Arc<Shared>,
    caches: &Caches,
    webhooks: tokio::net::TcpListener,
    endpoints: Option<tokio::net::TcpListener>,
    token: tokio::net::TcpListener,
) -> anyhow::Result<Arc<server::ClientTrust>> {
    let (config, trust, serving) = (&shared.config, &shared.trust, &shared.serving);
    if config.per_object_metrics {
        let source = metrics::cache_object_source(shared, caches.secrets.store(), config.per_object_metrics_max);
        shared.metrics.set_object_source(source);
    }
    mint_serving(trust, config, serving)?;
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
    tokio::spawn(
        server::serve_tls_with_clients(webhooks, tls.clone(), router, Some(clients.clone()))
            .instrument(tracing::info_span!("serve", listener = "webhooks")),
    );
    if let Some(listener) = endpoints {
        let router = publish::endpoints::router(shared.clone());
        tokio::spawn(
            server::serve_tls_with_clients(listener, tls, router, Some(clients.clone()))
                .instrument(tracing::info_span!("serve", listener = "endpoints")),
        );
    }
    let exchange = crate::exchange::server::ExchangeSettings {
        ttl_secs: config.exchange_ttl.as_secs_i64(),
        rate_per_sec: f64::from(config.exchange_rate.max(1)),
        burst: f64::from(config.exchange_burst.max(1)),
    };
    tokio::spawn(
        crate::exchange::server::serve(token, shared.clone(), serving.clone(), exchange)
            .instrument(tracing::info_span!("serve", listener = "token")),
    );

    // Admission reads only the identity and policy caches: the replica
    // serves once they are filled, while the grant, pod and Secret caches (ten
    // thousand objects each at scale, most of a restart's wait) are still
    // being listed. The controllers wait for those.
    {
        let (shared, secrets) = (shared.clone(), caches.secrets.store());
        tokio::spawn(
            async move {
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
            }
            .instrument(tracing::info_span!("caches-synced")),
        );
    }

    register_webhooks(&shared.client, config, trust.bundle_pem().as_bytes()).await?;
    publish::publish_configmaps(shared).await;
    Ok(clients)
}

/// Boot step 4, maintain: every replica follows the revocation list as the
/// leader writes it (it serves `/revocations` and introspection), keeps its
/// copy of the trust material fresh, re-issues the serving certificate and
/// republishes on a rotation, and keeps the grant gauges current.
fn maintain(shared: &Arc<Shared>, clients: Arc<server::ClientTrust>) {
    let follow = follow_revocations(shared.client.clone(), shared.config.namespace.clone(), shared.revocations.clone());
    tokio::spawn(follow.instrument(tracing::info_span!("follow-revocations")));
    let shared = shared.clone();
    let maintenance = async move {
        let serving = shared.serving.clone();
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
            let _ =
                shared.trust.reload(&shared.client, &shared.config.namespace, shared.config.ca_secret.as_deref()).await;
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
    };
    tokio::spawn(maintenance.instrument(tracing::info_span!("maintain")));
}

/// Boot step 5, lead: leader election; the controllers run while this
/// replica leads, until SIGINT/SIGTERM, when it hands the Lease over.
async fn lead(shared: Arc<Shared>, caches: Arc<controller::Caches>) -> anyhow::Result<()> {
    let (client, config) = (&shared.client, &shared.config);
    let me = config
        .replica_id
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("writ-{}", std::process::id()));
    let (tx, mut rx) = watch::channel(false);
    let elector = LeaderElector::new(client.clone(), &config.namespace, me.clone(), config.lease_duration.to_std());
    let election = tokio::spawn(elector.clone().run(tx).instrument(tracing::info_span!("leader-election")));

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
                shared.metrics.leader.set(i64::from(leading));
                match (leading, running.is_some()) {
                    (true, false) => {
                        let _ = shared.revocations.refresh().await;
                        let _ = shared.trust.reload(client, &config.namespace, config.ca_secret.as_deref()).await;
                        let term = controller::run(shared.clone(), caches.clone(), me.clone());
                        running = Some(tokio::spawn(term.instrument(tracing::info_span!("controllers", replica = %me))));
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

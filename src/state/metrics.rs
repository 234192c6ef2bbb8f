//! Prometheus metrics (`/metrics`), one registry per process.

use std::sync::{Arc, OnceLock, Weak};

use kube::{runtime::reflector::Store, ResourceExt as _};
use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, MetricType},
    registry::Registry,
};

use super::{CredentialSecret, Shared};
use crate::api::GrantPhase;

/// Labels of credential events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    /// `certificate` or `token`.
    pub kind: &'static str,
    /// `issued`, `rotated` or `revoked`.
    pub event: &'static str,
}

/// Labels of admission decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// Which webhook answered.
    pub webhook: &'static str,
    /// `allowed`, `denied` or `invalid`.
    pub decision: &'static str,
    /// The rule id for denials, `none` otherwise.
    pub rule: String,
}

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `pod-credentials`, `identity` or `grant`.
    pub controller: &'static str,
}

/// Labels of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: &'static str,
    /// The error's metric label.
    pub error: &'static str,
}

/// Labels of grant phases.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The phase.
    pub phase: &'static str,
}

/// Labels naming a namespace (a bounded set: see
/// [`Metrics::revocation_usage`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    /// The namespace.
    pub namespace: String,
}

/// How many namespaces `writ_revocation_namespace_quota_ratio` reports at
/// most: the fullest of those at [`QUOTA_REPORT_FROM`] of their quota or more.
pub const QUOTA_REPORTED_NAMESPACES: usize = 10;
/// The share of its quota from which a namespace is reported.
pub const QUOTA_REPORT_FROM: f64 = 0.5;

/// Labels naming a watched kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `agentidentities`, `delegationpolicies`, `capabilitygrants`, `pods` or `secrets`.
    pub kind: &'static str,
}

/// Labels of what Writ refused to trust or act on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UntrustedLabels {
    /// `token` or `certificate` (read back from a Secret), `secret` (a
    /// credential Secret Writ did not create for the pod naming it) or
    /// `credential-mount` (a pod mounting another pod's credential Secret).
    pub what: &'static str,
    /// Why.
    pub reason: &'static str,
}

/// Labels of token exchanges (`POST /token`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    /// `issued` or `refused`.
    pub decision: &'static str,
    /// The rule that refused it, `none` when issued.
    pub rule: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Certificates and tokens issued, rotated and revoked.
    pub credentials: Family<CredentialLabels, Counter>,
    /// Admission decisions by webhook, decision and rule.
    pub admission: Family<AdmissionLabels, Counter>,
    /// Grant transitions into each phase.
    pub grant_transitions: Family<PhaseLabels, Counter>,
    /// Grants currently in each phase.
    pub grants: Family<PhaseLabels, Gauge>,
    /// Reconcile duration per controller.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// Reconcile errors per controller and error.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Objects whose last reconcile failed, waiting to be retried (each
    /// backs off: see [`crate::controller::machinery::retry`]).
    pub reconcile_retrying: Gauge,
    /// Seconds from pod creation to its first credential.
    pub pod_to_credential: Histogram,
    /// Seconds from grant creation to Active.
    pub grant_to_active: Histogram,
    /// 1 when this replica leads (runs the controllers).
    pub leader: Gauge,
    /// 1 once every cache is filled: the grant, pod and credential Secret
    /// caches too, which the controllers wait for and admission does not
    /// need.
    pub caches_synced: Gauge,
    /// Full lists of each watched kind: one when its cache starts, then one
    /// per re-list (a watch that fell too far behind, or lost its place).
    pub cache_lists: Family<KindLabels, Counter>,
    /// Bytes of the persisted revocation list over all its parts
    /// ([`crate::state::revocations::PARTS`] ConfigMaps of at most
    /// [`crate::state::revocations::MAX_PART_BYTES`] each).
    pub revocation_list_bytes: Gauge,
    /// Entries of the persisted revocation list.
    pub revocation_list_entries: Gauge,
    /// What Writ refused to trust or act on, by what and why.
    pub untrusted: Family<UntrustedLabels, Counter>,
    /// Live bytes of the revocation list over its capacity (0 to 1).
    pub revocation_list_capacity_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Each namespace's share of its revocation quota (0 to 1), for the
    /// fullest [`QUOTA_REPORTED_NAMESPACES`] at [`QUOTA_REPORT_FROM`] or more.
    pub revocation_namespace_quota_ratio: Family<NamespaceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Token exchanges by decision and rule.
    pub exchanges: Family<ExchangeLabels, Counter>,
    /// Seconds to answer a token exchange.
    pub exchange_duration: Histogram,
    /// The allocator's own accounting, read at each scrape. glibc only: the
    /// static musl build (the image) has no such interface and exports no
    /// heap gauges rather than zeros.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    heap: HeapGauges,
    /// Per-object series, read from the caches at each scrape.
    objects: Arc<ObjectCollector>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0].into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("writ");
        let credentials = Family::<CredentialLabels, Counter>::default();
        registry.register("credentials", "Certificates and tokens issued, rotated and revoked", credentials.clone());
        let admission = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_decisions",
            "Admission decisions by webhook, decision and rule",
            admission.clone(),
        );
        let grant_transitions = Family::<PhaseLabels, Counter>::default();
        registry.register("grant_transitions", "Grant transitions into each phase", grant_transitions.clone());
        let grants = Family::<PhaseLabels, Gauge>::default();
        registry.register("grants", "Grants currently in each phase", grants.clone());
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration per controller",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register("reconcile_errors", "Reconcile errors per controller", reconcile_errors.clone());
        let pod_to_credential = Histogram::new(latency_buckets());
        registry.register(
            "pod_credential_latency_seconds",
            "Seconds from pod creation to its first credential",
            pod_to_credential.clone(),
        );
        let grant_to_active = Histogram::new(latency_buckets());
        registry.register(
            "grant_activation_latency_seconds",
            "Seconds from grant creation to Active",
            grant_to_active.clone(),
        );
        let reconcile_retrying = Gauge::default();
        registry.register(
            "reconcile_retrying",
            "Objects whose last reconcile failed, waiting for a retry that backs off per object (up to 5 minutes)",
            reconcile_retrying.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 when this replica runs the controllers", leader.clone());
        let caches_synced = Gauge::default();
        registry.register(
            "caches_synced",
            "1 once every cache is filled (the controllers of a leader start then)",
            caches_synced.clone(),
        );
        let cache_lists = Family::<KindLabels, Counter>::default();
        registry.register(
            "cache_lists",
            "Full lists of each watched kind (one at start, then one per re-list)",
            cache_lists.clone(),
        );
        let revocation_list_bytes = Gauge::default();
        registry.register(
            "revocation_list_bytes",
            format!(
                "Bytes of the persisted revocation list, all parts ({} ConfigMaps of at most {} bytes each)",
                crate::state::revocations::PARTS,
                crate::state::revocations::MAX_PART_BYTES
            ),
            revocation_list_bytes.clone(),
        );
        let revocation_list_entries = Gauge::default();
        registry.register(
            "revocation_list_entries",
            "Revoked tokens and certificates in the persisted list, each kept until its own expiry",
            revocation_list_entries.clone(),
        );
        let untrusted = Family::<UntrustedLabels, Counter>::default();
        registry.register(
            "untrusted",
            "What Writ refused to trust or act on: credentials read back from Secrets that it did not issue for \
             that Secret's pod, credential Secrets it did not create for the pod naming them, and pods mounting \
             another pod's credential Secret",
            untrusted.clone(),
        );
        let revocation_list_capacity_ratio = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "revocation_list_capacity_ratio",
            "Live bytes of the revocation list over its capacity (at 1 every revocation is refused: alert well before)",
            revocation_list_capacity_ratio.clone(),
        );
        let revocation_namespace_quota_ratio =
            Family::<NamespaceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "revocation_namespace_quota_ratio",
            format!(
                "A namespace's revocation list bytes over its quota (at 1 its revocations are refused); only the {QUOTA_REPORTED_NAMESPACES} fullest at {QUOTA_REPORT_FROM} or more"
            ),
            revocation_namespace_quota_ratio.clone(),
        );
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        registry.register("exchanges", "Token exchanges (POST /token) by decision and rule", exchanges.clone());
        let exchange_duration = Histogram::new([0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]);
        registry.register("exchange_duration_seconds", "Seconds to answer a token exchange", exchange_duration.clone());
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        let heap = HeapGauges::register(&mut registry);
        let objects = Arc::new(ObjectCollector::default());
        registry.register_collector(Box::new(objects.clone()));
        Self {
            registry,
            credentials,
            admission,
            grant_transitions,
            grants,
            reconcile_duration,
            reconcile_errors,
            reconcile_retrying,
            pod_to_credential,
            grant_to_active,
            leader,
            caches_synced,
            cache_lists,
            revocation_list_bytes,
            revocation_list_entries,
            untrusted,
            revocation_list_capacity_ratio,
            revocation_namespace_quota_ratio,
            exchanges,
            exchange_duration,
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            heap,
            objects,
        }
    }
}

/// `writ_heap_in_use_bytes` and `writ_heap_free_bytes`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
struct HeapGauges {
    /// Bytes the allocator has handed out and not had back.
    in_use: Gauge,
    /// Bytes free inside the allocator's heaps. Part of it is no longer
    /// resident: the operator hands whole free pages back every 5 s, and
    /// glibc still counts them as free heap.
    free: Gauge,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
impl HeapGauges {
    fn register(registry: &mut Registry) -> Self {
        let in_use = Gauge::default();
        registry.register(
            "heap_in_use_bytes",
            "Bytes allocated and not yet freed (glibc's mallinfo2; with RSS, tells what the caches hold from what the allocator keeps)",
            in_use.clone(),
        );
        let free = Gauge::default();
        registry.register(
            "heap_free_bytes",
            "Bytes free inside the allocator's heaps (glibc's mallinfo2), whole free pages included after they are handed back",
            free.clone(),
        );
        Self { in_use, free }
    }
}

impl Metrics {
    /// Counts a token exchange and observes its latency.
    pub fn record_exchange(&self, decision: &'static str, rule: &'static str, seconds: f64) {
        self.exchanges.get_or_create(&ExchangeLabels { decision, rule }).inc();
        self.exchange_duration.observe(seconds);
    }

    /// Sets where the per-object series come from (once; later calls are
    /// ignored). Without a source no per-object series are exported.
    pub fn set_object_source(&self, source: ObjectSource) {
        let _ = self.objects.source.set(source);
    }

    /// Counts a credential event.
    pub fn credential(&self, kind: &'static str, event: &'static str) {
        self.credentials.get_or_create(&CredentialLabels { kind, event }).inc();
    }

    /// Counts something Writ refused to trust or act on.
    pub fn untrusted(&self, what: &'static str, reason: &'static str) {
        self.untrusted.get_or_create(&UntrustedLabels { what, reason }).inc();
    }

    /// Counts an admission decision.
    pub fn admission(&self, webhook: &'static str, decision: &'static str, rule: &str) {
        self.admission.get_or_create(&AdmissionLabels { webhook, decision, rule: rule.to_string() }).inc();
    }

    /// The counter of full lists of a watched kind.
    pub fn cache_lists(&self, kind: &'static str) -> Counter {
        self.cache_lists.get_or_create(&KindLabels { kind }).clone()
    }

    /// Counts a reconcile error.
    pub fn reconcile_error(&self, controller: &'static str, error: &'static str) {
        self.reconcile_errors.get_or_create(&ErrorLabels { controller, error }).inc();
    }

    /// Records one reconcile's duration.
    pub fn reconciled(&self, controller: &'static str, started: std::time::Instant) {
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Sets the revocation list's capacity ratio and the per-namespace quota
    /// ratios: only namespaces at [`QUOTA_REPORT_FROM`] of their quota or
    /// more, the fullest [`QUOTA_REPORTED_NAMESPACES`] of them, so the label
    /// set stays small however many namespaces revoke; a namespace that
    /// drops below leaves the family.
    pub fn revocation_usage(&self, usage: &crate::state::revocations::Usage) {
        let ratio = |part: usize, whole: usize| if whole == 0 { 0.0 } else { part as f64 / whole as f64 };
        self.revocation_list_capacity_ratio.set(ratio(usage.live, usage.capacity));
        self.revocation_namespace_quota_ratio.clear();
        for (namespace, bytes) in usage
            .namespaces
            .iter()
            .filter(|(_, bytes)| ratio(*bytes, usage.quota) >= QUOTA_REPORT_FROM)
            .take(QUOTA_REPORTED_NAMESPACES)
        {
            self.revocation_namespace_quota_ratio
                .get_or_create(&NamespaceLabels { namespace: namespace.clone() })
                .set(ratio(*bytes, usage.quota));
        }
    }

    /// Reads the allocator's own accounting into the heap gauges.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn read_heap(&self) {
        // SAFETY: mallinfo2 only reads the allocator's statistics (it takes
        // each arena's lock while it walks that arena's free lists).
        let info = unsafe { libc::mallinfo2() };
        let bytes = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        // Chunks taken from the heaps, and blocks mapped on their own.
        self.heap.in_use.set(bytes(info.uordblks.saturating_add(info.hblkhd)));
        self.heap.free.set(bytes(info.fordblks));
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn read_heap(&self) {}

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.read_heap();
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Per-object samples at one scrape, or `None` when they are not exported
/// (too many objects, or the caches are not filled yet).
pub type ObjectSource = Box<dyn Fn() -> Option<ObjectSamples> + Send + Sync>;

/// What the per-object series show, read from the caches at a scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectSamples {
    /// One per CapabilityGrant.
    pub grants: Vec<GrantSample>,
    /// One per agent pod holding a live certificate.
    pub certificates: Vec<CertificateSample>,
}

/// One grant's series.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantSample {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `spec.agent`.
    pub agent: String,
    /// `status.phase`.
    pub phase: &'static str,
    /// `status.expiresAt` (unix seconds) while Active.
    pub expires_at: Option<i64>,
    /// `status.approvalDeadline` (unix seconds) while AwaitingApproval.
    pub approval_deadline: Option<i64>,
}

/// One agent pod's identity certificate.
#[derive(Clone, Debug, PartialEq)]
pub struct CertificateSample {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// Its AgentIdentity.
    pub agent: String,
    /// The certificate's notAfter (unix seconds).
    pub not_after: i64,
    /// When the operator rotates it (unix seconds): notAfter less the
    /// identity's `rotateBefore` (at most half the lifetime).
    pub rotate_at: i64,
}

/// Encodes the per-object series at each scrape from its [`ObjectSource`]:
/// nothing is kept between scrapes, so a series goes with its object.
#[derive(Default)]
struct ObjectCollector {
    source: OnceLock<ObjectSource>,
}

impl std::fmt::Debug for ObjectCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCollector").field("configured", &self.source.get().is_some()).finish()
    }
}

impl Collector for ObjectCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = self.source.get() else { return Ok(()) };
        let samples = source();
        let mut enabled = encoder.encode_descriptor(
            "object_metrics_enabled",
            "1 while per-object series are exported (per-object metrics on, and no more objects than --per-object-metrics-max)",
            None,
            MetricType::Gauge,
        )?;
        enabled.encode_gauge(&i64::from(samples.is_some()))?;
        let Some(samples) = samples else { return Ok(()) };
        let mut phase = encoder.encode_descriptor(
            "grant_phase",
            "1 for each CapabilityGrant, labelled with its current phase",
            None,
            MetricType::Gauge,
        )?;
        for g in &samples.grants {
            let labels =
                [("namespace", g.namespace.as_str()), ("grant", &g.name), ("agent", &g.agent), ("phase", g.phase)];
            phase.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
        let mut expiry = encoder.encode_descriptor(
            "grant_expiry_timestamp_seconds",
            "When an Active CapabilityGrant expires (unix seconds)",
            None,
            MetricType::Gauge,
        )?;
        for g in &samples.grants {
            if let Some(at) = g.expires_at {
                let labels = [("namespace", g.namespace.as_str()), ("grant", &g.name), ("agent", &g.agent)];
                expiry.encode_family(&labels)?.encode_gauge(&at)?;
            }
        }
        let mut deadline = encoder.encode_descriptor(
            "grant_approval_deadline_timestamp_seconds",
            "When a CapabilityGrant awaiting approval is denied unless approved (unix seconds)",
            None,
            MetricType::Gauge,
        )?;
        for g in &samples.grants {
            if let Some(at) = g.approval_deadline {
                let labels = [("namespace", g.namespace.as_str()), ("grant", &g.name), ("agent", &g.agent)];
                deadline.encode_family(&labels)?.encode_gauge(&at)?;
            }
        }
        let mut not_after = encoder.encode_descriptor(
            "pod_certificate_expiry_timestamp_seconds",
            "When an agent pod's identity certificate expires (unix seconds)",
            None,
            MetricType::Gauge,
        )?;
        for c in &samples.certificates {
            let labels = [("namespace", c.namespace.as_str()), ("pod", &c.pod), ("agent", &c.agent)];
            not_after.encode_family(&labels)?.encode_gauge(&c.not_after)?;
        }
        let mut rotation = encoder.encode_descriptor(
            "pod_certificate_rotation_timestamp_seconds",
            "When the operator rotates an agent pod's identity certificate (unix seconds); past it, rotation is late",
            None,
            MetricType::Gauge,
        )?;
        for c in &samples.certificates {
            let labels = [("namespace", c.namespace.as_str()), ("pod", &c.pod), ("agent", &c.agent)];
            rotation.encode_family(&labels)?.encode_gauge(&c.rotate_at)?;
        }
        Ok(())
    }
}

/// The [`ObjectSource`] of a running operator: its grant, pod, identity and
/// credential Secret caches, read at each scrape while they hold at most
/// `max_objects` grants and agent pods. It holds `shared` weakly (the
/// metrics are part of it).
pub fn cache_object_source(shared: &Arc<Shared>, secrets: Store<CredentialSecret>, max_objects: usize) -> ObjectSource {
    let shared: Weak<Shared> = Arc::downgrade(shared);
    Box::new(move || {
        let shared = shared.upgrade()?;
        if !shared.is_all_synced() {
            return None;
        }
        collect_objects(&shared, &secrets, max_objects)
    })
}

/// Reads the per-object samples from the caches; `None` above `max_objects`
/// grants and agent pods.
pub fn collect_objects(
    shared: &Shared,
    secrets: &Store<CredentialSecret>,
    max_objects: usize,
) -> Option<ObjectSamples> {
    let grants = shared.grants.state();
    let pods = shared.pods.state();
    if grants.len().saturating_add(pods.len()) > max_objects {
        return None;
    }
    let mut samples = ObjectSamples::default();
    for g in &grants {
        let approval_deadline = if g.phase == GrantPhase::AwaitingApproval {
            // Read from the status as JSON: the field is optional and
            // written by the grant controller with the approval timeout.
            let grant = g.grant();
            serde_json::to_value(&grant.status)
                .ok()
                .and_then(|s| s.get("approvalDeadline").and_then(|v| v.as_str()).map(str::to_string))
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_second())
        } else {
            None
        };
        samples.grants.push(GrantSample {
            namespace: g.namespace().unwrap_or_default(),
            name: g.name_any(),
            agent: g.agent.clone(),
            phase: g.phase.as_str(),
            expires_at: g.expires_at.filter(|_| g.is_active()),
            approval_deadline,
        });
    }
    let max_ttl = shared.config.max_credential_ttl.as_secs_i64();
    for pod in &pods {
        let (Some(agent), Some(secret_name)) = (pod.agent(), pod.credential_secret()) else { continue };
        let namespace = pod.namespace().unwrap_or_default();
        let Some(secret) = secrets.get(&kube::runtime::reflector::ObjectRef::new(secret_name).within(&namespace))
        else {
            continue;
        };
        let Some(cert) = secret.certificate() else { continue };
        let identity = shared.identities.get(&kube::runtime::reflector::ObjectRef::new(agent).within(&namespace));
        // The credentials controller's rule: rotate `rotateBefore` ahead of
        // notAfter, at most half the lifetime.
        let ttl = identity.as_ref().map_or(max_ttl, |i| i.spec.credential.ttl.as_secs_i64().min(max_ttl));
        let rotate_before =
            identity.as_ref().map_or(ttl / 2, |i| i.spec.credential.rotate_before.as_secs_i64().min(ttl / 2));
        samples.certificates.push(CertificateSample {
            namespace,
            pod: pod.name_any(),
            agent: agent.to_string(),
            not_after: cert.not_after,
            rotate_at: cert.not_after - rotate_before,
        });
    }
    samples.grants.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    samples.certificates.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    Some(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<i64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn revocation_usage_reports_the_capacity_and_only_the_fullest_namespaces_near_their_quota() {
        let metrics = Metrics::default();
        let mut namespaces: Vec<(String, usize)> = (0..30).map(|i| (format!("ns-{i:02}"), 1_000 - i * 30)).collect();
        namespaces.push(("small".into(), 10));
        let usage = crate::state::revocations::Usage { capacity: 8_000, live: 2_000, quota: 1_000, namespaces };
        metrics.revocation_usage(&usage);
        let text = metrics.render();
        assert!(text.contains("writ_revocation_list_capacity_ratio 0.25"), "{text}");
        let reported: Vec<&str> =
            text.lines().filter(|l| l.starts_with("writ_revocation_namespace_quota_ratio{")).collect();
        assert_eq!(reported.len(), QUOTA_REPORTED_NAMESPACES, "{text}");
        assert!(text.contains(r#"writ_revocation_namespace_quota_ratio{namespace="ns-00"} 1.0"#), "{text}");
        assert!(!text.contains(r#"namespace="small""#), "{text}");
        // Below half its quota, a namespace leaves the family.
        let usage = crate::state::revocations::Usage {
            capacity: 8_000,
            live: 400,
            quota: 1_000,
            namespaces: vec![("ns-00".into(), 400)],
        };
        metrics.revocation_usage(&usage);
        let text = metrics.render();
        assert!(!text.contains("writ_revocation_namespace_quota_ratio{"), "{text}");
        assert!(text.contains("writ_revocation_list_capacity_ratio 0.05"), "{text}");
    }

    #[test]
    fn per_object_series_follow_their_source() {
        let metrics = Metrics::default();
        assert!(!metrics.render().contains("writ_grant_phase"), "no source, no series");
        let samples = Arc::new(std::sync::Mutex::new(Some(ObjectSamples {
            grants: vec![
                GrantSample {
                    namespace: "ci".into(),
                    name: "deploy".into(),
                    agent: "bot".into(),
                    phase: "Active",
                    expires_at: Some(1_800_000_000),
                    approval_deadline: None,
                },
                GrantSample {
                    namespace: "ci".into(),
                    name: "cleanup".into(),
                    agent: "bot".into(),
                    phase: "AwaitingApproval",
                    expires_at: None,
                    approval_deadline: Some(1_800_000_600),
                },
            ],
            certificates: vec![CertificateSample {
                namespace: "ci".into(),
                pod: "bot-0".into(),
                agent: "bot".into(),
                not_after: 1_800_003_600,
                rotate_at: 1_800_002_400,
            }],
        })));
        let source = samples.clone();
        metrics.set_object_source(Box::new(move || source.lock().expect("lock").clone()));
        let text = metrics.render();
        for line in [
            "writ_object_metrics_enabled 1",
            r#"writ_grant_phase{namespace="ci",grant="deploy",agent="bot",phase="Active"} 1"#,
            r#"writ_grant_phase{namespace="ci",grant="cleanup",agent="bot",phase="AwaitingApproval"} 1"#,
            r#"writ_grant_expiry_timestamp_seconds{namespace="ci",grant="deploy",agent="bot"} 1800000000"#,
            r#"writ_grant_approval_deadline_timestamp_seconds{namespace="ci",grant="cleanup",agent="bot"} 1800000600"#,
            r#"writ_pod_certificate_expiry_timestamp_seconds{namespace="ci",pod="bot-0",agent="bot"} 1800003600"#,
            r#"writ_pod_certificate_rotation_timestamp_seconds{namespace="ci",pod="bot-0",agent="bot"} 1800002400"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains(r#"writ_grant_expiry_timestamp_seconds{namespace="ci",grant="cleanup""#), "{text}");
        // The object goes: so do its series.
        if let Some(s) = samples.lock().expect("lock").as_mut() {
            s.grants.remove(0);
            s.certificates.clear();
        }
        let text = metrics.render();
        assert!(!text.contains(r#"grant="deploy""#), "{text}");
        assert!(!text.contains("bot-0"), "{text}");
        // Above the object limit: no per-object series, and the gauge says so.
        *samples.lock().expect("lock") = None;
        let text = metrics.render();
        assert!(text.lines().any(|l| l == "writ_object_metrics_enabled 0"), "{text}");
        assert!(!text.contains("writ_grant_phase{"), "{text}");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_gauges_follow_what_is_allocated() {
        let metrics = Metrics::default();
        let before = sample(&metrics.render(), "writ_heap_in_use_bytes").expect("in use");
        let held: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 256 * 1024]).collect();
        let text = metrics.render();
        let during = sample(&text, "writ_heap_in_use_bytes").expect("in use");
        assert!(sample(&text, "writ_heap_free_bytes").is_some_and(|b| b >= 0), "free bytes exported:\n{text}");
        // The count is the whole process's: tests running meanwhile may free
        // some of theirs, hence 12 of the 16 MiB.
        assert!(during - before >= 12 * 1024 * 1024, "16 MiB more in use: {before} -> {during}");
        drop(held);
    }
}

//! Writ at scale on a real API server: N agent pods with credentials and N
//! active grants (N = 10,000 unless `WRIT_SCALE_N` says otherwise), measured
//! against a plain client on the same API server in the same run. Writes
//! `bench/RESULTS.md` (or `WRIT_SCALE_RESULTS`).
//!
//! The raw and backlog phases each start on a quiet control plane (see
//! `control_plane_quiet`), so neither pays for the work of the phase before.
//!
//! Run it with `make bench-scale` (starts the local control plane unless
//! KUBECONFIG points at a reachable cluster). It measures:
//!
//! 1. raw, on the empty cluster: N 1,500-byte Secrets created by a plain
//!    client (for reference: the ratios compare with raw creates at the
//!    backlog's state, see 2);
//! 2. credentials, two ways, N/2 pods each (created through the pod webhook),
//!    and the API writes the operator made per credential. Pipeline: pods
//!    created while the operator leads, in two halves; time from the first
//!    create to the last pod's credential Secret holding its certificate. It
//!    is compared with a plain client creating, between the two halves, as
//!    many pairs of a pod (without the agent label: no webhook) and a
//!    credential-shaped Secret (see below): each credential costs the API
//!    server a pod create too, so raw Secret creates alone are not its
//!    baseline. Backlog: pods created while the bench holds the
//!    operator's Lease (webhooks serve, controllers stopped), then the Lease is
//!    released (once the bench's own watch has read its initial list, which
//!    is not the operator's cost); time from the operator leading again to
//!    the last Secret: the operator's own issuing rate. It is compared with
//!    a plain client creating as many credential-shaped Secrets (the same
//!    data keys and sizes, labels and owner reference) at the same state,
//!    half just before the backlog and half just after, and timed as the
//!    backlog is, until a metadata watch has seen the last (the watch costs
//!    the API server the same on both sides): the API server's and etcd's
//!    cost per write grows with what they hold, so a rate measured on the
//!    empty cluster is not the same baseline. On the local control
//!    plane, also the ceiling the control plane's CPU sets on that ratio (API
//!    server + etcd CPU per raw Secret against per backlog credential);
//! 3. grants: N grants, one per pod (`spec.pod`), created → Active;
//! 4. memory: the operator's RSS idle, at N/2 and N credentials, with N
//!    grants (each read once the phase has settled: 6 s after its end); the
//!    slope per credential;
//! 5. revocation → enforcement: a grant is deleted and its token's
//!    introspection polled until `active: false` (R samples, one at a time);
//! 6. cold start: the operator killed and started again on that state; time
//!    to `/readyz` (admission needs only the identity and policy caches) and
//!    until every cache is filled (`writ_caches_synced`, when a leader's
//!    controllers start), the API writes it makes in the 15 s after (a restart
//!    must not re-issue anything), and its RSS then (the same state in a
//!    process that did not live through the bursts).

mod support;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount},
};
use kube::{
    api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams},
    runtime::watcher,
    Client, ResourceExt,
};
use support::*;
use writ::api::{CapabilityGrant, GrantPhase};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Writes that are not the operator's: leader-election renewals, and the
/// namespace controller cleaning up namespaces of earlier runs (deletes).
fn background(k: &str) -> bool {
    k.ends_with(" leases") || k.starts_with("DELETE ") || k.contains(" namespaces/")
}

/// Writes by everyone but the bench's own client (its creates and deletes),
/// background excluded.
fn operator_writes(delta: &[(String, f64)], own: &[(&str, f64)]) -> f64 {
    delta
        .iter()
        .filter(|(k, _)| !background(k))
        .map(|(k, v)| v - own.iter().filter(|(o, _)| o == k).map(|(_, n)| n).sum::<f64>())
        .sum()
}

fn breakdown(delta: &[(String, f64)], per: usize) -> String {
    delta
        .iter()
        .filter(|(k, _)| !background(k))
        .map(|(k, v)| format!("| `{k}` | {v:.0} | {:.3} |\n", v / per as f64))
        .collect()
}

struct Phase {
    elapsed: Duration,
    latencies: Vec<Duration>,
    writes: Vec<(String, f64)>,
}

/// A watch recording when each object is first seen done.
struct Watch {
    done: tokio::task::JoinHandle<HashMap<String, Instant>>,
    listed: tokio::sync::oneshot::Receiver<()>,
}

impl Watch {
    /// Waits until the watch has read its initial list: the list (thousands
    /// of objects at scale, read from etcd in pages) is the bench's cost, not
    /// part of what a phase times.
    async fn listed(&mut self) {
        tokio::time::timeout(Duration::from_secs(300), &mut self.listed)
            .await
            .expect("initial list in 5 min")
            .expect("watch running");
    }
}

/// Reads `stream` (a watch's events) and records when `key(obj)` first names
/// a done object; ends when `n` are done.
fn watch_done<K: Send + 'static>(
    mut stream: BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    n: usize,
    key: impl Fn(&K) -> Option<String> + Send + 'static,
) -> Watch {
    let (tx, listed) = tokio::sync::oneshot::channel();
    let done = tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut done = HashMap::new();
        while let Some(event) = stream.try_next().await.expect("watch") {
            let obj = match event {
                watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => obj,
                watcher::Event::InitDone => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                watcher::Event::Init | watcher::Event::Delete(_) => continue,
            };
            if let Some(k) = key(&obj) {
                done.entry(k).or_insert_with(Instant::now);
                if done.len() == n {
                    break;
                }
            }
        }
        done
    });
    Watch { done, listed }
}

/// A watch of `api`'s objects (with `K = PartialObjectMeta<_>`, of their
/// metadata only: what the bench reads of each credential Secret then costs
/// the API server a fraction of a whole Secret's encoding, which would
/// otherwise be charged to the operator's rate).
fn objects<K>(api: Api<K>, config: watcher::Config) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watcher(api, config).boxed()
}

async fn all_done(watch: Watch) -> HashMap<String, Instant> {
    tokio::time::timeout(Duration::from_secs(1800), watch.done).await.expect("all done in 30 min").expect("watch")
}

/// Creates objects `range` with `create(i)` at `concurrency`; returns each
/// one's key and when its create was sent.
async fn create_all<C, F>(range: std::ops::Range<usize>, concurrency: usize, create: C) -> Vec<(String, Instant)>
where
    C: Fn(usize) -> F,
    F: std::future::Future<Output = String>,
{
    futures::stream::iter(range)
        .map(|i| {
            let f = create(i);
            async move {
                let t = Instant::now();
                (f.await, t)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Creates objects `range` with `create(i)` at `concurrency`, while a watch
/// records when `key(obj)` first names each as done; returns when all are.
async fn timed<K, C, F>(
    watch: BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    (range, concurrency): (std::ops::Range<usize>, usize),
    client: &Client,
    key: impl Fn(&K) -> Option<String> + Send + 'static,
    create: C,
) -> Phase
where
    K: Send + 'static,
    C: Fn(usize) -> F,
    F: std::future::Future<Output = String>,
{
    let mut watch = watch_done(watch, range.len(), key);
    watch.listed().await;
    let before = api_writes(client).await;
    let start = Instant::now();
    let created = create_all(range, concurrency, create).await;
    let done = all_done(watch).await;
    let writes = write_delta(&before, &api_writes(client).await);
    let last = done.values().max().copied().expect("some done");
    let mut latencies: Vec<Duration> =
        created.iter().filter_map(|(k, t)| Some(done.get(k)?.saturating_duration_since(*t))).collect();
    latencies.sort();
    Phase { elapsed: last - start, latencies, writes }
}

/// Credential Secrets in `api` that hold a certificate (listed in pages).
async fn credentials_with_certificate(api: &Api<Secret>) -> usize {
    let mut params = ListParams::default().labels(writ::api::names::POD_LABEL).limit(500);
    let mut count = 0;
    loop {
        let page = api.list(&params).await.expect("list credential Secrets");
        count += page.items.iter().filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key("tls.crt"))).count();
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return count,
        }
    }
}

/// Creates Secrets `range` in `api` (named `<prefix>-<i>`, otherwise as
/// `template`), `concurrency` at a time, as a plain client would; returns how
/// long until a metadata watch of the namespace saw the last of them (the
/// backlog is timed so too, and pays for its watch the same) and the CPU the
/// local control plane spent meanwhile. With `pod`, each Secret follows a pod
/// of the same name created from it (what a cluster without Writ would be
/// asked for per agent pod: the pod, and a Secret holding its credential).
async fn raw_creates(
    api: &Api<Secret>,
    (prefix, range, concurrency): (&str, std::ops::Range<usize>, usize),
    operator: u32,
    (template, pod): (&Secret, Option<&Pod>),
) -> (Duration, Option<f64>) {
    let pods: Api<Pod> = Api::namespaced(api.clone().into_client(), api.namespace().expect("namespaced"));
    let meta: Api<PartialObjectMeta<Secret>> =
        Api::namespaced(api.clone().into_client(), api.namespace().expect("namespaced"));
    let own = format!("{prefix}-");
    let key = move |s: &PartialObjectMeta<Secret>| s.name_any().starts_with(&own).then(|| s.name_any());
    let mut watch = watch_done(objects(meta, watcher::Config::default()), range.len(), key);
    watch.listed().await;
    let cpu_before = control_plane_cpu(operator);
    let start = Instant::now();
    futures::stream::iter(range)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            let mut s = template.clone();
            s.metadata.name = Some(name.clone());
            let pod = pod.cloned().map(|mut p| {
                p.metadata.name = Some(name);
                p
            });
            let pods = &pods;
            async move {
                if let Some(p) = pod {
                    pods.create(&PostParams::default(), &p).await.expect("pod");
                }
                api.create(&PostParams::default(), &s).await.expect("secret")
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let last = all_done(watch).await.values().max().copied().expect("some done");
    (last - start, control_plane_cpu(operator).zip(cpu_before).map(|(after, before)| after - before))
}

/// A Secret shaped like one of the operator's credential Secrets in `creds`
/// (its type; its data keys, each with as many bytes, of filler rather than
/// key material; as many labels, of the same lengths, under keys the
/// operator does not select; an owner reference, to a ConfigMap created in
/// `namespace`) for a plain client to create there. No finalizer: nothing
/// would remove it.
async fn credential_shaped(creds: &Api<Secret>, namespace: &str) -> Secret {
    let params = ListParams::default().labels(writ::api::names::POD_LABEL).limit(1);
    let cred = creds.list(&params).await.expect("list credential Secrets").items.pop().expect("a credential Secret");
    let owners: Api<ConfigMap> = Api::namespaced(creds.clone().into_client(), namespace);
    let owner = owners.create(&PostParams::default(), &yaml("metadata: {name: owner}")).await.expect("owner");
    let mut shaped: Secret = yaml(&format!(
        "metadata: {{ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: owner, uid: {}, controller: true}}]}}",
        owner.uid().expect("uid")
    ));
    shaped.type_ = cred.type_;
    shaped.data =
        cred.data.map(|d| d.into_iter().map(|(k, v)| (k, k8s_openapi::ByteString(vec![b'A'; v.0.len()]))).collect());
    shaped.metadata.labels = Some(
        cred.metadata
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (format!("bench.writ.dev/{}", k.rsplit('/').next().unwrap_or(&k)), v))
            .collect(),
    );
    shaped
}

/// Sets the holder of the operator's leader Lease (`""`: free to take).
async fn set_lease_holder(client: &Client, namespace: &str, holder: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    let patch = serde_json::json!({
        "spec": { "holderIdentity": holder, "renewTime": now, "leaseDurationSeconds": 3600 }
    });
    leases
        .patch(writ::api::names::LEASE_NAME, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("patch the Lease");
}

/// The operator's RSS once things have settled (it hands free memory back
/// to the system every 5 s).
async fn settled_rss(op: &Operator) -> u64 {
    tokio::time::sleep(Duration::from_secs(6)).await;
    op.rss_kib()
}

/// `anonymous + file-backed` RSS, MiB, and of the anonymous part what the
/// allocator has handed out (the rest it holds free, or is not heap).
fn split(((anon, file), heap): ((u64, u64), Option<u64>)) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let heap = heap.map_or("n/a".into(), |h| format!("{:.1}", mib(h)));
    format!("{:.1} + {:.1} MiB (heap in use {heap})", mib(anon), mib(file))
}

/// The operator's `writ_heap_in_use_bytes`, KiB.
fn heap_in_use_kib(op: &Operator) -> Option<u64> {
    let text = op.metrics_text()?;
    text.lines().find_map(|l| l.strip_prefix("writ_heap_in_use_bytes ")?.parse::<u64>().ok()).map(|b| b / 1024)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let client = cluster_client("scale").await;
    let n = env_usize("WRIT_SCALE_N", 10_000);
    let concurrency = env_usize("WRIT_SCALE_CONCURRENCY", 16);
    let samples = env_usize("WRIT_SCALE_REVOCATIONS", 100).min(n);
    let pid = std::process::id();
    let (op_ns, ns, raw_ns) = (format!("writ-scale-{pid}"), format!("scale-{pid}"), format!("scale-raw-{pid}"));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut op = Operator::start(&op_ns, &[]).await;
    for name in [&ns, &raw_ns] {
        namespaces.create(&PostParams::default(), &yaml(&format!("metadata: {{name: {name}}}"))).await.expect("ns");
    }
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    sas.create(&PostParams::default(), &yaml("metadata: {name: worker}")).await.expect("sa");
    let identity: writ::api::AgentIdentity = yaml(
        "metadata: {name: worker}\nspec: {class: Agent, serviceAccountName: worker, owner: bench, ceiling: [{action: \"k8s:deployments.patch\", resource: \"k8s:staging/deployments/*\"}]}",
    );
    Api::namespaced(client.clone(), &ns).create(&PostParams::default(), &identity).await.expect("identity");
    let policy: writ::api::DelegationPolicy = yaml(
        "metadata: {name: bench}\nspec: {delegators: [{group: \"system:masters\"}], delegates: [{agent: worker}], capabilities: [{action: \"k8s:deployments.patch\", resource: \"k8s:staging/deployments/*\"}], maxTTL: 30m, maxDepth: 1}",
    );
    Api::namespaced(client.clone(), &ns).create(&PostParams::default(), &policy).await.expect("policy");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = op.rss_kib();
    let split_idle = (support::rss_split_kib(op.pid()), heap_in_use_kib(&op));
    eprintln!("[scale] N={n}, concurrency {concurrency}; operator idle RSS {rss_idle} KiB");

    // 1. Raw Secret creates on the empty cluster (for reference: the ratios
    // compare with the raw creates at the backlog's state, below).
    let raw_secrets: Api<Secret> = Api::namespaced(client.clone(), &raw_ns);
    let filler: Secret = yaml(&format!("stringData: {{tls.crt: {}}}", "A".repeat(1500)));
    let quiet_raw = control_plane_quiet(op.pid(), Duration::from_secs(30)).await;
    dump_metrics(&client, &op, "raw-before").await;
    let raw_before = api_writes(&client).await;
    let empty = raw_creates(&raw_secrets, ("raw", 0..n, concurrency), op.pid(), (&filler, None)).await;
    let raw_writes = write_delta(&raw_before, &api_writes(&client).await);
    dump_metrics(&client, &op, "raw-after").await;
    let empty_rate = n as f64 / empty.0.as_secs_f64();
    eprintln!("[scale] raw Secret creates, empty cluster: {empty_rate:.1}/s");

    // 2. Pods -> credentials: a. pipeline (first half), b. backlog (second half).
    let half = n / 2;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secrets_meta: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), &ns);
    let cred_secrets = watcher::Config::default().labels(writ::api::names::POD_LABEL);
    let issued = move |range: std::ops::Range<usize>| {
        // The operator creates a credential Secret whole, in one write; that
        // each holds its certificate is checked once both phases are over.
        move |s: &PartialObjectMeta<Secret>| {
            let pod = s.labels().get(writ::api::names::POD_LABEL)?;
            let i: usize = pod.strip_prefix("p-")?.parse().ok()?;
            range.contains(&i).then(|| pod.clone())
        }
    };
    let create_pod = |i: usize| {
        let pods = pods.clone();
        async move {
            let pod: Pod = yaml(&format!(
                "metadata: {{name: p-{i}, labels: {{writ.dev/agent: worker}}}}\nspec: {{serviceAccountName: worker, automountServiceAccountToken: false, containers: [{{name: a, image: x}}]}}"
            ));
            pods.create(&PostParams::default(), &pod).await.expect("pod admitted");
            format!("p-{i}")
        }
    };
    // a. Pipeline, in two halves. Between them, at that state, a plain
    // client creates what a cluster without Writ would be asked for per agent
    // pod: the pod (no agent label, so no webhook) and a credential-shaped
    // Secret, as many pairs as each half has pods.
    let quarter = half / 2;
    let raw_sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &raw_ns);
    raw_sas.create(&PostParams::default(), &yaml("metadata: {name: worker}")).await.expect("sa");
    let pipeline = |range: std::ops::Range<usize>| {
        timed(
            objects(secrets_meta.clone(), cred_secrets.clone()),
            (range.clone(), concurrency),
            &client,
            issued(range),
            create_pod,
        )
    };
    control_plane_quiet(op.pid(), Duration::from_secs(30)).await;
    let cpu_a = CpuSplit::now(op.pid());
    let pipe_a = pipeline(0..quarter).await;
    let cpu_pipe_a = CpuSplit::now(op.pid()).since(&cpu_a);
    let template = credential_shaped(&secrets, &raw_ns).await;
    let raw_pod: Pod = yaml(
        "metadata: {labels: {bench.writ.dev/agent: worker}}\nspec: {serviceAccountName: worker, automountServiceAccountToken: false, containers: [{name: a, image: x}]}",
    );
    control_plane_quiet(op.pid(), Duration::from_secs(30)).await;
    let cpu_before_pairs = CpuSplit::now(op.pid());
    let pairs =
        raw_creates(&raw_secrets, ("pair", 0..quarter, concurrency), op.pid(), (&template, Some(&raw_pod))).await;
    let cpu_pairs = CpuSplit::now(op.pid()).since(&cpu_before_pairs);
    let pairs_rate = quarter as f64 / pairs.0.as_secs_f64();
    eprintln!("[scale] raw pod + Secret pairs at the pipeline's state: {pairs_rate:.1}/s");
    control_plane_quiet(op.pid(), Duration::from_secs(30)).await;
    let cpu_b = CpuSplit::now(op.pid());
    let pipe_b = pipeline(quarter..half).await;
    let cpu_pipe_b = CpuSplit::now(op.pid()).since(&cpu_b);
    let cpu_pipe = cpu_pipe_a.plus(&cpu_pipe_b);
    let creds = Phase {
        elapsed: pipe_a.elapsed + pipe_b.elapsed,
        latencies: {
            let mut all = [pipe_a.latencies, pipe_b.latencies].concat();
            all.sort();
            all
        },
        writes: sum_writes(&pipe_a.writes, &pipe_b.writes),
    };
    let pipe_rate = half as f64 / creds.elapsed.as_secs_f64();
    let rss_half = settled_rss(&op).await;
    eprintln!("[scale] credentials, pipeline: {pipe_rate:.1}/s, RSS {rss_half} KiB");
    eprintln!("[scale] CPU per credential, pipeline: {}", cpu_pipe.per_item(half));
    eprintln!("[scale] CPU per pair: {}", cpu_pairs.per_item(quarter));

    set_lease_holder(&client, &op_ns, "writ-bench-hold").await;
    op.wait_following().await;
    let backlog_before = api_writes(&client).await;
    let admit_start = Instant::now();
    create_all(half..n, concurrency, create_pod).await;
    let admit_rate = (n - half) as f64 / admit_start.elapsed().as_secs_f64();
    let mut backlog = watch_done(objects(secrets_meta, cred_secrets), n - half, issued(half..n));
    backlog.listed().await;
    // Raw creates at the backlog's state, in two halves around it: Secrets
    // with a credential's keys, sizes, labels and owner reference.
    let (backlog_n, bracket) = (n - half, (n - half) / 2);
    control_plane_quiet(op.pid(), Duration::from_secs(30)).await;
    let raw_a_before = api_writes(&client).await;
    let raw_a = raw_creates(&raw_secrets, ("same-a", 0..bracket, concurrency), op.pid(), (&template, None)).await;
    let raw_a_writes = write_delta(&raw_a_before, &api_writes(&client).await);
    let quiet_backlog = control_plane_quiet(op.pid(), Duration::from_secs(30)).await;
    eprintln!(
        "[scale] control plane quiet after {:.1} s before the raw phase, {:.1} s before the backlog",
        quiet_raw.as_secs_f64(),
        quiet_backlog.as_secs_f64()
    );
    dump_metrics(&client, &op, "backlog-before").await;
    let cp_backlog_before = control_plane_cpu(op.pid());
    set_lease_holder(&client, &op_ns, "").await;
    op.wait_leading().await;
    let leading = Instant::now();
    let backlog_done = all_done(backlog).await;
    let backlog_elapsed = backlog_done.values().max().copied().expect("some done").saturating_duration_since(leading);
    let backlog_first = backlog_done.values().min().copied().expect("some done").saturating_duration_since(leading);
    let cp_backlog = control_plane_cpu(op.pid()).zip(cp_backlog_before).map(|(after, before)| after - before);
    // Less the plain client's creates just before the backlog.
    let raw_a_less: Vec<(String, f64)> = raw_a_writes.into_iter().map(|(k, v)| (k, -v)).collect();
    let backlog_writes = sum_writes(&write_delta(&backlog_before, &api_writes(&client).await), &raw_a_less);
    dump_metrics(&client, &op, "backlog-after").await;
    let backlog_rate = backlog_n as f64 / backlog_elapsed.as_secs_f64();
    control_plane_quiet(op.pid(), Duration::from_secs(30)).await;
    let raw_b =
        raw_creates(&raw_secrets, ("same-b", bracket..backlog_n, concurrency), op.pid(), (&template, None)).await;
    let raw_rate = backlog_n as f64 / (raw_a.0 + raw_b.0).as_secs_f64();
    let cp_raw = raw_a.1.zip(raw_b.1).map(|(a, b)| a + b);
    eprintln!("[scale] raw Secret creates at the backlog's state: {raw_rate:.1}/s (empty cluster: {empty_rate:.1}/s)");
    let rss_creds = settled_rss(&op).await;
    let cred_op_writes = (operator_writes(&creds.writes, &[("POST pods", half as f64)])
        + operator_writes(&backlog_writes, &[("POST pods", (n - half) as f64)]))
        / n as f64;
    eprintln!(
        "[scale] credentials, backlog: pods admitted {admit_rate:.1}/s; issued {backlog_rate:.1}/s once leading (first after {:.0} ms, last after {:.0} ms); {cred_op_writes:.2} operator writes each, RSS {rss_creds} KiB",
        ms(backlog_first),
        ms(backlog_elapsed)
    );

    let with_certificate = credentials_with_certificate(&secrets).await;
    assert_eq!(with_certificate, n, "every pod's credential Secret holds a certificate");

    // 3. Grants, one per pod -> Active.
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), &ns);
    let active = timed(
        objects(grants.clone(), watcher::Config::default()),
        (0..n, concurrency),
        &client,
        |g: &CapabilityGrant| {
            (g.status.as_ref().is_some_and(|s| s.phase == GrantPhase::Active && !s.tokens.is_empty()))
                .then(|| g.name_any())
        },
        |i| {
            let grants = grants.clone();
            async move {
                let g: CapabilityGrant = yaml(&format!(
                    "metadata: {{name: g-{i}}}\nspec: {{agent: worker, pod: p-{i}, task: {{id: S-{i}}}, capabilities: [{{action: \"k8s:deployments.patch\", resource: \"k8s:staging/deployments/web\"}}], audiences: [deploy-api], ttl: 30m}}"
                ));
                grants.create(&PostParams::default(), &g).await.expect("grant admitted");
                format!("g-{i}")
            }
        },
    )
    .await;
    let rss_grants = settled_rss(&op).await;
    let split_grants = (support::rss_split_kib(op.pid()), heap_in_use_kib(&op));
    let peak_rss = support::peak_rss_kib(op.pid());
    let grant_rate = n as f64 / active.elapsed.as_secs_f64();
    let grant_op_writes = operator_writes(&active.writes, &[("POST capabilitygrants", n as f64)]) / n as f64;
    eprintln!(
        "[scale] grants: {grant_rate:.1}/s to Active, {grant_op_writes:.2} operator writes each, RSS {rss_grants} KiB (peak so far {peak_rss} KiB)"
    );

    // 4. Revocation -> introspection says inactive, asked by the tokens'
    // audience (the ServiceAccount `deploy-api` of the grants' namespace).
    let caller = {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        sas.create(&PostParams::default(), &yaml("metadata: {name: deploy-api}"))
            .await
            .expect("the audience's ServiceAccount");
        let request: TokenRequest = yaml("spec: {audiences: []}");
        let issued = sas.create_token_request("deploy-api", &PostParams::default(), &request).await.expect("a token");
        issued.status.and_then(|s| s.token).expect("token")
    };
    let mut revocations = Vec::new();
    for i in 0..samples {
        let pod = pods.get(&format!("p-{i}")).await.expect("pod");
        let secret_name = pod.annotations().get(writ::api::CREDENTIAL_SECRET_ANNOTATION).cloned().expect("annotated");
        let s = secrets.get(&secret_name).await;
        let token = s
            .ok()
            .and_then(|s| s.data?.get(&format!("grant.g-{i}.jwt")).map(|v| String::from_utf8_lossy(&v.0).into_owned()))
            .expect("token in the pod's Secret");
        assert!(op.introspect_active(&token, &caller), "token of g-{i} active before revocation");
        let t = Instant::now();
        grants.delete(&format!("g-{i}"), &DeleteParams::default()).await.expect("delete grant");
        while op.introspect_active(&token, &caller) {
            assert!(t.elapsed() < Duration::from_secs(30), "g-{i} still active 30 s after deletion");
        }
        revocations.push(t.elapsed());
    }
    revocations.sort();
    let rev_p50 = percentile(&revocations, 0.5);
    let rev_p99 = percentile(&revocations, 0.99);
    eprintln!("[scale] revocation -> inactive: p50 {:.0} ms, p99 {:.0} ms", ms(rev_p50), ms(rev_p99));

    // 5. Cold start on that state.
    let restart_before = api_writes(&client).await;
    let restarted = op.restart().await;
    let cold = restarted.elapsed();
    op.wait_caches_synced().await;
    let filled = restarted.elapsed();
    op.wait_leading().await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let restart_writes = write_delta(&restart_before, &api_writes(&client).await);
    // The same state held by a process that did not live through the bursts.
    let rss_restarted = op.rss_kib();
    let split_restarted = (support::rss_split_kib(op.pid()), heap_in_use_kib(&op));
    let restart_total = operator_writes(&restart_writes, &[]);
    let restart_secrets: f64 =
        restart_writes.iter().filter(|(k, _)| k.ends_with(" secrets")).map(|(_, v)| v).sum::<f64>() + 0.0;
    eprintln!(
        "[scale] cold start to /readyz: {:.2} s, every cache filled after {:.2} s; writes in the 15 s after: {restart_total:.0}; RSS then {rss_restarted} KiB",
        cold.as_secs_f64(),
        filled.as_secs_f64()
    );

    // The report.
    let slope_cred = (rss_creds.saturating_sub(rss_half)) as f64 / (n - half) as f64;
    let slope_all = (rss_grants.saturating_sub(rss_idle)) as f64 / n as f64;
    let (ratio, pipe_ratio) = (backlog_rate / raw_rate, pipe_rate / pairs_rate);
    let backlog_first_ms = ms(backlog_first);
    // What the API server and etcd spend on one credential against one raw
    // Secret bounds the ratio on two shared cores even if the operator cost
    // nothing (both phases are CPU-bound: the three processes share two cores).
    let ceiling = match (cp_raw, cp_backlog) {
        (Some(raw_cpu), Some(cred_cpu)) if cred_cpu > 0.0 => {
            let (per_raw, per_cred) = (raw_cpu / backlog_n as f64, cred_cpu / backlog_n as f64);
            format!("{:.2} ms / {:.2} ms = **{:.2}×**", per_raw * 1e3, per_cred * 1e3, per_raw / per_cred)
        }
        _ => "n/a (not the local control plane)".to_string(),
    };
    // The same bound for the pipeline: what the API server and etcd spend
    // per pod + Secret pair against per pipelined credential (its pod through
    // the webhook, the operator's Secret, both delivered to its watches).
    let pipe_ceiling = match (cpu_pairs.control_plane, cpu_pipe.control_plane) {
        (Some(pair_cpu), Some(cred_cpu)) if cred_cpu > 0.0 => {
            let (per_pair, per_cred) = (pair_cpu / quarter as f64, cred_cpu / half as f64);
            format!("{:.2} ms / {:.2} ms = **{:.2}×**", per_pair * 1e3, per_cred * 1e3, per_pair / per_cred)
        }
        _ => "n/a (not the local control plane)".to_string(),
    };
    let raw_per = operator_writes(&raw_writes, &[]) / n as f64;
    let machine = machine();
    let date = std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().expect("date");
    let date = String::from_utf8_lossy(&date.stdout).trim().to_string();
    let version = client.apiserver_version().await.map(|v| v.git_version).unwrap_or_default();
    let (quiet_raw_s, quiet_backlog_s) = (quiet_raw.as_secs_f64(), quiet_backlog.as_secs_f64());
    let binary = match std::env::var_os("WRIT_BENCH_BIN") {
        Some(path) => format!("`{}` (`WRIT_BENCH_BIN`)", path.to_string_lossy()),
        None => "this build's `writ` (release, glibc)".into(),
    };
    let report = format!(
        "# Writ scale benchmark\n\n\
         - Date: {date}\n- Machine: {machine}\n- API server: kube-apiserver {version} with etcd, on loopback (`hack/control-plane.sh`)\n- Operator: {binary}\n\
         - Command: `make bench-scale` (= `hack/bench-scale.sh`; N via `WRIT_SCALE_N`, here **N = {n}**, concurrency {concurrency})\n\
         - One run; ratios are the pass criteria (both sides measured in this run on this machine). The targets are issue 8's, except the pipelined row's: that one is ours, stricter than the issue (which compares credentials with raw Secret creates, as the backlog row does), and bounded by the pod webhook's cost in the API server (see docs/design.md, \"Throughput targets\"). The raw and backlog phases each start once the control plane is quiet (API server + etcd under 0.1 core over a second; waited {quiet_raw_s:.1} s and {quiet_backlog_s:.1} s).\n\n\
         ## Results\n\n\
         | What | Measured | Target | |\n|---|---|---|---|\n\
         | Credentials/s issued by the operator (backlog of {backlog_n} agent pods, from taking the Lease to the last Secret with its certificate; the first came after {backlog_first_ms:.0} ms) vs raw Secret creates/s at the same state (a plain client, {backlog_n} Secrets with a credential's data keys and sizes, labels and owner reference: half just before the backlog, half just after; each side timed until a metadata watch saw its last Secret) | {backlog_rate:.1} / {raw_rate:.1} = **{ratio:.2}×** | ≥ 0.8× | {} |\n\
         | Ceiling the control plane sets on that ratio: API server + etcd CPU per raw Secret vs per backlog credential (the operator's own CPU taken as nil) | {ceiling} | | |\n\
         | For reference, raw Secret creates on the empty cluster (the first phase: {n} Secrets of 1,500 bytes and a name) | {empty_rate:.1}/s (the backlog: {:.2}× that); API server + etcd CPU {} per Secret | | |\n\
         | Credentials/s while pods are being created ({half} pods through the pod webhook, in two halves; each first create → last Secret) vs pods + Secrets/s by a plain client at the same state ({quarter} pairs between the halves: a pod without the agent label, then a credential-shaped Secret; until a metadata watch saw the last Secret) | {pipe_rate:.1} / {pairs_rate:.1} = **{pipe_ratio:.2}×** ({:.2}× raw Secret creates) | ≥ 0.8× (ours, beyond the issue) | {} |\n\
         | Ceiling the control plane sets on that ratio: API server + etcd CPU per pair vs per pipelined credential (the operator's own CPU taken as nil) | {pipe_ceiling} | | |\n\
         | CPU per credential in the pipeline / per pair (each process's `/proc` counters over the timed spans) | {} / {} | | |\n\
         | Agent pods admitted/s through Writ's pod webhook (the second {backlog_n}, controllers stopped) | {admit_rate:.1}/s ({:.2}× raw Secret creates) | | |\n\
         | Operator API writes per credential | **{cred_op_writes:.2}** (plain client: {raw_per:.2} per Secret) | ≤ 1.2 | {} |\n\
         | Operator RSS with {n} credentials + {n} grants | **{:.1} MiB** (idle {:.1} MiB; the most it had resident so far, `VmHWM`: {:.1} MiB) | ≤ 60 MiB | {} |\n\
         | Operator RSS with the same state, restarted (15 s after it leads; {} grants left after the revocations) | {:.1} MiB | | |\n\
         | Of that RSS, anonymous (heap, stacks) + file-backed (the mapped binary and libraries), and of the anonymous part the heap the allocator has handed out (`writ_heap_in_use_bytes`; the rest it holds free, or is stacks): idle / at {n} + {n} / restarted | {} / {} / {} | | |\n\
         | RSS slope per credential (from N/2 to N credentials) | **{slope_cred:.2} KiB** | ≤ 5 KB | {} |\n\
         | RSS per object (credential + grant + token), idle → all | {slope_all:.2} KiB | | |\n\
         | Cold start to serving (`/readyz`: webhooks and trust endpoints answer) with that state | **{:.2} s** | ≤ 5 s | {} |\n\
         | Cold start until every cache is filled (the grant, pod and credential Secret caches too; a leader's controllers start then) | {:.2} s | | |\n\
         | Secret writes in the 15 s after the restart (nothing re-issued) | {restart_secrets:.0} (all writes: {restart_total:.0}, see below) | 0 | {} |\n\
         | Revocation → introspection `active: false`, p50 / p99 ({samples} samples) | {:.0} ms / **{:.0} ms** | p99 ≤ 1 s | {} |\n\
         | Grants created → Active (one token each) | {grant_rate:.1}/s ({:.2}× raw Secret creates), p50 {:.0} ms, p99 {:.0} ms; {grant_op_writes:.2} operator writes per grant | | |\n\
         | Credential latency, pod create → Secret | p50 {:.0} ms, p99 {:.0} ms | | |\n\n\
         ## API writes during the credential phases ({n} pods)\n\n| Request | Count | Per credential |\n|---|---|---|\n{}\n\
         ## API writes during the grant phase ({n} grants)\n\n| Request | Count | Per grant |\n|---|---|---|\n{}\n\
         ## API writes after the cold start\n\n| Request | Count | |\n|---|---|---|\n{}",
        verdict(ratio >= 0.8),
        backlog_rate / empty_rate,
        empty.1.map_or("n/a".into(), |cpu| format!("{:.2} ms", cpu * 1e3 / n as f64)),
        pipe_rate / raw_rate,
        verdict(pipe_ratio >= 0.8),
        cpu_pipe.per_item(half),
        cpu_pairs.per_item(quarter),
        admit_rate / raw_rate,
        verdict(cred_op_writes <= 1.2),
        rss_grants as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        verdict(rss_grants as f64 / 1024.0 <= 60.0),
        n - samples,
        rss_restarted as f64 / 1024.0,
        split(split_idle),
        split(split_grants),
        split(split_restarted),
        verdict(slope_cred * 1024.0 <= 5000.0),
        cold.as_secs_f64(),
        verdict(cold <= Duration::from_secs(5)),
        filled.as_secs_f64(),
        verdict(restart_secrets == 0.0),
        ms(rev_p50),
        ms(rev_p99),
        verdict(rev_p99 <= Duration::from_secs(1)),
        grant_rate / raw_rate,
        ms(percentile(&active.latencies, 0.5)),
        ms(percentile(&active.latencies, 0.99)),
        ms(percentile(&creds.latencies, 0.5)),
        ms(percentile(&creds.latencies, 0.99)),
        breakdown(&sum_writes(&creds.writes, &backlog_writes), n),
        breakdown(&active.writes, n),
        breakdown(&restart_writes, 1),
    );
    let out = std::env::var("WRIT_SCALE_RESULTS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/bench/RESULTS.md").into());
    std::fs::write(&out, &report).expect("write results");
    println!("{report}");
    eprintln!("[scale] written to {out}");

    // Clean up while the operator still runs (finalizers need it), unless
    // the state is wanted for a closer look (e.g. a heap profile of an
    // operator started on it).
    if std::env::var_os("WRIT_SCALE_KEEP").is_some() {
        eprintln!("[scale] WRIT_SCALE_KEEP: namespaces {ns}, {raw_ns} and {op_ns} kept");
        return;
    }
    // The operator's namespace goes last: its credential Secrets carry Writ's
    // finalizer, which only a leader (whose Lease lives there) removes, once
    // it has revoked what they hold. Deleted together, the scale namespace
    // stayed Terminating with every Secret in it. Emptying the namespace takes
    // minutes at 10k (the pods' grace period, then the controller-manager's
    // rate-limited deletes; the operator revoked about 73 credentials a second
    // in a 2,000-pod run), hence the long wait.
    for name in [&ns, &raw_ns] {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
    let (gone, cap) = (Instant::now(), Duration::from_secs(900));
    while namespaces.get_opt(&ns).await.ok().flatten().is_some() && gone.elapsed() < cap {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let outcome = match gone.elapsed() {
        t if t >= cap => format!("still there {} s after its deletion (the cap)", cap.as_secs()),
        t => format!("gone {:.0} s after its deletion", t.as_secs_f64()),
    };
    eprintln!("[scale] namespace {ns} {outcome}");
    // What the teardown revoked, and whether the list had room for it: the
    // report gains a section on it (not a target).
    let list = writ::state::revocations::read_persisted(&client, &op_ns).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &op_ns);
    let mut parts = Vec::new();
    for part in 0..writ::state::revocations::PARTS {
        let name = writ::state::revocations::part_name(part);
        if let Ok(Some(cm)) = cms.get_opt(&name).await {
            parts.push(cm.data.and_then(|d| d.get(writ::api::names::REVOCATIONS_KEY).map(String::len)).unwrap_or(0));
        }
    }
    let log = std::fs::read_to_string(std::env::temp_dir().join(format!("writ-bench-{op_ns}.log"))).unwrap_or_default();
    let full = log.matches("the revocation list is full").count();
    let section = format!(
        "\n## Teardown (not a target)\n\n\
         Deleting namespace {ns} (its agent pods, grants and credential Secrets): {outcome}.\n\
         Revocation list afterwards: {} tokens and {} certificates in {} of {} ConfigMaps, \
         {} bytes (largest part {} bytes, of at most {}); \
         operator log lines saying the list was full: {full}.\n",
        list.as_ref().map_or(0, |l| l.tokens.len()),
        list.as_ref().map_or(0, |l| l.certificates.len()),
        parts.len(),
        writ::state::revocations::PARTS,
        parts.iter().sum::<usize>(),
        parts.iter().max().copied().unwrap_or(0),
        writ::state::revocations::MAX_PART_BYTES,
    );
    eprint!("{section}");
    std::fs::write(&out, format!("{report}{section}")).expect("write results");
    let _ = namespaces.delete(&op_ns, &DeleteParams::default()).await;
}

/// Two write-count deltas added up.
fn sum_writes(a: &[(String, f64)], b: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut all: Vec<(String, f64)> = a.to_vec();
    for (k, v) in b {
        match all.iter_mut().find(|(o, _)| o == k) {
            Some((_, n)) => *n += v,
            None => all.push((k.clone(), *v)),
        }
    }
    all
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {:.0} GiB RAM", mem_kib as f64 / 1048576.0)
}

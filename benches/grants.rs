//! Grants from create to Active on a real API server, against the raw rate at
//! which a plain client creates objects on the same server, in one run.
//!
//! Needs a cluster: `make bench` runs it through `hack/bench.sh`, which uses
//! `KUBECONFIG` if it is reachable and otherwise starts the local control
//! plane. It starts the real `writ run` (release build) in its own namespace,
//! creates an agent with a running pod (so activation includes minting the
//! pod's token), then:
//!
//! 1. raw, before the operator starts: N ConfigMaps created by the same
//!    client at the same concurrency (the baseline); then, for information,
//!    N CapabilityGrants created and their status written (as the grant
//!    controller writes it) in a namespace the webhooks skip: a grant's own
//!    API work without Writ, which bounds what Writ can reach on this server;
//! 2. writ: N CapabilityGrants created (through the admission webhooks), each
//!    timed until a watch sees `status.phase: Active`.
//!
//! Reports grants/s (first create to last Active) over raw creates/s, and the
//! p50/p99 time from create to Active. Target in the issue: ratio >= 0.5.

mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    runtime::{watcher, WatchStreamExt},
    ResourceExt,
};
use support::*;
use writ::api::{CapabilityGrant, GrantPhase, TokenRecord};
use writ::controller::grant::desired_status;

const N: usize = 200;
const CONCURRENCY: usize = 8;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let client = cluster_client("grants").await;
    let pid = std::process::id();
    let op_ns = format!("writ-bench-{pid}");
    let ns = format!("bench-{pid}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&PostParams::default(), &yaml(&format!("metadata: {{name: {ns}}}"))).await.expect("namespace");

    // 1. Raw rates, before the operator runs: ConfigMap creates (the
    // baseline), and the API work a grant itself needs without Writ (its
    // create and one status write, each as a plain client makes it), in a
    // namespace the webhooks skip.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let raw = timed(|i| {
        let cms = cms.clone();
        async move {
            let cm: ConfigMap = yaml(&format!("metadata: {{name: raw-{i}}}\ndata: {{k: v}}"));
            cms.create(&PostParams::default(), &cm).await.expect("configmap");
        }
    })
    .await;
    let bare_ns = format!("bench-{pid}-nowebhook");
    let labels = "labels: {writ.dev/webhooks: disabled}";
    namespaces
        .create(&PostParams::default(), &yaml(&format!("metadata: {{name: {bare_ns}, {labels}}}")))
        .await
        .expect("ns");
    let bare: Api<CapabilityGrant> = Api::namespaced(client.clone(), &bare_ns);
    let bare_creates = timed(|i| {
        let bare = bare.clone();
        async move {
            bare.create(&PostParams::default(), &grant(i)).await.expect("grant (no webhook)");
        }
    })
    .await;
    let bare_status = timed(|i| {
        let bare = bare.clone();
        async move {
            // The status the grant controller writes on activation, written the same way.
            let g = grant(i);
            let token =
                TokenRecord { pod: "bot-0".into(), jti: format!("{i:032x}"), expires_at: Time(Timestamp::now()) };
            let now = writ::pki::now_unix();
            let status = desired_status(
                &g,
                &Default::default(),
                GrantPhase::Active,
                "active",
                Some((now, now + 1200)),
                vec![token],
                now,
            );
            let patch =
                serde_json::json!({"apiVersion": "writ.dev/v1alpha1", "kind": "CapabilityGrant", "status": status});
            bare.patch_status(&g.name_any(), &PatchParams::apply("writ").force(), &Patch::Apply(patch))
                .await
                .expect("status");
        }
    })
    .await;
    // No finalizers there (no admission, no operator yet): gone at once.
    let _ = namespaces.delete(&bare_ns, &DeleteParams::default()).await;

    let op = Operator::start(&op_ns, &["--lease-duration", "6s"]).await;
    // The scenario: an agent with one running pod, and a policy for the bench user.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    sas.create(&PostParams::default(), &yaml("metadata: {name: release-bot}")).await.expect("sa");
    let identity: writ::api::AgentIdentity = yaml(
        "metadata: {name: release-bot}\nspec: {class: Agent, serviceAccountName: release-bot, owner: bench, ceiling: [{action: \"k8s:deployments.patch\", resource: \"k8s:staging/deployments/*\"}]}",
    );
    Api::namespaced(client.clone(), &ns).create(&PostParams::default(), &identity).await.expect("identity");
    let policy: writ::api::DelegationPolicy = yaml(
        "metadata: {name: bench}\nspec: {delegators: [{group: \"system:masters\"}, {group: release-managers}], delegates: [{agent: release-bot}], capabilities: [{action: \"k8s:deployments.patch\", resource: \"k8s:staging/deployments/*\"}], maxTTL: 30m, maxDepth: 1}",
    );
    Api::namespaced(client.clone(), &ns).create(&PostParams::default(), &policy).await.expect("policy");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = yaml(
        "metadata: {name: bot-0, labels: {writ.dev/agent: release-bot}}\nspec: {serviceAccountName: release-bot, automountServiceAccountToken: false, containers: [{name: a, image: x}]}",
    );
    pods.create(&PostParams::default(), &pod).await.expect("pod (is the webhook registered?)");
    pods.patch_status(
        "bot-0",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("play the kubelet");
    tokio::time::sleep(Duration::from_secs(2)).await; // the operator's caches see the identity and policy

    // 2. Grants, create -> Active.
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), &ns);
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let active: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let (grants, active) = (grants.clone(), active.clone());
        tokio::spawn(async move {
            let mut stream = watcher(grants, watcher::Config::default()).applied_objects().boxed();
            while let Some(g) = stream.try_next().await.expect("watch") {
                if g.status.as_ref().map(|s| s.phase) == Some(GrantPhase::Active) {
                    let mut a = active.lock().expect("lock");
                    a.entry(g.name_any()).or_insert_with(Instant::now);
                    if a.len() == N {
                        return;
                    }
                }
            }
        })
    };
    let writes_before = api_writes(&client).await;
    let procs = processes(op.pid());
    let cpu_before: Vec<Option<f64>> = procs.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let grant_start = Instant::now();
    futures::stream::iter(0..N)
        .map(|i| {
            let (grants, created) = (grants.clone(), created.clone());
            async move {
                let g = grant(i);
                let t = Instant::now();
                grants.create(&PostParams::default(), &g).await.expect("grant admitted");
                created.lock().expect("lock").insert(format!("g-{i}"), t);
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let creates_done = grant_start.elapsed();
    tokio::time::timeout(Duration::from_secs(300), watch).await.expect("all grants Active in 5 min").expect("watch");
    let cpu: Vec<Option<f64>> =
        procs.iter().zip(&cpu_before).map(|((_, pid), b)| Some(cpu_seconds(*pid)? - (*b)?)).collect();
    let writes = write_delta(&writes_before, &api_writes(&client).await);
    let (created, active) = (created.lock().expect("lock").clone(), active.lock().expect("lock").clone());
    let last = active.values().max().copied().expect("some Active");
    let grants_elapsed = last - grant_start;
    let mut latencies: Vec<Duration> =
        created.iter().map(|(name, t)| active[name].saturating_duration_since(*t)).collect();
    latencies.sort();

    let rate = |d: Duration| N as f64 / d.as_secs_f64();
    let (raw_rate, grant_rate) = (rate(raw), rate(grants_elapsed));
    let ratio = grant_rate / raw_rate;
    println!("grants bench: {N} objects each, concurrency {CONCURRENCY}, one client, real API server");
    println!("raw ConfigMap creates            {raw_rate:>8.1} /s  ({:.2} s)", raw.as_secs_f64());
    let (bare_rate, status_rate, created_rate) = (rate(bare_creates), rate(bare_status), rate(creates_done));
    println!("raw CapabilityGrant creates (no webhook, no operator) {bare_rate:>8.1} /s");
    println!("raw CapabilityGrant status writes (server-side apply)  {status_rate:>8.1} /s");
    println!("grants created -> Active (token) {grant_rate:>8.1} /s  ({:.2} s)", grants_elapsed.as_secs_f64());
    println!("  (the {N} creates themselves returned after {:.2} s: {created_rate:.1} /s)", creates_done.as_secs_f64());
    for ((name, _), cpu) in procs.iter().zip(&cpu) {
        if let Some(cpu) = cpu {
            println!(
                "  CPU during the grant phase: {name:<15} {cpu:>6.2} s ({:.0} % of one core)",
                100.0 * cpu / grants_elapsed.as_secs_f64()
            );
        }
    }
    println!(
        "time to Active: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().expect("latencies").as_secs_f64() * 1e3
    );
    let total: f64 = writes.iter().filter(|(k, _)| !k.ends_with(" leases")).map(|(_, v)| v).sum();
    println!(
        "API writes during the grant phase (all clients, leases excluded): {total:.0} = {:.2} per grant",
        total / N as f64
    );
    for (k, v) in &writes {
        println!("  {k:<40} {v:>8.0}  ({:.2} per grant)", v / N as f64);
    }
    // Where the gap is. A grant's own API work, a create and a status write,
    // done back to back by a plain client at the raw rates above, bounds the
    // rate of grants to Active on this API server (an estimate from measured
    // rates, not a measurement; it leaves out the Event, the two webhook
    // calls, the token's Secret write and the watches).
    let bound = 1.0 / (1.0 / bare_rate + 1.0 / status_rate);
    println!("RATIO raw_grant_create_vs_raw_configmap_create {:.4}x (info)", bare_rate / raw_rate);
    println!("RATIO raw_grant_status_write_vs_raw_configmap_create {:.4}x (info)", status_rate / raw_rate);
    println!(
        "RATIO bound_create_plus_status_vs_raw_configmap_create {:.4}x (info: estimate, {bound:.0}/s)",
        bound / raw_rate
    );
    println!("RATIO grants_to_active_vs_that_bound {:.4}x (info)", grant_rate / bound);
    let verdict = if ratio >= 0.5 { "MET" } else { "MISSED" };
    println!("RATIO grants_to_active_vs_raw_creates {ratio:.4}x (target >= 0.5x) {verdict}");

    // Clean up while the operator still runs (the grants' finalizers need it).
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    let gone = Instant::now();
    while namespaces.get_opt(&ns).await.ok().flatten().is_some() && gone.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The bench's grant number `i`: one capability for the agent, 20 minutes.
fn grant(i: usize) -> CapabilityGrant {
    yaml(&format!(
        "metadata: {{name: g-{i}}}\nspec: {{agent: release-bot, task: {{id: B-{i}}}, capabilities: [{{action: \"k8s:deployments.patch\", resource: \"k8s:staging/deployments/web\"}}], audiences: [deploy-api], ttl: 20m}}"
    ))
}

/// Runs `op(0..N)` at the bench's concurrency; how long all took.
async fn timed<F, Fut>(op: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    futures::stream::iter(0..N).map(op).buffer_unordered(CONCURRENCY).collect::<Vec<_>>().await;
    start.elapsed()
}

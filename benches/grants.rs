//! Grants from create to Active on a real API server, against the raw rate at
//! which a plain client creates objects on the same server, in one run.
//!
//! Needs a cluster: `make bench` runs it through `hack/bench.sh`, which uses
//! `KUBECONFIG` if it is reachable and otherwise starts the local control
//! plane. It starts the real `writ run` (release build) in its own namespace,
//! creates an agent with a running pod (so activation includes minting the
//! pod's token), then:
//!
//! 1. raw: N ConfigMaps created by the same client at the same concurrency;
//! 2. writ: N CapabilityGrants created (through the admission webhooks), each
//!    timed until a watch sees `status.phase: Active`.
//!
//! Reports grants/s (first create to last Active) over raw creates/s, and the
//! p50/p99 time from create to Active. Target in the issue: ratio >= 0.5.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    runtime::{watcher, WatchStreamExt},
    Client, ResourceExt,
};
use writ::api::{CapabilityGrant, GrantPhase};

const N: usize = 200;
const CONCURRENCY: usize = 8;

/// Two distinct free loopback ports (held together while chosen).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    (a.local_addr().expect("addr").port(), b.local_addr().expect("addr").port())
}

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).expect("yaml")
}

/// Successful writes the API server has answered so far, per `verb resource[/subresource]`.
async fn api_writes(client: &Client) -> HashMap<String, f64> {
    let req = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = client.request_text(req).await.expect("API server /metrics");
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |k: &str| {
            let start = line.find(&format!("{k}=\"")).map(|i| i + k.len() + 2)?;
            line[start..].split('"').next().map(str::to_string)
        };
        let (Some(verb), Some(code), Some(resource)) = (label("verb"), label("code"), label("resource")) else {
            continue;
        };
        if !matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE") || !code.starts_with('2') {
            continue;
        }
        let sub = label("subresource").unwrap_or_default();
        let key = if sub.is_empty() { format!("{verb} {resource}") } else { format!("{verb} {resource}/{sub}") };
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

/// Writes between two snapshots, largest first.
fn write_delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> Vec<(String, f64)> {
    let mut d: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    d.sort_by(|a, b| b.1.total_cmp(&a.1));
    d
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The processes whose CPU the bench reports: the operator, and the local
/// control plane's etcd and API server when it is the one in use.
fn processes(operator: u32) -> Vec<(&'static str, u32)> {
    let mut out = vec![("writ run", operator)];
    if let Ok(dir) = std::env::var("WRIT_CLUSTER_DIR") {
        for name in ["kube-apiserver", "etcd"] {
            if let Some(pid) =
                std::fs::read_to_string(format!("{dir}/{name}.pid")).ok().and_then(|p| p.trim().parse().ok())
            {
                out.push((name, pid));
            }
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match Client::try_default().await {
        Ok(c) if c.apiserver_version().await.is_ok() => c,
        _ => {
            eprintln!("grants bench: no reachable API server (run it through `make bench`, which starts one)");
            std::process::exit(2);
        }
    };
    let pid = std::process::id();
    let op_ns = format!("writ-bench-{pid}");
    let ns = format!("bench-{pid}");
    let (webhook, metrics) = free_ports();
    let log = std::fs::File::create(std::env::temp_dir().join(format!("writ-bench-{pid}.log"))).expect("log");
    let _op = Operator(
        Command::new(env!("CARGO_BIN_EXE_writ"))
            .args(["run", "--namespace", &op_ns, "--trust-domain", "bench.writ.dev"])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{webhook}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}"), "--lease-duration", "6s"])
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("writ run"),
    );
    let ready = format!("http://127.0.0.1:{metrics}/readyz");
    let started = Instant::now();
    while !Command::new("curl").args(["-fs", &ready]).output().is_ok_and(|o| o.status.success()) {
        assert!(started.elapsed() < Duration::from_secs(60), "writ run not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = format!("http://127.0.0.1:{metrics}/metrics");
    while !Command::new("curl")
        .args(["-fs", &leader])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("writ_leader 1"))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The scenario: an agent with one running pod, and a policy for the bench user.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&PostParams::default(), &yaml(&format!("metadata: {{name: {ns}}}"))).await.expect("namespace");
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

    // 1. Raw object creates.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let raw_start = Instant::now();
    futures::stream::iter(0..N)
        .map(|i| {
            let cms = cms.clone();
            async move {
                let cm: ConfigMap = yaml(&format!("metadata: {{name: raw-{i}}}\ndata: {{k: v}}"));
                cms.create(&PostParams::default(), &cm).await.expect("configmap");
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let raw = raw_start.elapsed();

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
    let procs = processes(_op.0.id());
    let cpu_before: Vec<Option<f64>> = procs.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let grant_start = Instant::now();
    futures::stream::iter(0..N)
        .map(|i| {
            let (grants, created) = (grants.clone(), created.clone());
            async move {
                let g: CapabilityGrant = yaml(&format!(
                    "metadata: {{name: g-{i}}}\nspec: {{agent: release-bot, task: {{id: B-{i}}}, capabilities: [{{action: \"k8s:deployments.patch\", resource: \"k8s:staging/deployments/web\"}}], audiences: [deploy-api], ttl: 20m}}"
                ));
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

    let raw_rate = N as f64 / raw.as_secs_f64();
    let grant_rate = N as f64 / grants_elapsed.as_secs_f64();
    let ratio = grant_rate / raw_rate;
    println!("grants bench: {N} objects each, concurrency {CONCURRENCY}, one client, real API server");
    println!("raw ConfigMap creates            {raw_rate:>8.1} /s  ({:.2} s)", raw.as_secs_f64());
    println!("grants created -> Active (token) {grant_rate:>8.1} /s  ({:.2} s)", grants_elapsed.as_secs_f64());
    println!("  (the {N} creates themselves returned after {:.2} s)", creates_done.as_secs_f64());
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
    let verdict = if ratio >= 0.5 { "MET" } else { "MISSED" };
    println!("RATIO grants_to_active_vs_raw_creates {ratio:.4}x (target >= 0.5x) {verdict}");

    // Clean up while the operator still runs (the grants' finalizers need it).
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    let gone = Instant::now();
    while namespaces.get_opt(&ns).await.ok().flatten().is_some() && gone.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

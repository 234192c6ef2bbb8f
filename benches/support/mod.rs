//! What the benchmarks that need a cluster share: the real operator as a
//! child process, the API server's write counters, and /proc readings.
#![allow(dead_code)] // each bench uses a different part

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kube::Client;

/// A client for the cluster in KUBECONFIG, or exit 2 with a hint.
pub async fn cluster_client(bench: &str) -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match Client::try_default().await {
        Ok(c) if c.apiserver_version().await.is_ok() => c,
        _ => {
            eprintln!("{bench} bench: no reachable API server (run it through make, which starts one)");
            std::process::exit(2);
        }
    }
}

/// Two distinct free loopback ports (held together while chosen).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    (a.local_addr().expect("addr").port(), b.local_addr().expect("addr").port())
}

/// `writ run` (the release build) as a child process; killed when dropped.
pub struct Operator {
    child: Child,
    /// The HTTPS listener (webhooks, JWKS, introspection).
    pub url: String,
    metrics: u16,
    namespace: String,
    extra: Vec<String>,
}

impl Operator {
    /// Starts it with its state in `namespace` and waits until it leads.
    pub async fn start(namespace: &str, extra: &[&str]) -> Operator {
        let (webhook, metrics) = free_ports();
        let child = Self::spawn(namespace, webhook, metrics, extra);
        let op = Operator {
            child,
            url: format!("https://127.0.0.1:{webhook}"),
            metrics,
            namespace: namespace.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        op.wait_ready(Duration::from_secs(120)).await;
        op.wait_leading().await;
        op
    }

    fn spawn(namespace: &str, webhook: u16, metrics: u16, extra: &[impl AsRef<str>]) -> Child {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!("writ-bench-{namespace}.log")))
            .expect("log");
        Command::new(operator_binary())
            .args(["run", "--namespace", namespace, "--trust-domain", "bench.writ.dev"])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{webhook}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            // Each operator's token listener on its own loopback port unless the bench names one.
            .args(
                if extra.iter().any(|a| a.as_ref() == "--token-addr") {
                    None
                } else {
                    Some(["--token-addr", "127.0.0.1:0"])
                }
                .into_iter()
                .flatten(),
            )
            .args(extra.iter().map(AsRef::as_ref))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("writ run")
    }

    /// Kills it (SIGKILL) and starts a new process on the same ports and
    /// state; returns when the new one was started, once it answers `/readyz`.
    pub async fn restart(&mut self) -> Instant {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let webhook: u16 = self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        let started = Instant::now();
        self.child = Self::spawn(&self.namespace, webhook, self.metrics, &self.extra);
        self.wait_ready(Duration::from_secs(300)).await;
        started
    }

    /// Waits until every cache of the operator is filled (`writ_caches_synced 1`).
    pub async fn wait_caches_synced(&self) {
        while !self.metrics_text().is_some_and(|text| text.lines().any(|l| l == "writ_caches_synced 1")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    async fn wait_ready(&self, timeout: Duration) {
        let ready = format!("http://127.0.0.1:{}/readyz", self.metrics);
        let started = Instant::now();
        while !Command::new("curl").args(["-fs", &ready]).output().is_ok_and(|o| o.status.success()) {
            assert!(started.elapsed() < timeout, "writ run not ready after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until this replica holds the lease (its controllers run).
    pub async fn wait_leading(&self) {
        self.wait_leader_gauge(1).await;
    }

    /// Waits until this replica has stopped leading (its controllers stopped).
    pub async fn wait_following(&self) {
        self.wait_leader_gauge(0).await;
    }

    async fn wait_leader_gauge(&self, value: u8) {
        let line = format!("writ_leader {value}");
        // The whole sample line: the gauge's HELP text ("1 when this replica
        // runs the controllers") also contains "writ_leader 1".
        while !self.metrics_text().is_some_and(|text| text.lines().any(|l| l == line)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The operator's `/metrics` text (`None` if it does not answer).
    pub fn metrics_text(&self) -> Option<String> {
        let metrics = format!("http://127.0.0.1:{}/metrics", self.metrics);
        let out = Command::new("curl").args(["-fs", &metrics]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// POSTs an introspection request as the caller whose ServiceAccount
    /// token is `caller`; whether the operator says `active`.
    pub fn introspect_active(&self, token: &str, caller: &str) -> bool {
        let auth = format!("Authorization: Bearer {caller}");
        let out = Command::new("curl")
            .args([
                "-sk",
                "-H",
                &auth,
                "--data-urlencode",
                &format!("token={token}"),
                &format!("{}/introspect", self.url),
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).contains("\"active\":true")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_saphyr::from_str(text).expect("yaml")
}

/// With `WRIT_SCALE_METRICS_DIR` set, saves the API server's and the
/// operator's whole `/metrics` text as `<dir>/<label>.prom` and
/// `<dir>/<label>.writ.prom`, the latter followed by the CPU seconds used so
/// far by the operator and the local control plane's processes
/// (`# cpu <name> <seconds>`), to compare what they did between two phases.
pub async fn dump_metrics(client: &Client, op: &Operator, label: &str) {
    let Some(dir) = std::env::var_os("WRIT_SCALE_METRICS_DIR") else { return };
    let dir = std::path::Path::new(&dir);
    let api = api_metrics_text(client).await;
    let mut writ = op.metrics_text().unwrap_or_default();
    for (name, pid) in processes(op.pid()) {
        writ.push_str(&format!("# cpu {name} {}\n", cpu_seconds(pid).unwrap_or(0.0)));
    }
    // TCP connections opened on this machine so far (each a TLS handshake
    // for the API server when it is the local one).
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    if let [names, values] = tcp[..] {
        if let Some((_, v)) = names.split_whitespace().zip(values.split_whitespace()).find(|(k, _)| *k == "ActiveOpens")
        {
            writ.push_str(&format!("# tcp_active_opens {v}\n"));
        }
    }
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(dir.join(format!("{label}.prom")), api))
        .and_then(|_| std::fs::write(dir.join(format!("{label}.writ.prom")), writ))
        .expect("write metrics");
}

/// The API server's `/metrics` text.
async fn api_metrics_text(client: &Client) -> String {
    let req = http::Request::get("/metrics").body(Vec::new()).expect("request");
    client.request_text(req).await.expect("API server /metrics")
}

/// Successful writes the API server has answered so far, per `verb resource[/subresource]`.
pub async fn api_writes(client: &Client) -> HashMap<String, f64> {
    let text = api_metrics_text(client).await;
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
pub fn write_delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> Vec<(String, f64)> {
    let mut d: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    d.sort_by(|a, b| b.1.total_cmp(&a.1));
    d
}

/// The operator binary the benches run: this build's, or the one
/// `WRIT_BENCH_BIN` names (e.g. the image's static musl build, whose
/// allocator is musl's, to measure what the image runs).
pub fn operator_binary() -> std::path::PathBuf {
    std::env::var_os("WRIT_BENCH_BIN").map_or_else(|| env!("CARGO_BIN_EXE_writ").into(), Into::into)
}

/// Resident memory of a process, KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, &["VmRSS:"])[0]
}

/// The most resident memory a process has had so far (`VmHWM`), KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, &["VmHWM:"])[0]
}

/// Resident memory of a process split as the kernel counts it, KiB:
/// anonymous (heap and stacks) and file-backed (the mapped binary and
/// libraries); (0, 0) if it is gone.
pub fn rss_split_kib(pid: u32) -> (u64, u64) {
    let [anon, file] = status_kib(pid, &["RssAnon:", "RssFile:"]);
    (anon, file)
}

/// The `kB` fields of `/proc/<pid>/status` named (0 for one not there).
fn status_kib<const N: usize>(pid: u32, names: &[&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    names.map(|name| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    })
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Waits, at most `max`, until the local control plane is quiet: its API
/// server and etcd used less than a tenth of a core over the last second
/// (on another cluster, whose processes the bench cannot see: 5 s). A timed
/// phase then starts, as the first one does, on a control plane that has
/// finished the previous phase's work (its watch deliveries, its garbage
/// collection). Returns how long it waited.
pub async fn control_plane_quiet(operator: u32, max: Duration) -> Duration {
    let start = Instant::now();
    let Some(mut last) = control_plane_cpu(operator) else {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return start.elapsed();
    };
    while start.elapsed() < max {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(now) = control_plane_cpu(operator) else { break };
        if now - last < 0.1 {
            break;
        }
        last = now;
    }
    start.elapsed()
}

/// CPU seconds the local control plane's API server and etcd have used so
/// far (`None` when the cluster is not the local control plane).
pub fn control_plane_cpu(operator: u32) -> Option<f64> {
    let used: Vec<f64> = processes(operator)
        .into_iter()
        .filter(|(name, _)| *name != "writ run")
        .filter_map(|(_, pid)| cpu_seconds(pid))
        .collect();
    (used.len() == 2).then(|| used.iter().sum())
}

/// CPU seconds used so far by each side of a phase: the local control
/// plane's API server and etcd, the operator, the controller-manager, and this
/// process (the bench's own client). `None` where a process cannot be seen
/// (another cluster).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSplit {
    /// kube-apiserver + etcd.
    pub control_plane: Option<f64>,
    /// The operator.
    pub operator: Option<f64>,
    /// kube-controller-manager.
    pub controller_manager: Option<f64>,
    /// The bench itself.
    pub client: Option<f64>,
}

impl CpuSplit {
    /// The counters now.
    pub fn now(operator: u32) -> Self {
        Self {
            control_plane: control_plane_cpu(operator),
            operator: cpu_seconds(operator),
            controller_manager: cluster_pid("kube-controller-manager").and_then(cpu_seconds),
            client: cpu_seconds(std::process::id()),
        }
    }

    /// What was used between `before` and `self`.
    pub fn since(&self, before: &Self) -> Self {
        self.zip(before, |a, b| a - b)
    }

    /// Both spans together.
    pub fn plus(&self, other: &Self) -> Self {
        self.zip(other, |a, b| a + b)
    }

    /// Each side of `self` and `other` combined by `f` (`None` if either lacks it).
    fn zip(&self, other: &Self, f: fn(f64, f64) -> f64) -> Self {
        let g = |a: Option<f64>, b: Option<f64>| Some(f(a?, b?));
        Self {
            control_plane: g(self.control_plane, other.control_plane),
            operator: g(self.operator, other.operator),
            controller_manager: g(self.controller_manager, other.controller_manager),
            client: g(self.client, other.client),
        }
    }

    /// Milliseconds per item, side by side: `API server + etcd 1.23, operator
    /// 0.45, controller-manager 0.10, bench client 0.30 ms`.
    pub fn per_item(&self, items: usize) -> String {
        let ms = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:.2}", v * 1e3 / items as f64));
        format!(
            "API server + etcd {}, operator {}, controller-manager {}, bench client {} ms",
            ms(self.control_plane),
            ms(self.operator),
            ms(self.controller_manager),
            ms(self.client)
        )
    }
}

/// The processes whose CPU the bench reports: the operator, and the local
/// control plane's etcd and API server when it is the one in use.
pub fn processes(operator: u32) -> Vec<(&'static str, u32)> {
    let mut out = vec![("writ run", operator)];
    for name in ["kube-apiserver", "etcd"] {
        if let Some(pid) = cluster_pid(name) {
            out.push((name, pid));
        }
    }
    out
}

/// The pid `hack/control-plane.sh` recorded for one of the local control
/// plane's processes (none on another cluster).
fn cluster_pid(name: &str) -> Option<u32> {
    let dir = std::env::var("WRIT_CLUSTER_DIR").ok()?;
    std::fs::read_to_string(format!("{dir}/{name}.pid")).ok()?.trim().parse().ok()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

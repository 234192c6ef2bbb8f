//! Running the real `writ` binary against the test cluster, with its webhooks
//! registered at a loopback URL so the API server's real admission path is used.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::{api::Api, Client};

use super::{cluster, ensure_crds, repo, Cluster};

/// Name of the webhook configurations the test operator registers.
pub const WEBHOOK_CONFIG: &str = "writ";

/// Distinct free loopback ports (held open together while chosen, so the
/// kernel cannot hand out the same one twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("addr").port())
}

/// A running `writ run` process.
pub struct Operator {
    child: Mutex<Option<Child>>,
    /// Operator namespace.
    pub namespace: String,
    /// HTTPS base URL (webhooks and trust endpoints).
    pub url: String,
    /// Plain HTTP base URL (metrics, health).
    pub metrics_url: String,
    /// HTTPS base URL of the token exchange listener (mutual TLS).
    pub token_url: String,
    /// Its log file.
    pub log: PathBuf,
    /// The replica id.
    pub id: String,
    args: Vec<String>,
}

impl Operator {
    /// Starts `writ run` in `namespace` and waits until `/readyz` answers 200.
    pub async fn start(c: &Cluster, namespace: &str, id: &str, extra: &[&str]) -> Operator {
        let op = Self::launch(c, namespace, id, extra).await;
        op.wait_ready().await;
        op
    }

    /// Starts `writ run` in `namespace` without waiting for it to be ready.
    pub async fn launch(c: &Cluster, namespace: &str, id: &str, extra: &[&str]) -> Operator {
        ensure_crds(&c.client().await).await;
        let [webhook_port, metrics_port, token_port] = free_ports();
        let url = format!("https://127.0.0.1:{webhook_port}");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--namespace".into(),
            namespace.into(),
            "--trust-domain".into(),
            "test.writ.dev".into(),
            "--webhook-addr".into(),
            format!("127.0.0.1:{webhook_port}"),
            "--webhook-url".into(),
            url.clone(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--token-addr".into(),
            format!("127.0.0.1:{token_port}"),
            "--replica-id".into(),
            id.into(),
            "--lease-duration".into(),
            "6s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{namespace}-{id}.log"));
        let op = Operator {
            child: Mutex::new(None),
            namespace: namespace.into(),
            url,
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
            token_url: format!("https://127.0.0.1:{token_port}"),
            log,
            id: id.into(),
            args,
        };
        op.spawn(c);
        op
    }

    fn spawn(&self, c: &Cluster) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("operator log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_writ"));
        cmd.args(&self.args)
            .env("KUBECONFIG", &c.kubeconfig)
            .env("RUST_LOG", "info,writ=debug,kube_runtime=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log clone")))
            .stderr(Stdio::from(log));
        // The operator dies with the test process, whatever happens to it.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting writ run");
        *self.child.lock().expect("lock") = Some(child);
    }

    /// Waits until `/readyz` is 200 (panics with the log tail otherwise).
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.metrics_url);
        for _ in 0..300 {
            if let Some(child) = self.child.lock().expect("lock").as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("writ run exited with {status}:\n{}", self.log_tail());
                }
            }
            if http_get(&url).await.map(|(code, _)| code == 200).unwrap_or(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("writ run not ready after 30s:\n{}", self.log_tail());
    }

    /// The names of the running process's threads (Linux; empty elsewhere or once it stopped).
    pub fn thread_names(&self) -> Vec<String> {
        let Some(pid) = self.child.lock().expect("lock").as_ref().map(Child::id) else { return Vec::new() };
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>());
        tasks
            .unwrap_or_default()
            .iter()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect()
    }

    /// The last lines of the operator's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the operator (no cleanup runs).
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().expect("lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM, as a rolling update or `kubectl delete pod` does, and
    /// returns at once (the process shuts down by itself; [`Operator::kill`]
    /// or drop reaps it).
    pub fn terminate(&self) {
        if let Some(child) = self.child.lock().expect("lock").as_ref() {
            let pid = i32::try_from(child.id()).expect("pid");
            // SAFETY: signalling a child process of ours by its pid.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "sending SIGTERM");
        }
    }

    /// Whether the process has exited.
    pub fn exited(&self) -> bool {
        self.child.lock().expect("lock").as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// A metric's value from `/metrics` (the sum over series whose labels contain every `labels` entry).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let (_, body) = http_get(&format!("{}/metrics", self.metrics_url)).await?;
        let mut found = None;
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next().unwrap_or(series);
            if metric == name && labels.iter().all(|l| series.contains(l)) {
                *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
            }
        }
        found
    }

    /// Restarts a killed operator with the same ports and arguments.
    pub async fn restart(&self, c: &Cluster) {
        self.kill();
        self.spawn(c);
        self.wait_ready().await;
    }

    /// GETs a path on the HTTPS listener, trusting the operator's CA bundle.
    pub async fn https_get(&self, path: &str) -> (u16, String) {
        https_request(&self.url, path, None).await
    }

    /// POSTs a form to the HTTPS listener.
    pub async fn https_post_form(&self, path: &str, form: &str) -> (u16, String) {
        https_request(&self.url, path, Some(form.to_string())).await
    }

    /// POSTs a form with `Authorization: Bearer <bearer>`.
    pub async fn https_post_form_as(&self, path: &str, form: &str, bearer: &str) -> (u16, String) {
        let header = format!("Authorization: Bearer {bearer}");
        https_request_with(&self.url, path, Some(form.to_string()), &["-H", &header]).await
    }

    /// POSTs a form presenting a client certificate (PEM files).
    pub async fn https_post_form_with_cert(&self, path: &str, form: &str, cert: &Path, key: &Path) -> (u16, String) {
        let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
        https_request_with(&self.url, path, Some(form.to_string()), &["--cert", cert, "--key", key]).await
    }

    /// POSTs a form and returns the status, the `WWW-Authenticate` header
    /// (empty when absent) and the body.
    pub async fn https_post_form_headers(&self, path: &str, form: &str) -> (u16, String, String) {
        let dump = std::env::temp_dir().join(format!("writ-headers-{}-{}", std::process::id(), free_ports::<1>()[0]));
        let dump_path = dump.to_str().expect("utf-8").to_string();
        let (code, body) = https_request_with(&self.url, path, Some(form.to_string()), &["-D", &dump_path]).await;
        let headers = std::fs::read_to_string(&dump).unwrap_or_default();
        let _ = std::fs::remove_file(&dump);
        let challenge = headers
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("www-authenticate").then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        (code, challenge, body)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP GET with curl-free std networking (loopback only).
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5", url])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

async fn https_request(base: &str, path: &str, form: Option<String>) -> (u16, String) {
    https_request_with(base, path, form, &[]).await
}

async fn https_request_with(base: &str, path: &str, form: Option<String>, extra: &[&str]) -> (u16, String) {
    let mut args = vec![
        "-sk".to_string(),
        "-o".into(),
        "-".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        "--max-time".into(),
        "10".into(),
    ];
    if let Some(f) = form {
        args.push("--data".into());
        args.push(f);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(format!("{base}{path}"));
    let out = tokio::process::Command::new("curl").args(&args).output().await.expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Removes the webhook configurations (for tests that must run without Writ).
pub async fn remove_webhooks(client: &Client) {
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = m.delete(WEBHOOK_CONFIG, &Default::default()).await;
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let _ = v.delete(WEBHOOK_CONFIG, &Default::default()).await;
}

static SHARED: tokio::sync::OnceCell<&'static Operator> = tokio::sync::OnceCell::const_new();

/// The operator shared by every test of one test binary (started once,
/// killed when the test process exits).
pub async fn shared_operator() -> &'static Operator {
    SHARED
        .get_or_init(|| async {
            let c = cluster();
            // Start from a thread that lives as long as the process: the
            // child's parent-death signal is tied to the spawning thread.
            let (tx, rx) = std::sync::mpsc::channel::<&'static Operator>();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
                let op: &'static Operator = Box::leak(Box::new(rt.block_on(async {
                    let ns = format!("writ-system-{}", std::process::id());
                    Operator::start(&c, &ns, "test-0", &[]).await
                })));
                let _ = tx.send(op);
                loop {
                    std::thread::park();
                }
            });
            tokio::task::spawn_blocking(move || rx.recv().expect("the shared operator failed to start"))
                .await
                .expect("join")
        })
        .await
}

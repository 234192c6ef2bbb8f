//! The integration-test harness: a real kube-apiserver + etcd (started on
//! loopback by `hack/control-plane.sh` unless `KUBECONFIG` points at a
//! reachable cluster), the CRDs installed from `crds/`, and one fresh
//! namespace per test.
//!
//! Every test binary includes this module; not every binary uses every helper.
#![allow(dead_code, unused_imports)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::Namespace, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
    Client, Config,
};
use tokio::sync::OnceCell;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the test cluster lives: its admin kubeconfig and per-user kubeconfigs.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Directory with `kubeconfig-<user>` files (local control plane only).
    pub dir: Option<PathBuf>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static CRDS: OnceCell<()> = OnceCell::const_new();

fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn reachable(kubeconfig: &Path) -> bool {
    Command::new("kubectl")
        .args(["--request-timeout=5s", "get", "--raw", "/readyz"])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The cluster for this test run: `KUBECONFIG` if it is reachable, otherwise
/// the local control plane (started if needed). Panics, and so fails the
/// test, when neither works: tests never skip silently.
pub fn cluster() -> Cluster {
    CLUSTER
        .get_or_init(|| {
            install_crypto();
            if let Some(kc) = std::env::var_os("KUBECONFIG").map(PathBuf::from) {
                if kc.exists() && reachable(&kc) {
                    let dir = std::env::var_os("WRIT_CLUSTER_DIR")
                        .map(PathBuf::from)
                        .or_else(|| kc.parent().filter(|d| d.join("kubeconfig-alice").exists()).map(Path::to_path_buf));
                    return Cluster { kubeconfig: kc, dir };
                }
            }
            let out = Command::new(repo().join("hack/control-plane.sh"))
                .arg("up")
                .output()
                .expect("running hack/control-plane.sh up");
            assert!(
                out.status.success(),
                "no reachable cluster in KUBECONFIG and hack/control-plane.sh up failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dir = std::env::var_os("WRIT_CLUSTER_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| dirs_home().join(".cache/writ/cluster"));
            let kubeconfig = dir.join("kubeconfig");
            assert!(reachable(&kubeconfig), "control plane started but {} is not reachable", kubeconfig.display());
            Cluster { kubeconfig, dir: Some(dir) }
        })
        .clone()
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"))
}

impl Cluster {
    /// A client acting as the cluster admin.
    pub async fn client(&self) -> Client {
        client_for(&self.kubeconfig).await
    }

    /// The kubeconfig of a test user (`alice`, `bob`, `carol`, `mallory`, `dave`).
    pub fn user_kubeconfig(&self, user: &str) -> PathBuf {
        let dir = self.dir.as_ref().expect("test users need the local control plane (WRIT_CLUSTER_DIR)");
        dir.join(format!("kubeconfig-{user}"))
    }

    /// A client acting as a test user, authenticated by a client certificate.
    pub async fn user_client(&self, user: &str) -> Client {
        client_for(&self.user_kubeconfig(user)).await
    }

    /// Runs kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_with(&self.kubeconfig, args)
    }

    /// Runs kubectl as a test user.
    pub fn kubectl_as(&self, user: &str, args: &[&str]) -> Output {
        kubectl_with(&self.user_kubeconfig(user), args)
    }
}

/// Runs kubectl with the given kubeconfig.
pub fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl").args(args).env("KUBECONFIG", kubeconfig).output().expect("running kubectl")
}

/// The text of a command's stdout and stderr, for assertions and messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A kube client for a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Client {
    install_crypto();
    let kc = Kubeconfig::read_from(kubeconfig).expect("reading kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig");
    Client::try_from(config).expect("building client")
}

/// Installs `crds/*.yaml` with server-side apply (once per test binary) and
/// waits until every CRD is Established.
pub async fn ensure_crds(client: &Client) {
    CRDS.get_or_init(|| async {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in load_crds() {
            let name = crd.metadata.name.clone().expect("crd name");
            api.patch(&name, &PatchParams::apply("writ-tests").force(), &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(api.clone(), &name, conditions::is_crd_established()),
            )
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
            .expect("watching CRD");
        }
    })
    .await;
}

/// The committed CRDs.
pub fn load_crds() -> Vec<CustomResourceDefinition> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("crds"))
        .expect("crds/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_saphyr::from_str(&std::fs::read_to_string(p).expect("read crd")).expect("parse crd"))
        .collect()
}

/// A namespace that exists for one test and is deleted afterwards.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `writ-t-<prefix>-<random>`.
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let suffix: String = {
            let mut b = [0u8; 4];
            aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b).expect("random");
            b.iter().map(|x| format!("{x:02x}")).collect()
        };
        let name = format!("wt-{}-{suffix}", prefix.replace('_', "-"));
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("writ.dev/test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns).await.unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        grant_test_users(client, &name).await;
        Self { name, client: client.clone() }
    }

    /// Deletes the namespace (the namespace controller removes its contents).
    pub async fn cleanup(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::background()).await;
    }
}

/// Lets the test users and the namespace's service accounts work with the
/// writ.dev kinds in a test namespace (RBAC is on in the test cluster; the
/// webhooks, not RBAC, are what the tests exercise).
async fn grant_test_users(client: &Client, ns: &str) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "writ-test-user"},
        "rules": [
            {"apiGroups": ["writ.dev"], "resources": ["agentidentities", "capabilitygrants", "delegationpolicies"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create"]}
        ]
    }))
    .expect("role");
    roles
        .patch("writ-test-user", &PatchParams::apply("writ-tests").force(), &Patch::Apply(&role))
        .await
        .expect("test role");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let mut subjects: Vec<serde_json::Value> = ["alice", "bob", "carol", "mallory", "dave"]
        .iter()
        .map(|u| serde_json::json!({"kind": "User", "name": u, "apiGroup": "rbac.authorization.k8s.io"}))
        .collect();
    subjects.push(serde_json::json!({"kind": "Group", "name": format!("system:serviceaccounts:{ns}"), "apiGroup": "rbac.authorization.k8s.io"}));
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "writ-test-users"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "writ-test-user"},
        "subjects": subjects
    }))
    .expect("binding");
    bindings.create(&PostParams::default(), &binding).await.expect("test role binding");
}

/// Gives `user` what a tenant with the `edit` role has in `ns` for pods and
/// Secrets (pods create/update/patch/delete, Secrets create/get/update/
/// delete, both listed and watched), on top of the test users' writ.dev
/// rights; nothing in the operator's namespace.
pub async fn grant_tenant_edit(client: &Client, ns: &str, user: &str) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let name = format!("tenant-edit-{user}");
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["secrets"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}
        ]
    }))
    .expect("role");
    roles.create(&PostParams::default(), &role).await.expect("tenant role");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]
    }))
    .expect("binding");
    bindings.create(&PostParams::default(), &binding).await.expect("tenant role binding");
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout`
/// with `what` in the message.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `openssl verify -CAfile <bundle PEM> <certificate PEM>` (both given as
/// text): whether it chains, and what openssl said.
pub fn openssl_verify(bundle_pem: &str, cert_pem: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, cert) = (dir.path().join("bundle.pem"), dir.path().join("cert.pem"));
    std::fs::write(&bundle, bundle_pem).expect("write");
    std::fs::write(&cert, cert_pem).expect("write");
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .args([&bundle, &cert])
        .output()
        .expect("openssl (hack/build-control-plane.sh installs it)");
    (out.status.success() && text(&out).contains(": OK"), text(&out))
}

mod operator;
pub use operator::*;

mod scenario;
pub use scenario::*;

mod fixtures;
pub use fixtures::*;

pub mod invariants;

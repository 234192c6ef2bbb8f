//! Building blocks of test scenarios: agent pods, playing the kubelet,
//! service-account clients, reading credentials.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::{
    api::{Api, Patch, PatchParams, PostParams},
    Client, Config, ResourceExt,
};
use serde_json::json;

use super::{eventually, Cluster};

/// Creates a service account (idempotent).
pub async fn service_account(client: &Client, ns: &str, name: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).expect("sa");
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating service account {ns}/{name}: {e}"),
    }
}

/// A token of service account `ns/name` (created if absent), from the
/// TokenRequest API, for the API server's own audience.
pub async fn service_account_token(client: &Client, ns: &str, name: &str) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    service_account(client, ns, name).await;
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).expect("request");
    let issued = api
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for {ns}/{name}: {e}"));
    issued.status.and_then(|s| s.token).expect("a token in the TokenRequest status")
}

/// An agent pod manifest: label `writ.dev/agent`, running as `sa`.
pub fn agent_pod(name: &str, agent: &str, sa: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"writ.dev/agent": agent}},
        "spec": {
            "serviceAccountName": sa,
            "automountServiceAccountToken": false,
            "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]
        }
    }))
    .expect("pod")
}

/// Creates a pod and returns it as stored (after admission).
pub async fn create_pod(client: &Client, ns: &str, pod: &Pod) -> Result<Pod, kube::Error> {
    Api::<Pod>::namespaced(client.clone(), ns).create(&PostParams::default(), pod).await
}

/// Plays the kubelet: sets the pod's phase.
pub async fn set_pod_phase(client: &Client, ns: &str, name: &str, phase: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": phase}})))
        .await
        .unwrap_or_else(|e| panic!("setting pod {ns}/{name} to {phase}: {e}"));
}

/// The credential Secret name a pod was given at admission.
pub fn credential_secret_name(pod: &Pod) -> String {
    pod.annotations()
        .get("writ.dev/credential-secret")
        .cloned()
        .expect("pod has no writ.dev/credential-secret annotation")
}

/// Decoded data of a Secret.
pub fn secret_data(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// Waits until the pod's credential Secret holds a certificate and key.
pub async fn wait_for_credential(client: &Client, ns: &str, pod: &Pod) -> BTreeMap<String, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = credential_secret_name(pod);
    eventually(Duration::from_secs(20), &format!("credential Secret {ns}/{name}"), || async {
        let s = api.get_opt(&name).await.ok()??;
        let d = secret_data(&s);
        (d.contains_key("tls.crt") && d.contains_key("tls.key")).then_some(d)
    })
    .await
}

/// The token of `grant` in the pod's credential Secret, if it is there now.
pub async fn token_in(client: &Client, ns: &str, pod: &Pod, grant: &str) -> Option<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    secret_data(&api.get(&credential_secret_name(pod)).await.ok()?).remove(&format!("grant.{grant}.jwt"))
}

/// Waits until the pod's credential Secret holds a token for `grant`.
pub async fn wait_for_token(client: &Client, ns: &str, pod: &Pod, grant: &str) -> String {
    eventually(Duration::from_secs(15), &format!("a token of grant {grant} in the pod's Secret"), || {
        token_in(client, ns, pod, grant)
    })
    .await
}

/// A client authenticated as a service account (its token Secret, made by
/// the controller-manager's token controller).
pub async fn service_account_client(c: &Cluster, ns: &str, sa: &str) -> Client {
    let admin = c.client().await;
    let secrets: Api<Secret> = Api::namespaced(admin, ns);
    let token = eventually(Duration::from_secs(30), &format!("token Secret of {ns}/{sa}"), || async {
        let list = secrets.list(&Default::default()).await.ok()?;
        list.items.into_iter().find_map(|s| {
            let is_token = s.type_.as_deref() == Some("kubernetes.io/service-account-token");
            let for_sa = s.annotations().get("kubernetes.io/service-account.name").map(String::as_str) == Some(sa);
            if is_token && for_sa {
                secret_data(&s).get("token").cloned()
            } else {
                None
            }
        })
    })
    .await;
    let kc = kube::config::Kubeconfig::read_from(&c.kubeconfig).expect("kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config");
    config.auth_info = kube::config::AuthInfo { token: Some(token.into()), ..Default::default() };
    Client::try_from(config).expect("sa client")
}

/// Applies YAML/JSON with kubectl as `user` (None: admin) into `ns`; returns (success, output).
pub fn apply_as(c: &Cluster, user: Option<&str>, ns: &str, manifest: &str) -> (bool, String) {
    let file = std::env::temp_dir().join(format!("writ-test-{}-{}.yaml", ns, rand_suffix()));
    std::fs::write(&file, manifest).expect("write manifest");
    let path = file.to_str().expect("utf-8");
    let args = ["create", "-n", ns, "-f", path];
    let out = match user {
        Some(u) => c.kubectl_as(u, &args),
        None => c.kubectl(&args),
    };
    let _ = std::fs::remove_file(&file);
    (out.status.success(), super::text(&out))
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One test's world: the cluster, an admin client and a namespace of its own
/// (see [`with_namespace`]).
pub struct Scenario {
    /// The cluster.
    pub c: Cluster,
    /// An admin client.
    pub client: Client,
    /// The test's namespace.
    pub ns: String,
}

impl Scenario {
    /// Creates `manifest` in the namespace as `user` (`None`: admin),
    /// asserting that admission lets it through; returns kubectl's output.
    pub fn accepts(&self, user: Option<&str>, manifest: &str) -> String {
        let (ok, out) = apply_as(&self.c, user, &self.ns, manifest);
        assert!(ok, "refused, but should be admitted:\n{manifest}\n{out}");
        out
    }

    /// Creates `manifest` in the namespace as `user` (`None`: admin),
    /// asserting that admission refuses it with a message holding every one
    /// of `fragments`; returns the refusal.
    pub fn rejects(&self, user: Option<&str>, manifest: &str, fragments: &[&str]) -> String {
        let (ok, out) = apply_as(&self.c, user, &self.ns, manifest);
        assert!(!ok, "admitted, but should be rejected for {fragments:?}:\n{manifest}");
        for f in fragments {
            assert!(out.contains(f), "rejection lacks {f:?}: {out}");
        }
        out
    }
}

/// Runs `test` with the shared operator up and a namespace of its own,
/// named after `prefix`, which is deleted afterwards (a failing test leaves
/// it for inspection; test namespaces carry the `writ.dev/test` label).
pub async fn with_namespace<F, Fut, T>(prefix: &str, test: F) -> T
where
    F: FnOnce(Scenario) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let c = super::cluster();
    let _op = super::shared_operator().await;
    let client = c.client().await;
    let ns = super::TestNamespace::new(&client, prefix).await;
    let out = test(Scenario { c, client, ns: ns.name.clone() }).await;
    ns.cleanup().await;
    out
}

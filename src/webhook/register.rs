//! The webhook configurations: registered by the operator for local runs
//! (`--webhook-url`), or only given our `caBundle` when `manifests/` installed them.

use k8s_openapi::{
    api::admissionregistration::v1::{
        MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
        ValidatingWebhookConfiguration, WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
    ByteString,
};
use kube::{
    api::{Api, ObjectMeta, Patch, PatchParams},
    Client,
};

use super::paths;
use crate::api::names::IGNORE_NAMESPACE_LABEL;
use crate::api::AGENT_LABEL;

/// Where the API server reaches the webhooks.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A URL (local runs): `https://127.0.0.1:8443`.
    Url(String),
    /// The in-cluster Service.
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl Endpoint {
    fn client_config(&self, path: &str, ca_bundle: &[u8]) -> WebhookClientConfig {
        let ca = Some(ByteString(ca_bundle.to_vec()));
        match self {
            Self::Url(base) => WebhookClientConfig {
                url: Some(format!("{}{}", base.trim_end_matches('/'), path)),
                ca_bundle: ca,
                service: None,
            },
            Self::Service { namespace, name } => WebhookClientConfig {
                url: None,
                ca_bundle: ca,
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.into()),
                    port: Some(443),
                }),
            },
        }
    }
}

fn rule(group: &str, resource: &str, ops: &[&str]) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![group.into()]),
        api_versions: Some(vec![if group.is_empty() { "v1" } else { "v1alpha1" }.into()]),
        resources: Some(vec![resource.into()]),
        operations: Some(ops.iter().map(|s| s.to_string()).collect()),
        scope: Some("Namespaced".into()),
    }
}

/// Namespaces the webhooks never apply to, so the operator (and the control
/// plane) can always start: `writ-system` and `kube-system` by name (the
/// `kubernetes.io/metadata.name` label, Kubernetes ≥ 1.21), and any namespace
/// labelled `writ.dev/webhooks: disabled` (the operator labels its own
/// namespace so, which also covers older servers and custom namespaces).
fn namespace_selector() -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![
            LabelSelectorRequirement {
                key: IGNORE_NAMESPACE_LABEL.into(),
                operator: "NotIn".into(),
                values: Some(vec!["disabled".into()]),
            },
            LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "NotIn".into(),
                values: Some(vec!["kube-system".into(), "writ-system".into()]),
            },
        ]),
        match_labels: None,
    }
}

/// The mutating configuration: pod injection and the immutability of a
/// pod's `writ.dev/*` metadata (only pods with the agent label, so other pods
/// never depend on Writ), and grant stamping.
///
/// The pod entry selects by the `writ.dev/agent` label. On UPDATE the API
/// server matches the objectSelector against the old and the new object and
/// calls the webhook when either matches, so a plain pod that gets the label
/// later is seen (and refused), as is an agent pod losing it. Its failure
/// policy is `Fail`: while Writ is unavailable, agent pods can be neither
/// created nor updated (their status and deletion are other requests), and
/// other pods are never affected.
pub fn mutating(name: &str, endpoint: &Endpoint, ca_bundle: &[u8]) -> MutatingWebhookConfiguration {
    let pods = MutatingWebhook {
        name: "pods.writ.dev".into(),
        client_config: endpoint.client_config(paths::MUTATE_PODS, ca_bundle),
        rules: Some(vec![rule("", "pods", &["CREATE", "UPDATE"])]),
        object_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: AGENT_LABEL.into(),
                operator: "Exists".into(),
                values: None,
            }]),
            match_labels: None,
        }),
        namespace_selector: Some(namespace_selector()),
        failure_policy: Some("Fail".into()),
        side_effects: "None".into(),
        admission_review_versions: vec!["v1".into()],
        timeout_seconds: Some(10),
        reinvocation_policy: Some("IfNeeded".into()),
        match_policy: Some("Equivalent".into()),
        match_conditions: None,
    };
    let grants = MutatingWebhook {
        name: "capabilitygrants.writ.dev".into(),
        client_config: endpoint.client_config(paths::MUTATE_GRANTS, ca_bundle),
        rules: Some(vec![rule(crate::api::GROUP, "capabilitygrants", &["CREATE", "UPDATE"])]),
        object_selector: None,
        namespace_selector: Some(namespace_selector()),
        failure_policy: Some("Fail".into()),
        side_effects: "None".into(),
        admission_review_versions: vec!["v1".into()],
        timeout_seconds: Some(10),
        // Another mutating webhook that changes a grant after ours makes the
        // API server call ours again, which re-seals the spec as it now is.
        reinvocation_policy: Some("IfNeeded".into()),
        match_policy: Some("Equivalent".into()),
        match_conditions: None,
    };
    let identities = MutatingWebhook {
        name: "agentidentities.writ.dev".into(),
        client_config: endpoint.client_config(paths::MUTATE_IDENTITIES, ca_bundle),
        rules: Some(vec![rule(crate::api::GROUP, "agentidentities", &["CREATE", "UPDATE"])]),
        reinvocation_policy: Some("Never".into()),
        ..grants.clone()
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        webhooks: Some(vec![pods, grants, identities]),
    }
}

/// The credential mount guard: every pod created (and every ephemeral
/// container added) outside the exempt namespaces is checked for reading
/// another pod's credential Secret. It has to see pods without the agent
/// label (those are the ones that would steal a key), so its failure policy
/// is `Ignore`, with a short timeout: ordinary pods never wait on Writ's
/// availability, and a pod admitted while Writ was unreachable is found by
/// the controller, which rotates the exposed credential. A namespace
/// without agent pods is answered at once (no Secret of it is a credential
/// Secret).
fn pod_mounts(endpoint: &Endpoint, ca_bundle: &[u8]) -> ValidatingWebhook {
    ValidatingWebhook {
        name: "pod-mounts.writ.dev".into(),
        client_config: endpoint.client_config(paths::VALIDATE_POD_MOUNTS, ca_bundle),
        rules: Some(vec![rule("", "pods", &["CREATE"]), rule("", "pods/ephemeralcontainers", &["UPDATE"])]),
        object_selector: None,
        namespace_selector: Some(namespace_selector()),
        failure_policy: Some("Ignore".into()),
        side_effects: "None".into(),
        admission_review_versions: vec!["v1".into()],
        timeout_seconds: Some(3),
        match_policy: Some("Equivalent".into()),
        match_conditions: None,
    }
}

/// The validating configuration for the three kinds (failurePolicy Fail)
/// and the credential mount guard ([`pod_mounts`], failurePolicy Ignore).
pub fn validating(name: &str, endpoint: &Endpoint, ca_bundle: &[u8]) -> ValidatingWebhookConfiguration {
    let hook = |hook: &str, resource: &str, path: &str| ValidatingWebhook {
        name: hook.into(),
        client_config: endpoint.client_config(path, ca_bundle),
        rules: Some(vec![rule(crate::api::GROUP, resource, &["CREATE", "UPDATE"])]),
        object_selector: None,
        namespace_selector: Some(namespace_selector()),
        failure_policy: Some("Fail".into()),
        side_effects: "None".into(),
        admission_review_versions: vec!["v1".into()],
        timeout_seconds: Some(10),
        match_policy: Some("Equivalent".into()),
        match_conditions: None,
    };
    let mut grants = hook("capabilitygrants.writ.dev", "capabilitygrants", paths::VALIDATE_GRANTS);
    // A grant's status is the operator's: a write Writ did not seal is refused.
    grants.rules.get_or_insert_with(Vec::new).push(rule(crate::api::GROUP, "capabilitygrants/status", &["UPDATE"]));
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        webhooks: Some(vec![
            grants,
            hook("agentidentities.writ.dev", "agentidentities", paths::VALIDATE_IDENTITIES),
            hook("delegationpolicies.writ.dev", "delegationpolicies", paths::VALIDATE_POLICIES),
            pod_mounts(endpoint, ca_bundle),
        ]),
    }
}

/// Creates or updates both configurations (server-side apply, manager `writ`).
pub async fn apply(client: &Client, name: &str, endpoint: &Endpoint, ca_bundle: &[u8]) -> Result<(), kube::Error> {
    let pp = PatchParams::apply(crate::api::names::MANAGER).force();
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut mc = mutating(name, endpoint, ca_bundle);
    mc.metadata.managed_fields = None;
    m.patch(
        name,
        &pp,
        &Patch::Apply(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": mc.metadata,
            "webhooks": mc.webhooks,
        })),
    )
    .await?;
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let vc = validating(name, endpoint, ca_bundle);
    v.patch(
        name,
        &pp,
        &Patch::Apply(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": vc.metadata,
            "webhooks": vc.webhooks,
        })),
    )
    .await?;
    Ok(())
}

/// In-cluster: writes our CA bundle into every webhook of the installed
/// configurations (whose other fields `manifests/` owns).
pub async fn patch_ca_bundle(client: &Client, name: &str, ca_bundle: &[u8]) -> Result<(), kube::Error> {
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(mut mc) = m.get_opt(name).await? {
        for w in mc.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle = Some(ByteString(ca_bundle.to_vec()));
        }
        mc.metadata.managed_fields = None;
        m.replace(name, &Default::default(), &mc).await?;
    }
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(mut vc) = v.get_opt(name).await? {
        for w in vc.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle = Some(ByteString(ca_bundle.to_vec()));
        }
        vc.metadata.managed_fields = None;
        v.replace(name, &Default::default(), &vc).await?;
    }
    Ok(())
}

/// Removes both configurations (local runs, on shutdown), so a stopped
/// operator does not leave the API server calling a dead URL.
pub async fn remove(client: &Client, name: &str) {
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = m.delete(name, &Default::default()).await;
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let _ = v.delete(name, &Default::default()).await;
}

/// The webhook configurations as installed by `manifests/` (Service
/// endpoint in `writ-system`, empty `caBundle`: the operator patches it).
pub fn manifests_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let endpoint = Endpoint::Service { namespace: "writ-system".into(), name: "writ-webhook".into() };
    let mut m =
        serde_json::to_value(mutating(crate::api::names::WEBHOOK_CONFIG_NAME, &endpoint, &[])).unwrap_or_default();
    m["apiVersion"] = "admissionregistration.k8s.io/v1".into();
    m["kind"] = "MutatingWebhookConfiguration".into();
    let mut v =
        serde_json::to_value(validating(crate::api::names::WEBHOOK_CONFIG_NAME, &endpoint, &[])).unwrap_or_default();
    v["apiVersion"] = "admissionregistration.k8s.io/v1".into();
    v["kind"] = "ValidatingWebhookConfiguration".into();
    for doc in [&mut m, &mut v] {
        for w in doc["webhooks"].as_array_mut().into_iter().flatten() {
            if let Some(cc) = w["clientConfig"].as_object_mut() {
                cc.remove("caBundle");
            }
        }
    }
    Ok(format!(
        "# Generated by `writ webhooks` (make manifests); the operator patches caBundle at start.\n---\n{}---\n{}",
        crate::api::to_yaml(&m)?,
        crate::api::to_yaml(&v)?
    ))
}

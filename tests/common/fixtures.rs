//! The example scenario, set up in a test namespace.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{api::Api, Client};
use writ::api::{CapabilityGrant, GrantPhase};

use super::{agent_pod, apply_as, create_pod, eventually, repo, service_account, wait_for_credential, Cluster};

/// Applies `examples/00-02` (service accounts, identities, policy) as the admin.
pub async fn example_setup(c: &Cluster, client: &Client, ns: &str) {
    for sa in ["planner", "release-bot", "auditor"] {
        service_account(client, ns, sa).await;
    }
    for f in ["01-identities.yaml", "02-delegation-policy.yaml"] {
        let text = std::fs::read_to_string(repo().join("examples").join(f)).expect("example");
        let (ok, out) = apply_as(c, None, ns, &text);
        assert!(ok, "applying {f}: {out}");
    }
}

/// Starts an agent pod and plays the kubelet (Running); waits for its credential.
pub async fn running_agent_pod(client: &Client, ns: &str, name: &str, agent: &str) -> Pod {
    let pod = create_pod(client, ns, &agent_pod(name, agent, agent)).await.expect("agent pod admitted");
    super::set_pod_phase(client, ns, name, "Running").await;
    wait_for_credential(client, ns, &pod).await;
    pod
}

/// A grant manifest.
pub fn grant_yaml(name: &str, agent: &str, caps: &[(&str, &str)], ttl: &str, parent: Option<&str>) -> String {
    let caps: String = caps.iter().map(|(a, r)| format!("    - {{action: \"{a}\", resource: \"{r}\"}}\n")).collect();
    let parent = parent.map(|p| format!("  parent: {p}\n")).unwrap_or_default();
    format!(
        "apiVersion: writ.dev/v1alpha1\nkind: CapabilityGrant\nmetadata: {{name: {name}}}\nspec:\n  agent: {agent}\n  task: {{id: T-1, intent: test}}\n  capabilities:\n{caps}  audiences: [deploy-api]\n  ttl: {ttl}\n{parent}"
    )
}

/// Waits until a grant reaches `phase`.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: GrantPhase,
    timeout: Duration,
) -> CapabilityGrant {
    let api: Api<CapabilityGrant> = Api::namespaced(client.clone(), ns);
    eventually(timeout, &format!("grant {name} to be {phase}"), || async {
        let g = api.get(name).await.ok()?;
        (g.status.as_ref().map(|s| s.phase) == Some(phase)).then_some(g)
    })
    .await
}

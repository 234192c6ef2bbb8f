//! The kill switch on the real API server: `writ suspend` ends every grant of
//! an agent (and the grants delegated from them), revokes its pods'
//! certificates and refuses new pods and grants; `writ resume` lets new ones
//! in and brings nothing old back.

mod common;

use std::{process::Command, time::Duration};

use common::*;
use kube::{api::Api, ResourceExt};
use writ::api::{AgentIdentity, CapabilityGrant, GrantPhase};

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");

fn writ(c: &Cluster, user: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(args)
        .env("KUBECONFIG", c.user_kubeconfig(user))
        .output()
        .expect("running writ")
}

fn phase(g: &CapabilityGrant) -> GrantPhase {
    g.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

#[tokio::test]
async fn suspending_an_agent_ends_its_grants_and_credentials_and_resuming_brings_nothing_old_back() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "suspend").await;
    example_setup(&c, &client, &ns.name).await;
    let planner_pod = running_agent_pod(&client, &ns.name, "planner-0", "planner").await;
    let bot = running_agent_pod(&client, &ns.name, "bot-0", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), &ns.name, &grant_yaml("plan", "planner", &[WEB], "20m", None));
    assert!(ok, "{out}");
    wait_phase(&client, &ns.name, "plan", GrantPhase::Active, Duration::from_secs(15)).await;
    let planner = service_account_client(&c, &ns.name, "planner").await;
    let child: CapabilityGrant =
        serde_saphyr::from_str(&grant_yaml("exec", "release-bot", &[WEB], "10m", Some("plan"))).expect("yaml");
    Api::<CapabilityGrant>::namespaced(planner.clone(), &ns.name)
        .create(&Default::default(), &child)
        .await
        .expect("delegated grant admitted");
    wait_phase(&client, &ns.name, "exec", GrantPhase::Active, Duration::from_secs(15)).await;
    wait_for_token(&client, &ns.name, &bot, "exec").await;
    let before = wait_for_credential(&client, &ns.name, &planner_pod).await;
    let serial = writ::pki::cert::CertificateInfo::from_pem(&before["tls.crt"]).expect("cert").serial_hex;

    // The incident: the planner is suspended.
    let out = writ(&c, "dave", &["suspend", "planner", "-n", &ns.name, "--reason", "INC-42: prompt injection"]);
    assert!(out.status.success(), "{}", text(&out));
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), &ns.name);
    for name in ["plan", "exec"] {
        let g = eventually(Duration::from_secs(10), &format!("grant {name} ended"), || async {
            grants.get(name).await.ok().filter(|g| phase(g).is_terminal())
        })
        .await;
        assert_eq!(phase(&g), GrantPhase::Revoked, "{name}");
    }
    let plan = grants.get("plan").await.expect("plan");
    let why = plan.status.and_then(|s| s.reason).unwrap_or_default();
    assert!(why.starts_with("agent-suspended:"), "{why}");
    // Its pod's certificate is revoked and not re-issued; the delegated grant's token is gone.
    eventually(Duration::from_secs(10), "the planner's certificate revoked", || async {
        let (_, body) = op.https_get("/revocations").await;
        body.contains(&serial).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the delegated grant's token removed", || async {
        token_in(&client, &ns.name, &bot, "exec").await.is_none().then_some(())
    })
    .await;
    // Who did it, when and why are on the identity.
    let ids: Api<AgentIdentity> = Api::namespaced(client.clone(), &ns.name);
    let id = ids.get("planner").await.expect("identity");
    assert!(id.spec.suspended);
    assert_eq!(id.annotations().get("writ.dev/suspended-by").map(String::as_str), Some("dave"));
    assert!(id.annotations().contains_key("writ.dev/suspended-at"));
    assert_eq!(id.annotations().get("writ.dev/suspend-reason").map(String::as_str), Some("INC-42: prompt injection"));
    // New pods and grants for it are refused.
    let refused = create_pod(&client, &ns.name, &agent_pod("planner-1", "planner", "planner")).await;
    let err = refused.expect_err("a new pod claimed a suspended agent");
    assert!(err.to_string().contains("agent-suspended"), "{err}");
    let (ok, out) = apply_as(&c, Some("alice"), &ns.name, &grant_yaml("plan2", "planner", &[WEB], "20m", None));
    assert!(!ok && out.contains("agent-suspended"), "{out}");
    // A forged stamp does not change who suspended it.
    let out = c.kubectl_as(
        "mallory",
        &["annotate", "agentidentity", "planner", "-n", &ns.name, "--overwrite", "writ.dev/suspended-by=someone-else"],
    );
    let _ = text(&out);
    let id = ids.get("planner").await.expect("identity");
    assert_eq!(id.annotations().get("writ.dev/suspended-by").map(String::as_str), Some("dave"));

    // Resumed: new pods and grants are admitted, nothing old comes back.
    let out = writ(&c, "dave", &["resume", "planner", "-n", &ns.name]);
    assert!(out.status.success(), "{}", text(&out));
    let id = ids.get("planner").await.expect("identity");
    assert!(!id.spec.suspended && !id.annotations().contains_key("writ.dev/suspended-by"));
    let fresh = running_agent_pod(&client, &ns.name, "planner-2", "planner").await;
    let (ok, out) = apply_as(&c, Some("alice"), &ns.name, &grant_yaml("plan3", "planner", &[WEB], "20m", None));
    assert!(ok, "{out}");
    wait_phase(&client, &ns.name, "plan3", GrantPhase::Active, Duration::from_secs(15)).await;
    wait_for_token(&client, &ns.name, &fresh, "plan3").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["plan", "exec"] {
        assert_eq!(phase(&grants.get(name).await.expect("grant")), GrantPhase::Revoked, "{name} came back");
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let held = secret_data(&secrets.get(&credential_secret_name(&planner_pod)).await.expect("secret"));
    assert!(!held.contains_key("tls.key"), "the suspended pod's key came back");
    ns.cleanup().await;
}

#[tokio::test]
async fn an_access_review_is_recorded_as_the_caller_never_by_the_agent_and_clears_review_overdue() {
    with_namespace("review", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        service_account(client, n, "stale").await;
        let identity = r#"
apiVersion: writ.dev/v1alpha1
kind: AgentIdentity
metadata: {name: stale}
spec:
  class: Agent
  serviceAccountName: stale
  owner: me
  ceiling: [{action: "k8s:deployments.patch", resource: "k8s:staging/deployments/*"}]
  review: {every: 8s}
"#;
        let (ok, out) = apply_as(c, None, n, identity);
        assert!(ok, "{out}");
        let ids: Api<AgentIdentity> = Api::namespaced(client.clone(), n);
        let overdue = |want: bool| {
            let ids = ids.clone();
            async move {
                let st = ids.get("stale").await.ok()?.status?;
                let is = st.conditions.iter().any(|c| c.type_ == "ReviewOverdue" && c.status == "True");
                (is == want).then_some(st)
            }
        };
        eventually(Duration::from_secs(25), "ReviewOverdue", || overdue(true)).await;
        // Writing the stamps by hand records nothing.
        let out = c.kubectl_as(
            "mallory",
            &[
                "annotate",
                "agentidentity",
                "stale",
                "-n",
                n,
                "writ.dev/reviewed-by=mallory",
                "writ.dev/reviewed-at=2030-01-01T00:00:00Z",
            ],
        );
        let _ = text(&out);
        let id = ids.get("stale").await.expect("identity");
        assert!(!id.annotations().contains_key("writ.dev/reviewed-by"), "{:?}", id.annotations());
        // The agent cannot review itself.
        let agent = service_account_client(c, n, "stale").await;
        let request = serde_json::json!({"metadata": {"annotations": {"writ.dev/review-requested": "now"}}});
        let refused = Api::<AgentIdentity>::namespaced(agent, n)
            .patch("stale", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(request))
            .await
            .expect_err("the agent reviewed itself");
        assert!(refused.to_string().contains("self-review"), "{refused}");
        // A person records it; the review clock restarts.
        let out = writ(c, "alice", &["review", "stale", "-n", n, "--note", "quarterly check"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("reviewed by alice"), "{}", text(&out));
        let st = eventually(Duration::from_secs(6), "ReviewOverdue cleared", || overdue(false)).await;
        assert_eq!(st.last_reviewed_by.as_deref(), Some("alice"));
        let id = ids.get("stale").await.expect("identity");
        assert_eq!(id.annotations().get("writ.dev/review-note").map(String::as_str), Some("quarterly check"));
        assert!(id.annotations().contains_key("writ.dev/review-seal"));
        assert!(!id.annotations().contains_key("writ.dev/review-requested"));
    })
    .await;
}

//! Admission on the real API server, acting as different users: every
//! rejection class, the authenticated stamps, and the approval flow.

mod common;

use std::time::Duration;

use common::*;
use kube::api::{Api, Patch, PatchParams};
use writ::api::{CapabilityGrant, GrantPhase};

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");

#[tokio::test]
async fn over_broad_or_unauthorised_grants_are_rejected_with_the_rule() {
    with_namespace("reject", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        example_setup(c, client, n).await;

        // Legitimate: admitted.
        s.accepts(Some("alice"), &grant_yaml("ok", "release-bot", &[WEB], "15m", None));
        // Wildcards in a grant.
        s.rejects(
            Some("alice"),
            &grant_yaml("w1", "release-bot", &[("k8s:deployments.*", "k8s:staging/deployments/web")], "5m", None),
            &["spec.capabilities[0].action", "wildcard"],
        );
        s.rejects(
            Some("alice"),
            &grant_yaml("w2", "release-bot", &[("k8s:deployments.get", "k8s:staging/deployments/*")], "5m", None),
            &["spec.capabilities[0].resource", "wildcard"],
        );
        // Non-canonical resources.
        s.rejects(
            Some("alice"),
            &grant_yaml("w3", "release-bot", &[("k8s:deployments.get", "k8s:staging/../prod/web")], "5m", None),
            &["spec.capabilities[0].resource"],
        );
        s.rejects(
            Some("alice"),
            &grant_yaml("w4", "release-bot", &[("k8s:deployments.get", "k8s:staging/%2e%2e/web")], "5m", None),
            &["spec.capabilities[0].resource"],
        );
        // Outside the agent's ceiling (also outside the policy).
        s.rejects(
            Some("alice"),
            &grant_yaml("c1", "release-bot", &[("k8s:deployments.get", "k8s:prod/deployments/web")], "5m", None),
            &["outside-ceiling"],
        );
        // No policy lets mallory delegate.
        s.rejects(
            Some("mallory"),
            &grant_yaml("p1", "release-bot", &[WEB], "5m", None),
            &["no-delegation-policy", "mallory"],
        );
        // TTL above the policy's maxTTL (30m) and above the operator's hard maximum (1h).
        s.rejects(Some("alice"), &grant_yaml("t1", "release-bot", &[WEB], "45m", None), &["spec.ttl", "30m"]);
        s.rejects(
            Some("alice"),
            &grant_yaml("t2", "release-bot", &[WEB], "2h", None),
            &["spec.ttl", "ttl-above-operator-max"],
        );
        // Unknown agent.
        s.rejects(Some("alice"), &grant_yaml("a1", "nobody", &[WEB], "5m", None), &["spec.agent"]);
        // A delegated grant whose parent does not exist / is itself.
        s.rejects(Some("alice"), &grant_yaml("d1", "release-bot", &[WEB], "5m", Some("missing")), &["spec.parent"]);
        s.rejects(Some("alice"), &grant_yaml("d2", "release-bot", &[WEB], "5m", Some("d2")), &["spec.parent"]);
    })
    .await;
}

#[tokio::test]
async fn delegation_may_only_narrow_and_stays_within_depth() {
    with_namespace("narrow", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        example_setup(c, client, n).await;
        s.accepts(Some("alice"), &grant_yaml("plan", "planner", &[WEB], "10m", None));
        wait_phase(client, n, "plan", GrantPhase::Active, Duration::from_secs(15)).await;
        let planner = service_account_client(c, n, "planner").await;
        let as_planner = Api::<CapabilityGrant>::namespaced(planner, n);
        let create = |y: String| {
            let api = as_planner.clone();
            async move {
                let g: CapabilityGrant = serde_saphyr::from_str(&y).expect("yaml");
                api.create(&Default::default(), &g).await
            }
        };
        // Not a subset of the parent.
        let err = create(grant_yaml(
            "wider",
            "release-bot",
            &[("k8s:deployments.get", "k8s:staging/deployments/web")],
            "5m",
            Some("plan"),
        ))
        .await
        .expect_err("wider than parent");
        assert!(err.to_string().contains("not-subset-of-parent"), "{err}");
        // Outlives the parent (10m).
        let err = create(grant_yaml("longer", "release-bot", &[WEB], "20m", Some("plan")))
            .await
            .expect_err("outlives parent");
        assert!(err.to_string().contains("outlives-parent"), "{err}");
        // Only the agent holding the parent may delegate from it.
        let (ok, out) = apply_as(c, Some("alice"), n, &grant_yaml("stolen", "release-bot", &[WEB], "5m", Some("plan")));
        assert!(!ok && out.contains("not-parent-holder"), "{out}");
        // A proper sub-grant is admitted.
        create(grant_yaml("sub", "release-bot", &[WEB], "5m", Some("plan")))
            .await
            .expect("narrower sub-grant admitted");
        wait_phase(client, n, "sub", GrantPhase::Active, Duration::from_secs(15)).await;
        // A policy lets release-bot hand work on to a canary bot, but only
        // within depth 2: plan (1) -> sub (2) -> deeper (3) is one step too far.
        service_account(client, n, "canary-bot").await;
        s.accepts(None, SHALLOW);
        let bot = service_account_client(c, n, "release-bot").await;
        let g: CapabilityGrant =
            serde_saphyr::from_str(&grant_yaml("deeper", "canary-bot", &[WEB], "2m", Some("sub"))).expect("yaml");
        let api = Api::<CapabilityGrant>::namespaced(bot, n);
        // The webhook reads identities and policies from its cache: give it a moment.
        let err = eventually(Duration::from_secs(10), "a max-depth refusal", || {
            let (api, g) = (api.clone(), g.clone());
            async move {
                match api.create(&Default::default(), &g).await {
                    Err(e) if e.to_string().contains("max-depth") => Some(e),
                    _ => None,
                }
            }
        })
        .await;
        assert!(err.to_string().contains("depth 3") && err.to_string().contains("shallow"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn stamps_come_from_the_authenticated_user_and_approval_needs_another_approver() {
    with_namespace("approve", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        example_setup(c, client, n).await;
        // A spoofed requested-by annotation is overwritten with the real user.
        let spoofed = grant_yaml("spoof", "release-bot", &[WEB], "5m", None).replace(
            "metadata: {name: spoof}",
            "metadata: {name: spoof, annotations: {writ.dev/requested-by: bob, writ.dev/approved-by: bob}}",
        );
        s.accepts(Some("alice"), &spoofed);
        let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), n);
        let g = grants.get("spoof").await.expect("grant");
        let ann = g.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get("writ.dev/requested-by").map(String::as_str), Some("alice"));
        assert!(!ann.contains_key("writ.dev/approved-by"), "client-written approved-by survived: {ann:?}");
        // The spec cannot change after admission (only completion and approval).
        let out = c.kubectl_as(
            "alice",
            &["patch", "-n", n, "capabilitygrant", "spoof", "--type=merge", "-p", r#"{"spec":{"ttl":"30m"}}"#],
        );
        assert!(!out.status.success() && text(&out).contains("immutable"), "{}", text(&out));
        // The stamp cannot be rewritten either.
        let out = c.kubectl_as(
            "alice",
            &["annotate", "--overwrite", "-n", n, "capabilitygrant", "spoof", "writ.dev/requested-by=carol"],
        );
        let g = grants.get("spoof").await.expect("grant");
        assert_eq!(
            g.metadata.annotations.unwrap_or_default().get("writ.dev/requested-by").map(String::as_str),
            Some("alice"),
            "{}",
            text(&out)
        );

        // A sensitive grant waits for approval.
        let delete = ("k8s:deployments.delete", "k8s:staging/deployments/web-canary");
        s.accepts(Some("alice"), &grant_yaml("cleanup", "release-bot", &[delete], "5m", None));
        wait_phase(client, n, "cleanup", GrantPhase::AwaitingApproval, Duration::from_secs(15)).await;
        let approve = |user: &str| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_writ"))
                .args(["approve", "cleanup", "-n", n])
                .env("KUBECONFIG", c.user_kubeconfig(user))
                .output()
                .expect("writ approve");
            (out.status.success(), text(&out))
        };
        let (ok, out) = approve("alice");
        assert!(!ok && out.contains("self-approval"), "self-approval: {out}");
        let (ok, out) = approve("mallory");
        assert!(!ok && out.contains("not-an-approver"), "non-approver: {out}");
        let (ok, out) = approve("bob");
        assert!(ok, "bob is in sre-oncall: {out}");
        let g = wait_phase(client, n, "cleanup", GrantPhase::Active, Duration::from_secs(15)).await;
        assert_eq!(g.status.expect("st").approved_by.as_deref(), Some("bob"));
        // writ deny ends a grant as Denied.
        s.accepts(Some("alice"), &grant_yaml("cleanup2", "release-bot", &[delete], "5m", None));
        wait_phase(client, n, "cleanup2", GrantPhase::AwaitingApproval, Duration::from_secs(15)).await;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_writ"))
            .args(["deny", "cleanup2", "-n", n, "--reason", "not today"])
            .env("KUBECONFIG", c.user_kubeconfig("carol"))
            .output()
            .expect("writ deny");
        assert!(out.status.success(), "{}", text(&out));
        wait_phase(client, n, "cleanup2", GrantPhase::Denied, Duration::from_secs(15)).await;
        let _ = grants
            .patch("cleanup", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"completed": true}})))
            .await;
    })
    .await;
}

#[tokio::test]
async fn malformed_identities_and_policies_and_overdue_agents_are_refused() {
    with_namespace("wellformed", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        example_setup(c, client, n).await;
        let bad_identity = r#"
apiVersion: writ.dev/v1alpha1
kind: AgentIdentity
metadata: {name: sloppy}
spec:
  class: Agent
  serviceAccountName: sloppy
  owner: me
  ceiling: [{action: "k8s:deployments.get", resource: "k8s:staging/../prod/*"}]
"#;
        let (ok, out) = apply_as(c, None, n, bad_identity);
        assert!(!ok && out.contains("spec.ceiling[0].resource"), "{out}");
        let bad_policy = r#"
apiVersion: writ.dev/v1alpha1
kind: DelegationPolicy
metadata: {name: sloppy}
spec:
  delegators: [{user: alice, group: everyone}]
  delegates: [{agent: release-bot}]
  capabilities: [{action: "k8s:deployments.get", resource: "k8s:staging/deployments/*"}]
  maxTTL: 30m
"#;
        let (ok, out) = apply_as(c, None, n, bad_policy);
        assert!(!ok && out.contains("spec.delegators[0]"), "{out}");
        // An agent whose access review is overdue gets no new grant.
        let overdue = r#"
apiVersion: writ.dev/v1alpha1
kind: AgentIdentity
metadata: {name: stale}
spec:
  class: Agent
  serviceAccountName: stale
  owner: me
  ceiling: [{action: "k8s:deployments.patch", resource: "k8s:staging/deployments/*"}]
  review: {every: 1s}
"#;
        s.accepts(None, overdue);
        let ids: Api<writ::api::AgentIdentity> = Api::namespaced(client.clone(), n);
        eventually(Duration::from_secs(15), "ReviewOverdue", || async {
            let st = ids.get("stale").await.ok()?.status?;
            st.conditions.iter().any(|c| c.type_ == "ReviewOverdue" && c.status == "True").then_some(())
        })
        .await;
        let policy = r#"
apiVersion: writ.dev/v1alpha1
kind: DelegationPolicy
metadata: {name: stale-flow}
spec:
  delegators: [{group: release-managers}]
  delegates: [{agent: stale}]
  capabilities: [{action: "k8s:deployments.patch", resource: "k8s:staging/deployments/*"}]
  maxTTL: 30m
"#;
        s.accepts(None, policy);
        s.rejects(Some("alice"), &grant_yaml("late", "stale", &[WEB], "5m", None), &["review-overdue"]);
    })
    .await;
}

/// A canary executor and a policy that lets release-bot delegate to it, at
/// most two levels deep.
const SHALLOW: &str = r#"apiVersion: writ.dev/v1alpha1
kind: AgentIdentity
metadata: {name: canary-bot}
spec:
  class: Agent
  serviceAccountName: canary-bot
  owner: team-platform
  ceiling:
    - {action: "k8s:deployments.get", resource: "k8s:staging/deployments/*"}
---
apiVersion: writ.dev/v1alpha1
kind: DelegationPolicy
metadata: {name: shallow}
spec:
  delegators: [{agent: release-bot}]
  delegates: [{agent: canary-bot}]
  capabilities:
    - {action: "k8s:deployments.get", resource: "k8s:staging/deployments/*"}
  maxTTL: 10m
  maxDepth: 2
"#;

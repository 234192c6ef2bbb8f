//! The trust boundary on the real API server, tried as a tenant would: state
//! tenants can write (a grant's status and annotations, objects created with
//! the webhooks skipped) never makes Writ issue, extend or revive anything;
//! the controller re-checks every admission rule before and while it issues.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams},
    Client, ResourceExt,
};
use serde_json::json;
use writ::api::{CapabilityGrant, GrantPhase};

const PATCH: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");
const DELETE: (&str, &str) = ("k8s:deployments.delete", "k8s:staging/deployments/web");

/// Lets `mallory` write grant status in `ns`: what any Role granting the
/// `writ.dev` resources `"*"` gives.
async fn grant_status_writer(client: &Client, ns: &str) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "writ-everything"},
        "rules": [{"apiGroups": ["writ.dev"], "resources": ["*"], "verbs": ["*"]}]
    }))
    .expect("role");
    roles
        .patch("writ-everything", &PatchParams::apply("writ-tests").force(), &Patch::Apply(&role))
        .await
        .expect("role");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "mallory-writ-everything"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writ-everything"},
        "subjects": [{"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}]
    }))
    .expect("binding");
    bindings
        .patch("mallory-writ-everything", &PatchParams::apply("writ-tests").force(), &Patch::Apply(&binding))
        .await
        .expect("binding");
}

/// Labels a namespace so Writ's webhooks skip it (`writ.dev/webhooks: disabled`).
async fn skip_webhooks(client: &Client, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label = json!({"metadata": {"labels": {"writ.dev/webhooks": "disabled"}}});
    namespaces.patch(ns, &PatchParams::default(), &Patch::Merge(label)).await.expect("label");
    // The API server's webhook matcher reads namespace labels from its informer.
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn grant(client: &Client, ns: &str, name: &str) -> CapabilityGrant {
    Api::<CapabilityGrant>::namespaced(client.clone(), ns).get(name).await.expect("grant")
}

fn phase(g: &CapabilityGrant) -> GrantPhase {
    g.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn reason(g: &CapabilityGrant) -> String {
    g.status.as_ref().and_then(|s| s.reason.clone()).unwrap_or_default()
}

/// Waits for a grant to reach a terminal phase and returns it.
async fn wait_ended(client: &Client, ns: &str, name: &str, timeout: Duration) -> CapabilityGrant {
    let api: Api<CapabilityGrant> = Api::namespaced(client.clone(), ns);
    eventually(timeout, &format!("grant {name} ended"), || async {
        api.get(name).await.ok().filter(|g| phase(g).is_terminal())
    })
    .await
}

async fn revoked_jtis(op: &Operator) -> String {
    let (code, body) = op.https_get("/revocations").await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test]
async fn a_rewritten_status_neither_extends_nor_revives_a_grant() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "status").await;
    example_setup(&c, &client, &ns.name).await;
    grant_status_writer(&client, &ns.name).await;
    let pod = running_agent_pod(&client, &ns.name, "bot-s", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), &ns.name, &grant_yaml("short", "release-bot", &[PATCH], "20s", None));
    assert!(ok, "{out}");
    let active = wait_phase(&client, &ns.name, "short", GrantPhase::Active, Duration::from_secs(15)).await;
    let sealed = active.status.clone().expect("status");
    assert!(sealed.seal.is_some(), "the controller seals the status it writes");
    let expires = sealed.expires_at.as_ref().expect("expiresAt").0.as_second();
    let token = wait_for_token(&client, &ns.name, &pod, "short").await;
    let (_, claims) = writ::pki::token::decode_unverified(&token).expect("token");
    assert!(claims.exp <= expires);

    // A tenant with status rights moves the expiry 23 hours ahead: admission refuses it.
    let mallory = c.user_client("mallory").await;
    let as_mallory: Api<CapabilityGrant> = Api::namespaced(mallory, &ns.name);
    let later = jiff::Timestamp::from_second(expires + 23 * 3600).expect("ts").to_string();
    let extend = Patch::Merge(json!({"status": {"expiresAt": later}}));
    let refused = as_mallory.patch_status("short", &PatchParams::default(), &extend).await.expect_err("refused");
    assert!(refused.to_string().contains("foreign-status"), "{refused}");
    // With the webhooks skipped (a namespace admin can label the namespace), it is written ...
    skip_webhooks(&client, &ns.name).await;
    as_mallory
        .patch_status("short", &PatchParams::default(), &extend)
        .await
        .expect("mallory may write status (RBAC allows it): the controller must not believe it");
    // The controller repairs it, with an Event, and the grant ends at its original expiry.
    let repaired = eventually(Duration::from_secs(10), "the tampered status repaired", || async {
        let g = grant(&client, &ns.name, "short").await;
        let st = g.status.clone()?;
        (st.expires_at.as_ref()?.0.as_second() <= expires || st.phase.is_terminal()).then_some(g)
    })
    .await;
    assert!(phase(&repaired) == GrantPhase::Active || phase(&repaired).is_terminal());
    let events = c.kubectl(&["get", "events", "-n", &ns.name, "--field-selector", "involvedObject.name=short"]);
    let events = text(&events);
    let ended = wait_ended(&client, &ns.name, "short", Duration::from_secs(40)).await;
    assert_eq!(phase(&ended), GrantPhase::Expired, "{}", reason(&ended));
    let now = writ::pki::now_unix();
    assert!(now >= expires && now <= expires + 15, "ended at its original expiry ({expires}), not later ({now})");
    assert!(
        events.contains("StatusRepaired")
            || text(&c.kubectl(&["get", "events", "-n", &ns.name])).contains("StatusRepaired")
    );
    // No token outlives the original expiry, and the one issued is revoked.
    if let Some(t) = token_in(&client, &ns.name, &pod, "short").await {
        let (_, c2) = writ::pki::token::decode_unverified(&t).expect("token");
        assert!(c2.exp <= expires, "a token was re-minted past the original expiry");
    }
    let revoked = eventually(Duration::from_secs(10), "the token published as revoked", || async {
        let body = revoked_jtis(op).await;
        body.contains(&claims.jti).then_some(body)
    })
    .await;
    assert!(revoked.contains(&format!("grant:{}", active.uid().expect("uid"))), "the grant's end is recorded");

    // Reviving it: an unsealed rewrite, then a replay of the sealed Active status.
    for (what, status) in [
        ("an unsealed Active status", json!({"phase": "Active", "expiresAt": later, "seal": null})),
        ("the sealed status it had while Active", serde_json::to_value(&sealed).expect("json")),
    ] {
        as_mallory
            .patch_status("short", &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await
            .expect("status write");
        let g = eventually(Duration::from_secs(10), &format!("{what} undone"), || async {
            let g = grant(&client, &ns.name, "short").await;
            phase(&g).is_terminal().then_some(g)
        })
        .await;
        assert!(phase(&g).is_terminal(), "{what}: {}", reason(&g));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let g = grant(&client, &ns.name, "short").await;
        assert!(phase(&g).is_terminal(), "{what} revived the grant: {}", reason(&g));
        assert!(token_in(&client, &ns.name, &pod, "short").await.is_none(), "{what}: a token was issued again");
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn grants_that_skipped_admission_or_carry_copied_stamps_never_become_active() {
    with_namespace("unsealed", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        example_setup(c, client, n).await;
        let pod = running_agent_pod(client, n, "bot-u", "release-bot").await;
        // A sealed grant to copy from.
        let (ok, out) = apply_as(c, Some("alice"), n, &grant_yaml("real", "release-bot", &[PATCH], "15m", None));
        assert!(ok, "{out}");
        let real = wait_phase(client, n, "real", GrantPhase::Active, Duration::from_secs(15)).await;
        let stamps = real.annotations().clone();
        assert!(stamps.contains_key("writ.dev/admission-seal"), "{stamps:?}");

        // Skip the webhooks for this namespace, as a namespace admin could.
        skip_webhooks(client, n).await;
        let forged_stamps =
            json!({"writ.dev/requested-by": "alice", "writ.dev/requested-by-groups": "release-managers"});
        let copied_stamps = serde_json::to_value(&stamps).expect("json");
        for (name, annotations, caps) in [
            ("forged", forged_stamps.clone(), vec![PATCH]),
            // Outside the ceiling, too: admission would have refused it.
            ("outside", forged_stamps, vec![("k8s:secrets.get", "k8s:prod/secrets/db")]),
            // A real seal copied onto another grant.
            ("copied", copied_stamps, vec![PATCH]),
        ] {
            let caps: Vec<serde_json::Value> = caps.iter().map(|(a, r)| json!({"action": a, "resource": r})).collect();
            let g: CapabilityGrant = serde_json::from_value(json!({
                "apiVersion": "writ.dev/v1alpha1", "kind": "CapabilityGrant",
                "metadata": {"name": name, "annotations": annotations, "finalizers": ["writ.dev/revoke"]},
                "spec": {"agent": "release-bot", "task": {"id": "T-1"}, "capabilities": caps,
                         "audiences": ["deploy-api"], "ttl": "15m"}
            }))
            .expect("grant");
            Api::<CapabilityGrant>::namespaced(client.clone(), n)
                .create(&Default::default(), &g)
                .await
                .unwrap_or_else(|e| panic!("creating {name} with the webhooks skipped: {e}"));
        }
        for name in ["forged", "outside", "copied"] {
            let g = wait_ended(client, n, name, Duration::from_secs(15)).await;
            assert_eq!(phase(&g), GrantPhase::Denied, "{name}: {}", reason(&g));
            assert!(reason(&g).starts_with("not-admitted:"), "{name}: {}", reason(&g));
            assert!(g.status.as_ref().is_some_and(|s| s.tokens.is_empty() && s.issued_at.is_none()), "{name}");
            assert!(token_in(client, n, &pod, name).await.is_none(), "{name}: a token was issued");
        }
    })
    .await;
}

#[tokio::test]
async fn a_grant_bound_to_another_agents_pod_is_refused_and_a_recreated_pod_gets_nothing() {
    with_namespace("boundpod", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        example_setup(c, client, n).await;
        let _planner = running_agent_pod(client, n, "plan-0", "planner").await;
        let bot = running_agent_pod(client, n, "bot-0", "release-bot").await;
        let bound = |name: &str, pod: &str| {
            format!(
                "apiVersion: writ.dev/v1alpha1\nkind: CapabilityGrant\nmetadata: {{name: {name}}}\nspec:\n  agent: release-bot\n  \
                 task: {{id: T-1}}\n  capabilities: [{{action: \"{}\", resource: \"{}\"}}]\n  audiences: [deploy-api]\n  \
                 ttl: 15m\n  pod: {pod}\n",
                PATCH.0, PATCH.1
            )
        };
        let (ok, out) = apply_as(c, Some("alice"), n, &bound("theirs", "plan-0"));
        assert!(!ok, "a grant bound to the planner's pod was admitted");
        assert!(out.contains("spec.pod") && out.contains("pod-not-of-agent"), "{out}");
        let (ok, out) = apply_as(c, Some("alice"), n, &bound("nosuch", "ghost-0"));
        assert!(!ok && out.contains("pod-not-of-agent"), "{out}");

        let (ok, out) = apply_as(c, Some("alice"), n, &bound("mine", "bot-0"));
        assert!(ok, "{out}");
        let g = wait_phase(client, n, "mine", GrantPhase::Active, Duration::from_secs(15)).await;
        assert_eq!(g.status.as_ref().and_then(|s| s.bound_pod_uid.clone()), bot.uid(), "bound to the pod's uid");
        wait_for_token(client, n, &bot, "mine").await;
        // The pod is deleted and another is created under the same name.
        let pods: Api<Pod> = Api::namespaced(client.clone(), n);
        pods.delete("bot-0", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.expect("delete");
        eventually(Duration::from_secs(20), "bot-0 gone", || async {
            pods.get_opt("bot-0").await.ok()?.is_none().then_some(())
        })
        .await;
        let again = running_agent_pod(client, n, "bot-0", "release-bot").await;
        assert_ne!(again.uid(), bot.uid());
        let g = wait_ended(client, n, "mine", Duration::from_secs(15)).await;
        assert_eq!(phase(&g), GrantPhase::Completed, "{}", reason(&g));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(token_in(client, n, &again, "mine").await.is_none(), "the re-created pod got the grant's token");
    })
    .await;
}

#[tokio::test]
async fn narrowing_a_ceiling_ends_the_grants_outside_it() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "narrow").await;
    example_setup(&c, &client, &ns.name).await;
    let pod = running_agent_pod(&client, &ns.name, "bot-n", "release-bot").await;
    let (ok, out) =
        apply_as(&c, Some("alice"), &ns.name, &grant_yaml("patching", "release-bot", &[PATCH], "15m", None));
    assert!(ok, "{out}");
    let (ok, out) =
        apply_as(&c, Some("alice"), &ns.name, &grant_yaml("deleting", "release-bot", &[DELETE], "15m", None));
    assert!(ok, "{out}");
    wait_phase(&client, &ns.name, "patching", GrantPhase::Active, Duration::from_secs(15)).await;
    wait_phase(&client, &ns.name, "deleting", GrantPhase::AwaitingApproval, Duration::from_secs(15)).await;
    let token = wait_for_token(&client, &ns.name, &pod, "patching").await;
    let (_, claims) = writ::pki::token::decode_unverified(&token).expect("token");

    // The agent may no longer patch or delete: only get.
    let narrowed = r#"
apiVersion: writ.dev/v1alpha1
kind: AgentIdentity
metadata: {name: release-bot}
spec:
  class: Agent
  serviceAccountName: release-bot
  owner: team-platform
  role: executor
  credential: {ttl: 1h, rotateBefore: 20m, keyAlgorithm: ECDSA-P256}
  ceiling:
    - {action: "k8s:deployments.get", resource: "k8s:staging/deployments/*"}
  review: {every: 90d}
"#;
    let file = std::env::temp_dir().join(format!("writ-narrow-{}.yaml", ns.name));
    std::fs::write(&file, narrowed).expect("write");
    let out = c.kubectl(&["apply", "-n", &ns.name, "-f", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));

    let patching = wait_ended(&client, &ns.name, "patching", Duration::from_secs(15)).await;
    assert_eq!(phase(&patching), GrantPhase::Revoked, "{}", reason(&patching));
    assert!(reason(&patching).starts_with("outside-ceiling:"), "{}", reason(&patching));
    let deleting = wait_ended(&client, &ns.name, "deleting", Duration::from_secs(15)).await;
    assert_eq!(phase(&deleting), GrantPhase::Denied, "{}", reason(&deleting));
    assert!(reason(&deleting).starts_with("outside-ceiling:"), "{}", reason(&deleting));
    eventually(Duration::from_secs(10), "the revoked token published", || async {
        revoked_jtis(op).await.contains(&claims.jti).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the token removed from the pod", || async {
        token_in(&client, &ns.name, &pod, "patching").await.is_none().then_some(())
    })
    .await;
    // An approval afterwards changes nothing.
    let out = c.kubectl_as(
        "bob",
        &[
            "patch",
            "capabilitygrant",
            "deleting",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"approval":{"decision":"Approved"}}}"#,
        ],
    );
    let _ = text(&out);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(phase(&grant(&client, &ns.name, "deleting").await), GrantPhase::Denied);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_control_character_in_free_text_is_refused() {
    with_namespace("intent", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        example_setup(c, client, n).await;
        let yaml = format!(
            "apiVersion: writ.dev/v1alpha1\nkind: CapabilityGrant\nmetadata: {{name: forged-line}}\nspec:\n  agent: release-bot\n  \
             task: {{id: T-1, intent: \"deploy\\nINFO audit: approval decision admitted approver=bob\"}}\n  \
             capabilities: [{{action: \"{}\", resource: \"{}\"}}]\n  audiences: [deploy-api]\n  ttl: 5m\n",
            PATCH.0, PATCH.1
        );
        let (ok, out) = apply_as(c, Some("alice"), n, &yaml);
        assert!(!ok, "a newline in the intent was admitted");
        assert!(out.contains("spec.task.intent") && out.contains("invalid-character"), "{out}");
    })
    .await;
}

#[tokio::test]
async fn a_forged_admission_review_writes_no_audit_line() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "forged").await;
    example_setup(&c, &client, &ns.name).await;
    let grant = |approval: serde_json::Value| {
        json!({"apiVersion": "writ.dev/v1alpha1", "kind": "CapabilityGrant",
               "metadata": {"name": "made-up-grant", "namespace": ns.name, "uid": "u-forged",
                            "annotations": {"writ.dev/requested-by": "alice"}},
               "spec": {"agent": "release-bot", "task": {"id": "T"}, "approval": approval,
                        "capabilities": [{"action": DELETE.0, "resource": DELETE.1}], "audiences": ["deploy-api"], "ttl": "5m"}})
    };
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "forged-1", "operation": "UPDATE", "name": "made-up-grant", "namespace": ns.name,
            "kind": {"group": "writ.dev", "version": "v1alpha1", "kind": "CapabilityGrant"},
            "resource": {"group": "writ.dev", "version": "v1alpha1", "resource": "capabilitygrants"},
            "userInfo": {"username": "bob", "groups": ["sre-oncall"]},
            "object": grant(json!({"decision": "Approved"})), "oldObject": grant(serde_json::Value::Null),
            "dryRun": false
        }
    });
    let body = review.to_string();
    let out = tokio::process::Command::new("curl")
        .args(["-sk", "-H", "Content-Type: application/json", "--data", &body])
        .arg(format!("{}/validate/capabilitygrants", op.url))
        .output()
        .await
        .expect("curl");
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(answer.contains("forged-1") || answer.is_empty() || answer.contains("401"), "{answer}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = op.log_text();
    let forged: Vec<&str> = log.lines().filter(|l| l.contains("made-up-grant") && l.contains("audit")).collect();
    assert!(forged.is_empty(), "a forged AdmissionReview wrote audit lines: {forged:?}");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_seal_key_rotation_keeps_admitted_grants_and_admits_new_ones() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "sealrot").await;
    example_setup(&c, &client, &ns.name).await;
    let pod = running_agent_pod(&client, &ns.name, "bot-r", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), &ns.name, &grant_yaml("before", "release-bot", &[PATCH], "15m", None));
    assert!(ok, "{out}");
    wait_phase(&client, &ns.name, "before", GrantPhase::Active, Duration::from_secs(15)).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["rotate", "seal-key", "--writ-namespace", &op.namespace])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("writ rotate");
    assert!(out.status.success() && text(&out).contains("rotated the seal key"), "{}", text(&out));
    // Admitted at once after the rotation, whichever replica's key sealed it.
    let (ok, out) = apply_as(&c, Some("alice"), &ns.name, &grant_yaml("after", "release-bot", &[PATCH], "15m", None));
    assert!(ok, "{out}");
    let after = wait_phase(&client, &ns.name, "after", GrantPhase::Active, Duration::from_secs(15)).await;
    assert!(after.annotations().contains_key("writ.dev/admission-seal"));
    wait_for_token(&client, &ns.name, &pod, "after").await;
    // The grant sealed with the previous key stays Active, its token in place.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = grant(&client, &ns.name, "before").await;
    assert_eq!(phase(&before), GrantPhase::Active, "{}", reason(&before));
    assert!(token_in(&client, &ns.name, &pod, "before").await.is_some());
    ns.cleanup().await;
}

//! Tenancy at Writ's endpoints, on the real API server: the per-namespace
//! quota of the revocation list, the aggregated tenant ClusterRoles of
//! `manifests/tenant-roles.yaml`, and introspection that asks who is asking.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use writ::{
    api::names::REVOCATIONS_KEY as KEY,
    api::{CapabilityGrant, GrantPhase},
    state::revocations::{read_persisted, RevocationError, RevocationStore, PARTS},
    verify::{RevokedCertificate, RevokedToken},
};

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");

fn certificates(from: usize, n: usize, expires_at: i64) -> Vec<RevokedCertificate> {
    (from..from + n).map(|i| RevokedCertificate { serial: format!("{i:032x}"), expires_at }).collect()
}

/// One namespace fills its share of the list (1% of it here, about 1,000
/// entries) and is refused, with nothing written; another namespace's
/// revocations still go through, and readers of the ConfigMaps (as
/// `writ verify` reads them) see every entry without needing a namespace.
#[tokio::test]
async fn a_namespace_at_its_revocation_quota_is_refused_and_other_namespaces_still_revoke() {
    let c = cluster();
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "quota").await;
    let now = writ::pki::now_unix();
    let store =
        std::sync::Arc::new(RevocationStore::load(&client, &ns.name).await.expect("load").with_namespace_quota(1));

    store.revoke("tenant-a", vec![], certificates(0, 900, now + 3_600), now).await.expect("within the quota");
    let before = read_persisted(&client, &ns.name).await.expect("read");
    let err = store
        .revoke("tenant-a", vec![], certificates(10_000, 200, now + 3_600), now)
        .await
        .expect_err("past the quota");
    assert!(matches!(err, RevocationError::QuotaExceeded { .. }), "{err}");
    let message = err.to_string();
    for needle in [
        "namespace tenant-a is over its revocation quota: 200 new entries",
        "(1% of the list's 8388608 bytes, set by --revocation-namespace-quota / WRIT_REVOCATION_NAMESPACE_QUOTA)",
        "its credentials stay issued",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    assert_eq!(read_persisted(&client, &ns.name).await.expect("read"), before, "nothing of it written");

    // Another namespace, alone and in the same moment as the refused tenant.
    let token = RevokedToken { jti: "tenant-b-token".into(), expires_at: now + 600 };
    store.revoke("tenant-b", vec![token.clone()], certificates(50_000, 3, now + 600), now).await.expect("tenant-b");
    let (a, b) = tokio::join!(
        store.revoke("tenant-a", vec![], certificates(20_000, 200, now + 3_600), now),
        store.revoke("tenant-c", vec![], certificates(60_000, 2, now + 600), now),
    );
    assert!(matches!(a, Err(RevocationError::QuotaExceeded { .. })), "{a:?}");
    b.expect("tenant-c");
    let persisted = read_persisted(&client, &ns.name).await.expect("read");
    assert_eq!(persisted.tokens, vec![token]);
    assert_eq!(persisted.certificates.len(), 905);
    assert!(store.is_token_revoked("tenant-b-token").await);

    // The namespaces are in the ConfigMaps (a restarted store counts them),
    // not in what is served.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let mut stored = String::new();
    for part in 0..PARTS {
        if let Some(cm) = cms.get_opt(&writ::state::revocations::part_name(part)).await.expect("get") {
            stored.push_str(&cm.data.expect("data")[KEY]);
        }
    }
    assert_eq!(stored.matches(r#""ns":"tenant-a""#).count(), 900);
    let restarted =
        std::sync::Arc::new(RevocationStore::load(&client, &ns.name).await.expect("reload").with_namespace_quota(1));
    let usage = restarted.usage(now).await;
    assert_eq!(usage.namespaces.first().map(|(n, _)| n.as_str()), Some("tenant-a"));
    let err = restarted.revoke("tenant-a", vec![], certificates(30_000, 200, now + 3_600), now).await;
    assert!(matches!(err, Err(RevocationError::QuotaExceeded { .. })), "the quota holds across a restart: {err:?}");
    let served = serde_json::to_string(&restarted.snapshot().await).expect("json");
    assert!(!served.contains(r#""ns""#) && !served.contains("tenant-a"), "{served}");
    ns.cleanup().await;
}

/// A client impersonating `user` (the admin may impersonate).
async fn impersonating(c: &Cluster, user: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&c.kubeconfig).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config");
    config.auth_info.impersonate = Some(user.into());
    kube::Client::try_from(config).expect("client")
}

fn can_i(c: &Cluster, user: &str, ns: &str, verb: &str, resource: &str, subresource: Option<&str>) -> bool {
    let mut args = vec!["auth", "can-i", verb, resource, "-n", ns];
    let as_user = format!("--as={user}");
    args.push(&as_user);
    let sub = subresource.map(|s| format!("--subresource={s}"));
    if let Some(s) = &sub {
        args.push(s);
    }
    let out = c.kubectl(&args);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// The shipped `writ-edit` and `writ-view` aggregate into `edit`/`admin` and
/// `view`: a user bound to `edit` in a namespace may create and delete grants
/// there but never write their status; one bound to `view` only reads.
#[tokio::test]
async fn tenant_roles_aggregate_into_edit_and_view_and_never_grant_status() {
    let c = cluster();
    let client = c.client().await;
    let roles = repo().join("manifests/tenant-roles.yaml");
    let text_of_roles = std::fs::read_to_string(&roles).expect("tenant-roles.yaml");
    let mut resources = Vec::new();
    for role in serde_saphyr::from_multiple::<serde_json::Value>(&text_of_roles).expect("yaml") {
        for rule in role["rules"].as_array().expect("rules") {
            let listed = rule["resources"].as_array().expect("resources");
            resources.extend(listed.iter().map(|r| r.as_str().expect("a resource").to_string()));
        }
    }
    assert!(resources.contains(&"capabilitygrants".to_string()), "{resources:?}");
    assert!(
        !resources.iter().any(|r| r.contains('/') || r.contains('*')),
        "no subresource, no wildcard: {resources:?}"
    );
    let out = c.kubectl(&["apply", "-f", roles.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out));
    let ns = TestNamespace::new(&client, "roles").await;
    let n = &ns.name;
    for (user, role) in [("tenant-editor", "edit"), ("tenant-viewer", "view"), ("tenant-admin", "admin")] {
        let out = c.kubectl(&[
            "-n",
            n,
            "create",
            "rolebinding",
            user,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let grants = "capabilitygrants.writ.dev";
    eventually(Duration::from_secs(30), "writ-edit to aggregate into edit and admin", || async {
        (can_i(&c, "tenant-editor", n, "create", grants, None) && can_i(&c, "tenant-admin", n, "create", grants, None))
            .then_some(())
    })
    .await;
    for user in ["tenant-editor", "tenant-admin"] {
        for verb in ["get", "list", "watch", "create", "update", "patch", "delete"] {
            assert!(can_i(&c, user, n, verb, grants, None), "{user} may {verb} grants");
        }
        for verb in ["update", "patch"] {
            assert!(!can_i(&c, user, n, verb, grants, Some("status")), "{user} may {verb} grant status");
        }
        assert!(can_i(&c, user, n, "list", "agentidentities.writ.dev", None), "{user} reads identities");
    }
    assert!(!can_i(&c, "tenant-editor", n, "create", "agentidentities.writ.dev", None), "edit does not set ceilings");
    assert!(!can_i(&c, "tenant-editor", n, "create", "delegationpolicies.writ.dev", None));
    eventually(Duration::from_secs(30), "writ-view to aggregate into view", || async {
        can_i(&c, "tenant-viewer", n, "list", grants, None).then_some(())
    })
    .await;
    assert!(!can_i(&c, "tenant-viewer", n, "create", grants, None), "view only reads");

    // And as actual requests: the status write is refused by RBAC, before
    // admission and whether or not the grant exists.
    let editor: Api<CapabilityGrant> = Api::namespaced(impersonating(&c, "tenant-editor").await, n);
    let tampered = serde_json::json!({"status": {"phase": "Active", "expiresAt": "2099-01-01T00:00:00Z"}});
    let err = editor
        .patch_status("any-grant", &PatchParams::default(), &Patch::Merge(&tampered))
        .await
        .expect_err("status is the operator's");
    assert!(matches!(&err, kube::Error::Api(e) if e.code == 403), "{err}");
    editor.list(&Default::default()).await.expect("the editor lists grants");
    let viewer: Api<CapabilityGrant> = Api::namespaced(impersonating(&c, "tenant-viewer").await, n);
    let grant: CapabilityGrant =
        serde_saphyr::from_str(&grant_yaml("g", "release-bot", &[WEB], "5m", None)).expect("grant");
    let err = viewer.create(&Default::default(), &grant).await.expect_err("view cannot create");
    assert!(matches!(&err, kube::Error::Api(e) if e.code == 403), "{err}");
    ns.cleanup().await;
}

/// `POST /introspect` asks who is asking: anonymous callers get 401 with a
/// challenge; an authenticated caller that is not one of the token's
/// audiences learns only `active: false`; an audience caller (a
/// ServiceAccount by the documented rule, or a workload by its Writ
/// certificate's SPIFFE ID) gets the token's facts, until it is revoked.
#[tokio::test]
async fn introspection_answers_only_the_tokens_audiences() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "introspect").await;
    let other = TestNamespace::new(&client, "introspect-other").await;
    let (n, m) = (&ns.name, &other.name);
    example_setup(&c, &client, n).await;
    let bot = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    let bot_id = format!("spiffe://test.writ.dev/ns/{n}/agent/release-bot");
    // Audiences: the bare `deploy-api` (a ServiceAccount of the grant's
    // namespace), `reports.<m>` (one of another namespace) and the bot's own
    // SPIFFE ID (a workload presenting its certificate).
    let manifest = grant_yaml("deploy", "release-bot", &[WEB], "15m", None)
        .replace("audiences: [deploy-api]", &format!("audiences: [deploy-api, \"reports.{m}\", \"{bot_id}\"]"));
    let (ok, out) = apply_as(&c, Some("alice"), n, &manifest);
    assert!(ok, "{out}");
    wait_phase(&client, n, "deploy", GrantPhase::Active, Duration::from_secs(15)).await;
    let token = wait_for_token(&client, n, &bot, "deploy").await;
    let form = format!("token={token}");

    // Anonymous, or with a token the API server does not know: 401.
    let (status, challenge, body) = op.https_post_form_headers("/introspect", &form).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(challenge, r#"Bearer realm="writ-introspection""#);
    assert!(!body.contains("active"), "{body}");
    let (status, _) = op.https_post_form_as("/introspect", &form, "not-a-kubernetes-token").await;
    assert_eq!(status, 401);

    // Authenticated, not an audience: the bare name counts only in the
    // grant's namespace; other names never.
    for (namespace, name) in [(m.as_str(), "deploy-api"), (n.as_str(), "billing-api"), (m.as_str(), "reports-2")] {
        let caller = service_account_token(&client, namespace, name).await;
        let (status, body) = op.https_post_form_as("/introspect", &form, &caller).await;
        assert_eq!((status, body.as_str()), (200, r#"{"active":false}"#), "{namespace}/{name}");
    }

    // Audiences: by name in the grant's namespace, by `<name>.<ns>` from
    // another, by SPIFFE ID with the workload's certificate.
    let here = service_account_token(&client, n, "deploy-api").await;
    let there = service_account_token(&client, m, "reports").await;
    for caller in [&here, &there] {
        let (status, body) = op.https_post_form_as("/introspect", &form, caller).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["active"], true, "{body}");
        assert_eq!(v["sub"], bot_id);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let creds = secret_data(&secrets.get(&credential_secret_name(&bot)).await.expect("credential Secret"));
    let (cert, key) = (dir.path().join("bot.crt"), dir.path().join("bot.key"));
    std::fs::write(&cert, &creds["tls.crt"]).expect("write");
    std::fs::write(&key, &creds["tls.key"]).expect("write");
    let (status, body) = op.https_post_form_with_cert("/introspect", &form, &cert, &key).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""active":true"#), "{body}");

    // A second grant whose only audience is `deploy-api`: the bot's
    // certificate authenticates, but the bot is no audience of it.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("narrow", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let narrow = wait_for_token(&client, n, &bot, "narrow").await;
    let (status, body) = op.https_post_form_with_cert("/introspect", &format!("token={narrow}"), &cert, &key).await;
    assert_eq!((status, body.as_str()), (200, r#"{"active":false}"#));

    // After revocation, inactive for the audience too.
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), n);
    grants.delete("deploy", &DeleteParams::default()).await.expect("delete grant");
    eventually(Duration::from_secs(15), "the revoked token to be inactive for its audience", || async {
        let (_, body) = op.https_post_form_as("/introspect", &form, &here).await;
        (body == r#"{"active":false}"#).then_some(())
    })
    .await;
    let (_, body) = op.https_post_form_as("/introspect", &form, &there).await;
    assert_eq!(body, r#"{"active":false}"#);
    ns.cleanup().await;
    other.cleanup().await;
}

//! Capability grants on the real API server: activation, pod-bound tokens,
//! expiry, completion, deletion, delegation cascades, re-minting on rotation.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    api::{Api, Patch, PatchParams},
    ResourceExt,
};
use writ::api::{CapabilityGrant, GrantPhase};

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");

#[tokio::test]
async fn an_active_grant_gives_the_pod_a_token_bound_to_its_certificate() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "active").await;
    example_setup(&c, &client, &ns.name).await;
    let pod = running_agent_pod(&client, &ns.name, "bot-1", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), &ns.name, &grant_yaml("g1", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let g = wait_phase(&client, &ns.name, "g1", GrantPhase::Active, Duration::from_secs(15)).await;
    let st = g.status.clone().expect("status");
    assert_eq!(st.requested_by.as_deref(), Some("alice"));
    assert_eq!(st.requested, st.approved);
    let expires = st.expires_at.as_ref().expect("expiresAt").0.as_second();
    let issued = st.issued_at.as_ref().expect("issuedAt").0.as_second();
    assert_eq!(expires - issued, 15 * 60);

    let jwt =
        eventually(Duration::from_secs(10), "token in the pod's Secret", || token_in(&client, &ns.name, &pod, "g1"))
            .await;
    let (header, claims) = writ::pki::token::decode_unverified(&jwt).expect("token decodes");
    // A JWT-SVID: ES256 (the default algorithm), typ JWT, a kid; sub, aud and exp.
    assert_eq!(header.alg, "ES256");
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert!(header.kid.as_deref().is_some_and(|k| !k.is_empty()));
    assert_eq!(claims.sub, format!("spiffe://test.writ.dev/ns/{}/agent/release-bot", ns.name));
    assert_eq!(claims.aud, vec!["deploy-api".to_string()]);
    assert!(claims.exp <= expires && claims.nbf <= claims.iat + 1);
    assert_eq!(claims.cap.len(), 1);
    assert_eq!((claims.cap[0].action.as_str(), claims.cap[0].resource.as_str()), WEB);
    assert_eq!(claims.grant.name, "g1");
    assert_eq!(claims.grant.uid, g.uid().expect("uid"));
    assert_eq!(claims.pod.uid, pod.uid().expect("uid"));
    assert_eq!(claims.req, "alice");
    assert_eq!(claims.task.id, "T-1");
    // cnf is the SHA-256 thumbprint of the pod's current certificate.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let d = secret_data(&secrets.get(&credential_secret_name(&pod)).await.expect("secret"));
    let info = writ::pki::cert::CertificateInfo::from_pem(&d["tls.crt"]).expect("cert");
    assert_eq!(claims.cnf.x5t_s256, info.thumbprint);
    // Status lists the token (never the token itself).
    assert!(
        st.tokens.iter().any(|t| t.jti == claims.jti && t.pod == "bot-1") || {
            let g = wait_phase(&client, &ns.name, "g1", GrantPhase::Active, Duration::from_secs(5)).await;
            g.status.expect("status").tokens.iter().any(|t| t.jti == claims.jti)
        }
    );
    let status_json = serde_json::to_string(&g).expect("json");
    assert!(!status_json.contains(&jwt), "a token leaked into the grant object");
    assert!(!op.log_text().contains(&jwt), "a token leaked into the operator log");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_ten_second_grant_expires_and_its_token_is_published_as_revoked() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "expire").await;
    example_setup(&c, &client, &ns.name).await;
    let pod = running_agent_pod(&client, &ns.name, "bot-e", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), &ns.name, &grant_yaml("short", "release-bot", &[WEB], "10s", None));
    assert!(ok, "{out}");
    let g = wait_phase(&client, &ns.name, "short", GrantPhase::Active, Duration::from_secs(10)).await;
    let jwt = eventually(Duration::from_secs(5), "token", || token_in(&client, &ns.name, &pod, "short")).await;
    let (_, claims) = writ::pki::token::decode_unverified(&jwt).expect("decode");
    let expires = g.status.expect("st").expires_at.expect("exp").0;
    let g = wait_phase(&client, &ns.name, "short", GrantPhase::Expired, Duration::from_secs(15)).await;
    let seen = jiff::Timestamp::now();
    assert!(seen.as_second() - expires.as_second() <= 3, "Expired too late: expiry {expires}, seen {seen}");
    let (_, body) = op.https_get("/revocations").await;
    assert!(body.contains(&claims.jti), "jti not published: {body}");
    assert!(token_in(&client, &ns.name, &pod, "short").await.is_none(), "token file left in the Secret");
    assert!(g.status.expect("st").conditions.iter().any(|c| c.type_ == "Expired" && c.status == "True"));
    ns.cleanup().await;
}

#[tokio::test]
async fn completing_or_deleting_a_grant_revokes_its_tokens() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "complete").await;
    example_setup(&c, &client, &ns.name).await;
    let pod = running_agent_pod(&client, &ns.name, "bot-c", "release-bot").await;
    for name in ["done", "gone"] {
        let (ok, out) = apply_as(&c, Some("alice"), &ns.name, &grant_yaml(name, "release-bot", &[WEB], "15m", None));
        assert!(ok, "{out}");
        wait_phase(&client, &ns.name, name, GrantPhase::Active, Duration::from_secs(15)).await;
    }
    let done = eventually(Duration::from_secs(5), "token", || token_in(&client, &ns.name, &pod, "done")).await;
    let gone = eventually(Duration::from_secs(5), "token", || token_in(&client, &ns.name, &pod, "gone")).await;
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), &ns.name);
    // The agent marks its task completed.
    grants
        .patch("done", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"completed": true}})))
        .await
        .expect("completion is an allowed change");
    wait_phase(&client, &ns.name, "done", GrantPhase::Completed, Duration::from_secs(10)).await;
    assert!(token_in(&client, &ns.name, &pod, "done").await.is_none());
    // Deletion revokes before the object disappears (finalizer).
    grants.delete("gone", &Default::default()).await.expect("delete");
    eventually(Duration::from_secs(10), "grant deletion", || async {
        grants.get_opt("gone").await.ok()?.is_none().then_some(())
    })
    .await;
    let (_, body) = op.https_get("/revocations").await;
    for jwt in [done, gone] {
        let (_, claims) = writ::pki::token::decode_unverified(&jwt).expect("decode");
        assert!(body.contains(&claims.jti), "{} not revoked: {body}", claims.grant.name);
    }
    assert!(token_in(&client, &ns.name, &pod, "gone").await.is_none());
    ns.cleanup().await;
}

#[tokio::test]
async fn a_parent_ending_revokes_its_child_and_grandchild() {
    with_namespace("cascade", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        example_setup(c, client, n).await;
        running_agent_pod(client, n, "planner-1", "planner").await;
        running_agent_pod(client, n, "bot-1", "release-bot").await;
        // alice -> planner (depth 1)
        let (ok, out) = apply_as(c, Some("alice"), n, &grant_yaml("plan", "planner", &[WEB], "20m", None));
        assert!(ok, "{out}");
        wait_phase(client, n, "plan", GrantPhase::Active, Duration::from_secs(15)).await;
        // planner -> release-bot (depth 2), requested with the planner's own service account.
        let planner = service_account_client(c, n, "planner").await;
        let child: CapabilityGrant =
            serde_saphyr::from_str(&grant_yaml("exec", "release-bot", &[WEB], "10m", Some("plan"))).expect("yaml");
        Api::<CapabilityGrant>::namespaced(planner.clone(), n)
            .create(&Default::default(), &child)
            .await
            .expect("delegated grant admitted");
        let g = wait_phase(client, n, "exec", GrantPhase::Active, Duration::from_secs(15)).await;
        assert_eq!(
            g.status.expect("st").requested_by.as_deref(),
            Some(format!("system:serviceaccount:{}:planner", n).as_str())
        );
        // release-bot -> canary-bot under a policy that allows depth 3: the grandchild.
        service_account(client, n, "canary-bot").await;
        let canary = r#"
apiVersion: writ.dev/v1alpha1
kind: AgentIdentity
metadata: {name: canary-bot}
spec:
  class: Agent
  serviceAccountName: canary-bot
  owner: team-platform
  ceiling: [{action: "k8s:deployments.patch", resource: "k8s:staging/deployments/*"}]
"#;
        let (ok, out) = apply_as(c, None, n, canary);
        assert!(ok, "{out}");
        let deep = r#"
apiVersion: writ.dev/v1alpha1
kind: DelegationPolicy
metadata: {name: deep}
spec:
  delegators: [{agent: release-bot}]
  delegates: [{agent: canary-bot}]
  capabilities: [{action: "k8s:deployments.*", resource: "k8s:staging/deployments/*"}]
  maxTTL: 30m
  maxDepth: 3
"#;
        let (ok, out) = apply_as(c, None, n, deep);
        assert!(ok, "{out}");
        let bot = service_account_client(c, n, "release-bot").await;
        let grandchild: CapabilityGrant =
            serde_saphyr::from_str(&grant_yaml("sub", "canary-bot", &[WEB], "5m", Some("exec"))).expect("yaml");
        let api_as_bot = Api::<CapabilityGrant>::namespaced(bot, n);
        // (retried while the operator's caches catch up with the new identity and policy)
        let mut last = String::new();
        for _ in 0..50 {
            match api_as_bot.create(&Default::default(), &grandchild).await {
                Ok(_) => {
                    last.clear();
                    break;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(last.is_empty(), "grandchild refused: {last}");
        wait_phase(client, n, "sub", GrantPhase::Active, Duration::from_secs(15)).await;
        // The parent ends: the child is revoked within a couple of seconds.
        let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), n);
        grants
            .patch("plan", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"completed": true}})))
            .await
            .expect("complete");
        let started = std::time::Instant::now();
        let g = wait_phase(client, n, "exec", GrantPhase::Revoked, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(3), "cascade took {:?}", started.elapsed());
        assert!(g.status.expect("st").reason.unwrap_or_default().contains("parent"));
        wait_phase(client, n, "sub", GrantPhase::Revoked, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(4), "cascade to the grandchild took {:?}", started.elapsed());
    })
    .await;
}

#[tokio::test]
async fn a_certificate_rotation_re_mints_the_token_with_the_new_thumbprint() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "remint").await;
    let n = &ns.name;
    service_account(&client, n, "flash").await;
    let (ok, out) = apply_as(&c, None, n, FLASH);
    assert!(ok, "{out}");
    let pod = running_agent_pod(&client, n, "flash-1", "flash").await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("g", "flash", &[WEB], "10m", None));
    assert!(ok, "{out}");
    let first = eventually(Duration::from_secs(15), "a token", || token_in(&client, n, &pod, "g")).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let thumbprint = |d: &std::collections::BTreeMap<String, String>| {
        writ::pki::cert::CertificateInfo::from_pem(&d["tls.crt"]).expect("cert").thumbprint
    };
    let before = thumbprint(&secret_data(&secrets.get(&credential_secret_name(&pod)).await.expect("Secret")));
    assert_eq!(writ::pki::token::decode_unverified(&first).expect("jwt").1.cnf.x5t_s256, before);
    // 20 s certificates rotate 10 s before expiry; the token follows the new certificate.
    let (cert, token) = eventually(Duration::from_secs(30), "a rotated certificate with a re-minted token", || async {
        let d = secret_data(&secrets.get(&credential_secret_name(&pod)).await.ok()?);
        let now = thumbprint(&d);
        let jwt = d.get("grant.g.jwt")?.clone();
        let cnf = writ::pki::token::decode_unverified(&jwt).ok()?.1.cnf.x5t_s256;
        (now != before && cnf == now).then_some((now, jwt))
    })
    .await;
    assert_ne!(token, first);
    let (_, old_claims) = writ::pki::token::decode_unverified(&first).expect("jwt");
    let (_, new_claims) = writ::pki::token::decode_unverified(&token).expect("jwt");
    assert_eq!(new_claims.cnf.x5t_s256, cert);
    assert_ne!(new_claims.jti, old_claims.jti);
    // The replaced token is revoked, not just overwritten.
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), n);
    let g = grants.get("g").await.expect("grant");
    assert_eq!(g.status.as_ref().map(|s| s.phase), Some(GrantPhase::Active));
    eventually(Duration::from_secs(10), "the old jti on the revocation list", || async {
        let (_, list) = op.https_get("/revocations").await;
        list.contains(&old_claims.jti).then_some(())
    })
    .await;
    ns.cleanup().await;
}

/// An agent with 20-second certificates, and a policy letting alice grant to it.
const FLASH: &str = r#"apiVersion: writ.dev/v1alpha1
kind: AgentIdentity
metadata: {name: flash}
spec:
  class: Agent
  serviceAccountName: flash
  owner: team-platform
  credential: {ttl: 20s, rotateBefore: 10s}
  ceiling:
    - {action: "k8s:deployments.patch", resource: "k8s:staging/deployments/*"}
---
apiVersion: writ.dev/v1alpha1
kind: DelegationPolicy
metadata: {name: flash}
spec:
  delegators: [{group: release-managers}]
  delegates: [{agent: flash}]
  capabilities:
    - {action: "k8s:deployments.patch", resource: "k8s:staging/deployments/*"}
  maxTTL: 30m
  maxDepth: 1
"#;

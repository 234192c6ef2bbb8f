//! Running Writ for real: restarts, leader election between two processes,
//! readiness, metrics, a user-provided CA, and the install manifests, all on
//! the real API server. The tests of this file run one at a time: each starts
//! its own operators, which register the webhook configurations.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::{
    api::core::v1::{Pod, Secret},
    ByteString,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use writ::api::GrantPhase;

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn operator_namespace(what: &str) -> String {
    format!("writ-{what}-{}", std::process::id())
}

/// An operator (run with `extra` arguments) and a namespace with the example
/// identities and policy, a running agent pod `bot-1` with its credential,
/// and grant `g` (15 minutes) with its token, which is returned.
async fn one_active_grant(
    c: &Cluster,
    client: &kube::Client,
    what: &str,
    id: &str,
    extra: &[&str],
) -> (Operator, TestNamespace, Pod, String) {
    let op = Operator::start(c, &operator_namespace(what), id, extra).await;
    let ns = TestNamespace::new(client, what).await;
    let n = &ns.name;
    example_setup(c, client, n).await;
    let pod = running_agent_pod(client, n, "bot-1", "release-bot").await;
    let (ok, out) = apply_as(c, Some("alice"), n, &grant_yaml("g", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let token = wait_for_token(client, n, &pod, "g").await;
    (op, ns, pod, token)
}

async fn cert_serial(client: &kube::Client, ns: &str, pod: &Pod) -> String {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let d = secret_data(&api.get(&credential_secret_name(pod)).await.expect("credential Secret"));
    writ::pki::CertificateInfo::from_pem(&d["tls.crt"]).expect("certificate").serial_hex
}

async fn secret_fingerprint(client: &kube::Client, ns: &str, name: &str) -> (String, String) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api.get(name).await.expect("Secret");
    let d = secret_data(&s);
    (s.metadata.uid.expect("uid"), d.get("tls.crt").or(d.get("signing-key.pem")).cloned().unwrap_or_default())
}

#[tokio::test]
async fn a_restarted_operator_reuses_its_trust_does_not_remint_and_catches_up_on_expiry() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let op_ns = operator_namespace("restart");
    let op = Operator::start(&c, &op_ns, "r-0", &[]).await;
    let ns = TestNamespace::new(&client, "restart").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    let pod = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    for (name, ttl) in [("brief", "10s"), ("long", "15m")] {
        let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml(name, "release-bot", &[WEB], ttl, None));
        assert!(ok, "{out}");
    }
    let brief = wait_for_token(&client, n, &pod, "brief").await;
    let long = wait_for_token(&client, n, &pod, "long").await;
    let serial = cert_serial(&client, n, &pod).await;
    let ca = secret_fingerprint(&client, &op_ns, writ::api::names::CA_SECRET).await;
    let keys = secret_fingerprint(&client, &op_ns, writ::api::names::SIGNING_SECRET).await;
    let (_, jwks) = op.https_get("/.well-known/jwks.json").await;
    let jwks = writ::pki::JwkSet::from_json(&jwks).expect("jwks");
    let grants: Api<writ::api::CapabilityGrant> = Api::namespaced(client.clone(), n);
    let brief_exp = grants.get("brief").await.expect("grant").status.expect("status").expires_at.expect("expiresAt");

    // Down past the brief grant's expiry.
    op.kill();
    let wait = brief_exp.0.as_second() + 2 - writ::pki::now_unix();
    tokio::time::sleep(Duration::from_secs(wait.max(0) as u64)).await;
    // While the operator is down, grants are refused, not admitted unchecked.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("unchecked", "release-bot", &[WEB], "5m", None));
    assert!(!ok && out.contains("capabilitygrants.writ.dev"), "admitted while the webhook was down: {out}");
    // The token is already unusable by its own exp, with nobody to revoke it.
    let err = writ::verify::verify_signed(&brief, &jwks, writ::pki::now_unix(), 0).expect_err("expired");
    assert_eq!(err.code(), "expired");

    let restarted = Instant::now();
    op.restart(&c).await;
    wait_phase(&client, n, "brief", GrantPhase::Expired, Duration::from_secs(10)).await;
    let caught_up = restarted.elapsed();
    assert!(caught_up < Duration::from_secs(10), "Expired only after {caught_up:?}");
    // The brief token is gone from the pod; the long one is untouched.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let d = eventually(Duration::from_secs(10), "the expired token removed", || async {
        let d = secret_data(&secrets.get(&credential_secret_name(&pod)).await.ok()?);
        (!d.contains_key("grant.brief.jwt")).then_some(d)
    })
    .await;
    assert_eq!(d.get("grant.long.jwt"), Some(&long), "a valid token was re-minted after restart");
    // Same certificate, same CA, same signing key: nothing regenerated.
    assert_eq!(cert_serial(&client, n, &pod).await, serial, "a valid certificate was re-minted after restart");
    assert_eq!(secret_fingerprint(&client, &op_ns, writ::api::names::CA_SECRET).await, ca, "the CA changed");
    assert_eq!(secret_fingerprint(&client, &op_ns, writ::api::names::SIGNING_SECRET).await, keys, "the keys changed");
    let issued = op.metric("writ_credentials_total", &[r#"kind="certificate""#, r#"event="issued""#]).await;
    assert_eq!(issued.unwrap_or(0.0), 0.0, "certificates issued after the restart");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_token_written_before_its_grants_status_keeps_its_time_after_a_restart() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let (op, ns, pod, token) = one_active_grant(&c, &client, "crash-window", "w-0", &[]).await;
    let n = &ns.name;
    wait_phase(&client, n, "g", GrantPhase::Active, Duration::from_secs(10)).await;
    // As if the operator had been stopped between writing the token and
    // writing the grant's status: the status does not know the activation.
    // With the operator down its webhooks refuse every status write, so
    // they go too (the restart registers them again); the status is the
    // first one a grant has, with no activation in it.
    op.kill();
    remove_webhooks(&client).await;
    let grants: Api<writ::api::CapabilityGrant> = Api::namespaced(client.clone(), n);
    let forget = serde_json::json!({"status": {"phase": "Pending", "issuedAt": null, "expiresAt": null, "tokens": null,
        "seal": null, "authorisedBy": null, "approvalDeadline": null}});
    grants.patch_status("g", &PatchParams::default(), &Patch::Merge(forget)).await.expect("status rewound");
    op.restart(&c).await;
    let status = eventually(Duration::from_secs(15), "the grant Active again", || async {
        grants.get("g").await.ok()?.status.filter(|s| s.phase == GrantPhase::Active && s.issued_at.is_some())
    })
    .await;
    let (_, claims) = writ::pki::token::decode_unverified(&token).expect("token");
    assert_eq!(status.issued_at.map(|t| t.0.as_second()), Some(claims.nbf), "the activation time is the token's");
    assert_eq!(status.expires_at.map(|t| t.0.as_second()), Some(claims.exp), "so is the expiry");
    assert_eq!(token_in(&client, n, &pod, "g").await, Some(token), "the token was re-minted");
    let issued = op.metric("writ_credentials_total", &[r#"kind="token""#, r#"event="issued""#]).await;
    assert_eq!(issued.unwrap_or(0.0), 0.0, "tokens issued after the restart");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_second_replica_takes_over_when_the_leader_dies_without_minting_twice() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let op_ns = operator_namespace("ha");
    let a = Operator::start(&c, &op_ns, "a", &[]).await;
    eventually(Duration::from_secs(20), "replica a to lead", || async {
        (a.metric("writ_leader", &[]).await == Some(1.0)).then_some(())
    })
    .await;
    // b registers the webhooks last, so admission keeps working once a is gone.
    let b = Operator::start(&c, &op_ns, "b", &[]).await;
    assert_eq!(b.metric("writ_leader", &[]).await, Some(0.0), "two leaders");
    let ns = TestNamespace::new(&client, "ha").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    let first = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    let serial = cert_serial(&client, n, &first).await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("g", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let jwt = wait_for_token(&client, n, &first, "g").await;
    assert_eq!(b.metric("writ_credentials_total", &[]).await.unwrap_or(0.0), 0.0, "the follower minted");

    // The leader's revocations reach the follower's introspection and
    // /revocations while both run (its watch of the list's ConfigMap).
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("r", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let revoked = wait_for_token(&client, n, &first, "r").await;
    let jti = writ::pki::token::decode_unverified(&revoked).expect("jwt").1.jti;
    // Asked by the token's audience (the ServiceAccount `deploy-api` of the grant's namespace).
    let audience = service_account_token(&client, n, "deploy-api").await;
    let (_, body) = b.https_post_form_as("/introspect", &format!("token={revoked}"), &audience).await;
    assert!(body.contains(r#""active":true"#), "the follower does not know the new token: {body}");
    let grants: Api<writ::api::CapabilityGrant> = Api::namespaced(client.clone(), n);
    grants.delete("r", &Default::default()).await.expect("delete grant r");
    eventually(Duration::from_secs(10), "the follower to report the revoked token inactive", || async {
        let (_, body) = b.https_post_form_as("/introspect", &format!("token={revoked}"), &audience).await;
        body.contains(r#""active":false"#).then_some(())
    })
    .await;
    let (_, list) = b.https_get("/revocations").await;
    assert!(list.contains(&jti), "the follower's /revocations lacks {jti}: {list}");
    let failures = b.log_text().matches("following the revocation list").count();
    assert_eq!(failures, 0, "the follower's watch of the list failed: {}", b.log_tail());

    a.kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(30), "replica b to take over", || async {
        (b.metric("writ_leader", &[]).await == Some(1.0)).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    // A new pod gets its credential from the new leader.
    let second = running_agent_pod(&client, n, "bot-2", "release-bot").await;
    wait_for_token(&client, n, &second, "g").await;
    // Nothing the old leader issued was issued again.
    assert_eq!(cert_serial(&client, n, &first).await, serial, "the first pod's certificate was re-minted");
    assert_eq!(wait_for_token(&client, n, &first, "g").await, jwt, "the first pod's token was re-minted");
    let certs = b.metric("writ_credentials_total", &[r#"kind="certificate""#, r#"event="issued""#]).await;
    assert_eq!(certs, Some(1.0), "the new leader issued certificates other than the new pod's");
    eprintln!("takeover after {takeover:?} (lease 6s)");
    ns.cleanup().await;
}

#[tokio::test]
async fn readiness_waits_for_a_user_provided_ca_which_is_then_used() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let op_ns = operator_namespace("byo-ca");
    let op = Operator::launch(&c, &op_ns, "ca-0", &["--ca-secret", "company-ca"]).await;
    // Live, not ready, and saying why.
    let (code, body) = eventually(Duration::from_secs(20), "/readyz to name the missing Secret", || async {
        http_get(&format!("{}/readyz", op.metrics_url)).await.filter(|(_, body)| body.contains("company-ca"))
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("company-ca"), "{body}");
    assert_eq!(http_get(&format!("{}/healthz", op.metrics_url)).await.map(|r| r.0), Some(200));
    // The Secret appears (GitOps order, cert-manager): the operator becomes ready and uses it.
    let ca =
        writ::pki::CertificateAuthority::generate("Company CA", writ::pki::now_unix() - 60, 86_400 * 30).expect("ca");
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("company-ca".into()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_string(), ByteString(ca.cert_pem().as_bytes().to_vec())),
                ("tls.key".to_string(), ByteString(ca.key_pem().into_bytes())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &op_ns).create(&PostParams::default(), &secret).await.expect("create");
    op.wait_ready().await;
    let (_, bundle) = op.https_get("/trust-bundle").await;
    assert_eq!(bundle.trim(), ca.cert_pem().trim());
    let generated: Api<Secret> = Api::namespaced(client.clone(), &op_ns);
    assert!(generated.get_opt(writ::api::names::CA_SECRET).await.expect("get").is_none(), "a CA was generated anyway");
    let ns = TestNamespace::new(&client, "byo").await;
    example_setup(&c, &client, &ns.name).await;
    let pod = running_agent_pod(&client, &ns.name, "bot-1", "release-bot").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let d = secret_data(&secrets.get(&credential_secret_name(&pod)).await.expect("Secret"));
    let info = writ::pki::CertificateInfo::from_pem(&d["tls.crt"]).expect("cert");
    let leaf = writ::pki::cert::parse_certificates(d["tls.crt"].as_bytes()).expect("der").remove(0);
    let (_, leaf) =
        <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<_>>::from_der(&leaf).expect("x509");
    assert!(leaf.issuer().to_string().contains("Company CA"), "{}", leaf.issuer());
    assert!(info.spiffe_id.is_some());
    ns.cleanup().await;
}

#[tokio::test]
async fn metrics_expose_every_family_after_a_small_scenario() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let (op, ns, pod, _) = one_active_grant(&c, &client, "metrics", "m-0", &[]).await;
    let n = &ns.name;
    let (ok, _) = apply_as(&c, Some("alice"), n, &grant_yaml("wild", "release-bot", &[("k8s:*", "k8s:*")], "5m", None));
    assert!(!ok, "a wildcard grant was admitted");
    let (_, body) = http_get(&format!("{}/metrics", op.metrics_url)).await.expect("metrics");
    for family in [
        "writ_credentials_total{kind=\"certificate\",event=\"issued\"}",
        "writ_credentials_total{kind=\"token\",event=\"issued\"}",
        "writ_admission_decisions_total{",
        "writ_grant_transitions_total{phase=\"Active\"}",
        "writ_grants{phase=\"Active\"}",
        "writ_reconcile_duration_seconds_bucket{",
        "writ_pod_credential_latency_seconds_count",
        "writ_grant_activation_latency_seconds_count",
        "writ_heap_in_use_bytes",
        // Nothing failed in this scenario, so nothing waits for a retry.
        "writ_reconcile_retrying 0",
    ] {
        assert!(body.contains(family), "{family} missing from /metrics:\n{body}");
    }
    // Every cache's watch runs on a thread of its own (so what the caches
    // keep is decoded in an allocator arena of its own; README, "At scale").
    let threads = op.thread_names();
    assert!(threads.iter().any(|t| t == "writ-watches"), "no watch thread among {threads:?}");
    // The sample line itself: the gauge's HELP text also contains "writ_leader 1".
    assert!(body.lines().any(|l| l == "writ_leader 1"), "leader gauge not 1:\n{body}");
    assert!(body.contains("decision=\"denied\""), "no denial counted:\n{body}");
    // Changes are followed, not re-listed: a watch that cannot resume from
    // an event (e.g. an object decoded without its resourceVersion) reads
    // every object of its kind again for each change. (A kind may be
    // re-listed once on a fresh cluster, while the API server settles a
    // just-created CRD's storage: only changes made from here are counted.)
    let lists = |kind: &'static str| {
        let op = &op;
        async move { op.metric("writ_cache_lists_total", &[&format!("kind=\"{kind}\"")]).await.unwrap_or(0.0) }
    };
    let kinds = ["agentidentities", "delegationpolicies", "capabilitygrants", "pods", "secrets"];
    let mut before = Vec::new();
    for kind in kinds {
        before.push(lists(kind).await);
    }
    assert!(before.iter().all(|n| *n >= 1.0), "every kind listed at start: {before:?}");
    let touch =
        |i: usize| Patch::Merge(serde_json::json!({"metadata": {"labels": {"writ-test/touch": i.to_string()}}}));
    let pp = PatchParams::default();
    for i in 0..3 {
        let p = touch(i);
        Api::<writ::api::AgentIdentity>::namespaced(client.clone(), n)
            .patch("release-bot", &pp, &p)
            .await
            .expect("identity");
        Api::<writ::api::DelegationPolicy>::namespaced(client.clone(), n)
            .patch("release-flow", &pp, &p)
            .await
            .expect("policy");
        Api::<writ::api::CapabilityGrant>::namespaced(client.clone(), n).patch("g", &pp, &p).await.expect("grant");
        Api::<Pod>::namespaced(client.clone(), n).patch("bot-1", &pp, &p).await.expect("pod");
        Api::<Secret>::namespaced(client.clone(), n)
            .patch(&credential_secret_name(&pod), &pp, &p)
            .await
            .expect("secret");
    }
    // Time for the operator's watches to take those fifteen changes in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (kind, before) in kinds.into_iter().zip(before) {
        assert_eq!(lists(kind).await, before, "{kind} re-listed while its objects changed");
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn the_install_manifests_pass_a_server_side_dry_run() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    ensure_crds(&client).await;
    // The test operators register configurations named like the manifests'
    // ones, pointing at a URL; the manifests' are for an in-cluster Service.
    remove_webhooks(&client).await;
    // The CRDs alone, as `kubectl apply -f crds/` (no CEL rules a 1.20 server refuses).
    let out = c.kubectl(&["apply", "-f", repo().join("crds").to_str().expect("utf-8"), "--dry-run=server"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("customresourcedefinition.apiextensions.k8s.io/").count(), 3, "{}", text(&out));
    // Namespaced objects can only be dry-run into a namespace that exists.
    let out = c.kubectl(&["apply", "-f", repo().join("manifests/namespace.yaml").to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    // Kubernetes 1.20 has no policy/v1 (PodDisruptionBudget); the compat
    // overlay differs from the base only in that apiVersion.
    let versions = text(&c.kubectl(&["api-versions"]));
    let dir = if versions.lines().any(|l| l.trim() == "policy/v1") {
        repo().join("manifests")
    } else {
        repo().join("hack/kubernetes-1.20")
    };
    let out = c.kubectl(&["apply", "-k", dir.to_str().expect("utf-8"), "--dry-run=server"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for kind in [
        "deployment.apps/writ",
        "service/writ-webhook",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/writ",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/writ",
        "poddisruptionbudget.policy/writ",
        "clusterrole.rbac.authorization.k8s.io/writ",
        "customresourcedefinition.apiextensions.k8s.io/capabilitygrants.writ.dev",
    ] {
        assert!(all.contains(kind), "{kind} not in the dry run:\n{all}");
    }
}

#[test]
fn the_committed_webhook_manifests_match_the_code() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_writ")).arg("webhooks").output().expect("writ webhooks");
    assert!(out.status.success(), "{}", text(&out));
    let committed = std::fs::read_to_string(repo().join("manifests/webhooks.yaml")).expect("manifests/webhooks.yaml");
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed, "run `make manifests`");
}

/// The operator's permissions, flattened, against the reviewed list: a change
/// to `manifests/rbac.yaml` must change this list too, in the same review.
#[test]
fn rbac_is_the_reviewed_minimum_with_no_wildcards() {
    let text = std::fs::read_to_string(repo().join("manifests/rbac.yaml")).expect("rbac.yaml");
    let mut granted = Vec::new();
    for v in serde_saphyr::from_multiple::<serde_json::Value>(&text).expect("yaml") {
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let Some(rules) = v.get("rules").and_then(|r| r.as_array()) else { continue };
        let list = |rule: &serde_json::Value, key: &str| -> Vec<String> {
            let items: Vec<String> = rule
                .get(key)
                .and_then(|x| x.as_array())
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect();
            assert!(!items.iter().any(|i| i.contains('*')), "wildcard in {key} of {kind}: {items:?}");
            items
        };
        for rule in rules {
            let names = list(rule, "resourceNames");
            for group in list(rule, "apiGroups") {
                for resource in list(rule, "resources") {
                    for verb in list(rule, "verbs") {
                        let scope = if names.is_empty() { String::new() } else { format!("[{}]", names.join(",")) };
                        granted.push(format!("{kind} {group}/{resource}{scope} {verb}"));
                    }
                }
            }
        }
    }
    granted.sort();
    let mut reviewed: Vec<String> =
        REVIEWED_PERMISSIONS.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    reviewed.sort();
    assert_eq!(granted, reviewed);
}

const REVIEWED_PERMISSIONS: &str = r#"
ClusterRole authentication.k8s.io/tokenreviews create
ClusterRole /configmaps create
ClusterRole /configmaps get
ClusterRole /configmaps patch
ClusterRole /configmaps update
ClusterRole /namespaces[writ-system] get
ClusterRole /pods get
ClusterRole /pods list
ClusterRole /pods watch
ClusterRole /secrets create
ClusterRole /secrets get
ClusterRole /secrets list
ClusterRole /secrets patch
ClusterRole /secrets update
ClusterRole /secrets watch
ClusterRole admissionregistration.k8s.io/mutatingwebhookconfigurations[writ] get
ClusterRole admissionregistration.k8s.io/mutatingwebhookconfigurations[writ] patch
ClusterRole admissionregistration.k8s.io/mutatingwebhookconfigurations[writ] update
ClusterRole admissionregistration.k8s.io/validatingwebhookconfigurations[writ] get
ClusterRole admissionregistration.k8s.io/validatingwebhookconfigurations[writ] patch
ClusterRole admissionregistration.k8s.io/validatingwebhookconfigurations[writ] update
ClusterRole events.k8s.io/events create
ClusterRole events.k8s.io/events patch
ClusterRole writ.dev/agentidentities get
ClusterRole writ.dev/agentidentities list
ClusterRole writ.dev/agentidentities patch
ClusterRole writ.dev/agentidentities update
ClusterRole writ.dev/agentidentities watch
ClusterRole writ.dev/agentidentities/status get
ClusterRole writ.dev/agentidentities/status patch
ClusterRole writ.dev/agentidentities/status update
ClusterRole writ.dev/capabilitygrants get
ClusterRole writ.dev/capabilitygrants list
ClusterRole writ.dev/capabilitygrants patch
ClusterRole writ.dev/capabilitygrants update
ClusterRole writ.dev/capabilitygrants watch
ClusterRole writ.dev/capabilitygrants/status get
ClusterRole writ.dev/capabilitygrants/status patch
ClusterRole writ.dev/capabilitygrants/status update
ClusterRole writ.dev/delegationpolicies get
ClusterRole writ.dev/delegationpolicies list
ClusterRole writ.dev/delegationpolicies patch
ClusterRole writ.dev/delegationpolicies update
ClusterRole writ.dev/delegationpolicies watch
ClusterRole writ.dev/delegationpolicies/status get
ClusterRole writ.dev/delegationpolicies/status patch
ClusterRole writ.dev/delegationpolicies/status update
Role coordination.k8s.io/leases create
Role coordination.k8s.io/leases get
Role coordination.k8s.io/leases update
Role /configmaps list
Role /configmaps watch
"#;

/// No key or token appears in anything a scenario leaves behind that is not a
/// Secret: the operator's log, Events, the objects' status, metrics.
#[tokio::test]
async fn nothing_secret_leaks_into_logs_events_status_or_metrics() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let (op, ns, pod, jwt) = one_active_grant(&c, &client, "leaks", "l-0", &["--log-format", "json"]).await;
    let n = &ns.name;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let secret = secrets.get(&credential_secret_name(&pod)).await.expect("Secret");
    // Credential Secrets are owned by their pod (garbage-collected with it).
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert!(owners.iter().any(|o| o.kind == "Pod" && Some(&o.uid) == pod.metadata.uid.as_ref()), "{owners:?}");
    let d = secret_data(&secret);
    let key_body: String = d["tls.key"].lines().filter(|l| !l.starts_with("-----")).collect();
    let signature = jwt.rsplit('.').next().expect("signature").to_string();
    // End the grant too, so revocation paths have logged what they log.
    Api::<writ::api::CapabilityGrant>::namespaced(client.clone(), n)
        .delete("g", &Default::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut produced = op.log_text();
    assert!(produced.contains(r#""target":"audit""#), "no JSON audit lines in the log");
    for kind in ["events", "capabilitygrants", "agentidentities", "configmaps"] {
        produced.push_str(&text(&c.kubectl(&["get", kind, "-n", n, "-o", "yaml"])));
    }
    produced.push_str(&http_get(&format!("{}/metrics", op.metrics_url)).await.expect("metrics").1);
    for (what, needle) in [("a token", jwt.as_str()), ("a token signature", &signature), ("a private key", &key_body)] {
        assert!(!produced.contains(needle), "{what} leaked");
    }
    assert!(!produced.contains("PRIVATE KEY"), "key material leaked");
    ns.cleanup().await;
}

/// `writ rotate ca`: the new CA issues from then on, the old one stays in the
/// bundle (so certificates it signed keep verifying), and every published copy
/// of the bundle follows.
#[tokio::test]
async fn a_rotated_ca_issues_new_certificates_while_the_old_one_stays_trusted() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let op_ns = operator_namespace("ca-rotation");
    let op = Operator::start(&c, &op_ns, "c-0", &[]).await;
    let ns = TestNamespace::new(&client, "carot").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    let old_pod = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    let (_, old_bundle) = op.https_get("/trust-bundle").await;
    assert_eq!(old_bundle.matches("BEGIN CERTIFICATE").count(), 1);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["rotate", "ca", "--writ-namespace", &op_ns, "--trust-domain", "test.writ.dev"])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("writ rotate ca");
    assert!(out.status.success(), "{}", text(&out));
    let bundle = eventually(Duration::from_secs(20), "a bundle with both CAs", || async {
        let (_, b) = op.https_get("/trust-bundle").await;
        (b.matches("BEGIN CERTIFICATE").count() == 2).then_some(b)
    })
    .await;
    assert!(bundle.contains(old_bundle.trim()), "the old CA left the bundle");
    // The endpoint still answers TLS (its serving certificate was re-issued by the new CA).
    let (code, _) = op.https_get("/.well-known/jwks.json").await;
    assert_eq!(code, 200);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let old = secret_data(&secrets.get(&credential_secret_name(&old_pod)).await.expect("Secret"));
    let (ok, out) = openssl_verify(&bundle, &old["tls.crt"]);
    assert!(ok, "a certificate from the previous CA no longer verifies: {out}");
    // A new pod gets a certificate from the new CA, and the bundle in its Secret has both.
    let new_pod = running_agent_pod(&client, n, "bot-2", "release-bot").await;
    let new = secret_data(&secrets.get(&credential_secret_name(&new_pod)).await.expect("Secret"));
    let (ok, out) = openssl_verify(&bundle, &new["tls.crt"]);
    assert!(ok, "{out}");
    let (ok, _) = openssl_verify(&old_bundle, &new["tls.crt"]);
    assert!(!ok, "the new pod's certificate was issued by the old CA");
    assert_eq!(new["ca.crt"].matches("BEGIN CERTIFICATE").count(), 2, "the pod's ca.crt lacks a CA");
    // The published ConfigMap follows.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &op_ns);
    eventually(Duration::from_secs(15), "the bundle ConfigMap with both CAs", || async {
        let cm = cms.get("writ-trust-bundle").await.ok()?;
        (cm.data?.get("ca.crt")?.matches("BEGIN CERTIFICATE").count() == 2).then_some(())
    })
    .await;
    ns.cleanup().await;
}

/// Resumes a paused process when dropped (also when the test fails).
struct Paused(i32);

impl Drop for Paused {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// The API server stops answering for 30 s (SIGSTOP: connections hang, the
/// harder case than refusals). The operator stays up, loses and regains its
/// lease by itself, and converges: a grant that expired meanwhile is Expired,
/// new grants and pods get their credentials. Needs the local control plane
/// (set WRIT_SKIP_API_PAUSE=1 to run the suite against a cluster you cannot pause).
#[tokio::test]
async fn the_operator_survives_an_api_server_outage_and_converges() {
    let _serial = SERIAL.lock().await;
    if std::env::var_os("WRIT_SKIP_API_PAUSE").is_some() {
        eprintln!("skipped on request (WRIT_SKIP_API_PAUSE)");
        return;
    }
    let c = cluster();
    let dir = c.dir.clone().expect("this test pauses the local control plane's kube-apiserver (hack/control-plane.sh)");
    let pid: i32 = std::fs::read_to_string(dir.join("kube-apiserver.pid"))
        .expect("kube-apiserver.pid")
        .trim()
        .parse()
        .expect("pid");
    let client = c.client().await;
    let op = Operator::start(&c, &operator_namespace("outage"), "o-0", &[]).await;
    let ns = TestNamespace::new(&client, "outage").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    let pod = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    for (name, ttl) in [("brief", "10s"), ("long", "15m")] {
        let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml(name, "release-bot", &[WEB], ttl, None));
        assert!(ok, "{out}");
    }
    wait_for_token(&client, n, &pod, "long").await;

    {
        let _paused = Paused(pid);
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "pausing kube-apiserver");
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let health = http_get(&format!("{}/healthz", op.metrics_url)).await.map(|r| r.0);
            assert_eq!(health, Some(200), "the operator is not serving health during the outage:\n{}", op.log_tail());
        }
    }
    // Back: the operator recovers by itself.
    let recovered = Instant::now();
    eventually(Duration::from_secs(40), "the operator to lead again", || async {
        (op.metric("writ_leader", &[]).await == Some(1.0)).then_some(())
    })
    .await;
    wait_phase(&client, n, "brief", GrantPhase::Expired, Duration::from_secs(30)).await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("after", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    wait_for_token(&client, n, &pod, "after").await;
    let second = running_agent_pod(&client, n, "bot-2", "release-bot").await;
    wait_for_token(&client, n, &second, "long").await;
    // It stopped leading while it could not renew (no split brain with a
    // replica that could reach the API server), and took the lease back after.
    let log = op.log_text();
    let down = log.find("could not renew the lease in time; stepping down").expect("no step-down during the outage");
    assert!(log[down..].contains("acquired leadership"), "leadership not regained:\n{}", op.log_tail());
    eprintln!("converged {:?} after the API server came back", recovered.elapsed());
    ns.cleanup().await;
}

/// The ConfigMaps replicas watch (the revocation list's parts) are allowed by
/// `manifests/rbac.yaml` in the operator's namespace, exactly as kube's
/// watcher asks for them, and nothing more is: not ConfigMaps elsewhere, not
/// Secrets, not writes (the Role applied in a test namespace, checked with
/// impersonation).
#[tokio::test]
async fn the_shipped_role_lets_a_replica_watch_the_revocation_list_and_nothing_else() {
    // Not while another test pauses the API server.
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "rbac").await;
    let rbac = std::fs::read_to_string(repo().join("manifests/rbac.yaml")).expect("rbac.yaml");
    let namespaced: Vec<String> = rbac
        .split("\n---\n")
        .filter(|doc| doc.contains("namespace: writ-system") && !doc.contains("kind: ClusterRoleBinding"))
        .map(|doc| doc.replace("namespace: writ-system", &format!("namespace: {}", ns.name)))
        .collect();
    assert!(namespaced.iter().any(|d| d.contains("name: writ-revocation-list")), "{namespaced:?}");
    let file = std::env::temp_dir().join(format!("{}-rbac.yaml", ns.name));
    std::fs::write(&file, namespaced.join("\n---\n")).expect("write");
    let out = c.kubectl(&["apply", "-f", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out));
    for name in ["writ-revocations", "writ-revocations-3"] {
        let out = c.kubectl(&["-n", &ns.name, "create", "configmap", name]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let sa = format!("--as=system:serviceaccount:{}:writ", ns.name);
    let configmaps = |namespace: &str, watch: bool| {
        let watch = if watch { "?watch=true&timeoutSeconds=1" } else { "" };
        format!("/api/v1/namespaces/{namespace}/configmaps{watch}")
    };
    // RBAC may need a moment to see the new binding.
    eventually(Duration::from_secs(10), "the Role to apply", || async {
        c.kubectl(&[&sa, "get", "--raw", &configmaps(&ns.name, false)]).status.success().then_some(())
    })
    .await;
    let out = c.kubectl(&[&sa, "get", "--raw", &configmaps(&ns.name, true)]);
    for part in ["writ-revocations", "writ-revocations-3"] {
        assert!(out.status.success() && text(&out).contains(&format!(r#""name":"{part}""#)), "{}", text(&out));
    }
    for denied in [
        configmaps("default", false),
        configmaps("default", true),
        "/api/v1/configmaps".to_string(),
        format!("/api/v1/namespaces/{}/secrets", ns.name),
    ] {
        let out = c.kubectl(&[&sa, "get", "--raw", &denied]);
        assert!(!out.status.success() && text(&out).contains("forbidden"), "{denied}: {}", text(&out));
    }
    let out = c.kubectl(&[&sa, "-n", &ns.name, "create", "configmap", "other"]);
    assert!(!out.status.success() && text(&out).contains("forbidden"), "create: {}", text(&out));
    let _ = std::fs::remove_file(&file);
    ns.cleanup().await;
}

/// The revocation list outgrows one ConfigMap on a real API server: 25,000
/// revocations (about 1.7 MB, more than the 1 MiB one ConfigMap holds) are
/// persisted in one batch over parts that each stay within the API server's
/// limit, and a restarted store, like any reader of the ConfigMaps, finds
/// every one and adds to them.
#[tokio::test]
async fn a_revocation_list_larger_than_a_configmap_is_persisted_over_its_parts() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use writ::{
        api::names::REVOCATIONS_KEY as KEY,
        state::revocations::{part_name, read_persisted, RevocationStore, MAX_PART_BYTES, PARTS},
        verify::{RevokedCertificate, RevokedToken},
    };
    let c = cluster();
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "revparts").await;
    let now = writ::pki::now_unix();
    let certificates: Vec<RevokedCertificate> =
        (0..25_000).map(|i| RevokedCertificate { serial: format!("{i:032x}"), expires_at: now + 3_600 }).collect();
    let token = |jti: &str| RevokedToken { jti: jti.into(), expires_at: now + 3_600 };
    let tokens: Vec<RevokedToken> = (0..100).map(|i| token(&format!("jti-{i}"))).collect();
    // One namespace may take the whole list here: the test is of the parts.
    let store =
        std::sync::Arc::new(RevocationStore::load(&client, &ns.name).await.expect("load").with_namespace_quota(100));
    store.revoke(&ns.name, tokens.clone(), certificates.clone(), now).await.expect("a list of 1.7 MB is persisted");

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let mut parts_written = 0;
    let mut total = 0;
    for part in 0..PARTS {
        if let Some(cm) = cms.get_opt(&part_name(part)).await.expect("get a part") {
            let bytes = cm.data.expect("data")[KEY].len();
            assert!(bytes <= MAX_PART_BYTES, "part {part}: {bytes} bytes");
            parts_written += 1;
            total += bytes;
        }
    }
    assert!(parts_written >= 2 && total > MAX_PART_BYTES, "{parts_written} parts, {total} bytes");
    let persisted = read_persisted(&client, &ns.name).await.expect("read the parts");
    assert_eq!((persisted.tokens.len(), persisted.certificates.len()), (100, 25_000));
    assert_eq!(store.size().await, (total, 25_100));

    let restarted =
        std::sync::Arc::new(RevocationStore::load(&client, &ns.name).await.expect("reload").with_namespace_quota(100));
    assert_eq!(restarted.snapshot().await, store.snapshot().await);
    assert!(restarted.is_token_revoked("jti-99").await);
    restarted.revoke(&ns.name, vec![token("jti-5"), token("after")], vec![], now).await.expect("one more");
    let persisted = read_persisted(&client, &ns.name).await.expect("read the parts");
    assert_eq!((persisted.tokens.len(), persisted.certificates.len()), (101, 25_000), "added once, nothing lost");
    ns.cleanup().await;
}

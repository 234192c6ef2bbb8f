//! Tenants against Writ's pods and Secrets, on the real API server: each
//! test plays `mallory`, a tenant with `edit`-like rights on pods and Secrets
//! in her namespace and none in the operator's, and shows the attack fails.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    Client, ResourceExt,
};
use serde_json::json;
use writ::{
    pki::{token, CertificateAuthority, CertificateIssuer as _, KeyAlgorithm, PodCertificateRequest, SigningKey},
    verify::RevocationList,
};

const IDENTITY: &str = r#"
apiVersion: writ.dev/v1alpha1
kind: AgentIdentity
metadata: {name: release-bot}
spec:
  class: Agent
  serviceAccountName: release-bot
  owner: team-platform
  credential: {ttl: 1h, rotateBefore: 20m}
  ceiling:
    - {action: "k8s:deployments.get", resource: "k8s:staging/deployments/*"}
"#;

/// A namespace with the `release-bot` identity and `mallory` as a tenant;
/// with `webhooks_skipped`, Writ's webhooks do not apply to it.
async fn tenant_namespace(c: &Cluster, client: &Client, prefix: &str, webhooks_skipped: bool) -> TestNamespace {
    let ns = TestNamespace::new(client, prefix).await;
    if webhooks_skipped {
        let api: Api<Namespace> = Api::all(client.clone());
        let patch = json!({"metadata": {"labels": {"writ.dev/webhooks": "disabled"}}});
        api.patch(&ns.name, &PatchParams::default(), &Patch::Merge(patch)).await.expect("label namespace");
    }
    service_account(client, &ns.name, "release-bot").await;
    let (ok, out) = apply_as(c, None, &ns.name, IDENTITY);
    assert!(ok, "creating the AgentIdentity: {out}");
    grant_tenant_edit(client, &ns.name, "mallory").await;
    ns
}

/// A running agent pod with its credential. Where the webhooks are skipped,
/// the pod is given the credential Secret annotation the webhook would have
/// injected.
async fn victim_pod(client: &Client, ns: &str, name: &str, webhooks_skipped: bool) -> (Pod, BTreeMap<String, String>) {
    let mut pod = agent_pod(name, "release-bot", "release-bot");
    if webhooks_skipped {
        pod.annotations_mut().insert("writ.dev/credential-secret".into(), format!("writ-cred-{name}"));
    }
    let pod = create_pod(client, ns, &pod).await.expect("victim pod admitted");
    set_pod_phase(client, ns, name, "Running").await;
    let data = wait_for_credential(client, ns, &pod).await;
    (pod, data)
}

fn serial_of(cert_pem: &str) -> String {
    writ::pki::CertificateInfo::from_pem(cert_pem).expect("certificate").serial_hex
}

async fn revocations(op: &Operator) -> RevocationList {
    let (code, body) = op.https_get("/revocations").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("revocation list")
}

/// The reasons of the Events about object `name` in `ns`.
async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
    list.into_iter().filter(|e| e.involved_object.name.as_deref() == Some(name)).filter_map(|e| e.reason).collect()
}

async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str) {
    eventually(Duration::from_secs(20), &format!("Event {reason} on {name}"), || async {
        event_reasons(client, ns, name).await.iter().any(|r| r == reason).then_some(())
    })
    .await;
}

/// Claims a forger would write: Writ's shape, any `jti` and `exp`.
fn forged_claims(ns: &str, pod: &str, jti: String, exp: i64) -> token::Claims {
    let now = writ::pki::now_unix();
    token::Claims {
        iss: "spiffe://test.writ.dev/writ".into(),
        sub: format!("spiffe://test.writ.dev/ns/{ns}/agent/release-bot"),
        aud: vec!["deploy-api".into()],
        iat: now,
        nbf: now,
        exp,
        jti,
        cap: vec![],
        task: token::Task { id: "T".into(), intent: None },
        grant: token::GrantRef { namespace: ns.into(), name: "g".into(), uid: "g-uid".into() },
        pod: token::PodRef { name: pod.into(), uid: "fake-uid".into() },
        cnf: token::Confirmation { x5t_s256: "x".into(), jkt: None },
        act: None,
        req: "mallory".into(),
        apr: None,
        gjti: None,
        txn: None,
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn forged_credential_secrets_add_nothing_to_the_revocation_list_and_others_still_revoke() {
    let c = cluster();
    let op = shared_operator().await;
    let admin = c.client().await;
    let mallory = c.user_client("mallory").await;
    let ns = tenant_namespace(&c, &admin, "forge", false).await;
    let other = tenant_namespace(&c, &admin, "forge-victim", false).await;

    // Another tenant's running agent pod, with a token-like credential we
    // pretend leaked to mallory (its certificate and serial).
    let (victim, victim_data) = victim_pod(&admin, &other.name, "victim-1", false).await;
    let victim_serial = serial_of(&victim_data["tls.crt"]);

    // Mallory's forgery: Writ's label and finalizer, a certificate of her
    // own CA, the victim's certificate, and tokens no Writ key signed (one
    // with a 40 kB jti and a far-future expiry, one unsigned).
    let now = writ::pki::now_unix();
    let her_ca = CertificateAuthority::generate("Writ CA test.writ.dev", now - 60, 86_400).expect("ca");
    let her_cert = her_ca
        .issue(&PodCertificateRequest {
            spiffe_id: format!("spiffe://test.writ.dev/ns/{}/agent/release-bot", ns.name),
            namespace: ns.name.clone(),
            pod_name: "fake".into(),
            pod_uid: "fake-uid".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            not_before: now,
            ttl_secs: 3600,
        })
        .expect("cert");
    let her_key = SigningKey::generate().expect("key");
    let huge_jti = "J".repeat(40_000);
    let far = now + 100 * 365 * 86_400;
    let signed = token::sign(&her_key, &forged_claims(&ns.name, "fake", huge_jti.clone(), far)).expect("sign");
    let small_jti = "AAAAAAAAAAAAAAAAAAAAAA".to_string();
    let plausible =
        token::sign(&her_key, &forged_claims(&ns.name, "fake", small_jti.clone(), now + 600)).expect("sign");
    let unsigned = format!("{}.", plausible.rsplit_once('.').expect("jws").0);
    let forged = |name: &str, cert: &str| {
        serde_json::from_value::<Secret>(json!({
            "metadata": {"name": name, "labels": {"writ.dev/pod": "fake", "writ.dev/agent": "release-bot"},
                         "finalizers": ["writ.dev/revoke"]},
            "data": {"tls.crt": b64(cert), "tls.key": b64("not a key"),
                     "grant.a.jwt": b64(&signed), "grant.b.jwt": b64(&unsigned), "grant.c.jwt": b64(&plausible)}
        }))
        .expect("secret")
    };
    let secrets: Api<Secret> = Api::namespaced(mallory.clone(), &ns.name);
    for (name, cert) in [("forged-1", her_cert.chain_pem.as_str()), ("forged-2", victim_data["tls.crt"].as_str())] {
        secrets.create(&PostParams::default(), &forged(name, cert)).await.expect("mallory may create Secrets");
        secrets.delete(name, &DeleteParams::default()).await.expect("mallory may delete Secrets");
    }
    // Writ releases its finalizer on each (it held nothing of Writ's).
    for name in ["forged-1", "forged-2"] {
        eventually(Duration::from_secs(20), &format!("{name} released and gone"), || async {
            secrets.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    let list = revocations(op).await;
    let jtis: Vec<&str> = list.tokens.iter().map(|t| t.jti.as_str()).collect();
    assert!(!jtis.contains(&huge_jti.as_str()) && !jtis.contains(&small_jti.as_str()), "forged jtis listed");
    assert!(list.tokens.iter().all(|t| t.jti.len() <= 64 && t.expires_at < far), "an oversized or endless entry");
    let serials: Vec<&str> = list.certificates.iter().map(|c| c.serial.as_str()).collect();
    assert!(!serials.contains(&victim_serial.as_str()), "the victim's serial was revoked through a forged Secret");
    assert!(!serials.contains(&her_cert.serial_hex.as_str()), "a serial of another CA was listed");

    // The victim's credential is untouched, and its own revocation goes through.
    let victim_secrets: Api<Secret> = Api::namespaced(admin.clone(), &other.name);
    let stored = secret_data(&victim_secrets.get(&credential_secret_name(&victim)).await.expect("victim Secret"));
    assert_eq!(serial_of(&stored["tls.crt"]), victim_serial);
    assert!(stored.contains_key("tls.key"));
    set_pod_phase(&admin, &other.name, "victim-1", "Succeeded").await;
    eventually(Duration::from_secs(20), "the victim's serial on the revocation list", || async {
        revocations(op).await.certificates.iter().any(|c| c.serial == victim_serial).then_some(())
    })
    .await;
    ns.cleanup().await;
    other.cleanup().await;
}

#[tokio::test]
async fn relabelling_or_reannotating_a_pod_is_refused_and_touches_no_other_credential() {
    let c = cluster();
    let op = shared_operator().await;
    let admin = c.client().await;
    let mallory = c.user_client("mallory").await;
    let ns = tenant_namespace(&c, &admin, "relabel", false).await;
    let (victim, data) = victim_pod(&admin, &ns.name, "victim-1", false).await;
    let victim_secret = credential_secret_name(&victim);
    let serial = serial_of(&data["tls.crt"]);
    let pods: Api<Pod> = Api::namespaced(mallory.clone(), &ns.name);

    // A plain pod, then the claim and the victim's Secret added to it.
    let plain: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain", "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &plain).await.expect("a plain pod is admitted");
    let claim = json!({"metadata": {"labels": {"writ.dev/agent": "nosuch"},
                                    "annotations": {"writ.dev/credential-secret": victim_secret}}});
    let refused = pods.patch("plain", &PatchParams::default(), &Patch::Merge(claim)).await.expect_err("refused");
    let text = refused.to_string();
    assert!(text.contains("metadata.labels[writ.dev/agent]") && text.contains("pod-writ-metadata-immutable"), "{text}");

    // The admitted agent pod: relabelled, re-annotated, label removed.
    for (what, patch) in [
        ("relabel", json!({"metadata": {"labels": {"writ.dev/agent": "nosuch"}}})),
        ("re-annotate", json!({"metadata": {"annotations": {"writ.dev/credential-secret": "db-password"}}})),
        ("unlabel", json!({"metadata": {"labels": {"writ.dev/agent": null}}})),
        ("add", json!({"metadata": {"annotations": {"writ.dev/anything": "x"}}})),
    ] {
        let err = pods.patch("victim-1", &PatchParams::default(), &Patch::Merge(patch)).await.expect_err(what);
        assert!(err.to_string().contains("[pod-writ-metadata-immutable]"), "{what}: {err}");
    }
    // Other metadata changes as before.
    pods.patch("victim-1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})))
        .await
        .expect("other labels change freely");

    // Nothing of the victim's was touched.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let now = secret_data(&secrets.get(&victim_secret).await.expect("victim Secret"));
    assert_eq!(serial_of(&now["tls.crt"]), serial);
    assert!(now.contains_key("tls.key"));
    assert!(!revocations(op).await.certificates.iter().any(|c| c.serial == serial));
    ns.cleanup().await;
}

#[tokio::test]
async fn an_unrelated_secret_named_by_a_pod_is_never_written_owned_or_deleted() {
    let c = cluster();
    let op = shared_operator().await;
    let admin = c.client().await;
    let mallory = c.user_client("mallory").await;
    for skipped in [false, true] {
        let ns = tenant_namespace(&c, &admin, if skipped { "dbpw-skipped" } else { "dbpw" }, skipped).await;
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
        let db: Secret = serde_json::from_value(json!({
            "metadata": {"name": "db-password"}, "stringData": {"password": "hunter2"}
        }))
        .expect("secret");
        let before = secrets.create(&PostParams::default(), &db).await.expect("db-password");
        // A victim agent pod, to point at as well.
        let (victim, data) = victim_pod(&admin, &ns.name, "victim-1", skipped).await;
        let victim_secret = credential_secret_name(&victim);
        let serial = serial_of(&data["tls.crt"]);

        // Mallory's agent pod naming db-password; and (where admission is
        // skipped) a plain pod later claiming an agent and the victim's Secret.
        let mut thief = agent_pod("thief", "release-bot", "release-bot");
        thief.annotations_mut().insert("writ.dev/credential-secret".into(), "db-password".into());
        let pods: Api<Pod> = Api::namespaced(mallory.clone(), &ns.name);
        let admitted = pods.create(&PostParams::default(), &thief).await.expect("agent pod admitted");
        set_pod_phase(&admin, &ns.name, "thief", "Running").await;
        if skipped {
            assert_eq!(credential_secret_name(&admitted), "db-password", "no webhook replaced the annotation");
            wait_event(&admin, &ns.name, "thief", "CredentialSecretRefused").await;
            let plain: Pod = serde_json::from_value(json!({
                "metadata": {"name": "plain"},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]}
            }))
            .expect("pod");
            pods.create(&PostParams::default(), &plain).await.expect("plain pod");
            let claim = json!({"metadata": {"labels": {"writ.dev/agent": "nosuch"},
                                            "annotations": {"writ.dev/credential-secret": victim_secret}}});
            pods.patch("plain", &PatchParams::default(), &Patch::Merge(claim)).await.expect("no webhook to refuse");
            wait_event(&admin, &ns.name, "plain", "CredentialSecretRefused").await;
        } else {
            assert_ne!(credential_secret_name(&admitted), "db-password", "the webhook names the pod's own Secret");
            wait_for_credential(&admin, &ns.name, &admitted).await;
        }
        let after = secrets.get("db-password").await.expect("db-password is there");
        assert_eq!(after.resource_version(), before.resource_version(), "never written to");
        assert!(after.owner_references().is_empty() && after.finalizers().is_empty() && after.labels().is_empty());
        assert_eq!(secret_data(&after).get("password").map(String::as_str), Some("hunter2"));
        let victim_now = secret_data(&secrets.get(&victim_secret).await.expect("victim Secret"));
        assert_eq!(serial_of(&victim_now["tls.crt"]), serial, "the victim's credential is untouched");
        assert!(victim_now.contains_key("tls.key"));
        assert!(!revocations(op).await.certificates.iter().any(|c| c.serial == serial));

        // Deleting the pod deletes nothing of the tenant's.
        pods.delete("thief", &DeleteParams::default()).await.expect("mallory deletes her pod");
        eventually(Duration::from_secs(20), "the pod gone", || async {
            pods.get_opt("thief").await.ok()?.is_none().then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let kept = secrets.get_opt("db-password").await.expect("read");
        assert!(kept.is_some_and(|s| s.resource_version() == before.resource_version()), "db-password kept as it was");
        ns.cleanup().await;
    }
}

#[tokio::test]
async fn a_pod_mounting_another_pods_credential_secret_is_refused_or_found_and_the_victim_rotated() {
    let c = cluster();
    let op = shared_operator().await;
    let admin = c.client().await;
    let mallory = c.user_client("mallory").await;
    let intruder = |secret: &str, how: &str| -> Pod {
        let spec = match how {
            "volume" => json!({"volumes": [{"name": "v", "secret": {"secretName": secret}}],
                               "containers": [{"name": "c", "image": "registry.invalid/x:1",
                                               "volumeMounts": [{"name": "v", "mountPath": "/stolen"}]}]}),
            "projected" => json!({"volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": secret}}]}}],
                                  "containers": [{"name": "c", "image": "registry.invalid/x:1"}]}),
            "env" => json!({"containers": [{"name": "c", "image": "registry.invalid/x:1",
                            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": secret, "key": "tls.key"}}}]}]}),
            _ => json!({"containers": [{"name": "c", "image": "registry.invalid/x:1",
                        "envFrom": [{"secretRef": {"name": secret}}]}]}),
        };
        serde_json::from_value(json!({"metadata": {"name": format!("intruder-{}", how.to_lowercase())}, "spec": spec}))
            .expect("pod")
    };

    // Admission refuses each way of reading the victim's Secret.
    let ns = tenant_namespace(&c, &admin, "mount", false).await;
    let (victim, _) = victim_pod(&admin, &ns.name, "victim-1", false).await;
    let victim_secret = credential_secret_name(&victim);
    let pods: Api<Pod> = Api::namespaced(mallory.clone(), &ns.name);
    for how in ["volume", "projected", "env", "envFrom"] {
        let err = pods.create(&PostParams::default(), &intruder(&victim_secret, how)).await.expect_err(how);
        let text = err.to_string();
        assert!(text.contains("[foreign-credential-mount]") && text.contains("victim-1"), "{how}: {text}");
    }
    // A pod reading an ordinary Secret is not Writ's business.
    let plain = intruder("db-password", "env");
    pods.create(&PostParams::default(), &plain).await.expect("ordinary Secrets are mounted freely");
    ns.cleanup().await;

    // With admission skipped, the controller finds it and rotates the victim.
    let ns = tenant_namespace(&c, &admin, "mount-skipped", true).await;
    let (victim, data) = victim_pod(&admin, &ns.name, "victim-1", true).await;
    let victim_secret = credential_secret_name(&victim);
    let old_serial = serial_of(&data["tls.crt"]);
    let pods: Api<Pod> = Api::namespaced(mallory.clone(), &ns.name);
    pods.create(&PostParams::default(), &intruder(&victim_secret, "envFrom")).await.expect("no webhook to refuse");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let new_serial = eventually(Duration::from_secs(15), "the victim's credential rotated", || async {
        let d = secret_data(&secrets.get(&victim_secret).await.ok()?);
        let serial = serial_of(d.get("tls.crt")?);
        (serial != old_serial && d.contains_key("tls.key")).then_some(serial)
    })
    .await;
    assert_ne!(new_serial, old_serial);
    let list = revocations(op).await;
    assert!(list.certificates.iter().any(|c| c.serial == old_serial), "the old serial is revoked");
    assert!(!list.certificates.iter().any(|c| c.serial == new_serial));
    wait_event(&admin, &ns.name, "victim-1", "CredentialExposed").await;
    wait_event(&admin, &ns.name, "intruder-envfrom", "ForeignCredentialMount").await;
    let exposed = op.metric("writ_untrusted_total", &["what=\"credential-mount\""]).await;
    assert!(exposed.is_some_and(|n| n >= 1.0), "counted: {exposed:?}");
    let log = op.log_text();
    assert!(log.contains("credential Secret read by another pod"), "audit line");
    assert!(!log.contains("BEGIN PRIVATE KEY") && !log.contains("BEGIN EC PRIVATE KEY"), "key material in the log");
    ns.cleanup().await;
}

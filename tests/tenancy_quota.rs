//! Operators of their own, with flags the shared one does not have: the
//! revocation list's per-namespace quota, end to end on the real API server
//! (one namespace at its quota cannot revoke: its grant stays, its token
//! stays known as active, fail closed; another namespace's revocation goes
//! through at once), and webhooks that answer only the webhook client CA's
//! certificates. One at a time: each operator registers the webhooks.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use writ::{
    api::{CapabilityGrant, GrantPhase},
    state::revocations::{RevocationStore, MAX_PART_BYTES, PARTS},
    verify::RevokedCertificate,
};

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Removes the finalizers of a namespace's grants and Secrets (the operator
/// that would have removed them is gone).
async fn release(client: &kube::Client, ns: &str) {
    let unfinalize = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), ns);
    for g in grants.list(&Default::default()).await.expect("grants") {
        let _ = grants.patch(&g.metadata.name.expect("name"), &PatchParams::default(), &unfinalize).await;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for s in secrets.list(&Default::default()).await.expect("secrets") {
        if s.metadata.finalizers.is_some() {
            let _ = secrets.patch(&s.metadata.name.expect("name"), &PatchParams::default(), &unfinalize).await;
        }
    }
}

#[tokio::test]
async fn a_namespace_at_its_quota_keeps_its_grant_while_another_namespace_revokes() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let op_ns = format!("writ-quota-{}", std::process::id());
    let [endpoints_port] = free_ports();
    let endpoints_addr = format!("127.0.0.1:{endpoints_port}");
    let op =
        Operator::start(&c, &op_ns, "q", &["--revocation-namespace-quota", "1", "--endpoints-addr", &endpoints_addr])
            .await;
    // The trust endpoints have a port of their own, without the webhooks.
    let curl = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &format!("https://{endpoints_addr}{path}")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("/trust-bundle"), "200");
    assert_eq!(curl("/revocations"), "200");
    assert_eq!(curl("/validate/capabilitygrants"), "404", "no webhook on the endpoints port");
    let full = TestNamespace::new(&client, "quota-full").await;
    let free = TestNamespace::new(&client, "quota-free").await;
    let mut tokens = Vec::new();
    for ns in [&full.name, &free.name] {
        example_setup(&c, &client, ns).await;
        let bot = running_agent_pod(&client, ns, "bot-1", "release-bot").await;
        let (ok, out) = apply_as(&c, Some("alice"), ns, &grant_yaml("g", "release-bot", &[WEB], "15m", None));
        assert!(ok, "{out}");
        wait_phase(&client, ns, "g", GrantPhase::Active, Duration::from_secs(15)).await;
        let token = wait_for_token(&client, ns, &bot, "g").await;
        let audience = service_account_token(&client, ns, "deploy-api").await;
        tokens.push((token, audience));
    }

    // Fill `full`'s share (1% of the list) to within 30 bytes, as revocations
    // for that namespace written to the operator's list by another writer.
    let quota = PARTS * MAX_PART_BYTES / 100;
    let now = writ::pki::now_unix();
    let exp = now + 3_600;
    let filler =
        std::sync::Arc::new(RevocationStore::load(&client, &op_ns).await.expect("load").with_namespace_quota(100));
    let certificates: Vec<RevokedCertificate> =
        (0..800).map(|i| RevokedCertificate { serial: format!("{i:032x}"), expires_at: exp }).collect();
    filler.revoke(&full.name, vec![], certificates, now).await.expect("filled");
    let used = filler.usage(now).await.namespaces[0].1;
    let entry_len = |serial: &str| {
        serde_json::to_string(&serde_json::json!({"serial": serial, "expiresAt": exp, "ns": full.name}))
            .expect("json")
            .len()
            + 1
    };
    let pad = quota - used - 30 - entry_len("");
    let last = RevokedCertificate { serial: "f".repeat(pad), expires_at: exp };
    filler.revoke(&full.name, vec![], vec![last], now).await.expect("filled to the brim");
    let held = filler.usage(now).await.namespaces[0].1;
    assert!(held <= quota && quota - held == 30, "{held} of {quota}");
    let labels = format!(r#"namespace="{}""#, full.name);
    eventually(Duration::from_secs(20), "the operator to see the namespace at its quota", || async {
        (op.metric("writ_revocation_namespace_quota_ratio", &[&labels]).await? > 0.99).then_some(())
    })
    .await;
    let ratio = op.metric("writ_revocation_list_capacity_ratio", &[]).await.expect("capacity ratio");
    assert!(ratio > 0.009 && ratio < 0.02, "{ratio}");

    // The full namespace's revocation is refused: its grant stays, and its
    // token is still active for its audience (fail closed, nothing removed).
    let grants_full: Api<CapabilityGrant> = Api::namespaced(client.clone(), &full.name);
    grants_full.delete("g", &DeleteParams::default()).await.expect("delete");
    let refusal = format!("namespace {} is over its revocation quota", full.name);
    eventually(Duration::from_secs(20), "the operator to refuse the revocation", || async {
        op.log_text().contains(&refusal).then_some(())
    })
    .await;
    assert!(
        op.log_text().contains("set by --revocation-namespace-quota / WRIT_REVOCATION_NAMESPACE_QUOTA"),
        "{}",
        op.log_tail()
    );
    let g = grants_full.get("g").await.expect("the grant stays until its revocation is durable");
    assert!(g.metadata.deletion_timestamp.is_some());
    let (token, audience) = &tokens[0];
    let (_, body) = op.https_post_form_as("/introspect", &format!("token={token}"), audience).await;
    assert!(body.contains(r#""active":true"#), "{body}");

    // The other namespace revokes at once, meanwhile.
    let grants_free: Api<CapabilityGrant> = Api::namespaced(client.clone(), &free.name);
    grants_free.delete("g", &DeleteParams::default()).await.expect("delete");
    eventually(Duration::from_secs(15), "the other namespace's grant to be revoked and gone", || {
        let grants = grants_free.clone();
        async move { grants.get_opt("g").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let (token, audience) = &tokens[1];
    let (_, body) = op.https_post_form_as("/introspect", &format!("token={token}"), audience).await;
    assert_eq!(body, r#"{"active":false}"#);
    assert!(grants_full.get_opt("g").await.expect("get").is_some(), "still held back");

    op.kill();
    release(&client, &full.name).await;
    release(&client, &free.name).await;
    full.cleanup().await;
    free.cleanup().await;
}

/// Under `--webhook-client-ca`, the webhook paths answer only a client
/// certificate chained to that CA (what the API server presents when its
/// AdmissionConfiguration names one); the trust endpoints on the same port
/// stay open, and a certificate of another CA counts as none.
#[tokio::test]
async fn webhooks_under_a_client_ca_answer_only_its_certificates() {
    use writ::pki::{
        ca::{CertificateAuthority, CertificateIssuer},
        cert::{spiffe_id, KeyAlgorithm, PodCertificateRequest},
    };
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let now = writ::pki::now_unix();
    let issue = |ca: &CertificateAuthority, name: &str| {
        let issued = ca
            .issue(&PodCertificateRequest {
                spiffe_id: spiffe_id("example.org", "clients", name),
                namespace: "clients".into(),
                pod_name: name.into(),
                pod_uid: "uid".into(),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                not_before: now - 60,
                ttl_secs: 600,
            })
            .expect("issued");
        let (cert, key) = (dir.path().join(format!("{name}.crt")), dir.path().join(format!("{name}.key")));
        std::fs::write(&cert, &issued.chain_pem).expect("write");
        std::fs::write(&key, &issued.key_pem).expect("write");
        (cert, key)
    };
    let clients_ca = CertificateAuthority::generate("apiserver-webhook-clients", now - 60, 3_600).expect("CA");
    let other_ca = CertificateAuthority::generate("someone-else", now - 60, 3_600).expect("CA");
    let ca_file = dir.path().join("clients-ca.pem");
    std::fs::write(&ca_file, clients_ca.cert_pem()).expect("write");
    let op_ns = format!("writ-clientca-{}", std::process::id());
    let op = Operator::start(&c, &op_ns, "w", &["--webhook-client-ca", ca_file.to_str().expect("path")]).await;

    let review = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-1"}})
    .to_string();
    let post = |cert: Option<&(std::path::PathBuf, std::path::PathBuf)>| {
        let mut args = vec![
            "-sk".to_string(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data".into(),
            review.clone(),
        ];
        if let Some((cert, key)) = cert {
            args.extend(["--cert".into(), cert.display().to_string(), "--key".into(), key.display().to_string()]);
        }
        args.push(format!("{}/validate/capabilitygrants", op.url));
        let out = std::process::Command::new("curl").args(&args).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(post(None), "403", "no certificate");
    assert_eq!(post(Some(&issue(&other_ca, "stranger"))), "403", "another CA's certificate counts as none");
    assert_eq!(post(Some(&issue(&clients_ca, "kube-apiserver"))), "200", "the webhook client CA's");
    let (status, _) = op.https_get("/trust-bundle").await;
    assert_eq!(status, 200, "the trust endpoints need no certificate");
    op.kill();
    // Webhooks that answer only a certificate the test API server does not
    // present would refuse every grant and pod: unregister them.
    remove_webhooks(&c.client().await).await;
}

//! Pod identity on the real API server: injection at admission, minting,
//! rotation, revocation, garbage collection.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{api::Api, runtime::WatchStreamExt, Client, ResourceExt};
use x509_parser::prelude::*;

const IDENTITY: &str = r#"
apiVersion: writ.dev/v1alpha1
kind: AgentIdentity
metadata: {name: release-bot}
spec:
  class: Agent
  serviceAccountName: release-bot
  owner: team-platform
  credential: {ttl: TTL, rotateBefore: ROTATE, keyAlgorithm: ALG}
  ceiling:
    - {action: "k8s:deployments.get", resource: "k8s:staging/deployments/*"}
"#;

async fn setup(c: &Cluster, client: &Client, ns: &str, ttl: &str, rotate: &str, alg: &str) {
    service_account(client, ns, "release-bot").await;
    let manifest = IDENTITY.replace("TTL", ttl).replace("ROTATE", rotate).replace("ALG", alg);
    let (ok, out) = apply_as(c, None, ns, &manifest);
    assert!(ok, "creating the AgentIdentity: {out}");
}

fn pem_der(pem: &str) -> Vec<u8> {
    ::pem::parse(pem.as_bytes()).expect("pem").into_contents()
}

#[tokio::test]
async fn an_agent_pod_gets_a_pod_bound_certificate_that_chains_to_the_bundle() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "issue").await;
    setup(&c, &client, &ns.name, "1h", "20m", "ECDSA-P256").await;

    let pod =
        create_pod(&client, &ns.name, &agent_pod("agent-1", "release-bot", "release-bot")).await.expect("pod admitted");
    // Injection: the Secret volume, the mount in every container, the environment.
    let spec = pod.spec.clone().expect("spec");
    let secret_name = credential_secret_name(&pod);
    assert!(secret_name.starts_with("writ-cred-"));
    let vol = spec.volumes.iter().flatten().find(|v| v.name == "writ-credentials").expect("volume injected");
    assert_eq!(vol.secret.as_ref().and_then(|s| s.secret_name.as_deref()), Some(secret_name.as_str()));
    let container = &spec.containers[0];
    assert!(container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == "/var/run/secrets/writ.dev/" && m.read_only == Some(true)));
    let spiffe = format!("spiffe://test.writ.dev/ns/{}/agent/release-bot", ns.name);
    assert!(container
        .env
        .iter()
        .flatten()
        .any(|e| e.name == "WRIT_SPIFFE_ID" && e.value.as_deref() == Some(spiffe.as_str())));

    let data = wait_for_credential(&client, &ns.name, &pod).await;
    assert_eq!(data["spiffe-id"], spiffe);
    let leaf_der = pem_der(&data["tls.crt"]);
    let (_, cert) = X509Certificate::from_der(&leaf_der).expect("leaf parses");
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .expect("san ext")
        .expect("has SAN")
        .value
        .general_names
        .iter()
        .map(|n| format!("{n}"))
        .collect();
    assert_eq!(sans.len(), 1, "exactly one SAN: {sans:?}");
    assert!(sans[0].contains(&spiffe), "{sans:?}");
    let subject = cert.subject().to_string();
    assert!(subject.contains(&pod.uid().expect("uid")), "pod UID in subject: {subject}");
    assert!(subject.contains("agent-1"), "pod name in subject: {subject}");
    assert!(!cert.is_ca());

    // Chains to the published trust bundle (ConfigMap in the pod's namespace).
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let bundle = eventually(Duration::from_secs(10), "trust bundle ConfigMap", || async {
        cms.get_opt("writ-trust-bundle").await.ok()?.and_then(|cm| cm.data?.get("ca.crt").cloned())
    })
    .await;
    let ca_der = pem_der(&bundle);
    let (_, ca) = X509Certificate::from_der(&ca_der).expect("ca parses");
    cert.verify_signature(Some(ca.public_key())).expect("leaf signed by the bundle's CA");
    assert_eq!(data["ca.crt"], bundle);

    // Owned by the pod, so the garbage collector deletes it with the pod.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret = secrets.get(&secret_name).await.expect("secret");
    let owner = &secret.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Pod", pod.uid().expect("uid").as_str()));

    // Status of the identity.
    let ids: Api<writ::api::AgentIdentity> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(10), "identity status", || async {
        let st = ids.get("release-bot").await.ok()?.status?;
        (st.spiffe_id.as_deref() == Some(spiffe.as_str()) && st.bound_pods == 1).then_some(())
    })
    .await;
    assert!(!op.log_text().contains("BEGIN PRIVATE KEY"), "key material in the operator log");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_pod_with_another_service_account_is_rejected_at_admission() {
    with_namespace("wrongsa", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        setup(c, client, n, "1h", "20m", "Ed25519").await;
        service_account(client, n, "intruder").await;
        let err = create_pod(client, n, &agent_pod("impostor", "release-bot", "intruder"))
            .await
            .expect_err("must be rejected");
        let msg = err.to_string();
        assert!(msg.contains("spec.serviceAccountName") && msg.contains("release-bot"), "{msg}");
        let err = create_pod(client, n, &agent_pod("ghost", "no-such-agent", "release-bot"))
            .await
            .expect_err("unknown identity");
        assert!(err.to_string().contains("does not exist"), "{err}");
        // Pods without the label are not Writ's business.
        let mut plain = agent_pod("plain", "x", "intruder");
        plain.metadata.labels = None;
        let stored = create_pod(client, n, &plain).await.expect("unlabelled pod admitted");
        assert!(stored.annotations().get("writ.dev/credential-secret").is_none());
    })
    .await;
}

#[tokio::test]
async fn a_short_lived_certificate_is_rotated_with_a_new_key() {
    with_namespace("rotate", |s| async move {
        let (c, client, n) = (&s.c, &s.client, s.ns.as_str());
        setup(c, client, n, "20s", "10s", "ECDSA-P256").await;
        let pod = create_pod(client, n, &agent_pod("agent-r", "release-bot", "release-bot")).await.expect("pod");
        let first = wait_for_credential(client, n, &pod).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
        let name = credential_secret_name(&pod);
        let second = eventually(Duration::from_secs(25), "rotation", || async {
            let d = secret_data(&secrets.get(&name).await.ok()?);
            (d.get("tls.crt") != first.get("tls.crt")).then_some(d)
        })
        .await;
        assert_ne!(first["tls.key"], second["tls.key"], "rotation must use a new key");
    })
    .await;
}

#[tokio::test]
async fn a_finished_pod_is_revoked_and_its_key_removed() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "finish").await;
    setup(&c, &client, &ns.name, "1h", "20m", "ECDSA-P256").await;
    let pod = create_pod(&client, &ns.name, &agent_pod("agent-f", "release-bot", "release-bot")).await.expect("pod");
    let data = wait_for_credential(&client, &ns.name, &pod).await;
    let serial = writ::pki::cert::CertificateInfo::from_pem(&data["tls.crt"]).expect("cert").serial_hex;
    set_pod_phase(&client, &ns.name, "agent-f", "Succeeded").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let name = credential_secret_name(&pod);
    eventually(Duration::from_secs(10), "key removal", || async {
        let d = secret_data(&secrets.get(&name).await.ok()?);
        (!d.contains_key("tls.key")).then_some(())
    })
    .await;
    let (code, body) = op.https_get("/revocations").await;
    assert_eq!(code, 200);
    assert!(body.contains(&format!("\"{serial}\"")), "serial {serial} not in {body}");
    ns.cleanup().await;
}

#[tokio::test]
async fn deleting_a_pod_deletes_its_secret_and_revokes_the_serial() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "gc").await;
    setup(&c, &client, &ns.name, "1h", "20m", "Ed25519").await;
    let pod = create_pod(&client, &ns.name, &agent_pod("agent-g", "release-bot", "release-bot")).await.expect("pod");
    let data = wait_for_credential(&client, &ns.name, &pod).await;
    let serial = writ::pki::cert::CertificateInfo::from_pem(&data["tls.crt"]).expect("cert").serial_hex;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.delete("agent-g", &Default::default()).await.expect("delete pod");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let name = credential_secret_name(&pod);
    eventually(Duration::from_secs(60), "garbage collection of the credential Secret", || async {
        secrets.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    let (_, body) = op.https_get("/revocations").await;
    assert!(body.contains(&format!("\"{serial}\"")), "serial {serial} not in {body}");
    ns.cleanup().await;
}

#[tokio::test]
async fn deleting_a_live_pods_secret_revokes_it_and_issues_one_new_credential() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "resecret").await;
    setup(&c, &client, &ns.name, "1h", "20m", "ECDSA-P256").await;
    let pod = create_pod(&client, &ns.name, &agent_pod("agent-r", "release-bot", "release-bot")).await.expect("pod");
    let data = wait_for_credential(&client, &ns.name, &pod).await;
    let serial = |pem: &str| writ::pki::cert::CertificateInfo::from_pem(pem).expect("cert").serial_hex;
    let first = serial(&data["tls.crt"]);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let name = credential_secret_name(&pod);

    // Every version of the Secret from here on: (being deleted, serial, has key).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(bool, String, bool)>::new()));
    let watch = {
        let (secrets, seen) = (secrets.clone(), seen.clone());
        let config = kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
        tokio::spawn(async move {
            let mut events = std::pin::pin!(kube::runtime::watcher(secrets, config).applied_objects());
            while let Some(Ok(s)) = futures::StreamExt::next(&mut events).await {
                let d = secret_data(&s);
                let cert = d.get("tls.crt").map(|p| serial(p)).unwrap_or_default();
                seen.lock().expect("seen").push((
                    s.metadata.deletion_timestamp.is_some(),
                    cert,
                    d.contains_key("tls.key"),
                ));
            }
        })
    };
    eventually(Duration::from_secs(10), "the test's watch of the Secret", || async {
        (!seen.lock().expect("seen").is_empty()).then_some(())
    })
    .await;
    secrets.delete(&name, &Default::default()).await.expect("delete the credential Secret");

    // Revoked (its serial published, key removed), then gone, then a new
    // credential in a new Secret.
    let second = eventually(Duration::from_secs(30), "a new credential Secret", || async {
        let s = secrets.get_opt(&name).await.ok()??;
        let d = secret_data(&s);
        let fresh = s.metadata.deletion_timestamp.is_none() && d.contains_key("tls.key");
        fresh.then(|| serial(&d["tls.crt"])).filter(|s| *s != first)
    })
    .await;
    let (code, body) = op.https_get("/revocations").await;
    assert_eq!(code, 200);
    assert!(body.contains(&format!("\"{first}\"")), "deleted credential {first} not revoked: {body}");
    // The new credential stays and is not revoked, and nothing was ever
    // written into the old Secret while it was being deleted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.abort();
    let now = secret_data(&secrets.get(&name).await.expect("the new Secret"));
    assert_eq!(serial(&now["tls.crt"]), second, "the new credential is kept");
    let (_, body) = op.https_get("/revocations").await;
    assert!(!body.contains(&format!("\"{second}\"")), "the new credential {second} was revoked: {body}");
    let seen = seen.lock().expect("seen").clone();
    let written_while_deleted: Vec<_> = seen.iter().filter(|(deleting, s, _)| *deleting && *s != first).collect();
    assert!(written_while_deleted.is_empty(), "credentials written into the Secret being deleted: {seen:?}");
    assert!(seen.iter().any(|(deleting, s, key)| *deleting && *s == first && !key), "revoked before release: {seen:?}");
    ns.cleanup().await;
}

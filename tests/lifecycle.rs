//! The lifecycle and the trust path on the real API server: only the
//! authorising policy's approvers decide, an approval that never comes ends
//! the grant at its deadline, a leader stopped with SIGTERM hands over at
//! once, and a token bound to a certificate of a brought intermediate CA
//! verifies against the offline root alone. The tests of this file run one
//! at a time: each starts its own operators, which register the webhook
//! configurations.

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Secret},
    ByteString,
};
use kube::api::{Api, PostParams};
use writ::api::{CapabilityGrant, GrantPhase};

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");
const DELETE: (&str, &str) = ("k8s:deployments.delete", "k8s:staging/deployments/web-canary");

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn operator_namespace(what: &str) -> String {
    format!("writ-{what}-{}", std::process::id())
}

/// `writ approve|deny GRANT -n NS` as a test user: (success, output).
fn decide(c: &Cluster, verb: &str, user: &str, ns: &str, grant: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args([verb, grant, "-n", ns, "--reason", "test"])
        .env("KUBECONFIG", c.user_kubeconfig(user))
        .output()
        .expect("writ approve/deny");
    (out.status.success(), text(&out))
}

#[tokio::test]
async fn an_approver_of_an_unrelated_policy_is_refused_for_approve_and_deny() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let _op = Operator::start(&c, &operator_namespace("authority"), "auth-0", &[]).await;
    let ns = TestNamespace::new(&client, "authority").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    // QA may hand the same agent the same work; its approvers are the platform admins (dave).
    let qa = r#"
apiVersion: writ.dev/v1alpha1
kind: DelegationPolicy
metadata: {name: a-qa}
spec:
  delegators: [{group: qa}]
  delegates: [{agent: release-bot}]
  capabilities: [{action: "k8s:deployments.*", resource: "k8s:staging/deployments/*"}]
  maxTTL: 30m
  approval:
    required: [{action: "k8s:deployments.delete", resource: "k8s:*/deployments/*"}]
    approvers: [{group: platform-admins}]
"#;
    let (ok, out) = apply_as(&c, None, n, qa);
    assert!(ok, "{out}");
    // A release manager's delete grant, authorised by release-flow.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("cleanup", "release-bot", &[DELETE], "5m", None));
    assert!(ok, "{out}");
    let g = wait_phase(&client, n, "cleanup", GrantPhase::AwaitingApproval, Duration::from_secs(15)).await;
    let st = g.status.expect("status");
    assert_eq!(st.authorised_by.as_deref(), Some("release-flow"), "the authorising policy is recorded");
    assert!(st.approval_deadline.is_some(), "the approval deadline is shown");
    for verb in ["approve", "deny"] {
        let (ok, out) = decide(&c, verb, "dave", n, "cleanup");
        assert!(!ok && out.contains("not-an-approver"), "dave ({verb}): {out}");
        assert!(out.contains("release-flow"), "the refusal names the authorising policy: {out}");
    }
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), n);
    let g = grants.get("cleanup").await.expect("grant");
    assert!(g.spec.approval.is_none(), "a refused decision left a trace: {:?}", g.spec.approval);
    let stamped = g.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("writ.dev/approved-by"));
    assert!(!stamped, "a refused decision left an approver stamp");
    // release-flow's approver decides.
    let (ok, out) = decide(&c, "approve", "bob", n, "cleanup");
    assert!(ok, "bob is in sre-oncall: {out}");
    let g = wait_phase(&client, n, "cleanup", GrantPhase::Active, Duration::from_secs(15)).await;
    assert_eq!(g.status.expect("status").approved_by.as_deref(), Some("bob"));
    ns.cleanup().await;
}

#[tokio::test]
async fn an_approval_that_never_comes_ends_denied_at_its_deadline_and_a_late_approval_is_refused() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let _op = Operator::start(&c, &operator_namespace("deadline"), "deadline-0", &[]).await;
    let ns = TestNamespace::new(&client, "deadline").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    // The policy webhook refuses a timeout above the operator's maximum (24h by default)...
    let patch = |timeout: &str| {
        let p = format!(r#"{{"spec":{{"approval":{{"timeout":"{timeout}"}}}}}}"#);
        c.kubectl(&["patch", "-n", n, "delegationpolicy", "release-flow", "--type=merge", "-p", &p])
    };
    let out = patch("48h");
    assert!(!out.status.success(), "a 48h approval timeout was admitted");
    let said = text(&out);
    assert!(said.contains("spec.approval.timeout") && said.contains("--max-approval-wait"), "{said}");
    // ...and takes a short one.
    let out = patch("3s");
    assert!(out.status.success(), "{}", text(&out));
    // The operator's cache follows the policy by a watch (milliseconds); the
    // grant made after it is held to the 3s timeout.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("waits", "release-bot", &[DELETE], "5m", None));
    assert!(ok, "{out}");
    let g = wait_phase(&client, n, "waits", GrantPhase::AwaitingApproval, Duration::from_secs(3)).await;
    let created = g.metadata.creation_timestamp.as_ref().expect("created").0.as_second();
    let deadline = g.status.as_ref().and_then(|s| s.approval_deadline.as_ref()).expect("approvalDeadline").0;
    assert_eq!(deadline.as_second() - created, 3, "the deadline is creation + the policy's 3s");
    let g = wait_phase(&client, n, "waits", GrantPhase::Denied, Duration::from_secs(10)).await;
    let seen = jiff::Timestamp::now();
    let late = seen.as_second() - deadline.as_second();
    assert!((0..=2).contains(&late), "Denied {late}s after the deadline {deadline} (seen {seen})");
    let st = g.status.expect("status");
    assert!(st.reason.as_deref().is_some_and(|r| r.starts_with("approval-timeout")), "reason: {:?}", st.reason);
    let approved = st.conditions.iter().find(|c| c.type_ == "Approved").expect("Approved condition");
    assert_eq!((approved.status.as_str(), approved.reason.as_str()), ("False", "ApprovalTimeout"));
    // An approval after the deadline is refused, with the rule and a message.
    let (ok, out) = decide(&c, "approve", "bob", n, "waits");
    assert!(!ok && out.contains("approval-timeout") && out.contains("deadline"), "late approval: {out}");
    let g: CapabilityGrant = Api::namespaced(client.clone(), n).get("waits").await.expect("grant");
    assert_eq!(g.status.map(|s| s.phase), Some(GrantPhase::Denied));
    ns.cleanup().await;
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_hands_over_to_a_waiting_replica_within_two_seconds() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let op_ns = operator_namespace("handover");
    let a = Operator::start(&c, &op_ns, "a", &[]).await;
    eventually(Duration::from_secs(20), "replica a to lead", || async {
        (a.metric("writ_leader", &[]).await == Some(1.0)).then_some(())
    })
    .await;
    let b = Operator::start(&c, &op_ns, "b", &[]).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &op_ns);
    let holder = || async { leases.get_opt(writ::api::names::LEASE_NAME).await.ok().flatten()?.spec?.holder_identity };
    // b has looked at the Lease and follows.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(holder().await.as_deref(), Some("a"));
    assert_eq!(b.metric("writ_leader", &[]).await, Some(0.0), "two leaders");

    a.terminate();
    let stopped = Instant::now();
    eventually(Duration::from_secs(10), "replica b to hold the Lease", || async {
        (holder().await.as_deref() == Some("b")).then_some(())
    })
    .await;
    let held = stopped.elapsed();
    eventually(Duration::from_secs(5), "replica b to lead", || async {
        (b.metric("writ_leader", &[]).await == Some(1.0)).then_some(())
    })
    .await;
    let leading = stopped.elapsed();
    eprintln!("handover: Lease held by b {held:?}, b leading {leading:?} after SIGTERM (lease 6s)");
    assert!(leading < Duration::from_secs(2), "b led {leading:?} after the leader's SIGTERM:\n{}", a.log_tail());
    eventually(Duration::from_secs(10), "replica a to exit", || async { a.exited().then_some(()) }).await;
    assert!(a.log_text().contains("released the leader Lease"), "{}", a.log_tail());
}

/// Writes the Lease as a holder on another machine would: `holder` renewed
/// at its own wall time `renewed` (which may be minutes off).
async fn renew_as(leases: &Api<Lease>, holder: &str, renewed: jiff::Timestamp) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let lease = Lease {
        metadata: kube::api::ObjectMeta { name: Some(writ::api::names::LEASE_NAME.into()), ..Default::default() },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(6),
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        }),
    };
    let params = kube::api::PatchParams::apply("skewed-replica").force();
    leases
        .patch(writ::api::names::LEASE_NAME, &params, &kube::api::Patch::Apply(&lease))
        .await
        .expect("renewing the Lease");
}

#[tokio::test]
async fn a_holder_whose_clock_runs_minutes_off_keeps_the_lease_while_it_renews_and_loses_it_when_it_stops() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let op_ns = operator_namespace("skew");
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": op_ns}})).expect("namespace"),
        )
        .await
        .expect("operator namespace");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &op_ns);
    let holder = || async { leases.get_opt(writ::api::names::LEASE_NAME).await.ok().flatten()?.spec?.holder_identity };
    // Another replica holds the Lease, its clock five minutes behind.
    let behind = jiff::SignedDuration::from_mins(-5);
    renew_as(&leases, "skewed", jiff::Timestamp::now() + behind).await;
    let op = Operator::start(&c, &op_ns, "follower", &[]).await;
    // It keeps renewing (every 2s of a 6s lease) for 12s: never deposed.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(holder().await.as_deref(), Some("skewed"), "deposed a renewing holder:\n{}", op.log_tail());
        renew_as(&leases, "skewed", jiff::Timestamp::now() + behind).await;
    }
    assert_eq!(op.metric("writ_leader", &[]).await, Some(0.0), "two leaders");
    // Its last renewal, written with a clock five minutes ahead: once it
    // stops, the Lease is taken a lease duration later, not five minutes.
    renew_as(&leases, "skewed", jiff::Timestamp::now() + jiff::SignedDuration::from_mins(5)).await;
    let stopped = Instant::now();
    eventually(Duration::from_secs(15), "the waiting replica to take the unrenewed Lease", || async {
        (holder().await.as_deref() == Some("follower")).then_some(())
    })
    .await;
    let taken = stopped.elapsed();
    eprintln!("an unrenewed Lease taken after {taken:?} (lease 6s)");
    assert!(taken >= Duration::from_secs(5), "taken {taken:?} after the last renewal: before the lease ran out");
    drop(op);
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client).delete(&op_ns, &Default::default()).await;
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    path.to_str().expect("utf-8").to_string()
}

/// An offline root and an intermediate CA under it, brought to the
/// operator as its CA Secret (intermediate first, then the root; the
/// intermediate's key only).
struct CompanyPki {
    root_pem: String,
    root: rcgen::Issuer<'static, rcgen::KeyPair>,
    intermediate_pem: String,
    intermediate_key_pem: String,
}

fn ca_params(name: &str, constraints: rcgen::BasicConstraints) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(constraints);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params
}

fn company_pki() -> CompanyPki {
    let root_key = writ::pki::KeyAlgorithm::EcdsaP256.generate_key().expect("root key");
    let root_params = ca_params("Company Offline Root", rcgen::BasicConstraints::Constrained(1));
    let root_pem = root_params.self_signed(&root_key).expect("root").pem();
    let root = rcgen::Issuer::new(root_params, root_key);
    let key = writ::pki::KeyAlgorithm::EcdsaP256.generate_key().expect("intermediate key");
    let intermediate = ca_params("Company Writ Intermediate", rcgen::BasicConstraints::Constrained(0))
        .signed_by(&key, &root)
        .expect("intermediate");
    CompanyPki { root_pem, root, intermediate_pem: intermediate.pem(), intermediate_key_pem: key.serialize_pem() }
}

#[tokio::test]
async fn a_token_of_a_brought_intermediate_verifies_against_the_offline_root_and_a_broken_chain_is_refused() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let op_ns = operator_namespace("chain");
    let pki = company_pki();
    // The CA Secret exists before the operator starts (it waits for it otherwise).
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": op_ns}})).expect("namespace"),
        )
        .await
        .expect("operator namespace");
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("company-ca".into()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_string(), ByteString(format!("{}{}", pki.intermediate_pem, pki.root_pem).into_bytes())),
                ("tls.key".to_string(), ByteString(pki.intermediate_key_pem.clone().into_bytes())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), &op_ns).create(&PostParams::default(), &secret).await.expect("CA");
    let op = Operator::start(&c, &op_ns, "chain-0", &["--ca-secret", "company-ca"]).await;
    let ns = TestNamespace::new(&client, "chain").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    let pod = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("g", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let token = wait_for_token(&client, n, &pod, "g").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let tls_crt = secret_data(&secrets.get(&credential_secret_name(&pod)).await.expect("Secret"))["tls.crt"].clone();
    let blocks = pem::parse_many(&tls_crt).expect("pem");
    assert_eq!(blocks.len(), 2, "the pod presents its leaf and the intermediate");
    let (status, jwks) = op.https_get("/.well-known/jwks.json").await;
    assert_eq!(status, 200, "{jwks}");

    // The resource server trusts only the offline root.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (token_file, root_file, jwks_file) =
        (write(d, "token.jwt", &token), write(d, "root.pem", &pki.root_pem), write(d, "jwks.json", &jwks));
    let verify = |cert: &str, chain: Option<&str>| {
        let mut args = vec![
            "verify",
            "--token",
            token_file.as_str(),
            "--cert",
            cert,
            "--bundle",
            root_file.as_str(),
            "--jwks",
            jwks_file.as_str(),
            "--revocations",
            "none",
            "--audience",
            "deploy-api",
            "--action",
            WEB.0,
            "--resource",
            WEB.1,
        ];
        if let Some(chain) = chain {
            args.extend(["--chain", chain]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_writ")).args(&args).output().expect("writ verify");
        (out.status.code(), text(&out))
    };
    let full = write(d, "tls.crt", &tls_crt);
    let (code, out) = verify(&full, None);
    assert_eq!(code, Some(0), "the pod's chain to the root: {out}");
    assert!(out.starts_with("valid: spiffe://test.writ.dev/ns/"), "{out}");
    // The leaf and the intermediate in separate files verifies too.
    let leaf = write(d, "leaf.pem", &pem::encode(&blocks[0]));
    let intermediate = write(d, "intermediate.pem", &pem::encode(&blocks[1]));
    let (code, out) = verify(&leaf, Some(&intermediate));
    assert_eq!(code, Some(0), "--chain: {out}");
    // A broken chain: the leaf without its intermediate.
    let (code, out) = verify(&leaf, None);
    eprintln!("the leaf alone: {out}");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("refused (untrusted-certificate)"), "{out}");
    assert!(out.contains("Company Writ Intermediate") && out.contains("neither in the bundle"), "{out}");
    // A broken chain: an impostor intermediate under the root (same name, another key).
    let key = writ::pki::KeyAlgorithm::EcdsaP256.generate_key().expect("key");
    let impostor = ca_params("Company Writ Intermediate", rcgen::BasicConstraints::Constrained(0))
        .signed_by(&key, &pki.root)
        .expect("impostor");
    let impostor = write(d, "impostor.pem", &impostor.pem());
    let (code, out) = verify(&leaf, Some(&impostor));
    eprintln!("an impostor intermediate: {out}");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("refused (untrusted-certificate): the certificate does not chain"), "{out}");
    assert!(out.contains("signature on the path does not verify"), "{out}");
    ns.cleanup().await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client).delete(&op_ns, &Default::default()).await;
}

//! The day-two toolkit: `writ check --test` on the shipped example (pass and
//! fail, JSON and JUnit), shell completion and the kubectl plugin, and on the
//! real API server `writ status` on grants in every phase, identities and
//! pods, and the per-object series appearing and disappearing with their
//! objects.

mod common;

use std::{process::Command, time::Duration};

use common::*;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use writ::api::{CapabilityGrant, GrantPhase};

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");
const DELETE: (&str, &str) = ("k8s:deployments.delete", "k8s:staging/deployments/web-canary");

fn writ(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_writ")).args(args).current_dir(repo()).output().expect("run writ")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- writ check --test ----

#[test]
fn check_test_passes_on_the_shipped_example_in_every_format() {
    let out = writ(&["check", "--test", "examples/check-test/writ-test.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = stdout(&out);
    assert!(report.contains("PASS  CapabilityGrant/ci/deploy-everything: deny [wildcard-in-grant]\n"), "{report}");
    assert!(report.contains("PASS  CapabilityGrant/ci/remove-canary: allow\n"), "{report}");
    assert!(report.contains("ok: 7 results as expected"), "{report}");

    let out = writ(&["check", "--test", "examples/check-test/writ-test.yaml", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["passed"], true);
    assert_eq!(json["results"].as_array().map(Vec::len), Some(7));

    let out = writ(&["check", "--test", "examples/check-test/writ-test.yaml", "-o", "junit"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let junit = stdout(&out);
    assert!(junit.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites "), "{junit}");
    assert!(junit.contains("tests=\"7\" failures=\"0\""), "{junit}");
    assert_eq!(junit.matches("<testcase ").count(), 7, "{junit}");
}

#[test]
fn check_test_fails_on_a_mismatch_and_refuses_a_broken_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = repo().join("examples/check-test");
    // The shipped test with one expectation turned round: deploy-prod allowed.
    let shipped = std::fs::read_to_string(example.join("writ-test.yaml")).expect("test file");
    let wrong = shipped
        .replace("../01-identities.yaml", &example.join("../01-identities.yaml").display().to_string())
        .replace("../02-delegation-policy.yaml", &example.join("../02-delegation-policy.yaml").display().to_string())
        .replace("  - grants.yaml", &format!("  - {}", example.join("grants.yaml").display()))
        .replace(
            "  - kind: CapabilityGrant\n    name: deploy-prod\n    result: deny\n    rules: [not-covered-by-policy, outside-ceiling]\n",
            "  - {kind: CapabilityGrant, name: deploy-prod, result: allow}\n",
        );
    assert_ne!(wrong, shipped);
    let path = dir.path().join("wrong.yaml");
    std::fs::write(&path, wrong).expect("write");
    let out = writ(&["check", "--test", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains(
            "FAIL  CapabilityGrant/ci/deploy-prod: expected allow, got deny [not-covered-by-policy, outside-ceiling]"
        ),
        "{report}"
    );
    assert!(report.contains("FAILED: 1 of 7 results not as expected"), "{report}");
    let out = writ(&["check", "--test", path.to_str().expect("utf-8"), "-o", "junit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("failures=\"1\""), "{}", stdout(&out));

    // A test that is not one: exit 2, naming the file and the field.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "apiVersion: cli.writ.dev/v1alpha1\nkind: Test\nas: a\nresources: [x.yaml]\nresults:\n- {kind: CapabilityGrant, name: g, result: deny}\n")
        .expect("write");
    let out = writ(&["check", "--test", broken.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("broken.yaml: results[0].rules"), "{}", text(&out));
    // --test replaces the paths and the requester.
    let out = writ(&["check", "--test", broken.to_str().expect("utf-8"), "--as", "alice"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn plain_check_reports_violations_as_json() {
    let out = writ(&[
        "check",
        "examples/01-identities.yaml",
        "examples/02-delegation-policy.yaml",
        "examples/check-test/grants.yaml",
        "--as",
        "alice",
        "--group",
        "release-managers",
        "-n",
        "ci",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["passed"], false);
    let rules: Vec<&str> =
        json["violations"].as_array().expect("violations").iter().filter_map(|v| v["rule"].as_str()).collect();
    assert!(rules.contains(&"wildcard-in-grant") && rules.contains(&"ttl-above-policy"), "{rules:?}");
}

// ---- completion and the kubectl plugin ----

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    for (shell, marker) in [("bash", "complete -F _writ"), ("zsh", "#compdef writ"), ("fish", "complete -c writ")] {
        let out = writ(&["completion", shell]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for sub in ["status", "check", "approve", "completion"] {
            assert!(script.contains(sub), "{shell} script does not complete {sub}");
        }
    }
    // The status kinds are completed too.
    assert!(stdout(&writ(&["completion", "fish"])).contains("grant"), "fish completes status kinds");
    let out = writ(&["completion", "powershell"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn kubectl_runs_writ_as_a_plugin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = dir.path().join("kubectl-writ");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_writ"), &plugin).expect("symlink");
    let out = Command::new(&plugin).arg("--help").output().expect("kubectl-writ");
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("Usage: kubectl writ <COMMAND>"), "{}", stdout(&out));
    // kubectl finds kubectl-writ on the PATH and passes the arguments on.
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let out =
        Command::new("kubectl").args(["writ", "completion", "bash"]).env("PATH", &path).output().expect("kubectl");
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("complete -F _writ"), "{}", stdout(&out));
    // The krew manifest installs the same binary as kubectl-writ.
    let manifest = std::fs::read_to_string(repo().join("plugins/writ.yaml")).expect("plugins/writ.yaml");
    let m: serde_json::Value = serde_saphyr::from_str(&manifest).expect("yaml");
    assert_eq!(m["kind"], "Plugin");
    assert_eq!(m["metadata"]["name"], "writ");
    let platforms = m["spec"]["platforms"].as_array().expect("platforms");
    assert!(!platforms.is_empty());
    for p in platforms {
        assert_eq!(p["bin"], "writ", "{p}");
        assert!(p["uri"].as_str().is_some_and(|u| u.starts_with("https://")), "{p}");
        let sha = p["sha256"].as_str().expect("sha256");
        assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()), "{p}");
    }
}

// ---- writ status, on the real API server ----

fn status_json(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("status")
        .args(args)
        .args(["-o", "json"])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("writ status");
    assert!(out.status.success(), "writ status {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn status_text(c: &Cluster, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("status")
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("writ status");
    assert!(out.status.success(), "writ status {args:?}: {}", text(&out));
    stdout(&out)
}

#[tokio::test]
async fn writ_status_explains_grants_in_every_phase_identities_and_pods() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "status").await;
    let n = ns.name.as_str();
    example_setup(&c, &client, n).await;
    let pod = running_agent_pod(&client, n, "bot-s", "release-bot").await;

    // Active, with a token.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("active", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    wait_phase(&client, n, "active", GrantPhase::Active, Duration::from_secs(15)).await;
    let jwt = wait_for_token(&client, n, &pod, "active").await;
    let (_, claims) = writ::pki::token::decode_unverified(&jwt).expect("token");
    let s = eventually(Duration::from_secs(10), "the token in the grant's status", || async {
        let s = status_json(&c, &["grant", "active", "-n", n]);
        (s["tokens"].as_array().is_some_and(|t| !t.is_empty())).then_some(s)
    })
    .await;
    assert_eq!(s["phase"], "Active");
    assert_eq!(s["requestedBy"], "alice");
    assert_eq!(s["agent"], "release-bot");
    assert_eq!(s["tokens"][0]["pod"], "bot-s");
    assert_eq!(s["tokens"][0]["jti"], claims.jti.as_str());
    assert!(s["expiresAt"].is_string(), "{s}");
    assert!(s["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Issued")), "{s}");
    assert!(!s.to_string().contains(&jwt), "a token in writ status");
    let t = status_text(&c, &["grant", "active", "-n", n]);
    assert!(t.contains("Phase: Active") && t.contains(&format!("jti {}", claims.jti)), "{t}");
    assert!(!t.contains(&jwt), "a token in writ status");

    // AwaitingApproval: who may approve, and how.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("waiting", "release-bot", &[DELETE], "5m", None));
    assert!(ok, "{out}");
    wait_phase(&client, n, "waiting", GrantPhase::AwaitingApproval, Duration::from_secs(15)).await;
    let s = status_json(&c, &["grant", "waiting", "-n", n]);
    assert_eq!(s["phase"], "AwaitingApproval");
    let next = s["next"][0].as_str().expect("next step");
    assert!(next.contains("group sre-oncall") && next.contains("not the requester, alice"), "{next}");
    assert!(next.contains(&format!("writ approve waiting -n {n}")), "{next}");

    // Denied by an approver: the reason and what to do.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("refused", "release-bot", &[DELETE], "5m", None));
    assert!(ok, "{out}");
    wait_phase(&client, n, "refused", GrantPhase::AwaitingApproval, Duration::from_secs(15)).await;
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["deny", "refused", "-n", n, "--reason", "not during the freeze"])
        .env("KUBECONFIG", c.user_kubeconfig("carol"))
        .output()
        .expect("writ deny");
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&client, n, "refused", GrantPhase::Denied, Duration::from_secs(15)).await;
    let s = status_json(&c, &["grant", "refused", "-n", n]);
    assert_eq!(s["phase"], "Denied");
    assert!(s["next"][0].as_str().is_some_and(|n| n.starts_with("Denied")), "{s}");
    let t = status_text(&c, &["grant", "refused", "-n", n]);
    assert!(t.contains("Phase: Denied"), "{t}");
    assert!(t.contains("Events:\n") && t.contains("Denied"), "the Denied Event is listed: {t}");

    // Expired.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("brief", "release-bot", &[WEB], "10s", None));
    assert!(ok, "{out}");
    wait_phase(&client, n, "brief", GrantPhase::Expired, Duration::from_secs(25)).await;
    let s = status_json(&c, &["grant", "brief", "-n", n]);
    assert_eq!(s["phase"], "Expired");
    assert!(s["next"][0].as_str().is_some_and(|n| n.starts_with("Over")), "{s}");

    // Completed: the agent marked its task done.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("done", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    wait_phase(&client, n, "done", GrantPhase::Active, Duration::from_secs(15)).await;
    let out = c.kubectl(&[
        "patch",
        "capabilitygrant",
        "done",
        "-n",
        n,
        "--type=merge",
        "-p",
        r#"{"spec":{"completed":true}}"#,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    wait_phase(&client, n, "done", GrantPhase::Completed, Duration::from_secs(15)).await;
    let s = status_json(&c, &["grant", "done", "-n", n]);
    assert_eq!(s["phase"], "Completed");
    let t = status_text(&c, &["grant", "done", "-n", n]);
    assert!(t.contains("Phase: Completed"), "{t}");

    // A grant bound to the pod, revoked below.
    let bound = format!("{}  pod: bot-s\n", grant_yaml("bound", "release-bot", &[WEB], "15m", None));
    let (ok, out) = apply_as(&c, Some("alice"), n, &bound);
    assert!(ok, "{out}");
    wait_phase(&client, n, "bound", GrantPhase::Active, Duration::from_secs(15)).await;

    // The identity: its pod and the certificate's public facts.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let data = secret_data(&secrets.get(&credential_secret_name(&pod)).await.expect("secret"));
    let info = writ::pki::cert::CertificateInfo::from_pem(&data["tls.crt"]).expect("cert");
    let s = status_json(&c, &["identity", "release-bot", "-n", n]);
    assert_eq!(s["pods"][0]["name"], "bot-s");
    assert_eq!(s["pods"][0]["certificate"]["serial"], info.serial_hex.as_str());
    assert!(s["pods"][0]["certificate"]["nextRotation"].is_string(), "{s}");
    assert!(s["grants"].as_array().is_some_and(|g| g.len() >= 5), "{s}");
    let t = status_text(&c, &["identity", "release-bot", "-n", n]);
    assert!(t.contains(&format!("certificate: serial {}", info.serial_hex)), "{t}");
    assert!(!t.contains("PRIVATE KEY") && !t.contains(&data["tls.key"]), "key material in writ status");
    let p = status_json(&c, &["pod", "bot-s", "-n", n]);
    assert_eq!(p["agent"], "release-bot");
    assert!(
        p["tokens"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["grant"] == "active" && t["jti"] == claims.jti.as_str())),
        "{p}"
    );
    assert!(!p.to_string().contains(&jwt), "a token in writ status pod");

    // Revoked: no policy authorises it any more.
    let policies: Api<writ::api::DelegationPolicy> = Api::namespaced(client.clone(), n);
    policies.delete("release-flow", &Default::default()).await.expect("delete policy");
    wait_phase(&client, n, "bound", GrantPhase::Revoked, Duration::from_secs(15)).await;
    let s = status_json(&c, &["grant", "bound", "-n", n]);
    assert_eq!(s["phase"], "Revoked");
    assert!(s["revokedAt"].is_string() && s["reason"].is_string(), "{s}");

    // A missing object is an error naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["status", "grant", "nope", "-n", n])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("writ status");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains(&format!("CapabilityGrant {n}/nope not found")), "{}", text(&out));
    let _ = op;
    ns.cleanup().await;
}

// ---- per-object metrics ----

#[tokio::test]
async fn per_object_series_appear_and_disappear_with_their_objects() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "objmetrics").await;
    let n = ns.name.as_str();
    example_setup(&c, &client, n).await;
    running_agent_pod(&client, n, "bot-m", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("measured", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let g = wait_phase(&client, n, "measured", GrantPhase::Active, Duration::from_secs(15)).await;
    let expires = g.status.expect("status").expires_at.expect("expiresAt").0.as_second() as f64;
    let grant_label = format!(r#"namespace="{n}",grant="measured""#);
    let pod_label = format!(r#"namespace="{n}",pod="bot-m""#);
    assert_eq!(op.metric("writ_object_metrics_enabled", &[]).await, Some(1.0));
    let seen = eventually(Duration::from_secs(10), "the grant's expiry series", || async {
        op.metric("writ_grant_expiry_timestamp_seconds", &[&grant_label]).await
    })
    .await;
    assert_eq!(seen, expires);
    assert_eq!(op.metric("writ_grant_phase", &[&grant_label, r#"phase="Active""#]).await, Some(1.0));
    let not_after =
        op.metric("writ_pod_certificate_expiry_timestamp_seconds", &[&pod_label]).await.expect("cert series");
    let rotate_at =
        op.metric("writ_pod_certificate_rotation_timestamp_seconds", &[&pod_label]).await.expect("rotation series");
    // examples/01: release-bot's certificates last 1h and rotate 20m before the end.
    assert_eq!(not_after - rotate_at, 1200.0);

    // A grant awaiting approval: its deadline series is status.approvalDeadline.
    let (ok, out) =
        apply_as(&c, Some("alice"), n, &grant_yaml("pending-approval", "release-bot", &[DELETE], "5m", None));
    assert!(ok, "{out}");
    let waiting =
        wait_phase(&client, n, "pending-approval", GrantPhase::AwaitingApproval, Duration::from_secs(15)).await;
    let deadline = waiting.status.expect("status").approval_deadline.expect("approvalDeadline").0.as_second() as f64;
    let waiting_label = format!(r#"namespace="{n}",grant="pending-approval""#);
    let seen = eventually(Duration::from_secs(10), "the approval deadline series", || async {
        op.metric("writ_grant_approval_deadline_timestamp_seconds", &[&waiting_label]).await
    })
    .await;
    assert_eq!(seen, deadline);

    // Completed: the phase series follows, the expiry series goes.
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), n);
    grants
        .patch("measured", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"completed": true}})))
        .await
        .expect("complete");
    wait_phase(&client, n, "measured", GrantPhase::Completed, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), "the Completed phase series", || async {
        op.metric("writ_grant_phase", &[&grant_label, r#"phase="Completed""#]).await
    })
    .await;
    assert_eq!(op.metric("writ_grant_expiry_timestamp_seconds", &[&grant_label]).await, None);

    // Deleted: every series of the grant and the pod goes.
    grants.delete("measured", &Default::default()).await.expect("delete grant");
    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    pods.delete("bot-m", &kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .expect("delete pod");
    eventually(Duration::from_secs(20), "the series to go with their objects", || async {
        let grant = op.metric("writ_grant_phase", &[&grant_label]).await;
        let cert = op.metric("writ_pod_certificate_expiry_timestamp_seconds", &[&pod_label]).await;
        (grant.is_none() && cert.is_none()).then_some(())
    })
    .await;
    ns.cleanup().await;
}

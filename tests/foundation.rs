//! Foundation: the generated CRDs match the committed ones, install on a real
//! API server, accept the examples, and reject malformed objects with
//! messages that name the field.

mod common;

use common::{cluster, ensure_crds, repo, text, TestNamespace};

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = writ::api::crd_files().expect("render CRDs");
    let mut committed: Vec<_> = std::fs::read_dir(repo().join("crds"))
        .expect("crds/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    committed.sort();
    let names: Vec<_> = generated.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(committed, names, "crds/ holds other files than `writ crds --dir crds` writes; run `make crds`");
    for (name, yaml) in generated {
        let on_disk = std::fs::read_to_string(repo().join("crds").join(&name)).expect("read crd");
        assert!(on_disk == yaml, "crds/{name} is out of date with the Rust types: run `make crds` and commit");
    }
}

#[test]
fn crds_carry_no_cel_rules_that_a_1_20_server_would_refuse() {
    for (name, yaml) in writ::api::crd_files().expect("render CRDs") {
        assert!(!yaml.contains("x-kubernetes-validations"), "{name} carries CEL rules");
    }
}

#[tokio::test]
async fn crds_install_and_every_example_is_accepted() {
    let c = cluster();
    let client = c.client().await;
    ensure_crds(&client).await;
    // Plain CRDs, no operator: webhooks an earlier test binary registered would point at a dead URL.
    common::remove_webhooks(&client).await;
    let ns = TestNamespace::new(&client, "examples").await;
    let mut files: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "expected the example scenario in examples/");
    for f in &files {
        let out = c.kubectl(&["apply", "-n", &ns.name, "-f", f.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "kubectl apply -f {} failed: {}", f.display(), text(&out));
    }
    // `kubectl get writ` lists all three kinds with their printer columns.
    let out = c.kubectl(&["get", "writ", "-n", &ns.name]);
    let listing = text(&out);
    assert!(out.status.success(), "{listing}");
    for needle in [
        "agentidentity.writ.dev/planner",
        "delegationpolicy.writ.dev/release-flow",
        "capabilitygrant.writ.dev/deploy-web-1234",
        "SPIFFE-ID",
        "OWNER",
        "PODS",
        "GRANTS",
        "READY",
        "AGENT",
        "PHASE",
        "EXPIRES",
        "MAX-TTL",
    ] {
        assert!(listing.contains(needle), "`kubectl get writ` lacks {needle:?}:\n{listing}");
    }
    // Short names work.
    let out = c.kubectl(&["get", "cg,agid,dpol", "-n", &ns.name, "-o", "name"]);
    assert!(out.status.success() && text(&out).lines().count() >= 6, "{}", text(&out));
    ns.cleanup().await;
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_docs() {
    let c = cluster();
    ensure_crds(&c.client().await).await;
    let out = common::eventually(std::time::Duration::from_secs(20), "kubectl explain to know the CRD", || async {
        let out = c.kubectl(&["explain", "capabilitygrant.spec.capabilities"]);
        out.status.success().then_some(out)
    })
    .await;
    let doc = text(&out);
    assert!(doc.contains("Exact actions on exact resources"), "{doc}");
    assert!(doc.contains("action") && doc.contains("resource"), "{doc}");
}

/// Each malformed object, and a fragment the API server's message must contain.
const MALFORMED: &[(&str, &str, &str)] = &[
    (
        "missing serviceAccountName",
        r#"{"apiVersion":"writ.dev/v1alpha1","kind":"AgentIdentity","metadata":{"name":"bad1"},
            "spec":{"class":"Agent","owner":"t"}}"#,
        "spec.serviceAccountName",
    ),
    (
        "unknown class",
        r#"{"apiVersion":"writ.dev/v1alpha1","kind":"AgentIdentity","metadata":{"name":"bad2"},
            "spec":{"class":"Human","serviceAccountName":"x","owner":"t"}}"#,
        "spec.class",
    ),
    (
        "unknown key algorithm",
        r#"{"apiVersion":"writ.dev/v1alpha1","kind":"AgentIdentity","metadata":{"name":"bad3"},
            "spec":{"class":"Agent","serviceAccountName":"x","owner":"t","credential":{"keyAlgorithm":"RSA-1024"}}}"#,
        "spec.credential.keyAlgorithm",
    ),
    (
        "bad duration",
        r#"{"apiVersion":"writ.dev/v1alpha1","kind":"AgentIdentity","metadata":{"name":"bad4"},
            "spec":{"class":"Agent","serviceAccountName":"x","owner":"t","credential":{"ttl":"one hour"}}}"#,
        "spec.credential.ttl",
    ),
    (
        "grant ttl not a duration",
        r#"{"apiVersion":"writ.dev/v1alpha1","kind":"CapabilityGrant","metadata":{"name":"bad5"},
            "spec":{"agent":"a","task":{"id":"T"},"capabilities":[{"action":"x:y","resource":"r:s"}],
                    "audiences":["api"],"ttl":"15 minutes"}}"#,
        "spec.ttl",
    ),
    (
        "grant without audiences",
        r#"{"apiVersion":"writ.dev/v1alpha1","kind":"CapabilityGrant","metadata":{"name":"bad6"},
            "spec":{"agent":"a","task":{"id":"T"},"capabilities":[{"action":"x:y","resource":"r:s"}],"ttl":"15m"}}"#,
        "spec.audiences",
    ),
    (
        "grant without capabilities",
        r#"{"apiVersion":"writ.dev/v1alpha1","kind":"CapabilityGrant","metadata":{"name":"bad7"},
            "spec":{"agent":"a","task":{"id":"T"},"capabilities":[],"audiences":["api"],"ttl":"15m"}}"#,
        "spec.capabilities",
    ),
    (
        "policy with unknown phase-like field values",
        r#"{"apiVersion":"writ.dev/v1alpha1","kind":"DelegationPolicy","metadata":{"name":"bad8"},
            "spec":{"delegators":[{"group":"g"}],"delegates":[{"agent":"a"}],
                    "capabilities":[{"action":"x:y","resource":"r:s"}],"maxTTL":"30m","maxDepth":99}}"#,
        "spec.maxDepth",
    ),
];

#[tokio::test]
async fn malformed_objects_are_rejected_naming_the_field() {
    let c = cluster();
    let client = c.client().await;
    ensure_crds(&client).await;
    common::remove_webhooks(&client).await;
    let ns = TestNamespace::new(&client, "malformed").await;
    let mut cases: Vec<(String, String, String)> =
        MALFORMED.iter().map(|(w, j, f)| (w.to_string(), j.to_string(), f.to_string())).collect();
    // Too many capabilities: 17 where the schema allows 16.
    let caps: Vec<String> = (0..17).map(|i| format!(r#"{{"action":"x:y","resource":"r:s{i}"}}"#)).collect();
    cases.push((
        "too many capabilities".into(),
        format!(
            r#"{{"apiVersion":"writ.dev/v1alpha1","kind":"CapabilityGrant","metadata":{{"name":"bad9"}},
               "spec":{{"agent":"a","task":{{"id":"T"}},"capabilities":[{}],"audiences":["api"],"ttl":"15m"}}}}"#,
            caps.join(",")
        ),
        "spec.capabilities".into(),
    ));
    for (what, json, field) in cases {
        let file = std::env::temp_dir().join(format!("writ-malformed-{}.json", ns.name));
        std::fs::write(&file, json).expect("write fixture");
        // --validate=false: the API server itself must refuse, not kubectl.
        let out = c.kubectl(&["create", "--validate=false", "-n", &ns.name, "-f", file.to_str().expect("utf-8")]);
        let msg = text(&out);
        assert!(!out.status.success(), "{what}: the API server accepted a malformed object");
        assert!(msg.contains(&field), "{what}: rejection does not name {field}: {msg}");
    }
    ns.cleanup().await;
}

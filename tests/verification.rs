//! Trust distribution and verification on the real API server: the published
//! bundle, JWKS and revocation list; `writ verify` and introspection; interop
//! with libraries that are not ours (PyJWT, the SPIFFE `spiffe` package,
//! `openssl verify`); signing-key rotation.

mod common;
#[path = "snippets/resource_server.rs"]
mod resource_server;

use std::{path::Path, process::Command, time::Duration};

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams};
use writ::api::GrantPhase;

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");

/// The credential files of a pod, written to `dir/<pod>.*`.
struct PodFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

async fn pod_files(client: &kube::Client, ns: &str, pod: &Pod, dir: &Path) -> PodFiles {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let d = secret_data(&api.get(&credential_secret_name(pod)).await.expect("credential Secret"));
    let name = pod.metadata.name.clone().expect("name");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &d["tls.crt"]).expect("write");
    std::fs::write(&key, &d["tls.key"]).expect("write");
    PodFiles { cert, key }
}

async fn token_of(client: &kube::Client, ns: &str, pod: &Pod, grant: &str, dir: &Path) -> std::path::PathBuf {
    let jwt = wait_for_token(client, ns, pod, grant).await;
    let path = dir.join(format!("{}.{grant}.jwt", pod.metadata.name.as_deref().expect("name")));
    std::fs::write(&path, jwt).expect("write");
    path
}

/// `writ verify …` with the test kubeconfig; (exit code, stdout + stderr).
fn writ_verify(c: &Cluster, op: &Operator, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("verify")
        .args(["--writ-namespace", &op.namespace])
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("writ verify");
    (out.status.code().unwrap_or(-1), text(&out))
}

fn attempt<'a>(token: &'a Path, cert: &'a Path) -> Vec<String> {
    vec![
        "--token".into(),
        token.display().to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--audience".into(),
        "deploy-api".into(),
        "--action".into(),
        WEB.0.into(),
        "--resource".into(),
        WEB.1.into(),
    ]
}

fn with<'a>(base: &'a [String], replace: &[(&str, &'a str)]) -> Vec<&'a str> {
    let mut out: Vec<&str> = base.iter().map(String::as_str).collect();
    for (flag, value) in replace {
        let i = out.iter().position(|a| a == flag).expect("flag");
        out[i + 1] = value;
    }
    out
}

fn introspect_form(token_file: &Path) -> String {
    format!("token={}", std::fs::read_to_string(token_file).expect("token").trim())
}

#[tokio::test]
async fn a_token_verifies_only_with_its_pods_certificate_for_its_audience_action_and_lifetime() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "verify").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot1 = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    let bot2 = running_agent_pod(&client, n, "bot-2", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("deploy", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    wait_phase(&client, n, "deploy", GrantPhase::Active, Duration::from_secs(15)).await;
    let token = token_of(&client, n, &bot1, "deploy", dir.path()).await;
    let f1 = pod_files(&client, n, &bot1, dir.path()).await;
    let f2 = pod_files(&client, n, &bot2, dir.path()).await;
    let args = attempt(&token, &f1.cert);

    // Trust data from the operator's ConfigMaps (the default).
    let (code, out) = writ_verify(&c, op, &with(&args, &[]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid:") && out.contains("grant") && out.contains("deploy"), "{out}");
    // Another pod of the same agent cannot use the token.
    let (code, out) = writ_verify(&c, op, &with(&args, &[("--cert", f2.cert.to_str().expect("utf-8"))]));
    assert_eq!((code, out.contains("(cnf-mismatch)")), (1, true), "{out}");
    // Another audience, an action or a resource not granted.
    let (code, out) = writ_verify(&c, op, &with(&args, &[("--audience", "billing-api")]));
    assert_eq!((code, out.contains("(audience)")), (1, true), "{out}");
    let (code, out) = writ_verify(&c, op, &with(&args, &[("--action", "k8s:deployments.delete")]));
    assert_eq!((code, out.contains("(not-granted)")), (1, true), "{out}");
    let (code, out) = writ_verify(&c, op, &with(&args, &[("--resource", "k8s:staging/deployments/api")]));
    assert_eq!((code, out.contains("(not-granted)")), (1, true), "{out}");

    // The same from the HTTPS endpoints, trusting the published bundle.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &op.namespace);
    let bundle_cm = cms.get("writ-trust-bundle").await.expect("bundle ConfigMap");
    let bundle_pem = bundle_cm.data.expect("data")["ca.crt"].clone();
    let (status, served) = op.https_get("/trust-bundle").await;
    assert_eq!((status, served.trim()), (200, bundle_pem.trim()));
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, &bundle_pem).expect("write");
    let jwks_url = format!("{}/.well-known/jwks.json", op.url);
    let revocations_url = format!("{}/revocations", op.url);
    let mut remote = with(&args, &[]);
    remote.extend([
        "--bundle",
        bundle.to_str().expect("utf-8"),
        "--jwks",
        &jwks_url,
        "--revocations",
        &revocations_url,
    ]);
    let (code, out) = writ_verify(&c, op, &remote);
    assert_eq!(code, 0, "{out}");

    // The Rust snippet of docs/verify.md, on the same published documents.
    let (_, jwks_json) = op.https_get("/.well-known/jwks.json").await;
    let (_, revocations_json) = op.https_get("/revocations").await;
    let v = resource_server::verifier(&bundle_pem, &jwks_json, &revocations_json).expect("verifier");
    let bearer = std::fs::read_to_string(&token).expect("token");
    let said = resource_server::authorize(&v, &bearer, &std::fs::read(&f1.cert).expect("cert")).expect("authorised");
    assert!(said.contains("agent/release-bot may patch web for task T-1"), "{said}");
    let refused = resource_server::authorize(&v, &bearer, &std::fs::read(&f2.cert).expect("cert"));
    assert_eq!(refused, Err(writ::verify::VerifyError::ConfirmationMismatch));

    // Introspection (RFC 7662 shape), asked by the token's audience: the
    // ServiceAccount `deploy-api` of the grant's namespace.
    let audience = service_account_token(&client, n, "deploy-api").await;
    let (status, body) = op.https_post_form_as("/introspect", &introspect_form(&token), &audience).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["active"], true, "{body}");
    assert_eq!(v["sub"], format!("spiffe://test.writ.dev/ns/{n}/agent/release-bot"));
    assert_eq!(v["scope"], format!("{} {}", WEB.0, WEB.1));
    for junk in ["token=", "token=a.b.c", "token=eyJhbGciOiJub25lIn0.e30."] {
        let (status, body) = op.https_post_form_as("/introspect", junk, &audience).await;
        assert_eq!((status, body.contains(r#""active":false"#)), (200, true), "{junk}: {body}");
    }

    // Revocation: deleting the grant revokes the token everywhere.
    let grants: Api<writ::api::CapabilityGrant> = Api::namespaced(client.clone(), n);
    grants.delete("deploy", &DeleteParams::default()).await.expect("delete grant");
    eventually(Duration::from_secs(15), "the grant to be gone", || {
        let grants = grants.clone();
        async move { grants.get_opt("deploy").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let (code, out) = writ_verify(&c, op, &with(&args, &[]));
    assert_eq!((code, out.contains("(revoked)")), (1, true), "{out}");
    let (code, out) = writ_verify(&c, op, &remote);
    assert_eq!((code, out.contains("(revoked)")), (1, true), "{out}");
    let (_, body) = op.https_post_form_as("/introspect", &introspect_form(&token), &audience).await;
    assert!(body.contains(r#""active":false"#), "{body}");
    let jti = writ::pki::token::decode_unverified(&std::fs::read_to_string(&token).expect("token")).expect("jwt").1.jti;
    let (_, list) = op.https_get("/revocations").await;
    assert!(list.contains(&jti), "{list}");

    // Expiry: a 10-second grant's token is refused once it has expired.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("brief", "release-bot", &[WEB], "10s", None));
    assert!(ok, "{out}");
    let brief = token_of(&client, n, &bot1, "brief", dir.path()).await;
    let brief_args = attempt(&brief, &f1.cert);
    let mut strict = with(&brief_args, &[]);
    strict.extend(["--skew", "0"]);
    let (code, out) = writ_verify(&c, op, &strict);
    assert_eq!(code, 0, "{out}");
    wait_phase(&client, n, "brief", GrantPhase::Expired, Duration::from_secs(20)).await;
    let (code, out) = writ_verify(&c, op, &strict);
    assert_eq!((code, out.contains("(expired)")), (1, true), "{out}");
    let (_, body) = op.https_post_form_as("/introspect", &introspect_form(&brief), &audience).await;
    assert!(body.contains(r#""active":false"#), "{body}");
    ns.cleanup().await;
}

#[tokio::test]
async fn tokens_and_certificates_verify_with_libraries_that_are_not_ours() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "interop").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot1 = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    let bot2 = running_agent_pod(&client, n, "bot-2", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("deploy", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let token = token_of(&client, n, &bot1, "deploy", dir.path()).await;
    let f1 = pod_files(&client, n, &bot1, dir.path()).await;
    let f2 = pod_files(&client, n, &bot2, dir.path()).await;
    let (_, jwks) = op.https_get("/.well-known/jwks.json").await;
    let (_, bundle) = op.https_get("/trust-bundle").await;
    let jwks_file = dir.path().join("jwks.json");
    let bundle_file = dir.path().join("bundle.pem");
    std::fs::write(&jwks_file, jwks).expect("write");
    std::fs::write(&bundle_file, &bundle).expect("write");

    // openssl verify: the pod certificate chains to the published bundle.
    let (ok, out) = openssl_verify(&bundle, &std::fs::read_to_string(&f1.cert).expect("cert"));
    assert!(ok, "{out}");

    // PyJWT + cryptography for the token, the `spiffe` package for the SVID.
    let deps = Command::new(repo().join("hack/python-deps.sh")).output().expect("hack/python-deps.sh");
    assert!(deps.status.success(), "{}", text(&deps));
    let pythonpath = String::from_utf8_lossy(&deps.stdout).trim().to_string();
    let python = |cert: &Path, key: &Path| {
        let out = Command::new("python3")
            .arg(repo().join("tests/interop/verify_token.py"))
            .args([&jwks_file, &token])
            .arg("deploy-api")
            .args([cert, key, &bundle_file])
            .arg("test.writ.dev")
            .env("PYTHONPATH", &pythonpath)
            .output()
            .expect("python3");
        (out.status.success(), text(&out))
    };
    let (ok, out) = python(&f1.cert, &f1.key);
    assert!(ok, "{out}");
    let claims: serde_json::Value = serde_json::from_str(out.trim()).expect("claims JSON");
    assert_eq!(claims["sub"], format!("spiffe://test.writ.dev/ns/{n}/agent/release-bot"));
    assert_eq!(claims["grant"]["name"], "deploy");
    let (ok, out) = python(&f2.cert, &f2.key);
    assert!(!ok && out.contains("bound to another certificate"), "{out}");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_rotated_signing_key_stays_published_while_its_tokens_live_and_the_new_one_works_at_once() {
    let c = cluster();
    let op = shared_operator().await;
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "rotate").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    let files = pod_files(&client, n, &bot, dir.path()).await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("before", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let old_token = token_of(&client, n, &bot, "before", dir.path()).await;
    let old_kid = writ::pki::token::decode_unverified(&std::fs::read_to_string(&old_token).expect("token"))
        .expect("jwt")
        .0
        .kid
        .expect("kid");

    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["rotate", "signing-key", "--writ-namespace", &op.namespace])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("writ rotate");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&old_kid), "{}", text(&out));

    // The operator picks the new key up; the JWKS serves both.
    let jwks = eventually(Duration::from_secs(20), "a JWKS with two keys", || async {
        let (_, body) = op.https_get("/.well-known/jwks.json").await;
        let set = writ::pki::JwkSet::from_json(&body).ok()?;
        (set.keys.len() == 2).then_some(set)
    })
    .await;
    assert!(jwks.find(&old_kid).is_some(), "the previous key left the JWKS early");
    let new_kid = jwks.keys[0].kid.clone();
    assert_ne!(new_kid, old_kid, "the current key is listed first");

    // The old token still verifies; a new grant's token uses the new key and verifies at once.
    let jwks_url = format!("{}/.well-known/jwks.json", op.url);
    let check = |token: &Path| {
        let mut args: Vec<String> = attempt(token, &files.cert);
        args.extend(["--jwks".into(), jwks_url.clone()]);
        writ_verify(&c, op, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, out) = check(&old_token);
    assert_eq!(code, 0, "{out}");
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("after", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let new_token = token_of(&client, n, &bot, "after", dir.path()).await;
    let kid = writ::pki::token::decode_unverified(&std::fs::read_to_string(&new_token).expect("token"))
        .expect("jwt")
        .0
        .kid
        .expect("kid");
    assert_eq!(kid, new_kid);
    let (code, out) = check(&new_token);
    assert_eq!(code, 0, "{out}");
    // The published ConfigMap follows.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &op.namespace);
    eventually(Duration::from_secs(15), "the JWKS ConfigMap to list the new key", || async {
        let cm = cms.get("writ-jwks").await.ok()?;
        cm.data?.get("jwks.json")?.contains(&new_kid).then_some(())
    })
    .await;
    ns.cleanup().await;
}

#[test]
fn inspect_prints_fields_and_never_key_material() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = writ::pki::CertificateAuthority::generate("Writ CA test", writ::pki::now_unix() - 60, 86_400).expect("ca");
    let cert = dir.path().join("ca.crt");
    std::fs::write(&cert, ca.cert_pem()).expect("write");
    let run = |f: &Path| Command::new(env!("CARGO_BIN_EXE_writ")).arg("inspect").arg(f).output().expect("inspect");
    let out = run(&cert);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("CA certificate") && text(&out).contains("Writ CA test"), "{}", text(&out));
    let key = dir.path().join("ca.key");
    std::fs::write(&key, ca.key_pem()).expect("write");
    let out = run(&key);
    assert!(!out.status.success(), "a private key was accepted");
    assert!(!text(&out).contains("BEGIN") && text(&out).contains("never prints key material"), "{}", text(&out));
}

/// The verification guide the README links (docs/verify.md) shows exactly the snippets these tests run.
#[test]
fn readme_snippets_are_the_tested_ones() {
    let readme = std::fs::read_to_string(repo().join("docs/verify.md")).expect("docs/verify.md");
    let rust = std::fs::read_to_string(repo().join("tests/snippets/resource_server.rs")).expect("snippet");
    assert!(
        readme.contains(rust.trim()),
        "docs/verify.md's Rust snippet differs from tests/snippets/resource_server.rs"
    );
    let python = std::fs::read_to_string(repo().join("tests/interop/verify_token.py")).expect("snippet");
    let start = python.find("def verify(").expect("verify()");
    let end = python.find("\n\ndef main(").expect("main()");
    assert!(
        readme.contains(python[start..end].trim()),
        "docs/verify.md's Python snippet differs from tests/interop/verify_token.py"
    );
    // The standards snippets (docs/standards.md): py-spiffe and jose, from `verify(` to the end of it.
    for (file, start, end) in [
        ("tests/interop/spiffe_verify.py", "def verify(", "\n\ndef _issued_by("),
        ("tests/interop/jose_verify.js", "async function verify(", "\n\nasync function main("),
    ] {
        let snippet = std::fs::read_to_string(repo().join(file)).expect("snippet");
        let (from, to) = (snippet.find(start).expect("start"), snippet.find(end).expect("end"));
        assert!(readme.contains(snippet[from..to].trim()), "README's snippet differs from {file}");
    }
}

/// The HTTPS listener (webhooks and trust endpoints) speaks TLS 1.2 and 1.3 only.
#[tokio::test]
async fn the_https_listener_refuses_tls_below_1_2() {
    let op = shared_operator().await;
    let addr = op.url.trim_start_matches("https://").to_string();
    let handshake = |version: &str| {
        let mut child = Command::new("openssl")
            // SECLEVEL=0: let the client offer old versions at all (OpenSSL 3
            // refuses them itself by default), so the server is what refuses.
            .args(["s_client", "-connect", &addr, version, "-cipher", "DEFAULT@SECLEVEL=0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl s_client");
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("s_client");
        let all = text(&out);
        (all.contains("Cipher is ") && !all.contains("Cipher is (NONE)"), all)
    };
    for ok in ["-tls1_2", "-tls1_3"] {
        let (negotiated, out) = handshake(ok);
        assert!(negotiated, "{ok} refused:\n{out}");
    }
    for old in ["-tls1", "-tls1_1"] {
        let (negotiated, out) = handshake(old);
        assert!(!negotiated, "{old} accepted:\n{out}");
        // Refused by the server (a protocol alert), not by our own client.
        assert!(out.contains("SSL alert number"), "not refused by the server (no alert):\n{out}");
    }
}

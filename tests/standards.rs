//! Writ speaks the standards, checked on the real API server with libraries
//! nobody here wrote: py-spiffe validates our token as a JWT-SVID against our
//! SPIFFE bundle and reads the pod's SPIFFE Filesystem Delivery files; `jose`
//! finds our keys through OpenID Connect Discovery; a switch of signing
//! algorithm (EdDSA to ES256) and of issuer keeps the tokens already issued
//! valid until they expire.
//!
//! The tests of this file run one at a time: each starts its own operator,
//! which registers the webhook configurations.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams};
use writ::{api::GrantPhase, pki::SpiffeBundle};

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");
const TRUST_DOMAIN: &str = "test.writ.dev";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn operator_namespace(what: &str) -> String {
    format!("writ-{what}-{}", std::process::id())
}

/// The pod's credential Secret written out as its volume would be: one file per key.
async fn credential_folder(client: &kube::Client, ns: &str, pod: &Pod, dir: &Path) -> PathBuf {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data = secret_data(&api.get(&credential_secret_name(pod)).await.expect("credential Secret"));
    let folder = dir.join(pod.metadata.name.as_deref().expect("name"));
    std::fs::create_dir_all(&folder).expect("mkdir");
    for (key, value) in data {
        std::fs::write(folder.join(key), value).expect("write");
    }
    folder
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path
}

/// `tests/interop/spiffe_verify.py` (py-spiffe); (success, output).
fn py_spiffe(bundle: &Path, token: &Path, audience: &str, folder: &Path, revocations: &Path) -> (bool, String) {
    let deps = Command::new(repo().join("hack/python-deps.sh")).output().expect("hack/python-deps.sh");
    assert!(deps.status.success(), "{}", text(&deps));
    let out = Command::new("python3")
        .arg(repo().join("tests/interop/spiffe_verify.py"))
        .args([bundle, token])
        .arg(audience)
        .arg(folder)
        .arg(TRUST_DOMAIN)
        .arg(revocations)
        .args([WEB.0, WEB.1])
        .env("PYTHONPATH", String::from_utf8_lossy(&deps.stdout).trim())
        .output()
        .expect("python3");
    (out.status.success(), text(&out))
}

/// `tests/interop/jose_verify.js` (`jose`); (success, output).
fn jose(issuer: &str, token: &Path, audience: &str, cert: &Path, bundle: &Path) -> (bool, String) {
    let deps = Command::new(repo().join("hack/node-deps.sh")).output().expect("hack/node-deps.sh");
    assert!(deps.status.success(), "{}", text(&deps));
    let out = Command::new("node")
        .arg(repo().join("tests/interop/jose_verify.js"))
        .arg(issuer)
        .arg(token)
        .arg(audience)
        .args([cert, bundle])
        .args([WEB.0, WEB.1])
        .env("NODE_PATH", String::from_utf8_lossy(&deps.stdout).trim())
        .env("NODE_EXTRA_CA_CERTS", bundle)
        .output()
        .expect("node");
    (out.status.success(), text(&out))
}

#[tokio::test]
async fn py_spiffe_and_jose_verify_our_tokens_from_the_spiffe_bundle_the_pod_files_and_discovery() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let op = Operator::start(&c, &operator_namespace("standards"), "s-0", &[]).await;
    let ns = TestNamespace::new(&client, "standards").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot1 = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    let bot2 = running_agent_pod(&client, n, "bot-2", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("deploy", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let token = write(dir.path(), "token.jwt", &wait_for_token(&client, n, &bot1, "deploy").await);

    // Every agent container is pointed at the credential folder.
    for container in bot1.spec.as_ref().expect("spec").containers.iter() {
        let env = container.env.as_deref().unwrap_or_default();
        let folder = env.iter().find(|e| e.name == "SPIFFE_CREDENTIAL_FOLDER").and_then(|e| e.value.as_deref());
        assert_eq!(folder, Some(writ::api::CREDENTIALS_DIR.trim_end_matches('/')), "{}", container.name);
    }
    // The folder: the credential bundle is the key, then the chain, in the same write as tls.crt.
    let f1 = credential_folder(&client, n, &bot1, dir.path()).await;
    let f2 = credential_folder(&client, n, &bot2, dir.path()).await;
    let read = |f: &Path, key: &str| std::fs::read_to_string(f.join(key)).expect(key);
    let credential_bundle = read(&f1, "credential-bundle.private-key.pem");
    assert_eq!(credential_bundle, format!("{}\n{}", read(&f1, "tls.key").trim_end(), read(&f1, "tls.crt")));
    assert!(credential_bundle.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(read(&f1, &format!("{TRUST_DOMAIN}.spiffe-trust-bundle.pem")), read(&f1, "ca.crt"));

    // The SPIFFE bundle: served, published beside the trust bundle, in the standard's form.
    let (status, served) = op.https_get("/spiffe-bundle").await;
    assert_eq!(status, 200, "{served}");
    let bundle = SpiffeBundle::from_json(&served).expect("SPIFFE bundle");
    assert!(bundle.spiffe_sequence > 0 && bundle.spiffe_refresh_hint > 0, "{served}");
    let (_, jwks) = op.https_get("/.well-known/jwks.json").await;
    let jwks = writ::pki::JwkSet::from_json(&jwks).expect("JWKS");
    assert_eq!(
        bundle.jwt_authorities().keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
        jwks.keys.iter().map(|k| &k.kid).collect::<Vec<_>>()
    );
    let (_, trust_bundle) = op.https_get("/trust-bundle").await;
    assert_eq!(bundle.x509_authorities(), writ::pki::cert::parse_certificates(trust_bundle.as_bytes()).expect("PEM"));
    for namespace in [op.namespace.as_str(), n.as_str()] {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let published = eventually(Duration::from_secs(15), "the writ-spiffe-bundle ConfigMap", || async {
            cms.get("writ-spiffe-bundle").await.ok()?.data?.get("bundle.spiffe").cloned()
        })
        .await;
        assert_eq!(SpiffeBundle::from_json(&published).expect("bundle"), bundle, "in {namespace}");
    }
    let bundle_file = write(dir.path(), "bundle.spiffe", &served);
    let trust_file = write(dir.path(), "trust-bundle.pem", &trust_bundle);
    let revocations = write(dir.path(), "revocations.json", &op.https_get("/revocations").await.1);

    // py-spiffe: a valid JWT-SVID for our SPIFFE bundle, and an X.509-SVID from the folder.
    let (ok, out) = py_spiffe(&bundle_file, &token, "deploy-api", &f1, &revocations);
    assert!(ok, "{out}");
    let claims: serde_json::Value = serde_json::from_str(out.trim()).expect("claims JSON");
    assert_eq!(claims["sub"], format!("spiffe://{TRUST_DOMAIN}/ns/{n}/agent/release-bot"));
    assert_eq!(claims["iss"], op.url);
    // Refusals: another pod's certificate, another audience.
    let (ok, out) = py_spiffe(&bundle_file, &token, "deploy-api", &f2, &revocations);
    assert!(!ok && out.contains("bound to another certificate"), "{out}");
    let (ok, out) = py_spiffe(&bundle_file, &token, "billing-api", &f1, &revocations);
    assert!(!ok && out.contains("refused: InvalidTokenError") && out.contains("udience"), "{out}");

    // jose: the keys from the issuer's discovery document.
    let (status, discovery) = op.https_get("/.well-known/openid-configuration").await;
    assert_eq!(status, 200, "{discovery}");
    let discovery: serde_json::Value = serde_json::from_str(&discovery).expect("discovery JSON");
    assert_eq!(discovery["issuer"], op.url);
    assert_eq!(discovery["jwks_uri"], format!("{}/.well-known/jwks.json", op.url));
    assert_eq!(discovery["id_token_signing_alg_values_supported"], serde_json::json!(["ES256"]));
    let cert = f1.join("tls.crt");
    let (ok, out) = jose(&op.url, &token, "deploy-api", &cert, &trust_file);
    assert!(ok, "{out}");
    let claims: serde_json::Value = serde_json::from_str(out.trim()).expect("claims JSON");
    assert_eq!(claims["grant"]["name"], "deploy");
    let (ok, out) = jose(&op.url, &token, "billing-api", &cert, &trust_file);
    assert!(!ok && out.contains("ERR_JWT_CLAIM_VALIDATION_FAILED") && out.contains("aud"), "{out}");
    let (ok, out) = jose(&op.url, &token, "deploy-api", &f2.join("tls.crt"), &trust_file);
    assert!(!ok && out.contains("bound to another certificate"), "{out}");

    // A revoked token is refused by both.
    let grants: Api<writ::api::CapabilityGrant> = Api::namespaced(client.clone(), n);
    grants.delete("deploy", &DeleteParams::default()).await.expect("delete grant");
    let jti = claims["jti"].as_str().expect("jti").to_string();
    let list = eventually(Duration::from_secs(15), "the token on the revocation list", || async {
        let (_, list) = op.https_get("/revocations").await;
        list.contains(&jti).then_some(list)
    })
    .await;
    let revocations = write(dir.path(), "revocations.json", &list);
    let (ok, out) = py_spiffe(&bundle_file, &token, "deploy-api", &f1, &revocations);
    assert!(!ok && out.contains("has been revoked"), "{out}");
    let (ok, out) = jose(&op.url, &token, "deploy-api", &cert, &trust_file);
    assert!(!ok && out.contains("has been revoked"), "{out}");

    // A revoked credential loses its credential bundle with its private key.
    set_pod_phase(&client, n, "bot-2", "Succeeded").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let name = credential_secret_name(&bot2);
    eventually(Duration::from_secs(15), "bot-2's key material to be removed", || async {
        let data = secret_data(&secrets.get(&name).await.ok()?);
        (!data.contains_key("tls.key") && !data.contains_key("credential-bundle.private-key.pem")).then_some(())
    })
    .await;
    ns.cleanup().await;
}

/// `writ verify` of `token` with `cert` against the operator's ConfigMaps; (exit code, output).
fn writ_verify(c: &Cluster, op: &Operator, token: &Path, cert: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["verify", "--writ-namespace", &op.namespace, "--audience", "deploy-api", "--action", WEB.0])
        .args(["--resource", WEB.1, "--token"])
        .arg(token)
        .arg("--cert")
        .arg(cert)
        .args(extra)
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("writ verify");
    (out.status.code().unwrap_or(-1), text(&out))
}

#[tokio::test]
async fn a_switch_from_eddsa_to_es256_and_of_issuer_keeps_issued_tokens_valid_until_they_expire() {
    let _serial = SERIAL.lock().await;
    let c = cluster();
    let client = c.client().await;
    let op_ns = operator_namespace("switch");
    let before = Operator::start(&c, &op_ns, "w-0", &["--token-algorithm", "EdDSA"]).await;
    let ns = TestNamespace::new(&client, "switch").await;
    let n = &ns.name;
    example_setup(&c, &client, n).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    let cert = credential_folder(&client, n, &bot, dir.path()).await.join("tls.crt");
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("long", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("brief", "release-bot", &[WEB], "20s", None));
    assert!(ok, "{out}");
    let long = write(dir.path(), "long.jwt", &wait_for_token(&client, n, &bot, "long").await);
    let brief = write(dir.path(), "brief.jwt", &wait_for_token(&client, n, &bot, "brief").await);
    let decode = |p: &Path| writ::pki::decode_unverified(&std::fs::read_to_string(p).expect("token")).expect("jwt");
    let (header, old_claims) = decode(&long);
    assert_eq!(header.alg, "EdDSA");
    assert_eq!(old_claims.iss, before.url);
    let old_kid = header.kid.expect("kid");
    before.kill();

    // The same operator namespace, now ES256 (the default) and another issuer.
    let issuer = "https://writ.example.com";
    let after = Operator::start(&c, &op_ns, "w-1", &["--issuer", issuer]).await;
    let (_, jwks) = after.https_get("/.well-known/jwks.json").await;
    let jwks = writ::pki::JwkSet::from_json(&jwks).expect("JWKS");
    assert_eq!(jwks.keys.len(), 2, "{jwks:?}");
    assert_eq!((jwks.keys[0].kty.as_str(), jwks.keys[0].alg.as_str()), ("EC", "ES256"), "the new key signs");
    assert_eq!(jwks.find(&old_kid).map(|k| k.alg.as_str()), Some("EdDSA"), "the old key stays published");
    let (_, discovery) = after.https_get("/.well-known/openid-configuration").await;
    let discovery: serde_json::Value = serde_json::from_str(&discovery).expect("discovery JSON");
    assert_eq!(discovery["issuer"], issuer);
    assert_eq!(discovery["id_token_signing_alg_values_supported"], serde_json::json!(["ES256", "EdDSA"]));
    let (_, bundle) = after.https_get("/spiffe-bundle").await;
    assert!(SpiffeBundle::from_json(&bundle).expect("bundle").jwt_authorities().find(&old_kid).is_some());

    // The tokens issued before still verify, and introspect as active (old
    // issuer still accepted), asked by their audience (ServiceAccount `deploy-api`).
    let audience = service_account_token(&client, n, "deploy-api").await;
    for token in [&long, &brief] {
        let (code, out) = writ_verify(&c, &after, token, &cert, &[]);
        assert_eq!(code, 0, "{out}");
        let form = format!("token={}", std::fs::read_to_string(token).expect("token").trim());
        let (_, body) = after.https_post_form_as("/introspect", &form, &audience).await;
        assert!(body.contains(r#""active":true"#), "{body}");
    }
    let accepted = [before.url.as_str(), issuer];
    let both: Vec<&str> = accepted.iter().flat_map(|i| ["--issuer", *i]).collect();
    let (code, out) = writ_verify(&c, &after, &long, &cert, &both);
    assert_eq!(code, 0, "{out}");
    let (code, out) = writ_verify(&c, &after, &long, &cert, &["--issuer", issuer]);
    assert_eq!((code, out.contains("(issuer)")), (1, true), "{out}");

    // A new grant's token: ES256, the new issuer, the new key.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("new", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    let new = write(dir.path(), "new.jwt", &wait_for_token(&client, n, &bot, "new").await);
    let (header, claims) = decode(&new);
    assert_eq!((header.alg.as_str(), header.kid.as_deref()), ("ES256", Some(jwks.keys[0].kid.as_str())));
    assert_eq!(claims.iss, issuer);
    let (code, out) = writ_verify(&c, &after, &new, &cert, &both);
    assert_eq!(code, 0, "{out}");

    // Until they expire, and not after: the brief one is refused once its own exp has passed.
    wait_phase(&client, n, "brief", GrantPhase::Expired, Duration::from_secs(40)).await;
    let (code, out) = writ_verify(&c, &after, &brief, &cert, &["--skew", "0"]);
    assert_eq!((code, out.contains("(expired)")), (1, true), "{out}");
    let (code, out) = writ_verify(&c, &after, &long, &cert, &[]);
    assert_eq!(code, 0, "{out}");
    ns.cleanup().await;
}

//! The token exchange (`POST /token`, RFC 8693) on the real API server: a pod
//! exchanges its grant token over mutual TLS for a per-call token that PyJWT
//! and `writ verify` accept for exactly one capability and audience; each
//! OAuth error comes from the case that should produce it; the rate limit;
//! a grant that ends cuts off new exchanges and issued per-call tokens.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use writ::api::{CapabilityGrant, GrantPhase};

const WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");
const OTHER: (&str, &str) = ("k8s:deployments.delete", "k8s:staging/deployments/web");
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A pod's credential files.
struct PodFiles {
    cert: PathBuf,
    key: PathBuf,
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

/// The answer of the token endpoint: status, JSON body, `Retry-After`.
struct Answer {
    status: u16,
    body: serde_json::Value,
    retry_after: Option<String>,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

/// POSTs `form` to `url` with curl, authenticating with `files` when given.
async fn post(url: &str, files: Option<&PodFiles>, form: &str) -> Answer {
    let dir = tempfile::tempdir().expect("tempdir");
    let headers = dir.path().join("headers");
    let body_file = dir.path().join("form");
    std::fs::write(&body_file, form).expect("write");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sk", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", "-D"]).arg(&headers);
    if let Some(f) = files {
        cmd.arg("--cert").arg(&f.cert).arg("--key").arg(&f.key);
    }
    cmd.arg("--data-binary").arg(format!("@{}", body_file.display()));
    cmd.args(["-H", "Content-Type: application/x-www-form-urlencoded"]);
    let out = cmd.arg(url).output().await.expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let headers = std::fs::read_to_string(&headers).unwrap_or_default();
    let retry_after = headers
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("retry-after")))
        .map(|(_, v)| v.trim().to_string());
    Answer {
        status: code.trim().parse().unwrap_or(0),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        retry_after,
    }
}

/// POSTs `form` `n` times in a row over one keep-alive connection (one curl):
/// the statuses, and the `Retry-After` values of the answers that had one.
async fn post_many(url: &str, files: &PodFiles, form: &str, n: usize) -> (Vec<u16>, Vec<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let headers = dir.path().join("headers");
    let body_file = dir.path().join("form");
    std::fs::write(&body_file, form).expect("write");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sk", "--max-time", "30", "-w", "%{http_code}\n", "-D"]).arg(&headers);
    cmd.arg("--cert").arg(&files.cert).arg("--key").arg(&files.key);
    cmd.arg("--data-binary").arg(format!("@{}", body_file.display()));
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cmd.output().await.expect("curl");
    let statuses = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    let retry = std::fs::read_to_string(&headers)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("retry-after")))
        .filter_map(|(_, v)| v.trim().parse().ok())
        .collect();
    (statuses, retry)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A DPoP proof (RFC 9449 §4.2) signed with a pod's P-256 key (`tls.key`, PKCS#8 PEM).
fn dpop_proof(key_file: &Path, htm: &str, htu: &str, access_token: Option<&str>) -> String {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pem = pem::parse(std::fs::read(key_file).expect("key")).expect("PEM");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pem.contents()).expect("P-256 PKCS#8 key");
    let point = key.public_key().as_ref();
    let header = serde_json::json!({
        "typ": "dpop+jwt", "alg": "ES256",
        "jwk": {"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])}
    });
    let mut claims = serde_json::json!({
        "jti": b64(&rand_bytes()), "htm": htm, "htu": htu, "iat": writ::pki::now_unix()
    });
    if let Some(t) = access_token {
        claims["ath"] = writ::verify::dpop::access_token_hash(t).into();
    }
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = key.sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes()).expect("sign");
    format!("{input}.{}", b64(sig.as_ref()))
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("random");
    b
}

/// POSTs `form` with a `DPoP` header.
async fn post_dpop(url: &str, files: &PodFiles, form: &str, proof: &str) -> Answer {
    let out = tokio::process::Command::new("curl")
        .args(["-sk", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .args(["-H", &format!("DPoP: {proof}"), "--data-binary", form, url])
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Answer {
        status: code.trim().parse().unwrap_or(0),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        retry_after: None,
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// An exchange request for `cap` at `audience`, with `token` as subject.
fn exchange_form(token: &str, audience: &str, cap: (&str, &str)) -> String {
    let details = serde_json::json!([{ "type": "writ.dev/capability", "actions": [cap.0], "locations": [cap.1] }]);
    form(&[
        ("grant_type", GRANT_TYPE),
        ("subject_token", token),
        ("subject_token_type", JWT_TYPE),
        ("resource", audience),
        ("authorization_details", &details.to_string()),
        ("writ_context", r#"{"tool":"deploy","args":"sha256:abc"}"#),
    ])
}

/// `writ verify` of `token` with `cert` for `audience` and `cap`: (exit code, output).
fn writ_verify(
    c: &Cluster,
    op: &Operator,
    token: &str,
    cert: &Path,
    audience: &str,
    cap: (&str, &str),
) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token.jwt");
    std::fs::write(&file, token).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("verify")
        .args(["--writ-namespace", &op.namespace])
        .arg("--token")
        .arg(&file)
        .arg("--cert")
        .arg(cert)
        .args(["--audience", audience, "--action", cap.0, "--resource", cap.1])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("writ verify");
    (out.status.code().unwrap_or(-1), text(&out))
}

/// One operator for the whole flow (a second operator in the same cluster would
/// fight over the webhook configuration), with a per-pod rate of 20/s, burst 40.
#[tokio::test]
async fn an_exchange_yields_a_per_call_token_for_one_capability_and_audience_and_the_grant_ending_cuts_it_off() {
    let c = cluster();
    let client = c.client().await;
    let ns = TestNamespace::new(&client, "exchange").await;
    let n = &ns.name;
    let op =
        &Operator::start(&c, &format!("{n}-writ"), "x-0", &["--exchange-rate", "20", "--exchange-burst", "40"]).await;
    example_setup(&c, &client, n).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bot1 = running_agent_pod(&client, n, "bot-1", "release-bot").await;
    let bot2 = running_agent_pod(&client, n, "bot-2", "release-bot").await;
    let bot3 = running_agent_pod(&client, n, "bot-3", "release-bot").await;
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("deploy", "release-bot", &[WEB], "15m", None));
    assert!(ok, "{out}");
    wait_phase(&client, n, "deploy", GrantPhase::Active, Duration::from_secs(15)).await;
    let token1 = wait_for_token(&client, n, &bot1, "deploy").await;
    let token2 = wait_for_token(&client, n, &bot2, "deploy").await;
    let f1 = pod_files(&client, n, &bot1, dir.path()).await;
    let f2 = pod_files(&client, n, &bot2, dir.path()).await;
    let url = format!("{}/token", op.token_url);

    // RFC 8414 metadata on the token listener.
    let meta = post(&format!("{}/.well-known/oauth-authorization-server", op.token_url), Some(&f1), "").await;
    assert_eq!(meta.status, 405, "metadata is GET only");
    let (code, meta) = {
        let out = tokio::process::Command::new("curl")
            .args(["-sk", "--max-time", "10"])
            .arg(format!("{}/.well-known/oauth-authorization-server", op.token_url))
            .output()
            .await
            .expect("curl");
        (out.status.code(), serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("metadata JSON"))
    };
    assert_eq!(code, Some(0));
    assert_eq!(meta["grant_types_supported"][0], GRANT_TYPE);
    assert_eq!(meta["authorization_details_types_supported"][0], "writ.dev/capability");
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);
    assert!(meta["token_endpoint"].as_str().expect("token_endpoint").ends_with("/token"));

    // The exchange.
    let a = post(&url, Some(&f1), &exchange_form(&token1, "deploy-api", WEB)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(a.body["token_type"], "Bearer");
    let expires_in = a.body["expires_in"].as_i64().expect("expires_in");
    assert!((1..=60).contains(&expires_in), "{expires_in}");
    let access = a.body["access_token"].as_str().expect("access_token").to_string();
    let (_, grant_claims) = writ::pki::token::decode_unverified(&token1).expect("grant token");
    let (header, claims) = writ::pki::token::decode_unverified(&access).expect("per-call token");
    assert_eq!(header.alg, "ES256", "signed like grant tokens");
    assert_eq!(claims.aud, vec!["deploy-api".to_string()]);
    assert_eq!(claims.cap.len(), 1);
    assert_eq!((claims.cap[0].action.as_str(), claims.cap[0].resource.as_str()), WEB);
    assert!(claims.exp - claims.iat <= 60 && claims.exp <= grant_claims.exp);
    assert_ne!(claims.jti, grant_claims.jti);
    assert_eq!(claims.gjti.as_deref(), Some(grant_claims.jti.as_str()));
    assert!(claims.txn.as_deref().is_some_and(|t| !t.is_empty()));
    assert_eq!(
        (&claims.sub, &claims.grant, &claims.task),
        (&grant_claims.sub, &grant_claims.grant, &grant_claims.task)
    );
    assert_eq!((&claims.act, &claims.cnf), (&grant_claims.act, &grant_claims.cnf));

    // `writ verify` accepts it for the one capability and audience, refuses it otherwise.
    let (code, out) = writ_verify(&c, op, &access, &f1.cert, "deploy-api", WEB);
    assert_eq!(code, 0, "{out}");
    let (code, out) = writ_verify(&c, op, &access, &f1.cert, "billing-api", WEB);
    assert_ne!(code, 0, "another audience: {out}");
    let (code, out) = writ_verify(&c, op, &access, &f1.cert, "deploy-api", OTHER);
    assert_ne!(code, 0, "another capability: {out}");
    let (code, out) = writ_verify(&c, op, &access, &f2.cert, "deploy-api", WEB);
    assert_ne!(code, 0, "another pod's certificate: {out}");

    // PyJWT (tests/interop/verify_token.py) verifies it with the published JWKS.
    let (_, jwks) = op.https_get("/.well-known/jwks.json").await;
    let (_, bundle) = op.https_get("/trust-bundle").await;
    let (jwks_file, bundle_file, access_file) =
        (dir.path().join("jwks.json"), dir.path().join("bundle.pem"), dir.path().join("access.jwt"));
    std::fs::write(&jwks_file, jwks).expect("write");
    std::fs::write(&bundle_file, &bundle).expect("write");
    std::fs::write(&access_file, &access).expect("write");
    let deps = Command::new(repo().join("hack/python-deps.sh")).output().expect("hack/python-deps.sh");
    assert!(deps.status.success(), "{}", text(&deps));
    let pythonpath = String::from_utf8_lossy(&deps.stdout).trim().to_string();
    let out = Command::new("python3")
        .arg(repo().join("tests/interop/verify_token.py"))
        .args([&jwks_file, &access_file])
        .arg("deploy-api")
        .args([&f1.cert, &f1.key, &bundle_file])
        .arg("test.writ.dev")
        .env("PYTHONPATH", &pythonpath)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out));
    let py: serde_json::Value = serde_json::from_str(text(&out).trim()).expect("claims JSON");
    assert_eq!(py["gjti"], grant_claims.jti.as_str());

    // The agent's side: `writ token` and the Python snippet, from a credential folder.
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&creds).expect("mkdir");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let d = secret_data(&secrets.get(&credential_secret_name(&bot1)).await.expect("credential Secret"));
    for file in ["tls.crt", "tls.key", "ca.crt", "grant.deploy.jwt"] {
        std::fs::write(creds.join(file), &d[file]).expect("write");
    }
    let writ_token = |action: &str, dpop: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_writ"));
        cmd.args(["token", "--grant", "deploy", "--resource", "deploy-api", "--action", action, "--target", WEB.1])
            .arg("--credentials")
            .arg(&creds)
            .args(["--endpoint", &op.token_url]);
        if dpop {
            cmd.arg("--dpop");
        }
        let out = cmd.output().expect("writ token");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).trim().to_string(), text(&out))
    };
    let (code, cli_token, out) = writ_token(WEB.0, false);
    assert_eq!(code, 0, "{out}");
    let (code, out) = writ_verify(&c, op, &cli_token, &f1.cert, "deploy-api", WEB);
    assert_eq!(code, 0, "the token `writ token` printed verifies: {out}");
    let (code, dpop_token, out) = writ_token(WEB.0, true);
    assert_eq!(code, 0, "{out}");
    assert!(
        writ::pki::token::decode_unverified(&dpop_token).expect("token").1.cnf.jkt.is_some(),
        "--dpop binds cnf.jkt"
    );
    let (code, _, out) = writ_token(OTHER.0, false);
    assert!(code == 1 && out.contains("invalid_scope"), "a capability not in the grant: {out}");
    let py_deps = Command::new(repo().join("hack/python-deps.sh")).output().expect("hack/python-deps.sh");
    assert!(py_deps.status.success(), "{}", text(&py_deps));
    let agent = |action: &str| {
        let out = Command::new("python3")
            .arg(repo().join("tests/interop/exchange_agent.py"))
            .arg(&creds)
            .args([op.token_url.as_str(), "deploy", "deploy-api", action, WEB.1])
            .env("PYTHONPATH", String::from_utf8_lossy(&py_deps.stdout).trim())
            .output()
            .expect("python3");
        (out.status.success(), text(&out))
    };
    let (ok, out) = agent(WEB.0);
    assert!(ok, "{out}");
    let py_response: serde_json::Value = serde_json::from_str(out.trim()).expect("response JSON");
    let py_token = py_response["access_token"].as_str().expect("access_token");
    let (code, out) = writ_verify(&c, op, py_token, &f1.cert, "deploy-api", WEB);
    assert_eq!(code, 0, "the Python agent's token verifies: {out}");
    let (ok, out) = agent(OTHER.0);
    assert!(!ok && out.contains("invalid_scope"), "{out}");
    let docs = std::fs::read_to_string(repo().join("docs/exchange.md")).expect("docs");
    let snippet = std::fs::read_to_string(repo().join("tests/interop/exchange_agent.py")).expect("snippet");
    let (start, end) = (snippet.find("def per_call_token(").expect("fn"), snippet.find("\n\ndef main(").expect("main"));
    assert!(
        docs.contains(snippet[start..end].trim()),
        "docs/exchange.md's Python snippet differs from tests/interop/exchange_agent.py"
    );

    // DPoP: a proof signed with the pod's key binds the token to that key too (cnf.jkt).
    let body = exchange_form(&token1, "deploy-api", WEB);
    let a = post_dpop(&url, &f1, &body, &dpop_proof(&f1.key, "POST", &url, None)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["token_type"], "DPoP");
    let bound = a.body["access_token"].as_str().expect("token").to_string();
    let (_, bound_claims) = writ::pki::token::decode_unverified(&bound).expect("token");
    assert!(bound_claims.cnf.jkt.is_some());
    assert_eq!(bound_claims.cnf.x5t_s256, grant_claims.cnf.x5t_s256, "still certificate-bound");
    for (case, proof) in [
        ("another pod's key", dpop_proof(&f2.key, "POST", &url, None)),
        ("another method", dpop_proof(&f1.key, "GET", &url, None)),
        ("another URI", dpop_proof(&f1.key, "POST", "https://elsewhere/token", None)),
        ("not a JWT", "nonsense".to_string()),
    ] {
        let a = post_dpop(&url, &f1, &body, &proof).await;
        assert_eq!((a.status, a.error()), (400, "invalid_dpop_proof"), "{case}: {}", a.body);
    }
    let replayed = dpop_proof(&f1.key, "POST", &url, None);
    assert_eq!(post_dpop(&url, &f1, &body, &replayed).await.status, 200);
    assert_eq!(post_dpop(&url, &f1, &body, &replayed).await.error(), "invalid_dpop_proof", "a replayed proof");
    // A resource server behind a TLS-terminating gateway verifies the DPoP-bound token with a proof only.
    let (_, jwks_json) = op.https_get("/.well-known/jwks.json").await;
    let (_, bundle_pem) = op.https_get("/trust-bundle").await;
    let verifier = writ::verify::Verifier::new(&bundle_pem, writ::pki::JwkSet::from_json(&jwks_json).expect("JWKS"))
        .expect("verifier");
    let attempt = writ::verify::Attempt { audience: "deploy-api", action: WEB.0, resource: WEB.1 };
    let tool = "https://deploy-api.example/mcp";
    let now = writ::pki::now_unix();
    let proof = dpop_proof(&f1.key, "POST", tool, Some(&bound));
    verifier.verify_dpop(&bound, &proof, "POST", tool, &attempt, now).expect("a matching proof verifies");
    let code =
        |r: Result<writ::pki::token::Claims, writ::verify::VerifyError>| r.map(|_| ()).map_err(|e| e.to_string());
    assert!(code(verifier.verify_dpop(&bound, &proof, "POST", tool, &attempt, now))
        .is_err_and(|e| e.contains("already used")));
    let other_key = dpop_proof(&f2.key, "POST", tool, Some(&bound));
    assert!(code(verifier.verify_dpop(&bound, &other_key, "POST", tool, &attempt, now))
        .is_err_and(|e| e.contains("cnf.jkt")));
    let no_ath = dpop_proof(&f1.key, "POST", tool, None);
    assert!(code(verifier.verify_dpop(&bound, &no_ath, "POST", tool, &attempt, now)).is_err_and(|e| e.contains("ath")));
    let wrong_htm = dpop_proof(&f1.key, "GET", tool, Some(&bound));
    assert!(
        code(verifier.verify_dpop(&bound, &wrong_htm, "POST", tool, &attempt, now)).is_err_and(|e| e.contains("htm"))
    );
    let for_bearer = dpop_proof(&f1.key, "POST", tool, Some(&access));
    assert!(
        code(verifier.verify_dpop(&access, &for_bearer, "POST", tool, &attempt, now))
            .is_err_and(|e| e.contains("cnf.jkt")),
        "a token without cnf.jkt is not DPoP-bound"
    );

    // Each error from its case.
    let cases: Vec<(&str, Option<&PodFiles>, String, u16, &str)> = vec![
        ("no client certificate", None, exchange_form(&token1, "deploy-api", WEB), 401, "invalid_client"),
        ("another pod's certificate", Some(&f2), exchange_form(&token1, "deploy-api", WEB), 400, "invalid_grant"),
        ("another pod's subject token", Some(&f1), exchange_form(&token2, "deploy-api", WEB), 400, "invalid_grant"),
        ("a per-call token as subject", Some(&f1), exchange_form(&access, "deploy-api", WEB), 400, "invalid_grant"),
        ("an audience not in the grant", Some(&f1), exchange_form(&token1, "billing-api", WEB), 400, "invalid_target"),
        ("a capability not in the grant", Some(&f1), exchange_form(&token1, "deploy-api", OTHER), 400, "invalid_scope"),
        (
            "a wildcard",
            Some(&f1),
            exchange_form(&token1, "deploy-api", ("k8s:deployments.*", WEB.1)),
            400,
            "invalid_scope",
        ),
        (
            "malformed authorization_details",
            Some(&f1),
            form(&[
                ("grant_type", GRANT_TYPE),
                ("subject_token", &token1),
                ("subject_token_type", JWT_TYPE),
                ("resource", "deploy-api"),
                ("authorization_details", "[{"),
            ]),
            400,
            "invalid_request",
        ),
        (
            "a token of the wrong type",
            Some(&f1),
            form(&[
                ("grant_type", GRANT_TYPE),
                ("subject_token", &token1),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:saml2"),
                ("resource", "deploy-api"),
                ("scope", &format!("{} {}", WEB.0, WEB.1)),
            ]),
            400,
            "invalid_request",
        ),
        ("a body over 16 KiB", Some(&f1), "x=".to_string() + &"a".repeat(17 * 1024), 400, "invalid_request"),
    ];
    for (case, files, body, status, error) in &cases {
        let a = post(&url, *files, body).await;
        assert_eq!((a.status, a.error()), (*status, *error), "{case}: {}", a.body);
        assert!(!a.body.to_string().contains(&token1), "{case}: the answer echoes a token");
    }
    let a = post(&url, Some(&f1), &exchange_form(&token1, "deploy-api", ("k8s:deployments.patch", "k8s:x/y"))).await;
    assert!(a.body["error_description"].as_str().unwrap_or("").contains("scope"), "{}", a.body);
    let a = post(&url, Some(&f1), &cases[7].2).await;
    assert!(a.body["error_description"].as_str().unwrap_or("").starts_with("authorization_details"), "{}", a.body);

    // One audit line per exchange, no token in the log; the metric counts decisions.
    let log = eventually(Duration::from_secs(5), "the audit lines", || async {
        let log = op.log_text();
        log.contains("audience-not-granted").then_some(log)
    })
    .await;
    assert!(log.contains("token exchange") && log.contains("issued"), "no audit line");
    assert!(log.contains("sha256:abc"), "the context is in the audit line");
    for t in [&token1, &token2, &access] {
        assert!(!log.contains(t.as_str()), "a token leaked into the log");
    }
    let issued = op.metric("writ_exchanges_total", &["decision=\"issued\""]).await.unwrap_or(0.0);
    assert!(issued >= 1.0, "writ_exchanges_total{{decision=issued}} = {issued}");

    // The per-pod rate limit: 60 exchanges at once from bot-3 (burst 40).
    let token3 = wait_for_token(&client, n, &bot3, "deploy").await;
    let f3 = pod_files(&client, n, &bot3, dir.path()).await;
    let body3 = exchange_form(&token3, "deploy-api", WEB);
    let (statuses, retry_after) = post_many(&url, &f3, &body3, 60).await;
    let issued = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(issued + limited, 60, "only issued or rate-limited: {statuses:?}");
    assert!(issued >= 40 && limited > 0, "{issued} issued, {limited} limited");
    assert_eq!(retry_after.len(), limited, "every 429 has a Retry-After");
    assert!(retry_after.iter().all(|s| *s >= 1));
    let a = post(&url, Some(&f3), &body3).await;
    if a.status == 429 {
        assert_eq!(a.error(), "slow_down", "{}", a.body);
        assert!(a.retry_after.is_some(), "Retry-After");
    }
    // bot-1 has its own bucket.
    let a = post(&url, Some(&f1), &exchange_form(&token1, "deploy-api", WEB)).await;
    assert_eq!(a.status, 200, "{}", a.body);

    // A grant whose TTL runs out: its exchanges are invalid_grant.
    let (ok, out) = apply_as(&c, Some("alice"), n, &grant_yaml("short", "release-bot", &[WEB], "10s", None));
    assert!(ok, "{out}");
    wait_phase(&client, n, "short", GrantPhase::Active, Duration::from_secs(15)).await;
    let short = wait_for_token(&client, n, &bot1, "short").await;
    let a = post(&url, Some(&f1), &exchange_form(&short, "deploy-api", WEB)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    eventually(Duration::from_secs(30), "the expired grant to be refused", || async {
        let a = post(&url, Some(&f1), &exchange_form(&short, "deploy-api", WEB)).await;
        (a.status == 400 && a.error() == "invalid_grant").then_some(())
    })
    .await;

    // The grant ends: new exchanges are refused, and the issued per-call token too.
    let a = post(&url, Some(&f1), &exchange_form(&token1, "deploy-api", WEB)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let live = a.body["access_token"].as_str().expect("token").to_string();
    let grants: Api<CapabilityGrant> = Api::namespaced(client.clone(), n);
    grants
        .patch("deploy", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"completed": true}})))
        .await
        .expect("complete the grant");
    let ended = eventually(Duration::from_secs(15), "the grant to end", || async {
        let g = grants.get("deploy").await.ok()?;
        g.status.as_ref().is_some_and(|s| s.phase.is_terminal()).then(Instant::now)
    })
    .await;
    let refused = eventually(Duration::from_secs(15), "exchanges to be refused", || async {
        let a = post(&url, Some(&f1), &exchange_form(&token1, "deploy-api", WEB)).await;
        (a.status == 400 && a.error() == "invalid_grant").then(Instant::now)
    })
    .await;
    assert!(
        refused.saturating_duration_since(ended) <= Duration::from_secs(1),
        "exchanges refused {:?} after the grant ended",
        refused.saturating_duration_since(ended)
    );
    let cut = eventually(Duration::from_secs(15), "the per-call token to be refused", || async {
        let (code, out) = writ_verify(&c, op, &live, &f1.cert, "deploy-api", WEB);
        (code != 0 && out.contains("revoked")).then(Instant::now)
    })
    .await;
    assert!(
        cut.saturating_duration_since(ended) <= Duration::from_secs(1) + Duration::from_millis(500),
        "the per-call token was refused {:?} after the grant ended",
        cut.saturating_duration_since(ended)
    );
    ns.cleanup().await;
}

//! Admission webhook throughput and latency over HTTPS on loopback.
//!
//! The real webhook router (`writ::webhook::router`) is served by the real TLS
//! stack (`writ::state::tls::serve_tls`, rustls + aws-lc-rs, hyper http1) on
//! 127.0.0.1, with a `Shared` whose caches hold a realistic namespace (64
//! AgentIdentities, 24 DelegationPolicies, plus two more namespaces of noise).
//! A static responder (the same `serve_tls`, an axum router returning a fixed
//! AdmissionReview of the same size) is measured the same way in the same run,
//! as the floor of what the TLS/HTTP stack itself costs.
//!
//! Load is generated in-process over keep-alive HTTP/1.1 + TLS connections:
//!
//! * open loop: requests are scheduled at a constant rate by a pacer thread;
//!   latency is measured from the *scheduled* send time, so a stalled server
//!   is charged for the requests it delayed (no coordinated omission);
//! * closed loop: N connections send back-to-back for the saturation rate.
//!
//! Each runs in rounds that alternate between the static responder and the
//! webhook, so noise from other processes hits both alike; the targets are
//! judged on the median round (every round and the best are printed too).
//! The `other procs` column shows how many cores other processes used during
//! a round: on a shared machine, compare runs only when it is near zero.
//!
//! The load generator and the server share the machine's cores, so the
//! saturation rate is a lower bound of what the server alone could do; the
//! per-thread CPU time of each side is reported to show how the cores were
//! split. No API server is involved: the kube `Client` in `Shared` talks to an
//! in-process fake that is only used while bootstrapping the trust material
//! (and the bench asserts it receives no request under load).
//!
//! Run: `cargo bench --bench webhook`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::State, routing::post, Router};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use kube::runtime::{reflector, watcher};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::{
    net::TcpStream,
    sync::{mpsc, Mutex},
};
use tokio_rustls::TlsConnector;
use writ::{
    api::{AgentIdentity, DelegationPolicy},
    state::{revocations::RevocationStore, tls as server, trust::Trust, RunConfig, Shared},
    testing::{ApiServer, Reply},
    webhook::{self, paths},
};

/// The namespace the requests target.
const NAMESPACE: &str = "agents";
/// AgentIdentities in `NAMESPACE`.
const IDENTITIES: usize = 64;
/// DelegationPolicies in `NAMESPACE`.
const POLICIES: usize = 24;
/// Other namespaces in the (cluster-wide) caches: (name, identities, policies).
const NOISE: [(&str, usize, usize); 2] = [("team-b", 32, 8), ("team-c", 32, 8)];
/// Of every `MIX_PERIOD` requests, one is a pod CREATE (mutate-pods), the rest grant CREATEs (validate-grants).
const MIX_PERIOD: usize = 5;

const TARGET_RATE: u32 = 2_000;
const TARGET_P99: Duration = Duration::from_millis(2);
const TARGET_SATURATION: f64 = 10_000.0;

const OPEN_CONNECTIONS: usize = 8;
const SATURATION_CONNECTIONS: usize = 16;
const WARMUP: Duration = Duration::from_secs(1);
/// Each target runs `ROUNDS` open-loop and `ROUNDS` closed-loop rounds, alternating targets.
const ROUNDS: usize = 3;
const OPEN_ROUND: Duration = Duration::from_secs(2);
const SATURATION_ROUND: Duration = Duration::from_millis(1500);

const USER: &str = "alice@example.com";
const GROUPS: [&str; 3] = ["release-managers", "team-3", "system:authenticated"];

fn main() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-server")
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .expect("client runtime");

    let setup = server_rt.block_on(setup());
    let handlers = handler_costs(&setup.shared, &setup.requests);
    client_rt.block_on(bench(setup, handlers));
    // Leave the server tasks to die with their runtime.
    server_rt.shutdown_background();
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

struct Setup {
    webhook: SocketAddr,
    floor: SocketAddr,
    tls: TlsConnector,
    shared: Arc<Shared>,
    api_calls: ApiServer,
    requests: Arc<Vec<(&'static str, Bytes)>>,
}

/// A kube `Client` over the test kit's API server: GET is 404 (so the trust
/// material and the revocation list start empty), POST/PUT echo the object
/// (so `Trust::bootstrap` "creates" its Secrets).
fn fake_client(server: &ApiServer) -> kube::Client {
    server.answering(|req| match req.method {
        Method::POST | Method::PUT => Reply::created(req.body.clone()),
        _ => Reply::not_found(),
    })
}

async fn setup() -> Setup {
    let api_calls = ApiServer::new().in_namespace(NAMESPACE);
    let client = fake_client(&api_calls);
    // `writ run`'s defaults; `WRIT_*` environment variables apply, as they would to the operator.
    let config = RunConfig::test();

    let trust = Arc::new(
        Trust::bootstrap(&client, &config.namespace, None, config.ca_ttl.as_secs_i64(), &config.trust_domain)
            .await
            .expect("trust bootstrap against the fake API"),
    );
    let revocations =
        Arc::new(RevocationStore::load(&client, &config.namespace).await.expect("revocations from the fake API"));

    let (identities, mut identities_w) = reflector::store::<AgentIdentity>();
    let (policies, mut policies_w) = reflector::store::<DelegationPolicy>();
    let (grants, mut grants_w) = reflector::store();
    let (pods, mut pods_w) = reflector::store();
    identities_w.apply_watcher_event(&watcher::Event::Init);
    policies_w.apply_watcher_event(&watcher::Event::Init);
    for (ns, n_ids, n_pols) in [(NAMESPACE, IDENTITIES, POLICIES)].into_iter().chain(NOISE) {
        for i in 0..n_ids {
            identities_w.apply_watcher_event(&watcher::Event::InitApply(identity(ns, i)));
        }
        for j in 0..n_pols {
            policies_w.apply_watcher_event(&watcher::Event::InitApply(policy(ns, j, n_pols, n_ids)));
        }
    }
    identities_w.apply_watcher_event(&watcher::Event::InitDone);
    policies_w.apply_watcher_event(&watcher::Event::InitDone);
    grants_w.apply_watcher_event(&watcher::Event::InitDone);
    pods_w.apply_watcher_event(&watcher::Event::InitDone);

    let serving = Arc::new(server::CertSlot::default());
    let cert = trust
        .ca()
        .mint_serving_certificate(
            &["localhost".to_string()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            writ::pki::now_unix(),
            86_400,
        )
        .expect("serving certificate");
    serving.set(&cert.chain_pem, &cert.key_pem).expect("load serving certificate");

    let shared = Arc::new(
        Shared::builder(client, config, trust.clone(), revocations)
            .identities(identities)
            .policies(policies)
            .grants(grants)
            .pods(pods)
            .serving(serving.clone())
            .build(),
    );
    shared.set_synced();
    assert!(shared.is_ready());
    assert_eq!(shared.identities_in(NAMESPACE).len(), IDENTITIES);
    assert_eq!(shared.policies_in(NAMESPACE).len(), POLICIES);

    let tls = server::tls_config(serving).expect("TLS config");
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));

    let listener = server::bind(any).await.expect("bind webhook");
    let webhook = listener.local_addr().expect("addr");
    tokio::spawn(server::serve_tls(listener, tls.clone(), webhook::router(shared.clone())));

    let requests = Arc::new(request_mix());

    // The floor answers with exactly what the webhook answers (same sizes),
    // captured from the webhook itself below.
    let listener = server::bind(any).await.expect("bind floor");
    let floor = listener.local_addr().expect("addr");

    let connector = TlsConnector::from(client_tls(&trust.bundle_pem()));
    let mut conn = connect(webhook, &connector).await;
    let mut canned = BTreeMap::new();
    for (path, body) in requests.iter().take(MIX_PERIOD) {
        if canned.contains_key(path) {
            continue;
        }
        let (status, resp) = send(&mut conn, path, body.clone()).await;
        check_first_response(path, body, status, &resp);
        canned.insert(*path, resp);
    }
    sanity_denial(&mut conn).await;

    let mut router = Router::new();
    for (path, resp) in canned {
        router = router.route(path, post(canned_response).with_state(resp));
    }
    tokio::spawn(server::serve_tls(listener, tls, router));

    Setup { webhook, floor, tls: connector, shared, api_calls, requests }
}

/// The static responder: reads the request body, answers a fixed AdmissionReview.
async fn canned_response(State(resp): State<Bytes>, body: Bytes) -> impl axum::response::IntoResponse {
    drop(body);
    ([(header::CONTENT_TYPE, "application/json")], resp)
}

// ---------------------------------------------------------------------------
// The namespace and the requests
// ---------------------------------------------------------------------------

const CREATED: &str = "2025-06-01T09:00:00Z";
const KEY_ALGORITHMS: [&str; 2] = ["Ed25519", "ECDSA-P256"];

fn identity(ns: &str, i: usize) -> AgentIdentity {
    let name = format!("agent-{i:02}");
    let roles = ["planner", "executor", "observer"];
    let cond = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": "", "lastTransitionTime": CREATED,
               "observedGeneration": 1})
    };
    let v = json!({
        "apiVersion": "writ.dev/v1alpha1",
        "kind": "AgentIdentity",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("6f1c2a3e-0000-4000-8000-{i:012x}"),
            "resourceVersion": format!("{}", 1000 + i), "generation": 1, "creationTimestamp": CREATED,
            "labels": {"app.kubernetes.io/part-of": "agents", "team": format!("team-{}", i % 8)},
            "finalizers": ["writ.dev/credentials"],
        },
        "spec": {
            "class": "Agent",
            "serviceAccountName": name,
            "owner": format!("team-{}", i % 8),
            "role": roles[i % 3],
            "credential": {"ttl": "1h", "rotateBefore": "20m", "keyAlgorithm": KEY_ALGORITHMS[i % 2]},
            "ceiling": [
                {"action": "k8s:deployments.get", "resource": "k8s:staging/deployments/*"},
                {"action": "k8s:deployments.patch", "resource": "k8s:staging/deployments/*"},
                {"action": "k8s:deployments.delete", "resource": "k8s:staging/deployments/*"},
                {"action": "k8s:configmaps.get", "resource": format!("k8s:staging/configmaps/app-{}", i % 4)},
            ],
            "review": {"every": "90d"},
        },
        "status": {
            "spiffeId": format!("spiffe://cluster.local/ns/{ns}/agent/{name}"),
            "boundPods": 1, "activeGrants": 2,
            "lastIssuedAt": CREATED, "lastActiveAt": CREATED, "reviewDueAt": "2099-01-01T00:00:00Z",
            "observedGeneration": 1,
            "conditions": [cond("Ready", "True", "Issued"), cond("ReviewOverdue", "False", "InReview"),
                           cond("Dormant", "False", "Active")],
        },
    });
    serde_json::from_value(v).expect("AgentIdentity")
}

/// Policy `j` lets the release managers, team `j % 8` and the planner agent
/// delegate to the agents `i` with `i % n_policies == j`.
fn policy(ns: &str, j: usize, n_policies: usize, n_identities: usize) -> DelegationPolicy {
    let delegates: Vec<Value> =
        (0..n_identities).filter(|i| i % n_policies == j).map(|i| json!({"agent": format!("agent-{i:02}")})).collect();
    let v = json!({
        "apiVersion": "writ.dev/v1alpha1",
        "kind": "DelegationPolicy",
        "metadata": {
            "name": format!("flow-{j:02}"), "namespace": ns, "uid": format!("0d7e9b11-0000-4000-8000-{j:012x}"),
            "resourceVersion": format!("{}", 2000 + j), "generation": 1, "creationTimestamp": CREATED,
        },
        "spec": {
            "delegators": [{"group": "release-managers"}, {"group": format!("team-{}", j % 8)}, {"agent": "agent-00"}],
            "delegates": delegates,
            "capabilities": [
                {"action": "k8s:deployments.*", "resource": "k8s:staging/deployments/*"},
                {"action": "k8s:configmaps.get", "resource": "k8s:staging/configmaps/*"},
            ],
            "maxTTL": "30m",
            "maxDepth": 2,
            "approval": {
                "required": [{"action": "k8s:deployments.delete", "resource": "k8s:*/deployments/*"}],
                "approvers": [{"group": "sre-oncall"}],
            },
        },
        "status": {"observedGeneration": 1, "conditions": [{"type": "Accepted", "status": "True", "reason": "Valid",
            "message": "", "lastTransitionTime": CREATED, "observedGeneration": 1}]},
    });
    serde_json::from_value(v).expect("DelegationPolicy")
}

fn user_info() -> Value {
    json!({"username": USER, "uid": "b7a4d2f0-5c9e-4c1a-9d3e-2f6a8b1c0e47", "groups": GROUPS,
           "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=4f2a9c"]}})
}

/// An AdmissionReview as the API server sends it for a grant CREATE (after
/// the mutating webhook stamped it).
fn grant_review(n: usize, agent: usize, capabilities: Value) -> Value {
    let name = format!("deploy-web-{n}");
    let uid = format!("a1b2c3d4-0000-4000-8000-{n:012x}");
    let gvk = json!({"group": "writ.dev", "version": "v1alpha1", "kind": "CapabilityGrant"});
    let gvr = json!({"group": "writ.dev", "version": "v1alpha1", "resource": "capabilitygrants"});
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": name, "namespace": NAMESPACE, "operation": "CREATE", "userInfo": user_info(),
            "object": {
                "apiVersion": "writ.dev/v1alpha1",
                "kind": "CapabilityGrant",
                "metadata": {
                    "name": name, "namespace": NAMESPACE, "uid": format!("c0ffee00-0000-4000-8000-{n:012x}"),
                    "generation": 1, "creationTimestamp": CREATED,
                    "annotations": {
                        "writ.dev/requested-by": USER,
                        "writ.dev/requested-by-groups": GROUPS.join(","),
                        "kubectl.kubernetes.io/last-applied-configuration": "",
                    },
                    "managedFields": [{
                        "manager": "kubectl-create", "operation": "Update", "apiVersion": "writ.dev/v1alpha1",
                        "time": CREATED, "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:spec": {".": {}, "f:agent": {}, "f:audiences": {}, "f:capabilities": {},
                                     "f:task": {".": {}, "f:id": {}, "f:intent": {}}, "f:ttl": {}}},
                    }],
                },
                "spec": {
                    "agent": format!("agent-{agent:02}"),
                    "task": {"id": format!("PR-{}", 1000 + n), "intent": "roll out web v2 to the staging canary"},
                    "capabilities": capabilities,
                    "audiences": ["deploy-api"],
                    "ttl": "15m",
                },
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl-create"},
        }
    })
}

fn grant_caps(n: usize) -> Value {
    json!([
        {"action": "k8s:deployments.patch", "resource": format!("k8s:staging/deployments/web-{}", n % 7)},
        {"action": "k8s:deployments.get", "resource": format!("k8s:staging/deployments/web-{}", n % 7)},
    ])
}

/// An AdmissionReview for a pod CREATE claiming an identity.
fn pod_review(n: usize, agent: usize) -> Value {
    let name = format!("agent-{agent:02}-7d9f8c6b5-{n:05}");
    let sa = format!("agent-{agent:02}");
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": format!("e5f6a7b8-0000-4000-8000-{n:012x}"), "kind": gvk, "resource": gvr,
            "requestKind": gvk, "requestResource": gvr, "name": name, "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "3c1d0e7a-1111-4000-8000-000000000001",
                         "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": name, "generateName": format!("agent-{agent:02}-7d9f8c6b5-"), "namespace": NAMESPACE,
                    "labels": {"app": sa, "pod-template-hash": "7d9f8c6b5", "writ.dev/agent": sa},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{sa}-7d9f8c6b5"),
                        "uid": "9a8b7c6d-2222-4000-8000-000000000002", "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": {
                    "serviceAccountName": sa,
                    "containers": [{
                        "name": "agent", "image": "ghcr.io/example/agent:v1.4.2", "imagePullPolicy": "IfNotPresent",
                        "args": ["--listen=:8080", "--log-format=json"],
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                        "env": [{"name": "RUST_LOG", "value": "info"}, {"name": "AGENT_NAME", "value": sa}],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                        "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                        "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                            "capabilities": {"drop": ["ALL"]}},
                    }],
                    "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace",
                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                    ]}}],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                    "schedulerName": "default-scheduler", "enableServiceLinks": true, "priority": 0,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "tolerations": [
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    ],
                },
                "status": {"phase": "Pending", "qosClass": "Burstable"},
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    })
}

/// The request mix, cycled through by the load generators: grant CREATEs for
/// every agent of the namespace, and every `MIX_PERIOD`th a pod CREATE.
fn request_mix() -> Vec<(&'static str, Bytes)> {
    let total = IDENTITIES * MIX_PERIOD;
    (0..total)
        .map(|n| {
            let agent = n % IDENTITIES;
            if n % MIX_PERIOD == MIX_PERIOD - 1 {
                (paths::MUTATE_PODS, Bytes::from(serde_json::to_vec(&pod_review(n, agent)).expect("json")))
            } else {
                let review = grant_review(n, agent, grant_caps(n));
                (paths::VALIDATE_GRANTS, Bytes::from(serde_json::to_vec(&review).expect("json")))
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Correctness checks
// ---------------------------------------------------------------------------

fn check_first_response(path: &str, request: &Bytes, status: StatusCode, body: &Bytes) {
    assert_eq!(status, StatusCode::OK, "{path}: status {status}: {}", String::from_utf8_lossy(body));
    let req: Value = serde_json::from_slice(request).expect("request json");
    let resp: Value = serde_json::from_slice(body).expect("response json");
    let r = &resp["response"];
    assert_eq!(r["uid"], req["request"]["uid"], "{path}: uid not echoed: {resp}");
    assert_eq!(r["allowed"], Value::Bool(true), "{path}: the benchmark request is not allowed: {resp}");
    if path == paths::MUTATE_PODS {
        assert_eq!(r["patchType"], "JSONPatch", "{path}: no patch: {resp}");
        assert!(patch_len(r) > 100, "{path}: no or tiny patch: {resp}");
    }
    println!("first response {path:<28} {} bytes, allowed: true{}", body.len(), patch_note(r));
}

/// Length of the patch in bytes: kube-rs serializes `patch` as a JSON array of
/// byte values (Go's decoder accepts it), base64 would be a string.
fn patch_len(r: &Value) -> usize {
    match &r["patch"] {
        Value::String(s) => s.len() * 3 / 4,
        Value::Array(a) => a.len(),
        _ => 0,
    }
}

fn patch_note(r: &Value) -> String {
    match patch_len(r) {
        0 => String::new(),
        n => format!(", JSONPatch of {n} bytes"),
    }
}

/// The policy engine really runs: a capability outside the agent's ceiling is denied.
async fn sanity_denial(conn: &mut SendRequest<Full<Bytes>>) {
    let caps = json!([{"action": "k8s:secrets.get", "resource": "k8s:prod/secrets/db"}]);
    let body = Bytes::from(serde_json::to_vec(&grant_review(999_999, 3, caps)).expect("json"));
    let (status, resp) = send(conn, paths::VALIDATE_GRANTS, body).await;
    assert_eq!(status, StatusCode::OK);
    let resp: Value = serde_json::from_slice(&resp).expect("response json");
    assert_eq!(resp["response"]["allowed"], Value::Bool(false), "out-of-ceiling grant admitted: {resp}");
    let msg = resp["response"]["status"]["message"].as_str().unwrap_or_default();
    println!("sanity: out-of-ceiling grant denied: {}", msg.chars().take(110).collect::<String>());
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

fn client_tls(bundle_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA cert");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn connect(addr: SocketAddr, tls: &TlsConnector) -> SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("localhost").expect("server name");
    let stream = tls.connect(name, tcp).await.expect("TLS handshake");
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn send(conn: &mut SendRequest<Full<Bytes>>, path: &str, body: Bytes) -> (StatusCode, Bytes) {
    conn.ready().await.expect("connection ready");
    let req = Request::post(path)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, */*")
        .body(Full::new(body))
        .expect("request");
    let resp = conn.send_request(req).await.expect("send request");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("response body").to_bytes();
    (status, body)
}

/// Cheap per-response check (the first response of each kind was parsed in full).
fn allowed(status: StatusCode, body: &[u8]) -> bool {
    const PAT: &[u8] = br#""allowed":true"#;
    status == StatusCode::OK && body.windows(PAT.len()).any(|w| w == PAT)
}

#[derive(Default)]
struct Samples {
    /// From the scheduled send time (open loop) or the send (closed loop), ns.
    latency: Vec<u64>,
    /// From the actual send, ns.
    service: Vec<u64>,
    errors: usize,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.latency.extend(other.latency);
        self.service.extend(other.service);
        self.errors += other.errors;
    }
}

struct Outcome {
    samples: Samples,
    elapsed: Duration,
    cpu: Cpu,
}

async fn connections(addr: SocketAddr, tls: &TlsConnector, n: usize) -> Vec<SendRequest<Full<Bytes>>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(connect(addr, tls).await);
    }
    out
}

/// N connections sending back-to-back for `duration`.
async fn closed_loop(
    conns: Vec<SendRequest<Full<Bytes>>>,
    requests: Arc<Vec<(&'static str, Bytes)>>,
    duration: Duration,
) -> (Outcome, Vec<SendRequest<Full<Bytes>>>) {
    let cpu0 = Cpu::now();
    let start = Instant::now();
    let deadline = start + duration;
    let n = conns.len();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut conn)| {
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut s = Samples::default();
                let mut i = c * requests.len() / n;
                loop {
                    let t = Instant::now();
                    if t >= deadline {
                        break;
                    }
                    let (path, body) = &requests[i % requests.len()];
                    let (status, resp) = send(&mut conn, path, body.clone()).await;
                    let ns = t.elapsed().as_nanos() as u64;
                    s.latency.push(ns);
                    s.service.push(ns);
                    s.errors += usize::from(!allowed(status, &resp));
                    i += 1;
                }
                (s, conn)
            })
        })
        .collect();
    let mut samples = Samples::default();
    let mut back = Vec::with_capacity(n);
    for t in tasks {
        let (s, conn) = t.await.expect("load task");
        samples.merge(s);
        back.push(conn);
    }
    let elapsed = start.elapsed();
    (Outcome { samples, elapsed, cpu: Cpu::now().since(&cpu0) }, back)
}

/// Constant-rate load: a pacer thread releases one ticket per `1/rate` on
/// schedule; whichever connection is free takes the next ticket. Latency is
/// measured from the ticket's scheduled time.
async fn open_loop(
    conns: Vec<SendRequest<Full<Bytes>>>,
    requests: Arc<Vec<(&'static str, Bytes)>>,
    rate: u32,
    duration: Duration,
) -> (Outcome, Vec<SendRequest<Full<Bytes>>>) {
    let total = (rate as u64 * duration.as_millis() as u64 / 1000) as usize;
    let interval = Duration::from_secs(1) / rate;
    let (tx, rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let cpu0 = Cpu::now();
    let start = Instant::now() + Duration::from_millis(5);
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            for i in 0..total {
                let at = start + interval * i as u32;
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if tx.send((i, at)).is_err() {
                    break;
                }
            }
        })
        .expect("pacer thread");
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let requests = requests.clone();
            let rx = rx.clone();
            tokio::spawn(async move {
                let mut s = Samples::default();
                loop {
                    let ticket = rx.lock().await.recv().await;
                    let Some((i, scheduled)) = ticket else { break };
                    let (path, body) = &requests[i % requests.len()];
                    let sent = Instant::now();
                    let (status, resp) = send(&mut conn, path, body.clone()).await;
                    let done = Instant::now();
                    s.latency.push((done - scheduled).as_nanos() as u64);
                    s.service.push((done - sent).as_nanos() as u64);
                    s.errors += usize::from(!allowed(status, &resp));
                }
                (s, conn)
            })
        })
        .collect();
    let mut samples = Samples::default();
    let mut back = Vec::new();
    for t in tasks {
        let (s, conn) = t.await.expect("load task");
        samples.merge(s);
        back.push(conn);
    }
    pacer.join().expect("pacer");
    let elapsed = start.elapsed();
    (Outcome { samples, elapsed, cpu: Cpu::now().since(&cpu0) }, back)
}

// ---------------------------------------------------------------------------
// Handler cost without TLS and HTTP
// ---------------------------------------------------------------------------

/// CPU time of the calling thread (Linux), else `None`.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

/// CPU µs per call of `f`, on this thread (wall time where CPU time is unavailable).
fn cpu_per_call(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let (c0, t0) = (thread_cpu(), Instant::now());
    for i in 0..n {
        f(i);
    }
    let spent = match (c0, thread_cpu()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => t0.elapsed(),
    };
    spent.as_secs_f64() * 1e6 / n as f64
}

/// The handlers alone: the webhook router called in-process (no TLS, no
/// HTTP), and the parts of a validate-grants request, on one thread.
fn handler_costs(shared: &Arc<Shared>, requests: &[(&'static str, Bytes)]) -> Vec<String> {
    use tower::ServiceExt;
    const N: usize = 2_000;
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let router = webhook::router(shared.clone());
    let bodies =
        |path: &str| -> Vec<Bytes> { requests.iter().filter(|(p, _)| *p == path).map(|(_, b)| b.clone()).collect() };
    let mut out = Vec::new();
    for path in [paths::VALIDATE_GRANTS, paths::MUTATE_PODS] {
        let bodies = bodies(path);
        let us = cpu_per_call(N, |i| {
            let req = Request::post(path)
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(bodies[i % bodies.len()].clone()))
                .expect("request");
            let body = rt.block_on(async {
                let resp = router.clone().oneshot(req).await.expect("infallible");
                resp.into_body().collect().await.expect("body").to_bytes()
            });
            assert!(allowed(StatusCode::OK, &body), "{path}: {}", String::from_utf8_lossy(&body));
        });
        out.push(format!("handler only (router, no TLS/HTTP) {path:<28} {us:>7.1} µs CPU/request"));
    }
    let grants = bodies(paths::VALIDATE_GRANTS);
    let parse = cpu_per_call(N, |i| {
        let r = webhook::parse_request::<writ::api::CapabilityGrant>(&grants[i % grants.len()]);
        std::hint::black_box(r.is_ok());
    });
    let caches = cpu_per_call(N, |_| {
        std::hint::black_box((shared.identities_in(NAMESPACE), shared.policies_in(NAMESPACE)));
    });
    out.push(format!(
        "  validate-grants parts: parse_request {parse:.1} µs (the handler parses the body twice), \
         identities_in + policies_in (clone {IDENTITIES} + {POLICIES} objects) {caches:.1} µs"
    ));
    out
}

// ---------------------------------------------------------------------------
// CPU accounting per thread group (Linux; zeros elsewhere)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Cpu {
    server: Duration,
    client: Duration,
    /// Every thread of this process.
    process: Duration,
    /// Machine-wide busy and total jiffies (`/proc/stat`), to see what other processes used.
    machine_busy: u64,
    machine_total: u64,
}

impl Cpu {
    fn now() -> Self {
        let mut cpu = Cpu::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return cpu };
        for task in tasks.flatten() {
            let dir = task.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let ns = std::fs::read_to_string(dir.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
                .unwrap_or(0);
            cpu.process += Duration::from_nanos(ns);
            if comm.starts_with("bench-server") {
                cpu.server += Duration::from_nanos(ns);
            } else if comm.starts_with("bench-client") || comm.starts_with("bench-pacer") {
                cpu.client += Duration::from_nanos(ns);
            }
        }
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        if let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) {
            // user nice system idle iowait irq softirq steal ...
            let v: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
            if v.len() == 8 {
                cpu.machine_total = v.iter().sum();
                cpu.machine_busy = cpu.machine_total - v[3] - v[4];
            }
        }
        cpu
    }

    fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            server: self.server.saturating_sub(earlier.server),
            client: self.client.saturating_sub(earlier.client),
            process: self.process.saturating_sub(earlier.process),
            machine_busy: self.machine_busy.saturating_sub(earlier.machine_busy),
            machine_total: self.machine_total.saturating_sub(earlier.machine_total),
        }
    }

    /// Cores busy with other processes over `wall` (machine busy minus this process).
    fn others(&self, wall: Duration, cores: usize) -> f64 {
        if self.machine_total == 0 {
            return 0.0;
        }
        let machine = self.machine_busy as f64 / self.machine_total as f64 * cores as f64;
        (machine - self.process.as_secs_f64() / wall.as_secs_f64()).max(0.0)
    }
}

// ---------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------

struct Row {
    phase: String,
    target: &'static str,
    conns: usize,
    requests: usize,
    errors: usize,
    rate: f64,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    service_p99: Duration,
    server_cpu_us: f64,
    client_cpu_us: f64,
    server_cores: f64,
    other_cores: f64,
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Duration::from_nanos(sorted[rank - 1])
}

fn row(phase: impl Into<String>, target: &'static str, conns: usize, mut o: Outcome) -> Row {
    o.samples.latency.sort_unstable();
    o.samples.service.sort_unstable();
    let n = o.samples.latency.len();
    let secs = o.elapsed.as_secs_f64();
    let per_req = |d: Duration| if n == 0 { 0.0 } else { d.as_secs_f64() * 1e6 / n as f64 };
    let l = &o.samples.latency;
    Row {
        phase: phase.into(),
        target,
        conns,
        requests: n,
        errors: o.samples.errors,
        rate: n as f64 / secs,
        p50: percentile(l, 0.50),
        p90: percentile(l, 0.90),
        p99: percentile(l, 0.99),
        p999: percentile(l, 0.999),
        max: l.last().map(|v| Duration::from_nanos(*v)).unwrap_or_default(),
        service_p99: percentile(&o.samples.service, 0.99),
        server_cpu_us: per_req(o.cpu.server),
        client_cpu_us: per_req(o.cpu.client),
        server_cores: o.cpu.server.as_secs_f64() / secs,
        other_cores: o.cpu.others(o.elapsed, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<22} {:<8} {:>5} {:>7} {:>4} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>11}",
        "phase",
        "target",
        "conns",
        "reqs",
        "errs",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "svc99 ms",
        "srv µs/r",
        "cli µs/r",
        "srv cores",
        "other procs"
    );
    for r in rows {
        println!(
            "{:<22} {:<8} {:>5} {:>7} {:>4} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8.1} {:>8.1} {:>9.2} {:>11.2}",
            r.phase,
            r.target,
            r.conns,
            r.requests,
            r.errors,
            r.rate,
            ms(r.p50),
            ms(r.p90),
            ms(r.p99),
            ms(r.p999),
            ms(r.max),
            ms(r.service_p99),
            r.server_cpu_us,
            r.client_cpu_us,
            r.server_cores,
            r.other_cores
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

async fn bench(setup: Setup, handlers: Vec<String>) {
    let Setup { webhook, floor, tls, shared, api_calls, requests } = setup;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let grant_bytes: Vec<usize> =
        requests.iter().filter(|(p, _)| *p == paths::VALIDATE_GRANTS).map(|(_, b)| b.len()).collect();
    let pod_bytes: Vec<usize> =
        requests.iter().filter(|(p, _)| *p == paths::MUTATE_PODS).map(|(_, b)| b.len()).collect();
    let avg = |v: &[usize]| v.iter().sum::<usize>() / v.len().max(1);
    println!(
        "namespace {NAMESPACE}: {} AgentIdentities, {} DelegationPolicies (caches also hold {} identities and {} policies in {} other namespaces)",
        shared.identities_in(NAMESPACE).len(),
        shared.policies_in(NAMESPACE).len(),
        NOISE.iter().map(|n| n.1).sum::<usize>(),
        NOISE.iter().map(|n| n.2).sum::<usize>(),
        NOISE.len(),
    );
    println!(
        "request mix: {} validate-grants CREATE (~{} B) : 1 mutate-pods CREATE (~{} B), {} distinct bodies; user {USER} groups {:?}",
        MIX_PERIOD - 1,
        avg(&grant_bytes),
        avg(&pod_bytes),
        requests.len(),
        GROUPS
    );
    println!(
        "machine: {cores} cores; server runtime 2 workers, load generator runtime 2 workers + pacer thread (same cores)"
    );
    println!("TLS: rustls/aws-lc-rs via writ::state::tls::serve_tls on 127.0.0.1, HTTP/1.1 keep-alive");
    println!();

    for line in handlers {
        println!("{line}");
    }
    println!();

    let targets = [("static", floor), ("webhook", webhook)];
    let mut pools = Vec::new();
    for (name, addr) in targets {
        let conns = connections(addr, &tls, SATURATION_CONNECTIONS).await;
        // Warm-up (not reported): caches, allocator, connection buffers.
        let (_, conns) = closed_loop(conns, requests.clone(), WARMUP).await;
        pools.push((name, conns));
    }
    let api_before = api_calls.requests().len() as u64;
    let mut rows = Vec::new();

    // Rounds alternate between the targets, so noise from other processes
    // on the machine hits both sides alike.
    for round in 1..=ROUNDS {
        for (name, pool) in &mut pools {
            let rest = pool.split_off(OPEN_CONNECTIONS);
            let (o, mut conns) = open_loop(std::mem::take(pool), requests.clone(), TARGET_RATE, OPEN_ROUND).await;
            conns.extend(rest);
            *pool = conns;
            rows.push(row(format!("open {TARGET_RATE}/s #{round}"), name, OPEN_CONNECTIONS, o));
        }
    }
    for round in 1..=ROUNDS {
        for (name, pool) in &mut pools {
            let (o, conns) = closed_loop(std::mem::take(pool), requests.clone(), SATURATION_ROUND).await;
            *pool = conns;
            rows.push(row(format!("saturate #{round}"), name, SATURATION_CONNECTIONS, o));
        }
    }
    print_rows(&rows);
    println!();
    println!(
        "latency: open loop from the scheduled send time (coordinated-omission free); svc99 = p99 from the actual send"
    );
    println!(
        "srv/cli µs/r: CPU time of the server / load-generator threads per request; srv cores: server CPU / wall time"
    );
    println!("other procs: cores busy with other processes on the machine during the phase (noise; ideally ~0)");
    println!();

    let api_during = api_calls.requests().len() as u64 - api_before;
    let errors: usize = rows.iter().map(|r| r.errors).sum();
    println!("API server requests during load: {api_during} (grants without parent: no ancestor lookups)");
    println!("responses not `allowed: true`: {errors}");
    println!();

    let pick = |target: &str, open: bool| -> Vec<&Row> {
        rows.iter().filter(|r| r.target == target && r.phase.starts_with("open") == open).collect()
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let list = |v: &[f64], f: &dyn Fn(f64) -> String| v.iter().map(|x| f(*x)).collect::<Vec<_>>().join(" / ");
    let as_ms = |x: f64| format!("{x:.3}");
    let as_rate = |x: f64| format!("{x:.0}");
    let mut p99 = BTreeMap::new();
    let mut sat = BTreeMap::new();
    let mut cpu = BTreeMap::new();
    for target in ["static", "webhook"] {
        let v: Vec<f64> = pick(target, true).iter().map(|r| r.p99.as_secs_f64() * 1e3).collect();
        println!(
            "open loop {TARGET_RATE}/s p99 ms by round, {target:<7}: {}  (median {:.3}, best {:.3})",
            list(&v, &as_ms),
            median(v.clone()),
            v.iter().copied().fold(f64::INFINITY, f64::min)
        );
        p99.insert(target, v);
    }
    for target in ["static", "webhook"] {
        let v: Vec<f64> = pick(target, false).iter().map(|r| r.rate).collect();
        println!(
            "saturation req/s by round,      {target:<7}: {}  (median {:.0}, best {:.0})",
            list(&v, &as_rate),
            median(v.clone()),
            v.iter().copied().fold(0.0, f64::max)
        );
        sat.insert(target, v);
        cpu.insert(target, median(pick(target, false).iter().map(|r| r.server_cpu_us).collect()));
    }
    println!();

    let (s_med, w_med) = (median(sat["static"].clone()), median(sat["webhook"].clone()));
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (s_best, w_best) = (best(&sat["static"]), best(&sat["webhook"]));
    println!(
        "ratio webhook/static saturation: {:.3} (median rounds {w_med:.0} / {s_med:.0} req/s); best rounds {:.3} ({w_best:.0} / {s_best:.0})",
        w_med / s_med,
        w_best / s_best
    );
    let (s_cpu, w_cpu) = (cpu["static"], cpu["webhook"]);
    println!(
        "ratio webhook/static server CPU per request at saturation: {:.1} ({w_cpu:.1} / {s_cpu:.1} µs, median rounds)",
        w_cpu / s_cpu
    );
    if w_cpu > 0.0 && s_cpu > 0.0 {
        println!(
            "server-only capacity estimate ({cores} cores / server CPU per request; not a measurement): webhook ~{:.0} req/s, static ~{:.0} req/s",
            cores as f64 * 1e6 / w_cpu,
            cores as f64 * 1e6 / s_cpu
        );
    }
    println!();
    let w_p99 = median(p99["webhook"].clone());
    let w_p99_best = p99["webhook"].iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "target p99 <= {} ms at {TARGET_RATE} req/s: webhook p99 = {w_p99:.3} ms (median of {ROUNDS} rounds; best {w_p99_best:.3}) -> {}",
        ms(TARGET_P99),
        verdict(w_p99 <= TARGET_P99.as_secs_f64() * 1e3)
    );
    println!(
        "target saturation >= {TARGET_SATURATION:.0} req/s: webhook {w_med:.0} req/s (median of {ROUNDS} rounds; best {w_best:.0}; load generator in-process on the same {cores} cores) -> {}",
        verdict(w_med >= TARGET_SATURATION)
    );

    assert_eq!(errors, 0, "some responses were not `allowed: true`");
    assert_eq!(api_during, 0, "the webhook called the (fake) API server under load");
}

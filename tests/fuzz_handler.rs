//! The HTTP admission handler under junk: random, mutated and truncated
//! AdmissionReview bodies to every webhook path, against the real router with
//! the example identities and policies in its caches (the kube client talks to
//! an in-process fake that the handler must not need). Never a panic, always a
//! 200 with a well-formed AdmissionReview. `PROPTEST_CASES` raises the bound.
//!
//! It builds its state with the test kit, so it runs with the `testing`
//! feature (`make test` enables every feature).
#![cfg(feature = "testing")]

use std::sync::{Arc, OnceLock};

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kube::runtime::{reflector, watcher};
use proptest::prelude::*;
use tower::ServiceExt as _;
use writ::{
    api::{AgentIdentity, CapabilityGrant, DelegationPolicy},
    state::{revocations::RevocationStore, trust::Trust, RunConfig, Shared},
    testing::{ApiServer, Reply},
    webhook::{self, paths},
};

/// The AgentIdentities the fake API server holds in namespace `lagging`,
/// which the handler's cache has not seen (a watch that lags behind).
const LAGGING_IDENTITIES: &str = r#"{"apiVersion":"writ.dev/v1alpha1","kind":"AgentIdentityList","metadata":{},"items":[
  {"apiVersion":"writ.dev/v1alpha1","kind":"AgentIdentity","metadata":{"name":"planner","namespace":"lagging"},"spec":{"class":"Agent","serviceAccountName":"planner","owner":"o","ceiling":[{"action":"a","resource":"r"}]}},
  {"apiVersion":"writ.dev/v1alpha1","kind":"AgentIdentity","metadata":{"name":"observer","namespace":"lagging"},"spec":{"class":"Agent","serviceAccountName":"observer","owner":"o","ceiling":[{"action":"a","resource":"r"}]}}]}"#;

/// POST/PUT echo (enough for bootstrap); listing the identities of
/// `lagging` answers [`LAGGING_IDENTITIES`], of `broken` a 500; any other
/// GET is 404. The handler needs nothing else for grants without a parent.
fn fake_client() -> kube::Client {
    ApiServer::new().answering(|req| match req.method {
        Method::POST | Method::PUT => Reply::created(req.body.clone()),
        Method::GET if req.path == "/apis/writ.dev/v1alpha1/namespaces/lagging/agentidentities" => {
            Reply::ok(serde_json::from_str(LAGGING_IDENTITIES).expect("the lagging identities"))
        }
        Method::GET if req.path == "/apis/writ.dev/v1alpha1/namespaces/broken/agentidentities" => {
            Reply::status(500, "InternalError")
        }
        _ => Reply::not_found(),
    })
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

fn router() -> &'static axum::Router {
    static ROUTER: OnceLock<axum::Router> = OnceLock::new();
    ROUTER.get_or_init(|| webhook::router(shared().clone()))
}

/// The handler's state: the example identities and policies of namespace
/// `ci` in its caches, and the fake API client.
fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        rt().block_on(async {
            let client = fake_client();
            let config = RunConfig::test();
            let trust = Arc::new(
                Trust::bootstrap(&client, &config.namespace, None, 86_400, &config.trust_domain).await.expect("trust"),
            );
            let revocations = Arc::new(RevocationStore::load(&client, &config.namespace).await.expect("revocations"));
            let (identities, mut iw) = reflector::store::<AgentIdentity>();
            let (policies, mut pw) = reflector::store::<DelegationPolicy>();
            let (grants, mut gw) = reflector::store();
            let (pods, mut podw) = reflector::store();
            iw.apply_watcher_event(&watcher::Event::Init);
            pw.apply_watcher_event(&watcher::Event::Init);
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
            for file in ["01-identities.yaml", "02-delegation-policy.yaml"] {
                let text = std::fs::read_to_string(root.join(file)).expect("example");
                for v in serde_saphyr::from_multiple::<serde_json::Value>(&text).expect("yaml") {
                    let mut v = v;
                    v["metadata"]["namespace"] = "ci".into();
                    match v["kind"].as_str() {
                        Some("AgentIdentity") => iw.apply_watcher_event(&watcher::Event::InitApply(
                            serde_json::from_value(v).expect("identity"),
                        )),
                        Some("DelegationPolicy") => pw.apply_watcher_event(&watcher::Event::InitApply(
                            serde_json::from_value(v).expect("policy"),
                        )),
                        _ => {}
                    }
                }
            }
            iw.apply_watcher_event(&watcher::Event::InitDone);
            pw.apply_watcher_event(&watcher::Event::InitDone);
            gw.apply_watcher_event(&watcher::Event::InitDone);
            podw.apply_watcher_event(&watcher::Event::InitDone);
            let shared = Arc::new(
                Shared::builder(client, config, trust, revocations)
                    .identities(identities)
                    .policies(policies)
                    .grants(grants)
                    .pods(pods)
                    .build(),
            );
            shared.set_synced();
            shared
        })
    })
}

/// Posts `body` to `path`; returns the status and the parsed JSON answer.
fn post(path: &str, body: Vec<u8>) -> (StatusCode, serde_json::Value) {
    let router = router().clone();
    rt().block_on(async {
        let req = Request::post(path).header("content-type", "application/json").body(axum::body::Body::from(body));
        let resp = router.oneshot(req.expect("request")).await.expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    })
}

const PATHS: [&str; 5] = [
    paths::MUTATE_PODS,
    paths::MUTATE_GRANTS,
    paths::VALIDATE_GRANTS,
    paths::VALIDATE_IDENTITIES,
    paths::VALIDATE_POLICIES,
];

/// A plausible review for `path` with the given pieces.
fn review(path: &str, uid: &str, op: &str, user: &str, field: &str) -> String {
    let (group, version, kind, resource, object) = match path {
        p if p == paths::MUTATE_PODS => (
            "",
            "v1",
            "Pod",
            "pods",
            format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p","namespace":"ci","labels":{{"writ.dev/agent":"{field}"}}}},"spec":{{"serviceAccountName":"{field}","containers":[{{"name":"a","image":"x"}}]}}}}"#
            ),
        ),
        p if p == paths::VALIDATE_IDENTITIES => (
            "writ.dev",
            "v1alpha1",
            "AgentIdentity",
            "agentidentities",
            format!(
                r#"{{"apiVersion":"writ.dev/v1alpha1","kind":"AgentIdentity","metadata":{{"name":"a","namespace":"ci"}},"spec":{{"serviceAccountName":"{field}","owner":"{field}","ceiling":[{{"action":"{field}","resource":"{field}"}}]}}}}"#
            ),
        ),
        p if p == paths::VALIDATE_POLICIES => (
            "writ.dev",
            "v1alpha1",
            "DelegationPolicy",
            "delegationpolicies",
            format!(
                r#"{{"apiVersion":"writ.dev/v1alpha1","kind":"DelegationPolicy","metadata":{{"name":"d","namespace":"ci"}},"spec":{{"delegators":[{{"group":"{field}"}}],"delegates":[{{"agent":"{field}"}}],"capabilities":[{{"action":"{field}","resource":"{field}"}}],"maxTTL":"{field}","maxDepth":2}}}}"#
            ),
        ),
        _ => (
            "writ.dev",
            "v1alpha1",
            "CapabilityGrant",
            "capabilitygrants",
            format!(
                r#"{{"apiVersion":"writ.dev/v1alpha1","kind":"CapabilityGrant","metadata":{{"name":"g","namespace":"ci"}},"spec":{{"agent":"release-bot","task":{{"id":"T"}},"capabilities":[{{"action":"k8s:deployments.patch","resource":"{field}"}}],"audiences":["{field}"],"ttl":"5m"}}}}"#
            ),
        ),
    };
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"{uid}","kind":{{"group":"{group}","version":"{version}","kind":"{kind}"}},"resource":{{"group":"{group}","version":"{version}","resource":"{resource}"}},"namespace":"ci","operation":"{op}","userInfo":{{"username":"{user}","groups":["release-managers"]}},"object":{object}}}}}"#
    )
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500)
}

fn well_formed(status: StatusCode, answer: &serde_json::Value, uid: Option<&str>) -> Result<(), TestCaseError> {
    prop_assert_eq!(status, StatusCode::OK);
    prop_assert_eq!(answer["kind"].as_str(), Some("AdmissionReview"), "{}", answer);
    prop_assert!(answer["response"]["allowed"].is_boolean(), "{}", answer);
    if let Some(uid) = uid {
        prop_assert_eq!(answer["response"]["uid"].as_str(), Some(uid), "{}", answer);
    }
    if answer["response"]["allowed"] == false {
        prop_assert!(answer["response"]["status"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn mutated_reviews_get_a_well_formed_answer(
        path in proptest::sample::select(PATHS.to_vec()),
        uid in "[a-z0-9-]{1,12}",
        op in prop_oneof![Just("CREATE".to_string()), Just("UPDATE".to_string()), Just("DELETE".to_string()), "[A-Z]{0,8}"],
        user in prop_oneof![Just("alice".to_string()), Just("system:serviceaccount:ci:planner".to_string()), "[a-z:]{0,16}"],
        field in "[a-zA-Z0-9:*/.%_ -]{0,24}",
    ) {
        let (status, answer) = post(path, review(path, &uid, &op, &user, &field).into_bytes());
        well_formed(status, &answer, Some(&uid))?;
    }

    #[test]
    fn truncated_and_random_bodies_get_a_well_formed_denial(
        path in proptest::sample::select(PATHS.to_vec()),
        cut in 0usize..2000,
        junk in proptest::collection::vec(any::<u8>(), 0..300),
        mode in 0u8..3,
    ) {
        let valid = review(path, "u-1", "CREATE", "alice", "k8s:staging/deployments/web").into_bytes();
        let body = match mode {
            0 => valid[..cut.min(valid.len().saturating_sub(1))].to_vec(),
            1 => junk,
            _ => { let mut v = valid.clone(); let at = cut % v.len(); v.splice(at..at, junk); v }
        };
        let (status, answer) = post(path, body);
        well_formed(status, &answer, None)?;
    }
}

/// The handler is not vacuous: a good grant is allowed, an over-broad one denied with its rule.
#[test]
fn the_fuzzed_handler_decides_for_real() {
    let (_, ok) = post(
        paths::VALIDATE_GRANTS,
        review(paths::VALIDATE_GRANTS, "u", "CREATE", "alice", "k8s:staging/deployments/web").into_bytes(),
    );
    assert_eq!(ok["response"]["allowed"], true, "{ok}");
    let (_, wide) = post(
        paths::VALIDATE_GRANTS,
        review(paths::VALIDATE_GRANTS, "u", "CREATE", "alice", "k8s:staging/deployments/*").into_bytes(),
    );
    assert_eq!(wide["response"]["allowed"], false, "{wide}");
    assert!(wide["response"]["status"]["message"].as_str().unwrap_or_default().contains("wildcard-in-grant"), "{wide}");
}

/// A grant review in `namespace` from `user`, parsed as the handler parses it.
fn grant_request(namespace: &str, user: &str) -> kube::core::admission::AdmissionRequest<CapabilityGrant> {
    let body = review(paths::VALIDATE_GRANTS, "u", "CREATE", user, "k8s:staging/deployments/web")
        .replace(r#""namespace":"ci""#, &format!(r#""namespace":"{namespace}""#));
    let review: kube::core::admission::AdmissionReview<CapabilityGrant> = serde_json::from_str(&body).expect("review");
    review.try_into().expect("request")
}

fn names(identities: &[AgentIdentity]) -> Vec<String> {
    identities.iter().map(|i| i.metadata.name.clone().unwrap_or_default()).collect()
}

/// The requesting agent is looked for among the identities running as the
/// requester's service account: in the cache first, then (the cache has
/// none) from the API server, so a lagging watch does not turn an agent into
/// a stranger. Only a service account of the grant's namespace can be an
/// agent; an unreadable list resolves nobody (fail closed).
#[test]
fn the_requesting_agent_is_found_even_when_the_cache_lags() {
    let find = |ns: &str, user: &str| {
        let req = grant_request(ns, user);
        names(&rt().block_on(webhook::grants::requester_identities(shared(), &req)))
    };
    // From the cache: the fake API server has no identities in `ci`.
    assert_eq!(find("ci", "system:serviceaccount:ci:planner"), ["planner"]);
    // Not in the cache: read from the API server, and only the matching one.
    assert_eq!(find("lagging", "system:serviceaccount:lagging:planner"), ["planner"]);
    assert_eq!(find("lagging", "system:serviceaccount:lagging:observer"), ["observer"]);
    assert!(find("lagging", "system:serviceaccount:lagging:stranger").is_empty());
    // A user, or a service account of another namespace, is never an agent here.
    assert!(find("lagging", "alice").is_empty());
    assert!(find("lagging", "system:serviceaccount:ci:planner").is_empty());
    // The API server cannot answer: nobody is resolved.
    assert!(find("broken", "system:serviceaccount:broken:planner").is_empty());
}

//! Fake API servers behind a real `kube::Client`: one answering from a
//! function ([`ApiServer`]), one scripted request by request ([`Verifier`]).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use kube::client::Body;
use serde_json::{json, Value};

/// A request as the fake API server saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Its method.
    pub method: Method,
    /// Its path, without the query.
    pub path: String,
    /// Its query string, if any.
    pub query: Option<String>,
    /// Its body as JSON (`Null` when empty or not JSON).
    pub body: Value,
}

impl Request {
    async fn read(req: http::Request<Body>) -> Self {
        let (method, path, query) =
            (req.method().clone(), req.uri().path().to_string(), req.uri().query().map(str::to_string));
        let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Self { method, path, query, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }

    /// The name of the object the request is about: `metadata.name` of the
    /// body for a create, else the last segment of the path.
    pub fn name(&self) -> String {
        match (&self.method, self.body["metadata"]["name"].as_str()) {
            (&Method::POST, Some(name)) => name.to_string(),
            _ => self.path.rsplit('/').next().unwrap_or_default().to_string(),
        }
    }

    /// Whether this is `method` on exactly `path`.
    pub fn is(&self, method: &Method, path: &str) -> bool {
        self.method == *method && self.path == path
    }
}

/// An answer of the fake API server.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The HTTP status.
    pub code: u16,
    /// The body.
    pub body: Value,
}

impl Reply {
    /// 200 with `body`.
    pub fn ok(body: Value) -> Self {
        Self { code: 200, body }
    }

    /// 201 with `body`.
    pub fn created(body: Value) -> Self {
        Self { code: 201, body }
    }

    /// A failure `Status` with `code` and `reason`, as the API server sends one.
    pub fn status(code: u16, reason: &str) -> Self {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code});
        Self { code, body }
    }

    /// A `Status` as the API server sends one, with the HTTP status its `code` names.
    pub fn of_status(status: Value) -> Self {
        let code = status["code"].as_u64().and_then(|c| u16::try_from(c).ok()).unwrap_or(500);
        Self { code, body: status }
    }

    /// The API server's refusal (403, cause `NamespaceTerminating`) of a
    /// create of `name` (of `kind`) in `namespace`, which is being deleted.
    pub fn namespace_terminating(namespace: &str, kind: &str, name: &str) -> Self {
        Self::of_status(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": format!("{kind} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated"),
            "details": {"name": name, "kind": kind, "causes": [{"reason": "NamespaceTerminating",
                "message": format!("namespace {namespace} is being terminated"), "field": "metadata.namespace"}]}
        }))
    }

    /// 404 `NotFound`.
    pub fn not_found() -> Self {
        Self::status(404, "NotFound")
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = Response::new(Full::new(Bytes::from(self.body.to_string())));
        *response.status_mut() = code;
        response
    }
}

/// A fake API server answering each request from a function, logging it.
#[derive(Clone)]
pub struct ApiServer {
    log: Arc<Mutex<Vec<Request>>>,
    namespace: String,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiServer {
    /// A server whose clients default to namespace `default`.
    pub fn new() -> Self {
        Self { log: Arc::default(), namespace: "default".into() }
    }

    /// Its clients default to `namespace`.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// A client answered by `answer`, which may wait (e.g. on a semaphore,
    /// to hold a request in flight).
    pub fn client<F, Fut>(&self, answer: F) -> kube::Client
    where
        F: Fn(Request) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let log = self.log.clone();
        let service = tower::service_fn(move |req: http::Request<Body>| {
            let (log, answer) = (log.clone(), answer.clone());
            async move {
                let req = Request::read(req).await;
                log.lock().unwrap_or_else(|e| e.into_inner()).push(req.clone());
                Ok::<_, std::convert::Infallible>(answer(req).await.response())
            }
        });
        kube::Client::new(service, self.namespace.clone())
    }

    /// A client answered at once by `answer`.
    pub fn answering(&self, answer: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> kube::Client {
        let answer = Arc::new(answer);
        self.client(move |req| {
            let reply = answer(&req);
            async move { reply }
        })
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every request so far, in order, forgetting them.
    pub fn drain(&self) -> Vec<Request> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The objects of one collection, by name: what [`objects_in`] serves.
pub type Objects = Arc<Mutex<BTreeMap<String, Value>>>;

/// Answers a request for the objects of `collection` (a path such as
/// `/api/v1/namespaces/ns/configmaps`) from `objects`, as the API server
/// would: reads of what is held, creates that conflict with what is held,
/// replaces and patches with optimistic concurrency on `resourceVersion`
/// (each write increments it), deletes. `None`: the request is for
/// another path.
pub fn objects_in(collection: &str, objects: &Objects, req: &Request) -> Option<Reply> {
    let rest = req.path.strip_prefix(collection)?;
    let name = match rest {
        "" => req.body["metadata"]["name"].as_str()?.to_string(),
        rest => rest.strip_prefix('/')?.to_string(),
    };
    let mut held = objects.lock().unwrap_or_else(|e| e.into_inner());
    let version = |v: &Value| v["metadata"]["resourceVersion"].as_str().map(str::to_string);
    let next = |current: Option<&Value>| current.and_then(version).map_or(1, |v| v.parse::<u64>().unwrap_or(0) + 1);
    let reply = match (&req.method, held.get(&name)) {
        (&Method::GET, Some(obj)) => Reply::ok(obj.clone()),
        (&Method::GET, None) | (&Method::PUT | &Method::DELETE, None) => Reply::not_found(),
        (&Method::POST, Some(_)) => Reply::status(409, "AlreadyExists"),
        (&Method::PUT, Some(current)) if version(current) != version(&req.body) => Reply::status(409, "Conflict"),
        (&Method::DELETE, Some(_)) => Reply::ok(held.remove(&name).unwrap_or_default()),
        (method, current) => {
            let mut obj = match (method, current) {
                (&Method::PATCH, Some(current)) => {
                    let mut merged = current.clone();
                    json_patch::merge(&mut merged, &req.body);
                    merged
                }
                _ => req.body.clone(),
            };
            obj["metadata"]["resourceVersion"] = next(current).to_string().into();
            let created = current.is_none();
            held.insert(name, obj.clone());
            if created {
                Reply::created(obj)
            } else {
                Reply::ok(obj)
            }
        }
    };
    Some(reply)
}

type Handle = tower_test::mock::Handle<http::Request<Body>, Response<Body>>;

/// A scripted fake API server: the test takes each request in turn, checks
/// it and answers it (kube-rs' controller-rs `fixtures.rs` is the model).
pub struct Verifier {
    handle: Handle,
}

/// One request taken from a [`Verifier`], waiting for its answer.
pub struct Call {
    /// The request.
    pub request: Request,
    send: tower_test::mock::SendResponse<Response<Body>>,
}

impl Call {
    /// Answers the request.
    pub fn reply(self, reply: Reply) {
        let mut response = Response::new(Body::from(reply.body.to_string().into_bytes()));
        *response.status_mut() = StatusCode::from_u16(reply.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.send.send_response(response);
    }
}

impl Verifier {
    /// A client whose requests the returned verifier answers.
    pub fn new() -> (kube::Client, Self) {
        let (service, handle) = tower_test::mock::pair::<http::Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), Self { handle })
    }

    /// The next request; panics when none comes within 5 s.
    pub async fn next(&mut self) -> Call {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .expect("a request within 5 s")
            .expect("a request");
        Call { request: Request::read(req).await, send }
    }

    /// Whether no request comes within `wait`.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.handle.next_request()).await.is_err()
    }

    /// The next request, which must be `method` on `path`.
    pub async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.request.method, call.request.path.as_str()),
            (&method, path),
            "the next request; its body: {}",
            call.request.body
        );
        call
    }
}

//! The revocation list: revoked certificate serials and token `jti`s, each
//! kept until its own expiry. Persisted in the ConfigMap `writ-revocations`
//! (so a restart or a new leader never forgets one), served on `/revocations`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    api::{Api, ObjectMeta, PostParams},
    Client,
};
use tokio::sync::Mutex;

use crate::verify::{RevocationList, RevokedCertificate, RevokedToken};

/// The ConfigMap holding the list.
pub const CONFIGMAP: &str = "writ-revocations";
/// Its data key.
pub const KEY: &str = "revocations.json";
/// How long an entry outlives the credential's own expiry: verifiers accept a
/// credential for up to their clock-skew allowance past `exp`, so the
/// revocation must stay published at least that long.
pub const RETENTION_AFTER_EXPIRY_SECS: i64 = 300;
/// The most a ConfigMap's data may hold (the API server's limit, 1 MiB): a
/// list that would not fit is refused here, before anything is sent.
pub const MAX_LIST_BYTES: usize = 1024 * 1024;

/// Errors while persisting revocations.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The API server refused or failed.
    #[error("writing ConfigMap {namespace}/{CONFIGMAP}: {source}")]
    Kube {
        /// Namespace.
        namespace: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The persisted list cannot be read; Writ refuses to start over with an
    /// empty one (fix or delete the ConfigMap deliberately).
    #[error("ConfigMap {namespace}/{CONFIGMAP} key {KEY} is not a revocation list: {source}")]
    Corrupt {
        /// Namespace.
        namespace: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The batched write that carried these revocations failed; `message` is
    /// that write's error, which names the ConfigMap.
    #[error("{message}")]
    Batch {
        /// What went wrong.
        message: String,
    },
    /// The list with these revocations would not fit in its ConfigMap.
    /// Nothing is written and the credentials stay issued (fail closed) until
    /// enough entries reach their expiry to make room.
    #[error(
        "ConfigMap {namespace}/{CONFIGMAP} key {KEY}: the revocation list would be {bytes} bytes \
         ({entries} entries), over the {MAX_LIST_BYTES} bytes a ConfigMap holds; the credentials stay \
         issued until older entries expire (each is kept until its credential's own expiry: shorter \
         certificate ttl and grant durations keep the list smaller)"
    )]
    Full {
        /// Namespace.
        namespace: String,
        /// The encoded size it would have had.
        bytes: usize,
        /// Entries it would have held.
        entries: usize,
    },
    /// Encoding failed.
    #[error("encoding the revocation list: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The list in memory, written through to the ConfigMap.
pub struct RevocationStore {
    api: Api<ConfigMap>,
    namespace: String,
    list: Mutex<RevocationList>,
    /// The encoded size of `list` as last read or written.
    bytes: AtomicUsize,
    /// The ConfigMap's resourceVersion as last read or written: a write
    /// replaces that version without reading the list back first (it is up to
    /// a mebibyte); a conflict means someone else wrote it meanwhile.
    resource_version: std::sync::Mutex<Option<String>>,
    /// Revocations waiting for the next write, and who waits for it.
    pending: std::sync::Mutex<Pending>,
}

/// Group commit of revocations: while one write of the list is in flight,
/// further revocations queue here and the next write carries them all (the
/// list is one ConfigMap, so a write per revocation would be quadratic in
/// bytes when thousands of credentials end together).
#[derive(Default)]
struct Pending {
    tokens: Vec<RevokedToken>,
    certificates: Vec<RevokedCertificate>,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
    flushing: bool,
}

impl RevocationStore {
    /// Loads the persisted list (an absent ConfigMap is an empty list).
    pub async fn load(client: &Client, namespace: &str) -> Result<Self, RevocationError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let stored = Self::read(&api, namespace).await?;
        Ok(Self {
            api,
            namespace: namespace.into(),
            list: Mutex::new(stored.list),
            bytes: stored.bytes.into(),
            resource_version: stored.resource_version.into(),
            pending: Default::default(),
        })
    }

    /// The persisted list's size: its encoded bytes and its entries.
    pub async fn size(&self) -> (usize, usize) {
        let list = self.list.lock().await;
        (self.bytes.load(Ordering::Relaxed), list.tokens.len() + list.certificates.len())
    }

    /// Reads the persisted list. An unreadable list is an error, never an
    /// empty list: forgetting revocations would re-validate revoked credentials.
    async fn read(api: &Api<ConfigMap>, namespace: &str) -> Result<Stored, RevocationError> {
        let cm = api
            .get_opt(CONFIGMAP)
            .await
            .map_err(|source| RevocationError::Kube { namespace: namespace.into(), source })?;
        Self::decode(cm, namespace)
    }

    /// The list a ConfigMap holds (none: an empty list).
    fn decode(cm: Option<ConfigMap>, namespace: &str) -> Result<Stored, RevocationError> {
        let resource_version = cm.as_ref().and_then(|cm| cm.metadata.resource_version.clone());
        let Some(text) = cm.and_then(|cm| cm.data).and_then(|mut d| d.remove(KEY)) else {
            return Ok(Stored { list: RevocationList::default(), bytes: 0, resource_version });
        };
        let list = serde_json::from_str(&text)
            .map_err(|source| RevocationError::Corrupt { namespace: namespace.into(), source })?;
        Ok(Stored { list, bytes: text.len(), resource_version })
    }

    /// Re-reads the persisted list (followers; a new leader before writing).
    pub async fn refresh(&self) -> Result<(), RevocationError> {
        let stored = Self::read(&self.api, &self.namespace).await?;
        self.adopt(stored).await;
        Ok(())
    }

    /// Takes in the list as a watch of its ConfigMap delivered it: how the
    /// replicas that do not lead (which serve `/revocations` and
    /// introspection too) learn of the leader's revocations at once. A
    /// version already held (the leader's own write coming back) is not
    /// decoded again.
    pub async fn absorb(&self, cm: ConfigMap) -> Result<(), RevocationError> {
        let held = self.resource_version.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if cm.metadata.resource_version.is_some() && cm.metadata.resource_version == held {
            return Ok(());
        }
        let stored = Self::decode(Some(cm), &self.namespace)?;
        self.adopt(stored).await;
        Ok(())
    }

    /// Replaces the list in memory with `stored` unless it is older.
    async fn adopt(&self, stored: Stored) {
        let mut cur = self.list.lock().await;
        if stored.list.version >= cur.version {
            *cur = stored.list;
            self.bytes.store(stored.bytes, Ordering::Relaxed);
            self.remember(stored.resource_version);
        }
    }

    /// A copy of the current list.
    pub async fn snapshot(&self) -> RevocationList {
        self.list.lock().await.clone()
    }

    /// Whether a token id is revoked.
    pub async fn is_token_revoked(&self, jti: &str) -> bool {
        self.list.lock().await.tokens.iter().any(|t| t.jti == jti)
    }

    /// Adds revocations (idempotent), prunes entries past their expiry, and
    /// persists the result before returning: callers remove credentials only
    /// after their revocation is durable.
    pub async fn revoke(
        self: &Arc<Self>,
        tokens: Vec<RevokedToken>,
        certificates: Vec<RevokedCertificate>,
        now: i64,
    ) -> Result<(), RevocationError> {
        if tokens.is_empty() && certificates.is_empty() {
            // Nothing to add; still prunes expired entries.
            return self.apply(Vec::new(), Vec::new(), now).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let flush = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.tokens.extend(tokens);
            p.certificates.extend(certificates);
            p.waiters.push(tx);
            !std::mem::replace(&mut p.flushing, true)
        };
        if flush {
            // A task of its own, so that a cancelled caller (a reconcile
            // aborted on losing leadership) cannot strand the queue.
            let this = self.clone();
            tokio::spawn(async move { this.flush(now).await });
        }
        let namespace = self.namespace.clone();
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(RevocationError::Batch { message }),
            Err(_) => Err(RevocationError::Batch {
                message: format!("writing ConfigMap {namespace}/{CONFIGMAP}: the write was abandoned"),
            }),
        }
    }

    /// Writes queued revocations, one batch per write, until none is left.
    async fn flush(&self, now: i64) {
        loop {
            let (tokens, certificates, waiters) = {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if p.waiters.is_empty() {
                    p.flushing = false;
                    return;
                }
                (std::mem::take(&mut p.tokens), std::mem::take(&mut p.certificates), std::mem::take(&mut p.waiters))
            };
            let outcome =
                self.apply(tokens, certificates, now.max(crate::pki::now_unix())).await.map_err(|e| e.to_string());
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
        }
    }

    async fn apply(
        &self,
        tokens: Vec<RevokedToken>,
        certificates: Vec<RevokedCertificate>,
        now: i64,
    ) -> Result<(), RevocationError> {
        let mut list = self.list.lock().await;
        let mut next = list.clone();
        if !merge(&mut next, tokens, certificates, now) {
            return Ok(());
        }
        next.version = list.version + 1;
        self.persist(&mut next, now).await?;
        *list = next;
        Ok(())
    }

    /// The ConfigMap's resourceVersion just read or written.
    fn remember(&self, resource_version: Option<String>) {
        *self.resource_version.lock().unwrap_or_else(|e| e.into_inner()) = resource_version;
    }

    /// Writes `list` over the version last read or written. When someone
    /// else wrote meanwhile (a replica that led for a while, a person), what
    /// they hold that is still in force is kept: their list is read, merged
    /// into `list`, and written over their version.
    async fn persist(&self, list: &mut RevocationList, now: i64) -> Result<(), RevocationError> {
        let err = |source| RevocationError::Kube { namespace: self.namespace.clone(), source };
        let mut attempts = 0;
        loop {
            let json = serde_json::to_string(&*list)?;
            let bytes = json.len();
            if bytes > MAX_LIST_BYTES {
                return Err(RevocationError::Full {
                    namespace: self.namespace.clone(),
                    bytes,
                    entries: list.tokens.len() + list.certificates.len(),
                });
            }
            let resource_version = self.resource_version.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIGMAP.into()),
                    labels: Some([("app.kubernetes.io/managed-by".to_string(), "writ".to_string())].into()),
                    resource_version: resource_version.clone(),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(KEY.to_string(), json)])),
                ..Default::default()
            };
            let written = match resource_version {
                None => self.api.create(&PostParams::default(), &cm).await,
                Some(_) => self.api.replace(CONFIGMAP, &PostParams::default(), &cm).await,
            };
            match written {
                Ok(cm) => {
                    self.remember(cm.metadata.resource_version);
                    self.bytes.store(bytes, Ordering::Relaxed);
                    return Ok(());
                }
                // 409: a newer version (or, for a create, one) is stored.
                Err(kube::Error::Api(e)) if e.code == 409 && attempts < 3 => {
                    attempts += 1;
                    let stored = Self::read(&self.api, &self.namespace).await?;
                    tracing::info!(
                        stored_version = stored.list.version,
                        our_version = list.version,
                        "the revocation list was written by someone else meanwhile; merging"
                    );
                    list.version = list.version.max(stored.list.version + 1);
                    merge(list, stored.list.tokens, stored.list.certificates, now);
                    self.remember(stored.resource_version);
                }
                Err(e) => return Err(err(e)),
            }
        }
    }
}

/// What the ConfigMap held when read.
struct Stored {
    list: RevocationList,
    bytes: usize,
    resource_version: Option<String>,
}

/// Adds the entries `list` lacks (by `jti`, by serial) and drops every entry
/// past its expiry and retention. Returns whether `list` changed.
fn merge(
    list: &mut RevocationList,
    tokens: Vec<RevokedToken>,
    certificates: Vec<RevokedCertificate>,
    now: i64,
) -> bool {
    let keep = |expires_at: i64| expires_at + RETENTION_AFTER_EXPIRY_SECS > now;
    let before = (list.tokens.len(), list.certificates.len());
    list.tokens.retain(|t| keep(t.expires_at));
    list.certificates.retain(|c| keep(c.expires_at));
    let mut changed = (list.tokens.len(), list.certificates.len()) != before;
    let mut jtis: std::collections::HashSet<String> = list.tokens.iter().map(|t| t.jti.clone()).collect();
    for t in tokens {
        if keep(t.expires_at) && jtis.insert(t.jti.clone()) {
            list.tokens.push(t);
            changed = true;
        }
    }
    let mut serials: std::collections::HashSet<String> = list.certificates.iter().map(|c| c.serial.clone()).collect();
    for c in certificates {
        if keep(c.expires_at) && serials.insert(c.serial.clone()) {
            list.certificates.push(c);
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use serde_json::json;

    use super::*;

    /// What the fake API server holds.
    type Held = Arc<StdMutex<Option<serde_json::Value>>>;
    /// The methods of the requests it answered.
    type Log = Arc<StdMutex<Vec<Method>>>;

    fn status(code: StatusCode, reason: &str) -> (StatusCode, Bytes) {
        let body =
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code.as_u16(), "reason": reason});
        (code, Bytes::from(body.to_string()))
    }

    /// An API server holding one ConfigMap (or none) with optimistic
    /// concurrency on its resourceVersion, recording each request's method.
    fn fake_api(stored: Held, log: Log) -> Client {
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let (stored, log) = (stored.clone(), log.clone());
            async move {
                let method = req.method().clone();
                let body = req.into_body().collect().await?.to_bytes();
                log.lock().expect("log").push(method.clone());
                let mut stored = stored.lock().expect("stored");
                let version = |cm: &serde_json::Value| cm["metadata"]["resourceVersion"].as_str().map(str::to_string);
                let (code, body) = match (&method, stored.as_ref()) {
                    (&Method::GET, Some(cm)) => (StatusCode::OK, Bytes::from(cm.to_string())),
                    (&Method::GET, None) => status(StatusCode::NOT_FOUND, "NotFound"),
                    (&Method::POST, Some(_)) => status(StatusCode::CONFLICT, "AlreadyExists"),
                    (&Method::PUT, current)
                        if current.and_then(version) != version(&serde_json::from_slice(&body)?) =>
                    {
                        status(StatusCode::CONFLICT, "Conflict")
                    }
                    _ => {
                        let mut cm: serde_json::Value = serde_json::from_slice(&body)?;
                        let next = stored.as_ref().and_then(version).map_or(1, |v| v.parse::<u64>().expect("rv") + 1);
                        cm["metadata"]["resourceVersion"] = next.to_string().into();
                        *stored = Some(cm.clone());
                        (StatusCode::OK, Bytes::from(cm.to_string()))
                    }
                };
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    Response::builder().status(code).body(Full::new(body)).expect("response"),
                )
            }
        });
        Client::new(service, "writ-system")
    }

    /// A store loaded from an empty fake API server, what it holds and its log.
    async fn store() -> (Arc<RevocationStore>, Held, Log) {
        let (stored, log) = (Held::default(), Log::default());
        let client = fake_api(stored.clone(), log.clone());
        let store = Arc::new(RevocationStore::load(&client, "writ-system").await.expect("load"));
        (store, stored, log)
    }

    fn certificates(from: usize, n: usize, expires_at: i64) -> Vec<RevokedCertificate> {
        (from..from + n).map(|i| RevokedCertificate { serial: format!("{i:032x}"), expires_at }).collect()
    }

    fn stored_list(stored: &Held) -> RevocationList {
        let cm = stored.lock().expect("stored").clone().expect("the ConfigMap");
        serde_json::from_str(cm["data"][KEY].as_str().expect("the list")).expect("a revocation list")
    }

    #[tokio::test]
    async fn a_list_that_would_not_fit_its_configmap_is_refused_before_any_write_and_nothing_is_lost() {
        let (store, stored, log) = store().await;
        let now = 1_800_000_000;
        store.revoke(vec![], certificates(0, 100, now + 3_600), now).await.expect("a small list is written");
        let written = stored.lock().expect("stored").clone().expect("the ConfigMap");
        let (bytes, entries) = store.size().await;
        assert_eq!(entries, 100);
        assert_eq!(bytes, written["data"][KEY].as_str().expect("the list").len());
        log.lock().expect("log").clear();

        // About 60 bytes an entry: 20,000 more do not fit in 1 MiB.
        let err = store.revoke(vec![], certificates(100, 20_000, now + 3_600), now).await.expect_err("over the limit");
        let message = err.to_string();
        assert!(
            message.starts_with(
                "ConfigMap writ-system/writ-revocations key revocations.json: the revocation list would be "
            ),
            "{message}"
        );
        assert!(message.contains(" bytes (20100 entries), "), "{message}");
        assert!(message.contains("over the 1048576 bytes a ConfigMap holds"), "{message}");
        assert_eq!(*log.lock().expect("log"), Vec::<Method>::new(), "nothing sent");
        assert_eq!(stored.lock().expect("stored").clone().expect("the ConfigMap"), written, "the stored list is kept");
        assert_eq!(store.snapshot().await.certificates.len(), 100, "the list in memory is kept");
        assert_eq!(store.size().await, (bytes, 100));

        // Once the first hundred have expired (and their retention passed),
        // a batch that fits is written, in one request.
        let later = now + 3_600 + RETENTION_AFTER_EXPIRY_SECS + 1;
        store.revoke(vec![], certificates(100_000, 10_000, later + 3_600), later).await.expect("room again");
        assert_eq!(*log.lock().expect("log"), vec![Method::PUT], "written over the version it wrote last");
        let (bytes, entries) = store.size().await;
        assert_eq!(entries, 10_000, "the expired hundred were pruned");
        assert!(bytes <= MAX_LIST_BYTES);
        assert_eq!(stored_list(&stored).certificates.len(), 10_000);
    }

    #[tokio::test]
    async fn what_someone_else_wrote_meanwhile_is_merged_not_overwritten() {
        let (store, stored, log) = store().await;
        let now = 1_800_000_000;
        let a = certificates(0, 1, now + 60);
        store.revoke(vec![], a.clone(), now).await.expect("first write");

        // Another replica (which led for a while) writes its own list: a
        // revocation this one has not seen, and a later version.
        let theirs = RevocationList {
            version: 7,
            tokens: vec![RevokedToken { jti: "their-token".into(), expires_at: now + 60 }],
            certificates: a.clone(),
        };
        {
            let mut cm = stored.lock().expect("stored");
            let cm = cm.as_mut().expect("the ConfigMap");
            cm["data"][KEY] = serde_json::to_string(&theirs).expect("json").into();
            cm["metadata"]["resourceVersion"] = "5".into();
        }
        log.lock().expect("log").clear();

        let c = certificates(1, 1, now + 60);
        store.revoke(vec![], c.clone(), now).await.expect("written after merging");
        assert_eq!(*log.lock().expect("log"), vec![Method::PUT, Method::GET, Method::PUT]);
        let list = stored_list(&stored);
        assert_eq!(list.version, 8, "after theirs");
        assert_eq!(list.tokens, theirs.tokens, "their revocation is kept");
        assert_eq!(list.certificates, [a, c].concat(), "ours are added once");
        assert_eq!(store.snapshot().await, list, "and this replica serves the merged list");
    }

    /// The ConfigMap as a watch delivers it: `list` at `resource_version`.
    fn watched(list: &RevocationList, resource_version: &str) -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": CONFIGMAP, "namespace": "writ-system", "resourceVersion": resource_version},
            "data": {KEY: serde_json::to_string(list).expect("json")}
        }))
        .expect("configmap")
    }

    #[tokio::test]
    async fn a_follower_takes_in_newer_lists_from_its_watch_and_keeps_what_it_holds_otherwise() {
        let (follower, stored, log) = store().await;
        let now = 1_800_000_000;
        let token = |jti: &str| RevokedToken { jti: jti.into(), expires_at: now + 60 };
        let v2 = RevocationList { version: 2, tokens: vec![token("a"), token("b")], certificates: vec![] };
        follower.absorb(watched(&v2, "20")).await.expect("a newer list");
        assert!(follower.is_token_revoked("b").await, "revoked on the follower at once");
        assert_eq!(follower.size().await.1, 2);

        // An older version (a watch re-listing, an event overtaken) changes nothing.
        let v1 = RevocationList { version: 1, tokens: vec![token("a")], certificates: vec![] };
        follower.absorb(watched(&v1, "10")).await.expect("an older list");
        assert_eq!(follower.snapshot().await, v2);

        // An unreadable list is an error, and the list held is kept (never
        // forgotten in favour of an empty one).
        let mut corrupt = watched(&v2, "30");
        corrupt.data.as_mut().expect("data").insert(KEY.into(), "{not json".into());
        let err = follower.absorb(corrupt).await.expect_err("corrupt");
        assert!(matches!(err, RevocationError::Corrupt { .. }), "{err}");
        assert_eq!(follower.snapshot().await, v2);

        // Following asks the API server for nothing. Leading later, the
        // follower writes what it took in, over the version it took in (this
        // fake server holds none, so that write conflicts and is merged).
        assert_eq!(*log.lock().expect("log"), vec![Method::GET], "only the load read the API server");
        log.lock().expect("log").clear();
        follower.revoke(vec![token("c")], vec![], now).await.expect("written");
        assert_eq!(*log.lock().expect("log"), vec![Method::PUT, Method::GET, Method::POST]);
        let list = stored_list(&stored);
        assert_eq!((list.version, list.tokens), (3, vec![token("a"), token("b"), token("c")]));
    }
}

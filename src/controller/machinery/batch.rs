//! Group commit of token writes into credential Secrets.
//!
//! Every capability token of a pod lives in that pod's one credential Secret
//! (`grant.<name>.jwt`), so that the pod sees new tokens in its mounted volume.
//! Activating many grants of one agent at once would otherwise rewrite that
//! Secret once per grant: each write re-sends the whole (growing) object to
//! etcd and to every watcher, which makes a burst quadratic in bytes. Here,
//! writes to one Secret queue up while a write to it is in flight and then go
//! out together as one merge patch. Nothing waits on a timer: a lone write
//! goes out at once.
//!
//! Each caller gets the outcome of the patch that carried its change.
//!
//! Reads come from the operator's watch cache of credential Secrets, unless
//! the cache has not yet seen this writer's last write to that Secret (its
//! `resourceVersion` is older), in which case the Secret is read from the API:
//! a stale read would re-mint a token that was just written.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::oneshot;

use crate::state::CredentialSecret;

/// The outcome of a batched write, shared by every change the patch carried.
pub type Outcome = Result<(), Arc<kube::Error>>;

#[derive(Default)]
struct Pending {
    /// Key → new value (`None` removes the key). Later changes to a key win.
    data: BTreeMap<String, Option<String>>,
    waiters: Vec<oneshot::Sender<Outcome>>,
    /// A flusher task owns this Secret's writes.
    flushing: bool,
}

/// How long a write of ours is remembered when no read found the cache
/// caught up with it: by then the watch has delivered it or been re-listed,
/// or the Secret is gone (a deleted pod's, which nothing reads again).
const WRITTEN_KEPT: Duration = Duration::from_secs(600);
/// Entries below which `Written` is not swept.
const WRITTEN_SWEEP_FLOOR: usize = 1024;

/// Our writes the cache may not have seen yet: `(resourceVersion, when)` per
/// Secret. Swept of entries older than [`WRITTEN_KEPT`] whenever it has
/// doubled since the last sweep, so it stays bounded under pod churn.
struct Written {
    entries: HashMap<(String, String), (u64, Instant)>,
    next_sweep: usize,
}

impl Default for Written {
    fn default() -> Self {
        Self { entries: HashMap::new(), next_sweep: WRITTEN_SWEEP_FLOOR }
    }
}

impl Written {
    fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, (_, at)| now.saturating_duration_since(*at) < WRITTEN_KEPT);
        self.next_sweep = (2 * self.entries.len()).max(WRITTEN_SWEEP_FLOOR);
        self.shrink();
    }

    /// Gives back the table's room once a burst is over (a hash table keeps
    /// its largest size otherwise).
    fn shrink(&mut self) {
        if self.entries.capacity() > 4 * self.entries.len().max(WRITTEN_SWEEP_FLOOR / 4) {
            self.entries.shrink_to(2 * self.entries.len());
        }
    }
}

/// Coalesces concurrent writes of `data` keys per Secret.
#[derive(Clone)]
pub struct SecretWriter {
    client: kube::Client,
    pending: Arc<Mutex<HashMap<(String, String), Pending>>>,
    patches: Arc<std::sync::atomic::AtomicU64>,
    /// `resourceVersion` of our last write per Secret, until the cache has it.
    written: Arc<Mutex<Written>>,
    cache: kube::runtime::reflector::Store<CredentialSecret>,
    /// Set when the leadership term that owns this writer ends.
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

fn resource_version(meta: &ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

impl SecretWriter {
    /// A writer using `client`, reading through `cache` (credential Secrets).
    pub fn new(client: kube::Client, cache: kube::runtime::reflector::Store<CredentialSecret>) -> Self {
        Self {
            client,
            pending: Arc::default(),
            patches: Arc::default(),
            written: Arc::default(),
            cache,
            stopped: Arc::default(),
        }
    }

    /// Ends this writer's term: no patch is sent from now on (one already
    /// sent is answered as usual), and every change still queued, or asked
    /// for later, fails. A replica that lost the Lease must not write tokens
    /// its controllers decided on while it led: the new leader may have
    /// revoked them meanwhile.
    pub fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records a write of a Secret made elsewhere (the certificate issuer), so
    /// that reads do not return a cached version older than it.
    pub fn note_written(&self, written: &ObjectMeta) {
        self.note_written_at(written, Instant::now());
    }

    fn note_written_at(&self, written: &ObjectMeta, now: Instant) {
        let (Some(ns), Some(name), Some(rv)) =
            (written.namespace.clone(), written.name.clone(), resource_version(written))
        else {
            return;
        };
        let mut log = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let entry = log.entries.entry((ns, name)).or_insert((rv, now));
        *entry = (entry.0.max(rv), now);
        if log.entries.len() >= log.next_sweep {
            log.sweep(now);
        }
    }

    /// Forgets our last write to `secret` once the cache holds that version
    /// or a later one (or the Secret is gone): fed every change of the
    /// credential Secret cache, so the record of each Secret's last write
    /// lasts only until the watch delivers it, not until a later read of that
    /// Secret or the ten-minute sweep (a record per pod would otherwise pile
    /// up after a burst of grants).
    pub fn seen(&self, secret: &CredentialSecret) {
        let (Some(namespace), Some(name)) = (secret.metadata.namespace.as_deref(), secret.metadata.name.as_deref())
        else {
            return;
        };
        let mut log = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if log.entries.is_empty() {
            return;
        }
        let id = (namespace.to_string(), name.to_string());
        let Some((ours, _)) = log.entries.get(&id) else { return };
        let cached = self.cache.get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace));
        if cached.is_none_or(|c| c.version().is_some_and(|rv| rv >= *ours)) {
            log.entries.remove(&id);
            log.shrink();
        }
    }

    /// What the cache says of Secret `namespace/name` once it has caught up
    /// with our last write to it: `Some(None)` when it holds no such Secret
    /// and we never wrote one; `None` when only the API can tell.
    fn cached(&self, namespace: &str, name: &str) -> Option<Option<Arc<CredentialSecret>>> {
        let cached = self.cache.get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace));
        let id = (namespace.to_string(), name.to_string());
        let mut log = self.written.lock().unwrap_or_else(|e| e.into_inner());
        match (cached, log.entries.get(&id).map(|(rv, _)| *rv)) {
            (cached, None) => Some(cached),
            (Some(cached), Some(ours)) if cached.version().is_some_and(|rv| rv >= ours) => {
                log.entries.remove(&id);
                Some(Some(cached))
            }
            _ => None,
        }
    }

    /// The Secret `namespace/name` as of at least our last write to it. A
    /// Secret the cache does not hold is looked up on the API server (the
    /// watch may not have delivered it yet).
    pub async fn read(&self, namespace: &str, name: &str) -> Result<Option<Arc<CredentialSecret>>, kube::Error> {
        match self.cached(namespace, name) {
            Some(Some(secret)) => Ok(Some(secret)),
            _ => self.read_from_api(namespace, name).await,
        }
    }

    /// Like [`read`](Self::read), but believes the cache when it holds no
    /// such Secret and we never wrote one. For a caller that only creates
    /// the Secret when it is absent: if the cache lagged, the create fails
    /// with 409 Conflict, and the caller reads again with
    /// [`read_from_api`](Self::read_from_api). This saves a GET (an etcd
    /// read) for every new pod.
    pub async fn read_or_absent(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<CredentialSecret>>, kube::Error> {
        match self.cached(namespace, name) {
            Some(cached) => Ok(cached),
            None => self.read_from_api(namespace, name).await,
        }
    }

    /// The Secret `namespace/name` from the API server.
    pub async fn read_from_api(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<CredentialSecret>>, kube::Error> {
        let api: Api<CredentialSecret> = Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?.map(Arc::new))
    }

    /// Patches sent so far (for tests and metrics).
    pub fn patches_sent(&self) -> u64 {
        self.patches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets (`Some`) or removes (`None`) `key` in Secret `namespace/name`;
    /// resolves once a patch carrying the change was answered. A 404 comes
    /// back as the API's error (the Secret is gone).
    pub async fn write(&self, namespace: &str, name: &str, key: &str, value: Option<String>) -> Outcome {
        self.write_keys(namespace, name, [(key.to_string(), value)]).await
    }

    /// [`write`](Self::write) for several keys, carried by the same patch.
    pub async fn write_keys(
        &self,
        namespace: &str,
        name: &str,
        changes: impl IntoIterator<Item = (String, Option<String>)>,
    ) -> Outcome {
        if self.is_stopped() {
            return Err(Arc::new(stopped()));
        }
        let (tx, rx) = oneshot::channel();
        let id = (namespace.to_string(), name.to_string());
        let start = {
            let mut all = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let p = all.entry(id.clone()).or_default();
            p.data.extend(changes);
            p.waiters.push(tx);
            !std::mem::replace(&mut p.flushing, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.flush(id).await });
        }
        // The flusher always answers; a dropped sender means the runtime is shutting down.
        rx.await.unwrap_or_else(|_| Err(Arc::new(kube::Error::Service("token writer stopped".into()))))
    }

    /// Sends batches for one Secret until none is pending.
    async fn flush(&self, id: (String, String)) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &id.0);
        loop {
            let (data, waiters) = {
                let mut all = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let Some(p) = all.get_mut(&id) else { return };
                if p.waiters.is_empty() {
                    all.remove(&id);
                    return;
                }
                if self.is_stopped() {
                    let p = all.remove(&id).unwrap_or_default();
                    for w in p.waiters {
                        let _ = w.send(Err(Arc::new(stopped())));
                    }
                    return;
                }
                (std::mem::take(&mut p.data), std::mem::take(&mut p.waiters))
            };
            let data: serde_json::Map<String, serde_json::Value> = data
                .into_iter()
                .map(|(k, v)| (k, v.map_or(serde_json::Value::Null, |v| base64_std(&v).into())))
                .collect();
            let patch = serde_json::json!({ "data": data });
            self.patches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = match api.patch(&id.1, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(written) => {
                    self.note_written(&written.metadata);
                    Ok(())
                }
                Err(e) => Err(Arc::new(e)),
            };
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
        }
    }
}

fn stopped() -> kube::Error {
    kube::Error::Service("token writer stopped: this replica's leadership term ended".into())
}

fn base64_std(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// Forgets each of `writer`'s writes once the cache of credential Secrets
/// has it (reads then come from the cache again); runs for the term.
pub async fn forget_when_seen(writer: SecretWriter, secrets: &super::cache::Cache<CredentialSecret>) {
    use futures::StreamExt as _;
    let (resync, relisted) = super::cache::Resync::channel();
    let seen = secrets.changes(&resync).for_each(move |s| {
        writer.seen(&s);
        futures::future::ready(())
    });
    // Re-lists need nothing here: a record the watch never confirms goes
    // with the next sweep.
    let relisted = relisted.for_each(|()| futures::future::ready(()));
    futures::future::join(seen, relisted).await;
}

#[cfg(test)]
mod tests {

    use kube::runtime::{reflector, watcher};
    use serde_json::{json, Value};

    use super::*;
    use crate::testing::{Call, Reply, Verifier};

    fn writer() -> (SecretWriter, Verifier, reflector::store::Writer<CredentialSecret>) {
        let (client, verifier) = Verifier::new();
        let (cache, feed) = reflector::store::<CredentialSecret>();
        (SecretWriter::new(client, cache), verifier, feed)
    }

    fn secret(rv: u64, data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "cred", "namespace": "ns", "resourceVersion": rv.to_string()}, "data": data})
    }

    /// The next request: method, path, body, and the call to answer.
    async fn next(handle: &mut Verifier) -> (String, String, Value, Call) {
        let call = handle.next().await;
        let (method, path, body) =
            (call.request.method.to_string(), call.request.path.clone(), call.request.body.clone());
        (method, path, body, call)
    }

    fn respond(send: Call, v: &Value) {
        send.reply(Reply::ok(v.clone()));
    }

    #[tokio::test]
    async fn writes_queued_behind_an_inflight_patch_go_out_together_in_order() {
        let (w, mut handle, _feed) = writer();
        let spawn = |key: &'static str, value: Option<&'static str>| {
            let w = w.clone();
            tokio::spawn(async move { w.write("ns", "cred", key, value.map(str::to_string)).await })
        };
        let a = spawn("grant.a.jwt", Some("A"));
        let (method, path, body, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("PATCH", "/api/v1/namespaces/ns/secrets/cred"));
        assert_eq!(body, json!({"data": {"grant.a.jwt": base64_std("A")}}), "a lone write goes out at once");
        // While that patch is in flight, three more changes queue up; the
        // later change of a key wins.
        let b = spawn("grant.b.jwt", Some("B"));
        let c = spawn("grant.c.jwt", Some("C"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c2 = spawn("grant.c.jwt", None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        respond(send, &secret(5, json!({})));
        let (_, _, body, send) = next(&mut handle).await;
        assert_eq!(body, json!({"data": {"grant.b.jwt": base64_std("B"), "grant.c.jwt": null}}));
        respond(send, &secret(6, json!({})));
        for h in [a, b, c, c2] {
            h.await.expect("task").expect("written");
        }
        assert_eq!(w.patches_sent(), 2);
    }

    #[tokio::test]
    async fn a_stopped_writer_sends_nothing_more_and_fails_what_was_queued() {
        let (w, mut handle, _feed) = writer();
        let spawn = |key: &'static str| {
            let w = w.clone();
            tokio::spawn(async move { w.write("ns", "cred", key, Some("T".into())).await })
        };
        let a = spawn("grant.a.jwt");
        let (_, _, _, send) = next(&mut handle).await;
        // Queued behind the patch in flight when the term ends.
        let b = spawn("grant.b.jwt");
        tokio::time::sleep(Duration::from_millis(50)).await;
        w.stop();
        respond(send, &secret(5, json!({})));
        a.await.expect("task").expect("the patch already sent is answered as usual");
        let err = tokio::time::timeout(Duration::from_secs(2), b)
            .await
            .expect("the queued change is answered without a patch")
            .expect("task")
            .expect_err("a queued change fails");
        assert!(err.to_string().contains("leadership term ended"), "{err}");
        let later = w.write("ns", "cred", "grant.c.jwt", Some("T".into())).await;
        assert!(later.is_err(), "a change asked for after the stop fails at once");
        assert!(handle.quiet_for(Duration::from_millis(200)).await, "no patch after the stop");
        assert_eq!(w.patches_sent(), 1);
    }

    #[tokio::test]
    async fn writes_no_read_followed_are_forgotten_after_a_while() {
        let (w, _handle, _feed) = writer();
        let meta = |i: usize| ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(format!("gone-{i}")),
            resource_version: Some("9".into()),
            ..Default::default()
        };
        let start = Instant::now();
        // Secrets of deleted pods: written once, never read again.
        for i in 0..WRITTEN_SWEEP_FLOOR - 1 {
            w.note_written_at(&meta(i), start);
        }
        let len = || w.written.lock().expect("lock").entries.len();
        assert_eq!(len(), WRITTEN_SWEEP_FLOOR - 1, "below the floor, nothing is swept");
        // A write long after, that reaches the floor, sweeps the old ones and
        // keeps itself.
        w.note_written_at(&meta(WRITTEN_SWEEP_FLOOR), start + WRITTEN_KEPT + Duration::from_secs(1));
        assert_eq!(len(), 1);
        let next = w.written.lock().expect("lock").next_sweep;
        assert_eq!(next, WRITTEN_SWEEP_FLOOR, "the next sweep waits for the table to refill");
    }

    #[tokio::test]
    async fn a_write_is_forgotten_once_the_cache_has_it() {
        let (w, _handle, mut feed) = writer();
        let len = || w.written.lock().expect("lock").entries.len();
        let ours = |rv: &str| ObjectMeta {
            namespace: Some("ns".into()),
            name: Some("cred".into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        };
        w.note_written(&ours("5"));
        // The watch delivers an older version: still remembered.
        let older: CredentialSecret = serde_json::from_value(secret(3, json!({}))).expect("secret");
        feed.apply_watcher_event(&watcher::Event::Apply(older.clone()));
        w.seen(&older);
        assert_eq!(len(), 1, "the cache is behind our write");
        assert!(w.cached("ns", "cred").is_none(), "so only the API can tell");
        // Then ours: forgotten, and the cache answers.
        let current: CredentialSecret = serde_json::from_value(secret(5, json!({}))).expect("secret");
        feed.apply_watcher_event(&watcher::Event::Apply(current.clone()));
        w.seen(&current);
        assert_eq!(len(), 0);
        assert!(w.cached("ns", "cred").is_some_and(|c| c.is_some()));
        // A Secret deleted after our write: its record goes with it.
        w.note_written(&ours("9"));
        feed.apply_watcher_event(&watcher::Event::Delete(current.clone()));
        w.seen(&current);
        assert_eq!(len(), 0, "the cache holds no such Secret any more");
        // A burst's table is given back.
        for i in 0..4 * WRITTEN_SWEEP_FLOOR {
            w.note_written(&ObjectMeta { name: Some(format!("c-{i}")), ..ours("9") });
        }
        for i in 0..4 * WRITTEN_SWEEP_FLOOR {
            let mut gone: CredentialSecret = serde_json::from_value(secret(9, json!({}))).expect("secret");
            gone.metadata.name = Some(format!("c-{i}"));
            w.seen(&gone);
        }
        let log = w.written.lock().expect("lock");
        assert!(log.entries.is_empty() && log.entries.capacity() <= WRITTEN_SWEEP_FLOOR, "{}", log.entries.capacity());
    }

    #[tokio::test]
    async fn a_failed_patch_fails_every_change_it_carried() {
        let (w, mut handle, _feed) = writer();
        let first = {
            let w = w.clone();
            tokio::spawn(async move { w.write("ns", "cred", "grant.a.jwt", Some("A".into())).await })
        };
        let (_, _, _, send) = next(&mut handle).await;
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                            "message": "secrets \"cred\" not found", "code": 404});
        send.reply(Reply { code: 404, body: status });
        let err = first.await.expect("task").expect_err("the 404 reaches the caller");
        assert!(crate::controller::is_not_found(&err), "{err}");
    }

    #[tokio::test]
    async fn a_secret_absent_from_the_cache_is_absent_for_a_creator_unless_we_wrote_it() {
        let (w, mut handle, _feed) = writer();
        // Never written by us, not cached: absent, without asking the API (the
        // mock answers nothing, so a request would hang past the timeout).
        let got = tokio::time::timeout(Duration::from_secs(2), w.read_or_absent("ns", "cred"))
            .await
            .expect("answered from the cache, no request")
            .expect("read");
        assert!(got.is_none());
        // A plain read still asks the API server for a Secret the cache lacks.
        let reading = {
            let w = w.clone();
            tokio::spawn(async move { w.read("ns", "cred").await })
        };
        let (method, path, _, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("GET", "/api/v1/namespaces/ns/secrets/cred"));
        respond(send, &secret(4, json!({})));
        assert!(reading.await.expect("task").expect("read").is_some());
        // Once we wrote it (resourceVersion 7) and the cache has not caught
        // up, the creator's read goes to the API too.
        w.note_written(&ObjectMeta {
            namespace: Some("ns".into()),
            name: Some("cred".into()),
            resource_version: Some("7".into()),
            ..Default::default()
        });
        let reading = {
            let w = w.clone();
            tokio::spawn(async move { w.read_or_absent("ns", "cred").await })
        };
        let (method, path, _, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("GET", "/api/v1/namespaces/ns/secrets/cred"));
        respond(send, &secret(7, json!({})));
        let got = reading.await.expect("task").expect("read").expect("found");
        assert_eq!(got.resource_version().as_deref(), Some("7"));
    }

    #[tokio::test]
    async fn reads_come_from_the_cache_unless_it_has_not_seen_our_last_write() {
        let (w, mut handle, mut feed) = writer();
        let cached: CredentialSecret = serde_json::from_value(secret(3, json!({}))).expect("secret");
        feed.apply_watcher_event(&watcher::Event::Apply(cached));
        // Nothing written by us: the cache answers, no request.
        let got = w.read("ns", "cred").await.expect("read").expect("found");
        assert_eq!(got.resource_version().as_deref(), Some("3"));
        // Our write produced resourceVersion 5; the cache still has 3: read from the API.
        let writing = {
            let w = w.clone();
            tokio::spawn(async move { w.write("ns", "cred", "grant.a.jwt", Some("A".into())).await })
        };
        let (_, _, _, send) = next(&mut handle).await;
        respond(send, &secret(5, json!({"grant.a.jwt": base64_std("A")})));
        writing.await.expect("task").expect("written");
        let reading = {
            let w = w.clone();
            tokio::spawn(async move { w.read("ns", "cred").await })
        };
        let (method, path, _, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("GET", "/api/v1/namespaces/ns/secrets/cred"));
        respond(send, &secret(5, json!({"grant.a.jwt": base64_std("A")})));
        let got = reading.await.expect("task").expect("read").expect("found");
        assert_eq!(got.resource_version().as_deref(), Some("5"));
        assert!(got.token("a").is_some(), "the API's answer is read as the cache reads it");
        // Once the cache has caught up, it answers again.
        let newer: CredentialSecret =
            serde_json::from_value(secret(5, json!({"grant.a.jwt": base64_std("A")}))).expect("secret");
        feed.apply_watcher_event(&watcher::Event::Apply(newer));
        let got = w.read("ns", "cred").await.expect("read").expect("found");
        assert_eq!(got.resource_version().as_deref(), Some("5"));
    }
}

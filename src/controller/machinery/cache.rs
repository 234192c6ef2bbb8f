//! One watch and one cache per kind, shared by the webhooks and every
//! controller.
//!
//! kube's `Controller::new`/`watches`/`owns` each open a watch of their own,
//! and each `Controller` keeps its own store: with Writ's four controllers
//! that would be four watches of pods, four of grants and three of Secrets,
//! and two full copies of every pod and grant in memory. Here each kind is watched
//! once; the store is what the webhooks read and what the controllers look
//! objects up in, and every change is fanned out to the controllers.
//!
//! kube's own shared streams (`store_shared`) are not used: they do not pass
//! deletions on (a deleted pod must re-queue the grants that bound it, a
//! deleted credential Secret its pod), and they push back on the watch when a
//! subscriber is slow, which would leave the webhooks reading a stale cache.
//! Here the fan-out is a bounded broadcast that a task per subscriber drains
//! at once into that subscriber's own queue, so a busy controller neither
//! holds the watch back nor misses changes. After a re-list (whose deletions
//! the watch does not report), or should a subscriber still fall behind the
//! broadcast, it is told to re-examine everything instead (reconciles are
//! level-based, so that is always correct).

use std::{fmt::Debug, sync::Arc};

use futures::{Stream, StreamExt};
use kube::{
    api::Api,
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher, WatchStreamExt,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc};

/// Changes kept for subscribers that have not yet read them.
const FAN_OUT: usize = 4096;

/// The runtime the watches run on, once [`start_watch_thread`] started it.
static WATCH_RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();

/// Starts the thread every cache's watch runs on (a single-threaded runtime
/// of its own), before any other runtime thread exists.
///
/// What the caches keep is decoded where the watch runs. On the controllers'
/// worker threads each kept object would land between the short-lived
/// buffers of reconciles, webhook calls and token minting in the same
/// allocator arena: once a burst's buffers are freed around it, they leave
/// holes smaller than a page that the allocator cannot hand back (see
/// docs/design.md, "Memory"). glibc gives each thread an
/// arena of its own while there are fewer than its limit (`writ run` sets 3,
/// see `main.rs`), and this thread takes the second, so what is kept is
/// decoded next to little but its own watch's buffers, which the next event
/// reuses. Without this thread (unit tests, the library used elsewhere) a
/// cache's watch runs on the runtime that creates it.
pub fn start_watch_thread() -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("writ-watches".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        match runtime {
            Ok(runtime) => {
                let _ = tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(std::future::pending::<()>());
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })?;
    let handle = rx.recv().map_err(|_| std::io::Error::other("the watch thread stopped before starting"))??;
    let _ = WATCH_RUNTIME.set(handle);
    Ok(())
}

#[derive(Clone)]
enum Signal<K> {
    /// Created, updated or deleted (the last state seen).
    Changed(Arc<K>),
    /// The watch re-listed: deletions in between were not reported.
    Relisted,
}

/// A watched kind: its store and a fan-out of its changes.
pub struct Cache<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    tx: broadcast::Sender<Signal<K>>,
    /// The watch; stopped when the cache is dropped.
    watch: Option<tokio::task::AbortHandle>,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Drop for Cache<K> {
    fn drop(&mut self) {
        if let Some(watch) = &self.watch {
            watch.abort();
        }
    }
}

impl<K> Cache<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// Starts watching `api` (filtered by `config`); the cache keeps each
    /// object as `trim` leaves it, and `lists` counts the full lists (the
    /// first, then every re-list).
    pub fn spawn(
        api: Api<K>,
        config: watcher::Config,
        trim: fn(&mut K),
        lists: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let (store, mut writer) = reflector::store();
        let (tx, _) = broadcast::channel(FAN_OUT);
        let fan_out = tx.clone();
        let reader = store.clone();
        let runtime = WATCH_RUNTIME.get().cloned().unwrap_or_else(tokio::runtime::Handle::current);
        let watch = runtime.spawn(async move {
            let events = watcher(api, config).default_backoff().modify(trim);
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                writer.apply_watcher_event(&event);
                let signal = match &event {
                    // The store's own copy, not a second one.
                    watcher::Event::Apply(obj) => reader.get(&ObjectRef::from_obj(obj)).map(Signal::Changed),
                    watcher::Event::Delete(obj) => Some(Signal::Changed(Arc::new(obj.clone()))),
                    watcher::Event::InitDone => Some(Signal::Relisted),
                    watcher::Event::Init => {
                        lists.inc();
                        None
                    }
                    watcher::Event::InitApply(_) => None,
                };
                if let Some(signal) = signal {
                    // No subscriber (not leading) is not an error.
                    let _ = fan_out.send(signal);
                }
            }
        });
        Self { store, tx, watch: Some(watch.abort_handle()) }
    }

    /// The cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every change from now on (deletions included, as the last state
    /// seen). After a re-list (or if this subscriber ever fell behind the
    /// broadcast), `resync` is told instead: whoever reads it re-examines
    /// everything.
    ///
    /// A task moves changes from the broadcast into this subscriber's own
    /// queue at once: a controller busy with as many reconciles as it allows
    /// stops reading its triggers, and reading them straight from the bounded
    /// broadcast then made it fall behind in every burst (and re-examine ten
    /// thousand grants while new ones waited: p99 time to Active 17 s).
    pub fn changes(&self, resync: &Resync) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let mut rx = self.tx.subscribe();
        let resync = resync.0.clone();
        let (out, inbox) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = rx.recv() => next,
                    // The subscriber is gone (its controller stopped, e.g. on
                    // losing the Lease): stop now, not at the next change.
                    () = out.closed() => return,
                };
                let sent = match next {
                    Ok(Signal::Changed(obj)) => out.send(obj).is_ok(),
                    Ok(Signal::Relisted) | Err(broadcast::error::RecvError::Lagged(_)) => resync.send(()).is_ok(),
                    Err(broadcast::error::RecvError::Closed) => false,
                };
                if !sent {
                    return;
                }
            }
        });
        futures::stream::unfold(inbox, |mut inbox| async move { inbox.recv().await.map(|obj| (obj, inbox)) })
    }
}

/// "Re-examine everything" requests of one controller, fed by its
/// subscriptions ([`Cache::changes`]); the first one is queued at creation
/// (a controller starting on filled caches has seen no change yet).
pub struct Resync(mpsc::UnboundedSender<()>);

impl Resync {
    /// A request channel, and the stream to hand to `Controller::reconcile_all_on`.
    pub fn channel() -> (Self, impl Stream<Item = ()> + Send + 'static) {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(());
        let requests = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await?;
            // Requests queued meanwhile are answered by this one.
            while rx.try_recv().is_ok() {}
            Some(((), rx))
        });
        (Self(tx), requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn cache_with_sender(
    ) -> (Cache<k8s_openapi::api::core::v1::ConfigMap>, broadcast::Sender<Signal<k8s_openapi::api::core::v1::ConfigMap>>)
    {
        let (store, _writer) = reflector::store();
        let (tx, _) = broadcast::channel(2);
        (Cache { store, tx: tx.clone(), watch: None }, tx)
    }

    fn cm(name: &str) -> Arc<k8s_openapi::api::core::v1::ConfigMap> {
        let mut c = k8s_openapi::api::core::v1::ConfigMap::default();
        c.metadata.name = Some(name.into());
        Arc::new(c)
    }

    #[tokio::test]
    async fn changes_pass_through_and_relists_become_resync_requests() {
        let (cache, tx) = cache_with_sender();
        let (resync, requests) = Resync::channel();
        let mut requests = Box::pin(requests);
        // The start-up request.
        assert_eq!(requests.next().await, Some(()));
        let mut changes = Box::pin(cache.changes(&resync));
        assert!(tx.send(Signal::Changed(cm("a"))).is_ok(), "subscribed");
        assert_eq!(changes.next().await.and_then(|c| c.metadata.name.clone()).as_deref(), Some("a"));
        assert!(tx.send(Signal::Relisted).is_ok(), "subscribed");
        assert!(tx.send(Signal::Changed(cm("b"))).is_ok(), "subscribed");
        assert_eq!(changes.next().await.and_then(|c| c.metadata.name.clone()).as_deref(), Some("b"));
        assert_eq!(requests.next().await, Some(()), "a re-list asks for a full resync");
        assert!(requests.next().now_or_never().is_none(), "nothing else was asked");
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_to_resync() {
        let (cache, tx) = cache_with_sender();
        let (resync, requests) = Resync::channel();
        let mut requests = Box::pin(requests);
        assert_eq!(requests.next().await, Some(()));
        let mut changes = Box::pin(cache.changes(&resync));
        // Capacity 2: the first of three changes is lost.
        for name in ["a", "b", "c"] {
            assert!(tx.send(Signal::Changed(cm(name))).is_ok(), "subscribed");
        }
        assert_eq!(changes.next().await.and_then(|c| c.metadata.name.clone()).as_deref(), Some("b"));
        assert_eq!(requests.next().await, Some(()), "the lost change is covered by a resync");
        assert_eq!(changes.next().await.and_then(|c| c.metadata.name.clone()).as_deref(), Some("c"));
        drop(tx);
        drop(cache);
        assert!(changes.next().await.is_none(), "the stream ends with its cache");
    }

    #[tokio::test]
    async fn a_dropped_subscription_lets_go_of_the_broadcast_at_once() {
        let (cache, tx) = cache_with_sender();
        let (resync, _requests) = Resync::channel();
        let changes = cache.changes(&resync);
        assert_eq!(tx.receiver_count(), 1, "the forwarding task subscribed");
        drop(changes);
        for _ in 0..100 {
            if tx.receiver_count() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(tx.receiver_count(), 0, "the forwarding task ended without waiting for a change");
    }
}

//! A bounded intake of reconcile requests, in front of kube's controller.
//!
//! kube's `Controller` keeps every request it has been handed in its
//! scheduler until the request has run: an entry in a hash map, a slot in a
//! `DelayQueue` and, while the reconciles in flight are at their bound, a
//! second entry in a "pending" set, each with its own copy of the object
//! reference (name, namespace, `resourceVersion` and uid: four strings). None
//! of those tables shrinks once grown, so handing it a full pass over every
//! pod (a new leader), or every new grant of a burst, would size them to the
//! whole cluster for the life of the process, and a timed requeue per object
//! (a certificate's rotation, a grant's expiry) would keep an entry there for
//! each object's whole life: on the order of a kilobyte per object (see
//! docs/design.md, "Bounded queues and sweeps").
//!
//! An [`Intake`] lets a request into the controller only while fewer than its
//! `limit` admitted requests have not yet been reconciled; the rest wait where
//! they came from: a change in the cache's own queue (a pointer to the cached
//! object), a full pass or a sweep as the iterator it is read from. Timed work
//! is found by sweeps over the caches ([`every`]) instead of requeues kept
//! per object.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, StreamExt};
use kube::runtime::{controller, reflector::ObjectRef};
use tokio::sync::Semaphore;

/// How long a request waits for room before the intake assumes it lost
/// count of its admitted requests and starts over. Every request the
/// controller is handed reports back (reconciled, failed, or its object
/// gone), so this is a safety net, not a schedule.
const STALL: Duration = Duration::from_secs(30);

/// Requests admitted into one controller and not yet reconciled, at most
/// `limit` of them. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Intake {
    limit: usize,
    room: Arc<Semaphore>,
    /// `(namespace, name)` of each admitted request.
    admitted: Arc<Mutex<HashSet<(String, String)>>>,
}

fn key<K>(r: &ObjectRef<K>) -> (String, String)
where
    K: kube::Resource,
{
    (r.namespace.clone().unwrap_or_default(), r.name.clone())
}

impl Intake {
    /// An intake admitting at most `limit` requests at a time.
    pub fn new(limit: usize) -> Self {
        Self { limit, room: Arc::new(Semaphore::new(limit)), admitted: Arc::default() }
    }

    /// `requests`, passed on as the controller has room for them (for
    /// `Controller::reconcile_on`). Several streams may share one intake.
    pub fn feed<K, S>(&self, requests: S) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
    where
        K: kube::Resource + 'static,
        ObjectRef<K>: Send,
        S: Stream<Item = ObjectRef<K>> + Send + 'static,
    {
        let intake = self.clone();
        futures::stream::unfold((Box::pin(requests), intake), |(mut requests, intake)| async move {
            let request = requests.next().await?;
            intake.admit(key(&request)).await;
            Some((request, (requests, intake)))
        })
    }

    /// Waits for room for `key`; a request already admitted (and not yet
    /// reconciled) takes none: the controller merges the two.
    async fn admit(&self, key: (String, String)) {
        if self.lock().contains(&key) {
            return;
        }
        match tokio::time::timeout(STALL, self.room.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                if !self.lock().insert(key) {
                    // Admitted meanwhile by another stream of this intake.
                    self.room.add_permits(1);
                }
            }
            Ok(Err(_closed)) => {}
            Err(_elapsed) => {
                let mut admitted = self.lock();
                tracing::warn!(
                    admitted = admitted.len(),
                    "no reconcile reported back for {}s: the intake starts its count over",
                    STALL.as_secs()
                );
                admitted.clear();
                self.room.add_permits(self.limit.saturating_sub(self.room.available_permits()));
            }
        }
    }

    /// Counts one result of `Controller::run` in: the request it answers
    /// leaves the intake, making room for the next.
    pub fn done<K, E1, E2>(&self, result: &Result<(ObjectRef<K>, controller::Action), controller::Error<E1, E2>>)
    where
        K: kube::Resource,
        E1: std::error::Error + 'static,
        E2: std::error::Error + 'static,
    {
        let key = match result {
            Ok((r, _)) => key(r),
            Err(controller::Error::ReconcilerFailed(_, r) | controller::Error::ObjectNotFound(r)) => key(r),
            Err(_) => return,
        };
        if self.lock().remove(&key) {
            self.room.add_permits(1);
        }
    }

    /// Drives a controller's results (`Controller::run`), counting each in
    /// ([`Intake::done`]).
    pub fn drain<K, E1, E2>(
        self,
        results: impl Stream<Item = Result<(ObjectRef<K>, controller::Action), controller::Error<E1, E2>>>,
    ) -> impl std::future::Future<Output = ()>
    where
        K: kube::Resource,
        E1: std::error::Error + 'static,
        E2: std::error::Error + 'static,
    {
        results.for_each(move |result| {
            self.done(&result);
            futures::future::ready(())
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.admitted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A tick every `period`, the first after one `period`.
pub fn every(period: Duration) -> impl Stream<Item = ()> + Send + 'static {
    let start = tokio::time::Instant::now() + period;
    futures::stream::unfold(tokio::time::interval_at(start, period), |mut tick| async move {
        tick.tick().await;
        Some(((), tick))
    })
}

/// Requests a controller's intake lets into kube's scheduler, per reconcile
/// it runs at a time.
pub const INTAKE_PER_RECONCILE: usize = 4;
/// How often the caches are swept for timed work: certificates due for
/// rotation, grants past their expiry.
pub const SWEEP: Duration = Duration::from_secs(1);

/// A controller on `store` that takes every request from `requests` through
/// an [`Intake`] sized for `in_flight` reconciles at a time (drain its results
/// with [`Intake::drain`]).
pub fn through_intake<K>(
    store: kube::runtime::reflector::Store<K>,
    requests: impl futures::Stream<Item = ObjectRef<K>> + Send + 'static,
    in_flight: u16,
) -> (controller::Controller<K>, Intake)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let intake = Intake::new(INTAKE_PER_RECONCILE * usize::from(in_flight));
    let controller = controller::Controller::for_shared_stream(futures::stream::pending(), store)
        .reconcile_on(intake.feed(requests))
        .with_config(controller::Config::default().concurrency(in_flight));
    (controller, intake)
}

/// A reference to every cached object each time `passes` asks (a full pass),
/// read from the cache as the intake takes them.
pub fn every_object<K>(
    passes: impl futures::Stream<Item = ()> + Send + 'static,
    store: kube::runtime::reflector::Store<K>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    passes.flat_map(move |()| futures::stream::iter(store.state()).map(|obj| ObjectRef::from_obj(&*obj)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn r(name: &str) -> ObjectRef<ConfigMap> {
        ObjectRef::new(name).within("ns")
    }

    type Done = Result<(ObjectRef<ConfigMap>, controller::Action), controller::Error<std::io::Error, std::io::Error>>;

    fn ok(name: &str) -> Done {
        Ok((r(name), controller::Action::await_change()))
    }

    #[tokio::test]
    async fn admits_up_to_the_limit_then_one_per_reconcile_reported() {
        let intake = Intake::new(2);
        let requests = futures::stream::iter(["a", "b", "c", "d"].map(r));
        let mut fed = Box::pin(intake.feed(requests));
        assert_eq!(fed.next().await.map(|r| r.name), Some("a".into()));
        assert_eq!(fed.next().await.map(|r| r.name), Some("b".into()));
        assert!(fed.next().now_or_never().is_none(), "c waits: two admitted, none reconciled");
        // A result for something never admitted (a watch of another kind
        // triggered it some other way) makes no room.
        intake.done(&ok("z"));
        assert!(fed.next().now_or_never().is_none(), "c still waits");
        intake.done(&ok("a"));
        assert_eq!(fed.next().await.map(|r| r.name), Some("c".into()));
        // A failed reconcile reports back too, and so does a vanished object.
        let failed: Done =
            Err(controller::Error::ReconcilerFailed(std::io::Error::other("x"), Box::new(r("b").erase())));
        intake.done(&failed);
        assert_eq!(fed.next().await.map(|r| r.name), Some("d".into()));
        assert_eq!(fed.next().await, None, "the requests ran out");
        let gone: Done = Err(controller::Error::ObjectNotFound(Box::new(r("c").erase())));
        intake.done(&gone);
        assert_eq!(intake.room.available_permits(), 1, "c left: only d is admitted");
    }

    #[tokio::test]
    async fn a_request_already_admitted_takes_no_room() {
        let intake = Intake::new(1);
        let requests = futures::stream::iter(["a", "a", "b"].map(r));
        let mut fed = Box::pin(intake.feed(requests));
        assert_eq!(fed.next().await.map(|r| r.name), Some("a".into()));
        assert_eq!(fed.next().await.map(|r| r.name), Some("a".into()), "merged with the admitted one");
        assert!(fed.next().now_or_never().is_none(), "b waits for a");
        intake.done(&ok("a"));
        assert_eq!(fed.next().await.map(|r| r.name), Some("b".into()));
        // The second `a` reported back after the first made no extra room.
        intake.done(&ok("a"));
        assert_eq!(intake.room.available_permits(), 0, "b still holds the only place");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_count_is_started_over_after_the_stall_time() {
        let intake = Intake::new(1);
        let requests = futures::stream::iter(["a", "b"].map(r));
        let mut fed = Box::pin(intake.feed(requests));
        assert_eq!(fed.next().await.map(|r| r.name), Some("a".into()));
        // `a` never reports back; after STALL, `b` goes in anyway.
        let waiting = tokio::time::Instant::now();
        assert_eq!(fed.next().await.map(|r| r.name), Some("b".into()));
        assert_eq!(waiting.elapsed(), STALL, "b waited exactly the stall time");
        assert_eq!(intake.room.available_permits(), 1, "the count started over");
    }
}

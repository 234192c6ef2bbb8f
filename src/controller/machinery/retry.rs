//! Per-object retry delays for failed reconciles: the first retry comes
//! after the controller's usual delay, each further failure of the same
//! object doubles it, up to [`MAX_DELAY`]; a successful reconcile starts the
//! object over. A failure that lasts (a full revocation list, say) then
//! costs each stuck object a reconcile and a log line every five minutes at
//! most, not every second or two. A change to the object (a watch event)
//! still reconciles it at once, whatever its delay.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::{Resource, ResourceExt};

/// The longest wait between two retries of one object.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// Past this many objects with failures on record, entries whose last
/// failure is older than twice [`MAX_DELAY`] (objects since deleted, or fixed
/// by a reconcile whose success this map missed) are dropped.
const PRUNE_ABOVE: usize = 1024;

/// Failures on record per object (controller, namespace, name).
#[derive(Debug, Default)]
pub struct Retries {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

fn key<K: Resource>(controller: &str, obj: &K) -> String {
    format!("{controller}/{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

impl Retries {
    /// Records a failure of `obj` in `controller` and returns how long to
    /// wait before the next attempt: `first`, doubled per consecutive
    /// failure, at most [`MAX_DELAY`]. Also returns the failure count.
    pub fn failed<K: Resource>(&self, controller: &str, obj: &K, first: Duration) -> (Duration, u32) {
        self.failed_at(controller, obj, first, Instant::now())
    }

    fn failed_at<K: Resource>(&self, controller: &str, obj: &K, first: Duration, now: Instant) -> (Duration, u32) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() > PRUNE_ABOVE {
            failures.retain(|_, (_, last)| now.duration_since(*last) < 2 * MAX_DELAY);
        }
        let entry = failures.entry(key(controller, obj)).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        (delay(first, entry.0), entry.0)
    }

    /// Forgets the failures of `obj` in `controller` (it reconciled);
    /// returns how many objects still have failures on record if it had any.
    pub fn succeeded<K: Resource>(&self, controller: &str, obj: &K) -> Option<usize> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.is_empty() {
            return None;
        }
        failures.remove(&key(controller, obj)).map(|_| failures.len())
    }

    /// Objects with failures on record.
    pub fn len(&self) -> usize {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no object has a failure on record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The delay after the `n`th consecutive failure (n ≥ 1).
fn delay(first: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    fn obj(ns: &str, name: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(ns.into());
        cm.metadata.name = Some(name.into());
        cm
    }

    #[test]
    fn delays_double_per_failure_up_to_the_cap() {
        let r = Retries::default();
        let a = obj("ns", "a");
        let got: Vec<u64> = (0..12).map(|_| r.failed("grant", &a, Duration::from_secs(1)).0.as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // Far past any shift width: still the cap, no overflow.
        assert_eq!(delay(Duration::from_secs(2), u32::MAX), MAX_DELAY);
    }

    #[test]
    fn objects_and_controllers_count_apart_and_success_starts_over() {
        let r = Retries::default();
        let (a, b) = (obj("ns", "a"), obj("other", "a"));
        let first = Duration::from_secs(2);
        assert_eq!(r.failed("pods", &a, first), (Duration::from_secs(2), 1));
        assert_eq!(r.failed("pods", &a, first), (Duration::from_secs(4), 2));
        // Same name, another namespace; same object, another controller.
        assert_eq!(r.failed("pods", &b, first), (Duration::from_secs(2), 1));
        assert_eq!(r.failed("secrets", &a, first), (Duration::from_secs(2), 1));
        assert_eq!(r.len(), 3);
        assert_eq!(r.succeeded("pods", &a), Some(2));
        assert_eq!(r.succeeded("pods", &a), None, "nothing on record any more");
        assert_eq!(r.failed("pods", &a, first), (Duration::from_secs(2), 1), "a success starts the object over");
        r.succeeded("pods", &a);
        r.succeeded("pods", &b);
        r.succeeded("secrets", &a);
        assert!(r.is_empty());
    }

    #[test]
    fn stale_entries_are_pruned_once_many_are_on_record() {
        let r = Retries::default();
        for i in 0..=PRUNE_ABOVE {
            r.failed("grant", &obj("ns", &format!("g-{i}")), Duration::from_secs(1));
        }
        // A failure within twice the cap of the others keeps them all ...
        let soon = Instant::now() + MAX_DELAY;
        r.failed_at("grant", &obj("ns", "soon"), Duration::from_secs(1), soon);
        assert_eq!(r.len(), PRUNE_ABOVE + 2);
        // ... one twice the cap after the first ones drops those.
        let later = soon + MAX_DELAY;
        r.failed_at("grant", &obj("ns", "fresh"), Duration::from_secs(1), later);
        assert_eq!(r.len(), 2, "only the two recent failures stay");
    }
}

//! Kubernetes Events (`events.k8s.io/v1`), with a bounded series cache.
//!
//! kube's `Recorder` keeps a full copy of every Event it published for six
//! minutes (to count repeats as a series) and sweeps that whole cache on every
//! publish: a burst of grant transitions makes it one cached Event per
//! transition and a quadratic sweep. Here the cache holds only what a repeat needs
//! (the Event's name and count), for at most [`SERIES_CAPACITY`] recent keys;
//! a repeat of an evicted key is simply published as a new Event.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Mutex,
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Recent Event keys remembered for series counting.
pub const SERIES_CAPACITY: usize = 1024;
/// How long a repeat still counts as the same series (as client-go and kube).
const SERIES_WINDOW_SECS: i64 = 6 * 60;

/// One Event to publish.
pub struct Event<'a> {
    /// On what.
    pub regarding: &'a ObjectReference,
    /// Warning (else Normal).
    pub warning: bool,
    /// Machine-readable reason, e.g. `GrantActive`.
    pub reason: &'a str,
    /// What was done, e.g. `Activate`.
    pub action: &'a str,
    /// For humans.
    pub note: String,
}

struct Series {
    namespace: String,
    name: String,
    count: i32,
    last: i64,
}

/// Publishes Events as one reporting controller instance.
pub struct Events {
    client: kube::Client,
    controller: String,
    instance: String,
    series: Mutex<HashMap<u64, Series>>,
}

impl Events {
    /// Events reported by `controller` (instance `instance`).
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        Self { client, controller: controller.into(), instance: instance.into(), series: Mutex::default() }
    }

    fn key(&self, ev: &Event<'_>) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (ev.warning, ev.reason, ev.action).hash(&mut h);
        let r = ev.regarding;
        (&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid, &r.resource_version, &r.field_path).hash(&mut h);
        h.finish()
    }

    /// What to do for `ev` at `now`: create an Event named so, or bump the
    /// series of an earlier one to this count.
    fn plan(&self, ev: &Event<'_>, now: i64) -> Plan {
        let key = self.key(ev);
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = series.get_mut(&key).filter(|s| now - s.last < SERIES_WINDOW_SECS) {
            s.count += 1;
            s.last = now;
            return Plan::Repeat { namespace: s.namespace.clone(), name: s.name.clone(), count: s.count };
        }
        series.remove(&key);
        let namespace = ev.regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let name = format!(
            "{}.{:x}",
            ev.regarding.name.as_deref().unwrap_or(&self.controller),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        );
        if series.len() >= SERIES_CAPACITY {
            series.retain(|_, s| now - s.last < SERIES_WINDOW_SECS);
        }
        if series.len() < SERIES_CAPACITY {
            series.insert(key, Series { namespace: namespace.clone(), name: name.clone(), count: 1, last: now });
        }
        Plan::New { namespace, name }
    }

    /// Publishes `ev`; failures are logged, never fatal.
    pub async fn publish(&self, ev: Event<'_>) {
        let now = jiff::Timestamp::now();
        let result = match self.plan(&ev, now.as_second()) {
            Plan::New { namespace, name } => {
                let event = K8sEvent {
                    metadata: ObjectMeta { name: Some(name), namespace: Some(namespace.clone()), ..Default::default() },
                    action: Some(ev.action.into()),
                    reason: Some(ev.reason.into()),
                    note: Some(ev.note),
                    event_time: Some(MicroTime(now)),
                    regarding: Some(ev.regarding.clone()),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
                    ..Default::default()
                };
                let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
                api.create(&PostParams::default(), &event).await.map(drop)
            }
            Plan::Repeat { namespace, name, count } => {
                let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
                let patch = serde_json::json!({
                    "series": { "count": count, "lastObservedTime": MicroTime(now) }
                });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.map(drop)
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, reason = ev.reason, "publishing event failed");
        }
    }
}

#[derive(Debug, PartialEq)]
enum Plan {
    New { namespace: String, name: String },
    Repeat { namespace: String, name: String, count: i32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events over the test kit's scripted API server, which these tests
    /// never answer: they check the series cache, not the writes.
    fn events() -> Events {
        let (client, _unanswered) = crate::testing::Verifier::new();
        Events::new(client, "writ", "test")
    }

    fn on(name: &str, rv: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("CapabilityGrant".into()),
            namespace: Some("ns".into()),
            name: Some(name.into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        }
    }

    fn ev<'a>(regarding: &'a ObjectReference, reason: &'a str) -> Event<'a> {
        Event { regarding, warning: false, reason, action: "Act", note: "n".into() }
    }

    #[tokio::test]
    async fn a_repeat_within_the_window_bumps_the_series_and_a_new_key_or_a_late_repeat_makes_a_new_event() {
        let e = events();
        let (a, b) = (on("g", "1"), on("g", "2"));
        let first = e.plan(&ev(&a, "GrantActive"), 1_000);
        let Plan::New { name, namespace } = &first else { panic!("first is new: {first:?}") };
        assert_eq!(namespace, "ns");
        assert!(name.starts_with("g."), "{name}");
        assert_eq!(
            e.plan(&ev(&a, "GrantActive"), 1_010),
            Plan::Repeat { namespace: "ns".into(), name: name.clone(), count: 2 }
        );
        assert!(matches!(e.plan(&ev(&b, "GrantActive"), 1_011), Plan::New { .. }), "another version");
        assert!(matches!(e.plan(&ev(&a, "GrantExpired"), 1_012), Plan::New { .. }), "another reason");
        assert!(
            matches!(e.plan(&ev(&a, "GrantActive"), 1_010 + SERIES_WINDOW_SECS), Plan::New { .. }),
            "a repeat after the window starts a new Event"
        );
    }

    #[tokio::test]
    async fn the_series_cache_is_bounded() {
        let e = events();
        let refs: Vec<_> = (0..SERIES_CAPACITY + 10).map(|i| on(&format!("g{i}"), "1")).collect();
        for r in &refs {
            assert!(matches!(e.plan(&ev(r, "GrantActive"), 5), Plan::New { .. }));
        }
        assert_eq!(e.series.lock().expect("lock").len(), SERIES_CAPACITY);
        // Old entries expire and make room again.
        assert!(matches!(e.plan(&ev(&on("late", "1"), "GrantActive"), 5 + SERIES_WINDOW_SECS), Plan::New { .. }));
        assert_eq!(e.series.lock().expect("lock").len(), 1);
    }
}

//! A gate on watch events: only changes that dependents must see pass.

/// Lets through only the watch events of an object that change what other
/// objects depend on: its first sighting, a new `metadata.generation` (spec
/// changes; custom resources also bump it when deletion starts), the start
/// of its deletion and its removal. Status-only updates pass no further,
/// which keeps a status write on an AgentIdentity (e.g. its pod and grant
/// counts) from re-queueing every pod and grant of that agent.
#[derive(Default)]
pub struct GenerationGate(std::sync::Mutex<std::collections::HashMap<String, (i64, bool)>>);

impl GenerationGate {
    /// A gate that has already seen every object in `cache`: for a
    /// leadership term, whose controllers begin with a full pass over what
    /// the caches hold. A fresh gate passed each object's first sighting,
    /// so the first status write of each AgentIdentity in a term (its pod
    /// counts, written at once) re-queued every pod and grant of that agent:
    /// 10,000 no-op reconciles at the start of a term at scale.
    pub fn seeded<K>(cache: &kube::runtime::reflector::Store<K>) -> Self
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        Self(std::sync::Mutex::new(cache.state().iter().map(|obj| sighting(obj.meta())).collect()))
    }

    /// Whether this sighting of `obj` is a change dependents must see.
    /// An object no longer in `cache` (this is its deletion) always passes,
    /// whatever its last state says.
    pub fn changed<K>(&self, obj: &K, cache: &kube::runtime::reflector::Store<K>) -> bool
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let (key, now) = sighting(obj.meta());
        let gone = cache.get(&kube::runtime::reflector::ObjectRef::from_obj(obj)).is_none();
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if gone {
            seen.remove(&key);
            return true;
        }
        seen.insert(key, now) != Some(now)
    }
}

/// What a gate records of an object: by uid, its generation and whether its
/// deletion has started.
fn sighting(meta: &kube::api::ObjectMeta) -> (String, (i64, bool)) {
    (meta.uid.clone().unwrap_or_default(), (meta.generation.unwrap_or_default(), meta.deletion_timestamp.is_some()))
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher::Event};

    use super::GenerationGate;
    use crate::api::AgentIdentity;

    #[test]
    fn status_updates_do_not_pass_spec_changes_and_deletion_do() {
        let gate = GenerationGate::default();
        let (cache, mut feed) = reflector::store::<AgentIdentity>();
        let mut id: AgentIdentity = serde_json::from_value(serde_json::json!({
            "apiVersion": "writ.dev/v1alpha1", "kind": "AgentIdentity",
            "metadata": {"name": "a", "uid": "u1", "generation": 1},
            "spec": {"class": "Agent", "serviceAccountName": "a", "owner": "o", "ceiling": []}
        }))
        .expect("identity");
        // As the shared caches do: the store has the change before dependents see it.
        let mut seen = |id: &AgentIdentity, removed: bool| {
            feed.apply_watcher_event(&if removed { Event::Delete(id.clone()) } else { Event::Apply(id.clone()) });
            gate.changed(id, &cache)
        };
        assert!(seen(&id, false), "first sighting");
        assert!(!seen(&id, false), "same generation (a status update)");
        id.metadata.generation = Some(2);
        assert!(seen(&id, false), "spec change");
        // Removed without a deletion seen first (no finalizer): its last state
        // looks like the one before, and it still passes.
        assert!(seen(&id, true), "removed");
        assert!(seen(&id, false), "seen again after removal (re-created with the same uid in a test)");
        id.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        assert!(seen(&id, false), "deletion started");
        assert!(!seen(&id, false));
        assert!(seen(&id, true), "removed after its deletion started");
    }

    #[test]
    fn a_seeded_gate_has_seen_what_the_cache_held() {
        let (cache, mut feed) = reflector::store::<AgentIdentity>();
        let identity = |name: &str, generation: i64| -> AgentIdentity {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "writ.dev/v1alpha1", "kind": "AgentIdentity",
                "metadata": {"name": name, "uid": format!("u-{name}"), "generation": generation},
                "spec": {"class": "Agent", "serviceAccountName": name, "owner": "o", "ceiling": []}
            }))
            .expect("identity")
        };
        feed.apply_watcher_event(&Event::Apply(identity("a", 3)));
        let gate = GenerationGate::seeded(&cache);
        let mut seen = |id: AgentIdentity| {
            feed.apply_watcher_event(&Event::Apply(id.clone()));
            gate.changed(&id, &cache)
        };
        assert!(!seen(identity("a", 3)), "a status update of an object the term started with");
        assert!(seen(identity("a", 4)), "its spec changed");
        assert!(seen(identity("b", 1)), "an object the cache did not hold");
        assert!(!seen(identity("b", 1)));
    }
}

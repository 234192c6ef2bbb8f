//! What every replica keeps of a CapabilityGrant.
//!
//! A `CapabilityGrant` decoded into its Rust types is about 4.2 KB of heap
//! (counted in glibc's chunk sizes) in some forty allocations: an 864-byte
//! struct, a `BTreeMap` node of 544 bytes for the requester stamps, two
//! conditions of four strings each, and the capabilities three times (spec,
//! `status.requested`, `status.approved`). Every replica caches every grant,
//! so at scale that would be the largest part of the operator's memory.
//! [`CachedGrant`] is the same API object kept as its JSON (about 1.2 KB),
//! LZ4-compressed against a dictionary of Writ's own vocabulary for grants
//! (field names, annotation keys, phases, condition types, reasons and
//! messages: what every grant repeats), in one allocation of a few hundred
//! bytes, next to the few fields the controllers filter on when they look for
//! the grants a change concerns (agent, bound pod, parent, phase, expiry),
//! which are read for every cached grant on every such change. A reconcile,
//! which needs the whole grant, decodes it with [`CachedGrant::grant`] (a few
//! microseconds, once per reconcile). It is served by the same
//! `capabilitygrants` endpoint, so it watches and caches like a
//! `CapabilityGrant`.

use std::sync::LazyLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::Deserialize;

use crate::{
    api::{conditions::grant as conditions, names::FINALIZER},
    api::{CapabilityGrant, GrantPhase, APPROVED_BY_ANNOTATION, REQUESTED_BY_ANNOTATION, REQUESTED_GROUPS_ANNOTATION},
    state::unix,
};

/// What the compressor may refer back to: a grant as Writ writes one, with
/// its own keys and words and none of a user's values. Made once per process
/// (a cached grant never leaves it), with today's date, which every
/// timestamp of a recent grant starts with.
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let today = jiff::Timestamp::now().to_string();
    let today = &today[..today.find('T').map_or(0, |t| t + 1)];
    let template = serde_json::json!({
        "apiVersion": "writ.dev/v1alpha1", "kind": "CapabilityGrant",
        "metadata": {
            "annotations": {
                APPROVED_BY_ANNOTATION: "", REQUESTED_BY_ANNOTATION: "system:",
                REQUESTED_GROUPS_ANNOTATION: "system:masters,system:authenticated"
            },
            "finalizers": [FINALIZER]
        },
        "spec": {
            "agent": "", "task": {"id": "", "intent": ""},
            "capabilities": [{"action": "k8s:", "resource": "k8s:"}],
            "audiences": [""], "ttl": "m", "pod": "", "parent": "", "completed": false,
            "approval": {"decision": "Approved", "reason": ""}
        },
        "status": {
            "phase": "Active", "requestedBy": "system:", "approvedBy": "",
            "requested": [{"action": "k8s:", "resource": "k8s:"}],
            "approved": [{"action": "k8s:", "resource": "k8s:"}],
            "chain": [""], "issuedAt": today, "expiresAt": today, "revokedAt": today,
            "reason": "tokens issued to the bound pods",
            "tokens": [{"pod": "", "jti": "", "expiresAt": today}],
            "observedGeneration": 1,
            "conditions": [
                {"type": conditions::APPROVED, "status": "True", "reason": "NoApprovalRequired",
                 "message": "capabilities approved", "lastTransitionTime": today, "observedGeneration": 1},
                {"type": conditions::ISSUED, "status": "True", "reason": "TokensIssued",
                 "message": "1 token(s) issued", "lastTransitionTime": today, "observedGeneration": 1},
                {"type": conditions::REVOKED, "status": "True", "reason": "Revoked",
                 "message": "every token of this grant is on the revocation list",
                 "lastTransitionTime": today, "observedGeneration": 1}
            ]
        }
    });
    serde_json::to_vec(&template).unwrap_or_default()
});

/// A cached CapabilityGrant: its identity, what the controllers filter on,
/// and the rest as JSON.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "CapabilityGrant")]
pub struct CachedGrant {
    /// Name, namespace, generation, creation and deletion timestamps, and
    /// the `resourceVersion` until [`CachedGrant::trim`] (the watch reads
    /// each event's from the object). The rest of the metadata (uid,
    /// `resourceVersion`, annotations, finalizers, labels, owner
    /// references) is in the JSON: the cache's key for a grant copies its
    /// uid and `resourceVersion` when they are here, and only a reconcile,
    /// which decodes the grant, reads them.
    pub metadata: ObjectMeta,
    /// `spec.agent`.
    pub agent: String,
    /// `spec.pod`.
    pub pod: Option<String>,
    /// `spec.parent`.
    pub parent: Option<String>,
    /// `status.phase` (`Pending` without a status).
    pub phase: GrantPhase,
    /// `status.expiresAt`, unix seconds.
    pub expires_at: Option<i64>,
    /// `status.approvalDeadline`, unix seconds.
    pub approval_deadline: Option<i64>,
    /// The grant, without the metadata kept above, as JSON compressed
    /// against [`DICTIONARY`].
    compressed: Box<[u8]>,
    /// The length of that JSON.
    json_len: u32,
}

impl From<CapabilityGrant> for CachedGrant {
    fn from(mut grant: CapabilityGrant) -> Self {
        super::strip(&mut grant);
        let mut metadata = ObjectMeta::default();
        move_identity(&mut grant.metadata, &mut metadata);
        metadata.resource_version = grant.metadata.resource_version.clone();
        let status = grant.status.as_ref();
        // Encoding a value of our own types into a Vec cannot fail.
        let json = serde_json::to_vec(&grant).unwrap_or_default();
        Self {
            metadata,
            agent: grant.spec.agent.clone(),
            pod: grant.spec.pod.clone(),
            parent: grant.spec.parent.clone(),
            phase: status.map(|s| s.phase).unwrap_or_default(),
            expires_at: status.and_then(|s| s.expires_at.as_ref()).map(unix),
            approval_deadline: status.and_then(|s| s.approval_deadline.as_ref()).map(unix),
            compressed: lz4_flex::block::compress_with_dict(&json, &DICTIONARY).into_boxed_slice(),
            // A grant's JSON is a few kilobytes (the API server limits an object to 1.5 MB).
            json_len: u32::try_from(json.len()).unwrap_or(u32::MAX),
        }
    }
}

impl CachedGrant {
    /// The whole grant, as the API server sent it (less `managedFields` and
    /// `kubectl apply`'s copy of it).
    pub fn grant(&self) -> CapabilityGrant {
        let json = lz4_flex::block::decompress_with_dict(&self.compressed, self.json_len as usize, &DICTIONARY)
            .unwrap_or_else(|e| unreachable!("a cached grant is what this process compressed: {e}"));
        let mut grant: CapabilityGrant = serde_json::from_slice(&json)
            .unwrap_or_else(|e| unreachable!("a cached grant is JSON that its own type wrote: {e}"));
        move_identity(&mut self.metadata.clone(), &mut grant.metadata);
        grant
    }

    /// Drops the metadata's copy of the `resourceVersion` (the JSON keeps
    /// it), once the watch has read it: applied to every watch event before
    /// the cache stores it. Not before: the watch resumes from each event's
    /// `resourceVersion`, and re-lists everything when one has none.
    pub fn trim(&mut self) {
        self.metadata.resource_version = None;
    }

    /// Whether the grant is Active.
    pub fn is_active(&self) -> bool {
        self.phase == GrantPhase::Active
    }
}

/// Moves the metadata a [`CachedGrant`] keeps outside its JSON (name,
/// namespace, generation, creation and deletion timestamps) from `from` to
/// `to`: out of a grant when it is cached, back into it when it is decoded.
fn move_identity(from: &mut ObjectMeta, to: &mut ObjectMeta) {
    to.name = from.name.take();
    to.namespace = from.namespace.take();
    to.generation = from.generation.take();
    to.creation_timestamp = from.creation_timestamp.take();
    to.deletion_timestamp = from.deletion_timestamp.take();
    to.deletion_grace_period_seconds = from.deletion_grace_period_seconds.take();
}

impl Resource for CachedGrant {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        CapabilityGrant::kind(dt)
    }
    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        CapabilityGrant::group(dt)
    }
    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        CapabilityGrant::version(dt)
    }
    fn api_version(dt: &()) -> std::borrow::Cow<'_, str> {
        CapabilityGrant::api_version(dt)
    }
    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        CapabilityGrant::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;

    use super::*;

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "writ.dev/v1alpha1", "kind": "CapabilityGrant",
            "metadata": {
                "name": "g", "namespace": "ci", "uid": "u-1", "resourceVersion": "42", "generation": 2,
                "creationTimestamp": "2026-11-30T00:00:00Z",
                "deletionTimestamp": "2026-11-30T00:10:00Z", "deletionGracePeriodSeconds": 0,
                "annotations": {
                    "writ.dev/requested-by": "alice",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"whole\":\"object\"}"
                },
                "labels": {"team": "a"},
                "finalizers": ["writ.dev/revoke"],
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {
                "agent": "deployer", "pod": "p-1", "parent": "root",
                "task": {"id": "PR-1", "intent": "ship it"},
                "capabilities": [{"action": "k8s:deployments.patch", "resource": "k8s:staging/deployments/web"}],
                "audiences": ["deploy-api"], "ttl": "15m", "completed": false,
                "approval": {"decision": "Approved", "reason": "ok"}
            },
            "status": {
                "phase": "Active", "requestedBy": "alice",
                "requested": [{"action": "k8s:deployments.patch", "resource": "k8s:staging/deployments/web"}],
                "approved": [{"action": "k8s:deployments.patch", "resource": "k8s:staging/deployments/web"}],
                "chain": ["alice"], "issuedAt": "2026-11-30T00:00:01Z", "expiresAt": "2026-11-30T00:15:01Z",
                "reason": "tokens issued", "observedGeneration": 2,
                "tokens": [{"pod": "p-1", "jti": "j-1", "expiresAt": "2026-11-30T00:15:01Z"}],
                "conditions": [{"type": "Issued", "status": "True", "reason": "TokensIssued",
                                "message": "1 token(s) issued", "lastTransitionTime": "2026-11-30T00:00:01Z",
                                "observedGeneration": 2}]
            }
        })
    }

    #[test]
    fn gives_back_the_grant_the_watch_sent_less_what_no_one_reads() {
        let mut expected: CapabilityGrant = serde_json::from_value(sample()).expect("grant");
        let cached: CachedGrant = serde_json::from_value(sample()).expect("decodes as the watch decodes it");
        assert_eq!(cached.agent, "deployer");
        assert_eq!((cached.pod.as_deref(), cached.parent.as_deref()), (Some("p-1"), Some("root")));
        assert!(cached.is_active());
        let expiry = expected.status.as_ref().and_then(|s| s.expires_at.as_ref()).map(|t| t.0.as_second());
        assert!(expiry.is_some());
        assert_eq!(cached.expires_at, expiry);
        super::super::strip(&mut expected);
        assert!(expected.metadata.managed_fields.is_none() && expected.annotations().len() == 1);
        let json = |g: &CapabilityGrant| serde_json::to_value(g).expect("json");
        assert_eq!(json(&cached.grant()), json(&expected));
    }

    #[test]
    fn keeps_a_grant_in_a_fraction_of_its_json() {
        let cached: CachedGrant = serde_json::from_value(sample()).expect("decodes");
        assert!(
            cached.compressed.len() * 2 < cached.json_len as usize,
            "{} bytes for {} of JSON",
            cached.compressed.len(),
            cached.json_len
        );
    }

    #[test]
    fn keeps_only_the_identity_in_its_metadata() {
        let mut cached: CachedGrant = serde_json::from_value(sample()).expect("decodes");
        assert_eq!(cached.resource_version().as_deref(), Some("42"), "the watch reads it from the decoded object");
        cached.trim();
        let m = &cached.metadata;
        assert_eq!((m.name.as_deref(), m.namespace.as_deref(), m.generation), (Some("g"), Some("ci"), Some(2)));
        assert!(m.uid.is_none() && m.resource_version.is_none(), "only in the JSON (the cache's key would copy them)");
        let decoded = cached.grant();
        assert_eq!((decoded.uid().as_deref(), decoded.resource_version().as_deref()), (Some("u-1"), Some("42")));
        assert!(m.deletion_timestamp.is_some());
        assert!(m.annotations.is_none() && m.labels.is_none() && m.finalizers.is_none() && m.managed_fields.is_none());
    }

    #[test]
    fn a_grant_without_status_is_pending() {
        let mut v = sample();
        v.as_object_mut().expect("object").remove("status");
        let cached: CachedGrant = serde_json::from_value(v).expect("decodes");
        assert_eq!((cached.phase, cached.expires_at), (GrantPhase::Pending, None));
        assert!(cached.grant().status.is_none());
    }

    #[test]
    fn it_is_the_capabilitygrants_resource() {
        assert_eq!(CachedGrant::url_path(&(), Some("ci")), CapabilityGrant::url_path(&(), Some("ci")));
        assert_eq!(CachedGrant::api_version(&()), CapabilityGrant::api_version(&()));
        assert_eq!(CachedGrant::kind(&()), CapabilityGrant::kind(&()));
    }
}

//! Handlers that connect admission requests to the pure policy engine.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::Api,
    core::admission::{AdmissionRequest, Operation},
    ResourceExt,
};

use super::{diff_patch, pods, Decision};
use crate::{
    api::{
        AgentIdentity, CapabilityGrant, DelegationPolicy, ADMISSION_SEAL_ANNOTATION, APPROVAL_SEAL_ANNOTATION,
        APPROVED_BY_ANNOTATION, REQUESTED_BY_ANNOTATION, REQUESTED_GROUPS_ANNOTATION,
    },
    pki::seal::SealKeys,
    policy::{self, GrantContext, Requester},
    state::Shared,
};

/// How far up a delegation chain the webhook looks (well past any maxDepth).
const MAX_ANCESTORS: usize = 16;

fn username<T>(req: &AdmissionRequest<T>) -> String
where
    T: kube::Resource,
{
    req.user_info.username.clone().unwrap_or_default()
}

fn groups<T>(req: &AdmissionRequest<T>) -> Vec<String>
where
    T: kube::Resource,
{
    req.user_info.groups.clone().unwrap_or_default()
}

/// A fresh, random credential Secret name: unguessable, so a pod cannot be
/// created in advance to claim another pod's Secret.
pub fn credential_secret_name() -> String {
    let mut bytes = [0u8; 8];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut bytes);
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("writ-cred-{suffix}")
}

/// The AgentIdentity a request names, read from the API server when the
/// cache does not have it yet (an identity applied together with its pods or
/// grants may not have reached the watch). `None` when it does not exist or
/// cannot be read; the caller then refuses, as with any unknown identity.
pub async fn identity_fallback(shared: &Shared, namespace: &str, name: Option<&str>) -> Option<Arc<AgentIdentity>> {
    let name = name?;
    // A suspension refuses the request: confirm it on the API server, so a
    // watch that has not yet seen `writ resume` does not refuse for it.
    if shared.identity(namespace, name).is_some_and(|i| i.spec.suspended) {
        let api: Api<AgentIdentity> = Api::namespaced(shared.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(fresh) => return fresh.map(Arc::new),
            Err(e) => tracing::warn!(error = %e, namespace, name, "re-reading a suspended AgentIdentity"),
        }
    }
    shared.identity_or_api(namespace, name).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, namespace, name, "reading an AgentIdentity missing from the cache");
        None
    })
}

/// Pod CREATE: check the claim and inject the credential volume. `identity`
/// is the claimed AgentIdentity as [`identity_fallback`] found it. Pod
/// UPDATE: `writ.dev/*` labels and annotations stay as admitted
/// ([`pods::check_update`]).
pub fn mutate_pod(shared: &Shared, req: &AdmissionRequest<Pod>, identity: Option<Arc<AgentIdentity>>) -> Decision {
    if req.operation == Operation::Update {
        return pods::check_update(req);
    }
    if req.operation != Operation::Create {
        return Decision::Allow;
    }
    let Some(pod) = req.object.as_ref() else { return Decision::Allow };
    let Some(agent) = pods::claimed_agent(pod) else { return Decision::Allow };
    if !shared.is_synced() {
        return Decision::deny("not-ready", "writ is starting and cannot check this claim yet; retry shortly");
    }
    let namespace = req.namespace.clone().or_else(|| pod.namespace()).unwrap_or_default();
    if identity.as_ref().is_some_and(|i| i.spec.suspended) {
        return Decision::deny(
            policy::Rule::AgentSuspended.id(),
            format!(
                "metadata.labels[\"{}\"]: agent {agent} is suspended; no pod may claim it until it is resumed [{}]",
                crate::api::AGENT_LABEL,
                policy::Rule::AgentSuspended.id()
            ),
        );
    }
    let spiffe = crate::pki::cert::spiffe_id(&shared.config.trust_domain, &namespace, agent);
    match pods::inject(pod, &namespace, identity.as_deref(), &spiffe, &credential_secret_name()) {
        Ok(mutated) => match diff_patch(pod, &mutated) {
            Ok(patch) => Decision::Patch(patch),
            Err(e) => Decision::deny("internal", format!("writ could not build its patch: {e}")),
        },
        Err(e) => Decision::deny("claim-rejected", e.to_string()),
    }
}

/// Grant CREATE/UPDATE: stamp `writ.dev/requested-by` (create) and
/// `writ.dev/approved-by` (the approval update) from the authenticated user,
/// overwriting whatever the client wrote, and seal what was stamped
/// ([`policy::seal`]): the controller activates nothing whose seals do not
/// verify. A created grant also gets the controller's finalizer here, so the
/// controller does not spend an API write (and a second reconcile) per grant
/// adding it; the controller still adds it to any grant that lacks it.
///
/// Stamping is idempotent, so a reinvocation after another mutating webhook
/// changed the object re-seals the spec as it now is.
pub fn stamp(keys: &SealKeys, now: i64, req: &AdmissionRequest<CapabilityGrant>) -> Decision {
    let Some(grant) = req.object.as_ref() else { return Decision::Allow };
    let mut stamped = grant.clone();
    let annotations = stamped.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match req.operation {
        Operation::Create => {
            annotations.insert(REQUESTED_BY_ANNOTATION.into(), username(req));
            annotations.insert(REQUESTED_GROUPS_ANNOTATION.into(), groups(req).join(","));
            annotations.remove(APPROVED_BY_ANNOTATION);
            annotations.remove(APPROVAL_SEAL_ANNOTATION);
            let finalizers = stamped.metadata.finalizers.get_or_insert_with(Vec::new);
            if !finalizers.iter().any(|f| f == crate::api::names::FINALIZER) {
                finalizers.push(crate::api::names::FINALIZER.into());
            }
            if stamped.metadata.namespace.is_none() {
                stamped.metadata.namespace.clone_from(&req.namespace);
            }
            let seal = policy::seal::seal_admission(keys, &stamped, now);
            stamped.annotations_mut().insert(ADMISSION_SEAL_ANNOTATION.into(), seal);
            stamped.metadata.namespace.clone_from(&grant.metadata.namespace);
        }
        Operation::Update => {
            let old = req.old_object.as_ref();
            let old_ann = old.and_then(|o| o.metadata.annotations.clone()).unwrap_or_default();
            for key in [
                REQUESTED_BY_ANNOTATION,
                REQUESTED_GROUPS_ANNOTATION,
                APPROVED_BY_ANNOTATION,
                ADMISSION_SEAL_ANNOTATION,
                APPROVAL_SEAL_ANNOTATION,
            ] {
                match old_ann.get(key) {
                    Some(v) => annotations.insert(key.into(), v.clone()),
                    None => annotations.remove(key),
                };
            }
            let approving = old.is_some_and(|o| o.spec.approval.is_none()) && grant.spec.approval.is_some();
            if approving {
                annotations.insert(APPROVED_BY_ANNOTATION.into(), username(req));
                if stamped.metadata.namespace.is_none() {
                    stamped.metadata.namespace.clone_from(&req.namespace);
                }
                let seal = policy::seal::seal_approval(keys, &stamped, now);
                stamped.annotations_mut().insert(APPROVAL_SEAL_ANNOTATION.into(), seal);
                stamped.metadata.namespace.clone_from(&grant.metadata.namespace);
            }
        }
        _ => return Decision::Allow,
    }
    if stamped.metadata == grant.metadata {
        return Decision::Allow;
    }
    match diff_patch(grant, &stamped) {
        Ok(patch) => Decision::Patch(patch),
        Err(e) => Decision::deny("internal", format!("writ could not build its patch: {e}")),
    }
}

/// AgentIdentity CREATE/UPDATE: when `spec.suspended` turns true, stamp who
/// suspended it and when (`writ.dev/suspended-by`, `-at`) from the
/// authenticated request; while it stays suspended the stamps are kept as
/// they were; when it is resumed they and the reason go.
///
/// Access reviews are stamped here too: `writ review` sets
/// `writ.dev/review-requested`, and an update carrying it records the
/// authenticated user and the time as `writ.dev/reviewed-by`/`-at`, sealed
/// (`writ.dev/review-seal`), unless the user is the identity's own agent
/// (`self-review`) or outside `--review-group` when one is set
/// (`not-a-reviewer`). Any other update keeps the review stamps as they were.
pub fn stamp_identity(
    keys: &SealKeys,
    review_group: Option<&str>,
    now: jiff::Timestamp,
    req: &AdmissionRequest<AgentIdentity>,
) -> Decision {
    use crate::api::{
        REVIEWED_AT_ANNOTATION, REVIEWED_BY_ANNOTATION, REVIEW_NOTE_ANNOTATION, REVIEW_REQUEST_ANNOTATION,
        REVIEW_SEAL_ANNOTATION, SUSPENDED_AT_ANNOTATION, SUSPENDED_BY_ANNOTATION, SUSPEND_REASON_ANNOTATION,
    };
    let Some(identity) = req.object.as_ref() else { return Decision::Allow };
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Decision::Allow;
    }
    let mut stamped = identity.clone();
    let annotations = stamped.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let old = req.old_object.as_ref().filter(|_| req.operation == Operation::Update);
    let old_ann = old.and_then(|o| o.metadata.annotations.clone()).unwrap_or_default();
    let review_keys = [REVIEWED_BY_ANNOTATION, REVIEWED_AT_ANNOTATION, REVIEW_NOTE_ANNOTATION, REVIEW_SEAL_ANNOTATION];
    let reviewing = annotations.remove(REVIEW_REQUEST_ANNOTATION).is_some() && old.is_some();
    if reviewing {
        let reviewer = username(req);
        let namespace = req.namespace.clone().unwrap_or_default();
        let agent = format!("{}{namespace}:{}", policy::SERVICE_ACCOUNT_PREFIX, identity.spec.service_account_name);
        if reviewer == agent {
            return Decision::deny(
                policy::Rule::SelfReview.id(),
                format!("{reviewer} runs as this agent and cannot review its own access [self-review]"),
            );
        }
        if let Some(group) = review_group.filter(|g| !groups(req).iter().any(|mine| mine == g)) {
            return Decision::deny(
                policy::Rule::NotAReviewer.id(),
                format!(
                    "access reviews are recorded by members of group {group}; {reviewer} is not one [not-a-reviewer]"
                ),
            );
        }
        annotations.insert(REVIEWED_BY_ANNOTATION.into(), reviewer);
        annotations.insert(REVIEWED_AT_ANNOTATION.into(), now.to_string());
        annotations.remove(REVIEW_SEAL_ANNOTATION);
        if stamped.metadata.namespace.is_none() {
            stamped.metadata.namespace.clone_from(&req.namespace);
        }
        let seal = policy::seal::seal_review(keys, &stamped, now.as_second());
        stamped.annotations_mut().insert(REVIEW_SEAL_ANNOTATION.into(), seal);
        stamped.metadata.namespace.clone_from(&identity.metadata.namespace);
    } else {
        for key in review_keys {
            match old_ann.get(key) {
                Some(v) => annotations.insert(key.into(), v.clone()),
                None => annotations.remove(key),
            };
        }
    }
    let annotations = stamped.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let was = old.is_some_and(|o| o.spec.suspended);
    match (was, identity.spec.suspended) {
        (false, true) => {
            annotations.insert(SUSPENDED_BY_ANNOTATION.into(), username(req));
            annotations.insert(SUSPENDED_AT_ANNOTATION.into(), now.to_string());
        }
        (true, true) => {
            for key in [SUSPENDED_BY_ANNOTATION, SUSPENDED_AT_ANNOTATION] {
                match old_ann.get(key) {
                    Some(v) => annotations.insert(key.into(), v.clone()),
                    None => annotations.remove(key),
                };
            }
        }
        (_, false) => {
            for key in [SUSPENDED_BY_ANNOTATION, SUSPENDED_AT_ANNOTATION, SUSPEND_REASON_ANNOTATION] {
                annotations.remove(key);
            }
        }
    }
    if stamped.metadata.annotations.as_ref().is_some_and(BTreeMap::is_empty) && identity.metadata.annotations.is_none()
    {
        stamped.metadata.annotations = None;
    }
    if stamped.metadata == identity.metadata {
        return Decision::Allow;
    }
    match diff_patch(identity, &stamped) {
        Ok(patch) => Decision::Patch(patch),
        Err(e) => Decision::deny("internal", format!("writ could not build its patch: {e}")),
    }
}

/// Reads the delegation chain above a grant from the API server: parent
/// first. Stops at a missing grant, a repeated name (cycle; the engine
/// reports it) or `MAX_ANCESTORS`.
pub async fn ancestors(
    shared: &Shared,
    req: &AdmissionRequest<CapabilityGrant>,
) -> Result<Vec<CapabilityGrant>, kube::Error> {
    let Some(grant) = req.object.as_ref() else { return Ok(vec![]) };
    if req.operation != Operation::Create {
        return Ok(vec![]);
    }
    let namespace = req.namespace.clone().unwrap_or_default();
    let api: Api<CapabilityGrant> = Api::namespaced(shared.client.clone(), &namespace);
    let mut chain: Vec<CapabilityGrant> = Vec::new();
    let mut next = grant.spec.parent.clone();
    while let Some(name) = next {
        if chain.len() >= MAX_ANCESTORS || chain.iter().any(|g| g.name_any() == name) || name == req.name {
            break;
        }
        match api.get_opt(&name).await? {
            Some(parent) => {
                next = parent.spec.parent.clone();
                chain.push(parent);
            }
            None => break,
        }
    }
    Ok(chain)
}

/// The AgentIdentities that may be the requesting agent: those of the
/// request's namespace running as the requester's service account. Only a
/// service account of that namespace can be an agent, so anyone else gets
/// none. The cache is asked first; when it has no match (an identity applied
/// just before its agent asks for a sub-grant may not have reached the watch
/// yet) the namespace's identities are listed from the API server, so a
/// lagging watch does not make the requester look like a stranger. An
/// unreadable list leaves the requester without an agent: agent principals
/// and parent grants then do not match (fail closed).
pub async fn requester_identities(shared: &Shared, req: &AdmissionRequest<CapabilityGrant>) -> Vec<AgentIdentity> {
    let namespace = req.namespace.clone().unwrap_or_default();
    let requester = Requester::user(username(req), Vec::<String>::new());
    let Some(sa) = requester.service_account().and_then(|(ns, sa)| (ns == namespace).then_some(sa)) else {
        return Vec::new();
    };
    let cached = shared.identities_running_as(&namespace, sa);
    if !cached.is_empty() {
        return cached;
    }
    let api: Api<AgentIdentity> = Api::namespaced(shared.client.clone(), &namespace);
    match api.list(&Default::default()).await {
        Ok(list) => list.items.into_iter().filter(|i| i.spec.service_account_name == sa).collect(),
        Err(e) => {
            tracing::warn!(error = %e, namespace, "listing AgentIdentities for a service-account requester");
            Vec::new()
        }
    }
}

/// The DelegationPolicies of a namespace: from the cache, or, when it has
/// none there, listed from the API server (a policy applied together with
/// its grants, or just before them, may not have reached the watch; "no
/// policy" would deny every grant of the namespace). An error when the list
/// cannot be read: the caller then refuses.
pub async fn namespace_policies(shared: &Shared, namespace: &str) -> Result<Vec<DelegationPolicy>, kube::Error> {
    let cached = shared.policies_in(namespace);
    if !cached.is_empty() {
        return Ok(cached);
    }
    let api: Api<DelegationPolicy> = Api::namespaced(shared.client.clone(), namespace);
    let mut listed = api.list(&Default::default()).await?.items;
    listed.retain(|p| p.metadata.deletion_timestamp.is_none());
    Ok(listed)
}

/// The pod a created grant names in `spec.pod`, as (its `writ.dev/agent`
/// label, its service account): from the cache, else from the API server (a
/// pod created just before its grant may not have reached the watch). `None`
/// when there is no such pod or it cannot be read (the grant is refused).
pub async fn bound_pod(shared: &Shared, req: &AdmissionRequest<CapabilityGrant>) -> Option<(Option<String>, String)> {
    let grant = req.object.as_ref()?;
    let name = grant.spec.pod.as_deref().filter(|_| req.operation == Operation::Create)?;
    let ns = req.namespace.clone().unwrap_or_default();
    if let Some(p) = shared.pods.get(&kube::runtime::reflector::ObjectRef::new(name).within(&ns)) {
        return Some((p.agent().map(str::to_owned), p.service_account().to_owned()));
    }
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    let pod = api.get_opt(name).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, namespace = %ns, name, "reading the pod a grant binds");
        None
    })?;
    let agent = pod.labels().get(crate::api::AGENT_LABEL).cloned();
    let sa = crate::state::effective_service_account(
        pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()),
        pod.spec.as_ref().and_then(|s| s.service_account.as_deref()),
    );
    Some((agent, sa.to_owned()))
}

/// Grant CREATE/UPDATE validation. Fails closed: unsynced caches, an
/// unreadable chain or unreadable policies deny.
pub fn validate_grant(
    shared: &Shared,
    req: &AdmissionRequest<CapabilityGrant>,
    ancestors: Result<Vec<CapabilityGrant>, kube::Error>,
    agent: Option<Arc<AgentIdentity>>,
    requester_identities: &[AgentIdentity],
    policies: Result<Vec<DelegationPolicy>, kube::Error>,
    bound_pod: Option<(Option<String>, String)>,
) -> Decision {
    let Some(grant) = req.object.as_ref() else { return Decision::Allow };
    if req.sub_resource.as_deref() == Some("status") {
        return validate_status(shared, grant);
    }
    if !shared.is_synced() {
        return Decision::deny("not-ready", "writ is starting and cannot check grants yet; retry shortly");
    }
    let namespace = req.namespace.clone().unwrap_or_default();
    let policies = match policies {
        Ok(p) => p,
        Err(e) => {
            return Decision::deny(
                "internal",
                format!("writ could not read the DelegationPolicies of {namespace}: {e}"),
            )
        }
    };
    let requester = Requester::from_user_info(username(req), groups(req), requester_identities, &namespace);
    match req.operation {
        Operation::Create => {
            let ancestors = match ancestors {
                Ok(a) => a,
                Err(e) => {
                    return Decision::deny("internal", format!("writ could not read the parent grant chain: {e}"))
                }
            };
            let agent = agent.as_deref();
            let limits = shared.config.limits();
            let ctx = GrantContext {
                namespace: &namespace,
                requester: &requester,
                agent,
                policies: &policies,
                ancestors: &ancestors,
                now: jiff::Timestamp::now(),
                limits: &limits,
            };
            let pod = bound_pod
                .as_ref()
                .map(|(agent, sa)| policy::PodFacts { agent: agent.as_deref(), service_account: Some(sa.as_str()) });
            let mut violations = policy::admit_grant(grant, &ctx).err().unwrap_or_default();
            violations.extend(policy::check_bound_pod(grant, pod, agent));
            if violations.is_empty() {
                Decision::Allow
            } else {
                Decision::violations(&violations)
            }
        }
        Operation::Update => {
            let Some(old) = req.old_object.as_ref() else { return Decision::Allow };
            // The whole namespace's identities: they resolve the agent behind
            // the grant's stamped requester, whoever makes this update. What
            // the old status records (the authorising policy, the approval
            // deadline) counts only when Writ sealed it.
            let identities = shared.identities_in(&namespace);
            let limits = shared.config.limits();
            let now = jiff::Timestamp::now();
            let keys = shared.trust.seal_keys();
            let mut old = old.clone();
            if old
                .status
                .as_ref()
                .is_some_and(|st| policy::seal::verify_status(&keys, &old, st, now.as_second()).is_err())
            {
                old.status = None;
            }
            let ctx = policy::UpdateContext {
                requester: &requester,
                identities: &identities,
                policies: &policies,
                now,
                limits: &limits,
            };
            // The approval's audit line is the controller's, written from
            // what the API server stored: an admission request alone may
            // never have been the API server's.
            match policy::admit_grant_update(&old, grant, &ctx) {
                Ok(_) => Decision::Allow,
                Err(v) => Decision::violations(&v),
            }
        }
        _ => Decision::Allow,
    }
}

/// A grant status write is admitted only when Writ sealed the status written
/// (the controller seals every status it writes): whoever else may write
/// `capabilitygrants/status` is refused. A replayed older sealed status of the
/// same grant passes here and is caught by the controller's ended marker.
fn validate_status(shared: &Shared, grant: &CapabilityGrant) -> Decision {
    let Some(status) = grant.status.as_ref() else { return Decision::Allow };
    match policy::seal::verify_status(&shared.trust.seal_keys(), grant, status, crate::pki::now_unix()) {
        Ok(()) => Decision::Allow,
        Err(e) => Decision::deny(
            policy::Rule::ForeignStatus.id(),
            format!(
                "status: a grant's status is written by the Writ operator alone ({e}) [{}]",
                policy::Rule::ForeignStatus.id()
            ),
        ),
    }
}

/// AgentIdentity well-formedness.
pub fn validate_identity(shared: &Shared, req: &AdmissionRequest<AgentIdentity>) -> Decision {
    let Some(id) = req.object.as_ref() else { return Decision::Allow };
    let v = policy::validate_identity(id, &shared.config.limits());
    if v.is_empty() {
        Decision::Allow
    } else {
        Decision::violations(&v)
    }
}

/// DelegationPolicy well-formedness.
pub fn validate_policy(shared: &Shared, req: &AdmissionRequest<DelegationPolicy>) -> Decision {
    let Some(p) = req.object.as_ref() else { return Decision::Allow };
    let v = policy::validate_policy(p, &shared.config.limits());
    if v.is_empty() {
        Decision::Allow
    } else {
        Decision::violations(&v)
    }
}

#[cfg(test)]
mod tests {
    use kube::core::admission::{AdmissionRequest, AdmissionReview};
    use serde_json::json;

    use super::{stamp, CapabilityGrant, Decision, REQUESTED_BY_ANNOTATION};

    fn request(
        operation: &str,
        object: serde_json::Value,
        old: Option<serde_json::Value>,
    ) -> AdmissionRequest<CapabilityGrant> {
        let review: AdmissionReview<CapabilityGrant> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "operation": operation, "name": "g", "namespace": "ns",
                "kind": {"group": "writ.dev", "version": "v1alpha1", "kind": "CapabilityGrant"},
                "resource": {"group": "writ.dev", "version": "v1alpha1", "resource": "capabilitygrants"},
                "userInfo": {"username": "alice", "groups": ["release-managers"]},
                "object": object, "oldObject": old, "dryRun": false
            }
        }))
        .expect("review");
        review.try_into().expect("request")
    }

    fn grant(finalizers: &[&str], annotations: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "writ.dev/v1alpha1", "kind": "CapabilityGrant",
            "metadata": {"name": "g", "namespace": "ns", "finalizers": finalizers, "annotations": annotations},
            "spec": {"agent": "bot", "task": {"id": "T"}, "capabilities": [{"action": "a", "resource": "r"}], "audiences": ["api"], "ttl": "5m"}
        })
    }

    fn keys() -> crate::pki::seal::SealKeys {
        crate::pki::seal::SealKeys::generate().expect("keys")
    }

    fn patched(d: Decision, original: serde_json::Value) -> serde_json::Value {
        let Decision::Patch(patch) = d else { panic!("expected a patch, got {d:?}") };
        let mut doc = original;
        json_patch::patch(&mut doc, &patch).expect("patch applies");
        doc
    }

    #[test]
    fn a_created_grant_gets_the_finalizer_and_the_requester_stamp() {
        let original = grant(&[], json!({REQUESTED_BY_ANNOTATION: "bob"}));
        let out = patched(stamp(&keys(), 1_000, &request("CREATE", original.clone(), None)), original);
        assert_eq!(out["metadata"]["finalizers"], json!([crate::api::names::FINALIZER]));
        assert_eq!(out["metadata"]["annotations"][REQUESTED_BY_ANNOTATION], "alice");
        assert_eq!(out["metadata"]["annotations"]["writ.dev/requested-by-groups"], "release-managers");
    }

    #[test]
    fn the_finalizer_is_not_added_twice_nor_on_update() {
        let with = grant(&["other/f", crate::api::names::FINALIZER], json!({}));
        let out = patched(stamp(&keys(), 1_000, &request("CREATE", with.clone(), None)), with);
        assert_eq!(out["metadata"]["finalizers"], json!(["other/f", crate::api::names::FINALIZER]));
        // An update that removes it (the controller, after revoking) keeps it removed.
        let old = grant(&[crate::api::names::FINALIZER], json!({REQUESTED_BY_ANNOTATION: "alice"}));
        let new = grant(&[], json!({REQUESTED_BY_ANNOTATION: "alice"}));
        let d = stamp(&keys(), 1_000, &request("UPDATE", new, Some(old)));
        assert!(matches!(d, Decision::Allow), "{d:?}");
    }
}

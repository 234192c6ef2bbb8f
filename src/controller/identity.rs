//! AgentIdentity: status (SPIFFE ID, bound pods, active grants, review and
//! dormancy), the trust bundle ConfigMap in its namespace, and a finalizer
//! that revokes every credential of the identity before it goes.

use std::{sync::Arc, time::Duration};

use futures::{future, StreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{
        controller::{self, Action, Controller},
        finalizer::{finalizer, Event as Finalizer},
        reflector::ObjectRef,
    },
    Resource, ResourceExt,
};
use tracing::Instrument as _;

use super::machinery::cache::Resync;
use super::{credentials, time, unix, Caches, Context, Error, FINALIZER, MANAGER, RECONCILES_IN_FLIGHT};
use crate::api::conditions::identity::{self as conditions, reason};
use crate::api::names::{REVIEWED_AT_ANNOTATION, REVIEWED_BY_ANNOTATION, TRUST_BUNDLE_CONFIGMAP};
use crate::{
    api::{
        conditions::{condition, set_condition},
        AgentIdentity, AgentIdentityStatus,
    },
    pki,
    state::CredentialSecret,
};

fn object(id: &AgentIdentity) -> String {
    format!("AgentIdentity {}/{}", id.namespace().unwrap_or_default(), id.name_any())
}

/// Computes the status from the identity and what the caches hold. Pure.
/// `id` with its review stamps only when their seal verifies (otherwise
/// without them, so the review clock runs from creation).
pub fn reviews_verified(id: &AgentIdentity, keys: &crate::pki::seal::SealKeys, now: i64) -> AgentIdentity {
    let mut checked = id.clone();
    if crate::policy::seal::verify_review(keys, id, now).is_err() {
        if let Some(a) = checked.metadata.annotations.as_mut() {
            for key in [REVIEWED_AT_ANNOTATION, REVIEWED_BY_ANNOTATION, crate::api::REVIEW_NOTE_ANNOTATION] {
                a.remove(key);
            }
        }
    }
    checked
}

pub fn desired_status(
    id: &AgentIdentity,
    spiffe_id: String,
    bound_pods: i32,
    active_grants: i32,
    now: i64,
) -> (AgentIdentityStatus, Option<i64>) {
    let old = id.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let generation = id.metadata.generation;
    let now_t = time(now);
    st.spiffe_id = Some(spiffe_id);
    st.bound_pods = bound_pods;
    st.active_grants = active_grants;
    st.observed_generation = generation;
    if bound_pods > 0 || active_grants > 0 {
        st.last_active_at = Some(now_t.clone());
    }
    let created = id.metadata.creation_timestamp.as_ref().map(unix).unwrap_or(now);
    let mut next_check: Option<i64> = None;
    set_condition(
        &mut st.conditions,
        condition(
            conditions::READY,
            true,
            reason::CREDENTIALS_AVAILABLE,
            "pods running as the identity's service account receive credentials",
            generation,
            now_t.clone(),
        ),
    );
    if let Some(review) = &id.spec.review {
        let reviewed_at = id
            .annotations()
            .get(REVIEWED_AT_ANNOTATION)
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second())
            .unwrap_or(created);
        let due = reviewed_at + review.every.as_secs_i64();
        st.review_due_at = Some(time(due));
        st.last_reviewed_by = id.annotations().get(REVIEWED_BY_ANNOTATION).cloned();
        let overdue = now >= due;
        set_condition(
            &mut st.conditions,
            condition(
                conditions::REVIEW_OVERDUE,
                overdue,
                if overdue { reason::REVIEW_OVERDUE } else { reason::REVIEW_CURRENT },
                format!("access review due at {}", time(due).0),
                generation,
                now_t.clone(),
            ),
        );
        if !overdue {
            next_check = Some(due);
        }
        if let Some(after) = review.dormant_after {
            let last = st.last_active_at.as_ref().map(unix).unwrap_or(created);
            let dormant_at = last + after.as_secs_i64();
            let dormant = bound_pods == 0 && active_grants == 0 && now >= dormant_at;
            set_condition(
                &mut st.conditions,
                condition(
                    conditions::DORMANT,
                    dormant,
                    if dormant { reason::NO_ACTIVITY } else { reason::ACTIVE },
                    format!("no pod and no active grant since {}", time(last).0),
                    generation,
                    now_t,
                ),
            );
            if !dormant {
                next_check = Some(next_check.map_or(dormant_at, |n| n.min(dormant_at)));
            }
        }
    }
    // Keep the old timestamp when nothing but timestamps moved.
    if strip_times(&st) == strip_times(&old) {
        st.last_active_at = old.last_active_at.clone();
    }
    (st, next_check)
}

fn strip_times(s: &AgentIdentityStatus) -> AgentIdentityStatus {
    let mut s = s.clone();
    s.last_active_at = None;
    s
}

/// Reconciles an AgentIdentity (with its finalizer).
pub async fn reconcile(id: Arc<AgentIdentity>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let api: Api<AgentIdentity> = Api::namespaced(ctx.shared.client.clone(), &id.namespace().unwrap_or_default());
    let result = super::finalized(
        finalizer(&api, FINALIZER, id.clone(), |event| async {
            match event {
                Finalizer::Apply(id) => apply(&id, &ctx).await,
                Finalizer::Cleanup(id) => cleanup(&id, &ctx).await,
            }
        })
        .await,
    )
    .map_err(|e| Error::Finalizer { object: object(&id), message: e.to_string() });
    ctx.shared.metrics.reconciled("identity", started);
    result
}

async fn apply(id: &AgentIdentity, ctx: &Context) -> Result<Action, Error> {
    let shared = &ctx.shared;
    let namespace = id.namespace().unwrap_or_default();
    let name = id.name_any();
    let now = pki::now_unix();
    publish_trust_bundle(ctx, &namespace).await?;
    let bound = shared
        .pods
        .state()
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(&namespace)
                && p.agent() == Some(name.as_str())
                && p.credential_secret().is_some()
                && !p.finished()
        })
        .count();
    let active = shared
        .grants
        .state()
        .iter()
        .filter(|g| g.namespace().as_deref() == Some(&namespace) && g.agent == name && g.is_active())
        .count();
    let spiffe = pki::cert::spiffe_id(&shared.config.trust_domain, &namespace, &name);
    // A review counts only when Writ's webhook stamped and sealed it: an
    // annotation written past admission leaves the review clock where it was.
    let mut keys = shared.trust.seal_keys();
    let has_review = id.annotations().contains_key(crate::api::REVIEW_SEAL_ANNOTATION);
    if has_review && crate::policy::seal::verify_review(&keys, id, now).is_err() {
        keys = ctx.reload_seal_keys().await;
    }
    let reviewed = reviews_verified(id, &keys, now);
    let (status, next) = desired_status(&reviewed, spiffe, bound as i32, active as i32, now);
    if id.status.as_ref() != Some(&status) {
        let api: Api<AgentIdentity> = Api::namespaced(shared.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": "writ.dev/v1alpha1", "kind": "AgentIdentity", "status": status
        });
        api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(patch))
            .await
            .map_err(|source| Error::Kube { op: "writing status of", object: object(id), source })?;
    }
    let wait = next.map(|n| (n - now).clamp(1, 300)).unwrap_or(300);
    Ok(Action::requeue(Duration::from_secs(wait as u64)))
}

/// Deleting an identity revokes every credential its pods hold.
async fn cleanup(id: &AgentIdentity, ctx: &Context) -> Result<Action, Error> {
    let shared = &ctx.shared;
    let namespace = id.namespace().unwrap_or_default();
    let secrets: Api<CredentialSecret> = Api::namespaced(shared.client.clone(), &namespace);
    let pods: Vec<_> = shared
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(&namespace) && p.agent() == Some(id.name_any().as_str()))
        .collect();
    for pod in pods {
        let Some(secret_name) = pod.credential_secret() else { continue };
        if let Some(secret) = secrets.get_opt(secret_name).await.map_err(|source| Error::Kube {
            op: "reading credential Secret for",
            object: object(id),
            source,
        })? {
            // Only the Secret Writ created for this pod: the annotation may
            // name any Secret of the namespace.
            if secret.belongs_to(&pod.name_any(), &pod.uid().unwrap_or_default()) {
                credentials::revoke_secret(ctx, &pod, &secret, "AgentIdentity deleted").await?;
            }
        }
    }
    ctx.event(
        &id.object_ref(&()),
        false,
        "CredentialRevoked",
        "Revoke",
        "identity deleted: every pod credential revoked".into(),
    )
    .await;
    Ok(Action::await_change())
}

/// How long a published trust bundle is trusted to still be there before it
/// is written again (someone may have deleted the ConfigMap).
const BUNDLE_REFRESH_SECS: i64 = 300;

/// Writes `writ-trust-bundle` (the CA bundle) and `writ-spiffe-bundle` (the
/// SPIFFE bundle) into `namespace`, unless this leader wrote the same bundles
/// there less than five minutes ago (every identity reconcile calls this, and
/// grants re-queue identities).
pub async fn publish_trust_bundle(ctx: &Context, namespace: &str) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.shared.client.clone(), namespace);
    let bundle = ctx.shared.trust.bundle_pem();
    let now = pki::now_unix();
    let spiffe = crate::state::trust::spiffe_bundle_json(&ctx.shared.trust, now).map_err(|source| Error::Pki {
        op: "building the SPIFFE bundle for",
        object: format!("namespace {namespace}"),
        source,
    })?;
    let published_key = format!("{bundle}\n{spiffe}");
    let fresh = |published: &std::collections::HashMap<String, (String, i64)>| {
        published.get(namespace).is_some_and(|(b, at)| *b == published_key && now - at < BUNDLE_REFRESH_SECS)
    };
    if fresh(&ctx.published_bundles.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(());
    }
    for (name, key, value, what) in [
        (TRUST_BUNDLE_CONFIGMAP, "ca.crt", bundle, "publishing trust bundle in"),
        (
            crate::api::names::SPIFFE_BUNDLE_CONFIGMAP,
            crate::api::names::SPIFFE_BUNDLE_KEY,
            spiffe,
            "publishing SPIFFE bundle in",
        ),
    ] {
        let cm = crate::state::trust::published_config_map(name, key, value);
        let mut value = serde_json::to_value(&cm).unwrap_or_default();
        value["apiVersion"] = "v1".into();
        value["kind"] = "ConfigMap".into();
        match api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(value)).await {
            Ok(_) => {}
            // The namespace is being deleted, its AgentIdentities with it: no pod
            // will start there to read a bundle, and a retry would be refused the
            // same way (failing here would only back off until the namespace
            // controller removes the identity). Not noted as published: a
            // namespace made again under that name gets its bundle.
            Err(source) if super::namespace_terminating(&source) => {
                tracing::debug!(namespace, "namespace terminating; trust bundle not published");
                return Ok(());
            }
            Err(source) => {
                return Err(Error::Kube { op: what, object: format!("ConfigMap {namespace}/{name}"), source })
            }
        }
    }
    ctx.published_bundles.lock().unwrap_or_else(|e| e.into_inner()).insert(namespace.to_string(), (published_key, now));
    Ok(())
}

/// The identity controller's name in metrics, logs and back-off.
pub const CONTROLLER: &str = "identity";

/// Error policy: count the error, back off per identity.
pub fn error_policy(id: Arc<AgentIdentity>, err: &Error, ctx: Arc<Context>) -> Action {
    super::back_off(&ctx, CONTROLLER, &*id, err, Duration::from_secs(2))
}

/// The identity controller: one reconcile per AgentIdentity, on its change,
/// a change of one of its pods or grants, and a full pass. An identity's
/// status counts its pods and active grants: debounced, so that a burst of
/// grants makes one status write a second, not one per grant.
pub async fn controller(ctx: Arc<Context>, caches: &Caches) {
    let (resync, all) = Resync::channel();
    Controller::for_shared_stream(caches.identities.changes(&resync), caches.identities.store())
        .watches_shared_stream(caches.pods.changes(&resync), |p| {
            p.agent().map(|a| ObjectRef::new(a).within(&p.namespace().unwrap_or_default()))
        })
        .watches_shared_stream(caches.grants.changes(&resync), |g| {
            Some(ObjectRef::new(&g.agent).within(&g.namespace().unwrap_or_default()))
        })
        .reconcile_all_on(all)
        .with_config(controller::Config::default().concurrency(RECONCILES_IN_FLIGHT).debounce(Duration::from_secs(1)))
        .run(super::forgetting_failures(CONTROLLER, reconcile), error_policy, ctx)
        .for_each(|_| future::ready(()))
        .instrument(tracing::info_span!("controller", name = CONTROLLER))
        .await;
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::state::Shared;
    use crate::testing::{ApiServer, Reply};

    const NS: &str = "team";

    #[test]
    fn an_identitys_status_as_a_table() {
        use crate::api::{Duration as D, ReviewSpec};
        let now = 1_800_000_000;
        let hour = 3600;
        let spiffe = "spiffe://td/ns/team/agent/bot";
        let created = |ago: i64, review: Option<ReviewSpec>| {
            let mut id = AgentIdentity::test(NS, "bot");
            id.metadata.creation_timestamp = Some(time(now - ago));
            id.spec.review = review;
            id
        };
        let review = |every: i64, dormant: Option<i64>| {
            Some(ReviewSpec {
                every: D::from_secs(every as u64),
                dormant_after: dormant.map(|d| D::from_secs(d as u64)),
            })
        };
        // (case, identity, bound pods, active grants, [(condition, status, reason)], next check)
        type Case<'a> = (&'a str, AgentIdentity, i32, i32, Vec<(&'a str, &'a str, &'a str)>, Option<i64>);
        let cases: Vec<Case> = vec![
            ("no review asked", created(2 * hour, None), 0, 0, vec![("Ready", "True", "CredentialsAvailable")], None),
            (
                "review current",
                created(hour / 2, review(hour, None)),
                0,
                0,
                vec![("Ready", "True", "CredentialsAvailable"), ("ReviewOverdue", "False", "ReviewCurrent")],
                Some(now + hour / 2),
            ),
            (
                "review overdue",
                created(2 * hour, review(hour, None)),
                0,
                0,
                vec![("Ready", "True", "CredentialsAvailable"), ("ReviewOverdue", "True", "ReviewOverdue")],
                None,
            ),
            (
                "idle too long",
                created(2 * hour, review(10 * hour, Some(hour))),
                0,
                0,
                vec![
                    ("Ready", "True", "CredentialsAvailable"),
                    ("ReviewOverdue", "False", "ReviewCurrent"),
                    ("Dormant", "True", "NoActivity"),
                ],
                Some(now + 8 * hour),
            ),
            (
                "a bound pod keeps it active",
                created(2 * hour, review(10 * hour, Some(hour))),
                1,
                0,
                vec![
                    ("Ready", "True", "CredentialsAvailable"),
                    ("ReviewOverdue", "False", "ReviewCurrent"),
                    ("Dormant", "False", "Active"),
                ],
                Some(now + hour),
            ),
        ];
        for (what, id, pods, grants, want, next) in cases {
            let (st, next_check) = desired_status(&id, spiffe.into(), pods, grants, now);
            let got: Vec<(&str, &str, &str)> =
                st.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect();
            assert_eq!(got, want, "{what}");
            assert_eq!(next_check, next, "{what}: next check");
            assert_eq!(
                (st.bound_pods, st.active_grants, st.spiffe_id.as_deref()),
                (pods, grants, Some(spiffe)),
                "{what}"
            );
        }
    }

    /// A context over the test kit's API server, which answers the requests
    /// `refused` picks with `refusal`, other writes with what they sent and
    /// other reads with 404.
    async fn refusing(log: &ApiServer, refusal: Reply, refused: fn(&Method, &str) -> bool) -> Arc<Context> {
        let client = log.answering(move |req| {
            if refused(&req.method, &req.path) {
                return refusal.clone();
            }
            match req.method {
                Method::POST | Method::PUT | Method::PATCH => Reply::created(req.body.clone()),
                _ => Reply::not_found(),
            }
        });
        let shared = Arc::new(Shared::test(client).await.build());
        Context::test(shared, kube::runtime::reflector::store().0)
    }

    #[tokio::test]
    async fn a_trust_bundle_is_not_published_into_a_terminating_namespace_and_that_is_no_error() {
        let log = ApiServer::new();
        let bundle = |method: &Method, path: &str| {
            method == Method::PATCH && path == format!("/api/v1/namespaces/{NS}/configmaps/writ-trust-bundle")
        };
        let refusal = Reply::namespace_terminating(NS, "configmaps", "writ-trust-bundle");
        let ctx = refusing(&log, refusal, bundle).await;
        log.drain();
        publish_trust_bundle(&ctx, NS).await.expect("no error: the namespace is going");
        // Not noted as published: asked again, it tries again (a namespace
        // made again under that name gets its bundle).
        publish_trust_bundle(&ctx, NS).await.expect("no error");
        let tried = log.requests().iter().filter(|r| bundle(&r.method, &r.path)).count();
        assert_eq!(tried, 2);

        // Any other refusal is an error (retried by the error policy).
        let forbidden =
            Reply::of_status(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                               "reason": "Forbidden", "message": "configmaps is forbidden: RBAC"}));
        let ctx = refusing(&log, forbidden, bundle).await;
        let err = publish_trust_bundle(&ctx, NS).await.expect_err("refused");
        assert!(err.to_string().starts_with("publishing trust bundle in ConfigMap team/writ-trust-bundle"), "{err}");
    }

    #[tokio::test]
    async fn an_identity_whose_finalizer_went_with_it_is_done_and_not_retried() {
        let log = ApiServer::new();
        let identity_patch = |method: &Method, path: &str| {
            method == Method::PATCH && path == format!("/apis/writ.dev/v1alpha1/namespaces/{NS}/agentidentities/worker")
        };
        let gone = Reply::of_status(
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound",
                          "message": "agentidentities.writ.dev \"worker\" not found"}),
        );
        let ctx = refusing(&log, gone, identity_patch).await;
        // A second pass from a cache that has not yet seen the deletion: the
        // first already removed the finalizer and the identity is gone.
        let identity: AgentIdentity = serde_json::from_value(json!({
            "apiVersion": "writ.dev/v1alpha1", "kind": "AgentIdentity",
            "metadata": {"name": "worker", "namespace": NS, "uid": "i-1", "finalizers": [crate::api::names::FINALIZER],
                         "deletionTimestamp": "2026-12-05T00:00:00Z"},
            "spec": {"class": "Agent", "serviceAccountName": "worker", "owner": "o",
                     "ceiling": [{"action": "a", "resource": "r"}]}
        }))
        .expect("identity");
        log.drain();
        let action = reconcile(Arc::new(identity), ctx).await.expect("gone is done");
        assert_eq!(action, Action::await_change());
        assert_eq!(
            log.requests().iter().filter(|r| identity_patch(&r.method, &r.path)).count(),
            1,
            "one removal tried"
        );
    }
}

//! Admission webhooks: pod injection, grant stamping and validation of the
//! three kinds. Every request gets a well-formed AdmissionReview back: a body
//! that cannot be read is answered `invalid`, a policy failure `deny(reason)`.

pub mod grants;
pub mod pods;
pub mod register;

use std::sync::Arc;

use axum::{body::Bytes, extract::State, http::StatusCode, response::IntoResponse, routing::post, Json, Router};
use kube::core::{
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
    DynamicObject,
};

use crate::state::Shared;

/// Paths of the webhooks on the HTTPS listener.
pub mod paths {
    /// Mutating: pod injection.
    pub const MUTATE_PODS: &str = "/mutate/pods";
    /// Mutating: requester/approver stamps on grants.
    pub const MUTATE_GRANTS: &str = "/mutate/capabilitygrants";
    /// Mutating: suspension stamps on identities.
    pub const MUTATE_IDENTITIES: &str = "/mutate/agentidentities";
    /// Validating: grants.
    pub const VALIDATE_GRANTS: &str = "/validate/capabilitygrants";
    /// Validating: identities.
    pub const VALIDATE_IDENTITIES: &str = "/validate/agentidentities";
    /// Validating: policies.
    pub const VALIDATE_POLICIES: &str = "/validate/delegationpolicies";
    /// Validating: pods reading another pod's credential Secret.
    pub const VALIDATE_POD_MOUNTS: &str = "/validate/pod-mounts";
}

/// The webhook routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(paths::MUTATE_PODS, post(mutate_pods))
        .route(paths::MUTATE_GRANTS, post(mutate_grants))
        .route(paths::MUTATE_IDENTITIES, post(mutate_identities))
        .route(paths::VALIDATE_GRANTS, post(validate_grants))
        .route(paths::VALIDATE_IDENTITIES, post(validate_identities))
        .route(paths::VALIDATE_POLICIES, post(validate_policies))
        .route(paths::VALIDATE_POD_MOUNTS, post(validate_pod_mounts))
        .with_state(shared)
}

/// Parses an AdmissionReview body into a typed request, or the response to
/// send when it cannot be read.
pub fn parse_request<T>(body: &[u8]) -> Result<AdmissionRequest<T>, Box<AdmissionResponse>>
where
    T: kube::Resource + serde::de::DeserializeOwned,
{
    // A refusal must echo the request's uid, or the API server discards it
    // (and the user sees a generic webhook error instead of the reason).
    let refuse = |message: String| {
        let mut resp = AdmissionResponse::invalid(message);
        resp.uid = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.pointer("/request/uid").and_then(|u| u.as_str()).map(str::to_owned))
            .unwrap_or_default();
        Box::new(resp)
    };
    let review: AdmissionReview<T> =
        serde_json::from_slice(body).map_err(|e| refuse(format!("cannot read the AdmissionReview: {e}")))?;
    // The webhooks are registered for v1 only; the answer's apiVersion and
    // kind are copied from the request, so anything else is refused here.
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(refuse(format!(
            "apiVersion/kind: must be admission.k8s.io/v1 AdmissionReview, not {:?} {:?}",
            review.types.api_version, review.types.kind
        )));
    }
    review.try_into().map_err(|e| refuse(format!("AdmissionReview without a request: {e}")))
}

fn reply(resp: AdmissionResponse) -> impl IntoResponse {
    (StatusCode::OK, Json(resp.into_review()))
}

/// Runs a typed handler over a raw body, counting the decision.
fn handle<T, F>(shared: &Shared, webhook: &'static str, body: &[u8], f: F) -> AdmissionResponse
where
    T: kube::Resource + serde::de::DeserializeOwned,
    F: FnOnce(&AdmissionRequest<T>) -> Decision,
{
    handle_parsed(shared, webhook, parse_request::<T>(body), f)
}

/// [`handle`] over a body already parsed with [`parse_request`].
fn handle_parsed<T, F>(
    shared: &Shared,
    webhook: &'static str,
    parsed: Result<AdmissionRequest<T>, Box<AdmissionResponse>>,
    f: F,
) -> AdmissionResponse
where
    T: kube::Resource,
    F: FnOnce(&AdmissionRequest<T>) -> Decision,
{
    let req = match parsed {
        Ok(req) => req,
        Err(resp) => {
            shared.metrics.admission(webhook, "invalid", "unreadable-request");
            return *resp;
        }
    };
    let base = AdmissionResponse::from(&req);
    match f(&req) {
        Decision::Allow => {
            shared.metrics.admission(webhook, "allowed", "none");
            base
        }
        Decision::Patch(patch) => match base.clone().with_patch(patch) {
            Ok(resp) => {
                shared.metrics.admission(webhook, "allowed", "none");
                resp
            }
            Err(e) => {
                shared.metrics.admission(webhook, "denied", "internal");
                base.deny(format!("writ could not encode its patch: {e}"))
            }
        },
        Decision::Deny { rule, message } => {
            shared.metrics.admission(webhook, "denied", &rule);
            // Not an audit line: the webhook cannot tell an API server's
            // request from a forged one, so what it logs is diagnostics.
            // The API server's own audit log records the refusal.
            tracing::info!(
                webhook,
                user = ?req.user_info.username.as_deref().unwrap_or(""),
                namespace = ?req.namespace.as_deref().unwrap_or(""),
                name = ?req.name,
                rule = %rule,
                reason = ?message,
                "admission denied"
            );
            base.deny(message)
        }
    }
}

/// What a handler decided.
#[derive(Debug)]
pub enum Decision {
    /// Admit unchanged.
    Allow,
    /// Admit with these changes.
    Patch(json_patch::Patch),
    /// Refuse; `rule` is the first rule id (for metrics), `message` every violation.
    Deny {
        /// Rule id.
        rule: String,
        /// Message shown to the client.
        message: String,
    },
}

impl Decision {
    /// A denial.
    pub fn deny(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Deny { rule: rule.into(), message: message.into() }
    }

    /// A denial listing policy violations.
    pub fn violations(violations: &[crate::policy::Violation]) -> Self {
        let rule = violations.first().map(|v| v.rule.id().to_string()).unwrap_or_else(|| "unknown".into());
        let message = violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        Self::Deny { rule, message }
    }
}

/// A JSON patch turning `before` into `after` (both serialized from typed values).
pub fn diff_patch<T: serde::Serialize>(before: &T, after: &T) -> Result<json_patch::Patch, serde_json::Error> {
    Ok(json_patch::diff(&serde_json::to_value(before)?, &serde_json::to_value(after)?))
}

async fn mutate_pods(State(shared): State<Arc<Shared>>, body: Bytes) -> impl IntoResponse {
    // Parsed once (a pod is the largest object the webhooks see, and one
    // arrives per agent pod created); the claimed identity is looked up first.
    let parsed = parse_request::<k8s_openapi::api::core::v1::Pod>(&body);
    let fetched = match parsed.as_ref().map(|r| (r, r.object.as_ref())) {
        // Only a create checks a claim (an update is checked against the old object).
        Ok((r, Some(pod))) if r.operation == kube::core::admission::Operation::Create => {
            let ns = r.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_default();
            grants::identity_fallback(&shared, &ns, pods::claimed_agent(pod)).await
        }
        _ => None,
    };
    reply(handle_parsed(&shared, "mutate-pods", parsed, |req| grants::mutate_pod(&shared, req, fetched)))
}

async fn mutate_grants(State(shared): State<Arc<Shared>>, body: Bytes) -> impl IntoResponse {
    let keys = shared.trust.seal_keys();
    let now = crate::pki::now_unix();
    reply(handle(&shared, "mutate-grants", &body, |r| grants::stamp(&keys, now, r)))
}

async fn mutate_identities(State(shared): State<Arc<Shared>>, body: Bytes) -> impl IntoResponse {
    let now = jiff::Timestamp::now();
    let keys = shared.trust.seal_keys();
    let group = shared.config.review_group.as_deref();
    reply(handle(&shared, "mutate-identities", &body, |r| grants::stamp_identity(&keys, group, now, r)))
}

async fn validate_grants(State(shared): State<Arc<Shared>>, body: Bytes) -> impl IntoResponse {
    let req = parse_request::<crate::api::CapabilityGrant>(&body);
    // Ancestors are read from the API server (fresh), so resolve them before
    // the synchronous decision.
    let (ancestors, agent, requesters, policies, pod) = match &req {
        Ok(r) => {
            let ns = r.namespace.clone().unwrap_or_default();
            let agent = r.object.as_ref().map(|g| g.spec.agent.as_str());
            (
                grants::ancestors(&shared, r).await,
                grants::identity_fallback(&shared, &ns, agent).await,
                grants::requester_identities(&shared, r).await,
                grants::namespace_policies(&shared, &ns).await,
                grants::bound_pod(&shared, r).await,
            )
        }
        Err(_) => (Ok(vec![]), None, vec![], Ok(vec![]), None),
    };
    reply(handle_parsed(&shared, "validate-grants", req, |r| {
        grants::validate_grant(&shared, r, ancestors, agent, &requesters, policies, pod)
    }))
}

async fn validate_identities(State(shared): State<Arc<Shared>>, body: Bytes) -> impl IntoResponse {
    reply(handle(&shared, "validate-identities", &body, |r| grants::validate_identity(&shared, r)))
}

async fn validate_policies(State(shared): State<Arc<Shared>>, body: Bytes) -> impl IntoResponse {
    reply(handle(&shared, "validate-policies", &body, |r| grants::validate_policy(&shared, r)))
}

async fn validate_pod_mounts(State(shared): State<Arc<Shared>>, body: Bytes) -> impl IntoResponse {
    reply(handle(&shared, "validate-pod-mounts", &body, |r| pods::check_mounts(&shared, r)))
}

/// The stored object of a request, typed `DynamicObject` for logs.
pub type AnyRequest = AdmissionRequest<DynamicObject>;

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::parse_request;

    fn review(api_version: &str, kind: &str) -> Vec<u8> {
        format!(
            r#"{{"apiVersion":"{api_version}","kind":"{kind}","request":{{"uid":"u-1","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"operation":"CREATE","userInfo":{{}},"object":{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p"}}}}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn only_v1_admission_reviews_are_read_and_every_answer_is_one() {
        assert!(parse_request::<Pod>(&review("admission.k8s.io/v1", "AdmissionReview")).is_ok());
        for (api_version, kind) in
            [("admission.k8s.io/v1", " AdmissionReview"), ("admission.k8s.io/v1beta1", "AdmissionReview")]
        {
            let refused = parse_request::<Pod>(&review(api_version, kind)).expect_err("refused");
            assert!(!refused.allowed);
            assert_eq!(refused.uid, "u-1", "the refusal echoes the uid");
            assert!(
                refused.result.message.starts_with("apiVersion/kind: must be admission.k8s.io/v1"),
                "{}",
                refused.result.message
            );
            let answer = serde_json::to_value(refused.into_review()).expect("json");
            assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
            assert_eq!(answer["kind"], "AdmissionReview");
        }
    }
}

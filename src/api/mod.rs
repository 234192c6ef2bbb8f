//! The custom resources of `writ.dev/v1alpha1` and the types they share.
//!
//! The CRD schemas in `crds/` are generated from these types (`writ crds`).

mod capability;
pub mod condition;
mod delegation;
mod duration;
mod grant;
mod identity;

pub use capability::{AgentRef, Capability, Principal};
pub use delegation::{
    ApprovalPolicy, DelegationPolicy, DelegationPolicySpec, DelegationPolicyStatus, DEFAULT_APPROVAL_TIMEOUT,
};
pub use duration::{Duration, DurationError, DURATION_PATTERN};
pub use grant::{
    ApprovalDecision, CapabilityGrant, CapabilityGrantSpec, CapabilityGrantStatus, Decision, GrantPhase, Task,
    TokenRecord, APPROVAL_TIMEOUT_REASON, MAX_GRANT_CAPABILITIES,
};
pub use identity::{
    AgentIdentity, AgentIdentitySpec, AgentIdentityStatus, AgentRole, CredentialSpec, IdentityClass, KeyAlgorithm,
    ReviewSpec,
};

/// The API group.
pub const GROUP: &str = "writ.dev";

/// Label a pod carries to claim an AgentIdentity.
pub const AGENT_LABEL: &str = "writ.dev/agent";
/// Annotation naming the pod's credential Secret.
pub const CREDENTIAL_SECRET_ANNOTATION: &str = "writ.dev/credential-secret";
/// Admission stamp: the authenticated creator of a grant.
pub const REQUESTED_BY_ANNOTATION: &str = "writ.dev/requested-by";
/// Admission stamp: the authenticated approver of a grant.
pub const APPROVED_BY_ANNOTATION: &str = "writ.dev/approved-by";
/// Admission stamp: the groups of the authenticated creator (comma-separated).
pub const REQUESTED_GROUPS_ANNOTATION: &str = "writ.dev/requested-by-groups";
/// Admission seal: the mutating webhook's HMAC over the grant's namespace,
/// name, requester stamps and spec, and when it sealed them
/// (`<unix seconds>.<seal>`). The controller activates nothing without it.
pub const ADMISSION_SEAL_ANNOTATION: &str = "writ.dev/admission-seal";
/// Approval seal: the mutating webhook's HMAC over the grant's uid, the
/// approver stamp and the decision (`<unix seconds>.<seal>`).
pub const APPROVAL_SEAL_ANNOTATION: &str = "writ.dev/approval-seal";
/// Admission stamp: who suspended an AgentIdentity (the authenticated user).
pub const SUSPENDED_BY_ANNOTATION: &str = "writ.dev/suspended-by";
/// Admission stamp: when an AgentIdentity was suspended (RFC 3339).
pub const SUSPENDED_AT_ANNOTATION: &str = "writ.dev/suspended-at";
/// Why an AgentIdentity was suspended, in words (set by `writ suspend --reason`).
pub const SUSPEND_REASON_ANNOTATION: &str = "writ.dev/suspend-reason";
/// Set by `writ review` to ask admission to record an access review (the
/// value is only a request id; the webhook replaces it with the stamps below).
pub const REVIEW_REQUEST_ANNOTATION: &str = "writ.dev/review-requested";
/// Admission stamp: who recorded the last access review (the authenticated user).
pub const REVIEWED_BY_ANNOTATION: &str = "writ.dev/reviewed-by";
/// Admission stamp: when the last access review was recorded (RFC 3339).
pub const REVIEWED_AT_ANNOTATION: &str = "writ.dev/reviewed-at";
/// The reviewer's note on the last access review (`writ review --note`).
pub const REVIEW_NOTE_ANNOTATION: &str = "writ.dev/review-note";
/// Seal over the review stamps (`<unix seconds>.<seal>`): a review recorded
/// without Writ's webhook does not count.
pub const REVIEW_SEAL_ANNOTATION: &str = "writ.dev/review-seal";
/// Where the credential Secret is mounted in agent containers.
pub const CREDENTIALS_DIR: &str = "/var/run/secrets/writ.dev/";

/// Every CRD, in a stable order.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![AgentIdentity::crd(), CapabilityGrant::crd(), DelegationPolicy::crd()]
}

/// The CRDs as `(file name, YAML document)` pairs, as committed in `crds/`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd"));
            Ok((name, format!("---\n{}", to_yaml(&crd)?)))
        })
        .collect()
}

/// YAML as the generated manifests (`crds/`, `manifests/webhooks.yaml`) are
/// written: a single-line string stays on one line (never folded), a
/// multi-line one is a literal block.
pub fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options)
}

/// Renders the CRDs as one YAML stream (what `writ crds` prints): the
/// concatenation of `crds/*.yaml` in file-name order.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    Ok(crd_files()?.into_iter().map(|(_, yaml)| yaml).collect())
}

//! The custom resources of `writ.dev/v1alpha1` and the types they share.
//!
//! The CRD schemas in `crds/` are generated from these types (`writ crds`).

mod capability;
pub mod conditions;
mod delegation;
mod duration;
mod grant;
mod identity;
pub mod names;

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
pub use names::{
    ADMISSION_SEAL_ANNOTATION, AGENT_LABEL, APPROVAL_SEAL_ANNOTATION, APPROVED_BY_ANNOTATION, CREDENTIALS_DIR,
    CREDENTIAL_SECRET_ANNOTATION, REQUESTED_BY_ANNOTATION, REQUESTED_GROUPS_ANNOTATION, REVIEWED_AT_ANNOTATION,
    REVIEWED_BY_ANNOTATION, REVIEW_NOTE_ANNOTATION, REVIEW_REQUEST_ANNOTATION, REVIEW_SEAL_ANNOTATION,
    SUSPENDED_AT_ANNOTATION, SUSPENDED_BY_ANNOTATION, SUSPEND_REASON_ANNOTATION,
};

/// The API group.
pub const GROUP: &str = "writ.dev";

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

//! `AgentIdentity`: who an agent is.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Capability, Duration};

/// Who an agent is: the service account its pods run as, the team accountable
/// for it, how its short-lived pod certificates are made, and the most any
/// grant may ever give it.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "writ.dev",
    version = "v1alpha1",
    kind = "AgentIdentity",
    plural = "agentidentities",
    singular = "agentidentity",
    shortname = "agid",
    shortname = "agent",
    category = "writ",
    namespaced,
    status = "AgentIdentityStatus",
    printcolumn = r#"{"name":"SPIFFE-ID","type":"string","jsonPath":".status.spiffeID"}"#,
    printcolumn = r#"{"name":"OWNER","type":"string","jsonPath":".spec.owner"}"#,
    printcolumn = r#"{"name":"PODS","type":"integer","jsonPath":".status.boundPods"}"#,
    printcolumn = r#"{"name":"GRANTS","type":"integer","jsonPath":".status.activeGrants"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentIdentitySpec {
    /// What kind of workload this is: `Agent` (an AI agent) or `Service` (a
    /// non-human service). Humans never get an AgentIdentity.
    pub class: IdentityClass,
    /// Only pods running as this service account (in the same namespace) may
    /// claim this identity.
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: String,
    /// The team or person accountable for this identity (governance).
    #[schemars(length(min = 1, max = 253))]
    pub owner: String,
    /// Optional segmentation of agent identities: `planner`, `executor` or `observer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<AgentRole>,
    /// How the pod certificates are made.
    #[serde(default)]
    pub credential: CredentialSpec,
    /// The most any grant may ever give this agent: capability patterns
    /// (`*` matches within one segment). A grant outside the ceiling is refused.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub ceiling: Vec<Capability>,
    /// Periodic access review of this non-human identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewSpec>,
    /// The kill switch (`writ suspend` / `writ resume`): while true, every
    /// grant of this agent ends Revoked (`agent-suspended`, cascading to the
    /// grants delegated from them), its pods' certificates are revoked and not
    /// re-issued, and new pods and grants for it are refused. Resuming lets
    /// new pods and grants in; nothing that ended comes back. Who suspended
    /// it and when are stamped by admission (`writ.dev/suspended-by`,
    /// `writ.dev/suspended-at`), why in `writ.dev/suspend-reason`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
}

/// What kind of non-human workload an identity names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IdentityClass {
    /// An AI agent.
    Agent,
    /// A non-human service.
    Service,
}

/// Segmented agent roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentRole {
    /// Plans tasks and delegates sub-tasks.
    Planner,
    /// Carries out tasks.
    Executor,
    /// Only reads.
    Observer,
}

/// Pod certificate parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialSpec {
    /// Certificate lifetime (bounded by the operator's maximum), e.g. `1h`.
    #[serde(default = "default_ttl")]
    pub ttl: Duration,
    /// Rotate when this much lifetime is left, e.g. `20m`. Must be shorter than `ttl`.
    #[serde(default = "default_rotate_before")]
    pub rotate_before: Duration,
    /// Key algorithm of the pod's key pair: `ECDSA-P256` or `Ed25519`.
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
}

fn default_ttl() -> Duration {
    Duration::from_hours(1)
}

fn default_rotate_before() -> Duration {
    Duration::from_mins(20)
}

impl Default for CredentialSpec {
    fn default() -> Self {
        Self { ttl: default_ttl(), rotate_before: default_rotate_before(), key_algorithm: KeyAlgorithm::default() }
    }
}

/// Key algorithm for pod key pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256.
    #[default]
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

/// Access review schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewSpec {
    /// How often the identity's access must be reviewed, e.g. `90d`. A review
    /// is recorded with `writ review` (annotation `writ.dev/reviewed-at`).
    pub every: Duration,
    /// An identity with no bound pod and no active grant for this long is
    /// `Dormant`, e.g. `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dormant_after: Option<Duration>,
}

/// Observed state of an AgentIdentity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentIdentityStatus {
    /// The SPIFFE ID in every certificate of this identity:
    /// `spiffe://<trust-domain>/ns/<namespace>/agent/<name>`.
    #[serde(rename = "spiffeID", default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Running pods holding a certificate of this identity.
    #[serde(default)]
    pub bound_pods: i32,
    /// Grants to this agent that are Active.
    #[serde(default)]
    pub active_grants: i32,
    /// When a certificate was last issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_issued_at: Option<Time>,
    /// When a pod of this identity was last seen running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_at: Option<Time>,
    /// When the next access review is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_due_at: Option<Time>,
    /// Who recorded the last access review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reviewed_by: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `ReviewOverdue`, `Dormant`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

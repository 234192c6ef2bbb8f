//! `DelegationPolicy`: who may grant what to whom.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AgentRef, Capability, Duration, Principal};

/// Who may grant what to whom. No grant is admitted unless a DelegationPolicy
/// in its namespace authorises that delegation (default deny).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "writ.dev",
    version = "v1alpha1",
    kind = "DelegationPolicy",
    plural = "delegationpolicies",
    singular = "delegationpolicy",
    shortname = "dpol",
    category = "writ",
    namespaced,
    status = "DelegationPolicyStatus",
    printcolumn = r#"{"name":"MAX-TTL","type":"string","jsonPath":".spec.maxTTL"}"#,
    printcolumn = r#"{"name":"MAX-DEPTH","type":"integer","jsonPath":".spec.maxDepth"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DelegationPolicySpec {
    /// Who may request grants under this policy: users, groups, agents
    /// (AgentIdentities in this namespace) or service accounts.
    #[schemars(length(min = 1, max = 64))]
    pub delegators: Vec<Principal>,
    /// To which agents grants may be made.
    #[schemars(length(min = 1, max = 256))]
    pub delegates: Vec<AgentRef>,
    /// Which capabilities may be delegated (patterns; `*` within one segment).
    #[schemars(length(min = 1, max = 64))]
    pub capabilities: Vec<Capability>,
    /// The longest grant this policy allows, e.g. `30m`.
    #[serde(rename = "maxTTL")]
    pub max_ttl: Duration,
    /// The longest agent-to-agent chain from the human: 1 allows only direct
    /// human-to-agent grants, 2 one further delegation, and so on.
    #[serde(default = "default_max_depth")]
    #[schemars(range(min = 1, max = 8))]
    pub max_depth: u32,
    /// Human-in-the-loop approval for sensitive capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalPolicy>,
}

fn default_max_depth() -> u32 {
    1
}

/// Which capabilities need a human approver, and who may approve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPolicy {
    /// Capability patterns that need approval before the grant becomes Active.
    #[schemars(length(min = 1, max = 64))]
    pub required: Vec<Capability>,
    /// Who may approve (never the requester of the grant).
    #[schemars(length(min = 1, max = 64))]
    pub approvers: Vec<Principal>,
    /// How long a grant waits for a decision, e.g. `1h` (the default). A grant
    /// still AwaitingApproval at its deadline (`status.approvalDeadline`) ends
    /// Denied with reason `approval-timeout`, and a later approval is refused.
    /// At most the operator's `--max-approval-wait` (default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// How long a grant waits for approval when the policy does not say.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_hours(1);

impl ApprovalPolicy {
    /// The approval timeout: `timeout`, or [`DEFAULT_APPROVAL_TIMEOUT`].
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_APPROVAL_TIMEOUT)
    }
}

/// Observed state of a DelegationPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DelegationPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

//! `CapabilityGrant`: one task, one agent, a few actions, a short time.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Capability, Duration};

/// The reason (first word of `status.reason`) of a grant that ended Denied
/// because no approver decided by its approval deadline.
pub const APPROVAL_TIMEOUT_REASON: &str = "approval-timeout";

/// The default (and the schema's) upper bound on capabilities in one grant.
pub const MAX_GRANT_CAPABILITIES: usize = 16;

/// One task, one agent, a few exact actions on exact resources, a short time.
/// Immutable once admitted, except `completed: false -> true` and the
/// approval decision; widening a grant means asking for a new one.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "writ.dev",
    version = "v1alpha1",
    kind = "CapabilityGrant",
    plural = "capabilitygrants",
    singular = "capabilitygrant",
    shortname = "cg",
    shortname = "grant",
    category = "writ",
    namespaced,
    status = "CapabilityGrantStatus",
    printcolumn = r#"{"name":"AGENT","type":"string","jsonPath":".spec.agent"}"#,
    printcolumn = r#"{"name":"TASK","type":"string","jsonPath":".spec.task.id"}"#,
    printcolumn = r#"{"name":"PHASE","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"EXPIRES","type":"string","format":"date-time","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityGrantSpec {
    /// The AgentIdentity (in this namespace) that receives the capabilities.
    #[schemars(length(min = 1, max = 253))]
    pub agent: String,
    /// The task this grant exists for.
    pub task: Task,
    /// Exact actions on exact resources (no wildcards), at most 16.
    #[schemars(length(min = 1, max = 16))]
    pub capabilities: Vec<Capability>,
    /// Who the token is for (the JWT `aud`): at least one audience.
    #[schemars(length(min = 1, max = 8))]
    pub audiences: Vec<String>,
    /// How long the grant lasts once Active, e.g. `15m` (bounded by the
    /// DelegationPolicy's `maxTTL` and the operator's hard maximum).
    pub ttl: Duration,
    /// Bind to this one pod of the agent; otherwise every running pod of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The grant (in this namespace) this one is delegated from; the
    /// requester must then be the agent holding that grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The agent sets this to true when its task is done; the grant is then
    /// Completed and its tokens revoked. Cannot be set back to false.
    #[serde(default)]
    pub completed: bool,
    /// The approval decision for a grant that needs one. Set by `writ approve`
    /// or `writ deny`; the approver is taken from the authenticated request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalDecision>,
}

/// The task a grant is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    /// A task identifier, e.g. a ticket or pull request (`PR-1234`).
    #[schemars(length(min = 1, max = 253))]
    pub id: String,
    /// What the task is meant to achieve, in words (for audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub intent: Option<String>,
}

/// An approver's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalDecision {
    /// `Approved` or `Denied`.
    pub decision: Decision,
    /// Why, in words (for audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// Approve or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Decision {
    /// The grant may become Active.
    Approved,
    /// The grant ends as Denied.
    Denied,
}

/// Where a grant is in its lifecycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum GrantPhase {
    /// Admitted, not yet acted on.
    #[default]
    Pending,
    /// Waiting for a listed approver who is not the requester.
    AwaitingApproval,
    /// Tokens are issued.
    Active,
    /// The task finished; tokens revoked.
    Completed,
    /// The TTL ran out.
    Expired,
    /// Ended early: deleted, parent ended, agent or pod gone, policy removed.
    Revoked,
    /// Refused by an approver, or can no longer be honoured.
    Denied,
}

impl GrantPhase {
    /// Every phase, in lifecycle order.
    pub const ALL: [GrantPhase; 7] = [
        Self::Pending,
        Self::AwaitingApproval,
        Self::Active,
        Self::Completed,
        Self::Expired,
        Self::Revoked,
        Self::Denied,
    ];

    /// Whether the grant has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Expired | Self::Revoked | Self::Denied)
    }

    /// The name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::Active => "Active",
            Self::Completed => "Completed",
            Self::Expired => "Expired",
            Self::Revoked => "Revoked",
            Self::Denied => "Denied",
        }
    }
}

impl std::fmt::Display for GrantPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One issued token (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// The pod holding the token.
    pub pod: String,
    /// The token's unique id (JWT `jti`), as published when revoked.
    pub jti: String,
    /// The token's own expiry (JWT `exp`).
    pub expires_at: Time,
}

/// Observed state of a CapabilityGrant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityGrantStatus {
    /// Pending, AwaitingApproval, Active, Completed, Expired, Revoked or Denied.
    #[serde(default)]
    pub phase: GrantPhase,
    /// The authenticated user who created the grant (from the admission stamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The authenticated approver (from the admission stamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The capabilities asked for (kept for audit).
    #[serde(default)]
    pub requested: Vec<Capability>,
    /// The capabilities issued (kept for audit).
    #[serde(default)]
    pub approved: Vec<Capability>,
    /// The DelegationPolicy that authorises this grant, recorded when the
    /// controller first sees it and held to afterwards: only its approvers
    /// decide, its approval timeout applies, and the grant ends when it no
    /// longer authorises the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorised_by: Option<String>,
    /// When a grant that needs approval stops waiting: still AwaitingApproval
    /// then, it ends Denied (`approval-timeout`), and approvals are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_deadline: Option<Time>,
    /// The delegation chain from the human requester to this grant's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// When tokens were first issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    /// When the grant expires (issuedAt + ttl, never after the parent's expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the grant ended early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Time>,
    /// Why the grant is in its phase, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Tokens issued for this grant, one per bound pod.
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Approved`, `Issued`, `Expired`, `Revoked`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The uid of the pod named by `spec.pod`, fixed when the grant became
    /// Active: a pod re-created under the same name is not that pod.
    #[serde(default, rename = "boundPodUID", skip_serializing_if = "Option::is_none")]
    pub bound_pod_uid: Option<String>,
    /// The controller's seal over phase, activation window, bound pod and
    /// tokens. A status written by anyone else does not verify and is
    /// repaired; it never extends, revives or re-activates the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

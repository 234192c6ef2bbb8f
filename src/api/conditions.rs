//! Standard Kubernetes conditions (`metav1.Condition`): every condition type
//! and reason Writ writes, and how it updates them. Alerts, `kubectl wait`
//! and GitOps health checks match on these strings.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition status `True`.
pub const TRUE: &str = "True";
/// Condition status `False`.
pub const FALSE: &str = "False";

/// A CapabilityGrant's condition types and their reasons.
pub mod grant {
    /// An approver approved (or no approval was needed).
    pub const APPROVED: &str = "Approved";
    /// Tokens are issued.
    pub const ISSUED: &str = "Issued";
    /// The TTL ran out.
    pub const EXPIRED: &str = "Expired";
    /// Ended: its reason is the phase it ended in (`Revoked`, `Completed`,
    /// `Expired`).
    pub const REVOKED: &str = "Revoked";

    /// Reasons of the grant's conditions.
    pub mod reason {
        /// `Approved` false: waiting for an approver.
        pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
        /// `Approved` false: no approver decided before the deadline.
        pub const APPROVAL_TIMEOUT: &str = "ApprovalTimeout";
        /// `Approved` false: refused.
        pub const DENIED: &str = "Denied";
        /// `Approved` true: an approver approved.
        pub const APPROVED_BY_APPROVER: &str = "ApprovedByApprover";
        /// `Approved` true: the grant needs no approval.
        pub const NO_APPROVAL_REQUIRED: &str = "NoApprovalRequired";
        /// `Issued` true.
        pub const TOKENS_ISSUED: &str = "TokensIssued";
        /// `Issued` false.
        pub const NO_TOKENS: &str = "NoTokens";
        /// `Expired` true.
        pub const TTL_ELAPSED: &str = "TTLElapsed";
    }
}

/// An AgentIdentity's condition types and their reasons.
pub mod identity {
    /// Credentials can be issued.
    pub const READY: &str = "Ready";
    /// The periodic access review is overdue.
    pub const REVIEW_OVERDUE: &str = "ReviewOverdue";
    /// No bound pod and no active grant for `review.dormantAfter`.
    pub const DORMANT: &str = "Dormant";

    /// Reasons of the identity's conditions.
    pub mod reason {
        /// `Ready` true.
        pub const CREDENTIALS_AVAILABLE: &str = "CredentialsAvailable";
        /// `ReviewOverdue` true.
        pub const REVIEW_OVERDUE: &str = "ReviewOverdue";
        /// `ReviewOverdue` false.
        pub const REVIEW_CURRENT: &str = "ReviewCurrent";
        /// `Dormant` true.
        pub const NO_ACTIVITY: &str = "NoActivity";
        /// `Dormant` false.
        pub const ACTIVE: &str = "Active";
    }
}

/// Sets `new` in `conditions`, keeping the existing `lastTransitionTime` when
/// the status did not change. Returns true when anything but a timestamp changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let changed = old.status != new.status
                || old.reason != new.reason
                || old.message != new.message
                || old.observed_generation != new.observed_generation;
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Builds a condition.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { TRUE } else { FALSE }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// Whether the condition `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == TRUE)
}

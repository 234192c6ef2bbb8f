//! Pure admission logic (docs/design.md, "Capability grammar" and
//! "Admission"): the capability grammar, matching, delegation, approval, and
//! the validation of AgentIdentity and DelegationPolicy objects. No I/O: the webhook, `writ check` and the
//! controllers call the same functions with plain values.
//!
//! Every refusal is a [`Violation`] naming the field, the [`Rule`] (with a
//! stable id such as `outside-ceiling`) and a message; the functions return
//! all violations they find, not just the first.

#![warn(missing_docs)]

mod delegation;
pub mod grammar;
mod grant;
mod requester;
mod rules;
pub mod seal;
mod update;
mod validate;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod testing;

pub use grammar::{
    capability_within, parse_action, parse_action_pattern, parse_resource, parse_resource_pattern, parse_selector,
    Action, CapabilityPattern, GrammarError, Pattern, PatternKind, Resource,
};
pub use grant::{
    admit_grant, authorisation, authorising_policy, check_bound_pod, recheck_grant, stamped_requester, Admission,
    GrantContext, PodFacts,
};
pub use requester::{delegate_matches, Requester, SERVICE_ACCOUNT_PREFIX};
pub use rules::{rules_markdown, Rule, Violation};
pub use update::{admit_grant_update, approval_deadline, UpdateContext, UpdateKind};
pub use validate::{validate_identity, validate_policy};

use crate::api::{Duration, MAX_GRANT_CAPABILITIES};

/// The shortest pod certificate lifetime an AgentIdentity may ask for.
pub const MIN_CREDENTIAL_TTL: Duration = Duration::from_secs(10);
/// The largest `maxDepth` a DelegationPolicy may set.
pub const MAX_DELEGATION_DEPTH: u32 = 8;

/// The operator's hard limits, applied on top of every policy. Built once
/// from the operator configuration and passed to every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest grant `ttl` (and policy `maxTTL`) accepted, whatever a policy says. Default 1h.
    pub max_grant_ttl: Duration,
    /// The longest pod certificate lifetime an AgentIdentity may ask for. Default 24h.
    pub max_credential_ttl: Duration,
    /// The most capabilities in one grant. Default 16.
    pub max_capabilities: usize,
    /// The most audiences in one grant. Default 8.
    pub max_audiences: usize,
    /// Refuse grants to an agent whose condition `ReviewOverdue` is True. Default true.
    pub refuse_review_overdue: bool,
    /// Refuse grants to an agent whose condition `Dormant` is True. Default true.
    pub refuse_dormant: bool,
    /// The longest a grant may wait for approval, whatever a policy's
    /// `approval.timeout` says. Default 24h.
    pub max_approval_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_grant_ttl: Duration::from_hours(1),
            max_credential_ttl: Duration::from_hours(24),
            max_capabilities: MAX_GRANT_CAPABILITIES,
            max_audiences: 8,
            refuse_review_overdue: true,
            refuse_dormant: true,
            max_approval_wait: Duration::from_hours(24),
        }
    }
}

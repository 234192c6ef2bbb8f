//! The rules a Writ object can break, and the violations that name them.
//!
//! Every rejection carries a stable, kebab-case rule id (`outside-ceiling`,
//! `ttl-above-policy`, …) so that webhook denials, `writ check` output, logs
//! and the README's "What gets rejected, and why" table all use one vocabulary.

use std::fmt;

/// One reason an object is refused. Each variant is one rejection class of
/// docs/design.md, "Admission", or one rule of its "Capability grammar".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    // --- capability grammar (docs/design.md, "Capability grammar") ---
    /// An action is not `<service>:<verb>` with a non-empty service and verb,
    /// exactly one `:` and no `/`, or uses `**`.
    MalformedAction,
    /// A resource is not `<scheme>:<path>` with a non-empty scheme (no `/`)
    /// and a non-empty path, or uses `**`.
    MalformedResource,
    /// Whitespace, a control character or a non-ASCII character.
    InvalidCharacter,
    /// A `%`: percent-encoding is refused, never decoded.
    PercentEncoding,
    /// A `.` or `..` path segment, or `..` anywhere in a path: refused, never normalised.
    DotSegment,
    /// An empty path segment (leading, trailing or doubled `/`).
    EmptySegment,
    /// An action longer than 253 or a resource longer than 1024 characters.
    ValueTooLong,
    /// A `*` in a grant, which names exact values only.
    WildcardInGrant,
    /// A ceiling or policy pattern that is too generic: a `*` in the service or
    /// scheme, a verb made only of `*`, or a path without one literal segment.
    OverbroadPattern,

    // --- grant shape ---
    /// A grant with no capability.
    NoCapabilities,
    /// More capabilities than the operator allows in one grant.
    TooManyCapabilities,
    /// A grant without an audience.
    NoAudience,
    /// More audiences than the operator allows in one grant.
    TooManyAudiences,
    /// An empty audience, or one with a `*`, whitespace or control characters.
    MalformedAudience,
    /// A `ttl` of zero.
    ZeroTtl,
    /// A grant `ttl`, a policy `maxTTL` or an identity's credential `ttl`
    /// above the operator's hard maximum.
    TtlAboveOperatorMax,
    /// Another malformed grant field: agent name, task id or pod name.
    MalformedGrant,
    /// An approval decision or approver stamp present when the grant is created.
    ApprovalAtCreate,
    /// An admission stamp (`writ.dev/requested-by`, `-groups`, `approved-by`)
    /// that differs from the authenticated request or was changed.
    ImmutableStamp,

    // --- the agent ---
    /// No AgentIdentity of that name in the grant's namespace.
    UnknownAgent,
    /// A capability outside the agent's `ceiling` (an empty ceiling admits nothing).
    OutsideCeiling,
    /// The agent's access review is overdue (condition `ReviewOverdue`).
    ReviewOverdue,
    /// The agent is dormant (condition `Dormant`).
    AgentDormant,
    /// The agent is suspended (`spec.suspended`, `writ suspend`).
    AgentSuspended,

    // --- delegation policy ---
    /// No DelegationPolicy lets this requester delegate to this agent.
    NoDelegationPolicy,
    /// The delegating policies do not cover a capability.
    NotCoveredByPolicy,
    /// `ttl` above the authorising policy's `maxTTL`.
    TtlAbovePolicy,
    /// An agent asked for a grant without delegating from one it holds.
    AgentWithoutParent,

    // --- delegated grants ---
    /// `spec.parent` (or an ancestor's parent) cannot be found.
    ParentNotFound,
    /// The parent (or an ancestor) is not Active.
    ParentNotActive,
    /// The requester is not the agent holding the parent grant.
    NotParentHolder,
    /// A capability or audience the parent grant does not have.
    NotSubsetOfParent,
    /// The grant would last beyond its parent's expiry.
    OutlivesParent,
    /// The chain is longer than the policy's `maxDepth`.
    MaxDepth,
    /// A grant or an agent appears twice in the delegation chain.
    DelegationCycle,

    // --- updates and approval ---
    /// `spec.pod` names no pod of the grant's agent.
    PodNotOfAgent,
    /// A grant whose admission or approval seal is missing, does not verify,
    /// or was copied from another grant: it did not pass Writ's webhook.
    NotAdmitted,
    /// A write of a grant's status that Writ did not seal.
    ForeignStatus,

    /// A change to an admitted grant's spec other than completion or approval.
    ImmutableSpec,
    /// The requester approving their own grant (or the agent approving its own).
    SelfApproval,
    /// An approver not listed by the policy that authorises the grant (for its
    /// stamped requester and agent) and requires approval for it.
    NotAnApprover,
    /// An approval decision on a grant that needs none.
    ApprovalNotRequired,
    /// An approval decision after the grant's approval deadline.
    ApprovalTimeout,

    // --- the other objects ---
    /// An AgentIdentity that is itself malformed.
    MalformedIdentity,
    /// A DelegationPolicy that is itself malformed.
    MalformedPolicy,
    /// An access review recorded by the agent the identity is for.
    SelfReview,
    /// An access review by someone outside the configured reviewer group.
    NotAReviewer,

    // --- pods ---
    /// A `writ.dev/*` label or annotation added, changed or removed on an
    /// existing pod.
    PodWritMetadataImmutable,
    /// A pod that mounts (volume, projected volume, `env`, `envFrom`)
    /// another pod's credential Secret.
    ForeignCredentialMount,
}

impl Rule {
    /// Every rule, in documentation order.
    pub const ALL: [Rule; 49] = [
        Rule::MalformedAction,
        Rule::MalformedResource,
        Rule::InvalidCharacter,
        Rule::PercentEncoding,
        Rule::DotSegment,
        Rule::EmptySegment,
        Rule::ValueTooLong,
        Rule::WildcardInGrant,
        Rule::OverbroadPattern,
        Rule::NoCapabilities,
        Rule::TooManyCapabilities,
        Rule::NoAudience,
        Rule::TooManyAudiences,
        Rule::MalformedAudience,
        Rule::ZeroTtl,
        Rule::TtlAboveOperatorMax,
        Rule::MalformedGrant,
        Rule::ApprovalAtCreate,
        Rule::ImmutableStamp,
        Rule::UnknownAgent,
        Rule::OutsideCeiling,
        Rule::ReviewOverdue,
        Rule::AgentDormant,
        Rule::AgentSuspended,
        Rule::NoDelegationPolicy,
        Rule::NotCoveredByPolicy,
        Rule::TtlAbovePolicy,
        Rule::AgentWithoutParent,
        Rule::ParentNotFound,
        Rule::ParentNotActive,
        Rule::NotParentHolder,
        Rule::NotSubsetOfParent,
        Rule::OutlivesParent,
        Rule::MaxDepth,
        Rule::DelegationCycle,
        Rule::PodNotOfAgent,
        Rule::NotAdmitted,
        Rule::ForeignStatus,
        Rule::ImmutableSpec,
        Rule::SelfApproval,
        Rule::NotAnApprover,
        Rule::ApprovalNotRequired,
        Rule::ApprovalTimeout,
        Rule::MalformedIdentity,
        Rule::MalformedPolicy,
        Rule::SelfReview,
        Rule::NotAReviewer,
        Rule::PodWritMetadataImmutable,
        Rule::ForeignCredentialMount,
    ];

    /// The stable, kebab-case id printed in brackets after every message.
    pub fn id(self) -> &'static str {
        match self {
            Rule::MalformedAction => "malformed-action",
            Rule::MalformedResource => "malformed-resource",
            Rule::InvalidCharacter => "invalid-character",
            Rule::PercentEncoding => "percent-encoding",
            Rule::DotSegment => "dot-segment",
            Rule::EmptySegment => "empty-segment",
            Rule::ValueTooLong => "value-too-long",
            Rule::WildcardInGrant => "wildcard-in-grant",
            Rule::OverbroadPattern => "overbroad-pattern",
            Rule::NoCapabilities => "no-capabilities",
            Rule::TooManyCapabilities => "too-many-capabilities",
            Rule::NoAudience => "no-audience",
            Rule::TooManyAudiences => "too-many-audiences",
            Rule::MalformedAudience => "malformed-audience",
            Rule::ZeroTtl => "zero-ttl",
            Rule::TtlAboveOperatorMax => "ttl-above-operator-max",
            Rule::MalformedGrant => "malformed-grant",
            Rule::ApprovalAtCreate => "approval-at-create",
            Rule::ImmutableStamp => "immutable-stamp",
            Rule::UnknownAgent => "unknown-agent",
            Rule::OutsideCeiling => "outside-ceiling",
            Rule::ReviewOverdue => "review-overdue",
            Rule::AgentDormant => "agent-dormant",
            Rule::AgentSuspended => "agent-suspended",
            Rule::NoDelegationPolicy => "no-delegation-policy",
            Rule::NotCoveredByPolicy => "not-covered-by-policy",
            Rule::TtlAbovePolicy => "ttl-above-policy",
            Rule::AgentWithoutParent => "agent-without-parent",
            Rule::ParentNotFound => "parent-not-found",
            Rule::ParentNotActive => "parent-not-active",
            Rule::NotParentHolder => "not-parent-holder",
            Rule::NotSubsetOfParent => "not-subset-of-parent",
            Rule::OutlivesParent => "outlives-parent",
            Rule::MaxDepth => "max-depth",
            Rule::DelegationCycle => "delegation-cycle",
            Rule::PodNotOfAgent => "pod-not-of-agent",
            Rule::NotAdmitted => "not-admitted",
            Rule::ForeignStatus => "foreign-status",
            Rule::ImmutableSpec => "immutable-spec",
            Rule::SelfApproval => "self-approval",
            Rule::NotAnApprover => "not-an-approver",
            Rule::ApprovalNotRequired => "approval-not-required",
            Rule::ApprovalTimeout => "approval-timeout",
            Rule::MalformedIdentity => "malformed-identity",
            Rule::MalformedPolicy => "malformed-policy",
            Rule::SelfReview => "self-review",
            Rule::NotAReviewer => "not-a-reviewer",
            Rule::PodWritMetadataImmutable => "pod-writ-metadata-immutable",
            Rule::ForeignCredentialMount => "foreign-credential-mount",
        }
    }

    /// One sentence saying when the rule refuses an object, for the README table.
    pub fn description(self) -> &'static str {
        match self {
            Rule::MalformedAction => {
                "An action is not `<service>:<verb>`: empty service or verb, more than one `:`, a `/`, or `**`."
            }
            Rule::MalformedResource => {
                "A resource is not `<scheme>:<path>`: empty scheme or path, a `/` before the first `:`, or `**`."
            }
            Rule::InvalidCharacter => {
                "Whitespace, control or non-ASCII characters in an action, resource or pattern, or control characters \
                 in free text (`task.intent`, an approval reason): refused, not trimmed."
            }
            Rule::PercentEncoding => "A `%` anywhere in an action or resource: percent-encoding is refused, not decoded.",
            Rule::DotSegment => "A `.` or `..` path segment, or `..` anywhere in a path: refused, not normalised.",
            Rule::EmptySegment => "An empty path segment: a leading, trailing or doubled `/`.",
            Rule::ValueTooLong => "An action over 253 or a resource over 1024 characters.",
            Rule::WildcardInGrant => "A `*` in a grant's action or resource: grants name exact values only.",
            Rule::OverbroadPattern => {
                "A ceiling or policy pattern that is too generic: `*` in the service or scheme, a verb made only \
                 of `*`, or a path with no segment free of `*`."
            }
            Rule::NoCapabilities => "A grant that lists no capability.",
            Rule::TooManyCapabilities => "More capabilities in one grant than the operator allows (default 16).",
            Rule::NoAudience => "A grant without an audience: every token must say who it is for.",
            Rule::TooManyAudiences => "More audiences in one grant than the operator allows (default 8).",
            Rule::MalformedAudience => "An empty audience, or one containing `*`, whitespace or control characters.",
            Rule::ZeroTtl => "A grant whose `ttl` is zero.",
            Rule::TtlAboveOperatorMax => {
                "A grant `ttl` or policy `maxTTL` above the operator's maximum (default 1h), or an identity's \
                 credential `ttl` above the certificate maximum (default 24h)."
            }
            Rule::MalformedGrant => "A malformed agent name, empty task id or malformed pod name in a grant.",
            Rule::ApprovalAtCreate => {
                "A grant created with an approval decision or approver stamp: approval is a later, separate step."
            }
            Rule::ImmutableStamp => {
                "An admission stamp (`writ.dev/requested-by`, `writ.dev/requested-by-groups`, `writ.dev/approved-by`) \
                 that disagrees with the authenticated request or was changed after admission."
            }
            Rule::UnknownAgent => "The grant names an AgentIdentity that does not exist in its namespace.",
            Rule::OutsideCeiling => {
                "A capability outside the agent's `ceiling`; an agent with an empty ceiling can be granted nothing."
            }
            Rule::ReviewOverdue => "The agent's periodic access review is overdue (configurable).",
            Rule::AgentDormant => "The agent is dormant: no pod and no grant for too long (configurable).",
            Rule::AgentSuspended => {
                "The agent is suspended (`writ suspend`): its grants end, and no new grant or pod claims it until \
                 `writ resume`."
            }
            Rule::NoDelegationPolicy => {
                "No DelegationPolicy in the namespace lets this requester delegate to this agent (default deny)."
            }
            Rule::NotCoveredByPolicy => {
                "A capability that no DelegationPolicy for this requester and agent lets them delegate."
            }
            Rule::TtlAbovePolicy => "A grant `ttl` above the authorising policy's `maxTTL`.",
            Rule::AgentWithoutParent => {
                "An agent asking for a grant without `spec.parent`: agents only pass on authority they hold."
            }
            Rule::ParentNotFound => "The parent grant (or an ancestor in its chain) does not exist.",
            Rule::ParentNotActive => "The parent grant (or an ancestor) is not Active: pending, ended or expired.",
            Rule::NotParentHolder => "A delegated grant requested by someone other than the agent holding the parent.",
            Rule::NotSubsetOfParent => "A delegated grant with a capability or audience its parent does not have.",
            Rule::OutlivesParent => "A delegated grant that would last beyond its parent's expiry.",
            Rule::MaxDepth => "A delegation chain longer than the authorising policy's `maxDepth`.",
            Rule::DelegationCycle => {
                "A grant or agent appearing twice in a delegation chain (including an agent delegating to itself)."
            }
            Rule::PodNotOfAgent => {
                "`spec.pod` names a pod that does not exist in the namespace, or one that does not run as the \
                 grant's agent (its `writ.dev/agent` label and service account)."
            }
            Rule::NotAdmitted => {
                "A grant whose admission or approval seal is missing, does not verify or was copied from another \
                 grant (it skipped Writ's webhook, or a stamp was forged): the controller ends it and issues nothing."
            }
            Rule::ForeignStatus => {
                "A write of a grant's status that the operator did not seal: status is Writ's alone (and a status \
                 that slips through is repaired, never believed)."
            }
            Rule::ImmutableSpec => {
                "Any change to an admitted grant's spec other than `completed: false -> true` or the one approval step."
            }
            Rule::SelfApproval => "Approval by the grant's requester, or by the agent the grant is for.",
            Rule::NotAnApprover => {
                "Approval or denial by someone who is not a listed (human) approver of the policy that authorises \
                 the grant for its requester and agent, and requires approval."
            }
            Rule::ApprovalNotRequired => "An approval decision on a grant that no policy requires approval for.",
            Rule::ApprovalTimeout => {
                "An approval decision after the grant's approval deadline (`status.approvalDeadline`, from the \
                 policy's `approval.timeout`): the grant has ended Denied."
            }
            Rule::MalformedIdentity => {
                "An AgentIdentity with a bad service account name, owner, credential lifetime or review schedule."
            }
            Rule::MalformedPolicy => {
                "A DelegationPolicy with a bad principal, empty lists, `maxDepth` outside 1..=8, or non-human approvers."
            }
            Rule::SelfReview => "An access review (`writ review`) recorded by the agent the identity is for.",
            Rule::NotAReviewer => {
                "An access review by someone outside the operator's reviewer group (`--review-group`, when set)."
            }
            Rule::PodWritMetadataImmutable => {
                "A `writ.dev/*` label or annotation added, changed or removed on an existing pod: a pod's claim and \
                 its credential Secret are fixed when it is created."
            }
            Rule::ForeignCredentialMount => {
                "A pod that mounts another pod's credential Secret (volume, projected volume, `env` or `envFrom`): \
                 a credential Secret serves only its pod."
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One reason an object is refused: where, which rule, and a message for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The offending field as a JSON path, e.g. `spec.capabilities[1].resource`.
    pub field: String,
    /// The rule broken.
    pub rule: Rule,
    /// What is wrong, in words, naming the values involved.
    pub message: String,
}

impl Violation {
    /// A violation of `rule` at `field`.
    pub fn new(field: impl Into<String>, rule: Rule, message: impl Into<String>) -> Self {
        Self { field: field.into(), rule, message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} [{}]", self.field, self.message, self.rule.id())
    }
}

/// Renders every rule as a Markdown table (`| Rule | Refused when |`), for the
/// README section "What gets rejected, and why".
pub fn rules_markdown() -> String {
    let mut out = String::from("| Rule | Refused when |\n|---|---|\n");
    for rule in Rule::ALL {
        out.push_str(&format!("| `{}` | {} |\n", rule.id(), rule.description()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn rule_ids_are_unique_kebab_case_and_all_listed() {
        let ids: HashSet<_> = Rule::ALL.iter().map(|r| r.id()).collect();
        assert_eq!(ids.len(), Rule::ALL.len());
        for id in ids {
            assert!(id.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{id}");
            assert!(!id.starts_with('-') && !id.ends_with('-') && !id.contains("--"), "{id}");
        }
        for rule in Rule::ALL {
            assert!(rule.description().ends_with('.'), "{rule}: description should be a sentence");
        }
    }

    #[test]
    fn violation_display_names_field_message_and_rule() {
        let v = Violation::new("spec.capabilities[1].resource", Rule::DotSegment, "`..` is not allowed");
        assert_eq!(v.to_string(), "spec.capabilities[1].resource: `..` is not allowed [dot-segment]");
    }

    #[test]
    fn markdown_table_lists_every_rule() {
        let md = rules_markdown();
        for rule in Rule::ALL {
            assert!(md.contains(&format!("`{}`", rule.id())), "{rule}");
        }
        assert_eq!(md.lines().count(), Rule::ALL.len() + 2);
    }

    #[test]
    fn docs_rules_md_is_the_generated_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/rules.md");
        if std::env::var_os("WRIT_BLESS").is_some() {
            std::fs::write(path, rules_markdown()).expect("writing docs/rules.md");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            committed,
            rules_markdown(),
            "docs/rules.md must be `writ::policy::rules_markdown()` (WRIT_BLESS=1 cargo test --lib docs_rules_md rewrites it)"
        );
    }

    #[test]
    fn readme_documents_every_rule() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap_or_default();
        let missing: Vec<_> =
            Rule::ALL.iter().map(|r| r.id()).filter(|id| !readme.contains(&format!("`{id}`"))).collect();
        assert!(
            missing.is_empty(),
            "README.md must document every admission rule (paste docs/rules.md from `writ::policy::rules_markdown()` \
             into \"What gets rejected, and why\"); missing: {missing:?}"
        );
    }
}

//! Admission of a new CapabilityGrant (docs/design.md, "Admission"): the grant is well-formed,
//! within its agent's ceiling, authorised by a DelegationPolicy, and (when
//! delegated) narrower than its parent.

use jiff::Timestamp;

use crate::api::{
    conditions::{
        self as condition,
        identity::{DORMANT as DORMANT_CONDITION, REVIEW_OVERDUE as REVIEW_OVERDUE_CONDITION},
    },
    AgentIdentity, CapabilityGrant, DelegationPolicy, APPROVED_BY_ANNOTATION, REQUESTED_BY_ANNOTATION,
    REQUESTED_GROUPS_ANNOTATION,
};

use super::delegation::{check_delegation, Chain};
use super::grammar::{parse_action, parse_resource, CapabilityPattern};
use super::requester::{delegate_matches, Requester};
use super::rules::{Rule, Violation};
use super::validate::dns_subdomain;
use super::Limits;

/// Everything [`admit_grant`] needs besides the grant, resolved by the caller
/// (the webhook from its caches, `writ check` from files).
#[derive(Clone, Copy, Debug)]
pub struct GrantContext<'a> {
    /// The grant's namespace. Objects of other namespaces are ignored.
    pub namespace: &'a str,
    /// The authenticated requester (see [`Requester::from_user_info`]).
    pub requester: &'a Requester,
    /// The AgentIdentity named by `spec.agent`, if it exists.
    pub agent: Option<&'a AgentIdentity>,
    /// The DelegationPolicies of the namespace.
    pub policies: &'a [DelegationPolicy],
    /// The delegation chain above the grant, as found by following
    /// `spec.parent`: parent first, then grandparent, … Resolution stops at a
    /// missing grant or at a name already seen; empty for a direct grant.
    pub ancestors: &'a [CapabilityGrant],
    /// The current time, as a `jiff` timestamp (the same type `metav1.Time`
    /// wraps), so tests and `writ check` control the clock.
    pub now: Timestamp,
    /// The operator's hard limits.
    pub limits: &'a Limits,
}

/// What admission decided about a grant that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The name of the DelegationPolicy that authorises the grant (the first
    /// by name among those that do).
    pub policy: String,
    /// Whether a capability matches the policy's `approval.required`: the
    /// grant then waits in `AwaitingApproval`.
    pub needs_approval: bool,
    /// Delegation depth: 1 for a grant made by a person (or a non-agent
    /// service account), parent's depth + 1 for a delegated grant.
    pub depth: u32,
    /// The delegation chain, for status and the token's `act` claim: the
    /// original (non-agent) requester's user name, then the agents from the
    /// root grant down to this grant's agent (`depth + 1` entries).
    pub chain: Vec<String>,
}

/// Decides whether a new grant may be admitted. Returns every violation, not
/// just the first; each names the field and the rule.
///
/// Decisions worth knowing:
/// * Grants name exact, canonical capabilities; duplicates are harmless.
/// * An agent (a requester whose service account backs an AgentIdentity)
///   may only delegate from a grant it holds (`agent-without-parent`):
///   authority always starts with a person or a non-agent service account.
/// * One policy must authorise the whole grant: list the requester as
///   delegator and the agent as delegate, cover every capability, allow the
///   ttl and the depth. When none does, the violations of the closest policy
///   (fewest failures, then name) are reported.
/// * A delegated grant may not go to an agent that already appears in the
///   chain, including the delegating agent itself (`delegation-cycle`).
/// * Its audiences, like its capabilities, must be a subset of the parent's.
/// * An approval decision or `writ.dev/approved-by` stamp at create time is
///   refused; a `writ.dev/requested-by(-groups)` stamp must match the
///   authenticated requester.
/// * Unparseable ceiling or policy entries match nothing; an unparseable
///   approval selector matches everything (fail closed both ways).
pub fn admit_grant(grant: &CapabilityGrant, ctx: &GrantContext<'_>) -> Result<Admission, Vec<Violation>> {
    let mut out = Vec::new();
    let valid = check_fields(grant, ctx, &mut out);
    let caps: Vec<usize> = (0..grant.spec.capabilities.len()).filter(|i| valid[*i]).collect();
    check_stamps(grant, ctx.requester, &mut out);
    check_agent(grant, ctx, &caps, &mut out);
    let chain = match &grant.spec.parent {
        Some(parent) => check_delegation(grant, parent, ctx, &caps, &mut out),
        None => {
            if let Some(agent) = &ctx.requester.agent {
                out.push(Violation::new(
                    "spec.parent",
                    Rule::AgentWithoutParent,
                    format!(
                        "agent {agent} may only delegate from a grant it holds: set spec.parent to that grant \
                         (authority starts with a person)"
                    ),
                ));
            }
            Chain { depth: Some(1), chain: vec![ctx.requester.username.clone(), grant.spec.agent.clone()] }
        }
    };
    let policy = authorise(grant, ctx, &caps, chain.depth, &mut out);
    match policy {
        Some(policy) if out.is_empty() => Ok(Admission {
            policy: policy.metadata.name.clone().unwrap_or_default(),
            needs_approval: needs_approval(policy, grant, &caps),
            depth: chain.depth.unwrap_or(1),
            chain: chain.chain,
        }),
        _ => Err(out),
    }
}

/// Grant fields on their own. Returns, per capability, whether it is a valid
/// exact capability (only those are checked further).
fn check_fields(grant: &CapabilityGrant, ctx: &GrantContext<'_>, out: &mut Vec<Violation>) -> Vec<bool> {
    let spec = &grant.spec;
    let limits = ctx.limits;
    if let Err(why) = dns_subdomain(&spec.agent) {
        out.push(Violation::new("spec.agent", Rule::MalformedGrant, format!("agent name {:?} {why}", spec.agent)));
    }
    if spec.task.id.trim().is_empty() || spec.task.id.len() > 253 || spec.task.id.chars().any(char::is_control) {
        out.push(Violation::new(
            "spec.task.id",
            Rule::MalformedGrant,
            "the task id must be 1 to 253 printable characters, e.g. PR-1234",
        ));
    }
    if let Some(intent) = &spec.task.intent {
        check_free_text("spec.task.intent", intent, out);
    }
    for (field, value) in [("spec.pod", &spec.pod), ("spec.parent", &spec.parent)] {
        if let Some(Err(why)) = value.as_deref().map(dns_subdomain) {
            out.push(Violation::new(
                field,
                Rule::MalformedGrant,
                format!("{:?} {why}", value.as_deref().unwrap_or("")),
            ));
        }
    }
    let n = spec.capabilities.len();
    if n == 0 {
        out.push(Violation::new("spec.capabilities", Rule::NoCapabilities, "a grant names at least one capability"));
    } else if n > limits.max_capabilities {
        out.push(Violation::new(
            "spec.capabilities",
            Rule::TooManyCapabilities,
            format!("{n} capabilities; at most {} per grant: split the task", limits.max_capabilities),
        ));
    }
    let mut valid = Vec::with_capacity(n);
    for (i, cap) in spec.capabilities.iter().enumerate() {
        let mut ok = true;
        if let Err(e) = parse_action(&cap.action) {
            out.push(Violation::new(format!("spec.capabilities[{i}].action"), e.rule, e.message));
            ok = false;
        }
        if let Err(e) = parse_resource(&cap.resource) {
            out.push(Violation::new(format!("spec.capabilities[{i}].resource"), e.rule, e.message));
            ok = false;
        }
        valid.push(ok);
    }
    if spec.audiences.is_empty() {
        out.push(Violation::new("spec.audiences", Rule::NoAudience, "a grant names at least one audience"));
    } else if spec.audiences.len() > limits.max_audiences {
        out.push(Violation::new(
            "spec.audiences",
            Rule::TooManyAudiences,
            format!("{} audiences; at most {}", spec.audiences.len(), limits.max_audiences),
        ));
    }
    for (i, aud) in spec.audiences.iter().enumerate() {
        if aud.is_empty() || aud.contains('*') || !aud.chars().all(|c| c.is_ascii_graphic()) {
            out.push(Violation::new(
                format!("spec.audiences[{i}]"),
                Rule::MalformedAudience,
                format!("audience {aud:?} must be a non-empty exact name of printable ASCII without '*'"),
            ));
        }
    }
    if spec.ttl.as_secs() == 0 {
        out.push(Violation::new("spec.ttl", Rule::ZeroTtl, "ttl must be more than zero"));
    } else if spec.ttl > limits.max_grant_ttl {
        out.push(Violation::new(
            "spec.ttl",
            Rule::TtlAboveOperatorMax,
            format!("ttl {} is above the operator's maximum of {}", spec.ttl, limits.max_grant_ttl),
        ));
    }
    if spec.approval.is_some() {
        out.push(Violation::new(
            "spec.approval",
            Rule::ApprovalAtCreate,
            "a grant cannot be created approved: an approver sets the decision afterwards",
        ));
    }
    valid
}

/// Free text (a task's intent, an approval reason) is written into audit
/// lines and Events: a control character (a newline above all) could forge
/// a line there, so it is refused.
pub(crate) fn check_free_text(field: &str, text: &str, out: &mut Vec<Violation>) {
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        out.push(Violation::new(
            field,
            Rule::InvalidCharacter,
            format!("control character {c:?} in free text: write it on one line without control characters"),
        ));
    }
}

/// The admission stamps, when present at create time, must say what the
/// authenticated request says (the mutating webhook writes them; anything
/// else is a forged or stale stamp).
fn check_stamps(grant: &CapabilityGrant, requester: &Requester, out: &mut Vec<Violation>) {
    let annotations = grant.metadata.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    if get(APPROVED_BY_ANNOTATION).is_some() {
        out.push(Violation::new(
            annotation_field(APPROVED_BY_ANNOTATION),
            Rule::ApprovalAtCreate,
            "a grant cannot be created with an approver stamp",
        ));
    }
    if let Some(stamped) = get(REQUESTED_BY_ANNOTATION) {
        if stamped != requester.username {
            out.push(Violation::new(
                annotation_field(REQUESTED_BY_ANNOTATION),
                Rule::ImmutableStamp,
                format!("stamp says {stamped:?} but the request was authenticated as {:?}", requester.username),
            ));
        }
    }
    if let Some(stamped) = get(REQUESTED_GROUPS_ANNOTATION) {
        let mut stamped: Vec<&str> = stamped.split(',').map(str::trim).filter(|g| !g.is_empty()).collect();
        let mut actual: Vec<&str> = requester.groups.iter().map(String::as_str).collect();
        stamped.sort_unstable();
        stamped.dedup();
        actual.sort_unstable();
        actual.dedup();
        if stamped != actual {
            out.push(Violation::new(
                annotation_field(REQUESTED_GROUPS_ANNOTATION),
                Rule::ImmutableStamp,
                "stamped groups differ from the groups the request was authenticated with",
            ));
        }
    }
}

/// The JSON path of an annotation.
pub(crate) fn annotation_field(key: &str) -> String {
    format!("metadata.annotations[\"{key}\"]")
}

/// The agent exists, is not overdue for review or dormant, and every
/// capability lies within its ceiling.
fn check_agent(grant: &CapabilityGrant, ctx: &GrantContext<'_>, caps: &[usize], out: &mut Vec<Violation>) {
    let name = &grant.spec.agent;
    let agent = ctx.agent.filter(|a| {
        a.metadata.name.as_deref() == Some(name.as_str())
            && a.metadata.namespace.as_deref().is_none_or(|ns| ns == ctx.namespace)
    });
    let Some(agent) = agent else {
        out.push(Violation::new(
            "spec.agent",
            Rule::UnknownAgent,
            format!("there is no AgentIdentity {name} in namespace {}", ctx.namespace),
        ));
        return;
    };
    let conditions = agent.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    if ctx.limits.refuse_review_overdue && condition::is_true(conditions, REVIEW_OVERDUE_CONDITION) {
        out.push(Violation::new(
            "spec.agent",
            Rule::ReviewOverdue,
            format!("the access review of agent {name} is overdue; record a review before granting it anything"),
        ));
    }
    if agent.spec.suspended {
        let by = agent
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::api::SUSPENDED_BY_ANNOTATION))
            .map(|by| format!(" by {by}"))
            .unwrap_or_default();
        out.push(Violation::new(
            "spec.agent",
            Rule::AgentSuspended,
            format!("agent {name} is suspended{by}; nothing is granted to it until it is resumed (writ resume)"),
        ));
    }
    if ctx.limits.refuse_dormant && condition::is_true(conditions, DORMANT_CONDITION) {
        out.push(Violation::new(
            "spec.agent",
            Rule::AgentDormant,
            format!("agent {name} is dormant; review it (or retire it) before granting it anything"),
        ));
    }
    let ceiling: Vec<CapabilityPattern> =
        agent.spec.ceiling.iter().filter_map(|c| CapabilityPattern::parse(c).ok()).collect();
    for &i in caps {
        let cap = &grant.spec.capabilities[i];
        if ceiling.iter().any(|p| p.matches(cap)) {
            continue;
        }
        let why = if agent.spec.ceiling.is_empty() {
            format!("agent {name} has an empty ceiling, so it can be granted nothing")
        } else if ceiling.is_empty() {
            format!("none of the ceiling entries of agent {name} is a valid pattern")
        } else {
            format!("it is outside the ceiling of agent {name}")
        };
        out.push(Violation::new(format!("spec.capabilities[{i}]"), Rule::OutsideCeiling, format!("{cap}: {why}")));
    }
}

/// Finds the policy authorising the whole grant, or reports why none does.
fn authorise<'p>(
    grant: &CapabilityGrant,
    ctx: &GrantContext<'p>,
    caps: &[usize],
    depth: Option<u32>,
    out: &mut Vec<Violation>,
) -> Option<&'p DelegationPolicy> {
    let agent = &grant.spec.agent;
    let requester = ctx.requester;
    let mut in_namespace: Vec<&DelegationPolicy> =
        ctx.policies.iter().filter(|p| p.metadata.namespace.as_deref().is_none_or(|ns| ns == ctx.namespace)).collect();
    in_namespace.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let lets_requester = |p: &&DelegationPolicy| p.spec.delegators.iter().any(|d| requester.is(d));
    let to_agent = |p: &&DelegationPolicy| p.spec.delegates.iter().any(|d| delegate_matches(d, agent));
    let candidates: Vec<&DelegationPolicy> =
        in_namespace.iter().copied().filter(lets_requester).filter(to_agent).collect();
    if candidates.is_empty() {
        let names = |ps: Vec<&DelegationPolicy>| {
            ps.iter().map(|p| p.metadata.name.as_deref().unwrap_or("?")).collect::<Vec<_>>().join(", ")
        };
        let from_requester: Vec<_> = in_namespace.iter().copied().filter(lets_requester).collect();
        let for_agent: Vec<_> = in_namespace.iter().copied().filter(to_agent).collect();
        let ns = ctx.namespace;
        let message = if in_namespace.is_empty() {
            format!("there is no DelegationPolicy in namespace {ns}, so nothing may be delegated (default deny)")
        } else if !from_requester.is_empty() {
            format!("DelegationPolicy {} lets {requester} delegate, but not to agent {agent}", names(from_requester))
        } else if !for_agent.is_empty() {
            format!("DelegationPolicy {} delegates to agent {agent}, but not from {requester}", names(for_agent))
        } else {
            format!("no DelegationPolicy in namespace {ns} lets {requester} delegate to agent {agent}")
        };
        out.push(Violation::new("spec.agent", Rule::NoDelegationPolicy, message));
        return None;
    }
    let mut best: Option<Vec<Violation>> = None;
    for policy in &candidates {
        let failures = policy_failures(policy, grant, requester, caps, depth);
        if failures.is_empty() {
            return Some(policy);
        }
        if best.as_ref().is_none_or(|b| failures.len() < b.len()) {
            best = Some(failures);
        }
    }
    let mut failures = best.unwrap_or_default();
    if candidates.len() > 1 {
        for v in &mut failures {
            v.message.push_str(&format!(" (closest of {} policies that apply)", candidates.len()));
        }
    }
    out.extend(failures);
    None
}

/// Why one policy (which lists the requester and the agent) does not
/// authorise the grant.
fn policy_failures(
    policy: &DelegationPolicy,
    grant: &CapabilityGrant,
    requester: &Requester,
    caps: &[usize],
    depth: Option<u32>,
) -> Vec<Violation> {
    let name = policy.metadata.name.as_deref().unwrap_or("?");
    let agent = &grant.spec.agent;
    let patterns: Vec<CapabilityPattern> =
        policy.spec.capabilities.iter().filter_map(|c| CapabilityPattern::parse(c).ok()).collect();
    let mut failures = Vec::new();
    for &i in caps {
        let cap = &grant.spec.capabilities[i];
        if !patterns.iter().any(|p| p.matches(cap)) {
            failures.push(Violation::new(
                format!("spec.capabilities[{i}]"),
                Rule::NotCoveredByPolicy,
                format!("{cap} is not among the capabilities policy {name} lets {requester} delegate to agent {agent}"),
            ));
        }
    }
    if grant.spec.ttl > policy.spec.max_ttl {
        failures.push(Violation::new(
            "spec.ttl",
            Rule::TtlAbovePolicy,
            format!("policy {name} allows at most {}; this grant asks for {}", policy.spec.max_ttl, grant.spec.ttl),
        ));
    }
    if let Some(depth) = depth.filter(|d| *d > policy.spec.max_depth) {
        failures.push(Violation::new(
            "spec.parent",
            Rule::MaxDepth,
            format!(
                "this grant would be at delegation depth {depth}; policy {name} allows at most {}",
                policy.spec.max_depth
            ),
        ));
    }
    failures
}

/// Whether any capability matches the policy's `approval.required`.
fn needs_approval(policy: &DelegationPolicy, grant: &CapabilityGrant, caps: &[usize]) -> bool {
    let Some(approval) = &policy.spec.approval else {
        return false;
    };
    let selectors: Vec<Option<CapabilityPattern>> =
        approval.required.iter().map(|c| CapabilityPattern::parse_selector(c).ok()).collect();
    caps.iter().any(|&i| {
        let cap = &grant.spec.capabilities[i];
        selectors.iter().any(|s| s.as_ref().is_none_or(|s| s.matches(cap)))
    })
}

/// What the pod named by a grant's `spec.pod` is, as far as the grant cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodFacts<'a> {
    /// Its `writ.dev/agent` label.
    pub agent: Option<&'a str>,
    /// Its service account.
    pub service_account: Option<&'a str>,
}

/// `spec.pod`, when set, must name an existing pod of the grant's agent:
/// labelled for it and running as the agent's service account (`pod` is
/// `None` when there is no such pod). A grant cannot bind to another agent's
/// pod, whose key would then hold tokens this agent was granted.
pub fn check_bound_pod(
    grant: &CapabilityGrant,
    pod: Option<PodFacts<'_>>,
    agent: Option<&AgentIdentity>,
) -> Vec<Violation> {
    let Some(name) = grant.spec.pod.as_deref() else { return vec![] };
    let ns = grant.metadata.namespace.as_deref().unwrap_or_default();
    let wanted = grant.spec.agent.as_str();
    let why = match pod {
        None => format!("there is no pod {name} in namespace {ns}"),
        Some(p) if p.agent != Some(wanted) => {
            format!(
                "pod {name} is not a pod of agent {wanted} (its writ.dev/agent label is {:?})",
                p.agent.unwrap_or("")
            )
        }
        Some(p) => match agent.map(|a| a.spec.service_account_name.as_str()) {
            Some(sa) if p.service_account.unwrap_or("default") != sa => format!(
                "pod {name} runs as service account {:?}, not {sa:?} of agent {wanted}",
                p.service_account.unwrap_or("default")
            ),
            _ => return vec![],
        },
    };
    vec![Violation::new("spec.pod", Rule::PodNotOfAgent, why)]
}

/// For the controller: every admission rule that can be decided again for an
/// admitted grant, with the stamped requester, the current agent, policies
/// and ancestors. The approval step (sealed and checked at its own
/// admission) and the rules about the moment of creation (the parent being
/// Active and outliving the child: the controller follows the parent's life
/// itself and caps the child's expiry at the parent's) are left out.
pub fn recheck_grant(grant: &CapabilityGrant, ctx: &GrantContext<'_>) -> Result<Admission, Vec<Violation>> {
    let mut as_created = grant.clone();
    as_created.spec.approval = None;
    as_created.spec.completed = false;
    if let Some(a) = as_created.metadata.annotations.as_mut() {
        a.remove(APPROVED_BY_ANNOTATION);
    }
    let moment = |v: &Violation| matches!(v.rule, Rule::ParentNotActive | Rule::OutlivesParent);
    match admit_grant(&as_created, ctx) {
        Ok(a) => Ok(a),
        Err(v) if v.iter().all(moment) => {
            // Those rules only hide whether a policy authorises the grant:
            // decide it without them, on a chain that is taken as Active.
            let far = ctx.now.checked_add(jiff::SignedDuration::from_hours(24 * 366 * 100)).unwrap_or(ctx.now);
            let mut ancestors = ctx.ancestors.to_vec();
            for a in &mut ancestors {
                a.spec.completed = false;
                let st = a.status.get_or_insert_with(Default::default);
                st.phase = crate::api::GrantPhase::Active;
                st.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(far));
            }
            admit_grant(&as_created, &GrantContext { ancestors: &ancestors, ..*ctx })
        }
        Err(v) => Err(v.into_iter().filter(|v| !moment(v)).collect()),
    }
}

/// The requester a grant's stamps name, resolved against the namespace's
/// identities (an agent's service account makes it that agent).
pub fn stamped_requester(grant: &CapabilityGrant, identities: &[AgentIdentity]) -> Option<Requester> {
    let annotations = grant.metadata.annotations.as_ref()?;
    let user = annotations.get(REQUESTED_BY_ANNOTATION)?;
    let groups: Vec<String> = annotations
        .get(REQUESTED_GROUPS_ANNOTATION)
        .map(|g| g.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let ns = grant.metadata.namespace.as_deref().unwrap_or_default();
    Some(Requester::from_user_info(user.clone(), groups, identities, ns))
}

/// For the controller: whether the policy authorising an admitted grant
/// ([`authorising_policy`]) still does, and whether it requires approval. A
/// policy deleted or narrowed after admission ends the grant.
pub fn authorisation(
    grant: &CapabilityGrant,
    identities: &[crate::api::AgentIdentity],
    policies: &[DelegationPolicy],
) -> (bool, bool) {
    match authorising_policy(grant, identities, policies) {
        Some(p) => (true, policy_requires_approval(p, grant)),
        None => (false, false),
    }
}

/// The DelegationPolicy that authorises an admitted grant: one of its
/// namespace that lists the grant's stamped requester as delegator and its
/// agent as delegate, covers every capability and allows the ttl. Once
/// status records one (`status.authorisedBy`), only that policy can: the
/// authority a grant was admitted under is the one it is held to (its
/// approvers decide, its approval timeout applies). Before that, the first
/// by name that does, as admission chooses. `None` when no policy authorises
/// the grant (any more), or the grant has no requester stamp.
pub fn authorising_policy<'p>(
    grant: &CapabilityGrant,
    identities: &[crate::api::AgentIdentity],
    policies: &'p [DelegationPolicy],
) -> Option<&'p DelegationPolicy> {
    let requester = stamped_requester(grant, identities)?;
    let ns = grant.metadata.namespace.as_deref();
    let recorded = grant.status.as_ref().and_then(|s| s.authorised_by.as_deref());
    let caps: Vec<usize> = (0..grant.spec.capabilities.len()).collect();
    let mut candidates: Vec<&DelegationPolicy> = policies
        .iter()
        .filter(|p| ns.is_none() || p.metadata.namespace.as_deref().is_none_or(|pns| Some(pns) == ns))
        .filter(|p| recorded.is_none_or(|name| p.metadata.name.as_deref() == Some(name)))
        .filter(|p| {
            p.spec.delegators.iter().any(|d| requester.is(d))
                && p.spec.delegates.iter().any(|d| delegate_matches(d, &grant.spec.agent))
                && policy_failures(p, grant, &requester, &caps, None).is_empty()
        })
        .collect();
    candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    candidates.first().copied()
}

/// Whether a policy requires approval for any of the grant's (valid) capabilities.
pub(crate) fn policy_requires_approval(policy: &DelegationPolicy, grant: &CapabilityGrant) -> bool {
    let caps: Vec<usize> = (0..grant.spec.capabilities.len()).collect();
    needs_approval(policy, grant, &caps)
}

#[cfg(test)]
mod tests;

//! The grant's pure state machine: from a grant and what the controller
//! knows of its surroundings ([`World`]) to its next phase ([`next_phase`]),
//! the edges allowed between phases ([`transition_allowed`]) and the status
//! to write ([`desired_status`]). No I/O; tested as tables in `tests.rs`.

use super::*;

/// What the controller knows about a grant's surroundings.
#[derive(Debug, Clone)]
pub struct World<'a> {
    /// The agent, if it exists.
    pub agent: Option<&'a AgentIdentity>,
    /// `None`: no parent named. `Some(None)`: the named parent is gone.
    pub parent: Option<Option<&'a CapabilityGrant>>,
    /// The grant's admission (and approval) seals verify: it passed Writ's
    /// webhook. `Err` says why not.
    pub admitted: Result<(), String>,
    /// Every admission rule the controller decides again (the same engine as
    /// the webhook and `writ check`). `Err` holds the first rule's id and
    /// every violation.
    pub recheck: Result<(), Refusal>,
    /// The authorising policy requires approval for one of the capabilities.
    pub needs_approval: bool,
    /// `spec.pod` is set and that pod finished, is gone, or is another pod
    /// of the same name than the one bound at activation.
    pub bound_pod_finished: bool,
    /// Now, unix seconds.
    pub now: i64,
    /// The authorising policy and the approval deadline the grant is held to.
    pub authority: Authority,
}

/// What a grant is held to once admitted: the DelegationPolicy that
/// authorises it (`status.authorisedBy`) and, when that policy requires
/// approval for it, the approval deadline (`status.approvalDeadline`).
/// Computed by the pure engine ([`crate::policy::authorising_policy`],
/// [`crate::policy::approval_deadline`]) from the grant's stamped requester
/// and the current policies, and recorded in status once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authority {
    /// The authorising policy's name.
    pub policy: Option<String>,
    /// Whether that policy requires approval for the grant (`None`: no
    /// policy authorises it).
    pub needs_approval: Option<bool>,
    /// When a grant awaiting approval stops waiting (unix seconds); `None`
    /// when the grant needs no approval.
    pub approval_deadline: Option<i64>,
}

impl Authority {
    /// The authority of `g` among `policies` (its namespace's).
    pub fn of(
        g: &CapabilityGrant,
        identities: &[AgentIdentity],
        policies: &[DelegationPolicy],
        limits: &crate::policy::Limits,
    ) -> Self {
        let Some(policy) = crate::policy::authorising_policy(g, identities, policies) else {
            return Self::default();
        };
        let (_, needs_approval) = crate::policy::authorisation(g, identities, policies);
        Self {
            policy: policy.metadata.name.clone(),
            needs_approval: Some(needs_approval),
            approval_deadline: needs_approval.then(|| crate::policy::approval_deadline(g, policy, limits)).flatten(),
        }
    }

    /// Records the authority in the grant's (trusted) status where it is
    /// not recorded yet: a recorded one is held to. The next status write
    /// carries it, under the controller's seal.
    pub(super) fn record(&self, g: &mut CapabilityGrant) {
        if self.policy.is_none() && self.approval_deadline.is_none() {
            return;
        }
        let st = g.status.get_or_insert_with(Default::default);
        if st.authorised_by.is_none() {
            st.authorised_by.clone_from(&self.policy);
        }
        if st.approval_deadline.is_none() {
            st.approval_deadline = self.approval_deadline.map(time);
        }
    }
}

/// A rule the controller's re-check found broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The first violated rule's id.
    pub rule: &'static str,
    /// Every violation, as the webhook would list them.
    pub message: String,
}

impl Refusal {
    pub(super) fn from_violations(v: &[crate::policy::Violation]) -> Self {
        Refusal {
            rule: v.first().map_or("unknown", |v| v.rule.id()),
            message: v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        }
    }

    /// The status reason: the rule id first.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.rule, self.message)
    }
}

/// The phase a grant should be in, and why. Pure: the state machine.
/// `grant.status` must be the trusted status ([`trusted`]).
pub fn next_phase(grant: &CapabilityGrant, w: &World<'_>) -> (GrantPhase, String) {
    let status = grant.status.clone().unwrap_or_default();
    let current = status.phase;
    if current.is_terminal() {
        return (current, status.reason.unwrap_or_default());
    }
    let was_active = current == GrantPhase::Active;
    let end_early = |why: String| if was_active { (GrantPhase::Revoked, why) } else { (GrantPhase::Denied, why) };
    if let Err(why) = &w.admitted {
        return end_early(format!("{}: {why}", Rule::NotAdmitted.id()));
    }
    if w.agent.is_none_or(|a| a.metadata.deletion_timestamp.is_some()) {
        return end_early(format!("AgentIdentity {} no longer exists", grant.spec.agent));
    }
    match w.parent {
        Some(None) => {
            return end_early(format!("parent grant {} no longer exists", grant.spec.parent.as_deref().unwrap_or("")))
        }
        Some(Some(p)) => {
            let pp = p.status.as_ref().map(|s| s.phase).unwrap_or_default();
            if pp.is_terminal() || p.metadata.deletion_timestamp.is_some() {
                return end_early(format!("parent grant {} ended ({pp})", p.name_any()));
            }
            if pp != GrantPhase::Active {
                return (current, "waiting for the parent grant to become Active".into());
            }
        }
        None => {}
    }
    if let Err(refusal) = &w.recheck {
        return end_early(refusal.reason());
    }
    if let (Some(held), None) = (status.authorised_by.as_deref(), w.authority.policy.as_deref()) {
        return end_early(format!("DelegationPolicy {held}, which authorised this grant, does not authorise it now"));
    }
    if grant.spec.completed {
        return (GrantPhase::Completed, "the agent marked the task completed".into());
    }
    if w.bound_pod_finished {
        return (GrantPhase::Completed, format!("bound pod {} finished", grant.spec.pod.as_deref().unwrap_or("")));
    }
    match grant.spec.approval.as_ref().map(|a| a.decision) {
        Some(Decision::Denied) => return end_early("an approver denied the grant".into()),
        // An Active grant that its policy now requires approval for was
        // activated without one: it does not fit the policy as it stands.
        None if w.needs_approval && was_active => {
            return end_early("the authorising policy now requires approval for this grant".into())
        }
        None if w.needs_approval => {
            if let Some(deadline) = w.authority.approval_deadline.filter(|d| w.now >= *d) {
                let at = time(deadline).0;
                return (GrantPhase::Denied, format!("{APPROVAL_TIMEOUT_REASON}: no approver decided by {at}"));
            }
            return (GrantPhase::AwaitingApproval, "waiting for an approver".into());
        }
        _ => {}
    }
    if let Some(exp) = status.expires_at.as_ref() {
        if w.now >= unix(exp) {
            return (GrantPhase::Expired, "the grant's TTL ran out".into());
        }
    }
    (GrantPhase::Active, "tokens issued to the bound pods".into())
}

/// Whether a phase change is allowed (the state machine's edges).
pub fn transition_allowed(from: GrantPhase, to: GrantPhase) -> bool {
    use GrantPhase::*;
    if from == to {
        return true;
    }
    match from {
        Pending => true,
        AwaitingApproval => matches!(to, Active | Denied | Revoked | Completed | Expired),
        Active => matches!(to, Completed | Expired | Revoked),
        Completed | Expired | Revoked | Denied => false,
    }
}

/// The status a grant should have. Pure.
pub fn desired_status(
    g: &CapabilityGrant,
    old: &CapabilityGrantStatus,
    phase: GrantPhase,
    reason: &str,
    active: Option<(i64, i64)>,
    tokens: Vec<TokenRecord>,
    now: i64,
) -> CapabilityGrantStatus {
    let mut st = old.clone();
    let gen = g.metadata.generation;
    let now_t = time(now);
    st.phase = phase;
    st.reason = Some(reason.to_string());
    st.observed_generation = gen;
    st.requested_by = g.annotations().get(REQUESTED_BY_ANNOTATION).cloned();
    st.approved_by = g.annotations().get(APPROVED_BY_ANNOTATION).cloned();
    st.requested = g.spec.capabilities.clone();
    st.tokens = tokens;
    if let Some((issued, expires)) = active {
        st.issued_at = Some(time(issued));
        st.expires_at = Some(time(expires));
        st.approved = g.spec.capabilities.clone();
    }
    if matches!(phase, GrantPhase::Revoked) && st.revoked_at.is_none() {
        st.revoked_at = Some(now_t.clone());
    }
    let approved = matches!(phase, GrantPhase::Active) || (old.phase == GrantPhase::Active);
    let approval_reason =
        if g.spec.approval.is_some() { reason::APPROVED_BY_APPROVER } else { reason::NO_APPROVAL_REQUIRED };
    match phase {
        GrantPhase::AwaitingApproval => {
            set_condition(
                &mut st.conditions,
                condition(conditions::APPROVED, false, reason::AWAITING_APPROVAL, reason, gen, now_t.clone()),
            );
        }
        GrantPhase::Denied => {
            let why =
                if reason.starts_with(APPROVAL_TIMEOUT_REASON) { reason::APPROVAL_TIMEOUT } else { reason::DENIED };
            set_condition(&mut st.conditions, condition(conditions::APPROVED, false, why, reason, gen, now_t.clone()));
        }
        _ if approved => {
            set_condition(
                &mut st.conditions,
                condition(conditions::APPROVED, true, approval_reason, "capabilities approved", gen, now_t.clone()),
            );
        }
        _ => {}
    }
    let issued = phase == GrantPhase::Active && !st.tokens.is_empty();
    let issued_msg = if issued { format!("{} token(s) issued", st.tokens.len()) } else { reason.to_string() };
    set_condition(
        &mut st.conditions,
        condition(
            conditions::ISSUED,
            issued,
            if issued { reason::TOKENS_ISSUED } else { reason::NO_TOKENS },
            issued_msg,
            gen,
            now_t.clone(),
        ),
    );
    if phase == GrantPhase::Expired {
        set_condition(
            &mut st.conditions,
            condition(conditions::EXPIRED, true, reason::TTL_ELAPSED, reason, gen, now_t.clone()),
        );
    }
    if matches!(phase, GrantPhase::Revoked | GrantPhase::Completed | GrantPhase::Expired) {
        set_condition(
            &mut st.conditions,
            condition(
                conditions::REVOKED,
                true,
                phase.as_str(),
                "every token of this grant is on the revocation list",
                gen,
                now_t,
            ),
        );
    }
    st
}

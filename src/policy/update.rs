//! Updates of an admitted grant: the spec is immutable except completion and
//! the one approval step; the admission stamps are immutable.

use jiff::Timestamp;

use crate::api::{
    AgentIdentity, CapabilityGrant, CapabilityGrantSpec, Decision, DelegationPolicy, APPROVED_BY_ANNOTATION,
    REQUESTED_BY_ANNOTATION, REQUESTED_GROUPS_ANNOTATION,
};

use super::grant::{
    annotation_field, authorising_policy, check_free_text, policy_requires_approval, stamped_requester,
};
use super::requester::{principal_field, PrincipalField, Requester, SERVICE_ACCOUNT_PREFIX};
use super::rules::{Rule, Violation};
use super::Limits;

/// Everything [`admit_grant_update`] needs besides the two versions of the
/// grant, resolved by the caller (the webhook from its caches).
#[derive(Clone, Copy, Debug)]
pub struct UpdateContext<'a> {
    /// The authenticated user of the update request.
    pub requester: &'a Requester,
    /// The AgentIdentities of the grant's namespace: they resolve the agent
    /// behind the grant's stamped requester.
    pub identities: &'a [AgentIdentity],
    /// The DelegationPolicies of the grant's namespace.
    pub policies: &'a [DelegationPolicy],
    /// The current time (approval deadlines are judged against it).
    pub now: Timestamp,
    /// The operator's hard limits (the longest approval wait).
    pub limits: &'a Limits,
}

/// When a grant that needs approval under `policy` stops waiting, unix
/// seconds: `status.approvalDeadline` once the controller recorded it (held
/// to), otherwise creation + the policy's `approval.timeout`; never later
/// than creation + the operator's `max_approval_wait`. `None` when the
/// policy has no approval section, or the grant no creation time (not yet
/// stored).
pub fn approval_deadline(grant: &CapabilityGrant, policy: &DelegationPolicy, limits: &Limits) -> Option<i64> {
    let approval = policy.spec.approval.as_ref()?;
    let created = grant.metadata.creation_timestamp.as_ref()?.0.as_second();
    let longest = created.saturating_add(limits.max_approval_wait.as_secs_i64());
    let recorded = grant.status.as_ref().and_then(|s| s.approval_deadline.as_ref()).map(|t| t.0.as_second());
    Some(recorded.unwrap_or_else(|| created.saturating_add(approval.timeout().as_secs_i64())).min(longest))
}

/// What an allowed update does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateKind {
    /// `spec.completed` went from false to true: the task is done.
    Completion,
    /// The approval decision was set (once) by an allowed approver.
    Approval(Decision),
    /// The spec did not change (status, labels, finalizers, other annotations).
    NoSpecChange,
}

/// Decides whether an update of an admitted grant is allowed.
///
/// * The spec may change only by `completed: false -> true` or by setting
///   `approval` once (the decision is final); one of the two per update.
/// * `writ.dev/requested-by` and `writ.dev/requested-by-groups` never change;
///   `writ.dev/approved-by` appears only with the approval step and must then
///   name the authenticated approver (the mutating webhook stamps it), and
///   never changes afterwards.
/// * An approval (or denial) must come from a person listed as approver by
///   the policy that authorises the grant ([`authorising_policy`]: for its
///   stamped requester and its agent, as recorded in `status.authorisedBy`
///   once the controller has seen the grant), which must require approval
///   for it; never from the requester (the `writ.dev/requested-by` stamp of
///   `old`) nor from the agent the grant is for. An approver of another
///   policy that merely delegates to the same agent is `not-an-approver`.
/// * It must come before the grant's approval deadline ([`approval_deadline`]),
///   else `approval-timeout`.
pub fn admit_grant_update(
    old: &CapabilityGrant,
    new: &CapabilityGrant,
    ctx: &UpdateContext<'_>,
) -> Result<UpdateKind, Vec<Violation>> {
    let requester = ctx.requester;
    let mut out = Vec::new();
    check_immutable_fields(&old.spec, &new.spec, &mut out);
    let completion = !old.spec.completed && new.spec.completed;
    let approval_step = old.spec.approval.is_none() && new.spec.approval.is_some();
    if completion && approval_step {
        out.push(Violation::new(
            "spec",
            Rule::ImmutableSpec,
            "complete and approve a grant in separate updates, one step at a time",
        ));
    }
    check_stamps(old, new, requester, approval_step, &mut out);
    if let Some(reason) = new.spec.approval.as_ref().and_then(|a| a.reason.as_deref()).filter(|_| approval_step) {
        check_free_text("spec.approval.reason", reason, &mut out);
    }
    if approval_step {
        check_approver(old, new, ctx, &mut out);
    }
    if !out.is_empty() {
        return Err(out);
    }
    Ok(match &new.spec.approval {
        Some(a) if approval_step => UpdateKind::Approval(a.decision),
        _ if completion => UpdateKind::Completion,
        _ => UpdateKind::NoSpecChange,
    })
}

fn check_immutable_fields(old: &CapabilityGrantSpec, new: &CapabilityGrantSpec, out: &mut Vec<Violation>) {
    let changed = [
        ("spec.agent", old.agent != new.agent),
        ("spec.task", old.task != new.task),
        ("spec.capabilities", old.capabilities != new.capabilities),
        ("spec.audiences", old.audiences != new.audiences),
        ("spec.ttl", old.ttl != new.ttl),
        ("spec.pod", old.pod != new.pod),
        ("spec.parent", old.parent != new.parent),
    ];
    for (field, _) in changed.iter().filter(|(_, changed)| *changed) {
        out.push(Violation::new(
            *field,
            Rule::ImmutableSpec,
            format!("{field} cannot change once a grant is admitted; ask for a new grant"),
        ));
    }
    if old.completed && !new.completed {
        out.push(Violation::new("spec.completed", Rule::ImmutableSpec, "a completed grant cannot be reopened"));
    }
    if old.approval.is_some() && old.approval != new.approval {
        out.push(Violation::new("spec.approval", Rule::ImmutableSpec, "the approval decision is final"));
    }
}

fn check_stamps(
    old: &CapabilityGrant,
    new: &CapabilityGrant,
    requester: &Requester,
    approval_step: bool,
    out: &mut Vec<Violation>,
) {
    let get = |g: &CapabilityGrant, key: &str| g.metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned();
    for key in [REQUESTED_BY_ANNOTATION, REQUESTED_GROUPS_ANNOTATION] {
        if get(old, key) != get(new, key) {
            out.push(Violation::new(annotation_field(key), Rule::ImmutableStamp, "an admission stamp cannot change"));
        }
    }
    let field = annotation_field(APPROVED_BY_ANNOTATION);
    match (get(old, APPROVED_BY_ANNOTATION), get(new, APPROVED_BY_ANNOTATION)) {
        (Some(before), after) if after.as_ref() != Some(&before) => {
            out.push(Violation::new(field, Rule::ImmutableStamp, "the approver stamp cannot change"));
        }
        (Some(_), _) => {}
        (None, Some(stamped)) if !approval_step => {
            out.push(Violation::new(
                field,
                Rule::ImmutableStamp,
                format!("approver stamp {stamped:?} without an approval decision"),
            ));
        }
        (None, Some(stamped)) if stamped != requester.username => out.push(Violation::new(
            field,
            Rule::ImmutableStamp,
            format!("approver stamp {stamped:?} but the approval was authenticated as {:?}", requester.username),
        )),
        (None, None) if approval_step => out.push(Violation::new(
            field,
            Rule::ImmutableStamp,
            "an approval decision must carry the approver stamp written by the admission webhook",
        )),
        (None, _) => {}
    }
}

fn check_approver(old: &CapabilityGrant, new: &CapabilityGrant, ctx: &UpdateContext<'_>, out: &mut Vec<Violation>) {
    let field = "spec.approval";
    let approver = ctx.requester;
    let requested_by = old.metadata.annotations.as_ref().and_then(|a| a.get(REQUESTED_BY_ANNOTATION));
    match requested_by {
        None => {
            out.push(Violation::new(
                field,
                Rule::SelfApproval,
                "the grant has no writ.dev/requested-by stamp, so the approver cannot be shown to differ from the \
                 requester",
            ));
            return;
        }
        Some(r) if *r == approver.username => out.push(Violation::new(
            field,
            Rule::SelfApproval,
            format!("{} requested this grant and cannot approve it", approver.username),
        )),
        Some(_) => {}
    }
    if approver.agent.as_deref() == Some(new.spec.agent.as_str()) {
        out.push(Violation::new(
            field,
            Rule::SelfApproval,
            format!("agent {} cannot approve a grant to itself", new.spec.agent),
        ));
    }
    let Some(policy) = authorising_policy(old, ctx.identities, ctx.policies) else {
        let requester = stamped_requester(old, ctx.identities)
            .map_or_else(|| "its (unstamped) requester".to_string(), |r| r.to_string());
        out.push(Violation::new(
            field,
            Rule::NotAnApprover,
            format!(
                "no DelegationPolicy authorises this grant for {requester} and agent {}, so nobody can approve it",
                new.spec.agent
            ),
        ));
        return;
    };
    let name = policy.metadata.name.as_deref().unwrap_or("?");
    if !policy_requires_approval(policy, new) {
        out.push(Violation::new(
            field,
            Rule::ApprovalNotRequired,
            format!("DelegationPolicy {name}, which authorises this grant, requires no approval for it"),
        ));
        return;
    }
    if let Some(deadline) = approval_deadline(old, policy, ctx.limits).filter(|d| ctx.now.as_second() >= *d) {
        let at = Timestamp::from_second(deadline).map_or_else(|_| deadline.to_string(), |t| t.to_string());
        out.push(Violation::new(
            field,
            Rule::ApprovalTimeout,
            format!("the approval deadline {at} has passed, so the grant ends Denied; ask for a new grant"),
        ));
    }
    if approver.username.starts_with(SERVICE_ACCOUNT_PREFIX) {
        out.push(Violation::new(
            field,
            Rule::NotAnApprover,
            format!("{} is a service account; approvals must come from a person", approver.username),
        ));
        return;
    }
    let listed = policy.spec.approval.iter().flat_map(|a| &a.approvers).any(|a| {
        matches!(principal_field(a), Some(PrincipalField::User(_) | PrincipalField::Group(_))) && approver.is(a)
    });
    if !listed {
        out.push(Violation::new(
            field,
            Rule::NotAnApprover,
            format!("{approver} is not an approver of DelegationPolicy {name}, which authorises this grant"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApprovalDecision, Duration};
    use crate::policy::testing::*;

    fn policies() -> Vec<DelegationPolicy> {
        vec![with_approval(
            policy(
                "ci",
                "release-flow",
                vec![group("release-managers")],
                &["release-bot"],
                &[("k8s:deployments.*", "k8s:staging/deployments/*")],
                Duration::from_mins(30),
            ),
            &[("k8s:deployments.delete", "*")],
            vec![group("sre-oncall")],
        )]
    }

    fn admitted(action: &str) -> CapabilityGrant {
        let g = grant("ci", "g1", "release-bot", &[(action, "k8s:staging/deployments/web")], Duration::from_mins(15));
        annotate(annotate(g, REQUESTED_BY_ANNOTATION, "alice"), REQUESTED_GROUPS_ANNOTATION, "release-managers")
    }

    fn approve(g: &CapabilityGrant, decision: Decision, by: &str) -> CapabilityGrant {
        let mut new = annotate(g.clone(), APPROVED_BY_ANNOTATION, by);
        new.spec.approval = Some(ApprovalDecision { decision, reason: Some("looks right".into()) });
        new
    }

    fn bob() -> Requester {
        Requester::user("bob", ["sre-oncall"])
    }

    /// [`admit_grant_update`] at [`now`], with the default limits and no identities.
    fn update(
        old: &CapabilityGrant,
        new: &CapabilityGrant,
        who: &Requester,
        policies: &[DelegationPolicy],
    ) -> Result<UpdateKind, Vec<Violation>> {
        update_at(old, new, who, &[], policies, now())
    }

    fn update_at(
        old: &CapabilityGrant,
        new: &CapabilityGrant,
        who: &Requester,
        identities: &[AgentIdentity],
        policies: &[DelegationPolicy],
        at: Timestamp,
    ) -> Result<UpdateKind, Vec<Violation>> {
        let limits = Limits::default();
        let ctx = UpdateContext { requester: who, identities, policies, now: at, limits: &limits };
        admit_grant_update(old, new, &ctx)
    }

    /// A `qa` policy: QA may hand the same agent the same work, and its own
    /// leads approve deletions.
    fn qa(name: &str) -> DelegationPolicy {
        with_approval(
            policy(
                "ci",
                name,
                vec![group("qa")],
                &["release-bot"],
                &[("k8s:deployments.*", "k8s:staging/deployments/*")],
                Duration::from_mins(30),
            ),
            &[("k8s:deployments.delete", "*")],
            vec![group("qa-leads")],
        )
    }

    #[test]
    fn an_approver_of_an_unrelated_policy_for_the_same_agent_cannot_approve_or_deny() {
        let old = admitted("k8s:deployments.delete");
        // Sorted before release-flow, and sorted after: neither makes dave an approver.
        for name in ["a-qa", "qa"] {
            let mut policies = policies();
            policies.push(qa(name));
            let dave = Requester::user("dave", ["qa-leads"]);
            for decision in [Decision::Approved, Decision::Denied] {
                let v = update(&old, &approve(&old, decision, "dave"), &dave, &policies).unwrap_err();
                assert_eq!(ids(&v), vec!["not-an-approver"], "{decision:?} under {name}");
                assert!(v[0].message.contains("DelegationPolicy release-flow, which authorises"), "{}", v[0]);
            }
            // The authorising policy's approver still decides.
            let ok = update(&old, &approve(&old, Decision::Approved, "bob"), &bob(), &policies);
            assert_eq!(ok, Ok(UpdateKind::Approval(Decision::Approved)));
        }
        // A grant QA asked for is QA's leads' to decide, and not SRE's.
        let mut policies = policies();
        policies.push(qa("qa"));
        let by_qa =
            annotate(annotate(old.clone(), REQUESTED_BY_ANNOTATION, "quinn"), REQUESTED_GROUPS_ANNOTATION, "qa");
        let dave = Requester::user("dave", ["qa-leads"]);
        assert!(update(&by_qa, &approve(&by_qa, Decision::Approved, "dave"), &dave, &policies).is_ok());
        let v = update(&by_qa, &approve(&by_qa, Decision::Approved, "bob"), &bob(), &policies).unwrap_err();
        assert_eq!(ids(&v), vec!["not-an-approver"]);
    }

    #[test]
    fn the_policy_recorded_in_status_is_held_to() {
        let mut old = admitted("k8s:deployments.delete");
        // A later policy that also lets alice delegate, sorted first, with other approvers.
        let mut later = qa("a-later");
        later.spec.delegators = vec![group("release-managers")];
        let mut policies = policies();
        policies.push(later);
        let dave = Requester::user("dave", ["qa-leads"]);
        assert!(
            update(&old, &approve(&old, Decision::Approved, "dave"), &dave, &policies).is_ok(),
            "without a record, the first authorising policy by name decides"
        );
        old.status = Some(crate::api::CapabilityGrantStatus {
            authorised_by: Some("release-flow".into()),
            ..Default::default()
        });
        let v = update(&old, &approve(&old, Decision::Approved, "dave"), &dave, &policies).unwrap_err();
        assert_eq!(ids(&v), vec!["not-an-approver"]);
        assert!(update(&old, &approve(&old, Decision::Approved, "bob"), &bob(), &policies).is_ok());
        // The recorded policy no longer authorises the grant: nobody decides.
        let v = update(&old, &approve(&old, Decision::Approved, "bob"), &bob(), &[qa("qa")]).unwrap_err();
        assert_eq!(ids(&v), vec!["not-an-approver"]);
        assert!(v[0].message.contains("no DelegationPolicy authorises this grant for user alice"), "{}", v[0]);
    }

    #[test]
    fn an_agents_grant_is_judged_with_the_agent_resolved_from_its_stamp() {
        let planner_sa = "system:serviceaccount:ci:planner";
        let old = annotate(admitted("k8s:deployments.delete"), REQUESTED_BY_ANNOTATION, planner_sa);
        let old = annotate(old, REQUESTED_GROUPS_ANNOTATION, "system:serviceaccounts");
        let mut policies = policies();
        policies[0].spec.delegators.push(agent("planner"));
        let identities = [identity("ci", "planner", &[])];
        let new = approve(&old, Decision::Approved, "bob");
        assert!(update_at(&old, &new, &bob(), &identities, &policies, now()).is_ok());
        // Without the identity the service account is no agent, and no policy lets it delegate.
        assert_eq!(ids(&update_at(&old, &new, &bob(), &[], &policies, now()).unwrap_err()), vec!["not-an-approver"]);
    }

    #[test]
    fn a_decision_after_the_approval_deadline_is_refused() {
        let mut old = admitted("k8s:deployments.delete");
        old.metadata.creation_timestamp = Some(at(-3600));
        let new = approve(&old, Decision::Approved, "bob");
        let err = |at: Timestamp, policies: &[DelegationPolicy], old: &CapabilityGrant| {
            let new = approve(old, Decision::Approved, "bob");
            update_at(old, &new, &bob(), &[], policies, at).map_err(|v| ids(&v))
        };
        // The default timeout is one hour from creation.
        assert!(update_at(
            &old,
            &new,
            &bob(),
            &[],
            &policies(),
            Timestamp::from_second(now().as_second() - 1).expect("t")
        )
        .is_ok());
        let v = update_at(&old, &new, &bob(), &[], &policies(), now()).unwrap_err();
        assert_eq!(ids(&v), vec!["approval-timeout"]);
        assert!(v[0].message.contains("2030-01-01T00:00:00Z has passed"), "{}", v[0]);
        let denied = approve(&old, Decision::Denied, "bob");
        assert_eq!(
            ids(&update_at(&old, &denied, &bob(), &[], &policies(), now()).unwrap_err()),
            vec!["approval-timeout"]
        );
        // A policy's own timeout.
        let mut short = policies();
        short[0].spec.approval.as_mut().expect("approval").timeout = Some(Duration::from_mins(5));
        let five_past = Timestamp::from_second(now().as_second() - 3600 + 300).expect("t");
        assert_eq!(err(five_past, &short, &old), Err(vec!["approval-timeout"]));
        // A recorded deadline is held to, but never beyond the operator's maximum.
        old.status = Some(crate::api::CapabilityGrantStatus { approval_deadline: Some(at(600)), ..Default::default() });
        assert_eq!(err(now(), &policies(), &old), Ok(UpdateKind::Approval(Decision::Approved)));
        assert_eq!(
            err(Timestamp::from_second(now().as_second() + 600).expect("t"), &policies(), &old),
            Err(vec!["approval-timeout"])
        );
        old.status =
            Some(crate::api::CapabilityGrantStatus { approval_deadline: Some(at(86_400 * 7)), ..Default::default() });
        let a_day_on = Timestamp::from_second(now().as_second() - 3600 + 86_400).expect("t");
        assert_eq!(err(a_day_on, &policies(), &old), Err(vec!["approval-timeout"]));
    }

    #[test]
    fn the_approval_deadline_is_creation_plus_the_policys_timeout_within_the_maximum() {
        let mut g = admitted("k8s:deployments.delete");
        let mut p = policies().remove(0);
        let limits = Limits::default();
        assert_eq!(approval_deadline(&g, &p, &limits), None, "not stored yet");
        g.metadata.creation_timestamp = Some(at(0));
        assert_eq!(approval_deadline(&g, &p, &limits), Some(now().as_second() + 3600));
        p.spec.approval.as_mut().expect("approval").timeout = Some(Duration::from_secs(3));
        assert_eq!(approval_deadline(&g, &p, &limits), Some(now().as_second() + 3));
        p.spec.approval.as_mut().expect("approval").timeout = Some(Duration::from_hours(48));
        assert_eq!(approval_deadline(&g, &p, &limits), Some(now().as_second() + 86_400), "capped at the maximum");
        p.spec.approval = None;
        assert_eq!(approval_deadline(&g, &p, &limits), None, "nothing to wait for");
    }

    #[test]
    fn a_listed_approver_may_approve_or_deny_once() {
        let old = admitted("k8s:deployments.delete");
        let new = approve(&old, Decision::Approved, "bob");
        assert_eq!(update(&old, &new, &bob(), &policies()), Ok(UpdateKind::Approval(Decision::Approved)));
        let denied = approve(&old, Decision::Denied, "bob");
        assert_eq!(update(&old, &denied, &bob(), &policies()), Ok(UpdateKind::Approval(Decision::Denied)));
        let mut flipped = new.clone();
        flipped.spec.approval = Some(ApprovalDecision { decision: Decision::Denied, reason: None });
        let v = update(&new, &flipped, &bob(), &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["immutable-spec"]);
    }

    #[test]
    fn the_requester_cannot_approve_their_own_grant() {
        let old = admitted("k8s:deployments.delete");
        let alice = Requester::user("alice", ["sre-oncall"]);
        let v = update(&old, &approve(&old, Decision::Approved, "alice"), &alice, &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["self-approval"]);
        assert!(v[0].to_string().starts_with("spec.approval: alice requested this grant"), "{}", v[0]);
    }

    #[test]
    fn the_agent_cannot_approve_its_own_grant_nor_can_service_accounts() {
        let old = admitted("k8s:deployments.delete");
        let bot = Requester {
            username: "system:serviceaccount:ci:release-bot".into(),
            groups: vec!["sre-oncall".into()],
            agent: Some("release-bot".into()),
        };
        let new = approve(&old, Decision::Approved, &bot.username);
        let v = update(&old, &new, &bot, &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["self-approval", "not-an-approver"]);
    }

    #[test]
    fn approval_without_a_requester_stamp_is_refused() {
        let mut old = admitted("k8s:deployments.delete");
        old.metadata.annotations = None;
        let new = approve(&old, Decision::Approved, "bob");
        let v = update(&old, &new, &bob(), &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["self-approval"]);
    }

    #[test]
    fn someone_not_listed_cannot_approve() {
        let old = admitted("k8s:deployments.delete");
        let carol = Requester::user("carol", ["developers"]);
        let v = update(&old, &approve(&old, Decision::Approved, "carol"), &carol, &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["not-an-approver"]);
        assert!(v[0].message.contains("release-flow"), "{}", v[0]);
    }

    #[test]
    fn approving_a_grant_that_needs_no_approval_is_refused() {
        let old = admitted("k8s:deployments.patch");
        let v = update(&old, &approve(&old, Decision::Approved, "bob"), &bob(), &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["approval-not-required"]);
    }

    #[test]
    fn approver_stamp_must_name_the_approver_and_come_with_the_decision() {
        let old = admitted("k8s:deployments.delete");
        let forged = approve(&old, Decision::Approved, "sre-lead");
        assert_eq!(ids(&update(&old, &forged, &bob(), &policies()).unwrap_err()), vec!["immutable-stamp"]);
        let mut unstamped = old.clone();
        unstamped.spec.approval = Some(ApprovalDecision { decision: Decision::Approved, reason: None });
        assert_eq!(ids(&update(&old, &unstamped, &bob(), &policies()).unwrap_err()), vec!["immutable-stamp"]);
        let stamp_only = annotate(old.clone(), APPROVED_BY_ANNOTATION, "bob");
        assert_eq!(ids(&update(&old, &stamp_only, &bob(), &policies()).unwrap_err()), vec!["immutable-stamp"]);
        let approved = approve(&old, Decision::Approved, "bob");
        let restamped = annotate(approved.clone(), APPROVED_BY_ANNOTATION, "mallory");
        assert_eq!(ids(&update(&approved, &restamped, &bob(), &policies()).unwrap_err()), vec!["immutable-stamp"]);
    }

    #[test]
    fn requester_stamps_are_immutable() {
        let old = admitted("k8s:deployments.patch");
        let new = annotate(old.clone(), REQUESTED_BY_ANNOTATION, "mallory");
        let new = annotate(new, REQUESTED_GROUPS_ANNOTATION, "sre-oncall");
        let v = update(&old, &new, &bob(), &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["immutable-stamp", "immutable-stamp"]);
    }

    #[test]
    fn completion_is_allowed_once_and_never_undone() {
        let old = admitted("k8s:deployments.patch");
        let mut done = old.clone();
        done.spec.completed = true;
        let agent = Requester::user("system:serviceaccount:ci:release-bot", Vec::<String>::new());
        assert_eq!(update(&old, &done, &agent, &policies()), Ok(UpdateKind::Completion));
        let v = update(&done, &old, &agent, &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["immutable-spec"]);
    }

    #[test]
    fn completing_and_approving_at_once_is_refused() {
        let old = admitted("k8s:deployments.delete");
        let mut new = approve(&old, Decision::Approved, "bob");
        new.spec.completed = true;
        assert_eq!(ids(&update(&old, &new, &bob(), &policies()).unwrap_err()), vec!["immutable-spec"]);
    }

    #[test]
    fn any_other_spec_change_is_refused_field_by_field() {
        let old = admitted("k8s:deployments.patch");
        let mut new = old.clone();
        new.spec.capabilities.push(crate::api::Capability::new("k8s:deployments.delete", "k8s:prod/deployments/web"));
        new.spec.ttl = Duration::from_hours(1);
        new.spec.audiences.push("other".into());
        new.spec.agent = "other-bot".into();
        new.spec.task.id = "PR-9".into();
        new.spec.pod = Some("p".into());
        new.spec.parent = Some("x".into());
        let v = update(&old, &new, &bob(), &policies()).unwrap_err();
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.agent",
                "spec.task",
                "spec.capabilities",
                "spec.audiences",
                "spec.ttl",
                "spec.pod",
                "spec.parent"
            ]
        );
        assert!(v.iter().all(|v| v.rule == Rule::ImmutableSpec));
    }

    #[test]
    fn metadata_and_status_only_updates_are_allowed() {
        let old = admitted("k8s:deployments.patch");
        let mut new = annotate(old.clone(), "example.com/note", "hi");
        new.metadata.finalizers = Some(vec!["writ.dev/revoke".into()]);
        new.metadata.labels = Some([("team".to_string(), "web".to_string())].into());
        new.status = Some(Default::default());
        assert_eq!(update(&old, &new, &bob(), &policies()), Ok(UpdateKind::NoSpecChange));
    }
}

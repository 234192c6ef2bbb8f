//! Updates of an admitted grant: the spec is immutable except completion and
//! the one approval step; the admission stamps are immutable.

use crate::api::{
    CapabilityGrant, CapabilityGrantSpec, Decision, DelegationPolicy, APPROVED_BY_ANNOTATION, REQUESTED_BY_ANNOTATION,
    REQUESTED_GROUPS_ANNOTATION,
};

use super::grammar::CapabilityPattern;
use super::grant::{annotation_field, check_free_text, policy_requires_approval};
use super::requester::{delegate_matches, principal_field, PrincipalField, Requester, SERVICE_ACCOUNT_PREFIX};
use super::rules::{Rule, Violation};

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
/// * An approval (or denial) must come from a person listed as approver by a
///   policy of the grant's namespace that delegates to the grant's agent,
///   covers all its capabilities and its ttl, and requires approval for one
///   of them; never from the requester (the `writ.dev/requested-by` stamp of
///   `old`) nor from the agent the grant is for.
///
/// `requester` is the authenticated user of the update request.
pub fn admit_grant_update(
    old: &CapabilityGrant,
    new: &CapabilityGrant,
    requester: &Requester,
    policies: &[DelegationPolicy],
) -> Result<UpdateKind, Vec<Violation>> {
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
        check_approver(old, new, requester, policies, &mut out);
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

fn check_approver(
    old: &CapabilityGrant,
    new: &CapabilityGrant,
    approver: &Requester,
    policies: &[DelegationPolicy],
    out: &mut Vec<Violation>,
) {
    let field = "spec.approval";
    let requested_by = old.metadata.annotations.as_ref().and_then(|a| a.get(REQUESTED_BY_ANNOTATION));
    match requested_by {
        None => out.push(Violation::new(
            field,
            Rule::SelfApproval,
            "the grant has no writ.dev/requested-by stamp, so the approver cannot be shown to differ from the requester",
        )),
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
    let namespace = new.metadata.namespace.as_deref();
    let requiring: Vec<&DelegationPolicy> = policies
        .iter()
        .filter(|p| namespace.is_none() || p.metadata.namespace.as_deref().is_none_or(|ns| Some(ns) == namespace))
        .filter(|p| authorises(p, new) && policy_requires_approval(p, new))
        .collect();
    if requiring.is_empty() {
        out.push(Violation::new(
            field,
            Rule::ApprovalNotRequired,
            "no DelegationPolicy requires approval for this grant, so there is nothing to approve",
        ));
        return;
    }
    if approver.username.starts_with(SERVICE_ACCOUNT_PREFIX) {
        out.push(Violation::new(
            field,
            Rule::NotAnApprover,
            format!("{} is a service account; approvals must come from a person", approver.username),
        ));
        return;
    }
    let listed = requiring.iter().any(|p| {
        p.spec.approval.iter().flat_map(|a| &a.approvers).any(|a| {
            matches!(principal_field(a), Some(PrincipalField::User(_) | PrincipalField::Group(_))) && approver.is(a)
        })
    });
    if !listed {
        let names: Vec<&str> = requiring.iter().map(|p| p.metadata.name.as_deref().unwrap_or("?")).collect();
        out.push(Violation::new(
            field,
            Rule::NotAnApprover,
            format!("{approver} is not an approver of DelegationPolicy {}", names.join(", ")),
        ));
    }
}

/// Whether a policy could have authorised the grant, as far as can be told
/// without the original requester's agent: it delegates to the grant's agent,
/// covers every capability and allows the ttl.
fn authorises(policy: &DelegationPolicy, grant: &CapabilityGrant) -> bool {
    let patterns: Vec<CapabilityPattern> =
        policy.spec.capabilities.iter().filter_map(|c| CapabilityPattern::parse(c).ok()).collect();
    policy.spec.delegates.iter().any(|d| delegate_matches(d, &grant.spec.agent))
        && grant.spec.ttl <= policy.spec.max_ttl
        && grant.spec.capabilities.iter().all(|c| patterns.iter().any(|p| p.matches(c)))
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

    #[test]
    fn a_listed_approver_may_approve_or_deny_once() {
        let old = admitted("k8s:deployments.delete");
        let new = approve(&old, Decision::Approved, "bob");
        assert_eq!(admit_grant_update(&old, &new, &bob(), &policies()), Ok(UpdateKind::Approval(Decision::Approved)));
        let denied = approve(&old, Decision::Denied, "bob");
        assert_eq!(admit_grant_update(&old, &denied, &bob(), &policies()), Ok(UpdateKind::Approval(Decision::Denied)));
        let mut flipped = new.clone();
        flipped.spec.approval = Some(ApprovalDecision { decision: Decision::Denied, reason: None });
        let v = admit_grant_update(&new, &flipped, &bob(), &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["immutable-spec"]);
    }

    #[test]
    fn the_requester_cannot_approve_their_own_grant() {
        let old = admitted("k8s:deployments.delete");
        let alice = Requester::user("alice", ["sre-oncall"]);
        let v = admit_grant_update(&old, &approve(&old, Decision::Approved, "alice"), &alice, &policies()).unwrap_err();
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
        let v = admit_grant_update(&old, &new, &bot, &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["self-approval", "not-an-approver"]);
    }

    #[test]
    fn approval_without_a_requester_stamp_is_refused() {
        let mut old = admitted("k8s:deployments.delete");
        old.metadata.annotations = None;
        let new = approve(&old, Decision::Approved, "bob");
        let v = admit_grant_update(&old, &new, &bob(), &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["self-approval"]);
    }

    #[test]
    fn someone_not_listed_cannot_approve() {
        let old = admitted("k8s:deployments.delete");
        let carol = Requester::user("carol", ["developers"]);
        let v = admit_grant_update(&old, &approve(&old, Decision::Approved, "carol"), &carol, &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["not-an-approver"]);
        assert!(v[0].message.contains("release-flow"), "{}", v[0]);
    }

    #[test]
    fn approving_a_grant_that_needs_no_approval_is_refused() {
        let old = admitted("k8s:deployments.patch");
        let v = admit_grant_update(&old, &approve(&old, Decision::Approved, "bob"), &bob(), &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["approval-not-required"]);
    }

    #[test]
    fn approver_stamp_must_name_the_approver_and_come_with_the_decision() {
        let old = admitted("k8s:deployments.delete");
        let forged = approve(&old, Decision::Approved, "sre-lead");
        assert_eq!(ids(&admit_grant_update(&old, &forged, &bob(), &policies()).unwrap_err()), vec!["immutable-stamp"]);
        let mut unstamped = old.clone();
        unstamped.spec.approval = Some(ApprovalDecision { decision: Decision::Approved, reason: None });
        assert_eq!(
            ids(&admit_grant_update(&old, &unstamped, &bob(), &policies()).unwrap_err()),
            vec!["immutable-stamp"]
        );
        let stamp_only = annotate(old.clone(), APPROVED_BY_ANNOTATION, "bob");
        assert_eq!(
            ids(&admit_grant_update(&old, &stamp_only, &bob(), &policies()).unwrap_err()),
            vec!["immutable-stamp"]
        );
        let approved = approve(&old, Decision::Approved, "bob");
        let restamped = annotate(approved.clone(), APPROVED_BY_ANNOTATION, "mallory");
        assert_eq!(
            ids(&admit_grant_update(&approved, &restamped, &bob(), &policies()).unwrap_err()),
            vec!["immutable-stamp"]
        );
    }

    #[test]
    fn requester_stamps_are_immutable() {
        let old = admitted("k8s:deployments.patch");
        let new = annotate(old.clone(), REQUESTED_BY_ANNOTATION, "mallory");
        let new = annotate(new, REQUESTED_GROUPS_ANNOTATION, "sre-oncall");
        let v = admit_grant_update(&old, &new, &bob(), &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["immutable-stamp", "immutable-stamp"]);
    }

    #[test]
    fn completion_is_allowed_once_and_never_undone() {
        let old = admitted("k8s:deployments.patch");
        let mut done = old.clone();
        done.spec.completed = true;
        let agent = Requester::user("system:serviceaccount:ci:release-bot", Vec::<String>::new());
        assert_eq!(admit_grant_update(&old, &done, &agent, &policies()), Ok(UpdateKind::Completion));
        let v = admit_grant_update(&done, &old, &agent, &policies()).unwrap_err();
        assert_eq!(ids(&v), vec!["immutable-spec"]);
    }

    #[test]
    fn completing_and_approving_at_once_is_refused() {
        let old = admitted("k8s:deployments.delete");
        let mut new = approve(&old, Decision::Approved, "bob");
        new.spec.completed = true;
        assert_eq!(ids(&admit_grant_update(&old, &new, &bob(), &policies()).unwrap_err()), vec!["immutable-spec"]);
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
        let v = admit_grant_update(&old, &new, &bob(), &policies()).unwrap_err();
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
        assert_eq!(admit_grant_update(&old, &new, &bob(), &policies()), Ok(UpdateKind::NoSpecChange));
    }
}

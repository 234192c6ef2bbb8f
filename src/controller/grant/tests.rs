//! The grant controller's tests: the pure state machine as tables, and
//! reconciles against a mocked API server.

use kube::runtime::finalizer;

use super::*;

fn api_error(code: u16, reason: &str) -> kube::Error {
    let mut status = kube::core::Status::failure("capabilitygrants.writ.dev \"g\" ...", reason);
    status.code = code;
    kube::Error::Api(status.boxed())
}

/// One event of the grant state machine, applied to a grant and its world.
#[derive(Clone, Copy, Debug)]
enum Ev {
    Nothing,
    Completion,
    Expiry,
    NeedsApproval,
    Approval,
    Denial,
    ParentEnded,
    ParentPending,
    AgentGone,
    PolicyGone,
    RecheckFailed,
    NotAdmitted,
    BoundPodFinished,
    /// Approval needed, none given, and the approval deadline has come.
    ApprovalTimeout,
    /// An approval given before the deadline, reconciled after it.
    ApprovalAfterDeadline,
    /// The policy recorded in status no longer authorises the grant.
    HeldPolicyGone,
}

fn case(phase: GrantPhase, ev: Ev) -> (GrantPhase, String) {
    use crate::api::{ApprovalDecision, CapabilityGrantStatus};
    use crate::policy::testing::{grant as make, identity};
    let agent = identity("ns", "bot", &[]);
    let mut g = make(
        "ns",
        "g",
        "bot",
        &[("k8s:deployments.get", "k8s:staging/deployments/web")],
        crate::api::Duration::from_secs(600),
    );
    let now = 1_000;
    let mut status = CapabilityGrantStatus { phase, ..Default::default() };
    if phase == GrantPhase::Active {
        status.issued_at = Some(time(now - 10));
        status.expires_at = Some(time(now + 590));
    }
    let mut parent = make("ns", "p", "planner", &[], crate::api::Duration::from_secs(600));
    parent.status = Some(CapabilityGrantStatus { phase: GrantPhase::Active, ..Default::default() });
    let mut w = World {
        agent: Some(&agent),
        parent: None,
        admitted: Ok(()),
        recheck: Ok(()),
        needs_approval: false,
        bound_pod_finished: false,
        now,
        authority: Authority {
            policy: Some("release-flow".into()),
            needs_approval: Some(false),
            approval_deadline: None,
        },
    };
    let refusal = |rule: &'static str| Refusal { rule, message: format!("broken [{rule}]") };
    match ev {
        Ev::Nothing => {}
        Ev::Completion => g.spec.completed = true,
        Ev::Expiry => status.expires_at = Some(time(now)),
        Ev::NeedsApproval => w.needs_approval = true,
        Ev::Approval | Ev::Denial => {
            w.needs_approval = true;
            let decision = if matches!(ev, Ev::Approval) { Decision::Approved } else { Decision::Denied };
            g.spec.approval = Some(ApprovalDecision { decision, reason: None });
        }
        Ev::ParentEnded | Ev::ParentPending => {
            let st = parent.status.as_mut().expect("status");
            st.phase = if matches!(ev, Ev::ParentEnded) { GrantPhase::Expired } else { GrantPhase::Pending };
        }
        Ev::AgentGone => w.agent = None,
        Ev::PolicyGone => w.recheck = Err(refusal("no-delegation-policy")),
        Ev::RecheckFailed => w.recheck = Err(refusal("outside-ceiling")),
        Ev::NotAdmitted => w.admitted = Err("its admission seal is missing".into()),
        Ev::BoundPodFinished => w.bound_pod_finished = true,
        Ev::ApprovalTimeout | Ev::ApprovalAfterDeadline => {
            w.needs_approval = true;
            w.authority.approval_deadline = Some(now);
            if matches!(ev, Ev::ApprovalAfterDeadline) {
                g.spec.approval = Some(ApprovalDecision { decision: Decision::Approved, reason: None });
            }
        }
        Ev::HeldPolicyGone => {
            status.authorised_by = Some("release-flow".into());
            w.authority = Authority::default();
        }
    }
    if matches!(ev, Ev::ParentEnded | Ev::ParentPending) {
        g.spec.parent = Some("p".into());
        w.parent = Some(Some(&parent));
    }
    g.status = Some(status);
    next_phase(&g, &w)
}

#[test]
fn the_grant_state_machine_as_a_table_of_phase_and_event() {
    use GrantPhase::*;
    // (event, from Pending, from AwaitingApproval, from Active, reason starts with)
    let table: &[(Ev, GrantPhase, GrantPhase, GrantPhase, &str)] = &[
        (Ev::Nothing, Active, Active, Active, "tokens issued"),
        (Ev::Completion, Completed, Completed, Completed, "the agent marked"),
        (Ev::Expiry, Expired, Expired, Expired, "the grant's TTL ran out"),
        (Ev::NeedsApproval, AwaitingApproval, AwaitingApproval, Revoked, ""),
        (Ev::Approval, Active, Active, Active, "tokens issued"),
        (Ev::Denial, Denied, Denied, Revoked, "an approver denied"),
        (Ev::ParentEnded, Denied, Denied, Revoked, "parent grant p ended"),
        (Ev::ParentPending, Pending, AwaitingApproval, Active, "waiting for the parent"),
        (Ev::AgentGone, Denied, Denied, Revoked, "AgentIdentity bot no longer exists"),
        (Ev::PolicyGone, Denied, Denied, Revoked, "no-delegation-policy: "),
        (Ev::RecheckFailed, Denied, Denied, Revoked, "outside-ceiling: "),
        (Ev::NotAdmitted, Denied, Denied, Revoked, "not-admitted: "),
        (Ev::BoundPodFinished, Completed, Completed, Completed, "bound pod"),
        (Ev::ApprovalTimeout, Denied, Denied, Revoked, ""),
        (Ev::ApprovalAfterDeadline, Active, Active, Active, "tokens issued"),
        (Ev::HeldPolicyGone, Denied, Denied, Revoked, "DelegationPolicy release-flow, which authorised"),
    ];
    for &(ev, from_pending, from_awaiting, from_active, why) in table {
        for (from, want) in [(Pending, from_pending), (AwaitingApproval, from_awaiting), (Active, from_active)] {
            let (got, reason) = case(from, ev);
            assert_eq!(got, want, "{from} + {ev:?}: {reason}");
            assert!(reason.starts_with(why), "{from} + {ev:?}: reason {reason:?} should start with {why:?}");
            assert!(transition_allowed(from, got), "{from} + {ev:?} -> {got} is not an edge of the state machine");
        }
        for ended in [Completed, Expired, Revoked, Denied] {
            let (got, _) = case(ended, ev);
            assert_eq!(got, ended, "an ended grant stays ended ({ended} + {ev:?})");
        }
    }
}

#[test]
fn a_grant_still_waiting_at_its_approval_deadline_ends_denied_with_approval_timeout() {
    for from in [GrantPhase::Pending, GrantPhase::AwaitingApproval] {
        let (phase, reason) = case(from, Ev::ApprovalTimeout);
        assert_eq!(phase, GrantPhase::Denied);
        assert!(reason.starts_with("approval-timeout: no approver decided by 1970-01-01T00:16:40Z"), "{reason}");
    }
    // Before the deadline it waits.
    let (phase, _) = case(GrantPhase::AwaitingApproval, Ev::NeedsApproval);
    assert_eq!(phase, GrantPhase::AwaitingApproval);
}

#[test]
fn only_the_state_machines_edges_are_allowed() {
    use GrantPhase::*;
    for from in GrantPhase::ALL {
        for to in GrantPhase::ALL {
            let allowed = transition_allowed(from, to);
            let expected = from == to
                || match from {
                    Pending => true,
                    AwaitingApproval => matches!(to, Active | Denied | Revoked | Completed | Expired),
                    Active => matches!(to, Completed | Expired | Revoked),
                    _ => false,
                };
            assert_eq!(allowed, expected, "{from} -> {to}");
        }
    }
}

#[test]
fn a_finalizer_already_gone_with_its_grant_is_done_and_other_failures_are_not() {
    let gone = finalized::<Error>(Err(finalizer::Error::RemoveFinalizer(api_error(404, "NotFound"))));
    assert_eq!(gone.expect("gone is done"), Action::await_change());
    let conflict = finalized::<Error>(Err(finalizer::Error::RemoveFinalizer(api_error(409, "Conflict"))));
    assert!(matches!(conflict, Err(finalizer::Error::RemoveFinalizer(_))), "{conflict:?}");
    let not_added = finalized::<Error>(Err(finalizer::Error::AddFinalizer(api_error(404, "NotFound"))));
    assert!(matches!(not_added, Err(finalizer::Error::AddFinalizer(_))), "{not_added:?}");
}

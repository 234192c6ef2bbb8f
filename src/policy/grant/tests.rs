//! Admission of new grants: one test per behaviour, on plain values.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::*;
use crate::api::{ApprovalDecision, Decision, Duration, GrantPhase, MAX_GRANT_CAPABILITIES};
use crate::policy::testing::*;

const DEPLOY_WEB: (&str, &str) = ("k8s:deployments.patch", "k8s:staging/deployments/web");
const STAGING: (&str, &str) = ("k8s:deployments.*", "k8s:staging/deployments/*");

struct World {
    identities: Vec<AgentIdentity>,
    policies: Vec<DelegationPolicy>,
    limits: Limits,
}

fn world() -> World {
    let mut release_flow = with_approval(
        policy(
            "ci",
            "release-flow",
            vec![group("release-managers"), agent("planner"), agent("helper")],
            &["release-bot"],
            &[STAGING],
            Duration::from_mins(30),
        ),
        &[("k8s:deployments.delete", "*")],
        vec![group("sre-oncall")],
    );
    release_flow.spec.max_depth = 2;
    let planner_flow = policy(
        "ci",
        "planner-flow",
        vec![group("release-managers")],
        &["planner"],
        &[STAGING],
        Duration::from_hours(1),
    );
    let mut helper_flow = policy(
        "ci",
        "helper-flow",
        vec![agent("planner")],
        &["helper", "planner"],
        &[STAGING],
        Duration::from_hours(1),
    );
    helper_flow.spec.max_depth = 3;
    World {
        identities: vec![
            identity("ci", "release-bot", &[STAGING]),
            identity("ci", "planner", &[STAGING]),
            identity("ci", "helper", &[STAGING]),
            identity("ci", "idle-bot", &[]),
        ],
        policies: vec![release_flow, planner_flow, helper_flow],
        limits: Limits::default(),
    }
}

fn alice() -> Requester {
    Requester::user("alice", ["release-managers"])
}

fn agent_requester(w: &World, name: &str) -> Requester {
    Requester::from_user_info(
        format!("system:serviceaccount:ci:{name}"),
        ["system:serviceaccounts"],
        &w.identities,
        "ci",
    )
}

fn admit(
    w: &World,
    g: &CapabilityGrant,
    requester: &Requester,
    ancestors: &[CapabilityGrant],
) -> Result<Admission, Vec<Violation>> {
    let agent = w.identities.iter().find(|i| i.metadata.name.as_deref() == Some(g.spec.agent.as_str()));
    let ctx = GrantContext {
        namespace: "ci",
        requester,
        agent,
        policies: &w.policies,
        ancestors,
        now: now(),
        limits: &w.limits,
    };
    admit_grant(g, &ctx)
}

fn refused(w: &World, g: &CapabilityGrant, requester: &Requester, ancestors: &[CapabilityGrant]) -> Vec<Violation> {
    admit(w, g, requester, ancestors).expect_err("should be refused")
}

fn deploy(caps: &[(&str, &str)]) -> CapabilityGrant {
    grant("ci", "deploy-web-1234", "release-bot", caps, Duration::from_mins(15))
}

/// A grant from alice to planner, Active for another 45 minutes.
fn plan() -> CapabilityGrant {
    let g = grant(
        "ci",
        "plan-web-1234",
        "planner",
        &[DEPLOY_WEB, ("k8s:deployments.get", "k8s:staging/deployments/web")],
        Duration::from_hours(1),
    );
    active(g, "alice", 45 * 60)
}

fn delegated(parent: &str, agent: &str, caps: &[(&str, &str)]) -> CapabilityGrant {
    let mut g = grant("ci", "deploy-web-1234-a", agent, caps, Duration::from_mins(15));
    g.spec.parent = Some(parent.to_string());
    g
}

fn set_condition(id: &mut AgentIdentity, type_: &str) {
    let status = id.status.get_or_insert_with(Default::default);
    status.conditions.push(Condition {
        type_: type_.to_string(),
        status: "True".into(),
        reason: "Test".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: at(0),
    });
}

// --- legitimate grants ---

#[test]
fn a_release_manager_may_grant_the_release_bot_a_staging_deploy() {
    let w = world();
    let a = admit(&w, &deploy(&[DEPLOY_WEB]), &alice(), &[]).expect("admitted");
    assert_eq!(
        a,
        Admission {
            policy: "release-flow".into(),
            needs_approval: false,
            depth: 1,
            chain: vec!["alice".into(), "release-bot".into()],
        }
    );
}

#[test]
fn a_capability_in_approval_required_needs_approval() {
    let w = world();
    let g = deploy(&[DEPLOY_WEB, ("k8s:deployments.delete", "k8s:staging/deployments/old")]);
    assert!(admit(&w, &g, &alice(), &[]).expect("admitted").needs_approval);
}

#[test]
fn an_unparseable_approval_selector_requires_approval() {
    let mut w = world();
    w.policies[0].spec.approval.as_mut().expect("approval").required = caps(&[("k8s:deployments.delete", "a b")]);
    assert!(admit(&w, &deploy(&[DEPLOY_WEB]), &alice(), &[]).expect("admitted").needs_approval);
}

#[test]
fn a_matching_create_stamp_is_accepted() {
    let w = world();
    let g = annotate(deploy(&[DEPLOY_WEB]), crate::api::REQUESTED_BY_ANNOTATION, "alice");
    let g = annotate(g, crate::api::REQUESTED_GROUPS_ANNOTATION, "release-managers");
    assert!(admit(&w, &g, &alice(), &[]).is_ok());
}

#[test]
fn a_planner_may_delegate_a_narrower_shorter_grant_it_holds() {
    let w = world();
    let planner = agent_requester(&w, "planner");
    let g = delegated("plan-web-1234", "release-bot", &[DEPLOY_WEB]);
    let a = admit(&w, &g, &planner, &[plan()]).expect("admitted");
    assert_eq!(a.policy, "release-flow");
    assert_eq!(a.depth, 2);
    assert_eq!(a.chain, vec!["alice", "planner", "release-bot"]);
}

// --- grant shape ---

#[test]
fn wildcards_and_non_canonical_values_in_a_grant_are_all_reported() {
    let w = world();
    let g = deploy(&[
        ("k8s:deployments.*", "k8s:staging/deployments/web"),
        ("k8s:deployments.patch", "k8s:staging/../prod/web"),
        ("k8s:", "k8s:staging//web"),
        ("k8s:deployments.patch", "k8s:staging/%2e%2e"),
        ("k8s:deployments.patch", "k8s:staging/web\t"),
        ("k8s:deployments.patch", "k8s"),
        (&format!("k8s:{}", "x".repeat(300)), "k8s:staging/deployments/web"),
    ]);
    let v = refused(&w, &g, &alice(), &[]);
    let got: Vec<_> = v.iter().map(|v| (v.field.as_str(), v.rule.id())).collect();
    assert_eq!(
        got,
        vec![
            ("spec.capabilities[0].action", "wildcard-in-grant"),
            ("spec.capabilities[1].resource", "dot-segment"),
            ("spec.capabilities[2].action", "malformed-action"),
            ("spec.capabilities[2].resource", "empty-segment"),
            ("spec.capabilities[3].resource", "percent-encoding"),
            ("spec.capabilities[4].resource", "invalid-character"),
            ("spec.capabilities[5].resource", "malformed-resource"),
            ("spec.capabilities[6].action", "value-too-long"),
        ]
    );
    assert_eq!(
        v[1].to_string(),
        "spec.capabilities[1].resource: resource \"k8s:staging/../prod/web\" has a \"..\" segment; \
         paths are checked in canonical form, not normalised [dot-segment]"
    );
}

#[test]
fn a_grant_without_capabilities_or_audiences_is_refused() {
    let w = world();
    let mut g = deploy(&[]);
    g.spec.audiences.clear();
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(ids(&v), vec!["no-capabilities", "no-audience"]);
}

#[test]
fn too_many_capabilities_or_audiences_are_refused() {
    let w = world();
    let many: Vec<(String, String)> = (0..=MAX_GRANT_CAPABILITIES)
        .map(|i| ("k8s:deployments.get".to_string(), format!("k8s:staging/deployments/web-{i}")))
        .collect();
    let pairs: Vec<(&str, &str)> = many.iter().map(|(a, r)| (a.as_str(), r.as_str())).collect();
    let mut g = deploy(&pairs);
    g.spec.audiences = (0..9).map(|i| format!("aud-{i}")).collect();
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(ids(&v), vec!["too-many-capabilities", "too-many-audiences"]);
}

#[test]
fn wildcard_empty_or_spaced_audiences_are_refused() {
    let w = world();
    let mut g = deploy(&[DEPLOY_WEB]);
    g.spec.audiences = vec!["*".into(), String::new(), "deploy api".into(), "deploy-api".into()];
    let v = refused(&w, &g, &alice(), &[]);
    let fields: Vec<_> = v.iter().map(|v| (v.field.as_str(), v.rule.id())).collect();
    assert_eq!(
        fields,
        vec![
            ("spec.audiences[0]", "malformed-audience"),
            ("spec.audiences[1]", "malformed-audience"),
            ("spec.audiences[2]", "malformed-audience"),
        ]
    );
}

#[test]
fn zero_and_overlong_ttls_are_refused() {
    let w = world();
    let mut g = deploy(&[DEPLOY_WEB]);
    g.spec.ttl = Duration::from_secs(0);
    assert_eq!(ids(&refused(&w, &g, &alice(), &[])), vec!["zero-ttl"]);
    g.spec.ttl = Duration::from_hours(2);
    assert_eq!(ids(&refused(&w, &g, &alice(), &[])), vec!["ttl-above-operator-max", "ttl-above-policy"]);
}

#[test]
fn malformed_names_in_a_grant_are_refused() {
    let w = world();
    let mut g = deploy(&[DEPLOY_WEB]);
    g.spec.task.id = " ".into();
    g.spec.pod = Some("Pod_1".into());
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(ids(&v), vec!["malformed-grant", "malformed-grant"]);
    let mut g = deploy(&[DEPLOY_WEB]);
    g.spec.agent = "Release Bot".into();
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(v[0].rule, Rule::MalformedGrant);
}

#[test]
fn a_grant_cannot_be_created_approved() {
    let w = world();
    let mut g = deploy(&[DEPLOY_WEB]);
    g.spec.approval = Some(ApprovalDecision { decision: Decision::Approved, reason: None });
    let g = annotate(g, crate::api::APPROVED_BY_ANNOTATION, "alice");
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(ids(&v), vec!["approval-at-create", "approval-at-create"]);
}

#[test]
fn forged_requester_stamps_are_refused() {
    let w = world();
    let g = annotate(deploy(&[DEPLOY_WEB]), crate::api::REQUESTED_BY_ANNOTATION, "bob");
    let g = annotate(g, crate::api::REQUESTED_GROUPS_ANNOTATION, "release-managers,sre-oncall");
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(ids(&v), vec!["immutable-stamp", "immutable-stamp"]);
    assert_eq!(v[0].field, "metadata.annotations[\"writ.dev/requested-by\"]");
}

// --- the agent ---

#[test]
fn a_grant_to_an_unknown_agent_is_refused() {
    let w = world();
    let g = grant("ci", "g", "ghost-bot", &[DEPLOY_WEB], Duration::from_mins(15));
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(ids(&v), vec!["unknown-agent", "no-delegation-policy"]);
    assert_eq!(v[0].message, "there is no AgentIdentity ghost-bot in namespace ci");
}

#[test]
fn an_agent_of_another_namespace_is_unknown() {
    let w = world();
    let mut other = w.identities[0].clone();
    other.metadata.namespace = Some("prod".into());
    let ctx = GrantContext {
        namespace: "ci",
        requester: &alice(),
        agent: Some(&other),
        policies: &w.policies,
        ancestors: &[],
        now: now(),
        limits: &w.limits,
    };
    let v = admit_grant(&deploy(&[DEPLOY_WEB]), &ctx).unwrap_err();
    assert_eq!(ids(&v), vec!["unknown-agent"]);
}

#[test]
fn a_capability_outside_the_ceiling_is_refused() {
    let w = world();
    let g = deploy(&[DEPLOY_WEB, ("k8s:deployments.patch", "k8s:prod/deployments/web")]);
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(ids(&v), vec!["outside-ceiling", "not-covered-by-policy"]);
    assert_eq!(v[0].field, "spec.capabilities[1]");
    assert!(v[0].message.contains("outside the ceiling of agent release-bot"), "{}", v[0]);
}

#[test]
fn an_empty_ceiling_admits_nothing() {
    let mut w = world();
    w.policies[0].spec.delegates.push(crate::api::AgentRef { agent: "idle-bot".into() });
    let g = grant("ci", "g", "idle-bot", &[DEPLOY_WEB], Duration::from_mins(15));
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(ids(&v), vec!["outside-ceiling"]);
    assert!(v[0].message.contains("empty ceiling"), "{}", v[0]);
}

#[test]
fn an_overbroad_ceiling_entry_admits_nothing() {
    let mut w = world();
    w.identities[0].spec.ceiling = caps(&[("k8s:*", "k8s:*")]);
    let v = refused(&w, &deploy(&[DEPLOY_WEB]), &alice(), &[]);
    assert_eq!(ids(&v), vec!["outside-ceiling"]);
    assert!(v[0].message.contains("valid pattern"), "{}", v[0]);
}

#[test]
fn grants_to_an_agent_overdue_for_review_or_dormant_are_refused_unless_configured() {
    let mut w = world();
    set_condition(&mut w.identities[0], "ReviewOverdue");
    set_condition(&mut w.identities[0], "Dormant");
    let v = refused(&w, &deploy(&[DEPLOY_WEB]), &alice(), &[]);
    assert_eq!(ids(&v), vec!["review-overdue", "agent-dormant"]);
    w.limits.refuse_review_overdue = false;
    w.limits.refuse_dormant = false;
    assert!(admit(&w, &deploy(&[DEPLOY_WEB]), &alice(), &[]).is_ok());
}

// --- delegation policy ---

#[test]
fn without_any_policy_nothing_is_delegated() {
    let mut w = world();
    w.policies.clear();
    let v = refused(&w, &deploy(&[DEPLOY_WEB]), &alice(), &[]);
    assert_eq!(ids(&v), vec!["no-delegation-policy"]);
    assert!(v[0].message.contains("default deny"), "{}", v[0]);
}

#[test]
fn a_requester_no_policy_names_is_told_so() {
    let w = world();
    let mallory = Requester::user("mallory", ["developers"]);
    let v = refused(&w, &deploy(&[DEPLOY_WEB]), &mallory, &[]);
    assert_eq!(
        v[0].to_string(),
        "spec.agent: DelegationPolicy release-flow delegates to agent release-bot, but not from user mallory \
         (groups developers) [no-delegation-policy]"
    );
}

#[test]
fn a_requester_allowed_for_other_agents_is_told_which_policies() {
    let mut w = world();
    w.policies.retain(|p| p.metadata.name.as_deref() == Some("planner-flow"));
    let v = refused(&w, &deploy(&[DEPLOY_WEB]), &alice(), &[]);
    assert_eq!(
        v[0].message,
        "DelegationPolicy planner-flow lets user alice (groups release-managers) delegate, but not to agent release-bot"
    );
}

#[test]
fn no_policy_for_requester_nor_agent_names_both() {
    let mut w = world();
    w.policies.retain(|p| p.metadata.name.as_deref() == Some("helper-flow"));
    let v = refused(&w, &deploy(&[DEPLOY_WEB]), &alice(), &[]);
    assert_eq!(
        v[0].message,
        "no DelegationPolicy in namespace ci lets user alice (groups release-managers) delegate to agent release-bot"
    );
}

#[test]
fn policies_of_other_namespaces_do_not_count() {
    let mut w = world();
    for p in &mut w.policies {
        p.metadata.namespace = Some("prod".into());
    }
    assert_eq!(ids(&refused(&w, &deploy(&[DEPLOY_WEB]), &alice(), &[])), vec!["no-delegation-policy"]);
}

#[test]
fn a_capability_the_policy_does_not_cover_is_refused() {
    let mut w = world();
    w.identities[0].spec.ceiling.push(crate::api::Capability::new("k8s:pods.get", "k8s:staging/pods/*"));
    let g = deploy(&[DEPLOY_WEB, ("k8s:pods.get", "k8s:staging/pods/web-1")]);
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(ids(&v), vec!["not-covered-by-policy"]);
    assert_eq!(
        v[0].to_string(),
        "spec.capabilities[1]: k8s:pods.get on k8s:staging/pods/web-1 is not among the capabilities policy \
         release-flow lets user alice (groups release-managers) delegate to agent release-bot [not-covered-by-policy]"
    );
}

#[test]
fn a_ttl_above_the_policy_is_refused_with_the_policy_limit() {
    let w = world();
    let mut g = deploy(&[DEPLOY_WEB]);
    g.spec.ttl = Duration::from_mins(45);
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(
        v[0].to_string(),
        "spec.ttl: policy release-flow allows at most 30m; this grant asks for 45m [ttl-above-policy]"
    );
}

#[test]
fn the_closest_of_several_policies_is_reported() {
    let mut w = world();
    let mut short = w.policies[0].clone();
    short.metadata.name = Some("a-short-flow".into());
    short.spec.max_ttl = Duration::from_mins(5);
    short.spec.capabilities = caps(&[("k8s:deployments.get", "k8s:staging/deployments/*")]);
    w.policies.push(short);
    let mut g = deploy(&[DEPLOY_WEB]);
    g.spec.ttl = Duration::from_mins(45);
    let v = refused(&w, &g, &alice(), &[]);
    assert_eq!(ids(&v), vec!["ttl-above-policy"]);
    assert!(v[0].message.contains("release-flow") && v[0].message.contains("closest of 2"), "{}", v[0]);
}

#[test]
fn a_second_policy_may_authorise_what_the_first_does_not() {
    let mut w = world();
    let mut long = w.policies[0].clone();
    long.metadata.name = Some("z-long-flow".into());
    long.spec.max_ttl = Duration::from_hours(1);
    long.spec.approval = None;
    w.policies.push(long);
    let mut g = deploy(&[DEPLOY_WEB]);
    g.spec.ttl = Duration::from_mins(45);
    assert_eq!(admit(&w, &g, &alice(), &[]).expect("admitted").policy, "z-long-flow");
}

#[test]
fn an_agent_cannot_grant_without_a_parent() {
    let w = world();
    let planner = agent_requester(&w, "planner");
    let v = refused(&w, &deploy(&[DEPLOY_WEB]), &planner, &[]);
    assert_eq!(ids(&v), vec!["agent-without-parent"]);
}

#[test]
fn a_non_agent_service_account_may_be_a_delegator() {
    let mut w = world();
    w.policies[0].spec.delegators.push(service_account("ci/pipeline"));
    let pipeline = agent_requester(&w, "pipeline");
    assert_eq!(pipeline.agent, None);
    let a = admit(&w, &deploy(&[DEPLOY_WEB]), &pipeline, &[]).expect("admitted");
    assert_eq!(a.chain, vec!["system:serviceaccount:ci:pipeline", "release-bot"]);
}

// --- delegated grants ---

#[test]
fn a_missing_parent_is_refused() {
    let w = world();
    let planner = agent_requester(&w, "planner");
    let g = delegated("plan-web-9999", "release-bot", &[DEPLOY_WEB]);
    let v = refused(&w, &g, &planner, &[]);
    assert_eq!(ids(&v), vec!["parent-not-found"]);
    let v = refused(&w, &g, &planner, &[plan()]);
    assert_eq!(ids(&v), vec!["parent-not-found"], "ancestors[0] must be the named parent");
}

#[test]
fn a_broken_chain_above_the_parent_is_refused() {
    let w = world();
    let planner = agent_requester(&w, "planner");
    let mut parent = plan();
    parent.spec.parent = Some("gone".into());
    let v = refused(&w, &delegated("plan-web-1234", "release-bot", &[DEPLOY_WEB]), &planner, &[parent]);
    assert_eq!(ids(&v), vec!["parent-not-found"]);
    assert!(v[0].message.contains("gone"), "{}", v[0]);
}

#[test]
fn a_parent_that_is_not_active_is_refused() {
    let w = world();
    let planner = agent_requester(&w, "planner");
    let g = delegated("plan-web-1234", "release-bot", &[DEPLOY_WEB]);
    let pending = grant("ci", "plan-web-1234", "planner", &[DEPLOY_WEB], Duration::from_hours(1));
    let v = refused(&w, &g, &planner, &[pending]);
    assert_eq!(ids(&v), vec!["parent-not-active"]);
    assert!(v[0].message.contains("is Pending, not Active"), "{}", v[0]);
    let expired = active(plan(), "alice", -1);
    assert_eq!(ids(&refused(&w, &g, &planner, &[expired])), vec!["parent-not-active"]);
    let mut done = plan();
    done.spec.completed = true;
    assert_eq!(ids(&refused(&w, &g, &planner, &[done])), vec!["parent-not-active"]);
    let mut revoked = plan();
    revoked.status.as_mut().expect("status").phase = GrantPhase::Revoked;
    assert_eq!(ids(&refused(&w, &g, &planner, &[revoked])), vec!["parent-not-active"]);
}

#[test]
fn only_the_agent_holding_the_parent_may_delegate_from_it() {
    let w = world();
    let g = delegated("plan-web-1234", "release-bot", &[DEPLOY_WEB]);
    let v = refused(&w, &g, &alice(), &[plan()]);
    assert_eq!(ids(&v), vec!["not-parent-holder"]);
    let helper = agent_requester(&w, "helper");
    assert_eq!(ids(&refused(&w, &g, &helper, &[plan()])), vec!["not-parent-holder"]);
}

#[test]
fn a_delegated_grant_may_only_narrow_its_parent() {
    let w = world();
    let planner = agent_requester(&w, "planner");
    let mut g = delegated(
        "plan-web-1234",
        "release-bot",
        &[DEPLOY_WEB, ("k8s:deployments.patch", "k8s:staging/deployments/api")],
    );
    g.spec.audiences.push("other-api".into());
    let v = refused(&w, &g, &planner, &[plan()]);
    let got: Vec<_> = v.iter().map(|v| (v.field.as_str(), v.rule.id())).collect();
    assert_eq!(
        got,
        vec![("spec.capabilities[1]", "not-subset-of-parent"), ("spec.audiences[1]", "not-subset-of-parent")]
    );
}

#[test]
fn what_the_parent_was_not_issued_cannot_be_delegated() {
    let w = world();
    let planner = agent_requester(&w, "planner");
    let mut parent = plan();
    parent.status.as_mut().expect("status").approved = caps(&[("k8s:deployments.get", "k8s:staging/deployments/web")]);
    let g = delegated("plan-web-1234", "release-bot", &[DEPLOY_WEB]);
    assert_eq!(ids(&refused(&w, &g, &planner, &[parent])), vec!["not-subset-of-parent"]);
}

#[test]
fn a_delegated_grant_may_not_outlive_its_parent() {
    let w = world();
    let planner = agent_requester(&w, "planner");
    let parent = active(plan(), "alice", 10 * 60);
    let g = delegated("plan-web-1234", "release-bot", &[DEPLOY_WEB]);
    let v = refused(&w, &g, &planner, &[parent]);
    assert_eq!(ids(&v), vec!["outlives-parent"]);
    assert_eq!(
        v[0].message,
        "parent grant plan-web-1234 expires at 2030-01-01T00:10:00Z, in 10m; a ttl of 15m would outlive it"
    );
}

#[test]
fn a_chain_deeper_than_max_depth_is_refused() {
    let w = world();
    let helper = agent_requester(&w, "helper");
    let root = plan();
    let mut middle = active(
        grant("ci", "help-web-1234", "helper", &[DEPLOY_WEB], Duration::from_mins(30)),
        "system:serviceaccount:ci:planner",
        20 * 60,
    );
    middle.spec.parent = Some("plan-web-1234".into());
    let g = delegated("help-web-1234", "release-bot", &[DEPLOY_WEB]);
    let v = refused(&w, &g, &helper, &[middle.clone(), root.clone()]);
    assert_eq!(ids(&v), vec!["max-depth"]);
    assert_eq!(v[0].message, "this grant would be at delegation depth 3; policy release-flow allows at most 2");
    let mut w = w;
    w.policies[0].spec.max_depth = 3;
    let a = admit(&w, &g, &helper, &[middle, root]).expect("admitted at depth 3");
    assert_eq!(a.chain, vec!["alice", "planner", "helper", "release-bot"]);
}

#[test]
fn delegating_to_yourself_or_back_up_the_chain_is_a_cycle() {
    let w = world();
    let planner = agent_requester(&w, "planner");
    let g = delegated("plan-web-1234", "planner", &[DEPLOY_WEB]);
    let v = refused(&w, &g, &planner, &[plan()]);
    assert_eq!(ids(&v), vec!["delegation-cycle"]);
    assert!(v[0].message.contains("already holds grant plan-web-1234"), "{}", v[0]);
}

#[test]
fn a_grant_named_as_its_own_ancestor_is_a_cycle() {
    let w = world();
    let planner = agent_requester(&w, "planner");
    let mut g = delegated("plan-web-1234", "release-bot", &[DEPLOY_WEB]);
    g.metadata.name = Some("plan-web-1234".into());
    let v = refused(&w, &g, &planner, &[plan()]);
    assert!(ids(&v).contains(&"delegation-cycle"), "{v:?}");
    // A loop above the parent: the parent names a grant already in the chain.
    let mut parent = plan();
    parent.spec.parent = Some("deploy-web-1234-a".into());
    let g = delegated("plan-web-1234", "release-bot", &[DEPLOY_WEB]);
    assert_eq!(ids(&refused(&w, &g, &planner, &[parent])), vec!["delegation-cycle"]);
}

#[test]
fn all_violations_are_reported_at_once() {
    let w = world();
    let mut g = delegated("plan-web-1234", "release-bot", &[("k8s:deployments.*", "k8s:prod/deployments/web")]);
    g.spec.ttl = Duration::from_hours(3);
    g.spec.audiences.clear();
    let v = refused(&w, &g, &alice(), &[active(plan(), "alice", 60)]);
    assert_eq!(
        ids(&v),
        vec![
            "wildcard-in-grant",
            "no-audience",
            "ttl-above-operator-max",
            "not-parent-holder",
            "outlives-parent",
            "ttl-above-policy"
        ]
    );
}

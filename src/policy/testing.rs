//! Small constructors for policy tests: plain values, no cluster.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    AgentIdentity, AgentIdentitySpec, AgentRef, ApprovalPolicy, Capability, CapabilityGrant, CapabilityGrantSpec,
    CapabilityGrantStatus, CredentialSpec, DelegationPolicy, DelegationPolicySpec, Duration, GrantPhase, IdentityClass,
    Principal, Task,
};

/// A fixed "now" for tests: 2030-01-01T00:00:00Z.
pub fn now() -> Timestamp {
    Timestamp::from_second(1_893_456_000).expect("valid timestamp")
}

/// `now() + secs`.
pub fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(now().as_second() + secs).expect("valid timestamp"))
}

pub fn caps(pairs: &[(&str, &str)]) -> Vec<Capability> {
    pairs.iter().map(|(a, r)| Capability::new(*a, *r)).collect()
}

pub fn identity(ns: &str, name: &str, ceiling: &[(&str, &str)]) -> AgentIdentity {
    let mut id = AgentIdentity::new(
        name,
        AgentIdentitySpec {
            class: IdentityClass::Agent,
            service_account_name: name.to_string(),
            owner: "team-platform".to_string(),
            role: None,
            credential: CredentialSpec::default(),
            ceiling: caps(ceiling),
            review: None,
            suspended: false,
        },
    );
    id.metadata.namespace = Some(ns.to_string());
    id
}

pub fn user(u: &str) -> Principal {
    Principal { user: Some(u.to_string()), ..Principal::default() }
}

pub fn group(g: &str) -> Principal {
    Principal { group: Some(g.to_string()), ..Principal::default() }
}

pub fn agent(a: &str) -> Principal {
    Principal { agent: Some(a.to_string()), ..Principal::default() }
}

pub fn service_account(sa: &str) -> Principal {
    Principal { service_account: Some(sa.to_string()), ..Principal::default() }
}

pub fn policy(
    ns: &str,
    name: &str,
    delegators: Vec<Principal>,
    delegates: &[&str],
    capabilities: &[(&str, &str)],
    max_ttl: Duration,
) -> DelegationPolicy {
    let mut p = DelegationPolicy::new(
        name,
        DelegationPolicySpec {
            delegators,
            delegates: delegates.iter().map(|a| AgentRef { agent: a.to_string() }).collect(),
            capabilities: caps(capabilities),
            max_ttl,
            max_depth: 1,
            approval: None,
        },
    );
    p.metadata.namespace = Some(ns.to_string());
    p
}

pub fn with_approval(
    mut p: DelegationPolicy,
    required: &[(&str, &str)],
    approvers: Vec<Principal>,
) -> DelegationPolicy {
    p.spec.approval = Some(ApprovalPolicy { required: caps(required), approvers, timeout: None });
    p
}

pub fn grant(ns: &str, name: &str, agent: &str, capabilities: &[(&str, &str)], ttl: Duration) -> CapabilityGrant {
    let mut g = CapabilityGrant::new(
        name,
        CapabilityGrantSpec {
            agent: agent.to_string(),
            task: Task { id: "PR-1234".to_string(), intent: Some("roll out web v2".to_string()) },
            capabilities: caps(capabilities),
            audiences: vec!["deploy-api".to_string()],
            ttl,
            pod: None,
            parent: None,
            completed: false,
            approval: None,
        },
    );
    g.metadata.namespace = Some(ns.to_string());
    g
}

/// The grant as the controller leaves it once Active, expiring `secs` from now.
pub fn active(mut g: CapabilityGrant, requested_by: &str, expires_in_secs: i64) -> CapabilityGrant {
    g.status = Some(CapabilityGrantStatus {
        phase: GrantPhase::Active,
        requested_by: Some(requested_by.to_string()),
        approved: g.spec.capabilities.clone(),
        requested: g.spec.capabilities.clone(),
        issued_at: Some(at(-60)),
        expires_at: Some(at(expires_in_secs)),
        ..CapabilityGrantStatus::default()
    });
    g
}

pub fn annotate(mut g: CapabilityGrant, key: &str, value: &str) -> CapabilityGrant {
    g.metadata.annotations.get_or_insert_with(Default::default).insert(key.to_string(), value.to_string());
    g
}

/// The rule ids of a list of violations, in order.
pub fn ids(violations: &[crate::policy::Violation]) -> Vec<&'static str> {
    violations.iter().map(|v| v.rule.id()).collect()
}

//! Builders of the API types for tests: plain values, no cluster. Free
//! functions for the common shapes, and chainable methods on the types
//! themselves:
//!
//! ```
//! use writ::api::{CapabilityGrant, GrantPhase};
//! let g = CapabilityGrant::test("team", "g", "bot").active("alice", 3600).bound_to("bot-0");
//! assert_eq!(g.status.as_ref().map(|s| s.phase), Some(GrantPhase::Active));
//! assert_eq!(g.spec.pod.as_deref(), Some("bot-0"));
//! ```

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

/// Capabilities from `(action, resource)` pairs.
pub fn caps(pairs: &[(&str, &str)]) -> Vec<Capability> {
    pairs.iter().map(|(a, r)| Capability::new(*a, *r)).collect()
}

/// An Agent identity in `ns` named `name`, its service account named alike, with `ceiling`.
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

/// A principal naming a user.
pub fn user(u: &str) -> Principal {
    Principal { user: Some(u.to_string()), ..Principal::default() }
}

/// A principal naming a group.
pub fn group(g: &str) -> Principal {
    Principal { group: Some(g.to_string()), ..Principal::default() }
}

/// A principal naming an agent.
pub fn agent(a: &str) -> Principal {
    Principal { agent: Some(a.to_string()), ..Principal::default() }
}

/// A principal naming a service account (`namespace:name`).
pub fn service_account(sa: &str) -> Principal {
    Principal { service_account: Some(sa.to_string()), ..Principal::default() }
}

/// A DelegationPolicy letting `delegators` delegate `capabilities` to `delegates` for up to `max_ttl`.
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

/// `p` requiring approval by `approvers` for `required`.
pub fn with_approval(
    mut p: DelegationPolicy,
    required: &[(&str, &str)],
    approvers: Vec<Principal>,
) -> DelegationPolicy {
    p.spec.approval = Some(ApprovalPolicy { required: caps(required), approvers, timeout: None });
    p
}

/// A grant of `capabilities` to `agent` for task `PR-1234`, audience `deploy-api`.
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

/// `g` with annotation `key` = `value`.
pub fn annotate(mut g: CapabilityGrant, key: &str, value: &str) -> CapabilityGrant {
    g.metadata.annotations.get_or_insert_with(Default::default).insert(key.to_string(), value.to_string());
    g
}

impl CapabilityGrant {
    /// A grant in `ns` named `name` of `k8s:deployments.patch` on
    /// `k8s:staging/deployments/web` to `agent` for ten minutes (see [`grant`]).
    pub fn test(ns: &str, name: &str, agent: &str) -> Self {
        grant(ns, name, agent, &[("k8s:deployments.patch", "k8s:staging/deployments/web")], Duration::from_secs(600))
    }

    /// With these capabilities instead.
    pub fn capabilities(mut self, pairs: &[(&str, &str)]) -> Self {
        self.spec.capabilities = caps(pairs);
        self
    }

    /// Active, requested by `requested_by`, expiring `expires_in_secs` after [`now`] (see [`active`]).
    pub fn active(self, requested_by: &str, expires_in_secs: i64) -> Self {
        active(self, requested_by, expires_in_secs)
    }

    /// Bound to pod `pod` (`spec.pod`).
    pub fn bound_to(mut self, pod: &str) -> Self {
        self.spec.pod = Some(pod.to_string());
        self
    }

    /// A child of grant `parent`.
    pub fn child_of(mut self, parent: &str) -> Self {
        self.spec.parent = Some(parent.to_string());
        self
    }

    /// With annotation `key` = `value`.
    pub fn annotated(self, key: &str, value: &str) -> Self {
        annotate(self, key, value)
    }
}

impl AgentIdentity {
    /// An Agent identity in `ns` named `name` (its service account too),
    /// with a ceiling of `k8s:deployments.patch` on `k8s:staging/*` (see [`identity`]).
    pub fn test(ns: &str, name: &str) -> Self {
        identity(ns, name, &[("k8s:deployments.patch", "k8s:staging/*")])
    }

    /// With this ceiling instead.
    pub fn ceiling(mut self, pairs: &[(&str, &str)]) -> Self {
        self.spec.ceiling = caps(pairs);
        self
    }

    /// Whose pods run as service account `sa`.
    pub fn running_as(mut self, sa: &str) -> Self {
        self.spec.service_account_name = sa.to_string();
        self
    }

    /// Suspended.
    pub fn suspended(mut self) -> Self {
        self.spec.suspended = true;
        self
    }
}

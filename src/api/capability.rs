//! The capability pair shared by ceilings, policies and grants.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An action on a resource.
///
/// An action is `<service>:<verb>` (`github:pulls.read`, `k8s:deployments.patch`);
/// a resource is `<scheme>:<path>` with `/`-separated segments
/// (`repo:acme/web`, `k8s:staging/deployments/web`). Both are case-sensitive
/// ASCII. In ceilings and policies `*` matches any run of characters within
/// one segment (never `/` or `:`); a grant names exact values only.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Capability {
    /// The action, `<service>:<verb>`, e.g. `k8s:deployments.patch`.
    #[schemars(length(min = 3, max = 253))]
    pub action: String,
    /// The resource, `<scheme>:<path>`, e.g. `k8s:staging/deployments/web`.
    #[schemars(length(min = 3, max = 1024))]
    pub resource: String,
}

impl Capability {
    /// A capability from its two parts.
    pub fn new(action: impl Into<String>, resource: impl Into<String>) -> Self {
        Self { action: action.into(), resource: resource.into() }
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.action, self.resource)
    }
}

/// Someone who may delegate or approve: exactly one of `user`, `group`,
/// `agent` or `serviceAccount` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// A Kubernetes user name as authenticated by the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A Kubernetes group the authenticated user belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// An AgentIdentity in the same namespace, acting through its service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// A service account, as `<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.user, &self.group, &self.agent, &self.service_account) {
            (Some(u), ..) => write!(f, "user {u}"),
            (_, Some(g), ..) => write!(f, "group {g}"),
            (_, _, Some(a), _) => write!(f, "agent {a}"),
            (_, _, _, Some(s)) => write!(f, "service account {s}"),
            _ => f.write_str("(empty principal)"),
        }
    }
}

/// A reference to an AgentIdentity in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AgentRef {
    /// The AgentIdentity's name (`*` matches every agent in the namespace).
    #[schemars(length(min = 1, max = 253))]
    pub agent: String,
}

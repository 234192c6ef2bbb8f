//! Who is asking: the authenticated user of an admission request, and how it
//! is matched against the principals of a DelegationPolicy.

use std::fmt;

use crate::api::{AgentIdentity, AgentRef, Principal};

/// The prefix Kubernetes gives service account user names.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The authenticated identity behind a request, taken from the admission
/// request's `userInfo` (never from what the client wrote).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    /// The authenticated user name, e.g. `alice` or `system:serviceaccount:ci:planner`.
    pub username: String,
    /// The authenticated groups.
    pub groups: Vec<String>,
    /// The AgentIdentity (in the grant's namespace) whose service account made
    /// the request, if any.
    pub agent: Option<String>,
}

impl Requester {
    /// A requester that is a user (or a service account that is not an agent).
    pub fn user(username: impl Into<String>, groups: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { username: username.into(), groups: groups.into_iter().map(Into::into).collect(), agent: None }
    }

    /// Builds the requester from `userInfo`, resolving the agent: when the user
    /// is `system:serviceaccount:<namespace>:<sa>` and exactly one
    /// AgentIdentity in `namespace` has `serviceAccountName: <sa>`, that is
    /// the requesting agent. A service account of another namespace is never
    /// an agent here; if several identities share the service account the
    /// request is ambiguous and no agent is resolved (fail closed: `agent`
    /// principals and parent grants then do not match).
    pub fn from_user_info(
        username: impl Into<String>,
        groups: impl IntoIterator<Item = impl Into<String>>,
        identities: &[AgentIdentity],
        namespace: &str,
    ) -> Self {
        let mut requester = Self::user(username, groups);
        if let Some((ns, sa)) = requester.service_account() {
            if ns == namespace {
                let mut matching = identities.iter().filter(|id| {
                    id.metadata.namespace.as_deref().is_none_or(|n| n == namespace)
                        && id.spec.service_account_name == sa
                });
                if let (Some(only), None) = (matching.next(), matching.next()) {
                    requester.agent = only.metadata.name.clone();
                }
            }
        }
        requester
    }

    /// `(namespace, name)` when the user is a service account.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')
    }

    /// Whether the requester is the principal. A principal that does not set
    /// exactly one field matches nobody (fail closed).
    pub fn is(&self, principal: &Principal) -> bool {
        match principal_field(principal) {
            Some(PrincipalField::User(u)) => self.username == u,
            Some(PrincipalField::Group(g)) => self.groups.iter().any(|mine| mine == g),
            Some(PrincipalField::Agent(a)) => self.agent.as_deref() == Some(a),
            Some(PrincipalField::ServiceAccount(sa)) => match (sa.split_once('/'), self.service_account()) {
                (Some((ns, name)), Some((my_ns, my_name))) => ns == my_ns && name == my_name,
                _ => false,
            },
            None => false,
        }
    }
}

impl fmt::Display for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.agent {
            Some(agent) => write!(f, "agent {agent} ({})", self.username),
            None if self.groups.is_empty() => write!(f, "user {}", self.username),
            None => write!(f, "user {} (groups {})", self.username, self.groups.join(", ")),
        }
    }
}

/// The one field a well-formed principal sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PrincipalField<'a> {
    User(&'a str),
    Group(&'a str),
    Agent(&'a str),
    ServiceAccount(&'a str),
}

/// The field a principal sets, or `None` when it sets none or several.
pub(crate) fn principal_field(p: &Principal) -> Option<PrincipalField<'_>> {
    match (&p.user, &p.group, &p.agent, &p.service_account) {
        (Some(u), None, None, None) => Some(PrincipalField::User(u)),
        (None, Some(g), None, None) => Some(PrincipalField::Group(g)),
        (None, None, Some(a), None) => Some(PrincipalField::Agent(a)),
        (None, None, None, Some(s)) => Some(PrincipalField::ServiceAccount(s)),
        _ => None,
    }
}

/// Whether a policy's `delegates` entry names `agent` (`*` names every agent).
pub fn delegate_matches(delegate: &AgentRef, agent: &str) -> bool {
    delegate.agent == "*" || delegate.agent == agent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::identity;

    fn principal(kind: &str, value: &str) -> Principal {
        let mut p = Principal::default();
        let v = Some(value.to_string());
        match kind {
            "user" => p.user = v,
            "group" => p.group = v,
            "agent" => p.agent = v,
            _ => p.service_account = v,
        }
        p
    }

    #[test]
    fn service_account_of_an_identity_is_that_agent() {
        let ids = [identity("ci", "planner", &[]), identity("ci", "release-bot", &[])];
        let r = Requester::from_user_info("system:serviceaccount:ci:planner", ["system:serviceaccounts"], &ids, "ci");
        assert_eq!(r.agent.as_deref(), Some("planner"));
        assert!(r.is(&principal("agent", "planner")));
        assert!(r.is(&principal("serviceAccount", "ci/planner")));
        assert!(r.is(&principal("group", "system:serviceaccounts")));
        assert!(!r.is(&principal("agent", "release-bot")));
        assert!(!r.is(&principal("serviceAccount", "other/planner")));
        assert_eq!(r.to_string(), "agent planner (system:serviceaccount:ci:planner)");
    }

    #[test]
    fn service_accounts_of_other_namespaces_or_shared_ones_are_not_agents() {
        let ids = [identity("ci", "planner", &[])];
        let r = Requester::from_user_info("system:serviceaccount:prod:planner", Vec::<String>::new(), &ids, "ci");
        assert_eq!(r.agent, None);
        let mut twin = identity("ci", "planner-twin", &[]);
        twin.spec.service_account_name = "planner".into();
        let ids = [identity("ci", "planner", &[]), twin];
        let r = Requester::from_user_info("system:serviceaccount:ci:planner", Vec::<String>::new(), &ids, "ci");
        assert_eq!(r.agent, None, "ambiguous service account resolves to no agent");
    }

    #[test]
    fn users_and_groups_match_exactly_and_bad_principals_match_nobody() {
        let r = Requester::user("alice", ["release-managers"]);
        assert!(r.is(&principal("user", "alice")));
        assert!(!r.is(&principal("user", "Alice")));
        assert!(r.is(&principal("group", "release-managers")));
        assert!(!r.is(&principal("agent", "alice")));
        assert!(!r.is(&Principal::default()));
        let mut both = principal("user", "alice");
        both.group = Some("release-managers".into());
        assert!(!r.is(&both));
        assert_eq!(r.to_string(), "user alice (groups release-managers)");
    }

    #[test]
    fn delegates_star_names_every_agent() {
        assert!(delegate_matches(&AgentRef { agent: "*".into() }, "x"));
        assert!(delegate_matches(&AgentRef { agent: "x".into() }, "x"));
        assert!(!delegate_matches(&AgentRef { agent: "y".into() }, "x"));
    }
}

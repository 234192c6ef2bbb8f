//! Validation of AgentIdentity and DelegationPolicy objects themselves: a
//! malformed ceiling or policy must be refused before it can authorise anything.

use crate::api::{AgentIdentity, Capability, DelegationPolicy, Duration, Principal};

use super::grammar::{parse_action_pattern, parse_resource_pattern, parse_selector, GrammarError, PatternKind};
use super::requester::{principal_field, PrincipalField, SERVICE_ACCOUNT_PREFIX};
use super::rules::{Rule, Violation};
use super::{Limits, MAX_DELEGATION_DEPTH, MIN_CREDENTIAL_TTL};

/// The most ceiling entries, policy capabilities, delegators, approvers or
/// approval patterns (the schema's bound).
const MAX_LIST: usize = 64;
/// The most delegates in one policy (the schema's bound).
const MAX_DELEGATES: usize = 256;

/// Checks an AgentIdentity: ceiling entries are valid, not over-broad
/// patterns; the credential lifetime is between [`MIN_CREDENTIAL_TTL`] and the
/// operator maximum, and `rotateBefore` is shorter than it; the service
/// account name is a DNS-1123 subdomain; the owner is set; review periods are
/// positive. Returns every violation found (empty when valid).
pub fn validate_identity(id: &AgentIdentity, limits: &Limits) -> Vec<Violation> {
    let mut out = Vec::new();
    let spec = &id.spec;
    let malformed = |field: &str, message: String| Violation::new(field, Rule::MalformedIdentity, message);
    if let Err(why) = dns_subdomain(&spec.service_account_name) {
        out.push(malformed(
            "spec.serviceAccountName",
            format!("service account name {:?} {why}", spec.service_account_name),
        ));
    }
    if spec.owner.trim().is_empty() || spec.owner.chars().any(char::is_control) {
        out.push(malformed("spec.owner", "an accountable owner (team or person) must be named".to_string()));
    }
    for key in [crate::api::SUSPEND_REASON_ANNOTATION, crate::api::REVIEW_NOTE_ANNOTATION] {
        if let Some(text) = id.metadata.annotations.as_ref().and_then(|a| a.get(key)) {
            super::grant::check_free_text(&super::grant::annotation_field(key), text, &mut out);
        }
    }
    let ttl = spec.credential.ttl;
    if ttl < MIN_CREDENTIAL_TTL {
        out.push(malformed(
            "spec.credential.ttl",
            format!("a certificate lifetime of {ttl} is too short; at least {MIN_CREDENTIAL_TTL}"),
        ));
    } else if ttl > limits.max_credential_ttl {
        out.push(Violation::new(
            "spec.credential.ttl",
            Rule::TtlAboveOperatorMax,
            format!("a certificate lifetime of {ttl} is above the operator's maximum of {}", limits.max_credential_ttl),
        ));
    }
    let rotate = spec.credential.rotate_before;
    if rotate == Duration::default() || rotate >= ttl {
        out.push(malformed(
            "spec.credential.rotateBefore",
            format!("rotateBefore ({rotate}) must be more than zero and less than the certificate lifetime ({ttl})"),
        ));
    }
    if spec.ceiling.len() > MAX_LIST {
        out.push(malformed("spec.ceiling", format!("{} entries; at most {MAX_LIST}", spec.ceiling.len())));
    }
    check_patterns("spec.ceiling", &spec.ceiling, &mut out);
    if let Some(review) = &spec.review {
        if review.every == Duration::default() {
            out.push(malformed("spec.review.every", "the review period must be more than zero".to_string()));
        }
        if review.dormant_after == Some(Duration::default()) {
            out.push(malformed("spec.review.dormantAfter", "the dormancy period must be more than zero".to_string()));
        }
    }
    out
}

/// Checks a DelegationPolicy: every principal sets exactly one well-formed
/// field and does not name everyone; delegates are agent names or `*`;
/// capability patterns are valid and not over-broad; `maxTTL` is positive
/// and within the operator maximum; `maxDepth` is 1..=8; approval selectors
/// are valid and approvers are people (users or groups, not agents or
/// service accounts). Returns every violation found (empty when valid).
pub fn validate_policy(p: &DelegationPolicy, limits: &Limits) -> Vec<Violation> {
    let mut out = Vec::new();
    let spec = &p.spec;
    let malformed = |field: String, message: String| Violation::new(field, Rule::MalformedPolicy, message);
    check_list_len("spec.delegators", spec.delegators.len(), MAX_LIST, Rule::MalformedPolicy, &mut out);
    for (i, d) in spec.delegators.iter().enumerate() {
        if let Err(why) = check_principal(d, false) {
            out.push(malformed(format!("spec.delegators[{i}]"), why));
        }
    }
    check_list_len("spec.delegates", spec.delegates.len(), MAX_DELEGATES, Rule::MalformedPolicy, &mut out);
    for (i, d) in spec.delegates.iter().enumerate() {
        if d.agent != "*" {
            if let Err(why) = dns_subdomain(&d.agent) {
                out.push(malformed(
                    format!("spec.delegates[{i}].agent"),
                    format!("agent {:?} {why} (or \"*\" for every agent)", d.agent),
                ));
            }
        }
    }
    check_list_len("spec.capabilities", spec.capabilities.len(), MAX_LIST, Rule::MalformedPolicy, &mut out);
    check_patterns("spec.capabilities", &spec.capabilities, &mut out);
    if spec.max_ttl == Duration::default() {
        out.push(malformed("spec.maxTTL".into(), "maxTTL must be more than zero".into()));
    } else if spec.max_ttl > limits.max_grant_ttl {
        out.push(Violation::new(
            "spec.maxTTL",
            Rule::TtlAboveOperatorMax,
            format!("maxTTL {} is above the operator's maximum grant ttl of {}", spec.max_ttl, limits.max_grant_ttl),
        ));
    }
    if !(1..=MAX_DELEGATION_DEPTH).contains(&spec.max_depth) {
        out.push(malformed(
            "spec.maxDepth".into(),
            format!("maxDepth {} must be between 1 and {MAX_DELEGATION_DEPTH}", spec.max_depth),
        ));
    }
    if let Some(approval) = &spec.approval {
        check_list_len("spec.approval.required", approval.required.len(), MAX_LIST, Rule::MalformedPolicy, &mut out);
        for (i, c) in approval.required.iter().enumerate() {
            let field = format!("spec.approval.required[{i}]");
            push_grammar(&format!("{field}.action"), parse_selector(&c.action, PatternKind::Action), &mut out);
            push_grammar(&format!("{field}.resource"), parse_selector(&c.resource, PatternKind::Resource), &mut out);
        }
        check_list_len("spec.approval.approvers", approval.approvers.len(), MAX_LIST, Rule::MalformedPolicy, &mut out);
        for (i, a) in approval.approvers.iter().enumerate() {
            if let Err(why) = check_principal(a, true) {
                out.push(malformed(format!("spec.approval.approvers[{i}]"), why));
            }
        }
        match approval.timeout {
            Some(t) if t == Duration::default() => out.push(malformed(
                "spec.approval.timeout".into(),
                "approval timeout must be more than zero (it defaults to 1h when left out)".into(),
            )),
            Some(t) if t > limits.max_approval_wait => out.push(malformed(
                "spec.approval.timeout".into(),
                format!(
                    "approval timeout {t} is above the operator's maximum approval wait of {} (--max-approval-wait)",
                    limits.max_approval_wait
                ),
            )),
            _ => {}
        }
    }
    out
}

fn check_list_len(field: &str, len: usize, max: usize, rule: Rule, out: &mut Vec<Violation>) {
    if len == 0 {
        out.push(Violation::new(field, rule, "must list at least one entry"));
    } else if len > max {
        out.push(Violation::new(field, rule, format!("{len} entries; at most {max}")));
    }
}

/// Ceiling or policy capability patterns: the strict grammar.
fn check_patterns(field: &str, patterns: &[Capability], out: &mut Vec<Violation>) {
    for (i, c) in patterns.iter().enumerate() {
        push_grammar(&format!("{field}[{i}].action"), parse_action_pattern(&c.action), out);
        push_grammar(&format!("{field}[{i}].resource"), parse_resource_pattern(&c.resource), out);
    }
}

fn push_grammar<T>(field: &str, result: Result<T, GrammarError>, out: &mut Vec<Violation>) {
    if let Err(e) = result {
        out.push(Violation::new(field, e.rule, e.message));
    }
}

/// Whether a principal is well-formed. Approvers must be people: a user
/// (not a service account user name) or a group (not the service account groups).
fn check_principal(p: &Principal, approver: bool) -> Result<(), String> {
    let Some(field) = principal_field(p) else {
        return Err("set exactly one of user, group, agent or serviceAccount".to_string());
    };
    match field {
        PrincipalField::User(u) => {
            plain_name("user", u)?;
            if u == "system:anonymous" {
                return Err("user system:anonymous is everyone who did not authenticate".to_string());
            }
            if approver && u.starts_with(SERVICE_ACCOUNT_PREFIX) {
                return Err(format!("approver {u} is a service account; approvers must be people"));
            }
        }
        PrincipalField::Group(g) => {
            plain_name("group", g)?;
            if g == "system:authenticated" || g == "system:unauthenticated" {
                return Err(format!("group {g} names everyone; name the people who may do this"));
            }
            if approver && g.starts_with("system:serviceaccounts") {
                return Err(format!("approver group {g} is service accounts; approvers must be people"));
            }
        }
        PrincipalField::Agent(a) => {
            if approver {
                return Err(format!("approver agent {a}: approvers must be people (a user or a group)"));
            }
            dns_subdomain(a).map_err(|why| format!("agent {a:?} {why}"))?;
        }
        PrincipalField::ServiceAccount(sa) => {
            if approver {
                return Err(format!("approver service account {sa}: approvers must be people (a user or a group)"));
            }
            let Some((ns, name)) = sa.split_once('/') else {
                return Err(format!("service account {sa:?} must be written <namespace>/<name>"));
            };
            dns_label(ns).map_err(|why| format!("service account namespace {ns:?} {why}"))?;
            dns_subdomain(name).map_err(|why| format!("service account name {name:?} {why}"))?;
        }
    }
    Ok(())
}

fn plain_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.trim() != s || s.chars().any(char::is_control) {
        return Err(format!("{what} {s:?} must be a non-empty name without surrounding spaces or control characters"));
    }
    if s.contains('*') {
        return Err(format!("{what} {s:?} contains '*': principals name exact users and groups"));
    }
    Ok(())
}

/// A DNS-1123 subdomain (the rule for most Kubernetes object names): at most
/// 253 characters, lower-case alphanumerics, `-` and `.`, starting and ending
/// alphanumeric.
pub(crate) fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters long".to_string());
    }
    for label in s.split('.') {
        dns_chars(label)?;
    }
    Ok(())
}

/// A DNS-1123 label (namespace names): at most 63 lower-case alphanumerics or
/// `-`, starting and ending alphanumeric.
pub(crate) fn dns_label(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be at most 63 characters long".to_string());
    }
    dns_chars(s)
}

fn dns_chars(s: &str) -> Result<(), String> {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) if alnum(first) && alnum(last) => {}
        _ => return Err("must start and end with a lower-case letter or digit".to_string()),
    }
    if bytes.iter().all(|&c| alnum(c) || c == b'-') {
        Ok(())
    } else {
        Err("may only contain lower-case letters, digits, '-' and '.'".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentRef, ApprovalPolicy, ReviewSpec};
    use crate::policy::testing::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn a_sound_identity_is_valid() {
        let mut id = identity("ci", "release-bot", &[("k8s:deployments.get", "k8s:staging/deployments/*")]);
        id.spec.review = Some(ReviewSpec { every: Duration::from_hours(24 * 90), dormant_after: None });
        assert_eq!(validate_identity(&id, &limits()), vec![]);
    }

    #[test]
    fn malformed_identities_are_refused_field_by_field() {
        let mut id = identity("ci", "release-bot", &[("k8s:*", "k8s:staging/web"), ("k8s:pods.get", "k8s:a/../b")]);
        id.spec.service_account_name = "Release_Bot".into();
        id.spec.owner = " ".into();
        id.spec.credential.ttl = Duration::from_secs(5);
        id.spec.review =
            Some(ReviewSpec { every: Duration::from_secs(0), dormant_after: Some(Duration::from_secs(0)) });
        let v = validate_identity(&id, &limits());
        let fields: Vec<_> = v.iter().map(|v| (v.field.as_str(), v.rule.id())).collect();
        assert_eq!(
            fields,
            vec![
                ("spec.serviceAccountName", "malformed-identity"),
                ("spec.owner", "malformed-identity"),
                ("spec.credential.ttl", "malformed-identity"),
                ("spec.credential.rotateBefore", "malformed-identity"),
                ("spec.ceiling[0].action", "overbroad-pattern"),
                ("spec.ceiling[1].resource", "dot-segment"),
                ("spec.review.every", "malformed-identity"),
                ("spec.review.dormantAfter", "malformed-identity"),
            ]
        );
    }

    #[test]
    fn identity_certificate_lifetime_is_bounded_by_the_operator() {
        let mut id = identity("ci", "release-bot", &[]);
        id.spec.credential.ttl = Duration::from_hours(48);
        assert_eq!(ids(&validate_identity(&id, &limits())), vec!["ttl-above-operator-max"]);
    }

    fn sound_policy() -> DelegationPolicy {
        with_approval(
            policy(
                "ci",
                "release-flow",
                vec![group("release-managers"), agent("planner"), service_account("ci/pipeline"), user("alice")],
                &["release-bot"],
                &[("k8s:deployments.*", "k8s:staging/deployments/*")],
                Duration::from_mins(30),
            ),
            &[("k8s:deployments.delete", "*")],
            vec![group("sre-oncall"), user("bob")],
        )
    }

    #[test]
    fn a_sound_policy_is_valid() {
        assert_eq!(validate_policy(&sound_policy(), &limits()), vec![]);
    }

    #[test]
    fn malformed_policies_are_refused_field_by_field() {
        let mut p = sound_policy();
        p.spec.delegators = vec![
            Principal::default(),
            Principal { user: Some("a".into()), group: Some("b".into()), ..Principal::default() },
            service_account("ci"),
            group("system:authenticated"),
            user(""),
        ];
        p.spec.delegates = vec![AgentRef { agent: "Bad_Name".into() }, AgentRef { agent: "*".into() }];
        p.spec.capabilities = caps(&[("k8s:deployments.get", "k8s:*")]);
        p.spec.max_ttl = Duration::from_secs(0);
        p.spec.max_depth = 9;
        p.spec.approval = Some(ApprovalPolicy {
            required: caps(&[("k8s:a b", "*")]),
            approvers: vec![agent("planner"), user("system:serviceaccount:ci:bot"), service_account("ci/bot")],
            timeout: None,
        });
        let v = validate_policy(&p, &limits());
        let fields: Vec<_> = v.iter().map(|v| (v.field.as_str(), v.rule.id())).collect();
        assert_eq!(
            fields,
            vec![
                ("spec.delegators[0]", "malformed-policy"),
                ("spec.delegators[1]", "malformed-policy"),
                ("spec.delegators[2]", "malformed-policy"),
                ("spec.delegators[3]", "malformed-policy"),
                ("spec.delegators[4]", "malformed-policy"),
                ("spec.delegates[0].agent", "malformed-policy"),
                ("spec.capabilities[0].resource", "overbroad-pattern"),
                ("spec.maxTTL", "malformed-policy"),
                ("spec.maxDepth", "malformed-policy"),
                ("spec.approval.required[0].action", "invalid-character"),
                ("spec.approval.approvers[0]", "malformed-policy"),
                ("spec.approval.approvers[1]", "malformed-policy"),
                ("spec.approval.approvers[2]", "malformed-policy"),
            ]
        );
    }

    #[test]
    fn empty_lists_and_long_policies_are_refused() {
        let mut p = sound_policy();
        p.spec.delegators.clear();
        p.spec.delegates.clear();
        p.spec.capabilities.clear();
        p.spec.max_ttl = Duration::from_hours(2);
        let v = validate_policy(&p, &limits());
        assert_eq!(ids(&v), vec!["malformed-policy", "malformed-policy", "malformed-policy", "ttl-above-operator-max"]);
    }

    #[test]
    fn an_approval_timeout_is_positive_and_within_the_operators_maximum() {
        let mut p = with_approval(sound_policy(), &[("k8s:deployments.delete", "*")], vec![group("sre-oncall")]);
        let timeout = |p: &mut DelegationPolicy, t: Option<Duration>| {
            if let Some(a) = p.spec.approval.as_mut() {
                a.timeout = t;
            }
        };
        assert!(validate_policy(&p, &limits()).is_empty(), "the default (1h) is fine");
        timeout(&mut p, Some(Duration::from_hours(24)));
        assert!(validate_policy(&p, &limits()).is_empty(), "the maximum itself is fine");
        timeout(&mut p, Some(Duration::from_hours(48)));
        let v = validate_policy(&p, &limits());
        assert_eq!(ids(&v), vec!["malformed-policy"]);
        assert_eq!(v[0].field, "spec.approval.timeout");
        assert!(v[0].message.contains("2d") && v[0].message.contains("--max-approval-wait"), "{}", v[0]);
        timeout(&mut p, Some(Duration::from_secs(0)));
        assert_eq!(validate_policy(&p, &limits())[0].field, "spec.approval.timeout");
    }

    #[test]
    fn dns_names() {
        assert!(dns_subdomain("release-bot").is_ok());
        assert!(dns_subdomain("a.b-c.d").is_ok());
        assert!(dns_subdomain("").is_err());
        assert!(dns_subdomain("-a").is_err());
        assert!(dns_subdomain("a..b").is_err());
        assert!(dns_subdomain("A").is_err());
        assert!(dns_label("a.b").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
    }
}

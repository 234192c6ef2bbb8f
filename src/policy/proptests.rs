//! Property tests for the grammar, the matcher and admission, against an
//! independent, deliberately naive reference matcher.

use proptest::prelude::*;

use super::grammar::{glob_match, parse_action, parse_action_pattern, parse_resource, parse_resource_pattern};
use super::testing::*;
use super::{admit_grant, capability_within, GrantContext, Limits, Requester};
use crate::api::{Capability, Duration};

/// The specification of `*`, written as directly as possible: a `*` matches
/// the empty string, or one non-separator character followed by whatever
/// the same `*` matches. Exponential in the worst case; fine for short inputs.
fn reference_match(p: &[u8], t: &[u8]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some((b'*', rest)) => {
            reference_match(rest, t)
                || t.first().is_some_and(|c| *c != b'/' && *c != b':') && reference_match(p, &t[1..])
        }
        Some((c, rest)) => t.first() == Some(c) && reference_match(rest, &t[1..]),
    }
}

/// The canonical-form rules, restated independently of the parser.
fn looks_canonical(resource: &str) -> bool {
    let Some((scheme, path)) = resource.split_once(':') else {
        return false;
    };
    !scheme.is_empty()
        && !scheme.contains('/')
        && resource.bytes().all(|b| b.is_ascii_graphic() && b != b'%' && b != b'*')
        && !resource.contains("..")
        && path.split('/').all(|seg| !seg.is_empty() && seg != ".")
}

fn action_patterns() -> impl Strategy<Value = String> {
    "[ab]{1,2}:[ab*.]{1,4}"
}

fn resource_patterns() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => ("[ab]{1,2}", proptest::collection::vec(prop_oneof![4 => "[ab*]{1,3}", 1 => "[ab*.:]{1,3}"], 1..4))
            .prop_map(|(scheme, segments)| format!("{scheme}:{}", segments.join("/"))),
        1 => "[ab]{1,2}:[ab*./:%]{1,7}",
    ]
}

fn actions() -> impl Strategy<Value = String> {
    "[ab*:/.%]{1,2}:[ab.*%]{0,4}"
}

fn resources() -> impl Strategy<Value = String> {
    "[ab]{1,2}:[ab*./:%\\x00 ]{0,7}"
}

/// A granted capability: either the ceiling with every `*` filled in (often
/// admissible, sometimes crossing a separator) or an unrelated random one.
#[derive(Clone, Debug)]
enum Granted {
    Filled { action_fill: String, resource_fill: String },
    Random { action: String, resource: String },
}

impl Granted {
    fn instantiate(&self, ceiling_action: &str, ceiling_resource: &str) -> (String, String) {
        match self {
            Self::Filled { action_fill, resource_fill } => {
                (ceiling_action.replace('*', action_fill), ceiling_resource.replace('*', resource_fill))
            }
            Self::Random { action, resource } => (action.clone(), resource.clone()),
        }
    }
}

/// What replaces each `*`: usually harmless, sometimes a separator, `%`, `.` or `*`.
fn fill() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[ab]{0,2}", 1 => "[ab.:/%*]{1,2}"]
}

fn granted_capability() -> impl Strategy<Value = Granted> {
    prop_oneof![
        6 => (fill(), fill())
            .prop_map(|(action_fill, resource_fill)| Granted::Filled { action_fill, resource_fill }),
        1 => (actions(), resources()).prop_map(|(action, resource)| Granted::Random { action, resource }),
    ]
}

/// 2000 cases per property unless `PROPTEST_CASES` asks for more (or fewer).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// (b) The two-pointer matcher agrees with the reference on random inputs.
    #[test]
    fn glob_matcher_equals_reference(p in "[ab*/:]{0,8}", t in "[ab*/:]{0,10}") {
        prop_assert_eq!(glob_match(&p, &t), reference_match(p.as_bytes(), t.as_bytes()), "pattern {:?} text {:?}", p, t);
    }

    /// (b) ... also when the text is derived from the pattern, so matches are common.
    #[test]
    fn glob_matcher_equals_reference_on_likely_matches(p in "[ab*/:]{0,8}", fill in "[ab/:]{0,3}") {
        let t = p.replace('*', &fill);
        prop_assert_eq!(glob_match(&p, &t), reference_match(p.as_bytes(), t.as_bytes()), "pattern {:?} text {:?}", p, t);
    }

    /// (c) Canonicalisation never accepts `..`, `//`, `%`, control characters, or empty/dot segments.
    #[test]
    fn parse_resource_accepts_only_canonical_resources(s in "[ab./:%*\\x00\\x7f \t/]{0,12}") {
        if parse_resource(&s).is_ok() {
            prop_assert!(!s.contains("..") && !s.contains("//") && !s.contains('%'), "{:?}", s);
            prop_assert!(!s.chars().any(|c| c.is_control() || c.is_whitespace()), "{:?}", s);
            prop_assert!(looks_canonical(&s), "{:?}", s);
        }
    }

    /// (c) ... and the exact grammar is exactly the reference definition on this alphabet.
    #[test]
    fn parse_resource_matches_the_reference_definition(s in "[ab./:%*]{0,10}") {
        prop_assert_eq!(parse_resource(&s).is_ok(), looks_canonical(&s), "{:?}", s);
    }

    /// (a) Whatever admission accepts lies within the ceiling, by the reference matcher.
    #[test]
    fn admitted_capabilities_lie_within_the_ceiling(
        ceiling_action in action_patterns(),
        ceiling_resource in resource_patterns(),
        granted in proptest::collection::vec(granted_capability(), 1..4),
    ) {
        let ceiling = [(ceiling_action.as_str(), ceiling_resource.as_str())];
        let agent = identity("ns", "bot", &ceiling);
        // A policy that covers everything the ceiling could: the grammar keeps
        // the ceiling honest, the policy is not what is under test.
        let policies = vec![policy("ns", "p", vec![user("alice")], &["bot"], &ceiling, Duration::from_mins(30))];
        let pairs: Vec<(String, String)> = granted.iter().map(|g| g.instantiate(&ceiling_action, &ceiling_resource)).collect();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(a, r)| (a.as_str(), r.as_str())).collect();
        let g = grant("ns", "g", "bot", &pairs, Duration::from_mins(5));
        let requester = Requester::user("alice", Vec::<String>::new());
        let limits = Limits::default();
        let ctx = GrantContext {
            namespace: "ns", requester: &requester, agent: Some(&agent), policies: &policies,
            ancestors: &[], now: now(), limits: &limits,
        };
        if admit_grant(&g, &ctx).is_ok() {
            for cap in &g.spec.capabilities {
                prop_assert!(!cap.action.contains('*') && !cap.resource.contains('*'));
                prop_assert!(looks_canonical(&cap.resource), "{:?}", cap.resource);
                prop_assert!(reference_match(ceiling_action.as_bytes(), cap.action.as_bytes()), "{} vs {}", cap.action, ceiling_action);
                prop_assert!(reference_match(ceiling_resource.as_bytes(), cap.resource.as_bytes()), "{} vs {}", cap.resource, ceiling_resource);
            }
        }
    }

    /// (a) ... and `capability_within` agrees with the reference whenever both sides are well-formed.
    #[test]
    fn capability_within_agrees_with_reference(
        pa in action_patterns(), pr in resource_patterns(), a in actions(), r in resources(),
    ) {
        let within = capability_within(&Capability::new(&a, &r), &Capability::new(&pa, &pr));
        let well_formed = parse_action_pattern(&pa).is_ok() && parse_resource_pattern(&pr).is_ok()
            && parse_action(&a).is_ok() && parse_resource(&r).is_ok();
        let expected = well_formed && reference_match(pa.as_bytes(), a.as_bytes()) && reference_match(pr.as_bytes(), r.as_bytes());
        prop_assert_eq!(within, expected);
    }

    /// (d) Nothing panics on arbitrary strings.
    #[test]
    fn nothing_panics_on_arbitrary_input(a in "\\PC{0,40}", r in any::<String>()) {
        let _ = parse_action(&a);
        let _ = parse_resource(&r);
        let _ = parse_action_pattern(&a);
        let _ = parse_resource_pattern(&r);
        let _ = super::parse_selector(&r, super::PatternKind::Resource);
        let _ = glob_match(&a, &r);
        let _ = capability_within(&Capability::new(&a, &r), &Capability::new(&r, &a));
        let agent = identity("ns", "bot", &[(a.as_str(), r.as_str())]);
        let policies = vec![policy("ns", "p", vec![user(&a)], &[&r], &[(r.as_str(), a.as_str())], Duration::from_mins(30))];
        let _ = super::validate_policy(&policies[0], &Limits::default());
        let _ = super::validate_identity(&agent, &Limits::default());
        let g = grant("ns", &a, &r, &[(a.as_str(), r.as_str())], Duration::from_mins(5));
        let requester = Requester::user(a.clone(), [r.clone()]);
        let limits = Limits::default();
        let ctx = GrantContext {
            namespace: "ns", requester: &requester, agent: Some(&agent), policies: &policies,
            ancestors: std::slice::from_ref(&g), now: now(), limits: &limits,
        };
        let _ = admit_grant(&g, &ctx);
    }
}

#[test]
fn reference_matcher_sanity() {
    assert!(reference_match(b"a*b", b"axxb"));
    assert!(!reference_match(b"a*b", b"ax/b"));
    assert!(!reference_match(b"a*", b"a:b"));
    assert!(reference_match(b"*", b""));
}

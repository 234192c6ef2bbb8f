//! The capability grammar (docs/design.md, "Capability grammar"): exact
//! actions and resources for grants, patterns for ceilings and policies, and
//! the matcher between them.
//!
//! # Values
//!
//! * An **action** is `<service>:<verb>`: exactly one `:`, a non-empty service
//!   and verb, no `/` (`github:pulls.read`, `k8s:deployments.patch`).
//! * A **resource** is `<scheme>:<path>`: the scheme is everything before the
//!   first `:` and is non-empty (so it has no `/`); the path is one or more
//!   `/`-separated segments (`repo:acme/web`, `k8s:staging/deployments/web`).
//!   A segment may contain `:` (`oci:ghcr.io/acme/web:v2`).
//! * Both are case-sensitive, printable ASCII (`!`..=`~`), at most 253
//!   (action) and 1024 (resource) characters.
//! * Resources are checked in canonical form and refused, never normalised,
//!   when they have a `.` or `..` segment, an empty segment (leading, trailing
//!   or doubled `/`), `..` anywhere in the path (it would be a traversal to a
//!   server that also splits on `:` or `\`), a `%` (percent-encoding,
//!   anywhere, also in actions), or whitespace, control or non-ASCII characters.
//!
//! # Patterns
//!
//! In ceilings and policies `*` matches any run of characters (possibly
//! empty) within one segment: never `/` and never `:`. There are no other
//! metacharacters; `**` is refused so nobody mistakes it for a recursive glob.
//! A grant names exact values only: any `*` there is `wildcard-in-grant`.
//!
//! A ceiling or policy pattern must also not be **over-broad**
//! (`overbroad-pattern`):
//! * the service of an action pattern and the scheme of a resource pattern
//!   are literal (no `*`);
//! * the verb of an action pattern has at least one character that is not `*`
//!   (`k8s:*` is refused, `k8s:deployments.*` is fine);
//! * a resource pattern has at least one segment without `*`
//!   (`k8s:*/*` is refused, `k8s:staging/deployments/*` is fine).
//!
//! Approval selectors (`approval.required`) only ever *add* a human to the
//! loop, so breadth is safe there: they follow the same syntax without the
//! breadth rules, and a field that is exactly `*` selects every value.

use std::fmt;

use crate::api::Capability;

use super::rules::Rule;

/// The longest action accepted (the schema's bound).
pub const MAX_ACTION_LEN: usize = 253;
/// The longest resource accepted (the schema's bound).
pub const MAX_RESOURCE_LEN: usize = 1024;

/// Why an action, resource or pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GrammarError {
    /// The rule broken.
    pub rule: Rule,
    /// What is wrong, naming the value.
    pub message: String,
}

impl GrammarError {
    fn new(rule: Rule, message: impl Into<String>) -> Self {
        Self { rule, message: message.into() }
    }
}

/// An exact action, split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action<'a> {
    /// The part before `:`, e.g. `k8s`.
    pub service: &'a str,
    /// The part after `:`, e.g. `deployments.patch`.
    pub verb: &'a str,
}

/// An exact resource, split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource<'a> {
    /// The part before the first `:`, e.g. `k8s`.
    pub scheme: &'a str,
    /// The part after the first `:`, e.g. `staging/deployments/web`.
    pub path: &'a str,
}

/// Which field a value or pattern belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PatternKind {
    /// An action, `<service>:<verb>`.
    Action,
    /// A resource, `<scheme>:<path>`.
    Resource,
}

impl PatternKind {
    fn noun(self) -> &'static str {
        match self {
            Self::Action => "action",
            Self::Resource => "resource",
        }
    }
}

/// A validated pattern (ceiling, policy or approval selector) that exact
/// values are matched against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    source: String,
    kind: PatternKind,
    /// An approval selector that is exactly `*`: selects every value.
    any: bool,
}

impl Pattern {
    /// Whether `value` is a canonical exact value of this pattern's kind that
    /// the pattern matches. Values that are not canonical never match (fail closed).
    pub fn matches(&self, value: &str) -> bool {
        let canonical = match self.kind {
            PatternKind::Action => parse_action(value).is_ok(),
            PatternKind::Resource => parse_resource(value).is_ok(),
        };
        canonical && (self.any || glob_match(&self.source, value))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether this pattern is an action or a resource pattern.
    pub fn kind(&self) -> PatternKind {
        self.kind
    }

    /// Whether the pattern has no `*` (matches exactly one value).
    pub fn is_literal(&self) -> bool {
        !self.source.contains('*')
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// How strictly a string is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Grants: no `*` at all.
    Exact,
    /// Ceilings and policies: `*` within a segment, breadth rules apply.
    Pattern,
    /// Approval selectors: `*` within a segment, no breadth rules.
    Selector,
}

/// Parses an exact action as a grant names it.
pub fn parse_action(s: &str) -> Result<Action<'_>, GrammarError> {
    parse_action_in(s, Mode::Exact)
}

/// Parses an exact resource as a grant names it, in canonical form.
pub fn parse_resource(s: &str) -> Result<Resource<'_>, GrammarError> {
    parse_resource_in(s, Mode::Exact)
}

/// Parses a ceiling or policy action pattern (service literal, verb not only `*`).
pub fn parse_action_pattern(s: &str) -> Result<Pattern, GrammarError> {
    parse_action_in(s, Mode::Pattern)?;
    Ok(Pattern { source: s.to_string(), kind: PatternKind::Action, any: false })
}

/// Parses a ceiling or policy resource pattern (scheme literal, at least one
/// segment without `*`).
pub fn parse_resource_pattern(s: &str) -> Result<Pattern, GrammarError> {
    parse_resource_in(s, Mode::Pattern)?;
    Ok(Pattern { source: s.to_string(), kind: PatternKind::Resource, any: false })
}

/// Parses an approval selector (`approval.required`) of the given kind: the
/// pattern syntax without the breadth rules, and `*` alone selects everything.
pub fn parse_selector(s: &str, kind: PatternKind) -> Result<Pattern, GrammarError> {
    if s == "*" {
        return Ok(Pattern { source: s.to_string(), kind, any: true });
    }
    match kind {
        PatternKind::Action => parse_action_in(s, Mode::Selector).map(|_| ()),
        PatternKind::Resource => parse_resource_in(s, Mode::Selector).map(|_| ()),
    }?;
    Ok(Pattern { source: s.to_string(), kind, any: false })
}

/// Whether the exact capability `cap` lies within the ceiling or policy
/// pattern `pattern`. False when either side is malformed (fail closed).
pub fn capability_within(cap: &Capability, pattern: &Capability) -> bool {
    let (Ok(action), Ok(resource)) = (parse_action_pattern(&pattern.action), parse_resource_pattern(&pattern.resource))
    else {
        return false;
    };
    action.matches(&cap.action) && resource.matches(&cap.resource)
}

/// A capability pattern pair, parsed once and matched many times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapabilityPattern {
    /// The action pattern.
    pub action: Pattern,
    /// The resource pattern.
    pub resource: Pattern,
}

impl CapabilityPattern {
    /// Parses a ceiling or policy entry.
    pub fn parse(pattern: &Capability) -> Result<Self, GrammarError> {
        Ok(Self {
            action: parse_action_pattern(&pattern.action)?,
            resource: parse_resource_pattern(&pattern.resource)?,
        })
    }

    /// Parses an approval selector entry.
    pub fn parse_selector(pattern: &Capability) -> Result<Self, GrammarError> {
        Ok(Self {
            action: parse_selector(&pattern.action, PatternKind::Action)?,
            resource: parse_selector(&pattern.resource, PatternKind::Resource)?,
        })
    }

    /// Whether the exact capability `cap` is matched by both halves.
    pub fn matches(&self, cap: &Capability) -> bool {
        self.action.matches(&cap.action) && self.resource.matches(&cap.resource)
    }
}

impl fmt::Display for CapabilityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.action, self.resource)
    }
}

/// Characters allowed anywhere: printable ASCII except space. `%` is refused
/// separately so its rule can be named.
fn check_characters(s: &str, kind: PatternKind, max: usize) -> Result<(), GrammarError> {
    let noun = kind.noun();
    if s.is_empty() {
        let rule = match kind {
            PatternKind::Action => Rule::MalformedAction,
            PatternKind::Resource => Rule::MalformedResource,
        };
        return Err(GrammarError::new(rule, format!("empty {noun}")));
    }
    if s.len() > max {
        return Err(GrammarError::new(
            Rule::ValueTooLong,
            format!("{noun} is {} characters long; at most {max} are allowed", s.len()),
        ));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        let what = if c.is_whitespace() {
            "whitespace"
        } else if c.is_control() {
            "a control character"
        } else {
            "a non-ASCII character"
        };
        return Err(GrammarError::new(
            Rule::InvalidCharacter,
            format!("{noun} {s:?} contains {what} ({c:?}); only printable ASCII is allowed"),
        ));
    }
    if s.contains('%') {
        return Err(GrammarError::new(
            Rule::PercentEncoding,
            format!("{noun} {s:?} contains '%': percent-encoding is not allowed, write the plain value"),
        ));
    }
    Ok(())
}

fn check_wildcards(s: &str, kind: PatternKind, mode: Mode) -> Result<(), GrammarError> {
    let noun = kind.noun();
    if mode == Mode::Exact && s.contains('*') {
        return Err(GrammarError::new(
            Rule::WildcardInGrant,
            format!("{noun} {s:?} contains '*': a grant names exact {noun}s only"),
        ));
    }
    if s.contains("**") {
        let rule = match kind {
            PatternKind::Action => Rule::MalformedAction,
            PatternKind::Resource => Rule::MalformedResource,
        };
        return Err(GrammarError::new(
            rule,
            format!("{noun} pattern {s:?} contains '**': '*' never crosses '/' or ':', so write one '*' per segment"),
        ));
    }
    Ok(())
}

fn parse_action_in(s: &str, mode: Mode) -> Result<Action<'_>, GrammarError> {
    check_characters(s, PatternKind::Action, MAX_ACTION_LEN)?;
    check_wildcards(s, PatternKind::Action, mode)?;
    let malformed = |why: &str| GrammarError::new(Rule::MalformedAction, format!("action {s:?} {why}"));
    let Some((service, verb)) = s.split_once(':') else {
        return Err(malformed("must be <service>:<verb>, e.g. k8s:deployments.patch"));
    };
    if service.is_empty() {
        return Err(malformed("has an empty service (the part before ':')"));
    }
    if verb.is_empty() {
        return Err(malformed("has an empty verb (the part after ':')"));
    }
    if verb.contains(':') {
        return Err(malformed("has more than one ':'"));
    }
    if s.contains('/') {
        return Err(malformed("contains '/': an action is one <service>:<verb> pair"));
    }
    if mode == Mode::Pattern {
        let broad = |why: &str| GrammarError::new(Rule::OverbroadPattern, format!("action pattern {s:?} {why}"));
        if service.contains('*') {
            return Err(broad("has '*' in its service: the service must be spelled out"));
        }
        if verb.bytes().all(|b| b == b'*') {
            return Err(broad("allows every verb of the service: name at least part of the verb"));
        }
    }
    Ok(Action { service, verb })
}

fn parse_resource_in(s: &str, mode: Mode) -> Result<Resource<'_>, GrammarError> {
    check_characters(s, PatternKind::Resource, MAX_RESOURCE_LEN)?;
    check_wildcards(s, PatternKind::Resource, mode)?;
    let malformed = |why: &str| GrammarError::new(Rule::MalformedResource, format!("resource {s:?} {why}"));
    let Some((scheme, path)) = s.split_once(':') else {
        return Err(malformed("must be <scheme>:<path>, e.g. k8s:staging/deployments/web"));
    };
    if scheme.is_empty() {
        return Err(malformed("has an empty scheme (the part before ':')"));
    }
    if scheme.contains('/') {
        return Err(malformed("has a '/' before its first ':': the scheme comes first"));
    }
    if scheme.contains("..") {
        return Err(GrammarError::new(
            Rule::DotSegment,
            format!("resource {s:?} has \"..\" in its scheme; it is refused anywhere in a resource"),
        ));
    }
    if path.is_empty() {
        return Err(malformed("has an empty path (the part after ':')"));
    }
    let segments: Vec<&str> = path.split('/').collect();
    let mut literal_segments = 0;
    for (i, segment) in segments.iter().copied().enumerate() {
        if segment.is_empty() {
            let position = if i == 0 {
                "a leading '/'"
            } else if i == segments.len() - 1 {
                "a trailing '/'"
            } else {
                "a doubled '/'"
            };
            return Err(GrammarError::new(
                Rule::EmptySegment,
                format!("resource {s:?} has {position} (an empty segment); paths are checked in canonical form, not normalised"),
            ));
        }
        if segment == "." || segment == ".." {
            return Err(GrammarError::new(
                Rule::DotSegment,
                format!(
                    "resource {s:?} has a {segment:?} segment; paths are checked in canonical form, not normalised"
                ),
            ));
        }
        if segment.contains("..") {
            // Not a traversal here, but it would be to a server that also splits on ':' or '\\'.
            return Err(GrammarError::new(
                Rule::DotSegment,
                format!("resource {s:?} contains \"..\"; it is refused anywhere in a path"),
            ));
        }
        if !segment.contains('*') {
            literal_segments += 1;
        }
    }
    if mode == Mode::Pattern {
        let broad = |why: &str| GrammarError::new(Rule::OverbroadPattern, format!("resource pattern {s:?} {why}"));
        if scheme.contains('*') {
            return Err(broad("has '*' in its scheme: the scheme must be spelled out"));
        }
        if literal_segments == 0 {
            return Err(broad("has no segment without '*': name at least one segment exactly"));
        }
    }
    Ok(Resource { scheme, path })
}

/// The glob matcher: `*` in `pattern` matches any run of bytes in `text` that
/// contains neither `/` nor `:`; every other byte matches itself.
///
/// Separators can only be matched literally, so both strings are walked one
/// segment at a time and each pair of segments is matched with the classic
/// two-pointer algorithm (backtrack only to the most recent `*`): O(|p|·|t|)
/// in the worst case, never exponential.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let is_separator = |b: &u8| *b == b'/' || *b == b':';
    let (mut p, mut t) = (pattern.as_bytes(), text.as_bytes());
    loop {
        let p_end = p.iter().position(is_separator).unwrap_or(p.len());
        let t_end = t.iter().position(is_separator).unwrap_or(t.len());
        if !segment_match(&p[..p_end], &t[..t_end]) {
            return false;
        }
        match (p.get(p_end), t.get(t_end)) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b => {
                p = &p[p_end + 1..];
                t = &t[t_end + 1..];
            }
            _ => return false,
        }
    }
}

/// Two-pointer wildcard match of one segment (no separators on either side).
fn segment_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` seen in p, and where in t its match currently ends.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if p.get(pi) == Some(&b'*') {
            star = Some((pi, ti));
            pi += 1;
        } else if p.get(pi) == Some(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((star_pi, star_ti)) = star {
            // Let the last `*` swallow one more byte and retry after it.
            pi = star_pi + 1;
            ti = star_ti + 1;
            star = Some((star_pi, ti));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_of<T: fmt::Debug>(r: Result<T, GrammarError>) -> Rule {
        r.expect_err("should be refused").rule
    }

    #[test]
    fn exact_values_parse_into_parts() {
        assert_eq!(
            parse_action("k8s:deployments.patch").unwrap(),
            Action { service: "k8s", verb: "deployments.patch" }
        );
        assert_eq!(
            parse_resource("k8s:staging/deployments/web").unwrap(),
            Resource { scheme: "k8s", path: "staging/deployments/web" }
        );
        assert!(parse_resource("repo:acme/web").is_ok());
        assert!(parse_resource("oci:ghcr.io/acme/web:v2").is_ok(), "':' is allowed inside path segments");
        assert!(parse_resource("repo:acme").is_ok(), "a single segment is a path");
        assert!(parse_resource("k8s:a/.hidden/x.y").is_ok(), "single dots inside a segment are fine");
    }

    #[test]
    fn malformed_actions_name_the_rule() {
        assert_eq!(rule_of(parse_action("")), Rule::MalformedAction);
        assert_eq!(rule_of(parse_action("deploy")), Rule::MalformedAction);
        assert_eq!(rule_of(parse_action(":patch")), Rule::MalformedAction);
        assert_eq!(rule_of(parse_action("k8s:")), Rule::MalformedAction);
        assert_eq!(rule_of(parse_action("k8s:a:b")), Rule::MalformedAction);
        assert_eq!(rule_of(parse_action("k8s:pods/exec")), Rule::MalformedAction);
        assert_eq!(rule_of(parse_action("k8s:*")), Rule::WildcardInGrant);
        assert_eq!(rule_of(parse_action("*")), Rule::WildcardInGrant);
        assert_eq!(rule_of(parse_action("k8s: get")), Rule::InvalidCharacter);
        assert_eq!(rule_of(parse_action("k8s:gét")), Rule::InvalidCharacter);
        assert_eq!(rule_of(parse_action("k8s:get%20")), Rule::PercentEncoding);
        assert_eq!(rule_of(parse_action(&format!("k8s:{}", "a".repeat(260)))), Rule::ValueTooLong);
    }

    #[test]
    fn non_canonical_resources_are_refused_not_normalised() {
        assert_eq!(rule_of(parse_resource("")), Rule::MalformedResource);
        assert_eq!(rule_of(parse_resource("staging/web")), Rule::MalformedResource);
        assert_eq!(rule_of(parse_resource(":staging/web")), Rule::MalformedResource);
        assert_eq!(rule_of(parse_resource("k8s:")), Rule::MalformedResource);
        assert_eq!(rule_of(parse_resource("a/b:c")), Rule::MalformedResource);
        assert_eq!(rule_of(parse_resource("k8s:staging/../prod/web")), Rule::DotSegment);
        assert_eq!(rule_of(parse_resource("k8s:./web")), Rule::DotSegment);
        assert_eq!(rule_of(parse_resource("k8s:staging/..")), Rule::DotSegment);
        assert_eq!(rule_of(parse_resource("k8s:staging/web:..")), Rule::DotSegment);
        assert_eq!(rule_of(parse_resource("k8s:staging/a..b")), Rule::DotSegment);
        assert_eq!(rule_of(parse_resource("..::")), Rule::DotSegment);
        assert_eq!(rule_of(parse_resource("a..b:staging/web")), Rule::DotSegment);
        assert_eq!(rule_of(parse_resource("k8s:/staging")), Rule::EmptySegment);
        assert_eq!(rule_of(parse_resource("k8s:staging/")), Rule::EmptySegment);
        assert_eq!(rule_of(parse_resource("k8s:staging//web")), Rule::EmptySegment);
        assert_eq!(rule_of(parse_resource("k8s:staging/%2e%2e/web")), Rule::PercentEncoding);
        assert_eq!(rule_of(parse_resource("k8s:staging/web\n")), Rule::InvalidCharacter);
        assert_eq!(rule_of(parse_resource("k8s:staging/w\u{0}eb")), Rule::InvalidCharacter);
        assert_eq!(rule_of(parse_resource("k8s:staging/wéb")), Rule::InvalidCharacter);
        assert_eq!(rule_of(parse_resource("k8s:staging/*")), Rule::WildcardInGrant);
        assert_eq!(rule_of(parse_resource(&format!("k8s:{}", "a".repeat(1100)))), Rule::ValueTooLong);
        let msg = parse_resource("k8s:staging/../prod").unwrap_err().to_string();
        assert!(msg.contains("\"..\"") && msg.contains("k8s:staging/../prod"), "{msg}");
    }

    #[test]
    fn overbroad_patterns_are_refused_in_ceilings_and_policies() {
        assert_eq!(rule_of(parse_action_pattern("*:get")), Rule::OverbroadPattern);
        assert_eq!(rule_of(parse_action_pattern("k*:get")), Rule::OverbroadPattern);
        assert_eq!(rule_of(parse_action_pattern("k8s:*")), Rule::OverbroadPattern);
        assert_eq!(rule_of(parse_action_pattern("*")), Rule::MalformedAction);
        assert_eq!(rule_of(parse_action_pattern("k8s:**")), Rule::MalformedAction);
        assert_eq!(rule_of(parse_resource_pattern("*")), Rule::MalformedResource);
        assert_eq!(rule_of(parse_resource_pattern("*:staging/web")), Rule::OverbroadPattern);
        assert_eq!(rule_of(parse_resource_pattern("k8s:*")), Rule::OverbroadPattern);
        assert_eq!(rule_of(parse_resource_pattern("k8s:*/*/*")), Rule::OverbroadPattern);
        assert_eq!(rule_of(parse_resource_pattern("k8s:staging/**")), Rule::MalformedResource);
        assert_eq!(rule_of(parse_resource_pattern("k8s:staging/*/")), Rule::EmptySegment);
        assert!(parse_action_pattern("k8s:deployments.*").is_ok());
        assert!(parse_action_pattern("k8s:*.get").is_ok());
        assert!(parse_resource_pattern("k8s:staging/deployments/*").is_ok());
        assert!(parse_resource_pattern("k8s:*/deployments/web").is_ok());
    }

    #[test]
    fn selectors_allow_breadth_but_not_bad_syntax() {
        let any = parse_selector("*", PatternKind::Resource).unwrap();
        assert!(any.matches("k8s:prod/deployments/web"));
        assert!(!any.matches("k8s:prod/../web"), "non-canonical values never match");
        assert!(parse_selector("k8s:*", PatternKind::Action).unwrap().matches("k8s:deployments.delete"));
        assert!(parse_selector("*:delete", PatternKind::Action).is_ok());
        assert_eq!(rule_of(parse_selector("k8s:a//b", PatternKind::Resource)), Rule::EmptySegment);
        assert_eq!(rule_of(parse_selector("k8s:%2a", PatternKind::Action)), Rule::PercentEncoding);
    }

    #[test]
    fn star_matches_within_one_segment_only() {
        let p = parse_resource_pattern("k8s:staging/deployments/*").unwrap();
        assert!(p.matches("k8s:staging/deployments/web"));
        assert!(!p.matches("k8s:staging/deployments/web/scale"));
        assert!(!p.matches("k8s:staging/deployments"));
        assert!(!p.matches("k8s:staging/deployments/"));
        assert!(!p.matches("k8s:prod/deployments/web"));
        assert!(!p.matches("K8S:staging/deployments/web"), "case-sensitive");
        let p = parse_resource_pattern("oci:ghcr.io/acme/web:*").unwrap();
        assert!(p.matches("oci:ghcr.io/acme/web:v2"));
        let p = parse_resource_pattern("oci:ghcr.io/acme/*").unwrap();
        assert!(!p.matches("oci:ghcr.io/acme/web:v2"), "'*' never matches ':'");
        let a = parse_action_pattern("k8s:deployments.*").unwrap();
        assert!(a.matches("k8s:deployments.get"));
        assert!(a.matches("k8s:deployments."), "'*' may match nothing");
        assert!(!a.matches("k8s:pods.get"));
        assert!(!a.matches("k8s:deployments.*"), "a wildcard value is not an exact value");
        let a = parse_action_pattern("k8s:*.get").unwrap();
        assert!(a.matches("k8s:pods.get"));
        assert!(!a.is_literal());
        assert!(parse_action_pattern("k8s:pods.get").unwrap().is_literal());
    }

    #[test]
    fn glob_is_the_classic_algorithm() {
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("*a*a*a*a*b", "aaaaaaaaab"));
        assert!(!glob_match("*a*a*a*a*a*a*a*b", &"a".repeat(200)));
        assert!(glob_match("x:*/y", "x:abc/y"));
        assert!(!glob_match("x:*", "x:a/b"));
        assert!(!glob_match("x*", "x:a"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn capability_within_requires_both_halves_and_valid_inputs() {
        let pattern = Capability::new("k8s:deployments.*", "k8s:staging/deployments/*");
        assert!(capability_within(&Capability::new("k8s:deployments.patch", "k8s:staging/deployments/web"), &pattern));
        assert!(!capability_within(&Capability::new("k8s:pods.get", "k8s:staging/deployments/web"), &pattern));
        assert!(!capability_within(&Capability::new("k8s:deployments.get", "k8s:prod/deployments/web"), &pattern));
        assert!(!capability_within(
            &Capability::new("k8s:deployments.get", "k8s:staging/deployments/../web"),
            &pattern
        ));
        let overbroad = Capability::new("k8s:deployments.*", "k8s:*");
        assert!(!capability_within(&Capability::new("k8s:deployments.get", "k8s:x"), &overbroad));
    }
}

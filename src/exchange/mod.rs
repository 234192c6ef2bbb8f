//! Per-call tokens: the OAuth 2.0 token exchange (RFC 8693) that turns one of
//! a pod's grant tokens into a token for one audience and a subset of the
//! grant's capabilities, re-authorised at the moment of the call.
//!
//! This module is the pure part: parsing and validating the form
//! ([`parse_request`]), the OAuth error model ([`OAuthError`]), the
//! authorisation decision against a grant's trusted state ([`authorize`]) and
//! the issued token's claims ([`issued_claims`]). The HTTPS listener, with
//! mutual TLS, rate limiting, audit and metrics, is [`server`].

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::api::{CapabilityGrant, GrantPhase};
use crate::pki::token::{Capability, Claims};
pub use crate::state::config::MAX_TTL_SECS;

/// `grant_type` of a token exchange (RFC 8693 §2.1).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The one accepted `subject_token_type`: a Writ grant token is a JWT (RFC 8693 §3).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// `issued_token_type` of the response: the issued token is an access token (RFC 8693 §3).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The `authorization_details` type Writ understands (RFC 9396 §2).
pub const CAPABILITY_DETAIL_TYPE: &str = "writ.dev/capability";
/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest `writ_context` accepted, in bytes.
pub const MAX_CONTEXT_BYTES: usize = 1024;
/// Most capabilities one exchange may ask for (a grant has at most
/// [`crate::api::MAX_GRANT_CAPABILITIES`]).
pub const MAX_REQUESTED_CAPABILITIES: usize = 16;
/// Default lifetime of a per-call token, in seconds.
pub const DEFAULT_TTL_SECS: i64 = 60;
/// The OAuth error codes the token endpoint answers with (RFC 6749 §5.2, RFC 8693 §2.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: missing, repeated or unknown parameter value, oversized body.
    InvalidRequest,
    /// No client certificate, or one that is not a live pod's current certificate.
    InvalidClient,
    /// The subject token is not this pod's, is revoked or expired, or its grant ended.
    InvalidGrant,
    /// A `grant_type` other than token exchange.
    UnsupportedGrantType,
    /// The audience is not one of the grant's.
    InvalidTarget,
    /// A capability not in the grant, or a wildcard.
    InvalidScope,
    /// The pod exceeded its exchange rate (HTTP 429; not an RFC 6749 code).
    SlowDown,
    /// The `DPoP` proof is malformed, replayed or not signed with the client certificate's key (RFC 9449 §5).
    InvalidDpopProof,
}

impl ErrorCode {
    /// The code as it appears in the `error` member.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::SlowDown => "slow_down",
            ErrorCode::InvalidDpopProof => "invalid_dpop_proof",
        }
    }

    /// The HTTP status: 401 for client authentication, 429 for the rate limit, 400 otherwise.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidClient => 401,
            ErrorCode::SlowDown => 429,
            _ => 400,
        }
    }
}

/// A refused exchange: the OAuth error code, the rule broken (a stable id
/// for audit and metrics) and a description naming the parameter and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} ({rule}): {description}", code.as_str())]
pub struct OAuthError {
    /// The OAuth error code.
    pub code: ErrorCode,
    /// The rule id, e.g. `audience-not-granted`.
    pub rule: &'static str,
    /// Human-readable description; never contains a token.
    pub description: String,
}

impl OAuthError {
    /// A new error.
    pub fn new(code: ErrorCode, rule: &'static str, description: impl Into<String>) -> Self {
        OAuthError { code, rule, description: description.into() }
    }

    /// `invalid_request` about one parameter.
    pub fn request(parameter: &str, rule: &'static str, why: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidRequest, rule, format!("{parameter}: {why}"))
    }

    /// The JSON error body (RFC 6749 §5.2).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.code.as_str(), "error_description": self.description })
    }
}

/// A parsed, well-formed exchange request (not yet authorised).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeRequest {
    /// The grant token to exchange. Secret: never log it.
    pub subject_token: String,
    /// The one audience asked for (`resource` or `audience`).
    pub target: String,
    /// The capabilities asked for, at least one, without repeats.
    pub capabilities: Vec<Capability>,
    /// The caller's `writ_context` (JSON, at most [`MAX_CONTEXT_BYTES`]), for the audit line only.
    pub context: Option<String>,
}

impl std::fmt::Display for ExchangeRequest {
    /// Everything but the subject token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "target={} capabilities={}", self.target, scope_string(&self.capabilities))
    }
}

/// The capabilities as an RFC 6749 scope string (`action resource` pairs, space-separated).
pub fn scope_string(caps: &[Capability]) -> String {
    caps.iter().map(|c| format!("{} {}", c.action, c.resource)).collect::<Vec<_>>().join(" ")
}

const PARAMETERS: [&str; 10] = [
    "grant_type",
    "subject_token",
    "subject_token_type",
    "resource",
    "audience",
    "authorization_details",
    "scope",
    "writ_context",
    "requested_token_type",
    "actor_token",
];

/// Parses an `application/x-www-form-urlencoded` body into an [`ExchangeRequest`].
///
/// Every parameter may appear at most once (RFC 6749 §3.2); `actor_token` is
/// refused (Writ carries the delegation chain in `act` itself); unknown
/// parameters are ignored (RFC 6749 §3.2). Errors name the parameter.
pub fn parse_request(body: &[u8]) -> Result<ExchangeRequest, OAuthError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(OAuthError::request("body", "body-too-large", format!("longer than {MAX_BODY_BYTES} bytes")));
    }
    let mut values: [Option<String>; PARAMETERS.len()] = Default::default();
    for (k, v) in form_urlencoded::parse(body) {
        let Some(i) = PARAMETERS.iter().position(|p| *p == k) else { continue };
        if values[i].is_some() {
            return Err(OAuthError::request(PARAMETERS[i], "repeated-parameter", "given more than once"));
        }
        values[i] = Some(v.into_owned());
    }
    let [grant_type, subject_token, subject_token_type, resource, audience, details, scope, context, requested, actor] =
        values;
    match grant_type.as_deref() {
        None => return Err(OAuthError::request("grant_type", "missing-parameter", "required")),
        Some(GRANT_TYPE) => {}
        Some(other) => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                "unsupported-grant-type",
                format!("grant_type: {other:?} is not supported; use {GRANT_TYPE}"),
            ))
        }
    }
    let subject_token = subject_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OAuthError::request("subject_token", "missing-parameter", "required"))?;
    match subject_token_type.as_deref() {
        None => return Err(OAuthError::request("subject_token_type", "missing-parameter", "required")),
        Some(TOKEN_TYPE_JWT) => {}
        Some(other) => {
            return Err(OAuthError::request(
                "subject_token_type",
                "unsupported-token-type",
                format!("{other:?} is not accepted; a Writ grant token is {TOKEN_TYPE_JWT}"),
            ))
        }
    }
    if let Some(r) = requested.as_deref().filter(|r| *r != TOKEN_TYPE_ACCESS_TOKEN && *r != TOKEN_TYPE_JWT) {
        return Err(OAuthError::request(
            "requested_token_type",
            "unsupported-token-type",
            format!("{r:?} cannot be issued; Writ issues {TOKEN_TYPE_ACCESS_TOKEN}"),
        ));
    }
    if actor.is_some() {
        return Err(OAuthError::request(
            "actor_token",
            "unsupported-parameter",
            "not accepted; the delegation chain comes from the grant",
        ));
    }
    let target = match (resource, audience) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::request("resource", "one-target", "give either resource or audience, not both"))
        }
        (Some(t), None) => check_target("resource", t)?,
        (None, Some(t)) => check_target("audience", t)?,
        (None, None) => {
            return Err(OAuthError::request("resource", "missing-parameter", "resource or audience is required"))
        }
    };
    let capabilities = match (details, scope) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::request(
                "scope",
                "one-request-form",
                "give either authorization_details or scope, not both",
            ))
        }
        (Some(d), None) => parse_authorization_details(&d)?,
        (None, Some(s)) => parse_scope(&s)?,
        (None, None) => {
            return Err(OAuthError::request(
                "authorization_details",
                "missing-parameter",
                "authorization_details or scope is required",
            ))
        }
    };
    let context = match context {
        None => None,
        Some(c) if c.len() > MAX_CONTEXT_BYTES => {
            return Err(OAuthError::request(
                "writ_context",
                "context-too-large",
                format!("longer than {MAX_CONTEXT_BYTES} bytes"),
            ))
        }
        Some(c) => {
            serde_json::from_str::<serde_json::Value>(&c)
                .map_err(|e| OAuthError::request("writ_context", "not-json", e))?;
            Some(c)
        }
    };
    Ok(ExchangeRequest { subject_token, target, capabilities, context })
}

fn check_target(parameter: &str, t: String) -> Result<String, OAuthError> {
    if t.is_empty() || t.len() > 512 || t.chars().any(char::is_control) {
        return Err(OAuthError::request(parameter, "bad-target", "must be 1-512 printable characters"));
    }
    Ok(t)
}

/// One RFC 9396 authorization details object of type [`CAPABILITY_DETAIL_TYPE`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapabilityDetail {
    #[serde(rename = "type")]
    type_: String,
    actions: Vec<String>,
    locations: Vec<String>,
}

/// Parses RFC 9396 `authorization_details`: a JSON array of objects of type
/// `writ.dev/capability`, each asking for every one of its `actions` on every
/// one of its `locations`. Errors name the parameter and the element.
pub fn parse_authorization_details(json: &str) -> Result<Vec<Capability>, OAuthError> {
    const P: &str = "authorization_details";
    let items: Vec<serde_json::Value> =
        serde_json::from_str(json).map_err(|e| OAuthError::request(P, "not-json-array", e))?;
    if items.is_empty() {
        return Err(OAuthError::request(P, "empty", "asks for nothing"));
    }
    let mut caps = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let kind = item.get("type").and_then(|t| t.as_str()).map(str::to_owned);
        match kind.as_deref() {
            Some(CAPABILITY_DETAIL_TYPE) => {}
            Some(other) => {
                return Err(OAuthError::new(
                    ErrorCode::InvalidRequest,
                    "unknown-detail-type",
                    format!("{P}[{i}].type: {other:?} is not supported; use {CAPABILITY_DETAIL_TYPE}"),
                ))
            }
            None => return Err(OAuthError::request(&format!("{P}[{i}].type"), "missing-parameter", "required")),
        }
        let d: CapabilityDetail =
            serde_json::from_value(item).map_err(|e| OAuthError::request(&format!("{P}[{i}]"), "bad-detail", e))?;
        debug_assert_eq!(d.type_, CAPABILITY_DETAIL_TYPE);
        if d.actions.is_empty() || d.locations.is_empty() {
            return Err(OAuthError::request(&format!("{P}[{i}]"), "empty", "actions and locations must not be empty"));
        }
        for action in &d.actions {
            for location in &d.locations {
                push_capability(&mut caps, &format!("{P}[{i}]"), action, location)?;
            }
        }
    }
    Ok(caps)
}

/// Parses `scope`: `<action> <resource>` pairs separated by spaces.
pub fn parse_scope(scope: &str) -> Result<Vec<Capability>, OAuthError> {
    let words: Vec<&str> = scope.split(' ').filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return Err(OAuthError::request("scope", "empty", "asks for nothing"));
    }
    if !words.len().is_multiple_of(2) {
        return Err(OAuthError::request("scope", "scope-pairs", "must be `<action> <resource>` pairs"));
    }
    let mut caps = Vec::new();
    for pair in words.chunks_exact(2) {
        push_capability(&mut caps, "scope", pair[0], pair[1])?;
    }
    Ok(caps)
}

fn push_capability(
    caps: &mut Vec<Capability>,
    parameter: &str,
    action: &str,
    resource: &str,
) -> Result<(), OAuthError> {
    for (what, v) in [("action", action), ("resource", resource)] {
        if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(OAuthError::request(
                parameter,
                "bad-capability",
                format!("{what} {v:?} is not a capability name"),
            ));
        }
        if v.contains('*') {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                "wildcard",
                format!("{parameter}: {what} {v:?} is a wildcard; ask for exact capabilities"),
            ));
        }
    }
    let cap = Capability { action: action.into(), resource: resource.into() };
    if !caps.contains(&cap) {
        if caps.len() >= MAX_REQUESTED_CAPABILITIES {
            return Err(OAuthError::request(
                parameter,
                "too-many-capabilities",
                format!("more than {MAX_REQUESTED_CAPABILITIES} capabilities"),
            ));
        }
        caps.push(cap);
    }
    Ok(())
}

/// What [`authorize`] checks a request against, all read at request time.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The verified claims of the subject token.
    pub subject: &'a Claims,
    /// The grant the subject token names, with its trusted status
    /// ([`crate::policy::seal::trusted`]); `None` when it no longer exists.
    pub grant: Option<&'a CapabilityGrant>,
    /// Whether the subject token's `jti` or the grant's ended marker is on the revocation list.
    pub revoked: bool,
    /// Why the agent may not act now (dormant, review overdue), if so.
    pub agent_refusal: Option<&'a str>,
    /// Now, unix seconds.
    pub now: i64,
}

/// The continuous-authorisation decision for one exchange: the grant is
/// Active, not revoked, not past its expiry, the subject token is one the
/// grant currently lists, the agent may act, the target is one of the grant's
/// audiences and every capability asked is one the grant approved.
/// Returns the grant's expiry (unix seconds).
pub fn authorize(req: &ExchangeRequest, f: &Facts<'_>) -> Result<i64, OAuthError> {
    let grant_err = |rule, d: String| OAuthError::new(ErrorCode::InvalidGrant, rule, d);
    let name = &f.subject.grant.name;
    if f.revoked {
        return Err(grant_err("revoked", format!("subject_token: the token or its grant {name} is revoked")));
    }
    let Some(grant) = f.grant else {
        return Err(grant_err("grant-gone", format!("subject_token: grant {name} no longer exists")));
    };
    if grant.metadata.uid.as_deref() != Some(f.subject.grant.uid.as_str()) {
        return Err(grant_err("grant-gone", format!("subject_token: grant {name} was re-created")));
    }
    let no_status;
    let status = match grant.status.as_ref() {
        Some(st) => st,
        None => {
            no_status = crate::api::CapabilityGrantStatus::default();
            &no_status
        }
    };
    if status.phase != GrantPhase::Active {
        return Err(grant_err("grant-not-active", format!("subject_token: grant {name} is {}", status.phase.as_str())));
    }
    let expires = status.expires_at.as_ref().map(|t| t.0.as_second()).unwrap_or(i64::MIN);
    if f.now >= expires {
        return Err(grant_err("grant-expired", format!("subject_token: grant {name} has expired")));
    }
    if !status.tokens.iter().any(|t| t.jti == f.subject.jti) {
        return Err(grant_err("token-superseded", format!("subject_token: not a current token of grant {name}")));
    }
    if let Some(why) = f.agent_refusal {
        return Err(grant_err("agent-refused", format!("subject_token: {why}")));
    }
    if grant.metadata.deletion_timestamp.is_some() {
        return Err(grant_err("grant-not-active", format!("subject_token: grant {name} is being deleted")));
    }
    if !grant.spec.audiences.contains(&req.target) || !f.subject.aud.contains(&req.target) {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            "audience-not-granted",
            format!("resource: {:?} is not an audience of grant {name}", req.target),
        ));
    }
    // A grant approves at most `MAX_GRANT_CAPABILITIES` and a request asks
    // for at most `MAX_REQUESTED_CAPABILITIES`: a linear search is the cheapest.
    for c in &req.capabilities {
        if !status.approved.iter().any(|a| a.action == c.action && a.resource == c.resource)
            || !f.subject.grants(&c.action, &c.resource)
        {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                "capability-not-granted",
                format!("scope: {} on {} is not a capability of grant {name}", c.action, c.resource),
            ));
        }
    }
    Ok(expires)
}

/// The claims of the per-call token: the subject token's identity, grant,
/// task, delegation chain and binding; one audience; the capabilities asked;
/// `exp` at most `ttl` seconds away and never past the grant's expiry; a
/// fresh `jti`; `txn`; and `gjti`, the subject token's `jti`.
pub fn issued_claims(
    subject: &Claims,
    req: &ExchangeRequest,
    grant_expires: i64,
    ttl: i64,
    now: i64,
    jti: String,
    txn: String,
) -> Claims {
    Claims {
        aud: vec![req.target.clone()],
        iat: now,
        nbf: now,
        exp: (now + ttl.clamp(1, MAX_TTL_SECS)).min(grant_expires).min(subject.exp),
        jti,
        cap: req.capabilities.clone(),
        txn: Some(txn),
        gjti: Some(subject.jti.clone()),
        ..subject.clone()
    }
}

/// The successful response (RFC 8693 §2.2.1).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExchangeResponse {
    /// The per-call token. Secret.
    pub access_token: String,
    /// Always [`TOKEN_TYPE_ACCESS_TOKEN`].
    pub issued_token_type: String,
    /// `Bearer` (the token is certificate-bound through `cnf.x5t#S256`), or `DPoP` when it is
    /// also bound to a DPoP key (`cnf.jkt`).
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: i64,
    /// The capabilities granted, as a scope string (RFC 8693 §2.2.1: present because it may differ from a `resource`-only request).
    pub scope: String,
}

#[cfg(test)]
mod tests;

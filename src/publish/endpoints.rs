//! HTTPS trust endpoints, on the webhook listener and, with
//! `--endpoints-addr`, on a listener of their own (so that a NetworkPolicy can
//! close the webhook port to all but the API server):
//!
//! - `GET /.well-known/jwks.json`: RFC 7517 JWK Set (current and still-needed previous keys)
//! - `GET /.well-known/openid-configuration`: OpenID Connect Discovery 1.0 §4 provider
//!   metadata (`issuer`, `jwks_uri`, signing algorithms), so OAuth/OIDC tooling finds the keys
//!   from the issuer
//! - `GET /spiffe-bundle`: the SPIFFE bundle (SPIFFE Trust Domain and Bundle §4): CAs as
//!   `x509-svid` keys, token keys as `jwt-svid` keys
//! - `GET /trust-bundle`: PEM CA bundle
//! - `GET /revocations`: revoked token `jti`s and certificate serials, with an ETag
//! - `POST /introspect`: RFC 7662-style, form field `token`; `{"active": false}` for
//!   anything expired, revoked, unknown or badly signed, and for a caller that is
//!   not one of the token's audiences. The caller authenticates (RFC 7662 §2.1)
//!   with a ServiceAccount bearer token or a Writ client certificate (see
//!   [`super::caller`]); an anonymous one gets `401` with `WWW-Authenticate`. It
//!   answers only about the token presented, so it cannot be used to list tokens.

use std::sync::Arc;

use axum::{
    extract::{rejection::FormRejection, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Form, Json, Router,
};
use serde::Deserialize;

use super::caller::{workload_of, Caller, TokenReviewer, WritClientCertificate};
use crate::state::{tls::PeerCertificate, Shared};

/// What the endpoints answer from: the operator's state, and the reviewer of
/// introspection callers' tokens.
pub struct EndpointState {
    shared: Arc<Shared>,
    reviewer: TokenReviewer,
}

/// The `WWW-Authenticate` challenge of an introspection without credentials.
pub const CHALLENGE: &str = r#"Bearer realm="writ-introspection""#;

/// Paths of the trust endpoints.
pub mod paths {
    /// JWKS.
    pub const JWKS: &str = "/.well-known/jwks.json";
    /// OpenID Connect Discovery document.
    pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
    /// SPIFFE bundle.
    pub const SPIFFE_BUNDLE: &str = "/spiffe-bundle";
    /// CA bundle.
    pub const TRUST_BUNDLE: &str = "/trust-bundle";
    /// Revocation list.
    pub const REVOCATIONS: &str = "/revocations";
    /// Token introspection.
    pub const INTROSPECT: &str = "/introspect";
}

/// The endpoint routes.
pub fn router(shared: Arc<Shared>) -> Router {
    let state = Arc::new(EndpointState { reviewer: TokenReviewer::new(shared.client.clone()), shared });
    Router::new()
        .route(paths::JWKS, get(jwks))
        .route(paths::OPENID_CONFIGURATION, get(openid_configuration))
        .route(paths::SPIFFE_BUNDLE, get(spiffe_bundle))
        .route(paths::TRUST_BUNDLE, get(trust_bundle))
        .route(paths::REVOCATIONS, get(revocations))
        .route(paths::INTROSPECT, post(introspect))
        .with_state(state)
}

async fn jwks(State(s): State<Arc<EndpointState>>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "max-age=60")], Json(s.shared.trust.jwks(crate::pki::now_unix())))
}

/// The OpenID Connect Discovery document of `issuer` whose token keys are `jwks`: the provider
/// metadata a JWT validator needs (OpenID Connect Discovery 1.0 §3), as Kubernetes' own service
/// account issuer discovery serves it, plus the introspection endpoint (RFC 8414 §2).
pub fn openid_configuration_document(issuer: &str, jwks: &crate::pki::JwkSet) -> serde_json::Value {
    let base = issuer.trim_end_matches('/');
    let mut algs: Vec<&str> = Vec::new();
    for k in &jwks.keys {
        if let Some(alg) = k.verifying_key().map(|v| v.algorithm().as_str()) {
            if !algs.contains(&alg) {
                algs.push(alg);
            }
        }
    }
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}{}", paths::JWKS),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "introspection_endpoint": format!("{base}{}", paths::INTROSPECT),
        "claims_supported": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "cnf", "cap", "task", "grant", "pod", "act", "req", "apr"],
    })
}

async fn openid_configuration(State(s): State<Arc<EndpointState>>) -> impl IntoResponse {
    let s = &s.shared;
    let jwks = s.trust.jwks(crate::pki::now_unix());
    ([(header::CACHE_CONTROL, "max-age=60")], Json(openid_configuration_document(&s.trust.issuer(), &jwks)))
}

async fn spiffe_bundle(State(s): State<Arc<EndpointState>>) -> Response {
    match s.shared.trust.spiffe_bundle(crate::pki::now_unix()) {
        Ok(bundle) => ([(header::CACHE_CONTROL, "max-age=60")], Json(bundle)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "building the SPIFFE bundle");
            (StatusCode::INTERNAL_SERVER_ERROR, "the SPIFFE bundle cannot be built; see the operator log")
                .into_response()
        }
    }
}

async fn trust_bundle(State(s): State<Arc<EndpointState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/pem-certificate-chain")], s.shared.trust.bundle_pem())
}

async fn revocations(State(s): State<Arc<EndpointState>>, headers: HeaderMap) -> Response {
    let s = &s.shared;
    let etag = |version: u64| format!("\"{version}\"");
    let current = etag(s.revocations.version().await);
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(current.as_str()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, current)]).into_response();
    }
    let list = s.revocations.snapshot().await;
    ([(header::ETAG, etag(list.version))], Json(list)).into_response()
}

/// The introspection request (RFC 7662 §2.1).
#[derive(Debug, Deserialize)]
pub struct IntrospectionRequest {
    /// The token.
    pub token: String,
}

/// Who the caller is: a ServiceAccount by its bearer token, else a workload
/// by its Writ client certificate; otherwise the response to send.
async fn authenticate(
    s: &EndpointState,
    headers: &HeaderMap,
    peer: Option<&PeerCertificate>,
) -> Result<Caller, Response> {
    let unauthorized = |challenge: &str, why: &str| {
        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge.to_string())], why.to_string()).into_response()
    };
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) else {
            return Err(unauthorized(CHALLENGE, "the Authorization header is not a Bearer token\n"));
        };
        return match s.reviewer.review(token).await {
            Ok(Some(caller)) => Ok(caller),
            Ok(None) => Err(unauthorized(
                &format!(r#"{CHALLENGE}, error="invalid_token""#),
                "the bearer token is not one the API server authenticates\n",
            )),
            Err(e) => {
                tracing::warn!(error = %e, "reviewing an introspection caller's token");
                Err((StatusCode::SERVICE_UNAVAILABLE, "the caller's token cannot be reviewed now\n").into_response())
            }
        };
    }
    if let Some(peer) = peer.filter(|p| p.writ) {
        if let Some(caller) = workload_of(&WritClientCertificate(peer.leaf.clone()), &s.shared.revocations).await {
            return Ok(caller);
        }
        return Err(unauthorized(CHALLENGE, "the client certificate is revoked or names no SPIFFE ID\n"));
    }
    Err(unauthorized(
        CHALLENGE,
        "introspection needs a ServiceAccount bearer token or a Writ client certificate (RFC 7662 section 2.1)\n",
    ))
}

async fn introspect(
    State(s): State<Arc<EndpointState>>,
    peer: Option<axum::Extension<PeerCertificate>>,
    headers: HeaderMap,
    form: Result<Form<IntrospectionRequest>, FormRejection>,
) -> Response {
    let caller = match authenticate(&s, &headers, peer.as_ref().map(|p| &p.0)).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let req = match form {
        Ok(Form(req)) => req,
        Err(rejection) => return rejection.into_response(),
    };
    let s = &s.shared;
    let now = crate::pki::now_unix();
    let jwks = s.trust.jwks(now);
    let inactive = Json(serde_json::json!({ "active": false })).into_response();
    let Ok(claims) = crate::verify::verify_signed(&req.token, &jwks, now, crate::verify::DEFAULT_SKEW_SECS) else {
        return inactive;
    };
    if crate::verify::check_issuer(&claims, &s.trust.issuers(now)).is_err() {
        return inactive;
    }
    if !caller.is_audience(&claims.aud, &claims.grant.namespace) {
        tracing::debug!(caller = %caller.describe(), "introspection by a caller not among the token's audiences");
        return inactive;
    }
    if s.revocations.is_token_revoked(&claims.jti).await {
        return inactive;
    }
    // A per-call token dies with the grant token it was exchanged for.
    if let Some(gjti) = &claims.gjti {
        if s.revocations.is_token_revoked(gjti).await {
            return inactive;
        }
    }
    let scope: Vec<String> = claims.cap.iter().map(|c| format!("{} {}", c.action, c.resource)).collect();
    Json(serde_json::json!({
        "active": true,
        "sub": claims.sub,
        "aud": claims.aud,
        "iss": claims.iss,
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "jti": claims.jti,
        "token_type": "Bearer",
        "scope": scope.join(" "),
        "cap": claims.cap,
        "cnf": claims.cnf,
        "grant": claims.grant,
    }))
    .into_response()
}

//! HTTPS trust endpoints, on the webhook listener:
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
//!   anything expired, revoked, unknown or badly signed. It answers only about the
//!   token presented, so it cannot be used to list tokens.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Form, Json, Router,
};
use serde::Deserialize;

use crate::runtime::Shared;

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
    Router::new()
        .route(paths::JWKS, get(jwks))
        .route(paths::OPENID_CONFIGURATION, get(openid_configuration))
        .route(paths::SPIFFE_BUNDLE, get(spiffe_bundle))
        .route(paths::TRUST_BUNDLE, get(trust_bundle))
        .route(paths::REVOCATIONS, get(revocations))
        .route(paths::INTROSPECT, post(introspect))
        .with_state(shared)
}

async fn jwks(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "max-age=60")], Json(s.trust.jwks(crate::pki::now_unix())))
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

async fn openid_configuration(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let jwks = s.trust.jwks(crate::pki::now_unix());
    ([(header::CACHE_CONTROL, "max-age=60")], Json(openid_configuration_document(&s.trust.issuer(), &jwks)))
}

async fn spiffe_bundle(State(s): State<Arc<Shared>>) -> Response {
    match s.trust.spiffe_bundle(crate::pki::now_unix()) {
        Ok(bundle) => ([(header::CACHE_CONTROL, "max-age=60")], Json(bundle)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "building the SPIFFE bundle");
            (StatusCode::INTERNAL_SERVER_ERROR, "the SPIFFE bundle cannot be built; see the operator log")
                .into_response()
        }
    }
}

async fn trust_bundle(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/pem-certificate-chain")], s.trust.bundle_pem())
}

async fn revocations(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
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

async fn introspect(State(s): State<Arc<Shared>>, Form(req): Form<IntrospectionRequest>) -> impl IntoResponse {
    let now = crate::pki::now_unix();
    let jwks = s.trust.jwks(now);
    let inactive = Json(serde_json::json!({ "active": false }));
    let Ok(claims) = crate::verify::verify_signed(&req.token, &jwks, now, crate::verify::DEFAULT_SKEW_SECS) else {
        return inactive;
    };
    if crate::verify::check_issuer(&claims, &s.trust.issuers(now)).is_err() {
        return inactive;
    }
    if s.revocations.is_token_revoked(&claims.jti).await {
        return inactive;
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
}

//! HTTPS trust endpoints, on the webhook listener:
//!
//! - `GET /.well-known/jwks.json`: RFC 7517 JWK Set (current and still-needed previous keys)
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
        .route(paths::TRUST_BUNDLE, get(trust_bundle))
        .route(paths::REVOCATIONS, get(revocations))
        .route(paths::INTROSPECT, post(introspect))
        .with_state(shared)
}

async fn jwks(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "max-age=60")], Json(s.trust.jwks(crate::pki::now_unix())))
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
}

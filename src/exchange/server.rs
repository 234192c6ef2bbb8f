//! The token endpoint's own HTTPS listener (`--token-addr`): mutual TLS with
//! the pod's X.509-SVID, `POST /token` (RFC 8693) and the RFC 8414 metadata.
//!
//! The client certificate is verified during the handshake against the
//! current Writ CA bundle (rustls' WebPKI client verifier, rebuilt when the
//! bundle changes); a connection without one is accepted so that the answer
//! can be an OAuth `invalid_client` rather than a bare TLS alert.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    body::Body,
    extract::{Extension, State},
    http::{header, HeaderMap, HeaderValue, Request, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use kube::runtime::reflector::ObjectRef;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::{authorize, issued_claims, parse_request, ErrorCode, ExchangeResponse, Facts, OAuthError};
use crate::api::{conditions as condition, CapabilityGrant};
use crate::pki::{
    cert::{parse_x509, serial_hex, spiffe_id_of, thumbprint},
    now_unix,
    seal::SealKeys,
};
use crate::state::tls::CertSlot;
use crate::state::{CachedGrant, Shared};

/// Settings of the token endpoint.
#[derive(Clone, Copy, Debug)]
pub struct ExchangeSettings {
    /// Lifetime of a per-call token, seconds (at most [`super::MAX_TTL_SECS`]).
    pub ttl_secs: i64,
    /// Sustained exchanges per second per pod.
    pub rate_per_sec: f64,
    /// Burst of exchanges per pod.
    pub burst: f64,
}

impl Default for ExchangeSettings {
    fn default() -> Self {
        ExchangeSettings { ttl_secs: super::DEFAULT_TTL_SECS, rate_per_sec: 50.0, burst: 100.0 }
    }
}

/// The client certificate of a connection, if it presented one: read once
/// per TLS connection, since it cannot change on a connection while the
/// requests on it are many (keep-alive).
#[derive(Clone, Debug)]
struct Peer(Option<Arc<ClientCert>>);

/// A client certificate (chain and validity verified in the handshake) and
/// what every exchange compares against it.
#[derive(Debug)]
struct ClientCert {
    /// The leaf, DER.
    der: Vec<u8>,
    /// Its serial, SPIFFE ID and thumbprint; `None` when it does not parse.
    facts: Option<CertFacts>,
}

/// What an exchange reads of the client certificate.
#[derive(Debug)]
struct CertFacts {
    /// The serial in canonical hex (the revocation list's form).
    serial: String,
    /// The URI SAN (empty when there is none).
    spiffe: String,
    /// `x5t#S256`: base64url SHA-256 of the DER.
    thumbprint: String,
}

impl ClientCert {
    fn new(der: Vec<u8>) -> Self {
        let facts = parse_x509(&der).ok().map(|leaf| CertFacts {
            serial: serial_hex(&leaf),
            spiffe: spiffe_id_of(&leaf).unwrap_or_default(),
            thumbprint: thumbprint(&der),
        });
        ClientCert { der, facts }
    }
}

/// State of the token endpoint.
struct Endpoint {
    shared: Arc<Shared>,
    settings: ExchangeSettings,
    limiter: RateLimiter,
    /// DPoP proof `jti`s seen within the window (bounded).
    replay: crate::verify::dpop::ReplayCache,
    /// Subject tokens whose signature already verified.
    verified: VerifiedTokens,
    /// Decoded grants with their trusted status.
    grants: TrustedGrants,
}

/// Decoded grants with the status [`crate::policy::seal::trusted`]
/// gives them, by grant uid, for the current second only. An entry is used
/// only for the very cache object it was made from (the informer replaces a
/// grant's object on every change, and the entry holds the old one, so the
/// pointer cannot be reused) and the same seal keys, within the second it
/// was made in (the seal verdict depends on the time only through key
/// retirement, at one-second resolution): the result is the one `trusted`
/// gives for that object now. The map is emptied when the second changes, so
/// it holds only the grants exchanged within one second (and at most
/// [`MAX_TRUSTED_GRANTS`]).
#[derive(Default)]
struct TrustedGrants {
    map: Mutex<(i64, HashMap<String, TrustedGrant>)>,
}

struct TrustedGrant {
    stored: Arc<CachedGrant>,
    keys: Arc<SealKeys>,
    trusted: Arc<CapabilityGrant>,
}

const MAX_TRUSTED_GRANTS: usize = 16_384;

impl TrustedGrants {
    /// `stored` decoded, with its trusted status at `now` under `keys`.
    fn get(&self, uid: &str, stored: Arc<CachedGrant>, keys: Arc<SealKeys>, now: i64) -> Arc<CapabilityGrant> {
        {
            let guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
            let (second, map) = &*guard;
            if let Some(t) = map.get(uid).filter(|_| *second == now) {
                if Arc::ptr_eq(&t.stored, &stored) && Arc::ptr_eq(&t.keys, &keys) {
                    return t.trusted.clone();
                }
            }
        }
        let trusted = Arc::new(crate::policy::seal::trusted(&stored.grant(), &keys, now).0);
        let mut guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (second, map) = &mut *guard;
        if *second != now || (map.len() >= MAX_TRUSTED_GRANTS && !map.contains_key(uid)) {
            map.clear();
            *second = now;
        }
        map.insert(uid.to_owned(), TrustedGrant { stored, keys, trusted: trusted.clone() });
        trusted
    }
}

/// Grant tokens whose signature this endpoint has verified, by SHA-256 of
/// the token, until their own `exp`: an agent exchanges the same grant token
/// for every tool call, and its signature cannot change. Only the signature
/// check is remembered; revocation, the grant's state and the pod are
/// checked on every exchange. Bounded: emptied when full.
#[derive(Default)]
struct VerifiedTokens {
    map: Mutex<HashMap<[u8; 32], Arc<crate::pki::token::Claims>>>,
}

const MAX_VERIFIED: usize = 16_384;

impl VerifiedTokens {
    /// The claims of `token` when its signature is Writ's and it is in date
    /// at `now`: from the cache, or verified against `jwks()` and remembered.
    fn verify(
        &self,
        token: &str,
        now: i64,
        jwks: impl FnOnce() -> crate::pki::JwkSet,
    ) -> Result<Arc<crate::pki::token::Claims>, crate::verify::VerifyError> {
        let key: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        let cached = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        if let Some(claims) = cached.filter(|c| c.nbf <= now && now < c.exp) {
            return Ok(claims);
        }
        let claims = Arc::new(crate::verify::verify_signed(token, &jwks(), now, 0)?);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_VERIFIED {
            map.retain(|_, c| now < c.exp);
            if map.len() >= MAX_VERIFIED {
                map.clear();
            }
        }
        map.insert(key, claims.clone());
        Ok(claims)
    }
}

/// Per-pod token buckets. Bounded: idle full buckets are dropped when the
/// map grows, so memory follows the number of active pods.
#[derive(Default)]
struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// Takes one token for `key`; `Err(seconds to wait)` when none is left.
    fn take(&self, key: &str, rate: f64, burst: f64) -> Result<(), u64> {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_BUCKETS && !map.contains_key(key) {
            map.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        // The key is copied only for a pod's first exchange.
        if let Some(bucket) = map.get_mut(key) {
            return spend(bucket, now, rate, burst);
        }
        spend(map.entry(key.to_owned()).or_insert((burst, now)), now, rate, burst)
    }
}

/// Refills `bucket` for the time since it was last used and takes one token from it.
fn spend(bucket: &mut (f64, Instant), now: Instant, rate: f64, burst: f64) -> Result<(), u64> {
    let (tokens, at) = bucket;
    *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
    *at = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        Ok(())
    } else {
        Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
    }
}

/// The token endpoint's router: `POST /token` and
/// `GET /.well-known/oauth-authorization-server`.
pub fn router(shared: Arc<Shared>, settings: ExchangeSettings) -> Router {
    let state = Arc::new(Endpoint {
        shared,
        settings,
        limiter: RateLimiter::default(),
        replay: crate::verify::dpop::ReplayCache::default(),
        verified: VerifiedTokens::default(),
        grants: TrustedGrants::default(),
    });
    Router::new()
        .route("/token", post(token))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .with_state(state)
}

/// RFC 8414 authorization-server metadata.
async fn metadata(State(e): State<Arc<Endpoint>>, req: Request<Body>) -> impl IntoResponse {
    let issuer = issuer(&e, req.headers());
    Json(serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/token"),
        "grant_types_supported": [super::GRANT_TYPE],
        "token_endpoint_auth_methods_supported": ["tls_client_auth"],
        "authorization_details_types_supported": [super::CAPABILITY_DETAIL_TYPE],
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
        "tls_client_certificate_bound_access_tokens": true,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
    }))
}

/// The issuer URL: the address the client reached (its `Host`), or the Service's name.
fn issuer(e: &Endpoint, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("writ-webhook.{}.svc:8444", e.shared.config.namespace));
    format!("https://{host}")
}

fn error_response(err: &OAuthError, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(err.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = (status, Json(err.body())).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            h.insert(header::RETRY_AFTER, v);
        }
    }
    if err.code == ErrorCode::InvalidClient {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("TLS"));
    }
    resp
}

/// What the audit line says about an exchange (never a token).
#[derive(Default)]
struct Audit {
    agent: String,
    pod: String,
    grant: String,
    task: String,
    capability: String,
    audience: String,
    txn: String,
    context: String,
}

async fn token(
    State(e): State<Arc<Endpoint>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut audit = Audit::default();
    let outcome = exchange(&e, peer, &headers, body, &mut audit).await;
    let (decision, rule) = match &outcome {
        Ok(_) => ("issued", "none"),
        Err((err, _)) => ("refused", err.rule),
    };
    tracing::info!(
        target: "audit",
        agent = ?audit.agent,
        pod = ?audit.pod,
        grant = ?audit.grant,
        task = ?audit.task,
        capability = ?audit.capability,
        audience = ?audit.audience,
        txn = ?audit.txn,
        context = ?audit.context,
        decision,
        rule,
        "token exchange"
    );
    e.shared.metrics.record_exchange(decision, rule, started.elapsed().as_secs_f64());
    match outcome {
        Ok(resp) => {
            let mut r = Json(resp).into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err((err, retry)) => error_response(&err, retry),
    }
}

type Refusal = (OAuthError, Option<u64>);

async fn exchange(
    e: &Endpoint,
    peer: Peer,
    headers: &HeaderMap,
    body: Body,
    audit: &mut Audit,
) -> Result<ExchangeResponse, Refusal> {
    let refuse = |err: OAuthError| (err, None);
    let s = &e.shared;
    let Some(cert) = peer.0 else {
        return Err(refuse(OAuthError::new(
            ErrorCode::InvalidClient,
            "no-client-certificate",
            "authenticate with the pod's X.509-SVID as the TLS client certificate",
        )));
    };
    let body = axum::body::to_bytes(body, super::MAX_BODY_BYTES).await.map_err(|_| {
        refuse(OAuthError::request("body", "body-too-large", format!("longer than {} bytes", super::MAX_BODY_BYTES)))
    })?;
    let req = parse_request(&body).map_err(refuse)?;
    audit.capability = super::scope_string(&req.capabilities);
    audit.audience = req.target.clone();
    audit.context = req.context.clone().unwrap_or_default();

    // The client: a current Writ certificate (chain and validity checked in
    // the handshake), not revoked.
    let Some(client) = cert.facts.as_ref() else {
        return Err(refuse(OAuthError::new(
            ErrorCode::InvalidClient,
            "bad-client-certificate",
            "unreadable client certificate",
        )));
    };
    if s.revocations.is_certificate_revoked(&client.serial).await {
        return Err(refuse(OAuthError::new(
            ErrorCode::InvalidClient,
            "certificate-revoked",
            "the client certificate is revoked",
        )));
    }

    // The subject token: signed by Writ, in date, bound to this certificate.
    let now = now_unix();
    let subject = e.verified.verify(&req.subject_token, now, || s.trust.jwks(now)).map_err(|err| {
        refuse(OAuthError::new(ErrorCode::InvalidGrant, "subject-token-invalid", format!("subject_token: {err}")))
    })?;
    let subject = &*subject;
    audit.agent = subject.sub.clone();
    audit.pod = format!("{}/{}", subject.grant.namespace, subject.pod.name);
    audit.grant = format!("{}/{}", subject.grant.namespace, subject.grant.name);
    audit.task = subject.task.id.clone();
    if subject.gjti.is_some() {
        return Err(refuse(OAuthError::new(
            ErrorCode::InvalidGrant,
            "not-a-grant-token",
            "subject_token: a per-call token cannot be exchanged again",
        )));
    }
    if client.spiffe != subject.sub || client.thumbprint != subject.cnf.x5t_s256 {
        return Err(refuse(OAuthError::new(
            ErrorCode::InvalidGrant,
            "not-this-pods-token",
            "subject_token: bound to another pod's certificate",
        )));
    }

    // The pod: still live, the one the token names.
    let ns = &subject.grant.namespace;
    let pod = s.pods.get(&ObjectRef::new(&subject.pod.name).within(ns));
    if !pod.is_some_and(|p| !p.finished() && p.uid().as_deref() == Some(subject.pod.uid.as_str())) {
        return Err(refuse(OAuthError::new(ErrorCode::InvalidClient, "pod-not-live", "the client's pod is not live")));
    }

    e.limiter.take(&subject.pod.uid, e.settings.rate_per_sec, e.settings.burst).map_err(|wait| {
        (
            OAuthError::new(ErrorCode::SlowDown, "rate-limited", "too many exchanges for this pod; retry later"),
            Some(wait),
        )
    })?;

    // Continuous authorisation against the grant's trusted state.
    let revoked = s.revocations.is_token_revoked(&subject.jti).await
        || s.revocations.is_token_revoked(&crate::api::names::ended_grant_marker(&subject.grant.uid)).await;
    let grant = s
        .grants
        .get(&ObjectRef::new(&subject.grant.name).within(ns))
        .map(|g| e.grants.get(&subject.grant.uid, g, s.trust.seal_keys(), now));
    let agent_refusal = grant.as_ref().and_then(|g| agent_refusal(s, ns, &g.spec.agent));
    let facts = Facts { subject, grant: grant.as_deref(), revoked, agent_refusal: agent_refusal.as_deref(), now };
    let grant_expires = authorize(&req, &facts).map_err(refuse)?;

    // DPoP (RFC 9449): a proof signed with the pod's own certificate key binds the token to that
    // key (`cnf.jkt`) as well, so it stays bound where a gateway terminates TLS.
    let jkt = dpop_binding(e, headers, &cert.der, now).map_err(refuse)?;

    let internal = |_| refuse(OAuthError::new(ErrorCode::InvalidRequest, "internal", "the token could not be issued"));
    let jti = crate::pki::token::new_jti().map_err(internal)?;
    let txn = crate::pki::token::new_jti().map_err(internal)?;
    audit.txn = txn.clone();
    let mut claims = issued_claims(subject, &req, grant_expires, e.settings.ttl_secs, now, jti, txn);
    claims.cnf.jkt = jkt.clone();
    let expires_in = claims.exp - now;
    let access_token = crate::pki::token::sign(&s.trust.signing_key(), &claims).map_err(internal)?;
    Ok(ExchangeResponse {
        access_token,
        issued_token_type: super::TOKEN_TYPE_ACCESS_TOKEN.into(),
        token_type: if jkt.is_some() { "DPoP" } else { "Bearer" }.into(),
        expires_in,
        scope: super::scope_string(&claims.cap),
    })
}

/// The `cnf.jkt` for a request with a `DPoP` header: the proof passes RFC 9449 §4.3 for
/// `POST <issuer>/token`, is not replayed, and is signed by the client certificate's key.
fn dpop_binding(e: &Endpoint, headers: &HeaderMap, der: &[u8], now: i64) -> Result<Option<String>, OAuthError> {
    use crate::verify::dpop;
    let mut proofs = headers.get_all("dpop").iter();
    let Some(value) = proofs.next() else { return Ok(None) };
    let bad = |why: String| OAuthError::new(ErrorCode::InvalidDpopProof, "invalid-dpop-proof", format!("DPoP: {why}"));
    if proofs.next().is_some() {
        return Err(bad("more than one DPoP header".into()));
    }
    let proof = value.to_str().map_err(|_| bad("not ASCII".into()))?;
    let htu = format!("{}/token", issuer(e, headers));
    let p =
        dpop::check_proof(proof, "POST", &htu, None, now, dpop::DEFAULT_WINDOW_SECS).map_err(|e| bad(e.to_string()))?;
    if dpop::certificate_public_key(der).as_deref() != Some(p.public_key.as_slice()) {
        return Err(bad("the proof is not signed with the client certificate's key".into()));
    }
    e.replay.check(&p, now, dpop::DEFAULT_WINDOW_SECS).map_err(|e| bad(e.to_string()))?;
    Ok(Some(p.jkt))
}

/// Why the agent may not act now (suspended, dormant, access review
/// overdue), as the grant admission rules see it.
fn agent_refusal(s: &Shared, ns: &str, agent: &str) -> Option<String> {
    let Some(id) = s.identity(ns, agent) else {
        return Some(format!("AgentIdentity {agent} no longer exists"));
    };
    if id.spec.suspended {
        return Some(format!("agent {agent} is suspended"));
    }
    let conditions = id.status.as_ref().map(|st| st.conditions.as_slice()).unwrap_or_default();
    if s.config.refuse_dormant && condition::is_true(conditions, crate::api::conditions::identity::DORMANT) {
        return Some(format!("agent {agent} is dormant"));
    }
    if s.config.refuse_review_overdue
        && condition::is_true(conditions, crate::api::conditions::identity::REVIEW_OVERDUE)
    {
        return Some(format!("the access review of agent {agent} is overdue"));
    }
    None
}

/// A server configuration for the current CA bundle: the serving
/// certificate from `slot`, client certificates verified against `bundle_pem`
/// and optional (their absence is answered with `invalid_client`).
fn tls_config(slot: Arc<CertSlot>, bundle_pem: &str) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(der.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the token endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, serving: Arc<CertSlot>, settings: ExchangeSettings) {
    let router = router(shared.clone(), settings);
    let mut current: Option<(String, TlsAcceptor)> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "token listener: accept failed");
                continue;
            }
        };
        let bundle = shared.trust.bundle_pem();
        if current.as_ref().is_none_or(|(b, _)| *b != bundle) {
            match tls_config(serving.clone(), &bundle) {
                Ok(c) => current = Some((bundle, TlsAcceptor::from(c))),
                Err(e) => {
                    tracing::error!(error = %e, "token listener: no usable CA bundle");
                    continue;
                }
            }
        }
        let Some((_, acceptor)) = current.as_ref() else { continue };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "token listener: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(ClientCert::new(c.to_vec())));
            let peer_cert = Peer(leaf);
            let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer_cert.clone());
                router.clone().oneshot(req.map(Body::new))
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await
            {
                tracing::debug!(%peer, error = %e, "token listener: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CapabilityGrantStatus, Duration, GrantPhase};
    use crate::policy::seal::seal_status;
    use crate::testing::objects::grant;

    fn sealed(keys: &SealKeys, phase: GrantPhase) -> Arc<CachedGrant> {
        let mut g = grant(
            "ns",
            "g",
            "bot",
            &[("k8s:deployments.get", "k8s:staging/deployments/web")],
            Duration::from_secs(600),
        );
        g.metadata.uid = Some("uid-1".into());
        let mut st = CapabilityGrantStatus { phase, ..Default::default() };
        st.seal = Some(seal_status(keys, &g, &st));
        g.status = Some(st);
        Arc::new(CachedGrant::from(g))
    }

    fn phase(g: &CapabilityGrant) -> Option<GrantPhase> {
        g.status.as_ref().map(|s| s.phase)
    }

    #[test]
    fn a_trusted_grant_is_reused_only_for_the_same_object_keys_and_second() {
        let keys = Arc::new(SealKeys::generate().expect("keys"));
        let cache = TrustedGrants::default();
        let active = sealed(&keys, GrantPhase::Active);
        let first = cache.get("uid-1", active.clone(), keys.clone(), 100);
        assert_eq!(phase(&first), Some(GrantPhase::Active));
        let again = cache.get("uid-1", active.clone(), keys.clone(), 100);
        assert!(Arc::ptr_eq(&first, &again), "the same object, keys and second reuse the decoded grant");

        // A change to the grant is a new object in the grant cache: seen at once.
        let revoked = sealed(&keys, GrantPhase::Revoked);
        assert_eq!(phase(&cache.get("uid-1", revoked, keys.clone(), 100)), Some(GrantPhase::Revoked));

        // Other seal keys: the seal is checked again, and the status is not trusted.
        let other = Arc::new(SealKeys::generate().expect("keys"));
        assert_eq!(phase(&cache.get("uid-1", active.clone(), other, 100)), Some(GrantPhase::Pending));

        // The next second: checked again, and the previous second's entries are dropped.
        let later = cache.get("uid-1", active.clone(), keys.clone(), 101);
        assert_eq!(phase(&later), Some(GrantPhase::Active));
        assert!(!Arc::ptr_eq(&first, &later));
        let other_grant = sealed(&keys, GrantPhase::Active);
        cache.get("uid-2", other_grant, keys.clone(), 102);
        let map = cache.map.lock().expect("lock");
        assert_eq!((map.0, map.1.len()), (102, 1), "only the current second's grants are kept");
    }
}

//! Who asks an introspection (RFC 7662 §2.1: the endpoint requires some form
//! of authorization of its callers).
//!
//! A caller proves itself one of two ways:
//!
//! - a Kubernetes ServiceAccount token as `Authorization: Bearer …`, checked
//!   with a TokenReview (kept [`POSITIVE_TTL`] when valid, [`NEGATIVE_TTL`]
//!   when not, in a cache of at most [`CACHE_ENTRIES`] token hashes);
//! - a client certificate chained to Writ's CA, presented on the TLS
//!   connection (a pod's Writ certificate), not revoked.
//!
//! The names a caller answers to as an audience ([`Caller::is_audience`]):
//! the ServiceAccount `system:serviceaccount:<ns>:<name>` is `<name>.<ns>`,
//! and also the bare `<name>` for tokens whose grant is in `<ns>`; a
//! certificate is its SPIFFE ID.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{
    api::{Api, PostParams},
    Client,
};
use rustls::pki_types::CertificateDer;

/// How long a valid ServiceAccount token is taken without another review.
pub const POSITIVE_TTL: Duration = Duration::from_secs(30);
/// How long an invalid one is refused without another review.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// The most token reviews the cache holds; when full, expired entries go
/// first, then all of them.
pub const CACHE_ENTRIES: usize = 4096;
/// The longest bearer token sent for review: ServiceAccount tokens are JWTs
/// of a kilobyte or two.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The prefix of a ServiceAccount's user name.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An authenticated introspection caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A ServiceAccount, by its TokenReview.
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A user the API server knows that is not a ServiceAccount: authenticated,
    /// but no audience name maps to it.
    User(String),
    /// A workload with a Writ certificate, by its SPIFFE ID.
    Workload(String),
}

impl Caller {
    /// Whether this caller is one of a token's audiences `aud`, the token's
    /// grant being in namespace `grant_namespace`.
    pub fn is_audience(&self, aud: &[String], grant_namespace: &str) -> bool {
        match self {
            Caller::ServiceAccount { namespace, name } => {
                aud.iter().any(|a| *a == format!("{name}.{namespace}") || (a == name && namespace == grant_namespace))
            }
            Caller::Workload(spiffe_id) => aud.iter().any(|a| a == spiffe_id),
            Caller::User(_) => false,
        }
    }

    /// The caller as one line for logs.
    pub fn describe(&self) -> String {
        match self {
            Caller::ServiceAccount { namespace, name } => format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"),
            Caller::User(user) => format!("user {user}"),
            Caller::Workload(id) => id.clone(),
        }
    }
}

/// The Writ client certificate a TLS connection presented, verified against
/// Writ's CA at the handshake (see [`crate::state::tls::ClientTrust`]).
#[derive(Clone, Debug)]
pub struct WritClientCertificate(pub CertificateDer<'static>);

/// Errors while authenticating a caller.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// The TokenReview could not be made.
    #[error("TokenReview: {0}")]
    Review(#[source] kube::Error),
}

/// Reviews by the SHA-256 of the token: until when each holds, and who.
type Reviews = HashMap<[u8; 32], (Instant, Option<Caller>)>;

/// Checks ServiceAccount tokens with TokenReviews, caching the outcome
/// briefly (by a SHA-256 of the token: tokens are never kept).
pub struct TokenReviewer {
    client: Client,
    cache: Mutex<Reviews>,
}

impl TokenReviewer {
    /// A reviewer asking the API server of `client`.
    pub fn new(client: Client) -> Self {
        TokenReviewer { client, cache: Mutex::new(HashMap::new()) }
    }

    /// Who `token` belongs to; `None` when the API server does not
    /// authenticate it. What cannot be a ServiceAccount token (not a JWT's
    /// three base64url parts, or over [`MAX_TOKEN_BYTES`]) is refused
    /// without asking the API server.
    pub async fn review(&self, token: &str) -> Result<Option<Caller>, CallerError> {
        if !jwt_shaped(token) {
            return Ok(None);
        }
        let key = token_key(token);
        let now = Instant::now();
        if let Some((until, caller)) = self.lock().get(&key) {
            if *until > now {
                return Ok(caller.clone());
            }
        }
        let review =
            TokenReview { spec: TokenReviewSpec { token: token.to_string(), audiences: None }, ..Default::default() };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api.create(&PostParams::default(), &review).await.map_err(CallerError::Review)?;
        let status = reviewed.status.unwrap_or_default();
        let caller = match (status.authenticated, status.user.and_then(|u| u.username)) {
            (Some(true), Some(user)) => Some(caller_of(&user)),
            _ => None,
        };
        let ttl = if caller.is_some() { POSITIVE_TTL } else { NEGATIVE_TTL };
        let mut cache = self.lock();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (now + ttl, caller.clone()));
        Ok(caller)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reviews> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many reviews the cache holds (tests).
    pub fn cached(&self) -> usize {
        self.lock().len()
    }
}

/// The caller an authenticated user name stands for.
fn caller_of(user: &str) -> Caller {
    match user.strip_prefix(SERVICE_ACCOUNT_PREFIX).and_then(|rest| rest.split_once(':')) {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains(':') => {
            Caller::ServiceAccount { namespace: namespace.into(), name: name.into() }
        }
        _ => Caller::User(user.into()),
    }
}

/// Whether `token` has a JWT's shape: three non-empty base64url parts.
fn jwt_shaped(token: &str) -> bool {
    let base64url =
        |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    token.len() <= MAX_TOKEN_BYTES && token.split('.').count() == 3 && token.split('.').all(base64url)
}

fn token_key(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// The caller a verified Writ client certificate stands for: its SPIFFE ID,
/// unless the certificate is revoked or names none.
pub async fn workload_of(
    cert: &WritClientCertificate,
    revocations: &Arc<crate::state::revocations::RevocationStore>,
) -> Option<Caller> {
    let info = crate::pki::cert::CertificateInfo::from_der(&cert.0).ok()?;
    if revocations.is_certificate_revoked(&info.serial_hex).await {
        return None;
    }
    info.spiffe_id.map(Caller::Workload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(namespace: &str, name: &str) -> Caller {
        Caller::ServiceAccount { namespace: namespace.into(), name: name.into() }
    }

    #[test]
    fn a_caller_is_an_audience_by_the_documented_rule() {
        let aud = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // `<name>.<ns>` anywhere; the bare name only for grants of its namespace.
        assert!(sa("prod", "deploy-api").is_audience(&aud(&["deploy-api.prod"]), "ci"));
        assert!(sa("ci", "deploy-api").is_audience(&aud(&["deploy-api"]), "ci"));
        assert!(!sa("other", "deploy-api").is_audience(&aud(&["deploy-api"]), "ci"));
        assert!(!sa("prod", "deploy-api").is_audience(&aud(&["deploy-api.staging"]), "ci"));
        assert!(!sa("prod", "billing").is_audience(&aud(&["deploy-api.prod"]), "prod"));
        let id = "spiffe://cluster.local/ns/ci/agent/checker";
        assert!(Caller::Workload(id.into()).is_audience(&aud(&[id]), "ci"));
        assert!(!Caller::Workload(id.into()).is_audience(&aud(&["checker", "checker.ci"]), "ci"));
        assert!(!Caller::User("alice".into()).is_audience(&aud(&["alice"]), "ci"));
    }

    #[test]
    fn user_names_map_to_service_accounts_only_when_well_formed() {
        assert_eq!(caller_of("system:serviceaccount:ci:deploy-api"), sa("ci", "deploy-api"));
        for other in ["alice", "system:serviceaccount:ci", "system:serviceaccount::x", "system:serviceaccount:a:b:c"] {
            assert_eq!(caller_of(other), Caller::User(other.into()), "{other}");
        }
    }

    /// A token of JWT shape that the fake API server authenticates.
    const GOOD: &str = "aGVhZGVy.Z29vZA.c2lnbmF0dXJl";

    #[tokio::test]
    async fn reviews_are_cached_briefly_and_never_by_the_token_itself() {
        let server = crate::testing::ApiServer::new();
        let client = server.answering(|req| {
            assert_eq!(req.path, "/apis/authentication.k8s.io/v1/tokenreviews");
            let status = if req.body["spec"]["token"] == GOOD {
                serde_json::json!({"authenticated": true, "user": {"username": "system:serviceaccount:ci:deploy-api"}})
            } else {
                serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
            };
            crate::testing::Reply::created(serde_json::json!({"apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview", "spec": {}, "status": status}))
        });
        let asked = || server.requests().len();
        let reviewer = TokenReviewer::new(client);
        assert_eq!(reviewer.review(GOOD).await.expect("review"), Some(sa("ci", "deploy-api")));
        assert_eq!(reviewer.review(GOOD).await.expect("review"), Some(sa("ci", "deploy-api")));
        assert_eq!(reviewer.review("aGVhZGVy.YmFk.c2ln").await.expect("review"), None);
        assert_eq!(reviewer.review("aGVhZGVy.YmFk.c2ln").await.expect("review"), None);
        assert_eq!(asked(), 2, "one review per token while cached");
        assert_eq!(reviewer.cached(), 2);
        let keys: Vec<[u8; 32]> = reviewer.lock().keys().copied().collect();
        assert!(keys.iter().all(|k| !k.windows(4).any(|w| w == b"aGVh")), "tokens are kept only as hashes");

        // Bounded: however many tokens are tried, the cache holds at most CACHE_ENTRIES.
        for i in 0..CACHE_ENTRIES + 10 {
            reviewer.review(&format!("aGVhZGVy.{i}.c2ln")).await.expect("review");
        }
        assert!(reviewer.cached() <= CACHE_ENTRIES, "{}", reviewer.cached());

        // What is no JWT is refused without a review.
        let asked_before = asked();
        let long = format!("a.{}.c", "b".repeat(MAX_TOKEN_BYTES));
        for junk in ["", "not-a-token", "a.b", "a.b.c.d", "a..c", "a.b c.d", "a.b.c\n", long.as_str()] {
            assert_eq!(reviewer.review(junk).await.expect("review"), None, "{junk:?}");
        }
        assert_eq!(asked(), asked_before, "no review of junk");
    }
}

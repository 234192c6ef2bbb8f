//! `writ run` configuration: one typed struct, built from flags and environment.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

use crate::api::Duration;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `writ run` needs. Every flag has an environment twin (`WRIT_*`).
#[derive(Clone, Debug, Args)]
pub struct RunConfig {
    /// The operator's namespace: trust material, published bundles, the leader Lease.
    #[arg(long, env = "WRIT_NAMESPACE", default_value = "writ-system")]
    pub namespace: String,
    /// The SPIFFE trust domain of issued identities.
    #[arg(long, env = "WRIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// HTTPS listener for the admission webhooks and the trust endpoints.
    #[arg(long, env = "WRIT_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// Register webhook configurations that point at this base URL (local
    /// runs, e.g. `https://127.0.0.1:8443`). Without it, the operator patches
    /// `caBundle` into the configurations installed by `manifests/`.
    #[arg(long, env = "WRIT_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// DNS names of the webhook Service (serving certificate SANs) when in-cluster.
    #[arg(long, env = "WRIT_SERVICE_NAME", default_value = "writ-webhook")]
    pub service_name: String,
    /// Name of the webhook configurations (Mutating and Validating).
    #[arg(long, env = "WRIT_WEBHOOK_CONFIG_NAME", default_value = crate::api::names::WEBHOOK_CONFIG_NAME)]
    pub webhook_config_name: String,
    /// Plain HTTP listener for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "WRIT_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Hard maximum of a pod certificate's lifetime.
    #[arg(long, env = "WRIT_MAX_CREDENTIAL_TTL", default_value = "24h")]
    pub max_credential_ttl: Duration,
    /// Hard maximum of a grant's TTL, whatever the policies say.
    #[arg(long, env = "WRIT_MAX_GRANT_TTL", default_value = "1h")]
    pub max_grant_ttl: Duration,
    /// Hard maximum of how long a grant waits for approval, whatever a
    /// policy's `approval.timeout` says (policies asking for more are refused).
    #[arg(long, env = "WRIT_MAX_APPROVAL_WAIT", default_value = "24h")]
    pub max_approval_wait: Duration,
    /// Refuse grants to agents whose access review is overdue.
    #[arg(long, env = "WRIT_REFUSE_REVIEW_OVERDUE", default_value_t = true, action = clap::ArgAction::Set)]
    pub refuse_review_overdue: bool,
    /// Refuse grants to dormant agents.
    #[arg(long, env = "WRIT_REFUSE_DORMANT", default_value_t = true, action = clap::ArgAction::Set)]
    pub refuse_dormant: bool,
    /// Lifetime of a newly generated CA.
    #[arg(long, env = "WRIT_CA_TTL", default_value = "365d")]
    pub ca_ttl: Duration,
    /// Use this existing Secret (`tls.crt`/`tls.key`) in the operator namespace as the CA.
    #[arg(long, env = "WRIT_CA_SECRET")]
    pub ca_secret: Option<String>,
    /// Identity of this replica in the leader Lease (defaults to the pod/host name).
    #[arg(long, env = "WRIT_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// How long a leader's Lease lasts without renewal before another replica takes over.
    #[arg(long, env = "WRIT_LEASE_DURATION", default_value = "10s")]
    pub lease_duration: Duration,
    /// HTTPS listener (mutual TLS) for the token exchange `POST /token`.
    #[arg(long, env = "WRIT_TOKEN_ADDR", default_value = "0.0.0.0:8444")]
    pub token_addr: SocketAddr,
    /// Lifetime of a per-call token from the token exchange (at most 5m).
    #[arg(long, env = "WRIT_EXCHANGE_TTL", default_value = "60s", value_parser = parse_exchange_ttl)]
    pub exchange_ttl: Duration,
    /// Token exchanges per second and pod (sustained).
    #[arg(long, env = "WRIT_EXCHANGE_RATE", default_value_t = 50)]
    pub exchange_rate: u32,
    /// Token exchanges per pod in a burst.
    #[arg(long, env = "WRIT_EXCHANGE_BURST", default_value_t = 100)]
    pub exchange_burst: u32,
    /// When set, only members of this group may record access reviews
    /// (`writ review`); otherwise anyone allowed to update the AgentIdentity,
    /// except the agent itself.
    #[arg(long, env = "WRIT_REVIEW_GROUP", value_name = "GROUP")]
    pub review_group: Option<String>,
    /// Log format.
    #[arg(long, env = "WRIT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The share of the cluster-wide revocation list one namespace may hold,
    /// in percent of its capacity (1 to 100): a revocation that would take a
    /// namespace past it is refused for that namespace alone (its
    /// credentials stay issued), so one tenant cannot fill the list for all.
    /// 100 sets no per-namespace limit.
    #[arg(
        long,
        env = "WRIT_REVOCATION_NAMESPACE_QUOTA",
        default_value_t = crate::state::revocations::DEFAULT_NAMESPACE_QUOTA_PERCENT,
        value_parser = clap::value_parser!(u8).range(1..=100)
    )]
    pub revocation_namespace_quota: u8,
    /// A second HTTPS listener serving only the trust endpoints (JWKS, trust
    /// bundle, revocations, introspection), so that a NetworkPolicy can
    /// close the webhook port to everything but the API server.
    #[arg(long, env = "WRIT_ENDPOINTS_ADDR")]
    pub endpoints_addr: Option<SocketAddr>,
    /// A PEM CA bundle: the webhook paths then answer only a client
    /// certificate chained to it (the API server's, configured with an
    /// AdmissionConfiguration kubeConfigFile).
    #[arg(long, env = "WRIT_WEBHOOK_CLIENT_CA")]
    pub webhook_client_ca: Option<std::path::PathBuf>,
    /// Algorithm of the token-signing key: ES256 (every JWT-SVID validator accepts it) or EdDSA.
    /// A stored key of the other algorithm is rotated at start (the old key stays in the JWKS
    /// until its last token expires).
    #[arg(long, env = "WRIT_TOKEN_ALGORITHM", value_name = "ES256|EdDSA", default_value = "ES256")]
    pub token_algorithm: crate::pki::TokenAlgorithm,
    /// The tokens' issuer (`iss`) and the OpenID Connect Discovery issuer: an `https://` URL
    /// where this operator's HTTPS listener is reached. Default: `--webhook-url` when set (local
    /// runs), else `https://<service-name>.<namespace>.svc`.
    #[arg(long, env = "WRIT_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// Export per-object series on /metrics (each grant's phase and expiry, each agent pod's certificate expiry
    /// and rotation), while the cluster holds at most --per-object-metrics-max grants and agent pods.
    #[arg(long, env = "WRIT_PER_OBJECT_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub per_object_metrics: bool,
    /// Above this many grants and agent pods together, per-object series are not exported (their number
    /// follows the cluster's size); `writ_object_metrics_enabled` says which applies.
    #[arg(long, env = "WRIT_PER_OBJECT_METRICS_MAX", default_value_t = 2000)]
    pub per_object_metrics_max: usize,
}

/// Parses `--exchange-ttl`: a duration of 1s to 5m.
fn parse_exchange_ttl(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=MAX_TTL_SECS).contains(&d.as_secs_i64()) {
        return Err(format!("--exchange-ttl must be between 1s and {}s", MAX_TTL_SECS));
    }
    Ok(d)
}

#[cfg(any(test, feature = "testing"))]
impl RunConfig {
    /// The configuration `writ run` has with no flags and no environment.
    pub fn test() -> Self {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunConfig,
        }
        <Cli as clap::Parser>::try_parse_from(["writ"]).expect("the defaults parse").run
    }
}

impl RunConfig {
    /// The admission limits derived from this configuration.
    pub fn limits(&self) -> crate::policy::Limits {
        crate::policy::Limits {
            max_grant_ttl: self.max_grant_ttl,
            max_credential_ttl: self.max_credential_ttl,
            refuse_review_overdue: self.refuse_review_overdue,
            refuse_dormant: self.refuse_dormant,
            max_approval_wait: self.max_approval_wait,
            ..Default::default()
        }
    }

    /// The issuer tokens name: `--issuer`, else `--webhook-url`, else
    /// `https://<service-name>.<namespace>.svc`; checked with [`validate_issuer`].
    pub fn effective_issuer(&self) -> Result<String, String> {
        let issuer = match (&self.issuer, &self.webhook_url) {
            (Some(i), _) => i.clone(),
            (None, Some(url)) => url.trim_end_matches('/').to_string(),
            (None, None) => format!("https://{}.{}.svc", self.service_name, self.namespace),
        };
        validate_issuer(&issuer)?;
        Ok(issuer)
    }

    /// A one-line summary for the start-up log (no secrets in here).
    pub fn summary(&self) -> String {
        format!(
            "namespace={} trust_domain={} token_algorithm={} issuer={} webhook_addr={} webhook_url={} metrics_addr={} max_credential_ttl={} max_grant_ttl={} lease_duration={} ca_secret={}",
            self.namespace,
            self.trust_domain,
            self.token_algorithm,
            self.effective_issuer().unwrap_or_else(|e| e),
            self.webhook_addr,
            self.webhook_url.as_deref().unwrap_or("-"),
            self.metrics_addr,
            self.max_credential_ttl,
            self.max_grant_ttl,
            self.lease_duration,
            self.ca_secret.as_deref().unwrap_or("(generated)"),
        )
    }
}

/// An issuer is an `https://` URL with a host and no query or fragment (OpenID Connect Discovery
/// §3, `issuer`); the error names the flag and the rule broken.
pub fn validate_issuer(issuer: &str) -> Result<(), String> {
    let err = |rule: &str| Err(format!("--issuer {issuer:?}: {rule}"));
    let Some(rest) = issuer.strip_prefix("https://") else {
        return err("must be an https:// URL");
    };
    if issuer.contains(['?', '#']) {
        return err("must have no query or fragment");
    }
    if issuer.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return err("must have no whitespace");
    }
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return err("must name a host (and no user information)");
    }
    if issuer.parse::<http::Uri>().is_err() {
        return err("is not a valid URL");
    }
    Ok(())
}

/// Longest lifetime of a per-call token, in seconds.
pub const MAX_TTL_SECS: i64 = 300;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_must_be_https_urls_without_query_or_fragment() {
        for good in ["https://writ-webhook.writ-system.svc", "https://127.0.0.1:8443", "https://id.example.com/writ"] {
            assert_eq!(validate_issuer(good), Ok(()), "{good}");
        }
        for (bad, rule) in [
            ("http://writ.example.com", "https://"),
            ("spiffe://cluster.local/writ", "https://"),
            ("https://", "host"),
            ("https://x.example.com/?a=b", "query"),
            ("https://x.example.com/#f", "fragment"),
            ("https://user@x.example.com", "user"),
        ] {
            let err = validate_issuer(bad).expect_err(bad);
            assert!(err.starts_with("--issuer") && err.contains(rule), "{bad}: {err}");
        }
    }

    #[test]
    fn the_default_issuer_is_the_webhook_url_or_the_service() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunConfig,
        }
        let parse =
            |args: &[&str]| Cli::try_parse_from(std::iter::once("writ").chain(args.iter().copied())).map(|c| c.run);
        let c = parse(&[]).expect("defaults");
        assert_eq!(c.token_algorithm, crate::pki::TokenAlgorithm::Es256);
        assert_eq!(c.effective_issuer().as_deref(), Ok("https://writ-webhook.writ-system.svc"));
        let c = parse(&["--webhook-url", "https://127.0.0.1:8443/"]).expect("local");
        assert_eq!(c.effective_issuer().as_deref(), Ok("https://127.0.0.1:8443"));
        let c = parse(&["--issuer", "https://id.example.com", "--token-algorithm", "EdDSA"]).expect("explicit");
        assert_eq!(c.effective_issuer().as_deref(), Ok("https://id.example.com"));
        assert_eq!(c.token_algorithm, crate::pki::TokenAlgorithm::EdDsa);
        assert!(parse(&["--token-algorithm", "HS256"]).is_err());
        assert!(parse(&["--issuer", "http://x"]).expect("parsed").effective_issuer().is_err());
    }
}

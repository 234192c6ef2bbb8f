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
    #[arg(long, env = "WRIT_WEBHOOK_CONFIG_NAME", default_value = "writ")]
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
    /// Log format.
    #[arg(long, env = "WRIT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Parses `--exchange-ttl`: a duration of 1s to 5m.
fn parse_exchange_ttl(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=crate::exchange::MAX_TTL_SECS).contains(&d.as_secs_i64()) {
        return Err(format!("--exchange-ttl must be between 1s and {}s", crate::exchange::MAX_TTL_SECS));
    }
    Ok(d)
}

impl RunConfig {
    /// The admission limits derived from this configuration.
    pub fn limits(&self) -> crate::policy::Limits {
        crate::policy::Limits {
            max_grant_ttl: self.max_grant_ttl,
            max_credential_ttl: self.max_credential_ttl,
            refuse_review_overdue: self.refuse_review_overdue,
            refuse_dormant: self.refuse_dormant,
            ..Default::default()
        }
    }

    /// A one-line summary for the start-up log (no secrets in here).
    pub fn summary(&self) -> String {
        format!(
            "namespace={} trust_domain={} webhook_addr={} webhook_url={} metrics_addr={} max_credential_ttl={} max_grant_ttl={} lease_duration={} ca_secret={}",
            self.namespace,
            self.trust_domain,
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

//! The `writ` command line (also usable as `kubectl writ …` when installed
//! as `kubectl-writ` on the PATH): thin wrappers over the library.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::api::{Api, Patch, PatchParams};
use writ::api::{CapabilityGrant, Decision};

/// Writ: pod-bound identities and task-scoped capability grants for AI agents on Kubernetes.
#[derive(Parser)]
#[command(name = "writ", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: controllers (on the leader), webhooks, trust endpoints, metrics and health.
    Run(Box<writ::state::RunConfig>),
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD with --dir).
    Crds {
        /// Write `<crd-name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the webhook configurations that `manifests/` installs.
    #[command(hide = true)]
    Webhooks,
    /// Check manifests offline with the admission rules (for CI before merge).
    ///
    /// Exits 0 when everything passes (or, with --test, every expected result holds), 1 on a violation (or a
    /// mismatch), 2 when a file cannot be read or a document cannot be loaded.
    Check {
        /// Files or directories of YAML manifests.
        #[arg(required_unless_present = "test", conflicts_with = "test")]
        paths: Vec<PathBuf>,
        /// The requester to check grants as (a user name, or system:serviceaccount:NS:NAME).
        #[arg(long = "as", value_name = "USER", required_unless_present = "test", conflicts_with = "test")]
        user: Option<String>,
        /// Groups of the requester (repeatable).
        #[arg(long = "group", value_name = "GROUP", conflicts_with = "test")]
        groups: Vec<String>,
        /// Namespace for objects that do not name one [default: default].
        #[arg(long, short = 'n', conflicts_with = "test")]
        namespace: Option<String>,
        /// A test file (`kind: Test`, apiVersion cli.writ.dev/v1alpha1): its resources, requester and the outcome
        /// expected for each object (allow, or deny with the rule ids).
        #[arg(long, value_name = "FILE")]
        test: Option<PathBuf>,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "text")]
        output: writ::check::OutputFormat,
    },
    /// Verify a capability token with the client certificate it was presented with, as a resource server would.
    ///
    /// Exits 0 when the token is valid for the attempt, 1 with the failed check when it is not, 2 on usage or I/O
    /// errors. Trust data defaults to the operator's ConfigMaps (read with your kubeconfig).
    Verify(Box<VerifyArgs>),
    /// Decode a token or a certificate and print its fields (never key material; nothing is verified).
    Inspect {
        /// A JWT, or PEM/DER certificates.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the token-signing key or the CA (the previous one stays trusted until what it signed has expired).
    Rotate(RotateArgs),
    /// Inside an agent pod: exchange a grant token for a per-call token (one audience, one capability) and print it.
    Token(TokenArgs),
    /// Approve a grant that awaits approval, as your own Kubernetes identity.
    Approve(DecisionArgs),
    /// Deny a grant that awaits approval, as your own Kubernetes identity.
    Deny(DecisionArgs),
    /// The kill switch: end every grant of an agent, revoke its pods' certificates, refuse new ones.
    Suspend(SuspendArgs),
    /// Lift a suspension: new pods and grants for the agent are admitted again (nothing old comes back).
    Resume(SuspendArgs),
    /// Record an access review of an AgentIdentity as your own Kubernetes identity (clears ReviewOverdue).
    Review(ReviewArgs),
    /// Show why a grant, identity or pod is where it is: phase, conditions, chain, tokens (never the tokens),
    /// certificates (never the keys), recent Events, and what to do next when it is stuck.
    Status(StatusArgs),
    /// Print a shell completion script: `source <(writ completion bash)`.
    Completion {
        /// The shell.
        shell: CompletionShell,
    },
}

#[derive(clap::Args)]
struct StatusArgs {
    /// What to show.
    what: StatusWhat,
    /// Its name.
    name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    output: StatusOutput,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StatusWhat {
    /// A CapabilityGrant.
    Grant,
    /// An AgentIdentity, its pods and their certificates.
    Identity,
    /// An agent pod: its certificate and tokens.
    Pod,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StatusOutput {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The grant whose token is exchanged (`grant.<NAME>.jwt` in the credential folder).
    #[arg(long)]
    grant: String,
    /// The audience the token is for (RFC 8707 resource), one of the grant's audiences.
    #[arg(long)]
    resource: String,
    /// The action, e.g. `k8s:deployments.patch`.
    #[arg(long)]
    action: String,
    /// The resource the action is on, e.g. `k8s:staging/deployments/web`.
    #[arg(long)]
    target: String,
    /// Also bind the token to the pod's key with a DPoP proof (RFC 9449).
    #[arg(long)]
    dpop: bool,
    /// The pod's credential folder.
    #[arg(long, env = "WRIT_CREDENTIALS", default_value = writ::api::CREDENTIALS_DIR)]
    credentials: PathBuf,
    /// The token endpoint's base URL.
    #[arg(long, env = "WRIT_TOKEN_ENDPOINT", default_value = "https://writ-webhook.writ-system.svc:8444")]
    endpoint: String,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The token (a file holding the JWT, e.g. `grant.<name>.jwt`).
    #[arg(long)]
    token: PathBuf,
    /// The client certificate it was presented with (PEM or DER, e.g. the pod's `tls.crt`). A PEM file may go
    /// on with the intermediate CAs presented with it (a pod's `tls.crt` does when the operator's CA is an
    /// intermediate): the path from the certificate to a CA of the bundle is built through them.
    #[arg(long)]
    cert: PathBuf,
    /// More intermediate CA certificates the client presented (PEM), when they are not in the `--cert` file.
    #[arg(long, value_name = "FILE")]
    chain: Option<PathBuf>,
    /// Your audience name; must be in the token's `aud`.
    #[arg(long)]
    audience: String,
    /// The action being attempted, e.g. `k8s:deployments.patch`.
    #[arg(long)]
    action: String,
    /// The resource it is attempted on, e.g. `k8s:staging/deployments/web`.
    #[arg(long)]
    resource: String,
    /// CA bundle: FILE or https URL (default: ConfigMap writ-trust-bundle).
    #[arg(long, value_name = "FILE|URL")]
    bundle: Option<String>,
    /// JWKS: FILE or https URL (default: ConfigMap writ-jwks).
    #[arg(long, value_name = "FILE|URL")]
    jwks: Option<String>,
    /// Revocation list: FILE or https URL (default: ConfigMaps writ-revocations, writ-revocations-1 … -7; `none` to skip, not recommended).
    #[arg(long, value_name = "FILE|URL")]
    revocations: Option<String>,
    /// CA certificates (PEM) for verifying https URLs (default: the trust bundle, when it is not itself a URL).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The operator namespace, for the ConfigMap defaults.
    #[arg(long, default_value = "writ-system", env = "WRIT_NAMESPACE")]
    writ_namespace: String,
    /// Tolerated clock skew in seconds (at most 300).
    #[arg(long, default_value_t = writ::verify::DEFAULT_SKEW_SECS)]
    skew: i64,
    /// Accept only tokens whose `iss` is this (repeatable: after a change of issuer, give the
    /// previous one too until its tokens expire). Default: `iss` is not checked, since the
    /// signature by a key of the JWKS already proves the operator issued the token.
    #[arg(long = "issuer", value_name = "URL")]
    issuers: Vec<String>,
}

#[derive(clap::Args)]
struct RotateArgs {
    /// What to rotate.
    what: RotateWhat,
    /// The operator namespace.
    #[arg(long, default_value = "writ-system", env = "WRIT_NAMESPACE")]
    writ_namespace: String,
    /// How long the previous key (CA) stays published. Must cover the longest grant TTL (for the signing key),
    /// the longest credential TTL (for the CA) or the longest approval wait plus grant TTL (for the seal key) the
    /// operator allows, plus clock skew. Defaults: 1h5m, 24h5m and 25h5m, matching the operator's defaults.
    #[arg(long)]
    keep: Option<writ::api::Duration>,
    /// Trust domain, for the new CA's name.
    #[arg(long, default_value = "cluster.local", env = "WRIT_TRUST_DOMAIN")]
    trust_domain: String,
    /// Lifetime of the new CA.
    #[arg(long, default_value = "3650d")]
    ca_ttl: writ::api::Duration,
    /// Algorithm of the new signing key: ES256 or EdDSA (default: the current key's). Set the
    /// operator's `--token-algorithm` to the same, or its next start rotates back.
    #[arg(long, value_name = "ES256|EdDSA")]
    algorithm: Option<writ::pki::TokenAlgorithm>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RotateWhat {
    /// The token-signing key (JWKS).
    SigningKey,
    /// The generated CA (trust bundle).
    Ca,
    /// The key that seals admission stamps, grant status and access reviews.
    SealKey,
}

#[derive(clap::Args)]
struct DecisionArgs {
    /// The CapabilityGrant.
    grant: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Why (recorded in the grant for audit).
    #[arg(long)]
    reason: Option<String>,
}

#[derive(clap::Args)]
struct ReviewArgs {
    /// The AgentIdentity.
    identity: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// A note on the review (recorded on the identity).
    #[arg(long)]
    note: Option<String>,
}

#[derive(clap::Args)]
struct SuspendArgs {
    /// The AgentIdentity.
    agent: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Why (recorded on the identity for audit; suspend only).
    #[arg(long)]
    reason: Option<String>,
}

/// glibc gives every thread that contends for the allocator its own arena
/// (up to 8 per core); with a cache of thousands of small objects churned by
/// watch events that fragments into several times the live size. Three
/// arenas keep the operator's memory close to what it holds (see
/// bench/RESULTS.md): the main thread's, the watch thread's (what the caches
/// keep, apart from the controllers' short-lived buffers; see
/// `writ::controller::machinery::cache::start_watch_thread`) and one for the first runtime
/// worker, the next sharing the main thread's; unless glibc's own
/// `MALLOC_ARENA_MAX` is set in the environment.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 3);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// The command line, named as it was invoked: kubectl runs plugins as
/// `kubectl-writ` (a link to `writ`), and help then reads `kubectl writ`.
fn parse_cli() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let invoked = std::env::args_os().next().map(PathBuf::from);
    let as_plugin = invoked.as_deref().and_then(|p| p.file_stem()).is_some_and(|n| n == "kubectl-writ");
    let command = if as_plugin { Cli::command().bin_name("kubectl writ") } else { Cli::command() };
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = parse_cli();
    let result = match cli.command {
        Command::Run(config) => {
            limit_malloc_arenas();
            writ::runtime::telemetry::init(config.log_format);
            writ::controller::machinery::cache::start_watch_thread()
                .context("starting the watch thread")
                .and_then(|()| runtime())
                .and_then(|rt| rt.block_on(writ::runtime::run(*config)).map(|_| ExitCode::SUCCESS))
        }
        Command::Crds { dir } => crds(dir),
        Command::Webhooks => writ::webhook::register::manifests_yaml().map_err(Into::into).map(|y| {
            print!("{y}");
            ExitCode::SUCCESS
        }),
        Command::Check { paths, user, groups, namespace, test, output } => Ok(match test {
            Some(test) => check_test(&test, output),
            None => check(&paths, user.unwrap_or_default(), groups, namespace, output),
        }),

        Command::Verify(args) => runtime().and_then(|rt| rt.block_on(verify(*args))),
        Command::Inspect { file, json } => inspect(&file, json),
        Command::Token(args) => runtime().and_then(|rt| rt.block_on(token(args))),
        Command::Rotate(args) => runtime().and_then(|rt| rt.block_on(rotate(args))),
        Command::Approve(args) => runtime().and_then(|rt| rt.block_on(decide(args, Decision::Approved))),
        Command::Suspend(args) => runtime().and_then(|rt| rt.block_on(suspend(args, true))),
        Command::Resume(args) => runtime().and_then(|rt| rt.block_on(suspend(args, false))),
        Command::Review(args) => runtime().and_then(|rt| rt.block_on(review(args))),
        Command::Deny(args) => runtime().and_then(|rt| rt.block_on(decide(args, Decision::Denied))),
        Command::Status(args) => runtime().and_then(|rt| rt.block_on(status(args))),
        Command::Completion { shell } => {
            completion(shell);
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(
    paths: &[PathBuf],
    user: String,
    groups: Vec<String>,
    namespace: Option<String>,
    output: writ::check::OutputFormat,
) -> ExitCode {
    let mut opts = writ::check::CheckOptions::new(user, groups);
    opts.namespace = Some(namespace.unwrap_or_else(|| "default".to_string()));
    report_exit(writ::check::check_paths(paths, &opts).map(|r| (r.render_as(output), r.passed())))
}

fn check_test(test: &std::path::Path, output: writ::check::OutputFormat) -> ExitCode {
    report_exit(writ::check::run_test(test).map(|r| (r.render_as(output), r.passed())))
}

/// Prints a rendered report: exit 0 when it passed, 1 when it did not, 2 when
/// the input could not be read.
fn report_exit(result: Result<(String, bool), writ::check::CheckError>) -> ExitCode {
    match result {
        Ok((rendered, passed)) => {
            print!("{rendered}");
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn inspect(file: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let input = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let inspected = writ::inspect::inspect(&input)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&inspected)?);
    } else {
        print!("{}", inspected.render(writ::pki::now_unix()));
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    use writ::verify::{fetch::Source, Attempt, RevocationList, Verifier};
    let ns = &args.writ_namespace;
    let source = |arg: &Option<String>, name: &str, key: &str| match arg {
        Some(a) => Source::parse(a),
        None => Source::ConfigMap { namespace: ns.clone(), name: name.into(), key: key.into() },
    };
    let bundle_src = source(&args.bundle, writ::api::names::TRUST_BUNDLE_CONFIGMAP, "ca.crt");
    let tls_ca = match &args.tls_ca {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let bundle = String::from_utf8(bundle_src.load(tls_ca.as_deref()).await?).context("the bundle is not PEM text")?;
    let tls_ca = tls_ca.or_else(|| Some(bundle.clone()));
    let jwks = source(&args.jwks, writ::api::names::JWKS_CONFIGMAP, "jwks.json").load(tls_ca.as_deref()).await?;
    let jwks: writ::pki::JwkSet = serde_json::from_slice(&jwks).context("reading the JWKS")?;
    let revocations = match args.revocations.as_deref() {
        Some("none") => RevocationList::default(),
        Some(other) => {
            let bytes = Source::parse(other).load(tls_ca.as_deref()).await?;
            serde_json::from_slice(&bytes).context("reading the revocation list")?
        }
        // Every part, with one client (an absent part holds nothing).
        None => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the API server (or give --revocations as a file or URL)")?;
            writ::state::revocations::read_persisted(&client, ns).await.context("reading the revocation list")?
        }
    };
    let verifier = Verifier::new(&bundle, jwks)?
        .with_revocations(revocations)
        .with_skew(args.skew)?
        .with_issuers(args.issuers.iter().cloned());
    let token = std::fs::read_to_string(&args.token).with_context(|| format!("reading {}", args.token.display()))?;
    let cert = std::fs::read(&args.cert).with_context(|| format!("reading {}", args.cert.display()))?;
    let attempt = Attempt { audience: &args.audience, action: &args.action, resource: &args.resource };
    let now = writ::pki::now_unix();
    let result = match writ::pki::cert::parse_certificates(&cert) {
        Ok(mut chain) => {
            if let Some(path) = &args.chain {
                let more = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                chain.extend(
                    writ::pki::cert::parse_certificates(&more)
                        .with_context(|| format!("reading certificates from {}", path.display()))?,
                );
            }
            verifier.verify_chain(&token, &chain, &attempt, now)
        }
        // An unreadable presented certificate is a refusal (exit 1) like any
        // other bad client input, reported after the token's own checks.
        Err(_) => verifier.verify(&token, &cert, &attempt, now),
    };
    match result {
        Ok(claims) => {
            println!(
                "valid: {} may {} on {} (grant {}/{}, task {}, expires {})",
                claims.sub,
                args.action,
                args.resource,
                claims.grant.namespace,
                claims.grant.name,
                claims.task.id,
                jiff::Timestamp::from_second(claims.exp)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| claims.exp.to_string())
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("refused ({}): {e}", e.code());
            Ok(ExitCode::from(1))
        }
    }
}

async fn rotate(args: RotateArgs) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default().await.context("connecting to the API server")?;
    let now = writ::pki::now_unix();
    let ns = &args.writ_namespace;
    let (what, rotation) = match args.what {
        RotateWhat::SigningKey => {
            let keep = args.keep.map(|d| d.as_secs_i64()).unwrap_or(3600 + 300);
            ("signing key", writ::state::trust::rotate_signing_key(&client, ns, keep, now, args.algorithm).await?)
        }
        RotateWhat::Ca => {
            let keep = args.keep.map(|d| d.as_secs_i64()).unwrap_or(86_400 + 300);
            let ttl = args.ca_ttl.as_secs_i64();
            ("CA", writ::state::trust::rotate_ca(&client, ns, &args.trust_domain, ttl, keep, now).await?)
        }
        RotateWhat::SealKey => {
            // A grant's admission seal is checked for its whole life: the longest
            // approval wait plus the longest grant TTL (operator defaults), plus skew.
            let keep = args.keep.map(|d| d.as_secs_i64()).unwrap_or(25 * 3600 + 300);
            ("seal key", writ::state::trust::rotate_seal_key(&client, ns, keep, now).await?)
        }
    };
    let until = jiff::Timestamp::from_second(rotation.previous_kept_until).map(|t| t.to_string()).unwrap_or_default();
    println!(
        "rotated the {what}: {} -> {} (previous stays trusted until {until})",
        rotation.previous, rotation.current
    );
    Ok(ExitCode::SUCCESS)
}

/// `writ token`: prints the per-call token; exits 1 with the OAuth error when refused.
async fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let req = writ::exchange::client::TokenRequest {
        dir: &args.credentials,
        grant: &args.grant,
        resource: &args.resource,
        action: &args.action,
        target: &args.target,
        endpoint: &args.endpoint,
        dpop: args.dpop,
    };
    match writ::exchange::client::request_token(&req).await {
        Ok(r) => {
            println!("{}", r.access_token);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ writ::exchange::client::ClientError::Refused { .. }) => {
            eprintln!("{e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default().await.context("connecting to the API server")?;
    let ns = args.namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let now = writ::pki::now_unix();
    let (text, json) = match args.what {
        StatusWhat::Grant => {
            let r = writ::status::grant(&client, &ns, &args.name).await?;
            (r.render(), serde_json::to_value(&r)?)
        }
        StatusWhat::Identity => {
            let r = writ::status::identity(&client, &ns, &args.name, now).await?;
            (r.render(), serde_json::to_value(&r)?)
        }
        StatusWhat::Pod => {
            let r = writ::status::pod(&client, &ns, &args.name, now).await?;
            (r.render(), serde_json::to_value(&r)?)
        }
    };
    match args.output {
        StatusOutput::Text => print!("{text}"),
        StatusOutput::Json => println!("{}", serde_json::to_string_pretty(&json)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the completion script for `shell` to stdout, for the `writ`
/// binary and, under kubectl, for `kubectl-writ`.
fn completion(shell: CompletionShell) {
    use clap::CommandFactory as _;
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "writ", &mut std::io::stdout());
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn crds(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    match dir {
        None => print!("{}", writ::api::crds_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (name, yaml) in writ::api::crd_files()? {
                std::fs::write(dir.join(name), yaml)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks admission to record a review: the webhook stamps who and when.
async fn review(args: ReviewArgs) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default().await.context("connecting to the API server")?;
    let ns = args.namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<writ::api::AgentIdentity> = Api::namespaced(client, &ns);
    let patch = serde_json::json!({ "metadata": { "annotations": {
        writ::api::REVIEW_REQUEST_ANNOTATION: jiff::Timestamp::now().to_string(),
        writ::api::REVIEW_NOTE_ANNOTATION: args.note,
    } } });
    let reviewed = api
        .patch(&args.identity, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("recording a review of AgentIdentity {ns}/{}", args.identity))?;
    let by = reviewed.metadata.annotations.as_ref().and_then(|a| a.get(writ::api::REVIEWED_BY_ANNOTATION));
    println!("agentidentity.writ.dev/{} reviewed by {}", args.identity, by.map(String::as_str).unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

/// Sets `spec.suspended`; who did it and when are stamped by admission.
async fn suspend(args: SuspendArgs, suspended: bool) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default().await.context("connecting to the API server")?;
    let ns = args.namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<writ::api::AgentIdentity> = Api::namespaced(client, &ns);
    let reason = if suspended { args.reason } else { None };
    let patch = serde_json::json!({
        "metadata": { "annotations": { writ::api::SUSPEND_REASON_ANNOTATION: reason } },
        "spec": { "suspended": suspended }
    });
    api.patch(&args.agent, &PatchParams::default(), &Patch::Merge(patch)).await.with_context(|| {
        format!("{} AgentIdentity {ns}/{}", if suspended { "suspending" } else { "resuming" }, args.agent)
    })?;
    println!("agentidentity.writ.dev/{} {}", args.agent, if suspended { "suspended" } else { "resumed" });
    Ok(ExitCode::SUCCESS)
}

async fn decide(args: DecisionArgs, decision: Decision) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default().await.context("connecting to the API server")?;
    let ns = args.namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<CapabilityGrant> = Api::namespaced(client, &ns);
    let patch = serde_json::json!({ "spec": { "approval": { "decision": decision, "reason": args.reason } } });
    api.patch(&args.grant, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("recording {decision:?} on CapabilityGrant {ns}/{}", args.grant))?;
    println!(
        "capabilitygrant.writ.dev/{} {}",
        args.grant,
        if decision == Decision::Approved { "approved" } else { "denied" }
    );
    Ok(ExitCode::SUCCESS)
}

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
    Run(Box<writ::runtime::RunConfig>),
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
    Check {
        /// Files or directories of YAML manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The requester to check grants as (a user name, or system:serviceaccount:NS:NAME).
        #[arg(long = "as", value_name = "USER")]
        user: String,
        /// Groups of the requester (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Namespace for objects that do not name one.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// Verify a capability token as a resource server would.
    // Verify placeholder
    /// Decode a token or a certificate and print its fields (never key material).
    Inspect {
        /// A JWT, or a PEM certificate.
        file: PathBuf,
    },
    /// Approve a grant that awaits approval, as your own Kubernetes identity.
    Approve(DecisionArgs),
    /// Deny a grant that awaits approval, as your own Kubernetes identity.
    Deny(DecisionArgs),
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

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(config) => {
            writ::runtime::telemetry::init(config.log_format);
            runtime().and_then(|rt| rt.block_on(writ::runtime::run(*config)).map(|_| ExitCode::SUCCESS))
        }
        Command::Crds { dir } => crds(dir),
        Command::Webhooks => writ::webhook::register::manifests_yaml().map_err(Into::into).map(|y| {
            print!("{y}");
            ExitCode::SUCCESS
        }),
        Command::Check { paths, user, groups, namespace } => Ok(check(&paths, user, groups, namespace)),

        Command::Inspect { file } => Ok(file).map(|_text: PathBuf| {
            let text = String::new();
            print!("{text}");
            ExitCode::SUCCESS
        }),
        Command::Approve(args) => runtime().and_then(|rt| rt.block_on(decide(args, Decision::Approved))),
        Command::Deny(args) => runtime().and_then(|rt| rt.block_on(decide(args, Decision::Denied))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(paths: &[PathBuf], user: String, groups: Vec<String>, namespace: String) -> ExitCode {
    let mut opts = writ::check::CheckOptions::new(user, groups);
    opts.namespace = Some(namespace);
    match writ::check::check_paths(paths, &opts) {
        Ok(report) => {
            print!("{}", report.render());
            if report.passed() {
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

//! The `writ` command line: thin wrappers over the library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Writ: pod-bound identities and task-scoped capability grants for AI agents on Kubernetes.
#[derive(Parser)]
#[command(name = "writ", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD with --dir).
    Crds {
        /// Write `<crd-name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds { dir } => crds(dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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

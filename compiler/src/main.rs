//! The `dbward` command line: parses arguments and hands each subcommand to [`dbward::cli`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dbward::cli;

/// Safe, audited, least-privilege access to PostgreSQL from one KDL manifest.
#[derive(Parser)]
#[command(name = "dbward", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a manifest and report every problem at once.
    Check(cli::check::CheckArgs),
    /// Print the access table: who can reach which database, as which database user.
    Explain(cli::explain::ExplainArgs),
    /// Rewrite a manifest in canonical form, keeping comments.
    Fmt(cli::fmt::FmtArgs),
    /// Show what `apply` would change, as a diff.
    Plan(cli::plan::PlanArgs),
    /// Write the artifacts (and, with a plan file, exactly that plan).
    Apply(cli::apply::ApplyArgs),
    /// Issue certificates for people.
    Cert(cli::cert::CertArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => cli::check::run(args),
        Command::Explain(args) => cli::explain::run(args),
        Command::Fmt(args) => cli::fmt::run(args),
        Command::Plan(args) => cli::plan::run(args),
        Command::Apply(args) => cli::apply::run(args),
        Command::Cert(args) => cli::cert::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

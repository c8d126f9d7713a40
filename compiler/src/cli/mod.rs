//! The subcommands of the `dbward` binary, one module each. Each has an `Args` type (clap) and
//! a `run(args) -> anyhow::Result<ExitCode>` that the thin `main.rs` calls.

pub mod apply;
pub mod cert;
pub mod check;
pub mod diff;
pub mod explain;
pub mod fmt;
pub mod plan;
pub mod show;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Safe, audited, least-privilege access to PostgreSQL from one KDL manifest.
///
/// The whole command tree lives here, in the library, so that tests can walk it
/// (`<Cli as clap::CommandFactory>::command()`): every `dbward <sub> --flag` that a document
/// or a generated file names is checked against it.
#[derive(Debug, Parser)]
#[command(name = "dbward", version, about, propagate_version = true)]
pub struct Cli {
    /// No colour in diagnostics and plans, even on a terminal (as does `NO_COLOR=1`); without
    /// it, colour is used only when the output is a terminal.
    #[arg(long, global = true)]
    pub no_color: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a manifest and report every problem at once.
    Check(check::CheckArgs),
    /// Print the access table: who can reach which database, as which database user.
    Explain(explain::ExplainArgs),
    /// Rewrite a manifest in canonical form, keeping comments.
    Fmt(fmt::FmtArgs),
    /// Show what `apply` would change, as a diff.
    Plan(plan::PlanArgs),
    /// Show who gains and who loses access between two manifests (for CI: base against branch).
    Diff(diff::DiffArgs),
    /// Write the artifacts (and, with a plan file, exactly that plan).
    Apply(apply::ApplyArgs),
    /// Issue certificates for people.
    Cert(cert::CertArgs),
    /// Print a plan saved with `dbward plan -o`, and whether it can still be applied.
    Show(show::ShowArgs),
}

/// Leaves what a command built to the operating system, which takes back all of a process's
/// memory at once when it exits: the `run` of `check`, `explain` and `diff` call it with their
/// models once the output is written, and exit. Freeing a model piece by piece is hundreds of
/// thousands of small frees at 1,000 databases and 5,000 people, and nothing reads it after;
/// all three skip it, so their times compare like with like. In-process callers
/// (`check_bytes`, `explain_bytes`, `diff_files`) free it as usual.
fn leave_to_exit<T>(value: T) {
    std::mem::forget(value);
}

/// Runs one parsed command line; errors are printed here, as `error: …`, and exit 1.
pub fn run(cli: Cli) -> ExitCode {
    if cli.no_color {
        check::disable_color();
    }
    let result = match cli.command {
        Command::Check(args) => check::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Fmt(args) => fmt::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Apply(args) => apply::run(args),
        Command::Cert(args) => cert::run(args),
        Command::Show(args) => show::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

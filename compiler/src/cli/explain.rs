//! `dbward explain` (placeholder until its issue lands).

use std::process::ExitCode;

/// Arguments of `dbward explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Remaining arguments (placeholder).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(_args: ExplainArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dbward explain` is not implemented yet")
}

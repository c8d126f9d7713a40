//! `dbward check` (placeholder until its issue lands).

use std::process::ExitCode;

/// Arguments of `dbward check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Remaining arguments (placeholder).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(_args: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dbward check` is not implemented yet")
}

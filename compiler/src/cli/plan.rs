//! `dbward plan` (placeholder until its issue lands).

use std::process::ExitCode;

/// Arguments of `dbward plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Remaining arguments (placeholder).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(_args: PlanArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dbward plan` is not implemented yet")
}

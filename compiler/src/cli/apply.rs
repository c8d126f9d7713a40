//! `dbward apply` (placeholder until its issue lands).

use std::process::ExitCode;

/// Arguments of `dbward apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Remaining arguments (placeholder).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(_args: ApplyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dbward apply` is not implemented yet")
}

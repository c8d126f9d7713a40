//! `dbward fmt` (placeholder until its issue lands).

use std::process::ExitCode;

/// Arguments of `dbward fmt`.
#[derive(Debug, clap::Args)]
pub struct FmtArgs {
    /// Remaining arguments (placeholder).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(_args: FmtArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dbward fmt` is not implemented yet")
}

//! `dbward cert` (placeholder until its issue lands).

use std::process::ExitCode;

/// Arguments of `dbward cert`.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// Remaining arguments (placeholder).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(_args: CertArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dbward cert` is not implemented yet")
}

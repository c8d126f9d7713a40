//! The subcommands of the `dbward` binary, one module each. Each has an `Args` type (clap) and
//! a `run(args) -> anyhow::Result<ExitCode>` that the thin `main.rs` calls.

pub mod apply;
pub mod cert;
pub mod check;
pub mod explain;
pub mod fmt;
pub mod plan;

//! The `dbward` command line: parses arguments and hands the command to [`dbward::cli::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    dbward::cli::run(dbward::cli::Cli::parse())
}

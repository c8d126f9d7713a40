//! `dbward explain FILE [--user U] [--database D] [--json]`: prints the access table — who can
//! reach which database, as which database user — so a reviewer sees what a change does.
//!
//! An invalid manifest gets the same diagnostics as `dbward check` and exit code 1; warnings are
//! shown on stderr and do not stop the explanation. An unknown `--user` or `--database` is an
//! error with a "did you mean".

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::check::{RENDER_WIDTH, use_color};
use crate::diag;
use crate::explain::{Filter, explain};
use crate::model::Model;

/// Arguments of `dbward explain`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The manifest to explain.
    pub file: PathBuf,
    /// Only this person (a `user` of the manifest).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only this database (a `database` of the manifest).
    #[arg(long, value_name = "DATABASE")]
    pub database: Option<String>,
    /// Print a JSON document (format "dbward-explain/1") instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `dbward explain` prints, separated from printing so tests can run it in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    /// 0 explained, 1 invalid manifest or unknown filter name.
    pub code: u8,
}

/// Explains manifest bytes as `dbward explain` does and returns what it would print.
pub fn explain_bytes(name: &str, bytes: Vec<u8>, args: &ExplainArgs, color: bool) -> Outcome {
    explain_kept(name, bytes, args, color).0
}

/// [`explain_bytes`], also handing back the model, so that [`run`] can exit without freeing it.
fn explain_kept(
    name: &str,
    bytes: Vec<u8>,
    args: &ExplainArgs,
    color: bool,
) -> (Outcome, Option<Model>) {
    let (source, mut diagnostics) = crate::syntax::decode(name, bytes);
    let mut model = None;
    if diagnostics.is_empty() {
        let checked = crate::check(&source);
        model = checked.model;
        diagnostics = checked.diagnostics;
    }
    let mut out = Outcome {
        stdout: String::new(),
        stderr: diag::render(&source, &diagnostics, RENDER_WIDTH, color),
        code: 0,
    };
    let Some(model) = model else {
        out.stderr.push_str(&format!(
            "{name}: invalid; fix the errors above to see who can reach what\n"
        ));
        out.code = 1;
        return (out, None);
    };
    let filter = Filter {
        user: args.user.clone(),
        database: args.database.clone(),
    };
    match explain(&model, &filter) {
        Ok(explanation) if args.json => {
            let json = serde_json::to_string_pretty(&explanation.to_json()).unwrap_or_default();
            out.stdout = format!("{json}\n");
        }
        Ok(explanation) => out.stdout = explanation.render(),
        Err(err) => {
            out.stderr.push_str(&format!("error: {err}\n"));
            out.code = 1;
        }
    }
    (out, Some(model))
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}; check the path", args.file.display()))?;
    let name = args.file.display().to_string();
    let (outcome, model) = explain_kept(&name, bytes, &args, use_color());
    std::io::stdout().write_all(outcome.stdout.as_bytes())?;
    std::io::stderr().write_all(outcome.stderr.as_bytes())?;
    super::leave_to_exit(model);
    Ok(ExitCode::from(outcome.code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(user: Option<&str>, json: bool) -> ExplainArgs {
        ExplainArgs {
            file: PathBuf::from("m.kdl"),
            user: user.map(String::from),
            database: None,
            json,
        }
    }

    #[test]
    fn invalid_manifest_is_exit_one_with_diagnostics() {
        let out = explain_bytes(
            "m.kdl",
            b"dbward version=2\n".to_vec(),
            &args(None, false),
            false,
        );
        assert_eq!(out.code, 1);
        assert!(out.stderr.contains("dbward::"), "{}", out.stderr);
        assert!(out.stdout.is_empty());
    }

    #[test]
    fn unknown_user_is_exit_one_with_a_suggestion() {
        let bytes = include_bytes!("../../../examples/full.kdl").to_vec();
        let out = explain_bytes("full.kdl", bytes, &args(Some("bobb"), false), false);
        assert_eq!(out.code, 1);
        assert!(out.stderr.contains("did you mean `bob`?"), "{}", out.stderr);
    }

    #[test]
    fn json_output_parses() {
        let bytes = include_bytes!("../../../examples/full.kdl").to_vec();
        let out = explain_bytes("full.kdl", bytes, &args(Some("alice"), true), false);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(json["filter"]["user"], "alice");
        assert!(json["access"].as_array().is_some_and(|a| !a.is_empty()));
    }
}

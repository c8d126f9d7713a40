//! `dbward diff OLD NEW [--format text|json|markdown] [--detailed-exitcode]`: who gains and who
//! loses access between two manifests — for CI, the manifest of the base branch against the
//! one of a pull request. No output directory is read.
//!
//! Either manifest invalid: its diagnostics, as `dbward check` shows them, and exit 1.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::check::{MAX_MANIFEST_BYTES, RENDER_WIDTH, use_color, use_color_stdout};
use crate::diag;
use crate::diff::{AccessDiff, DiffJson};
use crate::model::Model;

/// How `dbward diff` prints the changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DiffFormat {
    /// One line per change: `+` gains, `-` loses, `~` changes.
    #[default]
    Text,
    /// A versioned JSON document (schemas/diff.schema.json).
    Json,
    /// Markdown for a pull-request comment: a table, then the lines in a collapsed block.
    Markdown,
}

/// Arguments of `dbward diff`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// The manifest before the change (e.g. the base branch's).
    pub old: PathBuf,
    /// The manifest after the change.
    pub new: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
    pub format: DiffFormat,
    /// Exit 0 when nobody's access changes, 2 when it does, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

/// What `dbward diff` prints, separated from printing so tests can run it in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

/// One manifest checked: its model, or what to print about it.
fn load(path: &Path, color: bool) -> Result<Model, String> {
    let name = path.display().to_string();
    let bytes = match std::fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_MANIFEST_BYTES => {
            return Err(format!(
                "error: {name} is larger than {} MB; is it the manifest?\n",
                MAX_MANIFEST_BYTES / (1024 * 1024)
            ));
        }
        _ => std::fs::read(path)
            .map_err(|e| format!("error: cannot read {name}: {e}; check the path\n"))?,
    };
    let (source, mut diagnostics) = crate::syntax::decode(name.clone(), bytes);
    let mut model = None;
    if diagnostics.is_empty() {
        let checked = crate::check(&source);
        model = checked.model;
        diagnostics = checked.diagnostics;
    }
    match model {
        Some(model) => Ok(model),
        None => Err(format!(
            "{}{name}: invalid; fix the errors above to compare access\n",
            diag::render(&source, &diagnostics, RENDER_WIDTH, color)
        )),
    }
}

/// Compares two manifests as `dbward diff` does and returns what it would print.
pub fn diff_files(args: &DiffArgs, color_stderr: bool, color_stdout: bool) -> Outcome {
    let (outcome, models) = diff_kept(args, color_stderr, color_stdout);
    // The models are freed at once too, each on its own thread, as they were built.
    if let Some((old, new)) = models {
        std::thread::scope(|scope| {
            scope.spawn(move || drop(old));
            drop(new);
        });
    }
    outcome
}

/// [`diff_files`], also handing back the two models, so that [`run`] can exit without freeing
/// them.
fn diff_kept(
    args: &DiffArgs,
    color_stderr: bool,
    color_stdout: bool,
) -> (Outcome, Option<(Model, Model)>) {
    // The two manifests are checked at once, each on its own thread: on two cores a diff
    // then takes about as long as one check.
    let (old, new) = std::thread::scope(|scope| {
        let old = scope.spawn(|| load(&args.old, color_stderr));
        let new = load(&args.new, color_stderr);
        let old = old
            .join()
            .unwrap_or_else(|_| Err("error: checking the old manifest failed\n".into()));
        (old, new)
    });
    let (old_model, new_model) = match (old, new) {
        (Ok(old), Ok(new)) => (old, new),
        (old, new) => {
            let mut stderr = String::new();
            for side in [old, new] {
                if let Err(text) = side {
                    stderr.push_str(&text);
                }
            }
            let outcome = Outcome {
                stdout: String::new(),
                stderr,
                code: 1,
            };
            return (outcome, None);
        }
    };
    let changes: AccessDiff = crate::diff::diff_models(&old_model, &new_model);
    let (old_name, new_name) = (args.old.display(), args.new.display());
    let stdout = match args.format {
        DiffFormat::Text => changes.render(color_stdout),
        DiffFormat::Markdown => changes.markdown("dbward: access changes"),
        DiffFormat::Json => {
            let json = DiffJson::new(&old_name.to_string(), &new_name.to_string(), &changes);
            let mut text = serde_json::to_string_pretty(&json).unwrap_or_default();
            text.push('\n');
            text
        }
    };
    let code = if args.detailed_exitcode && !changes.is_empty() {
        2
    } else {
        0
    };
    let outcome = Outcome {
        stdout,
        stderr: String::new(),
        code,
    };
    (outcome, Some((old_model, new_model)))
}

pub fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let (outcome, models) = diff_kept(&args, use_color(), use_color_stdout());
    std::io::stdout().write_all(outcome.stdout.as_bytes())?;
    std::io::stderr().write_all(outcome.stderr.as_bytes())?;
    super::leave_to_exit(models);
    Ok(ExitCode::from(outcome.code))
}

//! `dbward check FILE`: validates a manifest and reports every problem at once.
//!
//! Exit code 0 when the manifest is valid, 1 when it is not (warnings count only with
//! `--deny-warnings`). Diagnostics go to stderr for people (`--format human`, coloured only on a
//! terminal without `NO_COLOR`) or to stdout as JSON for CI annotations (`--format json`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::diag;

/// Width diagnostics are wrapped at: stable, so output does not depend on the terminal.
pub const RENDER_WIDTH: usize = 100;

/// How many diagnostics the human format renders before summarizing the rest.
pub const MAX_RENDERED: usize = 100;

/// Arguments of `dbward check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The manifest to check.
    pub file: PathBuf,
    /// Treat warnings as errors (exit 1 when there is any).
    #[arg(long)]
    pub deny_warnings: bool,
    /// How to print diagnostics.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

/// Output format of `dbward check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Rendered diagnostics on stderr.
    Human,
    /// A JSON array of diagnostics on stdout (file, line, column, code, severity, message, help).
    Json,
}

/// What one check produced, separated from where it is printed so tests can run it in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    /// 0 valid, 1 invalid.
    pub code: u8,
}

/// Checks manifest bytes as `dbward check` does and returns what it would print.
pub fn check_bytes(name: &str, bytes: Vec<u8>, args: &CheckArgs, color: bool) -> Outcome {
    check_kept(name, bytes, args, color).0
}

/// [`check_bytes`], also handing back the model, so that [`run`] can exit without freeing it.
fn check_kept(
    name: &str,
    bytes: Vec<u8>,
    args: &CheckArgs,
    color: bool,
) -> (Outcome, Option<crate::model::Model>) {
    let (source, mut diagnostics) = crate::syntax::decode(name, bytes);
    let mut summary = None;
    let mut model = None;
    // Text that is not UTF-8 is not parsed further: every later error would be noise.
    if diagnostics.is_empty() {
        let checked = crate::check(&source);
        summary = checked.model.as_ref().map(|m| {
            format!(
                "{name}: valid ({} databases, {} roles, {} users, {} access entries)",
                m.databases.len(),
                m.roles.len(),
                m.users.len(),
                m.access.len()
            )
        });
        diagnostics = checked.diagnostics;
        model = checked.model;
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let failed = errors > 0 || (args.deny_warnings && warnings > 0);
    let mut out = Outcome {
        stdout: String::new(),
        stderr: String::new(),
        code: u8::from(failed),
    };
    match args.format {
        Format::Json => {
            let json = diag::to_json(&source, &diagnostics);
            out.stdout = format!(
                "{}\n",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
        Format::Human => {
            // A generated manifest gone wrong can have thousands of problems; the first ones
            // say what is wrong, and `--format json` still lists them all.
            let shown = &diagnostics[..diagnostics.len().min(MAX_RENDERED)];
            out.stderr = diag::render(&source, shown, RENDER_WIDTH, color);
            if diagnostics.len() > shown.len() {
                out.stderr.push_str(&format!(
                    "… and {} more (use `--format json` to list them all)\n",
                    diagnostics.len() - shown.len()
                ));
            }
            let counts = format!(
                "{errors} error{}, {warnings} warning{}",
                if errors == 1 { "" } else { "s" },
                if warnings == 1 { "" } else { "s" }
            );
            if failed {
                let why = if errors == 0 {
                    " (warnings denied)"
                } else {
                    ""
                };
                out.stderr
                    .push_str(&format!("{name}: invalid: {counts}{why}\n"));
            } else if let Some(summary) = summary {
                out.stdout = format!("{summary}\n");
                if warnings > 0 {
                    out.stderr.push_str(&format!("{name}: {counts}\n"));
                }
            }
        }
    }
    (out, model)
}

/// Set by the global `--no-color` flag, before any command runs.
static NO_COLOR_FLAG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The global `--no-color`: no colour anywhere in this process, terminal or not.
pub fn disable_color() {
    NO_COLOR_FLAG.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether stderr should be coloured: a terminal, `NO_COLOR` unset or empty, and no
/// `--no-color`.
pub fn use_color() -> bool {
    !NO_COLOR_FLAG.load(std::sync::atomic::Ordering::Relaxed)
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether stdout should be coloured (plans and access changes): the same rules as
/// [`use_color`], for stdout.
pub fn use_color_stdout() -> bool {
    !NO_COLOR_FLAG.load(std::sync::atomic::Ordering::Relaxed)
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The largest manifest read: far beyond any real one (a 5,000-database manifest is about
/// 4 MB), and a bound on the memory a wrong file can make `check` use.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a manifest, refusing files larger than [`MAX_MANIFEST_BYTES`].
pub fn read_manifest(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {}; check the path", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}; check the path", path.display()))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        anyhow::bail!(
            "{} is larger than {} MB; this is not a manifest (check the path)",
            path.display(),
            MAX_MANIFEST_BYTES / (1024 * 1024)
        );
    }
    Ok(bytes)
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_manifest(&args.file)?;
    let name = args.file.display().to_string();
    let (outcome, model) = check_kept(&name, bytes, &args, use_color());
    std::io::stdout().write_all(outcome.stdout.as_bytes())?;
    std::io::stderr().write_all(outcome.stderr.as_bytes())?;
    super::leave_to_exit(model);
    Ok(ExitCode::from(outcome.code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(format: Format, deny_warnings: bool) -> CheckArgs {
        CheckArgs {
            file: PathBuf::from("m.kdl"),
            deny_warnings,
            format,
        }
    }

    #[test]
    fn invalid_is_exit_one_and_json_has_positions() {
        let out = check_bytes(
            "m.kdl",
            b"dbward version=2\n".to_vec(),
            &args(Format::Json, false),
            false,
        );
        assert_eq!(out.code, 1);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        let first = &json[0];
        assert_eq!(first["file"], "m.kdl");
        assert!(first["line"].as_u64().is_some());
        assert!(first["code"].as_str().unwrap_or("").starts_with("dbward::"));
    }

    #[test]
    fn thousands_of_problems_are_summarized() {
        let mut text = String::from(
            "dbward version=1\nrelay {\n    listen \"0.0.0.0:1\"\n    public-name \"a.b\"\n}\n",
        );
        for i in 0..1_000 {
            text.push_str(&format!("unknown{i}\n"));
        }
        let out = check_bytes(
            "m.kdl",
            text.clone().into_bytes(),
            &args(Format::Human, false),
            false,
        );
        assert_eq!(out.code, 1);
        assert!(
            out.stderr.contains("… and 900 more"),
            "{}",
            &out.stderr[out.stderr.len() - 200..]
        );
        let out = check_bytes(
            "m.kdl",
            text.into_bytes(),
            &args(Format::Json, false),
            false,
        );
        let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(json.as_array().map(Vec::len), Some(1_000));
    }

    #[test]
    fn not_utf8_is_exit_one() {
        let out = check_bytes(
            "m.kdl",
            b"dbward \xff\xfe".to_vec(),
            &args(Format::Human, false),
            false,
        );
        assert_eq!(out.code, 1);
        assert!(out.stderr.contains("dbward::not_utf8"), "{}", out.stderr);
    }
}

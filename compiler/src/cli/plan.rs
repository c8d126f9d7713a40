//! `dbward plan MANIFEST --out DIR [--detailed-exitcode] [--json] [-o PLANFILE]`: shows what
//! `apply` would change under DIR, as a reviewable diff; optionally saves it for
//! `dbward apply PLANFILE`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::model::Model;
use crate::plan;
use crate::workflow::{self, Prepared};

/// Arguments of `dbward plan`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// The manifest.
    pub manifest: PathBuf,
    /// The output directory apply writes to (compared against, never written by `plan`).
    #[arg(long)]
    pub out: PathBuf,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Print the plan as a versioned JSON document (never any secret) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Save the plan for `dbward apply PLANFILE`. It holds the new private keys, so it is
    /// written with mode 0600: keep it as private as the keys. With --live it also holds each
    /// database name's statements and their fingerprint, which apply checks again.
    #[arg(short = 'o', long = "output", value_name = "PLANFILE")]
    pub output: Option<PathBuf>,
    /// Also connect to every database with an admin-user and show what its setup.sql would
    /// change there (run in a transaction that is rolled back).
    #[arg(long)]
    pub live: bool,
}

/// Checks the manifest (printing its diagnostics to stderr) and returns the model; an error
/// when the manifest has any error.
pub fn load_model(manifest: &Path) -> anyhow::Result<(Vec<u8>, Model)> {
    let loaded = workflow::load_model(manifest)?;
    if !loaded.diagnostics.is_empty() {
        let rendered = crate::diag::render(
            &loaded.source,
            &loaded.diagnostics,
            super::check::RENDER_WIDTH,
            super::check::use_color(),
        );
        eprint!("{rendered}");
    }
    loaded.into_model()
}

/// Checks the manifest (printing its diagnostics) and compiles it against `out`.
pub fn prepare(manifest: &Path, out: &Path) -> anyhow::Result<Prepared> {
    let (manifest_bytes, model) = load_model(manifest)?;
    workflow::prepare(manifest, manifest_bytes, model, out)
}

pub fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.output
        && std::path::absolute(path)?.starts_with(std::path::absolute(&args.out)?)
    {
        // It would be a new file under --out, so the plan would be stale the moment it is
        // saved (and a plan file holds keys that do not belong next to the artifacts).
        anyhow::bail!(
            "save the plan outside the output directory: {} is inside {}",
            path.display(),
            args.out.display()
        );
    }
    let prepared = prepare(&args.manifest, &args.out)?;
    let plan = prepared.plan();
    let access = prepared.access_changes();
    let live = if args.live {
        Some(prepared.live(crate::live::Mode::Plan)?)
    } else {
        None
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let mut json = plan::json::to_json(&plan);
        json.access = Some(access.to_json());
        if let Some(live) = &live {
            json.has_changes |= live.count() > 0;
            json.live = Some(plan::json::live_json(live));
        }
        writeln!(stdout, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        if !plan.is_empty() {
            let access = access.render(super::check::use_color_stdout());
            writeln!(stdout, "{access}")?;
        }
        stdout.write_all(plan::render::render(&plan).as_bytes())?;
        if let Some(live) = &live {
            stdout.write_all(crate::live::render(live, crate::live::Mode::Plan).as_bytes())?;
        }
    }
    if live.as_ref().is_some_and(|l| !l.failures.is_empty()) {
        anyhow::bail!("some databases could not be read (shown above): the plan is incomplete");
    }
    if let Some(path) = &args.output {
        let saved = prepared.saved_with_live(&plan, live.as_ref());
        crate::apply::write_atomic(path, &saved.to_bytes(), 0o600)?;
        eprintln!(
            "Saved the plan to {} (mode 0600: it holds new private keys). Apply exactly this plan \
             with `dbward apply {}`.",
            path.display(),
            path.display()
        );
    }
    let live_changes = live.as_ref().is_some_and(|l| l.count() > 0);
    let code = if args.detailed_exitcode && (!plan.is_empty() || live_changes) {
        2
    } else {
        0
    };
    Ok(ExitCode::from(code))
}

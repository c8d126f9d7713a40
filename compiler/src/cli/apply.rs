//! `dbward apply MANIFEST --out DIR [--auto-approve] [--force]` and `dbward apply PLANFILE`:
//! writes the artifacts. With a manifest it shows the plan and asks first (refusing when there
//! is no terminal to ask and no `--auto-approve`); with a saved plan it applies exactly that
//! plan, after checking that neither the manifest nor the directory moved since.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::plan::{prepare, read_optional};
use crate::apply;
use crate::emit::env::{ExistingFile, read_tree};
use crate::live::Mode;
use crate::plan::journal::{Journal, Record};
use crate::plan::planfile::PlanFile;
use crate::plan::render::render;
use crate::plan::state::state_path;
use crate::plan::{Plan, State};

/// Arguments of `dbward apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// A manifest, or a plan file saved by `dbward plan -o`.
    pub target: PathBuf,
    /// The output directory (required with a manifest; with a plan file, must match it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Apply without asking. Without it, apply shows the plan and asks on the terminal, and
    /// refuses to run when stdin is not a terminal (CI, pipes): review the plan and pass
    /// --auto-approve, or apply a saved plan file.
    #[arg(long)]
    pub auto_approve: bool,
    /// Overwrite or remove files that were changed outside dbward since the last apply.
    #[arg(long)]
    pub force: bool,
    /// After the files, run setup.sql in every database with an admin-user, each database
    /// name in one transaction, and show what it changed.
    #[arg(long)]
    pub live: bool,
}

pub fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.target)
        .with_context(|| format!("cannot read {}; check the path", args.target.display()))?;
    if PlanFile::sniff(&bytes) {
        if args.live {
            anyhow::bail!(
                "a saved plan holds no live changes yet: apply it without --live, then run \
                 `dbward apply MANIFEST --out DIR --live`"
            );
        }
        return apply_planfile(&args, &bytes);
    }
    let Some(out) = &args.out else {
        anyhow::bail!(
            "--out DIR is required when applying a manifest: it names the directory to write to"
        );
    };
    let prepared = prepare(&args.target, out)?;
    let plan = prepared.plan();
    if !plan.is_empty() {
        let access = prepared.access_changes();
        println!("{}", access.render(super::check::use_color_stdout()));
    }
    print!("{}", render(&plan));
    if !args.live {
        return apply_files(&args, out, &prepared, &plan, false);
    }
    let mut confirmed = args.auto_approve;
    if !args.auto_approve {
        // Show what the databases would get too, and ask once for both.
        let preview = prepared.live(Mode::Plan)?;
        print!("{}", crate::live::render(&preview, Mode::Plan));
        if !preview.failures.is_empty() {
            anyhow::bail!(
                "some databases could not be read (shown above); nothing was written: fix that \
                 and run again"
            );
        }
        if preview.count() > 0 || !plan.is_empty() {
            if !confirm(&prepared.out)? {
                anyhow::bail!("apply cancelled; nothing was written");
            }
            confirmed = true;
        }
    }
    let files = apply_files(&args, out, &prepared, &plan, confirmed)?;
    let report = prepared.live(Mode::Apply)?;
    print!("{}", crate::live::render(&report, Mode::Apply));
    if report.failures.is_empty() {
        Ok(files)
    } else {
        eprintln!(
            "error: {} database name(s) could not be converged and were left as they were \
             (shown above); the others were applied. Fix what is shown and run again.",
            report.failures.len()
        );
        Ok(ExitCode::from(1))
    }
}

/// The file part of applying a manifest: the plan already shown, asked (unless `confirmed`),
/// checked again under the lock, and written.
fn apply_files(
    args: &ApplyArgs,
    shown: &Path,
    prepared: &super::plan::Prepared,
    plan: &Plan,
    confirmed: bool,
) -> anyhow::Result<ExitCode> {
    // What the plan was computed from, to check again under the lock: the directory may
    // change while a person reads the plan.
    let seen = PlanFile::new(
        plan,
        prepared.manifest.clone(),
        &prepared.manifest_bytes,
        prepared.out.clone(),
        &prepared.existing,
        prepared.state_bytes.as_deref(),
    );
    if plan.is_empty() {
        // Nothing to write, but the record to finish or the temp files of an apply that was
        // killed are cleaned up (taking the lock removes the temp files).
        if plan.state_outdated || apply::has_leftovers(&prepared.out) {
            let _lock = apply::Lock::acquire(&prepared.out)?;
            fresh(&seen, "the plan")?;
            if plan.state_outdated {
                apply::apply(&prepared.out, plan, args.force)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let drifted: Vec<String> = plan.drifted().map(|c| c.path.clone()).collect();
    if !drifted.is_empty() && !args.force {
        // Refuse before asking: the answer could not change anything.
        return Err(apply::ApplyError::Drift(drifted).into());
    }
    if !args.auto_approve && !confirmed && !confirm(&prepared.out)? {
        anyhow::bail!("apply cancelled; nothing was written");
    }
    let _lock = apply::Lock::acquire(&prepared.out)?;
    fresh(&seen, "the plan shown above")?;
    finish(&prepared.out, shown, plan, args.force, args.live)
}

/// The files under `--out` and the state record's bytes, as read under the lock.
type Fresh = (BTreeMap<String, ExistingFile>, Option<Vec<u8>>);

/// Re-reads the manifest, the directory and the state record, and fails (naming every
/// difference) when they are no longer what `seen` was computed from. Returns what it read.
fn fresh(seen: &PlanFile, what: &str) -> anyhow::Result<Fresh> {
    let manifest_bytes = read_optional(&seen.manifest)?;
    let existing = read_tree(&seen.out)?;
    let state_bytes = read_optional(&state_path(&seen.out))?;
    let stale = seen.staleness(manifest_bytes.as_deref(), &existing, state_bytes.as_deref());
    if !stale.is_empty() {
        let reasons: Vec<String> = stale.iter().take(10).map(|s| format!("  - {s}")).collect();
        anyhow::bail!(
            "{what} is stale, nothing was written:\n{}{}\nrun `dbward plan` again",
            reasons.join("\n"),
            if stale.len() > 10 {
                format!("\n  … and {} more", stale.len() - 10)
            } else {
                String::new()
            }
        );
    }
    Ok((existing, state_bytes))
}

/// Writes the plan, then says what the hosts must do about it. `shown` is the output
/// directory as the user wrote it (for the commands in the next steps), `live` whether
/// setup.sql runs as part of this apply.
fn finish(
    out: &Path,
    shown: &Path,
    plan: &Plan,
    force: bool,
    live: bool,
) -> anyhow::Result<ExitCode> {
    let applied = apply::apply(out, plan, force)?;
    println!(
        "Apply complete: {} written, {} removed, in {}.",
        applied.written,
        applied.removed,
        out.display()
    );
    let self_hosted = std::fs::read_dir(out.join("databases"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join(crate::emit::install::INSTALL).is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    print!(
        "{}",
        crate::plan::hints::after_apply(plan, &shown.display().to_string(), &self_hosted, live)
    );
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal; refuses when stdin is not one.
fn confirm(out: &Path) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "refusing to apply without confirmation: stdin is not a terminal. Review the plan and \
             pass --auto-approve, or save it with `dbward plan -o PLANFILE` and run \
             `dbward apply PLANFILE`"
        );
    }
    print!(
        "\nApply these changes to {}? Only 'yes' or 'y' is accepted: ",
        out.display()
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "yes"))
}

fn apply_planfile(args: &ApplyArgs, bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let saved = PlanFile::from_bytes(&args.target, bytes)?;
    if let Some(out) = &args.out {
        let out = std::path::absolute(out)?;
        if out != saved.out {
            anyhow::bail!(
                "the plan was made for {}, not {}: drop --out or make a new plan",
                saved.out.display(),
                out.display()
            );
        }
    }
    let _lock = apply::Lock::acquire(&saved.out)?;
    let (existing, state_bytes) =
        fresh(&saved, &format!("the saved plan {}", args.target.display()))?;
    let state = match &state_bytes {
        Some(b) => State::from_bytes(b).map_err(|reason| {
            anyhow::anyhow!("{} is corrupt: {reason}", state_path(&saved.out).display())
        })?,
        None => State::default(),
    };
    let record = Record {
        state,
        journal: Journal::load(&saved.out)?,
    };
    let mut plan = saved.to_plan(&existing, &record.settle(&existing))?;
    plan.state_outdated |= record.interrupted();
    print!("{}", render(&plan));
    finish(&saved.out, &saved.out, &plan, args.force, false)
}

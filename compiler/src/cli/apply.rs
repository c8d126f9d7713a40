//! `dbward apply MANIFEST --out DIR [--auto-approve] [--force]` and `dbward apply PLANFILE`:
//! writes the artifacts. With a manifest it shows the plan and asks first (refusing when there
//! is no terminal to ask and no `--auto-approve`); with a saved plan it applies exactly that
//! plan, after checking that neither the manifest nor the directory moved since.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::plan::prepare;
use crate::apply;
use crate::live::Mode;
use crate::plan::Plan;
use crate::plan::planfile::PlanFile;
use crate::plan::render::render;
use crate::workflow::{self, Prepared};

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
    /// name in one transaction, and show what it changed. Not needed with a plan file: a plan
    /// made with `--live` converges its database names by itself.
    #[arg(long)]
    pub live: bool,
}

pub fn run(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.target)
        .with_context(|| format!("cannot read {}; check the path", args.target.display()))?;
    if PlanFile::sniff(&bytes) {
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
    prepared: &Prepared,
    plan: &Plan,
    confirmed: bool,
) -> anyhow::Result<ExitCode> {
    if !plan.is_empty() {
        let drifted: Vec<String> = plan.drifted().map(|c| c.path.clone()).collect();
        if !drifted.is_empty() && !args.force {
            // Refuse before asking: the answer could not change anything.
            return Err(apply::ApplyError::Drift(drifted).into());
        }
        if !args.auto_approve && !confirmed && !confirm(&prepared.out)? {
            anyhow::bail!("apply cancelled; nothing was written");
        }
    }
    match prepared.write(plan, args.force)? {
        Some(applied) => Ok(report(&prepared.out, shown, plan, &applied, args.live)),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Says what was written, then what the hosts must do about it. `shown` is the output
/// directory as the user wrote it (for the commands in the next steps), `live` whether
/// setup.sql runs as part of this apply.
fn report(out: &Path, shown: &Path, plan: &Plan, applied: &apply::Applied, live: bool) -> ExitCode {
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
    ExitCode::SUCCESS
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
    let saved = workflow::load_saved(&args.target, bytes, args.out.as_deref())?;
    if args.live && saved.file.live.is_none() {
        anyhow::bail!(
            "{} holds no live changes (it was made without --live); nothing was written: apply \
             it without --live, or make a live plan with `dbward plan --live -o PLANFILE`",
            args.target.display()
        );
    }
    print!("{}", render(&saved.plan));
    let applied = apply::apply(&saved.file.out, &saved.plan, args.force)?;
    drop(saved.lock);
    let files = report(
        &saved.file.out,
        &saved.file.out,
        &saved.plan,
        &applied,
        saved.file.live.is_some(),
    );
    // A live plan says so itself: its database names are converged without --live.
    let Some(live) = workflow::apply_saved_live(&saved.file)? else {
        return Ok(files);
    };
    print!("{}", crate::live::render(&live, Mode::Apply));
    if live.failures.is_empty() {
        Ok(files)
    } else {
        eprintln!(
            "error: {} database name(s) were not converged and were left as they were (shown \
             above); the others were applied. Fix what is shown and run again.",
            live.failures.len()
        );
        Ok(ExitCode::from(1))
    }
}

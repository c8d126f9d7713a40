//! `dbward show PLANFILE [--json]`: prints a plan saved by `dbward plan -o`, as `plan` printed
//! it, and says whether `dbward apply PLANFILE` would still accept it. It only reads.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::emit::env::read_tree;
use crate::plan::planfile::PlanFile;
use crate::plan::state::state_path;
use crate::plan::{self, State};
use crate::workflow::read_optional;

/// Arguments of `dbward show`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// A plan file saved by `dbward plan -o PLANFILE`.
    pub planfile: PathBuf,
    /// Print the plan as the same versioned JSON document as `dbward plan --json`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.planfile)
        .with_context(|| format!("cannot read {}; check the path", args.planfile.display()))?;
    if !PlanFile::sniff(&bytes) {
        anyhow::bail!(
            "{} is not a plan file saved by `dbward plan -o`; to see the plan of a manifest, run \
             `dbward plan MANIFEST --out DIR`",
            args.planfile.display()
        );
    }
    let saved = PlanFile::from_bytes(&args.planfile, &bytes)?;
    // Diffs are shown against the files as they are now; if they moved, the plan is stale and
    // says so below (apply would refuse it).
    let existing = if saved.out.exists() {
        read_tree(&saved.out)?
    } else {
        Default::default()
    };
    let state_bytes = read_optional(&state_path(&saved.out))?;
    let state = state_bytes
        .as_deref()
        .and_then(|b| State::from_bytes(b).ok())
        .unwrap_or_default();
    let shown = saved.to_plan(&existing, &state)?;
    let manifest_bytes = read_optional(&saved.manifest)?;
    let stale = saved.staleness(manifest_bytes.as_deref(), &existing, state_bytes.as_deref());
    // The database part of a live plan: the statements apply will require each name to run.
    let live = saved.live.as_ref().map(|names| crate::live::LiveReport {
        changes: names
            .iter()
            .map(|name| crate::live::LiveChanges {
                database: name.database.clone(),
                db_name: name.db_name.clone(),
                statements: name.statements.clone(),
            })
            .collect(),
        ..Default::default()
    });
    // Access changes: with "via" when the manifest is still the one planned (it is checked
    // again for that, silently), as `plan` printed them.
    let model = manifest_bytes
        .as_ref()
        .filter(|_| stale.is_empty())
        .and_then(|bytes| {
            let name = saved.manifest.display().to_string();
            let (source, diagnostics) = crate::syntax::decode(name, bytes.clone());
            diagnostics
                .is_empty()
                .then(|| crate::check(&source).model)
                .flatten()
        });
    let access = crate::diff::of_plan(&shown, model.as_ref());
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let mut json = plan::json::to_json(&shown);
        json.access = Some(access.to_json());
        if let Some(live) = &live {
            json.has_changes |= live.count() > 0;
            json.live = Some(plan::json::live_json(live));
        }
        writeln!(stdout, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        writeln!(
            stdout,
            "Saved plan {} for {} (manifest {}):\n",
            args.planfile.display(),
            saved.out.display(),
            saved.manifest.display()
        )?;
        if !shown.is_empty() {
            let access = access.render(super::check::use_color_stdout());
            writeln!(stdout, "{access}")?;
        }
        stdout.write_all(plan::render::render(&shown).as_bytes())?;
        if let Some(live) = &live {
            stdout.write_all(crate::live::render(live, crate::live::Mode::Plan).as_bytes())?;
        }
    }
    if stale.is_empty() {
        eprintln!(
            "The plan is current: `dbward apply {}` applies exactly this.",
            args.planfile.display()
        );
    } else {
        let reasons: Vec<String> = stale.iter().map(|s| format!("  - {s}")).collect();
        eprintln!(
            "The plan is stale, so `dbward apply {}` would refuse it:\n{}\nrun `dbward plan` again",
            args.planfile.display(),
            reasons.join("\n")
        );
    }
    Ok(ExitCode::SUCCESS)
}

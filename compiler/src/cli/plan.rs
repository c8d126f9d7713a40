//! `dbward plan MANIFEST --out DIR [--detailed-exitcode] [--json] [-o PLANFILE]`: shows what
//! `apply` would change under DIR, as a reviewable diff; optionally saves it for
//! `dbward apply PLANFILE`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::emit::env::{Env, ExistingFile};
use crate::emit::{self, Artifacts};
use crate::model::Model;
use crate::plan::journal::Record;
use crate::plan::planfile::PlanFile;
use crate::plan::state::state_path;
use crate::plan::{self, Plan};

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
    /// written with mode 0600: keep it as private as the keys.
    #[arg(short = 'o', long = "output", value_name = "PLANFILE")]
    pub output: Option<PathBuf>,
    /// Also connect to every database with an admin-user and show what its setup.sql would
    /// change there (run in a transaction that is rolled back).
    #[arg(long)]
    pub live: bool,
}

/// A manifest compiled against an output directory: everything a plan is made from.
#[derive(Debug)]
pub struct Prepared {
    /// Absolute path of the manifest.
    pub manifest: PathBuf,
    pub manifest_bytes: Vec<u8>,
    pub model: Model,
    pub artifacts: Artifacts,
    /// Absolute path of `--out`.
    pub out: PathBuf,
    pub existing: std::collections::BTreeMap<String, ExistingFile>,
    /// `state.json`, and the journal of an interrupted apply if there is one.
    pub record: Record,
    pub state_bytes: Option<Vec<u8>>,
}

/// Checks the manifest (printing its diagnostics to stderr) and returns the model; an error
/// when the manifest has any error.
pub fn load_model(manifest: &Path) -> anyhow::Result<(Vec<u8>, Model)> {
    let bytes = std::fs::read(manifest)
        .with_context(|| format!("cannot read {}; check the path", manifest.display()))?;
    let name = manifest.display().to_string();
    let (source, mut diagnostics) = crate::syntax::decode(name.clone(), bytes.clone());
    let mut model = None;
    if diagnostics.is_empty() {
        let checked = crate::check(&source);
        model = checked.model;
        diagnostics = checked.diagnostics;
    }
    if !diagnostics.is_empty() {
        let rendered = crate::diag::render(
            &source,
            &diagnostics,
            super::check::RENDER_WIDTH,
            super::check::use_color(),
        );
        eprint!("{rendered}");
    }
    match model {
        Some(model) => Ok((bytes, model)),
        None => anyhow::bail!(
            "{name} has errors (shown above); nothing was written: fix them and run again"
        ),
    }
}

/// Compiles `manifest` against `out` with the production environment.
pub fn prepare(manifest: &Path, out: &Path) -> anyhow::Result<Prepared> {
    let (manifest_bytes, model) = load_model(manifest)?;
    let out =
        std::path::absolute(out).with_context(|| format!("cannot resolve {}", out.display()))?;
    let manifest = std::path::absolute(manifest)
        .with_context(|| format!("cannot resolve {}", manifest.display()))?;
    let env = Env::read_dir(&out)?;
    let artifacts = emit::emit(&model, &env)?;
    let record = Record::load(&out)?;
    let state_bytes = read_optional(&state_path(&out))?;
    Ok(Prepared {
        manifest,
        manifest_bytes,
        model,
        artifacts,
        out,
        existing: env.existing,
        record,
        state_bytes,
    })
}

/// A file's bytes, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

impl Prepared {
    /// Runs setup.sql in every database with an admin user (`--live`): rolled back for a plan,
    /// committed for an apply.
    pub fn live(&self, mode: crate::live::Mode) -> anyhow::Result<crate::live::LiveReport> {
        let (targets, warnings) = crate::live::targets(&self.model, &self.artifacts)?;
        let mut report = crate::live::run(targets, mode)?;
        report.warnings.extend(warnings);
        Ok(report)
    }

    /// Who gains and who loses access: the new access table against the one in the
    /// frozen.json deployed under `--out`.
    pub fn access_changes(&self) -> crate::diff::AccessDiff {
        let deployed = self.existing.get(crate::emit::layout::FROZEN);
        crate::diff::deployed(&self.model, deployed.map(|f| f.bytes.as_slice()))
    }

    /// The plan, compared against the record settled by an interrupted apply's journal (only
    /// read here: `plan` never writes).
    pub fn plan(&self) -> Plan {
        let settled = self.record.settle(&self.existing);
        let mut plan = plan::compute(&self.artifacts, &self.existing, &settled);
        plan.state_outdated |= self.record.interrupted();
        plan
    }
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
    if args.live && args.output.is_some() {
        anyhow::bail!(
            "a saved plan cannot hold live changes yet: drop -o, or drop --live and apply the \
             files first"
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
        let saved = PlanFile::new(
            &plan,
            prepared.manifest.clone(),
            &prepared.manifest_bytes,
            prepared.out.clone(),
            &prepared.existing,
            prepared.state_bytes.as_deref(),
        );
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

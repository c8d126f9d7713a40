//! The orchestration of `plan` and `apply`: a manifest compiled against an output directory
//! ([`prepare`] → [`Prepared`]), its plan (files, and with `--live` the databases), the
//! re-check under the apply lock that nothing moved since the plan was shown ([`fresh`]), and a
//! saved plan loaded and checked for freshness ([`load_saved`]).
//!
//! The subcommands in `cli/` parse arguments, ask and print; everything between a manifest and
//! what is written is here or below it (`emit`, `plan`, `apply`, `live`), and never climbs back
//! up into `cli/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::apply;
use crate::diag::Diagnostic;
use crate::emit::env::{Env, ExistingFile, read_tree};
use crate::emit::{self, Artifact, Artifacts};
use crate::live::{self, LiveReport, Mode};
use crate::model::Model;
use crate::plan::journal::{Journal, Record};
use crate::plan::planfile::{PlanFile, SavedLive};
use crate::plan::state::state_path;
use crate::plan::{self, Plan, State};
use crate::source::Source;

/// A manifest read and checked: its bytes, its source (for rendering diagnostics), every
/// diagnostic, and the model when there is no error.
#[derive(Debug)]
pub struct Loaded {
    pub bytes: Vec<u8>,
    pub source: Source,
    pub diagnostics: Vec<Diagnostic>,
    pub model: Option<Model>,
}

/// Reads and checks a manifest. The caller shows the diagnostics, then takes the model with
/// [`Loaded::into_model`].
pub fn load_model(manifest: &Path) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(manifest)
        .with_context(|| format!("cannot read {}; check the path", manifest.display()))?;
    let name = manifest.display().to_string();
    let (source, mut diagnostics) = crate::syntax::decode(name, bytes.clone());
    let mut model = None;
    if diagnostics.is_empty() {
        let checked = crate::check(&source);
        model = checked.model;
        diagnostics = checked.diagnostics;
    }
    Ok(Loaded {
        bytes,
        source,
        diagnostics,
        model,
    })
}

impl Loaded {
    /// The manifest's bytes and model; an error when the manifest has any error.
    pub fn into_model(self) -> anyhow::Result<(Vec<u8>, Model)> {
        match self.model {
            Some(model) => Ok((self.bytes, model)),
            None => anyhow::bail!(
                "{} has errors (shown above); nothing was written: fix them and run again",
                self.source.name
            ),
        }
    }
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
    pub existing: BTreeMap<String, ExistingFile>,
    /// `state.json`, and the journal of an interrupted apply if there is one.
    pub record: Record,
    pub state_bytes: Option<Vec<u8>>,
    /// The live targets (and their warnings), made on the first [`Prepared::live`] and reused
    /// by the next: an apply that shows the live plan and then applies it logs in with the
    /// tokens (and Cloud SQL lookups) of the preview, while they are valid, not new ones.
    live_targets: std::sync::OnceLock<(Vec<live::Target>, Vec<String>)>,
}

/// Compiles a checked manifest against `out` with the production environment.
pub fn prepare(
    manifest: &Path,
    manifest_bytes: Vec<u8>,
    model: Model,
    out: &Path,
) -> anyhow::Result<Prepared> {
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
        live_targets: std::sync::OnceLock::new(),
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
    pub fn live(&self, mode: Mode) -> anyhow::Result<LiveReport> {
        let (targets, warnings) = match self.live_targets.get() {
            Some(made) => made.clone(),
            None => {
                let made = live::targets(&self.model, &self.artifacts)?;
                self.live_targets.get_or_init(|| made).clone()
            }
        };
        let mut report = live::run(targets, mode)?;
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

    /// `plan` with what it was computed from, to save (`plan -o`) or to check again under the
    /// lock.
    pub fn saved(&self, plan: &Plan) -> PlanFile {
        PlanFile::new(
            plan,
            self.manifest.clone(),
            &self.manifest_bytes,
            self.out.clone(),
            &self.existing,
            self.state_bytes.as_deref(),
        )
    }

    /// `plan` and, with `--live`, what the databases would get, to save with `plan -o`: each
    /// database name's statements as shown, with their fingerprint.
    pub fn saved_with_live(&self, plan: &Plan, live: Option<&LiveReport>) -> PlanFile {
        let mut file = self.saved(plan);
        file.live = live.map(|report| {
            live::deduplicated(report)
                .into_iter()
                .map(|c| SavedLive {
                    fingerprint: live::fingerprint(&c.statements),
                    database: c.database,
                    db_name: c.db_name,
                    statements: c.statements,
                })
                .collect()
        });
        file
    }

    /// Writes `plan` (already shown, and confirmed by the caller) under the apply lock, after
    /// checking that the manifest and the directory are still what it was computed from: they
    /// may change while a person reads the plan. `None` when there was nothing to write (the
    /// record of an interrupted apply is finished and leftover temp files are removed).
    pub fn write(&self, plan: &Plan, force: bool) -> anyhow::Result<Option<apply::Applied>> {
        let seen = self.saved(plan);
        if plan.is_empty() {
            // Nothing to write, but the record to finish or the temp files of an apply that was
            // killed are cleaned up (taking the lock removes the temp files).
            if plan.state_outdated || apply::has_leftovers(&self.out) {
                let _lock = apply::Lock::acquire(&self.out)?;
                fresh(&seen, "the plan")?;
                if plan.state_outdated {
                    apply::apply(&self.out, plan, force)?;
                }
            }
            return Ok(None);
        }
        let _lock = apply::Lock::acquire(&self.out)?;
        fresh(&seen, "the plan shown above")?;
        Ok(Some(apply::apply(&self.out, plan, force)?))
    }
}

/// The files under `--out` and the state record's bytes, as read under the lock.
pub type Fresh = (BTreeMap<String, ExistingFile>, Option<Vec<u8>>);

/// Re-reads the manifest, the directory and the state record, and fails (naming every
/// difference) when they are no longer what `seen` was computed from. Returns what it read.
pub fn fresh(seen: &PlanFile, what: &str) -> anyhow::Result<Fresh> {
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

/// A saved plan, checked fresh under the apply lock it holds: apply it with
/// [`apply::apply`] while `lock` is held.
pub struct Saved {
    pub lock: apply::Lock,
    pub file: PlanFile,
    /// The file part, with "before" taken from the directory as it is now.
    pub plan: Plan,
}

/// Reads the saved plan `path` (its `bytes`), checks it was made for `out` (when given), takes
/// the apply lock and checks that nothing it saw moved since.
pub fn load_saved(path: &Path, bytes: &[u8], out: Option<&Path>) -> anyhow::Result<Saved> {
    let file = PlanFile::from_bytes(path, bytes)?;
    if let Some(out) = out {
        let out = std::path::absolute(out)?;
        if out != file.out {
            anyhow::bail!(
                "the plan was made for {}, not {}: drop --out or make a new plan",
                file.out.display(),
                out.display()
            );
        }
    }
    let lock = apply::Lock::acquire(&file.out)?;
    let (existing, state_bytes) = fresh(&file, &format!("the saved plan {}", path.display()))?;
    let state = match &state_bytes {
        Some(b) => State::from_bytes(b).map_err(|reason| {
            anyhow::anyhow!("{} is corrupt: {reason}", state_path(&file.out).display())
        })?,
        None => State::default(),
    };
    let record = Record {
        state,
        journal: Journal::load(&file.out)?,
    };
    let mut plan = file.to_plan(&existing, &record.settle(&existing))?;
    plan.state_outdated |= record.interrupted();
    Ok(Saved { lock, file, plan })
}

/// The live part of a saved plan, after its files were written: converges each database name
/// it read, each refusing (and rolled back) where setup.sql would now execute other statements
/// than the plan showed. The databases are reached with the files the plan wrote, read back
/// from `--out` and checked against the plan's record, and the manifest it was made from
/// (checked unchanged by [`load_saved`]).
pub fn apply_saved_live(file: &PlanFile) -> anyhow::Result<Option<LiveReport>> {
    let Some(saved) = &file.live else {
        return Ok(None);
    };
    let (_, model) = load_model(&file.manifest)?.into_model()?;
    let on_disk = read_tree(&file.out)?;
    let mut artifacts = Artifacts::new();
    for (path, record) in &file.next_state.files {
        let Some(disk) = on_disk.get(path) else {
            anyhow::bail!(
                "{} is missing under {} right after the apply wrote it; nothing was changed in \
                 the databases: run `dbward plan --live` again",
                path,
                file.out.display()
            );
        };
        if plan::sha256(&disk.bytes) != record.sha256 {
            anyhow::bail!(
                "{} under {} changed right after the apply wrote it; nothing was changed in the \
                 databases: run `dbward plan --live` again",
                path,
                file.out.display()
            );
        }
        artifacts.insert(
            path.clone(),
            Artifact {
                bytes: disk.bytes.clone(),
                mode: disk.mode,
                sensitive: false,
            },
        );
    }
    let (mut targets, warnings) = live::targets(&model, &artifacts)?;
    let mut report = LiveReport::default();
    for target in &mut targets {
        let expected = saved
            .iter()
            .filter(|s| s.database == target.database)
            .map(|s| (s.db_name.clone(), s.statements.clone()))
            .collect();
        target.expect(expected);
    }
    // A database the plan read that cannot be reached the same way now (it cannot happen
    // while the manifest is unchanged, but a plan file is input).
    for s in saved {
        if !targets.iter().any(|t| t.database == s.database) {
            report.failures.push(live::LiveFailure {
                database: s.database.clone(),
                db_name: Some(s.db_name.clone()),
                message: "the saved plan has changes for it, but the manifest gives no way to \
                          reach it as its admin user: make a new plan"
                    .into(),
            });
        }
    }
    let ran = live::run(targets, Mode::Apply)?;
    report.changes = ran.changes;
    report.failures.extend(ran.failures);
    report.warnings = ran.warnings;
    report.warnings.extend(warnings);
    Ok(Some(report))
}

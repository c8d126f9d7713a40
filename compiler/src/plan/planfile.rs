//! Saved plans (`dbward plan -o PLANFILE`, then `dbward apply PLANFILE`): the exact changes,
//! plus hashes of the manifest and of every file the plan saw, so apply refuses a plan that
//! no longer describes the directory and says why. A plan made with `--live` also holds the
//! statements each database name would get ([`SavedLive`]); apply refuses a name where they
//! differ now.
//!
//! **A plan file holds new private keys** (apply must write exactly what was reviewed, and
//! keys are random), so it is written with mode 0600 and must be handled like the keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::state::STATE_VERSION;
use super::{Action, Change, Drift, FileRecord, FileVersion, Plan, State, sha256};
use crate::emit::env::ExistingFile;

/// Version of the plan file format.
pub const PLANFILE_VERSION: u32 = 1;
/// Marks a JSON file as a dbward plan, so `apply FILE` can tell it from a manifest.
pub const PLANFILE_KIND: &str = "dbward-plan";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    pub kind: String,
    pub format_version: u32,
    /// Absolute path and hash of the manifest the plan was made from.
    pub manifest: PathBuf,
    pub manifest_sha256: String,
    /// Absolute path of `--out`.
    pub out: PathBuf,
    /// Every file under `--out` when the plan was made.
    pub seen: BTreeMap<String, FileRecord>,
    /// Hash of `.dbward/state.json` when the plan was made (`None`: there was none).
    pub state_sha256: Option<String>,
    pub changes: Vec<SavedChange>,
    pub next_state: State,
    /// With `plan --live -o`: what setup.sql would execute in each database name it read.
    /// `apply PLANFILE` then converges exactly these names, and refuses one whose statements
    /// are no longer these. Absent in a plan of files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Vec<SavedLive>>,
}

/// One database name of a saved live plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SavedLive {
    /// The manifest's name of the database.
    pub database: String,
    pub db_name: String,
    /// The statements setup.sql would execute there, in order, as the plan showed them (a
    /// server-wide statement only under the first name of its database).
    pub statements: Vec<String>,
    /// SHA-256 of `statements` (`live::fingerprint`), checked when the file is read.
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedChange {
    pub path: String,
    pub action: SavedAction,
    pub sensitive: bool,
    pub drift: Option<SavedDrift>,
    /// Mode and hex content to write (add, change).
    pub mode: Option<u32>,
    pub content_hex: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SavedAction {
    Add,
    Change,
    Remove,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SavedDrift {
    Edited,
    Unmanaged,
}

/// Why a saved plan can no longer be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Stale {
    #[error("the manifest {0} changed since the plan was made")]
    Manifest(PathBuf),
    #[error("{0} changed since the plan was made")]
    FileChanged(String),
    #[error("{0} appeared since the plan was made")]
    FileAppeared(String),
    #[error("{0} was removed since the plan was made")]
    FileRemoved(String),
    #[error("another apply ran since the plan was made (.dbward/state.json changed)")]
    State,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("{0} is not a dbward plan file: {1}")]
    Invalid(PathBuf, String),
    #[error(
        "the plan file was written by a dbward with format_version {0}; this one reads {PLANFILE_VERSION}: run `dbward plan -o` again"
    )]
    Version(u32),
}

fn record(file: &ExistingFile) -> FileRecord {
    FileRecord {
        sha256: sha256(&file.bytes),
        mode: file.mode,
    }
}

impl PlanFile {
    /// Records `plan` with what it was computed from.
    pub fn new(
        plan: &Plan,
        manifest: PathBuf,
        manifest_bytes: &[u8],
        out: PathBuf,
        existing: &BTreeMap<String, ExistingFile>,
        state_bytes: Option<&[u8]>,
    ) -> PlanFile {
        let changes = plan
            .changes
            .iter()
            .map(|c| SavedChange {
                path: c.path.clone(),
                action: match c.action {
                    Action::Add => SavedAction::Add,
                    Action::Change => SavedAction::Change,
                    Action::Remove => SavedAction::Remove,
                },
                sensitive: c.sensitive,
                drift: c.drift.map(|d| match d {
                    Drift::Edited => SavedDrift::Edited,
                    Drift::Unmanaged => SavedDrift::Unmanaged,
                }),
                mode: c.after.as_ref().map(|a| a.mode),
                content_hex: c.after.as_ref().map(|a| hex::encode(&a.bytes)),
            })
            .collect();
        PlanFile {
            kind: PLANFILE_KIND.into(),
            format_version: PLANFILE_VERSION,
            manifest,
            manifest_sha256: sha256(manifest_bytes),
            out,
            seen: existing
                .iter()
                .map(|(path, file)| (path.clone(), record(file)))
                .collect(),
            state_sha256: state_bytes.map(sha256),
            changes,
            next_state: plan.next_state.clone(),
            live: None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Whether `bytes` look like a plan file (and not a manifest).
    pub fn sniff(bytes: &[u8]) -> bool {
        bytes.trim_ascii_start().starts_with(b"{")
            && serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| {
                    v.get("kind")
                        .and_then(|k| k.as_str())
                        .map(|k| k == PLANFILE_KIND)
                })
                .unwrap_or(false)
    }

    pub fn from_bytes(path: &std::path::Path, bytes: &[u8]) -> Result<PlanFile, PlanFileError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| PlanFileError::Invalid(path.to_path_buf(), e.to_string()))?;
        let version = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if version != u64::from(PLANFILE_VERSION) {
            return Err(PlanFileError::Version(
                u32::try_from(version).unwrap_or(u32::MAX),
            ));
        }
        let file: PlanFile = serde_json::from_value(value)
            .map_err(|e| PlanFileError::Invalid(path.to_path_buf(), e.to_string()))?;
        if file.kind != PLANFILE_KIND || file.next_state.format_version != STATE_VERSION {
            return Err(PlanFileError::Invalid(
                path.to_path_buf(),
                "unknown kind or state version".into(),
            ));
        }
        for saved in file.live.iter().flatten() {
            if crate::live::fingerprint(&saved.statements) != saved.fingerprint {
                return Err(PlanFileError::Invalid(
                    path.to_path_buf(),
                    format!(
                        "the live changes of database {}, name {} do not match their \
                         fingerprint (edited by hand?)",
                        saved.database, saved.db_name
                    ),
                ));
            }
        }
        Ok(file)
    }

    /// Every reason the plan no longer matches the manifest and the directory (empty: fresh).
    pub fn staleness(
        &self,
        manifest_bytes: Option<&[u8]>,
        existing: &BTreeMap<String, ExistingFile>,
        state_bytes: Option<&[u8]>,
    ) -> Vec<Stale> {
        let mut stale = Vec::new();
        if manifest_bytes.map(sha256).as_deref() != Some(self.manifest_sha256.as_str()) {
            stale.push(Stale::Manifest(self.manifest.clone()));
        }
        for (path, seen) in &self.seen {
            match existing.get(path) {
                None => stale.push(Stale::FileRemoved(path.clone())),
                Some(file) if record(file) != *seen => stale.push(Stale::FileChanged(path.clone())),
                Some(_) => {}
            }
        }
        for path in existing.keys() {
            if !self.seen.contains_key(path) {
                stale.push(Stale::FileAppeared(path.clone()));
            }
        }
        if state_bytes.map(sha256) != self.state_sha256 {
            stale.push(Stale::State);
        }
        stale
    }

    /// The plan to apply, with "before" taken from the (checked fresh) directory.
    pub fn to_plan(
        &self,
        existing: &BTreeMap<String, ExistingFile>,
        current_state: &State,
    ) -> Result<Plan, PlanFileError> {
        let invalid = |why: String| PlanFileError::Invalid(self.out.clone(), why);
        let mut changes = Vec::new();
        for saved in &self.changes {
            let after = match (&saved.content_hex, saved.mode) {
                (Some(content), Some(mode)) => Some(FileVersion {
                    bytes: hex::decode(content)
                        .map_err(|e| invalid(format!("{}: {e}", saved.path)))?,
                    mode,
                }),
                (None, None) => None,
                _ => return Err(invalid(format!("{}: content without mode", saved.path))),
            };
            let action = match saved.action {
                SavedAction::Add => Action::Add,
                SavedAction::Change => Action::Change,
                SavedAction::Remove => Action::Remove,
            };
            if (action == Action::Remove) != after.is_none() {
                return Err(invalid(format!(
                    "{}: action and content disagree",
                    saved.path
                )));
            }
            changes.push(Change {
                path: saved.path.clone(),
                action,
                before: existing.get(&saved.path).map(|f| FileVersion {
                    bytes: f.bytes.clone(),
                    mode: f.mode,
                }),
                after,
                sensitive: saved.sensitive,
                drift: saved.drift.map(|d| match d {
                    SavedDrift::Edited => Drift::Edited,
                    SavedDrift::Unmanaged => Drift::Unmanaged,
                }),
            });
        }
        Ok(Plan {
            changes,
            state_outdated: self.next_state != *current_state,
            next_state: self.next_state.clone(),
            base_state: current_state.clone(),
        })
    }
}

//! Plans: the artifacts a manifest produces, compared with the files under `--out` and with
//! the record of the last apply, as a list of changes a person reviews before anything is
//! written.
//!
//! **Computing a plan is pure** ([`compute`]); reading the directory lives in
//! [`Env::read_dir`](crate::emit::env::Env::read_dir) and [`State::load`].
//!
//! A file under `--out` is in one of three situations:
//! - written by the last apply and untouched since (its hash matches [`State`]): dbward may
//!   change or remove it freely;
//! - written by the last apply and **edited by hand since** (drift): the plan shows it, and
//!   apply refuses to overwrite or remove it without `--force`;
//! - never written by dbward (unmanaged): dbward never removes it, and overwrites it only with
//!   `--force`.
//!
//! "The last apply" includes one that was killed before it wrote its record: its
//! [journal](journal) says which files it wrote, and [`journal::Record::settle`] counts them
//! as dbward's.

pub mod hints;
pub mod journal;
pub mod json;
pub mod planfile;
pub mod render;
pub mod state;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::emit::Artifacts;
use crate::emit::env::ExistingFile;
pub use state::{FileRecord, State};

/// What happens to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Add,
    Change,
    Remove,
}

/// Why a change needs `--force`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// The last apply wrote this file and it was edited by hand since.
    Edited,
    /// The file exists but dbward never wrote it.
    Unmanaged,
}

/// One file's content and permissions.
#[derive(Clone, PartialEq, Eq)]
pub struct FileVersion {
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// Never prints content: it may be a private key, and `{:?}` ends up in logs and panics.
impl std::fmt::Debug for FileVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileVersion")
            .field("len", &self.bytes.len())
            .field("mode", &format_args!("{:04o}", self.mode))
            .finish()
    }
}

/// One change to one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `/`-separated path relative to `--out`.
    pub path: String,
    pub action: Action,
    /// What is on disk now (`None` for an add).
    pub before: Option<FileVersion>,
    /// What apply writes (`None` for a remove).
    pub after: Option<FileVersion>,
    /// Whether the content must never be printed (keys).
    pub sensitive: bool,
    /// Set when applying this change would overwrite or remove a hand edit.
    pub drift: Option<Drift>,
}

/// Everything apply will do, and what it needs to check that nothing moved in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Ordered by path.
    pub changes: Vec<Change>,
    /// The record apply writes afterwards: every artifact's hash and mode.
    pub next_state: State,
    /// Whether the stored state differs from `next_state` even with no file changes (e.g. the
    /// first apply over files that are already right, or an apply that was interrupted);
    /// apply then rewrites only the record.
    pub state_outdated: bool,
    /// The record the plan was compared against. Apply keeps what it says about the files it
    /// changes or removes in its journal, so they stay dbward's if it is killed too.
    pub base_state: State,
}

impl Plan {
    /// `(add, change, destroy)` counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |action| self.changes.iter().filter(|c| c.action == action).count();
        (
            count(Action::Add),
            count(Action::Change),
            count(Action::Remove),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Changes that overwrite or remove a hand edit: apply refuses them without `--force`.
    pub fn drifted(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.drift.is_some())
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Compares the artifacts with the files on disk and the last apply's record.
pub fn compute(
    artifacts: &Artifacts,
    existing: &BTreeMap<String, ExistingFile>,
    state: &State,
) -> Plan {
    let mut changes = Vec::new();
    let mut next_state = State::default();
    for (path, artifact) in artifacts {
        let after = FileVersion {
            bytes: artifact.bytes.clone(),
            mode: artifact.mode,
        };
        next_state.files.insert(
            path.clone(),
            FileRecord {
                sha256: sha256(&artifact.bytes),
                mode: artifact.mode,
            },
        );
        match existing.get(path) {
            // Missing, even if the last apply wrote it: putting it back loses nothing.
            None => changes.push(Change {
                path: path.clone(),
                action: Action::Add,
                before: None,
                after: Some(after),
                sensitive: artifact.sensitive,
                drift: None,
            }),
            Some(disk) if disk.bytes == artifact.bytes && disk.mode == artifact.mode => {}
            Some(disk) => changes.push(Change {
                path: path.clone(),
                action: Action::Change,
                before: Some(FileVersion {
                    bytes: disk.bytes.clone(),
                    mode: disk.mode,
                }),
                after: Some(after),
                sensitive: artifact.sensitive,
                drift: drift(state.files.get(path), disk),
            }),
        }
    }
    // Files the last apply wrote that the manifest no longer produces are removed; files
    // dbward never wrote are never removed.
    for (path, record) in &state.files {
        if artifacts.contains_key(path) {
            continue;
        }
        if let Some(disk) = existing.get(path) {
            changes.push(Change {
                path: path.clone(),
                action: Action::Remove,
                before: Some(FileVersion {
                    bytes: disk.bytes.clone(),
                    mode: disk.mode,
                }),
                after: None,
                // Whatever was there may have been a key: never print removed content.
                sensitive: disk.mode & 0o077 == 0 || path.ends_with(".key"),
                drift: drift(Some(record), disk),
            });
        }
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    let state_outdated = next_state != *state;
    Plan {
        changes,
        next_state,
        state_outdated,
        base_state: state.clone(),
    }
}

/// Whether the file on disk is what the last apply recorded.
fn drift(record: Option<&FileRecord>, disk: &ExistingFile) -> Option<Drift> {
    match record {
        None => Some(Drift::Unmanaged),
        Some(r) if r.sha256 == sha256(&disk.bytes) && r.mode == disk.mode => None,
        Some(_) => Some(Drift::Edited),
    }
}

#[cfg(test)]
mod tests;

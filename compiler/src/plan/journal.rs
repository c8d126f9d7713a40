//! The journal of an apply in progress (`.dbward/journal.json`): what it is about to write,
//! recorded (and fsynced) before its first rename and removed once `state.json` is written.
//!
//! An apply killed between its first rename and its state record leaves files whose content
//! the old `state.json` does not know. Without the journal the next plan would take them for
//! hand edits and apply would refuse them without `--force`. With it, the next plan
//! [settles](Record::settle) the record: a file whose content and mode match what an
//! interrupted apply meant to write (or what that apply itself counted as dbward's) is
//! dbward's, not drift. The next apply then writes a fresh `state.json` and removes the journal
//! (rolling the record forward where the killed apply got to, discarding the rest). Plans only
//! read the journal; only apply, under its lock, removes it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::StateError;
use super::{FileRecord, State, sha256};
use crate::emit::env::{ExistingFile, STATE_DIR};

/// Format version of `journal.json`.
pub const JOURNAL_VERSION: u32 = 1;

/// `journal.json`, relative to `--out`.
pub fn journal_path(out: &Path) -> PathBuf {
    out.join(STATE_DIR).join("journal.json")
}

/// What an apply is about to write, kept until its state record is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub format_version: u32,
    /// The state record this apply writes: every file it leaves behind, with hash and mode.
    pub next: BTreeMap<String, FileRecord>,
    /// What the apply's plan counted as dbward's and `next` does not say (files it changes or
    /// removes), so that a file it did not get to is still dbward's if it is killed. This is
    /// what makes journals of applies killed one after the other add up.
    pub previous: BTreeMap<String, FileRecord>,
}

impl Journal {
    /// The journal of an apply from `base` (the record its plan was compared against) to `next`.
    pub fn new(base: &State, next: &State) -> Journal {
        Journal {
            format_version: JOURNAL_VERSION,
            next: next.files.clone(),
            previous: base
                .files
                .iter()
                .filter(|(path, record)| next.files.get(*path) != Some(*record))
                .map(|(path, record)| (path.clone(), record.clone()))
                .collect(),
        }
    }

    /// Reads `out/.dbward/journal.json`; no file means no apply was interrupted.
    pub fn load(out: &Path) -> Result<Option<Journal>, StateError> {
        let path = journal_path(out);
        match std::fs::read(&path) {
            Ok(bytes) => Journal::from_bytes(&bytes)
                .map(Some)
                .map_err(|reason| StateError::CorruptJournal { path, reason }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Journal, String> {
        let journal: Journal = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if journal.format_version != JOURNAL_VERSION {
            return Err(format!(
                "format_version {} is not {JOURNAL_VERSION}, the one this dbward understands",
                journal.format_version
            ));
        }
        Ok(journal)
    }

    /// Canonical bytes (sorted keys, trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// What the applies so far recorded under `--out`: `state.json`, and the journal of an apply
/// that did not finish, if one was interrupted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub state: State,
    pub journal: Option<Journal>,
}

impl Record {
    /// Reads `out/.dbward/state.json` and `out/.dbward/journal.json` (either may be missing).
    pub fn load(out: &Path) -> Result<Record, StateError> {
        Ok(Record {
            state: State::load(out)?,
            journal: Journal::load(out)?,
        })
    }

    /// Whether an apply was interrupted: the next apply must rewrite `state.json` and remove
    /// the journal, even when no file changes.
    pub fn interrupted(&self) -> bool {
        self.journal.is_some()
    }

    /// The record to compare the files on disk against. Without a journal it is `state.json`.
    /// With one, each file takes the first record that matches its content and mode: what the
    /// interrupted apply was writing, what it counted as dbward's, what `state.json` says; a
    /// file that matches none keeps its `state.json` record (so it shows as edited by hand).
    pub fn settle(&self, existing: &BTreeMap<String, ExistingFile>) -> State {
        let Some(journal) = &self.journal else {
            return self.state.clone();
        };
        let mut settled = State::default();
        let paths = self
            .state
            .files
            .keys()
            .chain(journal.previous.keys())
            .chain(journal.next.keys());
        for path in paths {
            if settled.files.contains_key(path) {
                continue;
            }
            let candidates = [
                journal.next.get(path),
                journal.previous.get(path),
                self.state.files.get(path),
            ];
            let on_disk = existing.get(path).map(|file| FileRecord {
                sha256: sha256(&file.bytes),
                mode: file.mode,
            });
            let matching = on_disk
                .as_ref()
                .and_then(|disk| candidates.into_iter().flatten().find(|r| *r == disk));
            let record = matching
                .or(self.state.files.get(path))
                .or(journal.previous.get(path));
            if let Some(record) = record {
                settled.files.insert(path.clone(), record.clone());
            }
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(content: &str, mode: u32) -> FileRecord {
        FileRecord {
            sha256: sha256(content.as_bytes()),
            mode,
        }
    }

    fn disk(files: &[(&str, &str)]) -> BTreeMap<String, ExistingFile> {
        files
            .iter()
            .map(|(p, c)| {
                (
                    p.to_string(),
                    ExistingFile {
                        bytes: c.as_bytes().to_vec(),
                        mode: 0o644,
                    },
                )
            })
            .collect()
    }

    fn state(files: &[(&str, &str)]) -> State {
        State {
            files: files
                .iter()
                .map(|(p, c)| (p.to_string(), rec(c, 0o644)))
                .collect(),
            ..State::default()
        }
    }

    #[test]
    fn without_a_journal_the_record_is_state_json() {
        let record = Record {
            state: state(&[("a", "1")]),
            journal: None,
        };
        assert_eq!(
            record.settle(&disk(&[("a", "edited")])),
            state(&[("a", "1")])
        );
        assert!(!record.interrupted());
    }

    #[test]
    fn files_the_interrupted_apply_wrote_are_dbwards_the_others_keep_their_record() {
        let old = state(&[("renamed", "old"), ("pending", "old"), ("removed", "x")]);
        let new = state(&[("renamed", "new"), ("pending", "new"), ("added", "new")]);
        let record = Record {
            state: old.clone(),
            journal: Some(Journal::new(&old, &new)),
        };
        // Killed after renaming `renamed` and removing `removed`, before the rest.
        let settled = record.settle(&disk(&[("renamed", "new"), ("pending", "old")]));
        assert_eq!(settled.files["renamed"], rec("new", 0o644));
        assert_eq!(settled.files["pending"], rec("old", 0o644));
        assert_eq!(settled.files["removed"], rec("x", 0o644));
        assert!(!settled.files.contains_key("added"), "never written");
        // A hand edit matches nothing and keeps its state.json record: still drift.
        let settled = record.settle(&disk(&[("renamed", "by hand")]));
        assert_eq!(settled.files["renamed"], rec("old", 0o644));
    }

    #[test]
    fn journals_of_applies_killed_one_after_the_other_add_up() {
        // Apply A (old -> a) renamed `x` and was killed; apply B (settled -> b, where the
        // manifest no longer has `x`) was killed before removing it.
        let old = state(&[("x", "old"), ("y", "old")]);
        let a = state(&[("x", "a"), ("y", "a")]);
        let on_disk = disk(&[("x", "a"), ("y", "old")]);
        let settled_a = Record {
            state: old.clone(),
            journal: Some(Journal::new(&old, &a)),
        }
        .settle(&on_disk);
        let b = state(&[("y", "b")]);
        let record = Record {
            state: old,
            journal: Some(Journal::new(&settled_a, &b)),
        };
        let settled = record.settle(&on_disk);
        assert_eq!(
            settled.files["x"],
            rec("a", 0o644),
            "A's file is still dbward's"
        );
        assert_eq!(settled.files["y"], rec("old", 0o644));
    }
}

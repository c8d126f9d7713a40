//! The record of what the last apply wrote (`.dbward/state.json`): a hash and mode per file.
//! It is how a plan tells a file dbward wrote from a file edited by hand since.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::emit::env::STATE_DIR;

/// Format version of `state.json`.
pub const STATE_VERSION: u32 = 1;

/// `state.json`, relative to `--out`.
pub fn state_path(out: &Path) -> PathBuf {
    out.join(STATE_DIR).join("state.json")
}

/// The hash and mode apply wrote a file with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// `sha256:<hex>` of the content.
    pub sha256: String,
    pub mode: u32,
}

/// What the last apply wrote, by relative path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format_version: u32,
    pub files: BTreeMap<String, FileRecord>,
}

impl Default for State {
    fn default() -> Self {
        State {
            format_version: STATE_VERSION,
            files: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not a dbward state file ({reason}); restore it, or delete it to treat every \
         file under the output directory as unmanaged (apply then needs --force to overwrite them)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path} is not a dbward journal ({reason}); restore it, or delete it: files an \
         interrupted apply already wrote then count as edited by hand (apply needs --force)"
    )]
    CorruptJournal { path: PathBuf, reason: String },
}

impl State {
    /// Reads `out/.dbward/state.json`; no file means nothing was applied yet.
    pub fn load(out: &Path) -> Result<State, StateError> {
        let path = state_path(out);
        match std::fs::read(&path) {
            Ok(bytes) => State::from_bytes(&bytes).map_err(|reason| StateError::Corrupt {
                path: path.clone(),
                reason,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<State, String> {
        let state: State = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if state.format_version != STATE_VERSION {
            return Err(format!(
                "format_version {} is not {STATE_VERSION}, the one this dbward understands",
                state.format_version
            ));
        }
        Ok(state)
    }

    /// Canonical bytes (sorted keys, trailing newline): the same state is the same file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

//! `dbward check` end to end: one test binary for the front end.
//!
//! Modules:
//! - `fixtures`: the bad-manifest fixtures under `bad/`, each with its expected diagnostics marked
//!   next to the input and a rendered snapshot (`UPDATE_GOLDEN=1` rewrites the snapshots).
//! - `hostile`: generated input (BOM, CRLF, not UTF-8, empty, 10 MB of junk, 10,000 levels of
//!   nesting) must end with exit 1 (or 0 where valid) in bounded time, never a crash.
//! - `cli`: the real `dbward` binary: exit codes, `--deny-warnings`, `--format json`, colour.

mod cli;
mod fixtures;
mod hostile;

use std::path::{Path, PathBuf};

/// The directory of this test binary's data.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check")
}

/// Compares `actual` with the snapshot at `path`, or rewrites it under `UPDATE_GOLDEN=1`.
/// Returns a description of the mismatch.
pub fn snapshot(path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {} ({e}); run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    })?;
    if expected == actual {
        return Ok(());
    }
    let diff = similar::TextDiff::from_lines(expected.as_str(), actual)
        .unified_diff()
        .header("expected", "actual")
        .to_string();
    Err(format!(
        "{} differs (UPDATE_GOLDEN=1 rewrites it):\n{diff}",
        path.display()
    ))
}

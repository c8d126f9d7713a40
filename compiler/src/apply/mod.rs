//! Apply: writes a [`Plan`] to disk so that a failure at any point leaves every previous file
//! intact and no temporary file behind, and an apply killed at any instant (SIGKILL, power
//! loss) leaves no torn file and nothing the next apply cannot finish.
//!
//! **Two phases.** First every new file is *staged*: written to a temp file in its target's
//! own directory (so the final rename never crosses a filesystem), created with mode 0600 (so
//! a key is never readable by others, not even briefly), then given its final mode and
//! fsynced. Only when every file is staged are they *committed*: each temp file is renamed
//! over its target and each touched directory is fsynced. A failure while staging (disk full,
//! permission denied, a directory where a file should be) drops the staged temp files, which
//! deletes them, and touches nothing else. Removals and the state record come last.
//!
//! **The journal.** Between the two phases, before the first rename, apply writes (and
//! fsyncs) `.dbward/journal.json`: the hash and mode of every file it is about to leave behind
//! ([`Journal`]). It removes the journal once `state.json` is durable. An apply killed in
//! between leaves the journal; the next plan reads it to tell the files that apply already
//! renamed from hand edits ([`Record::settle`](crate::plan::journal::Record::settle)), and the
//! next apply, under the lock, removes every leftover temp file, writes the record and removes
//! the journal.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tempfile::{NamedTempFile, TempPath};

use crate::emit::env::{STATE_DIR, TEMP_PREFIX};
use crate::plan::journal::{Journal, journal_path};
use crate::plan::state::state_path;
use crate::plan::{Action, Plan};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "another `dbward apply` is writing to {0} right now; wait for it to finish, then plan again"
    )]
    Locked(PathBuf),
    #[error(
        "{} file(s) were changed outside dbward since the last apply: {}; nothing was written. \
         Restore them, or re-run with --force to overwrite (or remove) them",
        .0.len(), .0.join(", ")
    )]
    Drift(Vec<String>),
    #[error("refusing to write outside the output directory: {0:?} is not a plain relative path")]
    UnsafePath(String),
    #[error("cannot {action} {path}: {source}; nothing was changed")]
    Stage {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot {action} {path}: {source}; files committed before this point are in place, the \
         rest keep their previous content: fix the cause and apply again"
    )]
    Commit {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An exclusive lock on an output directory (`.dbward/lock`, an advisory `flock`), held for a
/// whole apply so two applies (two CI jobs) never interleave. The kernel releases it when the
/// lock is dropped or the process dies, so a crash never leaves a stale lock behind.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock, creating `.dbward/` when needed; fails at once when another process
    /// holds it.
    pub fn acquire(out: &Path) -> Result<Lock, ApplyError> {
        let dir = out.join(STATE_DIR);
        ensure_dir(out, &dir, &mut Vec::new())?;
        let path = dir.join("lock");
        let stage_err = |source| ApplyError::Stage {
            action: "lock",
            path: path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(stage_err)?;
        match file.try_lock() {
            Ok(()) => {
                // Holding the lock, any temp file under `out` (`.dbward/` included) is a
                // leftover of an apply that was killed before it could clean up: remove it.
                remove_leftovers(out);
                Ok(Lock { _file: file })
            }
            Err(fs::TryLockError::WouldBlock) => Err(ApplyError::Locked(out.to_path_buf())),
            Err(fs::TryLockError::Error(source)) => Err(stage_err(source)),
        }
    }
}

/// Removes apply's temp files under `out`, recursively; best effort (a leftover that cannot
/// be removed is harmless: plans and applies skip temp files).
fn remove_leftovers(out: &Path) {
    for_each_leftover(out, &mut |path| {
        let _ = fs::remove_file(path);
        true
    });
}

/// Whether an apply that was killed left temp files under `out` (read only: `plan` and a
/// no-change apply call it, and only then take the lock that removes them).
pub fn has_leftovers(out: &Path) -> bool {
    let mut found = false;
    for_each_leftover(out, &mut |_| {
        found = true;
        false
    });
    found
}

/// Calls `f` on every apply temp file under `dir`, recursively, until it returns `false`.
/// Symlinks are not followed.
fn for_each_leftover(dir: &Path, f: &mut dyn FnMut(&Path) -> bool) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return true;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let temp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        let go_on = if temp && kind.is_file() {
            f(&entry.path())
        } else if kind.is_dir() {
            for_each_leftover(&entry.path(), f)
        } else {
            true
        };
        if !go_on {
            return false;
        }
    }
    true
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub written: usize,
    pub removed: usize,
    /// Whether `.dbward/state.json` was rewritten.
    pub state_written: bool,
}

/// Writes `plan` under `out`. Without `force`, refuses (writing nothing) when any change
/// overwrites or removes a file edited outside dbward.
pub fn apply(out: &Path, plan: &Plan, force: bool) -> Result<Applied, ApplyError> {
    let drifted: Vec<String> = plan.drifted().map(|c| c.path.clone()).collect();
    if !drifted.is_empty() && !force {
        return Err(ApplyError::Drift(drifted));
    }
    for change in &plan.changes {
        check_relative(&change.path)?;
    }

    let mut created_dirs = Vec::new();
    let write_state = plan.state_outdated || !plan.is_empty();
    let staged = stage_all(out, plan, write_state, &mut created_dirs).and_then(|staged| {
        // Before the first rename, the intent: an apply killed from here on is finished by
        // the next one instead of leaving files that look edited by hand.
        if !plan.is_empty() {
            write_journal(out, plan)?;
        }
        Ok(staged)
    });
    let staged = match staged {
        Ok(staged) => staged,
        Err(e) => {
            // The staged temp files are already gone (dropped); remove directories this apply
            // created, deepest first, so a failed apply leaves the tree as it found it.
            for dir in created_dirs.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
            return Err(e);
        }
    };

    let mut applied = Applied::default();
    let mut dirs = BTreeSet::new();
    for (target, temp) in staged.files {
        commit(&target, temp, &mut dirs)?;
        applied.written += 1;
    }
    for change in plan.changes.iter().filter(|c| c.action == Action::Remove) {
        let target = out.join(&change.path);
        match fs::remove_file(&target) {
            Ok(()) => applied.removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ApplyError::Commit {
                    action: "remove",
                    path: target,
                    source,
                });
            }
        }
        remove_empty_parents(out, &target, &mut dirs);
    }
    // The record goes last: if anything above failed, the next plan still compares against
    // the previous record and shows what is left to do.
    if let Some((target, temp)) = staged.state {
        commit(&target, temp, &mut dirs)?;
        applied.state_written = true;
    }
    let dirs: Vec<PathBuf> = dirs.into_iter().collect();
    for (dir, result) in dirs.iter().zip(parallel(&dirs, |dir| sync_dir(dir))) {
        result.map_err(|source| ApplyError::Commit {
            action: "fsync directory",
            path: dir.clone(),
            source,
        })?;
    }
    // The record is durable: the journal (this apply's, or an interrupted one's) has served.
    remove_journal(out)?;
    Ok(applied)
}

/// Writes `.dbward/journal.json` atomically and durably (fsync of the file and of `.dbward/`).
fn write_journal(out: &Path, plan: &Plan) -> Result<(), ApplyError> {
    let path = journal_path(out);
    let journal = Journal::new(&plan.base_state, &plan.next_state);
    write_atomic(&path, &journal.to_bytes(), 0o644).map_err(|e| match e {
        ApplyError::Stage { source, .. } | ApplyError::Commit { source, .. } => ApplyError::Stage {
            action: "write the journal",
            path,
            source,
        },
        other => other,
    })
}

/// Removes `.dbward/journal.json`, if any, durably.
fn remove_journal(out: &Path) -> Result<(), ApplyError> {
    let path = journal_path(out);
    let err = |source| ApplyError::Commit {
        action: "remove the journal",
        path: path.clone(),
        source,
    };
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(&out.join(STATE_DIR)).map_err(err),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(err(source)),
    }
}

/// Renames a staged temp file over its target and remembers its directory for the fsync.
fn commit(target: &Path, temp: TempPath, dirs: &mut BTreeSet<PathBuf>) -> Result<(), ApplyError> {
    temp.persist(target).map_err(|e| ApplyError::Commit {
        action: "rename into place",
        path: target.to_path_buf(),
        source: e.error,
    })?;
    if let Some(parent) = target.parent() {
        dirs.insert(parent.to_path_buf());
    }
    Ok(())
}

/// Writes a single file atomically (temp file, fsync, rename, fsync of the directory), e.g.
/// a plan file or the state record. The file has `mode` from creation on when `mode` is
/// 0600; otherwise it is widened only after the content is complete.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ApplyError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut created = Vec::new();
    let temp = match ensure_dir(&parent, &parent, &mut created)
        .and_then(|()| stage(&parent, path, bytes, mode, None))
        .and_then(|temp| {
            temp.as_file()
                .sync_all()
                .map_err(|source| ApplyError::Stage {
                    action: "fsync",
                    path: path.to_path_buf(),
                    source,
                })?;
            Ok(temp)
        }) {
        Ok(temp) => temp,
        Err(e) => {
            for dir in created.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    temp.persist(path).map_err(|e| ApplyError::Commit {
        action: "rename into place",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(&parent).map_err(|source| ApplyError::Commit {
        action: "fsync directory",
        path: parent,
        source,
    })
}

/// Refuses absolute paths, `..`, and anything else that could leave `--out` (plan files are
/// read from disk and could have been edited).
fn check_relative(path: &str) -> Result<(), ApplyError> {
    let p = Path::new(path);
    let plain = !path.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !path
            .split('/')
            .any(|part| part == STATE_DIR || part.starts_with(TEMP_PREFIX));
    if plain {
        Ok(())
    } else {
        Err(ApplyError::UnsafePath(path.to_string()))
    }
}

/// Temp files ready to be renamed into place. They are written, synced and closed: only their
/// paths are held (each still deleted if dropped), so an apply of tens of thousands of files
/// never holds more than a few descriptors open.
struct Staged {
    files: Vec<(PathBuf, TempPath)>,
    /// `.dbward/state.json`, committed after everything else.
    state: Option<(PathBuf, TempPath)>,
}

/// Phase one: every add/change (and the new state record) written to a synced temp file
/// beside its target.
fn stage_all(
    out: &Path,
    plan: &Plan,
    with_state: bool,
    created_dirs: &mut Vec<PathBuf>,
) -> Result<Staged, ApplyError> {
    // Directories first, one by one (they nest); then the files, in parallel.
    let umask = process_umask();
    let mut jobs = Vec::new();
    for change in &plan.changes {
        let Some(after) = &change.after else {
            continue;
        };
        let target = out.join(&change.path);
        let parent = target.parent().unwrap_or(out).to_path_buf();
        ensure_dir(out, &parent, created_dirs)?;
        // A directory where the file goes would make the rename fail halfway through the
        // commit; find it now, before anything changed.
        if let Ok(meta) = fs::symlink_metadata(&target)
            && meta.is_dir()
        {
            return Err(ApplyError::Stage {
                action: "replace",
                path: target,
                source: io::Error::new(io::ErrorKind::IsADirectory, "a directory is in the way"),
            });
        }
        jobs.push((parent, target, after.bytes.as_slice(), after.mode));
    }
    let state_bytes = plan.next_state.to_bytes();
    let state_target = state_path(out);
    if with_state {
        let dir = out.join(STATE_DIR);
        ensure_dir(out, &dir, created_dirs)?;
        jobs.push((dir, state_target.clone(), state_bytes.as_slice(), 0o644));
    }
    // Every byte is on disk before any rename: a crash never exposes a truncated file.
    let results = parallel(&jobs, |(dir, target, bytes, mode)| {
        let temp = stage(dir, target, bytes, *mode, umask)?;
        temp.as_file()
            .sync_all()
            .map_err(|source| ApplyError::Stage {
                action: "fsync",
                path: target.clone(),
                source,
            })?;
        Ok((target.clone(), temp.into_temp_path()))
    });
    // On the first error, returning drops every staged temp file, which deletes it.
    let mut staged = results
        .into_iter()
        .collect::<Result<Vec<_>, ApplyError>>()?;
    let state = if with_state { staged.pop() } else { None };
    Ok(Staged {
        files: staged,
        state,
    })
}

/// Writes `bytes` to a new temp file in `dir` and sets `mode` (the caller fsyncs it).
fn stage(
    dir: &Path,
    target: &Path,
    bytes: &[u8],
    mode: u32,
    umask: Option<u32>,
) -> Result<NamedTempFile, ApplyError> {
    let err = |action: &'static str| {
        let path = target.to_path_buf();
        move |source| ApplyError::Stage {
            action,
            path,
            source,
        }
    };
    // A file is created with its final mode when the umask keeps it intact (saves a syscall
    // per file); otherwise with 0600, widened once complete. Either way a secret (0600) is
    // private from the first byte.
    let direct = mode == 0o600 || umask.is_some_and(|u| mode & u == 0);
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(fs::Permissions::from_mode(if direct {
            mode
        } else {
            0o600
        }))
        .tempfile_in(dir)
        .map_err(err("create a temporary file for"))?;
    temp.write_all(bytes).map_err(err("write"))?;
    if !direct {
        temp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err("set the mode of"))?;
    }
    Ok(temp)
}

/// Runs `op` on every item from a few threads at once and returns the results in order.
/// Creating and fsyncing files is bound by latency, not bandwidth, and ext4 (like most
/// journaling filesystems) commits concurrent fsyncs in one journal transaction: a thousand
/// files cost a few round trips instead of a thousand.
fn parallel<T: Sync, R: Send>(items: &[T], op: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const THREADS: usize = 16;
    if items.len() <= 1 {
        return items.iter().map(op).collect();
    }
    let chunk = items.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        let op = &op;
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(op).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| match handle.join() {
                Ok(results) => results,
                // Our closures do not panic; if one did, re-raise it rather than lose results.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Creates `dir` and missing parents (recording each one created). `ca/` and `.dbward/` are
/// private (0700): CA keys never leave `--out`, and the state reveals what is there.
fn ensure_dir(out: &Path, dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), ApplyError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
        && dir != out
    {
        ensure_dir(out, parent, created)?;
    }
    let private = dir
        .file_name()
        .is_some_and(|name| name == "ca" || name == STATE_DIR)
        && dir.parent() == Some(out);
    let mode = if private { 0o700 } else { 0o755 };
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            created.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(source) => Err(ApplyError::Stage {
            action: "create the directory",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// After removing `target`, removes its now-empty parent directories up to `out`.
fn remove_empty_parents(out: &Path, target: &Path, dirs: &mut BTreeSet<PathBuf>) {
    let mut dir = target.parent();
    while let Some(d) = dir {
        if d == out || !d.starts_with(out) {
            dirs.insert(d.to_path_buf());
            break;
        }
        if fs::remove_dir(d).is_err() {
            // Not empty (or not ours to remove): sync it instead, as its entry list changed.
            dirs.insert(d.to_path_buf());
            break;
        }
        dirs.remove(d);
        dir = d.parent();
    }
}

/// The process umask, from `/proc/self/status` (reading it with umask(2) would change it).
fn process_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// fsync of a directory, so a rename or removal in it survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;

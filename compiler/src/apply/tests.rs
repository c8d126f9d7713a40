//! Tests of atomic, all-or-nothing writes on a real filesystem.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::emit::env::read_tree;
use crate::emit::{Artifact, Artifacts};
use crate::plan::{self, State};

fn plan_for(out: &Path, wanted: &Artifacts) -> Plan {
    let existing = read_tree(out).unwrap();
    let state = State::load(out).unwrap();
    plan::compute(wanted, &existing, &state)
}

fn wanted(entries: &[(&str, Artifact)]) -> Artifacts {
    entries
        .iter()
        .map(|(p, a)| (p.to_string(), a.clone()))
        .collect()
}

/// Every path under `dir`, including temp files and `.dbward/`.
fn all_paths(dir: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    fn walk(root: &Path, dir: &Path, paths: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            paths.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                walk(root, &path, paths);
            }
        }
    }
    walk(dir, dir, &mut paths);
    paths.sort();
    paths
}

#[test]
fn apply_writes_modes_and_state_and_twice_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let files = wanted(&[
        ("ca/x.key", Artifact::secret("K")),
        ("relay/frozen.json", Artifact::text("{}\n")),
    ]);
    let applied = apply(&out, &plan_for(&out, &files), false).unwrap();
    assert_eq!(applied.written, 2);
    let mode = |p: &str| fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("ca/x.key"), 0o600);
    assert_eq!(mode("ca"), 0o700);
    assert_eq!(mode("relay/frozen.json"), 0o644);
    let before: BTreeMap<String, Vec<u8>> = all_paths(&out)
        .into_iter()
        .filter(|p| out.join(p).is_file())
        .map(|p| (p.clone(), fs::read(out.join(&p)).unwrap()))
        .collect();
    let again = plan_for(&out, &files);
    assert!(again.is_empty() && !again.state_outdated, "{again:?}");
    assert_eq!(apply(&out, &again, false).unwrap(), Applied::default());
    let after: BTreeMap<String, Vec<u8>> = all_paths(&out)
        .into_iter()
        .filter(|p| out.join(p).is_file())
        .map(|p| (p.clone(), fs::read(out.join(&p)).unwrap()))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn removed_artifacts_are_deleted_with_their_empty_directories() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let first = wanted(&[
        ("databases/old/pg_hba.conf", Artifact::text("x\n")),
        ("relay/frozen.json", Artifact::text("{}\n")),
    ]);
    apply(out, &plan_for(out, &first), false).unwrap();
    let second = wanted(&[("relay/frozen.json", Artifact::text("{}\n"))]);
    let plan = plan_for(out, &second);
    assert_eq!(plan.counts(), (0, 0, 1));
    apply(out, &plan, false).unwrap();
    assert!(!out.join("databases").exists());
    assert!(plan_for(out, &second).is_empty());
}

#[test]
fn drift_is_refused_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let files = wanted(&[("x.conf", Artifact::text("a\n"))]);
    apply(out, &plan_for(out, &files), false).unwrap();
    fs::write(out.join("x.conf"), "hand edit\n").unwrap();
    let plan = plan_for(out, &files);
    let err = apply(out, &plan, false).unwrap_err();
    assert!(
        matches!(err, ApplyError::Drift(ref p) if p == &["x.conf"]),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(out.join("x.conf")).unwrap(),
        "hand edit\n"
    );
    apply(out, &plan, true).unwrap();
    assert_eq!(fs::read_to_string(out.join("x.conf")).unwrap(), "a\n");
}

#[test]
fn a_failure_while_staging_changes_nothing_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let first = wanted(&[
        ("a/one.conf", Artifact::text("1\n")),
        ("b/two.conf", Artifact::text("2\n")),
    ]);
    apply(out, &plan_for(out, &first), false).unwrap();
    let before = all_paths(out);
    // A directory where a new file must go: staging fails after other files were staged.
    fs::create_dir_all(out.join("c/three.conf")).unwrap();
    let second = wanted(&[
        ("a/one.conf", Artifact::text("1 changed\n")),
        ("b/two.conf", Artifact::text("2 changed\n")),
        ("c/three.conf", Artifact::text("3\n")),
        ("d/new/four.conf", Artifact::text("4\n")),
    ]);
    let err = apply(out, &plan_for(out, &second), false).unwrap_err();
    assert!(err.to_string().contains("c/three.conf"), "{err}");
    assert_eq!(fs::read_to_string(out.join("a/one.conf")).unwrap(), "1\n");
    assert_eq!(fs::read_to_string(out.join("b/two.conf")).unwrap(), "2\n");
    let mut expected = before;
    expected.extend(["c".to_string(), "c/three.conf".to_string()]);
    expected.sort();
    assert_eq!(all_paths(out), expected);
}

#[test]
fn paths_that_leave_the_output_directory_are_refused() {
    for bad in ["../x", "/etc/passwd", "a/../../x", "", ".dbward/state.json"] {
        assert!(check_relative(bad).is_err(), "{bad}");
    }
    assert!(check_relative("databases/orders/pg_hba.conf").is_ok());
}

#[test]
fn write_atomic_creates_secrets_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    write_atomic(&path, b"secret", 0o600).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(all_paths(dir.path()), ["plan.json"]);
}

#[test]
fn one_apply_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = Lock::acquire(dir.path()).unwrap();
    let err = Lock::acquire(dir.path()).unwrap_err();
    assert!(matches!(err, ApplyError::Locked(_)), "{err}");
    assert!(err.to_string().contains("another `dbward apply`"));
    drop(first);
    Lock::acquire(dir.path()).unwrap();
}

#[test]
fn leftovers_of_a_killed_apply_are_removed_under_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let files = wanted(&[("ca/x.key", Artifact::secret("K"))]);
    apply(out, &plan_for(out, &files), false).unwrap();
    let leftover = out.join("ca").join(format!("{TEMP_PREFIX}abc"));
    fs::write(&leftover, "half a key").unwrap();
    // Plans do not see it...
    assert!(plan_for(out, &files).is_empty());
    // ...and the next apply's lock removes it.
    let _lock = Lock::acquire(out).unwrap();
    assert!(!leftover.exists());
    assert!(out.join("ca/x.key").exists());
}

#[test]
fn leftovers_in_the_state_directory_are_found_and_removed_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let files = wanted(&[("x.conf", Artifact::text("a\n"))]);
    apply(out, &plan_for(out, &files), false).unwrap();
    assert!(!has_leftovers(out));
    // A state record or journal being staged when the apply was killed.
    let leftover = out.join(STATE_DIR).join(format!("{TEMP_PREFIX}state"));
    fs::write(&leftover, "{").unwrap();
    assert!(has_leftovers(out), "found without writing anything");
    assert!(leftover.exists());
    let _lock = Lock::acquire(out).unwrap();
    assert!(!leftover.exists());
    assert!(!has_leftovers(out));
}

/// The plan of the CLI: the record settled by an interrupted apply's journal.
fn settled_plan_for(out: &Path, wanted: &Artifacts) -> Plan {
    let existing = read_tree(out).unwrap();
    let record = crate::plan::journal::Record::load(out).unwrap();
    let mut plan = plan::compute(wanted, &existing, &record.settle(&existing));
    plan.state_outdated |= record.interrupted();
    plan
}

#[test]
fn an_apply_killed_after_its_first_rename_is_finished_without_force() {
    use crate::plan::journal::journal_path;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let first = wanted(&[
        ("a.conf", Artifact::text("a1\n")),
        ("b.conf", Artifact::text("b1\n")),
    ]);
    apply(out, &plan_for(out, &first), false).unwrap();
    let second = wanted(&[
        ("a.conf", Artifact::text("a2\n")),
        ("b.conf", Artifact::text("b2\n")),
    ]);
    // What apply does up to its first rename, then a kill: the journal is on disk, `a.conf`
    // is new, `b.conf` and state.json are old.
    let plan = plan_for(out, &second);
    write_journal(out, &plan).unwrap();
    fs::write(out.join("a.conf"), "a2\n").unwrap();

    // Without the journal `a.conf` would be a hand edit; with it, it is dbward's.
    let plan = settled_plan_for(out, &second);
    assert_eq!(plan.drifted().count(), 0, "{plan:?}");
    assert_eq!(plan.counts(), (0, 1, 0), "only b.conf is left to write");
    apply(out, &plan, false).unwrap();
    assert!(!journal_path(out).exists());
    let again = settled_plan_for(out, &second);
    assert!(again.is_empty() && !again.state_outdated, "{again:?}");

    // The same kill, then the user goes back to the first manifest: `a.conf` (written by
    // the killed apply) is changed back without --force, and a hand edit is still drift.
    let plan = plan_for(out, &first);
    write_journal(out, &plan).unwrap();
    fs::write(out.join("a.conf"), "a1\n").unwrap();
    fs::write(out.join("b.conf"), "by hand\n").unwrap();
    let plan = settled_plan_for(out, &first);
    let drifted: Vec<&str> = plan.drifted().map(|c| c.path.as_str()).collect();
    assert_eq!(drifted, ["b.conf"]);
}

#[test]
fn a_no_change_apply_after_an_interrupted_one_writes_the_record_and_removes_the_journal() {
    use crate::plan::journal::journal_path;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let first = wanted(&[("a.conf", Artifact::text("a1\n"))]);
    apply(out, &plan_for(out, &first), false).unwrap();
    let second = wanted(&[("a.conf", Artifact::text("a2\n"))]);
    // Killed after every rename, before the state record.
    let plan = plan_for(out, &second);
    write_journal(out, &plan).unwrap();
    fs::write(out.join("a.conf"), "a2\n").unwrap();
    let plan = settled_plan_for(out, &second);
    assert!(plan.is_empty() && plan.state_outdated, "{plan:?}");
    let applied = apply(out, &plan, false).unwrap();
    assert!(applied.state_written && applied.written == 0);
    assert!(!journal_path(out).exists());
    assert_eq!(State::load(out).unwrap(), plan.next_state);
}

//! The real `dbward check` binary: arguments, exit codes, output streams.

use std::path::PathBuf;
use std::process::{Command, Output};

const REFERENCE: &str = include_str!("../../src/model/testdata/reference.kdl");

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn dbward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dbward"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("run dbward")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn valid_manifest_exits_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(&dir, "full.kdl", REFERENCE);
    let out = dbward(&["check", path.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("valid (4 databases, 4 roles, 2 users, 5 access entries)"));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn invalid_manifest_exits_one_with_every_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = REFERENCE
        .replace("roles developer analyst", "roles developr analyst")
        .replace("port=5432 version=15", "port=\"5432\" version=15");
    let path = write(&dir, "broken.kdl", &broken);
    let out = dbward(&["check", path.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("dbward::unknown_role") && stderr.contains("dbward::wrong_type"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `developer`?"), "{stderr}");
    assert!(stderr.contains("invalid: 2 errors, 0 warnings"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour when stderr is not a terminal"
    );
}

#[test]
fn warnings_fail_only_when_denied() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(&dir, "warn.kdl", &format!("{REFERENCE}\nuser carol\n"));
    let path = path.to_str().unwrap_or_default();
    let out = dbward(&["check", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("dbward::user_without_roles"));
    let out = dbward(&["check", "--deny-warnings", path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("warnings denied"));
}

#[test]
fn json_format_for_ci() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(
        &dir,
        "bad.kdl",
        &REFERENCE.replace("client-cert-ttl \"12h\"", "client-cert-ttl \"12 hours\""),
    );
    let out = dbward(&[
        "check",
        "--format",
        "json",
        path.to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    let d = &value[0];
    assert_eq!(d["code"], "dbward::invalid_duration");
    assert_eq!(d["severity"], "error");
    assert_eq!(d["file"], path.to_str().unwrap_or_default());
    let line = REFERENCE
        .lines()
        .position(|l| l.contains("client-cert-ttl"))
        .unwrap_or(0)
        + 1;
    assert_eq!(d["line"].as_u64(), Some(line as u64));
    assert_eq!(d["column"].as_u64(), Some(21));
    assert!(d["help"].as_str().unwrap_or("").contains("12h"));
}

#[test]
fn unreadable_file_is_a_clear_error() {
    let out = dbward(&["check", "/nonexistent/manifest.kdl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read /nonexistent/manifest.kdl"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn oversized_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("huge.kdl");
    let file = std::fs::File::create(&path).expect("create");
    // Sparse: no 65 MB are written to disk.
    file.set_len(dbward::cli::check::MAX_MANIFEST_BYTES + 1)
        .expect("set_len");
    let out = dbward(&["check", path.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is larger than 64 MB"),
        "{}",
        text(&out.stderr)
    );
}

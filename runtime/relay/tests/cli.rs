//! The `dbward-relay` binary's command line, run as an operator runs it. Having this target
//! also makes `cargo nextest run --workspace` build the binary that the end-to-end tests in
//! `tests/` start.

use std::path::Path;
use std::process::{Command, Output};

fn relay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dbward-relay"))
        .args(args)
        .output()
        .expect("run dbward-relay")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_of_a_missing_config_names_it_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frozen.json");
    let out = relay(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn check_of_a_file_that_is_not_a_frozen_config_exits_1_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frozen.json");
    // Whatever the file holds must not be printed back: it could be a key pasted by mistake.
    std::fs::write(
        &path,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n",
    )
    .unwrap();
    let out = relay(&["--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(!err.contains("c2VjcmV0LWtleS1ieXRlcw"), "{err}");
}

#[test]
fn serving_a_config_that_does_not_load_exits_1_before_listening() {
    let out = relay(&["--config", "/nonexistent/dbward/frozen.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent/dbward/frozen.json"));
}

#[test]
fn zero_threads_is_a_usage_error() {
    let out = relay(&["--config", "x.json", "--threads", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--threads"), "{}", stderr(&out));
    assert!(!Path::new("x.json").exists());
}

#[test]
fn version_is_the_crate_version() {
    let out = relay(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("dbward-relay {}", env!("CARGO_PKG_VERSION"))
    );
}

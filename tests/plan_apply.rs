//! `dbward plan` and `dbward apply` as a user runs them: the real binary on real manifests and
//! a real filesystem, including an apply that fails halfway through writing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use dbward_tests::workspace_bin;

/// The quickstart example, from the repository.
pub fn quickstart() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.kdl");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `dbward` with `args` in `dir`, stdin closed (no terminal).
pub fn dbward(dir: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("dbward"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1")
        .output()
        .expect("run dbward")
}

/// Like [`dbward`], asserting success; returns stdout.
pub fn dbward_ok(dir: &Path, args: &[&str]) -> String {
    let out = dbward(dir, args);
    assert!(
        out.status.success(),
        "dbward {args:?} failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every entry under `dir` (files with bytes and mode, directories with their mode), including
/// `.dbward/` and any temp file: what "no byte differs" and "nothing left behind" compare.
fn snapshot(dir: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Option<Vec<u8>>)>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .display()
                .to_string();
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                out.insert(rel, (mode, None));
                walk(root, &path, out);
            } else {
                out.insert(rel, (mode, Some(fs::read(&path).expect("read"))));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

type Snapshot = BTreeMap<String, (u32, Option<Vec<u8>>)>;

/// Asserts two snapshots are equal, naming the paths that differ (not dumping bytes).
fn assert_same(before: &Snapshot, after: &Snapshot, what: &str) {
    let differing: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(
        differing.is_empty(),
        "{what}: these paths differ: {differing:?}"
    );
}

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(manifest: &str) -> Workspace {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("m.kdl"), manifest).expect("write manifest");
        Workspace { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn out(&self) -> PathBuf {
        self.path().join("out")
    }
    fn set_manifest(&self, manifest: &str) {
        fs::write(self.path().join("m.kdl"), manifest).expect("write manifest");
    }
    fn run(&self, args: &[&str]) -> Output {
        dbward(self.path(), args)
    }
    fn ok(&self, args: &[&str]) -> String {
        dbward_ok(self.path(), args)
    }
}

/// The quickstart with a second self-hosted database `inventory` and another public name.
fn quickstart_grown() -> String {
    let base = quickstart().replace(
        "public-name \"db.localhost\"",
        "public-name \"db2.localhost\"",
    );
    format!(
        "{base}\ndatabase inventory {{\n    postgres host=\"10.0.0.9\" port=5432\n    labels env=dev\n    \
         self-hosted {{\n        server-names \"10.0.0.9\" \"inventory.internal\"\n        \
         config-dir \"/etc/dbward\"\n    }}\n    db-user readonly\n}}\n"
    )
}

#[test]
fn apply_twice_changes_nothing_and_no_byte_differs() {
    let ws = Workspace::new(&quickstart());
    let plan = ws.run(&["plan", "m.kdl", "--out", "out", "--detailed-exitcode"]);
    let (stdout, _) = text(&plan);
    assert_eq!(plan.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("  + ca/users-ca.key (sensitive)\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");
    assert!(
        stdout.ends_with("to add, 0 to change, 0 to destroy.\n"),
        "{stdout}"
    );
    assert!(!ws.out().exists(), "plan must not write");

    ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    let first = snapshot(&ws.out());
    for (path, (mode, bytes)) in &first {
        if path.ends_with(".key") || path == ".dbward/lock" {
            assert_eq!(*mode, 0o600, "{path}");
        } else if bytes.is_some() {
            assert_eq!(*mode, 0o644, "{path}");
        }
    }
    assert_eq!(first["ca"].0, 0o700);

    let again = ws.run(&["plan", "m.kdl", "--out", "out", "--detailed-exitcode"]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(text(&again).0, "No changes.\n");
    let stdout = ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    assert_eq!(stdout, "No changes.\n");
    assert_same(&first, &snapshot(&ws.out()), "a second apply changed bytes");
}

#[test]
fn without_a_terminal_or_auto_approve_apply_refuses() {
    let ws = Workspace::new(&quickstart());
    let out = ws.run(&["apply", "m.kdl", "--out", "out"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("stdin is not a terminal") && stderr.contains("--auto-approve"),
        "{stderr}"
    );
    assert!(!ws.out().exists());
}

#[test]
fn a_bad_manifest_writes_nothing() {
    let ws = Workspace::new(&quickstart().replace("roles developer", "roles developr"));
    let out = ws.run(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("developr") && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert!(!ws.out().exists());
    let plan = ws.run(&["plan", "m.kdl", "--out", "out", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(1));
}

#[test]
fn removed_databases_are_destroyed_and_json_never_holds_a_secret() {
    let ws = Workspace::new(&quickstart_grown());
    ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    // A file dbward never wrote must survive everything.
    fs::write(ws.out().join("NOTES.txt"), "mine\n").unwrap();
    ws.set_manifest(&quickstart());

    let stdout = ws.ok(&["plan", "m.kdl", "--out", "out"]);
    assert!(
        stdout.contains("  - databases/inventory/server.key (sensitive)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  - databases/inventory/setup.sql\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "  ~ relay/server.crt\n      (certificate reissued: subject CN=db2.localhost -> \
             CN=db.localhost; names db2.localhost, *.db2.localhost -> db.localhost, *.db.localhost)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("db2.localhost"),
        "frozen.json diff expected: {stdout}"
    );
    assert!(
        stdout.ends_with("Plan: 0 to add, 3 to change, 8 to destroy.\n"),
        "{stdout}"
    );

    let json_text = ws.ok(&["plan", "m.kdl", "--out", "out", "--json"]);
    assert!(!json_text.contains("PRIVATE KEY"));
    let json: serde_json::Value = serde_json::from_str(&json_text).expect("plan json");
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["summary"]["destroy"], 8);
    for change in json["changes"].as_array().unwrap() {
        if change["sensitive"] == true {
            assert!(
                change["sha256_before"].is_null() && change["diff"].is_null(),
                "{change}"
            );
        }
    }

    ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    assert!(!ws.out().join("databases/inventory").exists());
    assert_eq!(
        fs::read_to_string(ws.out().join("NOTES.txt")).unwrap(),
        "mine\n"
    );
    assert_eq!(ws.ok(&["plan", "m.kdl", "--out", "out"]), "No changes.\n");
}

#[test]
fn hand_edits_are_shown_and_kept_unless_forced() {
    let ws = Workspace::new(&quickstart());
    ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    let hba = ws.out().join("databases/shop/pg_hba.conf");
    let original = fs::read_to_string(&hba).unwrap();
    fs::write(&hba, format!("{original}host all all 0.0.0.0/0 trust\n")).unwrap();

    let plan = ws.ok(&["plan", "m.kdl", "--out", "out"]);
    assert!(
        plan.contains("~ databases/shop/pg_hba.conf (edited by hand since the last apply)"),
        "{plan}"
    );
    assert!(plan.contains("-host all all 0.0.0.0/0 trust"), "{plan}");
    let refused = ws.run(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused).1.contains("--force"), "{}", text(&refused).1);
    assert!(fs::read_to_string(&hba).unwrap().ends_with("trust\n"));

    ws.ok(&[
        "apply",
        "m.kdl",
        "--out",
        "out",
        "--auto-approve",
        "--force",
    ]);
    assert_eq!(fs::read_to_string(&hba).unwrap(), original);
}

#[test]
fn a_saved_plan_is_applied_exactly_and_refused_when_stale() {
    let ws = Workspace::new(&quickstart());
    ws.ok(&["plan", "m.kdl", "--out", "out", "-o", "tfplan"]);
    let saved = ws.path().join("tfplan");
    assert_eq!(
        fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&fs::read(&saved).unwrap()).expect("plan file is JSON");
    let key_hex = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "databases/shop/server.key")
        .and_then(|c| c["content_hex"].as_str())
        .expect("the plan holds the key it will write")
        .to_string();

    ws.ok(&["apply", "tfplan"]);
    let written = fs::read(ws.out().join("databases/shop/server.key")).unwrap();
    assert_eq!(
        hex_encode(&written),
        key_hex,
        "apply wrote something else than the plan"
    );
    // Applied once, the same plan is stale: the directory moved on.
    let again = ws.run(&["apply", "tfplan"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).1.contains("stale"), "{}", text(&again).1);

    // A plan saved inside the output directory would be stale at once: refused.
    let inside = ws.run(&["plan", "m.kdl", "--out", "out", "-o", "out/tfplan"]);
    assert_eq!(inside.status.code(), Some(1));
    assert!(
        text(&inside).1.contains("outside the output directory"),
        "{}",
        text(&inside).1
    );

    // A manifest edited after planning makes the plan stale, and nothing is written.
    ws.ok(&["plan", "m.kdl", "--out", "out", "-o", "tfplan2"]);
    ws.set_manifest(&quickstart_grown());
    let before = snapshot(&ws.out());
    let stale = ws.run(&["apply", "tfplan2"]);
    let (_, stderr) = text(&stale);
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        stderr.contains("m.kdl changed since the plan was made"),
        "{stderr}"
    );
    assert_same(
        &before,
        &snapshot(&ws.out()),
        "a stale plan changed the directory",
    );
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A real write failure halfway through an apply: the file-size limit (RLIMIT_FSIZE, which
/// binds root too) makes writing a file larger than 1 KiB fail with EFBIG, as a full disk
/// would, after smaller files were already staged (the new database's client-ca.crt, in a
/// directory this apply created, before its larger pg_hba.conf or install.sh). Every previous file must be intact, and
/// no temp file or new directory left behind.
#[test]
fn a_write_failure_leaves_every_previous_file_intact_and_no_temp_files() {
    let ws = Workspace::new(&quickstart());
    ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    let before = snapshot(&ws.out());
    ws.set_manifest(&quickstart_grown());

    let bin = workspace_bin("dbward");
    let failed = Command::new("bash")
        .arg("-c")
        // Ignoring SIGXFSZ turns the limit into a plain EFBIG error from write(2).
        .arg("trap '' XFSZ; ulimit -f 1; exec \"$0\" apply m.kdl --out out --auto-approve")
        .arg(&bin)
        .current_dir(ws.path())
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let (stdout, stderr) = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("File too large")
            && (stderr.contains("databases/inventory/pg_hba.conf")
                || stderr.contains("databases/inventory/install.sh"))
            && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(
        snapshot(&ws.out()),
        before,
        "a failed apply changed the directory"
    );

    // Without the limit, the same apply goes through.
    ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    assert!(ws.out().join("databases/inventory/setup.sql").exists());
    assert_eq!(ws.ok(&["plan", "m.kdl", "--out", "out"]), "No changes.\n");
}

/// The quickstart with `count` more self-hosted databases (seven files each).
fn quickstart_with_databases(count: usize) -> String {
    let mut manifest = quickstart();
    for i in 0..count {
        manifest.push_str(&format!(
            "\ndatabase extra{i} {{\n    postgres host=\"pg{i}.internal\" port=5432\n    \
             self-hosted {{\n        server-names \"pg{i}.internal\"\n        \
             config-dir \"/etc/dbward\"\n    }}\n    db-user readonly\n}}\n"
        ));
    }
    manifest
}

#[test]
fn an_apply_of_more_files_than_open_descriptors_goes_through() {
    // 40 databases are about 300 files; the process may hold only 64 descriptors. Staged temp
    // files are closed once synced, so the count of files does not matter.
    let ws = Workspace::new(&quickstart_with_databases(40));
    let bin = workspace_bin("dbward");
    let applied = Command::new("bash")
        .arg("-c")
        .arg("ulimit -n 64; exec \"$0\" apply m.kdl --out out --auto-approve")
        .arg(&bin)
        .current_dir(ws.path())
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let (stdout, stderr) = text(&applied);
    assert!(applied.status.success(), "{stdout}\n{stderr}");
    assert!(ws.out().join("databases/extra39/setup.sql").exists());
    assert_eq!(ws.ok(&["plan", "m.kdl", "--out", "out"]), "No changes.\n");
}

#[test]
fn a_second_apply_waits_for_none_and_is_refused_while_one_runs() {
    let ws = Workspace::new(&quickstart());
    ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    ws.set_manifest(&quickstart_grown());
    let before = snapshot(&ws.out());
    // Another apply holds the output directory.
    let lock = dbward::apply::Lock::acquire(&ws.out()).expect("lock");
    let refused = ws.run(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    let (_, stderr) = text(&refused);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr.contains("another `dbward apply` is writing"),
        "{stderr}"
    );
    assert_same(
        &before,
        &snapshot(&ws.out()),
        "a locked-out apply changed the directory",
    );
    drop(lock);
    ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
}

/// Runs `dbward apply` on a real pseudo-terminal (util-linux `script`) and types `answer`.
fn apply_on_a_terminal(ws: &Workspace, answer: &str) -> String {
    let bin = workspace_bin("dbward");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("{} apply m.kdl --out out", bin.display()))
        .arg("/dev/null")
        .current_dir(ws.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`script` (util-linux, package bsdutils on Debian) runs commands on a terminal");
    {
        use std::io::Write;
        // Give dbward time to print the plan and wait for the answer.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = writeln!(stdin, "{answer}");
    }
    let out = child.wait_with_output().expect("script");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn on_a_terminal_apply_asks_and_only_yes_writes() {
    let ws = Workspace::new(&quickstart());
    let no = apply_on_a_terminal(&ws, "no");
    assert!(no.contains("Only 'yes' or 'y' is accepted"), "{no}");
    assert!(no.contains("apply cancelled; nothing was written"), "{no}");
    assert!(!ws.out().exists());
    let yes = apply_on_a_terminal(&ws, "yes");
    assert!(yes.contains("Apply complete: "), "{yes}");
    assert_eq!(ws.ok(&["plan", "m.kdl", "--out", "out"]), "No changes.\n");
}

#[test]
fn show_prints_a_saved_plan_and_whether_apply_would_take_it() {
    let ws = Workspace::new(&quickstart());
    ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    ws.set_manifest(&quickstart_grown());
    let planned = ws.ok(&["plan", "m.kdl", "--out", "out", "-o", "tfplan"]);
    let shown = ws.run(&["show", "tfplan"]);
    let (stdout, stderr) = text(&shown);
    assert_eq!(shown.status.code(), Some(0), "{stderr}");
    // The same plan text as `plan` printed, after a line naming what it is for.
    assert!(stdout.starts_with("Saved plan tfplan for "), "{stdout}");
    assert!(
        stdout.ends_with(&planned),
        "show:\n{stdout}\nplan:\n{planned}"
    );
    assert!(stderr.contains("The plan is current"), "{stderr}");
    // Keys are never shown, in text or JSON.
    let json = ws.ok(&["show", "tfplan", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("show --json is JSON");
    assert_eq!(doc["format_version"], plan_json(&ws)["format_version"]);
    assert!(!json.contains("BEGIN PRIVATE KEY") && !stdout.contains("PRIVATE KEY"));

    // Once the directory moved on, show says apply would refuse it, and why; it writes nothing.
    ws.ok(&["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    let before = snapshot(&ws.out());
    let stale = ws.run(&["show", "tfplan"]);
    let (_, stderr) = text(&stale);
    assert!(
        stderr.contains("stale") && stderr.contains("changed since the plan was made"),
        "{stderr}"
    );
    assert_same(&before, &snapshot(&ws.out()), "show changed the directory");
    // A manifest is not a plan file.
    let wrong = ws.run(&["show", "m.kdl"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong).1.contains("not a plan file"),
        "{}",
        text(&wrong).1
    );
}

fn plan_json(ws: &Workspace) -> serde_json::Value {
    serde_json::from_str(&ws.ok(&["plan", "m.kdl", "--out", "out", "--json"])).unwrap()
}

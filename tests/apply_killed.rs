//! `dbward apply` killed with SIGKILL at random instants, again and again, on a manifest whose
//! artifacts change between runs. After every kill: no file is torn (each one holds its old or
//! its new content and mode), `dbward plan` writes nothing, a following `dbward apply` without
//! `--force` goes through (a file the killed apply had already renamed is not taken for a hand
//! edit), `dbward plan` then says `No changes.`, and no temp file or journal is left anywhere
//! under `--out`.
//!
//! Real timing, no test hook in dbward: half of the kills land at a random instant of the whole
//! run (reading, staging, fsyncs, renames, state), the other half right after the first rename
//! is seen on disk (the test watches the first path the plan writes), plus a random few
//! microseconds, which is where the apply is between its first rename and its state record.
//! The seed is printed; `DBWARD_KILL_SEED=N` replays a run.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::plan_apply::{dbward, dbward_ok, quickstart};
use dbward_tests::workspace_bin;

/// Kills per test run.
const ROUNDS: usize = 30;

/// splitmix64: a seeded, reproducible sequence without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Three manifests that differ in many files: databases added and removed, the relay's public
/// name (its certificate and the frozen config), and server names (server certificates).
fn variant(k: usize) -> String {
    let (extras, public_name, alt_names) = match k % 3 {
        0 => (24, "db.localhost", false),
        1 => (16, "db2.localhost", false),
        _ => (32, "db.localhost", true),
    };
    let mut manifest = quickstart().replace(
        "public-name \"db.localhost\"",
        &format!("public-name \"{public_name}\""),
    );
    for i in 0..extras {
        let alt = if alt_names {
            format!(" \"pg{i}.alt.internal\"")
        } else {
            String::new()
        };
        manifest.push_str(&format!(
            "\ndatabase extra{i} {{\n    postgres host=\"pg{i}.internal\" port=5432\n    \
             self-hosted {{\n        server-names \"pg{i}.internal\"{alt}\n        \
             config-dir \"/etc/dbward\"\n    }}\n    db-user readonly\n}}\n"
        ));
    }
    manifest
}

/// A file's content and mode.
type Version = (Vec<u8>, u32);

/// Every regular file under `out`, by relative path (`.dbward/` and temp files included).
fn files(out: &Path) -> BTreeMap<String, Version> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Version>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                walk(root, &path, files);
            } else {
                let rel = path.strip_prefix(root).expect("prefix");
                files.insert(
                    rel.display().to_string(),
                    (
                        fs::read(&path).expect("read"),
                        meta.permissions().mode() & 0o777,
                    ),
                );
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(out, out, &mut files);
    files
}

fn is_temp(path: &str) -> bool {
    path.split('/').any(|part| part.starts_with(".dbward-tmp-"))
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// What a saved plan will write (`Some`) or remove (`None`), by path, and its next state.
fn planned(planfile: &Path) -> (BTreeMap<String, Option<Version>>, serde_json::Value) {
    let plan: serde_json::Value =
        serde_json::from_slice(&fs::read(planfile).expect("read plan")).expect("plan is JSON");
    let mut changes = BTreeMap::new();
    for change in plan["changes"].as_array().expect("changes") {
        let path = change["path"].as_str().expect("path").to_string();
        let after = change["content_hex"].as_str().map(|hex| {
            let mode = change["mode"].as_u64().expect("mode");
            (unhex(hex), u32::try_from(mode).expect("mode fits"))
        });
        changes.insert(path, after);
    }
    (changes, plan["next_state"].clone())
}

/// The first path the apply renames into place: the first add or change, in path order.
fn first_written(changes: &BTreeMap<String, Option<Version>>) -> Option<&String> {
    changes
        .iter()
        .find_map(|(path, after)| after.as_ref().map(|_| path))
}

/// Identity of a file on disk (a rename over it gives a new inode).
fn inode(path: &Path) -> Option<u64> {
    fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// After a kill: every artifact holds its old or its planned content and mode, keys are 0600,
/// and `.dbward/state.json` is the old record or the new one. Returns whether the kill hit the
/// window this test is about: some file already new (or removed), the state record still old.
fn assert_not_torn(
    round: usize,
    out: &Path,
    before: &BTreeMap<String, Version>,
    changes: &BTreeMap<String, Option<Version>>,
    next_state: &serde_json::Value,
) -> bool {
    let now = files(out);
    let mut state_is_old = !now.contains_key(".dbward/state.json");
    let mut some_new = false;
    for (path, version) in &now {
        if is_temp(path) || path == ".dbward/lock" {
            continue;
        }
        if path == ".dbward/state.json" {
            let state: serde_json::Value =
                serde_json::from_slice(&version.0).expect("state.json is whole JSON");
            let old: Option<serde_json::Value> = before
                .get(path)
                .map(|(b, _)| serde_json::from_slice(b).expect("old state"));
            assert!(
                Some(&state) == old.as_ref() || &state == next_state,
                "round {round}: state.json is neither the old record nor the new one"
            );
            state_is_old = Some(&state) == old.as_ref() && &state != next_state;
            continue;
        }
        if path.starts_with(".dbward/") {
            // Apply's own bookkeeping (the journal); it is checked by the next apply.
            continue;
        }
        let old = before.get(path);
        let new = changes.get(path).and_then(|c| c.as_ref());
        assert!(
            Some(version) == old || Some(version) == new,
            "round {round}: {path} is torn: neither its old nor its new content and mode"
        );
        some_new |= Some(version) != old;
        if path.ends_with(".key") {
            assert_eq!(
                version.1, 0o600,
                "round {round}: {path} is readable by others"
            );
        }
    }
    for (path, after) in changes {
        if now.contains_key(path) {
            continue;
        }
        if after.is_none() {
            some_new |= before.contains_key(path);
            continue;
        }
        assert!(
            !before.contains_key(path),
            "round {round}: {path} vanished though the plan changes it"
        );
    }
    some_new && state_is_old
}

#[test]
fn an_apply_killed_at_any_instant_is_finished_by_the_next_apply_without_force() {
    let seed = std::env::var("DBWARD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_d8a2_d000_0009_u64);
    eprintln!("kill seed: {seed} (replay with DBWARD_KILL_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path();
    let out = ws.join("out");
    let bin: PathBuf = workspace_bin("dbward");

    // A first, unkilled apply, timed: kills are spread over about that long.
    fs::write(ws.join("m.kdl"), variant(0)).expect("write manifest");
    let started = Instant::now();
    dbward_ok(ws, &["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    let full_run = started.elapsed();

    let (mut in_window, mut elsewhere, mut finished) = (0, 0, 0);
    let mut current = 0;
    for round in 0..ROUNDS {
        let next = (current + 1 + rng.below(2) as usize) % 3;
        fs::write(ws.join("m.kdl"), variant(next)).expect("write manifest");
        let planfile = ws.join("tfplan");
        dbward_ok(ws, &["plan", "m.kdl", "--out", "out", "-o", "tfplan"]);
        let (changes, next_state) = planned(&planfile);
        let before = files(&out);
        let watched = first_written(&changes).map(|p| out.join(p));
        let watched_inode = watched.as_deref().and_then(inode);

        let mut child = Command::new(&bin)
            .arg("apply")
            .arg(&planfile)
            .current_dir(ws)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dbward apply");
        if round % 2 == 0 {
            // Anywhere in the run.
            let max = u64::try_from(full_run.as_micros()).unwrap_or(u64::MAX);
            std::thread::sleep(Duration::from_micros(rng.below(max + max / 5)));
        } else if let Some(watched) = &watched {
            // Right after the first rename.
            let deadline = Instant::now() + Duration::from_secs(20);
            while inode(watched) == watched_inode
                && Instant::now() < deadline
                && child.try_wait().expect("try_wait").is_none()
            {
                std::hint::spin_loop();
            }
            let extra = rng.below(400);
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_micros(extra) {
                std::hint::spin_loop();
            }
        }
        let _ = child.kill();
        let status = child.wait().expect("wait");
        let window = assert_not_torn(round, &out, &before, &changes, &next_state);
        if status.success() {
            finished += 1;
        } else if window {
            in_window += 1;
        } else {
            elsewhere += 1;
        }

        // `dbward plan` reads the journal and the leftovers, and writes nothing.
        let killed = files(&out);
        dbward_ok(ws, &["plan", "m.kdl", "--out", "out"]);
        assert!(
            files(&out) == killed,
            "round {round} (seed {seed}): `dbward plan` wrote under --out"
        );

        // The next apply, of the manifest the killed one was applying or of another one,
        // goes through without --force, and leaves nothing of the killed one behind.
        current = if rng.below(2) == 0 {
            next
        } else {
            (next + 1) % 3
        };
        fs::write(ws.join("m.kdl"), variant(current)).expect("write manifest");
        let applied = dbward(ws, &["apply", "m.kdl", "--out", "out", "--auto-approve"]);
        assert!(
            applied.status.success(),
            "round {round} (seed {seed}): the apply after a kill failed:\n{}\n{}",
            String::from_utf8_lossy(&applied.stdout),
            String::from_utf8_lossy(&applied.stderr)
        );
        assert_eq!(
            dbward_ok(ws, &["plan", "m.kdl", "--out", "out"]),
            "No changes.\n",
            "round {round} (seed {seed})"
        );
        let left: Vec<String> = files(&out)
            .into_keys()
            .filter(|p| is_temp(p) || p == ".dbward/journal.json")
            .collect();
        assert!(
            left.is_empty(),
            "round {round} (seed {seed}): left behind after the next apply: {left:?}"
        );
    }
    eprintln!(
        "{ROUNDS} kills: {in_window} between the first rename and the state record, \
         {elsewhere} elsewhere, {finished} too late (the apply had finished)"
    );
    // The interesting window must actually have been hit.
    assert!(
        in_window >= ROUNDS / 4,
        "only {in_window} kills landed between the first rename and the state record"
    );
}

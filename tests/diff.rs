//! Who gains and who loses access, through the real binary: `dbward plan` against what is
//! deployed under `--out`, and `dbward diff OLD NEW` in its three formats and exit codes.
//! What the lines say is checked against the frozen config apply deploys, which is exactly
//! what the relay enforces.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use dbward_tests::workspace_bin;

fn quickstart() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.kdl");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The quickstart with bob (a developer too) and carol (an analyst, provisioned `keep` with
/// `reader`).
pub fn before() -> String {
    format!(
        "{}\nuser bob {{\n    roles developer\n}}\n\nrole analyst {{\n    provision keep\n    \
         allow {{\n        databases shop\n        db-names shop\n        db-roles reader\n    \
         }}\n}}\n\nuser carol {{\n    roles analyst\n}}\n",
        quickstart()
    )
}

/// The change under review: bob loses his role, developers may also open `reports`, carol's
/// provisioned user is granted `writer` too, and dave joins as an analyst.
pub fn after() -> String {
    before()
        .replace("user bob {\n    roles developer\n}", "user bob {}")
        .replace(
            "db-names shop\n    }\n}\n\nuser alice",
            "db-names shop reports\n    }\n}\n\nuser alice",
        )
        .replace("db-roles reader\n", "db-roles reader writer\n")
        + "\nuser dave {\n    roles analyst\n}\n"
}

/// Runs `dbward` in `dir`, stdin closed, stdout a pipe (so never coloured).
fn dbward(dir: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("dbward"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env_remove("NO_COLOR")
        .output()
        .expect("run dbward")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const BOB_LOSES: &str = "  - bob → shop as app, readonly (db-names shop)\n";
const ALICE_NAMES: &str = "  ~ alice → shop: db-names shop → reports, shop\n";
const CAROL_ROLES: &str = "  ~ carol → shop: db-roles reader → reader, writer\n";
const DAVE_GAINS: &str = "  + dave → shop as dave (provisioned, keep: db-roles reader, writer) (db-names shop) via analyst\n";

#[test]
fn plan_opens_with_who_gains_and_who_loses_access() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path();
    fs::write(ws.join("m.kdl"), before()).expect("write");

    // Nothing deployed yet: every entry is new.
    let first = dbward(
        ws,
        &["plan", "m.kdl", "--out", "out", "--detailed-exitcode"],
    );
    assert_eq!(first.status.code(), Some(2), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(
        text.starts_with("Access changes (who can reach what, as whom):\n\n"),
        "{text}"
    );
    for line in [
        "  + alice → shop as app, readonly (db-names shop) via developer\n",
        "  + bob → shop as app, readonly (db-names shop) via developer\n",
        "  + carol → shop as carol (provisioned, keep: db-roles reader) (db-names shop) via analyst\n",
        "\nAccess: 3 added, 0 changed, 0 removed.\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(
        text.find("Access: 3 added") < text.find("dbward will make these changes"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colour into a pipe: {text}");

    let applied = dbward(ws, &["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    // Applied: no changes, and nothing about access (access lives in frozen.json).
    let again = dbward(
        ws,
        &["plan", "m.kdl", "--out", "out", "--detailed-exitcode"],
    );
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(stdout(&again), "No changes.\n");

    // The change under review, against what is deployed.
    fs::write(ws.join("m.kdl"), after()).expect("write");
    let plan = dbward(
        ws,
        &["plan", "m.kdl", "--out", "out", "--detailed-exitcode"],
    );
    assert_eq!(plan.status.code(), Some(2), "{}", stderr(&plan));
    let text = stdout(&plan);
    let expected = format!(
        "Access changes (who can reach what, as whom):\n\n{ALICE_NAMES}{BOB_LOSES}{CAROL_ROLES}\
         {DAVE_GAINS}\nAccess: 1 added, 2 changed, 1 removed.\n\ndbward will make these changes:\n"
    );
    assert!(text.starts_with(&expected), "{text}");
    // The frozen config deployed knows no roles, so removals cannot say "via".
    assert!(!text.contains("- bob → shop as app, readonly (db-names shop) via"));

    let json = dbward(ws, &["plan", "m.kdl", "--out", "out", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("plan json");
    let access = &json["access"];
    assert_eq!(access["summary"]["add"], 1);
    assert_eq!(access["summary"]["change"], 2);
    assert_eq!(access["summary"]["remove"], 1);
    let bob = &access["changes"][1];
    assert_eq!(bob["action"], "remove");
    assert_eq!(bob["user"], "bob");
    assert_eq!(
        bob["before"]["db_users"],
        serde_json::json!(["app", "readonly"])
    );
    assert!(bob["after"].is_null());
    let alice = &access["changes"][0];
    assert_eq!(alice["changed"], serde_json::json!(["db-names"]));
    assert_eq!(
        alice["after"]["db_names"],
        serde_json::json!(["reports", "shop"])
    );
    assert_eq!(alice["via"], serde_json::json!(["developer"]));

    // What the lines said is what the relay will enforce once applied.
    let applied = dbward(ws, &["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let config = dbward_frozen::Config::load(&ws.join("out/relay/frozen.json")).expect("frozen");
    assert!(config.access_for("bob", "shop").is_none());
    let alice = config.access_for("alice", "shop").expect("alice");
    assert!(alice.db_names.contains("reports"));
    assert_eq!(
        config.access_for("carol", "shop").expect("carol").db_roles,
        ["reader", "writer"]
    );
    assert!(config.access_for("dave", "shop").is_some());
    let last = dbward(
        ws,
        &["plan", "m.kdl", "--out", "out", "--detailed-exitcode"],
    );
    assert_eq!(
        (last.status.code(), stdout(&last)),
        (Some(0), "No changes.\n".into())
    );
}

#[test]
fn plan_with_only_file_changes_says_access_is_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path();
    fs::write(ws.join("m.kdl"), quickstart()).expect("write");
    let applied = dbward(ws, &["apply", "m.kdl", "--out", "out", "--auto-approve"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    // A port change rewrites frozen.json and pg_hba-free files, but nobody's access moves.
    fs::write(
        ws.join("m.kdl"),
        quickstart().replace("port=5432", "port=5433"),
    )
    .expect("write");
    let plan = dbward(
        ws,
        &["plan", "m.kdl", "--out", "out", "--detailed-exitcode"],
    );
    assert_eq!(plan.status.code(), Some(2));
    let text = stdout(&plan);
    assert!(
        text.starts_with("Access changes: none; nobody gains or loses access.\n\ndbward will make"),
        "{text}"
    );
    assert!(text.contains("relay/frozen.json"), "{text}");
}

#[test]
fn diff_of_two_manifests_in_every_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path();
    fs::write(ws.join("old.kdl"), before()).expect("write");
    fs::write(ws.join("new.kdl"), after()).expect("write");

    let text = dbward(ws, &["diff", "old.kdl", "new.kdl", "--detailed-exitcode"]);
    assert_eq!(text.status.code(), Some(2), "{}", stderr(&text));
    // Both sides are manifests, so the removal says which roles gave the access.
    let bob = BOB_LOSES.replace(")\n", ") via developer\n");
    assert_eq!(
        stdout(&text),
        format!(
            "Access changes (who can reach what, as whom):\n\n{ALICE_NAMES}{bob}{CAROL_ROLES}\
             {DAVE_GAINS}\nAccess: 1 added, 2 changed, 1 removed.\n"
        )
    );
    assert!(!ws.join("out").exists());
    // Without --detailed-exitcode a change is still success.
    assert_eq!(
        dbward(ws, &["diff", "old.kdl", "new.kdl"]).status.code(),
        Some(0)
    );

    let same = dbward(ws, &["diff", "new.kdl", "new.kdl", "--detailed-exitcode"]);
    assert_eq!(same.status.code(), Some(0));
    assert_eq!(
        stdout(&same),
        "Access changes: none; nobody gains or loses access.\n"
    );

    let json = dbward(ws, &["diff", "old.kdl", "new.kdl", "--format", "json"]);
    assert_eq!(json.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("diff json");
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["has_changes"], true);
    assert_eq!(json["old"], "old.kdl");
    let actions: Vec<(&str, &str)> = json["access"]["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap_or(""),
                c["user"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("change", "alice"),
            ("remove", "bob"),
            ("change", "carol"),
            ("add", "dave")
        ]
    );
    assert_eq!(
        json["access"]["changes"][1]["via"],
        serde_json::json!(["developer"])
    );

    let md = dbward(ws, &["diff", "old.kdl", "new.kdl", "--format", "markdown"]);
    let md = stdout(&md);
    assert!(
        md.starts_with("### dbward: access changes\n\n**1 added, 2 changed, 1 removed**"),
        "{md}"
    );
    assert!(
        md.contains("| ➖ | bob | shop | as app, readonly (db-names shop) via developer |"),
        "{md}"
    );
    assert!(
        md.contains("| ✏️ | alice | shop | db-names shop → reports, shop |"),
        "{md}"
    );
    assert!(
        md.contains("<details><summary>Details (4 lines)</summary>\n\n```diff\n"),
        "{md}"
    );
    assert!(
        md.contains(&format!("\n{}", DAVE_GAINS.trim_start())),
        "{md}"
    );
    assert!(md.trim_end().ends_with("</details>"), "{md}");
}

#[test]
fn diff_of_an_invalid_manifest_is_exit_one_with_its_diagnostics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path();
    fs::write(ws.join("good.kdl"), before()).expect("write");
    fs::write(
        ws.join("bad.kdl"),
        before().replace("roles developer", "roles developr"),
    )
    .expect("write");
    let out = dbward(ws, &["diff", "good.kdl", "bad.kdl", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    assert!(err.contains("dbward::unknown_role"), "{err}");
    assert!(err.contains("did you mean `developer`?"), "{err}");
    assert!(
        err.contains("bad.kdl: invalid; fix the errors above"),
        "{err}"
    );
    // Both sides wrong: both are reported, old first.
    let out = dbward(ws, &["diff", "bad.kdl", "missing.kdl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let bad = err.find("bad.kdl: invalid").expect("old reported");
    let missing = err.find("cannot read missing.kdl").expect("new reported");
    assert!(bad < missing, "{err}");
}

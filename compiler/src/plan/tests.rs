//! Tests of plan computation and rendering over hand-built artifacts and directories.

use std::collections::BTreeMap;

use super::*;
use crate::emit::Artifact;

fn disk(files: &[(&str, &str, u32)]) -> BTreeMap<String, ExistingFile> {
    files
        .iter()
        .map(|(path, text, mode)| {
            (
                path.to_string(),
                ExistingFile {
                    bytes: text.as_bytes().to_vec(),
                    mode: *mode,
                },
            )
        })
        .collect()
}

fn artifacts(files: &[(&str, Artifact)]) -> Artifacts {
    files
        .iter()
        .map(|(p, a)| (p.to_string(), a.clone()))
        .collect()
}

/// The state the last apply would have left for these files.
fn state_of(files: &BTreeMap<String, ExistingFile>) -> State {
    State {
        format_version: state::STATE_VERSION,
        files: files
            .iter()
            .map(|(p, f)| {
                (
                    p.clone(),
                    FileRecord {
                        sha256: sha256(&f.bytes),
                        mode: f.mode,
                    },
                )
            })
            .collect(),
    }
}

#[test]
fn first_plan_adds_everything_and_hides_keys() {
    let wanted = artifacts(&[
        (
            "a/pg_hba.conf",
            Artifact::text("hostssl all all 0.0.0.0/0 cert\n"),
        ),
        (
            "a/server.key",
            Artifact::secret("-----BEGIN PRIVATE KEY-----\nSECRET\n"),
        ),
    ]);
    let plan = compute(&wanted, &BTreeMap::new(), &State::default());
    assert_eq!(plan.counts(), (2, 0, 0));
    let text = render::render(&plan);
    assert!(text.contains("  + a/pg_hba.conf\n"), "{text}");
    assert!(text.contains("  + a/server.key (sensitive)\n"), "{text}");
    assert!(!text.contains("SECRET"));
    assert!(
        text.ends_with("Plan: 2 to add, 0 to change, 0 to destroy.\n"),
        "{text}"
    );
    let json = serde_json::to_string(&json::to_json(&plan)).unwrap();
    assert!(!json.contains("SECRET"));
    assert!(json.contains("\"format_version\":1"));
}

#[test]
fn same_files_and_state_is_no_changes() {
    let on_disk = disk(&[("x.conf", "a\n", 0o644)]);
    let wanted = artifacts(&[("x.conf", Artifact::text("a\n"))]);
    let plan = compute(&wanted, &on_disk, &state_of(&on_disk));
    assert!(plan.is_empty());
    assert!(!plan.state_outdated);
    assert_eq!(render::render(&plan), "No changes.\n");
}

#[test]
fn changed_text_file_shows_a_unified_diff() {
    let on_disk = disk(&[("x.conf", "one\ntwo\nthree\n", 0o644)]);
    let wanted = artifacts(&[("x.conf", Artifact::text("one\n2\nthree\n"))]);
    let plan = compute(&wanted, &on_disk, &state_of(&on_disk));
    let text = render::render(&plan);
    assert!(text.contains("  ~ x.conf\n"), "{text}");
    assert!(text.contains("-two") && text.contains("+2"), "{text}");
    assert!(text.contains("@@ -1,3 +1,3 @@"), "{text}");
    assert!(text.ends_with("Plan: 0 to add, 1 to change, 0 to destroy.\n"));
}

#[test]
fn changed_key_shows_no_content() {
    let on_disk = disk(&[("k.key", "OLDSECRET", 0o600)]);
    let wanted = artifacts(&[("k.key", Artifact::secret("NEWSECRET"))]);
    let plan = compute(&wanted, &on_disk, &state_of(&on_disk));
    let text = render::render(&plan);
    assert!(text.contains("  ~ k.key (sensitive)\n"), "{text}");
    assert!(!text.contains("SECRET"));
    let json = serde_json::to_string(&json::to_json(&plan)).unwrap();
    assert!(
        !json.contains("SECRET") && !json.contains("sha256:"),
        "{json}"
    );
}

#[test]
fn hand_edits_are_drift_and_unmanaged_files_are_left_alone() {
    let applied = disk(&[("x.conf", "a\n", 0o644), ("old.conf", "o\n", 0o644)]);
    let state = state_of(&applied);
    let now = disk(&[
        ("x.conf", "edited\n", 0o644),
        ("old.conf", "o\n", 0o644),
        ("mine.txt", "not dbward's\n", 0o644),
    ]);
    let wanted = artifacts(&[("x.conf", Artifact::text("a\n"))]);
    let plan = compute(&wanted, &now, &state);
    let summary: Vec<(&str, Action, Option<Drift>)> = plan
        .changes
        .iter()
        .map(|c| (c.path.as_str(), c.action, c.drift))
        .collect();
    assert_eq!(
        summary,
        [
            ("old.conf", Action::Remove, None),
            ("x.conf", Action::Change, Some(Drift::Edited)),
        ]
    );
    let text = render::render(&plan);
    assert!(text.contains("  - old.conf\n"), "{text}");
    assert!(
        text.contains("(edited by hand since the last apply)"),
        "{text}"
    );
    assert!(text.ends_with("Plan: 0 to add, 1 to change, 1 to destroy.\n"));
}

#[test]
fn overwriting_a_file_dbward_never_wrote_is_drift() {
    let now = disk(&[("x.conf", "someone else's\n", 0o644)]);
    let wanted = artifacts(&[("x.conf", Artifact::text("a\n"))]);
    let plan = compute(&wanted, &now, &State::default());
    assert_eq!(plan.changes[0].drift, Some(Drift::Unmanaged));
}

#[test]
fn a_mode_change_is_a_change() {
    let now = disk(&[("k.key", "K", 0o644)]);
    let wanted = artifacts(&[("k.key", Artifact::secret("K"))]);
    let mut state = state_of(&now);
    let plan = compute(&wanted, &now, &state);
    assert_eq!(plan.counts(), (0, 1, 0));
    assert!(render::render(&plan).contains("(mode 0644 -> 0600)"));
    state.files.clear();
    // Identical files without a record: nothing to write, only the record is outdated.
    let now = disk(&[("k.key", "K", 0o600)]);
    let plan = compute(&wanted, &now, &state);
    assert!(plan.is_empty() && plan.state_outdated);
}

#[test]
fn a_saved_plan_goes_stale_when_anything_moves() {
    let now = disk(&[("x.conf", "a\n", 0o644)]);
    let wanted = artifacts(&[
        ("x.conf", Artifact::text("b\n")),
        ("k.key", Artifact::secret("K")),
    ]);
    let plan = compute(&wanted, &now, &State::default());
    let saved = planfile::PlanFile::new(
        &plan,
        "/m.kdl".into(),
        b"manifest",
        "/out".into(),
        &now,
        None,
    );
    let bytes = saved.to_bytes();
    assert!(planfile::PlanFile::sniff(&bytes));
    assert!(!planfile::PlanFile::sniff(b"dbward version=1\n"));
    let loaded = planfile::PlanFile::from_bytes(std::path::Path::new("p"), &bytes).unwrap();
    assert!(loaded.staleness(Some(b"manifest"), &now, None).is_empty());
    assert_eq!(loaded.to_plan(&now, &State::default()).unwrap(), plan);

    let edited = disk(&[("x.conf", "z\n", 0o644)]);
    assert_eq!(
        loaded.staleness(Some(b"manifest 2"), &edited, Some(b"{}")),
        [
            planfile::Stale::Manifest("/m.kdl".into()),
            planfile::Stale::FileChanged("x.conf".into()),
            planfile::Stale::State,
        ]
    );
    assert_eq!(
        loaded.staleness(Some(b"manifest"), &BTreeMap::new(), None),
        [planfile::Stale::FileRemoved("x.conf".into())]
    );
    assert!(planfile::PlanFile::from_bytes(std::path::Path::new("p"), b"{\"kind\":1}").is_err());
}

#[test]
fn a_reissued_certificate_says_what_changed() {
    use crate::emit::env::Env;
    use crate::emit::pki;
    use crate::model::DatabaseKind;
    let now = time::macros::datetime!(2026-01-01 00:00 UTC);
    let mut first = Artifacts::new();
    pki::emit(
        &pki::tests::model(&["orders"]),
        &Env::for_tests(now, BTreeMap::new()),
        &mut first,
    )
    .unwrap();
    let on_disk: BTreeMap<String, ExistingFile> = first
        .iter()
        .map(|(p, a)| {
            (
                p.clone(),
                ExistingFile {
                    bytes: a.bytes.clone(),
                    mode: a.mode,
                },
            )
        })
        .collect();
    let mut model = pki::tests::model(&["orders"]);
    if let Some(db) = model.databases.get_mut("orders")
        && let DatabaseKind::SelfHosted { server_names, .. } = &mut db.kind
    {
        server_names.push("orders.example.net".into());
    }
    let existing = on_disk
        .iter()
        .map(|(p, f)| (p.clone(), f.bytes.clone()))
        .collect();
    let mut second = Artifacts::new();
    pki::emit(&model, &Env::for_tests(now, existing), &mut second).unwrap();
    let plan = compute(&second, &on_disk, &state_of(&on_disk));
    let text = render::render(&plan);
    assert!(
        text.contains(
            "  ~ databases/orders/server.crt\n      (certificate reissued: names orders.internal, \
             10.0.0.1 -> orders.internal, 10.0.0.1, orders.example.net)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("  ~ databases/orders/server.key (sensitive)\n"),
        "{text}"
    );
    assert!(
        text.ends_with("Plan: 0 to add, 2 to change, 0 to destroy.\n"),
        "{text}"
    );
}

#[test]
fn debug_output_never_holds_file_content() {
    let on_disk = disk(&[("k.key", "OLDSECRET", 0o600)]);
    let wanted = artifacts(&[("k.key", Artifact::secret("NEWSECRET"))]);
    let plan = compute(&wanted, &on_disk, &State::default());
    let debug = format!("{plan:?} {on_disk:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(debug.contains("len: 9"), "{debug}");
}

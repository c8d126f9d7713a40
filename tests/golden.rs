//! Golden files for every text emitter over every example and every case under `tests/golden/`.
//!
//! A case is `examples/<case>.kdl` or `tests/golden/<case>/manifest.kdl`; its expected output
//! is the tree `tests/golden/<case>/` (postgresql.conf, pg_hba.conf, pg_ident.conf, setup.sql,
//! IAM JSON, frozen.json). Certificates and keys are random, so they are not golden: the
//! end-to-end test (`artifacts`) checks them by parsing. `UPDATE_GOLDEN=1` rewrites the trees.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use dbward::source::Source;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// Every file under `dir` by `/`-separated relative path, except the case's own manifest.
fn read_tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("under root");
                let relative = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                if relative != "manifest.kdl" {
                    out.insert(relative, fs::read_to_string(&path).unwrap_or_default());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Compiles `manifest`, emits its text artifacts and compares them with `expected_dir`
/// (or rewrites it with `UPDATE_GOLDEN=1`). Returns a description of every mismatch.
fn check(name: &str, manifest: &str, expected_dir: &Path) -> Vec<String> {
    let checked = dbward::check(&Source::new(name, manifest));
    let Some(model) = checked.model else {
        return vec![format!(
            "{name} does not compile:\n{}",
            dbward::diag::render(
                &Source::new(name, manifest),
                &checked.diagnostics,
                100,
                false
            )
        )];
    };
    let mut problems = Vec::new();
    let actual: BTreeMap<String, String> = match dbward::emit::emit_text(&model) {
        Ok(artifacts) => artifacts
            .into_iter()
            .map(|(path, a)| (path, String::from_utf8_lossy(&a.bytes).into_owned()))
            .collect(),
        Err(err) => return vec![format!("{name}: emit failed: {err}")],
    };
    problems.extend(properties(name, &actual));
    if !problems.is_empty() {
        return problems;
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        for path in read_tree(expected_dir).keys() {
            let _ = fs::remove_file(expected_dir.join(path));
        }
        for (path, text) in &actual {
            let target = expected_dir.join(path);
            fs::create_dir_all(target.parent().expect("has parent")).expect("mkdir golden");
            fs::write(&target, text).expect("write golden");
        }
        return vec![];
    }
    let expected = read_tree(expected_dir);
    for (path, text) in &actual {
        match expected.get(path) {
            None => problems.push(format!("{name}: {path} is new (not in the golden tree)")),
            Some(golden) if golden != text => {
                let diff = similar::TextDiff::from_lines(golden.as_str(), text.as_str());
                problems.push(format!(
                    "{name}: {path} differs from the golden file:\n{}",
                    diff.unified_diff().header("golden", "emitted")
                ));
            }
            Some(_) => {}
        }
    }
    for path in expected.keys().filter(|p| !actual.contains_key(*p)) {
        problems.push(format!(
            "{name}: {path} is in the golden tree but no longer emitted"
        ));
    }
    problems
}

/// What must hold whatever the golden text says: frozen.json loads and verifies as the relay
/// loads it, AWS policies name exact users (never a wildcard user), JSON files end in a newline.
fn properties(name: &str, actual: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, text) in actual {
        if path.ends_with(".json") && !text.ends_with("}\n") {
            problems.push(format!("{name}: {path} does not end with a newline"));
        }
        if path == "relay/frozen.json"
            && let Err(err) = dbward_frozen::Config::from_json(Path::new(path), text)
        {
            problems.push(format!("{name}: {path} does not load: {err}"));
        }
        if path.starts_with("iam/aws/") {
            let policy: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            let statements = policy["Statement"].as_array().cloned().unwrap_or_default();
            for statement in statements {
                if statement["Action"] == "rds-db:connect" {
                    for resource in statement["Resource"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                    {
                        let resource = resource.as_str().unwrap_or_default();
                        if resource.contains('*') || !resource.contains(":dbuser:") {
                            problems.push(format!("{name}: {path} grants connect on {resource}"));
                        }
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn every_example_and_case_matches_its_golden_files() {
    let root = workspace();
    let golden = root.join("tests/golden");
    let mut cases: Vec<(String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(root.join("examples"))
        .expect("examples/ exists")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "kdl") {
            let stem = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            cases.push((stem, path));
        }
    }
    for entry in fs::read_dir(&golden).into_iter().flatten().flatten() {
        let manifest = entry.path().join("manifest.kdl");
        if manifest.exists() {
            let name = entry.file_name().to_string_lossy().into_owned();
            cases.push((name, manifest));
        }
    }
    cases.sort();
    assert!(
        cases.len() >= 7,
        "expected every example plus the extra cases, found {cases:?}"
    );
    let mut problems = Vec::new();
    for (case, manifest) in &cases {
        let text = fs::read_to_string(manifest).expect("read manifest");
        problems.extend(check(case, &text, &golden.join(case)));
    }
    assert!(
        problems.is_empty(),
        "{}\n\nIf the change is intended, run `UPDATE_GOLDEN=1 cargo nextest run -p dbward-tests \
         -E 'test(/golden/)'` and review the diff.",
        problems.join("\n")
    );
}

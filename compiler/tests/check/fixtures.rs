//! The bad-manifest fixtures: `bad/<case>.kdl` holds the input with its expected diagnostics
//! marked under the line they point at (`// ^ dbward::code …`), and `bad/<case>.snap` the
//! rendered output. A fixture fails when a marked diagnostic is missing, when an unmarked one
//! appears, when the exit code is not 1 (or the `// exit: 0` the fixture declares), or when the
//! rendering changed.

use std::collections::BTreeSet;
use std::path::PathBuf;

use dbward::cli::check::{CheckArgs, Format, check_bytes};
use dbward::source::Source;

use crate::{data_dir, snapshot};

/// (line, code) pairs the fixture marks. A marker line is `// ^ code code…` and refers to the
/// closest line above it that is not itself a marker.
fn markers(text: &str) -> BTreeSet<(usize, String)> {
    let mut out = BTreeSet::new();
    let mut target = 0;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(codes) = trimmed.strip_prefix("// ^") {
            for code in codes.split_whitespace() {
                out.insert((target, code.to_string()));
            }
        } else {
            target = i + 1;
        }
    }
    out
}

fn expected_exit(text: &str) -> u8 {
    if text
        .lines()
        .any(|l| l.trim_start().starts_with("// exit: 0"))
    {
        0
    } else {
        1
    }
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(data_dir().join("bad"))
        .expect("tests/check/bad exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "kdl"))
        .collect();
    cases.sort();
    cases
}

/// Runs one fixture; returns every way it failed.
fn run(path: &PathBuf) -> Vec<String> {
    let mut failures = Vec::new();
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let name = format!("bad/{file}");
    let text = std::fs::read_to_string(path).unwrap_or_default();

    let checked = dbward::check(&Source::new(name.as_str(), text.as_str()));
    let found: BTreeSet<(usize, String)> = checked
        .diagnostics
        .iter()
        .map(|d| {
            let start = d.primary_span().map_or(0, |s| s.start);
            (
                dbward::diag::line_column(&text, start).0,
                d.code.to_string(),
            )
        })
        .collect();
    let wanted = markers(&text);
    for missing in wanted.difference(&found) {
        failures.push(format!(
            "{name}: expected {} on line {}",
            missing.1, missing.0
        ));
    }
    for extra in found.difference(&wanted) {
        failures.push(format!(
            "{name}: unexpected {} on line {}",
            extra.1, extra.0
        ));
    }

    let args = CheckArgs {
        file: path.clone(),
        deny_warnings: false,
        format: Format::Human,
    };
    let outcome = check_bytes(&name, text.clone().into_bytes(), &args, false);
    if outcome.code != expected_exit(&text) {
        failures.push(format!(
            "{name}: exit {} (expected {})",
            outcome.code,
            expected_exit(&text)
        ));
    }
    let rendered = format!(
        "{}{}exit: {}\n",
        outcome.stderr, outcome.stdout, outcome.code
    );
    if let Err(e) = snapshot(&path.with_extension("snap"), &rendered) {
        failures.push(e);
    }
    failures
}

#[test]
fn bad_manifests_report_what_is_marked() {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} fixtures", cases.len());
    let failures: Vec<String> = cases.iter().flat_map(run).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_rule_code_has_a_fixture() {
    // The codes the rules can emit, as written in their sources.
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model/rules");
    let mut codes = BTreeSet::new();
    for entry in std::fs::read_dir(rules).expect("rules dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).unwrap_or_default();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("\"dbward::") {
            let tail = &rest[at + 1..];
            let end = tail.find('"').unwrap_or(tail.len());
            codes.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    let mut marked = BTreeSet::new();
    for case in cases() {
        let text = std::fs::read_to_string(&case).unwrap_or_default();
        marked.extend(markers(&text).into_iter().map(|(_, c)| c));
    }
    let untested: Vec<&String> = codes.difference(&marked).collect();
    assert!(
        untested.is_empty(),
        "rule codes without a fixture: {untested:?}"
    );
}

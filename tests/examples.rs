//! The bundled manifests in examples/: each checks with no error and no warning, is already in
//! canonical form, and survives `dbward fmt` — from any messy layout — with the same model.
//! Also drives `dbward fmt` and `dbward explain` as a user would, through the real binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use dbward::source::Source;
use dbward_tests::workspace_bin;

/// Every manifest the README and issue promise.
const EXPECTED: &[&str] = &[
    "auto-provisioning.kdl",
    "azure.kdl",
    "cloud-sql.kdl",
    "full.kdl",
    "kubernetes.kdl",
    "quickstart.kdl",
    "rds.kdl",
    "self-hosted.kdl",
];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every `examples/*.kdl`, by file name.
fn examples() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(examples_dir()).expect("examples/ exists") {
        let path = entry.expect("readable directory entry").path();
        if path.extension().is_some_and(|e| e == "kdl") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("example is UTF-8");
            out.insert(name, text);
        }
    }
    out
}

fn model_of(name: &str, text: &str) -> dbward::model::Model {
    let source = Source::new(name, text);
    let checked = dbward::check(&source);
    assert!(
        checked.diagnostics.is_empty(),
        "{name} must check with no error and no warning:\n{}",
        dbward::diag::render(&source, &checked.diagnostics, 100, false)
    );
    checked
        .model
        .expect("a manifest without errors has a model")
}

/// The same manifest laid out badly: re-indented with tabs and odd widths, trailing blanks,
/// blank lines doubled, CRLF line ends. Canonical formatting must undo all of it.
fn messy(text: &str) -> String {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let body = line.trim_start();
        if body.is_empty() {
            out.push_str("  \r\n   \r\n");
            continue;
        }
        let indent = match i % 3 {
            0 => "\t".repeat(line.len() - body.len()),
            1 => " ".repeat((line.len() - body.len()) / 2),
            _ => " ".repeat(line.len() - body.len() + 3),
        };
        out.push_str(&indent);
        out.push_str(body);
        out.push_str(" \t\r\n");
    }
    out.push_str("\r\n\r\n");
    out
}

#[test]
fn every_promised_example_exists() {
    let found: Vec<String> = examples().into_keys().collect();
    for name in EXPECTED {
        assert!(
            found.iter().any(|f| f == name),
            "examples/{name} is missing"
        );
    }
}

#[test]
fn every_example_checks_with_no_diagnostics() {
    for (name, text) in examples() {
        let model = model_of(&name, &text);
        assert!(
            !model.access.is_empty(),
            "{name} should grant someone access"
        );
    }
}

#[test]
fn every_example_is_already_formatted() {
    for (name, text) in examples() {
        let formatted = dbward::fmt::format(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        if formatted != text {
            panic!(
                "{name} is not in canonical form; run `dbward fmt examples/{name}`:\n{}",
                similar::TextDiff::from_lines(&text, &formatted).unified_diff()
            );
        }
    }
}

#[test]
fn fmt_restores_messy_layouts_and_keeps_the_model() {
    for (name, text) in examples() {
        let messy = messy(&text);
        assert_ne!(messy, text);
        let formatted = dbward::fmt::format(&messy).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            formatted,
            text,
            "{name}: formatting the messy layout should give the example back:\n{}",
            similar::TextDiff::from_lines(&text, &formatted).unified_diff()
        );
        let again = dbward::fmt::format(&formatted).unwrap();
        assert_eq!(again, formatted, "{name}: fmt is not idempotent");
        assert_eq!(
            model_of(&name, &formatted),
            model_of(&name, &text),
            "{name}: formatting changed the model"
        );
        // The messy file means the same too: fmt changed layout only.
        assert_eq!(model_of(&name, &messy), model_of(&name, &text));
    }
}

fn dbward(args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("dbward"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run dbward")
}

#[test]
fn fmt_cli_checks_rewrites_and_refuses() {
    let examples = examples_dir();
    let paths: Vec<String> = EXPECTED
        .iter()
        .map(|n| examples.join(n).display().to_string())
        .collect();
    let mut args = vec!["fmt", "--check"];
    args.extend(paths.iter().map(String::as_str));
    let out = dbward(&args);
    assert!(
        out.status.success(),
        "examples are formatted: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let quickstart = std::fs::read_to_string(examples.join("quickstart.kdl")).unwrap();
    let file = dir.path().join("messy.kdl");
    let file_arg = file.display().to_string();
    std::fs::write(&file, messy(&quickstart)).unwrap();

    // --check: exit 1, the diff on stdout, the file untouched.
    let out = dbward(&["fmt", "--check", &file_arg]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("@@"), "a unified diff: {stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("would be reformatted"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), messy(&quickstart));

    // fmt: rewritten in place to the canonical text; a second run changes nothing.
    let out = dbward(&["fmt", &file_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), quickstart);
    assert!(dbward(&["fmt", "--check", &file_arg]).status.success());

    // Broken KDL: exit 1 with check's diagnostics, file untouched.
    let broken = "dbward version=1\nrelay {\n    listen \"127.0.0.1:6432\n}\n";
    std::fs::write(&file, broken).unwrap();
    let out = dbward(&["fmt", &file_arg]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dbward::kdl_syntax"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), broken);
}

#[test]
fn explain_cli_shows_the_quickstart_access() {
    let quickstart = examples_dir().join("quickstart.kdl").display().to_string();
    let out = dbward(&["explain", &quickstart]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("alice")).collect();
    assert_eq!(rows.len(), 2, "alice logs in as app and readonly:\n{table}");
    assert!(
        rows.iter()
            .all(|r| r.contains("shop") && r.contains("developer"))
    );
    assert!(rows.iter().any(|r| r.contains(" app ")));
    assert!(rows.iter().any(|r| r.contains(" readonly ")));

    let out = dbward(&["explain", &quickstart, "--json", "--database", "shop"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["format"], "dbward-explain/1");
    assert_eq!(
        json["access"][0]["db_users"],
        serde_json::json!(["app", "readonly"])
    );

    let out = dbward(&["explain", &quickstart, "--user", "alise"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `alice`?"));
}

#[test]
fn readme_shows_the_quickstart_verbatim() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md exists");
    let quickstart = std::fs::read_to_string(examples_dir().join("quickstart.kdl")).unwrap();
    assert!(
        readme.contains(&format!("```kdl\n{quickstart}```")),
        "README.md's quickstart block differs from examples/quickstart.kdl; copy the file into it"
    );
    for setup in [
        "cargo run -p dbward -- apply examples/quickstart.kdl --out out --auto-approve",
        "cargo nextest run --workspace",
    ] {
        assert!(
            readme.contains(setup),
            "README.md's set-up commands must include `{setup}`"
        );
    }
    assert!(
        readme.contains("(schemas/reference.md)"),
        "README links the language reference"
    );
}

/// Runs `dbward` in `dir` and returns stdout + stderr, as a terminal would show them.
fn dbward_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(workspace_bin("dbward"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run dbward");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn readme_tour_shows_real_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md exists");
    let quickstart = std::fs::read_to_string(examples_dir().join("quickstart.kdl")).unwrap();
    let typo = quickstart
        .replace("roles developer", "roles developr")
        .replace("client-cert-ttl \"12h\"", "client-cert-ttl \"12 hours\"");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quickstart-typo.kdl"), typo).unwrap();
    let shown = [
        dbward_in(&root, &["check", "examples/quickstart.kdl"]),
        dbward_in(dir.path(), &["check", "quickstart-typo.kdl"]),
        dbward_in(&root, &["explain", "examples/full.kdl", "--user", "bob"]),
        dbward_in(
            &root,
            &[
                "explain",
                "examples/self-hosted.kdl",
                "--database",
                "orders",
            ],
        ),
    ];
    for output in shown {
        assert!(
            readme.contains(output.trim()),
            "README.md's tour no longer shows the real output; replace its block with:\n{output}"
        );
    }
}

/// The README's first set-up command, as a newcomer runs it (with `out` in a temp dir): it
/// writes the quickstart's deployment, and running it again changes nothing.
#[test]
fn readme_main_command_applies_the_quickstart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let quickstart = examples_dir().join("quickstart.kdl");
    let args = [
        "apply",
        quickstart.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--auto-approve",
    ];
    let first = dbward_in(dir.path(), &args);
    assert!(first.contains("Apply complete"), "{first}");
    for file in [
        "relay/frozen.json",
        "databases/shop/pg_hba.conf",
        "databases/shop/setup.sql",
    ] {
        assert!(out.join(file).is_file(), "{file} missing after:\n{first}");
    }
    let second = dbward_in(dir.path(), &args);
    assert!(second.contains("No changes."), "{second}");
}

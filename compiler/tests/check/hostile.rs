//! Generated hostile input: what a careless editor, a wrong file or an attacker can feed
//! `dbward check`. Every case must end with a clear exit code in bounded time and memory —
//! never a panic, a stack overflow or a hang. The large cases run the real binary under a
//! deadline, so a hang fails the test instead of stalling the suite.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbward::cli::check::{CheckArgs, Format, check_bytes};
use dbward::source::Source;

use crate::{data_dir, snapshot};

const REFERENCE: &str = include_str!("../../src/model/testdata/reference.kdl");

fn args(format: Format) -> CheckArgs {
    CheckArgs {
        file: "m.kdl".into(),
        deny_warnings: false,
        format,
    }
}

fn human(name: &str, bytes: Vec<u8>) -> (u8, String) {
    let out = check_bytes(name, bytes, &args(Format::Human), false);
    (
        out.code,
        format!("{}{}exit: {}\n", out.stderr, out.stdout, out.code),
    )
}

fn json(bytes: Vec<u8>) -> serde_json::Value {
    let out = check_bytes("m.kdl", bytes, &args(Format::Json), false);
    serde_json::from_str(&out.stdout).expect("json output")
}

fn snap(case: &str, rendered: &str) {
    if let Err(e) = snapshot(
        &data_dir().join("hostile").join(format!("{case}.snap")),
        rendered,
    ) {
        panic!("{e}");
    }
}

/// Runs the real binary on `bytes` with a deadline; returns (exit code, stderr).
fn run_binary(bytes: &[u8], deadline: Duration) -> (Option<i32>, String) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write input");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dbward"))
        .arg("check")
        .arg(file.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dbward");
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut stderr = stderr;
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.code(), reader.join().unwrap_or_default());
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dbward check did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bom_is_accepted_and_changes_nothing() {
    let plain = dbward::check(&Source::new("m.kdl", REFERENCE));
    let with_bom = dbward::check(&Source::new("m.kdl", format!("\u{feff}{REFERENCE}")));
    assert!(
        with_bom.diagnostics.is_empty(),
        "{:#?}",
        with_bom.diagnostics
    );
    assert_eq!(plain.model, with_bom.model);
}

#[test]
fn bom_does_not_shift_columns() {
    let value = json(b"\xef\xbb\xbfdbward version=2\n".to_vec());
    let items = value.as_array().cloned().unwrap_or_default();
    let first = items
        .iter()
        .find(|d| d["code"] == "dbward::unknown_version")
        .expect("unknown_version reported");
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(1), Some(16))
    );
}

#[test]
fn crlf_is_valid_and_lines_are_right() {
    let crlf = REFERENCE.replace('\n', "\r\n");
    let checked = dbward::check(&Source::new("m.kdl", crlf.as_str()));
    assert!(checked.diagnostics.is_empty(), "{:#?}", checked.diagnostics);
    assert_eq!(
        checked.model,
        dbward::check(&Source::new("m.kdl", REFERENCE)).model
    );
    let broken = crlf.replace("client-cert-ttl \"12h\"", "client-cert-ttl \"12 hours\"");
    let value = json(broken.into_bytes());
    let line = REFERENCE
        .lines()
        .position(|l| l.contains("client-cert-ttl"))
        .unwrap_or(0)
        + 1;
    assert_eq!(value[0]["code"], "dbward::invalid_duration");
    assert_eq!(value[0]["line"].as_u64(), Some(line as u64));
    let (code, rendered) = human("crlf.kdl", b"dbward version=1\r\nrelay {\r\n    listen \"6432\"\r\n    public-name \"db.example.com\"\r\n}\r\n".to_vec());
    assert_eq!(code, 1);
    snap("crlf-error", &rendered);
}

#[test]
fn not_utf8_is_one_clear_error() {
    let mut bytes =
        b"dbward version=1\nrelay {\n    listen \"0.0.0.0:6432\"\n    public-name \"db".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0x80]);
    bytes.extend_from_slice(b".example.com\"\n}\n");
    let (code, rendered) = human("latin1.kdl", bytes);
    assert_eq!(code, 1);
    snap("not-utf8", &rendered);
}

#[test]
fn empty_files_say_how_to_start() {
    for (case, text) in [
        ("empty", ""),
        ("only-whitespace", " \n\t\n"),
        ("only-comments", "// nothing yet\n/* still nothing */\n"),
    ] {
        let (code, rendered) = human(&format!("{case}.kdl"), text.as_bytes().to_vec());
        assert_eq!(code, 1, "{case}");
        assert!(
            rendered.contains("dbward::empty_manifest"),
            "{case}: {rendered}"
        );
    }
    let (_, rendered) = human("empty.kdl", Vec::new());
    snap("empty", &rendered);
}

#[test]
fn nul_bytes_and_control_characters() {
    let (code, rendered) = human("nul.kdl", b"dbward version=1\n\0\0\0relay {\n}\n".to_vec());
    assert_eq!(code, 1);
    assert!(
        !rendered.contains('\0'),
        "the NUL bytes are not echoed raw: {rendered:?}"
    );
}

#[test]
fn ten_thousand_levels_of_nesting() {
    for (case, text) in [
        ("deep-blocks", "a {".repeat(10_000)),
        (
            "deep-closed-blocks",
            format!("{}{}", "a {\n".repeat(10_000), "}\n".repeat(10_000)),
        ),
        ("deep-comments", "/*".repeat(10_000)),
        ("deep-slashdash", format!("{}a\n", "/-".repeat(10_000))),
        // An unterminated string or comment before the braces: the parser recovers from the
        // error and would still descend into them.
        (
            "deep-after-multiline-string",
            format!("a \"\"\"\n{}", "a {\n".repeat(10_000)),
        ),
        (
            "deep-after-raw-string",
            format!("a #\"\n{}", "a {\n".repeat(10_000)),
        ),
        (
            "deep-after-comment",
            format!("a /*\n{}", "a {\n".repeat(10_000)),
        ),
    ] {
        let (code, stderr) = run_binary(text.as_bytes(), Duration::from_secs(60));
        assert_eq!(code, Some(1), "{case}: {stderr}");
        assert!(stderr.contains("dbward::"), "{case}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("overflow"),
            "{case}: {stderr}"
        );
    }
    let (_, rendered) = human("deep.kdl", "a {".repeat(10_000).into_bytes());
    snap("deep-blocks", &rendered);
}

/// Deterministic junk: a linear congruential generator over characters that KDL cares about.
fn junk(len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b" \n\t{}\"=#/-;\\()abcxyz0123456789.,*r'";
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ALPHABET[(state >> 33) as usize % ALPHABET.len()]
        })
        .collect()
}

#[test]
fn ten_megabytes_of_junk() {
    let bytes = junk(10 * 1024 * 1024);
    let (code, stderr) = run_binary(&bytes, Duration::from_secs(120));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.len() < 64 * 1024,
        "output stays short: {} bytes",
        stderr.len()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // One long line of junk, too: the snippet must be cut, not printed whole.
    let mut line = junk(1024 * 1024);
    line.retain(|&b| b != b'\n');
    let (code, stderr) = run_binary(&line, Duration::from_secs(120));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.len() < 64 * 1024,
        "output stays short: {} bytes",
        stderr.len()
    );
    let (_, rendered) = human("junk.kdl", junk(64 * 1024));
    snap("junk", &rendered);
}

#[test]
fn mutated_reference_manifests_never_panic() {
    // Random edits of a valid manifest: every result is a model or errors, never a panic, and
    // the model exists exactly when there is no error.
    const PIECES: &[&str] = &[
        "",
        "{",
        "}",
        "\"",
        "=",
        ";",
        "#",
        "\n",
        "*",
        "é",
        "\u{0}",
        "/*",
        "//",
        "/-",
        "(t)",
        "r\"x\"",
        "true",
        "#true",
        "-1",
        "99999999999999999999999999999999999999999",
        "\\",
        "databases",
        "db-users",
        "allow",
        "deny",
        "roles",
        "provision keep",
        "x\"y",
    ];
    let mut state: u64 = 99;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % n.max(1)
    };
    for round in 0..400 {
        let mut text = REFERENCE.to_string();
        for _ in 0..1 + next(3) {
            let at = next(text.len());
            let len = next(12);
            let (mut a, mut b) = (at, (at + len).min(text.len()));
            while !text.is_char_boundary(a) {
                a -= 1;
            }
            while !text.is_char_boundary(b) {
                b += 1;
            }
            text.replace_range(a..b, PIECES[next(PIECES.len())]);
        }
        let result =
            std::panic::catch_unwind(|| dbward::check(&Source::new("m.kdl", text.as_str())));
        let checked = result.unwrap_or_else(|_| panic!("round {round} panicked on:\n{text}"));
        assert_eq!(
            checked.model.is_some(),
            !checked.has_errors(),
            "round {round}:\n{text}"
        );
        // Rendering never panics either, and every diagnostic has its code and help.
        let _ = dbward::diag::render(
            &Source::new("m.kdl", text.as_str()),
            &checked.diagnostics,
            100,
            false,
        );
        for d in &checked.diagnostics {
            assert!(d.code.starts_with("dbward::") && d.help.is_some(), "{d:?}");
        }
    }
}

//! The README's walkthrough ("From a clone to `select 1` through the relay"), run exactly as
//! written, on a Debian PostgreSQL cluster `15/main` of its own.
//!
//! The commands are read from the README's `console` block, run one after the other in one
//! `bash` (so `&` and the working directory carry over, as in a terminal), and every output
//! line the README shows must appear, in order (`…` alone stands for any lines, `…` inside a
//! line for any text). Nothing on this machine is touched: the test runs in new PID, mount and
//! network namespaces (`unshare`), with tmpfs over `/etc/postgresql`, `/var/lib/postgresql`,
//! `/var/log/postgresql` and `/run/postgresql`, and its own loopback, so ports 5432 and 6432
//! are its own and every process it started dies with it. It needs root (for the namespaces,
//! `sudo` and `install.sh`), Debian's `postgresql-common` (`pg_createcluster`) and
//! PostgreSQL 15, the version the quickstart names; it fails saying so when one is missing.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use dbward_tests::workspace_bin;

const HEADING: &str = "## From a clone to `select 1` through the relay";
const MARK: &str = "@@dbward-walkthrough-step";

/// One command of the walkthrough and the output the README shows for it.
struct Step {
    command: String,
    shown: Vec<String>,
}

fn steps(readme: &str) -> Vec<Step> {
    let section = readme
        .split_once(HEADING)
        .unwrap_or_else(|| panic!("README.md has no section {HEADING:?}"))
        .1;
    let block = section
        .split_once("```console\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("the walkthrough section has a ```console block")
        .0;
    let mut steps: Vec<Step> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => steps.push(Step {
                command: command.to_owned(),
                shown: Vec::new(),
            }),
            None => steps
                .last_mut()
                .expect("the block starts with a command")
                .shown
                .push(line.trim_end().to_owned()),
        }
    }
    steps
}

/// Whether `line` matches `pattern`, where each `…` in the pattern stands for any text.
fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let Some(mut rest) = line.strip_prefix(parts[0]) else {
        return false;
    };
    for (i, part) in parts.iter().enumerate().skip(1) {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `actual` shows what the README shows: lines in order, consecutive unless a `…`
/// line allows any lines in between.
fn output_matches(shown: &[String], actual: &[&str]) -> bool {
    fn go(shown: &[String], actual: &[&str]) -> bool {
        match shown.split_first() {
            None => actual.is_empty(),
            Some((first, rest)) if first == "…" => {
                (0..=actual.len()).any(|skip| go(rest, &actual[skip..]))
            }
            Some((first, rest)) => {
                !actual.is_empty() && line_matches(first, actual[0]) && go(rest, &actual[1..])
            }
        }
    }
    go(shown, actual)
}

fn require(ok: bool, what: &str) {
    assert!(ok, "the walkthrough test needs {what}");
}

#[test]
fn the_readme_walkthrough_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let steps = steps(&readme);
    assert!(
        steps.len() >= 4,
        "the walkthrough has {} commands",
        steps.len()
    );

    require(
        nix_is_root(),
        "root: it starts PostgreSQL's Debian cluster in namespaces of its own (run the suite as \
         root, as CI does)",
    );
    require(
        Path::new("/usr/lib/postgresql/15/bin/postgres").exists(),
        "PostgreSQL 15, the version examples/quickstart.kdl names: apt-get install -y \
         postgresql-15",
    );
    for tool in ["pg_createcluster", "pg_ctlcluster", "unshare", "ip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        require(
            found,
            &format!(
                "`{tool}`: apt-get install -y postgresql-common util-linux iproute2 (Debian's \
                 PostgreSQL packaging, as a reader of the README has it)"
            ),
        );
    }

    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();
    std::fs::create_dir_all(dir.join("examples")).unwrap();
    std::fs::copy(
        root.join("examples/quickstart.kdl"),
        dir.join("examples/quickstart.kdl"),
    )
    .unwrap();
    // The README's binaries are `cargo build --release`'s; the test's are this build's, on
    // PATH the same way. `sudo` is a pass-through when the machine has none (we are root).
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["dbward", "dbward-relay"] {
        std::os::unix::fs::symlink(workspace_bin(name), bin.join(name)).unwrap();
    }
    let has_sudo = Command::new("sh")
        .args(["-c", "command -v sudo"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sudo {
        std::fs::write(bin.join("sudo"), "#!/bin/sh\nexec \"$@\"\n").unwrap();
        Command::new("chmod")
            .args(["755", bin.join("sudo").to_str().unwrap()])
            .status()
            .unwrap();
    }

    let mut script = String::from(
        "set -eu\n\
         ip link set lo up\n\
         for d in /etc/postgresql /var/lib/postgresql /var/log/postgresql /run/postgresql; do\n\
         \x20 mkdir -p \"$d\"; mount -t tmpfs tmpfs \"$d\"\n\
         done\n\
         chown postgres:postgres /var/lib/postgresql /var/log/postgresql /run/postgresql\n\
         chmod 2775 /run/postgresql\n\
         pg_createcluster 15 main --port 5432 >/dev/null\n\
         pg_ctlcluster 15 main start\n",
    );
    let _ = writeln!(
        script,
        "export PATH={}:\"$PATH\"\ncd {}\nset +e\nexec 2>&1",
        bin.display(),
        dir.display()
    );
    for (i, step) in steps.iter().enumerate() {
        let _ = writeln!(script, "echo '{MARK} {i}'\n{}", step.command);
        if step.command.ends_with('&') {
            // A person types the next command after the relay has started; wait as long.
            let _ = writeln!(
                script,
                "for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/6432) 2>/dev/null && break; \
                 sleep 0.1; done"
            );
        } else {
            let _ = writeln!(script, "echo \"{MARK} status $?\"");
        }
    }
    let _ = writeln!(script, "echo '--- relay.log'; cat relay.log 2>/dev/null");
    let output = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--net", "bash", "-c"])
        .arg(&script)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let everything = format!("{stdout}\n--- stderr\n{stderr}");

    // Outputs per step: what follows its marker, up to the next.
    let mut outputs: Vec<Vec<&str>> = vec![Vec::new(); steps.len()];
    let mut statuses: Vec<Option<i32>> = vec![None; steps.len()];
    let mut current = None;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix(MARK) {
            let rest = rest.trim();
            if let Some(status) = rest.strip_prefix("status ") {
                if let Some(i) = current {
                    statuses[i] = status.parse().ok();
                }
            } else {
                current = rest.parse::<usize>().ok();
            }
            continue;
        }
        if line.starts_with("--- relay.log") {
            current = None;
        }
        if let Some(i) = current {
            outputs[i].push(line.trim_end());
        }
    }
    for output in &mut outputs {
        // A blank line that ends an output (psql's, after "(1 row)") is not shown.
        while output.last() == Some(&"") {
            output.pop();
        }
    }
    for (i, step) in steps.iter().enumerate() {
        if !step.command.ends_with('&') {
            assert_eq!(
                statuses[i],
                Some(0),
                "`{}` failed; everything it printed:\n{everything}",
                step.command
            );
        }
        assert!(
            output_matches(&step.shown, &outputs[i]),
            "`{}` printed\n{}\nbut the README shows\n{}\n\neverything:\n{everything}",
            step.command,
            outputs[i].join("\n"),
            step.shown.join("\n")
        );
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn the_output_matcher_means_what_it_says() {
    let shown = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    assert!(output_matches(
        &shown(&["a", "…", "c"]),
        &["a", "b", "b", "c"]
    ));
    assert!(!output_matches(&shown(&["a", "c"]), &["a", "b", "c"]));
    assert!(!output_matches(&shown(&["a"]), &["a", "b"]));
    assert!(output_matches(&shown(&["in …/out."]), &["in /tmp/x/out."]));
    assert!(!output_matches(&shown(&["in …/out."]), &["in /tmp/x/out!"]));
    assert!(output_matches(&shown(&["x … y … z"]), &["x 1 y 2 z"]));
}

//! No document or generated file names a command that is not there: every `dbward <sub> --flag`
//! and `dbward-relay --flag` written in the README, ARCHITECTURE.md, schemas/*.md, examples/,
//! deploy/ (the systemd unit's `ExecStart`, deploy/README.md) and the golden trees is checked
//! against the real command lines — `dbward`'s clap command tree, walked in-process, and the
//! flags `dbward-relay --help` lists.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory as _;
use dbward_tests::workspace_bin;

/// One command of a command line: its long flags and its subcommands.
#[derive(Debug, Default)]
struct Tree {
    flags: Vec<String>,
    subcommands: BTreeMap<String, Tree>,
}

impl Tree {
    /// The tree of a clap command (every command also takes `--help`, and `dbward`
    /// propagates `--version` to its subcommands).
    fn of(command: &clap::Command) -> Tree {
        let mut flags: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        flags.extend(["help".to_string(), "version".to_string()]);
        Tree {
            flags,
            subcommands: command
                .get_subcommands()
                .map(|s| (s.get_name().to_string(), Tree::of(s)))
                .collect(),
        }
    }

    /// The tree of a binary without subcommands, from the `--long` flags its `--help` lists.
    fn from_help(binary: &Path) -> Tree {
        let out = Command::new(binary)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("run {} --help: {e}", binary.display()));
        assert!(out.status.success(), "{} --help failed", binary.display());
        let help = String::from_utf8_lossy(&out.stdout);
        let mut flags: Vec<String> = help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .filter_map(|word| word.strip_prefix("--"))
            .map(|f| {
                f.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                    .to_string()
            })
            .filter(|f| !f.is_empty())
            .collect();
        flags.sort();
        flags.dedup();
        Tree {
            flags,
            subcommands: BTreeMap::new(),
        }
    }
}

/// Whether `word` has the shape of a subcommand name (so `dbward version=1`, the manifest's
/// first node, is not taken for one).
fn looks_like_subcommand(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_lowercase())
        && word.chars().all(|c| c.is_ascii_lowercase() || c == '-')
}

/// Checks one mention: `rest` is what follows `<binary> ` up to the end of the command.
/// `code` says whether the mention is code (in backticks or a code block), where an unknown
/// subcommand is an error; in prose, `dbward gives people…` is a sentence, not a command.
fn check_mention(tree: &Tree, binary: &str, rest: &str, code: bool) -> Result<(), String> {
    let mut tokens = rest.split_whitespace().peekable();
    let mut node = tree;
    let mut path = binary.to_string();
    // Subcommands first (`dbward cert issue`).
    while !node.subcommands.is_empty() {
        let Some(&word) = tokens.peek() else { break };
        let bare = word.trim_end_matches(['.', ',', ':', ';']);
        if let Some(sub) = node.subcommands.get(bare) {
            path = format!("{path} {bare}");
            node = sub;
            tokens.next();
        } else if looks_like_subcommand(bare) && code {
            return Err(format!(
                "`{path} {bare}` is not a command (the subcommands are: {})",
                node.subcommands
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        } else if word.starts_with("--") || path != binary {
            break;
        } else {
            // Prose, or a path or value after the binary name: not a command line.
            return Ok(());
        }
    }
    for word in tokens {
        if let Some(flag) = word.strip_prefix("--") {
            let name = flag
                .split('=')
                .next()
                .unwrap_or_default()
                .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
            if !name.is_empty() && !node.flags.iter().any(|f| f == name) {
                return Err(format!(
                    "`{path}` has no flag `--{name}` (it has: {})",
                    node.flags
                        .iter()
                        .map(|f| format!("--{f}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        // The end of a sentence ends the command.
        if word.ends_with(['.', ',', ':']) && !word.starts_with("--") {
            break;
        }
    }
    Ok(())
}

/// Every problem of one file's mentions, as `path:line: problem`.
///
/// A mention is code — where an unknown subcommand is an error — when `dbward` starts a
/// command: at the start of an inline code span, or of a line of a shell code block (or of a
/// `$ ` line of a console or text block), after an optional `$ ` or directory. Elsewhere
/// (prose, JSON strings, `the dbward relay` inside a message) only a known subcommand's flags
/// are checked. `cargo run -p dbward -- <sub>` is a command too.
fn check_text(trees: &[(&str, &Tree)], path: &Path, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let markdown = path.extension().is_some_and(|e| e == "md");
    // The info string of the code block we are in, if any.
    let mut fence: Option<String> = None;
    // Shell line continuations join a command written over several lines.
    let mut joined: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match joined.last_mut() {
            Some((_, last)) if last.ends_with('\\') => {
                last.pop();
                last.push(' ');
                last.push_str(line.trim_start());
            }
            _ => joined.push((i + 1, line.to_string())),
        }
    }
    for (number, line) in joined {
        if markdown && let Some(info) = line.trim_start().strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(info.trim().to_string()),
            };
            continue;
        }
        let shell_line = match fence.as_deref() {
            Some("" | "sh" | "bash" | "shell") => true,
            Some(_) => line.trim_start().starts_with("$ "),
            None => false,
        };
        for (at, _) in line.match_indices("dbward") {
            let before = line[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c)) {
                continue;
            }
            let after = &line[at + "dbward".len()..];
            // `dbward-relay` or `dbward`, followed by a space.
            let (binary, mut rest) = match after.strip_prefix("-relay ") {
                Some(rest) => ("dbward-relay", rest),
                None => match after.strip_prefix(' ') {
                    Some(rest) => ("dbward", rest),
                    None => continue,
                },
            };
            let Some((_, tree)) = trees.iter().find(|(name, _)| *name == binary) else {
                continue;
            };
            let in_backticks = line[..at].matches('`').count() % 2 == 1;
            let span_start = if in_backticks {
                line[..at].rfind('`').map_or(0, |i| i + 1)
            } else {
                0
            };
            let prefix = line[span_start..at].trim();
            let prefix = prefix.strip_prefix('$').unwrap_or(prefix).trim();
            let mut starts_command =
                prefix.is_empty() || (prefix.ends_with('/') && !prefix.contains(' '));
            // `cargo run -p dbward -- apply …` runs dbward; `cargo bench -p dbward …` does not.
            if prefix.ends_with("-p") || prefix.ends_with("--package") {
                match rest.strip_prefix("-- ") {
                    Some(args) => {
                        rest = args;
                        starts_command = true;
                    }
                    None => continue,
                }
            }
            let code = starts_command && (in_backticks || shell_line);
            // The command ends where the code span or the shell command ends.
            let end = rest
                .find(['`', '|', ';', '&', ')', '#'])
                .unwrap_or(rest.len());
            if let Err(problem) = check_mention(tree, binary, &rest[..end], code) {
                problems.push(format!("{}:{number}: {problem}", path.display()));
            }
        }
    }
    problems
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The documents and generated files that must name only real commands.
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for entry in fs::read_dir(root.join("schemas"))
        .expect("schemas/")
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "md") {
            files.push(entry.path());
        }
    }
    files_under(&root.join("examples"), &mut files);
    files_under(&root.join("deploy"), &mut files);
    files_under(&root.join("tests/golden"), &mut files);
    files.sort();
    files
}

fn trees() -> (Tree, Tree) {
    // Built, so that global flags (`--no-color`) are listed on every subcommand too.
    let mut dbward = dbward::cli::Cli::command();
    dbward.build();
    (
        Tree::of(&dbward),
        Tree::from_help(&workspace_bin("dbward-relay")),
    )
}

#[test]
fn documents_name_only_commands_that_exist() {
    let (dbward, relay) = trees();
    let trees = [("dbward", &dbward), ("dbward-relay", &relay)];
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in documents() {
        // Binary files (certificates in DER, if any) cannot name a command.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        checked += 1;
        let relative = path.strip_prefix(root()).unwrap_or(&path).to_path_buf();
        problems.extend(check_text(&trees, &relative, &text));
    }
    assert!(checked > 50, "only {checked} documents found");
    assert!(
        problems.is_empty(),
        "documents name commands or flags that do not exist; fix the text (or add the \
         command):\n{}",
        problems.join("\n")
    );
}

/// The checker itself: it finds what it must, and leaves prose and KDL alone.
#[test]
fn the_command_checker_finds_missing_subcommands_and_flags() {
    let (dbward, relay) = trees();
    let trees = [("dbward", &dbward), ("dbward-relay", &relay)];
    let md = Path::new("x.md");
    let sql = Path::new("setup.sql");
    let bad = |path: &Path, text: &str| check_text(&trees, path, text);
    for (path, text) in [
        (
            sql,
            "  -- The admin user: runs `dbward apply --drift-only` and more.\n",
        ),
        (md, "Run `dbward apply --drift-only`.\n"),
        (md, "Run dbward apply --drift-only to converge.\n"),
        (md, "```sh\ndbward plan m.kdl --out out \\\n  --nope\n```\n"),
        (md, "`dbward converge m.kdl`\n"),
        (md, "`dbward cert revoke --user x`\n"),
        (
            md,
            "`dbward cert issue m.kdl --out o --user a --dest d --days 3`\n",
        ),
        (md, "`dbward-relay --config x --reload`\n"),
        (
            md,
            "```\n$ target/release/dbward explain m.kdl --bogus\n```\n",
        ),
    ] {
        assert_eq!(bad(path, text).len(), 1, "{text:?}: {:?}", bad(path, text));
    }
    for (path, text) in [
        (
            md,
            "dbward gives people safe access; `dbward::unknown_role` is a code.\n",
        ),
        (md, "```kdl\ndbward version=1\n```\n"),
        (
            md,
            "`dbward apply m.kdl --out out --auto-approve`, then `dbward plan --out out -o p`\n",
        ),
        (
            md,
            "`dbward cert issue m.kdl --out o --user a --ttl 8h --dest d`\n",
        ),
        (
            md,
            "`dbward-relay --config out/relay/frozen.json --check`\n",
        ),
        (md, "`dbward --version` and `dbward check --help`\n"),
        (Path::new("m.kdl"), "dbward version=1\n"),
        (
            md,
            "```text\n$ dbward plan m.kdl --out out\ndbward will make these changes:\n```\n",
        ),
        (md, "`too many connections to the dbward relay`\n"),
        (md, "```sh\ncargo bench -p dbward --bench check\n```\n"),
        (
            Path::new("pg_hba.conf"),
            "# map=dbward lets its certificate in\n",
        ),
        (
            Path::new("role.json"),
            "  \"role\": \"dbward relay (azure-prod)\",\n",
        ),
    ] {
        assert!(
            bad(path, text).is_empty(),
            "{text:?}: {:?}",
            bad(path, text)
        );
    }
}

/// The help an operator reads first says what the signals do, and when apply refuses to run.
#[test]
fn help_explains_signals_confirmation_and_colour() {
    let help = |binary: &str, args: &[&str]| {
        let out = Command::new(workspace_bin(binary))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {binary} {args:?}: {e}"));
        assert!(out.status.success(), "{binary} {args:?} failed");
        // Help wraps at the terminal width; compare words, not lines.
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let relay = help("dbward-relay", &["--help"]);
    for expected in [
        "SIGHUP Reload the config",
        "SIGTERM, SIGINT Drain:",
        "second SIGTERM (or SIGINT) while draining: exit at once with status 1",
        "NO_COLOR",
    ] {
        assert!(
            relay.contains(expected),
            "dbward-relay --help lacks {expected:?}:\n{relay}"
        );
    }
    let apply = help("dbward", &["apply", "--help"]);
    assert!(
        apply.contains("refuses to run when stdin is not a terminal")
            && apply.contains("--auto-approve"),
        "dbward apply --help:\n{apply}"
    );
    for args in [
        &["--help"][..],
        &["plan", "--help"][..],
        &["check", "--help"][..],
    ] {
        let text = help("dbward", args);
        assert!(text.contains("--no-color"), "dbward {args:?}:\n{text}");
    }
}

/// `--no-color` is accepted before or after the subcommand, and diagnostics stay plain.
#[test]
fn no_color_is_a_global_flag_and_output_stays_plain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = dir.path().join("bad.kdl");
    fs::write(&manifest, "version 1\nnot-a-node\n").expect("write manifest");
    for args in [vec!["--no-color", "check"], vec!["check", "--no-color"]] {
        let out = Command::new(workspace_bin("dbward"))
            .args(&args)
            .arg(&manifest)
            .env_remove("NO_COLOR")
            .output()
            .expect("run dbward check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?}: a diagnostic is shown");
        assert!(
            !out.stderr.contains(&0x1b),
            "{args:?}: escape codes:\n{stderr:?}"
        );
    }
    // On a real terminal (util-linux `script`): coloured by default, plain with `--no-color`.
    let on_a_terminal = |flags: &str| {
        let out = Command::new("script")
            .args(["-q", "-e", "-c"])
            .arg(format!(
                "{} {flags} check {}",
                workspace_bin("dbward").display(),
                manifest.display()
            ))
            .arg("/dev/null")
            .env_remove("NO_COLOR")
            .stdin(std::process::Stdio::null())
            .output()
            .expect(
                "`script` (util-linux, package bsdutils on Debian) runs commands on a terminal",
            );
        out.stdout
    };
    let coloured = on_a_terminal("");
    assert!(
        coloured.contains(&0x1b),
        "a terminal gets colour: {:?}",
        String::from_utf8_lossy(&coloured)
    );
    let plain = on_a_terminal("--no-color");
    assert!(
        !plain.contains(&0x1b) && plain.len() > 20,
        "--no-color on a terminal: {:?}",
        String::from_utf8_lossy(&plain)
    );
}

//! examples/ci/dbward.yml works: every `run:` of the workflow, extracted from the YAML and run
//! as GitHub's runner runs it (`bash --noprofile --norc -eo pipefail`), in a clone of a real git
//! repository with a base branch and a pull-request branch, against a deployment `dbward apply`
//! made from the base branch.
//!
//! Only two things differ from GitHub: the step "Install dbward" is not run (the binaries under
//! test are first on `PATH`), and `gh` is a recorder that keeps the comment it was asked to
//! post. `${{ … }}` expressions are replaced by the values GitHub would give.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use dbward_tests::workspace_bin;

use crate::diff::{after, before};

/// One step of a job: its name (or `uses`), `run` script and `env`.
#[derive(Debug, Default, Clone)]
struct Step {
    name: String,
    run: Option<String>,
    env: BTreeMap<String, String>,
}

/// One job: its `env` and steps.
#[derive(Debug, Default)]
struct Job {
    env: BTreeMap<String, String>,
    steps: Vec<Step>,
}

/// The workflow: its top-level `env` and jobs, in order.
#[derive(Debug, Default)]
struct Workflow {
    env: BTreeMap<String, String>,
    jobs: Vec<(String, Job)>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_string()
}

/// Reads the block-style YAML subset GitHub workflows are written in (what this workflow
/// uses): maps by indentation, `- ` step lists, `key: value` and `key: |` block scalars.
fn parse(yaml: &str) -> Workflow {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut wf = Workflow::default();
    let mut i = 0;
    // Where the `env:` being read belongs: 0 the workflow, 1 the job, 2 the step.
    let mut env_level: Option<(usize, usize)> = None;
    let mut in_jobs = false;
    while i < lines.len() {
        let raw = lines[i];
        let line = raw.trim_end();
        let text = line.trim_start();
        i += 1;
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let depth = indent(line);
        if let Some((level, at)) = env_level {
            if depth > at {
                let (key, value) = text.split_once(':').expect("env entry is key: value");
                let value = unquote(value);
                let key = key.trim().to_string();
                match level {
                    0 => wf.env.insert(key, value),
                    1 => wf.jobs.last_mut().expect("job").1.env.insert(key, value),
                    _ => {
                        let job = &mut wf.jobs.last_mut().expect("job").1;
                        job.steps.last_mut().expect("step").env.insert(key, value)
                    }
                };
                continue;
            }
            env_level = None;
        }
        if depth == 0 {
            in_jobs = text == "jobs:";
            if text == "env:" {
                env_level = Some((0, 0));
            }
            continue;
        }
        if !in_jobs {
            continue;
        }
        if depth == 2 {
            let name = text.trim_end_matches(':').to_string();
            wf.jobs.push((name, Job::default()));
            continue;
        }
        let job = &mut wf.jobs.last_mut().expect("a job").1;
        if depth == 4 && text == "env:" {
            env_level = Some((1, 4));
            continue;
        }
        // A step starts with `- `; its first key sits on the same line.
        let (text, depth) = match text.strip_prefix("- ") {
            Some(rest) if depth == 6 => {
                job.steps.push(Step::default());
                (rest, 8)
            }
            _ => (text, depth),
        };
        if depth != 8 {
            continue;
        }
        let Some(step) = job.steps.last_mut() else {
            continue;
        };
        let (key, value) = text.split_once(':').unwrap_or((text, ""));
        match key {
            "name" => step.name = unquote(value),
            "uses" if step.name.is_empty() => step.name = unquote(value),
            "env" => env_level = Some((2, 8)),
            "run" if value.trim() == "|" => {
                let mut script = String::new();
                while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > 8) {
                    script.push_str(lines[i].get(10..).unwrap_or(""));
                    script.push('\n');
                    i += 1;
                }
                step.run = Some(script);
            }
            "run" => step.run = Some(format!("{}\n", value.trim())),
            _ => {}
        }
    }
    wf
}

/// `${{ … }}` replaced by what GitHub gives a pull request from `feature` into `main`.
fn expand(value: &str) -> String {
    let known = [
        ("${{ github.base_ref }}", "main"),
        ("${{ github.token }}", "test-token"),
        ("${{ github.event.pull_request.number }}", "7"),
    ];
    let mut out = value.to_string();
    for (expr, with) in known {
        out = out.replace(expr, with);
    }
    assert!(
        !out.contains("${{"),
        "an expression the test does not know: {out}"
    );
    out
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs (install git)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The runner: a clone of the pull-request branch, `PATH` with the binaries under test and the
/// `gh` recorder, and the files GitHub provides.
struct Runner {
    _root: tempfile::TempDir,
    clone: PathBuf,
    bin: PathBuf,
    output: PathBuf,
    deployed: PathBuf,
    workflow: Workflow,
}

impl Runner {
    fn new() -> Runner {
        let root = tempfile::tempdir().expect("tempdir");
        let base = root.path();
        // origin: main holds the manifest under review's base, feature the change.
        let work = base.join("work");
        fs::create_dir_all(work.join("dbward")).expect("mkdir");
        git(base, &["init", "-q", "--bare", "-b", "main", "origin.git"]);
        git(base, &["init", "-q", "-b", "main", "work"]);
        fs::write(work.join("dbward/manifest.kdl"), before()).expect("write");
        git(&work, &["add", "."]);
        git(&work, &["commit", "-qm", "base"]);
        git(&work, &["remote", "add", "origin", "../origin.git"]);
        git(&work, &["push", "-q", "origin", "main"]);
        git(&work, &["checkout", "-qb", "feature"]);
        fs::write(work.join("dbward/manifest.kdl"), after()).expect("write");
        git(&work, &["commit", "-qam", "bob leaves, dave joins"]);
        git(&work, &["push", "-q", "origin", "feature"]);
        // What actions/checkout leaves: a shallow clone of the branch.
        let origin = format!("file://{}", base.join("origin.git").display());
        git(
            base,
            &[
                "clone",
                "-q",
                "--depth=1",
                "-b",
                "feature",
                &origin,
                "runner",
            ],
        );
        // The deployment: `dbward apply` of the base branch's manifest.
        let deployed = base.join("deployed");
        let manifest = base.join("base.kdl");
        fs::write(&manifest, before()).expect("write");
        let out = Command::new(workspace_bin("dbward"))
            .args(["apply", &manifest.display().to_string(), "--out"])
            .arg(&deployed)
            .arg("--auto-approve")
            .stdin(Stdio::null())
            .output()
            .expect("apply");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `gh`: records each call and the body it was given; `--edit-last` finds no earlier
        // comment (a first push), as the real one does then.
        let bin = base.join("bin");
        fs::create_dir_all(&bin).expect("mkdir");
        let gh = bin.join("gh");
        fs::write(
            &gh,
            "#!/bin/sh\n\
             [ \"$GH_TOKEN\" = test-token ] || { echo 'gh: no GH_TOKEN' >&2; exit 4; }\n\
             echo \"$*\" >> \"$GH_RECORD/calls\"\n\
             case \" $* \" in *' --edit-last '*) echo 'no comments found for current user' >&2; exit 1;; esac\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --body-file ] && cp \"$2\" \"$GH_RECORD/body.md\"; shift; done\n",
        )
        .expect("write gh");
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&gh, fs::Permissions::from_mode(0o755)).expect("chmod");
        let yaml_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci/dbward.yml");
        let yaml = fs::read_to_string(&yaml_path).expect("examples/ci/dbward.yml");
        Runner {
            clone: base.join("runner"),
            output: base.join("github_output"),
            bin,
            deployed,
            workflow: parse(&yaml),
            _root: root,
        }
    }

    fn job(&self, name: &str) -> &Job {
        &self
            .workflow
            .jobs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no job {name}"))
            .1
    }

    /// Runs the step called `step` of `job` as the runner would.
    fn run(&self, job_name: &str, step_name: &str) -> Output {
        let job = self.job(job_name);
        let step = job
            .steps
            .iter()
            .find(|s| s.name == step_name)
            .unwrap_or_else(|| panic!("no step {step_name} in {job_name}"));
        let script = expand(step.run.as_deref().expect("a run step"));
        let mut env = self.workflow.env.clone();
        env.extend(job.env.clone());
        env.extend(step.env.clone());
        // The deployment is here, not on a self-hosted runner's disk.
        if env.contains_key("DBWARD_OUT") {
            env.insert("DBWARD_OUT".into(), self.deployed.display().to_string());
        }
        let dbward_dir = workspace_bin("dbward")
            .parent()
            .expect("bin dir")
            .to_path_buf();
        let path = format!(
            "{}:{}:{}",
            dbward_dir.display(),
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", &script])
            .current_dir(&self.clone)
            .envs(env.iter().map(|(k, v)| (k.clone(), expand(v))))
            .env("PATH", path)
            .env("GITHUB_OUTPUT", &self.output)
            .env("GH_RECORD", &self.bin)
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .output()
            .expect("bash")
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_github_workflow_runs_as_written() {
    let runner = Runner::new();
    // Every run step of the workflow is exercised below, except the installation.
    let names: Vec<(&str, &str)> = runner
        .workflow
        .jobs
        .iter()
        .flat_map(|(job, j)| {
            j.steps
                .iter()
                .filter(|s| s.run.is_some())
                .map(move |s| (job.as_str(), s.name.as_str()))
        })
        .collect();
    assert_eq!(
        names,
        [
            ("review", "Install dbward"),
            ("review", "Check the manifest"),
            ("review", "Formatting"),
            ("review", "Access changes against the base branch"),
            ("review", "Post the access changes on the pull request"),
            ("plan", "Plan"),
        ]
    );

    let check = runner.run("review", "Check the manifest");
    let (stdout, stderr) = text(&check);
    assert_eq!(check.status.code(), Some(0), "{stdout}\n{stderr}");
    // The branch's bob has no roles: a warning, annotated on his line.
    let bob_line = after()
        .lines()
        .position(|l| l == "user bob {}")
        .expect("bob")
        + 1;
    assert!(
        stdout.contains(&format!(
            "::warning file=dbward/manifest.kdl,line={bob_line},col=6,endLine={bob_line},\
             endColumn=9,title=dbward%3A%3Auser_without_roles::user `bob` has no roles and can \
             reach nothing (help: "
        )),
        "{stdout}"
    );

    let fmt = runner.run("review", "Formatting");
    assert_eq!(fmt.status.code(), Some(0), "{:?}", text(&fmt));

    let diff = runner.run("review", "Access changes against the base branch");
    let (stdout, stderr) = text(&diff);
    assert_eq!(diff.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("  - bob → shop as app, readonly (db-names shop) via developer\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Access: 1 added, 2 changed, 1 removed."),
        "{stdout}"
    );
    let markdown = fs::read_to_string(runner.clone.join("access.md")).expect("access.md");
    assert!(markdown.contains("| ➕ | dave | shop |"), "{markdown}");

    let post = runner.run("review", "Post the access changes on the pull request");
    assert_eq!(post.status.code(), Some(0), "{:?}", text(&post));
    let calls = fs::read_to_string(runner.bin.join("calls")).expect("gh was called");
    assert_eq!(
        calls,
        "pr comment 7 --edit-last --body-file access.md\npr comment 7 --body-file access.md\n"
    );
    assert_eq!(
        fs::read_to_string(runner.bin.join("body.md")).expect("body"),
        markdown
    );

    let plan = runner.run("plan", "Plan");
    let (stdout, stderr) = text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("Access changes"), "{stdout}");
    assert!(
        stdout.contains("  - bob → shop as app, readonly (db-names shop)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("::notice title=dbward plan::apply will change files"),
        "{stdout}"
    );
    assert_eq!(
        fs::read_to_string(&runner.output).expect("GITHUB_OUTPUT"),
        "changes=true\n"
    );
}

#[test]
fn the_github_workflow_fails_on_errors_with_annotations() {
    let runner = Runner::new();
    let manifest = runner.clone.join("dbward/manifest.kdl");
    // An error, and a manifest out of canonical form.
    fs::write(
        &manifest,
        after().replace("roles developer", "roles  developr"),
    )
    .expect("write");
    let check = runner.run("review", "Check the manifest");
    let (stdout, _) = text(&check);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("title=dbward%3A%3Aunknown_role::unknown role `developr` (help: did you mean `developer`?)"),
        "{stdout}"
    );
    assert!(
        stdout.starts_with("::error file=dbward/manifest.kdl,line="),
        "{stdout}"
    );
    let fmt = runner.run("review", "Formatting");
    assert_eq!(fmt.status.code(), Some(1), "{:?}", text(&fmt));
    // The plan job fails on the invalid manifest instead of reporting "changes".
    let plan = runner.run("plan", "Plan");
    assert_eq!(plan.status.code(), Some(1), "{:?}", text(&plan));
    assert!(!runner.output.exists());
}

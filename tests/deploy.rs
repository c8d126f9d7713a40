//! The deployment files of deploy/: the systemd unit and the container image.
//!
//! - The relay's side of systemd's notify protocol, against a `NOTIFY_SOCKET` the test binds
//!   (a path and an abstract name): `READY=1` only once the port accepts, `RELOADING=1` with
//!   `MONOTONIC_USEC` then `READY=1` around every SIGHUP (a refused config too), `STOPPING=1`
//!   on SIGTERM.
//! - The shipped unit: `systemd-analyze verify` and `security --offline` accept it, and its
//!   `ExecStart` (like the image's `ENTRYPOINT` + `CMD`) is a command line the relay takes.
//! - The relay serving real psql under the unit's sandbox. When systemd is PID 1 the test
//!   starts it with `systemd-run` and the unit's own settings. Otherwise (this build machine's
//!   PID 1 is not systemd, so `systemd-run` cannot start units) it rebuilds what it can of the
//!   sandbox with util-linux: a mount namespace with everything read-only but the logs
//!   directory (`ProtectSystem=strict`, `LogsDirectory=`), empty `/tmp` and `/home`
//!   (`PrivateTmp=`, `ProtectHome=`), the unit's `LimitNOFILE=` and `UMask=`, and `setpriv` for
//!   an unprivileged user with no capabilities and `NoNewPrivileges=`. The seccomp filter,
//!   `MemoryDenyWriteExecute=`, `RestrictAddressFamilies=` and the other kernel-enforced
//!   settings need systemd itself; `systemd-analyze` checks their spelling.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dbward_tests::{free_port, wait_for, workspace_bin};

use crate::relay::{Deployment, PUBLIC_NAME};
use crate::relay_ops::{Fixture, connects};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The path of the config in the shipped unit and image.
const SHIPPED_CONFIG: &str = "/etc/dbward-relay/frozen.json";

/// The `[Service]` settings of the shipped unit, each key with its values in order.
fn unit_service() -> BTreeMap<String, Vec<String>> {
    let text = fs::read_to_string(root().join("deploy/systemd/dbward-relay.service")).unwrap();
    let mut section = String::new();
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_end_matches(']').to_string();
        } else if section == "Service" {
            let (key, value) = line.split_once('=').expect("key=value");
            settings
                .entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
    }
    settings
}

/// The one value of a unit setting.
fn setting<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match unit.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("the unit should set {key}= once, not {other:?}"),
    }
}

/// A notify socket bound by the test, standing in for systemd's.
struct NotifySocket {
    socket: UnixDatagram,
    /// The value of `NOTIFY_SOCKET`.
    env: String,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    /// A socket at a path, or with `abstract_name` in the abstract namespace (`@name`).
    fn bind(abstract_name: bool) -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let (socket, env) = if abstract_name {
            use std::os::linux::net::SocketAddrExt as _;
            let name = format!("dbward-test-notify-{}-{}", std::process::id(), free_port());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
            (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
        } else {
            let path = dir.path().join("notify");
            (
                UnixDatagram::bind(&path).unwrap(),
                path.display().to_string(),
            )
        };
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        NotifySocket {
            socket,
            env,
            _dir: dir,
        }
    }

    /// The next message, as `KEY=value` lines.
    fn next(&self, log: impl Fn() -> String) -> BTreeMap<String, String> {
        let mut buf = vec![0; 4096];
        let n = self.socket.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notification from the relay within 20 s ({e}):\n{}",
                log()
            )
        });
        let text = String::from_utf8(buf[..n].to_vec()).unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|line| {
                let (key, value) = line.split_once('=').expect("KEY=value");
                (key.to_string(), value.to_string())
            })
            .collect()
    }

    /// Nothing more was sent.
    fn assert_quiet(&self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0; 4096];
        if let Ok(n) = self.socket.recv(&mut buf) {
            panic!(
                "unexpected notification: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        self.socket.set_nonblocking(false).unwrap();
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd reads it.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// The relay binary started on `config` with `NOTIFY_SOCKET` set; killed on drop.
struct Relay {
    child: Child,
    log: PathBuf,
}

impl Relay {
    fn spawn(mut command: Command, log: PathBuf) -> Relay {
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Relay { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    fn wait_exit(&mut self) -> ExitStatus {
        wait_for(Duration::from_secs(30), || {
            self.child.try_wait().ok().flatten()
        })
        .unwrap_or_else(|| panic!("the relay did not exit:\n{}", self.log()))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay_command(config: &Path, notify: &str) -> Command {
    let mut command = Command::new(workspace_bin("dbward-relay"));
    command
        .arg("--config")
        .arg(config)
        .env("NOTIFY_SOCKET", notify);
    command
}

/// Waits for `READY=1` and checks the port accepts at that moment.
fn expect_ready(notify: &NotifySocket, relay: &Relay, port: u16, checksum: &str) {
    let ready = notify.next(|| relay.log());
    assert_eq!(
        ready.get("READY").map(String::as_str),
        Some("1"),
        "{ready:?}"
    );
    assert_eq!(ready["MAINPID"], relay.child.id().to_string());
    assert_eq!(ready["STATUS"], format!("serving config {checksum}"));
    assert!(connects(port), "READY=1 came before the port accepts");
}

#[test]
fn the_relay_tells_a_notify_socket_when_it_is_ready_reloading_and_stopping() {
    let fixture = Fixture::new();
    let notify = NotifySocket::bind(false);
    let mut relay = Relay::spawn(
        relay_command(&fixture.config_path(), &notify.env),
        fixture.dir.path().join("relay.log"),
    );
    expect_ready(&notify, &relay, fixture.port, &fixture.config.checksum);
    notify.assert_quiet();

    // A reload that succeeds: RELOADING=1 stamped with the monotonic clock at the signal,
    // then READY=1 once the new config is in force.
    let mut changed = fixture.config.clone();
    changed.relay.limits.max_connections = 77;
    changed.seal();
    fs::write(fixture.config_path(), changed.to_json()).unwrap();
    let before = monotonic_usec();
    relay.signal("HUP");
    let reloading = notify.next(|| relay.log());
    let after = monotonic_usec();
    assert_eq!(reloading["RELOADING"], "1", "{reloading:?}");
    let stamp: u64 = reloading["MONOTONIC_USEC"].parse().unwrap();
    assert!(
        (before..=after).contains(&stamp),
        "MONOTONIC_USEC {stamp} is not between {before} and {after}"
    );
    let ready = notify.next(|| relay.log());
    assert_eq!(ready["READY"], "1", "{ready:?}");
    assert_eq!(
        ready["STATUS"],
        format!("serving config {} (reloaded)", changed.checksum)
    );

    // A refused reload still ends in READY=1 (else systemd would wait for it), and says so.
    fs::write(fixture.config_path(), "{ hand-edited").unwrap();
    relay.signal("HUP");
    let reloading = notify.next(|| relay.log());
    assert_eq!(reloading["RELOADING"], "1", "{reloading:?}");
    assert!(reloading.contains_key("MONOTONIC_USEC"), "{reloading:?}");
    let ready = notify.next(|| relay.log());
    assert_eq!(ready["READY"], "1", "{ready:?}");
    assert_eq!(
        ready["STATUS"],
        format!(
            "reload refused, see the log; still serving config {}",
            changed.checksum
        )
    );
    assert!(connects(fixture.port));

    // SIGTERM: STOPPING=1 as the drain starts, then exit 0.
    relay.signal("TERM");
    let stopping = notify.next(|| relay.log());
    assert_eq!(stopping["STOPPING"], "1", "{stopping:?}");
    assert!(relay.wait_exit().success(), "{}", relay.log());
    notify.assert_quiet();
}

#[test]
fn an_abstract_notify_socket_works_and_a_bad_one_is_only_logged() {
    let fixture = Fixture::new();
    let notify = NotifySocket::bind(true);
    assert!(notify.env.starts_with('@'));
    let mut relay = Relay::spawn(
        relay_command(&fixture.config_path(), &notify.env),
        fixture.dir.path().join("relay.log"),
    );
    expect_ready(&notify, &relay, fixture.port, &fixture.config.checksum);
    relay.signal("TERM");
    assert_eq!(notify.next(|| relay.log())["STOPPING"], "1");
    assert!(relay.wait_exit().success(), "{}", relay.log());
    drop(relay);

    // Not a socket address: the relay serves anyway and says why systemd will not hear it.
    let mut relay = Relay::spawn(
        relay_command(&fixture.config_path(), "relative/notify"),
        fixture.dir.path().join("relay-bad.log"),
    );
    let up = wait_for(Duration::from_secs(20), || {
        connects(fixture.port).then_some(())
    });
    assert!(up.is_some(), "{}", relay.log());
    assert!(
        relay.log().contains(
            "NOTIFY_SOCKET is not a usable unix socket; the service manager will not hear \
             that the relay is ready"
        ),
        "{}",
        relay.log()
    );
    relay.signal("TERM");
    assert!(relay.wait_exit().success(), "{}", relay.log());
}

/// The arguments of a command line in the shipped files, with the binary replaced by the
/// built one and the shipped config path by `config`; `dbward-relay` must accept them.
fn run_shipped_arguments(what: &str, argv: &[String], config: &Path) {
    let (binary, args) = argv.split_first().expect("a command");
    assert!(
        binary == "/usr/local/bin/dbward-relay",
        "{what} runs {binary}"
    );
    assert!(
        args.iter().any(|a| a == SHIPPED_CONFIG),
        "{what} should read {SHIPPED_CONFIG}: {args:?}"
    );
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a == SHIPPED_CONFIG {
                config.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let out = Command::new(workspace_bin("dbward-relay"))
        .args(&args)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what} ({args:?} --check) is not a command line the relay takes:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_unit_verifies_and_its_command_line_works() {
    let unit = unit_service();
    let fixture = Fixture::new();
    let exec: Vec<String> = setting(&unit, "ExecStart")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    run_shipped_arguments("ExecStart", &exec, &fixture.config_path());

    // The settings the relay's behaviour depends on.
    assert_eq!(setting(&unit, "Type"), "notify-reload");
    assert_eq!(setting(&unit, "KillMode"), "mixed");
    let stop: u64 = setting(&unit, "TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let drain = fixture.config.relay.limits.drain_timeout_ms / 1000;
    assert!(
        stop > drain,
        "TimeoutStopSec={stop}s must exceed the {drain} s drain"
    );
    assert_eq!(setting(&unit, "CapabilityBoundingSet"), "");
    let nofile: u64 = setting(&unit, "LimitNOFILE").parse().unwrap();
    // README, Limits: 20,130 for the default 10,000 connections on one session thread.
    assert!(nofile >= 20_130, "LimitNOFILE={nofile}");

    // systemd-analyze reads the unit offline (ExecStart must name an existing binary).
    let dir = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(root().join("deploy/systemd/dbward-relay.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/dbward-relay",
            &workspace_bin("dbward-relay").display().to_string(),
        );
    let path = dir.path().join("dbward-relay.service");
    fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Before systemd 253, Type=notify-reload is unknown (README says what to use there).
    let old_systemd = systemd_version() < 253;
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !(old_systemd && l.ends_with("Failed to parse service type, ignoring: notify-reload"))
        })
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for dbward-relay.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{stdout}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{stdout}");
}

/// This process's hard open-file limit.
fn hard_nofile() -> u64 {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map_or(u64::MAX, |hard| hard.parse().unwrap_or(u64::MAX))
}

/// The `systemd` version, from `systemctl --version` (`systemd 252 (252.38-1~deb12u1)`).
fn systemd_version() -> u32 {
    let out = Command::new("systemctl").arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("systemctl --version")
}

#[test]
fn the_container_image_runs_the_relay_alone_as_a_non_root_user() {
    let text = fs::read_to_string(root().join("deploy/container/Dockerfile")).unwrap();
    let instruction = |name: &str| -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .collect()
    };
    let exec_form = |name: &str| -> Vec<String> {
        let [line] = instruction(name)[..] else {
            panic!("one {name} expected");
        };
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{name} in exec form: {e}"))
    };
    let mut argv = exec_form("ENTRYPOINT");
    argv.extend(exec_form("CMD"));
    run_shipped_arguments("ENTRYPOINT + CMD", &argv, &Fixture::new().config_path());

    let from = instruction("FROM");
    assert_eq!(from.len(), 2, "a builder and a runtime stage: {from:?}");
    assert!(from[1].starts_with("gcr.io/distroless/"), "{from:?}");
    assert_eq!(instruction("USER"), ["65532:65532"]);
    assert_eq!(instruction("STOPSIGNAL"), ["SIGTERM"]);
    assert_eq!(instruction("EXPOSE"), ["6432 9187"]);
    assert!(
        text.contains("cargo build --locked --release -p dbward-relay"),
        "{text}"
    );
    // Nothing but the binary (and the audit directory) reaches the runtime stage.
    let copies = instruction("COPY");
    assert_eq!(copies.len(), 3, "{copies:?}");
    assert!(
        copies[1..]
            .iter()
            .all(|c| c.contains("--from=build ") && c.contains(" /out/")),
        "{copies:?}"
    );
}

/// Where the sandboxed relay finds its config: the output directory, installed as deploy/README.md
/// installs `/etc/dbward-relay`, bound read-only over `/media` (an empty directory that every
/// Debian has), since the test must not create directories in the host's `/etc`.
const SANDBOX_CONFIG: &str = "/media/relay/frozen.json";
/// Where the sandboxed relay's binary is: `out` is mounted read-only at /media.
const SANDBOX_BIN: &str = "/media/dbward-relay";

#[test]
fn psql_works_through_the_relay_under_the_units_sandbox() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test builds a sandbox and must run as root, as the suite does"
    );
    let unit = unit_service();
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");

    // The deployment again, on a port of its own, with the audit log where the unit's
    // LogsDirectory= makes room for it.
    let port = free_port();
    let logs_name = format!("dbward-test-{port}");
    let manifest = fs::read_to_string(d.manifest_path())
        .unwrap()
        .replace(
            &format!("listen \"127.0.0.1:{}\"", d.relay_port),
            &format!("listen \"127.0.0.1:{port}\""),
        )
        .replace(
            &format!("audit \"{}\"", d.dir.path().join("audit.jsonl").display()),
            &format!("audit \"/var/log/{logs_name}/audit.jsonl\""),
        );
    assert!(
        manifest.contains(&logs_name),
        "the audit line moved:\n{manifest}"
    );
    fs::write(d.manifest_path(), manifest).unwrap();
    crate::relay::apply(&d.manifest_path(), &d.out());

    // Installed as deploy/README.md says: owned by root, readable by the relay's group only.
    let (user, group) = ("nobody", "nogroup");
    let out = d.out();
    let status = Command::new("sh")
        .arg("-euc")
        .arg(
            "chown -R root:\"$2\" \"$1\" && find \"$1\" -type d -exec chmod 0750 {} + \
             && find \"$1\" -type f -exec chmod 0640 {} +",
        )
        .args(["sh", out.to_str().unwrap(), group])
        .status()
        .unwrap();
    assert!(status.success());

    // The relay binary, installed beside the config: PrivateTmp= hides the build tree when it
    // lives under /tmp, as a fresh clone in CI does (the unit's own path is /usr/local/bin).
    let installed = out.join("dbward-relay");
    fs::copy(workspace_bin("dbward-relay"), &installed).unwrap();
    fs::set_permissions(&installed, fs::Permissions::from_mode(0o755)).unwrap();

    let logs = d.dir.path().join("var-log");
    fs::create_dir_all(logs.join(&logs_name)).unwrap();
    let status = Command::new("chown")
        .arg(format!("{user}:{group}"))
        .arg(logs.join(&logs_name))
        .status()
        .unwrap();
    assert!(status.success());
    fs::set_permissions(logs.join(&logs_name), fs::Permissions::from_mode(0o750)).unwrap();

    let exec: Vec<String> = setting(&unit, "ExecStart")
        .split_whitespace()
        .map(|a| {
            if a == SHIPPED_CONFIG {
                SANDBOX_CONFIG.to_string()
            } else if a == "/usr/local/bin/dbward-relay" {
                SANDBOX_BIN.to_string()
            } else {
                a.to_string()
            }
        })
        .collect();

    let systemd = fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd");
    let sandbox = if systemd {
        Sandbox::systemd_run(&unit, &exec, &out, &logs_name, port)
    } else {
        Sandbox::namespaces(&unit, &exec, &out, &logs, port, d.dir.path())
    };

    let conninfo = d
        .conninfo(&format!("shop.{PUBLIC_NAME}"), Some(&alice), "app", "shop")
        .replace(&format!("port={} ", d.relay_port), &format!("port={port} "));
    assert!(conninfo.contains(&format!("port={port} ")), "{conninfo}");
    assert_eq!(
        d.psql(
            &conninfo,
            "select current_user || '@' || current_database()"
        )
        .unwrap_or_else(|e| panic!("psql through the sandboxed relay: {e}\n{}", sandbox.log())),
        "app@shop"
    );

    // A reload re-reads the config and keys inside the sandbox.
    sandbox.reload();
    let reloaded = wait_for(Duration::from_secs(10), || {
        sandbox.log().contains("config reloaded").then_some(())
    });
    assert!(reloaded.is_some(), "{}", sandbox.log());
    assert_eq!(
        d.psql(&conninfo, "select 1")
            .unwrap_or_else(|e| panic!("{e}")),
        "1"
    );

    // The audit log: written in the logs directory, by the relay's user, UMask=0077.
    let audit = sandbox.audit_path(&logs, &logs_name);
    let found = wait_for(Duration::from_secs(10), || {
        fs::read_to_string(&audit)
            .ok()
            .filter(|t| t.contains("\"event\":\"session.end\""))
    });
    assert!(found.is_some(), "no session.end in {}", audit.display());
    let meta = fs::metadata(&audit).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "the audit file's mode");
    assert_ne!(meta.uid(), 0, "the audit file is the relay user's");

    sandbox.stop();
}

/// The relay running under the unit's sandbox, by systemd or by hand.
enum Sandbox {
    Systemd {
        unit: String,
        /// The unit's logs directory, removed after the test.
        logs: PathBuf,
    },
    Namespaces {
        relay: Relay,
        notify: NotifySocket,
    },
}

impl Sandbox {
    /// Under systemd: a transient unit with the shipped unit's settings.
    fn systemd_run(
        unit: &BTreeMap<String, Vec<String>>,
        exec: &[String],
        out: &Path,
        logs_name: &str,
        port: u16,
    ) -> Sandbox {
        let name = format!("dbward-relay-test-{port}.service");
        let mut command = Command::new("systemd-run");
        command.arg(format!("--unit={name}")).arg("--quiet");
        let modern = systemd_version() >= 253;
        for (key, values) in unit {
            for value in values {
                let value = match key.as_str() {
                    "ExecStart" => continue,
                    // The test's users, and a logs directory of its own.
                    "User" => "nobody".to_string(),
                    "Group" => "nogroup".to_string(),
                    "LogsDirectory" => logs_name.to_string(),
                    "Type" if !modern => "notify".to_string(),
                    _ => value.clone(),
                };
                command.arg(format!("--property={key}={value}"));
            }
        }
        if !modern {
            command.arg("--property=ExecReload=/bin/kill -HUP $MAINPID");
        }
        command
            .arg(format!(
                "--property=BindReadOnlyPaths={}:/media",
                out.display()
            ))
            .args(exec);
        let status = command.status().expect("systemd-run");
        assert!(status.success(), "systemd-run failed");
        let sandbox = Sandbox::Systemd {
            unit: name,
            logs: Path::new("/var/log").join(logs_name),
        };
        // systemd-run returns once READY=1 came (Type=notify).
        assert_eq!(sandbox.show("ActiveState"), "active", "{}", sandbox.log());
        assert!(connects(port), "{}", sandbox.log());
        sandbox
    }

    /// Without systemd: util-linux rebuilds the file-system and privilege parts of the unit.
    fn namespaces(
        unit: &BTreeMap<String, Vec<String>>,
        exec: &[String],
        out: &Path,
        logs: &Path,
        port: u16,
        dir: &Path,
    ) -> Sandbox {
        assert_eq!(setting(unit, "ProtectSystem"), "strict");
        assert_eq!(setting(unit, "ProtectHome"), "yes");
        assert_eq!(setting(unit, "PrivateTmp"), "yes");
        assert_eq!(setting(unit, "NoNewPrivileges"), "yes");
        // `set -e` stops at the first mount that fails: a sandbox half built is no test.
        let script = r#"
            conf=$1 logs=$2 nofile=$3 mask=$4; shift 4
            mount --bind "$conf" /media
            mount --bind "$logs" /var/log
            # ProtectSystem=strict: all read-only but /proc, /sys, /dev and LogsDirectory=
            # (and /mnt, where a machine may have mounts of its own that the relay never sees).
            awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r m; do
                case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/var/log|/mnt/*) continue ;; esac
                mount -o remount,bind,ro "$m"
            done
            # PrivateTmp=, ProtectHome=.
            mount -t tmpfs -o mode=1777 tmpfs /tmp
            mount -t tmpfs -o mode=1777 tmpfs /var/tmp
            mount -t tmpfs -o ro,mode=0755 tmpfs /home
            mount -t tmpfs -o ro,mode=0700 tmpfs /root
            ulimit -n "$nofile"
            umask "$mask"
            exec setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs \
                --inh-caps=-all --bounding-set=-all -- "$@"
        "#;
        // LimitNOFILE=, as far as this machine allows: raising the hard limit needs
        // CAP_SYS_RESOURCE, which a container may not have (systemd, as PID 1, has it).
        let unit_nofile: u64 = setting(unit, "LimitNOFILE").parse().unwrap();
        let nofile = unit_nofile.min(hard_nofile());
        let notify = NotifySocket::bind(true);
        let mut command = Command::new("unshare");
        command
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-euc",
                script,
                "sh",
            ])
            .arg(out)
            .arg(logs)
            .arg(nofile.to_string())
            .arg(setting(unit, "UMask"))
            .args(exec)
            .env("NOTIFY_SOCKET", &notify.env);
        let relay = Relay::spawn(command, dir.join("sandboxed-relay.log"));
        // READY=1 comes from the relay itself: its pid is setpriv's, which exec'd it.
        let ready = notify.next(|| relay.log());
        assert_eq!(ready["READY"], "1", "{ready:?}");
        assert_eq!(ready["MAINPID"], relay.child.id().to_string());
        assert!(connects(port), "{}", relay.log());

        // The process is what the unit asks for.
        let pid = relay.child.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(field("Uid"), ["65534"; 4]);
        assert_eq!(field("NoNewPrivs"), ["1"]);
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(caps), ["0000000000000000"], "{caps}");
        }
        let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let nofile = nofile.to_string();
        assert!(
            limits.lines().any(|l| l.starts_with("Max open files")
                && l.split_whitespace().filter(|w| *w == nofile).count() == 2),
            "{limits}"
        );
        let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let options = |point: &str| {
            mounts
                .lines()
                .rfind(|l| l.split_whitespace().nth(4) == Some(point))
                .and_then(|l| l.split_whitespace().nth(5))
                .unwrap_or_else(|| panic!("{point} not mounted:\n{mounts}"))
                .to_string()
        };
        assert!(options("/").starts_with("ro"), "{mounts}");
        assert!(options("/media").starts_with("ro"), "{mounts}");
        assert!(options("/var/log").starts_with("rw"), "{mounts}");
        Sandbox::Namespaces { relay, notify }
    }

    fn log(&self) -> String {
        match self {
            Sandbox::Systemd { unit, .. } => {
                let out = Command::new("journalctl")
                    .args(["--no-pager", "-o", "cat", "-u", unit])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            Sandbox::Namespaces { relay, .. } => relay.log(),
        }
    }

    fn show(&self, property: &str) -> String {
        let Sandbox::Systemd { unit, .. } = self else {
            unreachable!("only systemd units have properties")
        };
        let out = Command::new("systemctl")
            .args(["show", "--value", "-p", property, unit])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `systemctl reload`, or SIGHUP with the notify messages systemd would wait for.
    fn reload(&self) {
        match self {
            Sandbox::Systemd { unit, .. } => {
                let status = Command::new("systemctl")
                    .args(["reload", unit])
                    .status()
                    .unwrap();
                assert!(status.success(), "systemctl reload:\n{}", self.log());
            }
            Sandbox::Namespaces { relay, notify } => {
                relay.signal("HUP");
                assert_eq!(notify.next(|| relay.log())["RELOADING"], "1");
                assert_eq!(notify.next(|| relay.log())["READY"], "1");
            }
        }
    }

    /// The audit file as the test sees it.
    fn audit_path(&self, logs: &Path, logs_name: &str) -> PathBuf {
        match self {
            Sandbox::Systemd { .. } => Path::new("/var/log").join(logs_name).join("audit.jsonl"),
            Sandbox::Namespaces { .. } => logs.join(logs_name).join("audit.jsonl"),
        }
    }

    /// `systemctl stop`, or SIGTERM: the relay drains and exits 0.
    fn stop(self) {
        match self {
            Sandbox::Systemd { ref unit, ref logs } => {
                let started = Instant::now();
                let status = Command::new("systemctl")
                    .args(["stop", unit])
                    .status()
                    .unwrap();
                assert!(status.success());
                assert!(started.elapsed() < Duration::from_secs(30));
                let _ = fs::remove_dir_all(logs);
            }
            Sandbox::Namespaces {
                mut relay, notify, ..
            } => {
                relay.signal("TERM");
                assert_eq!(notify.next(|| relay.log())["STOPPING"], "1");
                let status = relay.wait_exit();
                assert!(status.success(), "{status}:\n{}", relay.log());
            }
        }
    }
}

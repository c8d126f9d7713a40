//! Operating the real `dbward-relay` binary: `--check`, `/livez` `/readyz` `/metrics`, audit
//! lines, SIGHUP reload (bad file kept out, good file taken) and SIGTERM drain.
//!
//! Every test runs the built binary as a child process with its own temp dir, ports and log
//! file, and talks to it over real sockets.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dbward_frozen::{Config, FORMAT_VERSION};
pub(crate) use dbward_tests::connects;
use dbward_tests::{
    Cluster, RelayProcess as Running, audit_lines, free_port, psql_path, spawn_relay, wait_for,
    workspace_bin,
};

/// A relay output directory written by `dbward apply` (no PostgreSQL behind it: these tests
/// never reach an upstream), with the frozen config it holds.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: Config,
    pub(crate) port: u16,
    pub(crate) metrics_port: u16,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        Fixture::with_audit(None)
    }

    /// `audit`: the audit log's path, or `None` for `audit.jsonl` in the temp dir.
    fn with_audit(audit: Option<&Path>) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("dbward-relay-ops-")
            .tempdir()
            .unwrap();
        let audit = audit.map_or_else(|| dir.path().join("audit.jsonl"), Path::to_owned);
        let port = free_port();
        let metrics_port = free_port();
        let manifest = format!(
            r#"dbward version=1
relay {{
    listen "127.0.0.1:{port}"
    public-name "db.localhost"
    client-cert-ttl "1h"
    audit "{audit}" queries=#true
    metrics "127.0.0.1:{metrics_port}"
}}
database orders {{
    postgres host="127.0.0.1" port={pg} version=15
    labels env=dev
    self-hosted {{
        server-names "localhost" "127.0.0.1"
        config-dir "/etc/postgresql/15/main/dbward"
    }}
    db-user app
}}
role developer {{
    allow {{
        databases env=dev
        db-users app
        db-names orders
    }}
}}
user alice {{
    roles developer
}}
"#,
            audit = audit.display(),
            pg = free_port(),
        );
        fs::write(dir.path().join("manifest.kdl"), manifest).unwrap();
        let out = Command::new(workspace_bin("dbward"))
            .arg("apply")
            .arg(dir.path().join("manifest.kdl"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .arg("--auto-approve")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dbward apply failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fixture = Fixture {
            config: Config::load(&dir.path().join("out/relay/frozen.json")).unwrap(),
            dir,
            port,
            metrics_port,
        };
        assert_eq!(fixture.config.relay.listen, format!("127.0.0.1:{port}"));
        fixture
    }

    /// A file of the output directory, e.g. `relay/server.key`.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.path("relay/frozen.json")
    }

    fn write_config(&self, config: &Config) {
        fs::write(self.config_path(), config.to_json()).unwrap();
    }

    /// Runs `dbward-relay --config frozen.json --check`.
    fn check(&self) -> (ExitStatus, String, String) {
        let out = Command::new(workspace_bin("dbward-relay"))
            .arg("--config")
            .arg(self.config_path())
            .arg("--check")
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the relay and waits until both of its ports accept connections.
    fn start(&self, extra: &[&str]) -> Running {
        spawn_relay(
            &self.config_path(),
            self.dir.path().join("relay.log"),
            self.port,
            self.metrics_port,
            extra,
        )
    }
}

/// Sends a plaintext StartupMessage (no TLS) and returns what the relay answers.
fn plaintext_startup(port: u16) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    for (key, value) in [("user", "app"), ("database", "orders")] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    stream.write_all(&packet).unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

#[test]
fn check_accepts_a_good_config_and_explains_each_bad_one() {
    let fixture = Fixture::new();
    let (status, stdout, stderr) = fixture.check();
    assert!(status.success(), "--check refused a good config:\n{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        !connects(fixture.port),
        "--check must never listen (port {})",
        fixture.port
    );

    // Tampered: edited by hand after `dbward apply` sealed it.
    let good = fs::read_to_string(fixture.config_path()).unwrap();
    fs::write(
        fixture.config_path(),
        good.replace("db.localhost", "db.example.com"),
    )
    .unwrap();
    let (status, _, stderr) = fixture.check();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert!(stderr.contains("dbward apply"), "{stderr}");

    // Another format version.
    let mut other = fixture.config.clone();
    other.format_version = FORMAT_VERSION + 1;
    other.seal();
    fixture.write_config(&other);
    let (status, _, stderr) = fixture.check();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "format version {}, this relay understands only {FORMAT_VERSION}",
            FORMAT_VERSION + 1
        )),
        "{stderr}"
    );

    // A key file that is missing.
    fixture.write_config(&fixture.config);
    fs::rename(
        fixture.path("relay/upstream-client.key"),
        fixture.path("relay/moved.key"),
    )
    .unwrap();
    let (status, _, stderr) = fixture.check();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("relay/upstream-client.key"), "{stderr}");
    assert!(stderr.contains("cannot read private key"), "{stderr}");
    fs::rename(
        fixture.path("relay/moved.key"),
        fixture.path("relay/upstream-client.key"),
    )
    .unwrap();

    // A key that everyone may read.
    fs::set_permissions(
        fixture.path("relay/server.key"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (status, _, stderr) = fixture.check();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("server.key"), "{stderr}");
    assert!(stderr.contains("mode 0644"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    fs::set_permissions(
        fixture.path("relay/server.key"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // A key owned by someone who is neither the relay's user nor root (PostgreSQL's rule for
    // ssl_key_file), even with mode 0600.
    let me = fs::metadata(fixture.path("relay/server.key"))
        .unwrap()
        .uid();
    let id = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    let other: u32 = String::from_utf8_lossy(&id.stdout).trim().parse().unwrap();
    assert_ne!(me, other, "the tests run as root, the cluster as postgres");
    std::os::unix::fs::chown(fixture.path("relay/server.key"), Some(other), None).unwrap();
    let (status, _, stderr) = fixture.check();
    std::os::unix::fs::chown(fixture.path("relay/server.key"), Some(me), None).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("relay/server.key"), "{stderr}");
    assert!(
        stderr.contains(&format!("owned by uid {other}")),
        "{stderr}"
    );
    assert!(stderr.contains("chown"), "{stderr}");

    // A certificate that is not PEM.
    fs::write(fixture.path("relay/users-ca.crt"), "garbage").unwrap();
    let (status, _, stderr) = fixture.check();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("users-ca.crt"), "{stderr}");

    // No message ever shows key material.
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[test]
fn endpoints_answer_and_a_denial_is_audited() {
    let fixture = Fixture::new();
    let relay = fixture.start(&["--log-format", "json"]);

    let (status, _, body) = relay.get("/livez");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = relay.get("/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _, _) = relay.get("/nope");
    assert_eq!(status, 404);
    let (status, content_type, body) = relay.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    for name in [
        "dbward_sessions_active 0",
        "dbward_sessions_total 0",
        "dbward_handshake_failures_total",
        "dbward_upstream_connect_seconds_bucket{le=\"+Inf\"} 0",
        "dbward_config_reloads_total{result=\"ok\"} 0",
        "dbward_audit_up 1",
        "dbward_draining 0",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics:\n{body}");
    }

    // A plaintext startup is refused, counted and audited.
    let reply = plaintext_startup(fixture.port);
    assert_eq!(
        reply.first(),
        Some(&b'E'),
        "expected an ErrorResponse: {reply:?}"
    );
    assert!(
        String::from_utf8_lossy(&reply).contains("TLS required"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let audit = fixture.dir.path().join("audit.jsonl");
    let denied = wait_for(Duration::from_secs(5), || {
        audit_lines(&audit)
            .into_iter()
            .find(|e| e["event"] == "session.denied")
    })
    .unwrap_or_else(|| panic!("no session.denied audit event:\n{}", relay.log()));
    assert_eq!(denied["reason"], "tls_required", "{denied}");
    assert!(denied["session"].is_string(), "{denied}");
    assert!(
        denied["client_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{denied}"
    );
    time_is_rfc3339(&denied["time"]);
    for field in ["identity", "database", "db_user", "db_name"] {
        assert!(denied.get(field).is_some(), "{field} missing: {denied}");
    }
    assert_eq!(
        relay.metric("dbward_sessions_denied_total{reason=\"tls_required\"}"),
        1.0
    );

    // Bytes pipelined after an SSLRequest, before the TLS handshake (the CVE-2021-23214 class):
    // a failed handshake, counted, and audited as a protocol violation.
    // (The readiness probes of `start` already count as failed handshakes: count from here.)
    let failures = relay.metric("dbward_handshake_failures_total");
    let mut stream = TcpStream::connect(("127.0.0.1", fixture.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = 8u32.to_be_bytes().to_vec();
    request.extend_from_slice(&80877103u32.to_be_bytes());
    request.extend_from_slice(b"injected");
    stream.write_all(&request).unwrap();
    let _ = stream.read_to_end(&mut Vec::new());
    let counted = wait_for(Duration::from_secs(5), || {
        (relay.metric("dbward_handshake_failures_total") == failures + 1.0).then_some(())
    });
    assert!(counted.is_some(), "{}", relay.log());
    assert_eq!(
        relay.metric("dbward_sessions_denied_total{reason=\"protocol\"}"),
        1.0
    );

    // JSON logs: one object per line; nothing secret in logs or audit.
    let log = relay.log();
    for line in log.lines() {
        let _: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("log line {line:?}: {e}"));
    }
    let key = fs::read_to_string(fixture.path("relay/server.key")).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    for text in [log, fs::read_to_string(&audit).unwrap()] {
        assert!(!text.contains("PRIVATE KEY") && !text.contains(key_body));
    }
}

#[test]
fn the_replica_id_defaults_to_the_host_name_and_a_bad_one_is_refused() {
    let fixture = Fixture::new();
    // A bad id (flag or environment) stops the relay before it listens, saying what to write.
    for (flag, env) in [(Some("relay a"), None), (None, Some("\u{1b}[31m"))] {
        let mut command = Command::new(workspace_bin("dbward-relay"));
        command.arg("--config").arg(fixture.config_path());
        if let Some(id) = flag {
            command.args(["--replica-id", id]);
        }
        if let Some(id) = env {
            command.env("DBWARD_RELAY_REPLICA_ID", id);
        }
        let out = command.stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with("error: the replica id ")
                && stderr.contains("use letters, digits and punctuation only"),
            "{stderr}"
        );
        assert!(
            !stderr.contains('\u{1b}'),
            "a raw escape reached the terminal: {stderr:?}"
        );
        assert!(!connects(fixture.port));
    }

    // Without one, the host name names every event and the startup line.
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let relay = fixture.start(&[]);
    assert!(
        relay.log().contains(&format!("replica={host}")),
        "{}",
        relay.log()
    );
    plaintext_startup(fixture.port);
    let audit = fixture.dir.path().join("audit.jsonl");
    let denied = wait_for(Duration::from_secs(5), || {
        audit_lines(&audit)
            .into_iter()
            .find(|e| e["event"] == "session.denied")
    })
    .unwrap_or_else(|| panic!("no session.denied audit event:\n{}", relay.log()));
    assert_eq!(denied["replica"], host, "{denied}");
}

fn time_is_rfc3339(value: &serde_json::Value) {
    let text = value.as_str().unwrap_or_default();
    // 2026-11-21T11:30:03.123456Z
    let ok = text.len() >= 20
        && text.as_bytes()[4] == b'-'
        && text.as_bytes()[10] == b'T'
        && text.ends_with('Z');
    assert!(ok, "not an RFC 3339 UTC time: {value}");
}

#[test]
fn sighup_keeps_a_bad_config_out_and_takes_a_good_one() {
    let fixture = Fixture::new();
    let relay = fixture.start(&[]);

    // A tampered file: refused, the reason logged, the old config still serves.
    let good = fs::read_to_string(fixture.config_path()).unwrap();
    fs::write(
        fixture.config_path(),
        good.replace("\"alice\"", "\"mallory\""),
    )
    .unwrap();
    relay.signal("HUP");
    relay.wait_log("config reload failed");
    let log = relay.log();
    assert!(log.contains("checksum mismatch"), "{log}");
    assert!(log.contains("ERROR"), "a failed reload is an error:\n{log}");
    assert_eq!(
        relay.metric("dbward_config_reloads_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(relay.get("/readyz").0, 200);
    assert!(String::from_utf8_lossy(&plaintext_startup(fixture.port)).contains("TLS required"));

    // A key that became world-readable is a bad config too.
    fixture.write_config(&fixture.config);
    fs::set_permissions(
        fixture.path("relay/server.key"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    relay.signal("HUP");
    let failed = wait_for(Duration::from_secs(10), || {
        (relay.metric("dbward_config_reloads_total{result=\"failed\"}") == 2.0).then_some(())
    });
    assert!(failed.is_some(), "{}", relay.log());
    assert!(relay.log().contains("chmod 600"), "{}", relay.log());
    fs::set_permissions(
        fixture.path("relay/server.key"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // A good new config (another access table) is taken.
    let mut changed = fixture.config.clone();
    changed.access[0].db_users.push("readonly".into());
    changed.seal();
    fixture.write_config(&changed);
    relay.signal("HUP");
    let ok = wait_for(Duration::from_secs(10), || {
        (relay.metric("dbward_config_reloads_total{result=\"ok\"}") == 1.0).then_some(())
    });
    assert!(ok.is_some(), "{}", relay.log());
    assert!(relay.log().contains(&changed.checksum), "{}", relay.log());
    assert_eq!(
        relay.metric(&format!(
            "dbward_config_info{{checksum=\"{}\"}}",
            changed.checksum
        )),
        1.0
    );
    assert_eq!(relay.get("/livez").0, 200);
}

#[test]
fn sigterm_drains_then_exits_and_a_second_one_exits_at_once() {
    let fixture = Fixture::new();
    // The manifest has no knob for limits yet: shorten the handshake timeout in the frozen
    // config (re-sealed, as `dbward apply` would) so the drain below ends in seconds.
    let mut config = fixture.config.clone();
    config.relay.limits.handshake_timeout_ms = 3_000;
    config.seal();
    fixture.write_config(&config);
    let mut relay = fixture.start(&[]);

    // A connection in its startup phase is still a connection the relay owns: draining waits
    // for it (the handshake timeout, 3 s here, ends it).
    let open = TcpStream::connect(("127.0.0.1", fixture.port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    relay.signal("TERM");
    let draining = wait_for(Duration::from_secs(5), || {
        (relay.get("/readyz").0 == 503).then_some(())
    });
    assert!(
        draining.is_some(),
        "/readyz never said draining:\n{}",
        relay.log()
    );
    assert_eq!(relay.get("/readyz").2, "draining\n");
    assert_eq!(relay.get("/livez").0, 200, "alive while draining");
    let closed = wait_for(Duration::from_secs(5), || {
        (!connects(fixture.port)).then_some(())
    });
    assert!(closed.is_some(), "the listener stayed open while draining");

    let status = relay
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the relay did not exit after draining:\n{}", relay.log()));
    assert!(status.success(), "exit {status}:\n{}", relay.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "draining took longer than the drain timeout"
    );
    assert!(relay.log().contains("draining"), "{}", relay.log());
    drop(open);

    // A second SIGTERM does not wait for anything.
    let mut relay = fixture.start(&[]);
    let _open = TcpStream::connect(("127.0.0.1", fixture.port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    relay.signal("TERM");
    relay.wait_log("draining");
    let second = Instant::now();
    relay.signal("TERM");
    let status = relay
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("a second SIGTERM did not exit:\n{}", relay.log()));
    assert!(second.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(1), "{}", relay.log());
}

/// A whole deployment made by the real CLI: `dbward apply` output installed into a real
/// PostgreSQL (setup.sql run), and alice's certificate from `dbward cert issue`.
struct Deployment {
    cluster: Cluster,
    /// Holds `manifest.kdl`, `out/` (the apply output), `alice/` and `audit.jsonl`.
    dir: tempfile::TempDir,
    port: u16,
    metrics_port: u16,
    rt: tokio::runtime::Runtime,
    /// Lines added to the manifest's `relay` block.
    relay_extra: String,
}

impl Deployment {
    /// `db_users`: the database users alice's role allows (KDL arguments, e.g. `app readonly`).
    fn new(db_users: &str) -> Deployment {
        Deployment::with_relay(db_users, "")
    }

    /// Like [`Deployment::new`], with `relay_extra` added to the manifest's `relay` block.
    fn with_relay(db_users: &str, relay_extra: &str) -> Deployment {
        let dir = tempfile::Builder::new()
            .prefix("dbward-relay-deploy-")
            .tempdir()
            .unwrap();
        let mut deployment = Deployment {
            cluster: Cluster::init(),
            dir,
            port: free_port(),
            metrics_port: free_port(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            relay_extra: relay_extra.to_owned(),
        };
        deployment.apply(db_users);
        let out = deployment.out();
        deployment.cluster.install_dbward(&out, "shop");
        if let Err(log) = deployment.cluster.try_start() {
            panic!("PostgreSQL did not start with the generated configuration:\n{log}");
        }
        // The database the manifest names; setup.sql creates roles and grants, not databases.
        let create = deployment.path("create.sql");
        fs::write(&create, "create database shop;\n").unwrap();
        deployment
            .cluster
            .peer_sql_file("postgres", &create)
            .unwrap_or_else(|e| panic!("create database failed: {e}"));
        deployment
            .cluster
            .peer_sql_file("postgres", &out.join("databases/shop/setup.sql"))
            .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));
        deployment.dbward(&[
            "cert",
            "issue",
            deployment.path("manifest.kdl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--user",
            "alice",
            "--dest",
            deployment.path("alice").to_str().unwrap(),
        ]);
        deployment
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn out(&self) -> PathBuf {
        self.path("out")
    }

    fn audit(&self) -> PathBuf {
        self.path("audit.jsonl")
    }

    /// Runs the `dbward` CLI and asserts it succeeded.
    fn dbward(&self, args: &[&str]) {
        let out = Command::new(workspace_bin("dbward"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dbward {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes the manifest with alice allowed `db_users`, and runs `dbward apply` on it.
    fn apply(&self, db_users: &str) {
        self.apply_with(db_users, &self.relay_extra, "");
    }

    /// Like [`Deployment::apply`], with `relay_extra` in the `relay` block (instead of the
    /// deployment's) and `user_extra` in alice's `user` block.
    fn apply_with(&self, db_users: &str, relay_extra: &str, user_extra: &str) {
        let manifest = format!(
            r#"dbward version=1
relay {{
    listen "127.0.0.1:{port}"
    public-name "db.localhost"
    client-cert-ttl "1h"
    audit "{audit}" queries=#true
    metrics "127.0.0.1:{metrics}"
    {relay_extra}
}}
database shop {{
    postgres host="127.0.0.1" port={pg} version=15
    labels env=dev
    self-hosted {{
        server-names "localhost" "127.0.0.1"
        config-dir "{config_dir}"
    }}
    admin-user "dbward-admin" default-database=postgres
    db-role reader {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT on=all-tables schema=public
    }}
    db-user app {{
        member-of reader
    }}
    db-user readonly {{
        member-of reader
    }}
}}
role developer {{
    allow {{
        databases env=dev
        db-users {db_users}
        db-names shop
    }}
}}
user alice {{
    roles developer
    {user_extra}
}}
"#,
            port = self.port,
            metrics = self.metrics_port,
            audit = self.audit().display(),
            pg = self.cluster.port,
            config_dir = self.cluster.config_dir().display(),
        );
        fs::write(self.path("manifest.kdl"), manifest).unwrap();
        self.dbward(&[
            "apply",
            self.path("manifest.kdl").to_str().unwrap(),
            "--out",
            self.out().to_str().unwrap(),
            "--auto-approve",
        ]);
    }

    fn relay(&self) -> Running {
        self.relay_with(&[])
    }

    /// The relay binary started with `extra` arguments.
    fn relay_with(&self, extra: &[&str]) -> Running {
        spawn_relay(
            &self.out().join("relay/frozen.json"),
            self.path("relay.log"),
            self.port,
            self.metrics_port,
            extra,
        )
    }

    /// libpq's connection string for alice as `user`, verify-full through the relay.
    fn conninfo(&self, user: &str) -> String {
        let alice = self.path("alice");
        format!(
            "host=shop.db.localhost hostaddr=127.0.0.1 port={} sslmode=verify-full \
             sslrootcert={} sslcert={} sslkey={} user={user} dbname=shop connect_timeout=10",
            self.port,
            alice.join("root.crt").display(),
            alice.join("postgresql.crt").display(),
            alice.join("postgresql.key").display(),
        )
    }

    /// Runs `sql` with real psql as alice logging in as `user`: Ok(stdout) or Err(stderr).
    fn psql(&self, user: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(psql_path())
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(self.conninfo(user))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A tokio-postgres session as alice logging in as `user`, held open by the caller.
    fn connect(&self, user: &str) -> tokio_postgres::Client {
        self.try_connect(user).unwrap_or_else(|e| {
            panic!(
                "connect as {user} through the relay: {e}: {:?}",
                e.as_db_error()
            )
        })
    }

    /// Like [`Deployment::connect`], returning the error.
    fn try_connect(&self, user: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.connect_watched(user).map(|(client, _)| client)
    }

    /// A session and its connection task, which ends with the error the server sent (a FATAL
    /// that ends the session arrives there, not at a query).
    fn connect_watched(
        &self,
        user: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
        ),
        tokio_postgres::Error,
    > {
        self.connect_with_cert(user, "alice")
    }

    /// Like [`Deployment::connect_watched`], with the certificate files in `dir`.
    fn connect_with_cert(
        &self,
        user: &str,
        dir: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
        ),
        tokio_postgres::Error,
    > {
        let mut config = tokio_postgres::Config::new();
        config
            .host("shop.db.localhost")
            .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .port(self.port)
            .user(user)
            .dbname("shop")
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_secs(10));
        self.rt.block_on(async {
            let (client, connection) = config.connect(self.tls_from(dir)).await?;
            Ok((client, tokio::spawn(connection)))
        })
    }

    /// The TLS config alice's tokio-postgres sessions use (also for cancel requests).
    fn alice_tls(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        self.tls_from("alice")
    }

    /// The TLS config of the `dbward cert issue` files in `dir` (under the temp dir).
    fn tls_from(&self, dir: &str) -> tokio_postgres_rustls::MakeRustlsConnect {
        dbward_tests::person_tls(&self.path(dir))
    }

    /// Runs `select <n>` on a held session and returns the number.
    fn select(
        &self,
        client: &tokio_postgres::Client,
        n: i32,
    ) -> Result<i32, tokio_postgres::Error> {
        self.rt
            .block_on(client.query_one("select $1::int4", &[&n]))
            .map(|row| row.get(0))
    }
}

#[test]
fn sighup_with_a_changed_manifest_changes_new_sessions_only() {
    let deployment = Deployment::new("app readonly");
    let relay = deployment.relay();
    assert_eq!(deployment.psql("app", "select 1"), Ok("1".into()));

    // A session in flight as `readonly`, then a manifest that no longer allows `app` (sessions
    // as `app` would be ended: see sighup_ends_revoked_sessions_after_the_grace_…).
    let in_flight = deployment.connect("readonly");
    assert_eq!(deployment.select(&in_flight, 7).unwrap(), 7);
    deployment.apply("readonly");
    relay.signal("HUP");
    let reloaded = wait_for(Duration::from_secs(10), || {
        (relay.metric("dbward_config_reloads_total{result=\"ok\"}") == 1.0).then_some(())
    });
    assert!(
        reloaded.is_some(),
        "the relay did not reload:\n{}",
        relay.log()
    );

    // The session in flight keeps the config it started with...
    assert_eq!(deployment.select(&in_flight, 8).unwrap(), 8);
    // ...new sessions follow the new access table, with a message a person can act on.
    let refused = deployment.psql("app", "select 1").unwrap_err();
    assert!(refused.contains("app"), "{refused}");
    assert_eq!(
        deployment.psql("readonly", "select current_user"),
        Ok("readonly".into())
    );
    assert_eq!(deployment.select(&in_flight, 9).unwrap(), 9);
    assert_eq!(
        relay.metric("dbward_sessions_denied_total{reason=\"db_user_not_allowed\"}"),
        1.0
    );
    drop(in_flight);

    // The audit log tells the whole story, as valid JSON lines with no secret in them.
    let audit = deployment.audit();
    let events = wait_for(Duration::from_secs(5), || {
        let events = audit_lines(&audit);
        (events
            .iter()
            .filter(|e| e["event"] == "session.end")
            .count()
            >= 3)
            .then_some(events)
    })
    .unwrap_or_else(|| {
        panic!(
            "missing session.end events:\n{}",
            fs::read_to_string(&audit).unwrap_or_default()
        )
    });
    let start = events
        .iter()
        .find(|e| e["event"] == "session.start")
        .unwrap();
    assert_eq!(start["identity"], "alice", "{start}");
    assert_eq!(start["database"], "shop", "{start}");
    assert_eq!(start["db_name"], "shop", "{start}");
    time_is_rfc3339(&start["time"]);
    let query = events
        .iter()
        .find(|e| e["event"] == "session.query" && e["query"] == "select $1::int4")
        .unwrap_or_else(|| panic!("no session.query for the prepared statement: {events:?}"));
    assert_eq!(query["protocol"], "parse", "{query}");
    let denied = events
        .iter()
        .find(|e| e["event"] == "session.denied")
        .unwrap();
    assert_eq!(denied["reason"], "db_user_not_allowed", "{denied}");
    assert_eq!(denied["db_user"], "app", "{denied}");
    let ended = events
        .iter()
        .find(|e| e["event"] == "session.end" && e["session"] == query["session"])
        .unwrap_or_else(|| panic!("the session in flight has no session.end: {events:?}"));
    assert!(ended["duration_ms"].as_u64().is_some(), "{ended}");
    assert!(
        ended["bytes_client_to_server"].as_u64().unwrap() > 0,
        "{ended}"
    );
    assert!(
        ended["bytes_server_to_client"].as_u64().unwrap() > 0,
        "{ended}"
    );
    let text = fs::read_to_string(&audit).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    // Bound parameter values (7, 8, 9 above) are never recorded.
    assert!(!text.contains("\"7\"") && !text.contains("\"9\""), "{text}");

    // The same story in /metrics: three sessions reached PostgreSQL and ended, bytes counted.
    assert_eq!(relay.metric("dbward_sessions_total"), 3.0);
    assert_eq!(relay.metric("dbward_sessions_active"), 0.0);
    assert_eq!(relay.metric("dbward_upstream_connect_seconds_count"), 3.0);
    assert!(relay.metric("dbward_upstream_connect_seconds_sum") > 0.0);
    assert!(relay.metric("dbward_client_to_server_bytes_total") > 0.0);
    assert!(relay.metric("dbward_server_to_client_bytes_total") > 0.0);
    assert_eq!(relay.metric("dbward_audit_up"), 1.0);
}

#[test]
fn sigterm_lets_a_session_in_flight_finish_then_exits_zero() {
    let deployment = Deployment::new("app");
    let mut relay = deployment.relay();
    let session = deployment.connect("app");
    assert_eq!(deployment.select(&session, 1).unwrap(), 1);

    relay.signal("TERM");
    let draining = wait_for(Duration::from_secs(5), || {
        (relay.get("/readyz").0 == 503).then_some(())
    });
    assert!(
        draining.is_some(),
        "/readyz never said draining:\n{}",
        relay.log()
    );
    let closed = wait_for(Duration::from_secs(5), || {
        (!connects(deployment.port)).then_some(())
    });
    assert!(closed.is_some(), "the listener stayed open while draining");
    assert!(deployment.psql("app", "select 1").is_err());

    // The session in flight keeps working while the relay drains.
    for n in 2..5 {
        assert_eq!(deployment.select(&session, n).unwrap(), n);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "exited before the session ended"
    );
    assert_eq!(relay.metric("dbward_sessions_active"), 1.0);

    // When it ends, the relay exits 0 well before the drain timeout.
    drop(session);
    let status = relay.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "the relay did not exit after the last session:\n{}",
            relay.log()
        )
    });
    assert!(status.success(), "exit {status}:\n{}", relay.log());
    assert!(relay.log().contains("drained"), "{}", relay.log());
}

#[test]
fn new_sessions_are_refused_while_the_audit_log_cannot_be_written() {
    // /dev/full opens for appending (so the config verifies) but every write fails with ENOSPC,
    // like a full disk.
    let fixture = Fixture::with_audit(Some(Path::new("/dev/full")));
    let out = Command::new(workspace_bin("dbward"))
        .arg("cert")
        .arg("issue")
        .arg(fixture.dir.path().join("manifest.kdl"))
        .arg("--out")
        .arg(fixture.path(""))
        .args(["--user", "alice", "--dest"])
        .arg(fixture.dir.path().join("alice"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let relay = fixture.start(&[]);
    let alice = fixture.dir.path().join("alice");
    let psql = || {
        let out = Command::new(psql_path())
            .args(["-X", "-A", "-t", "-c", "select 1"])
            .arg(format!(
                "host=orders.db.localhost hostaddr=127.0.0.1 port={} sslmode=verify-full \
                 sslrootcert={} sslcert={} sslkey={} user=app dbname=orders connect_timeout=10",
                fixture.port,
                alice.join("root.crt").display(),
                alice.join("postgresql.crt").display(),
                alice.join("postgresql.key").display(),
            ))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // The first session is admitted (nothing has failed yet) and fails upstream (no database
    // runs there); writing its audit event fails, so the relay stops admitting new sessions.
    let first = psql();
    assert!(!first.contains("audit"), "{first}");
    let down = wait_for(Duration::from_secs(10), || {
        (relay.metric("dbward_audit_up") == 0.0).then_some(())
    });
    assert!(
        down.is_some(),
        "the audit log never went down:\n{}",
        relay.log()
    );
    assert!(relay.metric("dbward_audit_write_failures_total") >= 1.0);
    relay.wait_log("cannot write the audit log");

    let refused = psql();
    assert!(refused.contains("audit"), "{refused}");
    assert_eq!(
        relay.metric("dbward_sessions_denied_total{reason=\"audit_unavailable\"}"),
        1.0
    );
    // Still alive and ready: the relay itself works, it just refuses unrecorded sessions.
    assert_eq!(relay.get("/livez").0, 200);
}

#[test]
fn drain_ends_at_the_drain_timeout_when_sessions_do_not() {
    let fixture = Fixture::new();
    // A connection that would outlive the drain: the handshake timeout is long, the drain short.
    let mut config = fixture.config.clone();
    config.relay.limits.handshake_timeout_ms = 60_000;
    config.relay.limits.drain_timeout_ms = 1_000;
    config.seal();
    fixture.write_config(&config);
    let mut relay = fixture.start(&[]);
    let _open = TcpStream::connect(("127.0.0.1", fixture.port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let signalled = Instant::now();
    relay.signal("TERM");
    let status = relay
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the relay outlived its drain timeout:\n{}", relay.log()));
    let took = signalled.elapsed();
    assert!(status.success(), "exit {status}:\n{}", relay.log());
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the drain timeout"
    );
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert!(
        relay.log().contains("drain timeout passed"),
        "{}",
        relay.log()
    );
}

#[test]
fn byte_counters_move_while_a_session_runs() {
    let deployment = Deployment::new("app");
    let relay = deployment.relay();
    let session = deployment.connect("app");
    let before = (
        relay.metric("dbward_client_to_server_bytes_total"),
        relay.metric("dbward_server_to_client_bytes_total"),
    );
    let rows = deployment
        .rt
        .block_on(session.query("select repeat('x', 100000)", &[]))
        .unwrap();
    assert_eq!(rows.len(), 1);
    // The session is still open: the traffic shows in /metrics now, not only at its end. The
    // session thread adds what it relayed once it has nothing more to copy, which can be a
    // moment after the client has the last byte: wait for it, with the session still open.
    let counters = || {
        (
            relay.metric("dbward_client_to_server_bytes_total"),
            relay.metric("dbward_server_to_client_bytes_total"),
        )
    };
    let moved = wait_for(Duration::from_secs(5), || {
        let after = counters();
        (after.0 > before.0 && after.1 >= before.1 + 100_000.0).then_some(after)
    });
    assert!(
        moved.is_some(),
        "the byte counters did not move while the session ran: {before:?} -> {:?}",
        counters()
    );
    assert_eq!(relay.metric("dbward_sessions_active"), 1.0);
}

#[test]
fn sessions_spread_over_the_session_threads_and_each_is_served() {
    let deployment = Deployment::new("app");
    let relay = deployment.relay_with(&["--threads", "3"]);
    let per_worker = |relay: &Running| -> Vec<f64> {
        (0..3)
            .map(|i| relay.metric(&format!("dbward_worker_connections{{worker=\"{i}\"}}")))
            .collect()
    };
    // The start-up probe's connection ends first.
    let idle = wait_for(Duration::from_secs(10), || {
        (per_worker(&relay) == [0.0; 3]).then_some(())
    });
    assert!(idle.is_some(), "{:?}", per_worker(&relay));
    let sessions: Vec<_> = (0..6).map(|_| deployment.connect("app")).collect();
    // Each new connection goes to the thread with the fewest: two each.
    assert_eq!(per_worker(&relay), [2.0; 3]);
    for (n, session) in sessions.iter().enumerate() {
        assert_eq!(deployment.select(session, n as i32).unwrap(), n as i32);
    }
    assert_eq!(relay.metric("dbward_sessions_active"), 6.0);
    drop(sessions);
    let released = wait_for(Duration::from_secs(10), || {
        (per_worker(&relay) == [0.0; 3]).then_some(())
    });
    assert!(
        released.is_some(),
        "still counted: {:?}",
        per_worker(&relay)
    );
    // A thread that served and ended sessions serves new ones.
    assert_eq!(deployment.psql("app", "select 41 + 1"), Ok("42".to_owned()));
}

/// The SQLSTATE and message of the FATAL a session's connection task ended with.
fn ended_with(
    deployment: &Deployment,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> String {
    dbward_tests::session_ended_with(&deployment.rt, connection, Duration::from_secs(10))
}

#[test]
fn idle_sessions_are_ended_with_a_fatal_the_client_reads_and_active_ones_are_not() {
    let deployment = Deployment::with_relay(
        "app",
        "idle-timeout \"3s\"\n    idle-in-transaction-timeout \"1s\"",
    );
    let relay = deployment.relay();

    // Real psql, idle after its first query; it reads the FATAL when it sends the next one.
    let mut psql = Command::new(psql_path())
        .args(["-X", "-A", "-t"])
        .arg(deployment.conninfo("app"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = psql.stdin.take().unwrap();
    writeln!(stdin, "select 'before';").unwrap();
    let started = Instant::now();

    // Idle in a transaction: ended by the shorter limit, with PostgreSQL's 25P03.
    let (in_transaction, connection) = deployment.connect_watched("app").unwrap();
    deployment
        .rt
        .block_on(in_transaction.batch_execute("begin"))
        .unwrap();
    let began = Instant::now();
    assert_eq!(
        ended_with(&deployment, connection),
        "25P03 terminating connection due to idle-in-transaction timeout"
    );
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2900),
        "idle in transaction ended after {took:?}, expected about 1 s"
    );

    // A session that keeps working, and a query that runs longer than both limits, are not
    // idle: both outlive the idle timeout.
    let (busy, _) = deployment.connect_watched("app").unwrap();
    let sleeping = deployment
        .rt
        .spawn(async move { busy.simple_query("select pg_sleep(4.5)").await.map(|_| ()) });
    let active = deployment.connect("app");
    for n in 0..10 {
        assert_eq!(deployment.select(&active, n).unwrap(), n);
        std::thread::sleep(Duration::from_millis(500));
    }
    deployment
        .rt
        .block_on(sleeping)
        .unwrap()
        .expect("a query running longer than the idle timeout is not idle");

    // psql has been idle for well over 3 s by now.
    assert!(started.elapsed() > Duration::from_secs(4));
    writeln!(stdin, "select 'after';").unwrap();
    drop(stdin);
    let out = psql.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("before"), "{stdout}");
    assert!(!stdout.contains("after"), "{stdout}");
    assert!(
        stderr.contains("FATAL:  terminating connection due to idle-session timeout"),
        "psql said: {stderr}"
    );
    assert!(stderr.contains("relay idle-timeout"), "no hint: {stderr}");

    // Audited with their reasons, and counted; the active sessions go on.
    let audit = deployment.audit();
    let ends = wait_for(Duration::from_secs(5), || {
        let ends: Vec<_> = audit_lines(&audit)
            .into_iter()
            .filter(|e| e["event"] == "session.end")
            .collect();
        (ends.len() >= 3).then_some(ends)
    })
    .unwrap_or_else(|| panic!("no session.end events: {:?}", audit_lines(&audit)));
    let mut reasons: Vec<_> = ends
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("(none)").to_owned())
        .collect();
    reasons.sort();
    // The session whose long query completed ended when its client was dropped.
    assert_eq!(
        reasons,
        [
            "client_closed",
            "idle_in_transaction_timeout",
            "idle_timeout"
        ]
    );
    assert_eq!(
        relay.metric("dbward_sessions_ended_total{reason=\"idle_timeout\"}"),
        1.0
    );
    assert_eq!(
        relay.metric("dbward_sessions_ended_total{reason=\"idle_in_transaction_timeout\"}"),
        1.0
    );
    assert_eq!(relay.metric("dbward_sessions_active"), 1.0);
    assert_eq!(deployment.select(&active, 42).unwrap(), 42);

    // A session that ends normally says so.
    drop(active);
    let closed = wait_for(Duration::from_secs(5), || {
        (relay.metric("dbward_sessions_ended_total{reason=\"client_closed\"}") >= 2.0).then_some(())
    });
    assert!(closed.is_some(), "{}", relay.get("/metrics").2);
}

#[test]
fn the_open_file_limit_caps_sessions_and_keeps_metrics_and_cancel_working() {
    let deployment = Deployment::new("app");
    // 160 descriptors: 64 reserved, 2 for the one session thread, 64 for connections over the
    // limit, so 15 sessions of two.
    let child = Command::new("prlimit")
        .arg("--nofile=160:160")
        .arg("--")
        .arg(workspace_bin("dbward-relay"))
        .arg("--config")
        .arg(deployment.out().join("relay/frozen.json"))
        .args(["--threads", "1"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(deployment.path("relay.log")).unwrap())
        .spawn()
        .unwrap();
    let mut relay = Running {
        child,
        log: deployment.path("relay.log"),
        port: deployment.port,
        metrics_port: deployment.metrics_port,
    };
    let up = wait_for(Duration::from_secs(20), || {
        if let Ok(Some(status)) = relay.child.try_wait() {
            panic!("the relay exited with {status}:\n{}", relay.log());
        }
        (connects(relay.port) && connects(relay.metrics_port)).then_some(())
    });
    assert!(up.is_some(), "the relay did not listen:\n{}", relay.log());
    relay.wait_log("connection limit in force");
    assert_eq!(relay.metric("dbward_connection_limit"), 15.0);
    assert_eq!(relay.metric("dbward_open_files_limit"), 160.0);

    // Sessions until one is refused (the old relay ran out of descriptors instead, around 70,
    // and said "Too many open files").
    let mut sessions = Vec::new();
    let refusal = loop {
        match deployment.try_connect("app") {
            Ok(client) => sessions.push(client),
            Err(error) => break error,
        }
        assert!(sessions.len() <= 100, "no limit after 100 sessions");
    };
    assert_eq!(
        sessions.len(),
        15,
        "refused after {} sessions",
        sessions.len()
    );
    let db = refusal
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {refusal:?}"));
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert!(
        db.message()
            .contains("too many connections to the dbward relay (limit 15)"),
        "{db:?}"
    );
    // psql reads the same.
    let refused = deployment.psql("app", "select 1").unwrap_err();
    assert!(refused.contains("too many connections"), "{refused}");
    assert!(!refused.contains("Too many open files"), "{refused}");

    // The operations endpoint still answers.
    assert_eq!(relay.get("/livez").0, 200);
    assert_eq!(relay.metric("dbward_sessions_active"), 15.0);
    assert!(relay.metric("dbward_sessions_denied_total{reason=\"connection_limit\"}") >= 2.0);

    // A cancel request for a live session still cancels its query.
    let victim = sessions.pop().unwrap();
    let token = victim.cancel_token();
    let sleeper = deployment
        .rt
        .spawn(async move { victim.simple_query("select pg_sleep(60)").await });
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    deployment
        .rt
        .block_on(token.cancel_query(deployment.alice_tls()))
        .expect("send the cancel request");
    let result = deployment
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), sleeper).await })
        .expect("the query was not cancelled within 10 s")
        .unwrap();
    let error = result.expect_err("the query was cancelled");
    assert_eq!(
        error.as_db_error().map(|db| db.code().code()),
        Some("57014"),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        relay.child.try_wait().unwrap(),
        None,
        "the relay died:\n{}",
        relay.log()
    );
    assert!(
        !relay.log().contains("Too many open files"),
        "{}",
        relay.log()
    );
}

/// `examples/rds.kdl` applied into a temp dir: its two databases share a `ca-file` that does
/// not exist on this machine, so the relay cannot use the config.
fn rds_example() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rds.kdl");
    let applied = Command::new(workspace_bin("dbward"))
        .arg("apply")
        .arg(&manifest)
        .arg("--out")
        .arg(&out)
        .arg("--auto-approve")
        .stdin(Stdio::null())
        .output()
        .expect("run dbward apply");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let config = out.join("relay/frozen.json");
    (dir, config)
}

#[test]
fn check_names_each_missing_ca_file_once_with_its_databases() {
    let (_dir, config) = rds_example();
    let out = Command::new(workspace_bin("dbward-relay"))
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .stdin(Stdio::null())
        .output()
        .expect("run dbward-relay --check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bundle = "/etc/dbward/rds-global-bundle.pem";
    assert_eq!(
        stderr.matches(bundle).count(),
        1,
        "each problem once:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "  - ca-file of databases billing, events: cannot read certificate {bundle}"
        )),
        "the problem names its databases:\n{stderr}"
    );
}

/// The relay's logs written to a file (stderr not a terminal) carry no ANSI escape codes, as
/// text or JSON, with and without `NO_COLOR`.
#[test]
fn logs_written_to_a_file_have_no_colour_codes() {
    let (dir, config) = rds_example();
    for (format, no_color) in [("text", None), ("text", Some("1")), ("json", None)] {
        let log = dir.path().join(format!("relay-{format}-{no_color:?}.log"));
        let file = fs::File::create(&log).expect("create log file");
        let mut command = Command::new(workspace_bin("dbward-relay"));
        command
            .arg("--config")
            .arg(&config)
            .args(["--log-format", format])
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        // The missing ca-file stops the relay at startup, through the logger.
        let status = command.status().expect("run dbward-relay");
        assert_eq!(status.code(), Some(1));
        let written = fs::read(&log).expect("read log file");
        let text = String::from_utf8_lossy(&written);
        assert!(
            text.contains("dbward-relay stopped") && text.contains("rds-global-bundle.pem"),
            "{format}: the startup error is logged:\n{text}"
        );
        assert!(
            !written.contains(&0x1b),
            "{format} (NO_COLOR={no_color:?}): an escape byte in a log file:\n{text:?}"
        );
    }
    // On a real terminal (util-linux `script`): coloured, unless NO_COLOR is set.
    let on_a_terminal = |no_color: Option<&str>| {
        let mut command = Command::new("script");
        command
            .args(["-q", "-e", "-c"])
            .arg(format!(
                "{} --config {}",
                workspace_bin("dbward-relay").display(),
                config.display()
            ))
            .arg("/dev/null")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let out = command.output().expect(
            "`script` (util-linux, package bsdutils on Debian) runs commands on a terminal",
        );
        out.stdout
    };
    let coloured = on_a_terminal(None);
    assert!(
        coloured.contains(&0x1b),
        "a terminal gets colour: {:?}",
        String::from_utf8_lossy(&coloured)
    );
    let plain = on_a_terminal(Some("1"));
    assert!(
        !plain.contains(&0x1b) && String::from_utf8_lossy(&plain).contains("dbward-relay stopped"),
        "NO_COLOR on a terminal: {:?}",
        String::from_utf8_lossy(&plain)
    );
}

/// The `session.end` events of the audit log, once there are at least `count`.
fn session_ends(deployment: &Deployment, count: usize) -> Vec<serde_json::Value> {
    let audit = deployment.audit();
    wait_for(Duration::from_secs(10), || {
        let ends: Vec<_> = audit_lines(&audit)
            .into_iter()
            .filter(|e| e["event"] == "session.end")
            .collect();
        (ends.len() >= count).then_some(ends)
    })
    .unwrap_or_else(|| panic!("fewer than {count} session.end: {:?}", audit_lines(&audit)))
}

/// Backends of `user` that PostgreSQL still runs.
fn backends_of(deployment: &Deployment, user: &str) -> String {
    dbward_tests::superuser_query(
        &deployment.cluster,
        "postgres",
        &format!("select count(*) from pg_stat_activity where usename = '{user}';"),
    )
}

#[test]
fn sighup_ends_revoked_sessions_after_the_grace_and_leaves_others_running() {
    let deployment = Deployment::with_relay("app readonly", "revoke-grace \"2s\"");
    let relay = deployment.relay();

    // Real psql as `app`, idle after its first query; a tokio-postgres session as `app` and one
    // as `readonly`, which the new manifest keeps.
    let mut psql = Command::new(psql_path())
        .args(["-X", "-A", "-t"])
        .arg(deployment.conninfo("app"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = psql.stdin.take().unwrap();
    writeln!(stdin, "select 'before';").unwrap();
    let (app, app_connection) = deployment.connect_watched("app").unwrap();
    let readonly = deployment.connect("readonly");
    assert_eq!(deployment.select(&app, 1).unwrap(), 1);
    assert_eq!(deployment.select(&readonly, 1).unwrap(), 1);
    let wait_psql = wait_for(Duration::from_secs(10), || {
        (backends_of(&deployment, "app") == "2").then_some(())
    });
    assert!(wait_psql.is_some(), "psql's session did not start");

    deployment.apply_with("readonly", "revoke-grace \"2s\"", "");
    let reloaded_at = Instant::now();
    relay.signal("HUP");
    relay.wait_log("revokes sessions in flight");

    // Within the grace the session still works...
    assert_eq!(deployment.select(&app, 2).unwrap(), 2);
    // ...then it is ended with a FATAL saying why, its backend is gone, and `readonly` goes on.
    assert_eq!(
        ended_with(&deployment, app_connection),
        "57P01 terminating connection: alice's access to shop as app was revoked by a \
         configuration reload (user \"app\" is no longer allowed)"
    );
    let took = reloaded_at.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "ended {took:?} after the reload, expected about 2 s"
    );
    let gone = wait_for(Duration::from_secs(10), || {
        (backends_of(&deployment, "app") == "0").then_some(())
    });
    assert!(
        gone.is_some(),
        "the upstream sessions of app were not closed"
    );
    assert_eq!(deployment.select(&readonly, 3).unwrap(), 3);

    writeln!(stdin, "select 'after';").unwrap();
    drop(stdin);
    let out = psql.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("before") && !stdout.contains("after"),
        "{stdout}"
    );
    assert!(
        stderr.contains(
            "FATAL:  terminating connection: alice's access to shop as app was revoked by a \
             configuration reload"
        ),
        "psql said: {stderr}"
    );
    assert!(stderr.contains("ask for a role"), "no hint: {stderr}");

    // Audited and counted with the reason; the other session was not touched.
    let ends = session_ends(&deployment, 2);
    assert_eq!(ends.len(), 2, "{ends:?}");
    for end in &ends {
        assert_eq!(end["reason"], "access_revoked", "{end}");
        assert_eq!(end["db_user"], "app", "{end}");
    }
    assert_eq!(
        relay.metric("dbward_sessions_ended_total{reason=\"access_revoked\"}"),
        2.0
    );
    assert_eq!(relay.metric("dbward_sessions_active"), 1.0);
    assert_eq!(deployment.select(&readonly, 4).unwrap(), 4);
}

#[test]
fn a_reload_that_gives_the_access_back_within_the_grace_ends_nothing() {
    let deployment = Deployment::with_relay("app readonly", "revoke-grace \"3s\"");
    let relay = deployment.relay();
    let (app, _connection) = deployment.connect_watched("app").unwrap();
    deployment.apply("readonly");
    relay.signal("HUP");
    relay.wait_log("revokes sessions in flight");
    deployment.apply("app readonly");
    relay.signal("HUP");
    let reloaded = wait_for(Duration::from_secs(10), || {
        (relay.metric("dbward_config_reloads_total{result=\"ok\"}") == 2.0).then_some(())
    });
    assert!(reloaded.is_some(), "{}", relay.log());
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(deployment.select(&app, 5).unwrap(), 5);
    assert_eq!(
        relay.metric("dbward_sessions_ended_total{reason=\"access_revoked\"}"),
        0.0
    );
}

#[test]
fn sessions_end_when_the_client_certificate_expires_unless_turned_off() {
    // Sessions started while `disconnect-expired-cert #false` is in force outlive their
    // certificate; those started after a reload that turns it back on (the default) do not.
    let deployment = Deployment::with_relay("app", "disconnect-expired-cert #false");
    let relay = deployment.relay();
    let issued = Instant::now();
    deployment.dbward(&[
        "cert",
        "issue",
        deployment.path("manifest.kdl").to_str().unwrap(),
        "--out",
        deployment.out().to_str().unwrap(),
        "--user",
        "alice",
        "--ttl",
        "8s",
        "--dest",
        deployment.path("short").to_str().unwrap(),
    ]);
    let (kept, _kept_connection) = deployment.connect_with_cert("app", "short").unwrap();
    deployment.apply_with("app", "", "");
    relay.signal("HUP");
    let reloaded = wait_for(Duration::from_secs(10), || {
        (relay.metric("dbward_config_reloads_total{result=\"ok\"}") == 1.0).then_some(())
    });
    assert!(reloaded.is_some(), "{}", relay.log());
    let (ended, connection) = deployment.connect_with_cert("app", "short").unwrap();
    assert_eq!(deployment.select(&ended, 1).unwrap(), 1);

    let message = ended_with_within(&deployment, connection, Duration::from_secs(15));
    let took = issued.elapsed();
    assert!(
        message.starts_with("57P01 terminating connection: the client certificate expired at "),
        "{message}"
    );
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(12),
        "ended {took:?} after the certificate was issued for 8 s"
    );
    assert_eq!(deployment.select(&kept, 2).unwrap(), 2);
    let ends = session_ends(&deployment, 1);
    assert_eq!(ends[0]["reason"], "certificate_expired", "{ends:?}");
    assert_eq!(
        relay.metric("dbward_sessions_ended_total{reason=\"certificate_expired\"}"),
        1.0
    );
    // The expired certificate opens nothing any more.
    let refused = deployment.connect_with_cert("app", "short").unwrap_err();
    let refused = refused.as_db_error().map(|e| e.message().to_owned());
    assert!(
        refused
            .as_deref()
            .is_some_and(|m| m.contains("certificate has expired")),
        "{refused:?}"
    );
}

/// Like [`ended_with`], waiting up to `timeout`.
fn ended_with_within(
    deployment: &Deployment,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    timeout: Duration,
) -> String {
    dbward_tests::session_ended_with(&deployment.rt, connection, timeout)
}

#[test]
fn a_locked_out_certificate_is_refused_and_its_open_sessions_end() {
    let deployment = Deployment::with_relay("app", "revoke-grace \"0s\"");
    let relay = deployment.relay();
    let (open, connection) = deployment.connect_watched("app").unwrap();
    assert_eq!(deployment.select(&open, 1).unwrap(), 1);

    // alice's laptop is stolen: certificates issued before now are locked out, alice stays.
    std::thread::sleep(Duration::from_millis(1100));
    let cutoff = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    deployment.apply_with(
        "app",
        "revoke-grace \"0s\"",
        &format!("certificates-issued-after \"{cutoff}\""),
    );
    relay.signal("HUP");
    let message = ended_with(&deployment, connection);
    assert!(
        message.starts_with(
            "57P01 terminating connection: the client certificate of alice was issued at "
        ),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "before the certificates-issued-after cutoff {cutoff}"
        )),
        "{message}"
    );

    // The old certificate is refused with the same words, by real psql.
    let refused = deployment.psql("app", "select 1").unwrap_err();
    assert!(
        refused.contains("FATAL:  the client certificate of alice was issued at")
            && refused.contains("locked out"),
        "{refused}"
    );
    assert!(refused.contains("dbward cert issue"), "no hint: {refused}");

    // A certificate issued after the cutoff works.
    std::thread::sleep(Duration::from_millis(1100));
    deployment.dbward(&[
        "cert",
        "issue",
        deployment.path("manifest.kdl").to_str().unwrap(),
        "--out",
        deployment.out().to_str().unwrap(),
        "--user",
        "alice",
        "--dest",
        deployment.path("alice").to_str().unwrap(),
    ]);
    assert_eq!(deployment.psql("app", "select 7"), Ok("7".into()));

    let events = audit_lines(&deployment.audit());
    let end = events
        .iter()
        .find(|e| e["event"] == "session.end")
        .unwrap_or_else(|| panic!("no session.end: {events:?}"));
    assert_eq!(end["reason"], "certificate_locked_out", "{end}");
    let denied = events
        .iter()
        .find(|e| e["event"] == "session.denied")
        .unwrap_or_else(|| panic!("no session.denied: {events:?}"));
    assert_eq!(denied["reason"], "certificate_locked_out", "{denied}");
    assert_eq!(
        relay.metric("dbward_sessions_denied_total{reason=\"certificate_locked_out\"}"),
        1.0
    );

    // A cutoff in the future would refuse even new certificates: the relay says so when it
    // loads one (`dbward check` cannot: it does not read the clock).
    deployment.apply_with(
        "app",
        "revoke-grace \"0s\"",
        "certificates-issued-after \"2999-01-01T00:00:00Z\"",
    );
    relay.signal("HUP");
    relay.wait_log("certificates-issued-after is in the future");
}

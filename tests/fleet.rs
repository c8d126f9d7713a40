//! Three real `dbward-relay` processes behind a real load balancer (HAProxy from Debian, TCP
//! mode, round robin, health-checked on each relay's `/readyz`), one real PostgreSQL, clients
//! with the certificates `dbward cert issue` wrote: what a team runs in production.
//!
//! The replicas serve byte-identical copies of one frozen config (each has its own copy of
//! `OUT/relay/`, as each host or pod mounts its own), so the manifest's relative
//! `audit "audit.jsonl"` is one audit file per replica. They differ only in `--replica-id` (one
//! through `DBWARD_RELAY_REPLICA_ID`) and in `--listen`/`--metrics`, since they share a host.
//! [`Fleet::with_peers`] also lists them as the relay's `peers`, each with its `--peer-id`.
//!
//! **A machine without HAProxy fails these tests with how to install it; they never skip.**

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dbward_tests::{
    Cluster, RelayProcess, audit_lines, connects, person_tls, session_ended_with, spawn_relay_env,
    wait_for, workspace_bin,
};

/// How to get HAProxy, shown when it is missing.
const HAPROXY_HINT: &str = "the fleet tests run a real HAProxy in front of three relays: on \
    Debian/Ubuntu run `apt-get install -y haproxy` (.ci/run does), or put `haproxy` on PATH";

/// The replicas' ids; the last one is given through `DBWARD_RELAY_REPLICA_ID`, the others with
/// `--replica-id`.
const REPLICAS: [&str; 3] = ["relay-a", "relay-b", "relay-c"];

/// One relay of the fleet.
pub(crate) struct Replica {
    pub(crate) id: &'static str,
    /// Its copy of `OUT/relay/` (frozen.json, certificates, keys) and its `audit.jsonl`.
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
    pub(crate) metrics_port: u16,
    /// Its id in the manifest's `peers` (1, 2, 3) and where it takes forwarded cancels, used
    /// when the fleet has peers ([`Fleet::with_peers`]).
    pub(crate) peer_id: u16,
    pub(crate) peer_port: u16,
    /// `None` once killed.
    pub(crate) process: Option<RelayProcess>,
}

/// A held client session and the replica it landed on.
pub(crate) struct Held {
    pub(crate) client: tokio_postgres::Client,
    pub(crate) connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    pub(crate) replica: usize,
}

/// The HAProxy in front of the fleet.
struct Balancer {
    /// `None` until [`Fleet::start_balancer`].
    child: Option<Child>,
    port: u16,
    /// Its admin socket (`show stat`).
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A PostgreSQL, a manifest applied with the real `dbward`, three relays and HAProxy.
/// People: `alice` and `bob`, each with a certificate in the directory of their name; both may
/// log in to database `shop` as `app`.
pub(crate) struct Fleet {
    pub(crate) replicas: Vec<Replica>,
    balancer: Balancer,
    pub(crate) rt: tokio::runtime::Runtime,
    /// Lines of the manifest's `relay` block.
    relay_extra: String,
    /// Whether the manifest lists the replicas as `peers` (each started with `--peer-id`).
    peers: bool,
    dir: tempfile::TempDir,
    pub(crate) cluster: Cluster,
    /// Held for the fleet's life: the ports its listeners use ([`reserve_port`]).
    _ports: Vec<fs::File>,
}

impl Fleet {
    /// Starts everything; `relay_extra` goes into the manifest's `relay` block.
    pub(crate) fn start(relay_extra: &str) -> Fleet {
        Fleet::launch(relay_extra, false)
    }

    /// Like [`Fleet::start`], with the replicas listed as the relay's `peers`, each started
    /// with its `--peer-id`, so a CancelRequest reaching any replica is forwarded to the
    /// session's.
    pub(crate) fn with_peers(relay_extra: &str) -> Fleet {
        Fleet::launch(relay_extra, true)
    }

    fn launch(relay_extra: &str, peers: bool) -> Fleet {
        let haproxy = haproxy_path();
        let dir = tempfile::Builder::new()
            .prefix("dbward-fleet-")
            .tempdir()
            .unwrap();
        let mut ports = Vec::new();
        let replicas: Vec<Replica> = REPLICAS
            .iter()
            .zip(1..)
            .map(|(id, peer_id)| Replica {
                id,
                dir: dir.path().join(id),
                port: reserve_port(&mut ports),
                metrics_port: reserve_port(&mut ports),
                peer_id,
                peer_port: reserve_port(&mut ports),
                process: None,
            })
            .collect();
        let mut fleet = Fleet {
            replicas,
            balancer: Balancer {
                child: None,
                port: reserve_port(&mut ports),
                socket: dir.path().join("haproxy.sock"),
                log: dir.path().join("haproxy.log"),
            },
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            relay_extra: relay_extra.to_owned(),
            peers,
            dir,
            cluster: Cluster::init(),
            _ports: ports,
        };
        fleet.apply(&["alice", "bob"], "");
        let out = fleet.out();
        fleet.cluster.install_dbward(&out, "shop");
        if let Err(log) = fleet.cluster.try_start() {
            panic!("PostgreSQL did not start with the generated configuration:\n{log}");
        }
        dbward_tests::superuser_sql(&fleet.cluster, "postgres", "create database shop;");
        fleet
            .cluster
            .peer_sql_file("postgres", &out.join("databases/shop/setup.sql"))
            .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));
        fleet.issue("alice", "alice", None);
        fleet.issue("bob", "bob", None);
        for index in 0..fleet.replicas.len() {
            fleet.start_replica(index);
        }
        fleet.start_balancer(&haproxy);
        fleet
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn out(&self) -> PathBuf {
        self.path("out")
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

    /// Writes the manifest with `people` (each with role developer; `alice_extra` in alice's
    /// block), runs `dbward apply`, and copies the relay's files to every replica (what an
    /// operator's deployment does before SIGHUP).
    pub(crate) fn apply(&self, people: &[&str], alice_extra: &str) {
        let users: String = people
            .iter()
            .map(|person| {
                let extra = if *person == "alice" { alice_extra } else { "" };
                format!("user {person} {{\n    roles developer\n    {extra}\n}}\n")
            })
            .collect();
        let manifest = format!(
            r#"dbward version=1
relay {{
    listen "127.0.0.1:{port}"
    public-name "db.localhost"
    client-cert-ttl "1h"
    audit "audit.jsonl"
    metrics "127.0.0.1:{metrics}"
    {relay_extra}
    {peers}
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
    }}
    db-user app {{
        member-of reader
    }}
}}
role developer {{
    allow {{
        databases env=dev
        db-users app
        db-names shop
    }}
}}
{users}"#,
            // The config's own addresses: the first replica's (each passes its own anyway).
            port = self.replicas[0].port,
            metrics = self.replicas[0].metrics_port,
            relay_extra = self.relay_extra,
            peers = if self.peers {
                let list: String = self
                    .replicas
                    .iter()
                    .map(|r| {
                        format!(
                            "        peer {} address=\"127.0.0.1:{}\"\n",
                            r.peer_id, r.peer_port
                        )
                    })
                    .collect();
                format!("peers {{\n{list}    }}")
            } else {
                String::new()
            },
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
        for replica in &self.replicas {
            copy_dir(&self.out().join("relay"), &replica.dir);
        }
    }

    /// `dbward cert issue` for `person` into the directory `dest` (a name under the temp dir).
    pub(crate) fn issue(&self, person: &str, dest: &str, ttl: Option<&str>) {
        let manifest = self.path("manifest.kdl");
        let out = self.out();
        let dest = self.path(dest);
        let mut args = vec![
            "cert",
            "issue",
            manifest.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--user",
            person,
            "--dest",
            dest.to_str().unwrap(),
        ];
        if let Some(ttl) = ttl {
            args.extend(["--ttl", ttl]);
        }
        self.dbward(&args);
    }

    /// Starts (or restarts, on the same ports) replica `index` and waits until it listens.
    pub(crate) fn start_replica(&mut self, index: usize) {
        let replica = &mut self.replicas[index];
        let listen = format!("127.0.0.1:{}", replica.port);
        let metrics = format!("127.0.0.1:{}", replica.metrics_port);
        let mut extra = vec!["--listen", &listen, "--metrics", &metrics];
        if index + 1 < REPLICAS.len() {
            extra.extend(["--replica-id", replica.id]);
        }
        let peer_id = replica.peer_id.to_string();
        if self.peers {
            extra.extend(["--peer-id", &peer_id]);
        }
        // The last replica names itself through the environment, as a pod may.
        let env: &[(&str, &str)] = if index + 1 < REPLICAS.len() {
            &[]
        } else {
            &[("DBWARD_RELAY_REPLICA_ID", replica.id)]
        };
        let process = spawn_relay_env(
            &replica.dir.join("frozen.json"),
            replica.dir.join("relay.log"),
            replica.port,
            replica.metrics_port,
            &extra,
            env,
        );
        replica.process = Some(process);
    }

    /// The running relay of replica `index`.
    pub(crate) fn relay(&self, index: usize) -> &RelayProcess {
        self.replicas[index]
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("replica {} is not running", self.replicas[index].id))
    }

    /// `kill -9` replica `index`, and waits until it is gone (its sockets closed).
    pub(crate) fn kill(&mut self, index: usize) {
        let mut process = self.replicas[index]
            .process
            .take()
            .expect("the replica runs");
        process.child.kill().unwrap();
        process.child.wait().unwrap();
    }

    /// Sends signal `name` (`HUP`, `TERM`, `STOP`) to replica `index`.
    pub(crate) fn signal(&self, index: usize, name: &str) {
        self.relay(index).signal(name);
    }

    /// Sends signal `name` to every running replica.
    pub(crate) fn signal_all(&self, name: &str) {
        for (index, replica) in self.replicas.iter().enumerate() {
            if replica.process.is_some() {
                self.signal(index, name);
            }
        }
    }

    /// The audit events replica `index` wrote.
    pub(crate) fn audit(&self, index: usize) -> Vec<serde_json::Value> {
        audit_lines(&self.replicas[index].dir.join("audit.jsonl"))
    }

    /// A sample of replica `index`'s `/metrics`.
    pub(crate) fn metric(&self, index: usize, sample: &str) -> f64 {
        self.relay(index).metric(sample)
    }

    /// `dbward_sessions_active` of each replica (killed ones count none).
    fn active(&self) -> Vec<f64> {
        (0..self.replicas.len())
            .map(|i| match &self.replicas[i].process {
                Some(process) => process.metric("dbward_sessions_active"),
                None => 0.0,
            })
            .collect()
    }

    /// The balancer's client port.
    pub(crate) fn port(&self) -> u16 {
        self.balancer.port
    }

    /// libpq's connection string through the balancer with the certificate in `cert`.
    pub(crate) fn conninfo(&self, cert: &str, user: &str) -> String {
        let dir = self.path(cert);
        format!(
            "host=shop.db.localhost hostaddr=127.0.0.1 port={} sslmode=verify-full \
             sslrootcert={} sslcert={} sslkey={} user={user} dbname=shop connect_timeout=10",
            self.port(),
            dir.join("root.crt").display(),
            dir.join("postgresql.crt").display(),
            dir.join("postgresql.key").display(),
        )
    }

    /// Real psql through the balancer: Ok(stdout) or Err(stderr).
    pub(crate) fn psql(&self, cert: &str, user: &str, sql: &str) -> Result<String, String> {
        let out = dbward_tests::psql_command(&self.conninfo(cert, user), sql, self.dir.path())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn client_config(&self, user: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("shop.db.localhost")
            .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .port(self.port())
            .user(user)
            .dbname("shop")
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// A tokio-postgres session through the balancer with the certificate in `cert`.
    pub(crate) fn connect(
        &self,
        cert: &str,
        user: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
        ),
        tokio_postgres::Error,
    > {
        let config = self.client_config(user);
        let tls = person_tls(&self.path(cert));
        self.rt.block_on(async {
            let (client, connection) = config.connect(tls).await?;
            Ok((client, tokio::spawn(connection)))
        })
    }

    /// A session through the balancer, held open, and the replica it landed on (the one
    /// whose `dbward_sessions_active` rose). Open held sessions one at a time.
    pub(crate) fn hold(&self, cert: &str, user: &str) -> Held {
        let before = self.active();
        let (client, connection) = self
            .connect(cert, user)
            .unwrap_or_else(|e| panic!("{cert} as {user} through the balancer: {e}"));
        let replica = wait_for(Duration::from_secs(5), || {
            let now = self.active();
            (0..now.len()).find(|&i| now[i] > before[i])
        })
        .unwrap_or_else(|| panic!("no replica counts the new session: {:?}", self.active()));
        Held {
            client,
            connection,
            replica,
        }
    }

    /// One held session on each replica, ordered by replica. Round robin spreads consecutive
    /// sessions, but a health check that fails under load can skip a replica once: sessions
    /// are opened until each replica has one (extra ones are closed).
    pub(crate) fn hold_on_each(&self, cert: &str, user: &str) -> Vec<Held> {
        let mut held: Vec<Option<Held>> = (0..self.replicas.len()).map(|_| None).collect();
        for _ in 0..4 * self.replicas.len() {
            let session = self.hold(cert, user);
            let slot = session.replica;
            if held[slot].is_none() {
                held[slot] = Some(session);
            }
            if held.iter().all(Option::is_some) {
                return held.into_iter().flatten().collect();
            }
        }
        let on: Vec<bool> = held.iter().map(Option::is_some).collect();
        panic!(
            "round robin never reached every replica: {on:?}; haproxy says {:?}",
            self.balancer_status()
        );
    }

    /// `select n` on a held session.
    pub(crate) fn select(&self, held: &Held, n: i32) -> Result<i32, tokio_postgres::Error> {
        self.rt
            .block_on(held.client.query_one("select $1::int4", &[&n]))
            .map(|row| row.get(0))
    }

    /// The FATAL a held session was ended with (`57P01 …`), waiting up to `timeout`.
    pub(crate) fn ended_with(&self, held: Held, timeout: Duration) -> String {
        session_ended_with(&self.rt, held.connection, timeout)
    }

    /// Writes haproxy.cfg, starts HAProxy and waits until it reports every replica up.
    fn start_balancer(&mut self, haproxy: &Path) {
        let servers: String = self
            .replicas
            .iter()
            .map(|r| {
                format!(
                    "    server {} 127.0.0.1:{} check port {}\n",
                    r.id, r.port, r.metrics_port
                )
            })
            .collect();
        let config = format!(
            "global
    log stderr format raw local0 info
    stats socket {socket} mode 600 level admin
    maxconn 2000

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    timeout check 1s
    # A connection refused by a dead relay is retried on another one at once.
    retries 3
    option redispatch 1

frontend postgres
    bind 127.0.0.1:{port}
    default_backend relays

backend relays
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fastinter 100ms downinter 500ms fall 2 rise 2
{servers}",
            socket = self.balancer.socket.display(),
            port = self.balancer.port,
        );
        let path = self.path("haproxy.cfg");
        fs::write(&path, config).unwrap();
        let check = Command::new(haproxy)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c refused the config:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&self.balancer.log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {HAPROXY_HINT}", haproxy.display()));
        self.balancer.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exited = self
                .balancer
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("haproxy exited with {status}:\n{}", self.balancer_log());
            }
            let status = self.balancer_status();
            let all_up =
                status.len() == self.replicas.len() && status.iter().all(|s| s.starts_with("UP"));
            if connects(self.balancer.port) && all_up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not report every relay up: {status:?}\n{}",
                self.balancer_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn balancer_log(&self) -> String {
        fs::read_to_string(&self.balancer.log).unwrap_or_default()
    }

    /// What HAProxy's health checks say of each replica (`UP`, `DOWN`, `UP 1/2`, …), by
    /// replica; empty while its admin socket is not there yet.
    pub(crate) fn balancer_status(&self) -> Vec<String> {
        let Ok(mut socket) = UnixStream::connect(&self.balancer.socket) else {
            return Vec::new();
        };
        socket.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        socket.read_to_string(&mut csv).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (Some(proxy), Some(server), Some(status)) =
            (column("pxname"), column("svname"), column("status"))
        else {
            return Vec::new();
        };
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        self.replicas
            .iter()
            .map(|replica| {
                rows.iter()
                    .find(|row| {
                        row.get(proxy) == Some(&"relays") && row.get(server) == Some(&replica.id)
                    })
                    .and_then(|row| row.get(status))
                    .map_or_else(String::new, |s| (*s).to_owned())
            })
            .collect()
    }
}

/// A port for one of the fleet's listeners, reserved until `locks` is dropped. It comes from
/// below the kernel's ephemeral range (32768-60999 by default), so no client connection can
/// take it as its local port between now and the listener's bind (the fleet's clients make
/// hundreds), and it is locked (`flock` on a file named after it), so two fleets starting at
/// once in other test processes never pick the same one.
fn reserve_port(locks: &mut Vec<fs::File>) -> u16 {
    use std::hash::BuildHasher as _;
    let dir = std::env::temp_dir().join("dbward-fleet-ports");
    fs::create_dir_all(&dir).unwrap();
    let mut seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    for _ in 0..1000 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = 20_000 + u16::try_from((seed >> 33) % 12_000).unwrap();
        let Ok(file) = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        locks.push(file);
        return port;
    }
    panic!("no free port between 20000 and 32000 on 127.0.0.1");
}

/// Copies the files of `from` into `to` (created), keeping their modes.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            continue;
        }
        let dest = to.join(entry.file_name());
        let mode = entry.metadata().unwrap().permissions().mode();
        // Write a new file and rename it over the old, as a deployment would.
        let temp = to.join(format!(".{}.new", entry.file_name().to_string_lossy()));
        fs::copy(&path, &temp).unwrap();
        fs::set_permissions(&temp, fs::Permissions::from_mode(mode)).unwrap();
        fs::rename(&temp, &dest).unwrap();
    }
}

/// `haproxy` on PATH or in /usr/sbin; panics with [`HAPROXY_HINT`] when there is none.
fn haproxy_path() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("haproxy"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("haproxy not found; {HAPROXY_HINT}"))
}

/// Every event of replica `index`'s audit log names it; returns the events.
fn events_name_their_replica(fleet: &Fleet, index: usize) -> Vec<serde_json::Value> {
    let events = fleet.audit(index);
    for event in &events {
        assert_eq!(event["replica"], REPLICAS[index], "{event}");
    }
    events
}

#[test]
fn pgbench_through_the_balancer_reaches_every_replica_and_each_event_names_its_replica() {
    let fleet = Fleet::start("");
    let script = fleet.path("select.sql");
    fs::write(&script, "select 1;\n").unwrap();
    let alice = fleet.path("alice");
    let out = Command::new(dbward_tests::pg_bin_dir().join("pgbench"))
        .args(["-n", "-C", "-c", "4", "-j", "2", "-t", "25", "-f"])
        .arg(&script)
        .env("HOME", fleet.path("."))
        .env("PGHOST", "shop.db.localhost")
        .env("PGHOSTADDR", "127.0.0.1")
        .env("PGPORT", fleet.port().to_string())
        .env("PGUSER", "app")
        .env("PGDATABASE", "shop")
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", alice.join("root.crt"))
        .env("PGSSLCERT", alice.join("postgresql.crt"))
        .env("PGSSLKEY", alice.join("postgresql.key"))
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSERVICEFILE")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("number of transactions actually processed: 100/100"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}\n{stderr}"
    );

    // Every replica served sessions: pgbench's 100 and the one it opens first to look at the
    // server. Each replica wrote its own audit file, and every event in it names that replica.
    let ends = |index: usize| {
        fleet
            .audit(index)
            .iter()
            .filter(|e| e["event"] == "session.end")
            .count()
    };
    let all_ended = wait_for(Duration::from_secs(10), || {
        ((0..REPLICAS.len()).map(ends).sum::<usize>() == 101).then_some(())
    });
    assert!(
        all_ended.is_some(),
        "{:?}",
        (0..REPLICAS.len()).map(ends).collect::<Vec<_>>()
    );
    for (index, &id) in REPLICAS.iter().enumerate() {
        let events = events_name_their_replica(&fleet, index);
        let starts: Vec<_> = events
            .iter()
            .filter(|e| e["event"] == "session.start")
            .collect();
        assert!(
            starts
                .iter()
                .all(|e| e["identity"] == "alice" && e["db_user"] == "app"),
            "{events:?}"
        );
        // Round robin: about a third each.
        assert!(
            (25..=42).contains(&starts.len()),
            "{}: {} sessions",
            id,
            starts.len()
        );
        assert_eq!(starts.len(), ends(index));
        // The replica id is in the startup log line too.
        assert!(
            fleet
                .relay(index)
                .log()
                .contains(&format!("replica={}", id)),
            "{}",
            fleet.relay(index).log()
        );
    }
}

#[test]
fn a_replica_killed_mid_run_fails_only_its_own_sessions() {
    let mut fleet = Fleet::start("");
    // One idle session held on each replica.
    let held = fleet.hold_on_each("alice", "app");

    // Four clients each open 30 sessions in a row (connect, select, close) through the
    // balancer; replica b is killed once 24 have succeeded.
    const CLIENTS: usize = 4;
    const EACH: usize = 30;
    let succeeded = Arc::new(AtomicUsize::new(0));
    let config = fleet.client_config("app");
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let config = config.clone();
        let tls = person_tls(&fleet.path("alice"));
        let succeeded = Arc::clone(&succeeded);
        clients.push(fleet.rt.spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..EACH {
                let started = Instant::now();
                let result = async {
                    let (client, connection) = config.connect(tls.clone()).await?;
                    let connection = tokio::spawn(connection);
                    let row = client.query_one("select 1::int4", &[]).await?;
                    drop(client);
                    let _ = connection.await;
                    Ok::<i32, tokio_postgres::Error>(row.get(0))
                }
                .await;
                match result {
                    Ok(1) => {
                        succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push((started, format!("{other:?}"))),
                }
            }
            failures
        }));
    }
    let reached = wait_for(Duration::from_secs(60), || {
        (succeeded.load(Ordering::Relaxed) >= 24).then_some(())
    });
    assert!(reached.is_some(), "the clients did not get going");
    fleet.kill(1);
    let killed = Instant::now();
    let failures: Vec<(Instant, String)> = clients
        .into_iter()
        .flat_map(|client| fleet.rt.block_on(client).unwrap())
        .collect();

    // Only sessions that were on the killed replica when it died failed: at most one per
    // client, each started before the kill. Every session started after it worked.
    assert!(failures.len() <= CLIENTS, "{failures:?}");
    for (started, error) in &failures {
        assert!(
            *started < killed,
            "a session started after the kill failed: {error}"
        );
    }
    assert_eq!(
        succeeded.load(Ordering::Relaxed) + failures.len(),
        CLIENTS * EACH
    );

    // The sessions held on the other replicas are untouched; the one on b is gone.
    let mut held = held.into_iter();
    let (a, b, c) = (
        held.next().unwrap(),
        held.next().unwrap(),
        held.next().unwrap(),
    );
    assert_eq!(fleet.select(&a, 11).unwrap(), 11);
    assert_eq!(fleet.select(&c, 13).unwrap(), 13);
    assert!(
        fleet.select(&b, 12).is_err(),
        "the killed replica's session answered"
    );

    // HAProxy's health check marks b down; new connections keep working, through a and c.
    let down = wait_for(Duration::from_secs(5), || {
        let status = fleet.balancer_status();
        (status.len() == 3 && status[1].starts_with("DOWN")).then_some(())
    });
    assert!(
        down.is_some(),
        "{:?}\n{}",
        fleet.balancer_status(),
        fleet.balancer_log()
    );
    for n in 0..4 {
        assert_eq!(
            fleet.psql("alice", "app", &format!("select {n}")),
            Ok(n.to_string())
        );
    }

    // Restarted, b is checked up again and takes sessions.
    fleet.start_replica(1);
    let up = wait_for(Duration::from_secs(5), || {
        fleet.balancer_status()[1].starts_with("UP").then_some(())
    });
    assert!(up.is_some(), "{:?}", fleet.balancer_status());
    let landed: Vec<usize> = (0..3).map(|_| fleet.hold("alice", "app").replica).collect();
    assert!(landed.contains(&1), "{landed:?}");
    events_name_their_replica(&fleet, 1);
    assert_eq!(fleet.select(&a, 21).unwrap(), 21);
}

#[test]
fn sighup_on_every_replica_ends_a_removed_persons_sessions_wherever_they_run() {
    let fleet = Fleet::start("revoke-grace \"1s\"");
    let bob = fleet.hold_on_each("bob", "app");
    let alice = fleet.hold_on_each("alice", "app");
    for held in bob.iter().chain(&alice) {
        assert_eq!(fleet.select(held, 1).unwrap(), 1);
    }

    // bob leaves the team: the manifest without him, applied and copied to every replica,
    // then SIGHUP everywhere.
    fleet.apply(&["alice"], "");
    let reloaded = Instant::now();
    fleet.signal_all("HUP");
    for held in bob {
        let replica = held.replica;
        let message = fleet.ended_with(held, Duration::from_secs(10));
        assert!(
            message.starts_with(
                "57P01 terminating connection: bob's access to shop as app was revoked by a \
                 configuration reload"
            ),
            "{}: {message}",
            REPLICAS[replica]
        );
    }
    let took = reloaded.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "ended {took:?} after the reload, expected about the 1 s grace"
    );
    for held in &alice {
        assert_eq!(fleet.select(held, 2).unwrap(), 2);
    }
    // Each replica audited its own revocation, naming itself.
    for (index, &id) in REPLICAS.iter().enumerate() {
        let ended = wait_for(Duration::from_secs(5), || {
            fleet
                .audit(index)
                .into_iter()
                .find(|e| e["event"] == "session.end" && e["reason"] != "client_closed")
        })
        .unwrap_or_else(|| panic!("{}: no session.end", id));
        assert_eq!(ended["reason"], "access_revoked", "{ended}");
        assert_eq!(ended["identity"], "bob", "{ended}");
        assert_eq!(ended["replica"], id, "{ended}");
        events_name_their_replica(&fleet, index);
    }
    // bob cannot come back through any replica.
    for _ in 0..REPLICAS.len() {
        let refused = fleet.psql("bob", "app", "select 1").unwrap_err();
        assert!(refused.contains("FATAL"), "{refused}");
    }
}

#[test]
fn an_expiring_certificate_ends_its_sessions_on_every_replica() {
    let fleet = Fleet::start("");
    let issued = Instant::now();
    fleet.issue("alice", "short", Some("6s"));
    let short = fleet.hold_on_each("short", "app");
    let long = fleet.hold_on_each("alice", "app");
    for held in short {
        let replica = held.replica;
        let message = fleet.ended_with(held, Duration::from_secs(15));
        assert!(
            message.starts_with("57P01 terminating connection: the client certificate expired at "),
            "{}: {message}",
            REPLICAS[replica]
        );
    }
    let took = issued.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(11),
        "ended {took:?} after a certificate was issued for 6 s"
    );
    for held in &long {
        assert_eq!(fleet.select(held, 3).unwrap(), 3);
    }
    for (index, &id) in REPLICAS.iter().enumerate() {
        let ended = wait_for(Duration::from_secs(5), || {
            fleet
                .audit(index)
                .into_iter()
                .find(|e| e["event"] == "session.end" && e["reason"] != "client_closed")
        })
        .unwrap_or_else(|| panic!("{}: no session.end", id));
        assert_eq!(ended["reason"], "certificate_expired", "{ended}");
        assert_eq!(ended["replica"], id, "{ended}");
    }
    let refused = fleet.psql("short", "app", "select 1").unwrap_err();
    assert!(refused.contains("certificate has expired"), "{refused}");
}

#[test]
fn a_locked_out_certificate_is_refused_by_every_replica_and_its_sessions_end() {
    let fleet = Fleet::start("revoke-grace \"0s\"");
    let stolen = fleet.hold_on_each("alice", "app");
    let bob = fleet.hold_on_each("bob", "app");

    // alice's laptop is stolen: her certificates issued before now are locked out.
    std::thread::sleep(Duration::from_millis(1100));
    let cutoff = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    fleet.apply(
        &["alice", "bob"],
        &format!("certificates-issued-after \"{cutoff}\""),
    );
    fleet.signal_all("HUP");
    for held in stolen {
        let replica = held.replica;
        let message = fleet.ended_with(held, Duration::from_secs(10));
        assert!(
            message.starts_with(
                "57P01 terminating connection: the client certificate of alice was issued at "
            ) && message.contains(&format!(
                "before the certificates-issued-after cutoff {cutoff}"
            )),
            "{}: {message}",
            REPLICAS[replica]
        );
    }
    for held in &bob {
        assert_eq!(fleet.select(held, 4).unwrap(), 4);
    }

    // The old certificate is refused through the balancer, by every replica.
    let denied = |index: usize| {
        fleet.metric(
            index,
            "dbward_sessions_denied_total{reason=\"certificate_locked_out\"}",
        )
    };
    for _ in 0..4 * REPLICAS.len() {
        let refused = fleet.psql("alice", "app", "select 1").unwrap_err();
        assert!(
            refused.contains("FATAL:  the client certificate of alice was issued at")
                && refused.contains("locked out"),
            "{refused}"
        );
        if (0..REPLICAS.len()).all(|index| denied(index) >= 1.0) {
            break;
        }
    }
    for (index, &id) in REPLICAS.iter().enumerate() {
        assert!(denied(index) >= 1.0, "{} refused nothing", id);
        let denied = wait_for(Duration::from_secs(5), || {
            fleet
                .audit(index)
                .into_iter()
                .find(|e| e["event"] == "session.denied")
        })
        .unwrap_or_else(|| panic!("{}: no session.denied", id));
        assert_eq!(denied["reason"], "certificate_locked_out", "{denied}");
        assert_eq!(denied["replica"], id, "{denied}");
    }

    // A certificate issued after the cutoff works again.
    std::thread::sleep(Duration::from_millis(1100));
    fleet.issue("alice", "alice", None);
    assert_eq!(fleet.psql("alice", "app", "select 7"), Ok("7".into()));
}

#[test]
fn psql_ctrl_c_cancels_the_query_whatever_replica_the_cancel_request_reaches() {
    // psql sends its CancelRequest on a new connection, which the balancer sends to the next
    // replica in turn: most cancels land on another replica than the session's.
    let fleet = Fleet::with_peers("");
    let sleeping = |fleet: &Fleet| {
        dbward_tests::superuser_query(
            &fleet.cluster,
            "postgres",
            "select count(*) from pg_stat_activity \
             where state = 'active' and query = 'select pg_sleep(20)';",
        )
    };
    const ROUNDS: usize = 6;
    for round in 0..ROUNDS {
        let psql = dbward_tests::psql_command(
            &fleet.conninfo("alice", "app"),
            "select pg_sleep(20)",
            fleet.dir.path(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let running = wait_for(Duration::from_secs(10), || {
            (sleeping(&fleet) == "1").then_some(())
        });
        assert!(running.is_some(), "round {round}: the query never ran");
        // What Ctrl+C does.
        let status = Command::new("kill")
            .args(["-INT", &psql.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let sent = Instant::now();
        let out = psql.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("canceling statement due to user request"),
            "round {round}: {stderr}"
        );
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "round {round}: cancelled {:?} after Ctrl+C",
            sent.elapsed()
        );
        let gone = wait_for(Duration::from_secs(5), || {
            (sleeping(&fleet) == "0").then_some(())
        });
        assert!(gone.is_some(), "round {round}: the query still runs");
    }
    // Most cancels went through another replica, and every replica forwarded some.
    let forwarded: Vec<f64> = (0..REPLICAS.len())
        .map(|i| fleet.metric(i, "dbward_cancel_forwards_total{outcome=\"forwarded\"}"))
        .collect();
    let served: Vec<f64> = (0..REPLICAS.len())
        .map(|i| fleet.metric(i, "dbward_peer_forwards_received_total{outcome=\"served\"}"))
        .collect();
    assert!(
        forwarded.iter().sum::<f64>() >= (ROUNDS / 2) as f64,
        "forwarded {forwarded:?}"
    );
    assert!(
        forwarded.iter().filter(|n| **n > 0.0).count() >= 2,
        "forwarded {forwarded:?}"
    );
    assert_eq!(
        forwarded.iter().sum::<f64>(),
        served.iter().sum::<f64>(),
        "forwarded {forwarded:?}, served {served:?}"
    );
}

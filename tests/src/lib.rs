//! Test harness: real PostgreSQL clusters, real `psql`, and the workspace's own binaries.
//!
//! A [`Cluster`] is a throw-away PostgreSQL data directory in a temp dir, started on a free
//! loopback port with its Unix socket inside the temp dir, and stopped (`immediate`) and deleted
//! when dropped — also when a test panics. PostgreSQL refuses to run as root, so when the tests
//! run as root the server runs as the `postgres` OS user (`runuser -u postgres --`) and the
//! temp dir is handed to that user.
//!
//! **A test that cannot find PostgreSQL fails with instructions; it never skips.**

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How to install what the end-to-end tests need, shown whenever something is missing.
pub const INSTALL_HINT: &str = "the end-to-end tests need the PostgreSQL server binaries \
    (initdb, pg_ctl, postgres) and psql: on Debian/Ubuntu run \
    `apt-get install -y postgresql-15 postgresql-client-15` (or any version >= 13), \
    or set DBWARD_PG_BIN to the directory holding initdb and pg_ctl";

/// The directory holding `initdb` and `pg_ctl`: `$DBWARD_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`. Panics with [`INSTALL_HINT`] when there is none.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DBWARD_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").exists(),
            "DBWARD_PG_BIN={} has no initdb; {INSTALL_HINT}",
            dir.display()
        );
        return dir;
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!("no PostgreSQL server found under /usr/lib/postgresql; {INSTALL_HINT}"),
    }
}

/// The `psql` to use: the one next to the server binaries, else the one on `PATH`.
pub fn psql_path() -> PathBuf {
    let beside = pg_bin_dir().join("psql");
    if beside.exists() {
        return beside;
    }
    match Command::new("psql").arg("--version").output() {
        Ok(out) if out.status.success() => PathBuf::from("psql"),
        _ => panic!("psql not found; {INSTALL_HINT}"),
    }
}

/// A free TCP port on 127.0.0.1, picked by binding port 0.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Path of a binary built from this workspace (`dbward`, `dbward-relay`), next to the test
/// executable's `deps/` directory. `cargo nextest run --workspace` builds them before tests run
/// because each one's package has integration tests of its own (`compiler/tests/`,
/// `runtime/relay/tests/`): cargo builds a package's binaries only for those.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo nextest run --workspace` \
         (or `cargo build --workspace` first)",
        path.display()
    );
    path
}

/// Runs a workspace binary (see [`workspace_bin`]) with no standard input; panics with its
/// output when it fails.
pub fn run_bin(name: &str, args: &[&str]) -> Output {
    let out = Command::new(workspace_bin(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Real psql running one SQL command against a libpq connection string, unaligned and without
/// headers, stopping at the first error. Hermetic: `HOME` is `home` (no `~/.postgresql`
/// certificates), and no service file, password or sslmode leaks in from the environment.
pub fn psql_command(conninfo: &str, sql: &str, home: &Path) -> Command {
    let mut command = Command::new(psql_path());
    command
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .env("HOME", home)
        .env_remove("PGSERVICEFILE")
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    command
}

/// Whether this process runs as root, in which case PostgreSQL runs as `postgres`.
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `(uid, gid)` of the `postgres` OS user.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "there is no `postgres` OS user to run PostgreSQL as (tests run as root); {INSTALL_HINT}"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// Builds a command that runs as the user owning the cluster.
fn as_cluster_user(program: &Path, as_root: bool) -> Command {
    if as_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A throw-away PostgreSQL cluster.
pub struct Cluster {
    /// Owns the whole tree; deleted on drop after the server stops.
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_root: bool,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    running: bool,
    /// Environment variables for the server process (see [`Cluster::set_server_env`]).
    server_env: Vec<(String, String)>,
}

impl Cluster {
    /// Runs `initdb` (superuser `postgres`, `trust` for local socket connections only) in a new
    /// temp dir. The server is not started; install configuration first, then [`Cluster::start`].
    pub fn init() -> Cluster {
        let bin = pg_bin_dir();
        let as_root = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("dbward-pg-")
            .tempdir()
            .expect("create temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let cluster = Cluster {
            dir,
            bin,
            as_root,
            port: free_port(),
            running: false,
            server_env: Vec::new(),
        };
        fs::create_dir_all(cluster.socket_dir()).expect("socket dir");
        fs::create_dir_all(cluster.config_dir()).expect("config dir");
        cluster.chown_tree();
        let out = as_cluster_user(&cluster.bin.join("initdb"), as_root)
            .arg("-D")
            .arg(cluster.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=reject",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}; {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "initdb failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.append_conf(&format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\nlog_connections = on\n",
            cluster.port,
            cluster.socket_dir().display()
        ));
        cluster
    }

    /// Root of the temp dir.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    /// Where the Unix socket lives.
    pub fn socket_dir(&self) -> PathBuf {
        self.root().join("run")
    }

    /// A directory readable by the server for generated configuration and certificates
    /// (use it as the manifest's `config-dir`).
    pub fn config_dir(&self) -> PathBuf {
        self.root().join("conf")
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.root().join("server.log")
    }

    /// The server log's contents, for assertion messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Appends lines to the data directory's `postgresql.conf`.
    pub fn append_conf(&self, text: &str) {
        use std::io::Write;
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(file, "{text}").expect("append postgresql.conf");
    }

    /// Copies a file into the cluster's tree (e.g. `conf/server.key`) with the given mode,
    /// owned by the server's user.
    pub fn install_file(&self, relative: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let path = self.root().join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        fs::write(&path, bytes).expect("write file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        self.chown_tree();
        path
    }

    /// Hands the whole tree to the `postgres` user when running as root.
    pub fn chown_tree(&self) {
        if !self.as_root {
            return;
        }
        let (uid, gid) = postgres_ids();
        fn walk(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
            if path.is_dir() && !path.is_symlink() {
                for entry in fs::read_dir(path)? {
                    walk(&entry?.path(), uid, gid)?;
                }
            }
            Ok(())
        }
        walk(self.root(), uid, gid).expect("chown cluster tree to postgres");
    }

    /// Starts the server and waits until it accepts connections. Panics with the server log
    /// when it does not start.
    pub fn start(&mut self) {
        self.chown_tree();
        let out = self.pg_ctl(&["start", "-w", "-t", "60"]);
        assert!(
            out.status.success(),
            "PostgreSQL did not start:\n{}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.running = true;
    }

    /// Tries to start the server; returns the server log on failure instead of panicking.
    pub fn try_start(&mut self) -> Result<(), String> {
        self.chown_tree();
        let out = self.pg_ctl(&["start", "-w", "-t", "60"]);
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            ))
        }
    }

    /// Restarts the server (`fast` mode), e.g. to test sessions that lose their upstream.
    pub fn restart(&mut self) {
        let out = self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"]);
        assert!(
            out.status.success(),
            "PostgreSQL did not restart:\n{}",
            self.log()
        );
        self.running = true;
    }

    /// Asks the server to re-read its configuration (pg_hba.conf, pg_ident.conf).
    pub fn reload(&self) {
        let out = self.pg_ctl(&["reload"]);
        assert!(out.status.success(), "pg_ctl reload failed: {}", self.log());
    }

    /// Sets an environment variable for the server, from the next start on (e.g.
    /// `OPENSSL_CONF`, to configure what its TLS offers beyond `postgresql.conf`).
    pub fn set_server_env(&mut self, key: &str, value: &str) {
        self.server_env.push((key.to_owned(), value.to_owned()));
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        as_cluster_user(&self.bin.join("pg_ctl"), self.as_root)
            .envs(self.server_env.iter().map(|(k, v)| (k, v)))
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl")
    }

    /// Runs SQL as the superuser over the Unix socket with `psql -v ON_ERROR_STOP=1`.
    /// Returns stdout; panics with stderr on failure.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let out = self.try_sql(database, sql);
        match out {
            Ok(stdout) => stdout,
            Err(stderr) => panic!("psql as superuser failed:\n{stderr}\nSQL:\n{sql}"),
        }
    }

    /// Like [`Cluster::sql`], returning stderr on failure.
    pub fn try_sql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(psql_path())
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .env_remove("PGSERVICEFILE")
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs a SQL file as the superuser, stopping at the first error. It runs as the server's
    /// OS user, so it works under initdb's rules and under dbward's generated pg_hba.conf alike.
    pub fn sql_file(&self, database: &str, path: &Path) -> Result<String, String> {
        self.peer_sql_file(database, path)
    }
}

impl Cluster {
    /// Runs a SQL file as the superuser over the Unix socket, with psql running as the server's
    /// OS user, so `local all postgres peer` (what dbward's generated pg_hba.conf keeps)
    /// authenticates it. Stops at the first error; returns stdout, or stderr on failure.
    pub fn peer_sql_file(&self, database: &str, path: &Path) -> Result<String, String> {
        self.peer_sql_file_output(database, path)
            .map(|(stdout, _)| stdout)
    }

    /// Like [`Cluster::peer_sql_file`], returning stdout and stderr (where psql prints the
    /// server's warnings) on success.
    pub fn peer_sql_file_output(
        &self,
        database: &str,
        path: &Path,
    ) -> Result<(String, String), String> {
        // psql must be able to read the file as the cluster's user: copy it into the tree.
        let local = self.root().join(format!(
            "peer-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("script.sql")
        ));
        fs::copy(path, &local).map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
        self.chown_tree();
        let out = as_cluster_user(&psql_path(), self.as_root)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .arg("-f")
            .arg(&local)
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        let _ = fs::remove_file(&local);
        if out.status.success() {
            Ok((
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Installs the PostgreSQL configuration dbward generated for `database` (under `out`, an
    /// apply's output directory) into this cluster: every file of `databases/<database>/`
    /// except setup.sql goes to [`Cluster::config_dir`] (keys 0600, owned by the server's
    /// user), and the data directory's postgresql.conf includes the generated snippet. The
    /// manifest's `config-dir` must be this cluster's `config_dir()`. Start the server after.
    pub fn install_dbward(&self, out: &Path, database: &str) {
        let dir = out.join("databases").join(database);
        let entries = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no generated files in {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("read dir entry").path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name == "setup.sql" {
                continue;
            }
            let bytes = fs::read(&path).expect("read generated file");
            let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
            self.install_file(&format!("conf/{name}"), &bytes, mode);
        }
        self.append_conf(&format!(
            "include '{}'",
            self.config_dir().join("postgresql.conf").display()
        ));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under an output directory, by `/`-separated relative path: bytes and mode.
pub type Tree = BTreeMap<String, (Vec<u8>, u32)>;

/// Compiles a manifest and writes every artifact under `out` through the real `dbward apply`
/// binary, as an operator would (the manifest is written next to `out`, as `out.kdl`). Returns
/// what it wrote; panics with dbward's output when the apply fails.
pub fn dbward_apply(text: &str, out: &Path) -> Tree {
    let manifest = out.with_extension("kdl");
    fs::write(&manifest, text).expect("write manifest");
    let run = Command::new(workspace_bin("dbward"))
        .arg("apply")
        .arg(&manifest)
        .arg("--out")
        .arg(out)
        .arg("--auto-approve")
        .output()
        .expect("run dbward apply");
    assert!(
        run.status.success(),
        "dbward apply failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let mut tree = Tree::new();
    fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
        for entry in fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, tree);
            } else {
                let relative = path.strip_prefix(root).expect("under root");
                let mode = entry.metadata().expect("metadata").permissions().mode() & 0o777;
                tree.insert(
                    relative.to_string_lossy().into_owned(),
                    (fs::read(&path).expect("read artifact"), mode),
                );
            }
        }
    }
    walk(out, out, &mut tree);
    tree
}

/// Runs SQL as the superuser over the local socket with psql running as the server's OS user,
/// as the `peer` line of dbward's pg_hba.conf requires. Panics with the SQL and the server log
/// on failure.
pub fn superuser_sql(cluster: &Cluster, database: &str, sql: &str) -> String {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(file.path(), sql).expect("write sql");
    cluster
        .peer_sql_file(database, file.path())
        .unwrap_or_else(|e| {
            panic!(
                "superuser SQL failed: {e}\nSQL: {sql}\nlog:\n{}",
                cluster.log()
            )
        })
}

/// Like [`superuser_sql`] for a query: its rows unaligned, without headers, trimmed.
pub fn superuser_query(cluster: &Cluster, database: &str, sql: &str) -> String {
    superuser_sql(
        cluster,
        database,
        &format!("\\pset tuples_only on\n\\pset format unaligned\n{sql}"),
    )
    .trim()
    .to_owned()
}

/// The statements a run of setup.sql reports it executed (its `dbward change: ` notices, as
/// psql prints them on stderr), first line of each, in order. The prefix is
/// `dbward::emit::sql::NOTICE_PREFIX`; `convergence` checks that the two agree.
pub fn change_notices(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|line| line.split_once("NOTICE:  dbward change: "))
        .map(|(_, statement)| statement.to_owned())
        .collect()
}

/// A `dbward-relay` child process started by [`spawn_relay`]; killed on drop.
pub struct RelayProcess {
    pub child: Child,
    /// Its stderr (the relay's log).
    pub log: PathBuf,
    /// Where it listens for clients.
    pub port: u16,
    /// Its `/metrics`, `/livez`, `/readyz` endpoint.
    pub metrics_port: u16,
}

impl RelayProcess {
    /// The relay's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (`HUP`, `TERM`, `KILL`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// `GET path` on the metrics endpoint: (status code, content type, body).
    pub fn get(&self, path: &str) -> (u16, String, String) {
        http_get(self.metrics_port, path)
    }

    /// The value of one sample line of `/metrics`, e.g. `dbward_sessions_active`.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, _, body) = self.get("/metrics");
        body.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{body}"))
            .parse()
            .expect("a number")
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_for(timeout, || self.child.try_wait().ok().flatten())
    }

    /// Waits up to 10 s until the log contains `needle`; panics with the log otherwise.
    pub fn wait_log(&self, needle: &str) {
        let found = wait_for(Duration::from_secs(10), || {
            self.log().contains(needle).then_some(())
        });
        assert!(
            found.is_some(),
            "the relay never logged {needle:?}:\n{}",
            self.log()
        );
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `dbward-relay --config config extra…` with its log in `log` (`RUST_LOG=info`), and
/// waits until `port` and `metrics_port` accept connections; panics with the log if it exits.
pub fn spawn_relay(
    config: &Path,
    log: PathBuf,
    port: u16,
    metrics_port: u16,
    extra: &[&str],
) -> RelayProcess {
    spawn_relay_env(config, log, port, metrics_port, extra, &[])
}

/// Like [`spawn_relay`], with `env` added to the relay's environment.
pub fn spawn_relay_env(
    config: &Path,
    log: PathBuf,
    port: u16,
    metrics_port: u16,
    extra: &[&str],
    env: &[(&str, &str)],
) -> RelayProcess {
    let child = Command::new(workspace_bin("dbward-relay"))
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("create the relay log"))
        .spawn()
        .expect("start dbward-relay");
    let mut running = RelayProcess {
        child,
        log,
        port,
        metrics_port,
    };
    let up = wait_for(Duration::from_secs(20), || {
        if let Ok(Some(status)) = running.child.try_wait() {
            panic!("the relay exited with {status}:\n{}", running.log());
        }
        (connects(running.port) && connects(running.metrics_port)).then_some(())
    });
    assert!(up.is_some(), "the relay did not listen:\n{}", running.log());
    running
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn connects(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A minimal HTTP/1.1 GET on 127.0.0.1:`port` (the relay's endpoint needs nothing more),
/// returning status, content type and body.
pub fn http_get(port: u16, path: &str) -> (u16, String, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Every line of an audit log, parsed; panics on a line that is not JSON. A missing file has
/// no lines.
pub fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("audit line {line:?}: {e}"))
        })
        .collect()
}

/// tokio-postgres's TLS for a person's `dbward cert issue --dest dir` files: trusts
/// `root.crt`, presents `postgresql.crt` with `postgresql.key`.
pub fn person_tls(dir: &Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("root.crt")).expect("root.crt") {
        roots.add(cert.expect("root.crt PEM")).expect("add root");
    }
    let chain = CertificateDer::pem_file_iter(dir.join("postgresql.crt"))
        .expect("postgresql.crt")
        .map(|c| c.expect("postgresql.crt PEM"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("postgresql.key")).expect("postgresql.key");
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client certificate");
    tokio_postgres_rustls::MakeRustlsConnect::new(tls)
}

/// The SQLSTATE and message (`57P01 terminating connection: …`) of the FATAL a tokio-postgres
/// session's connection task ended with, waiting up to `timeout` for it: a FATAL that ends a
/// session arrives there, not at a query. Panics when it does not end, or ends without one.
pub fn session_ended_with(
    rt: &tokio::runtime::Runtime,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    timeout: Duration,
) -> String {
    let ended = rt
        .block_on(async { tokio::time::timeout(timeout, connection).await })
        .unwrap_or_else(|_| panic!("the session was not ended within {timeout:?}"))
        .expect("the connection task panicked");
    let error = ended.expect_err("the session ended without an error");
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("no server error: {error:?}"));
    assert_eq!(db.severity(), "FATAL", "{db:?}");
    format!("{} {}", db.code().code(), db.message())
}

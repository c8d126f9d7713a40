//! The live phase: what the running databases need changed, and changing it.
//!
//! There is no second implementation of convergence here. For every database with an
//! `admin-user` and every database name it serves, this module runs that database's setup.sql
//! (the one the emitters made, see `emit/sql/change.rs`) as the admin user in one transaction,
//! collects its `dbward change: ` notices, and rolls back ([`Mode::Plan`]) or commits
//! ([`Mode::Apply`]). What a plan shows is therefore exactly what an apply executes. Applying a
//! saved plan ([`Target::expect`]), the transaction commits only when it executed exactly the
//! statements the plan showed; it is rolled back and the name refused otherwise.
//!
//! Databases are reached the way the relay reaches them: self-hosted ones over mutual TLS with
//! the relay's client certificate (which `pg_ident.conf` maps to the admin user), verifying the
//! server against the CA the compiler issued, for the frozen config's `tls.server_name`; RDS,
//! Azure and Cloud SQL ones with the admin user's cloud token as the password ([`connect`]; a
//! Cloud SQL instance without `host` or `ca-file` is looked up and presented an ephemeral client
//! certificate, as the relay does, once per instance and admin user per run).
//! Databases run in parallel, at most [`PARALLEL`] at once, and so do the database names of
//! each (an apply converges the first name alone first).

mod connect;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::{AsyncMessage, Client};

use crate::emit::{Artifacts, Logins};
use crate::model::Model;

/// How many databases are read or converged at once.
pub const PARALLEL: usize = 4;

/// How often a transaction PostgreSQL asks to retry is retried, in all.
const ATTEMPTS: u32 = 4;

/// What the setup.sql run does with its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Roll back: report what would change.
    Plan,
    /// Commit: change it.
    Apply,
}

/// One database the live phase reaches, with everything needed to connect (no file is read).
#[derive(Clone)]
pub struct Target {
    /// The manifest's name of the database.
    pub database: String,
    pub host: String,
    pub port: u16,
    pub admin_user: String,
    /// The database name the admin user connects to first (to list the names under `"*"`).
    pub default_database: String,
    /// The names setup.sql runs in; `None` for every database that allows connections.
    pub db_names: Option<BTreeSet<String>>,
    pub setup_sql: String,
    tls: NamedTls,
    /// Applying a saved plan: the statements the plan showed for each database name it read
    /// (see [`Target::expect`]); `None` applying a manifest or planning.
    expected: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// How the admin user logs in: the relay's certificate, or a cloud token.
    login: connect::Login,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No token, key or SQL: where and as whom.
        f.debug_struct("Target")
            .field("database", &self.database)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("admin_user", &self.admin_user)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Makes an apply of this target refuse, naming it, every database name where setup.sql
    /// would now execute other statements than `expected` (what a saved plan showed for it,
    /// server-wide statements only under the first name, as [`deduplicated`] gives them), and
    /// every name that is not in `expected` or no longer exists. The check runs inside each
    /// name's own transaction, which is rolled back on a mismatch: no window between check and
    /// change.
    pub fn expect(&mut self, expected: std::collections::BTreeMap<String, Vec<String>>) {
        self.expected = Some(expected);
    }
}

/// The fingerprint a saved plan records for one database name: the SHA-256 of the statements
/// setup.sql executes there, in order.
pub fn fingerprint(statements: &[String]) -> String {
    crate::plan::sha256(
        serde_json::to_string(statements)
            .unwrap_or_default()
            .as_bytes(),
    )
}

/// The TLS connector, verifying the server's certificate against the frozen config's
/// `tls.server_name` (what the relay verifies) rather than the `host` it connects to.
#[derive(Clone)]
struct NamedTls {
    inner: tokio_postgres_rustls::MakeRustlsConnect,
    server_name: String,
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for NamedTls
where
    tokio_postgres_rustls::MakeRustlsConnect: tokio_postgres::tls::MakeTlsConnect<S>,
{
    type Stream =
        <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Stream;
    type TlsConnect = <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        S,
    >>::TlsConnect;
    type Error =
        <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, _host: &str) -> Result<Self::TlsConnect, Self::Error> {
        self.inner.make_tls_connect(&self.server_name)
    }
}

/// The changes setup.sql made (or would make) in one database name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveChanges {
    pub database: String,
    pub db_name: String,
    /// The statements, in the order setup.sql executes them.
    pub statements: Vec<String>,
}

/// One database name that could not be read or converged; nothing was changed in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFailure {
    pub database: String,
    /// `None` when the server itself could not be reached.
    pub db_name: Option<String>,
    /// What went wrong and what to check, lower-case.
    pub message: String,
}

/// What the live phase found (and, applying, did).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveReport {
    /// Every database name that was read, changed or not, sorted by database and name.
    pub changes: Vec<LiveChanges>,
    pub failures: Vec<LiveFailure>,
    pub warnings: Vec<String>,
}

impl LiveReport {
    /// How many statements in all.
    pub fn count(&self) -> usize {
        self.changes.iter().map(|c| c.statements.len()).sum()
    }
}

/// Errors preparing the live phase (before any connection).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("the compiled files lack {0}; this is a dbward bug, please report it")]
    Missing(String),
    #[error("{what} in the compiled files cannot be used: {reason}")]
    Tls { what: String, reason: String },
    #[error("cannot start the async runtime for live databases: {0}")]
    Runtime(std::io::Error),
}

/// The databases to reach, from the model and the artifacts just emitted (so a plan uses the
/// setup.sql, certificates and addresses that an apply would write), and a warning per
/// database that has an admin user but cannot be reached yet.
pub fn targets(
    model: &Model,
    artifacts: &Artifacts,
) -> Result<(Vec<Target>, Vec<String>), LiveError> {
    let text = |path: &str| -> Result<&[u8], LiveError> {
        artifacts
            .get(path)
            .map(|a| a.bytes.as_slice())
            .ok_or_else(|| LiveError::Missing(path.to_owned()))
    };
    let mut targets = Vec::new();
    let mut warnings = Vec::new();
    let frozen: Option<dbward_frozen::Config> = match artifacts.get("relay/frozen.json") {
        Some(a) => Some(
            serde_json::from_slice(&a.bytes)
                .map_err(|e| LiveError::Missing(format!("a readable relay/frozen.json ({e})")))?,
        ),
        None => None,
    };
    let Some(frozen) = frozen else {
        return Ok((targets, warnings));
    };
    let relay = &frozen.relay;
    let mut sources = connect::Sources::from_process();
    for (name, db) in &model.databases {
        let Some(admin) = &db.admin_user else {
            continue;
        };
        let Some(frozen_db) = frozen.databases.get(name) else {
            continue;
        };
        let (login, tls) = match (&frozen_db.auth, &relay.upstream_identity) {
            (dbward_frozen::UpstreamAuth::Mtls, Some(identity)) => {
                let relay_file = |path: &std::path::Path| format!("relay/{}", path.display());
                let ca = frozen_db.tls.ca.as_ref().ok_or_else(|| {
                    LiveError::Missing(format!("the server CA of database {name}"))
                })?;
                let tls = tls_config(
                    text(&relay_file(ca))?,
                    text(&relay_file(&identity.cert))?,
                    text(&relay_file(&identity.key))?,
                )?;
                (connect::Login::Certificate, tls)
            }
            (dbward_frozen::UpstreamAuth::Mtls, None) => {
                return Err(LiveError::Missing("the relay's upstream identity".into()));
            }
            _ => match connect::cloud(model, db, frozen_db, &admin.name, &mut sources)? {
                Ok(cloud) => cloud,
                Err(warning) => {
                    warnings.push(warning);
                    continue;
                }
            },
        };
        let setup = String::from_utf8_lossy(text(&format!("databases/{name}/setup.sql"))?);
        targets.push(Target {
            database: name.clone(),
            host: frozen_db.host.clone(),
            port: frozen_db.port,
            admin_user: admin.name.clone(),
            default_database: admin.default_database.clone(),
            db_names: Logins::of(model, name).db_names,
            setup_sql: setup.into_owned(),
            tls: NamedTls {
                inner: tls,
                server_name: frozen_db.tls.server_name.clone(),
            },
            expected: None,
            login,
        });
    }
    Ok((targets, warnings))
}

/// A client config that trusts only `ca` and presents `cert`/`key`.
fn tls_config(
    ca: &[u8],
    cert: &[u8],
    key: &[u8],
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, LiveError> {
    let tls_error = |what: &str, reason: String| LiveError::Tls {
        what: what.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        let c = c.map_err(|e| tls_error("the server CA", e.to_string()))?;
        roots
            .add(c)
            .map_err(|e| tls_error("the server CA", e.to_string()))?;
    }
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("the relay's client certificate", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| tls_error("the relay's client key", e.to_string()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_error("the TLS versions", e.to_string()))?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| tls_error("the relay's client key", e.to_string()))?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Runs setup.sql in every database name of every target, [`PARALLEL`] databases at a time.
pub fn run(targets: Vec<Target>, mode: Mode) -> Result<LiveReport, LiveError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(LiveError::Runtime)?;
    Ok(runtime.block_on(async move {
        let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut tasks = tokio::task::JoinSet::new();
        for target in targets {
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                database(Arc::new(target), mode).await
            });
        }
        let mut report = LiveReport::default();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(one) => {
                    report.changes.extend(one.changes);
                    report.failures.extend(one.failures);
                    report.warnings.extend(one.warnings);
                }
                Err(e) => report.failures.push(LiveFailure {
                    database: String::new(),
                    db_name: None,
                    message: format!("a live task failed: {e}"),
                }),
            }
        }
        report
            .changes
            .sort_by(|a, b| (&a.database, &a.db_name).cmp(&(&b.database, &b.db_name)));
        report
            .failures
            .sort_by(|a, b| (&a.database, &a.db_name).cmp(&(&b.database, &b.db_name)));
        report.warnings.sort();
        report
    }))
}

/// A connection and the notices the server sends on it.
struct Session {
    client: Client,
    notices: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::error::DbError>,
}

/// Connects to `db_name` as the admin user.
async fn connect(target: &Target, db_name: &str) -> Result<Session, String> {
    let credentials = target
        .login
        .credentials(&target.admin_user, &target.host, target.port)
        .await?;
    // A looked-up Cloud SQL instance is dialled at the address found, verified by its name.
    let (host, tls) = match credentials.route {
        Some(route) => (
            route.host.clone(),
            NamedTls {
                inner: route.tls,
                server_name: route.host,
            },
        ),
        None => (target.host.clone(), target.tls.clone()),
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host(&host)
        .port(target.port)
        .user(&target.admin_user)
        .dbname(db_name)
        .application_name("dbward")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    if let Some(password) = &credentials.password {
        config.password(password.expose());
    }
    let (client, mut connection) = config.connect(tls).await.map_err(|e| {
        format!(
            "cannot connect to database name {db_name} on {host}:{} as {}: {}; {}",
            target.port,
            target.admin_user,
            describe(&e),
            target.login.check(&target.admin_user)
        )
    })?;
    let (sender, notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notice(notice)) => {
                    let _ = sender.send(notice);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Ok(Session { client, notices })
}

/// The server's message when there is one, with its hint.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.hint() {
            Some(hint) => format!("{} ({hint})", db.message()),
            None => db.message().to_owned(),
        },
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                text = format!("{text}: {inner}");
                source = inner.source();
            }
            text
        }
    }
}

/// Every database name of one target. Planning, all at once ([`PARALLEL`] at a time: each name
/// has its own connection and transaction). Applying, the first name alone first: it runs the
/// server-wide statements (roles, memberships), where the plan shows them and a saved plan
/// expects them; then the others at once, which then find them done.
async fn database(target: Arc<Target>, mode: Mode) -> LiveReport {
    let mut report = LiveReport::default();
    let mut names = match names(&target, &mut report.warnings).await {
        Ok(names) => names,
        Err(message) => {
            report.failures.push(LiveFailure {
                database: target.database.clone(),
                db_name: None,
                message,
            });
            return report;
        }
    };
    // The order of the report and of a saved plan, whose server-wide statements are under the
    // first name.
    names.sort();
    if let (Mode::Apply, Some(expected)) = (mode, &target.expected) {
        for gone in expected.keys().filter(|n| !names.contains(n)) {
            report.failures.push(LiveFailure {
                database: target.database.clone(),
                db_name: Some(gone.clone()),
                message: "the saved plan has changes for this database name, which no longer \
                          exists (or no longer allows connections): make a new plan with \
                          `dbward plan --live -o PLANFILE`"
                    .into(),
            });
        }
        names.retain(|name| {
            let known = expected.contains_key(name);
            if !known {
                report.failures.push(LiveFailure {
                    database: target.database.clone(),
                    db_name: Some(name.clone()),
                    message: "this database name appeared since the saved plan was made, so \
                              the plan has nothing reviewed for it; nothing was changed in it: \
                              make a new plan with `dbward plan --live -o PLANFILE`"
                        .into(),
                });
            }
            known
        });
    }
    let mut pending = names.into_iter();
    let mut done = Vec::new();
    if mode == Mode::Apply
        && let Some(first) = pending.next()
    {
        done.push(one_name(target.clone(), first, mode).await);
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for db_name in pending {
        let (target, limit) = (target.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            one_name(target, db_name, mode).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(one) => done.push(one),
            Err(e) => report.failures.push(LiveFailure {
                database: target.database.clone(),
                db_name: None,
                message: format!("a live task failed: {e}"),
            }),
        }
    }
    for (db_name, result, warnings) in done {
        report.warnings.extend(warnings);
        match result {
            Ok(statements) => report.changes.push(LiveChanges {
                database: target.database.clone(),
                db_name,
                statements,
            }),
            Err(message) => report.failures.push(LiveFailure {
                database: target.database.clone(),
                db_name: Some(db_name),
                message,
            }),
        }
    }
    report
}

/// One database name converged (or planned): its name, the statements or the failure, and
/// the server's warnings.
type NameDone = (String, Result<Vec<String>, String>, Vec<String>);

async fn one_name(target: Arc<Target>, db_name: String, mode: Mode) -> NameDone {
    let mut warnings = Vec::new();
    let result = converge(&target, &db_name, mode, &mut warnings).await;
    (db_name, result, warnings)
}

/// The database names setup.sql runs in: the listed ones that exist (a warning for each that
/// does not), or every one that allows connections.
async fn names(target: &Target, warnings: &mut Vec<String>) -> Result<Vec<String>, String> {
    let session = connect(target, &target.default_database).await?;
    let rows = session
        .client
        .query(
            "SELECT datname::text FROM pg_catalog.pg_database \
             WHERE datallowconn AND NOT datistemplate ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| {
            format!(
                "cannot list the database names on {}:{}: {}",
                target.host,
                target.port,
                describe(&e)
            )
        })?;
    let existing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let mut names: Vec<String> = match &target.db_names {
        None => existing.clone(),
        Some(listed) => listed
            .iter()
            .filter(|name| {
                let found = existing.contains(name);
                if !found {
                    warnings.push(format!(
                        "database {}: db-name {name} does not exist on {}:{} (or does not allow \
                         connections); create it, or fix the name in the manifest",
                        target.database, target.host, target.port
                    ));
                }
                found
            })
            .cloned()
            .collect(),
    };
    // Some servers create principals in one database name only (Azure: `postgres`); setup.sql
    // runs there first, as its instructions to those who run it by hand say.
    if let Some(first) = target.login.first_name()
        && !names.iter().any(|n| n == first)
        && existing.iter().any(|n| n == first)
    {
        names.insert(0, first.to_owned());
    }
    Ok(names)
}

/// Whether PostgreSQL asks for the transaction to be tried again (or, a unique violation, a
/// role or object another session created at the same moment: the next try finds it).
fn retryable(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        matches!(db.code().code(), "40001" | "40P01" | "23505")
            || (db.code().code() == "XX000" && db.message().contains("tuple concurrently updated"))
    })
}

/// setup.sql in one database name, in one transaction; the statements it executed.
async fn converge(
    target: &Target,
    db_name: &str,
    mode: Mode,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, String> {
    let script = transaction_body(&target.setup_sql).ok_or_else(|| {
        format!(
            "setup.sql of database {} is not one transaction; this is a dbward bug",
            target.database
        )
    })?;
    let script = (script.0, for_name(script.1, db_name));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut session = connect(target, db_name).await?;
        // The transaction is left open: how it ends depends on what it executed.
        let ran = session
            .client
            .batch_execute(&format!(
                "{}BEGIN;\nSET LOCAL lock_timeout = '10s';\nSET LOCAL statement_timeout = '60s';\n\
                 SET LOCAL client_min_messages = notice;\n\
                 SELECT pg_advisory_xact_lock({lock}, 0);\n{}",
                script.0,
                script.1,
                lock = crate::emit::sql::provision::ACL_LOCK,
            ))
            .await;
        match ran {
            Ok(()) => {
                let mut statements = Vec::new();
                while let Ok(notice) = session.notices.try_recv() {
                    match notice
                        .message()
                        .strip_prefix(crate::emit::sql::NOTICE_PREFIX)
                    {
                        Some(statement) => statements.push(statement.to_owned()),
                        None if notice.severity() == "WARNING" => warnings.push(format!(
                            "database {} name {db_name}: {}{}",
                            target.database,
                            notice.message(),
                            notice.hint().map(|h| format!(" ({h})")).unwrap_or_default()
                        )),
                        None => {}
                    }
                }
                let expected = target.expected.as_ref().and_then(|e| e.get(db_name));
                let refused = match (mode, expected) {
                    (Mode::Apply, Some(expected)) if *expected != statements => {
                        Some(refusal(expected, &statements))
                    }
                    _ => None,
                };
                let end = match (mode, &refused) {
                    (Mode::Apply, None) => "COMMIT",
                    _ => "ROLLBACK",
                };
                match session.client.batch_execute(end).await {
                    Ok(()) => {}
                    Err(e) if retryable(&e) && attempt < ATTEMPTS => {
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                        continue;
                    }
                    Err(e) => {
                        return Err(format!(
                            "{end} failed in database name {db_name} on {}:{}: {}",
                            target.host,
                            target.port,
                            describe(&e)
                        ));
                    }
                }
                return match refused {
                    Some(message) => Err(message),
                    None => Ok(statements),
                };
            }
            Err(e) => {
                // The transaction is aborted; close it so nothing of it stays.
                let _ = session.client.batch_execute("ROLLBACK").await;
                if retryable(&e) && attempt < ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    continue;
                }
                return Err(format!(
                    "setup.sql failed in database name {db_name} on {}:{} as {} and changed \
                     nothing: {}",
                    target.host,
                    target.port,
                    target.admin_user,
                    describe(&e)
                ));
            }
        }
    }
}

/// Why a saved plan is refused in one database name: what setup.sql would execute there now is
/// not what the plan showed.
fn refusal(expected: &[String], now: &[String]) -> String {
    let difference = match (
        now.iter().find(|s| !expected.contains(s)),
        expected.iter().find(|s| !now.contains(s)),
    ) {
        (Some(new), _) => format!("it would now also run: {new}"),
        (None, Some(gone)) => format!("it would no longer run: {gone}"),
        (None, None) => "the same statements, in another order".to_owned(),
    };
    format!(
        "changed since the saved plan was made ({} statement(s) in the plan, {} now; {difference}); \
         nothing was changed in this database name: make and review a new plan with \
         `dbward plan --live -o PLANFILE`",
        expected.len(),
        now.len()
    )
}

/// setup.sql split around its own `BEGIN;` and `COMMIT;`: what comes before (session
/// settings) and the transaction's statements, so the caller chooses how it ends.
fn transaction_body(setup: &str) -> Option<(&str, &str)> {
    let begin = setup.find("\nBEGIN;\n")?;
    let commit = setup.rfind("\nCOMMIT;\n")?;
    (commit > begin).then(|| {
        (
            &setup[..=begin],
            &setup[begin + "\nBEGIN;\n".len()..=commit],
        )
    })
}

/// The transaction body as psql runs it in `db_name`: an Azure script's principals-only block
/// ([`crate::emit::sql::PRINCIPALS_ONLY`]) ends it in `postgres` and is a no-op elsewhere.
fn for_name<'a>(body: &'a str, db_name: &str) -> std::borrow::Cow<'a, str> {
    use crate::emit::sql::PRINCIPALS_ONLY;
    match body.find(PRINCIPALS_ONLY) {
        Some(at) if db_name == "postgres" => std::borrow::Cow::Borrowed(&body[..at]),
        Some(_) => std::borrow::Cow::Owned(body.replacen(PRINCIPALS_ONLY, "", 1)),
        None => std::borrow::Cow::Borrowed(body),
    }
}

/// How a statement is shown: `+` adds (CREATE, GRANT), `-` takes away (REVOKE, DROP), `~`
/// changes (ALTER ROLE, a replaced function).
pub fn sign(statement: &str) -> char {
    let starts = |prefix: &str| statement.starts_with(prefix);
    if starts("REVOKE")
        || starts("DROP")
        || (starts("ALTER DEFAULT PRIVILEGES") && statement.contains(" REVOKE "))
    {
        '-'
    } else if starts("GRANT")
        || starts("CREATE ROLE")
        || starts("CREATE SCHEMA")
        || starts("CREATE TABLE")
        || starts("ALTER DEFAULT PRIVILEGES")
        || starts("SELECT pgaadauth_create_principal")
        || starts("SELECT * FROM pgaadauth_create_principal")
    {
        '+'
    } else {
        '~'
    }
}

/// Whether a statement changes the whole server rather than one database name: roles, their
/// attributes and memberships (`GRANT role TO role` names no object).
pub fn server_wide(statement: &str) -> bool {
    let starts = |prefix: &str| statement.starts_with(prefix);
    ((starts("CREATE ROLE") || starts("ALTER ROLE") || starts("DROP ROLE"))
        && !statement.contains(" IN DATABASE "))
        || ((starts("GRANT ") || starts("REVOKE ")) && !statement.contains(" ON "))
}

/// The statements shown for each database name: a server-wide one only under the first name
/// of its database that runs it (every name's setup.sql runs it; after the first it is a no-op).
fn shown(report: &LiveReport) -> Vec<(&LiveChanges, Vec<&String>)> {
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    report
        .changes
        .iter()
        .map(|change| {
            let statements = change
                .statements
                .iter()
                .filter(|s| !server_wide(s) || seen.insert((&change.database, s.as_str())))
                .collect();
            (change, statements)
        })
        .collect()
}

/// Every database name's statements as shown (and as a saved plan records them): a server-wide
/// statement only under the first name of its database that runs it, since an apply, which
/// converges the names of a database one after the other in this order, runs it there.
pub fn deduplicated(report: &LiveReport) -> Vec<LiveChanges> {
    shown(report)
        .into_iter()
        .map(|(change, statements)| LiveChanges {
            database: change.database.clone(),
            db_name: change.db_name.clone(),
            statements: statements.into_iter().cloned().collect(),
        })
        .collect()
}

/// `(add, change, remove)` over every statement each database name runs.
pub fn counts(report: &LiveReport) -> (usize, usize, usize) {
    count(report.changes.iter().flat_map(|c| &c.statements))
}

fn count<'a>(statements: impl Iterator<Item = &'a String>) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for statement in statements {
        match sign(statement) {
            '+' => counts.0 += 1,
            '-' => counts.2 += 1,
            _ => counts.1 += 1,
        }
    }
    counts
}

/// The live part of a plan (or what an apply did), as text ending with its summary line.
pub fn render(report: &LiveReport, mode: Mode) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let shown = shown(report);
    let changed: Vec<&(&LiveChanges, Vec<&String>)> =
        shown.iter().filter(|(_, s)| !s.is_empty()).collect();
    if !changed.is_empty() {
        out.push_str(match mode {
            Mode::Plan => "\ndbward will make these changes in the databases:\n",
            Mode::Apply => "\ndbward made these changes in the databases:\n",
        });
        if report
            .changes
            .iter()
            .flat_map(|c| &c.statements)
            .any(|s| server_wide(s))
        {
            out.push_str(
                "(roles, their attributes and memberships are server-wide: each is shown once,\n\
                 under the first database name; every name's setup.sql runs it, a no-op after the first)\n",
            );
        }
        for (change, statements) in changed {
            let _ = writeln!(
                out,
                "\n  database {}, name {}:",
                change.database, change.db_name
            );
            for statement in statements {
                // A statement over several lines (a table's columns) is indented as one.
                let statement = statement.replace('\n', "\n      ");
                let _ = writeln!(out, "    {} {statement}", sign(&statement));
            }
        }
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "\nWarning: {warning}");
    }
    for failure in &report.failures {
        let _ = writeln!(
            out,
            "\nError: database {}{}: {}",
            failure.database,
            failure
                .db_name
                .as_ref()
                .map(|n| format!(", name {n}"))
                .unwrap_or_default(),
            failure.message
        );
    }
    let names = report.changes.len();
    let (add, change, remove) = count(shown.iter().flat_map(|(_, s)| s.iter().copied()));
    let verb = match mode {
        Mode::Plan => "Live",
        Mode::Apply => "Live apply",
    };
    if add + change + remove == 0 {
        let _ = writeln!(out, "\n{verb}: no changes in {names} database name(s).");
    } else {
        let _ = writeln!(
            out,
            "\n{verb}: {add} to add, {change} to change, {remove} to remove, in {names} database name(s)."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_signed_by_what_they_do() {
        assert_eq!(sign("GRANT reader TO app"), '+');
        assert_eq!(sign("CREATE ROLE \"r\" NOLOGIN"), '+');
        assert_eq!(sign("REVOKE SELECT ON TABLE public.t FROM r"), '-');
        assert_eq!(
            sign("ALTER DEFAULT PRIVILEGES FOR ROLE a IN SCHEMA s REVOKE SELECT ON TABLES FROM r"),
            '-'
        );
        assert_eq!(
            sign("ALTER DEFAULT PRIVILEGES IN SCHEMA \"s\" GRANT SELECT ON TABLES TO \"r\""),
            '+'
        );
        assert_eq!(sign("ALTER ROLE \"app\" WITH LOGIN"), '~');
        // What Azure setup.sql runs to create an Entra principal.
        assert_eq!(
            sign(
                "SELECT * FROM pgaadauth_create_principal_with_oid('r', 'o', 'service', false, false)"
            ),
            '+'
        );
    }

    #[test]
    fn roles_and_memberships_are_server_wide() {
        assert!(server_wide("CREATE ROLE \"r\" NOLOGIN"));
        assert!(server_wide("ALTER ROLE \"app\" WITH NOCREATEDB"));
        assert!(server_wide("GRANT reader TO app"));
        assert!(server_wide("REVOKE reader FROM app"));
        assert!(!server_wide(
            "GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"reader\""
        ));
        assert!(!server_wide(
            "REVOKE TRUNCATE ON TABLE public.items FROM reader"
        ));
        assert!(!server_wide("ALTER ROLE a IN DATABASE d SET x = 1"));
    }

    #[test]
    fn the_transaction_body_leaves_out_begin_and_commit() {
        let (before, body) =
            transaction_body("SET x = 1;\nBEGIN;\nSELECT 1;\nCOMMIT;\n").expect("split");
        assert_eq!(before, "SET x = 1;\n");
        assert_eq!(body, "SELECT 1;\n");
        assert_eq!(transaction_body("SELECT 1;\n"), None);
    }

    #[test]
    fn the_principals_only_block_ends_the_script_in_postgres_only() {
        let body = format!(
            "SELECT 1;\n{}SELECT 2;\n",
            crate::emit::sql::PRINCIPALS_ONLY
        );
        assert_eq!(for_name(&body, "postgres"), "SELECT 1;\n");
        assert_eq!(for_name(&body, "reports"), "SELECT 1;\nSELECT 2;\n");
        assert_eq!(for_name("SELECT 1;\n", "postgres"), "SELECT 1;\n");
    }
}

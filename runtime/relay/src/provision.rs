//! Automatic user provisioning, the relay's side: the person's database user is activated
//! through the database's admin connection before their session opens, and retired after it
//! ends.
//!
//! The SQL lives in the `dbward` functions setup.sql installs (see the compiler's
//! `emit/sql/provision.rs`); the relay only calls them, with parameters bound by the extended
//! protocol (never spliced into SQL text), and reads their SQLSTATEs, never their message text:
//!
//! | SQLSTATE | meaning | what the client gets |
//! |---|---|---|
//! | `WD001` | a same-named role exists that dbward did not create | FATAL 28000, untouched |
//! | `WD003` | other open sessions of the person have other rights | FATAL 55006, close them |
//! | `WD002` and anything else | the function refused its arguments, or failed | FATAL 08004 |
//!
//! The admin user authenticates like every other user of its database (the upstream's own
//! method: the relay's certificate, or a cloud token), so this module does not care which kind
//! of database it talks to.
//!
//! Admin connections are kept warm in an [`AdminPool`] (a few idle ones per database and
//! database name, closed after [`ADMIN_IDLE_TIMEOUT`]), so that in steady state activating a
//! user costs one round trip (Parse/Bind/Execute/Sync in one write), not a TLS handshake and an
//! authentication. A connection goes back to the pool only when its last call ended with
//! `ReadyForQuery` idle; one that broke is dropped, and a call that finds a pooled connection
//! broken (the server restarted, or closed it) retries once on a fresh one, which is safe
//! because every `dbward` function is idempotent.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dbward_frozen::{Access, AdminUser, Config, NameSet, Provision};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::protocol::StartupMessage;
use crate::protocol::backend::{self, tag};
use crate::protocol::frames::FrameReader;
use crate::protocol::startup::PROTOCOL_3_0;
use crate::state::Shared;
use crate::upstream::{self, Connected, Target, Upstream, UpstreamError};

/// The largest message accepted from the admin connection (the functions return one short text).
const MAX_ADMIN_MESSAGE: usize = 64 * 1024;

/// SQLSTATE of `dbward.activate`: a same-named role that dbward does not manage.
pub const NOT_OURS: &str = "WD001";
/// SQLSTATE of `dbward.activate`: other sessions of the person hold other rights.
pub const OTHER_RIGHTS: &str = "WD003";

/// What the relay provisions for one session: the person's user on one database name, with
/// the rights of the access table the session was decided with.
#[derive(Debug, Clone)]
pub struct Provisioning {
    /// The admin login of the database.
    pub admin: AdminUser,
    /// The database name (PostgreSQL `dbname`) the session opens; the functions work there.
    pub db_name: String,
    /// The database user, named after the person.
    pub person: String,
    pub mode: Provision,
    /// Roles, as a JSON array of strings (expanded to `text[]` by the database).
    roles: String,
    /// Object privileges, as the JSON array `dbward.activate` reads.
    grants: String,
}

impl Provisioning {
    /// The provisioning of `access` (whose mode is not `Off`) for a session opening `db_name`.
    pub fn new(admin: AdminUser, db_name: String, person: String, access: &Access) -> Self {
        Provisioning {
            admin,
            db_name,
            person,
            mode: access.provision,
            roles: serde_json::to_string(&access.db_roles).unwrap_or_else(|_| "[]".into()),
            grants: serde_json::to_string(&access.grants).unwrap_or_else(|_| "[]".into()),
        }
    }

    /// `keep` or `best-effort-drop`, as the functions name the modes.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Provision::BestEffortDrop => "best-effort-drop",
            _ => "keep",
        }
    }

    /// The roles granted, for the audit log.
    pub fn roles(&self) -> Vec<String> {
        serde_json::from_str(&self.roles).unwrap_or_default()
    }
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The admin connection could not be opened or broke.
    #[error(
        "the admin user \"{admin}\" could not connect to database name \"{db_name}\": {source}"
    )]
    Admin {
        admin: String,
        db_name: String,
        source: UpstreamError,
    },
    /// A `dbward` function answered with an error.
    #[error("{message}")]
    Database {
        code: String,
        message: String,
        hint: Option<String>,
    },
}

/// Creates or re-enables the person's user with exactly the session's rights
/// (`dbward.activate`). Returns the function's outcome: `created` or `activated`.
pub async fn activate(
    shared: &Shared,
    target: &Arc<Target>,
    plan: &Provisioning,
) -> Result<String, ProvisionError> {
    shared
        .admin_pool
        .call(
            &shared.metrics,
            target,
            &plan.admin,
            &plan.db_name,
            "SELECT dbward.activate($1, $2, \
         ARRAY(SELECT jsonb_array_elements_text($3::jsonb)), $4::jsonb)",
            &[
                Some(&plan.person),
                Some(plan.mode_name()),
                Some(&plan.roles),
                Some(&plan.grants),
            ],
        )
        .await
}

/// Strips and locks (`keep`) or drops (`best-effort-drop`) the person's user once its session
/// has ended; `ending_pid` is that session's backend, which may still be exiting. Returns the
/// function's outcome (`deactivated`, `dropped`, `in-use` when another session still runs,
/// `absent`).
pub async fn retire(
    shared: &Shared,
    target: &Arc<Target>,
    plan: &Provisioning,
    ending_pid: Option<u32>,
) -> Result<String, ProvisionError> {
    let sql = match plan.mode {
        Provision::BestEffortDrop => "SELECT dbward.drop($1, $2::integer)",
        _ => "SELECT dbward.deactivate($1, $2::integer)",
    };
    let pid = ending_pid.map(|p| p.to_string());
    // No session of this person is between its activation and its backend meanwhile.
    let _retiring = shared
        .admin_pool
        .person_lock(target, plan)
        .write_owned()
        .await;
    shared
        .admin_pool
        .call(
            &shared.metrics,
            target,
            &plan.admin,
            &plan.db_name,
            sql,
            &[Some(&plan.person), pid.as_deref()],
        )
        .await
}

/// How often the relay sweeps each provisioning database, after the sweep at start.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// One user the sweep found, as `dbward.sweep` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Swept {
    pub person: String,
    pub mode: String,
    /// `deactivated`, `dropped`, `in-use`, `busy` (another relay holds its lock) or `pending`
    /// (activated moments ago: a session may still be connecting).
    pub outcome: String,
}

/// Where the sweep runs: each provisioning database of the config, in each database name its
/// provisioned people may open (the functions are installed there), or in the admin user's
/// default database when some may open any name.
fn sweep_targets(config: &Config) -> Vec<(String, AdminUser, String)> {
    let mut targets = BTreeSet::new();
    for access in &config.access {
        if access.provision == Provision::Off {
            continue;
        }
        let Some(admin) = config
            .databases
            .get(&access.database)
            .and_then(|db| db.admin_user.as_ref())
        else {
            continue;
        };
        match &access.db_names {
            NameSet::Only(names) => {
                for name in names {
                    targets.insert((access.database.clone(), name.clone()));
                }
            }
            NameSet::Any => {
                targets.insert((access.database.clone(), admin.default_database.clone()));
            }
        }
    }
    targets
        .into_iter()
        .filter_map(|(database, db_name)| {
            let admin = config.databases.get(&database)?.admin_user.clone()?;
            Some((database, admin, db_name))
        })
        .collect()
}

/// Retires, in one database name, every provisioned user left `LOGIN` with no session
/// (`dbward.sweep`): what a relay killed mid-session leaves behind.
pub async fn sweep(
    shared: &Shared,
    target: &Arc<Target>,
    admin: &AdminUser,
    db_name: &str,
) -> Result<Vec<Swept>, ProvisionError> {
    let text = shared
        .admin_pool
        .call(
            &shared.metrics,
            target,
            admin,
            db_name,
            "SELECT coalesce(json_agg(s), '[]')::text FROM dbward.sweep() s",
            &[],
        )
        .await?;
    serde_json::from_str(&text).map_err(|e| ProvisionError::Database {
        code: String::new(),
        message: format!("dbward.sweep returned what the relay cannot read: {e}"),
        hint: None,
    })
}

/// Sweeps every provisioning database of the config in force once. Failures are logged (the
/// next sweep tries again); nothing here can fail a session.
pub async fn sweep_all(shared: &Shared) {
    let loaded = shared.current();
    for (database, admin, db_name) in sweep_targets(&loaded.config) {
        let Some(Upstream::Ready(target)) = loaded.upstreams.get(&database) else {
            continue;
        };
        let timeout = Duration::from_millis(loaded.config.relay.limits.upstream_connect_timeout_ms);
        let swept = sweep(shared, target, &admin, &db_name);
        match tokio::time::timeout(timeout, swept).await {
            Ok(Ok(swept)) => {
                for user in swept {
                    let retired = matches!(user.outcome.as_str(), "deactivated" | "dropped");
                    if retired {
                        shared.metrics.user_swept(user.outcome == "dropped");
                        shared.audit.user_swept(
                            &database,
                            &db_name,
                            &user.person,
                            &user.mode,
                            &user.outcome,
                        );
                    }
                    tracing::info!(
                        database = %database,
                        db_name = %db_name,
                        person = %user.person,
                        mode = %user.mode,
                        outcome = %user.outcome,
                        "sweep: provisioned user without a session"
                    );
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(database = %database, db_name = %db_name, %error, "sweep failed")
            }
            Err(_) => tracing::warn!(
                database = %database,
                db_name = %db_name,
                "sweep failed: the admin user \"{}\" did not finish in time",
                admin.name
            ),
        }
    }
}

/// Sweeps at once, then every `interval`, until `shutdown`; in between, closes the admin
/// connections idle for [`ADMIN_IDLE_TIMEOUT`], and all of them at shutdown.
pub async fn sweep_loop(shared: Arc<Shared>, interval: Duration, shutdown: CancellationToken) {
    let mut next_sweep = Instant::now();
    loop {
        if Instant::now() >= next_sweep {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = sweep_all(&shared) => {}
            }
            next_sweep = Instant::now() + interval;
        }
        shared.admin_pool.close_idle(ADMIN_IDLE_TIMEOUT).await;
        let wake = next_sweep.min(Instant::now() + ADMIN_PRUNE_INTERVAL);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    shared.admin_pool.close_idle(Duration::ZERO).await;
}

/// Idle admin connections kept per database and database name; more may be open at once
/// under load, and those beyond this are closed when their call ends.
pub const ADMIN_POOL_IDLE: usize = 4;
/// An admin connection unused this long is closed.
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle admin connections are looked at.
const ADMIN_PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// Which warm connections a call may reuse: same upstream target (one per database and config
/// load, compared by address), admin user and database name.
type PoolKey = (usize, String, String);

/// Whose user a per-person lock guards: upstream address, database name, person.
type PersonKey = (String, String, String);

/// One idle admin connection.
struct Idle {
    connection: AdminConnection,
    since: Instant,
    /// Keeps the target's allocation (hence the address in the key) from being reused by a
    /// later config load while this entry lives; a reload thus never reuses an old connection.
    _target: Weak<Target>,
}

/// Warm admin connections, shared by every session of the process (see the module docs).
#[derive(Default)]
pub struct AdminPool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    /// One lock per person's user (upstream address, database name, person): sessions hold it
    /// shared from before their activation until their own backend is connected (and so
    /// counted in `pg_stat_activity`), and a retirement holds it exclusively. Without it, the
    /// end of one session could retire the user while this relay is connecting the next.
    people: Mutex<HashMap<PersonKey, Arc<tokio::sync::RwLock<()>>>>,
}

impl std::fmt::Debug for AdminPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminPool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl AdminPool {
    /// Admin connections idle in the pool now.
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Idle>>> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn person_lock(&self, target: &Target, plan: &Provisioning) -> Arc<tokio::sync::RwLock<()>> {
        let mut people = self.people.lock().unwrap_or_else(|e| e.into_inner());
        let key = (
            target.address.clone(),
            plan.db_name.clone(),
            plan.person.clone(),
        );
        Arc::clone(people.entry(key).or_default())
    }

    /// Held by a session of `plan`'s person from before its activation until its upstream
    /// session is open: this relay retires that user only once no session is starting.
    pub async fn starting(
        &self,
        target: &Target,
        plan: &Provisioning,
    ) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.person_lock(target, plan).read_owned().await
    }

    /// Runs one `dbward` function call as `admin` in `db_name` on a warm connection, or a new
    /// one; see the module docs for when connections are reused, retried and dropped.
    async fn call(
        &self,
        metrics: &Metrics,
        target: &Arc<Target>,
        admin: &AdminUser,
        db_name: &str,
        sql: &str,
        params: &[Option<&str>],
    ) -> Result<String, ProvisionError> {
        let key: PoolKey = (
            Arc::as_ptr(target) as usize,
            admin.name.clone(),
            db_name.to_owned(),
        );
        if let Some(mut connection) = self.take(&key) {
            match connection.call_nullable(sql, params).await {
                // Broken while idle: a fresh connection below.
                Err(ProvisionError::Admin { .. }) => {}
                result => {
                    self.give_back(key, target, connection).await;
                    return result;
                }
            }
        }
        let mut connection = AdminConnection::open(target, &admin.name, db_name).await?;
        metrics.admin_connection_opened();
        let result = connection.call_nullable(sql, params).await;
        if !matches!(result, Err(ProvisionError::Admin { .. })) {
            self.give_back(key, target, connection).await;
        }
        result
    }

    /// The most recently used idle connection of `key`, if one is fresh enough.
    fn take(&self, key: &PoolKey) -> Option<AdminConnection> {
        let mut idle = self.lock();
        let list = idle.get_mut(key)?;
        // Stale ones (past the idle timeout) are left for the pruner, which closes them.
        let entry = list.pop_if(|entry| entry.since.elapsed() < ADMIN_IDLE_TIMEOUT)?;
        Some(entry.connection)
    }

    /// Keeps `connection` warm if it is idle and the pool has room, else closes it.
    async fn give_back(&self, key: PoolKey, target: &Arc<Target>, connection: AdminConnection) {
        let surplus = {
            let mut idle = self.lock();
            let list = idle.entry(key).or_default();
            if connection.reusable() && list.len() < ADMIN_POOL_IDLE {
                list.push(Idle {
                    connection,
                    since: Instant::now(),
                    _target: Arc::downgrade(target),
                });
                None
            } else {
                Some(connection)
            }
        };
        if let Some(connection) = surplus {
            connection.close().await;
        }
    }

    /// Closes every connection idle for at least `timeout` (all of them for zero).
    pub async fn close_idle(&self, timeout: Duration) {
        let expired: Vec<Idle> = {
            let mut idle = self.lock();
            let mut expired = Vec::new();
            for list in idle.values_mut() {
                let (old, fresh): (Vec<Idle>, Vec<Idle>) = std::mem::take(list)
                    .into_iter()
                    .partition(|entry| entry.since.elapsed() >= timeout);
                *list = fresh;
                expired.extend(old);
            }
            idle.retain(|_, list| !list.is_empty());
            expired
        };
        for entry in expired {
            entry.connection.close().await;
        }
    }
}

/// One authenticated connection as the database's admin user.
struct AdminConnection {
    connected: Connected,
    reader: FrameReader,
    admin: String,
    db_name: String,
    /// The transaction status of the last `ReadyForQuery` (`I` idle, `T` in a transaction, `E`
    /// failed), 0 before the first call finished; only an idle connection is reused.
    status: u8,
}

impl AdminConnection {
    async fn open(
        target: &Target,
        admin: &str,
        db_name: &str,
    ) -> Result<AdminConnection, ProvisionError> {
        let startup = StartupMessage {
            version: PROTOCOL_3_0,
            params: vec![
                ("user".to_owned(), admin.to_owned()),
                ("database".to_owned(), db_name.to_owned()),
                ("application_name".to_owned(), "dbward-relay".to_owned()),
            ],
        };
        let connected = upstream::connect(target, &startup)
            .await
            .map_err(|source| ProvisionError::Admin {
                admin: admin.to_owned(),
                db_name: db_name.to_owned(),
                source,
            })?;
        Ok(AdminConnection {
            connected,
            reader: FrameReader::default(),
            admin: admin.to_owned(),
            db_name: db_name.to_owned(),
            status: 0,
        })
    }

    /// Whether the connection can serve another call: its last call ended idle, outside any
    /// transaction, with nothing unread.
    fn reusable(&self) -> bool {
        self.status == b'I' && self.connected.leftover.is_empty()
    }

    fn broken(&self, reason: String) -> ProvisionError {
        ProvisionError::Admin {
            admin: self.admin.clone(),
            db_name: self.db_name.clone(),
            source: UpstreamError::Protocol {
                address: self.db_name.clone(),
                reason,
            },
        }
    }

    /// Runs `sql` with text parameters (Parse, Bind, Execute, Sync) and returns the first column
    /// of its first row.
    async fn call_nullable(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
    ) -> Result<String, ProvisionError> {
        if !self.connected.leftover.is_empty() {
            return Err(self.broken("the server sent data after ReadyForQuery".into()));
        }
        self.status = 0;
        let request = extended_query(sql, params);
        let stream = &mut self.connected.stream;
        if let Err(e) = async {
            stream.write_all(&request).await?;
            stream.flush().await
        }
        .await
        {
            return Err(self.broken(e.to_string()));
        }
        let mut value = None;
        let mut error = None;
        loop {
            let frame = match self
                .reader
                .next(&mut self.connected.stream, MAX_ADMIN_MESSAGE)
                .await
            {
                Ok(Some(frame)) => frame,
                Ok(None) => return Err(self.broken("the server closed the connection".into())),
                Err(e) => return Err(self.broken(e.to_string())),
            };
            match frame.tag {
                b'D' if value.is_none() => value = Some(first_column(frame.body())),
                tag::ERROR_RESPONSE => {
                    let fields = backend::error_fields(frame.body());
                    let field = |kind: u8| {
                        fields
                            .iter()
                            .find(|(k, _)| *k == kind)
                            .map(|(_, v)| v.clone())
                    };
                    error = Some(ProvisionError::Database {
                        code: field(b'C').unwrap_or_default(),
                        message: field(b'M').unwrap_or_else(|| "(no message)".into()),
                        hint: field(b'H'),
                    });
                }
                tag::NOTICE_RESPONSE => {
                    // The functions warn about privileges the admin user cannot grant.
                    tracing::warn!(
                        admin = %self.admin,
                        db_name = %self.db_name,
                        notice = %backend::error_message(frame.body()),
                        "provisioning notice"
                    );
                }
                tag::READY_FOR_QUERY => {
                    self.status = frame.body().first().copied().unwrap_or(0);
                    break;
                }
                _ => {}
            }
        }
        match (error, value) {
            (Some(error), _) => Err(error),
            (None, Some(Some(value))) => Ok(value),
            (None, _) => Err(self.broken("the provisioning function returned no value".into())),
        }
    }

    /// Terminate, best effort: the server ends the backend either way once the socket closes.
    async fn close(mut self) {
        let _ = self.connected.stream.write_all(&[b'X', 0, 0, 0, 4]).await;
        let _ = self.connected.stream.shutdown().await;
    }
}

/// Parse (unnamed), Bind (text parameters, `None` is NULL), Execute and Sync, in one buffer.
fn extended_query(sql: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + sql.len() + params.iter().flatten().map(|p| p.len() + 4).sum::<usize>(),
    );
    let mut message = |tag: u8, body: &[u8]| {
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
    };
    let mut parse = Vec::with_capacity(sql.len() + 4);
    parse.push(0);
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    message(b'P', &parse);
    let mut bind = vec![0, 0, 0, 0];
    bind.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for param in params {
        match param {
            Some(value) => {
                bind.extend_from_slice(&(value.len() as u32).to_be_bytes());
                bind.extend_from_slice(value.as_bytes());
            }
            None => bind.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    bind.extend_from_slice(&[0, 0]);
    message(b'B', &bind);
    message(b'E', &[0, 0, 0, 0, 0]);
    message(b'S', &[]);
    out
}

/// The first column of a DataRow body, as text; `None` for NULL or a malformed row.
fn first_column(body: &[u8]) -> Option<String> {
    let count = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    if count == 0 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let value = body.get(6..6 + len)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_query_frames_parse_bind_execute_sync() {
        let bytes = extended_query("SELECT $1, $2", &[Some("a'b"), None]);
        let mut tags = Vec::new();
        let mut rest = &bytes[..];
        while let Ok(Some((tag, size))) = backend::frame_header(rest) {
            tags.push(tag);
            rest = &rest[size..];
        }
        assert!(rest.is_empty());
        assert_eq!(tags, b"PBES");
        // The parameter travels as data, quote and all.
        assert!(bytes.windows(3).any(|w| w == b"a'b"));
    }

    #[test]
    fn first_column_reads_text_and_refuses_short_rows() {
        let mut row = vec![0, 1, 0, 0, 0, 7];
        row.extend_from_slice(b"created");
        assert_eq!(first_column(&row).as_deref(), Some("created"));
        assert_eq!(first_column(&[0, 1, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(first_column(&[0, 1, 0, 0, 0, 9, b'x']), None);
        assert_eq!(first_column(&[0]), None);
    }
}

//! The audit log: one JSON line per session event, appended to `relay.audit.path`.
//!
//! Sessions never wait on the disk: every event goes through a bounded queue to one writer
//! thread, which batches whatever is queued into a single `write` call. After each write the
//! writer rests for [`BATCH_WINDOW`]: events queued meanwhile cost the session no system call
//! (nobody is waiting on the queue to be woken) and leave together in the next write, so a busy
//! relay writes the log a few dozen times a second instead of twice per session (and once per
//! query with `queries=#true`). An event reaches the file at most that much later. Events carry only
//! who, where and what (identity, database, db user, db name, client address, SQL text), and
//! which relay of a fleet wrote them (`replica`, [`crate::replica`]) — never key material and
//! never the values of bound parameters.
//!
//! **Fail closed**: when the log cannot be written, the sink reports itself unavailable and the
//! relay refuses *new* sessions (reason `audit_unavailable`) until a write succeeds again; the
//! writer keeps what it could not write (up to [`MAX_PENDING_BYTES`]) and retries every second.
//! Sessions already running continue, so a full disk does not cut off work in progress.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::metrics::{DenyReason, EndReason, counter, gauge};
use crate::provision::{ProvisionError, Provisioning};
use crate::replica::ReplicaId;

/// Events queued between sessions and the writer. Beyond this, events are dropped and counted
/// (`dbward_audit_events_dropped_total`) rather than making a session wait.
const QUEUE_CAPACITY: usize = 16_384;

/// Bytes kept in memory while the log cannot be written, before events are dropped.
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// How long the writer rests after a write, gathering the next batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// How often the writer retries a failing log.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Who connected from where, and what they asked for. Fields are `None` until known (a
/// connection refused before TLS has no identity).
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// The session id from [`crate::state::Shared::next_session_id`]. The log writes it as
    /// `<run>-<id>`, where `<run>` names this process run, so ids never repeat across restarts.
    #[serde(skip)]
    pub id: u64,
    pub client_addr: SocketAddr,
    /// The client certificate's subject CN.
    pub identity: Option<String>,
    /// The manifest name of the database.
    pub database: Option<String>,
    /// The PostgreSQL user the session logs in as.
    pub db_user: Option<String>,
    /// The PostgreSQL database name (`dbname`).
    pub db_name: Option<String>,
}

impl SessionInfo {
    /// A connection just accepted: only its id and address are known.
    pub fn new(id: u64, client_addr: SocketAddr) -> SessionInfo {
        SessionInfo {
            id,
            client_addr,
            identity: None,
            database: None,
            db_user: None,
            db_name: None,
        }
    }
}

/// Which protocol message carried a recorded query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryMessage {
    /// Simple query protocol (`Q`).
    Query,
    /// Extended query protocol (`P`); the statement's parameters are never recorded.
    Parse,
}

enum Kind {
    Start,
    End {
        duration: Duration,
        client_to_server: u64,
        server_to_client: u64,
        reason: EndReason,
    },
    Denied {
        reason: DenyReason,
        message: String,
    },
    Query {
        message: QueryMessage,
        sql: Box<[u8]>,
    },
    /// `user.provisioned` or `user.deprovisioned`.
    User {
        event: &'static str,
        mode: &'static str,
        roles: Vec<String>,
        /// The function's outcome (`created`, `activated`, `deactivated`, `dropped`, `in-use`,
        /// `absent`), or `failed` with the error in `message`.
        outcome: String,
        message: Option<String>,
        /// `sweep` for a user the sweep retired (no session of this relay); else none.
        reason: Option<&'static str>,
    },
    /// `cancel.forward_refused`: a cancel another replica (or something posing as one) sent
    /// to the peer listener was dropped.
    PeerRefused {
        reason: &'static str,
        message: String,
    },
}

struct Event {
    time: SystemTime,
    session: Arc<SessionInfo>,
    kind: Kind,
}

enum Command {
    Event(Event),
    /// Close the current file and open `path` (or stop writing when `None`); sent on reload so
    /// a rotated or moved log is picked up.
    Reopen(Option<PathBuf>),
    /// Write everything queued so far, then answer.
    Flush(SyncSender<()>),
}

/// The line written for each event, in field order.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: &'static str,
    /// The relay process that wrote the event (`--replica-id`, else the host name).
    replica: &'a str,
    session: String,
    #[serde(flatten)]
    info: &'a SessionInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_client_to_server: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_server_to_client: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<QueryMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a str>,
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the audit log {path} for appending: {source}; create its directory and make it \
     writable by the relay, or change `audit` in the manifest"
)]
pub struct OpenError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Opens (creating, mode 0600) the audit log for appending.
pub fn open_log(path: &Path) -> Result<File, OpenError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| OpenError {
            path: path.to_owned(),
            source,
        })
}

/// Counters shared by the sink and its writer thread, exported on `/metrics`.
#[derive(Debug)]
struct Stats {
    /// False while the configured log cannot be written; new sessions are then refused.
    available: AtomicBool,
    written: AtomicU64,
    dropped: AtomicU64,
    write_failures: AtomicU64,
}

impl Stats {
    fn dropped(&self, events: u64) {
        self.dropped.fetch_add(events, Ordering::Relaxed);
    }
}

/// The handle sessions record events through. Every method returns at once.
#[derive(Debug)]
pub struct AuditSink {
    queue: SyncSender<Command>,
    stats: Arc<Stats>,
}

impl AuditSink {
    /// Starts the writer thread. `path` is the resolved audit log, or `None` when the config
    /// has no `audit`; the file must already be openable (config verification checks it).
    /// Every event names `replica`, the relay process that wrote it.
    pub fn start(path: Option<PathBuf>, replica: ReplicaId) -> Result<AuditSink, OpenError> {
        let file = path.as_deref().map(open_log).transpose()?;
        let (queue, receiver) = mpsc::sync_channel(QUEUE_CAPACITY);
        let stats = Arc::new(Stats {
            available: AtomicBool::new(true),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
        });
        // The run prefix of session ids: this process's start time and pid, in hex.
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let writer = Writer {
            path,
            file,
            replica,
            run: format!("{:x}{:x}", started.as_secs(), std::process::id()),
            pending: Vec::new(),
            pending_events: 0,
            stats: Arc::clone(&stats),
        };
        std::thread::Builder::new()
            .name("dbward-audit".into())
            .spawn(move || writer.run(receiver))
            .map_err(|source| OpenError {
                path: PathBuf::from("<audit writer thread>"),
                source,
            })?;
        Ok(AuditSink { queue, stats })
    }

    /// An audit sink for a relay without an audit log: events are discarded, sessions admitted.
    pub fn disabled() -> AuditSink {
        // Starting without a path opens no file, so this cannot fail; if the thread cannot be
        // spawned either, a sink whose queue is closed drops events the same way.
        AuditSink::start(None, ReplicaId::literal("disabled")).unwrap_or_else(|_| {
            let (queue, _) = mpsc::sync_channel(1);
            AuditSink {
                queue,
                stats: Arc::new(Stats {
                    available: AtomicBool::new(true),
                    written: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                    write_failures: AtomicU64::new(0),
                }),
            }
        })
    }

    /// Whether a new session may start: false while the audit log cannot be written (fail
    /// closed; refuse the session with [`DenyReason::AuditUnavailable`]).
    pub fn admits_new_sessions(&self) -> bool {
        self.stats.available.load(Ordering::Relaxed)
    }

    /// Appends the audit log's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        counter(
            out,
            "dbward_audit_events_total",
            "Audit events written to the audit log.",
            load(&self.stats.written),
        );
        counter(
            out,
            "dbward_audit_events_dropped_total",
            "Audit events lost because the queue was full or the log could not be written.",
            load(&self.stats.dropped),
        );
        counter(
            out,
            "dbward_audit_write_failures_total",
            "Failed attempts to write the audit log.",
            load(&self.stats.write_failures),
        );
        gauge(
            out,
            "dbward_audit_up",
            "1 while the audit log is writable (or not configured); 0 while new sessions are \
             refused because it is not.",
            i64::from(self.admits_new_sessions()),
        );
    }

    /// `session.start`: the access check passed and the upstream is connected.
    pub fn session_start(&self, session: &Arc<SessionInfo>) {
        self.send(session, Kind::Start);
    }

    /// `session.end`, with how long the session lasted, the bytes relayed each way and why
    /// it ended.
    pub fn session_end(
        &self,
        session: &Arc<SessionInfo>,
        duration: Duration,
        client_to_server: u64,
        server_to_client: u64,
        reason: EndReason,
    ) {
        self.send(
            session,
            Kind::End {
                duration,
                client_to_server,
                server_to_client,
                reason,
            },
        );
    }

    /// `session.denied`: what was refused (`reason`) and the message the client was sent.
    pub fn session_denied(&self, session: &SessionInfo, reason: DenyReason, message: &str) {
        self.send(
            &Arc::new(session.clone()),
            Kind::Denied {
                reason,
                message: message.to_owned(),
            },
        );
    }

    /// `session.query`: the SQL text of one Query or Parse message (invalid UTF-8 is replaced).
    /// Pass only the query string, never a Bind message's parameter values.
    pub fn session_query(&self, session: &Arc<SessionInfo>, message: QueryMessage, sql: &[u8]) {
        self.send(
            session,
            Kind::Query {
                message,
                sql: sql.into(),
            },
        );
    }

    /// `user.provisioned`: the person's database user activated for a session (or not).
    pub fn user_provisioned(
        &self,
        session: &SessionInfo,
        plan: &Provisioning,
        outcome: &Result<String, ProvisionError>,
    ) {
        self.user_event("user.provisioned", session, plan, outcome);
    }

    /// `user.deprovisioned`: the person's database user retired after a session (or not).
    pub fn user_deprovisioned(
        &self,
        session: &SessionInfo,
        plan: &Provisioning,
        outcome: &Result<String, ProvisionError>,
    ) {
        self.user_event("user.deprovisioned", session, plan, outcome);
    }

    fn user_event(
        &self,
        event: &'static str,
        session: &SessionInfo,
        plan: &Provisioning,
        outcome: &Result<String, ProvisionError>,
    ) {
        let (outcome, message) = match outcome {
            Ok(outcome) => (outcome.clone(), None),
            Err(error) => ("failed".to_owned(), Some(error.to_string())),
        };
        self.send(
            &Arc::new(session.clone()),
            Kind::User {
                event,
                mode: plan.mode_name(),
                roles: plan.roles(),
                outcome,
                message,
                reason: None,
            },
        );
    }

    /// `user.deprovisioned` with reason `sweep`: a provisioned user left active without a
    /// session (a relay was killed mid-session) that the sweep retired. No session of this
    /// relay is involved: the event's session id is `<run>-0` and its client address
    /// `0.0.0.0:0`; the database user is the person's.
    pub fn user_swept(
        &self,
        database: &str,
        db_name: &str,
        person: &str,
        mode: &str,
        outcome: &str,
    ) {
        let info = SessionInfo {
            id: 0,
            client_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            identity: Some(person.to_owned()),
            database: Some(database.to_owned()),
            db_user: Some(person.to_owned()),
            db_name: Some(db_name.to_owned()),
        };
        let mode = if mode == "best-effort-drop" {
            "best-effort-drop"
        } else {
            "keep"
        };
        self.send(
            &Arc::new(info),
            Kind::User {
                event: "user.deprovisioned",
                mode,
                roles: Vec::new(),
                outcome: outcome.to_owned(),
                message: None,
                reason: Some("sweep"),
            },
        );
    }

    /// `cancel.forward_refused`: a forward from `from` to the peer listener was dropped, for
    /// `reason` (a [`crate::peer::Refusal`]). No session is involved: the event's session id
    /// is `<run>-0`. The key it carried is never written.
    pub fn forward_refused(&self, from: SocketAddr, reason: &'static str, message: &str) {
        self.send(
            &Arc::new(SessionInfo::new(0, from)),
            Kind::PeerRefused {
                reason,
                message: message.to_owned(),
            },
        );
    }

    /// Switches to another log file (or none) after a reload; also reopens the same path, so
    /// `logrotate` + SIGHUP works.
    pub fn reopen(&self, path: Option<PathBuf>) {
        // A reopen must not be lost to a full queue: wait for room (the writer drains fast).
        let _ = self.queue.send(Command::Reopen(path));
    }

    /// Blocks until every event queued so far has been written (or kept pending). For shutdown
    /// and tests; never call it from an async task's hot path.
    pub fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.queue.send(Command::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }

    fn send(&self, session: &Arc<SessionInfo>, kind: Kind) {
        let event = Event {
            time: SystemTime::now(),
            session: Arc::clone(session),
            kind,
        };
        match self.queue.try_send(Command::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped(1);
                tracing::error!(
                    session = session.id,
                    "audit queue is full; an audit event was dropped (the log is too slow)"
                );
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped(1);
                self.stats.available.store(false, Ordering::Relaxed);
                tracing::error!("the audit writer has stopped; new sessions are refused");
            }
        }
    }
}

/// The writer thread's state.
struct Writer {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Names this relay process in every event.
    replica: ReplicaId,
    /// Names this process run in session ids (`<run>-<id>`).
    run: String,
    /// Serialized lines not yet written (a batch, or what a failing log could not take).
    pending: Vec<u8>,
    pending_events: u64,
    stats: Arc<Stats>,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Command>) {
        loop {
            let timeout = if self.pending.is_empty() {
                Duration::from_secs(3600)
            } else {
                RETRY_INTERVAL
            };
            let first = match receiver.recv_timeout(timeout) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.write_pending();
                    return;
                }
            };
            // Batch: take everything already queued, then write once.
            let mut flushes = Vec::new();
            let mut next = first;
            while let Some(command) = next {
                match command {
                    Command::Event(event) => self.serialize(&event),
                    Command::Reopen(path) => {
                        self.write_pending();
                        self.path = path;
                        self.file = None;
                    }
                    Command::Flush(done) => flushes.push(done),
                }
                next = receiver.try_recv().ok();
            }
            self.write_pending();
            let flushed = !flushes.is_empty();
            for done in flushes {
                let _ = done.send(());
            }
            // A flush is the process stopping or a test waiting: no batch follows.
            if !flushed {
                std::thread::sleep(BATCH_WINDOW);
            }
        }
    }

    fn serialize(&mut self, event: &Event) {
        if self.path.is_none() {
            return;
        }
        if self.pending.len() >= MAX_PENDING_BYTES {
            self.stats.dropped(1);
            return;
        }
        let mut line = Line {
            time: rfc3339(event.time),
            event: "",
            replica: self.replica.as_str(),
            session: format!("{}-{}", self.run, event.session.id),
            info: &event.session,
            duration_ms: None,
            bytes_client_to_server: None,
            bytes_server_to_client: None,
            reason: None,
            message: None,
            protocol: None,
            query: None,
            mode: None,
            roles: None,
            outcome: None,
        };
        match &event.kind {
            Kind::Start => line.event = "session.start",
            Kind::End {
                duration,
                client_to_server,
                server_to_client,
                reason,
            } => {
                line.event = "session.end";
                line.reason = Some(reason.as_str());
                line.duration_ms = Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
                line.bytes_client_to_server = Some(*client_to_server);
                line.bytes_server_to_client = Some(*server_to_client);
            }
            Kind::Denied { reason, message } => {
                line.event = "session.denied";
                line.reason = Some(reason.as_str());
                line.message = Some(message);
            }
            Kind::Query { message, sql } => {
                line.event = "session.query";
                line.protocol = Some(*message);
                line.query = Some(String::from_utf8_lossy(sql));
            }
            Kind::User {
                event,
                mode,
                roles,
                outcome,
                message,
                reason,
            } => {
                line.event = event;
                line.reason = *reason;
                line.mode = Some(mode);
                line.roles = Some(roles);
                line.outcome = Some(outcome);
                line.message = message.as_deref();
            }
            Kind::PeerRefused { reason, message } => {
                line.event = "cancel.forward_refused";
                line.reason = Some(reason);
                line.message = Some(message);
            }
        }
        // Serializing strings, numbers and an address cannot fail; if it ever did, count the
        // event as dropped rather than writing half a line.
        match serde_json::to_writer(&mut self.pending, &line) {
            Ok(()) => {
                self.pending.push(b'\n');
                self.pending_events += 1;
            }
            Err(_) => self.stats.dropped(1),
        }
    }

    /// Writes the pending batch; on failure keeps it, marks the log unavailable and logs why.
    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(path) = self.path.clone() else {
            self.pending.clear();
            self.pending_events = 0;
            return;
        };
        // `wrote_some` tells a failed write (which may have left half a line in the file) from
        // a failed open (which wrote nothing).
        let mut wrote_some = false;
        let result = match self.file.as_mut() {
            Some(file) => {
                wrote_some = true;
                file.write_all(&self.pending)
            }
            None => match open_log(&path) {
                Ok(mut file) => {
                    wrote_some = true;
                    let written = file.write_all(&self.pending);
                    self.file = Some(file);
                    written
                }
                Err(error) => Err(error.source),
            },
        };
        match result {
            Ok(()) => {
                self.stats
                    .written
                    .fetch_add(self.pending_events, Ordering::Relaxed);
                self.pending.clear();
                self.pending_events = 0;
                if !self.stats.available.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %path.display(),
                        "audit log writable again; accepting new sessions"
                    );
                }
            }
            Err(error) => {
                // Reopen next time; after a possibly partial write, start the retry on a fresh
                // line so every complete line in the file stays valid JSON.
                self.file = None;
                if wrote_some && self.pending.first() != Some(&b'\n') {
                    self.pending.insert(0, b'\n');
                }
                self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                if self.stats.available.swap(false, Ordering::Relaxed) {
                    tracing::error!(
                        path = %path.display(),
                        %error,
                        "cannot write the audit log; refusing new sessions until it is writable \
                         (fix the disk or permissions; the relay retries every second)"
                    );
                }
            }
        }
    }
}

/// RFC 3339 UTC timestamp with microseconds, e.g. `2026-11-21T11:30:03.123456Z`.
fn rfc3339(time: SystemTime) -> String {
    let time = time::OffsetDateTime::from(time);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time.format(&format).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Arc<SessionInfo> {
        let mut info = SessionInfo::new(7, "127.0.0.1:50000".parse().unwrap());
        info.identity = Some("alice".into());
        info.database = Some("orders".into());
        info.db_user = Some("app".into());
        info.db_name = Some("orders".into());
        Arc::new(info)
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    #[test]
    fn writes_one_json_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink =
            AuditSink::start(Some(path.clone()), ReplicaId::parse("relay-a").unwrap()).unwrap();
        let session = info();
        sink.session_start(&session);
        sink.session_query(&session, QueryMessage::Query, b"select 1");
        sink.session_query(&session, QueryMessage::Parse, b"select \"\n\xff");
        sink.session_end(
            &session,
            Duration::from_millis(1500),
            10,
            20,
            EndReason::ClientClosed,
        );
        let mut refused = SessionInfo::new(8, session.client_addr);
        refused.identity = Some("mallory".into());
        sink.session_denied(
            &refused,
            DenyReason::NoAccess,
            "no access to database orders",
        );
        sink.flush();

        let events = lines(&path);
        assert_eq!(events.len(), 5);
        let kinds: Vec<_> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "session.start",
                "session.query",
                "session.query",
                "session.end",
                "session.denied"
            ]
        );
        let start = &events[0];
        assert!(
            events.iter().all(|e| e["replica"] == "relay-a"),
            "{events:?}"
        );
        assert_eq!(start["identity"], "alice");
        assert_eq!(start["database"], "orders");
        assert_eq!(start["db_user"], "app");
        assert_eq!(start["db_name"], "orders");
        assert_eq!(start["client_addr"], "127.0.0.1:50000");
        assert!(
            time::OffsetDateTime::parse(
                start["time"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok()
        );
        assert_eq!(events[2]["query"], "select \"\n\u{fffd}");
        assert_eq!(events[2]["protocol"], "parse");
        assert_eq!(events[3]["duration_ms"], 1500);
        assert_eq!(events[3]["bytes_server_to_client"], 20);
        assert_eq!(events[3]["reason"], "client_closed");
        assert_eq!(events[4]["reason"], "no_access");
        assert_eq!(events[4]["db_user"], serde_json::Value::Null);
        assert_ne!(events[0]["session"], events[4]["session"]);
        assert!(events[0]["session"].as_str().unwrap().ends_with("-7"));
        let mut text = String::new();
        sink.render_metrics(&mut text);
        assert!(text.contains("dbward_audit_events_total 5\n"), "{text}");
    }

    #[test]
    fn fails_closed_while_the_log_cannot_be_written_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink =
            AuditSink::start(Some(path.clone()), ReplicaId::parse("relay-a").unwrap()).unwrap();
        let session = info();
        // Point the sink at a directory that does not exist: writes fail.
        let missing = dir.path().join("gone").join("audit.jsonl");
        sink.reopen(Some(missing.clone()));
        sink.session_start(&session);
        sink.flush();
        assert!(!sink.admits_new_sessions());
        let mut text = String::new();
        sink.render_metrics(&mut text);
        assert!(text.contains("dbward_audit_up 0\n"), "{text}");

        // Once the directory exists, the retry writes what was kept and admits sessions again.
        std::fs::create_dir(dir.path().join("gone")).unwrap();
        let admitted = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            sink.admits_new_sessions()
        });
        assert!(admitted, "the writer did not recover");
        let events = lines(&missing);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["event"], "session.start");
    }
}

//! Prometheus metrics: lock-free counters updated on the hot path, rendered as text on demand.
//!
//! Every counter is a plain atomic, so a session pays one relaxed `fetch_add` per update and
//! never takes a lock; the text encoder runs only when `/metrics` is scraped. The HTTP endpoint
//! that serves it, with `/livez` and `/readyz`, is [`crate::http`]. The audit log's own counters
//! live with it ([`crate::audit::AuditSink::render_metrics`]) and are appended by the endpoint.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Why a connection was refused. Each reason is one label value of
/// `dbward_sessions_denied_total` and the `reason` field of a `session.denied` audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// A plaintext StartupMessage: the relay requires TLS.
    TlsRequired,
    /// No client certificate, or one that is expired, not yet valid, from another CA, or
    /// without a subject CN.
    Certificate,
    /// The startup packet was malformed, oversized, too slow, or violated the protocol.
    Protocol,
    /// The SNI name or `dbward.database` option names no database of the manifest.
    UnknownDatabase,
    /// The person has no access entry for this database.
    NoAccess,
    /// The requested database user is not allowed for this person.
    DbUserNotAllowed,
    /// The requested database name is not allowed for this person.
    DbNameNotAllowed,
    /// The relay is at `limits.max_connections`.
    ConnectionLimit,
    /// The audit log cannot be written, so new sessions are refused (fail closed).
    AuditUnavailable,
    /// The upstream could not be reached or refused the relay.
    Upstream,
    /// The person's database user could not be provisioned: a same-named role dbward does not
    /// manage, other sessions with other rights, or a failed admin connection.
    Provision,
    /// The client certificate was issued before a `certificates-issued-after` cutoff.
    CertificateLockedOut,
}

impl DenyReason {
    /// Every reason, in the order they are rendered.
    pub const ALL: [DenyReason; 12] = [
        DenyReason::TlsRequired,
        DenyReason::Certificate,
        DenyReason::Protocol,
        DenyReason::UnknownDatabase,
        DenyReason::NoAccess,
        DenyReason::DbUserNotAllowed,
        DenyReason::DbNameNotAllowed,
        DenyReason::ConnectionLimit,
        DenyReason::AuditUnavailable,
        DenyReason::Upstream,
        DenyReason::Provision,
        DenyReason::CertificateLockedOut,
    ];

    /// The stable snake_case name used as a metric label and in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::TlsRequired => "tls_required",
            DenyReason::Certificate => "certificate",
            DenyReason::Protocol => "protocol",
            DenyReason::UnknownDatabase => "unknown_database",
            DenyReason::NoAccess => "no_access",
            DenyReason::DbUserNotAllowed => "db_user_not_allowed",
            DenyReason::DbNameNotAllowed => "db_name_not_allowed",
            DenyReason::ConnectionLimit => "connection_limit",
            DenyReason::AuditUnavailable => "audit_unavailable",
            DenyReason::Upstream => "upstream",
            DenyReason::Provision => "provision",
            DenyReason::CertificateLockedOut => "certificate_locked_out",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a relayed session ended. Each reason is one label value of
/// `dbward_sessions_ended_total` and the `reason` field of a `session.end` audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client closed its connection (Terminate, or end of stream).
    ClientClosed,
    /// The upstream closed its connection (the database ended the session: shutdown,
    /// `pg_terminate_backend`, its own timeouts).
    UpstreamClosed,
    /// Reading from or writing to the client failed (reset, broken pipe, TLS error).
    ClientError,
    /// Reading from or writing to the upstream failed.
    UpstreamError,
    /// Idle outside a transaction for `limits.idle_timeout_ms` (FATAL 57P05 sent).
    IdleTimeout,
    /// Idle inside a transaction for `limits.idle_in_transaction_timeout_ms` (FATAL 25P03).
    IdleInTransactionTimeout,
    /// A reload removed the session's access, and the grace passed (FATAL 57P01).
    AccessRevoked,
    /// The client certificate expired, with `disconnect_expired_cert` on (FATAL 57P01).
    CertificateExpired,
    /// A reload locked out the session's certificate (`certificates-issued-after`; FATAL 57P01).
    CertificateLockedOut,
}

impl EndReason {
    /// Every reason, in the order they are rendered.
    pub const ALL: [EndReason; 9] = [
        EndReason::ClientClosed,
        EndReason::UpstreamClosed,
        EndReason::ClientError,
        EndReason::UpstreamError,
        EndReason::IdleTimeout,
        EndReason::IdleInTransactionTimeout,
        EndReason::AccessRevoked,
        EndReason::CertificateExpired,
        EndReason::CertificateLockedOut,
    ];

    /// The stable snake_case name used as a metric label and in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientClosed => "client_closed",
            EndReason::UpstreamClosed => "upstream_closed",
            EndReason::ClientError => "client_error",
            EndReason::UpstreamError => "upstream_error",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::IdleInTransactionTimeout => "idle_in_transaction_timeout",
            EndReason::AccessRevoked => "access_revoked",
            EndReason::CertificateExpired => "certificate_expired",
            EndReason::CertificateLockedOut => "certificate_locked_out",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds, in seconds, of the upstream connect latency buckets. Connecting includes TCP,
/// TLS and authentication, so the range spans a LAN (1 ms) to a slow cloud login (10 s).
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A fixed-bucket histogram of durations, lock-free.
#[derive(Debug, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (slot, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[slot].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1_000_000.0;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// What happened to a CancelRequest this replica forwarded to another.
pub const FORWARD_OUTCOMES: [&str; 3] = ["forwarded", "failed", "rate_limited"];

/// What happened to a cancel another replica forwarded here: `served`, or why it was refused
/// ([`crate::peer::Refusal::reason`]).
pub const PEER_OUTCOMES: [&str; 8] = [
    "served",
    "handshake",
    "malformed",
    "unknown_peer",
    "not_ours",
    "stale",
    "replayed",
    "rate_limited",
];

/// Every relay metric. All methods take `&self` and cost one or two relaxed atomic adds.
#[derive(Debug, Default)]
pub struct Metrics {
    sessions_active: AtomicI64,
    sessions_total: AtomicU64,
    denied: [AtomicU64; DenyReason::ALL.len()],
    ended: [AtomicU64; EndReason::ALL.len()],
    /// The connection limit in force: `limits.max_connections`, or less when the descriptor
    /// limit allows fewer (see [`crate::listener::FdBudget`]).
    connection_limit: AtomicU64,
    /// The process's open-file limit (soft `RLIMIT_NOFILE`) after startup raised it.
    fd_limit: AtomicU64,
    bytes_client_to_server: AtomicU64,
    bytes_server_to_client: AtomicU64,
    handshake_failures: AtomicU64,
    upstream_connect: Histogram,
    /// Time to activate a provisioned user through the admin connection (successful ones).
    provision_activate: Histogram,
    /// Admin connections opened (the pool reuses them; see [`crate::provision::AdminPool`]).
    admin_connections_opened: AtomicU64,
    /// Provisioned users the sweep retired: deactivated, dropped.
    swept: [AtomicU64; 2],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// CancelRequests for another replica's key, by [`FORWARD_OUTCOMES`].
    cancel_forwards: [AtomicU64; FORWARD_OUTCOMES.len()],
    /// Cancels other replicas forwarded here, by [`PEER_OUTCOMES`].
    peer_forwards: [AtomicU64; PEER_OUTCOMES.len()],
    /// Connections open on each session thread, once the binary's threads have started.
    worker_connections: OnceLock<Vec<Arc<AtomicUsize>>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Reports the connections of each session thread (see [`crate::listener::Workers`]).
    pub fn watch_workers(&self, connections: Vec<Arc<AtomicUsize>>) {
        let _ = self.worker_connections.set(connections);
    }

    /// A session passed its access check and reached its upstream. Pair with
    /// [`Metrics::session_ended`].
    pub fn session_started(&self) {
        self.sessions_total.fetch_add(1, Ordering::Relaxed);
        self.sessions_active.fetch_add(1, Ordering::Relaxed);
    }

    /// A started session ended, for `reason`.
    pub fn session_ended(&self, reason: EndReason) {
        self.sessions_active.fetch_sub(1, Ordering::Relaxed);
        self.ended[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// How many sessions ended for `reason` so far.
    pub fn ended_count(&self, reason: EndReason) -> u64 {
        self.ended[reason.index()].load(Ordering::Relaxed)
    }

    /// Records the connection limit in force (at startup and after each reload).
    pub fn set_connection_limit(&self, limit: usize) {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        self.connection_limit.store(limit, Ordering::Relaxed);
    }

    /// Records the open-file limit the relay runs with.
    pub fn set_open_files(&self, limit: u64) {
        self.fd_limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes a session just relayed each way (counted as they pass, not at its end).
    pub fn bytes_relayed(&self, from_client: u64, to_client: u64) {
        if from_client > 0 {
            self.bytes_client_to_server
                .fetch_add(from_client, Ordering::Relaxed);
        }
        if to_client > 0 {
            self.bytes_server_to_client
                .fetch_add(to_client, Ordering::Relaxed);
        }
    }

    /// Sessions currently relayed.
    pub fn sessions_active(&self) -> i64 {
        self.sessions_active.load(Ordering::Relaxed)
    }

    /// A connection was refused, for `reason`.
    pub fn session_denied(&self, reason: DenyReason) {
        self.denied[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections were refused for `reason` so far.
    pub fn denied_count(&self, reason: DenyReason) -> u64 {
        self.denied[reason.index()].load(Ordering::Relaxed)
    }

    /// A connection failed before its startup completed (TLS error, bad packet, timeout).
    pub fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was refused because the connection limit was reached.
    pub fn connection_refused(&self) {
        self.session_denied(DenyReason::ConnectionLimit);
    }

    /// Time to connect and authenticate to an upstream.
    pub fn upstream_connected(&self, elapsed: Duration) {
        self.upstream_connect.observe(elapsed);
    }

    /// Time `dbward.activate` took, admin connection included, for a session that got its user.
    pub fn user_activated(&self, elapsed: Duration) {
        self.provision_activate.observe(elapsed);
    }

    /// An admin connection was opened (not taken warm from the pool).
    pub fn admin_connection_opened(&self) {
        self.admin_connections_opened
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The sweep retired a provisioned user left active: `dropped` or else deactivated.
    pub fn user_swept(&self, dropped: bool) {
        self.swept[usize::from(dropped)].fetch_add(1, Ordering::Relaxed);
    }

    /// A CancelRequest for another replica's key: `outcome` is one of [`FORWARD_OUTCOMES`].
    pub fn cancel_forward(&self, outcome: &str) {
        if let Some(i) = FORWARD_OUTCOMES.iter().position(|o| *o == outcome) {
            self.cancel_forwards[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A cancel forwarded by another replica: `outcome` is one of [`PEER_OUTCOMES`].
    pub fn peer_forward(&self, outcome: &str) {
        if let Some(i) = PEER_OUTCOMES.iter().position(|o| *o == outcome) {
            self.peer_forwards[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A SIGHUP reload finished, successfully or not.
    pub fn config_reloaded(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        gauge(
            out,
            "dbward_sessions_active",
            "Sessions currently relayed.",
            self.sessions_active.load(Ordering::Relaxed),
        );
        counter(
            out,
            "dbward_sessions_total",
            "Sessions that passed the access check and reached their upstream.",
            load(&self.sessions_total),
        );
        let name = "dbward_sessions_denied_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections refused, by reason.\n# TYPE {name} counter"
        );
        for reason in DenyReason::ALL {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                reason.as_str(),
                load(&self.denied[reason.index()])
            );
        }
        let name = "dbward_sessions_ended_total";
        let _ = writeln!(
            out,
            "# HELP {name} Sessions that ended, by reason.\n# TYPE {name} counter"
        );
        for reason in EndReason::ALL {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                reason.as_str(),
                load(&self.ended[reason.index()])
            );
        }
        let limit = load(&self.connection_limit);
        if limit > 0 {
            gauge(
                out,
                "dbward_connection_limit",
                "Connections the relay admits at once: limits.max_connections, or fewer when \
                 the open-file limit allows fewer.",
                i64::try_from(limit).unwrap_or(i64::MAX),
            );
        }
        if load(&self.fd_limit) > 0 {
            gauge(
                out,
                "dbward_open_files_limit",
                "The process's open-file limit (RLIMIT_NOFILE), raised to the hard limit at \
                 startup.",
                i64::try_from(load(&self.fd_limit)).unwrap_or(i64::MAX),
            );
        }
        counter(
            out,
            "dbward_client_to_server_bytes_total",
            "Bytes relayed from clients to upstream servers.",
            load(&self.bytes_client_to_server),
        );
        counter(
            out,
            "dbward_server_to_client_bytes_total",
            "Bytes relayed from upstream servers to clients.",
            load(&self.bytes_server_to_client),
        );
        counter(
            out,
            "dbward_handshake_failures_total",
            "Connections that failed before their startup completed (TLS errors, bad packets, \
             timeouts).",
            load(&self.handshake_failures),
        );
        self.upstream_connect.render(
            out,
            "dbward_upstream_connect_seconds",
            "Time to connect and authenticate to an upstream server.",
        );
        self.provision_activate.render(
            out,
            "dbward_provision_activate_seconds",
            "Time to activate a provisioned user through the admin connection (connect included).",
        );
        counter(
            out,
            "dbward_provision_admin_connections_opened_total",
            "Admin connections opened for provisioning; warm ones are reused, so in steady \
             state this stays flat while sessions grow.",
            load(&self.admin_connections_opened),
        );
        let name = "dbward_cancel_forwards_total";
        let _ = writeln!(
            out,
            "# HELP {name} CancelRequests for another replica's session, sent to that replica \
             (relay {{ peers }}), by outcome.\n# TYPE {name} counter"
        );
        for (outcome, value) in FORWARD_OUTCOMES.iter().zip(&self.cancel_forwards) {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", load(value));
        }
        let name = "dbward_peer_forwards_received_total";
        let _ = writeln!(
            out,
            "# HELP {name} Cancels other replicas forwarded here: served, or why refused.\n\
             # TYPE {name} counter"
        );
        for (outcome, value) in PEER_OUTCOMES.iter().zip(&self.peer_forwards) {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", load(value));
        }
        let name = "dbward_provision_swept_total";
        let _ = writeln!(
            out,
            "# HELP {name} Provisioned users left active without a session (a relay was killed) \
             that the sweep retired, by outcome.\n# TYPE {name} counter"
        );
        for (index, outcome) in ["deactivated", "dropped"].iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{outcome}\"}} {}",
                load(&self.swept[index])
            );
        }
        let name = "dbward_config_reloads_total";
        let _ = writeln!(
            out,
            "# HELP {name} Configuration reloads (SIGHUP), by result.\n# TYPE {name} counter"
        );
        let _ = writeln!(out, "{name}{{result=\"ok\"}} {}", load(&self.reloads_ok));
        let _ = writeln!(
            out,
            "{name}{{result=\"failed\"}} {}",
            load(&self.reloads_failed)
        );
        if let Some(workers) = self.worker_connections.get() {
            let name = "dbward_worker_connections";
            let _ = writeln!(
                out,
                "# HELP {name} Connections open on each session thread; new ones go to the \
                 thread with the fewest.\n# TYPE {name} gauge"
            );
            for (index, connections) in workers.iter().enumerate() {
                let value = connections.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{worker=\"{index}\"}} {value}");
            }
        }
    }
}

/// Writes one counter with its HELP and TYPE lines.
pub(crate) fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// Writes one gauge with its HELP and TYPE lines.
pub(crate) fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_text() {
        let metrics = Metrics::new();
        metrics.session_started();
        assert_eq!(metrics.sessions_active(), 1);
        metrics.bytes_relayed(10, 2000);
        metrics.session_ended(EndReason::IdleTimeout);
        metrics.session_denied(DenyReason::NoAccess);
        metrics.session_denied(DenyReason::NoAccess);
        metrics.connection_refused();
        metrics.upstream_connected(Duration::from_millis(3));
        metrics.upstream_connected(Duration::from_secs(60));
        metrics.config_reloaded(false);
        let mut text = String::new();
        metrics.render(&mut text);
        for line in [
            "dbward_sessions_active 0",
            "dbward_sessions_total 1",
            "dbward_sessions_ended_total{reason=\"idle_timeout\"} 1",
            "dbward_sessions_ended_total{reason=\"client_closed\"} 0",
            "dbward_sessions_denied_total{reason=\"no_access\"} 2",
            "dbward_sessions_denied_total{reason=\"connection_limit\"} 1",
            "dbward_sessions_denied_total{reason=\"tls_required\"} 0",
            "dbward_client_to_server_bytes_total 10",
            "dbward_server_to_client_bytes_total 2000",
            "dbward_upstream_connect_seconds_bucket{le=\"0.0025\"} 0",
            "dbward_upstream_connect_seconds_bucket{le=\"0.005\"} 1",
            "dbward_upstream_connect_seconds_bucket{le=\"10\"} 1",
            "dbward_upstream_connect_seconds_bucket{le=\"+Inf\"} 2",
            "dbward_upstream_connect_seconds_sum 60.003",
            "dbward_upstream_connect_seconds_count 2",
            "dbward_config_reloads_total{result=\"failed\"} 1",
            "dbward_config_reloads_total{result=\"ok\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // Every sample line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}

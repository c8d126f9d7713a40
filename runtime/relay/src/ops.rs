//! Running the relay as a process: `--check`, startup, SIGHUP reload, SIGTERM drain.
//!
//! [`serve`] is what `dbward-relay --config …` does: load and verify the config, start the audit
//! writer, bind the relay and metrics listeners, run the accept loop, and react to signals:
//!
//! - **SIGHUP** reloads the config with [`reload`]: sessions in flight keep the snapshot they
//!   started with, except that those the new config no longer allows are ended after its
//!   `revoke-grace` ([`crate::revoke`]); new sessions use the new one; a bad file keeps the old
//!   config and logs why.
//! - **SIGTERM** (or SIGINT) drains: `/readyz` turns 503, the listener closes, running sessions
//!   may finish until `limits.drain_timeout_ms`, then the process exits 0. A second SIGTERM
//!   exits at once with status 1.
//!
//! Under systemd ([`Notifier`]), each of these is told to the service manager: `READY=1` once
//! listening, `RELOADING=1` then `READY=1` around a reload, `STOPPING=1` when the drain starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditSink, OpenError};
use crate::config::{self, ConfigError};
use crate::listener::{FdBudget, Workers};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::replica::ReplicaId;
use crate::state::Shared;

/// Process-level health, read by `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
}

impl Health {
    /// True from the first SIGTERM on: `/readyz` answers 503 so load balancers stop sending.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Appends `dbward_draining` in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        crate::metrics::gauge(
            out,
            "dbward_draining",
            "1 after SIGTERM while sessions drain, else 0.",
            i64::from(self.is_draining()),
        );
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Audit(#[from] OpenError),
    #[error(
        "cannot listen on {addr} ({what}): {source}; free the port or change `{what}` in the \
         manifest"
    )]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error(
        "the open-file limit ({open_files}) leaves no descriptors for sessions; raise it to at \
         least {needed} (`ulimit -n`, or LimitNOFILE= in the systemd unit)"
    )]
    Descriptors { open_files: u64, needed: u64 },
    #[error("cannot start the session threads: {0}")]
    Threads(std::io::Error),
    #[error("{0}")]
    PeerId(String),
    #[error("the relay stopped: {0}")]
    Run(String),
}

/// How this process serves, beyond what the config says: the command line's choices.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Threads relaying sessions (see [`Workers`]).
    pub threads: usize,
    /// Which replica this is: named in every audit event and the startup log line.
    pub replica: ReplicaId,
    /// Listen here instead of the config's `relay.listen` (several replicas on one host).
    pub listen: Option<std::net::SocketAddr>,
    /// Serve `/metrics`, `/livez`, `/readyz` here instead of the config's `relay.metrics`.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--peer-id`: this replica's id when the config lists peers (else the ordinal at the end
    /// of the host name).
    pub peer_id: Option<u16>,
}

impl ServeOptions {
    /// `threads` session threads, named `replica`, on the config's addresses.
    pub fn new(threads: usize, replica: ReplicaId) -> ServeOptions {
        ServeOptions {
            threads,
            replica,
            listen: None,
            metrics: None,
            peer_id: None,
        }
    }
}

/// What `--check` found valid, for its one-line summary.
#[derive(Debug)]
pub struct CheckSummary {
    pub databases: usize,
    pub access_entries: usize,
}

/// `--check`: everything startup verifies, without listening or writing anything.
pub fn check(config_path: &Path) -> Result<CheckSummary, ConfigError> {
    let loaded = config::load(config_path)?;
    Ok(CheckSummary {
        databases: loaded.config.databases.len(),
        access_entries: loaded.config.access.len(),
    })
}

/// SIGHUP: loads `config_path` again and, if it verifies, makes it the config of new sessions
/// and ends, after its grace, the sessions in flight it no longer allows.
/// A config that fails keeps the old one in force; the reason is logged at error level.
/// Returns whether the new config was installed.
pub fn reload(shared: &Arc<Shared>, config_path: &Path) -> bool {
    let started = Instant::now();
    match config::load(config_path) {
        Ok(loaded) => {
            let old = shared.current();
            if loaded.config.relay.listen != old.config.relay.listen
                || loaded.config.relay.metrics != old.config.relay.metrics
                || shared
                    .peering
                    .own()
                    .and_then(|id| {
                        let address = |l: &crate::state::Loaded| {
                            l.peers.as_ref().and_then(|p| p.listen_address(id))
                        };
                        (address(&loaded) != address(&old)).then_some(())
                    })
                    .is_some()
            {
                tracing::warn!(
                    "the new config changes `listen`, `metrics` or this replica's peer address; \
                     addresses change only on restart, the rest of the config is in force now"
                );
            }
            if let Some(peers) = &loaded.peers {
                match shared.peering.own() {
                    Some(id) if !peers.contains(id) => tracing::warn!(
                        peer_id = id,
                        "the new config does not list this replica's peer id; the others \
                         cannot forward cancels to it"
                    ),
                    None => tracing::warn!(
                        "the new config lists peers; this relay started without them, so it \
                         forwards no cancels until it is restarted"
                    ),
                    _ => {}
                }
            }
            // Reopen even when the path is unchanged, so `logrotate` + SIGHUP works.
            shared.audit.reopen(config::audit_path(&loaded));
            let checksum = loaded.config.checksum.clone();
            shared.replace_config(loaded);
            shared.metrics.config_reloaded(true);
            shared
                .metrics
                .set_connection_limit(shared.connection_limit());
            let revoked = crate::revoke::after_reload(shared);
            tracing::info!(
                %checksum,
                elapsed_ms = started.elapsed().as_millis() as u64,
                revoked,
                "config reloaded; new sessions use it, sessions in flight keep theirs unless \
                 it revoked them"
            );
            true
        }
        Err(error) => {
            shared.metrics.config_reloaded(false);
            tracing::error!(
                %error,
                "config reload failed; keeping the previous config"
            );
            false
        }
    }
}

/// Runs the relay until SIGTERM/SIGINT and the drain that follows, with sessions on
/// `options.threads` worker threads (see [`Workers`]; the first also runs the accept loop). The
/// caller's runtime (one thread is enough) handles signals and reloads and serves the metrics
/// endpoint.
pub async fn serve(config_path: PathBuf, options: ServeOptions) -> Result<(), ServeError> {
    let started = Instant::now();
    let ServeOptions {
        threads,
        replica,
        listen,
        metrics,
        peer_id,
    } = options;
    let loaded = config::load(&config_path)?;
    let own_peer_id = match &loaded.config.relay.peers {
        Some(peers) => {
            let members: Vec<u16> = peers.members.iter().map(|p| p.id).collect();
            Some(crate::peer::own_id(peer_id, &members).map_err(ServeError::PeerId)?)
        }
        None => {
            if let Some(id) = peer_id {
                tracing::warn!(
                    peer_id = id,
                    "--peer-id is ignored: the config lists no peers (relay {{ peers }})"
                );
            }
            None
        }
    };
    let peer_listen =
        own_peer_id.and_then(|id| loaded.peers.as_ref().and_then(|p| p.listen_address(id)));
    let audit = AuditSink::start(config::audit_path(&loaded), replica.clone())?;
    let listen = listen.map_or_else(|| loaded.config.relay.listen.clone(), |a| a.to_string());
    let metrics_addr = metrics
        .map(|a| a.to_string())
        .or_else(|| loaded.config.relay.metrics.clone());
    tracing::info!(
        %replica,
        config = %config_path.display(),
        checksum = %loaded.config.checksum,
        databases = loaded.config.databases.len(),
        "config loaded"
    );
    let shared = Arc::new(Shared::new(loaded, audit, Metrics::new()).with_peer_id(own_peer_id));
    let health = Arc::new(Health::default());
    limit_connections(&shared, threads)?;

    // The peer listener stays open while sessions drain: their cancels may still arrive
    // through another replica.
    let peers_shutdown = CancellationToken::new();
    // Install signal handlers before listening, so a SIGTERM right after "listening" drains
    // rather than killing the process with the default action.
    let mut hangup = install(SignalKind::hangup(), "SIGHUP")?;
    let mut terminate = install(SignalKind::terminate(), "SIGTERM")?;
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT")?;

    if let Some(addr) = &metrics_addr {
        let listener = bind(addr, "metrics").await?;
        tracing::info!(addr = %local(&listener), "metrics endpoint listening");
        tokio::spawn(crate::http::serve(
            listener,
            Arc::clone(&shared),
            Arc::clone(&health),
        ));
    }
    let listener = bind(&listen, "listen").await?;
    tracing::info!(
        addr = %local(&listener),
        %replica,
        startup_ms = started.elapsed().as_millis() as u64,
        "dbward-relay listening"
    );

    if let Some(addr) = &peer_listen {
        let listener = match (bind(addr, "peers").await, addr.strip_prefix("[::]:")) {
            (Ok(listener), _) => listener,
            // Every address on a host without IPv6: every IPv4 address.
            (Err(_), Some(port)) => bind(&format!("0.0.0.0:{port}"), "peers").await?,
            (Err(error), None) => return Err(error),
        };
        tracing::info!(
            addr = %local(&listener),
            peer_id = own_peer_id,
            "accepting cancels forwarded by the other replicas"
        );
        tokio::spawn(crate::listener::run_peers(
            listener,
            Arc::clone(&shared),
            peers_shutdown.clone(),
        ));
    }

    let workers = Workers::start(threads).map_err(ServeError::Threads)?;
    shared.metrics.watch_workers(workers.connections());
    let shutdown = CancellationToken::new();
    let mut relay = tokio::spawn(crate::listener::run_on(
        listener,
        Arc::clone(&shared),
        shutdown.clone(),
        workers,
    ));
    // The listening socket is bound, so connections queue from here on: the unit is started.
    let notifier = Notifier::from_env();
    notifier.ready(&format!(
        "serving config {}",
        shared.current().config.checksum
    ));

    // Serve, reloading on SIGHUP, until the first SIGTERM/SIGINT (or the relay fails).
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                notifier.reloading();
                // Reading files and building TLS configs blocks; keep it off the workers that
                // run sessions.
                let (reloaded, path) = (Arc::clone(&shared), config_path.clone());
                let installed = tokio::task::spawn_blocking(move || reload(&reloaded, &path))
                    .await
                    .unwrap_or(false);
                let checksum = shared.current().config.checksum.clone();
                notifier.ready(&if installed {
                    format!("serving config {checksum} (reloaded)")
                } else {
                    format!(
                        "reload refused, see the log; still serving config {checksum}"
                    )
                });
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            finished = &mut relay => {
                flush_audit(&shared).await;
                return match finished {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(ServeError::Run(error.to_string())),
                    Err(error) => Err(ServeError::Run(error.to_string())),
                };
            }
        }
    }

    // Drain: not ready, stop accepting, let sessions finish within the drain timeout.
    notifier.stopping("draining: waiting for sessions to end");
    health.start_draining();
    shutdown.cancel();
    let drain = Duration::from_millis(shared.current().config.relay.limits.drain_timeout_ms);
    tracing::info!(
        sessions = shared.metrics.sessions_active(),
        timeout_ms = drain.as_millis() as u64,
        "draining: the listener is closed; waiting for sessions to end"
    );
    let deadline = tokio::time::sleep(drain);
    tokio::pin!(deadline);
    tokio::select! {
        finished = &mut relay => {
            if let Ok(Err(error)) = finished {
                tracing::warn!(%error, "the relay reported an error while draining");
            }
            tracing::info!("drained: every session ended; exiting");
        }
        _ = &mut deadline => {
            tracing::warn!(
                sessions = shared.metrics.sessions_active(),
                "drain timeout passed; exiting with sessions still open"
            );
        }
        _ = terminate.recv() => second_signal(&shared).await,
        _ = interrupt.recv() => second_signal(&shared).await,
    }
    flush_audit(&shared).await;
    Ok(())
}

/// Raises the open-file limit and caps the connection limit at what it leaves room for, so that
/// sessions can never take the descriptors that the listener, `/metrics`, the audit log,
/// reloads and cancel forwarding need; logs the limit in force.
fn limit_connections(shared: &Shared, threads: usize) -> Result<(), ServeError> {
    let configured = shared.current().config.relay.limits.max_connections;
    if let Some(budget) = FdBudget::raise(threads) {
        if budget.sessions == 0 {
            return Err(ServeError::Descriptors {
                open_files: budget.open_files,
                needed: FdBudget::needed(1, threads),
            });
        }
        shared.cap_connections(budget.sessions);
        shared.metrics.set_open_files(budget.open_files);
        if budget.sessions < configured as usize {
            tracing::warn!(
                open_files = budget.open_files,
                max_connections = configured,
                connection_limit = budget.sessions,
                "the open-file limit leaves room for fewer connections than \
                 limits.max_connections (two descriptors each); raise the hard limit \
                 (LimitNOFILE= in the systemd unit) to at least {} to serve them all",
                FdBudget::needed(u64::from(configured), threads)
            );
        }
    }
    let limit = shared.connection_limit();
    shared.metrics.set_connection_limit(limit);
    tracing::info!(
        connection_limit = limit,
        max_connections = configured,
        "connection limit in force"
    );
    Ok(())
}

/// A second SIGTERM/SIGINT while draining: exit now.
async fn second_signal(shared: &Arc<Shared>) -> ! {
    tracing::warn!(
        sessions = shared.metrics.sessions_active(),
        "second termination signal: exiting at once"
    );
    flush_audit(shared).await;
    std::process::exit(1)
}

/// Waits (at most a few seconds) until queued audit events are written, without blocking the
/// runtime's worker threads.
async fn flush_audit(shared: &Arc<Shared>) {
    let shared = Arc::clone(shared);
    let _ = tokio::task::spawn_blocking(move || shared.audit.flush()).await;
}

fn install(
    kind: SignalKind,
    name: &'static str,
) -> Result<tokio::signal::unix::Signal, ServeError> {
    signal(kind).map_err(|source| ServeError::Signal {
        signal: name,
        source,
    })
}

async fn bind(addr: &str, what: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            what,
            addr: addr.to_owned(),
            source,
        })
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
}

//! The accept loop: a connection limit, where each connection is served, and a graceful stop.
//!
//! **Threads.** The `dbward-relay` binary serves sessions on [`Workers`]: session threads, each
//! running a single-threaded tokio runtime. The accept loop runs on the first of them and hands
//! every connection to the worker with the fewest (keeping it when that is its own). A session then lives on one thread from handshake to
//! end, so relaying a query never wakes another thread; a work-stealing runtime measured about
//! ten futex calls per session and 7–11 % more CPU per query (README, Benchmarks). [`run`]
//! serves on the caller's runtime instead, for tests and embedders.
//!
//! **Socket options** (TCP_NODELAY, keepalive) are set once on the listening socket: Linux
//! copies them into every accepted socket, which saves five system calls per connection.
//!
//! **Descriptors.** A session holds two (client and upstream). [`FdBudget`] raises the soft
//! open-file limit to the hard one at startup and caps the connection limit so that sessions can
//! never take the descriptors the listener, the metrics endpoint, the audit log, reloads and
//! cancel forwarding need. Connections over the limit are still negotiated (their CancelRequest
//! is served, a session reads "too many connections"), but only [`OVER_LIMIT_CONNECTIONS`] at a
//! time; beyond that they are closed at once, so a flood cannot exhaust the descriptors either.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::session::{self, Admission};
use crate::state::Shared;

/// Accepts connections until `shutdown` is cancelled and serves them on the caller's runtime;
/// then stops accepting (closing the listening socket) and returns once every connection has
/// ended. The caller bounds the drain by dropping this future (or exiting).
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    accept_loop(listener, shared, shutdown, None).await
}

/// Like [`run`], with sessions served on `workers`. The accept loop itself runs on the first
/// worker, which serves the connections it keeps without handing them anywhere (with one
/// thread, no connection ever changes threads). Returns once every session has ended; the
/// worker threads then finish on their own.
pub async fn run_on(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    workers: Workers,
) -> io::Result<()> {
    let listener = listener.into_std()?;
    let home = &workers.workers[HOME];
    let (runtime, tracker) = (home.runtime.clone(), home.tracker.clone());
    let accepting = runtime.spawn(tracker.track_future(async move {
        let listener = TcpListener::from_std(listener)?;
        accept_loop(listener, shared, shutdown, Some(workers)).await
    }));
    accepting.await.map_err(io::Error::other)?
}

/// The worker that runs the accept loop.
const HOME: usize = 0;

/// Forwarded cancels served at once on the peer listener; more are closed at once.
const PEER_CONNECTIONS: usize = 64;

/// Accepts cancels the other replicas forward (`relay { peers … }`) until `shutdown` is
/// cancelled. Each connection is one forward: mutual TLS with the fleet's peer certificate,
/// the forward checked ([`crate::peer::Peering::admit`]), then its key cancelled here like a
/// local CancelRequest. A refused one is audited (`cancel.forward_refused`) and counted.
pub async fn run_peers(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    session::tune_socket(&listener);
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (tcp, from) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "peer listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = Slot::take(&open, PEER_CONNECTIONS) else {
            tracing::debug!(%from, "peer listener: too many forwards at once; closed");
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let limits = &shared.current().config.relay.limits;
            let (handshake, cancel) = (
                Duration::from_millis(limits.handshake_timeout_ms),
                Duration::from_millis(limits.upstream_connect_timeout_ms),
            );
            let outcome =
                tokio::time::timeout(handshake, serve_forward(tcp, &shared, cancel)).await;
            let refusal = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(refusal)) => Some(refusal),
                Err(_) => Some(crate::peer::Refusal::Malformed(
                    "nothing complete within the handshake timeout".into(),
                )),
            };
            if let Some(refusal) = refusal {
                let message = refusal.to_string();
                tracing::warn!(%from, reason = refusal.reason(), %message, "forwarded cancel refused");
                shared.metrics.peer_forward(refusal.reason());
                shared
                    .audit
                    .forward_refused(from, refusal.reason(), &message);
            }
            drop(slot);
        });
    }
}

/// One forward: the TLS handshake, the checks, then the cancel.
async fn serve_forward(
    tcp: TcpStream,
    shared: &Shared,
    cancel_timeout: Duration,
) -> Result<(), crate::peer::Refusal> {
    use crate::peer::Refusal;
    let loaded = shared.current();
    let Some(peers) = loaded.peers.as_ref() else {
        return Err(Refusal::Malformed(
            "this relay's config lists no peers (any more)".into(),
        ));
    };
    let mut tls = peers
        .acceptor()
        .accept(tcp)
        .await
        .map_err(|e| Refusal::Handshake(e.to_string()))?;
    let forward = crate::peer::receive(&mut tls).await?;
    shared.peering.admit(&forward, peers)?;
    crate::peer::acknowledge(&mut tls).await;
    shared.metrics.peer_forward("served");
    match shared.cancel.lookup(forward.key) {
        Some(target) => crate::cancel::send(target, cancel_timeout).await,
        None => tracing::debug!(
            peer = forward.origin,
            "forwarded cancel for a key no session has"
        ),
    }
    Ok(())
}

/// Connections over the limit negotiated at once (each holds its socket, and a CancelRequest
/// one more to the upstream, for at most the handshake timeout); further ones are closed at
/// once.
pub const OVER_LIMIT_CONNECTIONS: usize = 32;

/// Descriptors kept for everything but sessions: standard streams, the runtimes' epoll and wake
/// descriptors and the signal pipe, the two listening sockets, the audit log (two while it is
/// reopened), `/metrics` scrapes, config and certificate files read on reload, DNS lookups and
/// cloud credential requests. Counted generously: descriptors left over are harmless, missing
/// ones break the relay for everyone.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The open-file limit and the connections it leaves room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` in force.
    pub open_files: u64,
    /// Sessions that fit: two descriptors each, after the reserve, the session threads' own
    /// (two each) and two for each connection over the limit.
    pub sessions: usize,
}

impl FdBudget {
    /// Raises the soft open-file limit to the hard limit (a process may always do that), and
    /// derives the budget from the result. Falls back to the limit as it was when it cannot be
    /// raised, and to no cap when it cannot even be read.
    pub fn raise(threads: usize) -> Option<FdBudget> {
        let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(error) => {
                tracing::warn!(%error, "cannot raise the open-file limit");
                rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?.0
            }
        };
        Some(FdBudget::for_limit(open_files, threads))
    }

    /// The budget under an open-file limit of `open_files` with `threads` session threads.
    pub fn for_limit(open_files: u64, threads: usize) -> FdBudget {
        let reserved =
            RESERVED_DESCRIPTORS + 2 * threads as u64 + 2 * OVER_LIMIT_CONNECTIONS as u64;
        let sessions = open_files.saturating_sub(reserved) / 2;
        FdBudget {
            open_files,
            sessions: usize::try_from(sessions).unwrap_or(usize::MAX),
        }
    }

    /// The smallest open-file limit that leaves room for `sessions`.
    pub fn needed(sessions: u64, threads: usize) -> u64 {
        RESERVED_DESCRIPTORS + 2 * threads as u64 + 2 * OVER_LIMIT_CONNECTIONS as u64 + 2 * sessions
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    workers: Option<Workers>,
) -> io::Result<()> {
    session::tune_socket(&listener);
    // Provisioned users left active by a relay that was killed mid-session: retired now and
    // then periodically, by whichever replica gets there first (the database serializes them).
    tokio::spawn(crate::provision::sweep_loop(
        shared.clone(),
        crate::provision::SWEEP_INTERVAL,
        shutdown.clone(),
    ));
    let tracker = TaskTracker::new();
    let open = Arc::new(AtomicUsize::new(0));
    let over_limit = Arc::new(AtomicUsize::new(0));
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually EMFILE/ENFILE: back off instead of spinning, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let max = shared.connection_limit();
        let (admission, slot) = match Slot::take(&open, max) {
            Some(slot) => (Admission::Admitted, slot),
            // Still negotiated, so that the client reads why it was refused and a CancelRequest
            // is served, while few enough are that descriptors remain for everything else.
            None => match Slot::take(&over_limit, OVER_LIMIT_CONNECTIONS) {
                Some(slot) => (Admission::OverLimit(max), slot),
                None => {
                    shared.metrics.connection_refused();
                    tracing::debug!(%peer, "over the connection limit; closed at once");
                    continue;
                }
            },
        };
        let connection = Connection {
            peer,
            admission,
            shared: Arc::clone(&shared),
            slot,
        };
        match &workers {
            None => {
                tracker.spawn(connection.serve(tcp));
            }
            Some(workers) => workers.dispatch(tcp, connection, tracker.token()),
        }
    }
    drop(listener);
    tracker.close();
    // Closing the queues ends each worker's loop once its sessions are done.
    drop(workers);
    tracker.wait().await;
    Ok(())
}

/// An accepted connection on its way to the thread that serves it.
struct Connection {
    peer: std::net::SocketAddr,
    admission: Admission,
    shared: Arc<Shared>,
    /// Counts the connection under the limit, or among those negotiated over it.
    slot: Slot,
}

impl Connection {
    async fn serve(self, tcp: TcpStream) {
        session::handle(tcp, self.peer, self.shared, self.admission).await;
        drop(self.slot);
    }
}

/// A connection moved to a worker. The socket has left the accepting runtime's reactor; the
/// worker registers it with its own.
struct Job {
    tcp: std::net::TcpStream,
    connection: Connection,
    /// Keeps the accept loop's drain waiting until this session ends.
    drain: TaskTrackerToken,
    /// Counts this session on its worker.
    load: Load,
}

/// The session threads of the `dbward-relay` binary.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    connections: Arc<AtomicUsize>,
    runtime: tokio::runtime::Handle,
    /// What the worker waits for before its thread ends: its sessions (and, on the first
    /// worker, the accept loop).
    tracker: TaskTracker,
}

impl Workers {
    /// Starts `threads` worker threads (at least one), each with a single-threaded runtime.
    pub fn start(threads: usize) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(threads.max(1));
        for index in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
            let tracker = TaskTracker::new();
            let handle = runtime.handle().clone();
            let local = tracker.clone();
            thread::Builder::new()
                .name(format!("dbward-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some(Job {
                            tcp,
                            connection,
                            drain,
                            load,
                        }) = queue.recv().await
                        {
                            let tcp = match TcpStream::from_std(tcp) {
                                Ok(tcp) => tcp,
                                Err(error) => {
                                    tracing::warn!(%error, "cannot hand a connection to a worker");
                                    continue;
                                }
                            };
                            local.spawn(async move {
                                connection.serve(tcp).await;
                                drop((drain, load));
                            });
                        }
                        local.close();
                        local.wait().await;
                    });
                })?;
            workers.push(Worker {
                jobs,
                connections: Arc::new(AtomicUsize::new(0)),
                runtime: handle,
                tracker,
            });
        }
        Ok(workers.into())
    }

    /// The connections open on each worker, for `dbward_worker_connections`.
    pub fn connections(&self) -> Vec<Arc<AtomicUsize>> {
        self.workers
            .iter()
            .map(|worker| Arc::clone(&worker.connections))
            .collect()
    }

    /// Serves a connection on the worker with the fewest (the first on a tie). Runs on the
    /// first worker, inside the accept loop: a connection it keeps is served right here.
    fn dispatch(&self, tcp: TcpStream, connection: Connection, drain: TaskTrackerToken) {
        let Some((index, worker)) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, worker)| worker.connections.load(Ordering::Relaxed))
        else {
            return;
        };
        worker.connections.fetch_add(1, Ordering::Relaxed);
        let load = Load(Arc::clone(&worker.connections));
        if index == HOME {
            worker.tracker.spawn(async move {
                connection.serve(tcp).await;
                drop((drain, load));
            });
            return;
        }
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::warn!(%error, "cannot hand a connection to a worker");
                return;
            }
        };
        let job = Job {
            tcp,
            connection,
            drain,
            load,
        };
        if worker.jobs.send(job).is_err() {
            // The worker's thread is gone (it only ends after the queue closes): the job, and
            // with it the connection, is dropped and closed.
            tracing::error!("a worker thread has stopped; connection closed");
        }
    }
}

impl From<Vec<Worker>> for Workers {
    fn from(workers: Vec<Worker>) -> Workers {
        Workers { workers }
    }
}

/// One session counted on its worker; released on drop.
#[derive(Debug)]
struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open connection counted against the limit; released on drop.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(Arc::clone(open)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_budget_keeps_room_for_everything_but_sessions() {
        // 1,024 (a common default): 64 reserved, 2 for one session thread, 64 for connections
        // over the limit; the rest is 447 sessions of two.
        assert_eq!(FdBudget::for_limit(1024, 1).sessions, 447);
        assert_eq!(FdBudget::needed(447, 1), 1024);
        assert_eq!(FdBudget::for_limit(100, 1).sessions, 0);
        assert_eq!(FdBudget::for_limit(0, 4).sessions, 0);
        assert_eq!(
            FdBudget::for_limit(u64::MAX, 1024).sessions as u64,
            (u64::MAX - 64 - 2048 - 64) / 2
        );
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalive_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        session::tune_socket(&listener);
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = socket2::SockRef::from(&accepted);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 6);
    }
}

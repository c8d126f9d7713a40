//! The accept loop: one task per connection, a connection limit, and a graceful stop.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::session::{self, Admission};
use crate::state::Shared;

/// Accepts connections until `shutdown` is cancelled, then stops accepting (closing the
/// listening socket) and returns once every connection has ended. The caller bounds the drain
/// by dropping this future (or exiting) after its drain timeout.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    let open = Arc::new(AtomicUsize::new(0));
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
        let max = shared.current().config.relay.limits.max_connections as usize;
        let shared = Arc::clone(&shared);
        match Slot::take(&open, max) {
            Some(slot) => {
                tracker.spawn(async move {
                    session::handle(tcp, peer, shared, Admission::Admitted).await;
                    drop(slot);
                });
            }
            None => {
                tracker.spawn(session::handle(
                    tcp,
                    peer,
                    shared,
                    Admission::OverLimit(max),
                ));
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// One open connection counted against the limit; released on drop.
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

//! Cancel keys: the relay gives each client its own random (pid, secret) and maps it to the
//! upstream backend's key, so a CancelRequest sent to the relay reaches the right server while
//! the upstream's key never leaves the relay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::protocol::{BackendKey, ClientKey};
use crate::upstream::{self, Target};

/// Where a cancel for one relay-issued key goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub upstream: Arc<Target>,
    /// The key the upstream backend gave us.
    pub backend: BackendKey,
}

/// Relay-issued keys of live sessions.
#[derive(Debug)]
pub struct CancelMap {
    keys: Mutex<HashMap<ClientKey, CancelTarget>>,
    random: SystemRandom,
    /// This replica's peer id, encoded in every key it issues ([`crate::peer::encode`]).
    peer_id: Option<u16>,
}

impl Default for CancelMap {
    fn default() -> Self {
        CancelMap::with_peer_id(None)
    }
}

/// Removes its key from the map when the session ends (dropped), however it ends.
#[derive(Debug)]
pub struct Registration<'a> {
    map: &'a CancelMap,
    pub key: ClientKey,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.map.lock().remove(&self.key);
    }
}

impl CancelMap {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, CancelTarget>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A map whose keys carry `peer_id` (`None`: the relay has no peers).
    pub fn with_peer_id(peer_id: Option<u16>) -> CancelMap {
        CancelMap {
            keys: Mutex::new(HashMap::new()),
            random: SystemRandom::new(),
            peer_id,
        }
    }

    /// Issues a fresh random key for a session and remembers where it cancels.
    pub fn register(&self, target: CancelTarget) -> Result<Registration<'_>, CancelError> {
        let mut keys = self.lock();
        loop {
            let mut bytes = [0u8; 8];
            self.random
                .fill(&mut bytes)
                .map_err(|_| CancelError::Random)?;
            let key = crate::peer::encode(self.peer_id, bytes);
            // A pid of 0 looks like "no backend" to some clients; collisions are retried.
            if key.pid != 0 && !keys.contains_key(&key) {
                keys.insert(key, target);
                return Ok(Registration { map: self, key });
            }
        }
    }

    /// Where a client key cancels, if it belongs to a live session.
    pub fn lookup(&self, key: ClientKey) -> Option<CancelTarget> {
        self.lock().get(&key).cloned()
    }

    /// Number of live keys (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Handles a CancelRequest for a key of this replica: forwards it upstream when the key is
    /// known, and silently does nothing otherwise (as PostgreSQL does, so keys cannot be
    /// probed).
    pub async fn cancel(&self, key: ClientKey, timeout: Duration) {
        let Some(target) = self.lookup(key) else {
            tracing::debug!("cancel request with an unknown key ignored");
            return;
        };
        send(target, timeout).await;
    }
}

/// Sends the upstream's CancelRequest for `target`, within `timeout`.
pub async fn send(target: CancelTarget, timeout: Duration) {
    match tokio::time::timeout(
        timeout,
        upstream::send_cancel(&target.upstream, target.backend),
    )
    .await
    {
        Ok(Ok(())) => tracing::debug!(upstream = %target.upstream.address, "cancel forwarded"),
        Ok(Err(error)) => {
            tracing::warn!(upstream = %target.upstream.address, %error, "cancel not forwarded")
        }
        Err(_) => tracing::warn!(upstream = %target.upstream.address, "cancel timed out"),
    }
}

/// Why a key could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("the system random number generator failed")]
    Random,
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbward_frozen::UpstreamAuth;
    use rustls::pki_types::ServerName;

    fn target() -> CancelTarget {
        CancelTarget {
            upstream: Arc::new(Target {
                address: "127.0.0.1:1".into(),
                server_name: ServerName::try_from("localhost").unwrap(),
                tls: Arc::new(crate::tls::public_roots_upstream().unwrap()),
                auth: UpstreamAuth::Mtls,
                rds: None,
                cloudsql: None,
                azure: None,
            }),
            backend: BackendKey { pid: 42, secret: 7 },
        }
    }

    #[test]
    fn keys_are_random_unique_and_forgotten_with_their_session() {
        let map = CancelMap::default();
        let first = map.register(target()).unwrap();
        let second = map.register(target()).unwrap();
        assert_ne!(first.key, second.key);
        assert_ne!(
            first.key.pid, 42,
            "the upstream's pid is never the client's"
        );
        assert_eq!(
            map.lookup(first.key).unwrap().backend,
            BackendKey { pid: 42, secret: 7 }
        );
        let key = first.key;
        drop(first);
        assert!(map.lookup(key).is_none());
        assert_eq!(map.len(), 1);
        drop(second);
        assert!(map.is_empty());
    }

    #[tokio::test]
    async fn an_unknown_key_is_dropped_silently() {
        let map = CancelMap::default();
        // Nothing to dial, nothing to wait for: returns at once.
        tokio::time::timeout(
            Duration::from_secs(1),
            map.cancel(ClientKey { pid: 1, secret: 2 }, Duration::from_secs(5)),
        )
        .await
        .expect("unknown keys are ignored at once");
    }
}

//! Tokens per key (a database user, a target account), fetched once, shared by every session,
//! refreshed ahead of expiry in the background.
//!
//! A session calls [`TokenCache::get`]. In steady state that is a map lookup under a short
//! lock: the token is there and has [`Policy::min_remaining`] left, because a background task
//! per key fetched its successor [`Policy::refresh_before`] its expiry. Only a cold key (or one
//! whose refreshes kept failing until the token ran out) makes callers wait, and all callers of
//! one key wait for the same single fetch. The fetch runs on the cache's runtime, not in the
//! caller, so a client that hangs up does not cancel the fetch the others wait for.
//!
//! A token the database refused is [`invalidated`](TokenCache::invalidate): dropped, and its
//! fingerprint remembered, so it is never handed out again even if the token service returns
//! it once more. Keys nobody used during a token's lifetime stop being refreshed.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::secret::Secret;

/// A bearer token and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub secret: Secret,
    pub expires_at: SystemTime,
}

impl Token {
    /// Whether the token has more than `margin` left at `now`.
    pub fn valid_for(&self, margin: Duration, now: SystemTime) -> bool {
        now.checked_add(margin).is_some_and(|t| t < self.expires_at)
    }
}

/// When tokens are refreshed and handed out.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long before its expiry a token's successor is fetched in the background.
    pub refresh_before: Duration,
    /// A token with less than this left is never handed out (a session must be able to log in
    /// with it); callers then wait for a fresh one.
    pub min_remaining: Duration,
    /// How long after a failed background refresh it is tried again.
    pub retry_after: Duration,
}

impl Default for Policy {
    /// For one-hour tokens: refreshed with 10 minutes left, retried every 15 s, never handed
    /// out with less than a minute left.
    fn default() -> Policy {
        Policy {
            refresh_before: Duration::from_secs(10 * 60),
            min_remaining: Duration::from_secs(60),
            retry_after: Duration::from_secs(15),
        }
    }
}

/// Failures of the cache itself, which every token error type must be able to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CacheFault {
    #[error("fetching a token was interrupted (the relay is shutting down); try again")]
    Interrupted,
    #[error(
        "the token service returned a token the database already refused; the cache will not \
         use it again, try again in a minute"
    )]
    RefusedAgain,
}

/// The future a fetch returns.
pub type FetchFuture<E> = Pin<Box<dyn Future<Output = Result<Token, E>> + Send>>;

type Fetch<K, E> = dyn Fn(K) -> FetchFuture<E> + Send + Sync;
type Outcome<E> = Option<Result<Token, E>>;

/// A shared, self-refreshing token cache; cheap to clone.
pub struct TokenCache<K, E> {
    inner: Arc<Inner<K, E>>,
}

impl<K, E> Clone for TokenCache<K, E> {
    fn clone(&self) -> Self {
        TokenCache {
            inner: self.inner.clone(),
        }
    }
}

impl<K, E> fmt::Debug for TokenCache<K, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("policy", &self.inner.policy)
            .field("fetches", &self.inner.fetches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Inner<K, E> {
    fetch: Box<Fetch<K, E>>,
    policy: Policy,
    /// Where fetches and refreshers run: a runtime that lives as long as the cache.
    runtime: Handle,
    slots: Mutex<HashMap<K, Slot<E>>>,
    fetches: AtomicU64,
}

struct Slot<E> {
    current: Option<Token>,
    /// When the background refresh of `current` is due.
    refresh_at: SystemTime,
    /// Whether a session took `current` since the last refresh began; idle keys stop
    /// refreshing.
    used: bool,
    /// The fetch under way, which every caller of this key waits for.
    inflight: Option<watch::Receiver<Outcome<E>>>,
    refresher: Option<AbortHandle>,
    /// Fingerprints of tokens the database refused (the last few).
    refused: VecDeque<[u8; 32]>,
}

impl<E> Default for Slot<E> {
    fn default() -> Self {
        Slot {
            current: None,
            refresh_at: SystemTime::UNIX_EPOCH,
            used: false,
            inflight: None,
            refresher: None,
            refused: VecDeque::new(),
        }
    }
}

/// How many refused fingerprints a key remembers.
const REFUSED_KEPT: usize = 8;

impl<K, E> TokenCache<K, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    E: Clone + fmt::Display + From<CacheFault> + Send + Sync + 'static,
{
    /// A cache whose fetches and refreshers run on `runtime`.
    pub fn new(
        runtime: Handle,
        policy: Policy,
        fetch: impl Fn(K) -> FetchFuture<E> + Send + Sync + 'static,
    ) -> TokenCache<K, E> {
        TokenCache {
            inner: Arc::new(Inner {
                fetch: Box::new(fetch),
                policy,
                runtime,
                slots: Mutex::new(HashMap::new()),
                fetches: AtomicU64::new(0),
            }),
        }
    }

    /// A token for `key` with at least [`Policy::min_remaining`] left.
    pub async fn get(&self, key: &K) -> Result<Token, E> {
        let receiver = {
            let mut slots = self.inner.lock();
            let slot = slots.entry(key.clone()).or_default();
            if let Some(token) = &slot.current
                && token.valid_for(self.inner.policy.min_remaining, SystemTime::now())
            {
                slot.used = true;
                return Ok(token.clone());
            }
            self.inner.start_fetch(key, slot)
        };
        wait(receiver).await
    }

    /// The database refused `token` for `key`: never hand it out again.
    pub fn invalidate(&self, key: &K, token: &Secret) {
        let mut slots = self.inner.lock();
        let slot = slots.entry(key.clone()).or_default();
        if slot.current.as_ref().is_some_and(|t| &t.secret == token) {
            slot.current = None;
        }
        if slot.refused.len() == REFUSED_KEPT {
            slot.refused.pop_front();
        }
        slot.refused.push_back(token.fingerprint());
    }

    /// How many fetches were started (for metrics and tests).
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }
}

impl<K, E> Inner<K, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    E: Clone + fmt::Display + From<CacheFault> + Send + Sync + 'static,
{
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Slot<E>>> {
        // A panic while holding the lock leaves plain data behind, still consistent.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the fetch under way for `key`, or starts one.
    fn start_fetch(self: &Arc<Self>, key: &K, slot: &mut Slot<E>) -> watch::Receiver<Outcome<E>> {
        // A fetch whose task died (its sender is gone) is not joined.
        if let Some(receiver) = &slot.inflight
            && receiver.has_changed().is_ok()
        {
            return receiver.clone();
        }
        let (sender, receiver) = watch::channel(None);
        slot.inflight = Some(receiver.clone());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let inner = self.clone();
        let key = key.clone();
        self.runtime.spawn(async move {
            let outcome = (inner.fetch)(key.clone()).await;
            let outcome = inner.store(&key, outcome);
            let _ = sender.send(Some(outcome));
        });
        receiver
    }

    /// Records a fetch's outcome for `key` and starts the key's refresher if it has none.
    fn store(self: &Arc<Self>, key: &K, outcome: Result<Token, E>) -> Result<Token, E> {
        let mut slots = self.lock();
        let slot = slots.entry(key.clone()).or_default();
        slot.inflight = None;
        let token = match outcome {
            Ok(token) if slot.refused.contains(&token.secret.fingerprint()) => {
                return Err(E::from(CacheFault::RefusedAgain));
            }
            Ok(token) => token,
            Err(error) => return Err(error),
        };
        // Refreshed `refresh_before` its expiry, but not later than halfway through the
        // token's life (a metadata server may hand out a token with minutes left) and not
        // sooner than `retry_after` from now (no tight loop on short-lived tokens).
        let now = SystemTime::now();
        let remaining = token.expires_at.duration_since(now).unwrap_or_default();
        let ahead = self.policy.refresh_before.min(remaining / 2);
        slot.refresh_at = (token.expires_at - ahead).max(now + self.policy.retry_after);
        slot.current = Some(token.clone());
        slot.used = true;
        if slot.refresher.as_ref().is_none_or(AbortHandle::is_finished) {
            let refresh = Inner::refresh(Arc::downgrade(self), key.clone());
            slot.refresher = Some(self.runtime.spawn(refresh).abort_handle());
        }
        Ok(token)
    }

    /// Keeps `key`'s token fresh while sessions use it. Holds the cache only weakly, so
    /// dropping the last [`TokenCache`] (a reloaded config) ends it.
    async fn refresh(weak: Weak<Self>, key: K) {
        loop {
            let Some(this) = weak.upgrade() else { return };
            let policy = this.policy;
            let (expires_at, due) = {
                let slots = this.lock();
                match slots
                    .get(&key)
                    .and_then(|s| Some((s.current.as_ref()?, s.refresh_at)))
                {
                    // An expired token is left to the next caller, who fetches in the open.
                    Some((token, due))
                        if token.valid_for(policy.min_remaining, SystemTime::now()) =>
                    {
                        (token.expires_at, due)
                    }
                    _ => return,
                }
            };
            drop(this);
            if let Ok(wait) = due.duration_since(SystemTime::now()) {
                tokio::time::sleep(wait).await;
            }
            let Some(this) = weak.upgrade() else { return };
            let receiver = {
                let mut slots = this.lock();
                let Some(slot) = slots.get_mut(&key) else {
                    return;
                };
                match &slot.current {
                    // Replaced meanwhile (invalidated and fetched again): start over.
                    Some(token) if token.expires_at != expires_at => continue,
                    None => return,
                    Some(_) => {}
                }
                if !slot.used {
                    tracing::debug!(
                        "token cache: key idle for a whole token lifetime; refresh stops"
                    );
                    return;
                }
                slot.used = false;
                this.start_fetch(&key, slot)
            };
            drop(this);
            if let Err(error) = wait(receiver).await {
                tracing::warn!(%error, "token cache: background refresh failed; retrying");
                // Keep refreshing: a failure says nothing about whether the key is used.
                if let Some(this) = weak.upgrade()
                    && let Some(slot) = this.lock().get_mut(&key)
                {
                    slot.used = true;
                }
                tokio::time::sleep(policy.retry_after).await;
            }
        }
    }
}

impl<K, E> Drop for Inner<K, E> {
    fn drop(&mut self) {
        let slots = self.slots.get_mut().unwrap_or_else(|p| p.into_inner());
        for slot in slots.values() {
            if let Some(refresher) = &slot.refresher {
                refresher.abort();
            }
        }
    }
}

async fn wait<E: Clone + From<CacheFault>>(
    mut receiver: watch::Receiver<Outcome<E>>,
) -> Result<Token, E> {
    match receiver.wait_for(Option::is_some).await {
        Ok(outcome) => outcome
            .clone()
            .unwrap_or(Err(E::from(CacheFault::Interrupted))),
        Err(_) => Err(E::from(CacheFault::Interrupted)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[derive(Debug, Clone, thiserror::Error)]
    #[error("{0}")]
    struct TestError(String);

    impl From<CacheFault> for TestError {
        fn from(fault: CacheFault) -> Self {
            TestError(fault.to_string())
        }
    }

    /// A cache whose fetch of `key` takes 50 ms and issues `key-N` valid for `lifetime`.
    fn counting(
        lifetime: Duration,
        policy: Policy,
    ) -> (TokenCache<String, TestError>, Arc<AtomicU32>) {
        let count = Arc::new(AtomicU32::new(0));
        let counter = count.clone();
        let cache = TokenCache::new(Handle::current(), policy, move |key: String| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if key == "broken" {
                    return Err(TestError("no such account".into()));
                }
                Ok(Token {
                    secret: Secret::new(format!("{key}-{n}")),
                    expires_at: SystemTime::now() + lifetime,
                })
            }) as FetchFuture<TestError>
        });
        (cache, count)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_make_one_fetch_and_errors_reach_every_waiter() {
        let (cache, count) = counting(Duration::from_secs(3600), Policy::default());
        let mut tasks = Vec::new();
        for i in 0..300 {
            let cache = cache.clone();
            let key = ["a", "b", "broken"][i % 3].to_owned();
            tasks.push(tokio::spawn(
                async move { (key.clone(), cache.get(&key).await) },
            ));
        }
        for task in tasks {
            let (key, result) = task.await.unwrap();
            match result {
                Ok(token) => assert!(token.secret.expose().starts_with(&key)),
                Err(e) => assert_eq!((key.as_str(), e.0.as_str()), ("broken", "no such account")),
            }
        }
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn dropping_the_cache_stops_its_refreshers() {
        let policy = Policy {
            refresh_before: Duration::from_millis(300),
            min_remaining: Duration::from_millis(50),
            retry_after: Duration::from_millis(50),
        };
        let (cache, count) = counting(Duration::from_millis(400), policy);
        cache.get(&"a".to_owned()).await.unwrap();
        drop(cache);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "a dropped cache kept fetching"
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_never_handed_out_again() {
        let (cache, _) = counting(Duration::from_secs(3600), Policy::default());
        let key = "a".to_owned();
        let first = cache.get(&key).await.unwrap();
        assert_eq!(cache.get(&key).await.unwrap(), first);
        cache.invalidate(&key, &first.secret);
        let second = cache.get(&key).await.unwrap();
        assert_ne!(second, first);
    }
}

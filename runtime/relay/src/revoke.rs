//! Revocation that takes effect on sessions already open.
//!
//! Every relayed session is listed in [`LiveSessions`] with what its access decision was made
//! of (person, database, database user, database name, its certificate's `notBefore`) and a
//! [`Stop`]. On each config reload, [`after_reload`] checks every listed session against the new
//! config; those it no longer allows are stopped after the manifest's `revoke-grace`, unless a
//! reload in between allowed them again. The session's relay loop then ends it with a FATAL
//! that says why, a Terminate upstream, and `session.end` with the reason.
//!
//! **Cost.** Nothing per message: the relay loop reads one atomic when it wakes, and registers
//! its waker with the [`Stop`] only when the task's waker changed (once per session). The list
//! is touched once when a session starts relaying and once when it ends, and walked only on
//! reload. Certificate expiry needs no list at all: it is one more deadline on the timer the
//! idle limits already use (see `session::IdleWatch`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use dbward_frozen::{Config, Provision};

use crate::metrics::EndReason;
use crate::protocol::backend::{self, ADMIN_SHUTDOWN};
use crate::state::Shared;

/// Why a session must end, and the FATAL its client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub reason: EndReason,
    pub message: String,
    pub hint: String,
}

impl Revoked {
    /// The FATAL ErrorResponse for the client: 57P01 `admin_shutdown`, what PostgreSQL sends
    /// when an administrator ends a backend with `pg_terminate_backend` — the session was ended
    /// by an operator's decision, and clients and pools know to reconnect (where a refusal,
    /// 28000, awaits them if the access is really gone).
    pub fn fatal(&self) -> Vec<u8> {
        backend::fatal(ADMIN_SHUTDOWN, &self.message, Some(&self.hint))
    }
}

/// A signal from outside to one session's relay loop: set once, read on every wake-up.
#[derive(Debug, Default)]
pub struct Stop {
    /// 0 while the session may run; [`STOPPED`] once `revoked` is set.
    state: AtomicU8,
    revoked: Mutex<Option<Revoked>>,
    waker: Mutex<Option<Waker>>,
}

const STOPPED: u8 = 1;

impl Stop {
    /// Ends the session for `why` (the first reason given wins) and wakes its relay loop.
    pub fn trigger(&self, why: Revoked) {
        {
            let mut revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
            if revoked.is_some() {
                return;
            }
            *revoked = Some(why);
        }
        self.state.store(STOPPED, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether the session was stopped; otherwise makes sure the task is woken when it is.
    /// `registered` is the waker the caller registered last: the lock is taken only when the
    /// task's waker differs from it (the first poll), so a wake-up costs one atomic load.
    pub fn poll_stopped(&self, cx: &mut Context<'_>, registered: &mut Option<Waker>) -> bool {
        if self.state.load(Ordering::Acquire) == STOPPED {
            return true;
        }
        if registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return false;
        }
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        *registered = Some(cx.waker().clone());
        // A trigger between the load above and the registration found no waker to wake.
        self.state.load(Ordering::Acquire) == STOPPED
    }

    /// Why the session was stopped, once it was.
    pub fn revoked(&self) -> Option<Revoked> {
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What a running session's access decision was made of.
#[derive(Debug)]
pub struct LiveSession {
    pub identity: String,
    /// The database's manifest name.
    pub database: String,
    pub db_user: String,
    pub db_name: String,
    /// The session logs in as the person's own provisioned user.
    pub provisioned: bool,
    /// The client certificate's `notBefore`, seconds since the epoch.
    pub not_before: i64,
    pub stop: Stop,
}

impl LiveSession {
    /// Why `config` no longer allows this session, if it does not.
    pub fn revoked_by(&self, config: &Config) -> Option<Revoked> {
        let LiveSession {
            identity,
            database,
            db_user,
            db_name,
            ..
        } = self;
        let revoked = |what: String, hint: &str| Revoked {
            reason: EndReason::AccessRevoked,
            message: format!(
                "terminating connection: {identity}'s access to {database} as {db_user} was \
                 revoked by a configuration reload ({what})"
            ),
            hint: hint.to_owned(),
        };
        let ask = "ask for a role that allows it in the manifest, then reconnect";
        if !config.databases.contains_key(database) {
            return Some(revoked(
                format!("database \"{database}\" is no longer in the manifest"),
                ask,
            ));
        }
        let Some(access) = config.access_for(identity, database) else {
            return Some(revoked(
                format!("{identity} no longer has access to database \"{database}\""),
                ask,
            ));
        };
        let user_allowed = access.db_users.contains(db_user)
            || (self.provisioned && access.provision != Provision::Off && db_user == identity);
        if !user_allowed {
            return Some(revoked(
                format!("user \"{db_user}\" is no longer allowed"),
                ask,
            ));
        }
        if !access.db_names.contains(db_name) {
            return Some(revoked(
                format!("database name \"{db_name}\" is no longer allowed"),
                ask,
            ));
        }
        let cutoff = config
            .relay
            .revocation
            .locks_out(access.certificates_issued_after, self.not_before)?;
        Some(locked_out(identity, self.not_before, cutoff, true))
    }
}

/// The refusal (or, `running`, the end) for a certificate issued before its cutoff.
pub fn locked_out(identity: &str, not_before: i64, cutoff: i64, running: bool) -> Revoked {
    let issued = not_before.saturating_add(dbward_frozen::CERTIFICATE_BACKDATE_SECS as i64);
    let what = format!(
        "the client certificate of {identity} was issued at {} (notBefore {} plus {} s), before \
         the certificates-issued-after cutoff {}, so it is locked out",
        rfc3339(issued),
        rfc3339(not_before),
        dbward_frozen::CERTIFICATE_BACKDATE_SECS,
        rfc3339(cutoff)
    );
    Revoked {
        reason: EndReason::CertificateLockedOut,
        message: if running {
            format!("terminating connection: {what}")
        } else {
            what
        },
        hint: "get a new certificate with `dbward cert issue`".into(),
    }
}

/// The end of a session whose client certificate expired at `not_after`.
pub fn expired(not_after: i64) -> Revoked {
    Revoked {
        reason: EndReason::CertificateExpired,
        message: format!(
            "terminating connection: the client certificate expired at {}",
            rfc3339(not_after)
        ),
        hint: "get a new certificate with `dbward cert issue` and reconnect (the manifest's \
               `relay { disconnect-expired-cert #false }` lets sessions outlive their \
               certificate)"
            .into(),
    }
}

/// `2026-11-30T12:00:00Z`, or the number of seconds if it is out of range.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix} s after the epoch"))
}

/// How far in the future a cutoff may lie before the relay warns: clocks differ a little.
const CUTOFF_SKEW_SECS: i64 = 300;

/// Logs a warning for each `certificates-issued-after` cutoff later than now: until that time
/// every certificate of whom it applies to is refused, even one `dbward cert issue` just signed
/// (the compiler cannot check this: its checks do not read the clock).
pub fn warn_future_cutoffs(config: &Config) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let future = |cutoff: Option<i64>| cutoff.filter(|&c| c > now.saturating_add(CUTOFF_SKEW_SECS));
    if let Some(cutoff) = future(config.relay.revocation.certificates_issued_after) {
        tracing::warn!(
            cutoff = %rfc3339(cutoff),
            "relay certificates-issued-after is in the future: every client certificate is \
             refused until then, new ones too; set it to the time certificates were lost"
        );
    }
    let mut warned: Option<&str> = None;
    for access in &config.access {
        if warned == Some(access.identity.as_str()) {
            continue;
        }
        if let Some(cutoff) = future(access.certificates_issued_after) {
            warned = Some(&access.identity);
            tracing::warn!(
                person = %access.identity,
                cutoff = %rfc3339(cutoff),
                "certificates-issued-after is in the future: every certificate of this person \
                 is refused until then, new ones too; set it to the time the certificate was lost"
            );
        }
    }
}

/// The sessions relaying now, by session id.
#[derive(Debug, Default)]
pub struct LiveSessions {
    sessions: Mutex<HashMap<u64, Arc<LiveSession>>>,
}

/// Takes its session off the list when dropped, however the session ends.
#[derive(Debug)]
pub struct Listed<'a> {
    list: &'a LiveSessions,
    id: u64,
    pub session: Arc<LiveSession>,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.list.lock().remove(&self.id);
    }
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<LiveSession>>> {
        // Single inserts and removes cannot leave the map inconsistent.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists a session until the returned guard is dropped.
    pub fn list(&self, id: u64, session: LiveSession) -> Listed<'_> {
        let session = Arc::new(session);
        self.lock().insert(id, Arc::clone(&session));
        Listed {
            list: self,
            id,
            session,
        }
    }

    /// How many sessions are listed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Vec<Arc<LiveSession>> {
        self.lock().values().cloned().collect()
    }
}

/// Called after a reload installed a new config: finds the sessions it no longer allows and
/// ends them after the new config's grace, if the config then in force still does not allow
/// them. Returns how many sessions are due to end.
pub fn after_reload(shared: &Arc<Shared>) -> usize {
    let loaded = shared.current();
    let due: Vec<Arc<LiveSession>> = shared
        .live
        .snapshot()
        .into_iter()
        .filter(|session| session.revoked_by(&loaded.config).is_some())
        .collect();
    if due.is_empty() {
        return 0;
    }
    let count = due.len();
    let grace = Duration::from_millis(loaded.config.relay.revocation.grace_ms);
    tracing::info!(
        sessions = count,
        grace_ms = grace.as_millis() as u64,
        "the new config revokes sessions in flight; they end after the grace"
    );
    let end = {
        let shared = Arc::clone(shared);
        move || end_if_still_revoked(&shared, &due)
    };
    if grace.is_zero() {
        end();
    } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            tokio::time::sleep(grace).await;
            end();
        });
    } else {
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            end();
        });
    }
    count
}

/// Ends each of `sessions` that the config in force now still does not allow.
fn end_if_still_revoked(shared: &Shared, sessions: &[Arc<LiveSession>]) {
    let loaded = shared.current();
    for session in sessions {
        if let Some(revoked) = session.revoked_by(&loaded.config) {
            session.stop.trigger(revoked);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Wake;

    use super::*;

    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn revoked(message: &str) -> Revoked {
        Revoked {
            reason: EndReason::AccessRevoked,
            message: message.into(),
            hint: String::new(),
        }
    }

    #[test]
    fn a_stop_wakes_the_registered_task_once_and_keeps_the_first_reason() {
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let stop = Stop::default();
        let mut registered = None;
        assert!(!stop.poll_stopped(&mut cx, &mut registered));
        assert!(registered.is_some());
        assert!(!stop.poll_stopped(&mut cx, &mut registered));
        stop.trigger(revoked("first"));
        stop.trigger(revoked("second"));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(stop.poll_stopped(&mut cx, &mut registered));
        assert_eq!(stop.revoked().unwrap().message, "first");
    }

    #[test]
    fn times_are_rendered_in_utc() {
        assert_eq!(rfc3339(1_796_040_000), "2026-11-30T12:00:00Z");
    }
}

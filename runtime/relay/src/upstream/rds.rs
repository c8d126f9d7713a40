//! Amazon RDS / Aurora upstreams with IAM database authentication.
//!
//! The password is an RDS auth token ([`dbward_cloud::aws::rds::auth_token`]: a SigV4
//! presigned `connect` URL for `rds-db`, valid for 15 minutes), signed from ambient
//! credentials ([`dbward_cloud::aws::credentials`]) at AWS's time as the relay has learned it
//! ([`dbward_cloud::aws::clock_skew`]), and sent in a PasswordMessage when the server asks for
//! a cleartext password, over `verify-full` TLS (RDS does not take client certificates).
//!
//! Tokens are cached per database user, so a burst of sessions signs once:
//! - **a cached token is handed out only while it has [`MIN_VALIDITY`] left**, counted in AWS's
//!   time and ending no later than the credentials it was signed with;
//! - once less than [`REFRESH_AHEAD`] is left, the session still gets the cached token and a
//!   new one is signed in the background, so steady-state sessions never wait for signing or
//!   for the credential endpoints;
//! - **a token the database refused is dropped** ([`RdsAuth::rejected`]): the next session signs
//!   a new one. The refusal reaches the client with a hint naming what to check (the relay's
//!   clock, the IAM policy, `rds_iam`).
//!
//! A token is never logged, and no error carries it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dbward_cloud::aws::AwsCredentials;
pub use dbward_cloud::aws::rds::TOKEN_VALIDITY;
use dbward_cloud::aws::rds::auth_token;

use super::UpstreamError;
use crate::protocol::backend;
/// A cached token is handed out only while it has this much validity left, so a session never
/// starts with a token about to expire.
pub const MIN_VALIDITY: Duration = Duration::from_secs(5 * 60);
/// Once a cached token has less than this left, a new one is signed in the background.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(8 * 60);
/// A background refresh that failed (or is still running) is tried again after this long.
const REFRESH_RETRY: Duration = Duration::from_secs(30);

/// Signs RDS auth tokens for one database (host, port, region) and caches them per user.
#[derive(Debug)]
pub struct RdsAuth {
    /// Shared with background refreshes.
    inner: Arc<Signer>,
}

#[derive(Debug)]
struct Signer {
    /// `host:port`, as RDS expects it in the token.
    endpoint: String,
    region: String,
    credentials: Arc<AwsCredentials>,
    tokens: Mutex<HashMap<String, Cached>>,
}

/// A token in the cache.
#[derive(Debug)]
struct Cached {
    token: Token,
    /// When RDS stops accepting it, in AWS's time: 15 minutes after it was signed, or when the
    /// credentials it was signed with expire if that is sooner.
    valid_until: SystemTime,
    /// When a background refresh of it last started.
    refreshing: Option<Instant>,
}

/// A token; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// What was sent in answer to an authentication request.
#[derive(Debug)]
pub struct Answer {
    /// The PasswordMessage.
    pub message: Vec<u8>,
    /// The token in it, to drop it from the cache if the database refuses it.
    pub token: Token,
}

impl RdsAuth {
    pub fn new(endpoint: String, region: String, credentials: Arc<AwsCredentials>) -> RdsAuth {
        RdsAuth {
            inner: Arc::new(Signer {
                endpoint,
                region,
                credentials,
                tokens: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The same database with another credential source (and an empty token cache).
    pub fn with_credentials(&self, credentials: Arc<AwsCredentials>) -> RdsAuth {
        RdsAuth::new(
            self.inner.endpoint.clone(),
            self.inner.region.clone(),
            credentials,
        )
    }

    /// The reply to authentication request `code` for `user`: a PasswordMessage with the
    /// token when the server asks for a cleartext password; anything else is refused.
    pub(super) async fn respond(&self, code: u32, user: &str) -> Result<Answer, UpstreamError> {
        if code != 3 {
            return Err(UpstreamError::Auth(format!(
                "the RDS server at {} asked for authentication method {code} instead of a \
                 cleartext password; the database user {user:?} must be granted rds_iam \
                 (`GRANT rds_iam TO …`, which `dbward apply` generates)",
                self.inner.endpoint
            )));
        }
        let token = self.token(user).await?;
        Ok(Answer {
            message: password_message(&token.0),
            token,
        })
    }

    /// The database refused `token` for `user` with the ErrorResponse `frame` (SQLSTATE class
    /// 28): the token is dropped from the cache so that no session uses it again, the refusal
    /// is logged with what to check, and the frame for the client is returned with that as its
    /// hint.
    pub(super) fn rejected(&self, user: &str, token: &Token, frame: &[u8]) -> Vec<u8> {
        {
            let mut tokens = self.inner.lock();
            if tokens.get(user).is_some_and(|c| c.token == *token) {
                tokens.remove(user);
            }
        }
        let body = frame.get(5..).unwrap_or_default();
        let hint = self.hint(user);
        tracing::warn!(
            upstream = %self.inner.endpoint,
            user,
            code = backend::error_code(body).as_deref().unwrap_or("-"),
            message = %backend::error_message(body),
            "the database refused the RDS IAM token; the token is dropped and the next session \
             signs a new one. {hint}"
        );
        backend::with_hint(body, &hint)
    }

    /// What to check when the database refuses a token for `user`.
    fn hint(&self, user: &str) -> String {
        let credentials = &self.inner.credentials;
        let source = credentials
            .cached_source()
            .map(|s| format!(" (from {s})"))
            .unwrap_or_default();
        format!(
            "The database refused the RDS IAM token the relay signed for user \"{user}\". Check \
             (1) the relay's clock: {clock}; \
             (2) the IAM policy of the relay's credentials{source}: it must allow \
             `rds-db:connect` on arn:aws:rds-db:{region}:ACCOUNT:dbuser:RESOURCE_ID/{user} \
             (the policy `dbward apply` writes); \
             (3) the database user is in rds_iam: `GRANT rds_iam TO {quoted}` (in the \
             setup.sql `dbward apply` writes).",
            clock = credentials.clock().status(),
            region = self.inner.region,
            quoted = quote_identifier(user),
        )
    }

    async fn token(&self, user: &str) -> Result<Token, UpstreamError> {
        let now = self.inner.credentials.clock().now();
        let refresh = {
            let mut tokens = self.inner.lock();
            match tokens.get_mut(user) {
                Some(cached) if left(cached, now) >= MIN_VALIDITY => {
                    let refresh = left(cached, now) < REFRESH_AHEAD
                        && cached
                            .refreshing
                            .is_none_or(|started| started.elapsed() >= REFRESH_RETRY);
                    if refresh {
                        cached.refreshing = Some(Instant::now());
                    }
                    Some((cached.token.clone(), refresh))
                }
                _ => None,
            }
        };
        match refresh {
            Some((token, true)) => {
                let signer = Arc::clone(&self.inner);
                let user = user.to_owned();
                tokio::spawn(async move {
                    if let Err(error) = signer.sign(&user).await {
                        tracing::warn!(
                            upstream = %signer.endpoint,
                            user,
                            %error,
                            "refreshing the RDS token ahead of its expiry failed; sessions use \
                             the current one while it has 5 minutes left, then sign their own"
                        );
                    }
                });
                Ok(token)
            }
            Some((token, false)) => Ok(token),
            None => self.inner.sign(user).await,
        }
    }
}

impl Signer {
    /// Signs a new token for `user` at AWS's time and caches it.
    async fn sign(&self, user: &str) -> Result<Token, UpstreamError> {
        let credentials = self
            .credentials
            .get()
            .await
            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
        let now = self.credentials.clock().now();
        let token = auth_token(&self.endpoint, &self.region, user, &credentials, now)
            .map(Token)
            .map_err(UpstreamError::Auth)?;
        let mut valid_until = now + TOKEN_VALIDITY;
        if let Some(expiry) = credentials.expiry {
            valid_until = valid_until.min(expiry);
        }
        let mut tokens = self.lock();
        tokens.retain(|_, cached| left(cached, now) >= MIN_VALIDITY);
        tokens.insert(
            user.to_owned(),
            Cached {
                token: token.clone(),
                valid_until,
                refreshing: None,
            },
        );
        Ok(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        // A panic while holding this lock cannot leave the map inconsistent (one insert or
        // removal at a time).
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long `cached` stays valid after `now` (AWS's time).
fn left(cached: &Cached, now: SystemTime) -> Duration {
    cached
        .valid_until
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
}

/// `name` as a PostgreSQL identifier: in double quotes, inner quotes doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A PostgreSQL PasswordMessage carrying `password`.
fn password_message(password: &str) -> Vec<u8> {
    let len = 4 + password.len() + 1;
    let mut out = Vec::with_capacity(1 + len);
    out.push(b'p');
    // Tokens are about 1-2 KB, far from u32::MAX.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(password.as_bytes());
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbward_cloud::aws::{AwsEnv, Credentials};

    fn credentials(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_owned),
            expiry: None,
            source: "test",
        }
    }

    fn env_auth() -> RdsAuth {
        RdsAuth::new(
            "h:5432".into(),
            "us-east-1".into(),
            Arc::new(AwsCredentials::new(AwsEnv::from_vars([
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
            ]))),
        )
    }

    /// Puts `token` in the cache for `user` with `left` of validity.
    fn cache(auth: &RdsAuth, user: &str, token: &str, left: Duration) {
        auth.inner.lock().insert(
            user.to_owned(),
            Cached {
                token: Token(token.to_owned()),
                valid_until: auth.inner.credentials.clock().now() + left,
                refreshing: None,
            },
        );
    }

    #[tokio::test]
    async fn tokens_are_reused_per_user_and_other_methods_refused() {
        let auth = env_auth();
        let a = auth.respond(3, "app").await.unwrap();
        let b = auth.respond(3, "app").await.unwrap();
        assert_eq!(a.message, b.message);
        assert_eq!(a.message[0], b'p');
        assert_eq!(*a.message.last().unwrap(), 0);
        let c = auth.respond(3, "other").await.unwrap();
        assert_ne!(a.message, c.message);
        let error = auth.respond(10, "app").await.unwrap_err().to_string();
        assert!(error.contains("rds_iam"), "{error}");
    }

    #[tokio::test]
    async fn a_token_with_less_than_five_minutes_left_is_not_handed_out() {
        let auth = env_auth();
        cache(&auth, "app", "old", MIN_VALIDITY - Duration::from_secs(1));
        let got = auth.token("app").await.unwrap();
        assert_ne!(got, Token("old".into()));
        assert!(got.0.starts_with("h:5432/?Action=connect&DBUser=app&"));
        // The new one is cached.
        assert_eq!(auth.token("app").await.unwrap(), got);
    }

    #[tokio::test]
    async fn a_token_near_its_end_is_refreshed_in_the_background() {
        let auth = env_auth();
        cache(&auth, "app", "old", REFRESH_AHEAD - Duration::from_secs(1));
        // The session gets the cached token at once; a new one is signed beside it.
        assert_eq!(auth.token("app").await.unwrap(), Token("old".into()));
        let mut fresh = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = auth.inner.credentials.clock().now();
            if let Some(cached) = auth.inner.lock().get("app")
                && cached.token != Token("old".into())
            {
                assert!(left(cached, now) > TOKEN_VALIDITY - Duration::from_secs(5));
                fresh = Some(cached.token.clone());
            }
            if fresh.is_some() {
                break;
            }
        }
        let fresh = fresh.expect("no background refresh");
        assert_eq!(auth.token("app").await.unwrap(), fresh);
        // With plenty left, no refresh starts.
        cache(
            &auth,
            "app",
            "plenty",
            REFRESH_AHEAD + Duration::from_secs(60),
        );
        assert_eq!(auth.token("app").await.unwrap(), Token("plenty".into()));
        assert!(auth.inner.lock()["app"].refreshing.is_none());
    }

    #[tokio::test]
    async fn tokens_end_with_their_credentials() {
        let auth = env_auth();
        let mut credentials = credentials(Some("s"));
        credentials.expiry = Some(SystemTime::now() + Duration::from_secs(6 * 60));
        *auth.inner.credentials.cache_for_tests().await = Some(credentials);
        auth.token("app").await.unwrap();
        let left = left(&auth.inner.lock()["app"], SystemTime::now());
        assert!(left <= Duration::from_secs(6 * 60), "{left:?}");
    }

    #[tokio::test]
    async fn a_refused_token_is_dropped_and_the_hint_names_what_to_check() {
        let auth = env_auth();
        let first = auth.respond(3, "app").await.unwrap().token;
        let server = backend::fatal("28P01", "PAM authentication failed for user \"app\"", None);
        // Another token than the cached one: the cached one stays.
        auth.rejected("app", &Token("other".into()), &server);
        assert_eq!(auth.inner.lock()["app"].token, first);
        let frame = auth.rejected("app", &first, &server);
        assert!(!auth.inner.lock().contains_key("app"));
        let fields = backend::error_fields(&frame[5..]);
        let hint = &fields.iter().find(|(k, _)| *k == b'H').unwrap().1;
        for part in [
            "relay's clock",
            "no offset from AWS's clock was learned",
            "from environment variables",
            "rds-db:connect",
            "arn:aws:rds-db:us-east-1:ACCOUNT:dbuser:RESOURCE_ID/app",
            "GRANT rds_iam TO \"app\"",
        ] {
            assert!(hint.contains(part), "{part} missing from {hint}");
        }
        assert!(!hint.contains(&first.0), "{hint}");
    }
}

//! Amazon RDS / Aurora upstreams with IAM database authentication.
//!
//! The password is an RDS auth token: a SigV4 *presigned* `GET https://HOST:PORT/?Action=connect
//! &DBUser=USER` for the service `rds-db` in the database's region, valid for 15 minutes,
//! without its `https://` prefix. It is signed with the `aws-sigv4` crate from ambient
//! credentials ([`super::aws_credentials`]) and sent in a PasswordMessage when the server asks
//! for a cleartext password, over `verify-full` TLS (RDS does not take client certificates).
//!
//! A token is reused for ten minutes per database user, so a burst of sessions signs once; it
//! is never logged, and no error carries it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;

use super::UpstreamError;
use super::aws_credentials::{AwsCredentials, Credentials};

/// How long RDS accepts a token (its maximum).
pub const TOKEN_VALIDITY: Duration = Duration::from_secs(15 * 60);
/// How long a token is reused; well inside its validity so a session never starts with a
/// token about to expire.
const TOKEN_REUSE: Duration = Duration::from_secs(10 * 60);

/// Signs RDS auth tokens for one database (host, port, region) and caches them per user.
#[derive(Debug)]
pub struct RdsAuth {
    /// `host:port`, as RDS expects it in the token.
    endpoint: String,
    region: String,
    pub(crate) credentials: Arc<AwsCredentials>,
    tokens: Mutex<HashMap<String, (Token, Instant)>>,
}

/// A token; `Debug` does not show it.
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl RdsAuth {
    pub fn new(endpoint: String, region: String, credentials: Arc<AwsCredentials>) -> RdsAuth {
        RdsAuth {
            endpoint,
            region,
            credentials,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The same database with another credential source (and an empty token cache).
    pub fn with_credentials(&self, credentials: Arc<AwsCredentials>) -> RdsAuth {
        RdsAuth::new(self.endpoint.clone(), self.region.clone(), credentials)
    }

    /// The reply to authentication request `code` for `user`: a PasswordMessage with the
    /// token when the server asks for a cleartext password; anything else is refused.
    pub(super) async fn respond(&self, code: u32, user: &str) -> Result<Vec<u8>, UpstreamError> {
        if code != 3 {
            return Err(UpstreamError::Auth(format!(
                "the RDS server at {} asked for authentication method {code} instead of a \
                 cleartext password; the database user {user:?} must be granted rds_iam \
                 (`GRANT rds_iam TO …`, which `dbward apply` generates)",
                self.endpoint
            )));
        }
        let token = self.token(user).await?;
        Ok(password_message(&token.0))
    }

    async fn token(&self, user: &str) -> Result<Token, UpstreamError> {
        let now = Instant::now();
        if let Some((token, made)) = self.lock().get(user)
            && now.duration_since(*made) < TOKEN_REUSE
        {
            return Ok(token.clone());
        }
        let credentials = self
            .credentials
            .get()
            .await
            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
        let token = auth_token(
            &self.endpoint,
            &self.region,
            user,
            &credentials,
            SystemTime::now(),
        )
        .map(Token)
        .map_err(UpstreamError::Auth)?;
        // Credentials that expire before the reuse window ends must not outlive it through
        // the cache: only cache a token while they stay valid.
        let lasts = credentials
            .expiry
            .is_none_or(|e| e > SystemTime::now() + TOKEN_REUSE);
        let mut tokens = self.lock();
        tokens.retain(|_, (_, made)| now.duration_since(*made) < TOKEN_REUSE);
        if lasts {
            tokens.insert(user.to_owned(), (token.clone(), now));
        }
        Ok(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Token, Instant)>> {
        // A panic while holding this lock cannot leave the map inconsistent (one insert).
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The RDS auth token for `user` at `endpoint` (`host:port`) in `region`, signed at `time`.
pub fn auth_token(
    endpoint: &str,
    region: &str,
    user: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<String, String> {
    let url = format!(
        "https://{endpoint}/?Action=connect&DBUser={}",
        percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC)
    );
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        credentials.session_token.clone(),
        credentials.expiry,
        "dbward-relay",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(TOKEN_VALIDITY);
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| format!("cannot sign the RDS auth token: {e}"))?
        .into();
    let signable = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| format!("cannot sign the RDS auth token for {endpoint}: {e}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| format!("cannot sign the RDS auth token for {endpoint}: {e}"))?
        .into_parts();
    let mut request = http::Request::builder()
        .method("GET")
        .uri(&url)
        .body(())
        .map_err(|e| format!("invalid RDS endpoint {endpoint}: {e}"))?;
    instructions.apply_to_request_http1x(&mut request);
    let signed = request.uri().to_string();
    Ok(signed
        .strip_prefix("https://")
        .unwrap_or(&signed)
        .to_owned())
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
    use crate::upstream::aws_credentials::AwsEnv;

    fn credentials(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_owned),
            expiry: None,
            source: "test",
        }
    }

    #[test]
    fn the_token_is_a_presigned_connect_url() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = auth_token(
            "db.example.com:5432",
            "eu-west-1",
            "app user",
            &credentials(None),
            time,
        )
        .unwrap();
        assert!(
            token.starts_with("db.example.com:5432/?Action=connect&DBUser=app%20user&"),
            "{token}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Feu-west-1%2Frds-db%2Faws4_request",
            "X-Amz-Date=20231114T221320Z",
            "X-Amz-Expires=900",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Signature=",
        ] {
            assert!(token.contains(part), "{part} missing from {token}");
        }
        assert!(!token.contains("wJalrXUtnFEMI"));
        // Deterministic for a fixed time; any input change changes the signature.
        let again = auth_token(
            "db.example.com:5432",
            "eu-west-1",
            "app user",
            &credentials(None),
            time,
        )
        .unwrap();
        assert_eq!(token, again);
        let other = auth_token(
            "db.example.com:5432",
            "eu-west-2",
            "app user",
            &credentials(None),
            time,
        )
        .unwrap();
        assert_ne!(token, other);
    }

    #[test]
    fn a_session_token_is_signed_into_the_url() {
        let token = auth_token(
            "h:5432",
            "us-east-1",
            "u",
            &credentials(Some("sess/token")),
            SystemTime::now(),
        )
        .unwrap();
        assert!(
            token.contains("X-Amz-Security-Token=sess%2Ftoken"),
            "{token}"
        );
    }

    #[tokio::test]
    async fn tokens_are_reused_per_user_and_other_methods_refused() {
        let auth = RdsAuth::new(
            "h:5432".into(),
            "us-east-1".into(),
            Arc::new(AwsCredentials::new(AwsEnv::from_vars([
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
            ]))),
        );
        let a = auth.respond(3, "app").await.unwrap();
        let b = auth.respond(3, "app").await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0], b'p');
        assert_eq!(*a.last().unwrap(), 0);
        let c = auth.respond(3, "other").await.unwrap();
        assert_ne!(a, c);
        let error = auth.respond(10, "app").await.unwrap_err().to_string();
        assert!(error.contains("rds_iam"), "{error}");
    }
}

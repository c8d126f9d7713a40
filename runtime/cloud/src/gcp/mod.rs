//! Google Cloud: the relay's own identity from ambient credentials, impersonation of the
//! database's service accounts, and the Cloud SQL Admin API.
//!
//! - [`ambient`]: the relay's own access token (scope `cloud-platform`), found in Google's
//!   order: `GOOGLE_APPLICATION_CREDENTIALS` (a service account key, or an `external_account`
//!   file for workload identity federation), then the metadata server.
//! - [`Gcp::generate_access_token`]: IAM Credentials `generateAccessToken` for a target
//!   service account; [`Gcp::login_tokens`] caches them per database user with the
//!   `sqlservice.login` scope, the token a Cloud SQL IAM user sends as its password.
//! - [`sqladmin`]: `connectSettings` (addresses, server CA, DNS name) and
//!   `generateEphemeralCert`.
//! - [`verify`]: [`InstanceCertCheck`], the server certificate checked by the instance's name.
//!
//! Every endpoint can be moved, so tests (and air-gapped setups) use other servers:
//!
//! | variable | default | what |
//! | --- | --- | --- |
//! | `GCE_METADATA_HOST` | `169.254.169.254` | metadata server, `host[:port]`, plain HTTP |
//! | `DBWARD_GCP_OAUTH_TOKEN_URL` | the key's `token_uri` | OAuth token endpoint for key files |
//! | `DBWARD_GCP_STS_TOKEN_URL` | the file's `token_url` | STS endpoint for external accounts |
//! | `DBWARD_GCP_IAM_CREDENTIALS_ENDPOINT` | `https://iamcredentials.googleapis.com` | IAM Credentials |
//! | `DBWARD_GCP_SQLADMIN_ENDPOINT` | `https://sqladmin.googleapis.com` | Cloud SQL Admin |
//!
//! Credentials go only over `https://` (plain HTTP to loopback test servers and to the
//! metadata server excepted).

pub mod ambient;
#[cfg(feature = "fake")]
pub mod fake;
pub mod sqladmin;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::Method;
use tokio::runtime::Handle;

pub use crate::cache::Policy;
use crate::cache::{CacheFault, FetchFuture, Token, TokenCache};
use crate::http::{Call, Http};
use crate::secret::Secret;

pub use ambient::Ambient;
pub use sqladmin::{ClientKey, ConnectSettings, EphemeralCert, InstanceName, IpType};
pub use verify::InstanceCertCheck;

/// The scope of a Cloud SQL IAM login token.
pub const SQLSERVICE_LOGIN: &str = "https://www.googleapis.com/auth/sqlservice.login";
/// The scope of the relay's own token (IAM Credentials and Cloud SQL Admin accept it).
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The IAM role a caller needs on a service account to impersonate it.
pub const TOKEN_CREATOR_ROLE: &str = "roles/iam.serviceAccountTokenCreator";

const IAM_CREDENTIALS: &str = "https://iamcredentials.googleapis.com";
const SQL_ADMIN: &str = "https://sqladmin.googleapis.com";
const METADATA_HOST: &str = "169.254.169.254";
/// The lifetime asked of impersonated tokens (Google's maximum without an org policy).
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The variables the Google code reads: a snapshot, so tests and embedders can inject them
/// without touching the process environment.
#[derive(Clone, Default)]
pub struct GcpEnv(BTreeMap<String, String>, Option<Policy>);

impl fmt::Debug for GcpEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl GcpEnv {
    /// The variables of this process now.
    pub fn from_process() -> GcpEnv {
        GcpEnv::from_vars(std::env::vars().filter(|(k, _)| {
            k == "GOOGLE_APPLICATION_CREDENTIALS"
                || k == "GCE_METADATA_HOST"
                || k.starts_with("DBWARD_GCP_")
        }))
    }

    /// Exactly these variables.
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> GcpEnv {
        GcpEnv(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            None,
        )
    }

    /// The same variables, with login tokens (and the client certificates that ride with them)
    /// refreshed by `policy` instead of the default: for tests with short-lived tokens. No
    /// environment variable sets this.
    pub fn with_token_policy(mut self, policy: Policy) -> GcpEnv {
        self.1 = Some(policy);
        self
    }

    /// The refresh policy of login tokens.
    pub fn token_policy(&self) -> Policy {
        self.1.unwrap_or_default()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn endpoint(&self, name: &str, default: &str) -> String {
        self.get(name)
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_owned()
    }
}

/// Why a Google call failed. Messages start lower-case, say what to do, and carry no secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GcpError {
    #[error(
        "no Google credentials found for the relay; give it credentials in one of these ways: {}",
        .tried.join("; ")
    )]
    NoCredentials { tried: Vec<String> },
    #[error(
        "the Google credentials file {path} (GOOGLE_APPLICATION_CREDENTIALS) cannot be used: {reason}"
    )]
    CredentialsFile { path: String, reason: String },
    #[error("Google refused the relay's own credentials ({source_name}): {detail}")]
    SourceRefused { source_name: String, detail: String },
    #[error(
        "the relay's Google identity may not impersonate {account}: grant it \
         roles/iam.serviceAccountTokenCreator on that service account (IAM Credentials \
         answered 403: {detail})"
    )]
    ImpersonationDenied { account: String, detail: String },
    #[error(
        "the service account {account} does not exist (IAM Credentials answered 404); check the \
         db-user in the manifest: it is the account's email without .gserviceaccount.com"
    )]
    NoSuchServiceAccount { account: String },
    #[error(
        "Cloud SQL instance {instance} not found (Cloud SQL Admin answered 404); check `instance` \
         in the manifest, written \"project:region:instance\""
    )]
    InstanceNotFound { instance: String },
    #[error(
        "the relay's Google identity may not use Cloud SQL instance {instance}: grant it \
         roles/cloudsql.client in the instance's project, and check that the instance exists \
         (Cloud SQL Admin answered 403: {detail})"
    )]
    InstanceDenied { instance: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what} failed: {detail}")]
    Service { what: String, detail: String },
    #[error(transparent)]
    Cache(#[from] CacheFault),
}

/// The Google client of one loaded config: endpoints, HTTP, and the relay's own token (cached
/// and refreshed in the background). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Gcp {
    ambient: Arc<Ambient>,
    own: TokenCache<(), GcpError>,
    iam_credentials: String,
    sql_admin: String,
}

impl Gcp {
    /// A client reading `env`; background work runs on `runtime`.
    pub fn new(env: GcpEnv, runtime: Handle) -> Result<Gcp, GcpError> {
        let http = Http::new().map_err(|e| GcpError::Invalid(format!("cannot set up TLS: {e}")))?;
        Ok(Gcp::with(env, runtime, http, Policy::default()))
    }

    /// Same, with a given HTTP client (private roots) and refresh policy for the relay's own
    /// token.
    pub fn with(env: GcpEnv, runtime: Handle, http: Http, policy: Policy) -> Gcp {
        let iam_credentials = env.endpoint("DBWARD_GCP_IAM_CREDENTIALS_ENDPOINT", IAM_CREDENTIALS);
        let sql_admin = env.endpoint("DBWARD_GCP_SQLADMIN_ENDPOINT", SQL_ADMIN);
        let ambient = Arc::new(Ambient::new(env, http, iam_credentials.clone()));
        let fetcher = ambient.clone();
        let own = TokenCache::new(runtime, policy, move |()| {
            let ambient = fetcher.clone();
            Box::pin(async move { ambient.fetch().await }) as FetchFuture<GcpError>
        });
        Gcp {
            ambient,
            own,
            iam_credentials,
            sql_admin,
        }
    }

    /// The relay's own access token (`cloud-platform`), from the cache.
    pub async fn own_token(&self) -> Result<Token, GcpError> {
        self.own.get(&()).await
    }

    /// A fresh (uncached) token for `account` with `scopes`, by impersonation:
    /// `POST {iam}/v1/projects/-/serviceAccounts/{account}:generateAccessToken`.
    pub async fn generate_access_token(
        &self,
        account: &str,
        scopes: &[&str],
    ) -> Result<Token, GcpError> {
        if account.is_empty() || account.contains(['/', '?', '#', ':', ' ']) {
            return Err(GcpError::Invalid(format!(
                "{account:?} is not a service account email; write it as name@project.iam.gserviceaccount.com"
            )));
        }
        let own = self.own_token().await?;
        let url = format!(
            "{}/v1/projects/-/serviceAccounts/{account}:generateAccessToken",
            self.iam_credentials
        );
        let answer = impersonate(self.ambient.http(), &url, &own.secret, scopes).await;
        match answer {
            Err(Impersonation::Status(401, detail)) => {
                // Our own token was refused: drop it so the next call fetches another.
                self.own.invalidate(&(), &own.secret);
                Err(GcpError::SourceRefused {
                    source_name: "its access token".into(),
                    detail,
                })
            }
            Err(Impersonation::Status(403, detail)) => Err(GcpError::ImpersonationDenied {
                account: account.to_owned(),
                detail,
            }),
            Err(Impersonation::Status(404, _)) => Err(GcpError::NoSuchServiceAccount {
                account: account.to_owned(),
            }),
            Err(Impersonation::Status(status, detail)) => Err(GcpError::Service {
                what: format!("IAM Credentials generateAccessToken for {account}"),
                detail: format!("HTTP {status}: {detail}"),
            }),
            Err(Impersonation::Other(detail)) => Err(GcpError::Service {
                what: format!("IAM Credentials generateAccessToken for {account}"),
                detail,
            }),
            Ok(token) => Ok(token),
        }
    }

    /// Login tokens (scope `sqlservice.login`) per service account email, cached and refreshed
    /// in the background: what a Cloud SQL upstream sends as the password. Invalidate a token
    /// the database refused with [`TokenCache::invalidate`].
    pub fn login_tokens(&self, runtime: Handle, policy: Policy) -> TokenCache<String, GcpError> {
        let gcp = self.clone();
        TokenCache::new(runtime, policy, move |account: String| {
            let gcp = gcp.clone();
            Box::pin(async move {
                gcp.generate_access_token(&account, &[SQLSERVICE_LOGIN])
                    .await
            }) as FetchFuture<GcpError>
        })
    }

    pub(crate) fn sql_admin(&self) -> &str {
        &self.sql_admin
    }

    pub(crate) fn http(&self) -> &Http {
        self.ambient.http()
    }
}

/// The service account a Cloud SQL database user stands for: Cloud SQL names IAM users by the
/// email without `.gserviceaccount.com`.
pub fn service_account_email(db_user: &str) -> String {
    if db_user.ends_with(".gserviceaccount.com") {
        db_user.to_owned()
    } else {
        format!("{db_user}.gserviceaccount.com")
    }
}

enum Impersonation {
    Status(u16, String),
    Other(String),
}

/// One `generateAccessToken` exchange.
async fn impersonate(
    http: &Http,
    url: &str,
    bearer: &Secret,
    scopes: &[&str],
) -> Result<Token, Impersonation> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        access_token: String,
        expire_time: String,
    }
    let body = serde_json::json!({
        "scope": scopes,
        "lifetime": format!("{}s", TOKEN_LIFETIME.as_secs()),
    });
    let mut call = Call::new(Method::POST, url);
    call.bearer = Some(bearer);
    call.body = Some(("application/json", body.to_string().into_bytes()));
    let answer = http.send(call).await.map_err(Impersonation::Other)?;
    if answer.status != 200 {
        return Err(Impersonation::Status(
            answer.status,
            google_error(&answer.body),
        ));
    }
    let parsed: Answer = serde_json::from_slice(&answer.body).map_err(|e| {
        Impersonation::Other(format!(
            "the answer is not a generateAccessToken response: {e}"
        ))
    })?;
    let expires_at = parse_time(&parsed.expire_time).map_err(Impersonation::Other)?;
    Ok(Token {
        secret: Secret::new(parsed.access_token),
        expires_at,
    })
}

/// An RFC 3339 time (Google's `expireTime`).
fn parse_time(text: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("the time {text:?} is not RFC 3339: {e}"))
}

/// What a Google error body says: `{"error":{"message":…,"status":…}}` for APIs,
/// `{"error":…,"error_description":…}` for OAuth and STS. Never carries a secret (Google does
/// not echo credentials); cut to a readable length.
fn google_error(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Shape {
        Api {
            error: ApiError,
        },
        OAuth {
            error: String,
            error_description: Option<String>,
        },
    }
    #[derive(serde::Deserialize)]
    struct ApiError {
        message: Option<String>,
        status: Option<String>,
    }
    let text = match serde_json::from_slice::<Shape>(body) {
        Ok(Shape::Api { error }) => match (error.status, error.message) {
            (Some(status), Some(message)) => format!("{status}: {message}"),
            (status, message) => status.or(message).unwrap_or_default(),
        },
        Ok(Shape::OAuth {
            error,
            error_description: Some(d),
        }) => format!("{error}: {d}"),
        Ok(Shape::OAuth { error, .. }) => error,
        Err(_) => "(no error details)".to_owned(),
    };
    text.chars().take(300).collect()
}

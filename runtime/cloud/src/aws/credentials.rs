//! Ambient AWS credentials for RDS IAM authentication, found the way the AWS SDKs find them.
//!
//! The order is the SDK's: environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`); web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, exchanged
//! at STS `AssumeRoleWithWebIdentity`, endpoint `AWS_ENDPOINT_URL_STS` or the regional one); ECS
//! container credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI` or
//! `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, with `AWS_CONTAINER_AUTHORIZATION_TOKEN` or
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`); EC2 instance metadata with IMDSv2 (endpoint from
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`, off with `AWS_EC2_METADATA_DISABLED=true`). Shared
//! config/credentials files (`~/.aws`, profiles, SSO) are not read.
//!
//! The variables are read from an [`AwsEnv`] snapshot, not from the process environment at each
//! use, so tests (and embedders) can inject them without mutating the process environment, and
//! every endpoint can point at a local server. Credentials that expire are cached until five
//! minutes before their expiry. Secrets never appear in `Debug` output or in errors.
//!
//! Every answer's `Date` header teaches the chain's [`ClockSkew`] the relay's offset from AWS's
//! clock; expiry checks and RDS token signing use the corrected time.
//!
//! HTTP goes through [`crate::http`]: credentials travel over `https://`; plain `http://` only
//! to loopback, to the instance metadata service and to the ECS/EKS container endpoints
//! (`169.254.170.2`, `169.254.170.23`, `fd00:ec2::23`), as the AWS SDKs allow.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use hyper::Method;
use tokio::sync::Mutex;

use super::clock_skew::ClockSkew;
use crate::http::{Call, Http};
use crate::secret::Secret;

/// How long before their expiry cached credentials are refreshed.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
const ECS_HOST: &str = "http://169.254.170.2";
/// The hosts a plain-`http://` `AWS_CONTAINER_CREDENTIALS_FULL_URI` may name besides loopback
/// (ECS, EKS Pod Identity over IPv4 and IPv6), as in the AWS SDKs.
const CONTAINER_HOSTS: [&str; 3] = ["169.254.170.2", "169.254.170.23", "fd00:ec2::23"];
const IMDS_DEFAULT: &str = "http://169.254.169.254";

/// A snapshot of the `AWS_*` environment variables the providers read.
#[derive(Clone, Default)]
pub struct AwsEnv(BTreeMap<String, String>);

impl fmt::Debug for AwsEnv {
    // Values include secrets: only the names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl AwsEnv {
    /// The `AWS_*` variables of this process now.
    pub fn from_process() -> AwsEnv {
        AwsEnv::from_vars(std::env::vars().filter(|(k, _)| k.starts_with("AWS_")))
    }

    /// Exactly these variables (for tests and embedders).
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> AwsEnv {
        AwsEnv(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// A set of AWS credentials. The secret parts are never shown by `Debug`.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// When they stop working; `None` for long-term keys.
    pub expiry: Option<SystemTime>,
    /// Which provider produced them, for messages.
    pub source: &'static str,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

/// Why no credentials could be found. Messages name every source tried; none carries a secret.
#[derive(Debug, thiserror::Error)]
#[error(
    "no AWS credentials found for RDS IAM authentication; give the relay credentials in one of \
     these ways: {}",
    .tried.join("; ")
)]
pub struct CredentialsError {
    /// One entry per source: what was looked at and what went wrong.
    pub tried: Vec<String>,
}

/// The ambient credential chain with its cache; one per loaded config.
#[derive(Debug)]
pub struct AwsCredentials {
    env: AwsEnv,
    /// The client, or why TLS could not be set up (reported when an endpoint is needed).
    http: Result<Http, String>,
    cache: Mutex<Option<Credentials>>,
    /// The relay's clock offset from AWS, learned from the endpoints' answers.
    clock: ClockSkew,
}

impl AwsCredentials {
    pub fn new(env: AwsEnv) -> AwsCredentials {
        AwsCredentials {
            env,
            http: Http::new().map_err(|e| format!("cannot set up TLS: {e}")),
            cache: Mutex::new(None),
            clock: ClockSkew::new(),
        }
    }

    /// AWS's clock as this chain has learned it; sign with [`ClockSkew::now`].
    pub fn clock(&self) -> &ClockSkew {
        &self.clock
    }

    /// Which source the cached credentials came from, if any are cached (without waiting for
    /// a refresh in progress).
    pub fn cached_source(&self) -> Option<&'static str> {
        self.cache
            .try_lock()
            .ok()
            .and_then(|cache| cache.as_ref().map(|c| c.source))
    }

    /// The cache itself, for tests that plant credentials (the `fake` feature: tests only).
    #[cfg(any(test, feature = "fake"))]
    pub async fn cache_for_tests(&self) -> tokio::sync::MutexGuard<'_, Option<Credentials>> {
        self.cache.lock().await
    }

    /// Valid credentials: the cached ones while they are fresh, else the first source that
    /// has some.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref()
            && fresh(cached, self.clock.now())
        {
            return Ok(cached.clone());
        }
        let credentials = self.resolve().await?;
        *cache = Some(credentials.clone());
        Ok(credentials)
    }

    async fn resolve(&self) -> Result<Credentials, CredentialsError> {
        let env = &self.env;
        let mut tried = Vec::new();
        match (
            env.get("AWS_ACCESS_KEY_ID"),
            env.get("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => {
                return Ok(Credentials {
                    access_key_id: id.to_owned(),
                    secret_access_key: secret.to_owned(),
                    session_token: env.get("AWS_SESSION_TOKEN").map(str::to_owned),
                    expiry: None,
                    source: "environment variables",
                });
            }
            (Some(_), None) => tried.push(
                "environment: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
            ),
            (None, Some(_)) => tried.push(
                "environment: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
            ),
            (None, None) => {
                tried.push("environment: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into())
            }
        }
        match self.web_identity().await {
            Ok(Some(credentials)) => return Ok(credentials),
            Ok(None) => {
                tried.push("web identity: set AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN".into())
            }
            Err(e) => tried.push(format!("web identity (STS AssumeRoleWithWebIdentity): {e}")),
        }
        match self.ecs().await {
            Ok(Some(credentials)) => return Ok(credentials),
            Ok(None) => tried.push(
                "ECS container credentials: set AWS_CONTAINER_CREDENTIALS_FULL_URI or \
                 AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
                    .into(),
            ),
            Err(e) => tried.push(format!("ECS container credentials: {e}")),
        }
        if env
            .get("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            tried.push("EC2 instance metadata: disabled by AWS_EC2_METADATA_DISABLED".into());
        } else {
            match self.imds().await {
                Ok(credentials) => return Ok(credentials),
                Err(e) => tried.push(format!("EC2 instance metadata (IMDSv2): {e}")),
            }
        }
        Err(CredentialsError { tried })
    }

    /// Web identity (EKS IRSA and the like): the token file exchanged at STS for the role's
    /// temporary credentials; `None` when not configured. The endpoint is
    /// `AWS_ENDPOINT_URL_STS`, else the regional one of `AWS_REGION`/`AWS_DEFAULT_REGION`,
    /// else the global `https://sts.amazonaws.com`.
    async fn web_identity(&self) -> Result<Option<Credentials>, String> {
        let env = &self.env;
        let Some(file) = env.get("AWS_WEB_IDENTITY_TOKEN_FILE") else {
            return Ok(None);
        };
        let role = env
            .get("AWS_ROLE_ARN")
            .ok_or("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not; set it")?;
        let token = tokio::fs::read_to_string(file)
            .await
            .map_err(|e| format!("cannot read AWS_WEB_IDENTITY_TOKEN_FILE {file}: {e}"))?;
        let session = env.get("AWS_ROLE_SESSION_NAME").unwrap_or("dbward-relay");
        let endpoint = match (
            env.get("AWS_ENDPOINT_URL_STS"),
            env.get("AWS_REGION").or(env.get("AWS_DEFAULT_REGION")),
        ) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(region)) => format!("https://sts.{region}.amazonaws.com"),
            (None, None) => "https://sts.amazonaws.com".to_owned(),
        };
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role),
            ("RoleSessionName", session),
            ("WebIdentityToken", token.trim()),
        ];
        let url = format!("{endpoint}/");
        let mut call = Call::new(Method::POST, &url);
        call.headers.push(("accept", "application/xml".into()));
        call.body = Some((
            "application/x-www-form-urlencoded",
            crate::http::form(&form),
        ));
        let body = self.fetch(call).await?;
        let answer: StsAnswer = quick_xml::de::from_reader(body.as_ref()).map_err(|e| {
            format!("the STS answer is not an AssumeRoleWithWebIdentityResponse: {e}")
        })?;
        let StsCredentials {
            access_key_id,
            secret_access_key,
            session_token,
            expiration,
        } = answer.result.credentials;
        let expiry = time::OffsetDateTime::parse(
            &expiration,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| format!("the STS Expiration {expiration:?} is not RFC 3339: {e}"))?;
        Ok(Some(Credentials {
            access_key_id,
            secret_access_key,
            session_token: Some(session_token),
            expiry: Some(expiry.into()),
            source: "web identity",
        }))
    }

    /// ECS (and EKS Pod Identity) container credentials; `None` when not configured.
    async fn ecs(&self) -> Result<Option<Credentials>, String> {
        let env = &self.env;
        let url = if let Some(relative) = env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
            format!("{ECS_HOST}{relative}")
        } else if let Some(full) = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            full.to_owned()
        } else {
            return Ok(None);
        };
        let token = match (
            env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        ) {
            (Some(file), _) => Some(Secret::new(
                tokio::fs::read_to_string(file)
                    .await
                    .map_err(|e| {
                        format!("cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {file}: {e}")
                    })?
                    .trim(),
            )),
            (None, Some(token)) => Some(Secret::new(token)),
            (None, None) => None,
        };
        let mut call = Call::new(Method::GET, &url);
        call.metadata = container_host(&url);
        if let Some(token) = &token {
            call.secret_headers.push(("authorization", token));
        }
        let body = self.fetch(call).await?;
        parse_credentials(&body, "ECS container credentials").map(Some)
    }

    /// EC2 instance metadata, IMDSv2: a session token, the role name, then its credentials.
    async fn imds(&self) -> Result<Credentials, String> {
        let base = self
            .env
            .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or(IMDS_DEFAULT)
            .trim_end_matches('/')
            .to_owned();
        let url = format!("{base}/latest/api/token");
        let mut call = Call::new(Method::PUT, &url);
        call.metadata = true;
        call.headers
            .push(("x-aws-ec2-metadata-token-ttl-seconds", "21600".into()));
        let token = self.fetch(call).await?;
        let token =
            String::from_utf8(token).map_err(|_| "the metadata token is not text".to_owned())?;
        let token = Secret::new(token.trim());
        let imds_get = |url| {
            let mut call = Call::new(Method::GET, url);
            call.metadata = true;
            call.secret_headers
                .push(("x-aws-ec2-metadata-token", &token));
            call
        };
        let url = format!("{base}/latest/meta-data/iam/security-credentials/");
        let roles = self.fetch(imds_get(&url)).await?;
        let roles = String::from_utf8_lossy(&roles);
        let role = roles
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or("the instance has no IAM role attached; attach an instance profile")?
            .to_owned();
        if role.contains(['/', '?', '#']) {
            return Err(format!(
                "the metadata service named an invalid role {role:?}"
            ));
        }
        let url = format!("{base}/latest/meta-data/iam/security-credentials/{role}");
        let body = self.fetch(imds_get(&url)).await?;
        parse_credentials(&body, "EC2 instance metadata")
    }

    /// One exchange with a credential endpoint: the body of a 2xx answer. Errors name the URL
    /// and the status (and, from `error_of`, what the service said), never a header value or
    /// the request body. The answer's `Date` (of any status) is given to the clock.
    async fn fetch(&self, call: Call<'_>) -> Result<Vec<u8>, String> {
        let http = self.http.as_ref().map_err(Clone::clone)?;
        let url = call.url.to_owned();
        let answer = http.send(call).await?;
        if let Some((date, received)) = &answer.date {
            self.clock.observe(date, *received, &url);
        }
        if !(200..300).contains(&answer.status) {
            let status = hyper::StatusCode::from_u16(answer.status)
                .map_or_else(|_| answer.status.to_string(), |s| s.to_string());
            return Err(format!(
                "{url} answered HTTP {status}{}",
                error_of(&answer.body)
            ));
        }
        Ok(answer.body)
    }
}

/// Whether `url` names one of the container credential hosts (plain HTTP allowed).
fn container_host(url: &str) -> bool {
    url.parse::<hyper::Uri>().is_ok_and(|uri| {
        uri.host().is_some_and(|host| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            CONTAINER_HOSTS.iter().any(|h| h.eq_ignore_ascii_case(host))
        })
    })
}

/// Whether cached credentials can still be used at `now`.
fn fresh(credentials: &Credentials, now: SystemTime) -> bool {
    credentials
        .expiry
        .is_none_or(|expiry| now + REFRESH_MARGIN < expiry)
}

/// Parses the JSON both ECS and IMDS answer with.
fn parse_credentials(body: &[u8], source: &'static str) -> Result<Credentials, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        code: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        token: Option<String>,
        expiration: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("the credentials response is not the expected JSON: {e}"))?;
    if let Some(code) = answer.code.as_deref()
        && code != "Success"
    {
        return Err(format!(
            "the credentials endpoint answered with code {code:?}"
        ));
    }
    let (Some(access_key_id), Some(secret_access_key)) =
        (answer.access_key_id, answer.secret_access_key)
    else {
        return Err("the credentials response lacks AccessKeyId or SecretAccessKey".into());
    };
    let expiry = match answer.expiration {
        Some(text) => Some(
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("the credentials' Expiration {text:?} is not RFC 3339: {e}"))?
                .into(),
        ),
        None => None,
    };
    Ok(Credentials {
        access_key_id,
        secret_access_key,
        session_token: answer.token.filter(|t| !t.is_empty()),
        expiry,
        source,
    })
}

/// `: CODE: MESSAGE` from an AWS XML error body (STS), or nothing. These never carry secrets.
fn error_of(body: &[u8]) -> String {
    match quick_xml::de::from_reader::<_, StsErrorAnswer>(body) {
        Ok(StsErrorAnswer {
            error:
                StsError {
                    code,
                    message: Some(message),
                },
        }) => format!(": {code}: {message}"),
        Ok(StsErrorAnswer {
            error: StsError {
                code,
                message: None,
            },
        }) => format!(": {code}"),
        Err(_) => String::new(),
    }
}

/// `<AssumeRoleWithWebIdentityResponse>`: the parts of STS's answer the relay uses (the root
/// element's name is not checked; other elements are ignored).
#[derive(serde::Deserialize)]
struct StsAnswer {
    #[serde(rename = "AssumeRoleWithWebIdentityResult")]
    result: StsResult,
}

#[derive(serde::Deserialize)]
struct StsResult {
    #[serde(rename = "Credentials")]
    credentials: StsCredentials,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// `<ErrorResponse><Error><Code>…</Code><Message>…</Message></Error></ErrorResponse>`.
#[derive(serde::Deserialize)]
struct StsErrorAnswer {
    #[serde(rename = "Error")]
    error: StsError,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsError {
    code: String,
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn environment_variables_come_first() {
        let creds = AwsCredentials::new(AwsEnv::from_vars([
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret"),
            ("AWS_SESSION_TOKEN", "session"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/"),
        ]));
        let got = creds.get().await.unwrap();
        assert_eq!(got.access_key_id, "AKIDEXAMPLE");
        assert_eq!(got.session_token.as_deref(), Some("session"));
        assert!(!format!("{got:?}").contains("very-secret"));
    }

    #[tokio::test]
    async fn errors_name_every_source_and_no_secret() {
        let creds = AwsCredentials::new(AwsEnv::from_vars([
            ("AWS_SECRET_ACCESS_KEY", "very-secret"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]));
        let message = creds.get().await.unwrap_err().to_string();
        for part in ["AWS_ACCESS_KEY_ID", "ECS", "AWS_EC2_METADATA_DISABLED"] {
            assert!(message.contains(part), "{message}");
        }
        assert!(!message.contains("very-secret"), "{message}");
    }

    /// A local HTTP/1.1 server: `answer(method, path, headers, body)` gives (status, body).
    /// Returns its base URL. It speaks real HTTP on a real socket (one request per connection).
    async fn server(
        answer: impl Fn(&str, &str, &[(String, String)], &str) -> (u16, String) + Send + Sync + 'static,
    ) -> String {
        server_dated(None, answer).await
    }

    /// [`server`] whose answers carry `date` as their `Date` header.
    async fn server_dated(
        date: Option<String>,
        answer: impl Fn(&str, &str, &[(String, String)], &str) -> (u16, String) + Send + Sync + 'static,
    ) -> String {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let answer = answer.clone();
                let date = date
                    .as_deref()
                    .map(|d| format!("date: {d}\r\n"))
                    .unwrap_or_default();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(socket);
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_owned();
                    let path = parts.next().unwrap_or_default().to_owned();
                    let mut headers = Vec::new();
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).await.unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        let (name, value) = header.split_once(':').unwrap();
                        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
                    }
                    let length = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    let (status, text) =
                        answer(&method, &path, &headers, &String::from_utf8_lossy(&body));
                    let response = format!(
                        "HTTP/1.1 {status} X\r\n{date}content-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let mut socket = reader.into_inner();
                    socket.write_all(response.as_bytes()).await.unwrap();
                });
            }
        });
        base
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn imdsv2_takes_a_session_token_then_the_role_credentials() {
        let base = server(|method, path, headers, _| {
            match (method, path) {
                ("PUT", "/latest/api/token")
                    if header(headers, "x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
                {
                    (200, "imds-session".into())
                }
                _ if header(headers, "x-aws-ec2-metadata-token") != Some("imds-session") => {
                    (401, String::new())
                }
                ("GET", "/latest/meta-data/iam/security-credentials/") => {
                    (200, "relay-role\n".into())
                }
                ("GET", "/latest/meta-data/iam/security-credentials/relay-role") => (
                    200,
                    r#"{"Code":"Success","AccessKeyId":"ASIAIMDS","SecretAccessKey":"imds-secret","Token":"imds-token","Expiration":"2099-01-01T00:00:00Z"}"#.into(),
                ),
                _ => (404, String::new()),
            }
        })
        .await;
        let creds = AwsCredentials::new(AwsEnv::from_vars([(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            base.as_str(),
        )]));
        let got = creds.get().await.unwrap();
        assert_eq!(got.access_key_id, "ASIAIMDS");
        assert_eq!(got.session_token.as_deref(), Some("imds-token"));
        assert_eq!(got.source, "EC2 instance metadata");
    }

    #[tokio::test]
    async fn web_identity_is_exchanged_at_sts_and_comes_before_ecs() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "eyJ.web.identity\n").unwrap();
        let base = server(|method, path, headers, body| {
            let form: BTreeMap<String, String> = body
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| {
                    (
                        k.to_owned(),
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8_lossy()
                            .into_owned(),
                    )
                })
                .collect();
            let get = |k: &str| form.get(k).map(String::as_str);
            if method != "POST"
                || path != "/"
                || header(headers, "content-type") != Some("application/x-www-form-urlencoded")
                || get("Action") != Some("AssumeRoleWithWebIdentity")
                || get("Version") != Some("2011-06-15")
                || get("RoleArn") != Some("arn:aws:iam::123456789012:role/relay")
                || get("WebIdentityToken") != Some("eyJ.web.identity")
            {
                return (
                    400,
                    "<ErrorResponse><Error><Code>InvalidParameter</Code><Message>bad request</Message></Error></ErrorResponse>".into(),
                );
            }
            (200, "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIASTS</AccessKeyId><SecretAccessKey>sts&amp;secret</SecretAccessKey><SessionToken>sts-token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>".into())
        })
        .await;
        let env = |role: &str| {
            AwsEnv::from_vars([
                ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
                ("AWS_ROLE_ARN", role),
                ("AWS_ENDPOINT_URL_STS", base.as_str()),
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:1/"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ])
        };
        let got = AwsCredentials::new(env("arn:aws:iam::123456789012:role/relay"))
            .get()
            .await
            .unwrap();
        assert_eq!(got.access_key_id, "ASIASTS");
        assert_eq!(got.secret_access_key, "sts&secret");
        assert_eq!(got.source, "web identity");
        // STS refusing: the error names what STS said, and never the web identity token.
        let error = AwsCredentials::new(env("arn:aws:iam::123456789012:role/other"))
            .get()
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("InvalidParameter"), "{error}");
        assert!(!error.contains("eyJ.web.identity"), "{error}");
    }

    #[tokio::test]
    async fn the_clock_offset_is_learned_from_the_date_of_the_answers() {
        // The endpoint's clock is ten minutes ahead of ours (ours is behind).
        let date = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
        let date = date
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap();
        let expiration = (time::OffsetDateTime::now_utc() + time::Duration::minutes(14))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let base = server_dated(Some(date), move |_, _, _, _| {
            (
                200,
                format!(
                    r#"{{"AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"{expiration}"}}"#
                ),
            )
        })
        .await;
        let creds = AwsCredentials::new(AwsEnv::from_vars([(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{base}/creds"),
        )]));
        assert_eq!(creds.clock().offset_ms(), None);
        creds.get().await.unwrap();
        let offset = creds.clock().offset_ms().expect("no offset learned");
        assert!((598_000..=601_000).contains(&offset), "{offset}");
        // Credentials expiring in 14 minutes of the endpoint's time have 4 left by AWS's
        // clock: inside the refresh margin, so they are fetched again.
        assert_eq!(creds.cached_source(), Some("ECS container credentials"));
        let cached = creds.cache_for_tests().await.clone().unwrap();
        assert!(!fresh(&cached, creds.clock().now()));
        assert!(fresh(&cached, SystemTime::now()));
    }

    #[tokio::test]
    async fn container_credentials_over_plain_http_only_to_loopback_or_the_container_hosts() {
        assert!(container_host("http://169.254.170.2/v2/credentials/x"));
        assert!(container_host("http://169.254.170.23/v1/credentials"));
        assert!(container_host("http://[fd00:ec2::23]/v1/credentials"));
        assert!(!container_host("http://creds.example.com/"));
        let creds = AwsCredentials::new(AwsEnv::from_vars([
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://creds.example.com/creds",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-secret"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]));
        let message = creds.get().await.unwrap_err().to_string();
        assert!(message.contains("only sent over https://"), "{message}");
        assert!(!message.contains("container-secret"), "{message}");
    }

    #[test]
    fn parses_imds_json_and_refuses_failures() {
        let ok = br#"{"Code":"Success","AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2030-01-01T00:00:00Z"}"#;
        let got = parse_credentials(ok, "test").unwrap();
        assert_eq!(got.access_key_id, "ASIA1");
        assert!(fresh(&got, SystemTime::UNIX_EPOCH));
        assert!(!fresh(&got, got.expiry.unwrap() - Duration::from_secs(60)));
        assert!(parse_credentials(br#"{"Code":"Failure"}"#, "test").is_err());
        assert!(parse_credentials(b"not json", "test").is_err());
    }
}

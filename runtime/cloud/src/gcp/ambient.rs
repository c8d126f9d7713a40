//! The relay's own Google access token, from ambient credentials in Google's order:
//!
//! 1. `GOOGLE_APPLICATION_CREDENTIALS` names a JSON file:
//!    - `service_account` (a key): an RS256 JWT assertion (`iss` the key's email, `aud` the
//!      token endpoint, one hour) exchanged at the key's `token_uri` (jwt-bearer grant);
//!    - `external_account` (workload identity federation): the subject token read from
//!      `credential_source.file` (text, or a JSON field), exchanged at STS (`token_url`,
//!      token-exchange grant); then, when the file names `service_account_impersonation_url`,
//!      that service account's token from IAM Credentials.
//!
//!    A file that is set but unusable is an error; the chain does not fall through.
//! 2. The metadata server (`GCE_METADATA_HOST`, default `169.254.169.254`), header
//!    `Metadata-Flavor: Google`.
//!
//! gcloud's `application_default_credentials.json` (user credentials) is not read: a relay
//! runs as a service account.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::Method;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

use super::{CLOUD_PLATFORM, GcpEnv, GcpError, METADATA_HOST, google_error, impersonate};
use crate::cache::Token;
use crate::http::{Call, Http, form};
use crate::secret::Secret;

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The lifetime of a JWT assertion (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;

/// The ambient credential chain. Each fetch walks it again, so a rotated key file is picked up
/// at the next refresh.
#[derive(Debug)]
pub struct Ambient {
    env: GcpEnv,
    http: Http,
    iam_credentials: String,
}

/// `GOOGLE_APPLICATION_CREDENTIALS` file, either kind.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum CredentialsFile {
    ServiceAccount(ServiceAccountKey),
    ExternalAccount(ExternalAccount),
    AuthorizedUser {},
    ImpersonatedServiceAccount {},
}

#[derive(serde::Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: Secret,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

#[derive(serde::Deserialize)]
struct ExternalAccount {
    audience: String,
    subject_token_type: String,
    token_url: Option<String>,
    service_account_impersonation_url: Option<String>,
    credential_source: CredentialSource,
}

#[derive(serde::Deserialize)]
struct CredentialSource {
    file: Option<String>,
    format: Option<SourceFormat>,
}

#[derive(serde::Deserialize)]
struct SourceFormat {
    #[serde(rename = "type")]
    kind: String,
    subject_token_field_name: Option<String>,
}

impl Ambient {
    pub(super) fn new(env: GcpEnv, http: Http, iam_credentials: String) -> Ambient {
        Ambient {
            env,
            http,
            iam_credentials,
        }
    }

    pub(super) fn http(&self) -> &Http {
        &self.http
    }

    /// A new access token (`cloud-platform`) from the first source that has credentials.
    pub async fn fetch(&self) -> Result<Token, GcpError> {
        let mut tried = Vec::new();
        if let Some(path) = self.env.get("GOOGLE_APPLICATION_CREDENTIALS") {
            return self.credentials_file(path).await;
        }
        tried.push(
            "set GOOGLE_APPLICATION_CREDENTIALS to a service account key or an external_account \
             (workload identity federation) file (it is not set)"
                .to_owned(),
        );
        let host = self.env.get("GCE_METADATA_HOST").unwrap_or(METADATA_HOST);
        match self.metadata(host).await {
            Ok(token) => return Ok(token),
            Err(e) => tried.push(format!(
                "run on Google Cloud with a service account attached (metadata server \
                 {host}, GCE_METADATA_HOST overrides: {e})"
            )),
        }
        Err(GcpError::NoCredentials { tried })
    }

    async fn credentials_file(&self, path: &str) -> Result<Token, GcpError> {
        let file_error = |reason: String| GcpError::CredentialsFile {
            path: path.to_owned(),
            reason,
        };
        let text = tokio::fs::read(path)
            .await
            .map_err(|e| file_error(format!("cannot read it: {e}")))?;
        // Every field read is a string, so serde_json's messages quote no value but the `type`.
        let file: CredentialsFile = serde_json::from_slice(&text).map_err(|e| {
            file_error(format!(
                "it is not a service_account or external_account JSON file ({e})"
            ))
        })?;
        match file {
            CredentialsFile::ServiceAccount(key) => self.service_account(&key).await.map_err(file_error),
            CredentialsFile::ExternalAccount(account) => self.external_account(&account).await.map_err(file_error),
            CredentialsFile::AuthorizedUser {} => Err(file_error(
                "it holds user credentials (gcloud auth application-default login); give the relay \
                 a service account key or a workload identity federation file"
                    .into(),
            )),
            CredentialsFile::ImpersonatedServiceAccount {} => Err(file_error(
                "impersonated_service_account files are not supported; use the service account's \
                 own key or a workload identity federation file"
                    .into(),
            )),
        }
    }

    /// Key → signed JWT → `token_uri`.
    async fn service_account(&self, key: &ServiceAccountKey) -> Result<Token, String> {
        let token_url = self
            .env
            .get("DBWARD_GCP_OAUTH_TOKEN_URL")
            .or(key.token_uri.as_deref())
            .unwrap_or("https://oauth2.googleapis.com/token")
            .to_owned();
        let now = SystemTime::now();
        let assertion = sign_assertion(key, &token_url, now)?;
        let body = form(&[
            ("grant_type", JWT_BEARER),
            ("assertion", assertion.expose()),
        ]);
        let mut call = Call::new(Method::POST, &token_url);
        call.body = Some(("application/x-www-form-urlencoded", body));
        oauth_token(&self.http, call, now, "the OAuth token endpoint").await
    }

    /// Subject token → STS → (optionally) the service account's token.
    async fn external_account(&self, account: &ExternalAccount) -> Result<Token, String> {
        let source = &account.credential_source;
        let Some(file) = source.file.as_deref() else {
            return Err(
                "only file credential sources are supported (credential_source.file); url, \
                 executable and aws sources are not"
                    .into(),
            );
        };
        let raw = tokio::fs::read_to_string(file)
            .await
            .map_err(|e| format!("cannot read the subject token file {file}: {e}"))?;
        let subject = match &source.format {
            Some(SourceFormat {
                kind,
                subject_token_field_name,
            }) if kind == "json" => {
                let field = subject_token_field_name.as_deref().ok_or(
                    "credential_source.format is json but has no subject_token_field_name",
                )?;
                let value: serde_json::Value = serde_json::from_str(&raw)
                    .map_err(|e| format!("the subject token file {file} is not JSON: {e}"))?;
                value
                    .get(field)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| {
                        format!("the subject token file {file} has no string field {field:?}")
                    })?
                    .to_owned()
            }
            Some(SourceFormat { kind, .. }) if kind != "text" => {
                return Err(format!(
                    "credential_source.format.type {kind:?} is neither text nor json"
                ));
            }
            _ => raw.trim().to_owned(),
        };
        let subject = Secret::new(subject);
        let sts_url = self
            .env
            .get("DBWARD_GCP_STS_TOKEN_URL")
            .or(account.token_url.as_deref())
            .unwrap_or("https://sts.googleapis.com/v1/token")
            .to_owned();
        let body = form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("audience", &account.audience),
            ("scope", CLOUD_PLATFORM),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", subject.expose()),
            ("subject_token_type", &account.subject_token_type),
        ]);
        let mut call = Call::new(Method::POST, &sts_url);
        call.body = Some(("application/x-www-form-urlencoded", body));
        let federated =
            oauth_token(&self.http, call, SystemTime::now(), "STS token exchange").await?;
        let Some(url) = account.service_account_impersonation_url.as_deref() else {
            return Ok(federated);
        };
        // The impersonation URL names Google's endpoint; an override moves its origin.
        let url = match (
            self.env.get("DBWARD_GCP_IAM_CREDENTIALS_ENDPOINT"),
            url.find("/v1/"),
        ) {
            (Some(_), Some(at)) => format!("{}{}", self.iam_credentials, &url[at..]),
            _ => url.to_owned(),
        };
        impersonate(&self.http, &url, &federated.secret, &[CLOUD_PLATFORM])
            .await
            .map_err(|e| match e {
                super::Impersonation::Status(403, detail) => format!(
                    "the federated identity may not impersonate the service account in \
                     service_account_impersonation_url: grant it roles/iam.workloadIdentityUser \
                     or roles/iam.serviceAccountTokenCreator on that account ({detail})"
                ),
                super::Impersonation::Status(status, detail) => {
                    format!("service account impersonation answered HTTP {status}: {detail}")
                }
                super::Impersonation::Other(detail) => detail,
            })
    }

    /// The metadata server's token for the attached service account.
    async fn metadata(&self, host: &str) -> Result<Token, String> {
        let url = format!(
            "http://{host}/computeMetadata/v1/instance/service-accounts/default/token?scopes={}",
            percent_encoding::utf8_percent_encode(
                CLOUD_PLATFORM,
                percent_encoding::NON_ALPHANUMERIC
            )
        );
        let mut call = Call::new(Method::GET, &url);
        call.headers.push(("metadata-flavor", "Google".to_owned()));
        call.metadata = true;
        oauth_token(&self.http, call, SystemTime::now(), "the metadata server").await
    }
}

/// An OAuth-shaped token answer (`access_token`, `expires_in`) of `call`, sent at `sent`.
async fn oauth_token(
    http: &Http,
    call: Call<'_>,
    sent: SystemTime,
    what: &str,
) -> Result<Token, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
        expires_in: u64,
    }
    let answer = http.send(call).await?;
    if answer.status != 200 {
        return Err(format!(
            "{what} answered HTTP {}: {}",
            answer.status,
            google_error(&answer.body)
        ));
    }
    let parsed: Answer = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("{what} did not answer with an access token: {e}"))?;
    Ok(Token {
        secret: Secret::new(parsed.access_token),
        // Counted from when the request left, so a slow answer errs on the early side.
        expires_at: sent + Duration::from_secs(parsed.expires_in),
    })
}

/// The RS256 JWT a service account key signs for the jwt-bearer grant.
fn sign_assertion(
    key: &ServiceAccountKey,
    audience: &str,
    now: SystemTime,
) -> Result<Secret, String> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(key.private_key.expose().as_bytes())
        .map_err(|_| "private_key is not a PKCS#8 PEM private key".to_owned())?;
    let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|_| "private_key is not a usable RSA key".to_owned())?;
    let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(kid) = &key.private_key_id {
        header["kid"] = kid.as_str().into();
    }
    let claims = serde_json::json!({
        "iss": key.client_email,
        "scope": CLOUD_PLATFORM,
        "aud": audience,
        "iat": iat,
        "exp": iat + ASSERTION_LIFETIME,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "signing the JWT assertion failed".to_owned())?;
    Ok(Secret::new(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

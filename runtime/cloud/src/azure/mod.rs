//! Microsoft Azure: Entra ID tokens for Azure Database for PostgreSQL (resource
//! `https://ossrdbms-aad.database.windows.net`), one per Entra principal (a database user's
//! managed identity or app registration, named by its client id).
//!
//! Sources, in the Azure SDKs' order, walked again for every fetch (a rotated secret, a new
//! federated token file, is picked up at the next refresh):
//!
//! 1. **Environment client secret or certificate** — `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
//!    `AZURE_CLIENT_SECRET` or `AZURE_CLIENT_CERTIFICATE_PATH` (a PEM file with the certificate
//!    and its unencrypted RSA private key; the client assertion is an RS256 JWT with the
//!    certificate's SHA-1 thumbprint as `x5t`). It applies only to the principal whose client id
//!    is `AZURE_CLIENT_ID`: an app registration's secret proves that app and no other.
//! 2. **Workload identity** — `AZURE_FEDERATED_TOKEN_FILE`, read fresh each time, sent as the
//!    client assertion (`urn:ietf:params:oauth:client-assertion-type:jwt-bearer`) for the
//!    principal's client id. It applies to every principal: each app (or user-assigned
//!    identity) trusts the workload's service account through a federated credential of its
//!    own.
//! 3. **Managed identity** — `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (App Service, Container
//!    Apps: header `x-identity-header`, api-version 2019-08-01), else IMDS
//!    (`http://169.254.169.254/metadata/identity/oauth2/token`, header `Metadata: true`,
//!    api-version 2018-02-01), always with `client_id=` the principal's: each database user is a
//!    user-assigned identity attached to the relay's host.
//!
//! Sources 1 and 2 call the v2.0 token endpoint `{authority}/{tenant}/oauth2/v2.0/token` with
//! scope `https://ossrdbms-aad.database.windows.net/.default`; the tenant is `AZURE_TENANT_ID`,
//! else the manifest's. A source that applies but fails is an error (no fall-through), as the
//! SDKs do once a credential is configured.
//!
//! Every endpoint can be moved (tests point them at [`fake`]):
//!
//! | variable | default | what |
//! | --- | --- | --- |
//! | `AZURE_AUTHORITY_HOST` | `https://login.microsoftonline.com` | Entra ID (v2.0 token endpoint) |
//! | `AZURE_POD_IDENTITY_AUTHORITY_HOST` | `http://169.254.169.254` | IMDS, as the SDKs read it |
//! | `IDENTITY_ENDPOINT` | — | App Service / Container Apps identity endpoint |
//!
//! Credentials go only over `https://`, plain HTTP to loopback and to IMDS excepted. Tokens,
//! secrets and assertions are [`Secret`]s: never in `Debug`, errors or logs.

#[cfg(feature = "fake")]
pub mod fake;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use hyper::Method;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::runtime::Handle;

pub use crate::cache::Policy;
use crate::cache::{CacheFault, FetchFuture, Token, TokenCache};
use crate::http::{Call, Http, form};
use crate::secret::Secret;

/// The resource (audience) of Azure Database for PostgreSQL tokens.
pub const RESOURCE: &str = "https://ossrdbms-aad.database.windows.net";
/// The v2.0 scope for [`RESOURCE`].
pub const SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";
/// The client assertion type of certificate and federated assertions.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

const AUTHORITY: &str = "https://login.microsoftonline.com";
const IMDS: &str = "http://169.254.169.254";
/// Lifetime of a certificate client assertion.
const ASSERTION_LIFETIME: u64 = 600;

/// The variables the Azure code reads: a snapshot, so tests and embedders can inject them
/// without touching the process environment.
#[derive(Clone, Default)]
pub struct AzureEnv(BTreeMap<String, String>);

impl fmt::Debug for AzureEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl AzureEnv {
    /// The variables of this process now.
    pub fn from_process() -> AzureEnv {
        AzureEnv::from_vars(std::env::vars().filter(|(k, _)| {
            k.starts_with("AZURE_") || k == "IDENTITY_ENDPOINT" || k == "IDENTITY_HEADER"
        }))
    }

    /// Exactly these variables.
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> AzureEnv {
        AzureEnv(
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

/// Why no token could be had. Messages start lower-case, say what to do, and carry no secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AzureError {
    #[error(
        "no Azure credentials for the Entra principal with client id {client_id}; give the relay \
         credentials in one of these ways: {}",
        .tried.join("; ")
    )]
    NoCredentials {
        client_id: String,
        tried: Vec<String>,
    },
    #[error(
        "the managed identity {client_id} is not assigned to this host ({source_name} answered: \
         {detail}); assign the user-assigned identity to the relay's VM, App Service or \
         Container App, or fix the db-user's client-id"
    )]
    NotAssigned {
        client_id: String,
        source_name: String,
        detail: String,
    },
    #[error("Entra ID refused {source_name} for client id {client_id}: {detail}{}", explain(.detail))]
    Refused {
        client_id: String,
        source_name: String,
        detail: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{what} failed: {detail}")]
    Service { what: String, detail: String },
    #[error(transparent)]
    Cache(#[from] CacheFault),
}

/// What to do about the AADSTS codes a misconfiguration produces.
fn explain(detail: &str) -> String {
    const CODES: &[(&str, &str)] = &[
        (
            "AADSTS7000215",
            "the client secret is wrong: set AZURE_CLIENT_SECRET to the secret's value (not its id)",
        ),
        (
            "AADSTS7000222",
            "the client secret has expired: create a new one for the app registration",
        ),
        (
            "AADSTS700016",
            "no app with this client id in the tenant: check the db-user's client-id and the tenant",
        ),
        (
            "AADSTS90002",
            "the tenant does not exist: check AZURE_TENANT_ID and the manifest's tenant",
        ),
        (
            "AADSTS700027",
            "the certificate's signature was not accepted: upload the certificate of \
             AZURE_CLIENT_CERTIFICATE_PATH to the app registration",
        ),
        (
            "AADSTS700024",
            "the client assertion is expired or not yet valid: check the relay's clock, and that \
             the federated token file is refreshed",
        ),
        (
            "AADSTS70021",
            "no federated credential of the app matches the token: add one whose issuer, subject \
             and audience are those of AZURE_FEDERATED_TOKEN_FILE's token",
        ),
        (
            "AADSTS700213",
            "no federated credential of the app matches the token's subject: add one for the \
             workload's service account",
        ),
        (
            "AADSTS500011",
            "the tenant has no Azure Database for PostgreSQL resource principal",
        ),
    ];
    CODES
        .iter()
        .find(|(code, _)| detail.contains(code))
        .map(|(code, what)| format!(" ({code}: {what})"))
        .unwrap_or_default()
}

/// The Entra ID client of one database: endpoints, HTTP and the tenant. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Entra {
    inner: Arc<Sources>,
}

#[derive(Debug)]
struct Sources {
    env: AzureEnv,
    http: Http,
    tenant: String,
}

impl Entra {
    /// A client reading `env`, for the manifest's `tenant`.
    pub fn new(env: AzureEnv, tenant: &str) -> Result<Entra, AzureError> {
        let http =
            Http::new().map_err(|e| AzureError::Invalid(format!("cannot set up TLS: {e}")))?;
        Ok(Entra::with(env, tenant, http))
    }

    /// Same, with a given HTTP client (private roots).
    pub fn with(env: AzureEnv, tenant: &str, http: Http) -> Entra {
        Entra {
            inner: Arc::new(Sources {
                env,
                http,
                tenant: tenant.to_owned(),
            }),
        }
    }

    /// Tokens per client id, cached and refreshed in the background: what an Azure upstream
    /// sends as the password. Invalidate a token the database refused with
    /// [`TokenCache::invalidate`].
    pub fn tokens(&self, runtime: Handle, policy: Policy) -> TokenCache<String, AzureError> {
        let entra = self.clone();
        TokenCache::new(runtime, policy, move |client_id: String| {
            let entra = entra.clone();
            Box::pin(async move { entra.token(&client_id).await }) as FetchFuture<AzureError>
        })
    }

    /// A fresh (uncached) token for the principal `client_id`, from the first source that
    /// applies.
    pub async fn token(&self, client_id: &str) -> Result<Token, AzureError> {
        if !is_guid(client_id) {
            return Err(AzureError::Invalid(format!(
                "{client_id:?} is not a client id; write the identity's client (application) id, \
                 a GUID such as 00000000-0000-0000-0000-000000000000"
            )));
        }
        let s = &self.inner;
        let mut tried = Vec::new();
        // 1. Environment secret or certificate, for AZURE_CLIENT_ID only.
        let secret = s.env.get("AZURE_CLIENT_SECRET");
        let certificate = s.env.get("AZURE_CLIENT_CERTIFICATE_PATH");
        match (s.env.get("AZURE_CLIENT_ID"), secret.or(certificate)) {
            (Some(id), Some(_)) if id.eq_ignore_ascii_case(client_id) => {
                let tenant = s.env.get("AZURE_TENANT_ID").unwrap_or(&s.tenant);
                return match (secret, certificate) {
                    (Some(secret), _) => {
                        let secret = Secret::new(secret);
                        s.client_credentials(
                            tenant,
                            client_id,
                            Assertion::Secret(&secret),
                            "its client secret (AZURE_CLIENT_SECRET)",
                        )
                        .await
                    }
                    (None, path) => {
                        let path = path.unwrap_or_default();
                        let url = s.token_url(tenant);
                        let assertion = certificate_assertion(path, client_id, &url)
                            .await
                            .map_err(|reason| {
                                AzureError::Invalid(format!(
                                    "the certificate file {path} (AZURE_CLIENT_CERTIFICATE_PATH) \
                                     cannot be used: {reason}"
                                ))
                            })?;
                        s.client_credentials(
                            tenant,
                            client_id,
                            Assertion::Jwt(&assertion),
                            "its certificate (AZURE_CLIENT_CERTIFICATE_PATH)",
                        )
                        .await
                    }
                };
            }
            (Some(id), Some(_)) => tried.push(format!(
                "AZURE_CLIENT_SECRET / AZURE_CLIENT_CERTIFICATE_PATH are for AZURE_CLIENT_ID {id}, \
                 not this principal"
            )),
            _ => tried.push(
                "set AZURE_TENANT_ID, AZURE_CLIENT_ID (this client id) and AZURE_CLIENT_SECRET or \
                 AZURE_CLIENT_CERTIFICATE_PATH (not set)"
                    .to_owned(),
            ),
        }
        // 2. Workload identity, for any client id.
        if let Some(path) = s.env.get("AZURE_FEDERATED_TOKEN_FILE") {
            let tenant = s.env.get("AZURE_TENANT_ID").unwrap_or(&s.tenant);
            let token = tokio::fs::read_to_string(path).await.map_err(|e| {
                AzureError::Invalid(format!(
                    "cannot read the federated token file {path} (AZURE_FEDERATED_TOKEN_FILE): {e}"
                ))
            })?;
            let token = Secret::new(token.trim());
            return s
                .client_credentials(
                    tenant,
                    client_id,
                    Assertion::Jwt(&token),
                    "the workload identity token (AZURE_FEDERATED_TOKEN_FILE)",
                )
                .await;
        }
        tried.push(
            "run as an AKS workload identity (AZURE_FEDERATED_TOKEN_FILE, not set)".to_owned(),
        );
        // 3. Managed identity: App Service / Container Apps, else IMDS.
        if let (Some(endpoint), Some(header)) =
            (s.env.get("IDENTITY_ENDPOINT"), s.env.get("IDENTITY_HEADER"))
        {
            return s
                .app_service(endpoint, &Secret::new(header), client_id)
                .await;
        }
        tried.push(
            "run on App Service or Container Apps with this identity assigned (IDENTITY_ENDPOINT \
             and IDENTITY_HEADER, not set)"
                .to_owned(),
        );
        let host = s
            .env
            .get("AZURE_POD_IDENTITY_AUTHORITY_HOST")
            .unwrap_or(IMDS)
            .trim_end_matches('/');
        match s.imds(host, client_id).await {
            Ok(token) => Ok(token),
            Err(Imds::Unreachable(why)) => {
                tried.push(format!(
                    "run on an Azure VM with this user-assigned identity (IMDS {host}, \
                     AZURE_POD_IDENTITY_AUTHORITY_HOST overrides: {why})"
                ));
                Err(AzureError::NoCredentials {
                    client_id: client_id.to_owned(),
                    tried,
                })
            }
            Err(Imds::Failed(error)) => Err(error),
        }
    }
}

enum Assertion<'a> {
    Secret(&'a Secret),
    Jwt(&'a Secret),
}

enum Imds {
    /// Nothing answered: not on Azure.
    Unreachable(String),
    Failed(AzureError),
}

impl Sources {
    fn token_url(&self, tenant: &str) -> String {
        let authority = self
            .env
            .get("AZURE_AUTHORITY_HOST")
            .unwrap_or(AUTHORITY)
            .trim_end_matches('/');
        format!("{authority}/{tenant}/oauth2/v2.0/token")
    }

    /// The client credentials grant at the v2.0 token endpoint.
    async fn client_credentials(
        &self,
        tenant: &str,
        client_id: &str,
        assertion: Assertion<'_>,
        source_name: &str,
    ) -> Result<Token, AzureError> {
        if !is_guid(tenant) && !tenant.contains('.') {
            return Err(AzureError::Invalid(format!(
                "{tenant:?} is not a tenant id; set AZURE_TENANT_ID (or the manifest's tenant) to \
                 the directory (tenant) id"
            )));
        }
        let url = self.token_url(tenant);
        let mut fields = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("scope", SCOPE),
        ];
        match &assertion {
            Assertion::Secret(secret) => fields.push(("client_secret", secret.expose())),
            Assertion::Jwt(jwt) => {
                fields.push(("client_assertion_type", JWT_BEARER_ASSERTION));
                fields.push(("client_assertion", jwt.expose()));
            }
        }
        let mut call = Call::new(Method::POST, &url);
        call.body = Some(("application/x-www-form-urlencoded", form(&fields)));
        let sent = SystemTime::now();
        let answer = self
            .http
            .send(call)
            .await
            .map_err(|detail| AzureError::Service {
                what: format!("the Entra ID token endpoint ({source_name})"),
                detail,
            })?;
        if answer.status != 200 {
            return Err(AzureError::Refused {
                client_id: client_id.to_owned(),
                source_name: source_name.to_owned(),
                detail: format!("HTTP {}: {}", answer.status, entra_error(&answer.body)),
            });
        }
        parse_token(&answer.body, sent).map_err(|detail| AzureError::Service {
            what: format!("the Entra ID token endpoint ({source_name})"),
            detail,
        })
    }

    async fn app_service(
        &self,
        endpoint: &str,
        header: &Secret,
        client_id: &str,
    ) -> Result<Token, AzureError> {
        let source_name = "the App Service identity endpoint (IDENTITY_ENDPOINT)";
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        let url = format!(
            "{endpoint}{separator}api-version=2019-08-01&resource={}&client_id={client_id}",
            encode(RESOURCE)
        );
        let mut call = Call::new(Method::GET, &url);
        call.secret_headers.push(("x-identity-header", header));
        let sent = SystemTime::now();
        let answer = self
            .http
            .send(call)
            .await
            .map_err(|detail| AzureError::Service {
                what: source_name.to_owned(),
                detail,
            })?;
        self.managed_answer(answer, sent, client_id, source_name)
    }

    async fn imds(&self, host: &str, client_id: &str) -> Result<Token, Imds> {
        let source_name = "IMDS";
        let url = format!(
            "{host}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}&client_id={client_id}",
            encode(RESOURCE)
        );
        let mut call = Call::new(Method::GET, &url);
        call.headers.push(("metadata", "true".to_owned()));
        call.metadata = true;
        let sent = SystemTime::now();
        let answer = self.http.send(call).await.map_err(Imds::Unreachable)?;
        self.managed_answer(answer, sent, client_id, source_name)
            .map_err(Imds::Failed)
    }

    fn managed_answer(
        &self,
        answer: crate::http::Answer,
        sent: SystemTime,
        client_id: &str,
        source_name: &str,
    ) -> Result<Token, AzureError> {
        if answer.status == 200 {
            return parse_token(&answer.body, sent).map_err(|detail| AzureError::Service {
                what: source_name.to_owned(),
                detail,
            });
        }
        let detail = entra_error(&answer.body);
        let lower = detail.to_ascii_lowercase();
        if (answer.status == 400 || answer.status == 404)
            && (lower.contains("identity not found") || lower.contains("not found"))
        {
            return Err(AzureError::NotAssigned {
                client_id: client_id.to_owned(),
                source_name: source_name.to_owned(),
                detail,
            });
        }
        Err(AzureError::Service {
            what: format!("{source_name} for client id {client_id}"),
            detail: format!("HTTP {}: {detail}", answer.status),
        })
    }
}

/// An Entra token answer: `access_token` and `expires_in` (a number, or a string from managed
/// identity endpoints), or `expires_on` (epoch seconds, a string) alone.
fn parse_token(body: &[u8], sent: SystemTime) -> Result<Token, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: Secret,
        expires_in: Option<serde_json::Value>,
        expires_on: Option<serde_json::Value>,
    }
    let parsed: Answer = serde_json::from_slice(body)
        .map_err(|_| "the answer is not a token response (no access_token)".to_owned())?;
    let number = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let expires_at = match (
        parsed.expires_in.as_ref().and_then(number),
        parsed.expires_on.as_ref().and_then(number),
    ) {
        // Counted from when the request left, so a slow answer errs on the early side.
        (Some(secs), _) => sent + Duration::from_secs(secs),
        (None, Some(epoch)) => UNIX_EPOCH + Duration::from_secs(epoch),
        (None, None) => return Err("the token response has no expires_in or expires_on".into()),
    };
    Ok(Token {
        secret: parsed.access_token,
        expires_at,
    })
}

/// What an Entra or managed identity error body says (`error`, `error_description`), cut to a
/// readable length. Entra does not echo credentials.
fn entra_error(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Shape {
        error: Option<serde_json::Value>,
        error_description: Option<String>,
        message: Option<String>,
    }
    let text = match serde_json::from_slice::<Shape>(body) {
        Ok(shape) => {
            let error = match shape.error {
                Some(serde_json::Value::String(s)) => Some(s),
                Some(serde_json::Value::Object(o)) => {
                    o.get("message").and_then(|m| m.as_str()).map(str::to_owned)
                }
                _ => None,
            };
            match (error, shape.error_description.or(shape.message)) {
                (Some(e), Some(d)) => format!("{e}: {}", d.lines().next().unwrap_or_default()),
                (e, d) => e.or(d).unwrap_or_else(|| "(no error details)".into()),
            }
        }
        Err(_) => "(no error details)".to_owned(),
    };
    text.chars().take(300).collect()
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `8-4-4-4-12` hex digits.
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The claims of a JWT (unverified): what the relay reads of a refused token (`oid`, `tid`,
/// `aud`, `exp`) to explain the refusal. `None` for anything that is not a JWT.
pub fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The RS256 client assertion of a certificate credential: `x5t` is the certificate's SHA-1
/// thumbprint, `aud` the token endpoint, `iss` = `sub` = the client id.
async fn certificate_assertion(
    path: &str,
    client_id: &str,
    audience: &str,
) -> Result<Secret, String> {
    let pem = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read it: {e}"))?;
    let pem = Secret::new(String::from_utf8_lossy(&pem).into_owned());
    let cert = CertificateDer::pem_slice_iter(pem.expose().as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or("it holds no PEM certificate (PFX files are not supported; convert to PEM)")?;
    let key = PrivateKeyDer::from_pem_slice(pem.expose().as_bytes())
        .map_err(|_| "it holds no unencrypted PEM private key")?;
    let pair = match &key {
        PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
        _ => return Err("its private key is not an RSA key".into()),
    }
    .map_err(|_| "its private key is not a usable RSA key")?;
    let thumbprint = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut jti = [0u8; 16];
    SystemRandom::new()
        .fill(&mut jti)
        .map_err(|_| "no randomness for the assertion id")?;
    let header = serde_json::json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5t": URL_SAFE_NO_PAD.encode(thumbprint.as_ref()),
    });
    let claims = serde_json::json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": STANDARD_NO_PAD.encode(jti),
        "nbf": now,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
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
    .map_err(|_| "signing the client assertion failed")?;
    Ok(Secret::new(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_and_explanations() {
        assert!(is_guid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
        assert!(!is_guid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f"));
        assert!(!is_guid("dbward"));
        let detail = "HTTP 401: invalid_client: AADSTS7000215: Invalid client secret provided.";
        assert!(explain(detail).contains("AZURE_CLIENT_SECRET"));
        assert_eq!(explain("HTTP 500"), "");
    }

    #[test]
    fn token_answers_of_every_shape() {
        let sent = SystemTime::now();
        let v2 = parse_token(br#"{"access_token":"t","expires_in":3599}"#, sent).unwrap();
        assert_eq!(v2.expires_at, sent + Duration::from_secs(3599));
        let imds = parse_token(
            br#"{"access_token":"t","expires_in":"86399","expires_on":"1"}"#,
            sent,
        )
        .unwrap();
        assert_eq!(imds.expires_at, sent + Duration::from_secs(86399));
        let app = parse_token(br#"{"access_token":"t","expires_on":"2000000000"}"#, sent).unwrap();
        assert_eq!(
            app.expires_at,
            UNIX_EPOCH + Duration::from_secs(2_000_000_000)
        );
        let error = parse_token(br#"{"access_token":"secret-token"}"#, sent).unwrap_err();
        assert!(!error.contains("secret-token"), "{error}");
        assert!(
            parse_token(b"not json secret-token", sent)
                .unwrap_err()
                .contains("no access_token")
        );
    }
}

#[cfg(test)]
mod chain_tests;

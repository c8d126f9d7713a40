//! A local fake Entra ID (feature `fake`, for tests only) that checks what Entra checks, on
//! one plain-HTTP server on 127.0.0.1:
//!
//! - the v2.0 token endpoint `POST /{tenant}/oauth2/v2.0/token`: the tenant, the
//!   `client_credentials` grant, the scope, and the client's proof — its secret, or a client
//!   assertion: an RS256 JWT whose signature verifies with the app's certificate key, whose
//!   `x5t` is that certificate's thumbprint, `aud` this endpoint, `iss` = `sub` = the client id,
//!   unexpired; or a federated (workload identity) token registered for the app;
//! - IMDS `GET /metadata/identity/oauth2/token`: header `Metadata: true`, api-version
//!   2018-02-01, the resource, and that the `client_id` is a user-assigned identity of the "VM"
//!   (else 400 "Identity not found", as IMDS);
//! - App Service `GET /msi/token`: header `x-identity-header`, api-version 2019-08-01, the
//!   resource and the assigned `client_id`.
//!
//! Tokens are short HS256 JWTs (`oid`, `tid`, `aud`, `appid`, `exp`) signed with
//! [`FakeEntra::signing_key`], well under the 511 bytes PAM passes on, so a database-side
//! verifier can check them. AADSTS codes and messages follow Entra's.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ring::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

use super::{JWT_BEARER_ASSERTION, RESOURCE, SCOPE};

/// The certificate (of `gcp::fake::TEST_KEY`'s key) an app registration may hold.
pub const TEST_APP_CERT: &str = include_str!("../../testdata/test-only-entra-app-cert.pem");
/// Its private key (PKCS#8 PEM).
pub const TEST_APP_KEY: &str = include_str!("../../testdata/test-only-rsa-key.pem");
/// Another key: assertions it signs must be refused.
pub const OTHER_KEY: &str = include_str!("../../testdata/test-only-rsa-key-2.pem");

/// A token the fake issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub client_id: String,
    pub object_id: String,
    /// Which endpoint issued it: `secret`, `certificate`, `federated`, `imds`, `app-service`.
    pub source: String,
    pub expires_at: SystemTime,
    /// 1 for the first token issued, 2 for the next, …
    pub serial: u64,
}

#[derive(Default)]
struct State {
    tenant: String,
    /// client id → object id, for apps and user-assigned identities.
    principals: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
    /// client id → (certificate thumbprint, public key).
    certificates: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
    /// client id → the federated tokens it trusts.
    federated: BTreeMap<String, BTreeSet<String>>,
    vm_identities: BTreeSet<String>,
    app_service: Option<(String, BTreeSet<String>)>,
    lifetime: Option<Duration>,
    tokens: BTreeMap<String, Issued>,
    counts: BTreeMap<String, u32>,
    serial: u64,
    on_issue: Option<IssueHook>,
}

/// Called with `(client id, token)` for every token issued, before the fake answers with it.
pub type IssueHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The fake; stops serving when dropped.
pub struct FakeEntra {
    url: String,
    key: Vec<u8>,
    state: Arc<Mutex<State>>,
    server: tokio::task::AbortHandle,
}

impl Drop for FakeEntra {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for FakeEntra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeEntra").field("url", &self.url).finish()
    }
}

impl FakeEntra {
    /// Serves tenant `tenant` on a free port of 127.0.0.1.
    pub async fn start(tenant: &str) -> FakeEntra {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let state = Arc::new(Mutex::new(State {
            tenant: tenant.to_owned(),
            ..State::default()
        }));
        let mut key = vec![0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .expect("randomness");
        let shared = (url.clone(), key.clone(), state.clone());
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (url, key, state) = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (url, key, state) = (url.clone(), key.clone(), state.clone());
                        async move {
                            Ok::<_, Infallible>(answer(&url, &key, &state, request).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        })
        .abort_handle();
        FakeEntra {
            url,
            key,
            state,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The HMAC-SHA256 key the fake's tokens are signed with (hex), for a verifier.
    pub fn signing_key(&self) -> String {
        self.key.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The variables that point the Azure code's Entra ID and IMDS at this fake.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_AUTHORITY_HOST".into(), self.url.clone()),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST".into(), self.url.clone()),
        ]
    }

    /// The variables of an App Service / Container Apps host, with `header` as its secret.
    pub fn app_service_env(&self, header: &str) -> Vec<(String, String)> {
        vec![
            (
                "IDENTITY_ENDPOINT".into(),
                format!("{}/msi/token", self.url),
            ),
            ("IDENTITY_HEADER".into(), header.into()),
        ]
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Creates a principal (app registration or user-assigned identity).
    pub fn add_principal(&self, client_id: &str, object_id: &str) {
        self.state()
            .principals
            .insert(client_id.to_lowercase(), object_id.to_owned());
    }

    /// Gives app `client_id` a client secret.
    pub fn add_secret(&self, client_id: &str, secret: &str) {
        self.state()
            .secrets
            .insert(client_id.to_lowercase(), secret.to_owned());
    }

    /// Uploads a certificate (PEM) to app `client_id`; `key_pem` is its private key, from which
    /// the fake takes the public key.
    pub fn add_certificate(&self, client_id: &str, cert_pem: &str, key_pem: &str) {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("a PEM certificate");
        let thumbprint = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert)
            .as_ref()
            .to_vec();
        let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).expect("a PKCS#8 key");
        let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("an RSA key");
        self.state().certificates.insert(
            client_id.to_lowercase(),
            (thumbprint, pair.public_key().as_ref().to_vec()),
        );
    }

    /// Makes app `client_id` trust the federated (Kubernetes service account) token `token`.
    pub fn add_federated(&self, client_id: &str, token: &str) {
        self.state()
            .federated
            .entry(client_id.to_lowercase())
            .or_default()
            .insert(token.to_owned());
    }

    /// Assigns user-assigned identity `client_id` to the "VM" (IMDS).
    pub fn assign_to_vm(&self, client_id: &str) {
        self.state().vm_identities.insert(client_id.to_lowercase());
    }

    /// Assigns `client_id` to the "App Service", whose identity header is `header`.
    pub fn assign_to_app_service(&self, header: &str, client_id: &str) {
        let mut state = self.state();
        let app = state
            .app_service
            .get_or_insert_with(|| (header.to_owned(), BTreeSet::new()));
        app.0 = header.to_owned();
        app.1.insert(client_id.to_lowercase());
    }

    /// Caps the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().lifetime = Some(lifetime);
    }

    /// Calls `hook(client_id, token)` for every token issued, before the fake answers with it:
    /// a benchmark database learns the token this way (`ALTER ROLE … PASSWORD`).
    pub fn on_issue(&self, hook: impl Fn(&str, &str) + Send + Sync + 'static) {
        self.state().on_issue = Some(Arc::new(hook));
    }

    /// How many tokens were issued for `client_id` (all sources).
    pub fn count(&self, client_id: &str) -> u32 {
        self.state()
            .counts
            .get(&client_id.to_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Every token issued so far, oldest first.
    pub fn issued(&self) -> Vec<String> {
        let state = self.state();
        let mut tokens: Vec<(&String, u64)> =
            state.tokens.iter().map(|(t, i)| (t, i.serial)).collect();
        tokens.sort_by_key(|(_, serial)| *serial);
        tokens.into_iter().map(|(t, _)| t.clone()).collect()
    }

    /// What the fake knows of a token it issued.
    pub fn token_info(&self, token: &str) -> Option<Issued> {
        self.state().tokens.get(token).cloned()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

type Reply = Response<Full<Bytes>>;

fn reply(status: u16, body: Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Entra's error shape.
fn aadsts(status: u16, error: &str, code: u32, message: &str) -> Reply {
    reply(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {message} Trace ID: 00000000-0000-0000-0000-000000000000"),
            "error_codes": [code],
        }),
    )
}

/// IMDS / App Service error shape.
fn msi_error(status: u16, error: &str, description: &str) -> Reply {
    reply(
        status,
        json!({ "error": error, "error_description": description }),
    )
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let v = v.replace('+', " ");
            (
                k.to_owned(),
                percent_encoding::percent_decode_str(&v)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        })
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl State {
    /// Issues a token for `client_id`; its lifetime is capped by the configured one.
    fn issue(&mut self, key: &[u8], client_id: &str, source: &str) -> (String, u64) {
        let lifetime = self.lifetime.unwrap_or(Duration::from_secs(3599)).as_secs();
        let object_id = self.principals.get(client_id).cloned().unwrap_or_default();
        self.serial += 1;
        let exp = now_secs() + lifetime;
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(
            json!({
                "aud": RESOURCE,
                "tid": self.tenant,
                "oid": object_id,
                "appid": client_id,
                "exp": exp,
                "n": self.serial,
            })
            .to_string(),
        );
        let input = format!("{header}.{claims}");
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            input.as_bytes(),
        );
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        self.tokens.insert(
            token.clone(),
            Issued {
                client_id: client_id.to_owned(),
                object_id,
                source: source.to_owned(),
                expires_at: UNIX_EPOCH + Duration::from_secs(exp),
                serial: self.serial,
            },
        );
        *self.counts.entry(client_id.to_owned()).or_default() += 1;
        if let Some(hook) = &self.on_issue {
            hook(client_id, &token);
        }
        (token, lifetime)
    }
}

async fn answer(url: &str, key: &[u8], state: &Mutex<State>, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return msi_error(400, "invalid_request", "unreadable body");
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let path = parts.uri.path().to_owned();
    let query = form(parts.uri.query().unwrap_or_default().as_bytes());
    let mut state = lock(state);
    match (parts.method.as_str(), path.as_str()) {
        ("GET", "/metadata/identity/oauth2/token") => {
            if header("metadata") != Some("true") {
                return msi_error(
                    400,
                    "invalid_request",
                    "Required metadata header not specified",
                );
            }
            if query.get("api-version").map(String::as_str) != Some("2018-02-01") {
                return msi_error(400, "invalid_request", "Invalid api-version");
            }
            managed(&mut state, key, &query, "imds", |s, id| {
                s.vm_identities.contains(id)
            })
        }
        ("GET", "/msi/token") => {
            let Some((secret, _)) = state.app_service.clone() else {
                return msi_error(404, "not_found", "no App Service identity endpoint here");
            };
            if header("x-identity-header") != Some(secret.as_str()) {
                return msi_error(
                    401,
                    "unauthorized",
                    "The identity header is missing or wrong",
                );
            }
            if query.get("api-version").map(String::as_str) != Some("2019-08-01") {
                return msi_error(400, "invalid_request", "Invalid api-version");
            }
            managed(&mut state, key, &query, "app-service", |s, id| {
                s.app_service
                    .as_ref()
                    .is_some_and(|(_, ids)| ids.contains(id))
            })
        }
        ("POST", p) if p.ends_with("/oauth2/v2.0/token") => {
            let tenant = p
                .trim_start_matches('/')
                .trim_end_matches("/oauth2/v2.0/token");
            let endpoint = format!("{url}{p}");
            token_endpoint(&mut state, key, tenant, &endpoint, &form(&body))
        }
        _ => msi_error(404, "not_found", "no such endpoint in the fake"),
    }
}

/// A managed identity token for the query's `client_id`, if `assigned`.
fn managed(
    state: &mut State,
    key: &[u8],
    query: &BTreeMap<String, String>,
    source: &str,
    assigned: impl Fn(&State, &str) -> bool,
) -> Reply {
    if query.get("resource").map(String::as_str) != Some(RESOURCE) {
        return msi_error(
            400,
            "invalid_resource",
            "AADSTS500011: The resource principal named was not found in the tenant.",
        );
    }
    let Some(client_id) = query.get("client_id").map(|c| c.to_lowercase()) else {
        return msi_error(400, "invalid_request", "Identity not found");
    };
    if !assigned(state, &client_id) || !state.principals.contains_key(&client_id) {
        return msi_error(400, "invalid_request", "Identity not found");
    }
    let (token, lifetime) = state.issue(key, &client_id, source);
    let expires_on = now_secs() + lifetime;
    reply(
        200,
        json!({
            "access_token": token,
            "client_id": client_id,
            "expires_in": lifetime.to_string(),
            "expires_on": expires_on.to_string(),
            "resource": RESOURCE,
            "token_type": "Bearer",
        }),
    )
}

fn token_endpoint(
    state: &mut State,
    key: &[u8],
    tenant: &str,
    endpoint: &str,
    fields: &BTreeMap<String, String>,
) -> Reply {
    let get = |k: &str| fields.get(k).map(String::as_str);
    if !tenant.eq_ignore_ascii_case(&state.tenant) {
        return aadsts(
            400,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if get("grant_type") != Some("client_credentials") {
        return aadsts(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if get("scope") != Some(SCOPE) {
        return aadsts(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        );
    }
    let client_id = get("client_id").unwrap_or_default().to_lowercase();
    if !state.principals.contains_key(&client_id) {
        return aadsts(
            400,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        );
    }
    let source = match (
        get("client_secret"),
        get("client_assertion_type"),
        get("client_assertion"),
    ) {
        (Some(secret), None, None) => {
            if state.secrets.get(&client_id).map(String::as_str) != Some(secret) {
                return aadsts(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
                );
            }
            "secret"
        }
        (None, Some(JWT_BEARER_ASSERTION), Some(assertion)) => {
            if state
                .federated
                .get(&client_id)
                .is_some_and(|tokens| tokens.contains(assertion))
            {
                "federated"
            } else if let Err(reply) = check_certificate(state, &client_id, endpoint, assertion) {
                return reply;
            } else {
                "certificate"
            }
        }
        _ => {
            return aadsts(
                400,
                "invalid_request",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
    };
    let (token, lifetime) = state.issue(key, &client_id, source);
    reply(
        200,
        json!({ "token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token }),
    )
}

/// A certificate client assertion: signature, `x5t`, `aud`, `iss`/`sub`, `exp`.
#[allow(clippy::result_large_err)] // a test fake; the reply is built once per request
fn check_certificate(
    state: &State,
    client_id: &str,
    endpoint: &str,
    assertion: &str,
) -> Result<(), Reply> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let decode = |part: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    let (Some(header), Some(claims), Some(signature)) = (
        parts.first().and_then(|p| decode(p)),
        parts.get(1).and_then(|p| decode(p)),
        parts.get(2).and_then(|p| URL_SAFE_NO_PAD.decode(p).ok()),
    ) else {
        // Neither a JWT we can read nor a registered federated token.
        return Err(aadsts(
            400,
            "invalid_client",
            70021,
            "No matching federated identity record found for presented assertion.",
        ));
    };
    if header.get("x5t").is_none() {
        // A JWT without a certificate thumbprint: a federated token nobody registered.
        return Err(aadsts(
            400,
            "invalid_client",
            70021,
            "No matching federated identity record found for presented assertion.",
        ));
    }
    let invalid_signature = || {
        aadsts(
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation.",
        )
    };
    let Some((thumbprint, public_key)) = state.certificates.get(client_id) else {
        return Err(invalid_signature());
    };
    if parts.len() != 3
        || header["alg"] != "RS256"
        || header["x5t"].as_str() != Some(&URL_SAFE_NO_PAD.encode(thumbprint))
    {
        return Err(invalid_signature());
    }
    let signed = format!("{}.{}", parts[0], parts[1]);
    if UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(signed.as_bytes(), &signature)
        .is_err()
    {
        return Err(invalid_signature());
    }
    if claims["aud"].as_str() != Some(endpoint)
        || claims["iss"].as_str().map(str::to_lowercase).as_deref() != Some(client_id)
        || claims["sub"].as_str().map(str::to_lowercase).as_deref() != Some(client_id)
    {
        return Err(aadsts(
            401,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter, or its audience is not this token endpoint.",
        ));
    }
    let now = now_secs();
    match claims["exp"].as_u64() {
        Some(exp) if exp > now && exp <= now + 3600 => Ok(()),
        _ => Err(aadsts(
            401,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.",
        )),
    }
}

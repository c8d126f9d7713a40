//! Local fake Google servers (feature `fake`, for tests only) that check what Google checks:
//! the metadata header; the JWT assertion's signature against the key's public key, its `aud`
//! and `exp`; the STS token-exchange request; on IAM Credentials the bearer token, its scope,
//! the target service account and the caller's right to impersonate it; on Cloud SQL Admin the
//! bearer token, the caller's Cloud SQL Client role and the instance, and it signs ephemeral
//! client certificates for RSA public keys with its client CA. One plain-HTTP server on
//! 127.0.0.1 serves every endpoint; `/tokeninfo` (as Google's) lets a database-side verifier
//! check a login token.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use super::{CLOUD_PLATFORM, InstanceName, SQLSERVICE_LOGIN};

/// The test key every service account created by [`FakeGoogle::key_file`] signs with.
pub const TEST_KEY: &str = include_str!("../../testdata/test-only-rsa-key.pem");
/// Another key, registered to no account: assertions it signs must be refused.
pub const OTHER_TEST_KEY: &str = include_str!("../../testdata/test-only-rsa-key-2.pem");

/// A token the fake issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The service account email (or federated principal) it stands for.
    pub principal: String,
    pub scopes: Vec<String>,
    pub expires_at: SystemTime,
}

#[derive(Default)]
struct State {
    /// Service accounts that exist.
    accounts: BTreeSet<String>,
    /// The account whose JWTs verify with the test key's public key.
    keys: BTreeMap<String, Vec<u8>>,
    /// (caller, target): the caller holds Token Creator on the target.
    may_impersonate: BTreeSet<(String, String)>,
    /// Principals holding Cloud SQL Client.
    sql_clients: BTreeSet<String>,
    metadata_account: Option<String>,
    /// (audience, subject token, principal) accepted by STS.
    federation: Option<(String, String, String)>,
    instances: BTreeMap<(String, String), Value>,
    /// Signs ephemeral client certificates, as Cloud SQL's per-instance client CA does.
    client_ca: Option<Arc<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>>>,
    /// How long ephemeral certificates live (capped by the login token's expiry).
    cert_lifetime: Option<Duration>,
    tokens: HashMap<String, Issued>,
    lifetime: Option<Duration>,
    /// What was asked, by kind (`metadata`, `oauth`, `sts`, `impersonate:<account>`, …).
    counts: BTreeMap<String, u32>,
    serial: u64,
    /// Delay before answering `generateAccessToken`, to widen races in tests.
    delay: Duration,
    /// Called with (principal, token, scopes) for every token issued, before it is returned.
    on_issue: Option<IssueHook>,
}

/// See [`FakeGoogle::on_issue`].
pub type IssueHook = Arc<dyn Fn(&str, &str, &[String]) + Send + Sync>;

/// The fake; stops serving when dropped.
pub struct FakeGoogle {
    url: String,
    state: Arc<Mutex<State>>,
    server: tokio::task::AbortHandle,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for FakeGoogle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGoogle")
            .field("url", &self.url)
            .finish()
    }
}

impl FakeGoogle {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start() -> FakeGoogle {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let state = Arc::new(Mutex::new(State {
            client_ca: Some(Arc::new(client_ca())),
            ..State::default()
        }));
        let shared = (url.clone(), state.clone());
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (url, state) = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (url, state) = (url.clone(), state.clone());
                        async move { Ok::<_, Infallible>(answer(&url, &state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        })
        .abort_handle();
        FakeGoogle { url, state, server }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The variables that point a [`super::Gcp`] at this fake (the metadata server included).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "GCE_METADATA_HOST".into(),
                self.url.trim_start_matches("http://").into(),
            ),
            (
                "DBWARD_GCP_IAM_CREDENTIALS_ENDPOINT".into(),
                self.url.clone(),
            ),
            ("DBWARD_GCP_SQLADMIN_ENDPOINT".into(), self.url.clone()),
        ]
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Creates the service account `email`.
    pub fn add_account(&self, email: &str) {
        self.state().accounts.insert(email.to_owned());
    }

    /// Creates `email` with a key ([`TEST_KEY`]) and returns its key file, whose `token_uri`
    /// is this fake.
    pub fn key_file(&self, email: &str) -> String {
        self.key_file_signed_with(email, TEST_KEY, true)
    }

    /// A key file for `email` holding `pem`; `register` makes the fake know its public key.
    pub fn key_file_signed_with(&self, email: &str, pem: &str, register: bool) -> String {
        let mut state = self.state();
        state.accounts.insert(email.to_owned());
        if register {
            state.keys.insert(email.to_owned(), public_key(pem));
        }
        json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": email,
            "client_id": "100000000000000000000",
            "token_uri": format!("{}/token", self.url),
        })
        .to_string()
    }

    /// Attaches `email` to the "VM": the metadata server hands out its tokens.
    pub fn attach_to_metadata(&self, email: &str) {
        let mut state = self.state();
        state.accounts.insert(email.to_owned());
        state.metadata_account = Some(email.to_owned());
    }

    /// Makes STS accept `subject_token` for `audience`, as the federated `principal`; returns
    /// an `external_account` file reading the subject token from `token_file`, impersonating
    /// `service_account` when given.
    pub fn federate(
        &self,
        audience: &str,
        subject_token: &str,
        principal: &str,
        token_file: &str,
        service_account: Option<&str>,
    ) -> String {
        self.state().federation = Some((audience.into(), subject_token.into(), principal.into()));
        let mut file = json!({
            "type": "external_account",
            "audience": audience,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", self.url),
            "credential_source": { "file": token_file, "format": { "type": "text" } },
        });
        if let Some(account) = service_account {
            file["service_account_impersonation_url"] = format!(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{account}:generateAccessToken"
            )
            .into();
        }
        file.to_string()
    }

    /// Grants `caller` Token Creator on `target`.
    pub fn allow_impersonation(&self, caller: &str, target: &str) {
        self.state()
            .may_impersonate
            .insert((caller.to_owned(), target.to_owned()));
    }

    /// Calls `hook(principal, token, scopes)` for every token issued, before the fake answers
    /// with it: a test database learns the token this way (e.g. `ALTER ROLE … PASSWORD`). The
    /// hook runs while the fake is locked: it must not call the fake.
    pub fn on_issue(&self, hook: impl Fn(&str, &str, &[String]) + Send + Sync + 'static) {
        self.state().on_issue = Some(Arc::new(hook));
    }

    /// Takes Token Creator on `target` away from `caller`.
    pub fn revoke_impersonation(&self, caller: &str, target: &str) {
        self.state()
            .may_impersonate
            .remove(&(caller.to_owned(), target.to_owned()));
    }

    /// Grants `caller` Cloud SQL Client.
    pub fn allow_sql_client(&self, caller: &str) {
        self.state().sql_clients.insert(caller.to_owned());
    }

    /// Creates an instance whose `connectSettings` answer is `settings` (the API's JSON).
    pub fn add_instance(&self, name: &InstanceName, settings: Value) {
        self.state()
            .instances
            .insert((name.project.clone(), name.instance.clone()), settings);
    }

    /// Deletes an instance: its lookups answer 404 from now on.
    pub fn remove_instance(&self, name: &InstanceName) {
        self.state()
            .instances
            .remove(&(name.project.clone(), name.instance.clone()));
    }

    /// The CA that signs the ephemeral client certificates (PEM): a database that requires
    /// client certificates trusts it (`ssl_ca_file`).
    pub fn client_ca_pem(&self) -> String {
        self.state()
            .client_ca
            .as_ref()
            .map(|ca| ca.pem())
            .unwrap_or_default()
    }

    /// Caps the lifetime of ephemeral client certificates issued from now on (an hour, and
    /// never beyond the login token's expiry, otherwise).
    pub fn set_cert_lifetime(&self, lifetime: Duration) {
        self.state().cert_lifetime = Some(lifetime);
    }

    /// Caps the lifetime of every token issued from now on (Google's is an hour).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().lifetime = Some(lifetime);
    }

    /// Delays `generateAccessToken` answers.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// How many requests of `kind` were served successfully.
    pub fn count(&self, kind: &str) -> u32 {
        self.state().counts.get(kind).copied().unwrap_or(0)
    }

    /// What the fake knows of a token it issued.
    pub fn token_info(&self, token: &str) -> Option<Issued> {
        self.state().tokens.get(token).cloned()
    }
}

/// A fresh client CA (ECDSA P-256; Cloud SQL's are RSA, which rcgen cannot generate with
/// ring, and the relay does not care which).
fn client_ca() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).expect("empty names are valid");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fake Cloud SQL client CA");
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    rcgen::CertifiedIssuer::self_signed(params, key).expect("a self-signed CA")
}

/// A client certificate for the RSA public key `public_pem`, signed by `ca`, valid until
/// `expires`; `None` if the key is not an RSA `PUBLIC KEY` PEM.
fn sign_client_cert(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    public_pem: &str,
    subject: &str,
    expires: SystemTime,
) -> Option<String> {
    let key = rcgen::SubjectPublicKeyInfo::from_pem(public_pem).ok()?;
    let rsa = [
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_RSA_SHA384,
        &rcgen::PKCS_RSA_SHA512,
    ];
    if !rsa.contains(&rcgen::PublicKeyData::algorithm(&key)) {
        return None;
    }
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).ok()?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, subject);
    params.not_before = time::OffsetDateTime::now_utc() - Duration::from_secs(60);
    params.not_after = time::OffsetDateTime::from(expires);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.signed_by(&key, ca).ok().map(|cert| cert.pem())
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn public_key(pem: &str) -> Vec<u8> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).expect("a PKCS#8 PEM key");
    let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("an RSA key");
    pair.public_key().as_ref().to_vec()
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

/// Google API error shape.
fn api_error(status: u16, name: &str, message: &str) -> Reply {
    reply(
        status,
        json!({ "error": { "code": status, "message": message, "status": name } }),
    )
}

/// OAuth / STS error shape.
fn oauth_error(error: &str, description: &str) -> Reply {
    reply(
        400,
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
    /// Issues a token for `principal`, valid `lifetime` (capped by the configured one).
    fn issue(
        &mut self,
        principal: &str,
        scopes: Vec<String>,
        lifetime: Duration,
    ) -> (String, Duration) {
        let lifetime = self.lifetime.map_or(lifetime, |cap| cap.min(lifetime));
        self.serial += 1;
        let token = format!(
            "ya29.fake-{}-{}",
            self.serial,
            URL_SAFE_NO_PAD.encode(principal)
        );
        if let Some(hook) = &self.on_issue {
            hook(principal, &token, &scopes);
        }
        self.tokens.insert(
            token.clone(),
            Issued {
                principal: principal.to_owned(),
                scopes,
                expires_at: SystemTime::now() + lifetime,
            },
        );
        (token, lifetime)
    }

    fn count(&mut self, kind: String) {
        *self.counts.entry(kind).or_default() += 1;
    }

    /// The principal of a valid bearer token carrying one of `scopes`, or the error reply.
    #[allow(clippy::result_large_err)] // a test fake; the reply is built once per request
    fn caller(&self, authorization: Option<&str>, scopes: &[&str]) -> Result<String, Reply> {
        let unauthenticated = || {
            api_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            )
        };
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(unauthenticated)?;
        let issued = self.tokens.get(token).ok_or_else(unauthenticated)?;
        if issued.expires_at <= SystemTime::now() {
            return Err(unauthenticated());
        }
        if !issued.scopes.iter().any(|s| scopes.contains(&s.as_str())) {
            return Err(api_error(
                403,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
            ));
        }
        Ok(issued.principal.clone())
    }
}

async fn answer(url: &str, state: &Mutex<State>, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return api_error(400, "INVALID_ARGUMENT", "unreadable body");
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let method = parts.method.as_str();
    if path == "/v1/token" || path.contains(":generateAccessToken") {
        let delay = lock(state).delay;
        tokio::time::sleep(delay).await;
    }
    let mut state = lock(state);
    match (method, path.as_str()) {
        ("GET", "/computeMetadata/v1/instance/service-accounts/default/token") => {
            if header("metadata-flavor") != Some("Google") {
                return reply(403, json!("Missing Metadata-Flavor:Google header."));
            }
            let Some(account) = state.metadata_account.clone() else {
                return reply(404, json!("no service account attached to this instance"));
            };
            let scopes = form(query.as_bytes())
                .get("scopes")
                .map(|s| s.split(',').map(str::to_owned).collect())
                .unwrap_or_else(|| vec![CLOUD_PLATFORM.to_owned()]);
            let (token, lifetime) = state.issue(&account, scopes, Duration::from_secs(3599));
            state.count("metadata".into());
            reply(
                200,
                json!({ "access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer" }),
            )
        }
        ("POST", "/token") => oauth(url, &mut state, &form(&body)),
        ("POST", "/v1/token") => sts(&mut state, &form(&body)),
        ("GET", "/tokeninfo") => {
            let fields = form(query.as_bytes());
            match fields.get("access_token").and_then(|t| state.tokens.get(t)) {
                Some(issued) if issued.expires_at > SystemTime::now() => {
                    let expires_in = issued
                        .expires_at
                        .duration_since(SystemTime::now())
                        .map_or(0, |d| d.as_secs());
                    reply(
                        200,
                        json!({
                            "email": issued.principal,
                            "scope": issued.scopes.join(" "),
                            "expires_in": expires_in.to_string(),
                        }),
                    )
                }
                _ => oauth_error("invalid_token", "Invalid Value"),
            }
        }
        ("POST", p)
            if p.starts_with("/v1/projects/-/serviceAccounts/")
                && p.ends_with(":generateAccessToken") =>
        {
            let target =
                &p["/v1/projects/-/serviceAccounts/".len()..p.len() - ":generateAccessToken".len()];
            generate_access_token(&mut state, header("authorization"), target, &body)
        }
        (_, p) if p.starts_with("/sql/v1beta4/projects/") => {
            sql_admin(&mut state, header("authorization"), method, p, &body)
        }
        _ => api_error(404, "NOT_FOUND", "no such endpoint in the fake"),
    }
}

/// The jwt-bearer grant: the assertion must verify with the key of its `iss`, name this
/// endpoint as `aud`, be unexpired and live at most an hour.
fn oauth(url: &str, state: &mut State, fields: &BTreeMap<String, String>) -> Reply {
    if fields.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error("unsupported_grant_type", "Invalid grant_type");
    }
    let Some(assertion) = fields.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    let decode = |part: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    let (Some(header), Some(claims), Some(signature)) = (
        parts.first().and_then(|p| decode(p)),
        parts.get(1).and_then(|p| decode(p)),
        parts.get(2).and_then(|p| URL_SAFE_NO_PAD.decode(p).ok()),
    ) else {
        return oauth_error("invalid_grant", "Invalid JWT: malformed");
    };
    if parts.len() != 3 || header["alg"] != "RS256" {
        return oauth_error("invalid_grant", "Invalid JWT: alg must be RS256");
    }
    let issuer = claims["iss"].as_str().unwrap_or_default().to_owned();
    let Some(key) = state.keys.get(&issuer) else {
        return oauth_error("invalid_grant", "Invalid JWT Signature.");
    };
    let signed = format!("{}.{}", parts[0], parts[1]);
    if UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
        .verify(signed.as_bytes(), &signature)
        .is_err()
    {
        return oauth_error("invalid_grant", "Invalid JWT Signature.");
    }
    if claims["aud"].as_str() != Some(&format!("{url}/token")) {
        return oauth_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe (aud)",
        );
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
        return oauth_error("invalid_grant", "Invalid JWT: iat and exp are required");
    };
    let now = now_secs();
    if exp <= now || iat > now + 60 || exp.saturating_sub(iat) > 3600 {
        return oauth_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    let scopes: Vec<String> = claims["scope"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if scopes.is_empty() {
        return oauth_error(
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    let (token, lifetime) = state.issue(&issuer, scopes, Duration::from_secs(3599));
    state.count("oauth".into());
    reply(
        200,
        json!({ "access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer" }),
    )
}

/// The STS token exchange for workload identity federation.
fn sts(state: &mut State, fields: &BTreeMap<String, String>) -> Reply {
    let get = |k: &str| fields.get(k).map(String::as_str);
    let Some((audience, subject, principal)) = state.federation.clone() else {
        return oauth_error(
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid.",
        );
    };
    if get("grant_type") != Some("urn:ietf:params:oauth:grant-type:token-exchange")
        || get("requested_token_type") != Some("urn:ietf:params:oauth:token-type:access_token")
        || get("subject_token_type") != Some("urn:ietf:params:oauth:token-type:jwt")
        || get("scope") != Some(CLOUD_PLATFORM)
    {
        return oauth_error("invalid_request", "Invalid token exchange request.");
    }
    if get("audience") != Some(audience.as_str()) {
        return oauth_error(
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid.",
        );
    }
    if get("subject_token") != Some(subject.as_str()) {
        return oauth_error("invalid_grant", "The subject token could not be verified.");
    }
    let (token, lifetime) = state.issue(
        &principal,
        vec![CLOUD_PLATFORM.into()],
        Duration::from_secs(3599),
    );
    state.count("sts".into());
    reply(
        200,
        json!({
            "access_token": token,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs(),
        }),
    )
}

fn generate_access_token(
    state: &mut State,
    authorization: Option<&str>,
    target: &str,
    body: &[u8],
) -> Reply {
    let caller = match state.caller(authorization, &[CLOUD_PLATFORM]) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    if !state.accounts.contains(target) {
        return api_error(
            404,
            "NOT_FOUND",
            &format!("Not found; Gaia id not found for email {target}"),
        );
    }
    if !state.may_impersonate.contains(&(caller, target.to_owned())) {
        return api_error(
            403,
            "PERMISSION_DENIED",
            "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
        );
    }
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    let scopes: Vec<String> = request["scope"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if scopes.is_empty() {
        return api_error(400, "INVALID_ARGUMENT", "Scope required.");
    }
    let lifetime = match request["lifetime"].as_str() {
        None => Duration::from_secs(3600),
        Some(text) => match text.strip_suffix('s').and_then(|n| n.parse::<u64>().ok()) {
            Some(secs) if (1..=3600).contains(&secs) => Duration::from_secs(secs),
            _ => {
                return api_error(
                    400,
                    "INVALID_ARGUMENT",
                    "The lifetime must be between 1s and 3600s.",
                );
            }
        },
    };
    let (token, lifetime) = state.issue(target, scopes, lifetime);
    state.count(format!("impersonate:{target}"));
    let expire = time::OffsetDateTime::from(SystemTime::now() + lifetime)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    reply(200, json!({ "accessToken": token, "expireTime": expire }))
}

fn sql_admin(
    state: &mut State,
    authorization: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Reply {
    let caller = match state.caller(
        authorization,
        &[
            CLOUD_PLATFORM,
            "https://www.googleapis.com/auth/sqlservice.admin",
        ],
    ) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    let rest = &path["/sql/v1beta4/projects/".len()..];
    let Some((project, rest)) = rest.split_once("/instances/") else {
        return api_error(404, "NOT_FOUND", "no such endpoint in the fake");
    };
    let (instance, call) = if let Some(instance) = rest.strip_suffix("/connectSettings") {
        (instance, "connectSettings")
    } else if let Some(instance) = rest.strip_suffix(":generateEphemeralCert") {
        (instance, "generateEphemeralCert")
    } else {
        return api_error(404, "NOT_FOUND", "no such endpoint in the fake");
    };
    if !state.sql_clients.contains(&caller) {
        return api_error(
            403,
            "PERMISSION_DENIED",
            "The client is not authorized to make this request.",
        );
    }
    let Some(settings) = state
        .instances
        .get(&(project.to_owned(), instance.to_owned()))
        .cloned()
    else {
        return api_error(404, "NOT_FOUND", "The Cloud SQL instance does not exist.");
    };
    match (method, call) {
        ("GET", "connectSettings") => {
            state.count(format!("connectSettings:{project}:{instance}"));
            reply(200, settings)
        }
        ("POST", "generateEphemeralCert") => {
            let request: Value = serde_json::from_slice(body).unwrap_or_default();
            let public_key = request["public_key"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let lifetime = state.cert_lifetime.unwrap_or(Duration::from_secs(3600));
            let mut expires = SystemTime::now() + lifetime;
            let mut subject = caller.clone();
            if let Some(login) = request["access_token"].as_str() {
                match state.tokens.get(login) {
                    Some(issued)
                        if issued.scopes.iter().any(|s| s == SQLSERVICE_LOGIN)
                            && issued.expires_at > SystemTime::now() =>
                    {
                        expires = expires.min(issued.expires_at);
                        subject = issued.principal.clone();
                    }
                    _ => {
                        return api_error(
                            400,
                            "INVALID_ARGUMENT",
                            "Invalid request: access_token is invalid.",
                        );
                    }
                }
            }
            let Some(ca) = state.client_ca.clone() else {
                return api_error(500, "INTERNAL", "the fake has no client CA");
            };
            let Some(cert) = sign_client_cert(&ca, &public_key, &subject, expires) else {
                return api_error(
                    400,
                    "INVALID_ARGUMENT",
                    "Invalid request: public_key must be a PEM-encoded RSA public key.",
                );
            };
            state.count(format!("generateEphemeralCert:{project}:{instance}"));
            let expire = time::OffsetDateTime::from(expires)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            reply(
                200,
                json!({ "ephemeralCert": { "kind": "sql#sslCert", "cert": cert, "expirationTime": expire } }),
            )
        }
        _ => api_error(405, "METHOD_NOT_ALLOWED", "wrong method"),
    }
}

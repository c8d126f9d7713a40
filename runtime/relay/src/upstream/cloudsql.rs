//! Google Cloud SQL upstreams with IAM database authentication.
//!
//! The password is an OAuth access token with the `sqlservice.login` scope for the database
//! user's service account (Cloud SQL names an IAM user by the account's email without
//! `.gserviceaccount.com`). The relay gets it by impersonating that account with its own
//! ambient Google credentials (`dbward_cloud::gcp`), and sends it in a PasswordMessage when the
//! server asks for a cleartext password.
//!
//! - **Tokens** are cached per database user in a [`TokenCache`], refreshed ahead of expiry in
//!   the background and shared by every session: no HTTP on the session path in steady state.
//!   A token the database refused is invalidated, never used again, and the client's FATAL
//!   says what to check.
//! - **Where and whom to trust.** With `host` and `ca-file` in the manifest, the relay dials
//!   `host` and verifies the chain against `ca-file`. Otherwise Cloud SQL Admin
//!   `connectSettings` gives what is missing (the address of the manifest's `ip-type` —
//!   public IP by default, private IP, or the PSC DNS name, never another type silently — and
//!   the server CA); its answer is cached and refreshed in the background every
//!   [`SETTINGS_REFRESH`].
//! - **The certificate must name the instance**: its SAN dNSName when `connectSettings` gives
//!   one, else the CN `project:instance` ([`crate::tls::cloudsql_upstream`]). The dialled
//!   address is never compared with the certificate; verification is never skipped.
//!
//! The Google client is created on the first session (it needs the runtime), from the
//! variables read when the config was loaded ([`GcpEnv`]). Tokens never reach a log or error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dbward_cloud::cache::{FetchFuture, Token};
use dbward_cloud::gcp::{
    ClientKey, ConnectSettings, Gcp, GcpEnv, GcpError, InstanceName, IpType, Policy,
    service_account_email,
};
use dbward_cloud::{Secret, TokenCache};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::sync::OnceCell;

use super::UpstreamError;
use crate::protocol::backend;
use crate::tls::{TlsError, UpstreamTls, cloudsql_upstream, roots_from_pem};

/// How old a cached `connectSettings` answer may grow before it is refreshed in the
/// background (the server CA rotates rarely, with weeks of overlap).
pub const SETTINGS_REFRESH: Duration = Duration::from_secs(10 * 60);

/// Where to dial and how to verify, for one connection.
#[derive(Debug, Clone)]
pub struct Route {
    pub address: String,
    pub server_name: ServerName<'static>,
    pub tls: Arc<UpstreamTls>,
}

/// One Cloud SQL database of a loaded config.
#[derive(Debug)]
pub struct CloudSqlAuth {
    instance: InstanceName,
    port: u16,
    /// The manifest's `host`, when given.
    host: Option<String>,
    /// Which address of the instance to dial when there is no `host` (never another one).
    ip_type: IpType,
    /// The manifest's `ca-file`, when given.
    ca: Option<RootCertStore>,
    /// With both `host` and `ca-file`: the fixed route, no lookup.
    fixed: Option<Route>,
    env: GcpEnv,
    client: Mutex<Option<Client>>,
    settings: Mutex<Option<Resolved>>,
    /// Serializes `connectSettings` calls, so a cold burst looks the instance up once.
    lookup: tokio::sync::Mutex<()>,
    /// Per service account: the TLS that presents its current ephemeral certificate, built
    /// once per certificate (and per `connectSettings` answer), shared by its sessions.
    with_cert: Mutex<HashMap<String, CertRoute>>,
}

#[derive(Debug, Clone)]
struct Client {
    gcp: Gcp,
    logins: TokenCache<String, GcpError>,
    /// Ephemeral client certificates per service account: the PEM (in [`Token::secret`],
    /// which keeps it out of `Debug`), issued by `generateEphemeralCert` with that account's
    /// login token and expiring no later than it. Refreshed in the background like the
    /// tokens, after them (see [`cert_policy`]).
    certs: TokenCache<String, GcpError>,
    /// The RSA key every certificate certifies, generated on the first certificate fetch.
    key: Arc<OnceCell<Arc<ClientKey>>>,
}

#[derive(Debug, Clone)]
struct Resolved {
    /// Without a client certificate.
    route: Route,
    /// What a route with a client certificate is built from.
    roots: RootCertStore,
    dns_name: Option<String>,
    fetched: Instant,
    refreshing: bool,
}

/// A route presenting `cert` (the PEM it was built from), for the answer fetched at
/// `settings`.
#[derive(Debug, Clone)]
struct CertRoute {
    cert: Secret,
    settings: Instant,
    route: Route,
}

impl CloudSqlAuth {
    /// `instance` is the connection name; `host` is the manifest's host (absent when the
    /// compiler wrote the instance name in its place).
    pub fn new(
        instance: &str,
        (host, ip_type): (Option<String>, IpType),
        port: u16,
        ca: Option<RootCertStore>,
        env: GcpEnv,
    ) -> Result<CloudSqlAuth, String> {
        let instance = InstanceName::parse(instance).map_err(|e| e.to_string())?;
        let fixed = match (&host, &ca) {
            (Some(host), Some(ca)) => Some(route(
                host,
                port,
                ca.clone(),
                instance.certificate_name(),
                None,
            )?),
            _ => None,
        };
        Ok(CloudSqlAuth {
            instance,
            port,
            host,
            ip_type,
            ca,
            fixed,
            env,
            client: Mutex::new(None),
            settings: Mutex::new(None),
            lookup: tokio::sync::Mutex::new(()),
            with_cert: Mutex::new(HashMap::new()),
        })
    }

    /// The same database reading `env` (and with empty caches).
    pub fn with_env(&self, env: GcpEnv) -> CloudSqlAuth {
        CloudSqlAuth {
            instance: self.instance.clone(),
            port: self.port,
            host: self.host.clone(),
            ip_type: self.ip_type,
            ca: self.ca.clone(),
            fixed: self.fixed.clone(),
            env,
            client: Mutex::new(None),
            settings: Mutex::new(None),
            lookup: tokio::sync::Mutex::new(()),
            with_cert: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self) -> Result<Client, UpstreamError> {
        let mut client = lock(&self.client);
        if let Some(client) = &*client {
            return Ok(client.clone());
        }
        let handle = tokio::runtime::Handle::current();
        let gcp = Gcp::new(self.env.clone(), handle.clone())
            .map_err(|e| UpstreamError::Auth(format!("cannot set up the Google client: {e}")))?;
        let policy = self.env.token_policy();
        let logins = gcp.login_tokens(handle.clone(), policy);
        let key = Arc::new(OnceCell::new());
        let certs = {
            let (gcp, logins, key) = (gcp.clone(), logins.clone(), key.clone());
            let instance = self.instance.clone();
            TokenCache::new(handle, cert_policy(policy), move |email: String| {
                let (gcp, logins, key) = (gcp.clone(), logins.clone(), key.clone());
                let instance = instance.clone();
                Box::pin(
                    async move { ephemeral_cert(&gcp, &logins, &key, &instance, &email).await },
                ) as FetchFuture<GcpError>
            })
        };
        let made = Client {
            gcp,
            logins,
            certs,
            key,
        };
        *client = Some(made.clone());
        Ok(made)
    }

    /// Where to dial and how to verify for a session of database user `user` (`None` for a
    /// cancel request): fixed by the manifest, or from the cached `connectSettings` (looked up
    /// on a cold cache, refreshed in the background when old). A looked-up instance is always
    /// given an ephemeral client certificate, as Google's connectors do (instances may require
    /// one); the manifest's fixed route makes no Cloud SQL Admin call and presents none.
    pub async fn route(self: &Arc<Self>, user: Option<&str>) -> Result<Route, UpstreamError> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        self.settings_route().await?;
        let Some(user) = user else {
            // A cancel: any account's certificate will do (the server checks none for a
            // CancelRequest beyond the handshake).
            let resolved = lock(&self.settings).clone();
            let with_cert = lock(&self.with_cert);
            return Ok(match resolved {
                Some(resolved) => with_cert
                    .values()
                    .find(|c| c.settings == resolved.fetched)
                    .map_or(resolved.route, |c| c.route.clone()),
                None => return Err(not_resolved(&self.instance)),
            });
        };
        let client = self.client()?;
        let email = service_account_email(user);
        let cert = client.certs.get(&email).await.map_err(|e| {
            UpstreamError::Auth(format!(
                "cannot get a Cloud SQL client certificate for {email} \
                 (generateEphemeralCert): {e}"
            ))
        })?;
        // The steady state: this certificate's TLS for the current answer is built already.
        let fetched = lock(&self.settings).as_ref().map(|r| r.fetched);
        if let Some(known) = lock(&self.with_cert).get(&email)
            && known.cert == cert.secret
            && Some(known.settings) == fetched
        {
            return Ok(known.route.clone());
        }
        let Some(resolved) = lock(&self.settings).clone() else {
            return Err(not_resolved(&self.instance));
        };
        // A new certificate (or a new answer): build its TLS once, for every session after.
        let key = client
            .key
            .get()
            .ok_or_else(|| UpstreamError::Auth("the client key is missing".into()))?;
        let route = self.route_with_cert(&resolved, &cert.secret, key)?;
        lock(&self.with_cert).insert(
            email,
            CertRoute {
                cert: cert.secret,
                settings: resolved.fetched,
                route: route.clone(),
            },
        );
        Ok(route)
    }

    /// `resolved`'s route, presenting the certificate `cert` (PEM) for `key`.
    fn route_with_cert(
        &self,
        resolved: &Resolved,
        cert: &Secret,
        key: &ClientKey,
    ) -> Result<Route, UpstreamError> {
        let identity = key
            .identity(cert.expose(), &self.instance)
            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
        let tls = cloudsql_upstream(
            resolved.roots.clone(),
            self.instance.certificate_name(),
            resolved.dns_name.clone(),
            Some(identity),
        )
        .map_err(|e| UpstreamError::Auth(e.to_string()))?;
        Ok(Route {
            address: resolved.route.address.clone(),
            server_name: resolved.route.server_name.clone(),
            tls: Arc::new(tls),
        })
    }

    /// The looked-up route without a client certificate.
    async fn settings_route(self: &Arc<Self>) -> Result<Route, UpstreamError> {
        let refresh = {
            let mut settings = lock(&self.settings);
            match &mut *settings {
                Some(resolved) => {
                    let stale =
                        resolved.fetched.elapsed() >= SETTINGS_REFRESH && !resolved.refreshing;
                    if stale {
                        resolved.refreshing = true;
                    }
                    Some((resolved.route.clone(), stale))
                }
                None => None,
            }
        };
        match refresh {
            Some((route, stale)) => {
                if stale {
                    let this = Arc::clone(self);
                    tokio::spawn(async move {
                        if let Err(error) = this.look_up().await {
                            tracing::warn!(
                                instance = %this.instance,
                                %error,
                                "refreshing the Cloud SQL instance's connect settings failed; \
                                 the previous answer stays in use"
                            );
                            if let Some(resolved) = &mut *lock(&this.settings) {
                                resolved.refreshing = false;
                            }
                        }
                    });
                }
                Ok(route)
            }
            None => {
                let _one = self.lookup.lock().await;
                if let Some(resolved) = &*lock(&self.settings) {
                    return Ok(resolved.route.clone());
                }
                self.look_up().await
            }
        }
    }

    /// Calls `connectSettings` and caches the route it gives.
    async fn look_up(&self) -> Result<Route, UpstreamError> {
        let client = self.client()?;
        let settings = client
            .gcp
            .connect_settings(&self.instance)
            .await
            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
        let (route, roots) = self.route_from(&settings)?;
        *lock(&self.settings) = Some(Resolved {
            route: route.clone(),
            roots,
            dns_name: settings.dns_name.clone(),
            fetched: Instant::now(),
            refreshing: false,
        });
        Ok(route)
    }

    fn route_from(
        &self,
        settings: &ConnectSettings,
    ) -> Result<(Route, RootCertStore), UpstreamError> {
        let host = match &self.host {
            Some(host) => host.clone(),
            None => settings
                .dial(self.ip_type, &self.instance)
                .map_err(|e| UpstreamError::Auth(e.to_string()))?,
        };
        let roots = match &self.ca {
            Some(ca) => ca.clone(),
            None => roots_from_pem(
                &settings.server_ca_pem,
                &format!("the server CA of Cloud SQL instance {}", self.instance),
            )
            .map_err(|e| UpstreamError::Auth(e.to_string()))?,
        };
        let route = route(
            &host,
            self.port,
            roots.clone(),
            self.instance.certificate_name(),
            settings.dns_name.clone(),
        )
        .map_err(UpstreamError::Auth)?;
        Ok((route, roots))
    }

    /// The login token of database user `user`, from the cache. Taken before dialling, so a
    /// cold cache never holds a server backend open while IAM answers.
    pub(super) async fn login(&self, user: &str) -> Result<Secret, UpstreamError> {
        let client = self.client()?;
        let email = service_account_email(user);
        let token = client.logins.get(&email).await.map_err(|e| {
            UpstreamError::Auth(format!(
                "cannot get a Cloud SQL login token for {email}: {e}"
            ))
        })?;
        Ok(token.secret)
    }

    /// The reply to authentication request `code` for database user `user`: a PasswordMessage
    /// with `token` (from [`CloudSqlAuth::login`]) when the server asks for a cleartext
    /// password.
    pub(super) fn respond(
        &self,
        code: u32,
        user: &str,
        token: &Secret,
    ) -> Result<Vec<u8>, UpstreamError> {
        if code != 3 {
            return Err(UpstreamError::Auth(format!(
                "Cloud SQL instance {} asked for authentication method {code} instead of a \
                 cleartext password; {user:?} must be a Cloud SQL IAM user (type \
                 CLOUD_IAM_SERVICE_ACCOUNT), created with `gcloud sql users create {user} \
                 --instance={} --type=cloud_iam_service_account`",
                self.instance, self.instance.instance
            )));
        }
        Ok(password_message(token.expose()))
    }

    /// The database refused `token` for `user` with the ErrorResponse `frame` (SQLSTATE class
    /// 28): the token is invalidated, the refusal logged, and the frame returned for the
    /// client with a hint saying what to check.
    pub(super) fn rejected(&self, user: &str, token: &Secret, frame: &[u8]) -> Vec<u8> {
        let email = service_account_email(user);
        if let Some(client) = &*lock(&self.client) {
            client.logins.invalidate(&email, token);
        }
        let body = frame.get(5..).unwrap_or_default();
        let hint = format!(
            "The database rejected the Cloud SQL IAM login token for {email}; the token is \
             dropped and the next session gets a new one. Check that {email} holds \
             roles/cloudsql.instanceUser in project {project}, that the relay's service account \
             holds roles/iam.serviceAccountTokenCreator on {email}, and that \"{user}\" exists on \
             instance {instance} as a Cloud SQL IAM user.",
            project = self.instance.project,
            instance = self.instance,
        );
        tracing::warn!(
            instance = %self.instance,
            user,
            code = backend::error_code(body).as_deref().unwrap_or("-"),
            message = %backend::error_message(body),
            "the database rejected the Cloud SQL IAM token. {hint}"
        );
        backend::with_hint(body, &hint)
    }
}

/// A route to `host:port` verified against `roots` for the instance.
fn route(
    host: &str,
    port: u16,
    roots: RootCertStore,
    instance_cn: String,
    dns_name: Option<String>,
) -> Result<Route, String> {
    let tls = cloudsql_upstream(roots, instance_cn, dns_name, None)
        .map_err(|e: TlsError| e.to_string())?;
    // The name only matters as SNI: the verifier checks the instance, not this.
    let server_name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host:?} is not a valid host name: {e}"))?,
    };
    let address = match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    };
    Ok(Route {
        address,
        server_name,
        tls: Arc::new(tls),
    })
}

/// How client certificates are refreshed: like the login tokens they ride with, but half as
/// far ahead of expiry, so that the token's successor is there when the certificate's is
/// fetched (a certificate issued with the old token would expire with it).
fn cert_policy(tokens: Policy) -> Policy {
    Policy {
        refresh_before: tokens.refresh_before / 2,
        ..tokens
    }
}

/// One `generateEphemeralCert` for `email`: with its current login token (so the certificate
/// never outlives it) and the relay's key (generated on first use, off the runtime's threads).
async fn ephemeral_cert(
    gcp: &Gcp,
    logins: &TokenCache<String, GcpError>,
    key: &OnceCell<Arc<ClientKey>>,
    instance: &InstanceName,
    email: &str,
) -> Result<Token, GcpError> {
    let login = logins.get(&email.to_owned()).await?;
    let key = key
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(ClientKey::generate)
                .await
                .map_err(|e| GcpError::Invalid(format!("cannot make an RSA client key: {e}")))?
                .map(Arc::new)
        })
        .await?;
    gcp.ephemeral_cert_for(instance, key, &login).await
}

/// The connect settings were dropped between the lookup and their use (a reload): rare.
fn not_resolved(instance: &InstanceName) -> UpstreamError {
    UpstreamError::Auth(format!(
        "the connect settings of Cloud SQL instance {instance} are not known yet; try again"
    ))
}

fn password_message(password: &str) -> Vec<u8> {
    let len = 4 + password.len() + 1;
    let mut out = Vec::with_capacity(1 + len);
    out.push(b'p');
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(password.as_bytes());
    out.push(0);
    out
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! How the live phase logs in to a cloud database as its admin user: the way the relay does.
//!
//! Self-hosted databases need no password (the relay's client certificate, mapped by
//! `pg_ident.conf`; see the parent module). Cloud databases take a token from the shared
//! cloud-credentials layer ([`dbward_cloud`]) as the password, over TLS verified as the relay
//! verifies (the manifest's `ca-file`, else the public roots, for the frozen config's
//! `tls.server_name`):
//! - **RDS / Aurora**: the admin user's RDS IAM token, SigV4-signed with the AWS credentials of
//!   the machine running dbward, found in the AWS SDKs' order with the relay's variables and
//!   endpoint overrides ([`dbward_cloud::aws`]), at AWS's time as learned from their answers.
//!   The caller needs `rds-db:connect` on the admin user: `iam/live/aws/<cloud>.json`.
//! - **Azure**: the Entra ID token of the admin user's principal (its `client-id`, or the
//!   cloud's `relay-identity`), from the sources in the Azure SDKs' order
//!   ([`dbward_cloud::azure`]): this machine must hold that identity. setup.sql runs in
//!   `postgres` first (Entra principals are created there), then in the db-names.
//!
//! - **Cloud SQL**: the login token of the admin user's service account, by impersonation with
//!   this machine's Google credentials ([`dbward_cloud::gcp`]), over TLS verified by the
//!   instance's name ([`InstanceCertCheck`], the relay's check), whatever address is dialled.
//!   With `host` and `ca-file` in the manifest (the relay's fixed route) that is all. Without
//!   either, dbward reaches the instance as the relay does: Cloud SQL Admin `connectSettings`
//!   gives what the manifest leaves out (the address of its `ip-type`, never another type; the
//!   server CA; the DNS name the certificate must carry), and the connection presents an
//!   ephemeral client certificate (`generateEphemeralCert`, for a fresh [`ClientKey`], with the
//!   admin user's login token so it expires with it). This is looked up once per instance and
//!   admin user per run, with the token, not per database name. The caller needs Token Creator
//!   on the admin user's service account and, for the lookup, `cloudsql.instances.get` and
//!   `cloudsql.instances.connect` (Cloud SQL Client): `iam/live/gcp/<cloud>.json`.
//!
//! **A token is fetched once per admin user per run** (every database name and retry reuses it
//! while it has [`MIN_LEFT`] left) and lives only in a [`Secret`]: never printed, never in an
//! error. The same holds for the client key and certificate of a looked-up Cloud SQL instance.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dbward_cloud::aws::{AwsCredentials, AwsEnv};
use dbward_cloud::azure::{AzureEnv, Entra};
use dbward_cloud::gcp::{
    ClientKey, Gcp, GcpEnv, GcpError, InstanceCertCheck, InstanceName, IpType, SQLSERVICE_LOGIN,
    service_account_email,
};
use dbward_cloud::{Secret, Token};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::LiveError;
use crate::model::{CloudKind, Database, DatabaseKind, Model};

/// A token with less than this left is fetched again rather than sent.
pub const MIN_LEFT: Duration = Duration::from_secs(2 * 60);

/// How the admin user of one target logs in.
#[derive(Clone)]
pub(super) enum Login {
    /// Mutual TLS with the relay's client certificate: no password.
    Certificate,
    /// A cloud token as the password.
    Token(Arc<TokenLogin>),
}

/// A cloud admin user's token source, and its token once fetched.
pub(super) struct TokenLogin {
    source: Source,
    /// The token of this run (and, for a looked-up Cloud SQL instance, its route), reused by
    /// every connection while it has [`MIN_LEFT`] left.
    token: tokio::sync::Mutex<Option<(Token, Option<Route>)>>,
}

/// Where a looked-up Cloud SQL instance is dialled, and the TLS that verifies it by its name and
/// presents this run's ephemeral client certificate.
#[derive(Clone)]
pub(super) struct Route {
    pub(super) host: String,
    pub(super) tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// When the client certificate expires (no later than the login token).
    expires_at: SystemTime,
}

/// What one connection sends: the password, and where to dial when it is not the target's
/// `host` (a looked-up Cloud SQL instance).
pub(super) struct Credentials {
    pub(super) password: Option<Secret>,
    pub(super) route: Option<Route>,
}

enum Source {
    Rds {
        /// `host:port`, as RDS expects it in the token.
        endpoint: String,
        region: String,
        /// `arn:aws:rds-db:REGION:ACCOUNT:dbuser:RESOURCE_ID/USER`, for messages.
        arn: String,
        /// The IAM file that grants it.
        policy: String,
        credentials: Arc<AwsCredentials>,
    },
    Azure {
        tenant: String,
        client_id: String,
        object_id: Option<String>,
        env: AzureEnv,
    },
    CloudSql {
        instance: InstanceName,
        /// The admin user's service account, impersonated for its login token.
        account: String,
        env: GcpEnv,
        /// `iam/live/gcp/<cloud>.json`, for messages.
        bindings: String,
        /// Without `host` or `ca-file` in the manifest: what to look up (`None`: the fixed
        /// route).
        lookup: Option<Lookup>,
    },
}

/// A Cloud SQL instance reached the relay's way, by looking it up.
struct Lookup {
    /// The manifest's `host`, dialled instead of the looked-up address when given.
    host: Option<String>,
    /// The manifest's `ca-file`, trusted instead of the looked-up server CA when given.
    ca: Option<rustls::RootCertStore>,
    /// Which of the instance's addresses to dial (the manifest's `ip-type`).
    ip_type: IpType,
}

/// The credential sources of one run, read from this process's environment once and shared by
/// every target (so AWS credentials are looked up once, whatever the number of databases).
pub(super) struct Sources {
    aws: Option<Arc<AwsCredentials>>,
    azure: Option<AzureEnv>,
    gcp: Option<GcpEnv>,
    /// Cloud SQL logins by instance, admin user and route: databases of one instance share
    /// one token, one lookup and one client certificate.
    cloudsql: HashMap<String, Arc<TokenLogin>>,
}

impl Sources {
    pub(super) fn from_process() -> Sources {
        Sources {
            aws: None,
            azure: None,
            gcp: None,
            cloudsql: HashMap::new(),
        }
    }

    fn gcp(&mut self) -> GcpEnv {
        self.gcp.get_or_insert_with(GcpEnv::from_process).clone()
    }

    fn aws(&mut self) -> Arc<AwsCredentials> {
        self.aws
            .get_or_insert_with(|| Arc::new(AwsCredentials::new(AwsEnv::from_process())))
            .clone()
    }

    fn azure(&mut self) -> AzureEnv {
        self.azure
            .get_or_insert_with(AzureEnv::from_process)
            .clone()
    }
}

/// How a cloud database's admin user logs in and how its server is verified; `Ok(Err(warning))`
/// when the live phase cannot reach this kind of database yet.
pub(super) fn cloud(
    model: &Model,
    db: &Database,
    frozen: &dbward_frozen::Database,
    admin: &str,
    sources: &mut Sources,
) -> Result<Result<(Login, tokio_postgres_rustls::MakeRustlsConnect), String>, LiveError> {
    let name = &db.name;
    let source = match (&db.kind, &frozen.auth) {
        (
            DatabaseKind::AwsRds {
                cloud, resource_id, ..
            },
            dbward_frozen::UpstreamAuth::RdsIam { region },
        ) => {
            let account = match model.clouds.get(cloud).map(|c| &c.kind) {
                Some(CloudKind::Aws { account, .. }) => account.as_str(),
                _ => "ACCOUNT",
            };
            Source::Rds {
                endpoint: format!("{}:{}", frozen.host, frozen.port),
                region: region.clone(),
                arn: format!("arn:aws:rds-db:{region}:{account}:dbuser:{resource_id}/{admin}"),
                policy: format!("iam/live/aws/{cloud}.json"),
                credentials: sources.aws(),
            }
        }
        (
            DatabaseKind::AzurePostgres { .. },
            dbward_frozen::UpstreamAuth::AzureEntra { tenant, principals },
        ) => {
            let Some(principal) = principals.get(admin) else {
                return Ok(Err(format!(
                    "database {name}: its admin user {admin} has no Entra principal, so dbward \
                     cannot log in as it; give it one (`admin-user {admin} client-id=\"…\" \
                     object-id=\"…\"`, or the cloud's relay-identity) or run its setup.sql as \
                     the server's administrator"
                )));
            };
            Source::Azure {
                tenant: tenant.clone(),
                client_id: principal.client_id.clone(),
                object_id: principal.object_id.clone(),
                env: sources.azure(),
            }
        }
        (
            DatabaseKind::CloudSql { cloud, .. },
            dbward_frozen::UpstreamAuth::CloudSqlIam {
                instance, ip_type, ..
            },
        ) => {
            let parsed = InstanceName::parse(instance).map_err(|e| LiveError::Tls {
                what: format!("the instance name of database {name}"),
                reason: e.to_string(),
            })?;
            // The compiler writes the instance name in place of a `host` the manifest leaves
            // out, as the relay reads it.
            let host = (frozen.host != *instance).then(|| frozen.host.clone());
            let ip_type = match ip_type {
                dbward_frozen::CloudSqlIpType::Public => IpType::Public,
                dbward_frozen::CloudSqlIpType::Private => IpType::Private,
                dbward_frozen::CloudSqlIpType::Psc => IpType::Psc,
            };
            let key = format!(
                "{instance}\0{admin}\0{host:?}\0{:?}\0{}",
                frozen.tls.ca,
                ip_type.name()
            );
            let (login, tls) = match (&host, &frozen.tls.ca) {
                // The relay's fixed route: no Cloud SQL Admin lookup, no client certificate.
                (Some(_), Some(ca)) => (None, instance_tls(name, ca, parsed.certificate_name())?),
                // Looked up when connecting; this TLS is never used.
                (_, ca) => (
                    Some(Lookup {
                        host: host.clone(),
                        ca: match ca {
                            Some(ca) => Some(read_roots(name, ca)?),
                            None => None,
                        },
                        ip_type,
                    }),
                    server_tls(name, None)?,
                ),
            };
            let env = sources.gcp();
            let login = sources
                .cloudsql
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(TokenLogin {
                        source: Source::CloudSql {
                            instance: parsed,
                            account: service_account_email(admin),
                            env,
                            bindings: format!("iam/live/gcp/{cloud}.json"),
                            lookup: login,
                        },
                        token: tokio::sync::Mutex::new(None),
                    })
                })
                .clone();
            return Ok(Ok((Login::Token(login), tls)));
        }
        _ => {
            return Err(LiveError::Missing(format!(
                "a frozen auth method matching the manifest for database {name}"
            )));
        }
    };
    let tls = server_tls(name, frozen.tls.ca.as_deref())?;
    Ok(Ok((
        Login::Token(Arc::new(TokenLogin {
            source,
            token: tokio::sync::Mutex::new(None),
        })),
        tls,
    )))
}

/// A client config that trusts the database's `ca-file` (read from this machine, at the path
/// the relay reads it) or, without one, the public roots; it presents no client certificate.
fn server_tls(
    database: &str,
    ca: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, LiveError> {
    let roots = match ca {
        Some(path) => read_roots(database, path)?,
        None => rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    let config = builder()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A Cloud SQL instance's TLS, verified as the relay verifies it: the chain leads to `ca` and the
/// certificate names the instance (`project:instance`), whatever the address dialled.
fn instance_tls(
    database: &str,
    ca: &Path,
    instance_cn: String,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, LiveError> {
    let check = InstanceCertCheck::new(
        read_roots(database, ca)?,
        Arc::new(rustls::crypto::ring::default_provider()),
        instance_cn,
        None,
    )
    .map_err(|e| LiveError::Tls {
        what: format!("the ca-file {} of database {database}", ca.display()),
        reason: e.to_string(),
    })?;
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(check))
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A client config builder with ring and the safe protocol versions.
fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, LiveError>
{
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| LiveError::Tls {
            what: "the TLS versions".into(),
            reason: e.to_string(),
        })
}

/// The certificates of the PEM bundle at `path`, which must hold at least one.
fn read_roots(database: &str, path: &Path) -> Result<rustls::RootCertStore, LiveError> {
    let what = || format!("the ca-file {} of database {database}", path.display());
    let pem = std::fs::read(path).map_err(|e| LiveError::Tls {
        what: what(),
        reason: format!(
            "{e}; dbward verifies the server as the relay does, so copy the bundle to this \
             machine at that path"
        ),
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| LiveError::Tls {
            what: what(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| LiveError::Tls {
            what: what(),
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(LiveError::Tls {
            what: what(),
            reason: "it holds no PEM certificate".into(),
        });
    }
    Ok(roots)
}

impl Login {
    /// The password to send (`None` for a client certificate, else the admin user's token)
    /// and, for a looked-up Cloud SQL instance, where to dial and how: fetched on first use in
    /// this run. The error names the user, the database's address (or instance) and what to
    /// check.
    pub(super) async fn credentials(
        &self,
        user: &str,
        host: &str,
        port: u16,
    ) -> Result<Credentials, String> {
        let Login::Token(login) = self else {
            return Ok(Credentials {
                password: None,
                route: None,
            });
        };
        let mut cached = login.token.lock().await;
        let now = login.now();
        if let Some((token, route)) = &*cached
            && token.valid_for(MIN_LEFT, now)
            && route
                .as_ref()
                .is_none_or(|r| now.checked_add(MIN_LEFT).is_some_and(|t| t < r.expires_at))
        {
            return Ok(Credentials {
                password: Some(token.secret.clone()),
                route: route.clone(),
            });
        }
        let (token, route) = login.fetch(user).await.map_err(|e| match &login.source {
            Source::CloudSql {
                instance,
                lookup: Some(lookup),
                ..
            } => format!(
                "cannot reach Cloud SQL instance {instance} ({}) as the admin user {user}: {e}",
                match &lookup.host {
                    Some(host) => format!("host {host}:{port}"),
                    None => format!("its {} address, looked up", lookup.ip_type.name()),
                }
            ),
            _ => {
                format!("cannot get a login token for the admin user {user} of {host}:{port}: {e}")
            }
        })?;
        let credentials = Credentials {
            password: Some(token.secret.clone()),
            route: route.clone(),
        };
        *cached = Some((token, route));
        Ok(credentials)
    }

    /// The database name setup.sql must run in before the others, whatever the db-names: on
    /// Azure, Entra principals are created in `postgres` only.
    pub(super) fn first_name(&self) -> Option<&'static str> {
        match self {
            Login::Token(login) if matches!(login.source, Source::Azure { .. }) => Some("postgres"),
            _ => None,
        }
    }

    /// What to check when connecting as `user` failed, for the error message.
    pub(super) fn check(&self, user: &str) -> String {
        match self {
            Login::Certificate => "check that the server runs with the files of `dbward apply` \
                 (pg_hba.conf, pg_ident.conf, its certificate), that the admin user exists, and \
                 that this machine can reach it"
                .to_owned(),
            Login::Token(login) => match &login.source {
                Source::Rds {
                    arn,
                    policy,
                    credentials,
                    ..
                } => {
                    let source = credentials
                        .cached_source()
                        .map(|s| format!(" (from {s})"))
                        .unwrap_or_default();
                    format!(
                        "check that the AWS credentials of this machine{source} may \
                         `rds-db:connect` on {arn} (the policy {policy} that `dbward apply` \
                         writes), that {user} is granted rds_iam on the server, that this \
                         machine's clock is right ({}), that the server's certificate is valid \
                         for its name, and that this machine can reach it",
                        clock(credentials.clock().offset_ms())
                    )
                }
                Source::Azure {
                    client_id,
                    object_id,
                    ..
                } => format!(
                    "check that this machine holds the Entra identity {client_id} of {user} \
                     (AZURE_CLIENT_ID with AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH, \
                     workload identity, or a managed identity assigned to this host), that the \
                     server maps it to {user} (the Entra administrator, or \
                     pgaadauth_create_principal_with_oid with object id {}), that the server's \
                     certificate is valid for its name, and that this machine can reach it",
                    object_id.as_deref().unwrap_or("its object id")
                ),
                Source::CloudSql {
                    instance,
                    account,
                    bindings,
                    lookup,
                    ..
                } => format!(
                    "check that the Google credentials of this machine \
                     (GOOGLE_APPLICATION_CREDENTIALS or the metadata server) may impersonate \
                     {account} (roles/iam.serviceAccountTokenCreator on it){}, see {bindings}), \
                     that {user} is a Cloud SQL IAM user of instance {instance}, that the \
                     server's certificate names the instance, and that this machine can reach \
                     {}",
                    match lookup {
                        Some(_) => " and may look the instance up and get client certificates \
                                    for it (cloudsql.instances.get and cloudsql.instances.connect, \
                                    roles/cloudsql.client in its project"
                            .to_owned(),
                        None => String::new(),
                    },
                    match lookup {
                        Some(Lookup {
                            host: None,
                            ip_type,
                            ..
                        }) => format!("the instance's {} address", ip_type.name()),
                        _ => "it".to_owned(),
                    }
                ),
            },
        }
    }
}

impl TokenLogin {
    /// Now, by the clock tokens are checked against (AWS's, as learned, for RDS).
    fn now(&self) -> SystemTime {
        match &self.source {
            Source::Rds { credentials, .. } => credentials.clock().now(),
            Source::Azure { .. } | Source::CloudSql { .. } => SystemTime::now(),
        }
    }

    /// A new token for `user` and, for a looked-up Cloud SQL instance, its route.
    async fn fetch(&self, user: &str) -> Result<(Token, Option<Route>), String> {
        let token = match &self.source {
            Source::Rds {
                endpoint,
                region,
                credentials,
                ..
            } => {
                let got = credentials.get().await.map_err(|e| {
                    format!(
                        "no AWS credentials found for RDS IAM authentication; give this machine \
                         credentials in one of these ways: {}",
                        e.tried.join("; ")
                    )
                })?;
                let now = credentials.clock().now();
                let token = dbward_cloud::aws::rds::auth_token(endpoint, region, user, &got, now)?;
                let mut expires_at = now + dbward_cloud::aws::rds::TOKEN_VALIDITY;
                if let Some(expiry) = got.expiry {
                    expires_at = expires_at.min(expiry);
                }
                Token {
                    secret: Secret::new(token),
                    expires_at,
                }
            }
            Source::Azure {
                tenant,
                client_id,
                env,
                ..
            } => {
                let entra = Entra::new(env.clone(), tenant).map_err(|e| e.to_string())?;
                entra.token(client_id).await.map_err(|e| e.to_string())?
            }
            Source::CloudSql {
                instance,
                account,
                env,
                bindings,
                lookup,
            } => {
                // One client for the token, the lookup and the certificate: this machine's own
                // Google token is fetched once.
                let gcp = Gcp::new(env.clone(), tokio::runtime::Handle::current())
                    .map_err(|e| e.to_string())?;
                let token = gcp
                    .generate_access_token(account, &[SQLSERVICE_LOGIN])
                    .await
                    .map_err(|e| google(e, bindings))?;
                let route = match lookup {
                    Some(lookup) => Some(look_up(&gcp, instance, lookup, &token, bindings).await?),
                    None => None,
                };
                return Ok((token, route));
            }
        };
        Ok((token, None))
    }
}

/// `instance` looked up as the relay looks it up: `connectSettings` for the address of the
/// manifest's `ip-type` (unless the manifest gives `host`) and the server CA (unless it gives
/// `ca-file`), then an ephemeral client certificate for a fresh key, bound to `login`.
async fn look_up(
    gcp: &Gcp,
    instance: &InstanceName,
    lookup: &Lookup,
    login: &Token,
    bindings: &str,
) -> Result<Route, String> {
    let settings = gcp
        .connect_settings(instance)
        .await
        .map_err(|e| google(e, bindings))?;
    let host = match &lookup.host {
        Some(host) => host.clone(),
        None => settings
            .dial(lookup.ip_type, instance)
            .map_err(|e| e.to_string())?,
    };
    let roots = match &lookup.ca {
        Some(ca) => ca.clone(),
        None => dbward_cloud::gcp::verify::roots_from_pem(
            settings.server_ca_pem.as_bytes(),
            &format!("the server CA Cloud SQL Admin gives for instance {instance}"),
        )?,
    };
    // An RSA key takes a moment to make: off the runtime's threads.
    let key = tokio::task::spawn_blocking(ClientKey::generate)
        .await
        .map_err(|e| format!("cannot make an RSA client key: {e}"))?
        .map_err(|e| e.to_string())?;
    let cert = gcp
        .ephemeral_cert_for(instance, &key, login)
        .await
        .map_err(|e| {
            format!(
                "cannot get a client certificate for instance {instance} \
                 (generateEphemeralCert): {}",
                google(e, bindings)
            )
        })?;
    let identity = key
        .identity(cert.secret.expose(), instance)
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = InstanceCertCheck::new(
        roots,
        provider.clone(),
        instance.certificate_name(),
        settings.dns_name.clone(),
    )
    .map_err(|e| format!("the server CA of instance {instance} cannot be used: {e}"))?;
    let config =
        dbward_cloud::gcp::verify::client_config(provider, Arc::new(check), Some(identity))?;
    Ok(Route {
        host,
        tls: tokio_postgres_rustls::MakeRustlsConnect::new(config),
        expires_at: cert.expires_at,
    })
}

/// A Google error as whoever runs `--live` reads it: the errors that speak of the relay's
/// identity (the library's wording, made for the relay) speak of this machine's, and say what
/// to grant, where the bindings file says it.
fn google(error: GcpError, bindings: &str) -> String {
    match error {
        GcpError::NoCredentials { tried } => format!(
            "no Google credentials found on this machine; give it credentials in one of these \
             ways: {}",
            tried.join("; ")
        ),
        GcpError::SourceRefused {
            source_name,
            detail,
        } => format!("Google refused this machine's own credentials ({source_name}): {detail}"),
        GcpError::ImpersonationDenied { account, detail } => format!(
            "the Google identity of this machine may not impersonate {account}: grant whoever \
             runs --live roles/iam.serviceAccountTokenCreator on that service account (see \
             {bindings}; IAM Credentials answered 403: {detail})"
        ),
        GcpError::InstanceDenied { instance, detail } => format!(
            "the Google identity of this machine may not use Cloud SQL instance {instance}: \
             grant whoever runs --live cloudsql.instances.get and cloudsql.instances.connect on \
             it (roles/cloudsql.client in its project, see {bindings}), and check that the \
             instance exists (Cloud SQL Admin answered 403: {detail})"
        ),
        other => other.to_string(),
    }
}

/// What this machine knows of its clock against AWS's, for messages (the relay's wording speaks
/// of the relay).
fn clock(offset_ms: Option<i64>) -> String {
    match offset_ms {
        Some(offset) => format!(
            "it is {} s {} AWS's, learned from the Date of AWS's answers, and tokens are signed \
             with AWS's time",
            offset.unsigned_abs() / 1000,
            if offset >= 0 { "behind" } else { "ahead of" }
        ),
        None => "no offset from AWS's clock was learned (credentials from environment variables \
                 involve no AWS answer), so tokens are signed with this machine's clock, which \
                 must be within 5 minutes of the real time"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_missing_here_says_what_to_do() {
        let Err(error) = server_tls("billing", Some(Path::new("/nonexistent/rds-bundle.pem")))
        else {
            panic!("a missing ca-file was accepted");
        };
        let message = error.to_string();
        assert!(
            message.contains("the ca-file /nonexistent/rds-bundle.pem of database billing")
                && message.contains("copy the bundle to this machine at that path"),
            "{message}"
        );
        // Without ca-file: the public roots, as the relay.
        assert!(server_tls("billing", None).is_ok());
    }

    #[test]
    fn google_errors_speak_of_whoever_runs_live_and_what_to_grant() {
        let denied = google(
            GcpError::InstanceDenied {
                instance: "p:r:i".into(),
                detail: "PERMISSION_DENIED".into(),
            },
            "iam/live/gcp/g.json",
        );
        for part in [
            "may not use Cloud SQL instance p:r:i",
            "cloudsql.instances.get",
            "cloudsql.instances.connect",
            "roles/cloudsql.client",
            "iam/live/gcp/g.json",
            "403",
        ] {
            assert!(denied.contains(part), "{part:?} missing from {denied}");
        }
        let impersonation = google(
            GcpError::ImpersonationDenied {
                account: "a@p.iam.gserviceaccount.com".into(),
                detail: "x".into(),
            },
            "iam/live/gcp/g.json",
        );
        for message in [&denied, &impersonation] {
            assert!(!message.contains("relay"), "{message}");
        }
        assert!(impersonation.contains("roles/iam.serviceAccountTokenCreator"));
    }

    #[test]
    fn the_clock_is_described_from_this_machines_side() {
        assert!(clock(Some(600_000)).starts_with("it is 600 s behind AWS's"));
        assert!(clock(Some(-2_000)).starts_with("it is 2 s ahead of AWS's"));
        assert!(clock(None).contains("this machine's clock"));
    }
}

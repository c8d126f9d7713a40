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
//! - **Cloud SQL** with `host` and `ca-file` in the manifest (the relay's fixed route): the
//!   login token of the admin user's service account, by impersonation with this machine's
//!   Google credentials ([`dbward_cloud::gcp`]), over TLS verified by the instance's name
//!   ([`InstanceCertCheck`], the relay's check). Without them the relay looks the instance up and
//!   presents an ephemeral client certificate; that route is not shared yet, and such databases
//!   are skipped with a warning.
//!
//! **A token is fetched once per admin user per run** (every database name and retry reuses it
//! while it has [`MIN_LEFT`] left) and lives only in a [`Secret`]: never printed, never in an
//! error.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dbward_cloud::aws::{AwsCredentials, AwsEnv};
use dbward_cloud::azure::{AzureEnv, Entra};
use dbward_cloud::gcp::{
    Gcp, GcpEnv, InstanceCertCheck, InstanceName, SQLSERVICE_LOGIN, service_account_email,
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
    /// The token of this run, reused by every connection while it has [`MIN_LEFT`] left.
    token: tokio::sync::Mutex<Option<Token>>,
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
        /// `project:region:instance`, for messages.
        instance: String,
        /// The admin user's service account, impersonated for its login token.
        account: String,
        env: GcpEnv,
    },
}

/// The credential sources of one run, read from this process's environment once and shared by
/// every target (so AWS credentials are looked up once, whatever the number of databases).
pub(super) struct Sources {
    aws: Option<Arc<AwsCredentials>>,
    azure: Option<AzureEnv>,
    gcp: Option<GcpEnv>,
}

impl Sources {
    pub(super) fn from_process() -> Sources {
        Sources {
            aws: None,
            azure: None,
            gcp: None,
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
            DatabaseKind::CloudSql { .. },
            dbward_frozen::UpstreamAuth::CloudSqlIam { instance, .. },
        ) => {
            // The relay's fixed route: `host` and `ca-file` in the manifest, no Cloud SQL Admin
            // lookup and no client certificate. The lookup route is not shared yet.
            let (Some(ca), false) = (&frozen.tls.ca, frozen.host == *instance) else {
                return Ok(Err(format!(
                    "database {name}: live changes reach Cloud SQL only with `host` and \
                     `ca-file` in the manifest for now (no instance lookup); add them, or run \
                     its setup.sql as the admin user {admin}"
                )));
            };
            let parsed = InstanceName::parse(instance).map_err(|e| LiveError::Tls {
                what: format!("the instance name of database {name}"),
                reason: e.to_string(),
            })?;
            let tls = instance_tls(name, ca, parsed.certificate_name())?;
            return Ok(Ok((
                Login::Token(Arc::new(TokenLogin {
                    source: Source::CloudSql {
                        instance: instance.clone(),
                        account: service_account_email(admin),
                        env: sources.gcp(),
                    },
                    token: tokio::sync::Mutex::new(None),
                })),
                tls,
            )));
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
    /// The password to send: `None` for a client certificate, else the admin user's token
    /// (fetched on first use in this run). The error names the user, the database's address
    /// and the credential sources tried.
    pub(super) async fn password(
        &self,
        user: &str,
        host: &str,
        port: u16,
    ) -> Result<Option<Secret>, String> {
        let Login::Token(login) = self else {
            return Ok(None);
        };
        let mut cached = login.token.lock().await;
        if let Some(token) = &*cached
            && token.valid_for(MIN_LEFT, login.now())
        {
            return Ok(Some(token.secret.clone()));
        }
        let token = login.fetch(user).await.map_err(|e| {
            format!("cannot get a login token for the admin user {user} of {host}:{port}: {e}")
        })?;
        let secret = token.secret.clone();
        *cached = Some(token);
        Ok(Some(secret))
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
                    instance, account, ..
                } => format!(
                    "check that the Google credentials of this machine \
                     (GOOGLE_APPLICATION_CREDENTIALS or the metadata server) may impersonate \
                     {account} (roles/iam.serviceAccountTokenCreator on it, see \
                     iam/live/gcp/), that {user} is a Cloud SQL IAM user of instance \
                     {instance}, that the server's certificate names the instance, and that \
                     this machine can reach it"
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

    /// A new token for `user`.
    async fn fetch(&self, user: &str) -> Result<Token, String> {
        match &self.source {
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
                Ok(Token {
                    secret: Secret::new(token),
                    expires_at,
                })
            }
            Source::Azure {
                tenant,
                client_id,
                env,
                ..
            } => {
                let entra = Entra::new(env.clone(), tenant).map_err(|e| e.to_string())?;
                entra.token(client_id).await.map_err(|e| e.to_string())
            }
            Source::CloudSql { account, env, .. } => {
                let gcp = Gcp::new(env.clone(), tokio::runtime::Handle::current())
                    .map_err(|e| e.to_string())?;
                gcp.generate_access_token(account, &[SQLSERVICE_LOGIN])
                    .await
                    .map_err(|e| e.to_string())
            }
        }
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
    fn the_clock_is_described_from_this_machines_side() {
        assert!(clock(Some(600_000)).starts_with("it is 600 s behind AWS's"));
        assert!(clock(Some(-2_000)).starts_with("it is 2 s ahead of AWS's"));
        assert!(clock(None).contains("this machine's clock"));
    }
}

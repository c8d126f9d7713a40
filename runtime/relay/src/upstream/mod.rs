//! Upstream PostgreSQL servers: how to reach each database, and connecting + authenticating.
//!
//! Each way of authenticating is one module. Self-hosted databases use [`mtls`]: the relay's
//! client certificate, mapped by `pg_ident.conf`. Amazon RDS uses [`rds`]: a SigV4 auth token
//! as the password, signed with ambient credentials at AWS's time as learned from the
//! credential endpoints' answers (both in [`dbward_cloud::aws`]). Google Cloud SQL uses
//! [`cloudsql`]: an impersonated IAM login token as the password, over TLS verified against the
//! instance's server CA and name. Azure Database for PostgreSQL uses [`azure`]: an Entra ID token
//! per database user's principal as the password. All share the connect and startup code here. [`handshake`] reads the upstream's startup messages (a pure
//! state machine; [`connect`] does the I/O), so that they can be tested and fuzzed without a
//! server.
//!
//! A database whose frozen `tls.ca` is absent is verified against the Mozilla roots
//! (webpki-roots); RDS certificates chain to Amazon's own CA, so RDS databases need `ca-file`.

pub mod azure;
pub mod cloudsql;
pub mod handshake;
pub mod mtls;
pub mod rds;

use std::io;
use std::path::Path;
use std::sync::Arc;

use dbward_frozen::{Config, Database, UpstreamAuth};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::protocol::backend;
use crate::protocol::frames::FrameReader;
use crate::protocol::startup::{cancel_request, ssl_request};
use crate::protocol::{BackendKey, StartupMessage};
use crate::readahead::ReadAhead;
use crate::tls::{TlsError, UpstreamTls, is_refusal, upstream_client_config};
use handshake::{Handshake, HandshakeError, MAX_STARTUP_MESSAGE, Step};

/// How the relay reaches one database, built once per config load.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// Ready to connect.
    Ready(Arc<Target>),
    /// The config names something this build cannot do; sessions to it are refused with
    /// this reason.
    Unsupported(String),
}

/// An upstream the relay can dial.
#[derive(Debug)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    /// The name its certificate must be valid for (`verify-full`).
    pub server_name: ServerName<'static>,
    /// Trusts the database's CA; presents the relay's client certificate for mutual TLS.
    pub tls: Arc<UpstreamTls>,
    pub auth: UpstreamAuth,
    /// The token signer of an RDS IAM database.
    pub rds: Option<rds::RdsAuth>,
    /// The token source, address and TLS of a Cloud SQL database (which then override
    /// `address`, `server_name` and `tls`).
    pub cloudsql: Option<Arc<cloudsql::CloudSqlAuth>>,
    /// The token source of an Azure Entra ID database.
    pub azure: Option<Arc<azure::AzureAuth>>,
}

impl Upstream {
    /// Builds the target for `database` of a config read from `config_path`; RDS databases
    /// sign with `aws`.
    pub fn build(
        config_path: &Path,
        config: &Config,
        name: &str,
        database: &Database,
        aws: &Arc<dbward_cloud::aws::AwsCredentials>,
        gcp: &dbward_cloud::gcp::GcpEnv,
    ) -> Result<Upstream, TlsError> {
        let resolve = |p: &Path| Config::resolve_path(config_path, p);
        if let UpstreamAuth::CloudSqlIam {
            instance, ip_type, ..
        } = &database.auth
        {
            return Upstream::cloudsql(config_path, name, database, (instance, *ip_type), gcp);
        }
        let address = format!("{}:{}", database.host, database.port);
        let mut rds = None;
        let mut azure = None;
        let identity = match &database.auth {
            UpstreamAuth::Mtls => {
                let Some(identity) = &config.relay.upstream_identity else {
                    return Ok(Upstream::Unsupported(format!(
                        "database {name} uses mutual TLS but the config has no relay upstream \
                         identity; recompile it with `dbward apply`"
                    )));
                };
                Some((resolve(&identity.cert), resolve(&identity.key)))
            }
            UpstreamAuth::RdsIam { region } => {
                rds = Some(rds::RdsAuth::new(
                    address.clone(),
                    region.clone(),
                    aws.clone(),
                ));
                None
            }
            UpstreamAuth::AzureEntra { tenant, principals } => {
                azure = Some(Arc::new(azure::AzureAuth::new(
                    address.clone(),
                    tenant.clone(),
                    principals.clone(),
                    dbward_cloud::azure::AzureEnv::from_process(),
                    dbward_cloud::azure::Policy::default(),
                )));
                None
            }
            other => {
                return Ok(Upstream::Unsupported(format!(
                    "database {name} uses {}, which this relay build does not support yet",
                    auth_name(other)
                )));
            }
        };
        let server_name = ServerName::try_from(database.tls.server_name.clone()).map_err(|e| {
            TlsError::Config(format!(
                "database {name} has an invalid server name {:?}: {e}",
                database.tls.server_name
            ))
        })?;
        let tls = match &database.tls.ca {
            Some(ca) => upstream_client_config(
                &resolve(ca),
                identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )?,
            None if identity.is_none() => crate::tls::public_roots_upstream()?,
            None => {
                return Ok(Upstream::Unsupported(format!(
                    "database {name} uses mutual TLS but names no CA; recompile it with \
                     `dbward apply`"
                )));
            }
        };
        Ok(Upstream::Ready(Arc::new(Target {
            address,
            server_name,
            tls: Arc::new(tls),
            auth: database.auth.clone(),
            rds,
            cloudsql: None,
            azure,
        })))
    }

    /// A Cloud SQL database: the compiler writes the instance name as `host` when the manifest
    /// has none, and `tls.ca` is the manifest's `ca-file`.
    fn cloudsql(
        config_path: &Path,
        name: &str,
        database: &Database,
        (instance, ip_type): (&str, dbward_frozen::CloudSqlIpType),
        gcp: &dbward_cloud::gcp::GcpEnv,
    ) -> Result<Upstream, TlsError> {
        if instance.is_empty() {
            return Ok(Upstream::Unsupported(format!(
                "database {name} is a Cloud SQL database in a config compiled before the relay \
                 learned its instance name; recompile it with `dbward apply`"
            )));
        }
        let host = (database.host != instance).then(|| database.host.clone());
        let ca = match &database.tls.ca {
            Some(ca) => Some(crate::tls::load_roots(&Config::resolve_path(
                config_path,
                ca,
            ))?),
            None => None,
        };
        let ip_type = match ip_type {
            dbward_frozen::CloudSqlIpType::Public => dbward_cloud::gcp::IpType::Public,
            dbward_frozen::CloudSqlIpType::Private => dbward_cloud::gcp::IpType::Private,
            dbward_frozen::CloudSqlIpType::Psc => dbward_cloud::gcp::IpType::Psc,
        };
        let auth = match cloudsql::CloudSqlAuth::new(
            instance,
            (host, ip_type),
            database.port,
            ca,
            gcp.clone(),
        ) {
            Ok(auth) => auth,
            Err(reason) => {
                return Ok(Upstream::Unsupported(format!(
                    "database {name} cannot be reached: {reason}"
                )));
            }
        };
        Ok(Upstream::Ready(Arc::new(Target {
            address: instance.to_owned(),
            server_name: ServerName::try_from("cloudsql.invalid")
                .map_err(|e| TlsError::Config(format!("invalid placeholder server name: {e}")))?,
            tls: Arc::new(crate::tls::public_roots_upstream()?),
            auth: database.auth.clone(),
            rds: None,
            cloudsql: Some(Arc::new(auth)),
            azure: None,
        })))
    }

    /// The same upstream, with Cloud SQL tokens and lookups through `env` instead.
    pub fn with_gcp_env(&self, env: &dbward_cloud::gcp::GcpEnv) -> Upstream {
        match self {
            Upstream::Ready(target) if let Some(sql) = &target.cloudsql => {
                Upstream::Ready(Arc::new(Target {
                    address: target.address.clone(),
                    server_name: target.server_name.clone(),
                    tls: target.tls.clone(),
                    auth: target.auth.clone(),
                    rds: None,
                    cloudsql: Some(Arc::new(sql.with_env(env.clone()))),
                    azure: None,
                }))
            }
            other => other.clone(),
        }
    }

    /// The same upstream, with RDS tokens signed from `aws` instead.
    pub fn with_aws_credentials(&self, aws: &Arc<dbward_cloud::aws::AwsCredentials>) -> Upstream {
        match self {
            Upstream::Ready(target) if target.rds.is_some() => Upstream::Ready(Arc::new(Target {
                address: target.address.clone(),
                server_name: target.server_name.clone(),
                tls: target.tls.clone(),
                auth: target.auth.clone(),
                rds: target.rds.as_ref().map(|r| r.with_credentials(aws.clone())),
                cloudsql: target.cloudsql.clone(),
                azure: target.azure.clone(),
            })),
            other => other.clone(),
        }
    }

    /// The same upstream, with Azure tokens from the variables `env`, refreshed by `policy`.
    pub fn with_azure_env(
        &self,
        env: &dbward_cloud::azure::AzureEnv,
        policy: dbward_cloud::azure::Policy,
    ) -> Upstream {
        match self {
            Upstream::Ready(target) if let Some(azure) = &target.azure => {
                Upstream::Ready(Arc::new(Target {
                    address: target.address.clone(),
                    server_name: target.server_name.clone(),
                    tls: target.tls.clone(),
                    auth: target.auth.clone(),
                    rds: None,
                    cloudsql: None,
                    azure: Some(Arc::new(azure.with_env(env.clone(), policy))),
                }))
            }
            other => other.clone(),
        }
    }
}

fn auth_name(auth: &UpstreamAuth) -> &'static str {
    match auth {
        UpstreamAuth::Mtls => "mutual TLS",
        UpstreamAuth::RdsIam { .. } => "RDS IAM authentication",
        UpstreamAuth::CloudSqlIam { .. } => "Cloud SQL IAM authentication",
        UpstreamAuth::AzureEntra { .. } => "Azure Entra ID authentication",
    }
}

/// Why an upstream session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("the server at {address} does not accept TLS; it must have `ssl = on`")]
    NoTls { address: String },
    #[error(
        "the server at {address} sent data before the TLS handshake (protocol violation); \
         connection aborted"
    )]
    Violation { address: String },
    #[error("TLS with {address} failed: {source}")]
    Tls { address: String, source: io::Error },
    /// The upstream refused the session with an ErrorResponse, relayed to the client as is.
    #[error("the database refused the session: {message}")]
    Refused { frame: Vec<u8>, message: String },
    #[error("{0}")]
    Auth(String),
    #[error("the server at {address} broke the protocol during startup: {reason}")]
    Protocol { address: String, reason: String },
}

/// An authenticated upstream session, ready to relay.
#[derive(Debug)]
pub struct Connected {
    pub stream: TlsStream<ReadAhead<TcpStream>>,
    /// The upstream backend's cancel key (absent if the server sent none).
    pub backend_key: Option<BackendKey>,
    /// ParameterStatus and NoticeResponse messages, in order, for the client.
    pub greeting: Vec<u8>,
    /// The ReadyForQuery message that ended startup.
    pub ready: Vec<u8>,
    /// Bytes the server sent after ReadyForQuery (normally none), for the client.
    pub leftover: Vec<u8>,
}

/// TCP + SSLRequest + TLS to an upstream. The first offer is the fast one (see
/// [`UpstreamTls`]); a server that refuses it is dialled again with every suite.
async fn tls_connect(
    target: &Target,
    user: Option<&str>,
) -> Result<TlsStream<ReadAhead<TcpStream>>, UpstreamError> {
    let route = match &target.cloudsql {
        Some(sql) => sql.route(user).await?,
        None => cloudsql::Route {
            address: target.address.clone(),
            server_name: target.server_name.clone(),
            tls: target.tls.clone(),
        },
    };
    let (config, fast) = route.tls.config();
    match tls_dial(&route, config).await {
        Err(UpstreamError::Tls { source, .. }) if fast && is_refusal(&source) => {
            let stream = tls_dial(&route, route.tls.full()).await?;
            if route.tls.remember_refusal() {
                tracing::warn!(
                    upstream = %route.address,
                    "the upstream refused TLS_AES_128_GCM_SHA256 (the suite every TLS 1.3 \
                     server must offer); using the full list of suites with it from now on"
                );
            }
            Ok(stream)
        }
        other => other,
    }
}

/// One dial: TCP + SSLRequest + TLS with `config`, checking that nothing arrives before the
/// handshake.
async fn tls_dial(
    target: &cloudsql::Route,
    config: &Arc<ClientConfig>,
) -> Result<TlsStream<ReadAhead<TcpStream>>, UpstreamError> {
    let address = || target.address.clone();
    let mut tcp = TcpStream::connect(&target.address)
        .await
        .map_err(|source| UpstreamError::Connect {
            address: address(),
            source,
        })?;
    crate::session::tune_socket(&tcp);
    let tls_error = |source| UpstreamError::Tls {
        address: address(),
        source,
    };
    tcp.write_all(&ssl_request()).await.map_err(tls_error)?;
    // Read into a larger buffer so that any byte sent after the answer is seen: a server (or
    // someone in between) that sends data before the handshake is a CVE-2021-23214-class
    // injection attempt.
    let mut answer = [0u8; 64];
    let n = tcp.read(&mut answer).await.map_err(tls_error)?;
    match &answer[..n] {
        b"S" => {}
        [b'S', ..] => return Err(UpstreamError::Violation { address: address() }),
        _ => return Err(UpstreamError::NoTls { address: address() }),
    }
    TlsConnector::from(config.clone())
        .connect(target.server_name.clone(), ReadAhead::new(tcp))
        .await
        .map_err(tls_error)
}

/// Opens an authenticated session on `target` with the client's (already rewritten) startup
/// parameters. The caller applies the connect timeout.
pub async fn connect(
    target: &Target,
    startup: &StartupMessage,
) -> Result<Connected, UpstreamError> {
    let user = startup.get("user").unwrap_or_default();
    // A Cloud SQL or Azure token is taken before dialling (see `CloudSqlAuth::login`).
    let login = match (&target.cloudsql, &target.azure) {
        (Some(sql), _) => Some(sql.login(user).await?),
        (None, Some(azure)) => Some(azure.login(user).await?),
        (None, None) => None,
    };
    let mut stream = tls_connect(target, Some(user)).await?;
    let protocol = |reason: String| UpstreamError::Protocol {
        address: target.address.clone(),
        reason,
    };
    let io_error = |e: io::Error| protocol(e.to_string());
    stream
        .write_all(&startup.encode())
        .await
        .map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;

    let mut reader = FrameReader::default();
    let mut handshake = Handshake::default();
    // `sent` is the RDS token given to the server, if any; `sent_login` the Cloud SQL one.
    let user = startup.get("user").unwrap_or_default();
    let mut sent = None;
    let mut sent_login = None;
    loop {
        let frame = match reader.next(&mut stream, MAX_STARTUP_MESSAGE).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(protocol("the server closed the connection".into())),
            Err(e) => return Err(protocol(e.to_string())),
        };
        match handshake.on_message(frame) {
            Ok(Step::Continue) => {}
            Ok(Step::Authenticate(code)) => {
                let reply = match &target.auth {
                    UpstreamAuth::Mtls => mtls::respond(code, &target.address)?,
                    UpstreamAuth::RdsIam { .. } if let Some(rds) = &target.rds => {
                        let answer = rds.respond(code, user).await?;
                        sent = Some(answer.token);
                        answer.message
                    }
                    UpstreamAuth::CloudSqlIam { .. }
                        if let (Some(sql), Some(token)) = (&target.cloudsql, &login) =>
                    {
                        sent_login = Some(token);
                        sql.respond(code, user, token)?
                    }
                    UpstreamAuth::AzureEntra { .. }
                        if let (Some(azure), Some(token)) = (&target.azure, &login) =>
                    {
                        sent_login = Some(token);
                        azure.respond(code, user, token)?
                    }
                    other => {
                        return Err(UpstreamError::Auth(format!(
                            "{} is not supported by this relay build",
                            auth_name(other)
                        )));
                    }
                };
                stream.write_all(&reply).await.map_err(io_error)?;
                stream.flush().await.map_err(io_error)?;
            }
            Ok(Step::Ready(greeting)) => {
                return Ok(Connected {
                    stream,
                    backend_key: greeting.backend_key,
                    greeting: greeting.messages,
                    ready: greeting.ready,
                    leftover: reader.leftover().to_vec(),
                });
            }
            Err(HandshakeError::Refused { frame, message }) => {
                // A token the database refused (28P01 invalid_password, 28000): never used
                // again, and the client is told what to check.
                let refused_token = backend::error_code(frame.get(5..).unwrap_or_default())
                    .is_some_and(|code| code.starts_with("28"));
                let frame = match (&target.rds, &sent, &target.cloudsql, &sent_login) {
                    (Some(rds), Some(token), _, _) if refused_token => {
                        rds.rejected(user, token, &frame)
                    }
                    (_, _, Some(sql), Some(token)) if refused_token => {
                        sql.rejected(user, token, &frame)
                    }
                    (_, _, None, Some(token))
                        if refused_token && let Some(azure) = &target.azure =>
                    {
                        azure.rejected(user, token, &frame)
                    }
                    _ => frame,
                };
                return Err(UpstreamError::Refused { frame, message });
            }
            Err(HandshakeError::Protocol(reason)) => return Err(protocol(reason)),
        }
    }
}

/// Sends a CancelRequest for `key` to `target` over a fresh TLS connection (the same TLS as
/// sessions, so the server's pg_hba.conf `hostssl` lines apply), then waits for the server to
/// close the connection, which it does once it has read the request.
pub async fn send_cancel(target: &Target, key: BackendKey) -> Result<(), UpstreamError> {
    let mut stream = tls_connect(target, None).await?;
    let io_error = |source| UpstreamError::Tls {
        address: target.address.clone(),
        source,
    };
    stream
        .write_all(&cancel_request(key))
        .await
        .map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    let mut sink = [0u8; 64];
    while stream.read(&mut sink).await.map_err(io_error)? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A target whose TLS is never reached: these tests end before the handshake.
    fn target(address: String) -> Target {
        Target {
            address,
            server_name: ServerName::try_from("localhost").unwrap(),
            tls: Arc::new(crate::tls::public_roots_upstream().unwrap()),
            auth: UpstreamAuth::Mtls,
            rds: None,
            cloudsql: None,
            azure: None,
        }
    }

    /// Starts a fake server that reads the SSLRequest and answers `answer`; returns what
    /// `tls_connect` made of it.
    async fn check_answer(answer: &'static [u8]) -> UpstreamError {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 8];
            socket.read_exact(&mut request).await.unwrap();
            assert_eq!(request, ssl_request());
            socket.write_all(answer).await.unwrap();
            // Keep the socket open until the client gives up.
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        });
        let error = tls_connect(&target(address), None).await.unwrap_err();
        server.abort();
        error
    }

    #[tokio::test]
    async fn bytes_after_s_before_the_handshake_abort() {
        let error = check_answer(b"S\x16\x03\x03").await;
        assert!(matches!(error, UpstreamError::Violation { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_server_without_tls_is_refused() {
        let error = check_answer(b"N").await;
        assert!(matches!(error, UpstreamError::NoTls { .. }), "{error}");
        assert!(error.to_string().contains("ssl = on"), "{error}");
    }

    #[tokio::test]
    async fn an_unreachable_server_says_where() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = tls_connect(&target(address.clone()), None)
            .await
            .unwrap_err();
        assert!(error.to_string().contains(&address), "{error}");
    }
}

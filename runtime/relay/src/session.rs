//! One client connection, from its first byte to its end:
//! negotiate TLS → identify (certificate, SNI) → authorize (access table) → upstream → relay.
//!
//! **Invariants**
//! - Nothing is dialled upstream before the access check has passed.
//! - Every refusal is a PostgreSQL ErrorResponse that says what was refused and why, a
//!   `session.denied` audit event and a metric; nothing else leaves the relay for it.
//! - The session uses one config snapshot from accept to end; a reload changes nothing under a
//!   running session but whether it may go on: one the new config no longer allows is ended
//!   after the grace ([`crate::revoke`]), as is one whose client certificate expires.
//! - After startup the bytes are relayed as they are; only frame headers (and the SQL text of
//!   Query/Parse messages, when audit asks for it) are looked at.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use dbward_frozen::{Config, NameSet, Provision};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::{StartHandshake, TlsStream};

use crate::audit::{QueryMessage, SessionInfo};
use crate::cancel::CancelTarget;
use crate::metrics::{DenyReason, EndReason, Metrics};
use crate::protocol::backend::{
    self, CONNECTION_FAILURE, FEATURE_NOT_SUPPORTED, IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    IDLE_SESSION_TIMEOUT, INVALID_AUTHORIZATION, OBJECT_IN_USE, PROTOCOL_VIOLATION,
    PROVISION_FAILED, TOO_MANY_CONNECTIONS,
};
use crate::protocol::frames::{FrameWalker, QueryKind, QueryScanner};
use crate::protocol::options::{self, DATABASE_OPTION};
use crate::protocol::startup::PROTOCOL_3_0;
use crate::protocol::{ClientKey, Startup, StartupError, StartupMessage};
use crate::provision::{self, ProvisionError, Provisioning};
use crate::readahead::ReadAhead;
use crate::revoke::{self, LiveSession, Stop};
use crate::state::{Loaded, Shared};
use crate::tls::{ALPN_POSTGRESQL, ClientCert};
use crate::upstream::{self, Target, Upstream, UpstreamError};

/// The client's TLS stream.
type ClientTls = TlsStream<ReadAhead<TcpStream>>;

/// The first byte of a TLS record (handshake): a PostgreSQL 17 client using direct TLS.
const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Relay buffer sizes: small while a session is quiet, growing while a result streams.
const SMALL_BUFFER: usize = 2 * 1024;
const LARGE_BUFFER: usize = 64 * 1024;

/// How long closing one side may take once the other has ended.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection ended during its handshake without a refusal message.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("connection closed by the client")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// Audited with exactly the text the client was told.
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("protocol violation: {0}")]
    Violation(&'static str),
}

/// A refusal: what the client is told, and how it is counted and audited.
#[derive(Debug)]
struct Denial {
    reason: DenyReason,
    code: &'static str,
    message: String,
    hint: Option<String>,
}

impl Denial {
    fn access(reason: DenyReason, message: String, hint: Option<String>) -> Denial {
        Denial {
            reason,
            code: INVALID_AUTHORIZATION,
            message,
            hint,
        }
    }
}

/// What the handshake produced.
enum Negotiated {
    /// A TLS session with its StartupMessage (and any bytes the client sent after it).
    Session {
        tls: Box<ClientTls>,
        startup: StartupMessage,
        leftover: Vec<u8>,
    },
    /// A CancelRequest, plaintext or inside TLS.
    Cancel(ClientKey),
    /// The connection was answered and ended (a refusal already sent).
    Done,
}

/// Socket options for both sides of a session: no Nagle delay (the protocol is request and
/// response; small messages must leave at once), and TCP keepalive, so that a peer that vanished
/// without a FIN (a laptop closed, a NAT entry dropped) ends its session within minutes instead
/// of holding an upstream backend forever. Set on the listening socket, they are inherited by
/// every accepted one.
pub(crate) fn tune_socket(socket: &impl std::os::fd::AsFd) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_tcp_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = socket.set_tcp_keepalive(&keepalive);
}

/// Whether an accepted connection fits under the connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over the limit (the number): the connection is still negotiated, so that its
    /// CancelRequest is served and a session gets a readable "too many connections" error
    /// inside TLS (libpq shows no message sent in reply to its SSLRequest), but it never
    /// reaches an upstream.
    OverLimit(usize),
}

/// Serves one accepted connection to its end. Never panics on client input; every outcome is
/// logged, counted and (for refusals and sessions) audited.
pub async fn handle(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, admission: Admission) {
    let loaded = shared.current();
    let mut info = SessionInfo::new(shared.next_session_id(), peer);
    let limits = &loaded.config.relay.limits;
    let handshake_timeout = Duration::from_millis(limits.handshake_timeout_ms);

    // The handshake and upstream-connect futures are boxed: they are large (TLS state machines,
    // read buffers) and short-lived, and a task keeps room for its largest state for its whole
    // life, so unboxed they would stay allocated in every idle session.
    let negotiated = tokio::time::timeout(
        handshake_timeout,
        Box::pin(negotiate(tcp, &loaded, &shared, &mut info)),
    )
    .await;
    let (tls, startup, leftover) = match negotiated {
        Err(_) => {
            shared.metrics.handshake_failed();
            tracing::debug!(session = info.id, %peer, "handshake timed out");
            return;
        }
        Ok(Err(error)) => {
            shared.metrics.handshake_failed();
            tracing::debug!(session = info.id, %peer, %error, "handshake failed");
            if matches!(
                error,
                HandshakeError::Startup(_) | HandshakeError::Violation(_)
            ) {
                shared
                    .audit
                    .session_denied(&info, DenyReason::Protocol, &error.to_string());
                shared.metrics.session_denied(DenyReason::Protocol);
            }
            return;
        }
        Ok(Ok(Negotiated::Done)) => return,
        Ok(Ok(Negotiated::Cancel(key))) => {
            let timeout = Duration::from_millis(limits.upstream_connect_timeout_ms);
            route_cancel(&shared, &loaded, key, timeout).await;
            return;
        }
        Ok(Ok(Negotiated::Session {
            tls,
            startup,
            leftover,
        })) => (tls, startup, leftover),
    };

    if let Admission::OverLimit(max) = admission {
        let denial = Denial {
            reason: DenyReason::ConnectionLimit,
            code: TOO_MANY_CONNECTIONS,
            message: format!("too many connections to the dbward relay (limit {max})"),
            hint: Some("try again later, or ask the relay's operator to raise the limit".into()),
        };
        return refuse(tls, &shared, &info, denial).await;
    }
    let (target, decided, cert) = match authorize(&loaded, &tls, &startup, &mut info) {
        Ok(decided) => decided,
        Err(denial) => return refuse(tls, &shared, &info, denial).await,
    };
    drop(startup);
    if !shared.audit.admits_new_sessions() {
        let denial = Denial {
            reason: DenyReason::AuditUnavailable,
            code: CONNECTION_FAILURE,
            message: "the relay cannot write its audit log, so it accepts no new sessions".into(),
            hint: Some(
                "tell the relay's operator; sessions resume once the log is writable".into(),
            ),
        };
        return refuse(tls, &shared, &info, denial).await;
    }
    session(tls, decided, cert, leftover, target, &loaded, &shared, info).await;
}

/// Serves a CancelRequest: a key of one of this replica's sessions is cancelled here; a key
/// another listed replica issued is forwarded to it ([`crate::peer`]); any other key is
/// dropped without a word, as PostgreSQL drops it, so that keys cannot be probed.
async fn route_cancel(shared: &Shared, loaded: &Loaded, key: ClientKey, timeout: Duration) {
    if let Some(target) = shared.cancel.lookup(key) {
        return crate::cancel::send(target, timeout).await;
    }
    let (Some(own), Some(peers)) = (shared.peering.own(), loaded.peers.as_ref()) else {
        return tracing::debug!("cancel request with an unknown key ignored");
    };
    let owner = crate::peer::owner(key);
    if owner == own || !peers.contains(owner) {
        return tracing::debug!("cancel request with an unknown key ignored");
    }
    if !shared.peering.may_forward() {
        shared.metrics.cancel_forward("rate_limited");
        return tracing::warn!(
            peer = owner,
            "cancel not forwarded: more than {} forwards a second",
            crate::peer::FORWARDS_PER_SECOND
        );
    }
    let Some(forward) = shared.peering.stamp(key) else {
        return tracing::warn!("cancel not forwarded: the random number generator failed");
    };
    match tokio::time::timeout(timeout, crate::peer::forward(peers, owner, forward)).await {
        Ok(Ok(())) => {
            shared.metrics.cancel_forward("forwarded");
            tracing::debug!(peer = owner, "cancel forwarded to its replica");
        }
        Ok(Err(error)) => {
            shared.metrics.cancel_forward("failed");
            tracing::warn!(peer = owner, %error, "cancel not forwarded");
        }
        Err(_) => {
            shared.metrics.cancel_forward("failed");
            tracing::warn!(
                peer = owner,
                "cancel not forwarded: the peer did not answer in time"
            );
        }
    }
}

/// Reads the first packet(s), answers SSLRequest/GSSENCRequest, runs the TLS handshake and
/// reads the StartupMessage inside TLS.
async fn negotiate(
    mut tcp: TcpStream,
    loaded: &Loaded,
    shared: &Shared,
    info: &mut SessionInfo,
) -> Result<Negotiated, HandshakeError> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Err(HandshakeError::Closed);
    }
    let direct = first[0] == TLS_HANDSHAKE_BYTE;
    if !direct {
        let mut buf = Vec::with_capacity(256);
        let mut declined_gss = false;
        loop {
            let packet = match read_startup(&mut tcp, &mut buf).await {
                Err(HandshakeError::Startup(error)) => {
                    return Err(answer_startup_error(&mut tcp, error).await);
                }
                other => other?,
            };
            match packet {
                Startup::Ssl => {
                    // Anything the client sent after SSLRequest, before our answer, would be
                    // taken as if it came through TLS (CVE-2021-23214): refuse it.
                    if !buf.is_empty() {
                        return Err(HandshakeError::Violation(
                            "data sent after SSLRequest before the TLS handshake",
                        ));
                    }
                    tcp.write_all(b"S").await?;
                    break;
                }
                Startup::GssEnc if !declined_gss && buf.is_empty() => {
                    tcp.write_all(b"N").await?;
                    declined_gss = true;
                }
                Startup::GssEnc => {
                    return Err(HandshakeError::Violation(
                        "GSSENCRequest repeated, or followed by data before its answer",
                    ));
                }
                Startup::Cancel(key) => return Ok(Negotiated::Cancel(key)),
                Startup::Startup(message) => {
                    info.db_user = message.get("user").map(str::to_owned);
                    let denial = Denial::access(
                        DenyReason::TlsRequired,
                        "TLS required: the dbward relay accepts only TLS connections with a \
                         client certificate"
                            .into(),
                        Some(
                            "connect with sslmode=verify-full, sslcert= and sslkey= set to the \
                             certificate from `dbward cert issue`"
                                .into(),
                        ),
                    );
                    refuse(tcp, shared, info, denial).await;
                    return Ok(Negotiated::Done);
                }
            }
        }
    }
    let config = loaded.server_tls.config.clone();
    let mut tls = if direct {
        accept_direct(tcp, config).await?
    } else {
        TlsAcceptor::from(config)
            .accept(ReadAhead::new(tcp))
            .await?
    };
    let mut buf = Vec::with_capacity(256);
    let packet = match read_startup(&mut tls, &mut buf).await {
        Err(HandshakeError::Startup(error)) => {
            return Err(answer_startup_error(&mut tls, error).await);
        }
        other => other?,
    };
    match packet {
        Startup::Startup(startup) => Ok(Negotiated::Session {
            tls: Box::new(tls),
            startup,
            leftover: buf,
        }),
        Startup::Cancel(key) => Ok(Negotiated::Cancel(key)),
        Startup::Ssl | Startup::GssEnc => Err(HandshakeError::Violation(
            "SSLRequest or GSSENCRequest inside TLS",
        )),
    }
}

/// Direct TLS (PostgreSQL 17's `sslnegotiation=direct`): TLS from the first byte. The
/// ClientHello must offer ALPN `postgresql`, as PostgreSQL itself insists, so that a TLS
/// connection meant for another protocol can never be mistaken for a PostgreSQL session; one
/// that does not is refused inside the handshake with a `no_application_protocol` alert.
async fn accept_direct(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<ClientTls, HandshakeError> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 2048];
    let accepted = loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        let mut input = &chunk[..n];
        while !input.is_empty() {
            acceptor.read_tls(&mut input)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => continue,
            Err((error, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = write_flush(&mut tcp, &out).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, error).into());
            }
        }
    };
    let offers_postgresql = accepted
        .client_hello()
        .alpn()
        .is_some_and(|mut offered| offered.any(|protocol| protocol == ALPN_POSTGRESQL));
    if !offers_postgresql {
        let _ = write_flush(&mut tcp, &NO_APPLICATION_PROTOCOL_ALERT).await;
        return Err(HandshakeError::Violation(
            "direct TLS connection without ALPN protocol \"postgresql\"",
        ));
    }
    Ok(StartHandshake::from_parts(accepted, ReadAhead::new(tcp))
        .into_stream(config)
        .await?)
}

/// A TLS alert record, sent in the clear before any key exists: fatal (2),
/// `no_application_protocol` (120).
const NO_APPLICATION_PROTOCOL_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 120];

/// Answers an invalid first packet the way PostgreSQL does (a FATAL where it would send one)
/// and returns the error for the caller to audit.
async fn answer_startup_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    error: StartupError,
) -> HandshakeError {
    if let Some(code) = error.sqlstate() {
        let frame = backend::fatal(code, &error.to_string(), None);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            write_flush(stream, &frame).await?;
            stream.shutdown().await
        })
        .await;
    }
    HandshakeError::Startup(error)
}

/// Reads one first packet into `buf` and removes it; bytes after it stay in `buf`.
async fn read_startup<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Startup, HandshakeError> {
    loop {
        if let Some((packet, used)) = Startup::parse(buf)? {
            buf.drain(..used);
            return Ok(packet);
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What the relay decided for one session. The StartupMessage it forwards is encoded from
/// these values, never copied from the client's bytes: what PostgreSQL sees is exactly what
/// was decided and audited.
#[derive(Debug)]
struct Decided {
    /// The database's manifest name.
    database: String,
    /// The StartupMessage for the upstream (protocol 3.0).
    forwarded: StartupMessage,
    /// NegotiateProtocolVersion for the client, when it asked for a newer minor version or
    /// for protocol options (`_pq_.*`) the relay does not speak; empty otherwise.
    negotiate: Vec<u8>,
    /// The person's own user, provisioned for this session through the admin connection.
    provisioning: Option<Provisioning>,
}

/// Decides from the client certificate, SNI and startup parameters, with the access table of
/// `loaded` only.
fn authorize(
    loaded: &Loaded,
    tls: &ClientTls,
    startup: &StartupMessage,
    info: &mut SessionInfo,
) -> Result<(Arc<Target>, Decided, ClientCert), Denial> {
    let conn = tls.get_ref().1;
    // Who: the certificate, checked before anything else is looked at.
    let cert = loaded
        .server_tls
        .check
        .check(conn.peer_certificates())
        .map_err(|refusal| Denial::access(DenyReason::Certificate, refusal.to_string(), None))?;
    let decided = decide(
        &loaded.config,
        &cert.identity,
        conn.server_name(),
        startup,
        info,
    )?;
    // A certificate issued before the person's (or everyone's) cutoff is locked out.
    let cutoff = loaded
        .config
        .access_for(&cert.identity, &decided.database)
        .and_then(|access| {
            loaded
                .config
                .relay
                .revocation
                .locks_out(access.certificates_issued_after, cert.not_before)
        });
    if let Some(cutoff) = cutoff {
        let refusal = revoke::locked_out(&cert.identity, cert.not_before, cutoff, false);
        return Err(Denial::access(
            DenyReason::CertificateLockedOut,
            refusal.message,
            Some(refusal.hint),
        ));
    }
    match loaded.upstreams.get(&decided.database) {
        Some(Upstream::Ready(target)) => Ok((target.clone(), decided, cert)),
        Some(Upstream::Unsupported(reason)) => Err(Denial {
            reason: DenyReason::Upstream,
            code: CONNECTION_FAILURE,
            message: reason.clone(),
            hint: None,
        }),
        None => Err(Denial::access(
            DenyReason::UnknownDatabase,
            format!(
                "database \"{}\" has no upstream in this relay's config",
                decided.database
            ),
            None,
        )),
    }
}

/// The access decision for an identified person: which database (from SNI or options), as
/// which user, under which name, checked against the compiled access table only. Records what
/// it learns in `info` for the audit log. Every startup parameter was given at most once (the
/// parser refuses repeats).
fn decide(
    config: &Config,
    identity: &str,
    sni: Option<&str>,
    startup: &StartupMessage,
    info: &mut SessionInfo,
) -> Result<Decided, Denial> {
    let public_name = config.relay.public_name.to_ascii_lowercase();
    info.identity = Some(identity.to_owned());

    // Where: SNI first, else `-c dbward.database=…` in options. The option is always removed
    // before forwarding, since PostgreSQL would refuse an unknown setting.
    let from_sni = sni.and_then(|sni| {
        let sni = sni.to_ascii_lowercase();
        sni.strip_suffix(&public_name)?
            .strip_suffix('.')
            .filter(|db| !db.is_empty())
            .map(str::to_owned)
    });
    let (from_options, other_options) = match startup.get("options").map(options::split) {
        Some(Ok(split)) => (split.database, split.rest),
        Some(Err(duplicate)) => {
            return Err(Denial {
                reason: DenyReason::Protocol,
                code: PROTOCOL_VIOLATION,
                message: duplicate.to_string(),
                hint: Some(format!(
                    "name the database once: -c {DATABASE_OPTION}=<database>"
                )),
            });
        }
        None => (None, String::new()),
    };
    let database = match (from_sni, from_options) {
        (Some(sni), Some(opt)) if sni != opt => {
            return Err(Denial::access(
                DenyReason::UnknownDatabase,
                format!("the server name selects database \"{sni}\" but options select \"{opt}\""),
                Some(format!(
                    "drop {DATABASE_OPTION} from options, or make them agree"
                )),
            ));
        }
        (Some(db), _) | (None, Some(db)) => db,
        (None, None) => {
            return Err(Denial::access(
                DenyReason::UnknownDatabase,
                "no database selected: the relay could not tell which database you want".into(),
                Some(format!(
                    "connect to host <database>.{public_name}, or, when connecting by address, \
                     add options='-c {DATABASE_OPTION}=<database>'"
                )),
            ));
        }
    };
    info.database = Some(database.clone());
    if !config.databases.contains_key(&database) {
        return Err(Denial::access(
            DenyReason::UnknownDatabase,
            format!("database \"{database}\" is not in this relay's manifest"),
            Some(format!(
                "check the name in host <database>.{public_name}; the manifest decides which \
                 databases exist"
            )),
        ));
    }

    // As whom: PostgreSQL requires a user and defaults the database name to it.
    let user = startup.get("user").unwrap_or_default().to_owned();
    if user.is_empty() {
        return Err(Denial::access(
            DenyReason::Protocol,
            "no PostgreSQL user name specified in startup packet".into(),
            Some("set user= in the connection string".into()),
        ));
    }
    let db_name = match startup.get("database") {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => user.clone(),
    };
    info.db_user = Some(user.clone());
    info.db_name = Some(db_name.clone());

    // The decision: from the compiled access table only.
    let Some(access) = config.access_for(identity, &database) else {
        return Err(Denial::access(
            DenyReason::NoAccess,
            format!("{identity} has no access to database \"{database}\""),
            Some("ask for a role that allows this database in the manifest".into()),
        ));
    };
    let own_user = access.provision != Provision::Off && user == identity;
    if !own_user && !access.db_users.contains(&user) {
        return Err(Denial::access(
            DenyReason::DbUserNotAllowed,
            format!(
                "{identity} is not allowed to log in to database \"{database}\" as user \"{user}\""
            ),
            Some(format!("allowed users: {}", access.db_users.join(", "))),
        ));
    }
    if !access.db_names.contains(&db_name) {
        let allowed = match &access.db_names {
            NameSet::Any => "any".to_owned(),
            NameSet::Only(names) => names.join(", "),
        };
        return Err(Denial::access(
            DenyReason::DbNameNotAllowed,
            format!(
                "{identity} is not allowed to open database name \"{db_name}\" on database \
                 \"{database}\""
            ),
            Some(format!("allowed database names: {allowed}")),
        ));
    }
    // A declared db-user of the same name is logged in as declared, never provisioned.
    let provisioning = if own_user && !access.db_users.contains(&user) {
        let Some(admin) = config
            .databases
            .get(&database)
            .and_then(|db| db.admin_user.clone())
        else {
            return Err(Denial::access(
                DenyReason::Upstream,
                format!("database \"{database}\" provisions users but names no admin user"),
                Some(
                    "add admin-user to the database in the manifest and run `dbward apply`".into(),
                ),
            ));
        };
        Some(Provisioning::new(
            admin,
            db_name.clone(),
            user.clone(),
            access,
        ))
    } else {
        None
    };
    let (forwarded, negotiate) = forwarded_startup(startup, user, db_name, other_options)?;
    Ok(Decided {
        database,
        forwarded,
        negotiate,
        provisioning,
    })
}

/// The StartupMessage the relay sends upstream, encoded from the decided `user`, `db_name` and
/// `options` (without `dbward.database`), plus the client's other parameters (run-time
/// settings such as `application_name`, which PostgreSQL checks itself). Protocol options
/// (`_pq_.*`) are dropped and named in NegotiateProtocolVersion, as PostgreSQL does for options
/// it does not know. A replication connection is refused: the access table grants sessions.
fn forwarded_startup(
    client: &StartupMessage,
    user: String,
    db_name: String,
    options: String,
) -> Result<(StartupMessage, Vec<u8>), Denial> {
    let mut params = vec![("user".to_owned(), user), ("database".to_owned(), db_name)];
    let mut ignored = Vec::new();
    for (name, value) in &client.params {
        match name.as_str() {
            "user" | "database" | "options" => {}
            "replication" if is_false(value) => {}
            "replication" => {
                return Err(Denial {
                    reason: DenyReason::Protocol,
                    code: FEATURE_NOT_SUPPORTED,
                    message: format!(
                        "replication connections (replication={value}) are not relayed: the \
                         dbward relay opens sessions only"
                    ),
                    hint: Some(
                        "connect replication clients to the database server directly".into(),
                    ),
                });
            }
            _ if name.starts_with("_pq_.") => ignored.push(name.clone()),
            _ => params.push((name.clone(), value.clone())),
        }
    }
    if !options.is_empty() {
        params.push(("options".to_owned(), options));
    }
    let negotiate = if client.version != PROTOCOL_3_0 || !ignored.is_empty() {
        negotiate_protocol_version(&ignored)
    } else {
        Vec::new()
    };
    let forwarded = StartupMessage {
        version: PROTOCOL_3_0,
        params,
    };
    Ok((forwarded, negotiate))
}

/// Whether a boolean startup value is false the way PostgreSQL's `parse_bool` reads it
/// (`replication=false` asks for a normal session).
fn is_false(value: &str) -> bool {
    let value = value.to_ascii_lowercase();
    [
        "0", "of", "off", "n", "no", "f", "fa", "fal", "fals", "false",
    ]
    .contains(&value.as_str())
}

/// Sends a refusal, audits and counts it, and closes the connection.
async fn refuse<S: AsyncWrite + Unpin>(
    mut stream: S,
    shared: &Shared,
    info: &SessionInfo,
    denial: Denial,
) {
    tracing::info!(
        session = info.id,
        peer = %info.client_addr,
        identity = info.identity.as_deref().unwrap_or("-"),
        database = info.database.as_deref().unwrap_or("-"),
        reason = denial.reason.as_str(),
        message = %denial.message,
        "session refused"
    );
    shared
        .audit
        .session_denied(info, denial.reason, &denial.message);
    shared.metrics.session_denied(denial.reason);
    let frame = backend::fatal(denial.code, &denial.message, denial.hint.as_deref());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        stream.write_all(&frame).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

/// Runs the session, then retires the person's provisioned user (if any) once it has ended,
/// whichever way it ended.
#[allow(clippy::too_many_arguments)]
async fn session(
    tls: Box<ClientTls>,
    decided: Decided,
    cert: ClientCert,
    leftover: Vec<u8>,
    target: Arc<Target>,
    loaded: &Loaded,
    shared: &Shared,
    info: SessionInfo,
) {
    let provisioning = decided.provisioning.clone();
    let audit_info = info.clone();
    let Some(ended) = open_and_relay(
        tls,
        decided,
        cert,
        leftover,
        target.clone(),
        loaded,
        shared,
        info,
    )
    .await
    else {
        // Refused before (or by) the activation: nothing was provisioned.
        return;
    };
    let Some(plan) = provisioning else {
        return;
    };
    let limits = &loaded.config.relay.limits;
    let retired = tokio::time::timeout(
        Duration::from_millis(limits.upstream_connect_timeout_ms),
        provision::retire(shared, &target, &plan, ended),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ProvisionError::Database {
            code: String::new(),
            message: format!(
                "the admin user \"{}\" did not finish within {} ms; the sweep will retire the user",
                plan.admin.name, limits.upstream_connect_timeout_ms
            ),
            hint: None,
        })
    });
    if let Err(error) = &retired {
        tracing::warn!(session = audit_info.id, person = %plan.person, %error, "deprovisioning failed");
    }
    shared
        .audit
        .user_deprovisioned(&audit_info, &plan, &retired);
}

/// The refusal a client gets when its user could not be provisioned, by SQLSTATE.
fn provision_denial(plan: &Provisioning, error: ProvisionError) -> Denial {
    let person = &plan.person;
    let (code, message, hint) = match error {
        ProvisionError::Database {
            code,
            message,
            hint,
        } if code == provision::NOT_OURS => (
            INVALID_AUTHORIZATION,
            format!("cannot provision database user \"{person}\": {message}"),
            hint.or_else(|| {
                Some(
                    "a database administrator must rename or drop that role (dbward never \
                     touches it), or declare it as a db-user in the manifest"
                        .into(),
                )
            }),
        ),
        ProvisionError::Database {
            code,
            message,
            hint,
        } if code == provision::OTHER_RIGHTS => (
            OBJECT_IN_USE,
            format!("cannot provision database user \"{person}\": {message}"),
            hint,
        ),
        ProvisionError::Database { message, hint, .. } => (
            PROVISION_FAILED,
            format!("cannot provision database user \"{person}\": {message}"),
            hint,
        ),
        error @ ProvisionError::Admin { .. } => (
            PROVISION_FAILED,
            format!("cannot provision database user \"{person}\": {error}"),
            Some(format!(
                "check that the admin user \"{}\" can log in (pg_hba.conf, pg_ident.conf, CONNECT) \
                 and that setup.sql ran in this database",
                plan.admin.name
            )),
        ),
    };
    Denial {
        reason: DenyReason::Provision,
        code,
        message,
        hint,
    }
}

/// Opens the upstream session, completes the client's startup, and relays until either side
/// ends. Returns `None` when the session was refused before its user could have been
/// activated (nothing to retire), else `Some` with the upstream backend's pid, if known.
#[allow(clippy::too_many_arguments)]
async fn open_and_relay(
    tls: Box<ClientTls>,
    decided: Decided,
    cert: ClientCert,
    leftover: Vec<u8>,
    target: Arc<Target>,
    loaded: &Loaded,
    shared: &Shared,
    info: SessionInfo,
) -> Option<Option<u32>> {
    let limits = &loaded.config.relay.limits;
    let connect_timeout = Duration::from_millis(limits.upstream_connect_timeout_ms);
    // The person's own user first: activated (with exactly this config's rights) before the
    // session connects as it; no retirement of that user runs until the session is connected.
    let starting = match &decided.provisioning {
        Some(plan) => Some(shared.admin_pool.starting(&target, plan).await),
        None => None,
    };
    if let Some(plan) = &decided.provisioning {
        let activate_started = Instant::now();
        let activated =
            tokio::time::timeout(connect_timeout, provision::activate(shared, &target, plan)).await;
        let outcome = match activated {
            Ok(result) => result,
            Err(_) => Err(ProvisionError::Database {
                code: String::new(),
                message: format!(
                    "the admin user \"{}\" did not finish within {} ms",
                    plan.admin.name, limits.upstream_connect_timeout_ms
                ),
                hint: None,
            }),
        };
        shared.audit.user_provisioned(&info, plan, &outcome);
        if outcome.is_ok() {
            shared.metrics.user_activated(activate_started.elapsed());
        }
        if let Err(error) = outcome {
            tracing::warn!(session = info.id, person = %plan.person, %error, "provisioning failed");
            refuse(tls, shared, &info, provision_denial(plan, error)).await;
            return None;
        }
    }
    let connect_started = Instant::now();
    let connected = tokio::time::timeout(
        Duration::from_millis(limits.upstream_connect_timeout_ms),
        Box::pin(upstream::connect(&target, &decided.forwarded)),
    )
    .await;
    let database = info.database.clone().unwrap_or_default();
    let mut upstream = match connected {
        Ok(Ok(connected)) => connected,
        Ok(Err(UpstreamError::Refused { frame, message })) => {
            // The database's own refusal (e.g. no such role) is relayed as it is.
            tracing::info!(session = info.id, %message, "upstream refused the session");
            shared
                .audit
                .session_denied(&info, DenyReason::Upstream, &message);
            shared.metrics.session_denied(DenyReason::Upstream);
            let mut tls = tls;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                tls.write_all(&frame).await?;
                tls.flush().await?;
                tls.shutdown().await
            })
            .await;
            return Some(None);
        }
        Ok(Err(error)) => {
            tracing::warn!(session = info.id, upstream = %target.address, %error, "upstream failed");
            let denial = Denial {
                reason: DenyReason::Upstream,
                code: CONNECTION_FAILURE,
                message: format!("cannot open a session on database \"{database}\": {error}"),
                hint: None,
            };
            refuse(tls, shared, &info, denial).await;
            return Some(None);
        }
        Err(_) => {
            let denial = Denial {
                reason: DenyReason::Upstream,
                code: CONNECTION_FAILURE,
                message: format!(
                    "cannot open a session on database \"{database}\": {} did not answer \
                     within {} ms",
                    target.address, limits.upstream_connect_timeout_ms
                ),
                hint: None,
            };
            refuse(tls, shared, &info, denial).await;
            return Some(None);
        }
    };
    shared.metrics.upstream_connected(connect_started.elapsed());
    drop(starting);

    // The client's key is the relay's own; the upstream's never leaves the relay.
    let registration = match upstream.backend_key {
        Some(backend) => match shared.cancel.register(CancelTarget {
            upstream: target.clone(),
            backend,
        }) {
            Ok(registration) => Some(registration),
            Err(error) => {
                tracing::warn!(session = info.id, %error, "no cancel key for this session");
                None
            }
        },
        None => None,
    };

    // The whole startup reply in one write: AuthenticationOk, ParameterStatus…, BackendKeyData,
    // ReadyForQuery.
    let mut reply = decided.negotiate;
    reply.reserve(upstream.greeting.len() + 64 + upstream.leftover.len());
    reply.extend_from_slice(&backend::AUTHENTICATION_OK);
    reply.extend_from_slice(&upstream.greeting);
    if let Some(registration) = &registration {
        reply.extend_from_slice(&backend::backend_key_data(registration.key));
    }
    reply.extend_from_slice(&upstream.ready);
    reply.extend_from_slice(&upstream.leftover);
    let mut client = tls;
    let backend_pid = upstream.backend_key.map(|key| key.pid);
    if write_flush(&mut client, &reply).await.is_err() {
        return Some(backend_pid);
    }
    drop(reply);
    upstream.greeting = Vec::new();

    // Listed for reloads from here on. A reload since this session's snapshot was taken found
    // it unlisted, so it is checked against the config in force now, at once.
    let listed = shared.live.list(
        info.id,
        LiveSession {
            identity: cert.identity.clone(),
            database: database.clone(),
            db_user: info.db_user.clone().unwrap_or_default(),
            db_name: info.db_name.clone().unwrap_or_default(),
            provisioned: decided.provisioning.is_some(),
            not_before: cert.not_before,
            stop: Stop::default(),
        },
    );
    let current = shared.current();
    if !std::ptr::eq(&*current, loaded)
        && let Some(revoked) = listed.session.revoked_by(&current.config)
    {
        listed.session.stop.trigger(revoked);
    }
    drop(current);
    let expires = loaded
        .config
        .relay
        .revocation
        .disconnect_expired_cert
        .then(|| expiry_deadline(cert.not_after));

    let info = Arc::new(info);
    let started = Instant::now();
    shared.audit.session_start(&info);
    shared.metrics.session_started();
    tracing::info!(
        session = info.id,
        peer = %info.client_addr,
        identity = info.identity.as_deref().unwrap_or("-"),
        database = %database,
        db_user = info.db_user.as_deref().unwrap_or("-"),
        "session started"
    );

    let audit_queries = loaded
        .config
        .relay
        .audit
        .as_ref()
        .is_some_and(|audit| audit.queries);
    let mut on_query = |kind: QueryKind, sql: &[u8]| {
        let message = match kind {
            QueryKind::Query => QueryMessage::Query,
            QueryKind::Parse => QueryMessage::Parse,
        };
        shared.audit.session_query(&info, message, sql);
    };
    // Bytes the client sent behind its StartupMessage (a pipelined query) are relayed like any
    // others: through the query scanner, the idle watch and the counters.
    let relayed = relay(
        *client,
        upstream.stream,
        leftover,
        audit_queries.then_some(&mut on_query),
        Some(&shared.metrics),
        IdleLimits::from_limits(limits),
        Ends {
            stop: Some(&listed.session.stop),
            expires,
        },
    )
    .await;
    drop(listed);
    drop(registration);

    shared.audit.session_end(
        &info,
        started.elapsed(),
        relayed.from_client,
        relayed.to_client,
        relayed.end,
    );
    shared.metrics.session_ended(relayed.end);
    tracing::info!(
        session = info.id,
        duration_ms = started.elapsed().as_millis() as u64,
        from_client = relayed.from_client,
        to_client = relayed.to_client,
        reason = relayed.end.as_str(),
        "session ended"
    );
    Some(backend_pid)
}

/// The instant on the runtime's clock at which a certificate valid until `not_after` (seconds
/// since the epoch) expires, with that time for the FATAL. A certificate is valid through its
/// `notAfter` second (RFC 5280; webpki refuses it only once the time is past it), so the
/// session ends at the start of the next second, when a new session with it would be refused.
fn expiry_deadline(not_after: i64) -> (tokio::time::Instant, i64) {
    let end = u64::try_from(not_after.saturating_add(1)).unwrap_or(0);
    let end = std::time::UNIX_EPOCH + Duration::from_secs(end);
    let left = end
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO);
    // A year bounds the timer however far away the certificate's end is.
    let left = left.min(Duration::from_secs(366 * 24 * 3600));
    (tokio::time::Instant::now() + left, not_after)
}

/// What else, besides its two sides and the idle limits, may end a session.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ends<'a> {
    /// Set from outside (a reload that revoked the session).
    pub stop: Option<&'a Stop>,
    /// The client certificate's expiry: when, on the runtime's clock, and its `notAfter`.
    pub expires: Option<(tokio::time::Instant, i64)>,
}

/// NegotiateProtocolVersion: the relay's newest minor version (0) and the options it ignored.
fn negotiate_protocol_version(unsupported: &[String]) -> Vec<u8> {
    let mut out = vec![b'v', 0, 0, 0, 0];
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(unsupported.len() as u32).to_be_bytes());
    for name in unsupported {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
    }
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

async fn write_flush<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Called with the SQL text of every Query and Parse message the client sends.
pub type OnQuery<'a> = dyn FnMut(QueryKind, &[u8]) + Send + 'a;

/// How long a session may wait for its client before the relay ends it; `None` turns a limit
/// off. The semantics are PostgreSQL's `idle_session_timeout` and
/// `idle_in_transaction_session_timeout`: a session is idle when no request of the client is
/// outstanding (every Query, Sync and FunctionCall has had its ReadyForQuery) and no byte has
/// passed either way since; which limit applies follows the last ReadyForQuery's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdleLimits {
    /// Outside a transaction (ReadyForQuery `I`).
    pub idle: Option<Duration>,
    /// Inside a transaction, open or failed (ReadyForQuery `T` or `E`).
    pub in_transaction: Option<Duration>,
}

impl IdleLimits {
    /// The limits of a frozen config (`0` is off).
    pub fn from_limits(limits: &dbward_frozen::Limits) -> IdleLimits {
        let limit = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        IdleLimits {
            idle: limit(limits.idle_timeout_ms),
            in_transaction: limit(limits.idle_in_transaction_timeout_ms),
        }
    }

    /// The shorter of the limits that are on.
    fn shortest(&self) -> Option<Duration> {
        match (self.idle, self.in_transaction) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// How a relayed session went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes relayed from the client, and to it.
    pub from_client: u64,
    pub to_client: u64,
    pub end: EndReason,
}

/// Frontend messages that the server answers with exactly one ReadyForQuery.
fn expects_ready(tag: u8) -> bool {
    matches!(tag, b'Q' | b'S' | b'F')
}

/// Watches a session for idleness at the cost of one clock read per wake-up that moved bytes
/// (no timer is touched per read): one sleep is armed for the shortest limit, and when it fires
/// it checks what happened since and either ends the session or re-arms for the remainder.
///
/// The same timer carries the client certificate's expiry, when sessions end with it.
struct IdleWatch {
    limits: IdleLimits,
    /// The shorter limit; `None` when only the certificate's expiry is watched.
    shortest: Option<Duration>,
    /// When the client certificate expires.
    expires: Option<tokio::time::Instant>,
    /// Boxed once per session: a timer entry is large, and a session is pinned to nothing.
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// When bytes last moved either way.
    last_activity: tokio::time::Instant,
    /// Client messages sent that expect a ReadyForQuery, and ReadyForQuery messages received.
    requests: FrameWalker,
    requested: u64,
    replies: FrameWalker,
    answered: u64,
    /// The status byte of the last ReadyForQuery: `I` idle, `T` in a transaction, `E` failed
    /// transaction. The relay forwards the startup's ReadyForQuery itself, which says `I`.
    status: u8,
}

impl IdleWatch {
    fn new(limits: IdleLimits, expires: Option<tokio::time::Instant>) -> Option<IdleWatch> {
        let shortest = limits.shortest();
        let now = tokio::time::Instant::now();
        let first = match (shortest, expires) {
            (Some(shortest), Some(expires)) => expires.min(now + shortest),
            (Some(shortest), None) => now + shortest,
            (None, Some(expires)) => expires,
            (None, None) => return None,
        };
        Some(IdleWatch {
            limits,
            shortest,
            expires,
            sleep: Box::pin(tokio::time::sleep_until(first)),
            last_activity: now,
            requests: FrameWalker::default(),
            requested: 0,
            replies: FrameWalker::default(),
            answered: 0,
            status: b'I',
        })
    }

    fn client_bytes(&mut self, chunk: &[u8]) {
        let requested = &mut self.requested;
        self.requests.feed(chunk, |tag, _| {
            if expects_ready(tag) {
                *requested += 1;
            }
        });
    }

    fn upstream_bytes(&mut self, chunk: &[u8]) {
        let (answered, status) = (&mut self.answered, &mut self.status);
        self.replies.feed(chunk, |tag, first| {
            if tag == backend::tag::READY_FOR_QUERY
                && let Some(byte) = first
            {
                *answered += 1;
                *status = byte;
            }
        });
    }

    /// Ready with the reason once the session has been idle for its limit.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<EndReason> {
        while self.sleep.as_mut().poll(cx).is_ready() {
            let now = tokio::time::Instant::now();
            if self.expires.is_some_and(|expires| now >= expires) {
                return Poll::Ready(EndReason::CertificateExpired);
            }
            // A request is outstanding (a query running, a COPY in progress): not idle.
            let waiting = self.requested <= self.answered;
            let (limit, reason) = if self.status == b'I' {
                (self.limits.idle, EndReason::IdleTimeout)
            } else {
                (
                    self.limits.in_transaction,
                    EndReason::IdleInTransactionTimeout,
                )
            };
            let limit = limit.filter(|_| waiting);
            if let Some(limit) = limit
                && now >= self.last_activity + limit
            {
                return Poll::Ready(reason);
            }
            // Check again when the limit in force would pass, and no later than one shortest
            // limit after the last activity (or from now): activity since may have moved the
            // session into a state with a shorter limit.
            let mut next = match self.shortest {
                Some(shortest) => {
                    let mut next = self.last_activity + shortest;
                    if next <= now {
                        next = now + shortest;
                    }
                    if let Some(limit) = limit {
                        next = next.min(self.last_activity + limit);
                    }
                    next
                }
                None => now + Duration::from_secs(24 * 3600),
            };
            if let Some(expires) = self.expires {
                next = next.min(expires);
            }
            self.sleep.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// Relays both directions until either side ends or the session is idle past its limit, then
/// closes both. `pending` holds client bytes already read (those that came behind the
/// StartupMessage): they go first, and are scanned, watched and counted like every other client
/// byte. With `metrics`, the bytes are also counted there as they pass, so `/metrics`
/// shows the traffic of long sessions while they run.
///
/// Both directions are driven by one future polling both streams in turn, rather than two
/// halves of `tokio::io::split`: split guards each TLS stream with a lock taken on every poll,
/// and costs a second wake-up per round trip. Writes are flushed only once the reader has
/// nothing more to give, so a burst of messages leaves in as few TLS records and system calls
/// as possible, while a lone message still leaves at once.
///
/// A session idle past `idle` gets the FATAL ErrorResponse PostgreSQL would send (57P05 or
/// 25P03), and its upstream a Terminate, before both are closed; so does a session stopped
/// through `ends` (a revocation) or whose certificate expired (57P01, saying why). Watching
/// `ends.stop` costs one atomic load per wake-up; the expiry shares the idle limits' timer.
pub async fn relay<C, U>(
    mut client: C,
    mut upstream: U,
    pending: Vec<u8>,
    on_query: Option<&mut OnQuery<'_>>,
    metrics: Option<&Metrics>,
    idle: IdleLimits,
    ends: Ends<'_>,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut scanner = on_query.map(|callback| (QueryScanner::default(), callback));
    let mut watch = IdleWatch::new(idle, ends.expires.map(|(at, _)| at));
    // The waker `ends.stop` holds, so it is replaced only when the task's changes.
    let mut registered = None;
    let mut from_client = Pump::new();
    let mut to_client = Pump::new();
    if !pending.is_empty() {
        if let Some((scanner, on_query)) = scanner.as_mut() {
            scanner.feed(&pending, |kind, sql| on_query(kind, sql));
        }
        if let Some(watch) = watch.as_mut() {
            watch.client_bytes(&pending);
        }
        if let Some(metrics) = metrics {
            metrics.bytes_relayed(pending.len() as u64, 0);
        }
        from_client.bytes = pending.len() as u64;
        from_client.end = pending.len();
        from_client.buf = pending;
    }
    let end = std::future::poll_fn(|cx| {
        let before = (from_client.bytes, to_client.bytes);
        let mut client_chunk = |chunk: &[u8]| {
            if let Some((scanner, on_query)) = scanner.as_mut() {
                scanner.feed(chunk, |kind, sql| on_query(kind, sql));
            }
            if let Some(watch) = watch.as_mut() {
                watch.client_bytes(chunk);
            }
        };
        let ended = match from_client.poll_copy(cx, &mut client, &mut upstream, &mut client_chunk) {
            Poll::Ready(Ok(())) => Poll::Ready(EndReason::ClientClosed),
            Poll::Ready(Err(Failed::Read(error))) => Poll::Ready(client_error(error)),
            Poll::Ready(Err(Failed::Write(error))) => {
                tracing::debug!(%error, "writing to the upstream failed");
                Poll::Ready(EndReason::UpstreamError)
            }
            Poll::Pending => {
                let mut upstream_chunk = |chunk: &[u8]| {
                    if let Some(watch) = watch.as_mut() {
                        watch.upstream_bytes(chunk);
                    }
                };
                match to_client.poll_copy(cx, &mut upstream, &mut client, &mut upstream_chunk) {
                    Poll::Ready(Ok(())) => Poll::Ready(EndReason::UpstreamClosed),
                    Poll::Ready(Err(Failed::Read(error))) => {
                        tracing::debug!(%error, "reading from the upstream failed");
                        Poll::Ready(EndReason::UpstreamError)
                    }
                    Poll::Ready(Err(Failed::Write(error))) => Poll::Ready(client_error(error)),
                    Poll::Pending => Poll::Pending,
                }
            }
        };
        let moved = (from_client.bytes - before.0, to_client.bytes - before.1);
        if moved != (0, 0) {
            if let Some(metrics) = metrics {
                metrics.bytes_relayed(moved.0, moved.1);
            }
            if let Some(watch) = watch.as_mut() {
                watch.last_activity = tokio::time::Instant::now();
            }
        }
        if ended.is_pending()
            && let Some(stop) = ends.stop
            && stop.poll_stopped(cx, &mut registered)
        {
            return Poll::Ready(
                stop.revoked()
                    .map_or(EndReason::AccessRevoked, |r| r.reason),
            );
        }
        if ended.is_pending()
            && let Some(watch) = watch.as_mut()
        {
            return watch.poll_expired(cx);
        }
        ended
    })
    .await;

    // Whichever side ended, end the other: a client that quit ends its backend, a backend that
    // went away (restart, termination) ends the client's session after its last message. An
    // idle session is told why, in the middle of nothing (both buffers are empty then, unless
    // a peer stopped reading; then it is only closed).
    let farewell = match end {
        EndReason::IdleTimeout => Some(backend::fatal(
            IDLE_SESSION_TIMEOUT,
            "terminating connection due to idle-session timeout",
            Some(&idle_hint("idle-timeout", idle.idle)),
        )),
        EndReason::IdleInTransactionTimeout => Some(backend::fatal(
            IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            "terminating connection due to idle-in-transaction timeout",
            Some(&idle_hint(
                "idle-in-transaction-timeout",
                idle.in_transaction,
            )),
        )),
        EndReason::CertificateExpired => ends
            .expires
            .map(|(_, not_after)| revoke::expired(not_after).fatal()),
        EndReason::AccessRevoked | EndReason::CertificateLockedOut => ends
            .stop
            .and_then(Stop::revoked)
            .map(|revoked| revoked.fatal()),
        _ => None,
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some(farewell) = &farewell {
            if from_client.is_empty() {
                let _ = write_flush(&mut upstream, &TERMINATE).await;
            }
            if to_client.is_empty() {
                let _ = write_flush(&mut client, farewell).await;
            }
        }
        let _ = upstream.shutdown().await;
        let _ = client.shutdown().await;
    })
    .await;
    Relayed {
        from_client: from_client.bytes,
        to_client: to_client.bytes,
        end,
    }
}

/// A client that closed TCP without TLS's close_notify ended its session as surely as one that
/// said goodbye (the protocol's own Terminate precedes it); other errors are errors.
fn client_error(error: io::Error) -> EndReason {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        EndReason::ClientClosed
    } else {
        tracing::debug!(%error, "the client connection failed");
        EndReason::ClientError
    }
}

/// The hint of an idle FATAL: which manifest setting ended the session, and its value.
fn idle_hint(setting: &str, limit: Option<Duration>) -> String {
    let secs = limit.map_or(0, |l| l.as_secs());
    format!(
        "the dbward relay ends sessions idle for {secs} s (relay {setting}); reconnect to \
         continue"
    )
}

/// Terminate: what a client sends last.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Why a direction stopped: its reader failed, or its writer did.
enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// One direction of [`relay`]: copies a reader to a writer until end of stream. The buffer
/// starts small, grows while reads fill it (bulk results), and shrinks back after a small read,
/// so an idle session holds little memory and a busy one moves large chunks.
struct Pump {
    buf: Vec<u8>,
    /// `buf[start..end]` was read and is not written yet.
    start: usize,
    end: usize,
    /// The size the buffer takes before the next read (it changes only when empty).
    next_size: usize,
    /// Written since the last flush.
    unflushed: bool,
    /// The reader reached end of stream.
    eof: bool,
    bytes: u64,
}

impl Pump {
    fn new() -> Pump {
        Pump {
            buf: vec![0u8; SMALL_BUFFER],
            start: 0,
            end: 0,
            next_size: SMALL_BUFFER,
            unflushed: false,
            eof: false,
            bytes: 0,
        }
    }

    /// Whether everything read has been written.
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Moves as many bytes as the two streams allow now, showing each chunk read to `inspect`
    /// (before it is written). Ready once the reader has ended and everything read was written
    /// and flushed, or on an error.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        inspect: &mut impl FnMut(&[u8]),
    ) -> Poll<Result<(), Failed>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            while self.start < self.end {
                let written =
                    Pin::new(&mut *writer).poll_write(cx, &self.buf[self.start..self.end]);
                let n = ready!(written).map_err(Failed::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Failed::Write(io::ErrorKind::WriteZero.into())));
                }
                self.start += n;
                self.unflushed = true;
            }
            if self.eof {
                ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(Failed::Write)?;
                return Poll::Ready(Ok(()));
            }
            if self.buf.len() != self.next_size {
                self.buf = vec![0u8; self.next_size];
            }
            let mut read = ReadBuf::new(&mut self.buf);
            match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                Poll::Pending => {
                    // Nothing more to read for now: what was written leaves now.
                    if self.unflushed {
                        ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(Failed::Write)?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(Failed::Read(error))),
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        self.eof = true;
                        continue;
                    }
                    inspect(&self.buf[..n]);
                    self.start = 0;
                    self.end = n;
                    self.bytes += n as u64;
                    if n == self.buf.len() && self.buf.len() < LARGE_BUFFER {
                        self.next_size = (self.buf.len() * 4).min(LARGE_BUFFER);
                    } else if n < SMALL_BUFFER {
                        self.next_size = SMALL_BUFFER;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dbward_frozen::{
        Access, AdminUser, Database, FORMAT_VERSION, Limits, Relay, ServerTls, UpstreamAuth,
        UpstreamTls,
    };

    use super::*;

    fn config() -> Config {
        let database = |port, admin: Option<&str>| Database {
            host: "127.0.0.1".into(),
            port,
            tls: UpstreamTls {
                server_name: "localhost".into(),
                ca: Some("ca.crt".into()),
            },
            auth: UpstreamAuth::Mtls,
            admin_user: admin.map(|name| AdminUser {
                name: name.into(),
                default_database: "postgres".into(),
            }),
        };
        let access = |identity: &str, users: &[&str], names: NameSet, provision| Access {
            identity: identity.into(),
            database: "shop".into(),
            db_users: users.iter().map(|u| u.to_string()).collect(),
            db_names: names,
            provision,
            db_roles: vec![],
            grants: vec![],
            certificates_issued_after: None,
        };
        Config {
            format_version: FORMAT_VERSION,
            checksum: String::new(),
            relay: Relay {
                listen: "127.0.0.1:6432".into(),
                public_name: "DB.example.com".into(),
                tls: ServerTls {
                    cert: "s.crt".into(),
                    key: "s.key".into(),
                    client_ca: "u.crt".into(),
                },
                upstream_identity: None,
                audit: None,
                metrics: None,
                limits: Limits::default(),
                revocation: Default::default(),
                peers: None,
            },
            databases: BTreeMap::from([
                ("shop".into(), database(5432, Some("dbward-admin"))),
                ("vault".into(), database(5433, None)),
            ]),
            access: vec![
                access(
                    "alice",
                    &["app"],
                    NameSet::Only(vec!["shop".into()]),
                    Provision::Off,
                ),
                access("erin", &["app"], NameSet::Any, Provision::Keep),
            ],
        }
    }

    /// Runs the decision for `identity` with SNI `sni` and startup parameters `params`, and
    /// renders the outcome: `ok <database> <forwarded params>` or `denied <reason>: <message>`.
    fn check(identity: &str, sni: Option<&str>, params: &[(&str, &str)], expected: &str) {
        let startup = StartupMessage {
            version: PROTOCOL_3_0,
            params: params
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        let mut info = SessionInfo::new(1, "127.0.0.1:1".parse().unwrap());
        let actual = match decide(&config(), identity, sni, &startup, &mut info) {
            Ok(Decided {
                database,
                forwarded,
                provisioning,
                ..
            }) => {
                let mut params: Vec<String> = forwarded
                    .params
                    .iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                if let Some(plan) = provisioning {
                    params.push(format!(
                        "(provisioned {} by {} in {})",
                        plan.mode_name(),
                        plan.admin.name,
                        plan.db_name
                    ));
                }
                format!("ok {database} {}", params.join(" "))
            }
            Err(denial) => format!("denied {}: {}", denial.reason.as_str(), denial.message),
        };
        assert_eq!(
            actual, expected,
            "identity {identity}, sni {sni:?}, params {params:?}"
        );
    }

    #[test]
    fn database_comes_from_sni_or_options() {
        check(
            "alice",
            Some("shop.db.example.com"),
            &[("user", "app")],
            "denied db_name_not_allowed: alice is not allowed to open database name \"app\" on \
             database \"shop\"",
        );
        check(
            "alice",
            Some("SHOP.db.example.com"),
            &[("user", "app"), ("database", "shop")],
            "ok shop user=app database=shop",
        );
        check(
            "alice",
            None,
            &[
                ("user", "app"),
                ("database", "shop"),
                ("options", "-c dbward.database=shop -c x=1"),
            ],
            "ok shop user=app database=shop options=-c x=1",
        );
        check(
            "alice",
            Some("db.example.com"),
            &[
                ("user", "app"),
                ("database", "shop"),
                ("options", "--dbward.database=shop"),
            ],
            "ok shop user=app database=shop",
        );
        check(
            "alice",
            Some("shop.db.example.com"),
            &[
                ("user", "app"),
                ("database", "shop"),
                ("options", "-c dbward.database=vault"),
            ],
            "denied unknown_database: the server name selects database \"shop\" but options \
             select \"vault\"",
        );
        check(
            "alice",
            Some("localhost"),
            &[("user", "app")],
            "denied unknown_database: no database selected: the relay could not tell which \
             database you want",
        );
        check(
            "alice",
            Some("nope.db.example.com"),
            &[("user", "app")],
            "denied unknown_database: database \"nope\" is not in this relay's manifest",
        );
    }

    #[test]
    fn users_and_names_are_normalized_then_checked() {
        let sni = Some("shop.db.example.com");
        check(
            "alice",
            sni,
            &[("database", "shop")],
            "denied protocol: no PostgreSQL user name specified in startup packet",
        );
        check(
            "alice",
            sni,
            &[("user", ""), ("database", "shop")],
            "denied protocol: no PostgreSQL user name specified in startup packet",
        );
        check(
            "alice",
            sni,
            &[("user", "app"), ("database", "")],
            "denied db_name_not_allowed: alice is not allowed to open database name \"app\" on \
             database \"shop\"",
        );
        check(
            "alice",
            sni,
            &[("user", "root"), ("database", "shop")],
            "denied db_user_not_allowed: alice is not allowed to log in to database \"shop\" as \
             user \"root\"",
        );
        check(
            "mallory",
            sni,
            &[("user", "app"), ("database", "shop")],
            "denied no_access: mallory has no access to database \"shop\"",
        );
        check(
            "alice",
            Some("vault.db.example.com"),
            &[("user", "app"), ("database", "vault")],
            "denied no_access: alice has no access to database \"vault\"",
        );
        // With provisioning on, a person may log in as themselves, and `*` allows any name.
        check(
            "erin",
            sni,
            &[("user", "erin")],
            "ok shop user=erin database=erin (provisioned keep by dbward-admin in erin)",
        );
        // erin as app, a declared db-user: logged in as declared, nothing provisioned.
        check(
            "erin",
            sni,
            &[("user", "app"), ("database", "shop")],
            "ok shop user=app database=shop",
        );
        check(
            "alice",
            sni,
            &[("user", "alice"), ("database", "shop")],
            "denied db_user_not_allowed: alice is not allowed to log in to database \"shop\" as \
             user \"alice\"",
        );
    }

    /// The relay loop over in-memory pipes (no TLS): bytes pass unchanged both ways in chunks
    /// larger than the pipes, queries are seen, counts are right, and when the client goes away
    /// the upstream sees end-of-stream.
    #[tokio::test]
    async fn relay_copies_both_ways_and_closes_both_sides() {
        let (mut client, client_side) = tokio::io::duplex(64);
        let (upstream_side, mut server) = tokio::io::duplex(64);
        let query = b"Q\0\0\0\x0dselect 1\0".to_vec();
        let result: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut seen = Vec::new();
        let mut on_query = |kind: QueryKind, sql: &[u8]| {
            seen.push((kind, String::from_utf8_lossy(sql).into_owned()));
        };
        let driver = async {
            client.write_all(&query).await.unwrap();
            let mut got = vec![0u8; query.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, query);
            let (mut server_read, mut server_write) = tokio::io::split(&mut server);
            let write = async {
                server_write.write_all(&result).await.unwrap();
            };
            let read = async {
                let mut got = vec![0u8; result.len()];
                client.read_exact(&mut got).await.unwrap();
                assert!(got == result, "the result changed on the way");
                drop(client);
                // The client is gone: the upstream must see end-of-stream.
                let mut rest = Vec::new();
                server_read.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty());
            };
            tokio::join!(write, read);
        };
        let (relayed, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                relay(
                    client_side,
                    upstream_side,
                    Vec::new(),
                    Some(&mut on_query),
                    None,
                    IdleLimits::default(),
                    Ends::default()
                ),
                driver
            )
        })
        .await
        .expect("the relay ends when the client does");
        assert_eq!(
            relayed,
            Relayed {
                from_client: query.len() as u64,
                to_client: result.len() as u64,
                end: EndReason::ClientClosed,
            }
        );
        assert_eq!(seen, vec![(QueryKind::Query, "select 1".to_owned())]);
    }

    /// A stop from outside (a reload's revocation) and the certificate's expiry end an idle
    /// session over in-memory pipes: the client reads the FATAL with the reason's words, the
    /// upstream a Terminate, and the end carries the reason.
    #[tokio::test]
    async fn a_revoked_or_expired_session_is_ended_with_its_reason() {
        for expire in [false, true] {
            let (mut client, client_side) = tokio::io::duplex(1024);
            let (upstream_side, mut server) = tokio::io::duplex(1024);
            let stop = Stop::default();
            let ends = Ends {
                stop: Some(&stop),
                expires: expire.then(|| {
                    (
                        tokio::time::Instant::now() + Duration::from_millis(300),
                        1_796_040_000,
                    )
                }),
            };
            let driver = async {
                if !expire {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    stop.trigger(revoke::Revoked {
                        reason: EndReason::AccessRevoked,
                        message: "terminating connection: revoked".into(),
                        hint: "ask".into(),
                    });
                }
                let mut reply = Vec::new();
                client.read_to_end(&mut reply).await.unwrap();
                let mut terminate = Vec::new();
                server.read_to_end(&mut terminate).await.unwrap();
                (reply, terminate)
            };
            let (relayed, (reply, terminate)) =
                tokio::time::timeout(Duration::from_secs(5), async {
                    tokio::join!(
                        relay(
                            client_side,
                            upstream_side,
                            Vec::new(),
                            None,
                            None,
                            IdleLimits::default(),
                            ends
                        ),
                        driver
                    )
                })
                .await
                .expect("the session is ended");
            let fields = backend::error_fields(&reply[5..]);
            assert!(fields.contains(&(b'C', "57P01".to_owned())), "{fields:?}");
            let (reason, message) = if expire {
                (
                    EndReason::CertificateExpired,
                    "terminating connection: the client certificate expired at \
                     2026-11-30T12:00:00Z",
                )
            } else {
                (EndReason::AccessRevoked, "terminating connection: revoked")
            };
            assert_eq!(relayed.end, reason);
            assert!(fields.contains(&(b'M', message.to_owned())), "{fields:?}");
            assert_eq!(terminate, TERMINATE);
        }
    }

    /// The idle limits over in-memory pipes: which limit ends a session follows the last
    /// ReadyForQuery, the client reads the FATAL PostgreSQL would send, the upstream gets a
    /// Terminate, and a query that runs longer than both limits is not idle.
    #[tokio::test]
    async fn idle_sessions_end_by_the_limit_of_their_state() {
        let limits = IdleLimits {
            idle: Some(Duration::from_millis(600)),
            in_transaction: Some(Duration::from_millis(300)),
        };
        let query = b"Q\0\0\0\x0aBEGIN\0".to_vec();
        for (status, expected, code) in [
            (b'T', EndReason::IdleInTransactionTimeout, "25P03"),
            (b'E', EndReason::IdleInTransactionTimeout, "25P03"),
            (b'I', EndReason::IdleTimeout, "57P05"),
        ] {
            let (mut client, client_side) = tokio::io::duplex(1024);
            let (upstream_side, mut server) = tokio::io::duplex(1024);
            let started = Instant::now();
            let driver = async {
                client.write_all(&query).await.unwrap();
                let mut got = vec![0u8; query.len()];
                server.read_exact(&mut got).await.unwrap();
                server
                    .write_all(&[b'C', 0, 0, 0, 4, b'Z', 0, 0, 0, 5, status])
                    .await
                    .unwrap();
                let mut reply = Vec::new();
                client.read_to_end(&mut reply).await.unwrap();
                let mut terminate = Vec::new();
                server.read_to_end(&mut terminate).await.unwrap();
                (reply, terminate)
            };
            let (relayed, (reply, terminate)) = tokio::join!(
                relay(
                    client_side,
                    upstream_side,
                    Vec::new(),
                    None,
                    None,
                    limits,
                    Ends::default()
                ),
                driver
            );
            let took = started.elapsed();
            assert_eq!(relayed.end, expected, "status {}", status as char);
            let limit = match expected {
                EndReason::IdleTimeout => limits.idle.unwrap(),
                _ => limits.in_transaction.unwrap(),
            };
            assert!(took >= limit && took < limit * 3, "ended after {took:?}");
            let fatal = &reply[10..];
            let fields = backend::error_fields(&fatal[5..]);
            assert!(fields.contains(&(b'C', code.to_owned())), "{fields:?}");
            assert_eq!(terminate, TERMINATE);
        }

        // A query outlasting both limits is not idle; the session then ends as the client does.
        let (mut client, client_side) = tokio::io::duplex(1024);
        let (upstream_side, mut server) = tokio::io::duplex(1024);
        let driver = async {
            client.write_all(&query).await.unwrap();
            let mut got = vec![0u8; query.len()];
            server.read_exact(&mut got).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            server.write_all(&[b'Z', 0, 0, 0, 5, b'I']).await.unwrap();
            let mut ready = [0u8; 6];
            client.read_exact(&mut ready).await.unwrap();
            drop(client);
        };
        let (relayed, ()) = tokio::join!(
            relay(
                client_side,
                upstream_side,
                Vec::new(),
                None,
                None,
                limits,
                Ends::default()
            ),
            driver
        );
        assert_eq!(relayed.end, EndReason::ClientClosed);
    }
}

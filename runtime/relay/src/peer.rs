//! Cancel forwarding between the replicas of one relay (`relay { peers … }`).
//!
//! psql sends its CancelRequest on a new connection, which a load balancer may route to any
//! replica. So a replica with a peer id encodes it in the cancel keys it issues ([`encode`]),
//! and a replica that receives a CancelRequest for another replica's key forwards it to that
//! replica's peer listener over mutual TLS ([`forward`]), where it is served like a local one.
//!
//! **Who may forward.** Both ends present the fleet's peer certificate, signed by a CA that
//! signs nothing else (`ca/peer-ca.crt`); anything else fails the TLS handshake. A forward
//! carries its origin, the instant it was sent and a random nonce: one older than
//! [`REPLAY_WINDOW`], or whose nonce was seen already, is dropped ([`Peering::admit`]).
//!
//! **Bounded.** At most one hop: a replica serves a forwarded key only if it is its own, never
//! forwards it again. Forwards out and in are rate-limited ([`FORWARDS_PER_SECOND`]); a key
//! that belongs to no listed replica is dropped silently, like an unknown local key.
//!
//! This module holds the wire format, the checks and the client side; the listener that
//! accepts forwards and the routing of a CancelRequest are in [`crate::listener`] and
//! [`crate::session`], which hold the process's state.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::ServerName;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::protocol::ClientKey;
use crate::tls::{self, TlsError};

/// Bits of a key's pid below the peer id: 19 random bits, then 12 bits of id (0–4095), and
/// the pid stays positive. The secret's 32 bits stay random, so 51 random bits in all.
const ID_SHIFT: u32 = 19;
const RANDOM_MASK: u32 = (1 << ID_SHIFT) - 1;

/// A forward older (or further in the future) than this is dropped: it was replayed, or the
/// clocks of two replicas are that far apart.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);

/// Forwards a replica sends per second, and accepts per second from each other replica (with a
/// burst as large): far above what people pressing Ctrl+C or drivers' statement timeouts
/// produce, low enough that a runaway peer cannot flood a database with cancels.
pub const FORWARDS_PER_SECOND: u32 = 500;

/// Nonces remembered at most; beyond it forwards are refused (fail closed) until old ones
/// leave the window. The rate limits keep far below it.
const MAX_REMEMBERED: usize = 200_000;

/// `DBWF`, version 1.
const MAGIC: [u8; 5] = *b"DBWF\x01";
const FORWARD_LEN: usize = MAGIC.len() + 2 + 4 + 4 + 8 + 16;
/// The answer to a forward that was admitted (whether or not its key had a session).
const ACK: u8 = b'K';

/// The key a replica with peer id `id` issues, from 8 random bytes.
pub fn encode(id: Option<u16>, random: [u8; 8]) -> ClientKey {
    let pid = u32::from_be_bytes([random[0], random[1], random[2], random[3]]);
    let secret = u32::from_be_bytes([random[4], random[5], random[6], random[7]]);
    let pid = match id {
        // Clients read the pid as a signed int32: keep it positive, like a real pid.
        None => pid & 0x7fff_ffff,
        Some(id) => (u32::from(id) << ID_SHIFT) | (pid & RANDOM_MASK),
    };
    ClientKey { pid, secret }
}

/// The peer id encoded in a key (meaningful only when peers are configured).
pub fn owner(key: ClientKey) -> u16 {
    // At most 12 significant bits remain after the shift of a 31-bit pid.
    ((key.pid & 0x7fff_ffff) >> ID_SHIFT) as u16
}

/// The replicas of the config in force, and the TLS they speak: built once per config load.
#[derive(Debug)]
pub struct PeerSet {
    members: BTreeMap<u16, String>,
    server_name: ServerName<'static>,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl PeerSet {
    /// Loads the peer certificate, key and CA named by the frozen config (paths relative to
    /// `config_path`'s directory).
    pub fn build(config_path: &Path, peers: &dbward_frozen::Peers) -> Result<PeerSet, TlsError> {
        let resolve = |p: &Path| dbward_frozen::Config::resolve_path(config_path, p);
        let (cert, key, ca) = (
            resolve(&peers.tls.cert),
            resolve(&peers.tls.key),
            resolve(&peers.tls.ca),
        );
        let certs = tls::load_certs(&cert)?;
        let private = tls::load_key(&key)?;
        let roots = Arc::new(tls::load_roots(&ca)?);
        let provider = tls::provider();
        let bad_key = |e: rustls::Error| TlsError::Key {
            path: key.clone(),
            reason: e.to_string(),
        };
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(Arc::clone(&roots))
            .with_client_auth_cert(certs.clone(), private.clone_key())
            .map_err(bad_key)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Ca {
                path: ca.clone(),
                reason: e.to_string(),
            })?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, private)
            .map_err(bad_key)?;
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        let server_name = ServerName::try_from(peers.tls.server_name.clone())
            .map_err(|e| TlsError::Config(format!("peer server name: {e}")))?;
        Ok(PeerSet {
            members: peers
                .members
                .iter()
                .map(|p| (p.id, p.address.clone()))
                .collect(),
            server_name,
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// Where replica `id` accepts forwards: its listed address when that is an IP address and
    /// port, else every address on its port (the listed host is a name, which other replicas
    /// resolve to this host).
    pub fn listen_address(&self, id: u16) -> Option<String> {
        let address = self.members.get(&id)?;
        if address.parse::<std::net::SocketAddr>().is_ok() {
            return Some(address.clone());
        }
        let (_, port) = address.rsplit_once(':')?;
        Some(format!("[::]:{port}"))
    }

    /// Whether `id` is one of the replicas.
    pub fn contains(&self, id: u16) -> bool {
        self.members.contains_key(&id)
    }

    /// The ids listed, in order.
    pub fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.members.keys().copied()
    }

    /// Accepts forwards: mutual TLS with the peer certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.server))
    }
}

/// This replica's id: `--peer-id`, else the ordinal at the end of the host name (`relay-2` is
/// 2, as a Kubernetes StatefulSet names its pods). It must be one of `members`.
pub fn own_id(flag: Option<u16>, members: &[u16]) -> Result<u16, String> {
    let (id, from) = match flag {
        Some(id) => (id, format!("--peer-id {id}")),
        None => {
            let host = rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned();
            let ordinal = host
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse::<u16>().ok())
                .ok_or_else(|| {
                    format!(
                        "the config lists peers, and this replica's id is unknown: pass \
                         --peer-id (or DBWARD_RELAY_PEER_ID) with its id from `relay {{ peers }}`, \
                         or run it on a host whose name ends in -<id> (host name `{host}`)"
                    )
                })?;
            (ordinal, format!("the host name `{host}`"))
        }
    };
    if members.contains(&id) {
        Ok(id)
    } else {
        Err(format!(
            "peer id {id} (from {from}) is not one of the peers the config lists ({}); add it \
             to `relay {{ peers }}` and run `dbward apply`, or pass the right --peer-id",
            members
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// One forwarded CancelRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// The replica that received the CancelRequest.
    pub origin: u16,
    pub key: ClientKey,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub sent_ms: u64,
    pub nonce: [u8; 16],
}

impl Forward {
    fn to_bytes(self) -> [u8; FORWARD_LEN] {
        let mut out = [0u8; FORWARD_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&MAGIC);
        put(&self.origin.to_be_bytes());
        put(&self.key.pid.to_be_bytes());
        put(&self.key.secret.to_be_bytes());
        put(&self.sent_ms.to_be_bytes());
        put(&self.nonce);
        out
    }

    fn from_bytes(bytes: &[u8; FORWARD_LEN]) -> Option<Forward> {
        let rest = bytes.strip_prefix(&MAGIC)?;
        let (origin, rest) = rest.split_first_chunk::<2>()?;
        let (pid, rest) = rest.split_first_chunk::<4>()?;
        let (secret, rest) = rest.split_first_chunk::<4>()?;
        let (sent, rest) = rest.split_first_chunk::<8>()?;
        let nonce: [u8; 16] = rest.try_into().ok()?;
        Some(Forward {
            origin: u16::from_be_bytes(*origin),
            key: ClientKey {
                pid: u32::from_be_bytes(*pid),
                secret: u32::from_be_bytes(*secret),
            },
            sent_ms: u64::from_be_bytes(*sent),
            nonce,
        })
    }
}

/// Why a forward was not served; each is audited on the receiving replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the TLS handshake failed (not a replica of this relay): {0}")]
    Handshake(String),
    #[error("not a cancel forward: {0}")]
    Malformed(String),
    #[error("forwarded by peer {0}, which the config does not list")]
    UnknownOrigin(u16),
    #[error(
        "forwarded as from peer {0}, this replica's own id: a replica never forwards to itself"
    )]
    FromItself(u16),
    #[error("the key belongs to peer {owner}, not to this replica; forwards go one hop only")]
    NotOurs { owner: u16 },
    #[error("sent {age_ms} ms from now, outside the {window} s replay window", window = REPLAY_WINDOW.as_secs())]
    Stale { age_ms: i64 },
    #[error("the same forward was received before (replayed)")]
    Replayed,
    #[error("more than {FORWARDS_PER_SECOND} forwards a second from peer {0}")]
    RateLimited(u16),
}

impl Refusal {
    /// The audit and metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Handshake(_) => "handshake",
            Refusal::Malformed(_) => "malformed",
            Refusal::UnknownOrigin(_) | Refusal::FromItself(_) => "unknown_peer",
            Refusal::NotOurs { .. } => "not_ours",
            Refusal::Stale { .. } => "stale",
            Refusal::Replayed => "replayed",
            Refusal::RateLimited(_) => "rate_limited",
        }
    }
}

/// A token bucket: `rate` per second, `rate` at most in store.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full() -> Bucket {
        Bucket {
            tokens: f64::from(FORWARDS_PER_SECOND),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let rate = f64::from(FORWARDS_PER_SECOND);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The nonces of the forwards admitted within the replay window.
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<(Instant, [u8; 16])>,
    nonces: std::collections::HashSet<[u8; 16]>,
}

impl Seen {
    /// Records `nonce`; false when it was seen already, or too many are remembered.
    fn insert(&mut self, nonce: [u8; 16], now: Instant) -> bool {
        // A nonce is kept twice the window: a forward is admitted only within the window
        // either side of its own timestamp, so an older copy can never pass the time check.
        while let Some((at, old)) = self.order.front()
            && now.saturating_duration_since(*at) > 2 * REPLAY_WINDOW
        {
            self.nonces.remove(old);
            self.order.pop_front();
        }
        if self.nonces.len() >= MAX_REMEMBERED || !self.nonces.insert(nonce) {
            return false;
        }
        self.order.push_back((now, nonce));
        true
    }
}

/// The process's side of peering: its own id (fixed at start-up), the nonces seen and the
/// rate limits. Lives as long as the process; the peer list itself comes with each config.
#[derive(Debug)]
pub struct Peering {
    own: Option<u16>,
    state: Mutex<PeeringState>,
    random: SystemRandom,
}

#[derive(Debug)]
struct PeeringState {
    seen: Seen,
    outbound: Bucket,
    inbound: HashMap<u16, Bucket>,
}

impl Peering {
    /// `own`: this replica's peer id, `None` when the relay runs without peers.
    pub fn new(own: Option<u16>) -> Peering {
        Peering {
            own,
            state: Mutex::new(PeeringState {
                seen: Seen::default(),
                outbound: Bucket::full(),
                inbound: HashMap::new(),
            }),
            random: SystemRandom::new(),
        }
    }

    pub fn own(&self) -> Option<u16> {
        self.own
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeeringState> {
        // Every update is a single assignment or insert: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether one more forward may go out now.
    pub fn may_forward(&self) -> bool {
        self.lock().outbound.take(Instant::now())
    }

    /// A forward from this replica, for `key`, stamped now.
    pub fn stamp(&self, key: ClientKey) -> Option<Forward> {
        let mut nonce = [0u8; 16];
        self.random.fill(&mut nonce).ok()?;
        Some(Forward {
            origin: self.own?,
            key,
            sent_ms: now_ms(),
            nonce,
        })
    }

    /// The checks a received forward must pass before its key is looked up.
    pub fn admit(&self, forward: &Forward, peers: &PeerSet) -> Result<(), Refusal> {
        if Some(forward.origin) == self.own {
            return Err(Refusal::FromItself(forward.origin));
        }
        if !peers.contains(forward.origin) {
            return Err(Refusal::UnknownOrigin(forward.origin));
        }
        let owner = owner(forward.key);
        if Some(owner) != self.own {
            return Err(Refusal::NotOurs { owner });
        }
        let age_ms = i64::try_from(now_ms()).unwrap_or(i64::MAX)
            - i64::try_from(forward.sent_ms).unwrap_or(i64::MAX);
        if age_ms.unsigned_abs() > REPLAY_WINDOW.as_millis() as u64 {
            return Err(Refusal::Stale { age_ms });
        }
        let now = Instant::now();
        let mut state = self.lock();
        if !state
            .inbound
            .entry(forward.origin)
            .or_insert_with(Bucket::full)
            .take(now)
        {
            return Err(Refusal::RateLimited(forward.origin));
        }
        if !state.seen.insert(forward.nonce, now) {
            return Err(Refusal::Replayed);
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a forward did not reach its peer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("peer {0} is not listed")]
    Unknown(u16),
    #[error("cannot reach peer {id} at {address}: {source}")]
    Connect {
        id: u16,
        address: String,
        source: std::io::Error,
    },
    #[error("peer {id} at {address} did not take the forward")]
    Refused { id: u16, address: String },
}

/// Sends `forward` to peer `to` and waits for its acknowledgement.
pub async fn forward(peers: &PeerSet, to: u16, forward: Forward) -> Result<(), ForwardError> {
    let address = peers.members.get(&to).ok_or(ForwardError::Unknown(to))?;
    let connect_error = |source| ForwardError::Connect {
        id: to,
        address: address.clone(),
        source,
    };
    let tcp = TcpStream::connect(address.as_str())
        .await
        .map_err(connect_error)?;
    let _ = tcp.set_nodelay(true);
    let mut tls = TlsConnector::from(Arc::clone(&peers.client))
        .connect(peers.server_name.clone(), tcp)
        .await
        .map_err(connect_error)?;
    tls.write_all(&forward.to_bytes())
        .await
        .map_err(connect_error)?;
    tls.flush().await.map_err(connect_error)?;
    let mut ack = [0u8; 1];
    match tls.read_exact(&mut ack).await {
        Ok(_) if ack[0] == ACK => {
            let _ = tls.shutdown().await;
            Ok(())
        }
        _ => Err(ForwardError::Refused {
            id: to,
            address: address.clone(),
        }),
    }
}

/// Reads one forward from an accepted peer connection (after the TLS handshake).
pub async fn receive<S>(stream: &mut S) -> Result<Forward, Refusal>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut bytes = [0u8; FORWARD_LEN];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|e| Refusal::Malformed(e.to_string()))?;
    Forward::from_bytes(&bytes).ok_or_else(|| Refusal::Malformed("unknown format".into()))
}

/// Acknowledges an admitted forward.
pub async fn acknowledge<S>(stream: &mut S)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let _ = stream.write_all(&[ACK]).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_peer_id_and_stay_positive() {
        for (id, random) in [
            (0u16, [0xff; 8]),
            (1, [0; 8]),
            (4095, [0xff; 8]),
            (77, [0x12, 0x34, 0x56, 0x78, 9, 9, 9, 9]),
        ] {
            let key = encode(Some(id), random);
            assert_eq!(owner(key), id);
            assert!(key.pid <= i32::MAX as u32, "{key:?}");
        }
        let plain = encode(None, [0xff; 8]);
        assert_eq!(plain.pid, 0x7fff_ffff);
    }

    #[test]
    fn forwards_round_trip_and_garbage_is_refused() {
        let forward = Forward {
            origin: 3,
            key: ClientKey {
                pid: 0x1234_5678,
                secret: 9,
            },
            sent_ms: 1_700_000_000_000,
            nonce: [7; 16],
        };
        assert_eq!(Forward::from_bytes(&forward.to_bytes()), Some(forward));
        let mut bad = forward.to_bytes();
        bad[4] = 2;
        assert_eq!(Forward::from_bytes(&bad), None, "another version");
    }

    #[test]
    fn a_nonce_is_admitted_once_within_the_window() {
        let mut seen = Seen::default();
        let now = Instant::now();
        assert!(seen.insert([1; 16], now));
        assert!(!seen.insert([1; 16], now + Duration::from_secs(5)));
        assert!(seen.insert([2; 16], now + Duration::from_secs(5)));
        // Long after, the first is forgotten (its timestamp no longer passes the time check).
        assert!(seen.insert([1; 16], now + 3 * REPLAY_WINDOW));
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let mut bucket = Bucket::full();
        let start = bucket.at;
        let taken = (0..FORWARDS_PER_SECOND * 2)
            .filter(|_| bucket.take(start))
            .count();
        assert_eq!(taken, FORWARDS_PER_SECOND as usize);
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(10)));
    }

    #[test]
    fn the_own_id_comes_from_the_flag_or_the_host_name_and_must_be_listed() {
        assert_eq!(own_id(Some(2), &[1, 2, 3]), Ok(2));
        let error = own_id(Some(9), &[1, 2, 3]).unwrap_err();
        assert!(
            error.contains("peer id 9 (from --peer-id 9) is not one of"),
            "{error}"
        );
    }
}

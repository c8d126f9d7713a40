//! Several replicas of one relay (`relay { peers … }`), end to end: `dbward apply` issues the
//! peer certificate, a real PostgreSQL runs the generated configuration, and three replicas of
//! the relay (in-process, each with its own peer id, listener and peer listener, one frozen
//! config) serve tokio-postgres sessions. A CancelRequest sent to any replica cancels the query
//! on the replica that holds the session; forged, replayed, stale and second-hop forwards are
//! refused and audited; unknown keys are dropped silently. The same through a real load
//! balancer and the real binary is in the fleet module.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dbward_relay::audit::AuditSink;
use dbward_relay::metrics::Metrics;
use dbward_relay::state::Shared;
use dbward_tests::{free_port, run_bin};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::relay::Deployment;

/// The peer ids of the three replicas.
const IDS: [u16; 3] = [1, 2, 3];

/// One in-process replica.
struct Replica {
    id: u16,
    port: u16,
    peer_port: u16,
    shared: Arc<Shared>,
    audit: std::path::PathBuf,
}

struct Fleet {
    d: Deployment,
    replicas: Vec<Replica>,
    shutdown: CancellationToken,
}

impl Fleet {
    fn start() -> Fleet {
        let peer_ports: Vec<u16> = IDS.iter().map(|_| free_port()).collect();
        let peers: String = IDS
            .iter()
            .zip(&peer_ports)
            .map(|(id, port)| format!("        peer {id} address=\"127.0.0.1:{port}\"\n"))
            .collect();
        let d = Deployment::start_full(&format!("    peers {{\n{peers}    }}"), "", |_| {});
        let frozen = d.out().join("relay/frozen.json");
        let shutdown = CancellationToken::new();
        let replicas = IDS
            .iter()
            .zip(peer_ports)
            .map(|(&id, peer_port)| {
                let loaded = dbward_relay::config::load(&frozen)
                    .unwrap_or_else(|e| panic!("the relay refused the generated config: {e}"));
                let audit = d.dir.path().join(format!("audit-{id}.jsonl"));
                let replica = dbward_relay::replica::ReplicaId::parse(&format!("relay-{id}"))
                    .expect("a replica id");
                let sink = AuditSink::start(Some(audit.clone()), replica).expect("open audit log");
                let shared =
                    Arc::new(Shared::new(loaded, sink, Metrics::new()).with_peer_id(Some(id)));
                let port = free_port();
                let (listener, peer_listener) = d.rt.block_on(async {
                    (
                        tokio::net::TcpListener::bind(("127.0.0.1", port))
                            .await
                            .expect("bind relay port"),
                        tokio::net::TcpListener::bind(("127.0.0.1", peer_port))
                            .await
                            .expect("bind peer port"),
                    )
                });
                d.rt.spawn(dbward_relay::run(
                    listener,
                    Arc::clone(&shared),
                    shutdown.clone(),
                ));
                d.rt.spawn(dbward_relay::listener::run_peers(
                    peer_listener,
                    Arc::clone(&shared),
                    shutdown.clone(),
                ));
                Replica {
                    id,
                    port,
                    peer_port,
                    shared,
                    audit,
                }
            })
            .collect();
        Fleet {
            d,
            replicas,
            shutdown,
        }
    }

    /// Every audit event replica `i` wrote so far.
    fn audit(&self, i: usize) -> Vec<Value> {
        let replica = &self.replicas[i];
        replica.shared.audit.flush();
        std::fs::read_to_string(&replica.audit)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("audit line is JSON"))
            .collect()
    }

    /// The refused forwards replica `i` audited, as (reason, message).
    fn refusals(&self, i: usize) -> Vec<(String, String)> {
        self.audit(i)
            .into_iter()
            .filter(|e| e["event"] == "cancel.forward_refused")
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn metric(&self, i: usize, sample: &str) -> f64 {
        let mut text = String::new();
        self.replicas[i].shared.metrics.render(&mut text);
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A session of alice through replica `port`, with a query of `seconds` running in it.
/// Returns the cancel token and the running query.
async fn sleeping_session(
    fleet: &Fleet,
    port: u16,
    alice: &Path,
    seconds: u32,
) -> (
    tokio_postgres::CancelToken,
    tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>>,
) {
    // TLS preferred rather than required (the relay requires it anyway), so that the cancel
    // token sends its CancelRequest in plaintext, as psql does.
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(crate::relay::client_tls(
        &fleet.d.out(),
        alice,
    ));
    let mut config = tokio_postgres::Config::new();
    config
        .host("shop.db.localhost")
        .hostaddr(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        .port(port)
        .user("app")
        .dbname("shop")
        .ssl_mode(tokio_postgres::config::SslMode::Prefer)
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config
        .connect(tls)
        .await
        .expect("connect through the replica");
    tokio::spawn(connection);
    let token = client.cancel_token();
    let query = tokio::spawn(async move {
        let result = client
            .simple_query(&format!("select pg_sleep({seconds})"))
            .await;
        drop(client);
        result
    });
    // Let the query reach the server before anything cancels it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    (token, query)
}

/// Sends the token's CancelRequest in plaintext to `port`, as psql does on Ctrl+C.
async fn cancel_via(token: &tokio_postgres::CancelToken, port: u16) {
    let socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect for the cancel");
    token
        .cancel_query_raw(socket, tokio_postgres::NoTls)
        .await
        .expect("send the CancelRequest");
}

/// Whether the query ended cancelled within `within` (false: it was still running, or ended
/// some other way).
async fn cancelled_within(
    query: tokio::task::JoinHandle<
        Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
    >,
    within: Duration,
) -> bool {
    match tokio::time::timeout(within, query).await {
        Ok(Ok(Err(error))) => error
            .as_db_error()
            .is_some_and(|e| e.code().code() == "57014"),
        _ => false,
    }
}

/// The (pid, secret) a cancel token carries, read from the CancelRequest it writes.
async fn key_of(token: &tokio_postgres::CancelToken) -> (u32, u32) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let read = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut packet = [0u8; 16];
        socket.read_exact(&mut packet).await.unwrap();
        packet
    });
    let socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let _ = token.cancel_query_raw(socket, tokio_postgres::NoTls).await;
    let packet = read.await.unwrap();
    (
        u32::from_be_bytes(packet[8..12].try_into().unwrap()),
        u32::from_be_bytes(packet[12..16].try_into().unwrap()),
    )
}

/// A forward in the relay's wire format: `DBWF`, version 1, origin, pid, secret, milliseconds
/// since the epoch, 16-byte nonce.
fn forward_bytes(origin: u16, key: (u32, u32), sent_ms: u64, nonce: [u8; 16]) -> Vec<u8> {
    let mut out = b"DBWF\x01".to_vec();
    out.extend(origin.to_be_bytes());
    out.extend(key.0.to_be_bytes());
    out.extend(key.1.to_be_bytes());
    out.extend(sent_ms.to_be_bytes());
    out.extend(nonce);
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A TLS client for the peer listener presenting `cert`/`key`, trusting the peer CA.
fn peer_client(out: &Path, cert: &Path, key: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(out.join("relay/peer-ca.crt")).expect("peer CA") {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Sends `bytes` to the peer listener on `port` with `connector`; returns the answer byte, or
/// `None` when the connection was refused or closed without one.
async fn send_forward(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    bytes: &[u8],
) -> Option<u8> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = ServerName::try_from("peer.dbward-relay.invalid").unwrap();
    let mut tls = connector.connect(name, tcp).await.ok()?;
    tls.write_all(bytes).await.ok()?;
    tls.flush().await.ok()?;
    let mut answer = [0u8; 1];
    tls.read_exact(&mut answer).await.ok()?;
    Some(answer[0])
}

#[test]
fn a_cancel_reaches_its_session_whatever_replica_receives_it() {
    let fleet = Fleet::start();
    let alice = fleet.d.issue("alice", "1h");
    for (holder, receiver) in [(0, 1), (0, 2), (1, 0), (2, 1), (1, 1)] {
        let (port, via) = (fleet.replicas[holder].port, fleet.replicas[receiver].port);
        let cancelled = fleet.d.block(async {
            let (token, query) = sleeping_session(&fleet, port, &alice, 60).await;
            let (pid, _) = key_of(&token).await;
            assert_eq!(
                pid >> 19,
                u32::from(fleet.replicas[holder].id),
                "the key carries its replica's peer id"
            );
            let started = Instant::now();
            cancel_via(&token, via).await;
            (
                cancelled_within(query, Duration::from_secs(10)).await,
                started.elapsed(),
            )
        });
        assert!(
            cancelled.0,
            "a session on replica {} was not cancelled by a CancelRequest sent to replica {}",
            fleet.replicas[holder].id, fleet.replicas[receiver].id
        );
        assert!(cancelled.1 < Duration::from_secs(3), "{:?}", cancelled.1);
    }
    // Forwards went out from the receivers and were served by the holders: (0,1) and (2,1)
    // from replica 1, (0,2) from replica 2, (1,0) from replica 0; (1,1) stayed local.
    let forwarded = "dbward_cancel_forwards_total{outcome=\"forwarded\"}";
    let served = "dbward_peer_forwards_received_total{outcome=\"served\"}";
    // A forwarder counts its forward once the holder acknowledged it, which can be just after
    // the holder cancelled the query.
    let counted = dbward_tests::wait_for(Duration::from_secs(5), || {
        let counts = [0, 1, 2].map(|i| fleet.metric(i, forwarded));
        (counts == [1.0, 2.0, 1.0]).then_some(())
    });
    assert!(
        counted.is_some(),
        "{:?}",
        [0, 1, 2].map(|i| fleet.metric(i, forwarded))
    );
    assert_eq!([0, 1, 2].map(|i| fleet.metric(i, served)), [2.0, 1.0, 1.0]);
    for i in 0..3 {
        assert!(fleet.refusals(i).is_empty(), "{:?}", fleet.refusals(i));
    }
}

#[test]
fn forged_replayed_stale_and_second_hop_forwards_are_refused_and_audited() {
    let fleet = Fleet::start();
    let alice = fleet.d.issue("alice", "1h");
    let out = fleet.d.out();
    let peer = peer_client(
        &out,
        &out.join("relay/peer.crt"),
        &out.join("relay/peer.key"),
    );
    let person = peer_client(
        &out,
        &alice.join("postgresql.crt"),
        &alice.join("postgresql.key"),
    );
    let (a, b) = (&fleet.replicas[0], &fleet.replicas[1]);

    fleet.d.block(async {
        // A person's certificate (or none, or garbage) is not a replica's: the forward never
        // gets past the handshake, and the query keeps running.
        let (token, query) = sleeping_session(&fleet, a.port, &alice, 3).await;
        let key = key_of(&token).await;
        let forged = forward_bytes(b.id, key, now_ms(), [1; 16]);
        assert_eq!(send_forward(&person, a.peer_port, &forged).await, None);
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", a.peer_port))
            .await
            .unwrap();
        let _ = plain.write_all(&forged).await;
        drop(plain);
        let finished = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("the query finished")
            .unwrap();
        assert!(
            finished.is_ok(),
            "a forged forward cancelled the query: {finished:?}"
        );

        // A real forward cancels; the same bytes again are a replay and do not.
        let (token, query) = sleeping_session(&fleet, a.port, &alice, 60).await;
        let key = key_of(&token).await;
        let genuine = forward_bytes(b.id, key, now_ms(), [2; 16]);
        assert_eq!(send_forward(&peer, a.peer_port, &genuine).await, Some(b'K'));
        assert!(cancelled_within(query, Duration::from_secs(10)).await);

        let (token, query) = sleeping_session(&fleet, a.port, &alice, 3).await;
        let key = key_of(&token).await;
        let replayed = forward_bytes(b.id, key, now_ms(), [2; 16]);
        assert_eq!(send_forward(&peer, a.peer_port, &replayed).await, None);
        // Stale (sent a minute ago), from an unlisted peer, from itself, and a key that is
        // not the receiver's (a second hop): all refused.
        let stale = forward_bytes(b.id, key, now_ms() - 60_000, [3; 16]);
        assert_eq!(send_forward(&peer, a.peer_port, &stale).await, None);
        let unknown = forward_bytes(9, key, now_ms(), [4; 16]);
        assert_eq!(send_forward(&peer, a.peer_port, &unknown).await, None);
        let itself = forward_bytes(a.id, key, now_ms(), [5; 16]);
        assert_eq!(send_forward(&peer, a.peer_port, &itself).await, None);
        let second_hop = forward_bytes(fleet.replicas[2].id, key, now_ms(), [6; 16]);
        assert_eq!(send_forward(&peer, b.peer_port, &second_hop).await, None);
        let finished = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("the query finished")
            .unwrap();
        assert!(
            finished.is_ok(),
            "a refused forward cancelled the query: {finished:?}"
        );
    });

    // Each refusal is audited with its reason, on the replica that refused it; no key or
    // secret is ever written.
    let wait = dbward_tests::wait_for(Duration::from_secs(5), || {
        (fleet.refusals(0).len() >= 6).then_some(())
    });
    assert!(wait.is_some(), "{:?}", fleet.refusals(0));
    let reasons: Vec<String> = fleet.refusals(0).into_iter().map(|(r, _)| r).collect();
    for expected in ["handshake", "replayed", "stale", "unknown_peer"] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "{expected} in {reasons:?}"
        );
    }
    let b_refusals = fleet.refusals(1);
    assert!(
        b_refusals
            .iter()
            .any(|(r, m)| r == "not_ours" && m.contains("one hop")),
        "{b_refusals:?}"
    );
    assert_eq!(
        fleet.metric(
            0,
            "dbward_peer_forwards_received_total{outcome=\"replayed\"}"
        ),
        1.0
    );
    assert_eq!(
        fleet.metric(1, "dbward_cancel_forwards_total{outcome=\"forwarded\"}"),
        0.0,
        "a refused forward is never forwarded again"
    );
}

#[test]
fn unknown_keys_are_dropped_silently() {
    let fleet = Fleet::start();
    fleet.d.block(async {
        // Keys of no replica (id 7 is not listed), of this replica with no session, and of
        // another replica with no session: nothing is answered, nothing cancelled.
        for pid in [7u32 << 19 | 5, 1 << 19 | 5, 2 << 19 | 5] {
            let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", fleet.replicas[0].port))
                .await
                .unwrap();
            let mut packet = 16u32.to_be_bytes().to_vec();
            packet.extend(80_877_102u32.to_be_bytes());
            packet.extend(pid.to_be_bytes());
            packet.extend(99u32.to_be_bytes());
            socket.write_all(&packet).await.unwrap();
            let mut answer = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
                    .await
                    .expect("the relay closed the cancel connection");
            assert!(read.is_ok() && answer.is_empty(), "answered {answer:?}");
        }
    });
    // Only the key of a listed replica was forwarded; it found no session there, silently.
    let forwards = |outcome: &str| {
        fleet.metric(
            0,
            &format!("dbward_cancel_forwards_total{{outcome=\"{outcome}\"}}"),
        )
    };
    // The relay closes a cancel connection once it has read the request, before it acts on
    // it (as PostgreSQL does): wait for the forward.
    let forwarded = dbward_tests::wait_for(Duration::from_secs(10), || {
        (forwards("forwarded") + forwards("failed") >= 1.0).then_some(())
    });
    assert!(forwarded.is_some(), "nothing was forwarded");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        (forwards("forwarded"), forwards("failed")),
        (1.0, 0.0),
        "replica 1 forwarded, failed"
    );
    for i in 0..3 {
        assert!(fleet.refusals(i).is_empty(), "{:?}", fleet.refusals(i));
    }
}

#[test]
fn a_replica_must_know_its_peer_id() {
    let fleet = Fleet::start();
    let frozen = fleet.d.out().join("relay/frozen.json");
    // `--check` passes: the peer certificate, key and CA are verified with the rest.
    let check = run_bin(
        "dbward-relay",
        &["--config", frozen.to_str().unwrap(), "--check"],
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let start = |args: &[&str]| {
        std::process::Command::new(dbward_tests::workspace_bin("dbward-relay"))
            .arg("--config")
            .arg(&frozen)
            .args(args)
            .env_remove("DBWARD_RELAY_PEER_ID")
            .output()
            .unwrap()
    };
    let unlisted = start(&["--peer-id", "9"]);
    let stderr = String::from_utf8_lossy(&unlisted.stderr);
    assert_eq!(unlisted.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "peer id 9 (from --peer-id 9) is not one of the peers the config lists (1, 2, 3)"
        ),
        "{stderr}"
    );
    let out_of_range = start(&["--peer-id", "5000"]);
    assert_eq!(out_of_range.status.code(), Some(2));
}

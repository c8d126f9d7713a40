//! The relay end to end: `dbward apply` on a test manifest → a real PostgreSQL started with the
//! generated configuration → the relay (in-process, through `dbward_relay::run`) on the
//! generated `frozen.json` → person certificates from `dbward cert issue` → real `psql` and
//! tokio-postgres through the relay. Covers access, every refusal (message + audit event),
//! cancel, an upstream restart, 200 concurrent sessions and reload.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbward_relay::audit::AuditSink;
use dbward_relay::metrics::Metrics;
use dbward_relay::state::Shared;
use dbward_tests::{Cluster, free_port, psql_command, run_bin, superuser_sql, wait_for};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

/// The public name of the test relay; databases are `<db>.db.localhost`.
pub(crate) const PUBLIC_NAME: &str = "db.localhost";

/// The test manifest. `shop` is the real database; `vault` exists only in the manifest (no
/// server listens on its port, so a session allowed there fails to connect upstream).
/// `{extra}` is appended as is.
fn manifest(
    cluster: &Cluster,
    relay_port: u16,
    audit: &Path,
    relay_extra: &str,
    extra: &str,
) -> String {
    format!(
        r#"dbward version=1
relay {{
    listen "127.0.0.1:{relay_port}"
    public-name "{PUBLIC_NAME}"
    client-cert-ttl "1h"
    audit "{audit}" queries=#true
{relay_extra}
}}
database shop {{
    postgres host="127.0.0.1" port={pg_port} version=15
    labels env=dev
    self-hosted {{
        server-names "localhost" "127.0.0.1"
        config-dir "{config_dir}"
    }}
    admin-user "dbward-admin" default-database=postgres
    db-role reader {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT on=all-tables schema=public
    }}
    db-user app {{
        member-of reader
    }}
    db-user readonly {{
        member-of reader
    }}
}}
database vault {{
    postgres host="127.0.0.1" port={vault_port} version=15
    labels env=prod
    self-hosted {{
        server-names "localhost" "127.0.0.1"
        config-dir "/var/lib/dbward-test/vault"
    }}
    db-user keeper
}}
role developer {{
    allow {{
        databases env=dev
        db-users app
        db-names shop
    }}
}}
role guard {{
    allow {{
        databases env=prod
        db-users keeper
        db-names vault
    }}
}}
role no-dev {{
    deny {{
        databases env=dev
    }}
}}
user alice {{
    roles developer
}}
user bob {{
    roles guard
}}
user carol {{
    roles developer no-dev
}}
user dave
{extra}
"#,
        audit = audit.display(),
        pg_port = cluster.port,
        config_dir = cluster.config_dir().display(),
        vault_port = free_port(),
    )
}

/// A whole deployment: PostgreSQL, the applied output directory, and the relay running
/// in-process on its own runtime. Everything is stopped and removed on drop.
pub(crate) struct Deployment {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) cluster: Cluster,
    pub(crate) relay_port: u16,
    /// The relay's runtime; its worker threads serve sessions while tests block on clients.
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) shared: Arc<Shared>,
    pub(crate) shutdown: CancellationToken,
    /// The relay's listening socket (a duplicate descriptor), to read its options.
    pub(crate) listening: socket2::Socket,
}

impl Deployment {
    pub(crate) fn start() -> Deployment {
        Deployment::start_with(|cluster| {
            // Room for the 200-session test, plus the superuser.
            cluster.append_conf("max_connections = 250");
        })
    }

    pub(crate) fn start_with(tune: impl FnOnce(&mut Cluster)) -> Deployment {
        Deployment::start_extra("", tune)
    }

    /// The same deployment, with `extra` appended to the manifest.
    pub(crate) fn start_extra(extra: &str, tune: impl FnOnce(&mut Cluster)) -> Deployment {
        Deployment::start_full("", extra, tune)
    }

    /// The same deployment, with `relay_extra` in the manifest's `relay` block and `extra`
    /// appended to it.
    pub(crate) fn start_full(
        relay_extra: &str,
        extra: &str,
        tune: impl FnOnce(&mut Cluster),
    ) -> Deployment {
        let dir = tempfile::Builder::new()
            .prefix("dbward-relay-e2e-")
            .tempdir()
            .expect("temp dir");
        let mut cluster = Cluster::init();
        let relay_port = free_port();
        let deployment_paths = (dir.path().join("manifest.kdl"), dir.path().join("out"));
        let audit = dir.path().join("audit.jsonl");
        fs::write(
            &deployment_paths.0,
            manifest(&cluster, relay_port, &audit, relay_extra, extra),
        )
        .expect("write manifest");
        apply(&deployment_paths.0, &deployment_paths.1);

        cluster.install_dbward(&deployment_paths.1, "shop");
        tune(&mut cluster);
        if let Err(log) = cluster.try_start() {
            panic!("PostgreSQL refused the generated configuration:\n{log}");
        }
        superuser_sql(&cluster, "postgres", "CREATE DATABASE shop;");
        cluster
            .peer_sql_file("shop", &deployment_paths.1.join("databases/shop/setup.sql"))
            .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let frozen = deployment_paths.1.join("relay/frozen.json");
        let loaded = dbward_relay::config::load(&frozen)
            .unwrap_or_else(|e| panic!("the relay refused the generated config: {e}"));
        let audit_sink = AuditSink::start(
            Some(audit),
            dbward_relay::replica::ReplicaId::parse("test").unwrap(),
        )
        .expect("open audit log");
        let shared = Arc::new(Shared::new(loaded, audit_sink, Metrics::new()));
        let shutdown = CancellationToken::new();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", relay_port)))
            .expect("bind relay port");
        let listening = socket2::SockRef::from(&listener)
            .try_clone()
            .expect("dup the listening socket");
        rt.spawn(dbward_relay::run(
            listener,
            Arc::clone(&shared),
            shutdown.clone(),
        ));
        Deployment {
            dir,
            cluster,
            relay_port,
            rt,
            shared,
            shutdown,
            listening,
        }
    }

    /// Runs a client future on the relay's runtime; fails the test instead of hanging.
    pub(crate) fn block<F: std::future::Future>(&self, future: F) -> F::Output {
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(120), future)
                .await
                .expect("a client operation hung for 2 minutes")
        })
    }

    /// Changes the limits of the config in force (the manifest has no syntax for them yet).
    pub(crate) fn set_limits(&self, change: impl FnOnce(&mut dbward_frozen::Limits)) {
        let mut loaded =
            dbward_relay::config::load(&self.out().join("relay/frozen.json")).expect("load config");
        change(&mut loaded.config.relay.limits);
        self.shared.replace_config(loaded);
    }

    pub(crate) fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("manifest.kdl")
    }

    pub(crate) fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Issues a certificate for `person` with `dbward cert issue`; returns its directory
    /// (postgresql.crt, postgresql.key, root.crt).
    pub(crate) fn issue(&self, person: &str, ttl: &str) -> PathBuf {
        let dest = self.dir.path().join(format!("people/{person}-{ttl}"));
        if !dest.join("postgresql.crt").exists() {
            run_bin(
                "dbward",
                &[
                    "cert",
                    "issue",
                    self.manifest_path().to_str().unwrap(),
                    "--out",
                    self.out().to_str().unwrap(),
                    "--user",
                    person,
                    "--ttl",
                    ttl,
                    "--dest",
                    dest.to_str().unwrap(),
                ],
            );
        }
        dest
    }

    /// Every audit event written so far.
    pub(crate) fn audit(&self) -> Vec<Value> {
        self.shared.audit.flush();
        let text = fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).expect("audit line is JSON"))
            .collect()
    }

    /// The last audit event of a kind.
    pub(crate) fn last_event(&self, event: &str) -> Value {
        let events = self.audit();
        events
            .into_iter()
            .rev()
            .find(|e| e["event"] == event)
            .unwrap_or_else(|| panic!("no {event} audit event"))
    }

    /// Runs real psql through the relay.
    pub(crate) fn psql(&self, conninfo: &str, sql: &str) -> Result<String, String> {
        let mut child = psql_command(conninfo, sql, self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        // A relay that wedged must fail the test, not hang it.
        let finished = wait_for(Duration::from_secs(120), || child.try_wait().ok().flatten());
        if finished.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("psql output");
        assert!(
            finished.is_some(),
            "psql hung for 2 minutes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A libpq connection string through the relay to `host` (a database's SNI name).
    pub(crate) fn conninfo(
        &self,
        host: &str,
        certs: Option<&Path>,
        user: &str,
        dbname: &str,
    ) -> String {
        let tls = match certs {
            Some(dir) => format!(
                "sslmode=verify-full sslrootcert={root} sslcert={dir}/postgresql.crt \
                 sslkey={dir}/postgresql.key",
                root = self.out().join("ca/server-ca.crt").display(),
                dir = dir.display()
            ),
            None => format!(
                "sslmode=verify-full sslrootcert={} sslcert=/nonexistent sslkey=/nonexistent",
                self.out().join("ca/server-ca.crt").display()
            ),
        };
        format!(
            "host={host} hostaddr=127.0.0.1 port={} user={user} dbname={dbname} {tls}",
            self.relay_port
        )
    }

    /// A tokio-postgres connection through the relay.
    pub(crate) async fn connect(
        &self,
        certs: &Path,
        user: &str,
        dbname: &str,
    ) -> Result<(tokio_postgres::Client, MakeRustlsConnect), tokio_postgres::Error> {
        connect(self.relay_port, &self.out(), certs, user, dbname).await
    }
}

/// A tokio-postgres connection through the relay on `port` to `shop`, verify-full against the
/// server CA under `out`, presenting the certificate in `certs`.
pub(crate) async fn connect(
    port: u16,
    out: &Path,
    certs: &Path,
    user: &str,
    dbname: &str,
) -> Result<(tokio_postgres::Client, MakeRustlsConnect), tokio_postgres::Error> {
    let tls = MakeRustlsConnect::new(client_tls(out, certs));
    let mut config = tokio_postgres::Config::new();
    config
        .host(format!("shop.{PUBLIC_NAME}"))
        .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(port)
        .user(user)
        .dbname(dbname)
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(tls.clone()).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, tls))
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) fn apply(manifest: &Path, out: &Path) {
    run_bin(
        "dbward",
        &[
            "apply",
            manifest.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--auto-approve",
        ],
    );
}

/// rustls client config for tokio-postgres: trust the server CA, present the person's cert.
pub(crate) fn client_tls(out: &Path, certs: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(out.join("ca/server-ca.crt")).expect("root CA") {
        roots.add(cert.expect("root CA PEM")).expect("add root");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.join("postgresql.crt"))
            .expect("person cert")
            .map(|c| c.expect("cert PEM"))
            .collect();
    let key = PrivateKeyDer::from_pem_file(certs.join("postgresql.key")).expect("person key");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth cert")
}

/// A certificate for `alice` signed by a CA the relay has never seen.
fn foreign_certificate(dir: &Path) -> PathBuf {
    let dest = dir.join("people/foreign");
    fs::create_dir_all(&dest).unwrap();
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "impostor CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    let cert = params.signed_by(&key, &ca).unwrap();
    fs::write(dest.join("postgresql.crt"), cert.pem()).unwrap();
    let key_path = dest.join("postgresql.key");
    fs::write(&key_path, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    dest
}

#[test]
fn psql_and_tokio_postgres_work_through_the_relay() {
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");
    superuser_sql(
        &d.cluster,
        "shop",
        "CREATE TABLE items (name text); INSERT INTO items VALUES ('apple'); \
         GRANT SELECT ON items TO reader;",
    );

    // Real psql, verify-full against the relay's certificate, database chosen by SNI.
    let shop = d.conninfo(&format!("shop.{PUBLIC_NAME}"), Some(&alice), "app", "shop");
    let psql = |sql| {
        d.psql(&shop, sql)
            .unwrap_or_else(|e| panic!("psql through the relay failed: {e}"))
    };
    assert_eq!(
        psql("select current_user || '@' || current_database() || ' ' || (select name from items)"),
        "app@shop apple"
    );
    // Upstream, the relay offers TLS 1.3 with AES-128-GCM-SHA256 only: PostgreSQL's own order
    // would pick AES-256-GCM-SHA384 (SHA-384 costs every handshake more).
    assert_eq!(
        psql("select version || ' ' || cipher from pg_stat_ssl where pid = pg_backend_pid()"),
        "TLSv1.3 TLS_AES_128_GCM_SHA256"
    );
    // Client sockets get TCP_NODELAY and keepalive from the listening socket (Linux copies
    // them on accept; a relay unit test checks the copy).
    assert!(
        d.listening.tcp_nodelay().unwrap(),
        "TCP_NODELAY on the listener"
    );
    assert!(
        d.listening.keepalive().unwrap(),
        "keepalive on the listener"
    );

    // No SNI (an IP address as host): the database is named in options, and stripped before
    // PostgreSQL sees it.
    let by_option = format!(
        "host=127.0.0.1 port={} user=app dbname=shop sslmode=require \
         sslcert={dir}/postgresql.crt sslkey={dir}/postgresql.key \
         options='-c dbward.database=shop -c search_path=viaoption'",
        d.relay_port,
        dir = alice.display()
    );
    let name = d
        .psql(&by_option, "show search_path")
        .unwrap_or_else(|e| panic!("options-selected database failed: {e}"));
    assert_eq!(name, "viaoption");

    // The pg_service.conf that `dbward cert issue` wrote works as it is (plus hostaddr, since
    // this machine need not resolve *.db.localhost).
    let out = psql_command(
        "service=shop hostaddr=127.0.0.1",
        "select current_user",
        d.dir.path(),
    )
    .env("PGSERVICEFILE", alice.join("pg_service.conf"))
    .output()
    .expect("run psql");
    assert!(
        out.status.success(),
        "psql with the issued service file failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");

    // tokio-postgres: simple and extended protocol, a bulk result.
    let rows = d.block(async {
        let (client, _) = d.connect(&alice, "app", "shop").await.expect("connect");
        let row = client
            .query_one("select $1::int + 1", &[&41i32])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        let rows = client
            .query(
                "select repeat('x', 1000) from generate_series(1, 5000)",
                &[],
            )
            .await
            .unwrap();
        client.simple_query("select 'simple'").await.unwrap();
        rows.len()
    });
    assert_eq!(rows, 5000);

    // Audit: start, queries (simple and Parse) and end, with who and where; never the
    // bound parameter values.
    let events = wait_for(Duration::from_secs(5), || {
        let events = d.audit();
        (events
            .iter()
            .filter(|e| e["event"] == "session.end")
            .count()
            >= 5)
            .then_some(events)
    })
    // Four psql sessions and the tokio-postgres one (whose end carries the 5 MB count).
    .expect("five session.end events");
    let start = events
        .iter()
        .find(|e| e["event"] == "session.start")
        .expect("session.start");
    assert_eq!(start["identity"], "alice");
    assert_eq!(start["database"], "shop");
    assert_eq!(start["db_user"], "app");
    assert_eq!(start["db_name"], "shop");
    let queries: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "session.query")
        .filter_map(|e| e["query"].as_str())
        .collect();
    assert!(queries.contains(&"select $1::int + 1"), "{queries:?}");
    assert!(queries.contains(&"select 'simple'"), "{queries:?}");
    // The tokio-postgres session carried the 5 MB result.
    let most = events
        .iter()
        .filter(|e| e["event"] == "session.end")
        .filter_map(|e| e["bytes_server_to_client"].as_u64())
        .max()
        .unwrap();
    assert!(most > 5_000_000, "{most}");

    // Every session ended, so every cancel key is forgotten.
    assert!(
        wait_for(Duration::from_secs(5), || d
            .shared
            .cancel
            .is_empty()
            .then_some(()))
        .is_some(),
        "cancel keys outlive their sessions"
    );
}

/// A server whose OpenSSL offers no AES-128-GCM-SHA256 for TLS 1.3 (e.g. a "FUTURE" crypto
/// policy) refuses the relay's fast offer: sessions still work, with the full list of suites,
/// and the refusal costs one failed handshake, not one per session.
#[test]
fn an_upstream_without_aes_128_gets_the_full_list_once() {
    let d = Deployment::start_with(|cluster| {
        let conf = cluster.root().join("openssl-aes256-only.cnf");
        fs::write(
            &conf,
            "openssl_conf = openssl_init\n\
             [openssl_init]\nssl_conf = ssl_module\n\
             [ssl_module]\nsystem_default = tls_defaults\n\
             [tls_defaults]\nCiphersuites = TLS_AES_256_GCM_SHA384\n",
        )
        .expect("write openssl.cnf");
        cluster.set_server_env("OPENSSL_CONF", conf.to_str().unwrap());
    });
    let alice = d.issue("alice", "1h");
    let conninfo = d.conninfo(&format!("shop.{PUBLIC_NAME}"), Some(&alice), "app", "shop");
    for _ in 0..3 {
        let cipher = d
            .psql(
                &conninfo,
                "select cipher from pg_stat_ssl where pid = pg_backend_pid()",
            )
            .unwrap_or_else(|e| panic!("psql through the relay failed: {e}"));
        assert_eq!(cipher, "TLS_AES_256_GCM_SHA384");
    }
    let refused = d.cluster.log().matches("no shared cipher").count();
    assert_eq!(
        refused,
        1,
        "the fast offer is refused once, then remembered; server log:\n{}",
        d.cluster.log()
    );
}

#[test]
fn refusals_say_why_and_are_audited() {
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");
    let bob = d.issue("bob", "1h");
    let carol = d.issue("carol", "1h");
    let dave = d.issue("dave", "1h");
    let expired = d.issue("alice", "1s");
    let foreign = foreign_certificate(d.dir.path());
    let shop = format!("shop.{PUBLIC_NAME}");
    std::thread::sleep(Duration::from_millis(2100)); // let the 1s certificate expire

    let before = d.cluster.log().matches("connection authorized").count();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "person with no role for the database",
            d.conninfo(&shop, Some(&bob), "app", "shop"),
            "bob has no access to database \"shop\"",
            "no_access",
        ),
        (
            "person without any role",
            d.conninfo(&shop, Some(&dave), "app", "shop"),
            "dave has no access to database \"shop\"",
            "no_access",
        ),
        (
            "db user not allowed",
            d.conninfo(&shop, Some(&alice), "readonly", "shop"),
            "alice is not allowed to log in to database \"shop\" as user \"readonly\"",
            "db_user_not_allowed",
        ),
        (
            "db name not allowed",
            d.conninfo(&shop, Some(&alice), "app", "postgres"),
            "alice is not allowed to open database name \"postgres\"",
            "db_name_not_allowed",
        ),
        (
            "deny rule",
            d.conninfo(&shop, Some(&carol), "app", "shop"),
            "carol has no access to database \"shop\"",
            "no_access",
        ),
        (
            "expired certificate",
            d.conninfo(&shop, Some(&expired), "app", "shop"),
            "the client certificate has expired",
            "certificate",
        ),
        (
            "certificate from another CA",
            d.conninfo(&shop, Some(&foreign), "app", "shop"),
            "not issued by this relay's users' CA",
            "certificate",
        ),
        (
            "no certificate",
            d.conninfo(&shop, None, "app", "shop"),
            "no client certificate was presented",
            "certificate",
        ),
        (
            "plaintext startup",
            format!(
                "host={shop} hostaddr=127.0.0.1 port={} user=app dbname=shop sslmode=disable",
                d.relay_port
            ),
            "TLS required",
            "tls_required",
        ),
        (
            "database not in the manifest",
            d.conninfo(&format!("nope.{PUBLIC_NAME}"), Some(&alice), "app", "shop"),
            "database \"nope\" is not in this relay's manifest",
            "unknown_database",
        ),
    ];
    for (what, conninfo, message, reason) in cases {
        let err = d
            .psql(&conninfo, "select 1")
            .expect_err(&format!("{what}: psql must be refused"));
        assert!(
            err.contains(message),
            "{what}: psql said {err:?}, expected {message:?}"
        );
        let event = wait_for(Duration::from_secs(5), || {
            let event = d.last_event("session.denied");
            (event["message"]
                .as_str()
                .is_some_and(|m| m.contains(message)))
            .then_some(event)
        })
        .unwrap_or_else(|| panic!("{what}: no session.denied audit event for it"));
        assert_eq!(event["reason"], reason, "{what}: {event}");
    }
    // Nothing above reached PostgreSQL.
    let after = d.cluster.log().matches("connection authorized").count();
    assert_eq!(before, after, "a refused session reached PostgreSQL");

    // Allowed, but the upstream is down: the client is told which database and why.
    let err = d
        .psql(
            &d.conninfo(
                &format!("vault.{PUBLIC_NAME}"),
                Some(&bob),
                "keeper",
                "vault",
            ),
            "select 1",
        )
        .expect_err("vault has no server");
    assert!(
        err.contains("cannot open a session on database \"vault\"")
            && err.contains("cannot connect to 127.0.0.1:"),
        "psql said {err:?}"
    );
    let event = d.last_event("session.denied");
    assert_eq!(event["reason"], "upstream", "{event}");
    assert_eq!(event["identity"], "bob", "{event}");
}

/// Raw protocol abuse: the relay closes, and never panics or hangs past its handshake timeout.
#[test]
fn protocol_violations_are_closed() {
    let d = Deployment::start();
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", d.relay_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    };
    let ssl_request = [0u8, 0, 0, 8, 4, 210, 22, 47];
    let read_all = |mut s: TcpStream| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    };

    // Bytes after SSLRequest before the handshake (CVE-2021-23214 class): closed unanswered.
    let mut s = connect();
    let mut packet = ssl_request.to_vec();
    packet.extend_from_slice(b"Q\0\0\0\rselect 1\0");
    s.write_all(&packet).unwrap();
    assert_eq!(
        read_all(s),
        b"",
        "buffered bytes after SSLRequest must not be answered"
    );

    // GSSENCRequest is declined once, then SSLRequest is accepted.
    let mut s = connect();
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 48]).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N");
    s.write_all(&ssl_request).unwrap();
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"S");
    drop(s);

    // An oversized startup packet is closed at once.
    let mut s = connect();
    s.write_all(&20_000u32.to_be_bytes()).unwrap();
    let started = Instant::now();
    assert_eq!(read_all(s), b"");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not closed at once"
    );

    // A truncated, slow packet is closed within the handshake timeout.
    d.set_limits(|limits| limits.handshake_timeout_ms = 1500);
    let timeout = 1500;
    let mut s = connect();
    s.write_all(&[0, 0, 0, 40, 0, 3]).unwrap();
    let started = Instant::now();
    let _ = read_all(s);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(timeout - 100)
            && waited <= Duration::from_millis(timeout + 5000),
        "a stalled handshake stayed open {waited:?} (timeout {timeout} ms)"
    );

    // Random bytes as first packets, and random bytes after a valid SSLRequest (which the TLS
    // handshake must reject): nothing crashes or wedges the relay.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..100 {
        let mut s = connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut junk: Vec<u8> = (0..(next() % 300)).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            let _ = s.write_all(&ssl_request);
            let mut answer = [0u8; 1];
            let _ = s.read_exact(&mut answer);
        } else if let Some(first) = junk.first_mut() {
            // Not 0x16, so the packet is parsed as a startup packet rather than TLS.
            *first = 0;
        }
        let _ = s.write_all(&junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = read_all(s);
    }

    // The relay still serves.
    let alice = d.issue("alice", "1h");
    d.psql(
        &d.conninfo(&format!("shop.{PUBLIC_NAME}"), Some(&alice), "app", "shop"),
        "select 1",
    )
    .unwrap_or_else(|e| panic!("relay no longer serves: {e}"));
}

#[test]
fn cancel_works_from_tokio_postgres_and_from_psql() {
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");

    // tokio-postgres: its cancel token connects to the relay (TLS), sending our key.
    d.block(async {
        let (client, tls) = d.connect(&alice, "app", "shop").await.expect("connect");
        let token = client.cancel_token();
        let started = Instant::now();
        let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(60)").await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tls).await.expect("send cancel");
        let result = tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("query still running 5 s after cancel")
            .unwrap();
        let err = result.expect_err("the query was cancelled");
        assert!(
            err.to_string()
                .contains("canceling statement due to user request")
                || format!("{err:?}").contains("57014"),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{:?}",
            started.elapsed()
        );
    });

    // psql: SIGINT makes it send a CancelRequest on a fresh plaintext connection.
    let conninfo = d.conninfo(&format!("shop.{PUBLIC_NAME}"), Some(&alice), "app", "shop");
    let child = psql_command(&conninfo, "select pg_sleep(60)", d.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    let running = wait_for(Duration::from_secs(10), || {
        let active = superuser_sql(
            &d.cluster,
            "postgres",
            "\\pset tuples_only on\nselect count(*) from pg_stat_activity \
             where query = 'select pg_sleep(60)' and state = 'active';",
        );
        (active.trim() == "1").then_some(())
    });
    assert!(running.is_some(), "psql's query never started");
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "psql said: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_postgres_restart_ends_sessions_and_the_relay_recovers() {
    let mut d = Deployment::start();
    let alice = d.issue("alice", "1h");
    let (client, _) = d.block(d.connect(&alice, "app", "shop")).expect("connect");
    d.block(client.simple_query("select 1")).expect("query");
    d.cluster.restart();
    let err = d
        .block(client.simple_query("select 1"))
        .expect_err("a session whose backend was restarted must fail");
    assert!(!err.to_string().is_empty());
    // A new session works.
    let out = d
        .psql(
            &d.conninfo(&format!("shop.{PUBLIC_NAME}"), Some(&alice), "app", "shop"),
            "select 'again'",
        )
        .unwrap_or_else(|e| panic!("relay does not serve after a restart: {e}"));
    assert_eq!(out, "again");
}

#[test]
fn two_hundred_concurrent_sessions() {
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");
    let results = d.block(async {
        tokio::time::timeout(Duration::from_secs(180), async {
            let barrier = Arc::new(tokio::sync::Barrier::new(200));
            let mut sessions = tokio::task::JoinSet::new();
            for i in 0..200i64 {
                let barrier = Arc::clone(&barrier);
                let (port, out, alice) = (d.relay_port, d.out(), alice.clone());
                sessions.spawn(async move {
                    let connected = connect(port, &out, &alice, "app", "shop").await;
                    // All 200 are open at the same time before anyone queries or leaves (a failed
                    // one still arrives, so that the others never wait for it).
                    barrier.wait().await;
                    let (client, _) = connected?;
                    let mut sum = 0i64;
                    for j in 0..5i64 {
                        let row = client
                            .query_one("select $1::bigint * 2", &[&(i + j)])
                            .await?;
                        sum += row.get::<_, i64>(0);
                    }
                    Ok::<(i64, i64), tokio_postgres::Error>((i, sum))
                });
            }
            sessions.join_all().await
        })
        .await
        .expect("200 sessions did not finish within 3 minutes")
    });
    assert_eq!(results.len(), 200);
    for result in results {
        let (i, sum) = result.unwrap_or_else(|e| panic!("a session failed: {e}"));
        let expected: i64 = (0..5).map(|j| (i + j) * 2).sum();
        assert_eq!(sum, expected, "session {i}");
    }
    let ended = wait_for(Duration::from_secs(10), || {
        let ends = d
            .audit()
            .iter()
            .filter(|e| e["event"] == "session.end")
            .count();
        (ends >= 200 && d.shared.cancel.is_empty()).then_some(())
    });
    assert!(ended.is_some(), "not every session ended cleanly");
}

#[test]
fn reload_applies_to_new_sessions_only() {
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");
    let bob = d.issue("bob", "1h");
    let shop = format!("shop.{PUBLIC_NAME}");

    // A session in flight under the old config.
    let (client, _) = d.block(d.connect(&alice, "app", "shop")).expect("connect");
    let err = d
        .psql(&d.conninfo(&shop, Some(&bob), "app", "shop"), "select 1")
        .expect_err("bob has no access yet");
    assert!(err.contains("no access"), "{err}");

    // New manifest: bob becomes a developer, alice loses her role. Apply, then reload.
    let text = fs::read_to_string(d.manifest_path()).unwrap();
    let text = text
        .replace(
            "user alice {\n    roles developer\n}",
            "user alice {\n    roles guard\n}",
        )
        .replace(
            "user bob {\n    roles guard\n}",
            "user bob {\n    roles developer\n}",
        );
    fs::write(d.manifest_path(), text).unwrap();
    apply(&d.manifest_path(), &d.out());
    // What SIGHUP runs in `dbward-relay`.
    assert!(
        dbward_relay::ops::reload(&d.shared, &d.out().join("relay/frozen.json")),
        "the new config was not taken"
    );

    // The session in flight continues; new sessions follow the new access table.
    let row = d
        .block(client.query_one("select 7", &[]))
        .expect("in-flight session");
    assert_eq!(row.get::<_, i32>(0), 7);
    d.psql(&d.conninfo(&shop, Some(&bob), "app", "shop"), "select 1")
        .unwrap_or_else(|e| panic!("bob should have access after reload: {e}"));
    let err = d
        .psql(&d.conninfo(&shop, Some(&alice), "app", "shop"), "select 1")
        .expect_err("alice lost access");
    assert!(err.contains("alice has no access"), "{err}");
}

/// PostgreSQL 17's direct TLS (`sslnegotiation=direct`): TLS from the first byte, ALPN
/// `postgresql` required. Spoken here with rustls directly, as psql 15 cannot.
#[test]
fn direct_tls_with_alpn_works_and_without_alpn_is_refused_in_the_handshake() {
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");
    let packet = |version: u32, params: &[u8]| {
        let mut body = version.to_be_bytes().to_vec();
        body.extend_from_slice(params);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        packet
    };
    let startup = packet(0x0003_0000, b"user\0app\0database\0shop\0\0");
    let attempt = |alpn: bool, startup: &[u8]| -> Vec<u8> {
        let mut config = client_tls(&d.out(), &alice);
        if alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        let name = format!("shop.{PUBLIC_NAME}").try_into().unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let sock = TcpStream::connect(("127.0.0.1", d.relay_port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        if tls.write_all(startup).and_then(|_| tls.flush()).is_err() {
            return Vec::new();
        }
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.ends_with(b"Z\0\0\0\x05I") {
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = tls.write_all(b"X\0\0\0\x04");
        got
    };
    let greeting = attempt(true, &startup);
    assert!(
        greeting.starts_with(b"R\0\0\0\x08\0\0\0\0"),
        "no AuthenticationOk over direct TLS: {greeting:?}"
    );
    assert!(
        greeting.ends_with(b"Z\0\0\0\x05I"),
        "no ReadyForQuery: {greeting:?}"
    );
    // Without ALPN the handshake itself is refused, with the alert PostgreSQL sends.
    let refused = raw_tls(
        d.relay_port,
        &d.out(),
        &alice,
        Negotiation::Direct { alpn: false },
        &startup,
    );
    match refused {
        Err(error) => assert!(
            error.contains("NoApplicationProtocol"),
            "direct TLS without ALPN failed otherwise: {error}"
        ),
        Ok(reply) => panic!("direct TLS without ALPN completed its handshake: {reply:?}"),
    }

    // A client asking for protocol 3.2 with a protocol option is told (as PostgreSQL would)
    // that the relay speaks 3.0 and ignored the option, then served.
    let newer = packet(
        0x0003_0002,
        b"user\0app\0database\0shop\0_pq_.test_option\0on\0\0",
    );
    let greeting = attempt(true, &newer);
    let mut expected = b"v\0\0\0\x1d\0\0\0\0\0\0\0\x01_pq_.test_option\0".to_vec();
    expected.extend_from_slice(b"R\0\0\0\x08\0\0\0\0");
    assert!(
        greeting.starts_with(&expected),
        "no NegotiateProtocolVersion before AuthenticationOk: {greeting:?}"
    );
    assert!(
        greeting.ends_with(b"Z\0\0\0\x05I"),
        "no ReadyForQuery: {greeting:?}"
    );
}

#[test]
fn the_connection_limit_refuses_with_a_message() {
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");
    d.set_limits(|limits| limits.max_connections = 2);
    let shop = format!("shop.{PUBLIC_NAME}");
    d.block(async {
        let (first, _) = d.connect(&alice, "app", "shop").await.expect("first");
        let (second, _) = d.connect(&alice, "app", "shop").await.expect("second");
        let err = d
            .psql(&d.conninfo(&shop, Some(&alice), "app", "shop"), "select 1")
            .expect_err("a third connection is over the limit");
        assert!(
            err.contains("too many connections to the dbward relay (limit 2)"),
            "{err}"
        );
        let event = d.last_event("session.denied");
        assert_eq!(event["reason"], "connection_limit", "{event}");
        // The open sessions are unaffected, and a slot frees when one ends.
        first
            .simple_query("select 1")
            .await
            .expect("first still works");
        drop(first);
        let freed = async {
            loop {
                if d.connect(&alice, "app", "shop").await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), freed)
            .await
            .expect("a slot is freed when a session ends");
        second
            .simple_query("select 1")
            .await
            .expect("second still works");
    });
}

/// How a raw test client reaches TLS.
#[derive(Clone, Copy)]
enum Negotiation {
    /// SSLRequest, `S`, then TLS (what libpq does by default).
    SslRequest,
    /// TLS from the first byte, offering ALPN `postgresql` or not.
    Direct { alpn: bool },
}

/// A hand-written client: opens TLS to `shop` as the person in `certs`, sends `payload` in one
/// TLS record, and returns what came back until ReadyForQuery-idle after a `select`, an error
/// followed by the end of the stream, or the end of the stream. An error means the TLS
/// handshake failed (its text).
fn raw_tls(
    relay_port: u16,
    out: &Path,
    certs: &Path,
    negotiation: Negotiation,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let mut config = client_tls(out, certs);
    let mut sock = TcpStream::connect(("127.0.0.1", relay_port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    match negotiation {
        Negotiation::SslRequest => {
            sock.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
            let mut answer = [0u8; 1];
            sock.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"S");
        }
        Negotiation::Direct { alpn } => {
            if alpn {
                config.alpn_protocols = vec![b"postgresql".to_vec()];
            }
        }
    }
    let name = format!("shop.{PUBLIC_NAME}").try_into().unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    tls.write_all(payload)
        .and_then(|_| tls.flush())
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(got)
}

/// A StartupMessage (or any first packet) with `code` and the raw parameter bytes.
fn first_packet(code: u32, params: &[u8]) -> Vec<u8> {
    let mut packet = ((params.len() + 8) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&code.to_be_bytes());
    packet.extend_from_slice(params);
    packet
}

/// `name\0value\0…\0` from pairs.
fn params(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out.push(0);
    out
}

/// A simple Query message.
fn query(sql: &str) -> Vec<u8> {
    let mut out = vec![b'Q'];
    out.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    out.extend_from_slice(sql.as_bytes());
    out.push(0);
    out
}

/// The text of the first ErrorResponse in `reply`: `SQLSTATE message`.
fn error_of(reply: &[u8]) -> Option<String> {
    let start = reply.iter().position(|&b| b == b'E')?;
    let fields = reply.get(start + 5..)?;
    let mut code = "";
    let mut message = "";
    for field in fields.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', value)) => code = std::str::from_utf8(value).unwrap_or("?"),
            Some((b'M', value)) => message = std::str::from_utf8(value).unwrap_or("?"),
            None => break,
            _ => {}
        }
    }
    Some(format!("{code} {message}"))
}

/// Every startup parameter that decides who logs in, to what and where: given twice (the
/// second time a value the person may not use, which PostgreSQL would take), it is a protocol
/// violation answered with FATAL 08P01, audited, and nothing reaches PostgreSQL. A session
/// sees exactly what the relay decided: the user, the database name, the options without the
/// relay's own setting.
#[test]
fn startup_parameters_given_twice_are_refused_and_postgres_sees_what_was_decided() {
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");
    let out = d.out();
    let startup = |pairs: &[(&str, &str)]| first_packet(0x0003_0000, &params(pairs));
    let before = d.cluster.log().matches("connection authorized").count();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "user",
            startup(&[("user", "app"), ("database", "shop"), ("user", "readonly")]),
            "08P01 startup parameter \"user\" is given more than once",
        ),
        (
            "database",
            startup(&[
                ("user", "app"),
                ("database", "shop"),
                ("database", "postgres"),
            ]),
            "08P01 startup parameter \"database\" is given more than once",
        ),
        (
            "options",
            startup(&[
                ("user", "app"),
                ("database", "shop"),
                ("options", "-c dbward.database=shop"),
                ("options", "-c dbward.database=vault"),
            ]),
            "08P01 startup parameter \"options\" is given more than once",
        ),
        (
            "dbward.database inside options",
            startup(&[
                ("user", "app"),
                ("database", "shop"),
                ("options", "-c dbward.database=shop --dbward.database=vault"),
            ]),
            "08P01 dbward.database is given more than once in options",
        ),
        (
            "a run-time setting",
            startup(&[
                ("user", "app"),
                ("database", "shop"),
                ("application_name", "a"),
                ("application_name", "b"),
            ]),
            "08P01 startup parameter \"application_name\" is given more than once",
        ),
        (
            "replication",
            startup(&[
                ("user", "app"),
                ("database", "shop"),
                ("replication", "database"),
            ]),
            "0A000 replication connections (replication=database) are not relayed",
        ),
    ];
    for (what, packet, expected) in cases {
        for negotiation in [Negotiation::SslRequest, Negotiation::Direct { alpn: true }] {
            let reply = raw_tls(d.relay_port, &out, &alice, negotiation, &packet)
                .unwrap_or_else(|e| panic!("{what}: handshake failed: {e}"));
            let error = error_of(&reply).unwrap_or_else(|| {
                panic!(
                    "{what}: no ErrorResponse, got {:?}",
                    String::from_utf8_lossy(&reply)
                )
            });
            assert!(
                error.starts_with(expected),
                "{what}: the relay said {error:?}, expected {expected:?}"
            );
            assert!(
                !reply.windows(6).any(|w| w == b"Z\0\0\0\x05I"),
                "{what}: a session was opened"
            );
        }
        let message = expected.split_once(' ').unwrap().1;
        let event = wait_for(Duration::from_secs(5), || {
            let event = d.last_event("session.denied");
            (event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message)))
            .then_some(event)
        })
        .unwrap_or_else(|| panic!("{what}: no session.denied audit event"));
        assert_eq!(event["reason"], "protocol", "{what}: {event}");
    }
    let after = d.cluster.log().matches("connection authorized").count();
    assert_eq!(before, after, "a refused startup reached PostgreSQL");

    // What PostgreSQL sees is what the relay decided: the database name defaults to the user
    // (refused here, since alice may open only `shop`), the relay's option is removed, the
    // client's other options and settings arrive.
    superuser_sql(&d.cluster, "shop", "GRANT pg_read_all_settings TO app;");
    let packet = startup(&[
        ("user", "app"),
        ("database", "shop"),
        ("application_name", "decided"),
        (
            "options",
            "-c dbward.database=shop -c search_path=pg_catalog",
        ),
    ]);
    let mut payload = packet.clone();
    payload.extend_from_slice(&query(
        "select current_user || '|' || current_database() || '|' || \
         current_setting('application_name') || '|' || current_setting('search_path')",
    ));
    payload.extend_from_slice(b"X\0\0\0\x04");
    let reply = raw_tls(
        d.relay_port,
        &out,
        &alice,
        Negotiation::SslRequest,
        &payload,
    )
    .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("app|shop|decided|pg_catalog"),
        "the session did not see the decided values: {text:?}"
    );
    let reply = raw_tls(
        d.relay_port,
        &out,
        &alice,
        Negotiation::SslRequest,
        &startup(&[("user", "app"), ("database", "")]),
    )
    .unwrap();
    assert!(
        error_of(&reply).is_some_and(|e| e.contains("database name \"app\"")),
        "an empty database name must be decided as the user name: {:?}",
        String::from_utf8_lossy(&reply)
    );
}

/// A query pipelined behind the StartupMessage, in the same TLS record, is relayed and
/// audited like any other.
#[test]
fn a_query_pipelined_behind_the_startup_is_audited() {
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");
    let mut payload = first_packet(
        0x0003_0000,
        &params(&[("user", "app"), ("database", "shop")]),
    );
    payload.extend_from_slice(&query("select 'pipelined-behind-startup'"));
    payload.extend_from_slice(b"X\0\0\0\x04");
    let reply = raw_tls(
        d.relay_port,
        &d.out(),
        &alice,
        Negotiation::SslRequest,
        &payload,
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&reply).contains("pipelined-behind-startup"),
        "the pipelined query was not answered: {reply:?}"
    );
    let audited = wait_for(Duration::from_secs(5), || {
        d.audit().into_iter().find(|e| {
            e["event"] == "session.query"
                && e["query"].as_str() == Some("select 'pipelined-behind-startup'")
        })
    });
    let event = audited.expect("no session.query event for the pipelined query");
    assert_eq!(event["identity"], "alice", "{event}");
}

/// Protocol versions other than 3.x, and the special request codes with a wrong size, are
/// answered as PostgreSQL answers them (FATAL 0A000, in the clear before TLS or inside it) and
/// audited.
#[test]
fn unknown_protocol_versions_are_answered_and_audited() {
    let d = Deployment::start();
    let alice = d.issue("alice", "1h");
    let versions: [(u32, &[u8], &str); 4] = [
        (2 << 16, b"user\0app\0\0", "2.0"),
        (4 << 16, b"user\0app\0\0", "4.0"),
        ((1234 << 16) | 5678, b"", "1234.5678"),
        ((1234 << 16) | 5681, b"", "1234.5681"),
    ];
    for (code, body, shown) in versions {
        let expected =
            format!("0A000 unsupported frontend protocol {shown}: server supports 3.0 to 3.0");
        // In the clear, as the first packet.
        let mut s = TcpStream::connect(("127.0.0.1", d.relay_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(&first_packet(code, body)).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        assert_eq!(
            error_of(&reply).as_deref(),
            Some(expected.as_str()),
            "version {shown} in the clear: {reply:?}"
        );
        // Inside TLS.
        let reply = raw_tls(
            d.relay_port,
            &d.out(),
            &alice,
            Negotiation::SslRequest,
            &first_packet(code, body),
        )
        .unwrap();
        assert_eq!(
            error_of(&reply).as_deref(),
            Some(expected.as_str()),
            "version {shown} inside TLS: {reply:?}"
        );
        let message = expected.split_once(' ').unwrap().1.to_owned();
        let event = wait_for(Duration::from_secs(5), || {
            let event = d.last_event("session.denied");
            (event["message"].as_str() == Some(message.as_str())).then_some(event)
        })
        .unwrap_or_else(|| panic!("version {shown}: no session.denied audit event"));
        assert_eq!(event["reason"], "protocol", "{event}");
    }
}

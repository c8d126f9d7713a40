//! Google Cloud SQL IAM authentication end to end: `dbward apply` on a `cloud-sql` manifest
//! (with `host` and `ca-file`) → the in-process relay getting login tokens by impersonation from
//! the local fake Google (`dbward_cloud::gcp::fake`, which checks the metadata header, the
//! bearer token, its scope, the target account and the right to impersonate it) → a real
//! PostgreSQL standing in for the instance → real psql and tokio-postgres.
//!
//! The instance: its server certificate has CN `acme-prod:ledger` (`project:instance`, as Cloud
//! SQL's) and no SAN for the address; its pg_hba.conf sends the IAM users to `password`, and
//! the fake runs `ALTER ROLE … PASSWORD '<token>'` when it issues a `sqlservice.login` token,
//! so PostgreSQL accepts exactly the last token issued for that account (the whole token, not
//! the 511 bytes PAM would see).

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbward_cloud::gcp::fake::FakeGoogle;
use dbward_cloud::gcp::{GcpEnv, SQLSERVICE_LOGIN};
use dbward_relay::audit::AuditSink;
use dbward_relay::metrics::Metrics;
use dbward_relay::state::Shared;
use dbward_tests::{Cluster, free_port, psql_command, psql_path, run_bin, wait_for};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

const PUBLIC_NAME: &str = "db.localhost";
const RELAY_ACCOUNT: &str = "dbward-relay@acme-prod.iam.gserviceaccount.com";
const READER: &str = "ledger-reader@acme-prod.iam";
const WRITER: &str = "ledger-writer@acme-prod.iam";
const INSTANCE: &str = "acme-prod:us-central1:ledger";

fn manifest(pg_port: u16, relay_port: u16, audit: &Path, ca: &Path) -> String {
    format!(
        r#"dbward version=1
relay {{
    listen "127.0.0.1:{relay_port}"
    public-name "{PUBLIC_NAME}"
    client-cert-ttl "1h"
    audit "{audit}" queries=#true
}}
cloud gcp-test {{
    gcp project="acme-prod"
    relay-service-account "{RELAY_ACCOUNT}"
}}
database ledger {{
    postgres host="127.0.0.1" port={pg_port} version=15
    cloud-sql cloud=gcp-test instance="{INSTANCE}" ca-file="{ca}"
    db-user "{READER}"
    db-user "{WRITER}"
}}
role accountant {{
    allow {{
        databases ledger
        db-users "{READER}"
        db-names ledger
    }}
}}
role admin {{
    allow {{
        databases ledger
        db-users "*"
        db-names ledger
    }}
}}
user heidi {{
    roles accountant
}}
user ivan {{
    roles admin
}}
"#,
        audit = audit.display(),
        ca = ca.display(),
    )
}

/// A test CA (standing in for the instance's server CA) and server certificates naming
/// `cn` with no SAN at all.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test Cloud SQL server CA");
        Pki {
            ca: rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap(),
        }
    }

    fn server(&self, cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Installs a server certificate with CN `cn` (reload a running cluster after).
fn install_server_cert(pki: &Pki, cluster: &Cluster, cn: &str) {
    let (cert, key) = pki.server(cn);
    cluster.install_file("server.crt", cert.as_bytes(), 0o644);
    cluster.install_file("server.key", key.as_bytes(), 0o600);
}

struct Instance {
    dir: tempfile::TempDir,
    cluster: Cluster,
    pki: Pki,
    relay_port: u16,
}

impl Instance {
    fn start() -> Instance {
        let dir = tempfile::Builder::new()
            .prefix("dbward-cloudsql-e2e-")
            .tempdir()
            .unwrap();
        let mut cluster = Cluster::init();
        let pki = Pki::new();
        let ca = dir.path().join("server-ca.pem");
        fs::write(&ca, pki.ca.pem()).unwrap();
        let relay_port = free_port();
        install_server_cert(&pki, &cluster, "acme-prod:ledger");
        cluster.append_conf(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nmax_connections = 160\n",
            cluster.root().join("server.crt").display(),
            cluster.root().join("server.key").display()
        ));
        cluster.install_file(
            "data/pg_hba.conf",
            b"local all all trust\nhostssl ledger all 127.0.0.1/32 password\n",
            0o600,
        );
        if let Err(log) = cluster.try_start() {
            panic!("PostgreSQL did not start with TLS:\n{log}");
        }
        cluster.sql("postgres", "CREATE DATABASE ledger");
        for user in [READER, WRITER] {
            // Cloud SQL creates IAM users through its API; here, a login role with no
            // password until the fake issues a token.
            cluster.sql("postgres", &format!("CREATE ROLE \"{user}\" LOGIN"));
        }
        let manifest_path = dir.path().join("manifest.kdl");
        let audit = dir.path().join("audit.jsonl");
        fs::write(
            &manifest_path,
            manifest(cluster.port, relay_port, &audit, &ca),
        )
        .unwrap();
        let out = dir.path().join("out");
        run_bin(
            "dbward",
            &[
                "apply",
                manifest_path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--auto-approve",
            ],
        );
        for user in ["heidi", "ivan"] {
            run_bin(
                "dbward",
                &[
                    "cert",
                    "issue",
                    manifest_path.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                    "--user",
                    user,
                    "--ttl",
                    "1h",
                    "--dest",
                    dir.path().join(user).to_str().unwrap(),
                ],
            );
        }
        Instance {
            dir,
            cluster,
            pki,
            relay_port,
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// `SELECT current_user` through the relay as `person` → ledger as `user`, with real psql.
    fn psql(&self, person: &str, user: &str) -> Result<String, String> {
        let certs = self.dir.path().join(person);
        let conninfo = format!(
            "host=ledger.{PUBLIC_NAME} hostaddr=127.0.0.1 port={} user={user} dbname=ledger \
             sslmode=verify-full sslrootcert={} sslcert={}/postgresql.crt sslkey={}/postgresql.key",
            self.relay_port,
            self.out().join("ca/server-ca.crt").display(),
            certs.display(),
            certs.display()
        );
        let mut child = psql_command(&conninfo, "SELECT current_user", self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        let finished = wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten());
        if finished.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("psql output");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn audit(&self) -> String {
        fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }
}

/// The fake Google, with the relay's account on the metadata server allowed to impersonate
/// both database accounts; every login token it issues becomes the role's password.
fn fake_google(rt: &tokio::runtime::Runtime, cluster: &Cluster) -> (FakeGoogle, Tokens) {
    let fake = rt.block_on(FakeGoogle::start());
    fake.add_account(RELAY_ACCOUNT);
    fake.attach_to_metadata(RELAY_ACCOUNT);
    for user in [READER, WRITER] {
        let email = format!("{user}.gserviceaccount.com");
        fake.add_account(&email);
        fake.allow_impersonation(RELAY_ACCOUNT, &email);
    }
    let tokens = Tokens::default();
    let seen = tokens.clone();
    let (socket, port) = (cluster.socket_dir(), cluster.port);
    fake.on_issue(move |principal, token, scopes| {
        if !scopes.iter().any(|s| s == SQLSERVICE_LOGIN) {
            return;
        }
        seen.0.lock().unwrap().push(token.to_owned());
        let role = principal.trim_end_matches(".gserviceaccount.com");
        set_password(&socket, port, role, token);
    });
    (fake, tokens)
}

fn set_password(socket: &Path, port: u16, role: &str, password: &str) {
    let out = Command::new(psql_path())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(socket)
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args([
            "-c",
            &format!("ALTER ROLE \"{role}\" PASSWORD '{password}'"),
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "ALTER ROLE failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every login token the fake issued.
#[derive(Clone, Default)]
struct Tokens(Arc<Mutex<Vec<String>>>);

impl Tokens {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn assert_absent_from(&self, what: &str, text: &str) {
        let tokens = self.all();
        assert!(!tokens.is_empty(), "no login token was issued");
        for token in tokens {
            assert!(
                !text.contains(&token),
                "a login token appears in the {what}"
            );
        }
    }
}

/// The in-process relay, reading its Google variables from `fake`.
struct Relay {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl Relay {
    fn start(rt: &tokio::runtime::Runtime, instance: &Instance, fake: &FakeGoogle) -> Relay {
        let loaded = dbward_relay::config::load(&instance.out().join("relay/frozen.json"))
            .unwrap_or_else(|e| panic!("the relay refused the generated config: {e}"))
            .with_gcp_env(GcpEnv::from_vars(fake.env()));
        let audit = AuditSink::start(Some(instance.dir.path().join("audit.jsonl"))).unwrap();
        let shared = Arc::new(Shared::new(loaded, audit, Metrics::new()));
        let shutdown = CancellationToken::new();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind((
                "127.0.0.1",
                instance.relay_port,
            )))
            .unwrap();
        rt.spawn(dbward_relay::run(
            listener,
            Arc::clone(&shared),
            shutdown.clone(),
        ));
        Relay { shared, shutdown }
    }

    /// A fresh config (empty caches) from the same files.
    fn reload(&self, instance: &Instance, fake: &FakeGoogle) {
        let loaded = dbward_relay::config::load(&instance.out().join("relay/frozen.json"))
            .unwrap()
            .with_gcp_env(GcpEnv::from_vars(fake.env()));
        self.shared.replace_config(loaded);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.shared.audit.flush();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(
    instance: &Instance,
    person: &str,
    user: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_with(instance.relay_port, client_tls(instance, person), user).await
}

/// rustls client config for tokio-postgres: trust the relay's CA, present `person`'s cert.
fn client_tls(instance: &Instance, person: &str) -> rustls::ClientConfig {
    let out = instance.out();
    let certs = instance.dir.path().join(person);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(out.join("ca/server-ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.join("postgresql.crt"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_file(certs.join("postgresql.key")).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap()
}

async fn connect_with(
    port: u16,
    tls: rustls::ClientConfig,
    user: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(format!("ledger.{PUBLIC_NAME}"))
        .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(port)
        .user(user)
        .dbname("ledger")
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(30));
    let (client, connection) = config.connect(MakeRustlsConnect::new(tls)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn impersonations(fake: &FakeGoogle, user: &str) -> u32 {
    fake.count(&format!("impersonate:{user}.gserviceaccount.com"))
}

#[test]
fn cloud_sql_iam_tokens_log_in_through_the_relay_and_are_checked_by_postgres() {
    let instance = Instance::start();
    let rt = runtime();
    let (fake, tokens) = fake_google(&rt, &instance.cluster);
    let relay = Relay::start(&rt, &instance, &fake);

    // psql as each allowed account.
    assert_eq!(
        instance
            .psql("heidi", READER)
            .unwrap_or_else(|e| panic!("{e}\n{}", instance.cluster.log())),
        READER
    );
    assert_eq!(instance.psql("ivan", WRITER).unwrap(), WRITER);
    assert_eq!(instance.psql("ivan", READER).unwrap(), READER);
    assert_eq!(
        impersonations(&fake, READER),
        1,
        "the reader token is cached"
    );
    // tokio-postgres too.
    rt.block_on(async {
        let client = connect(&instance, "heidi", READER).await.unwrap();
        let row = client.query_one("SELECT current_user", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), READER);
    });

    // A db-user the manifest does not allow heidi is refused by the relay, before any token.
    let before = impersonations(&fake, WRITER);
    let error = instance.psql("heidi", WRITER).unwrap_err();
    assert!(
        error.contains("not allowed") || error.contains("may not"),
        "{error}"
    );
    assert_eq!(impersonations(&fake, WRITER), before);

    // A token the database refuses (the password changed under it) is never reused, and the
    // client is told what to check.
    set_password(
        &instance.cluster.socket_dir(),
        instance.cluster.port,
        READER,
        "not-the-token",
    );
    let error = instance.psql("heidi", READER).unwrap_err();
    assert!(
        error.contains("roles/cloudsql.instanceUser")
            && error.contains("roles/iam.serviceAccountTokenCreator"),
        "{error}"
    );
    assert_eq!(instance.psql("heidi", READER).unwrap(), READER);
    assert_eq!(
        impersonations(&fake, READER),
        2,
        "the refused token was replaced by a new one"
    );

    // 300 sessions at once on a fresh config (cold caches): one token fetch per db user.
    relay.reload(&instance, &fake);
    fake.set_delay(Duration::from_millis(300));
    let (reader_before, writer_before) =
        (impersonations(&fake, READER), impersonations(&fake, WRITER));
    let failures = rt.block_on(async {
        // PostgreSQL has max_connections = 160: at most 100 sessions are open at once.
        let limit = Arc::new(tokio::sync::Semaphore::new(100));
        let tls = client_tls(&instance, "ivan");
        let port = instance.relay_port;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..300 {
            let user = if i % 2 == 0 { READER } else { WRITER };
            let (limit, tls) = (limit.clone(), tls.clone());
            tasks.spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                let client = connect_with(port, tls, user).await?;
                client.query_one("SELECT 1", &[]).await.map(drop)
            });
        }
        let mut failures = Vec::new();
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result.unwrap() {
                failures.push(e.to_string());
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} sessions failed: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(impersonations(&fake, READER) - reader_before, 1);
    assert_eq!(impersonations(&fake, WRITER) - writer_before, 1);
    fake.set_delay(Duration::ZERO);

    // No token in the audit log or PostgreSQL's log.
    drop(relay);
    tokens.assert_absent_from("audit log", &instance.audit());
}

#[test]
fn a_certificate_naming_another_instance_is_refused() {
    let instance = Instance::start();
    let rt = runtime();
    let (fake, _tokens) = fake_google(&rt, &instance.cluster);
    let _relay = Relay::start(&rt, &instance, &fake);
    assert_eq!(instance.psql("heidi", READER).unwrap(), READER);
    // Same CA, but the certificate names another instance of the project.
    install_server_cert(&instance.pki, &instance.cluster, "acme-prod:payroll");
    instance.cluster.reload();
    let refused = wait_for(Duration::from_secs(10), || {
        instance.psql("heidi", READER).err()
    })
    .expect("a certificate naming acme-prod:payroll must be refused");
    assert!(refused.contains("acme-prod:ledger"), "{refused}");
}

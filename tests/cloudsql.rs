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
use dbward_cloud::gcp::{GcpEnv, InstanceName, Policy, SQLSERVICE_LOGIN};
use dbward_relay::audit::AuditSink;
use dbward_relay::metrics::Metrics;
use dbward_relay::state::Shared;
use dbward_tests::{Cluster, free_port, psql_command, psql_path, run_bin, wait_for, workspace_bin};
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

/// How the stand-in instance and the manifest differ from the plain case (`host` and `ca-file`
/// in the manifest, `password` in pg_hba.conf, no client certificate).
#[derive(Default)]
struct Setup {
    /// No `host` and no `ca-file`: the relay looks the instance up (`connectSettings`).
    lookup: bool,
    /// `cloud-sql ip-type=…`.
    ip_type: Option<&'static str>,
    /// The server requires client certificates from this CA (`clientcert=verify-ca`).
    client_ca: Option<String>,
    /// PostgreSQL checks tokens through PAM against the fake Google at this URL (every
    /// unexpired token of the account is accepted, as on Cloud SQL), not as role passwords.
    pam: Option<String>,
    /// The server certificate's SAN dNSName, beside the CN `project:instance`.
    dns_name: Option<&'static str>,
}

/// The DNS name of the instance, as `connectSettings` gives it on instances that have one.
const DNS_NAME: &str = "1a2b3c4d5e6f.us-central1.sql.goog";

fn manifest(pg_port: u16, relay_port: u16, audit: &Path, ca: &Path, setup: &Setup) -> String {
    let postgres = if setup.lookup {
        format!("postgres port={pg_port} version=15")
    } else {
        format!("postgres host=\"127.0.0.1\" port={pg_port} version=15")
    };
    let mut cloud_sql = format!("cloud-sql cloud=gcp-test instance=\"{INSTANCE}\"");
    if !setup.lookup {
        cloud_sql.push_str(&format!(" ca-file=\"{}\"", ca.display()));
    }
    if let Some(ip_type) = setup.ip_type {
        cloud_sql.push_str(&format!(" ip-type={ip_type}"));
    }
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
    {postgres}
    {cloud_sql}
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
    )
}

/// A test CA (standing in for the instance's server CA) and server certificates naming
/// `cn` with no SAN at all.
pub(crate) struct Pki {
    pub(crate) ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
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

    pub(crate) fn server(&self, cn: &str, dns_names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = dns_names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Installs a server certificate with CN `cn` (reload a running cluster after).
fn install_server_cert(pki: &Pki, cluster: &Cluster, cn: &str) {
    install_server_cert_named(pki, cluster, cn, &[]);
}

/// Same, with SAN dNSNames `dns_names`.
fn install_server_cert_named(pki: &Pki, cluster: &Cluster, cn: &str, dns_names: &[&str]) {
    let (cert, key) = pki.server(cn, dns_names);
    cluster.install_file("server.crt", cert.as_bytes(), 0o644);
    cluster.install_file("server.key", key.as_bytes(), 0o600);
}

struct Instance {
    dir: tempfile::TempDir,
    cluster: Cluster,
    pki: Pki,
    relay_port: u16,
    _pam: Option<PamService>,
}

/// A PAM service in /etc/pam.d for the test's lifetime.
struct PamService {
    name: String,
}

impl PamService {
    fn install(name: String, fake_url: &str) -> PamService {
        let verifier =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("cloudsql/verify_cloudsql_token.py");
        let service = format!(
            "# dbward Cloud SQL e2e test; removed when the test ends\n\
             auth required pam_exec.so expose_authtok quiet /usr/bin/python3 {} {fake_url}\n\
             account required pam_permit.so\n",
            verifier.display(),
        );
        fs::write(format!("/etc/pam.d/{name}"), service).unwrap_or_else(|e| {
            panic!(
                "this test installs a PAM service in /etc/pam.d (PostgreSQL checks tokens \
                 through pam_exec) and needs root: {e}"
            )
        });
        PamService { name }
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = fs::remove_file(format!("/etc/pam.d/{}", self.name));
    }
}

impl Instance {
    fn start() -> Instance {
        Instance::start_with(&Setup::default())
    }

    fn start_with(setup: &Setup) -> Instance {
        let dir = tempfile::Builder::new()
            .prefix("dbward-cloudsql-e2e-")
            .tempdir()
            .unwrap();
        let mut cluster = Cluster::init();
        let pki = Pki::new();
        let ca = dir.path().join("server-ca.pem");
        fs::write(&ca, pki.ca.pem()).unwrap();
        let relay_port = free_port();
        let dns_names: Vec<&str> = setup.dns_name.into_iter().collect();
        install_server_cert_named(&pki, &cluster, "acme-prod:ledger", &dns_names);
        cluster.append_conf(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nmax_connections = 160\n",
            cluster.root().join("server.crt").display(),
            cluster.root().join("server.key").display()
        ));
        let mut method = "password".to_owned();
        let pam = setup.pam.as_ref().map(|url| {
            let service = PamService::install(format!("dbward-cloudsql-{}", cluster.port), url);
            method = format!("pam pamservice={}", service.name);
            service
        });
        if let Some(client_ca) = &setup.client_ca {
            // As on an instance that requires trusted client certificates.
            let path = cluster.install_file("client-ca.pem", client_ca.as_bytes(), 0o644);
            cluster.append_conf(&format!("ssl_ca_file = '{}'\n", path.display()));
            method.push_str(" clientcert=verify-ca");
        }
        cluster.install_file(
            "data/pg_hba.conf",
            format!("local all all trust\nhostssl ledger all 127.0.0.1/32 {method}\n").as_bytes(),
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
            manifest(cluster.port, relay_port, &audit, &ca, setup),
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
            _pam: pam,
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
    configure_fake(rt.block_on(FakeGoogle::start()), cluster)
}

/// Same, for a fake already started.
fn configure_fake(fake: FakeGoogle, cluster: &Cluster) -> (FakeGoogle, Tokens) {
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
        seen.1.lock().unwrap().push(token.to_owned());
        if !scopes.iter().any(|s| s == SQLSERVICE_LOGIN) {
            return;
        }
        seen.0.lock().unwrap().push(token.to_owned());
        let role = principal.trim_end_matches(".gserviceaccount.com");
        set_password(&socket, port, role, token);
    });
    (fake, tokens)
}

pub(crate) fn set_password(socket: &Path, port: u16, role: &str, password: &str) {
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

/// Every login token the fake issued, and every token at all (the relay's own too).
#[derive(Clone, Default)]
struct Tokens(Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<String>>>);

impl Tokens {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn every(&self) -> Vec<String> {
        self.1.lock().unwrap().clone()
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
        Relay::start_with(rt, instance, GcpEnv::from_vars(fake.env()))
    }

    fn start_with(rt: &tokio::runtime::Runtime, instance: &Instance, env: GcpEnv) -> Relay {
        let loaded = dbward_relay::config::load(&instance.out().join("relay/frozen.json"))
            .unwrap_or_else(|e| panic!("the relay refused the generated config: {e}"))
            .with_gcp_env(env);
        let audit = AuditSink::start(
            Some(instance.dir.path().join("audit.jsonl")),
            dbward_relay::replica::ReplicaId::parse("test").unwrap(),
        )
        .unwrap();
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
        self.reload_with(instance, GcpEnv::from_vars(fake.env()));
    }

    /// Same, reading `env`.
    fn reload_with(&self, instance: &Instance, env: GcpEnv) {
        let loaded = dbward_relay::config::load(&instance.out().join("relay/frozen.json"))
            .unwrap()
            .with_gcp_env(env);
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

    // PostgreSQL itself tells the accounts apart: the reader's token does not log in as the
    // writer, and the writer's own token does.
    let token_of = |user: &str| {
        let email = format!("{user}.gserviceaccount.com");
        tokens
            .all()
            .into_iter()
            .rev()
            .find(|t| fake.token_info(t).is_some_and(|i| i.principal == email))
            .unwrap()
    };
    let error = psql_direct(&instance, WRITER, &token_of(READER)).unwrap_err();
    assert!(error.contains("password authentication failed"), "{error}");
    assert_eq!(
        psql_direct(&instance, WRITER, &token_of(WRITER)).unwrap(),
        "1"
    );

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

/// The relay's account on the fake may use Cloud SQL Admin, and the fake knows the instance
/// with `addresses` (API type, IP) and `dns_name`, its server CA being the instance's.
fn add_instance(
    fake: &FakeGoogle,
    instance: &Instance,
    addresses: &[(&str, &str)],
    dns_name: Option<&str>,
) {
    fake.allow_sql_client(RELAY_ACCOUNT);
    let addresses: Vec<_> = addresses
        .iter()
        .map(|(kind, ip)| serde_json::json!({ "type": kind, "ipAddress": ip }))
        .collect();
    let mut settings = serde_json::json!({
        "kind": "sql#connectSettings",
        "serverCaCert": { "kind": "sql#sslCert", "cert": instance.pki.ca.pem() },
        "ipAddresses": addresses,
        "region": "us-central1",
        "databaseVersion": "POSTGRES_15",
        "backendType": "SECOND_GEN",
        "pscEnabled": false,
    });
    if let Some(dns) = dns_name {
        settings["dnsName"] = format!("{dns}.").into();
    }
    fake.add_instance(&InstanceName::parse(INSTANCE).unwrap(), settings);
}

fn lookups(fake: &FakeGoogle) -> u32 {
    fake.count("connectSettings:acme-prod:ledger")
}

fn certificates(fake: &FakeGoogle) -> u32 {
    fake.count("generateEphemeralCert:acme-prod:ledger")
}

/// `SELECT 1` straight to PostgreSQL as `user` with `password`, over TLS without a client
/// certificate.
fn psql_direct(instance: &Instance, user: &str, password: &str) -> Result<String, String> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={user} dbname=ledger sslmode=require",
        instance.cluster.port
    );
    let out = psql_command(&conninfo, "SELECT 1", instance.dir.path())
        .env("PGPASSWORD", password)
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn without_host_and_ca_file_the_relay_looks_the_instance_up_and_presents_a_client_certificate() {
    let rt = runtime();
    let fake = rt.block_on(FakeGoogle::start());
    let instance = Instance::start_with(&Setup {
        lookup: true,
        ip_type: Some("private"),
        client_ca: Some(fake.client_ca_pem()),
        dns_name: Some(DNS_NAME),
        ..Setup::default()
    });
    let (fake, tokens) = configure_fake(fake, &instance.cluster);
    // The public address is another loopback address where nothing listens: dialling it
    // instead of the private one fails.
    add_instance(
        &fake,
        &instance,
        &[("PRIMARY", "127.0.0.2"), ("PRIVATE", "127.0.0.1")],
        Some(DNS_NAME),
    );
    let relay = Relay::start(&rt, &instance, &fake);

    // The IAM bindings the compiler wrote let the relay make these lookups.
    let bindings: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(instance.out().join("iam/gcp/gcp-test.json")).unwrap(),
    )
    .unwrap();
    assert!(
        bindings["bindings"].as_array().unwrap().iter().any(|b| {
            b["role"] == "roles/cloudsql.client"
                && b["members"][0] == format!("serviceAccount:{RELAY_ACCOUNT}")
        }),
        "{bindings}"
    );

    // connectSettings gives the private address, the server CA and the DNS name the
    // certificate must carry; generateEphemeralCert a client certificate the server requires.
    assert_eq!(
        instance
            .psql("heidi", READER)
            .unwrap_or_else(|e| panic!("{e}\n{}", instance.cluster.log())),
        READER
    );
    assert_eq!(instance.psql("ivan", WRITER).unwrap(), WRITER);
    assert_eq!(instance.psql("ivan", READER).unwrap(), READER);
    assert_eq!(lookups(&fake), 1, "the connectSettings answer is cached");
    assert_eq!(
        certificates(&fake),
        2,
        "one client certificate per database user, cached"
    );
    // Without a client certificate the same token is refused: the certificate is what
    // let the sessions in.
    let token = tokens.all().last().cloned().unwrap();
    let role = fake.token_info(&token).unwrap().principal;
    let role = role.trim_end_matches(".gserviceaccount.com");
    let error = psql_direct(&instance, role, &token).unwrap_err();
    assert!(error.contains("certificate"), "{error}");

    // No fallback to another address type: an instance with only a public address refuses
    // sessions to an `ip-type=private` database, naming what it has.
    add_instance(
        &fake,
        &instance,
        &[("PRIMARY", "127.0.0.1")],
        Some(DNS_NAME),
    );
    relay.reload(&instance, &fake);
    let error = instance.psql("heidi", READER).unwrap_err();
    assert!(
        error.contains("has no private address (it has: public)") && error.contains("ip-type"),
        "{error}"
    );

    // The certificate must carry the DNS name connectSettings gives (the CN alone is not
    // enough once there is one).
    add_instance(
        &fake,
        &instance,
        &[("PRIVATE", "127.0.0.1")],
        Some("9f8e7d6c5b4a.us-central1.sql.goog"),
    );
    relay.reload(&instance, &fake);
    let error = instance.psql("heidi", READER).unwrap_err();
    assert!(
        error.contains("does not name Cloud SQL instance 9f8e7d6c5b4a.us-central1.sql.goog"),
        "{error}"
    );

    // An instance Cloud SQL Admin does not know.
    fake.remove_instance(&InstanceName::parse(INSTANCE).unwrap());
    relay.reload(&instance, &fake);
    let error = instance.psql("heidi", READER).unwrap_err();
    assert!(
        error.contains(&format!("Cloud SQL instance {INSTANCE} not found")),
        "{error}"
    );
    add_instance(
        &fake,
        &instance,
        &[("PRIVATE", "127.0.0.1")],
        Some(DNS_NAME),
    );

    // IAM Credentials answers 403: the FATAL names the role and the account.
    let writer = format!("{WRITER}.gserviceaccount.com");
    fake.revoke_impersonation(RELAY_ACCOUNT, &writer);
    relay.reload(&instance, &fake);
    let error = instance.psql("ivan", WRITER).unwrap_err();
    assert!(
        error.contains("roles/iam.serviceAccountTokenCreator") && error.contains(&writer),
        "{error}"
    );
    fake.allow_impersonation(RELAY_ACCOUNT, &writer);

    // No credentials at all: the FATAL lists what was tried.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let env = fake
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "GCE_METADATA_HOST" {
                (k, nowhere.clone())
            } else {
                (k, v)
            }
        })
        .collect::<Vec<_>>();
    relay.reload_with(&instance, GcpEnv::from_vars(env));
    let error = instance.psql("heidi", READER).unwrap_err();
    assert!(
        error.contains("no Google credentials found")
            && error.contains("GOOGLE_APPLICATION_CREDENTIALS")
            && error.contains(&format!("metadata server {nowhere}")),
        "{error}"
    );

    relay.reload(&instance, &fake);
    assert_eq!(instance.psql("ivan", WRITER).unwrap(), WRITER);
    drop(relay);
    tokens.assert_absent_from("audit log", &instance.audit());
}

#[test]
fn tokens_and_client_certificates_are_refreshed_before_they_expire_and_no_session_fails() {
    let rt = runtime();
    let fake = rt.block_on(FakeGoogle::start());
    let instance = Instance::start_with(&Setup {
        lookup: true,
        client_ca: Some(fake.client_ca_pem()),
        pam: Some(fake.url().to_owned()),
        ..Setup::default()
    });
    let (fake, tokens) = configure_fake(fake, &instance.cluster);
    add_instance(&fake, &instance, &[("PRIMARY", "127.0.0.1")], None);
    // Tokens (and so certificates) live 12 s: refreshed halfway, at 6 s; certificates
    // 3 s before they expire, once their token's successor is there.
    fake.set_token_lifetime(Duration::from_secs(12));
    let policy = Policy {
        refresh_before: Duration::from_secs(6),
        min_remaining: Duration::from_secs(1),
        retry_after: Duration::from_secs(1),
    };
    let _relay = Relay::start_with(
        &rt,
        &instance,
        GcpEnv::from_vars(fake.env()).with_token_policy(policy),
    );
    let tls = client_tls(&instance, "heidi");
    let session = || {
        rt.block_on(async {
            let client = connect_with(instance.relay_port, tls.clone(), READER).await?;
            client.query_one("SELECT current_user", &[]).await.map(drop)
        })
    };
    session().unwrap_or_else(|e| panic!("{e}\n{}", instance.cluster.log()));
    let start = std::time::Instant::now();
    assert_eq!((impersonations(&fake, READER), certificates(&fake)), (1, 1));
    let mut sessions = 1;
    let mut checked = false;
    while start.elapsed() < Duration::from_secs(27) {
        session()
            .unwrap_or_else(|e| panic!("session {sessions} failed at {:?}: {e}", start.elapsed()));
        sessions += 1;
        // Before the first certificate expires (12 s), only the background renewal can
        // have fetched its successor (a loaded machine may reach this point late: then the
        // token expiries below still prove the refresh ran ahead).
        if !checked && start.elapsed() >= Duration::from_secs(10) {
            if start.elapsed() < Duration::from_millis(11_500) {
                assert!(
                    certificates(&fake) >= 2,
                    "the client certificate was not renewed ahead of its expiry"
                );
            }
            checked = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(checked);
    // Two expiries crossed: at least three tokens and three certificates.
    assert!(
        impersonations(&fake, READER) >= 3,
        "{}",
        impersonations(&fake, READER)
    );
    assert!(certificates(&fake) >= 3, "{}", certificates(&fake));
    // Sessions all along the 27 s (one every 200 ms when the machine is idle; far fewer when
    // it is loaded, which must not fail the test: what matters is that none failed).
    assert!(sessions > 20, "only {sessions} sessions");
    // Each token was fetched while its predecessor still had more than min_remaining (1 s)
    // of its 12 s: by the background refresher, never on a session's path (a session fetches
    // only when no usable token is left).
    let reader = format!("{READER}.gserviceaccount.com");
    let expiries: Vec<std::time::SystemTime> = tokens
        .all()
        .iter()
        .map(|t| fake.token_info(t).unwrap())
        .filter(|issued| issued.principal == reader)
        .map(|issued| issued.expires_at)
        .collect();
    assert!(expiries.len() >= 3, "{expiries:?}");
    for pair in expiries.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap_or_default();
        assert!(
            gap < Duration::from_secs(11),
            "a token was fetched {gap:?} after its predecessor, when less than 1 s of it was left"
        );
    }
}

#[test]
fn the_relay_binary_serves_cloud_sql_and_logs_no_token_or_key() {
    let rt = runtime();
    let fake = rt.block_on(FakeGoogle::start());
    let instance = Instance::start_with(&Setup {
        lookup: true,
        client_ca: Some(fake.client_ca_pem()),
        ..Setup::default()
    });
    let (fake, tokens) = configure_fake(fake, &instance.cluster);
    add_instance(&fake, &instance, &[("PRIMARY", "127.0.0.1")], None);
    // The relay's identity from a service account key: it signs a JWT assertion.
    let key_file = instance.dir.path().join("relay-key.json");
    fs::write(&key_file, fake.key_file(RELAY_ACCOUNT)).unwrap();
    let log = instance.dir.path().join("relay.log");
    let mut command = Command::new(workspace_bin("dbward-relay"));
    command
        .arg("--config")
        .arg(instance.out().join("relay/frozen.json"))
        .env("RUST_LOG", "trace")
        .env("GOOGLE_APPLICATION_CREDENTIALS", &key_file)
        .stdin(Stdio::null())
        .stdout(fs::File::create(instance.dir.path().join("relay.out")).unwrap())
        .stderr(fs::File::create(&log).unwrap());
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("DBWARD_GCP_")) {
        command.env_remove(name);
    }
    for (name, value) in fake.env() {
        command.env(name, value);
    }
    let mut child = ChildGuard(command.spawn().expect("start dbward-relay"));
    let up = wait_for(Duration::from_secs(20), || {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "the relay exited with {status}:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", instance.relay_port))
            .is_ok()
            .then_some(())
    });
    assert!(up.is_some(), "the relay did not listen");
    assert_eq!(
        instance
            .psql("heidi", READER)
            .unwrap_or_else(|e| panic!("{e}\n{}", fs::read_to_string(&log).unwrap_or_default())),
        READER
    );
    assert_eq!(instance.psql("ivan", WRITER).unwrap(), WRITER);
    assert_eq!(
        fake.count("oauth"),
        1,
        "the relay's own token came from its key"
    );
    assert_eq!(certificates(&fake), 2);
    let _ = child.0.kill();
    let _ = child.0.wait();

    let log = fs::read_to_string(&log).unwrap();
    assert!(log.contains("Cloud SQL") || !log.is_empty(), "empty log");
    let audit = instance.audit();
    assert!(!tokens.every().is_empty());
    for token in tokens.every() {
        assert!(
            !log.contains(&token),
            "a token the fake issued is in the relay's log"
        );
        assert!(
            !audit.contains(&token),
            "a token the fake issued is in the audit log"
        );
    }
    for text in [&log, &audit] {
        // A JWT (the assertion signed with the key) starts with the base64 of `{"`.
        assert!(!text.contains("eyJ"), "a JWT is in the relay's output");
        assert!(
            !text.contains("PRIVATE KEY"),
            "a private key is in the relay's output"
        );
    }
}

/// Kills the child if the test fails before it does.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

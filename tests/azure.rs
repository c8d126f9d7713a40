//! Azure Database for PostgreSQL with Microsoft Entra ID end to end: `dbward apply` on an
//! `azure-postgres` manifest → the relay getting one Entra token per db-user principal from
//! the local fake Entra ID (`dbward_cloud::azure::fake`: IMDS, the App Service identity
//! endpoint and the v2.0 token endpoint, checking headers, resource/scope, secrets, certificate
//! assertions, federated tokens and which identities are assigned) → a real PostgreSQL standing
//! in for the flexible server → real psql.
//!
//! The server: pg_hba.conf sends the Entra roles to PAM (`hostssl … pam`), where `pam_exec` runs
//! `azure/verify_entra_token.py`: it accepts only an unexpired token of the fake, for the
//! resource and tenant, whose `oid` is the object id mapped to that role, as Azure does.
//!
//! The manifest gives each db-user its `client-id` / `object-id`; some tests then rewrite the
//! principals in the compiled frozen config (a principal removed, a mismatched pair) and point
//! the upstream TLS at the test CA.
//!
//! PAM services live in /etc/pam.d, so this module needs root.

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbward_cloud::azure::fake::{FakeEntra, TEST_APP_CERT, TEST_APP_KEY};
use dbward_cloud::azure::{AzureEnv, Policy};
use dbward_frozen::{Config, EntraPrincipal, UpstreamAuth};
use dbward_relay::audit::AuditSink;
use dbward_relay::metrics::Metrics;
use dbward_relay::state::Shared;
use dbward_tests::{Cluster, free_port, psql_command, run_bin, wait_for, workspace_bin};
use tokio_util::sync::CancellationToken;

const PUBLIC_NAME: &str = "db.localhost";
const TENANT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const REPORTING: (&str, &str) = (
    "11111111-1111-4111-8111-111111111111",
    "a1a1a1a1-1111-4111-8111-111111111111",
);
const LOADER: (&str, &str) = (
    "22222222-2222-4222-8222-222222222222",
    "b2b2b2b2-2222-4222-8222-222222222222",
);
const SECRET: &str = "reporting~client~secret~value";
const FEDERATED: &str = "eyJhbGciOiJSUzI1NiJ9.k8s-service-account-token.sig";

fn manifest(pg_port: u16, relay_port: u16, audit: &Path, ca: &Path) -> String {
    format!(
        r#"dbward version=1
relay {{
    listen "127.0.0.1:{relay_port}"
    public-name "{PUBLIC_NAME}"
    client-cert-ttl "1h"
    audit "{audit}" queries=#true
}}
cloud azure-test {{
    azure subscription="11111111-2222-3333-4444-555555555555" tenant="{TENANT}"
    relay-identity client-id="99999999-8888-7777-6666-555555555555"
}}
database reports {{
    postgres host="127.0.0.1" port={pg_port} version=15
    azure-postgres cloud=azure-test server="reports-flex" ca-file="{ca}"
    db-user reporting client-id="{rc}" object-id="{ro}"
    db-user loader client-id="{lc}" object-id="{lo}"
    // Logs in as the relay-identity, which the fake does not know.
    db-user stranger
}}
role analyst {{
    allow {{
        databases reports
        db-users reporting
        db-names reports
    }}
}}
role etl {{
    allow {{
        databases reports
        db-users "*"
        db-names reports
    }}
}}
user judy {{
    roles analyst
}}
user kim {{
    roles etl
}}
"#,
        audit = audit.display(),
        ca = ca.display(),
        rc = REPORTING.0,
        ro = REPORTING.1,
        lc = LOADER.0,
        lo = LOADER.1,
    )
}

/// A PAM service in /etc/pam.d for the test's lifetime.
struct PamService {
    name: String,
}

impl PamService {
    fn install(name: String, verifier: &Path, args: &[&str]) -> PamService {
        assert!(
            Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0"),
            "the Azure end-to-end test needs root to install a PAM service in /etc/pam.d \
             (PostgreSQL checks the token through pam_exec); run the tests as root"
        );
        let service = format!(
            "# dbward Azure e2e test; removed when the test ends\n\
             auth required pam_exec.so expose_authtok quiet /usr/bin/python3 {} {}\n\
             account required pam_permit.so\n",
            verifier.display(),
            args.join(" ")
        );
        fs::write(format!("/etc/pam.d/{name}"), service).expect("write the PAM service");
        PamService { name }
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = fs::remove_file(format!("/etc/pam.d/{}", self.name));
    }
}

/// The flexible-server stand-in, the applied output, people's certificates, the fake Entra.
struct Server {
    dir: tempfile::TempDir,
    cluster: Cluster,
    relay_port: u16,
    rt: tokio::runtime::Runtime,
    fake: FakeEntra,
    _pam: PamService,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let fake = rt.block_on(FakeEntra::start(TENANT));
        for (client, object) in [REPORTING, LOADER] {
            fake.add_principal(client, object);
        }
        let dir = tempfile::Builder::new()
            .prefix("dbward-azure-e2e-")
            .tempdir()
            .unwrap();
        let record = dir.path().join("record");
        fs::create_dir_all(&record).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&record, fs::Permissions::from_mode(0o777)).unwrap();
        // What pgaadauth_create_principal_with_oid mapped on the server.
        fs::write(
            record.join("oids"),
            format!("reporting {}\nloader {}\n", REPORTING.1, LOADER.1),
        )
        .unwrap();
        let verifier = dir.path().join("verify_entra_token.py");
        fs::write(&verifier, include_str!("azure/verify_entra_token.py")).unwrap();
        fs::set_permissions(&verifier, fs::Permissions::from_mode(0o755)).unwrap();

        let mut cluster = Cluster::init();
        let relay_port = free_port();
        let pam = PamService::install(
            format!("dbward-azure-test-{}", cluster.port),
            &verifier,
            &[&fake.signing_key(), TENANT, record.to_str().unwrap()],
        );
        let (ca, cert, key) = server_certificate(dir.path());
        cluster.install_file("server.crt", cert.as_bytes(), 0o644);
        cluster.install_file("server.key", key.as_bytes(), 0o600);
        cluster.append_conf(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            cluster.root().join("server.crt").display(),
            cluster.root().join("server.key").display()
        ));
        cluster.install_file(
            "data/pg_hba.conf",
            format!(
                "local all all trust\nhostssl reports all 127.0.0.1/32 pam pamservice={}\n",
                pam.name
            )
            .as_bytes(),
            0o600,
        );
        if let Err(log) = cluster.try_start() {
            panic!("PostgreSQL did not start with TLS and PAM:\n{log}");
        }
        cluster.sql("postgres", "CREATE DATABASE reports");
        for role in ["reporting", "loader", "stranger"] {
            cluster.sql("postgres", &format!("CREATE ROLE {role} LOGIN"));
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
        for user in ["judy", "kim"] {
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
        Server {
            dir,
            cluster,
            relay_port,
            rt,
            fake,
            _pam: pam,
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn frozen(&self) -> PathBuf {
        self.out().join("relay/frozen.json")
    }

    /// Replaces the db-users' principals in the compiled frozen config.
    fn set_principals(&self, principals: &[(&str, (&str, &str))]) {
        let text = fs::read_to_string(self.frozen()).unwrap();
        let mut config: Config = serde_json::from_str(&text).unwrap();
        let database = config.databases.get_mut("reports").unwrap();
        let UpstreamAuth::AzureEntra {
            principals: map, ..
        } = &mut database.auth
        else {
            panic!("reports is not an Azure database: {:?}", database.auth);
        };
        map.clear();
        for (user, (client_id, object_id)) in principals {
            map.insert(
                (*user).to_owned(),
                EntraPrincipal {
                    client_id: (*client_id).to_owned(),
                    object_id: Some((*object_id).to_owned()),
                },
            );
        }
        config.seal();
        fs::write(self.frozen(), config.to_json()).unwrap();
    }

    /// `SELECT current_user` through the relay as `person` → reports as `user`, real psql.
    fn psql(&self, person: &str, user: &str) -> Result<String, String> {
        let certs = self.dir.path().join(person);
        let conninfo = format!(
            "host=reports.{PUBLIC_NAME} hostaddr=127.0.0.1 port={} user={user} dbname=reports \
             sslmode=verify-full sslrootcert={} sslcert={}/postgresql.crt sslkey={}/postgresql.key",
            self.relay_port,
            self.out().join("ca/server-ca.crt").display(),
            certs.display(),
            certs.display()
        );
        run_psql(psql_command(
            &conninfo,
            "SELECT current_user",
            self.dir.path(),
        ))
    }

    /// psql straight to PostgreSQL as `role` with `password` (no relay).
    fn psql_direct(&self, role: &str, password: &str) -> Result<String, String> {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={role} dbname=reports sslmode=require",
            self.cluster.port
        );
        let mut command = psql_command(&conninfo, "SELECT current_user", self.dir.path());
        command.env("PGPASSWORD", password);
        run_psql(command)
    }

    fn record(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join("record").join(name)).unwrap_or_default()
    }

    fn last_decision(&self) -> String {
        self.record("verifier.log")
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    }

    fn reject_next_token(&self) {
        fs::write(self.dir.path().join("record/reject_next"), "").unwrap();
    }

    fn audit(&self) -> String {
        fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }

    /// The sources of the tokens the fake issued for `client_id`.
    fn sources(&self, client_id: &str) -> Vec<String> {
        self.fake
            .issued()
            .iter()
            .filter_map(|t| self.fake.token_info(t))
            .filter(|i| i.client_id == client_id)
            .map(|i| i.source)
            .collect()
    }

    fn assert_no_token_in(&self, what: &str, text: &str) {
        let tokens = self.fake.issued();
        assert!(!tokens.is_empty(), "no token was issued");
        for token in tokens {
            let signature = token.rsplit('.').next().unwrap_or_default();
            assert!(
                !text.contains(&token) && !text.contains(signature),
                "a token appears in the {what}"
            );
        }
        for secret in [SECRET, FEDERATED, "identity-header-secret"] {
            assert!(!text.contains(secret), "a secret appears in the {what}");
        }
    }
}

fn run_psql(mut command: Command) -> Result<String, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql");
    let finished = wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten());
    if finished.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("psql output");
    assert!(finished.is_some(), "psql hung for a minute");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A server certificate for 127.0.0.1 from a test CA (standing in for the public chain of
/// `<server>.postgres.database.azure.com`).
fn server_certificate(dir: &Path) -> (PathBuf, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test Azure server CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let ca_path = dir.join("azure-ca.pem");
    fs::write(&ca_path, ca.pem()).unwrap();
    (ca_path, cert.pem(), key.serialize_pem())
}

/// The in-process relay, its Azure variables injected.
struct Relay {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl Relay {
    fn start(server: &Server, env: Vec<(String, String)>, policy: Policy) -> Relay {
        let audit = AuditSink::start(
            Some(server.dir.path().join("audit.jsonl")),
            dbward_relay::replica::ReplicaId::parse("test").unwrap(),
        )
        .unwrap();
        let shared = Arc::new(Shared::new(
            load(server, env, policy),
            audit,
            Metrics::new(),
        ));
        let shutdown = CancellationToken::new();
        let listener = server
            .rt
            .block_on(tokio::net::TcpListener::bind((
                "127.0.0.1",
                server.relay_port,
            )))
            .unwrap();
        server.rt.spawn(dbward_relay::run(
            listener,
            Arc::clone(&shared),
            shutdown.clone(),
        ));
        Relay { shared, shutdown }
    }

    /// A fresh config (empty token caches) reading `env`.
    fn reload(&self, server: &Server, env: Vec<(String, String)>) {
        self.shared
            .replace_config(load(server, env, Policy::default()));
    }
}

fn load(
    server: &Server,
    env: Vec<(String, String)>,
    policy: Policy,
) -> dbward_relay::state::Loaded {
    dbward_relay::config::load(&server.frozen())
        .unwrap_or_else(|e| panic!("the relay refused the config: {e}"))
        .with_azure_env(AzureEnv::from_vars(env), policy)
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.shared.audit.flush();
    }
}

fn with(base: Vec<(String, String)>, more: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = base;
    env.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

#[test]
fn each_db_user_logs_in_as_its_own_entra_identity_from_every_source() {
    let server = Server::start();
    let fake = &server.fake;
    // Both identities are user-assigned identities of the "VM" (IMDS).
    fake.assign_to_vm(REPORTING.0);
    fake.assign_to_vm(LOADER.0);
    let relay = Relay::start(&server, fake.env(), Policy::default());

    let who = server.psql("judy", "reporting").unwrap_or_else(|e| {
        panic!(
            "{e}\nverifier: {}\n{}",
            server.record("verifier.log"),
            server.cluster.log()
        )
    });
    assert_eq!(who, "reporting");
    assert_eq!(server.psql("kim", "loader").unwrap(), "loader");
    assert_eq!(server.psql("kim", "reporting").unwrap(), "reporting");
    assert_eq!(fake.count(REPORTING.0), 1, "the reporting token is cached");
    assert_eq!(fake.count(LOADER.0), 1);
    assert_eq!(server.sources(REPORTING.0), ["imds"]);
    // judy may not use loader: refused by the relay, before any token.
    let error = server.psql("judy", "loader").unwrap_err();
    assert!(
        error.contains("not allowed") || error.contains("may not"),
        "{error}"
    );

    // The other identity's token is refused by PostgreSQL itself ("oid mismatch").
    let loader_token = fake
        .issued()
        .into_iter()
        .find(|t| fake.token_info(t).unwrap().client_id == LOADER.0)
        .unwrap();
    let error = server.psql_direct("reporting", &loader_token).unwrap_err();
    assert!(
        error.contains("PAM authentication failed for user \"reporting\""),
        "{error}"
    );
    assert!(
        server
            .last_decision()
            .starts_with("reporting: oid mismatch"),
        "{}",
        server.last_decision()
    );
    assert_eq!(
        server.psql_direct("loader", &loader_token).unwrap(),
        "loader"
    );

    // A token the database refuses is dropped, and the client is told what to check.
    server.reject_next_token();
    let error = server.psql("judy", "reporting").unwrap_err();
    for part in [
        "PAM authentication failed for user \"reporting\"",
        "HINT:",
        &format!(
            "carried object id {}, the one the manifest maps",
            REPORTING.1
        ),
        "\"oid mismatch\" means",
        &format!(
            "pgaadauth_create_principal_with_oid('reporting', '{}'",
            REPORTING.1
        ),
        "An error occurred while validating the access token",
        &format!("tenant {TENANT}"),
    ] {
        assert!(error.contains(part), "{part:?} missing from:\n{error}");
    }
    assert_eq!(server.psql("judy", "reporting").unwrap(), "reporting");
    assert_eq!(fake.count(REPORTING.0), 2, "the refused token was replaced");

    // Each credential source (a reload empties the caches).
    let dir = server.dir.path();
    // 1. Environment secret, for AZURE_CLIENT_ID only; loader still from IMDS.
    fake.add_secret(REPORTING.0, SECRET);
    relay.reload(
        &server,
        with(
            fake.env(),
            &[
                ("AZURE_TENANT_ID", TENANT),
                ("AZURE_CLIENT_ID", REPORTING.0),
                ("AZURE_CLIENT_SECRET", SECRET),
            ],
        ),
    );
    assert_eq!(server.psql("judy", "reporting").unwrap(), "reporting");
    assert_eq!(server.psql("kim", "loader").unwrap(), "loader");
    assert_eq!(server.sources(REPORTING.0).last().unwrap(), "secret");
    assert_eq!(server.sources(LOADER.0).last().unwrap(), "imds");
    // 2. Environment certificate.
    fake.add_certificate(REPORTING.0, TEST_APP_CERT, TEST_APP_KEY);
    let pem = dir.join("reporting-app.pem");
    fs::write(&pem, format!("{TEST_APP_CERT}{TEST_APP_KEY}")).unwrap();
    relay.reload(
        &server,
        with(
            fake.env(),
            &[
                ("AZURE_TENANT_ID", TENANT),
                ("AZURE_CLIENT_ID", REPORTING.0),
                ("AZURE_CLIENT_CERTIFICATE_PATH", pem.to_str().unwrap()),
            ],
        ),
    );
    assert_eq!(server.psql("judy", "reporting").unwrap(), "reporting");
    assert_eq!(server.sources(REPORTING.0).last().unwrap(), "certificate");
    // 3. Workload identity, for both principals.
    fake.add_federated(REPORTING.0, FEDERATED);
    fake.add_federated(LOADER.0, FEDERATED);
    let federated = dir.join("azure-identity-token");
    fs::write(&federated, FEDERATED).unwrap();
    relay.reload(
        &server,
        with(
            fake.env(),
            &[("AZURE_FEDERATED_TOKEN_FILE", federated.to_str().unwrap())],
        ),
    );
    assert_eq!(server.psql("judy", "reporting").unwrap(), "reporting");
    assert_eq!(server.psql("kim", "loader").unwrap(), "loader");
    assert_eq!(server.sources(REPORTING.0).last().unwrap(), "federated");
    assert_eq!(server.sources(LOADER.0).last().unwrap(), "federated");
    // 4. App Service / Container Apps.
    fake.assign_to_app_service("identity-header-secret", LOADER.0);
    relay.reload(
        &server,
        with(fake.app_service_env("identity-header-secret"), &[]),
    );
    assert_eq!(server.psql("kim", "loader").unwrap(), "loader");
    assert_eq!(server.sources(LOADER.0).last().unwrap(), "app-service");

    // Error paths, each with its message.
    // The identity is not assigned to this App Service.
    let error = server.psql("judy", "reporting").unwrap_err();
    assert!(
        error.contains(&format!(
            "the managed identity {} is not assigned to this host",
            REPORTING.0
        )),
        "{error}"
    );
    // Entra refuses a wrong secret, and says what to do.
    relay.reload(
        &server,
        with(
            fake.env(),
            &[
                ("AZURE_TENANT_ID", TENANT),
                ("AZURE_CLIENT_ID", REPORTING.0),
                ("AZURE_CLIENT_SECRET", "not-the-secret"),
            ],
        ),
    );
    let error = server.psql("judy", "reporting").unwrap_err();
    assert!(
        error.contains("AADSTS7000215") && error.contains("AZURE_CLIENT_SECRET"),
        "{error}"
    );
    assert!(!error.contains("not-the-secret"), "{error}");
    // No credentials at all (IMDS on a dead port): every source tried is listed.
    let dead = format!("http://127.0.0.1:{}", free_port());
    relay.reload(
        &server,
        vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST".into(), dead)],
    );
    let error = server.psql("judy", "reporting").unwrap_err();
    for part in [
        "no Azure credentials for the Entra principal with client id",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "IDENTITY_ENDPOINT",
        "IMDS",
    ] {
        assert!(error.contains(part), "{part:?} missing from:\n{error}");
    }
    // A db-user on the relay-identity, an identity this host (the fake IMDS) does not have.
    relay.reload(&server, fake.env());
    let error = server.psql("kim", "stranger").unwrap_err();
    assert!(
        error.contains(
            "the managed identity 99999999-8888-7777-6666-555555555555 is not assigned to this host"
        ),
        "{error}"
    );
    // A db-user without a principal in the config (a hand-edited frozen config).
    server.set_principals(&[("reporting", REPORTING), ("loader", LOADER)]);
    relay.reload(&server, fake.env());
    let error = server.psql("kim", "stranger").unwrap_err();
    assert!(error.contains("has no Entra principal"), "{error}");
    // A principal whose client id and object id name different identities: the server maps
    // the role to the object id, the token carries another.
    server.set_principals(&[("reporting", (REPORTING.0, LOADER.1)), ("loader", LOADER)]);
    fs::write(
        dir.join("record/oids"),
        format!("reporting {}\nloader {}\n", LOADER.1, LOADER.1),
    )
    .unwrap();
    relay.reload(&server, fake.env());
    let error = server.psql("judy", "reporting").unwrap_err();
    assert!(
        error.contains(&format!(
            "carried object id {}, but the role is mapped to object id {}",
            REPORTING.1, LOADER.1
        )),
        "{error}"
    );

    drop(relay);
    server.assert_no_token_in("audit log", &server.audit());
}

#[test]
fn tokens_are_refreshed_ahead_of_expiry_with_no_failed_session() {
    let server = Server::start();
    server.fake.assign_to_vm(REPORTING.0);
    server.fake.set_token_lifetime(Duration::from_secs(6));
    let policy = Policy {
        refresh_before: Duration::from_secs(3),
        min_remaining: Duration::from_secs(1),
        retry_after: Duration::from_secs(1),
    };
    let _relay = Relay::start(&server, server.fake.env(), policy);
    let start = Instant::now();
    let mut sessions = 0;
    while start.elapsed() < Duration::from_secs(14) {
        let who = server.psql("judy", "reporting").unwrap_or_else(|e| {
            panic!(
                "session {sessions} failed: {e}\nverifier: {}",
                server.record("verifier.log")
            )
        });
        assert_eq!(who, "reporting");
        sessions += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every token lived 6 s; the sessions spanned more than two lifetimes without a failure.
    let fetched = server.fake.count(REPORTING.0);
    assert!(fetched >= 3, "{fetched} tokens for {sessions} sessions");
    assert!(
        !server.record("verifier.log").contains("expired"),
        "{}",
        server.record("verifier.log")
    );
}

/// The real `dbward-relay` binary, with the fake's endpoints and a client secret in its
/// environment.
struct Binary {
    child: Child,
    log: PathBuf,
}

impl Binary {
    fn start(server: &Server, env: &[(String, String)]) -> Binary {
        let log = server.dir.path().join("relay.log");
        let mut command = Command::new(workspace_bin("dbward-relay"));
        command
            .arg("--config")
            .arg(server.frozen())
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(fs::File::create(server.dir.path().join("relay.out")).unwrap())
            .stderr(fs::File::create(&log).unwrap());
        for (name, _) in
            std::env::vars().filter(|(k, _)| k.starts_with("AZURE_") || k.starts_with("IDENTITY_"))
        {
            command.env_remove(name);
        }
        command.envs(env.iter().cloned());
        let mut child = command.spawn().expect("start dbward-relay");
        let up = wait_for(Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the relay exited with {status}:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            TcpStream::connect(("127.0.0.1", server.relay_port))
                .is_ok()
                .then_some(())
        });
        assert!(up.is_some(), "the relay did not listen");
        Binary { child, log }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_relay_binary_gets_entra_tokens_from_its_environment_and_never_logs_them() {
    let server = Server::start();
    let fake = &server.fake;
    fake.add_secret(REPORTING.0, SECRET);
    fake.assign_to_vm(LOADER.0);
    let relay = Binary::start(
        &server,
        &with(
            fake.env(),
            &[
                ("AZURE_TENANT_ID", TENANT),
                ("AZURE_CLIENT_ID", REPORTING.0),
                ("AZURE_CLIENT_SECRET", SECRET),
            ],
        ),
    );
    for _ in 0..2 {
        let who = server.psql("judy", "reporting").unwrap_or_else(|e| {
            panic!(
                "{e}\nverifier: {}\nrelay: {}",
                server.record("verifier.log"),
                relay.log()
            )
        });
        assert_eq!(who, "reporting");
    }
    assert_eq!(server.psql("kim", "loader").unwrap(), "loader");
    assert_eq!(fake.count(REPORTING.0), 1, "the token is cached");
    // A refused token: the FATAL and the log explain, neither shows the token.
    server.reject_next_token();
    let error = server.psql("judy", "reporting").unwrap_err();
    assert!(error.contains("\"oid mismatch\" means"), "{error}");
    assert_eq!(server.psql("judy", "reporting").unwrap(), "reporting");
    drop(relay);
    let log = fs::read_to_string(server.dir.path().join("relay.log")).unwrap_or_default();
    assert!(!log.is_empty(), "the relay logged nothing at trace level");
    assert!(log.contains("refused the Entra ID token"), "{log}");
    server.assert_no_token_in("relay log", &log);
    server.assert_no_token_in("error", &error);
    server.assert_no_token_in("audit log", &server.audit());
}

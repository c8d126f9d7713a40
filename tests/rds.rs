//! Amazon RDS IAM authentication end to end, against a real PostgreSQL that checks the token
//! the way RDS does: `dbward apply` on an `aws-rds` manifest → a real cluster whose pg_hba.conf
//! sends the IAM user to PAM (`hostssl … pam`), where `pam_exec` runs `rds/verify_rds_token.py`
//! (host:port, DBUser, Action, expiry, credential scope and the SigV4 signature recomputed with
//! the test's secret key) → the relay signing tokens with ambient credentials → real `psql`.
//!
//! Credentials reach the relay two ways: injected into the in-process relay as environment
//! variables (no process-environment mutation), and through a local ECS container-credentials
//! HTTP server given to the real `dbward-relay` binary's environment. A wrong secret key is
//! refused by PostgreSQL itself, and the token never appears in the relay's log or audit file.
//!
//! Clock skew: the verifier's notion of now and the fake AWS endpoint's `Date` are moved
//! together ("AWS's time"), playing a relay whose clock is ten minutes behind or ahead; the
//! relay learns the offset from the `Date` and signs tokens PostgreSQL accepts with their full
//! validity. A token the database refused is never used again, and the client is told what to
//! check (clock, IAM policy, `rds_iam`) without seeing the token.
//!
//! PAM services live in /etc/pam.d, so this module needs root; it fails saying so otherwise.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dbward_cloud::aws::{AwsCredentials, AwsEnv};
use dbward_relay::audit::AuditSink;
use dbward_relay::metrics::Metrics;
use dbward_relay::state::Shared;
use dbward_tests::{Cluster, free_port, psql_command, run_bin, wait_for, workspace_bin};
use tokio_util::sync::CancellationToken;

const PUBLIC_NAME: &str = "db.localhost";
pub(crate) const REGION: &str = "eu-west-3";
pub(crate) const KEY_ID: &str = "AKIADBWARDTEST000001";
pub(crate) const SECRET: &str = "dbwardTestSecretKey/0123456789abcdefghijk";

/// The manifest: one RDS database `shop` (really the test cluster) with IAM user `app`; with
/// `provisioning`, also an admin user and kim, whose user the relay provisions (`keep`).
fn manifest(
    cluster: &Cluster,
    relay_port: u16,
    audit: &Path,
    ca: &Path,
    provisioning: bool,
) -> String {
    let (admin, people) = if provisioning {
        (
            "admin-user \"dbward-admin\" default-database=shop",
            "role analyst {\n    provision keep\n    allow {\n        databases shop\n        \
             db-names shop\n        db-roles reader\n    }\n}\nuser kim {\n    roles analyst\n}\n",
        )
    } else {
        ("", "")
    };
    format!(
        r#"dbward version=1
relay {{
    listen "127.0.0.1:{relay_port}"
    public-name "{PUBLIC_NAME}"
    client-cert-ttl "1h"
    audit "{audit}" queries=#true
}}
cloud aws-test {{
    aws account="123456789012" region="{REGION}"
    relay-role "arn:aws:iam::123456789012:role/dbward-relay"
}}
database shop {{
    postgres host="127.0.0.1" port={pg_port} version=15
    aws-rds cloud=aws-test resource-id="db-DBWARDTEST0001" ca-file="{ca}"
    {admin}
    db-role reader {{
        grant CONNECT on=database
    }}
    db-user app {{
        member-of reader
    }}
}}
role developer {{
    allow {{
        databases shop
        db-users app
        db-names shop
    }}
}}
user alice {{
    roles developer
}}
{people}"#,
        audit = audit.display(),
        pg_port = cluster.port,
        ca = ca.display(),
    )
}

/// A PAM service in /etc/pam.d for the test's lifetime.
pub(crate) struct PamService {
    pub(crate) name: String,
}

impl PamService {
    pub(crate) fn install(name: String, verifier: &Path, args: &[&str]) -> PamService {
        assert!(
            running_as_root(),
            "the RDS end-to-end test needs root to install a PAM service in /etc/pam.d \
             (PostgreSQL checks the token through pam_exec); run the tests as root"
        );
        assert!(
            Path::new("/usr/lib/x86_64-linux-gnu/security/pam_exec.so").exists()
                || Path::new("/lib/x86_64-linux-gnu/security/pam_exec.so").exists()
                || Path::new("/usr/lib/security/pam_exec.so").exists(),
            "pam_exec.so is missing; install it with `apt-get install libpam-modules`"
        );
        let service = format!(
            "# dbward RDS e2e test; removed when the test ends\n\
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

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A server certificate for 127.0.0.1 from a test CA (standing in for Amazon's RDS CA).
pub(crate) fn server_certificate(dir: &Path) -> (PathBuf, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test RDS CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let ca_path = dir.join("rds-ca.pem");
    fs::write(&ca_path, ca.pem()).unwrap();
    (ca_path, cert.pem(), key.serialize_pem())
}

/// The RDS stand-in: PostgreSQL with TLS and PAM, the applied output, a person certificate.
struct Rds {
    dir: tempfile::TempDir,
    cluster: Cluster,
    relay_port: u16,
    _pam: PamService,
}

impl Rds {
    fn start() -> Rds {
        Rds::start_with(false)
    }

    /// With `provisioning`: kim's user provisioned through the admin user, and PostgreSQL
    /// taking a token from every member of rds_iam, as RDS does (not only from `app`).
    fn start_with(provisioning: bool) -> Rds {
        let dir = tempfile::Builder::new()
            .prefix("dbward-rds-e2e-")
            .tempdir()
            .expect("temp dir");
        // The verifier runs as `postgres` and records what it saw here.
        let record = dir.path().join("record");
        fs::create_dir_all(&record).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&record, fs::Permissions::from_mode(0o777)).unwrap();
        let verifier = dir.path().join("verify_rds_token.py");
        fs::write(&verifier, include_str!("rds/verify_rds_token.py")).unwrap();
        fs::set_permissions(&verifier, fs::Permissions::from_mode(0o755)).unwrap();

        let mut cluster = Cluster::init();
        let relay_port = free_port();
        let (ca, cert, key) = server_certificate(dir.path());
        let endpoint = format!("127.0.0.1:{}", cluster.port);
        let pam = PamService::install(
            format!("dbward-rds-test-{}", cluster.port),
            &verifier,
            &[&endpoint, REGION, KEY_ID, SECRET, record.to_str().unwrap()],
        );
        cluster.install_file("server.crt", cert.as_bytes(), 0o644);
        cluster.install_file("server.key", key.as_bytes(), 0o600);
        cluster.append_conf(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            cluster.root().join("server.crt").display(),
            cluster.root().join("server.key").display()
        ));
        // As on RDS: the IAM user logs in over TLS with a token, checked by PAM.
        let iam_users = if provisioning { "+rds_iam" } else { "app" };
        cluster.install_file(
            "data/pg_hba.conf",
            format!(
                "local all all trust\nhostssl shop {iam_users} 127.0.0.1/32 pam pamservice={}\n",
                pam.name
            )
            .as_bytes(),
            0o600,
        );
        if let Err(log) = cluster.try_start() {
            panic!("PostgreSQL did not start with TLS and PAM:\n{log}");
        }
        // RDS has the rds_iam role; the generated setup.sql grants it.
        cluster.sql("postgres", "CREATE ROLE rds_iam");
        cluster.sql("postgres", "CREATE DATABASE shop");

        let manifest_path = dir.path().join("manifest.kdl");
        let audit = dir.path().join("audit.jsonl");
        fs::write(
            &manifest_path,
            manifest(&cluster, relay_port, &audit, &ca, provisioning),
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
        cluster
            .sql_file("shop", &out.join("databases/shop/setup.sql"))
            .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));
        run_bin(
            "dbward",
            &[
                "cert",
                "issue",
                manifest_path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--user",
                "alice",
                "--ttl",
                "1h",
                "--dest",
                dir.path().join("alice").to_str().unwrap(),
            ],
        );
        if provisioning {
            run_bin(
                "dbward",
                &[
                    "cert",
                    "issue",
                    manifest_path.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                    "--user",
                    "kim",
                    "--ttl",
                    "1h",
                    "--dest",
                    dir.path().join("kim").to_str().unwrap(),
                ],
            );
        }
        Rds {
            dir,
            cluster,
            relay_port,
            _pam: pam,
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn frozen(&self) -> PathBuf {
        self.out().join("relay/frozen.json")
    }

    /// `SELECT current_user` through the relay as alice → shop as app, with real psql.
    fn psql(&self) -> Result<String, String> {
        self.psql_as("alice", "app", "SELECT current_user")
    }

    /// `sql` through the relay as `person` → shop as `user`, with real psql.
    fn psql_as(&self, person: &str, user: &str, sql: &str) -> Result<String, String> {
        let certs = self.dir.path().join(person);
        let conninfo = format!(
            "host=shop.{PUBLIC_NAME} hostaddr=127.0.0.1 port={} user={user} dbname=shop \
             sslmode=verify-full sslrootcert={} sslcert={}/postgresql.crt sslkey={}/postgresql.key",
            self.relay_port,
            self.out().join("ca/server-ca.crt").display(),
            certs.display(),
            certs.display()
        );
        let mut child = psql_command(&conninfo, sql, self.dir.path())
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

    /// Sets "AWS's time" for the verifier: its clock plus `seconds`.
    fn set_aws_offset(&self, seconds: i64) {
        fs::write(
            self.dir.path().join("record/clock_offset"),
            seconds.to_string(),
        )
        .unwrap();
    }

    /// The verifier refuses the next token it sees, once.
    fn reject_next_token(&self) {
        fs::write(self.dir.path().join("record/reject_next"), "").unwrap();
    }

    /// The verifier's last decision.
    fn last_decision(&self) -> String {
        self.record("verifier.log")
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    }

    fn record(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join("record").join(name)).unwrap_or_default()
    }

    /// Every token PostgreSQL received.
    fn tokens(&self) -> Vec<String> {
        self.record("tokens.txt")
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn audit(&self) -> String {
        fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }

    fn assert_no_token_in(&self, what: &str, text: &str) {
        let tokens = self.tokens();
        assert!(!tokens.is_empty(), "PostgreSQL received no token");
        for token in tokens {
            let signature = token.rsplit("X-Amz-Signature=").next().unwrap_or_default();
            assert!(
                !text.contains(&token) && !text.contains(signature),
                "the token appears in the {what}:\n{text}"
            );
        }
        assert!(
            !text.contains(SECRET),
            "the secret key appears in the {what}"
        );
    }
}

/// In-process relay whose credentials are injected as environment variables.
struct InProcess {
    /// Serves the relay's sessions; dropped (stopping them) with the test.
    _rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl InProcess {
    fn start(rds: &Rds, env: AwsEnv) -> InProcess {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let loaded = dbward_relay::config::load(&rds.frozen())
            .unwrap_or_else(|e| panic!("the relay refused the generated config: {e}"))
            .with_aws_credentials(Arc::new(AwsCredentials::new(env)));
        let audit = AuditSink::start(
            Some(rds.dir.path().join("audit.jsonl")),
            dbward_relay::replica::ReplicaId::parse("test").unwrap(),
        )
        .unwrap();
        let shared = Arc::new(Shared::new(loaded, audit, Metrics::new()));
        let shutdown = CancellationToken::new();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", rds.relay_port)))
            .unwrap();
        rt.spawn(dbward_relay::run(
            listener,
            Arc::clone(&shared),
            shutdown.clone(),
        ));
        InProcess {
            _rt: rt,
            shared,
            shutdown,
        }
    }

    fn use_credentials(&self, rds: &Rds, env: AwsEnv) {
        let loaded = dbward_relay::config::load(&rds.frozen())
            .unwrap()
            .with_aws_credentials(Arc::new(AwsCredentials::new(env)));
        self.shared.replace_config(loaded);
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.shared.audit.flush();
    }
}

fn env_credentials(secret: &str) -> AwsEnv {
    AwsEnv::from_vars([
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", secret),
        // Nothing else may be asked: no instance metadata on a test machine.
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ])
}

#[test]
fn env_credentials_sign_a_token_postgres_accepts_and_a_wrong_secret_is_refused() {
    let rds = Rds::start();
    let relay = InProcess::start(&rds, env_credentials(SECRET));
    assert_eq!(
        rds.psql().unwrap_or_else(|e| panic!(
            "{e}\nverifier: {}\n{}",
            rds.record("verifier.log"),
            rds.cluster.log()
        )),
        "app"
    );
    assert!(
        rds.record("verifier.log").contains("app: accepted"),
        "{}",
        rds.record("verifier.log")
    );

    // A wrong secret key: PostgreSQL (PAM, the signature check) refuses, and the client gets
    // PostgreSQL's error.
    relay.use_credentials(&rds, env_credentials("not-the-secret-key"));
    let error = rds
        .psql()
        .expect_err("a token signed with a wrong secret must be refused");
    assert!(
        error.contains("PAM authentication failed for user \"app\""),
        "{error}"
    );
    assert!(
        rds.record("verifier.log")
            .contains("app: signature does not match"),
        "{}",
        rds.record("verifier.log")
    );

    // The right secret for the wrong region: the credential scope does not match.
    let mut config = dbward_frozen::Config::load(&rds.frozen()).unwrap();
    config.databases.get_mut("shop").unwrap().auth = dbward_frozen::UpstreamAuth::RdsIam {
        region: "us-east-1".into(),
    };
    let loaded = dbward_relay::state::Loaded::build(&rds.frozen(), config)
        .unwrap()
        .with_aws_credentials(Arc::new(AwsCredentials::new(env_credentials(SECRET))));
    relay.shared.replace_config(loaded);
    let error = rds
        .psql()
        .expect_err("a token for another region must be refused");
    assert!(error.contains("PAM authentication failed"), "{error}");
    assert!(
        rds.record("verifier.log")
            .contains("/us-east-1/rds-db/aws4_request' is not"),
        "{}",
        rds.record("verifier.log")
    );

    // A token signed for another database user does not log in as `app` (straight to
    // PostgreSQL with psql, as a stolen token would be used); the same for `app` does.
    let credentials = dbward_cloud::aws::Credentials {
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
        session_token: None,
        expiry: None,
        source: "test",
    };
    let endpoint = format!("127.0.0.1:{}", rds.cluster.port);
    let direct = |user: &str| {
        let token = dbward_cloud::aws::rds::auth_token(
            &endpoint,
            REGION,
            user,
            &credentials,
            std::time::SystemTime::now(),
        )
        .unwrap();
        let conninfo = format!(
            "host=127.0.0.1 port={} user=app dbname=shop sslmode=verify-full sslrootcert={}",
            rds.cluster.port,
            rds.dir.path().join("rds-ca.pem").display()
        );
        let out = psql_command(&conninfo, "SELECT current_user", rds.dir.path())
            .env("PGPASSWORD", token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, output) = direct("other");
    assert!(
        !ok && output.contains("PAM authentication failed"),
        "{output}"
    );
    assert!(
        rds.record("verifier.log")
            .contains("app: DBUser 'other' is not the user logging in"),
        "{}",
        rds.record("verifier.log")
    );
    let (ok, output) = direct("app");
    assert!(ok && output == "app", "{output}");

    // No credentials at all: the client is told what was tried.
    relay.use_credentials(
        &rds,
        AwsEnv::from_vars([("AWS_EC2_METADATA_DISABLED", "true")]),
    );
    let error = rds.psql().expect_err("no credentials");
    assert!(
        error.contains("no AWS credentials found") && error.contains("AWS_ACCESS_KEY_ID"),
        "{error}"
    );

    relay.shared.audit.flush();
    rds.assert_no_token_in("audit log", &rds.audit());
}

/// A local ECS container-credentials endpoint: answers GET /creds carrying the expected
/// Authorization header with temporary credentials; counts the requests it served.
pub(crate) fn ecs_server(
    secret: &'static str,
    authorization: &'static str,
) -> (u16, Arc<AtomicUsize>) {
    ecs_server_at(secret, authorization, 0)
}

/// [`ecs_server`] whose clock ("AWS's time": its `Date` header and the credentials' expiry) is
/// `offset` seconds from this machine's.
fn ecs_server_at(
    secret: &'static str,
    authorization: &'static str,
    offset: i64,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut authorized = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("authorization")
                    && value.trim() == authorization
                {
                    authorized = true;
                }
            }
            let now = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset);
            let date = now
                .format(time::macros::format_description!(
                    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
                ))
                .unwrap();
            let (status, body) = if !request_line.starts_with("GET /creds ") {
                ("404 Not Found", String::new())
            } else if !authorized {
                ("401 Unauthorized", String::new())
            } else {
                count.fetch_add(1, Ordering::SeqCst);
                let expiration = now + time::Duration::hours(1);
                let expiration = expiration
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap();
                (
                    "200 OK",
                    format!(
                        r#"{{"AccessKeyId":"{KEY_ID}","SecretAccessKey":"{secret}","Token":"ecs-session-token","Expiration":"{expiration}"}}"#
                    ),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ndate: {date}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, served)
}

/// The real `dbward-relay` binary, with `env` as its AWS environment.
struct Binary {
    child: Child,
    log: PathBuf,
}

impl Binary {
    fn start(rds: &Rds, env: &[(&str, String)]) -> Binary {
        let log = rds.dir.path().join("relay.log");
        let mut command = Command::new(workspace_bin("dbward-relay"));
        command
            .arg("--config")
            .arg(rds.frozen())
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(fs::File::create(rds.dir.path().join("relay.out")).unwrap())
            .stderr(fs::File::create(&log).unwrap());
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start dbward-relay");
        let up = wait_for(Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the relay exited with {status}:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            TcpStream::connect(("127.0.0.1", rds.relay_port))
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
fn ecs_container_credentials_reach_the_relay_binary_and_the_token_is_never_logged() {
    let rds = Rds::start();
    let (port, served) = ecs_server(SECRET, "ecs-auth-token");
    let relay = Binary::start(
        &rds,
        &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://127.0.0.1:{port}/creds"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "ecs-auth-token".to_owned(),
            ),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ],
    );
    for _ in 0..2 {
        let who = rds.psql().unwrap_or_else(|e| {
            panic!(
                "{e}\nverifier: {}\nrelay: {}",
                rds.record("verifier.log"),
                relay.log()
            )
        });
        assert_eq!(who, "app");
    }
    // Temporary credentials are cached, and the session token is signed into the token.
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "credentials were not cached"
    );
    assert!(
        rds.tokens()
            .iter()
            .all(|t| t.contains("X-Amz-Security-Token=ecs-session-token")),
        "{:?}",
        rds.tokens()
    );
    drop(relay);
    let log = fs::read_to_string(rds.dir.path().join("relay.log")).unwrap_or_default();
    assert!(!log.is_empty(), "the relay logged nothing at trace level");
    rds.assert_no_token_in("relay log", &log);
    assert!(
        !log.contains("ecs-auth-token"),
        "the ECS authorization token was logged"
    );
    // Nor the session token of the temporary credentials (aws-sigv4 traces the canonical
    // request, which carries it).
    assert!(
        !log.contains("ecs-session-token"),
        "the credentials' session token was logged"
    );
    rds.assert_no_token_in("audit log", &rds.audit());
}

/// The age of the token behind an "accepted" decision of the verifier, in seconds.
fn accepted_age(decision: &str) -> i64 {
    decision
        .strip_prefix("app: accepted, age ")
        .and_then(|rest| rest.strip_suffix(" s"))
        .and_then(|age| age.parse().ok())
        .unwrap_or_else(|| panic!("not an accepted token: {decision}"))
}

/// The client's error for a refused token names what to check, and not the token.
fn assert_refusal_hints(rds: &Rds, error: &str, clock: &str) {
    for part in [
        "PAM authentication failed for user \"app\"",
        "HINT:",
        "relay's clock",
        clock,
        "rds-db:connect",
        &format!("arn:aws:rds-db:{REGION}:ACCOUNT:dbuser:RESOURCE_ID/app"),
        "GRANT rds_iam TO \"app\"",
    ] {
        assert!(
            error.contains(part),
            "{part:?} missing from the client's error:\n{error}"
        );
    }
    rds.assert_no_token_in("client's error", error);
}

fn ecs_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://127.0.0.1:{port}/creds"),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "ecs-auth-token".to_owned(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

#[test]
fn a_relay_clock_ten_minutes_off_learns_aws_time_from_the_date_of_the_credentials_endpoint() {
    let rds = Rds::start();

    // The relay's clock is ten minutes behind AWS's. Unlearned, its tokens would reach RDS with
    // 5 of their 15 minutes left (and the old cache reused them after they expired).
    rds.set_aws_offset(600);
    let (port, _) = ecs_server_at(SECRET, "ecs-auth-token", 600);
    let relay = Binary::start(&rds, &ecs_env(port));
    let who = rds.psql().unwrap_or_else(|e| {
        panic!(
            "{e}\nverifier: {}\nrelay: {}",
            rds.record("verifier.log"),
            relay.log()
        )
    });
    assert_eq!(who, "app");
    let age = accepted_age(&rds.last_decision());
    assert!(
        (-5..=5).contains(&age),
        "the token was signed {age} s before AWS's now: the relay did not sign with AWS's time\n\
         relay: {}",
        relay.log()
    );
    // The offset is logged once, with its size.
    let warning = "behind AWS's (learned from the Date of";
    assert_eq!(relay.log().matches(warning).count(), 1, "{}", relay.log());
    assert!(
        relay.log().contains("9 min 59 s behind") || relay.log().contains("10 min 0 s behind"),
        "{}",
        relay.log()
    );

    // The database refuses a token: the client and the relay's log say what to check, with
    // the learned offset.
    rds.reject_next_token();
    let error = rds.psql().expect_err("the verifier refuses this token");
    assert_refusal_hints(
        &rds,
        &error,
        "behind AWS's, learned from the Date of AWS's answers",
    );
    assert!(error.contains("from ECS container credentials"), "{error}");
    drop(relay);
    let log = fs::read_to_string(rds.dir.path().join("relay.log")).unwrap_or_default();
    assert!(
        log.contains("the database refused the RDS IAM token") && log.contains("rds-db:connect"),
        "{log}"
    );
    rds.assert_no_token_in("relay log", &log);

    // Ten minutes ahead: unlearned, the token would be signed in the future and refused.
    rds.set_aws_offset(-600);
    let (port, _) = ecs_server_at(SECRET, "ecs-auth-token", -600);
    let relay = Binary::start(&rds, &ecs_env(port));
    let who = rds.psql().unwrap_or_else(|e| {
        panic!(
            "{e}\nverifier: {}\nrelay: {}",
            rds.record("verifier.log"),
            relay.log()
        )
    });
    assert_eq!(who, "app");
    let age = accepted_age(&rds.last_decision());
    assert!((-5..=5).contains(&age), "signed {age} s before AWS's now");
    assert!(relay.log().contains("ahead of AWS's"), "{}", relay.log());
}

#[test]
fn a_refused_token_is_never_reused_and_the_client_is_told_what_to_check() {
    let rds = Rds::start();
    let _relay = InProcess::start(&rds, env_credentials(SECRET));
    assert_eq!(rds.psql().as_deref(), Ok("app"));
    // The database refuses the cached token once.
    rds.reject_next_token();
    let error = rds.psql().expect_err("the verifier refuses this token");
    assert_refusal_hints(&rds, &error, "no offset from AWS's clock was learned");
    // SigV4 dates have one-second resolution: a token signed in the same second as the refused
    // one would be the same token.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(rds.psql().as_deref(), Ok("app"));
    let tokens = rds.tokens();
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    assert_eq!(tokens[0], tokens[1], "the cached token was not reused");
    assert_ne!(
        tokens[2], tokens[1],
        "the token the database refused was used again"
    );
    // And the new token is cached in turn.
    assert_eq!(rds.psql().as_deref(), Ok("app"));
    assert_eq!(rds.tokens()[3], tokens[2]);

    // Credentials from the environment teach no offset: with the relay's clock ten minutes
    // ahead the cached token is refused, and so is the fresh one that replaces it; the hint
    // says the relay's own clock was used.
    rds.set_aws_offset(-600);
    rds.psql().expect_err("a token signed ten minutes ahead");
    std::thread::sleep(Duration::from_millis(1100));
    let error = rds.psql().expect_err("a token signed ten minutes ahead");
    assert!(
        rds.last_decision().contains("s in the future"),
        "{}",
        rds.record("verifier.log")
    );
    let tokens = rds.tokens();
    assert_ne!(tokens[tokens.len() - 1], tokens[tokens.len() - 2]);
    assert_refusal_hints(&rds, &error, "signed with the relay's own clock");
}

/// Provisioning on RDS: the admin user logs in with its own IAM token (checked by PAM like any
/// other), kim's provisioned user is granted rds_iam (without which RDS, and this stand-in,
/// would not take its token), and it is stripped of it and locked after the session.
#[test]
fn provisioning_on_rds_uses_the_admin_users_own_token_and_grants_rds_iam() {
    let rds = Rds::start_with(true);
    let setup = fs::read_to_string(rds.out().join("databases/shop/setup.sql")).unwrap();
    assert!(setup.contains("rds_iam"), "{setup}");
    let relay = InProcess::start(&rds, env_credentials(SECRET));
    let facts = || {
        rds.cluster.sql(
            "shop",
            "SELECT coalesce((SELECT concat_ws('|', rolcanlogin, pg_has_role(oid, 'rds_iam', 'MEMBER'), \
             pg_has_role(oid, 'reader', 'MEMBER')) FROM pg_roles WHERE rolname = 'kim'), 'absent')",
        )
    };
    assert_eq!(facts().trim(), "absent");
    let out = rds
        .psql_as(
            "kim",
            "kim",
            "SELECT current_user || ':' || pg_has_role('rds_iam', 'MEMBER')",
        )
        .unwrap_or_else(|e| {
            panic!(
                "kim's session: {e}\nverifier: {}",
                rds.record("verifier.log")
            )
        });
    assert_eq!(out, "kim:true");
    let log = rds.record("verifier.log");
    assert!(
        log.lines().any(|l| l.starts_with("dbward-admin: accepted")),
        "the admin user's own token: {log}"
    );
    assert!(
        log.lines().any(|l| l.starts_with("kim: accepted")),
        "kim's token: {log}"
    );
    let retired = wait_for(Duration::from_secs(20), || {
        (facts().trim() == "f|f|f").then_some(())
    });
    assert!(retired.is_some(), "kim was not retired: {}", facts());
    relay.shared.audit.flush();
    let audit = rds.audit();
    assert!(audit.contains("\"event\":\"user.provisioned\""), "{audit}");
    rds.assert_no_token_in("audit log", &audit);
}

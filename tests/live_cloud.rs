//! `dbward plan --live` / `apply --live` against cloud databases, logging in as the admin user
//! the way the relay does, with the real `dbward` binary and a real PostgreSQL that checks the
//! token itself:
//! - RDS / Aurora: the admin user's SigV4 token from the AWS credential chain (environment
//!   variables, and a local ECS container-credentials endpoint: the relay's variables and
//!   overrides), checked by `rds/verify_rds_token.py` through PAM as RDS checks it, over TLS
//!   verified against the manifest's `ca-file`. A wrong secret, an expired token and missing
//!   credentials each give an error naming the database, host and user and what to check,
//!   without the token or the secret.
//!
//! - Azure: the Entra ID token of the admin user's principal from the local fake Entra ID
//!   (`dbward_cloud::azure::fake`, an app registration's secret in the environment), checked by
//!   `azure/verify_entra_token.py` through PAM (the token's `oid` must be the admin user's);
//!   setup.sql runs in `postgres` first, where a stub `pgaadauth_create_principal_with_oid`
//!   creates the db-user's principal. A wrong secret and a refused token name the database,
//!   host, user and what to check.
//!
//! - Cloud SQL (with `host` and `ca-file`): the login token of the admin user's service account,
//!   impersonated with the operator's own Google identity (the fake Google's metadata server),
//!   checked by PostgreSQL as the role's password (the fake sets it when it issues the token);
//!   the server certificate verified by the instance name in its CN. Impersonation refused:
//!   the error names the database, host, user and the IAM right to check.
//! - Cloud SQL without `host` and `ca-file`: the instance looked up through the fake Cloud SQL
//!   Admin (the address of the manifest's `ip-type`, the server CA), an ephemeral client
//!   certificate the server requires, the token checked by `cloudsql/verify_cloudsql_token.py`
//!   through PAM; once per run. A certificate naming another instance is refused; a refused
//!   lookup (403) fails that database alone, naming the instance, the user and the rights to
//!   grant, while another database is applied.
//!
//! PAM services live in /etc/pam.d, so this module needs root (as `rds` and `azure` do).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dbward_tests::{Cluster, workspace_bin};

use crate::rds::{KEY_ID, PamService, REGION, SECRET, ecs_server, server_certificate};

const ADMIN: &str = "dbward-admin";
const RESOURCE_ID: &str = "db-DBWARDLIVE0001";

/// An RDS stand-in: PostgreSQL over TLS whose pg_hba.conf sends every member of rds_iam (the
/// admin user too, as on RDS) to the PAM token verifier; the admin user made by hand, as on RDS
/// (the master user creates it and grants it rds_iam).
struct Rds {
    dir: tempfile::TempDir,
    cluster: Cluster,
    _pam: PamService,
}

impl Rds {
    fn start() -> Rds {
        let dir = tempfile::Builder::new()
            .prefix("dbward-live-rds-")
            .tempdir()
            .expect("temp dir");
        let record = dir.path().join("record");
        fs::create_dir_all(&record).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&record, fs::Permissions::from_mode(0o777)).unwrap();
        let verifier = dir.path().join("verify_rds_token.py");
        fs::write(&verifier, include_str!("rds/verify_rds_token.py")).unwrap();
        fs::set_permissions(&verifier, fs::Permissions::from_mode(0o755)).unwrap();

        let mut cluster = Cluster::init();
        let (_ca, cert, key) = server_certificate(dir.path());
        let endpoint = format!("127.0.0.1:{}", cluster.port);
        let pam = PamService::install(
            format!("dbward-live-rds-{}", cluster.port),
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
        cluster.install_file(
            "data/pg_hba.conf",
            format!(
                "local all all trust\nhostssl all +rds_iam 127.0.0.1/32 pam pamservice={}\n",
                pam.name
            )
            .as_bytes(),
            0o600,
        );
        if let Err(log) = cluster.try_start() {
            panic!("PostgreSQL did not start with TLS and PAM:\n{log}");
        }
        cluster.sql("postgres", "CREATE ROLE rds_iam");
        cluster.sql(
            "postgres",
            &format!("CREATE ROLE \"{ADMIN}\" LOGIN CREATEROLE IN ROLE rds_iam"),
        );
        cluster.sql(
            "postgres",
            &format!("CREATE DATABASE shop OWNER \"{ADMIN}\""),
        );
        cluster.sql(
            "shop",
            &format!("SET ROLE \"{ADMIN}\"; CREATE TABLE items (name text)"),
        );
        let rds = Rds {
            dir,
            cluster,
            _pam: pam,
        };
        fs::write(rds.manifest(), rds.manifest_text()).unwrap();
        rds
    }

    /// One RDS database `shop` with an admin user and db-user `app` (no provisioning: the
    /// relay's policy does not grant the admin login; the live policy does).
    fn manifest_text(&self) -> String {
        format!(
            r#"dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.localhost"
    client-cert-ttl "1h"
}}
cloud aws-test {{
    aws account="123456789012" region="{REGION}"
    relay-role "arn:aws:iam::123456789012:role/dbward-relay"
}}
database shop {{
    postgres host="127.0.0.1" port={port} version=15
    aws-rds cloud=aws-test resource-id="{RESOURCE_ID}" ca-file="{ca}"
    admin-user "{ADMIN}" default-database=shop
    db-role reader {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT on=all-tables schema=public
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
"#,
            port = self.cluster.port,
            ca = self.dir.path().join("rds-ca.pem").display(),
        )
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("manifest.kdl")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn dbward(&self, subcommand: &str, args: &[&str], env: &[(&str, String)]) -> Output {
        dbward(self.dir.path(), subcommand, args, env)
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

    /// Neither a token PostgreSQL received (nor its signature) nor the secret key is in `text`.
    fn assert_no_secret_in(&self, text: &str) {
        for token in self.tokens() {
            let signature = token.rsplit("X-Amz-Signature=").next().unwrap_or_default();
            assert!(
                !text.contains(&token) && !text.contains(signature),
                "a token appears in dbward's output:\n{text}"
            );
        }
        assert!(!text.contains(SECRET), "the secret key appears:\n{text}");
    }

    fn query(&self, sql: &str) -> String {
        self.cluster.sql("shop", sql).trim().to_owned()
    }
}

/// The real `dbward SUBCOMMAND DIR/manifest.kdl --out DIR/out ARGS…` with exactly `env` as its
/// cloud environment (none of the test process's AWS, Azure or identity variables).
fn dbward<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    dir: &Path,
    subcommand: &str,
    args: &[&str],
    env: &[(K, V)],
) -> Output {
    let mut command = Command::new(workspace_bin("dbward"));
    command
        .arg(subcommand)
        .arg(dir.join("manifest.kdl"))
        .arg("--out")
        .arg(dir.join("out"))
        .args(args);
    for (name, _) in std::env::vars().filter(|(k, _)| {
        [
            "AWS_",
            "AZURE_",
            "IDENTITY_",
            "GOOGLE_",
            "GCE_",
            "DBWARD_GCP_",
        ]
        .iter()
        .any(|prefix| k.starts_with(prefix))
    }) {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run dbward")
}

/// `dbward apply DIR/manifest.kdl --out DIR/out ARGS…` on a real pseudo-terminal (util-linux
/// `script`), with exactly `env` as its cloud environment, answering its question with
/// `answer`; what the terminal showed.
fn dbward_on_a_terminal<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    dir: &Path,
    args: &[&str],
    env: &[(K, V)],
    answer: &str,
) -> String {
    let mut command = Command::new("script");
    command
        .args(["-q", "-e", "-c"])
        .arg(format!(
            "{} apply {} --out {} {}",
            workspace_bin("dbward").display(),
            dir.join("manifest.kdl").display(),
            dir.join("out").display(),
            args.join(" ")
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, _) in std::env::vars().filter(|(k, _)| {
        [
            "AWS_",
            "AZURE_",
            "IDENTITY_",
            "GOOGLE_",
            "GCE_",
            "DBWARD_GCP_",
        ]
        .iter()
        .any(|prefix| k.starts_with(prefix))
    }) {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .spawn()
        .expect("`script` (util-linux, package bsdutils on Debian) runs commands on a terminal");
    // The terminal keeps the line until dbward reads it; stdin stays open until dbward ends
    // (at its end `script` would send the terminal an end of file).
    let mut stdin = child.stdin.take().expect("stdin");
    {
        use std::io::Write;
        let _ = writeln!(stdin, "{answer}");
    }
    let out = child.wait_with_output().expect("script");
    drop(stdin);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn env_credentials(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", KEY_ID.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_owned()),
        // Nothing else may be asked: no instance metadata on a test machine.
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

#[test]
fn rds_apply_live_logs_in_with_the_admin_users_token_converges_and_then_plans_nothing() {
    let rds = Rds::start();
    let env = env_credentials(SECRET);

    let apply = rds.dbward("apply", &["--live", "--auto-approve"], &env);
    let applied = text(&apply);
    assert!(
        apply.status.success(),
        "{applied}\nverifier: {}\n{}",
        rds.record("verifier.log"),
        rds.cluster.log()
    );
    assert!(
        applied.contains("dbward made these changes in the databases:")
            && applied.contains("  database shop, name shop:")
            && applied.contains("+ CREATE ROLE \"reader\" NOLOGIN"),
        "{applied}"
    );
    assert_eq!(
        rds.query(
            "SELECT pg_has_role('app', 'reader', 'MEMBER') AND pg_has_role('app', 'rds_iam', \
             'MEMBER') AND has_table_privilege('app', 'items', 'SELECT')"
        ),
        "t"
    );
    // The admin user logged in with its own token, checked by PostgreSQL (PAM): one token for
    // the whole run (the list of names, then the transaction), not one per connection.
    let log = rds.record("verifier.log");
    assert!(
        log.lines().all(|l| l.starts_with("dbward-admin: accepted")),
        "{log}"
    );
    let tokens = rds.tokens();
    assert!(tokens.len() >= 2, "{tokens:?}");
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "a token per connection instead of one per run"
    );
    assert!(
        tokens[0].contains("DBUser=dbward%2Dadmin&"),
        "{}",
        tokens[0]
    );
    rds.assert_no_secret_in(&applied);

    // Whoever runs --live is granted exactly the admin login, apart from the relay's policy.
    let live: serde_json::Value = serde_json::from_slice(
        &fs::read(rds.out().join("iam/live/aws/aws-test.json")).expect("the live policy"),
    )
    .unwrap();
    assert_eq!(
        live["Statement"][0]["Resource"],
        serde_json::json!([format!(
            "arn:aws:rds-db:{REGION}:123456789012:dbuser:{RESOURCE_ID}/{ADMIN}"
        )])
    );
    let relay = fs::read_to_string(rds.out().join("iam/aws/aws-test.json")).unwrap();
    assert!(!relay.contains(ADMIN), "{relay}");

    // Apply, then plan: nothing to change, files and database alike.
    let plan = rds.dbward("plan", &["--live", "--detailed-exitcode"], &env);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("Live: no changes in 1 database name(s)."),
        "{shown}"
    );

    // Credentials from a local ECS container endpoint (the relay's variables and overrides)
    // work the same, and a hand-made drift is shown.
    rds.cluster.sql("shop", "GRANT DELETE ON items TO app");
    let (port, served) = ecs_server(SECRET, "ecs-auth-token");
    let ecs = vec![
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://127.0.0.1:{port}/creds"),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "ecs-auth-token".to_owned(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    let plan = rds.dbward("plan", &["--live", "--detailed-exitcode"], &ecs);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("- REVOKE DELETE ON TABLE public.items FROM app")
            || shown.contains("- REVOKE DELETE ON TABLE \"public\".\"items\" FROM \"app\""),
        "{shown}"
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(
        rds.tokens()
            .last()
            .is_some_and(|t| t.contains("X-Amz-Security-Token=ecs-session-token")),
        "{:?}",
        rds.tokens()
    );
    rds.assert_no_secret_in(&shown);
    assert!(!shown.contains("ecs-auth-token") && !shown.contains("ecs-session-token"));
}

/// What every refused login's message says: the database, host and user, and what to check.
fn assert_names_what_to_check(rds: &Rds, shown: &str) {
    for part in [
        "Error: database shop",
        &format!("127.0.0.1:{}", rds.cluster.port),
        &format!("as {ADMIN}"),
        "PAM authentication failed",
        "rds-db:connect",
        &format!("arn:aws:rds-db:{REGION}:123456789012:dbuser:{RESOURCE_ID}/{ADMIN}"),
        "iam/live/aws/aws-test.json",
        "rds_iam",
        "clock",
    ] {
        assert!(shown.contains(part), "{part:?} missing from:\n{shown}");
    }
    rds.assert_no_secret_in(shown);
}

#[test]
fn rds_a_wrong_secret_an_expired_token_or_no_credentials_fail_naming_the_database_and_what_to_check()
 {
    let rds = Rds::start();
    // The files first, so the live runs below change nothing but would.
    let apply = rds.dbward("apply", &["--auto-approve"], &env_credentials(SECRET));
    assert!(apply.status.success(), "{}", text(&apply));

    // A wrong secret key: PostgreSQL (the signature check) refuses the admin user.
    let plan = rds.dbward(
        "plan",
        &["--live", "--detailed-exitcode"],
        &env_credentials("not-the-secret-key"),
    );
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{shown}");
    assert_names_what_to_check(&rds, &shown);
    assert!(shown.contains("from environment variables"), "{shown}");
    assert!(
        rds.record("verifier.log")
            .contains("dbward-admin: signature does not match"),
        "{}",
        rds.record("verifier.log")
    );

    // An expired token: "AWS's time" is 20 minutes ahead of this machine's clock.
    fs::write(rds.dir.path().join("record/clock_offset"), "1200").unwrap();
    let apply = rds.dbward(
        "apply",
        &["--live", "--auto-approve"],
        &env_credentials(SECRET),
    );
    let shown = text(&apply);
    assert_eq!(apply.status.code(), Some(1), "{shown}");
    assert_names_what_to_check(&rds, &shown);
    assert!(
        rds.record("verifier.log").contains("dbward-admin: expired"),
        "{}",
        rds.record("verifier.log")
    );
    assert_eq!(
        rds.query("SELECT count(*) FROM pg_roles WHERE rolname = 'reader'"),
        "0",
        "a refused apply changed the database"
    );
    fs::remove_file(rds.dir.path().join("record/clock_offset")).unwrap();

    // No credentials at all: every source tried is named, and no connection is made.
    let before = rds.tokens().len();
    let plan = rds.dbward(
        "plan",
        &["--live"],
        &[("AWS_EC2_METADATA_DISABLED", "true".to_owned())],
    );
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{shown}");
    for part in [
        "Error: database shop",
        &format!("admin user {ADMIN} of 127.0.0.1:{}", rds.cluster.port),
        "no AWS credentials found",
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        assert!(shown.contains(part), "{part:?} missing from:\n{shown}");
    }
    assert_eq!(rds.tokens().len(), before);
}

const TENANT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
/// The admin user's principal (the cloud's relay-identity, as in examples/azure.kdl).
const AZURE_ADMIN: (&str, &str) = (
    "33333333-3333-4333-8333-333333333333",
    "c3c3c3c3-3333-4333-8333-333333333333",
);
const REPORTING: (&str, &str) = (
    "11111111-1111-4111-8111-111111111111",
    "a1a1a1a1-1111-4111-8111-111111111111",
);
const AZURE_SECRET: &str = "admin~client~secret~value";

/// Azure's function, as far as setup.sql can tell (see `azure_setup`): creates the login role
/// and records what it was asked. The Entra administrator exists before setup.sql runs.
const STUB: &str = r#"
CREATE TABLE public.pgaadauth_calls (role_name text, object_id text, is_admin boolean);
CREATE FUNCTION public.pgaadauth_create_principal_with_oid(
    role_name text, object_id text, object_type text, is_admin boolean, is_mfa boolean)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO public.pgaadauth_calls VALUES (role_name, object_id, is_admin);
    EXECUTE format('CREATE ROLE %I LOGIN', role_name);
    RETURN format('Created role for "%s"', role_name);
END $$;
CREATE ROLE dbward LOGIN CREATEROLE;
"#;

/// An Azure flexible-server stand-in: PostgreSQL over TLS whose pg_hba.conf sends the admin
/// user to the PAM Entra token verifier, and the fake Entra ID that issues its tokens.
struct Azure {
    dir: tempfile::TempDir,
    cluster: Cluster,
    /// Serves the fake Entra ID.
    _rt: tokio::runtime::Runtime,
    fake: dbward_cloud::azure::fake::FakeEntra,
    _pam: PamService,
}

impl Azure {
    fn start() -> Azure {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fake = rt.block_on(dbward_cloud::azure::fake::FakeEntra::start(TENANT));
        fake.add_principal(AZURE_ADMIN.0, AZURE_ADMIN.1);
        fake.add_secret(AZURE_ADMIN.0, AZURE_SECRET);
        let dir = tempfile::Builder::new()
            .prefix("dbward-live-azure-")
            .tempdir()
            .unwrap();
        let record = dir.path().join("record");
        fs::create_dir_all(&record).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&record, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(record.join("oids"), format!("dbward {}\n", AZURE_ADMIN.1)).unwrap();
        let verifier = dir.path().join("verify_entra_token.py");
        fs::write(&verifier, include_str!("azure/verify_entra_token.py")).unwrap();
        fs::set_permissions(&verifier, fs::Permissions::from_mode(0o755)).unwrap();

        let mut cluster = Cluster::init();
        let pam = PamService::install(
            format!("dbward-live-azure-{}", cluster.port),
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
                "local all all trust\nhostssl all dbward 127.0.0.1/32 pam pamservice={}\n",
                pam.name
            )
            .as_bytes(),
            0o600,
        );
        if let Err(log) = cluster.try_start() {
            panic!("PostgreSQL did not start with TLS and PAM:\n{log}");
        }
        cluster.sql("postgres", STUB);
        cluster.sql("postgres", "CREATE DATABASE reports OWNER dbward");
        cluster.sql("reports", "SET ROLE dbward; CREATE TABLE items (name text)");
        fs::write(
            dir.path().join("manifest.kdl"),
            format!(
                r#"dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.localhost"
    client-cert-ttl "1h"
}}
cloud azure-test {{
    azure subscription="11111111-2222-3333-4444-555555555555" tenant="{TENANT}"
    relay-identity client-id="{ac}" object-id="{ao}"
}}
database reports {{
    postgres host="127.0.0.1" port={port} version=15
    azure-postgres cloud=azure-test server="reports-flex" ca-file="{ca}"
    // The Entra administrator: logs in as the relay-identity.
    admin-user dbward
    db-role reader {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT on=all-tables schema=public
    }}
    db-user reporting client-id="{rc}" object-id="{ro}" {{
        member-of reader
    }}
}}
role analyst {{
    allow {{
        databases reports
        db-users reporting
        db-names reports
    }}
}}
user judy {{
    roles analyst
}}
"#,
                ac = AZURE_ADMIN.0,
                ao = AZURE_ADMIN.1,
                rc = REPORTING.0,
                ro = REPORTING.1,
                port = cluster.port,
                ca = ca.display(),
            ),
        )
        .unwrap();
        Azure {
            dir,
            cluster,
            _rt: rt,
            fake,
            _pam: pam,
        }
    }

    /// The fake's endpoints and the admin principal's app secret (or `secret`).
    fn env(&self, secret: &str) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = self
            .fake
            .env()
            .into_iter()
            .map(|(k, v)| {
                let k: &'static str = match k.as_str() {
                    "AZURE_AUTHORITY_HOST" => "AZURE_AUTHORITY_HOST",
                    "AZURE_POD_IDENTITY_AUTHORITY_HOST" => "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                    other => panic!("unexpected variable {other}"),
                };
                (k, v)
            })
            .collect();
        env.push(("AZURE_TENANT_ID", TENANT.to_owned()));
        env.push(("AZURE_CLIENT_ID", AZURE_ADMIN.0.to_owned()));
        env.push(("AZURE_CLIENT_SECRET", secret.to_owned()));
        env
    }

    fn dbward(&self, subcommand: &str, args: &[&str], secret: &str) -> Output {
        dbward(self.dir.path(), subcommand, args, &self.env(secret))
    }

    fn record(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join("record").join(name)).unwrap_or_default()
    }

    /// No token the fake issued, and not the secret, in `text`.
    fn assert_no_secret_in(&self, text: &str) {
        for token in self.fake.issued() {
            assert!(!text.contains(&token), "a token appears in:\n{text}");
        }
        assert!(
            !text.contains(AZURE_SECRET),
            "the secret appears in:\n{text}"
        );
    }
}

#[test]
fn azure_apply_live_logs_in_as_the_admin_principal_creates_principals_in_postgres_first() {
    let azure = Azure::start();
    let apply = azure.dbward("apply", &["--live", "--auto-approve"], AZURE_SECRET);
    let applied = text(&apply);
    assert!(
        apply.status.success(),
        "{applied}\nverifier: {}\n{}",
        azure.record("verifier.log"),
        azure.cluster.log()
    );
    // The principal is created in `postgres` (the only place Azure creates them), though the
    // db-names are only `reports`; the grants land in `reports`.
    let postgres = applied
        .find("  database reports, name postgres:\n")
        .expect(&applied);
    let reports = applied
        .find("  database reports, name reports:\n")
        .expect(&applied);
    let principal = applied
        .find(&format!(
            "    + SELECT * FROM pgaadauth_create_principal_with_oid('reporting', '{}'",
            REPORTING.1
        ))
        .expect(&applied);
    assert!(postgres < principal && principal < reports, "{applied}");
    assert!(
        applied[reports..]
            .contains("+ GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"reader\""),
        "{applied}"
    );
    assert_eq!(
        azure
            .cluster
            .sql(
                "postgres",
                "SELECT string_agg(role_name || ' ' || object_id, ',') FROM pgaadauth_calls"
            )
            .trim(),
        format!("reporting {}", REPORTING.1)
    );
    assert_eq!(
        azure
            .cluster
            .sql(
                "reports",
                "SELECT pg_has_role('reporting', 'reader', 'MEMBER') AND \
                 has_table_privilege('reporting', 'items', 'SELECT')"
            )
            .trim(),
        "t"
    );
    // The admin user's own token, checked by the server (its oid), fetched once for the run.
    let log = azure.record("verifier.log");
    assert!(
        !log.is_empty() && log.lines().all(|l| l.starts_with("dbward: accepted")),
        "{log}"
    );
    assert_eq!(azure.fake.count(AZURE_ADMIN.0), 1, "one token per run");
    azure.assert_no_secret_in(&applied);

    let plan = azure.dbward("plan", &["--live", "--detailed-exitcode"], AZURE_SECRET);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("Live: no changes in 2 database name(s)."),
        "{shown}"
    );
    assert_eq!(azure.fake.count(AZURE_ADMIN.0), 2);

    // A wrong secret: Entra refuses it; the error names the database, host, user and what the
    // AADSTS code means.
    let plan = azure.dbward("plan", &["--live"], "not-the-secret");
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{shown}");
    for part in [
        "Error: database reports",
        &format!("admin user dbward of 127.0.0.1:{}", azure.cluster.port),
        AZURE_ADMIN.0,
    ] {
        assert!(shown.contains(part), "{part:?} missing from:\n{shown}");
    }
    azure.assert_no_secret_in(&shown);
    assert!(!shown.contains("not-the-secret"), "{shown}");

    // The database refuses the token: what to check, with the principal and its object id.
    fs::write(azure.dir.path().join("record/reject_next"), "").unwrap();
    let plan = azure.dbward("plan", &["--live"], AZURE_SECRET);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{shown}");
    for part in [
        "Error: database reports",
        &format!("127.0.0.1:{} as dbward", azure.cluster.port),
        "PAM authentication failed",
        &format!("the Entra identity {} of dbward", AZURE_ADMIN.0),
        AZURE_ADMIN.1,
        "AZURE_CLIENT_SECRET",
    ] {
        assert!(shown.contains(part), "{part:?} missing from:\n{shown}");
    }
    azure.assert_no_secret_in(&shown);
}

const INSTANCE: &str = "acme-prod:us-central1:ledger";
/// Whoever runs `--live`: the identity of the (fake) metadata server.
const OPERATOR: &str = "operator@acme-prod.iam.gserviceaccount.com";
const SQL_ADMIN: &str = "dbward-admin@acme-prod.iam";
const SQL_READER: &str = "ledger-reader@acme-prod.iam";

#[test]
fn cloud_sql_apply_live_impersonates_the_admin_service_account_and_converges() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("dbward-live-cloudsql-")
        .tempdir()
        .unwrap();
    let mut cluster = Cluster::init();
    let pki = crate::cloudsql::Pki::new();
    let ca = dir.path().join("server-ca.pem");
    fs::write(&ca, pki.ca.pem()).unwrap();
    // As Cloud SQL's: the CN names the instance, no SAN for the address.
    let (cert, key) = pki.server("acme-prod:ledger", &[]);
    cluster.install_file("server.crt", cert.as_bytes(), 0o644);
    cluster.install_file("server.key", key.as_bytes(), 0o600);
    cluster.append_conf(&format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        cluster.root().join("server.crt").display(),
        cluster.root().join("server.key").display()
    ));
    cluster.install_file(
        "data/pg_hba.conf",
        b"local all all trust\nhostssl all all 127.0.0.1/32 password\n",
        0o600,
    );
    if let Err(log) = cluster.try_start() {
        panic!("PostgreSQL did not start with TLS:\n{log}");
    }
    // Cloud SQL creates IAM users through its API: login roles with no password until the fake
    // issues a token.
    cluster.sql(
        "postgres",
        &format!(
            "CREATE ROLE \"{SQL_ADMIN}\" LOGIN CREATEROLE; CREATE ROLE \"{SQL_READER}\" LOGIN"
        ),
    );
    cluster.sql(
        "postgres",
        &format!("CREATE DATABASE ledger OWNER \"{SQL_ADMIN}\""),
    );
    cluster.sql(
        "ledger",
        &format!("SET ROLE \"{SQL_ADMIN}\"; CREATE TABLE entries (amount int)"),
    );

    let fake = rt.block_on(dbward_cloud::gcp::fake::FakeGoogle::start());
    let admin_account = format!("{SQL_ADMIN}.gserviceaccount.com");
    fake.add_account(OPERATOR);
    fake.attach_to_metadata(OPERATOR);
    fake.add_account(&admin_account);
    fake.allow_impersonation(OPERATOR, &admin_account);
    let issued = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = issued.clone();
    let (socket, port) = (cluster.socket_dir(), cluster.port);
    fake.on_issue(move |principal, token, scopes| {
        if scopes
            .iter()
            .any(|s| s == dbward_cloud::gcp::SQLSERVICE_LOGIN)
        {
            seen.lock().unwrap().push(token.to_owned());
            let role = principal.trim_end_matches(".gserviceaccount.com");
            crate::cloudsql::set_password(&socket, port, role, token);
        }
    });

    fs::write(
        dir.path().join("manifest.kdl"),
        format!(
            r#"dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.localhost"
    client-cert-ttl "1h"
}}
cloud gcp-test {{
    gcp project="acme-prod"
    relay-service-account "dbward-relay@acme-prod.iam.gserviceaccount.com"
}}
database ledger {{
    postgres host="127.0.0.1" port={port} version=15
    cloud-sql cloud=gcp-test instance="{INSTANCE}" ca-file="{ca}"
    admin-user "{SQL_ADMIN}" default-database=ledger
    db-role reader {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT on=all-tables schema=public
    }}
    db-user "{SQL_READER}" {{
        member-of reader
    }}
}}
role accountant {{
    allow {{
        databases ledger
        db-users "{SQL_READER}"
        db-names ledger
    }}
}}
user heidi {{
    roles accountant
}}
"#,
            ca = ca.display(),
        ),
    )
    .unwrap();

    let env = fake.env();
    let apply = dbward(dir.path(), "apply", &["--live", "--auto-approve"], &env);
    let applied = text(&apply);
    assert!(apply.status.success(), "{applied}\n{}", cluster.log());
    assert!(
        applied.contains("  database ledger, name ledger:")
            && applied.contains("+ CREATE ROLE \"reader\" NOLOGIN"),
        "{applied}"
    );
    assert_eq!(
        cluster
            .sql(
                "ledger",
                &format!(
                    "SELECT pg_has_role('{SQL_READER}', 'reader', 'MEMBER') AND \
                     has_table_privilege('{SQL_READER}', 'entries', 'SELECT')"
                )
            )
            .trim(),
        "t"
    );
    // One login token for the run, the admin account's, issued to the operator's identity.
    let tokens = issued.lock().unwrap().clone();
    assert_eq!(tokens.len(), 1, "one token per run");
    let info = fake.token_info(&tokens[0]).expect("a token of the fake");
    assert_eq!(info.principal, admin_account);
    for token in &tokens {
        assert!(
            !applied.contains(token.as_str()),
            "a token appears:\n{applied}"
        );
    }

    let plan = dbward(dir.path(), "plan", &["--live", "--detailed-exitcode"], &env);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("Live: no changes in 1 database name(s)."),
        "{shown}"
    );

    // Whoever runs --live is told which right it needs, apart from the relay's bindings.
    let live: serde_json::Value = serde_json::from_slice(
        &fs::read(dir.path().join("out/iam/live/gcp/gcp-test.json")).expect("the live bindings"),
    )
    .unwrap();
    assert_eq!(
        live["bindings"],
        serde_json::json!([{
            "members": [],
            "resource": format!("projects/acme-prod/serviceAccounts/{admin_account}"),
            "role": "roles/iam.serviceAccountTokenCreator",
        }])
    );

    // The operator may no longer impersonate the admin account: the error names the database,
    // host and user and the right to check.
    fake.revoke_impersonation(OPERATOR, &admin_account);
    let plan = dbward(dir.path(), "plan", &["--live"], &env);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{shown}");
    for part in [
        "Error: database ledger",
        &format!("admin user {SQL_ADMIN} of 127.0.0.1:{port}"),
        &admin_account,
        "roles/iam.serviceAccountTokenCreator",
    ] {
        assert!(shown.contains(part), "{part:?} missing from:\n{shown}");
    }
}

/// The db-user of the second database of [`CloudSqlLookup`]'s two-database manifest.
const SQL_ARCHIVIST: &str = "ledger-archivist@acme-prod.iam";

/// A Cloud SQL stand-in reached without `host` and `ca-file`: dbward looks the instance up
/// through the fake Cloud SQL Admin (its private address, its server CA) and presents an
/// ephemeral client certificate, which the server requires (`clientcert=verify-ca` against the
/// fake's client CA). PostgreSQL checks login tokens through PAM against the fake's
/// `/tokeninfo` (`cloudsql/verify_cloudsql_token.py`): every unexpired token of the account is
/// accepted, as on Cloud SQL, so two databases logging in as the same admin user do not race.
struct CloudSqlLookup {
    dir: tempfile::TempDir,
    cluster: Cluster,
    pki: crate::cloudsql::Pki,
    fake: dbward_cloud::gcp::fake::FakeGoogle,
    /// Every login token the fake issued.
    issued: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _pam: PamService,
    _rt: tokio::runtime::Runtime,
}

impl CloudSqlLookup {
    /// `client_cert`: the server requires a client certificate from the fake's client CA.
    fn start(client_cert: bool) -> CloudSqlLookup {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("dbward-live-cloudsql-lookup-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let fake = rt.block_on(dbward_cloud::gcp::fake::FakeGoogle::start());
        let verifier = dir.path().join("verify_cloudsql_token.py");
        fs::write(&verifier, include_str!("cloudsql/verify_cloudsql_token.py")).unwrap();
        fs::set_permissions(&verifier, fs::Permissions::from_mode(0o755)).unwrap();

        let mut cluster = Cluster::init();
        let pam = PamService::install(
            format!("dbward-live-cloudsql-{}", cluster.port),
            &verifier,
            &[fake.url()],
        );
        let pki = crate::cloudsql::Pki::new();
        fs::write(dir.path().join("server-ca.pem"), pki.ca.pem()).unwrap();
        // As Cloud SQL's: the CN names the instance, no SAN for the address.
        let (cert, key) = pki.server("acme-prod:ledger", &[]);
        cluster.install_file("server.crt", cert.as_bytes(), 0o644);
        cluster.install_file("server.key", key.as_bytes(), 0o600);
        cluster.append_conf(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            cluster.root().join("server.crt").display(),
            cluster.root().join("server.key").display()
        ));
        let mut method = format!("pam pamservice={}", pam.name);
        if client_cert {
            let path =
                cluster.install_file("client-ca.pem", fake.client_ca_pem().as_bytes(), 0o644);
            cluster.append_conf(&format!("ssl_ca_file = '{}'\n", path.display()));
            method.push_str(" clientcert=verify-ca");
        }
        cluster.install_file(
            "data/pg_hba.conf",
            format!("local all all trust\nhostssl all all 127.0.0.1/32 {method}\n").as_bytes(),
            0o600,
        );
        if let Err(log) = cluster.try_start() {
            panic!("PostgreSQL did not start with TLS and PAM:\n{log}");
        }
        // Cloud SQL creates IAM users through its API: login roles without a password.
        cluster.sql(
            "postgres",
            &format!(
                "CREATE ROLE \"{SQL_ADMIN}\" LOGIN CREATEROLE; CREATE ROLE \"{SQL_READER}\" \
                 LOGIN; CREATE ROLE \"{SQL_ARCHIVIST}\" LOGIN"
            ),
        );
        for name in ["ledger", "archive"] {
            cluster.sql(
                "postgres",
                &format!("CREATE DATABASE {name} OWNER \"{SQL_ADMIN}\""),
            );
            cluster.sql(
                name,
                &format!("SET ROLE \"{SQL_ADMIN}\"; CREATE TABLE entries (amount int)"),
            );
        }

        let admin_account = format!("{SQL_ADMIN}.gserviceaccount.com");
        fake.add_account(OPERATOR);
        fake.attach_to_metadata(OPERATOR);
        fake.add_account(&admin_account);
        fake.allow_impersonation(OPERATOR, &admin_account);
        // connectSettings: the public address is another loopback address where nothing
        // listens, so dialling it instead of the private one (the manifest's ip-type) fails.
        fake.add_instance(
            &dbward_cloud::gcp::InstanceName::parse(INSTANCE).unwrap(),
            serde_json::json!({
                "kind": "sql#connectSettings",
                "serverCaCert": { "kind": "sql#sslCert", "cert": pki.ca.pem() },
                "ipAddresses": [
                    { "type": "PRIMARY", "ipAddress": "127.0.0.2" },
                    { "type": "PRIVATE", "ipAddress": "127.0.0.1" },
                ],
                "region": "us-central1",
                "databaseVersion": "POSTGRES_15",
                "backendType": "SECOND_GEN",
                "pscEnabled": false,
            }),
        );
        let issued = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = issued.clone();
        fake.on_issue(move |_, token, scopes| {
            if scopes
                .iter()
                .any(|s| s == dbward_cloud::gcp::SQLSERVICE_LOGIN)
            {
                seen.lock().unwrap().push(token.to_owned());
            }
        });
        CloudSqlLookup {
            dir,
            cluster,
            pki,
            fake,
            issued,
            _pam: pam,
            _rt: rt,
        }
    }

    /// The manifest: `ledger` without `host` and `ca-file` (`ip-type=private`), and with
    /// `archive`, a second database on the same instance with `host` and `ca-file` (the fixed
    /// route, which makes no Cloud SQL Admin call).
    fn write_manifest(&self, archive: bool) {
        let port = self.cluster.port;
        let archive = if archive {
            format!(
                r#"database archive {{
    postgres host="127.0.0.1" port={port} version=15
    cloud-sql cloud=gcp-test instance="{INSTANCE}" ca-file="{ca}"
    admin-user "{SQL_ADMIN}" default-database=archive
    db-role archivist {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT on=all-tables schema=public
    }}
    db-user "{SQL_ARCHIVIST}" {{
        member-of archivist
    }}
}}
role archivists {{
    allow {{
        databases archive
        db-users "{SQL_ARCHIVIST}"
        db-names archive
    }}
}}
user ines {{
    roles archivists
}}
"#,
                ca = self.dir.path().join("server-ca.pem").display(),
            )
        } else {
            String::new()
        };
        fs::write(
            self.dir.path().join("manifest.kdl"),
            format!(
                r#"dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.localhost"
    client-cert-ttl "1h"
}}
cloud gcp-test {{
    gcp project="acme-prod"
    relay-service-account "dbward-relay@acme-prod.iam.gserviceaccount.com"
}}
database ledger {{
    postgres port={port} version=15
    cloud-sql cloud=gcp-test instance="{INSTANCE}" ip-type=private
    admin-user "{SQL_ADMIN}" default-database=ledger
    db-role reader {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT on=all-tables schema=public
    }}
    db-user "{SQL_READER}" {{
        member-of reader
    }}
}}
role accountant {{
    allow {{
        databases ledger
        db-users "{SQL_READER}"
        db-names ledger
    }}
}}
user heidi {{
    roles accountant
}}
{archive}"#
            ),
        )
        .unwrap();
    }

    fn dbward(&self, subcommand: &str, args: &[&str]) -> Output {
        dbward(self.dir.path(), subcommand, args, &self.fake.env())
    }

    fn tokens(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    /// No login token the fake issued, and no private key, in `text`.
    fn assert_no_secret_in(&self, text: &str) {
        for token in self.tokens() {
            assert!(!text.contains(&token), "a token appears in:\n{text}");
        }
        assert!(!text.contains("PRIVATE KEY"), "a key appears in:\n{text}");
    }

    fn count(&self, call: &str) -> u32 {
        self.fake.count(&format!("{call}:acme-prod:ledger"))
    }
}

#[test]
fn cloud_sql_without_host_and_ca_file_is_looked_up_and_converged_with_a_client_certificate() {
    let sql = CloudSqlLookup::start(true);
    sql.fake.allow_sql_client(OPERATOR);
    sql.write_manifest(false);

    let apply = sql.dbward("apply", &["--live", "--auto-approve"]);
    let applied = text(&apply);
    assert!(apply.status.success(), "{applied}\n{}", sql.cluster.log());
    assert!(
        applied.contains("  database ledger, name ledger:")
            && applied.contains("+ CREATE ROLE \"reader\" NOLOGIN"),
        "{applied}"
    );
    assert!(!applied.contains("Warning"), "{applied}");
    assert_eq!(
        sql.cluster
            .sql(
                "ledger",
                &format!(
                    "SELECT pg_has_role('{SQL_READER}', 'reader', 'MEMBER') AND \
                     has_table_privilege('{SQL_READER}', 'entries', 'SELECT')"
                )
            )
            .trim(),
        "t"
    );
    // Once per run (the list of names, then the transaction: two connections): one login
    // token, one lookup, one client certificate.
    assert_eq!(sql.tokens().len(), 1, "one token per run");
    assert_eq!(sql.count("connectSettings"), 1, "one lookup per run");
    assert_eq!(
        sql.count("generateEphemeralCert"),
        1,
        "one certificate per run"
    );
    sql.assert_no_secret_in(&applied);

    // Whoever runs --live is told it needs Cloud SQL Client for the lookup, beside Token
    // Creator on the admin account.
    let live: serde_json::Value = serde_json::from_slice(
        &fs::read(sql.dir.path().join("out/iam/live/gcp/gcp-test.json"))
            .expect("the live bindings"),
    )
    .unwrap();
    assert_eq!(
        live["bindings"],
        serde_json::json!([
            {
                "members": [],
                "resource": "projects/acme-prod",
                "role": "roles/cloudsql.client",
            },
            {
                "members": [],
                "resource": format!("projects/acme-prod/serviceAccounts/{SQL_ADMIN}.gserviceaccount.com"),
                "role": "roles/iam.serviceAccountTokenCreator",
            }
        ])
    );

    let plan = sql.dbward("plan", &["--live", "--detailed-exitcode"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("Live: no changes in 1 database name(s)."),
        "{shown}"
    );
    assert_eq!(sql.count("connectSettings"), 2);
    sql.assert_no_secret_in(&shown);

    // A drift by hand, applied on a terminal: the live plan shown, "yes", then the apply. The
    // apply reuses the preview's token, lookup and certificate: once per run, not twice.
    sql.cluster.sql(
        "ledger",
        &format!("GRANT DELETE ON entries TO \"{SQL_READER}\""),
    );
    let tokens = sql.tokens().len();
    let applied = dbward_on_a_terminal(sql.dir.path(), &["--live"], &sql.fake.env(), "yes");
    assert!(
        applied.contains("dbward will make these changes in the databases:")
            && applied.contains("dbward made these changes in the databases:")
            && applied.contains("- REVOKE DELETE ON TABLE"),
        "{applied}"
    );
    assert_eq!(
        sql.cluster
            .sql(
                "ledger",
                &format!("SELECT has_table_privilege('{SQL_READER}', 'entries', 'DELETE')")
            )
            .trim(),
        "f"
    );
    assert_eq!(
        sql.tokens().len(),
        tokens + 1,
        "one token for plan and apply"
    );
    assert_eq!(
        sql.count("connectSettings"),
        3,
        "one lookup for plan and apply"
    );
    assert_eq!(sql.count("generateEphemeralCert"), 3);
    sql.assert_no_secret_in(&applied);

    // The server now presents a certificate of the same CA for another instance: refused,
    // naming the instance it should have been.
    let (cert, key) = sql.pki.server("acme-prod:payroll", &[]);
    sql.cluster
        .install_file("server.crt", cert.as_bytes(), 0o644);
    sql.cluster
        .install_file("server.key", key.as_bytes(), 0o600);
    sql.cluster.reload();
    let plan = sql.dbward("plan", &["--live", "--detailed-exitcode"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{shown}");
    for part in [
        "Error: database ledger",
        &format!("127.0.0.1:{}", sql.cluster.port),
        &format!("as {SQL_ADMIN}"),
        "does not name Cloud SQL instance acme-prod:ledger",
        "CN \"acme-prod:payroll\"",
    ] {
        assert!(shown.contains(part), "{part:?} missing from:\n{shown}");
    }
    sql.assert_no_secret_in(&shown);
}

#[test]
fn cloud_sql_lookup_refused_fails_that_database_alone_naming_what_to_grant() {
    let sql = CloudSqlLookup::start(false);
    // The operator may impersonate the admin account but not use Cloud SQL Admin.
    sql.write_manifest(true);

    let apply = sql.dbward("apply", &["--live", "--auto-approve"]);
    let shown = text(&apply);
    assert_eq!(apply.status.code(), Some(1), "{shown}");
    for part in [
        "Error: database ledger:",
        INSTANCE,
        "its private address, looked up",
        &format!("as the admin user {SQL_ADMIN}"),
        "cloudsql.instances.get",
        "cloudsql.instances.connect",
        "roles/cloudsql.client",
        "iam/live/gcp/gcp-test.json",
        "403",
    ] {
        assert!(shown.contains(part), "{part:?} missing from:\n{shown}");
    }
    assert!(
        !shown.contains("Error: database archive"),
        "the other database failed too:\n{shown}"
    );
    // The other database (host and ca-file: no lookup) was applied; ledger was not touched.
    assert!(
        shown.contains("  database archive, name archive:")
            && shown.contains("+ CREATE ROLE \"archivist\" NOLOGIN"),
        "{shown}"
    );
    assert_eq!(
        sql.cluster
            .sql(
                "archive",
                &format!("SELECT pg_has_role('{SQL_ARCHIVIST}', 'archivist', 'MEMBER')")
            )
            .trim(),
        "t"
    );
    assert_eq!(
        sql.cluster
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_roles WHERE rolname = 'reader'"
            )
            .trim(),
        "0"
    );
    sql.assert_no_secret_in(&shown);
}

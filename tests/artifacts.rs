//! The generated PostgreSQL configuration, certificates and setup.sql, proved against a real
//! PostgreSQL with tokio-postgres (rustls) and real psql.
//!
//! A manifest shaped like `examples/quickstart.kdl` is compiled and emitted; its postgresql.conf
//! snippet, pg_hba.conf, pg_ident.conf, server certificate/key and client CA are installed into
//! a fresh cluster; setup.sql runs as the superuser over the local socket. Then the relay's
//! client certificate logs in as every allowed database user, and everything else — other
//! users, other database names, no certificate, another CA's certificate, a person's
//! certificate, no TLS — is refused by PostgreSQL itself.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dbward::emit::layout;
use dbward::source::Source;
use dbward_tests::{
    Cluster, Tree, dbward_apply as apply, psql_command, superuser_query, superuser_sql,
    workspace_bin,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::error::SqlState;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// The allowed login whose name is written to be hostile: it must still be data everywhere.
const HOSTILE: &str = "x'; DROP ROLE y; --";

fn manifest(cluster: &Cluster) -> String {
    format!(
        r#"dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.localhost"
    client-cert-ttl "12h"
}}
database shop {{
    postgres host="127.0.0.1" port={port} version=15
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
    db-role writer {{
        member-of reader
        grant INSERT UPDATE DELETE on=all-tables schema=public
    }}
    db-user app {{
        member-of writer
    }}
    db-user readonly {{
        member-of reader
    }}
    db-user "{HOSTILE}" {{
        member-of reader
    }}
    // Declared, but no role lets anyone log in as it: PostgreSQL must refuse it.
    db-user batch {{
        member-of writer
    }}
}}
role developer {{
    allow {{
        databases env=dev
        db-users app readonly "{HOSTILE}"
        db-names shop
    }}
}}
user alice {{
    roles developer
}}
"#,
        port = cluster.port,
        config_dir = cluster.config_dir().display(),
    )
}

/// Whether the server has `pg_ident_file_mappings` (PostgreSQL 15 and later). Older servers
/// still apply pg_ident.conf; the login checks below prove it there.
fn has_ident_view(cluster: &Cluster) -> bool {
    let version = superuser_query(cluster, "postgres", "SHOW server_version_num");
    version.parse::<u32>().unwrap_or(0) >= 150_000
}

/// Every non-system role with its login flag and the roles it is a direct member of.
fn roles_snapshot(cluster: &Cluster) -> String {
    superuser_query(
        cluster,
        "postgres",
        "SELECT string_agg(r.rolname || ':' || r.rolcanlogin || ':' || r.rolcreaterole || ':' || \
         coalesce((SELECT string_agg(g.rolname, '+' ORDER BY g.rolname) FROM pg_auth_members m \
         JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), ''), ',' ORDER BY r.rolname) \
         FROM pg_roles r WHERE r.rolname !~ '^pg_'",
    )
}

/// A client identity: certificate and key PEM files.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
}

/// What a connection attempt presents.
struct Attempt<'a> {
    server_name: &'a str,
    user: &'a str,
    dbname: &'a str,
    identity: Option<&'a Identity>,
}

fn client_config(root_ca: &Path, identity: Option<&Identity>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root_ca).expect("read root CA") {
        roots.add(cert.expect("root CA PEM")).expect("add root CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    match identity {
        Some(id) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&id.cert)
                .expect("read cert")
                .map(|c| c.expect("cert PEM"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(&id.key).expect("read key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client identity")
        }
        None => builder.with_no_client_auth(),
    }
}

/// Connects with tokio-postgres over rustls, verifying the server certificate against
/// `root_ca` for `server_name` (verify-full), and runs `sql`, returning the first column of
/// each row.
fn tokio_query(
    rt: &tokio::runtime::Runtime,
    port: u16,
    root_ca: &Path,
    attempt: &Attempt<'_>,
    sql: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let tls =
        tokio_postgres_rustls::MakeRustlsConnect::new(client_config(root_ca, attempt.identity));
    let mut config = tokio_postgres::Config::new();
    config
        .host(attempt.server_name)
        .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(port)
        .user(attempt.user)
        .dbname(attempt.dbname)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    rt.block_on(async {
        let (client, connection) = config.connect(tls).await?;
        let driver = tokio::spawn(connection);
        let rows = client.simple_query(sql).await;
        drop(client);
        let _ = driver.await;
        let mut values = Vec::new();
        for message in rows? {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                values.push(row.get(0).unwrap_or_default().to_owned());
            }
        }
        Ok(values)
    })
}

/// A libpq connection-string value, single-quoted with `\` and `'` escaped.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs real psql with a connection string; returns stdout or stderr.
fn psql(conninfo: &str, sql: &str, home: &Path) -> Result<String, String> {
    let out = psql_command(conninfo, sql, home)
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn psql_conninfo(port: u16, user: &str, dbname: &str, tls: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={} dbname={} {tls}",
        conninfo_value(user),
        conninfo_value(dbname)
    )
}

fn parse_cert(pem: &[u8]) -> X509Certificate<'static> {
    let der = CertificateDer::from_pem_slice(pem).expect("certificate PEM");
    let der: &'static [u8] = Box::leak(der.as_ref().to_vec().into_boxed_slice());
    X509Certificate::from_der(der).expect("certificate DER").1
}

fn common_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Asserts what the certificates PostgreSQL and the relay use say: names, issuers, validity,
/// P-256 keys; and that PostgreSQL trusts only relay-client-ca.
fn check_certificates(artifacts: &Tree) {
    let pem = |path: &str| -> &[u8] {
        &artifacts
            .get(path)
            .unwrap_or_else(|| panic!("{path} was not written"))
            .0
    };
    let server_ca = parse_cert(pem(layout::SERVER_CA_CERT));
    let relay_client_ca = parse_cert(pem(layout::RELAY_CLIENT_CA_CERT));
    let users_ca = parse_cert(pem(layout::USERS_CA_CERT));
    let server = parse_cert(pem(&layout::database_file("shop", "server.crt")));
    let upstream = parse_cert(pem(layout::RELAY_UPSTREAM_CERT));

    assert_eq!(
        server.issuer(),
        server_ca.subject(),
        "server-ca signs database certificates"
    );
    assert_eq!(upstream.issuer(), relay_client_ca.subject());
    assert_eq!(common_name(upstream.subject()), layout::RELAY_UPSTREAM_CN);
    assert_ne!(relay_client_ca.subject(), users_ca.subject());
    assert_ne!(relay_client_ca.subject(), server_ca.subject());
    assert_eq!(
        pem(&layout::database_file("shop", "client-ca.crt")),
        pem(layout::RELAY_CLIENT_CA_CERT),
        "PostgreSQL trusts relay-client-ca, and only it"
    );

    let mut sans = Vec::new();
    for ext in server.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(dns) => sans.push(dns.to_string()),
                    GeneralName::IPAddress(ip) => sans.push(format!("ip:{ip:?}")),
                    _ => {}
                }
            }
        }
    }
    assert!(sans.contains(&"localhost".to_owned()), "{sans:?}");
    assert!(sans.contains(&"ip:[127, 0, 0, 1]".to_owned()), "{sans:?}");

    for cert in [&server, &upstream, &server_ca, &relay_client_ca, &users_ca] {
        assert!(
            cert.validity().is_valid(),
            "{} is not valid now",
            common_name(cert.subject())
        );
        let spki = cert.public_key();
        assert_eq!(
            spki.algorithm.algorithm.to_id_string(),
            "1.2.840.10045.2.1",
            "ECDSA key"
        );
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|oid| oid.to_id_string());
        assert_eq!(curve.as_deref(), Some("1.2.840.10045.3.1.7"), "P-256");
    }
    for key in [
        layout::database_file("shop", "server.key"),
        layout::RELAY_UPSTREAM_KEY.to_owned(),
        layout::RELAY_CLIENT_CA_KEY.to_owned(),
    ] {
        assert_eq!(artifacts[&key].1, 0o600, "{key} must be mode 0600");
    }
}

#[test]
fn generated_config_enforces_the_manifest_in_real_postgres() {
    let mut cluster = Cluster::init();
    let work = tempfile::tempdir().expect("work dir");
    let out = work.path().join("out");
    let home = tempfile::tempdir().expect("home dir");
    let artifacts = apply(&manifest(&cluster), &out);
    check_certificates(&artifacts);

    cluster.install_dbward(&out, "shop");
    if let Err(log) = cluster.try_start() {
        panic!("PostgreSQL refused the generated configuration:\n{log}");
    }

    // The generated files parse without a single error.
    let hba_errors = superuser_query(
        &cluster,
        "postgres",
        "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL",
    );
    assert_eq!(hba_errors, "0", "pg_hba.conf has errors");
    if has_ident_view(&cluster) {
        let ident_errors = superuser_query(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_ident_file_mappings WHERE error IS NOT NULL",
        );
        assert_eq!(ident_errors, "0", "pg_ident.conf has errors");
        // PostgreSQL maps the relay to exactly the database users frozen.json lets people use.
        let mapped = superuser_query(
            &cluster,
            "postgres",
            "SELECT string_agg(pg_username, ',' ORDER BY pg_username) FROM pg_ident_file_mappings \
             WHERE map_name = 'dbward' AND sys_name = 'dbward-relay'",
        );
        let frozen = dbward_frozen::Config::load(&out.join(layout::FROZEN)).expect("frozen.json");
        let mut allowed: Vec<String> = frozen
            .access
            .iter()
            .filter(|a| a.database == "shop")
            .flat_map(|a| a.db_users.clone())
            .collect();
        // And the admin user, which `dbward apply --live` logs in as, provisioning or not.
        allowed.extend(
            frozen.databases["shop"]
                .admin_user
                .iter()
                .map(|admin| admin.name.clone()),
        );
        allowed.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        allowed.dedup();
        assert_eq!(mapped, allowed.join(","));
    }
    assert_eq!(superuser_query(&cluster, "postgres", "SHOW ssl"), "on");

    // The database name the manifest allows, a table that exists before setup.sql (GRANT ON ALL
    // TABLES) and one created after it (ALTER DEFAULT PRIVILEGES).
    superuser_sql(&cluster, "postgres", "CREATE DATABASE shop;");
    superuser_sql(&cluster, "shop", "CREATE TABLE items (name text);");
    let setup = out.join("databases/shop/setup.sql");
    cluster
        .peer_sql_file("shop", &setup)
        .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));
    // Idempotent: a second run succeeds and changes no role, attribute or membership.
    let before = roles_snapshot(&cluster);
    cluster
        .peer_sql_file("shop", &setup)
        .unwrap_or_else(|e| panic!("setup.sql failed on its second run: {e}"));
    let roles_after = roles_snapshot(&cluster);
    assert_eq!(before, roles_after);
    // Convergent: a membership granted by hand between managed roles is revoked, an attribute
    // changed by hand is restored, a membership removed by hand comes back.
    superuser_sql(
        &cluster,
        "shop",
        "GRANT writer TO readonly; ALTER ROLE app NOLOGIN; REVOKE reader FROM writer;",
    );
    assert_ne!(roles_snapshot(&cluster), before);
    cluster
        .peer_sql_file("shop", &setup)
        .unwrap_or_else(|e| panic!("setup.sql failed on its third run: {e}"));
    assert_eq!(roles_snapshot(&cluster), before);
    superuser_sql(&cluster, "shop", "CREATE TABLE later_items (name text);");

    // The hostile name is a role, nothing was dropped, nothing else was created.
    for role in [
        HOSTILE,
        "app",
        "readonly",
        "batch",
        "reader",
        "writer",
        "dbward-admin",
    ] {
        let found = superuser_query(
            &cluster,
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_roles WHERE rolname = {}",
                dbward::emit::quote::literal(role)
            ),
        );
        assert_eq!(found, "1", "role {role:?} exists");
    }
    assert!(
        roles_after.contains("dbward-admin:true:true:")
            && roles_after.contains("reader:false:false:,")
            && roles_after.contains("writer:false:false:reader,"),
        "{roles_after}"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let port = cluster.port;
    let server_ca = out.join(layout::RELAY_SERVER_CA);
    let relay = Identity {
        cert: out.join(layout::RELAY_UPSTREAM_CERT),
        key: out.join(layout::RELAY_UPSTREAM_KEY),
    };
    let as_relay = |user: &'static str, dbname: &'static str, server_name: &'static str| Attempt {
        server_name,
        user,
        dbname,
        identity: Some(&relay),
    };

    // Every allowed database user logs in, verify-full against a DNS name and an IP SAN.
    for user in ["app", "readonly", HOSTILE] {
        for server_name in ["localhost", "127.0.0.1"] {
            let who = tokio_query(
                &rt,
                port,
                &server_ca,
                &as_relay(user, "shop", server_name),
                "SELECT current_user",
            )
            .unwrap_or_else(|e| {
                panic!(
                    "{user} via {server_name} was refused: {e:?}\n{}",
                    cluster.log()
                )
            });
            assert_eq!(who, [user]);
        }
    }
    // readonly reads but cannot write; app writes, also into a table created after setup.sql.
    let app = as_relay("app", "shop", "localhost");
    let readonly = as_relay("readonly", "shop", "localhost");
    tokio_query(
        &rt,
        port,
        &server_ca,
        &app,
        "INSERT INTO items VALUES ('from app')",
    )
    .expect("app inserts");
    tokio_query(
        &rt,
        port,
        &server_ca,
        &app,
        "INSERT INTO later_items VALUES ('later')",
    )
    .expect("app inserts into a table created after setup.sql");
    let rows = tokio_query(&rt, port, &server_ca, &readonly, "SELECT name FROM items")
        .expect("readonly selects");
    assert_eq!(rows, ["from app"]);
    let rows = tokio_query(
        &rt,
        port,
        &server_ca,
        &readonly,
        "SELECT name FROM later_items",
    )
    .expect("readonly selects from a table created after setup.sql");
    assert_eq!(rows, ["later"]);
    let err = tokio_query(
        &rt,
        port,
        &server_ca,
        &readonly,
        "INSERT INTO items VALUES ('no')",
    )
    .expect_err("readonly must not insert");
    assert_eq!(
        err.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{err:?}"
    );

    // The admin user is let in with the relay's certificate (`dbward apply --live` logs in as
    // it), even though nobody is provisioned here.
    tokio_query(
        &rt,
        port,
        &server_ca,
        &as_relay("dbward-admin", "shop", "localhost"),
        "SELECT 1",
    )
    .expect("the admin user logs in with the relay's certificate");
    // PostgreSQL refuses what the manifest does not allow, even with the relay's certificate.
    for (user, dbname) in [("batch", "shop"), ("postgres", "shop"), ("app", "postgres")] {
        let err = tokio_query(
            &rt,
            port,
            &server_ca,
            &as_relay(user, dbname, "localhost"),
            "SELECT 1",
        )
        .expect_err(&format!("{user} into {dbname} must be refused"));
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
            "{user} into {dbname}: {err:?}"
        );
    }
    // verify-full: a name the server certificate does not carry fails on the client side.
    tokio_query(
        &rt,
        port,
        &server_ca,
        &as_relay("app", "shop", "db.example.com"),
        "SELECT 1",
    )
    .expect_err("a server name outside server-names must not verify");
    // No client certificate.
    let no_cert = Attempt {
        identity: None,
        ..as_relay("app", "shop", "localhost")
    };
    let err = tokio_query(&rt, port, &server_ca, &no_cert, "SELECT 1").expect_err("no certificate");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err:?}"
    );

    // A certificate with the relay's CN from another CA (a second, independent PKI), and a
    // person's certificate from users-ca: PostgreSQL trusts neither.
    let other = work.path().join("other");
    apply(&manifest(&cluster), &other);
    let foreign = Identity {
        cert: other.join(layout::RELAY_UPSTREAM_CERT),
        key: other.join(layout::RELAY_UPSTREAM_KEY),
    };
    let person_dir = work.path().join("alice");
    let issued = Command::new(workspace_bin("dbward"))
        .args(["cert", "issue"])
        .arg(out.with_extension("kdl"))
        .arg("--out")
        .arg(&out)
        .args(["--user", "alice", "--dest"])
        .arg(&person_dir)
        .output()
        .expect("run dbward cert issue");
    assert!(
        issued.status.success(),
        "dbward cert issue failed: {}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let alice = Identity {
        cert: person_dir.join("postgresql.crt"),
        key: person_dir.join("postgresql.key"),
    };
    for (what, identity) in [("another CA", &foreign), ("users-ca", &alice)] {
        let attempt = Attempt {
            identity: Some(identity),
            ..as_relay("app", "shop", "localhost")
        };
        tokio_query(&rt, port, &server_ca, &attempt, "SELECT 1")
            .expect_err(&format!("a certificate from {what} must be refused"));
    }

    // The same with real psql.
    let tls = |id: &Identity| {
        format!(
            "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            conninfo_value(&server_ca.display().to_string()),
            conninfo_value(&id.cert.display().to_string()),
            conninfo_value(&id.key.display().to_string())
        )
    };
    for user in ["app", "readonly", HOSTILE] {
        let who = psql(
            &psql_conninfo(port, user, "shop", &tls(&relay)),
            "SELECT current_user",
            home.path(),
        )
        .unwrap_or_else(|e| panic!("psql as {user} was refused: {e}"));
        assert_eq!(who, user);
    }
    psql(
        &psql_conninfo(port, "app", "shop", &tls(&relay)),
        "INSERT INTO items VALUES ('psql')",
        home.path(),
    )
    .expect("app inserts with psql");
    let err = psql(
        &psql_conninfo(port, "readonly", "shop", &tls(&relay)),
        "INSERT INTO items VALUES ('no')",
        home.path(),
    )
    .expect_err("readonly must not insert with psql");
    assert!(err.contains("permission denied"), "{err}");
    let err = psql(
        &psql_conninfo(port, "batch", "shop", &tls(&relay)),
        "SELECT 1",
        home.path(),
    )
    .expect_err("batch must be refused");
    assert!(err.contains("pg_hba.conf rejects connection"), "{err}");
    let missing = home.path().join("none");
    let no_cert = format!(
        "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        conninfo_value(&server_ca.display().to_string()),
        conninfo_value(&missing.join("c.crt").display().to_string()),
        conninfo_value(&missing.join("c.key").display().to_string()),
    );
    let err = psql(
        &psql_conninfo(port, "app", "shop", &no_cert),
        "SELECT 1",
        home.path(),
    )
    .expect_err("no client certificate must be refused");
    assert!(err.contains("certificate"), "{err}");
    let err = psql(
        &psql_conninfo(port, "app", "shop", "sslmode=disable"),
        "SELECT 1",
        home.path(),
    )
    .expect_err("no TLS must be refused");
    assert!(
        err.contains("no encryption") || err.contains("rejects"),
        "{err}"
    );
    for (what, identity) in [("another CA", &foreign), ("users-ca", &alice)] {
        psql(
            &psql_conninfo(port, "app", "shop", &tls(identity)),
            "SELECT 1",
            home.path(),
        )
        .expect_err(&format!(
            "psql with a certificate from {what} must be refused"
        ));
    }

    // The rows really came from the allowed users.
    let rows = superuser_query(
        &cluster,
        "shop",
        "SELECT string_agg(name, ',' ORDER BY name) FROM items",
    );
    assert_eq!(rows, "from app,psql");
}

/// The front end rejects a name pg_hba.conf cannot quote, before any file is written.
#[test]
fn a_double_quote_in_a_name_is_rejected_at_check_time() {
    let text = r#"dbward version=1
relay {
    listen "127.0.0.1:6432"
    public-name "db.localhost"
    client-cert-ttl "12h"
}
database shop {
    postgres host="127.0.0.1"
    self-hosted {
        server-names "127.0.0.1"
        config-dir "/tmp/x"
    }
    db-user "x\"; DROP ROLE y; --"
}
"#;
    let checked = dbward::check(&Source::new("hostile.kdl", text));
    assert!(checked.model.is_none(), "a name with `\"` must not compile");
    assert!(checked.has_errors());
}

/// Names with quotes, semicolons, spaces, upper case and SQL syntax, and a config-dir with a
/// quote, a space and a backslash, go through postgresql.conf, pg_hba.conf, pg_ident.conf and
/// setup.sql into a real PostgreSQL as plain data, and the users they name can log in.
#[test]
fn hostile_names_are_data_in_every_generated_file() {
    let mut cluster = Cluster::init();
    let conf_name = "it's a \\dir";
    let conf_dir = cluster.root().join(conf_name);
    let work = tempfile::tempdir().expect("work dir");
    let out = work.path().join("out");
    let text = format!(
        r##"dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.localhost"
    client-cert-ttl "1h"
}}
database weird {{
    postgres host="localhost" port={port}
    labels env=dev
    self-hosted {{
        server-names "localhost"
        config-dir #"{conf_dir}"#
    }}
    admin-user "Admin; DROP ROLE y" default-database=postgres
    db-role "o'reader" {{
        grant CONNECT on=database
        grant USAGE on=schema schema="my schema"
        grant SELECT on=table schema="my schema" table="it's"
    }}
    db-user "{HOSTILE}" {{
        member-of "o'reader"
    }}
    db-user "Mixed Case" {{
        member-of "o'reader"
    }}
}}
role developer {{
    allow {{
        databases env=dev
        db-users "*"
        db-names "it's a db"
    }}
}}
role "o'auditor" {{
    provision best-effort-drop
    allow {{
        databases env=dev
        db-names "it's a db"
        permission CONNECT on=database
        permission USAGE on=schema schema="my schema"
        permission SELECT on=table schema="my schema" table="it's"
    }}
}}
user "d'artagnan" {{
    roles developer
}}
user "o'connor" {{
    roles "o'auditor"
}}
"##,
        port = cluster.port,
        conf_dir = conf_dir.display(),
    );
    apply(&text, &out);

    for entry in fs::read_dir(out.join("databases/weird"))
        .expect("generated files")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "setup.sql" {
            let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
            let bytes = fs::read(entry.path()).expect("read");
            cluster.install_file(&format!("{conf_name}/{name}"), &bytes, mode);
        }
    }
    cluster.append_conf(&format!(
        "include {}",
        dbward::emit::quote::conf_string(&conf_dir.join("postgresql.conf").display().to_string())
    ));
    if let Err(log) = cluster.try_start() {
        panic!("PostgreSQL refused the generated configuration:\n{log}");
    }
    let count = |sql: &str| superuser_query(&cluster, "postgres", sql);
    assert_eq!(
        count("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL"),
        "0"
    );
    // Each hostile name is one literal entry, not a keyword or list syntax.
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_hba_file_rules WHERE 'x''; DROP ROLE y; --' = ANY(user_name) \
             AND 'it''s a db' = ANY(database) AND auth_method = 'cert'"
        ),
        "1"
    );
    if has_ident_view(&cluster) {
        assert_eq!(
            count("SELECT count(*) FROM pg_ident_file_mappings WHERE error IS NOT NULL"),
            "0"
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_ident_file_mappings WHERE pg_username = 'Mixed Case'"),
            "1"
        );
    }

    // A role named `y` that the hostile names would drop if they were SQL.
    superuser_sql(
        &cluster,
        "postgres",
        "CREATE ROLE y; CREATE DATABASE \"it's a db\";",
    );
    superuser_sql(
        &cluster,
        "it's a db",
        "CREATE SCHEMA \"my schema\"; CREATE TABLE \"my schema\".\"it's\" (v text); \
         INSERT INTO \"my schema\".\"it's\" VALUES ('safe');",
    );
    cluster
        .peer_sql_file("it's a db", &out.join("databases/weird/setup.sql"))
        .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));
    assert_eq!(
        count("SELECT count(*) FROM pg_roles WHERE rolname = 'y'"),
        "1"
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_roles WHERE rolname IN \
             ('x''; DROP ROLE y; --', 'Mixed Case', 'o''reader', 'Admin; DROP ROLE y', \
             'dbward-auto-user')"
        ),
        "5"
    );

    // The provisioning grants in frozen.json, passed to `dbward.activate` the way the relay
    // passes them, grant exactly what the role says to a user whose name has a quote.
    let frozen = dbward_frozen::Config::load(&out.join(layout::FROZEN)).expect("frozen.json");
    let access = frozen
        .access_for("o'connor", "weird")
        .expect("o'connor reaches weird");
    superuser_sql(&cluster, "it's a db", &activate_sql(access));
    assert_eq!(
        superuser_query(
            &cluster,
            "it's a db",
            "SELECT has_database_privilege('o''connor', current_database(), 'CONNECT') \
             AND has_table_privilege('o''connor', '\"my schema\".\"it''s\"', 'SELECT') \
             AND NOT has_table_privilege('o''connor', '\"my schema\".\"it''s\"', 'INSERT')"
        ),
        "t"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let relay = Identity {
        cert: out.join(layout::RELAY_UPSTREAM_CERT),
        key: out.join(layout::RELAY_UPSTREAM_KEY),
    };
    for user in [HOSTILE, "Mixed Case", "o'connor"] {
        let attempt = Attempt {
            server_name: "localhost",
            user,
            dbname: "it's a db",
            identity: Some(&relay),
        };
        let rows = tokio_query(
            &rt,
            cluster.port,
            &out.join(layout::RELAY_SERVER_CA),
            &attempt,
            "SELECT current_user || '/' || v FROM \"my schema\".\"it's\"",
        )
        .unwrap_or_else(|e| panic!("{user} was refused: {e:?}\n{}", cluster.log()));
        assert_eq!(rows, [format!("{user}/safe")]);
    }
}

/// setup.sql of every database of every example runs on a real PostgreSQL, twice (idempotent).
/// Cloud-only pieces are provided the way the cloud provides them: the `rds_iam` role, and
/// Azure's `pgaadauth_create_principal_with_oid` (here a function creating the login role; an
/// Azure script runs in `postgres` first, as its header says). A Cloud SQL script stops with
/// the `gcloud` command to run until the IAM users exist.
#[test]
fn every_examples_setup_sql_runs_on_a_real_postgres() {
    let mut cluster = Cluster::init();
    cluster.start();
    cluster.sql("template1", "CREATE ROLE rds_iam NOLOGIN;");
    cluster.sql(
        "postgres",
        "CREATE FUNCTION pgaadauth_create_principal_with_oid(role text, oid text, kind text, \
         is_admin boolean, is_mfa boolean) RETURNS text LANGUAGE plpgsql AS $$ BEGIN \
         EXECUTE format('CREATE ROLE %I LOGIN', role); RETURN 'Created role for ' || role; END $$;",
    );
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let (mut ran, mut granted) = (0, 0);
    let scripts = tempfile::tempdir().expect("scripts dir");
    for entry in fs::read_dir(&examples).expect("examples").flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "kdl") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("read example");
        let model = dbward::check(&Source::new(path.display().to_string(), text))
            .model
            .expect("example compiles");
        let artifacts = dbward::emit::emit_text(&model).expect("emit");
        let stem = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        for (name, db) in &model.databases {
            let sql = &artifacts[&layout::database_file(name, "setup.sql")].bytes;
            let file = scripts.path().join(format!("{stem}-{name}.sql"));
            fs::write(&file, sql).expect("write script");
            let database = format!("{stem}_{name}");
            cluster.sql("postgres", &format!("CREATE DATABASE \"{database}\""));
            if let dbward::model::DatabaseKind::CloudSql { .. } = db.kind {
                let err = cluster
                    .sql_file(&database, &file)
                    .expect_err("Cloud SQL setup must stop while the IAM users are missing");
                assert!(err.contains("gcloud sql users create"), "{err}");
                // The admin user too: on Cloud SQL it is an IAM user like the others.
                for user in db
                    .db_users
                    .keys()
                    .chain(db.admin_user.iter().map(|a| &a.name))
                {
                    cluster.sql(
                        "postgres",
                        &format!(
                            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) \
                             THEN CREATE ROLE {id} LOGIN; END IF; END $$",
                            lit = dbward::emit::quote::literal(user),
                            id = dbward::emit::quote::ident(user)
                        ),
                    );
                }
            }
            if let dbward::model::DatabaseKind::AzurePostgres { .. } = db.kind {
                cluster.sql_file("postgres", &file).unwrap_or_else(|e| {
                    panic!("{stem}: setup.sql of {name} failed in postgres:\n{e}")
                });
            }
            for run in ["first", "second"] {
                cluster.sql_file(&database, &file).unwrap_or_else(|e| {
                    panic!("{stem}: setup.sql of {name} failed on its {run} run:\n{e}")
                });
            }
            // Every declared login exists and can log in; every db-role exists and cannot.
            for user in db.db_users.keys() {
                let login = cluster.sql(
                    "postgres",
                    &format!(
                        "SELECT rolcanlogin FROM pg_roles WHERE rolname = {}",
                        dbward::emit::quote::literal(user)
                    ),
                );
                assert_eq!(login.trim(), "t", "{stem}/{name}: db-user {user}");
            }
            for role in db.db_roles.keys() {
                let login = cluster.sql(
                    "postgres",
                    &format!(
                        "SELECT rolcanlogin FROM pg_roles WHERE rolname = {}",
                        dbward::emit::quote::literal(role)
                    ),
                );
                assert_eq!(login.trim(), "f", "{stem}/{name}: db-role {role}");
            }
            // The relay's provisioning rights from frozen.json are accepted by the
            // `dbward.activate` that setup.sql installed.
            let frozen = dbward::emit::frozen::build(&model).expect("frozen config");
            for access in frozen.access.iter().filter(|a| a.database == *name) {
                if access.grants.is_empty() {
                    continue;
                }
                let sql = activate_sql(access);
                let file = scripts.path().join("grants.sql");
                fs::write(&file, &sql).expect("write grants");
                cluster.sql_file(&database, &file).unwrap_or_else(|e| {
                    panic!(
                        "{stem}: provisioning grants for {} failed:\n{e}\n{sql}",
                        access.identity
                    )
                });
                granted += 1;
            }
            ran += 1;
        }
    }
    assert!(ran >= 7, "ran only {ran} setup scripts");
    assert!(granted >= 1, "no example exercised provisioning grants");
}

/// `SELECT dbward.activate(…)` with the mode, roles and grants of one access entry, as the relay
/// calls it (here as the superuser, who holds every grant option).
fn activate_sql(access: &dbward_frozen::Access) -> String {
    use dbward::emit::quote::literal;
    let mode = match access.provision {
        dbward_frozen::Provision::BestEffortDrop => "best-effort-drop",
        _ => "keep",
    };
    let roles: Vec<String> = access.db_roles.iter().map(|r| literal(r)).collect();
    format!(
        "SELECT dbward.activate({}, {}, ARRAY[{}]::text[], {}::jsonb);\n",
        literal(&access.identity),
        literal(mode),
        roles.join(", "),
        literal(&serde_json::to_string(&access.grants).expect("grants to JSON")),
    )
}

//! `dbward cert issue`: the files it writes let real `psql` connect with `verify-full` and a
//! client certificate whose subject is the person. A real PostgreSQL stands in for the relay's
//! TLS endpoint: it presents the relay's server certificate (`*.<public-name>`) and trusts
//! only the users CA, exactly what the relay does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use dbward_tests::{Cluster, psql_path};

use crate::plan_apply::{dbward, dbward_ok, quickstart};

/// The quickstart, with the relay listening where the test cluster listens (so the port in
/// pg_service.conf is the cluster's).
fn manifest(port: u16) -> String {
    quickstart().replace(
        "listen \"127.0.0.1:6432\"",
        &format!("listen \"127.0.0.1:{port}\""),
    )
}

/// psql through the service file, resolving `<db>.<public-name>` to 127.0.0.1 with
/// `hostaddr` (the name is still what verify-full checks the certificate against).
fn psql_service(dest: &Path, service: &str, sql: &str) -> Output {
    Command::new(psql_path())
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(format!("service={service} hostaddr=127.0.0.1"))
        .args(["-c", sql])
        .env("PGSERVICEFILE", dest.join("pg_service.conf"))
        .env_remove("PGHOST")
        .env_remove("PGSSLMODE")
        .output()
        .expect("run psql")
}

/// Makes `cluster` present the relay's certificate and trust the users CA from `out`, where
/// the person `alice` may log in as `app` by certificate.
fn relay_standin(cluster: &Cluster, out: &Path) {
    let read = |p: &str| fs::read(out.join(p)).unwrap_or_else(|e| panic!("read {p}: {e}"));
    let conf = cluster.config_dir();
    cluster.install_file("conf/server.crt", &read("relay/server.crt"), 0o644);
    cluster.install_file("conf/server.key", &read("relay/server.key"), 0o600);
    cluster.install_file("conf/users-ca.crt", &read("relay/users-ca.crt"), 0o644);
    cluster.install_file(
        "conf/pg_hba.conf",
        b"local all postgres trust\nhostssl all all 127.0.0.1/32 cert map=people\n",
        0o644,
    );
    cluster.install_file("conf/pg_ident.conf", b"people alice app\n", 0o644);
    cluster.append_conf(&format!(
        "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n\
         ssl_ca_file = '{0}/users-ca.crt'\nhba_file = '{0}/pg_hba.conf'\nident_file = '{0}/pg_ident.conf'\n",
        conf.display()
    ));
}

#[test]
fn issued_files_let_real_psql_connect_with_verify_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::init();
    let port = cluster.port;
    fs::write(dir.path().join("m.kdl"), manifest(port)).unwrap();
    dbward_ok(
        dir.path(),
        &["apply", "m.kdl", "--out", "out", "--auto-approve"],
    );
    let stdout = dbward_ok(
        dir.path(),
        &[
            "cert", "issue", "m.kdl", "--out", "out", "--user", "alice", "--dest", "alice",
            "--ttl", "2h",
        ],
    );
    assert!(stdout.contains("psql \"service=shop\""), "{stdout}");
    assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");
    let dest = dir.path().join("alice");
    let mode = |f: &str| fs::metadata(dest.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("postgresql.key"), 0o600);
    let services = fs::read_to_string(dest.join("pg_service.conf")).unwrap();
    assert!(
        services.contains("[shop]\nhost=shop.db.localhost\n"),
        "{services}"
    );
    assert!(services.contains("sslmode=verify-full\n"), "{services}");
    assert_eq!(
        fs::read(dest.join("root.crt")).unwrap(),
        fs::read(dir.path().join("out/ca/server-ca.crt")).unwrap()
    );

    // The certificate says who the person is and lives as long as asked.
    let pem = fs::read(dest.join("postgresql.crt")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    assert_eq!(cert.subject().to_string(), "CN=alice");
    let life =
        cert.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((7000..=7200).contains(&life), "lifetime {life}s is not 2h");

    relay_standin(&cluster, &dir.path().join("out"));
    cluster.start();
    cluster.sql("postgres", "CREATE ROLE app LOGIN");
    cluster.sql("postgres", "CREATE DATABASE shop");
    let out = psql_service(&dest, "shop", "SELECT current_user");
    assert!(
        out.status.success(),
        "psql with the issued files failed:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");

    // A certificate from another deployment's users CA is refused by the TLS handshake.
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("m.kdl"), manifest(port)).unwrap();
    dbward_ok(
        other.path(),
        &["apply", "m.kdl", "--out", "out", "--auto-approve"],
    );
    dbward_ok(
        other.path(),
        &[
            "cert", "issue", "m.kdl", "--out", "out", "--user", "alice", "--dest", "alice",
        ],
    );
    let foreign = other.path().join("alice");
    // Keep its certificate and key, but trust this deployment's server CA to get that far.
    fs::copy(dest.join("root.crt"), foreign.join("root.crt")).unwrap();
    let refused = psql_service(&foreign, "shop", "SELECT 1");
    assert!(
        !refused.status.success(),
        "a foreign certificate was accepted"
    );
}

#[test]
fn the_relay_name_is_verified_against_the_issued_root() {
    // The root.crt from one deployment does not verify another deployment's relay.
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::init();
    fs::write(dir.path().join("m.kdl"), manifest(cluster.port)).unwrap();
    dbward_ok(
        dir.path(),
        &["apply", "m.kdl", "--out", "out", "--auto-approve"],
    );
    dbward_ok(
        dir.path(),
        &[
            "cert", "issue", "m.kdl", "--out", "out", "--user", "alice", "--dest", "alice",
        ],
    );
    relay_standin(&cluster, &dir.path().join("out"));
    cluster.start();
    cluster.sql("postgres", "CREATE ROLE app LOGIN");
    cluster.sql("postgres", "CREATE DATABASE shop");
    // With its own root.crt, the person gets in.
    let dest = dir.path().join("alice");
    assert!(
        psql_service(&dest, "shop", "SELECT 1").status.success(),
        "{}",
        cluster.log()
    );
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("m.kdl"), manifest(cluster.port)).unwrap();
    dbward_ok(
        other.path(),
        &["apply", "m.kdl", "--out", "out", "--auto-approve"],
    );
    fs::copy(
        other.path().join("out/ca/server-ca.crt"),
        dest.join("root.crt"),
    )
    .unwrap();
    let out = psql_service(&dest, "shop", "SELECT 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
}

#[test]
fn unknown_users_and_missing_cas_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("m.kdl"), manifest(6432)).unwrap();
    let before_apply = dbward(
        dir.path(),
        &[
            "cert", "issue", "m.kdl", "--out", "out", "--user", "alice", "--dest", "d",
        ],
    );
    let stderr = String::from_utf8_lossy(&before_apply.stderr);
    assert_eq!(before_apply.status.code(), Some(1));
    assert!(
        stderr.contains("run `dbward apply m.kdl --out out` first"),
        "{stderr}"
    );

    dbward_ok(
        dir.path(),
        &["apply", "m.kdl", "--out", "out", "--auto-approve"],
    );
    let typo = dbward(
        dir.path(),
        &[
            "cert", "issue", "m.kdl", "--out", "out", "--user", "alcie", "--dest", "d",
        ],
    );
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert_eq!(typo.status.code(), Some(1));
    assert!(
        stderr.contains("no user `alcie`") && stderr.contains("did you mean `alice`?"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("d").exists(),
        "nothing is written for an unknown user"
    );

    let bad_ttl = dbward(
        dir.path(),
        &[
            "cert", "issue", "m.kdl", "--out", "out", "--user", "alice", "--dest", "d", "--ttl",
            "soon",
        ],
    );
    assert_eq!(bad_ttl.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_ttl.stderr).contains("--ttl"));
}

/// Like ssh, dbward does not sign with (or reuse) a private key that group or others may read:
/// `cert issue`, `plan` and `apply` name the key, its mode and the `chmod` that fixes it.
#[test]
fn keys_readable_by_group_or_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("m.kdl"), manifest(6432)).unwrap();
    dbward_ok(
        dir.path(),
        &["apply", "m.kdl", "--out", "out", "--auto-approve"],
    );
    let ca_key = dir.path().join("out/ca/users-ca.key");
    let canonical = fs::canonicalize(&ca_key).unwrap();
    let relative = Path::new("out/ca/users-ca.key");
    for mode in [0o640, 0o644, 0o604] {
        fs::set_permissions(&ca_key, fs::Permissions::from_mode(mode)).unwrap();
        let issue = dbward(
            dir.path(),
            &[
                "cert", "issue", "m.kdl", "--out", "out", "--user", "alice", "--dest", "d",
            ],
        );
        let stderr = String::from_utf8_lossy(&issue.stderr);
        assert_eq!(issue.status.code(), Some(1), "{mode:o}: {stderr}");
        assert!(stderr.contains(&format!("mode {mode:04o}")), "{stderr}");
        assert!(
            stderr.contains(&format!("`chmod 600 {}`", relative.display()))
                || stderr.contains(&format!("`chmod 600 {}`", canonical.display())),
            "{stderr}"
        );
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
        assert!(!dir.path().join("d").exists(), "nothing is issued");
        for command in [
            &["plan", "m.kdl", "--out", "out"][..],
            &["apply", "m.kdl", "--out", "out", "--auto-approve"][..],
        ] {
            let out = dbward(dir.path(), command);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
            assert!(
                stderr.contains("users-ca.key") && stderr.contains(&format!("mode {mode:04o}")),
                "{command:?}: {stderr}"
            );
            assert!(stderr.contains("chmod 600"), "{command:?}: {stderr}");
        }
    }
    fs::set_permissions(&ca_key, fs::Permissions::from_mode(0o600)).unwrap();
    dbward_ok(
        dir.path(),
        &[
            "cert", "issue", "m.kdl", "--out", "out", "--user", "alice", "--dest", "d",
        ],
    );
}

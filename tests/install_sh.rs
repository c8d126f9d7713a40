//! `databases/<db>/install.sh` on a PostgreSQL that is not Debian's (a plain `initdb` cluster
//! started with `pg_ctl`, no cluster name, no systemd): the files installed into a config-dir
//! whose path holds a quote and a space, the include added once, a restart through `pg_ctl`
//! (found beside the running server) when `hba_file` changes, the listed database names created
//! (one with a quote and a space), setup.sql run in each; run again, nothing changes and
//! PostgreSQL only reloads; after a manifest change, a reload and exactly the new statement.
//! The README walkthrough covers the Debian path (`pg_ctlcluster`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use dbward_tests::{Cluster, superuser_query, workspace_bin};

fn manifest(cluster: &Cluster, config_dir: &Path, db_users: &str) -> String {
    format!(
        r#"dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.localhost"
}}
database shop {{
    postgres host="127.0.0.1" port={port} version=15
    self-hosted {{
        server-names "127.0.0.1"
        config-dir "{config_dir}"
    }}
    db-role reader {{
        grant CONNECT on=database
    }}
    db-user app {{
        member-of reader
    }}
    db-user audit {{
        member-of reader
    }}
}}
role analyst {{
    allow {{
        databases shop
        db-names shop "q'uote d"
        db-users {db_users}
    }}
}}
user kim {{
    roles analyst
}}
"#,
        port = cluster.port,
        config_dir = config_dir.display(),
    )
}

fn apply(work: &Path, manifest: &str) {
    std::fs::write(work.join("m.kdl"), manifest).unwrap();
    let out = Command::new(workspace_bin("dbward"))
        .args(["apply", "m.kdl", "--out", "out", "--auto-approve"])
        .current_dir(work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs install.sh as root would, with the cluster's socket directory as `PGHOST`.
fn install(work: &Path, cluster: &Cluster) -> (String, Output) {
    let out = Command::new("sh")
        .arg(work.join("out/databases/shop/install.sh"))
        .env("PGHOST", cluster.socket_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out)
}

#[test]
fn install_sh_installs_restarts_creates_names_and_converges_on_a_plain_cluster() {
    assert!(
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0"),
        "install.sh runs as root (it chowns files to the server's user); run the suite as root, \
         as CI does"
    );
    let mut cluster = Cluster::init();
    cluster.start();
    let work = tempfile::tempdir().unwrap();
    let config_dir = cluster.root().join("it's dbward");
    apply(work.path(), &manifest(&cluster, &config_dir, "app"));

    let (text, out) = install(work.path(), &cluster);
    assert!(out.status.success(), "{text}\n{}", cluster.log());
    for expected in [
        "install.sh: 6 of 6 files changed in ",
        "install.sh: restarted PostgreSQL (hba_file, ident_file need a restart)",
        "install.sh: created database shop (a db-name of the manifest)",
        "install.sh: created database q'uote d (a db-name of the manifest)",
        "dbward change: CREATE ROLE \"app\" LOGIN",
        "install.sh: setup.sql ran in q'uote d",
        "install.sh: setup.sql ran in shop",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Installed for the server's user, the key private; the server runs from them.
    let key = std::fs::metadata(config_dir.join("server.key")).unwrap();
    let postgres_uid = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    assert_eq!(
        key.uid().to_string(),
        String::from_utf8_lossy(&postgres_uid.stdout).trim()
    );
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        superuser_query(&cluster, "postgres", "SHOW hba_file"),
        config_dir.join("pg_hba.conf").display().to_string()
    );
    assert_eq!(
        superuser_query(
            &cluster,
            "q'uote d",
            "SELECT has_database_privilege('reader', current_database(), 'CONNECT')"
        ),
        "t"
    );
    let conf = std::fs::read_to_string(cluster.data_dir().join("postgresql.conf")).unwrap();
    assert_eq!(conf.matches("# Added by dbward").count(), 1, "{conf}");

    // Again: nothing to change, a reload, no change reported.
    let (text, out) = install(work.path(), &cluster);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("install.sh: 0 of 6 files changed"), "{text}");
    assert!(text.contains("install.sh: reloaded PostgreSQL"), "{text}");
    assert!(
        !text.contains("dbward change") && !text.contains("created database"),
        "{text}"
    );
    let conf = std::fs::read_to_string(cluster.data_dir().join("postgresql.conf")).unwrap();
    assert_eq!(conf.matches("# Added by dbward").count(), 1, "{conf}");

    // A login more for people: pg_hba.conf and pg_ident.conf change, a reload is enough.
    apply(work.path(), &manifest(&cluster, &config_dir, "app audit"));
    let (text, out) = install(work.path(), &cluster);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("install.sh: 2 of 6 files changed"), "{text}");
    assert!(text.contains("install.sh: reloaded PostgreSQL"), "{text}");
    assert!(!text.contains("restarted"), "{text}");
    let rules = superuser_query(
        &cluster,
        "postgres",
        "SELECT count(*) FROM pg_hba_file_rules WHERE 'audit' = ANY(user_name)",
    );
    assert_eq!(rules, "1", "the reload did not take the new pg_hba.conf");
}

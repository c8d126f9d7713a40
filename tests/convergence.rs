//! setup.sql converges privileges on a real PostgreSQL: a grant removed from the manifest is
//! revoked by the next run, a privilege given by hand to a managed role is revoked, one given
//! to a role the manifest does not declare (or to PUBLIC, or an owner's own) survives, and a
//! second run changes nothing.
//!
//! Each manifest version goes through the real `dbward apply` binary into the same output
//! directory, as an operator would, and its setup.sql runs as the superuser over the local
//! socket of a cluster started with the generated configuration. Privileges are checked by
//! doing the thing as the role (`SET ROLE`, so PostgreSQL's own privilege checks decide) and by
//! reading the catalogs.

use std::fs;
use std::path::Path;

use dbward::emit::quote;
use dbward_tests::{Cluster, change_notices, dbward_apply, superuser_query, superuser_sql};

/// A db-user whose name is SQL syntax: revoking from it must treat it as data.
const HOSTILE: &str = "x'; DROP ROLE y; --";

/// The test manifest; `writer_grants` is the body of db-role `writer` after its `member-of`.
fn manifest(cluster: &Cluster, writer_grants: &str) -> String {
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
        grant USAGE on=schema schema="my schema"
        grant SELECT on=table schema="my schema" table="it's"
    }}
    db-role writer {{
        member-of reader
        {writer_grants}
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

/// The grant the first manifest version gives `writer` and the second one removes.
const WRITE: &str = "grant INSERT UPDATE DELETE on=all-tables schema=public";

/// A cluster configured and started from the first apply, with database `shop`, table
/// `items` (existing before setup.sql) and a table with a hostile name in a hostile schema.
fn started(work: &Path, writer_grants: &str) -> (Cluster, std::path::PathBuf) {
    let mut cluster = Cluster::init();
    let out = work.join("out");
    dbward_apply(&manifest(&cluster, writer_grants), &out);
    cluster.install_dbward(&out, "shop");
    if let Err(log) = cluster.try_start() {
        panic!("PostgreSQL refused the generated configuration:\n{log}");
    }
    superuser_sql(&cluster, "postgres", "CREATE DATABASE shop; CREATE ROLE y;");
    superuser_sql(
        &cluster,
        "shop",
        "CREATE TABLE items (name text); INSERT INTO items VALUES ('first'); \
         CREATE SCHEMA \"my schema\"; CREATE TABLE \"my schema\".\"it's\" (v text);",
    );
    (cluster, out)
}

/// Runs the generated setup.sql in `shop`, panicking with psql's error.
fn run_setup(cluster: &Cluster, out: &Path) -> String {
    cluster
        .peer_sql_file("shop", &out.join("databases/shop/setup.sql"))
        .unwrap_or_else(|e| panic!("setup.sql failed: {e}\nlog:\n{}", cluster.log()))
}

/// Runs the generated setup.sql in `shop` and returns the changes it reports having made.
fn setup_changes(cluster: &Cluster, out: &Path) -> Vec<String> {
    let (_, stderr) = cluster
        .peer_sql_file_output("shop", &out.join("databases/shop/setup.sql"))
        .unwrap_or_else(|e| panic!("setup.sql failed: {e}\nlog:\n{}", cluster.log()));
    change_notices(&stderr)
}

/// psql's stderr without the change notices: the warnings.
fn without_changes(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|line| !line.contains("NOTICE:  dbward change: "))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Runs `sql` in `shop` as `role` (`SET ROLE`), so PostgreSQL checks that role's privileges.
fn as_role(cluster: &Cluster, role: &str, sql: &str) -> Result<String, String> {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(
        file.path(),
        format!("SET ROLE {};\n{sql}\n", quote::ident(role)),
    )
    .expect("write sql");
    cluster.peer_sql_file("shop", file.path())
}

/// Every privilege held in `shop` (its database entry, schemas, relations, routines and default
/// privileges), one line each, sorted: what "changes nothing" is measured against.
fn acl_snapshot(cluster: &Cluster) -> String {
    superuser_query(
        cluster,
        "shop",
        "WITH acl(what, acl) AS ( \
           SELECT 'database ' || datname, datacl FROM pg_database WHERE datname = current_database() \
           UNION ALL SELECT 'schema ' || nspname, nspacl FROM pg_namespace \
           UNION ALL SELECT 'relation ' || oid::regclass::text, relacl FROM pg_class \
           UNION ALL SELECT 'routine ' || oid::regprocedure::text, proacl FROM pg_proc \
           UNION ALL SELECT 'default ' || defaclrole::regrole || ' ' || defaclnamespace::regnamespace \
             || ' ' || defaclobjtype::text, defaclacl FROM pg_default_acl), \
         lines AS ( \
           SELECT format('%s: %s from %s %s%s', acl.what, coalesce(g.rolname, 'PUBLIC'), \
             b.rolname, a.privilege_type, CASE WHEN a.is_grantable THEN ' grantable' END) AS line \
           FROM acl, aclexplode(acl.acl) a \
           LEFT JOIN pg_roles g ON g.oid = a.grantee LEFT JOIN pg_roles b ON b.oid = a.grantor) \
         SELECT count(*) || E'\\n' || string_agg(line, E'\\n' ORDER BY line) FROM lines",
    )
}

/// Whether `role` holds `privilege` on table `table` (directly or through its groups).
fn has_table_privilege(cluster: &Cluster, role: &str, table: &str, privilege: &str) -> bool {
    let answer = superuser_query(
        cluster,
        "shop",
        &format!(
            "SELECT has_table_privilege({}, {}, {})",
            quote::literal(role),
            quote::literal(table),
            quote::literal(privilege)
        ),
    );
    answer == "t"
}

/// The privileges held directly (not through a group) by `grantee` in the ACL that `acl_sql`
/// selects, e.g. `(SELECT relacl FROM pg_class WHERE oid = 'items'::regclass)`: sorted,
/// comma-separated, `*` marking a grant option.
fn direct(cluster: &Cluster, grantee: &str, acl_sql: &str) -> String {
    superuser_query(
        cluster,
        "shop",
        &format!(
            "SELECT coalesce(string_agg(a.privilege_type || CASE WHEN a.is_grantable THEN '*' \
             ELSE '' END, ',' ORDER BY a.privilege_type), '') \
             FROM aclexplode({acl_sql}) a WHERE a.grantee = {}::regrole",
            quote::literal(&quote::ident(grantee))
        ),
    )
}

const ITEMS_ACL: &str = "(SELECT relacl FROM pg_class WHERE oid = 'items'::regclass)";

#[test]
fn a_grant_removed_from_the_manifest_is_revoked_by_the_next_setup_sql() {
    let work = tempfile::tempdir().expect("work dir");
    let (cluster, out) = started(work.path(), WRITE);

    // Version 1: writer (and so app) may write, into tables existing before setup.sql and
    // into tables created after it (default privileges).
    run_setup(&cluster, &out);
    superuser_sql(&cluster, "shop", "CREATE TABLE later (name text);");
    as_role(&cluster, "app", "INSERT INTO items VALUES ('v1')").expect("app inserts under v1");
    as_role(&cluster, "app", "INSERT INTO later VALUES ('v1')")
        .expect("app inserts under v1 into a table created after setup.sql");

    // Running it again changes nothing, and says so: no change notice at all.
    let before = acl_snapshot(&cluster);
    assert_eq!(setup_changes(&cluster, &out), Vec::<String>::new());
    assert_eq!(
        acl_snapshot(&cluster),
        before,
        "a second run changed privileges"
    );

    // Version 2 drops the grant: the same apply flow, the same output directory.
    dbward_apply(&manifest(&cluster, ""), &out);
    let setup = fs::read_to_string(out.join("databases/shop/setup.sql")).expect("setup.sql");
    assert!(
        !setup.contains("GRANT INSERT"),
        "v2 setup.sql still grants INSERT:\n{setup}"
    );
    run_setup(&cluster, &out);
    superuser_sql(&cluster, "shop", "CREATE TABLE after_v2 (name text);");
    for table in ["items", "later", "after_v2"] {
        let err = as_role(
            &cluster,
            "app",
            &format!("INSERT INTO {table} VALUES ('v2')"),
        )
        .expect_err(&format!("app must no longer insert into {table}"));
        assert!(err.contains("permission denied"), "{table}: {err}");
        for privilege in ["INSERT", "UPDATE", "DELETE"] {
            assert!(
                !has_table_privilege(&cluster, "writer", table, privilege),
                "writer still has {privilege} on {table}"
            );
        }
        // Reading through reader is untouched.
        as_role(&cluster, "app", &format!("SELECT * FROM {table}"))
            .unwrap_or_else(|e| panic!("app must still read {table} through reader: {e}"));
    }
    let rows = as_role(
        &cluster,
        "readonly",
        "SELECT string_agg(name, ',' ORDER BY name) FROM items",
    )
    .expect("readonly reads");
    assert!(rows.contains("first,v1"), "{rows}");
    // No default privilege for writer is left behind either.
    assert_eq!(
        superuser_query(
            &cluster,
            "shop",
            "SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a \
             WHERE a.grantee = 'writer'::regrole"
        ),
        "0"
    );

    // And the converged state is a fixed point too.
    let converged = acl_snapshot(&cluster);
    assert_eq!(setup_changes(&cluster, &out), Vec::<String>::new());
    assert_eq!(acl_snapshot(&cluster), converged);
}

#[test]
fn hand_grants_to_managed_roles_are_revoked_and_others_survive() {
    let work = tempfile::tempdir().expect("work dir");
    let (cluster, out) = started(work.path(), WRITE);
    run_setup(&cluster, &out);
    let declared_only = acl_snapshot(&cluster);

    // Everything a managed role should not hold, given by hand, on every kind of object; the
    // same given to a role the manifest does not declare, to PUBLIC, and an owner's own.
    superuser_sql(
        &cluster,
        "shop",
        &format!(
            "CREATE ROLE bystander;
             CREATE SEQUENCE counter;
             CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42';
             CREATE TABLE owned (v int);
             ALTER TABLE owned OWNER TO app;
             GRANT SELECT ON owned TO bystander;
             GRANT TRUNCATE, REFERENCES ON items TO reader;
             GRANT UPDATE (name) ON items TO readonly;
             GRANT UPDATE (v) ON \"my schema\".\"it's\" TO {hostile};
             GRANT UPDATE (name) ON items TO bystander;
             GRANT SELECT ON items TO app;
             GRANT SELECT ON items TO writer;
             GRANT INSERT ON items TO writer WITH GRANT OPTION;
             GRANT INSERT ON \"my schema\".\"it's\" TO {hostile};
             GRANT CREATE ON SCHEMA public TO reader;
             GRANT CREATE ON DATABASE shop TO app;
             GRANT USAGE ON SEQUENCE counter TO readonly;
             GRANT EXECUTE ON FUNCTION answer() TO writer;
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT TRUNCATE ON TABLES TO reader;
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON SEQUENCES TO app;
             GRANT TRUNCATE ON items TO bystander;
             GRANT CREATE ON DATABASE shop TO bystander;
             GRANT CREATE ON SCHEMA public TO bystander;
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT TRUNCATE ON TABLES TO bystander;
             GRANT REFERENCES ON items TO PUBLIC;",
            hostile = quote::ident(HOSTILE)
        ),
    );
    assert!(has_table_privilege(&cluster, "reader", "items", "TRUNCATE"));
    as_role(
        &cluster,
        HOSTILE,
        "INSERT INTO \"my schema\".\"it's\" VALUES ('hand')",
    )
    .expect("the hand grant works before setup.sql");

    run_setup(&cluster, &out);

    // Managed roles lost what the manifest does not declare, whatever the object kind.
    assert_eq!(direct(&cluster, "reader", ITEMS_ACL), "SELECT");
    assert_eq!(direct(&cluster, "app", ITEMS_ACL), "");
    assert_eq!(
        direct(&cluster, "writer", ITEMS_ACL),
        "DELETE,INSERT,UPDATE",
        "writer keeps its declared privileges, loses SELECT and INSERT's grant option"
    );
    assert_eq!(
        direct(
            &cluster,
            HOSTILE,
            "(SELECT relacl FROM pg_class WHERE oid = '\"my schema\".\"it''s\"'::regclass)"
        ),
        ""
    );
    let err = as_role(
        &cluster,
        HOSTILE,
        "INSERT INTO \"my schema\".\"it's\" VALUES ('no')",
    )
    .expect_err("the hostile-named user's hand grant must be revoked");
    assert!(err.contains("permission denied"), "{err}");
    as_role(&cluster, HOSTILE, "SELECT * FROM \"my schema\".\"it's\"")
        .expect("the declared SELECT through reader stays");
    let err = as_role(&cluster, "readonly", "TRUNCATE items").expect_err("no TRUNCATE");
    assert!(err.contains("permission denied"), "{err}");
    let err = as_role(&cluster, "readonly", "UPDATE items SET name = 'no'")
        .expect_err("the hand-granted column UPDATE must be revoked");
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(
        superuser_query(
            &cluster,
            "shop",
            "SELECT string_agg(g.rolname || ':' || a.privilege_type, ',') \
             FROM pg_attribute att, aclexplode(att.attacl) a JOIN pg_roles g ON g.oid = a.grantee \
             WHERE att.attrelid IN ('items'::regclass, '\"my schema\".\"it''s\"'::regclass)"
        ),
        "bystander:UPDATE",
        "only the unmanaged role keeps its column privilege"
    );
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(
        direct(
            &cluster,
            "reader",
            "(SELECT nspacl FROM pg_namespace WHERE nspname = 'public')"
        ),
        "USAGE"
    );
    assert_eq!(
        direct(
            &cluster,
            "app",
            "(SELECT datacl FROM pg_database WHERE datname = 'shop')"
        ),
        ""
    );
    assert_eq!(
        direct(
            &cluster,
            "readonly",
            "(SELECT relacl FROM pg_class WHERE oid = 'counter'::regclass)"
        ),
        ""
    );
    assert_eq!(
        direct(
            &cluster,
            "writer",
            "(SELECT proacl FROM pg_proc WHERE oid = 'answer()'::regprocedure)"
        ),
        ""
    );
    for (role, declared) in [("reader", "r:SELECT"), ("app", "")] {
        assert_eq!(
            superuser_query(
                &cluster,
                "shop",
                &format!(
                    "SELECT coalesce(string_agg(d.defaclobjtype::text || ':' || a.privilege_type, ',' \
                     ORDER BY d.defaclobjtype, a.privilege_type), '') FROM pg_default_acl d, aclexplode(d.defaclacl) a \
                     WHERE a.grantee = '{role}'::regrole"
                )
            ),
            declared,
            "{role} keeps only its declared default privileges"
        );
    }

    // What the manifest does not manage survives: another role, PUBLIC, the owner.
    assert_eq!(direct(&cluster, "bystander", ITEMS_ACL), "TRUNCATE");
    assert_eq!(
        direct(
            &cluster,
            "bystander",
            "(SELECT relacl FROM pg_class WHERE oid = 'owned'::regclass)"
        ),
        "SELECT"
    );
    assert_eq!(
        direct(
            &cluster,
            "app",
            "(SELECT relacl FROM pg_class WHERE oid = 'owned'::regclass)"
        ),
        "DELETE,INSERT,REFERENCES,SELECT,TRIGGER,TRUNCATE,UPDATE",
        "the owner's own privileges are not setup.sql's to revoke"
    );
    assert_eq!(
        superuser_query(
            &cluster,
            "shop",
            "SELECT has_database_privilege('bystander', 'shop', 'CREATE') \
             AND has_schema_privilege('bystander', 'public', 'CREATE') \
             AND (SELECT count(*) = 1 FROM pg_default_acl d, aclexplode(d.defaclacl) a \
                  WHERE a.grantee = 'bystander'::regrole AND a.privilege_type = 'TRUNCATE') \
             AND (SELECT count(*) = 1 FROM aclexplode((SELECT relacl FROM pg_class \
                  WHERE oid = 'items'::regclass)) a WHERE a.grantee = 0 AND a.privilege_type = 'REFERENCES')"
        ),
        "t"
    );
    // The hostile name was data: role y is still there.
    assert_eq!(
        superuser_query(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'y'"
        ),
        "1"
    );

    // Without the unmanaged extras, the managed roles are back to exactly what they were after
    // the first run; and another run changes nothing.
    let converged = acl_snapshot(&cluster);
    assert_eq!(setup_changes(&cluster, &out), Vec::<String>::new());
    assert_eq!(
        acl_snapshot(&cluster),
        converged,
        "a second run changed privileges"
    );
    for line in declared_only.lines().skip(1) {
        assert!(
            converged.contains(line),
            "lost a declared privilege: {line}"
        );
    }
}

#[test]
fn grants_by_other_grantors_are_taken_back_as_them_or_reported() {
    let work = tempfile::tempdir().expect("work dir");
    let (cluster, out) = started(work.path(), WRITE);
    run_setup(&cluster, &out);

    // bystander holds a grant option and passed SELECT on to readonly: a superuser's REVOKE
    // (acting as the owner) would not take that back; setup.sql revokes it as bystander.
    // writer passed TRUNCATE on to bystander: revoking it from writer would need CASCADE, which
    // would reach a role the manifest does not manage, so it stays and setup.sql says so.
    superuser_sql(
        &cluster,
        "shop",
        "CREATE ROLE bystander;
         GRANT SELECT ON items TO bystander WITH GRANT OPTION;
         SET ROLE bystander; GRANT SELECT ON items TO readonly; RESET ROLE;
         GRANT TRUNCATE ON items TO writer WITH GRANT OPTION;
         SET ROLE writer; GRANT TRUNCATE ON items TO bystander; RESET ROLE;",
    );
    assert_eq!(direct(&cluster, "readonly", ITEMS_ACL), "SELECT");

    let setup = out.join("databases/shop/setup.sql");
    let (_, output) = cluster
        .peer_sql_file_output("shop", &setup)
        .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));
    assert_eq!(
        change_notices(&output),
        ["REVOKE SELECT ON TABLE public.items FROM readonly"],
        "what was revoked is a change, what could not be is not"
    );
    let warnings = without_changes(&output);
    assert_eq!(direct(&cluster, "readonly", ITEMS_ACL), "");
    assert_eq!(direct(&cluster, "bystander", ITEMS_ACL), "SELECT*,TRUNCATE");
    assert_eq!(
        direct(&cluster, "writer", ITEMS_ACL),
        "DELETE,INSERT,TRUNCATE*,UPDATE"
    );
    assert!(
        warnings.contains(
            "WARNING:  setup.sql could not revoke a privilege the manifest does not declare: \
             REVOKE TRUNCATE ON TABLE public.items FROM writer"
        ) && warnings.contains("HINT:  it was granted by postgres"),
        "{warnings}"
    );
    assert_eq!(
        warnings.matches("WARNING").count(),
        1,
        "only what could not be revoked is reported: {warnings}"
    );

    // The same warning again, and no change.
    let before = acl_snapshot(&cluster);
    let (_, again) = cluster
        .peer_sql_file_output("shop", &setup)
        .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));
    assert_eq!(again, warnings, "the same warning, and no change");
    assert_eq!(acl_snapshot(&cluster), before);

    // Once the operator follows the hint, the next run converges silently.
    superuser_sql(
        &cluster,
        "shop",
        "REVOKE TRUNCATE ON items FROM writer CASCADE;",
    );
    let (_, quiet) = cluster
        .peer_sql_file_output("shop", &setup)
        .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));
    assert!(!quiet.contains("WARNING"), "{quiet}");
    assert_eq!(
        direct(&cluster, "writer", ITEMS_ACL),
        "DELETE,INSERT,UPDATE"
    );
}

#[test]
fn setup_sql_executes_and_reports_only_what_is_needed() {
    assert_eq!(
        dbward::emit::sql::NOTICE_PREFIX,
        "dbward change: ",
        "change_notices in tests/src/lib.rs reads this prefix"
    );
    let work = tempfile::tempdir().expect("work dir");
    let (cluster, out) = started(work.path(), WRITE);

    // On an empty cluster everything is a change: roles, memberships, grants.
    let first = setup_changes(&cluster, &out);
    for expected in [
        "CREATE ROLE \"dbward-admin\" LOGIN CREATEROLE",
        "CREATE ROLE \"reader\" NOLOGIN",
        "CREATE ROLE \"x'; DROP ROLE y; --\" LOGIN",
        "GRANT writer TO app",
        "GRANT reader TO \"x'; DROP ROLE y; --\"",
        "GRANT CONNECT ON DATABASE shop TO \"reader\"",
        "GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"reader\"",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA \"public\" GRANT SELECT ON TABLES TO \"reader\"",
        "GRANT SELECT ON TABLE \"my schema\".\"it's\" TO \"reader\"",
    ] {
        assert!(
            first.iter().any(|c| c == expected),
            "missing change {expected:?} in {first:#?}"
        );
    }
    assert!(
        !first.iter().any(|c| c.starts_with("ALTER ROLE")),
        "roles just created already have the right attributes: {first:#?}"
    );
    // The second run: nothing to do, nothing said.
    assert_eq!(setup_changes(&cluster, &out), Vec::<String>::new());

    // Drift made by hand: a grant, a dropped role, a membership taken away, a superuser.
    superuser_sql(
        &cluster,
        "shop",
        "GRANT TRUNCATE ON items TO reader;
         DROP ROLE readonly;
         REVOKE writer FROM app;
         ALTER ROLE app SUPERUSER CREATEDB;",
    );
    let mut drift = setup_changes(&cluster, &out);
    drift.sort();
    assert_eq!(
        drift,
        [
            "ALTER ROLE \"app\" WITH NOCREATEDB NOSUPERUSER",
            "CREATE ROLE \"readonly\" LOGIN",
            "GRANT reader TO readonly",
            "GRANT writer TO app",
            "REVOKE TRUNCATE ON TABLE public.items FROM reader",
        ]
    );
    assert_eq!(
        superuser_query(
            &cluster,
            "shop",
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = 'app'"
        ),
        "f"
    );
    as_role(&cluster, "readonly", "SELECT * FROM items").expect("readonly is back and reads");
    as_role(&cluster, "app", "INSERT INTO items VALUES ('back')").expect("app writes again");
    assert_eq!(direct(&cluster, "reader", ITEMS_ACL), "SELECT");

    // A new table: only its grant is missing (ON ALL TABLES runs again, nothing else).
    superuser_sql(
        &cluster,
        "shop",
        "CREATE TABLE later (v int); REVOKE ALL ON later FROM writer, reader;",
    );
    assert_eq!(
        setup_changes(&cluster, &out),
        [
            "GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"reader\"",
            "GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"public\" TO \"writer\"",
        ]
    );
    assert_eq!(setup_changes(&cluster, &out), Vec::<String>::new());
}

//! The setup.sql of an Azure Database for PostgreSQL runs on a real PostgreSQL 15 in which a
//! stub `pgaadauth_create_principal_with_oid` (Azure's extension function, same signature)
//! creates the role and records its arguments: the principals are proved created with their
//! object ids, in the `postgres` database only, once; and the grants converge as on every
//! other kind.
//!
//! The manifest is `examples/azure.kdl` itself, compiled by the real `dbward apply`. Its admin
//! user `dbward` stands for the server's Entra administrator, which Azure creates when the
//! administrator is set, so the test creates it beforehand.

use std::path::Path;

use dbward_tests::{Cluster, dbward_apply, superuser_query, superuser_sql};

/// Azure's function, as far as setup.sql can tell: creates the login role and returns a text,
/// and records what it was asked.
const STUB: &str = r#"
CREATE TABLE public.pgaadauth_calls (
    n serial PRIMARY KEY, role_name text, object_id text, object_type text,
    is_admin boolean, is_mfa boolean);
CREATE FUNCTION public.pgaadauth_create_principal_with_oid(
    role_name text, object_id text, object_type text, is_admin boolean, is_mfa boolean)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.pgaadauth_calls (role_name, object_id, object_type, is_admin, is_mfa)
        VALUES (role_name, object_id, object_type, is_admin, is_mfa);
    EXECUTE format('CREATE ROLE %I LOGIN', role_name);
    RETURN format('Created role for "%s"', role_name);
END $$;
-- The Entra administrator exists before setup.sql runs (it runs as it).
CREATE ROLE dbward LOGIN CREATEROLE;
CREATE DATABASE reports;
"#;

fn calls(cluster: &Cluster) -> String {
    superuser_query(
        cluster,
        "postgres",
        "SELECT string_agg(format('%s %s %s %s %s', role_name, object_id, object_type, is_admin, is_mfa), E'\\n' ORDER BY n) FROM pgaadauth_calls",
    )
}

fn privilege(cluster: &Cluster, role: &str, privilege: &str) -> String {
    superuser_query(
        cluster,
        "reports",
        &format!("SELECT has_table_privilege('{role}', 'public.sales', '{privilege}')"),
    )
}

#[test]
fn setup_sql_creates_each_entra_principal_once_with_its_object_id() {
    let work = tempfile::tempdir().expect("temp dir");
    let out = work.path().join("out");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/azure.kdl");
    let manifest = std::fs::read_to_string(example).expect("examples/azure.kdl");
    dbward_apply(&manifest, &out);
    let setup = out.join("databases/reports/setup.sql");

    let mut cluster = Cluster::init();
    cluster.start();
    superuser_sql(&cluster, "postgres", STUB);
    superuser_sql(
        &cluster,
        "reports",
        "CREATE TABLE public.sales (amount int);",
    );

    // In another database first: nothing is created there, and the error says what to do.
    let err = cluster
        .sql_file("reports", &setup)
        .expect_err("principals cannot be created outside postgres");
    assert!(
        err.contains("run setup.sql in the postgres database first"),
        "{err}"
    );
    assert_eq!(calls(&cluster), "");

    // In `postgres`: each db-user's principal, with its own object id, as a service
    // principal; the existing Entra administrator is left alone.
    cluster
        .sql_file("postgres", &setup)
        .unwrap_or_else(|e| panic!("setup.sql in postgres failed: {e}\n{}", cluster.log()));
    let expected = "etl a1b2c3d4-e5f6-4789-8abc-def012345678 service f f\n\
                    reporting 7c9e6679-7425-40de-944b-e07fc1f90ae7 service f f";
    assert_eq!(calls(&cluster), expected);
    // Only the principals: `postgres` is no database people open, so nothing is granted there.
    let in_postgres = superuser_query(
        &cluster,
        "postgres",
        "SELECT has_table_privilege('reporting', 'public.pgaadauth_calls', 'SELECT')",
    );
    assert_eq!(
        in_postgres, "f",
        "setup.sql granted on the postgres database's tables"
    );

    // Then in the database people open: the grants converge there.
    cluster
        .sql_file("reports", &setup)
        .unwrap_or_else(|e| panic!("setup.sql in reports failed: {e}\n{}", cluster.log()));
    assert_eq!(privilege(&cluster, "reporting", "SELECT"), "t");
    assert_eq!(privilege(&cluster, "reporting", "INSERT"), "f");
    assert_eq!(privilege(&cluster, "etl", "INSERT"), "t");
    assert_eq!(
        privilege(&cluster, "etl", "SELECT"),
        "t",
        "etl is a writer, a reader"
    );
    // A privilege given by hand to a managed role is taken back by the next run.
    superuser_sql(
        &cluster,
        "reports",
        "GRANT DELETE ON public.sales TO reporting;",
    );

    // Again, in both: no principal is created twice, and the grants are as declared.
    for database in ["postgres", "reports"] {
        cluster
            .sql_file(database, &setup)
            .unwrap_or_else(|e| panic!("second run in {database} failed: {e}"));
    }
    assert_eq!(calls(&cluster), expected, "a second run calls nothing");
    assert_eq!(privilege(&cluster, "reporting", "DELETE"), "f");
    assert_eq!(privilege(&cluster, "reporting", "SELECT"), "t");
    let members = superuser_query(
        &cluster,
        "postgres",
        "SELECT string_agg(g.rolname || ' > ' || u.rolname, ', ' ORDER BY g.rolname, u.rolname) \
         FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
         WHERE u.rolname IN ('etl', 'reporting', 'writer')",
    );
    assert_eq!(members, "reader > reporting, reader > writer, writer > etl");
}

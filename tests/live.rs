//! `dbward plan --live` and `dbward apply --live` against a real PostgreSQL 15: the real
//! binary connects as the admin user over mutual TLS with the relay's certificate (mapped by the
//! generated pg_ident.conf), runs setup.sql in a transaction per database name, and shows or
//! commits exactly the statements it executes. Drift made by hand with real psql is shown and
//! converged; a name that does not exist is warned about; an unreachable server fails alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dbward::emit::quote;
use dbward_tests::{
    Cluster, dbward_apply, free_port, superuser_query, superuser_sql, workspace_bin,
};

const ADMIN: &str = "dbward-admin";

/// A manifest with database `shop` on `cluster`, people provisioned through the admin user
/// (which is what maps the relay's certificate to it), `db_names` as the db-names of the
/// access rule, and `extra` appended (another database).
fn manifest(cluster: &Cluster, db_names: &str, extra: &str) -> String {
    format!(
        r#"dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.localhost"
    client-cert-ttl "1h"
}}
database shop {{
    postgres host="127.0.0.1" port={port} version=15
    self-hosted {{
        server-names "127.0.0.1"
        config-dir "{config_dir}"
    }}
    admin-user "{ADMIN}" default-database=postgres
    db-role reader {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT on=all-tables schema=public
    }}
    db-user app {{
        member-of reader
    }}
}}
{extra}
role analyst {{
    provision keep
    allow {{
        databases shop
        db-names {db_names}
        db-roles reader
        db-users app
    }}
}}
user kim {{
    roles analyst
}}
"#,
        port = cluster.port,
        config_dir = cluster.config_dir().display(),
    )
}

/// A started cluster configured from the generated files, with the admin user made by hand
/// (it must exist before dbward can log in as it) owning databases `names`, each with a table.
fn started(work: &Path, db_names: &str, names: &[&str]) -> (Cluster, PathBuf) {
    started_with(work, db_names, names, |text| text)
}

/// [`started`] with the manifest changed by `edit` first.
fn started_with(
    work: &Path,
    db_names: &str,
    names: &[&str],
    edit: impl Fn(String) -> String,
) -> (Cluster, PathBuf) {
    let mut cluster = Cluster::init();
    let out = work.join("out");
    dbward_apply(&edit(manifest(&cluster, db_names, "")), &out);
    cluster.install_dbward(&out, "shop");
    if let Err(log) = cluster.try_start() {
        panic!("PostgreSQL refused the generated configuration:\n{log}");
    }
    superuser_sql(
        &cluster,
        "postgres",
        &format!("CREATE ROLE \"{ADMIN}\" LOGIN CREATEROLE;"),
    );
    for name in names {
        superuser_sql(
            &cluster,
            "postgres",
            &format!("CREATE DATABASE \"{name}\" OWNER \"{ADMIN}\";"),
        );
        superuser_sql(
            &cluster,
            name,
            &format!("SET ROLE \"{ADMIN}\"; CREATE TABLE items (name text);"),
        );
    }
    (cluster, out)
}

/// Runs the real `dbward` with `args`, the manifest at `out.kdl` and `--out out`.
fn dbward(out: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("dbward"))
        .arg(args[0])
        .arg(out.with_extension("kdl"))
        .arg("--out")
        .arg(out)
        .args(&args[1..])
        .output()
        .expect("run dbward")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn apply_live_converges_every_name_and_the_next_plan_is_empty() {
    let work = tempfile::tempdir().expect("work dir");
    let (cluster, out) = started(work.path(), "\"*\"", &["shop", "two", "three"]);
    // "*" includes postgres: the admin user must be able to grant there too.
    superuser_sql(
        &cluster,
        "postgres",
        &format!("ALTER DATABASE postgres OWNER TO \"{ADMIN}\";"),
    );

    // The plan shows what the first apply will do, in every database name under "*".
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(2), "{shown}");
    for name in ["postgres", "shop", "two", "three"] {
        assert!(
            shown.contains(&format!("  database shop, name {name}:\n")),
            "{shown}"
        );
    }
    // Server-wide statements are shown once, under the first name, though each name runs them.
    assert_eq!(
        shown
            .matches("    + CREATE ROLE \"reader\" NOLOGIN\n")
            .count(),
        1,
        "{shown}"
    );
    assert_eq!(
        shown.matches("    + GRANT reader TO app\n").count(),
        1,
        "{shown}"
    );
    assert!(
        shown.contains("roles, their attributes and memberships are server-wide"),
        "{shown}"
    );
    assert!(
        shown.contains("  database shop, name postgres:\n    + CREATE ROLE"),
        "{shown}"
    );
    assert!(
        shown.contains("    + GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"reader\"\n"),
        "{shown}"
    );
    // It was rolled back: nothing exists yet.
    assert_eq!(
        superuser_query(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('reader', 'app')"
        ),
        "0"
    );

    let apply = dbward(&out, &["apply", "--live", "--auto-approve"]);
    let applied = text(&apply);
    assert!(apply.status.success(), "{applied}");
    assert!(
        applied.contains("dbward made these changes in the databases:"),
        "{applied}"
    );
    for name in ["shop", "two", "three"] {
        assert_eq!(
            superuser_query(
                &cluster,
                name,
                "SELECT has_table_privilege('app', 'items', 'SELECT')"
            ),
            "t",
            "{name}: {applied}"
        );
    }

    // Apply, then plan: no changes, files and databases alike.
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{shown}");
    assert!(shown.contains("No changes."), "{shown}");
    assert!(
        shown.contains("Live: no changes in 4 database name(s)."),
        "{shown}"
    );

    // Drift by hand, with psql: shown, applied, gone.
    superuser_sql(
        &cluster,
        "two",
        "GRANT TRUNCATE ON items TO reader; ALTER ROLE app CREATEDB;",
    );
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains(
            "  database shop, name two:\n    - REVOKE TRUNCATE ON TABLE public.items FROM reader\n"
        ),
        "{shown}"
    );
    assert_eq!(
        shown
            .matches("    ~ ALTER ROLE \"app\" WITH NOCREATEDB\n")
            .count(),
        1,
        "{shown}"
    );
    assert!(
        shown.contains("Live: 0 to add, 1 to change, 1 to remove, in 4 database name(s)."),
        "{shown}"
    );
    let json = dbward(&out, &["plan", "--live", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("plan JSON");
    assert_eq!(doc["has_changes"], true);
    assert_eq!(doc["live"]["remove"], 1, "{doc}");
    assert_eq!(
        doc["live"]["change"], 4,
        "role attributes are server-wide: {doc}"
    );

    let apply = dbward(&out, &["apply", "--live", "--auto-approve"]);
    assert!(apply.status.success(), "{}", text(&apply));
    assert_eq!(
        superuser_query(
            &cluster,
            "two",
            "SELECT has_table_privilege('reader', 'items', 'TRUNCATE') OR \
             (SELECT rolcreatedb FROM pg_roles WHERE rolname = 'app')"
        ),
        "f"
    );
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
}

#[test]
fn plan_live_logs_in_as_the_admin_user_when_nobody_is_provisioned() {
    let work = tempfile::tempdir().expect("work dir");
    // No `provision`: the relay never needs the admin user, but `--live` logs in as it.
    let (_cluster, out) = started_with(work.path(), "shop", &["shop"], |text| {
        text.replace("    provision keep\n", "")
            .replace("        db-roles reader\n", "")
    });
    assert!(
        std::fs::read_to_string(out.join("databases/shop/pg_ident.conf"))
            .expect("pg_ident.conf")
            .contains(&format!("\"{ADMIN}\"")),
        "pg_ident.conf maps the relay's certificate to the admin user"
    );
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("  database shop, name shop:\n")
            && shown.contains("    + CREATE ROLE \"reader\" NOLOGIN\n"),
        "{shown}"
    );
    let apply = dbward(&out, &["apply", "--live", "--auto-approve"]);
    assert!(apply.status.success(), "{}", text(&apply));
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
}

#[test]
fn a_listed_name_that_does_not_exist_is_a_warning() {
    let work = tempfile::tempdir().expect("work dir");
    let (_cluster, out) = started(work.path(), "shop shpo", &["shop"]);
    let plan = dbward(&out, &["plan", "--live"]);
    let shown = text(&plan);
    assert!(plan.status.success(), "{shown}");
    assert!(
        shown.contains("Warning: database shop: db-name shpo does not exist on 127.0.0.1:"),
        "{shown}"
    );
    assert!(shown.contains("  database shop, name shop:\n"), "{shown}");
}

#[test]
fn an_unreachable_server_fails_alone_and_the_others_are_applied() {
    let work = tempfile::tempdir().expect("work dir");
    let (cluster, out) = started(work.path(), "shop", &["shop"]);
    // A second database on a port nobody listens on.
    let gone = free_port();
    let extra = format!(
        r#"database gone {{
    postgres host="127.0.0.1" port={gone} version=15
    self-hosted {{
        server-names "127.0.0.1"
        config-dir "/etc/gone"
    }}
    admin-user "{ADMIN}" default-database=postgres
    db-user app
}}
role other {{
    provision keep
    allow {{
        databases gone
        db-names gone
        db-users app
    }}
}}
user lee {{
    roles other
}}"#
    );
    std::fs::write(
        out.with_extension("kdl"),
        manifest(&cluster, "shop", &extra),
    )
    .expect("manifest");
    let apply = dbward(&out, &["apply", "--live", "--auto-approve"]);
    let shown = text(&apply);
    assert_eq!(apply.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "Error: database gone: cannot connect to database name postgres on 127.0.0.1:{gone} as {ADMIN}"
        )),
        "{shown}"
    );
    assert_eq!(
        superuser_query(
            &cluster,
            "shop",
            "SELECT has_table_privilege('app', 'items', 'SELECT')"
        ),
        "t",
        "the reachable database was converged: {shown}"
    );
}

#[test]
fn an_apply_terminated_mid_transaction_changes_nothing_and_a_rerun_converges() {
    let work = tempfile::tempdir().expect("work dir");
    let (cluster, out) = started(work.path(), "shop", &["shop"]);
    let hold = work.path().join("hold.sql");
    // setup.sql waits for provisioning's advisory lock inside its transaction: hold it.
    std::fs::write(
        &hold,
        format!(
            "SELECT pg_advisory_lock({}, 0);\nSELECT pg_sleep(6);\n",
            dbward::emit::sql::provision::ACL_LOCK
        ),
    )
    .expect("hold.sql");
    let (apply, terminated) = std::thread::scope(|scope| {
        let holder = scope.spawn(|| cluster.peer_sql_file("shop", &hold));
        // Wait until the holder has the lock, then start the apply.
        wait_for(
            &cluster,
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted",
        );
        let apply = scope.spawn(|| dbward(&out, &["apply", "--live", "--auto-approve"]));
        wait_for(
            &cluster,
            "SELECT count(*) > 0 FROM pg_stat_activity \
             WHERE application_name = 'dbward' AND wait_event_type = 'Lock'",
        );
        let terminated = superuser_query(
            &cluster,
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'dbward' AND datname = 'shop'",
        );
        let apply = apply.join().expect("apply thread");
        holder.join().expect("holder thread").expect("holder psql");
        (apply, terminated)
    });
    let shown = text(&apply);
    assert_eq!(terminated, "1", "{shown}");
    assert_eq!(apply.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("Error: database shop, name shop: setup.sql failed in database name shop"),
        "{shown}"
    );
    assert_eq!(
        superuser_query(
            &cluster,
            "shop",
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('reader', 'app', 'dbward-auto-user')"
        ),
        "0",
        "the terminated transaction changed nothing"
    );
    // The rerun converges, and then there is nothing left to do.
    let apply = dbward(&out, &["apply", "--live", "--auto-approve"]);
    assert!(apply.status.success(), "{}", text(&apply));
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
}

/// Polls `query` (a boolean) in `postgres` until it is true, for up to 20 s.
fn wait_for(cluster: &Cluster, query: &str) {
    for _ in 0..200 {
        if superuser_query(cluster, "postgres", query) == "t" {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting for: {query}");
}

#[test]
fn two_applies_at_once_both_succeed_and_converge() {
    let work = tempfile::tempdir().expect("work dir");
    // Without provisioning, so setup.sql takes no lock of its own: the live phase must.
    let (cluster, out) = started_with(work.path(), "\"*\"", &["shop", "two", "three"], |text| {
        text.replace("    provision keep\n", "")
            .replace("        db-roles reader\n", "")
    });
    superuser_sql(
        &cluster,
        "postgres",
        &format!("ALTER DATABASE postgres OWNER TO \"{ADMIN}\";"),
    );
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| dbward(&out, &["apply", "--live", "--auto-approve"]));
        let second = scope.spawn(|| dbward(&out, &["apply", "--live", "--auto-approve"]));
        (
            first.join().expect("first apply"),
            second.join().expect("second apply"),
        )
    });
    assert!(first.status.success(), "{}", text(&first));
    assert!(second.status.success(), "{}", text(&second));
    for name in ["shop", "two", "three"] {
        assert_eq!(
            superuser_query(
                &cluster,
                name,
                "SELECT has_table_privilege('app', 'items', 'SELECT')"
            ),
            "t",
            "{name}"
        );
    }
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
}

/// Runs the real `dbward apply PLANFILE` (no manifest, no `--out`: the plan names them).
fn apply_planfile(planfile: &Path) -> Output {
    Command::new(workspace_bin("dbward"))
        .arg("apply")
        .arg(planfile)
        .output()
        .expect("run dbward")
}

#[test]
fn a_saved_live_plan_applies_and_the_next_plan_is_empty() {
    let work = tempfile::tempdir().expect("work dir");
    let (cluster, out) = started(work.path(), "shop two", &["shop", "two"]);
    let planfile = work.path().join("tfplan");

    let plan = dbward(
        &out,
        &["plan", "--live", "-o", planfile.to_str().expect("utf-8")],
    );
    let shown = text(&plan);
    assert!(plan.status.success(), "{shown}");
    assert!(shown.contains("  database shop, name two:\n"), "{shown}");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&planfile).expect("plan file")).expect("JSON");
    let live = saved["live"].as_array().expect("a live part");
    assert_eq!(live.len(), 2, "{saved}");
    assert!(
        live.iter().all(|n| n["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("sha256:"))),
        "{saved}"
    );
    // `dbward show` prints the saved database part as the plan did.
    let show = Command::new(workspace_bin("dbward"))
        .args(["show", planfile.to_str().expect("utf-8")])
        .output()
        .expect("run dbward show");
    let printed = text(&show);
    assert!(show.status.success(), "{printed}");
    assert!(
        printed.contains("  database shop, name two:\n") && printed.contains("CREATE ROLE"),
        "{printed}"
    );
    // Planning rolled back: nothing exists yet.
    assert_eq!(
        superuser_query(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('reader', 'app')"
        ),
        "0"
    );

    // No --live: the plan file says it is live.
    let apply = apply_planfile(&planfile);
    let applied = text(&apply);
    assert!(apply.status.success(), "{applied}");
    assert!(
        applied.contains("dbward made these changes in the databases:"),
        "{applied}"
    );
    for name in ["shop", "two"] {
        assert_eq!(
            superuser_query(
                &cluster,
                name,
                "SELECT has_table_privilege('app', 'items', 'SELECT')"
            ),
            "t",
            "{name}: {applied}"
        );
    }
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{shown}");
    assert!(shown.contains("No changes."), "{shown}");
    assert!(
        shown.contains("Live: no changes in 2 database name(s)."),
        "{shown}"
    );
}

#[test]
fn a_saved_live_plan_is_refused_where_the_database_changed_since() {
    let work = tempfile::tempdir().expect("work dir");
    let (cluster, out) = started(work.path(), "shop two", &["shop", "two"]);
    let planfile = work.path().join("tfplan");
    let apply = dbward(&out, &["apply", "--live", "--auto-approve"]);
    assert!(apply.status.success(), "{}", text(&apply));

    // Drift in both names, saved in a plan that revokes it.
    for name in ["shop", "two"] {
        superuser_sql(&cluster, name, "GRANT TRUNCATE ON items TO reader;");
    }
    let plan = dbward(
        &out,
        &["plan", "--live", "-o", planfile.to_str().expect("utf-8")],
    );
    let shown = text(&plan);
    assert!(plan.status.success(), "{shown}");
    assert_eq!(
        shown
            .matches("    - REVOKE TRUNCATE ON TABLE public.items FROM reader\n")
            .count(),
        2,
        "{shown}"
    );

    // Another GRANT by hand in `two` after the plan was made: the plan no longer says what
    // the apply would do there.
    superuser_sql(&cluster, "two", "GRANT INSERT ON items TO reader;");
    let apply = apply_planfile(&planfile);
    let applied = text(&apply);
    assert_eq!(apply.status.code(), Some(1), "{applied}");
    assert!(
        applied.contains(
            "Error: database shop, name two: changed since the saved plan was made (1 \
             statement(s) in the plan, 2 now; it would now also run: REVOKE INSERT ON TABLE \
             public.items FROM reader)"
        ),
        "{applied}"
    );
    // Nothing was applied in `two`, not even what the plan showed; `shop` was converged.
    assert_eq!(
        superuser_query(
            &cluster,
            "two",
            "SELECT has_table_privilege('reader', 'items', 'TRUNCATE') \
             AND has_table_privilege('reader', 'items', 'INSERT')"
        ),
        "t",
        "{applied}"
    );
    assert_eq!(
        superuser_query(
            &cluster,
            "shop",
            "SELECT has_table_privilege('reader', 'items', 'TRUNCATE')"
        ),
        "f",
        "{applied}"
    );
}

/// Hostile names, each held by something dbward creates or grants over `--live`: a single
/// quote, `;`, spaces, a backslash, SQL syntax and non-ASCII letters. (A double quote is
/// refused in every name by the `unsafe_name` rule: pg_hba.conf cannot quote it.)
const H_ADMIN: &str = "Ad'min; \\ ü";
const H_ROLE: &str = "o'rëader; \\x";
const H_USER: &str = "x'; DROP ROLE y; --";
const H_USER2: &str = "Mixed Case ü";
const H_DBS: [&str; 2] = ["it's a db; \\ ü", "Ordérs"];
const H_SCHEMA: &str = "my schema; ü";
const H_TABLE: &str = "it's \\ t";

/// A KDL string holding `s`.
fn kdl(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `schema.table` of the hostile table, as a SQL literal for `has_table_privilege`.
fn hostile_table() -> String {
    quote::literal(&format!(
        "{}.{}",
        quote::ident(H_SCHEMA),
        quote::ident(H_TABLE)
    ))
}

#[test]
fn hostile_names_are_created_granted_and_their_drift_revoked_over_live() {
    let work = tempfile::tempdir().expect("work dir");
    let mut cluster = Cluster::init();
    let out = work.path().join("out");
    let text_of = format!(
        r#"dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.localhost"
    client-cert-ttl "1h"
}}
database shop {{
    postgres host="127.0.0.1" port={port} version=15
    self-hosted {{
        server-names "127.0.0.1"
        config-dir "{config_dir}"
    }}
    admin-user {admin} default-database=postgres
    db-role {role} {{
        grant CONNECT on=database
        grant USAGE on=schema schema={schema}
        grant SELECT on=table schema={schema} table={table}
    }}
    db-user {user} {{
        member-of {role}
    }}
    db-user {user2} {{
        member-of {role}
    }}
}}
role analyst {{
    provision keep
    allow {{
        databases shop
        db-names {db1} {db2}
        db-roles {role}
        db-users {user} {user2}
    }}
}}
user kim {{
    roles analyst
}}
"#,
        port = cluster.port,
        config_dir = cluster.config_dir().display(),
        admin = kdl(H_ADMIN),
        role = kdl(H_ROLE),
        user = kdl(H_USER),
        user2 = kdl(H_USER2),
        schema = kdl(H_SCHEMA),
        table = kdl(H_TABLE),
        db1 = kdl(H_DBS[0]),
        db2 = kdl(H_DBS[1]),
    );
    dbward_apply(&text_of, &out);
    cluster.install_dbward(&out, "shop");
    if let Err(log) = cluster.try_start() {
        panic!("PostgreSQL refused the generated configuration:\n{log}");
    }
    let admin = quote::ident(H_ADMIN);
    // Role y must survive the db-user whose name says DROP ROLE y.
    superuser_sql(
        &cluster,
        "postgres",
        &format!("CREATE ROLE {admin} LOGIN CREATEROLE; CREATE ROLE y;"),
    );
    for name in H_DBS {
        superuser_sql(
            &cluster,
            "postgres",
            &format!("CREATE DATABASE {} OWNER {admin};", quote::ident(name)),
        );
        superuser_sql(
            &cluster,
            name,
            &format!(
                "SET ROLE {admin}; CREATE SCHEMA {schema}; CREATE TABLE {schema}.{table} (v text);",
                schema = quote::ident(H_SCHEMA),
                table = quote::ident(H_TABLE)
            ),
        );
    }

    let apply = dbward(&out, &["apply", "--live", "--auto-approve"]);
    let applied = text(&apply);
    assert!(apply.status.success(), "{applied}");
    for db in H_DBS {
        assert!(
            applied.contains(&format!("  database shop, name {db}:\n")),
            "{applied}"
        );
    }
    assert!(
        applied.contains(&format!("+ CREATE ROLE {}", quote::ident(H_USER))),
        "{applied}"
    );
    for db in H_DBS {
        for user in [H_USER, H_USER2] {
            assert_eq!(
                superuser_query(
                    &cluster,
                    db,
                    &format!(
                        "SELECT has_table_privilege({}, {}, 'SELECT')",
                        quote::literal(user),
                        hostile_table()
                    )
                ),
                "t",
                "{db} {user}: {applied}"
            );
        }
    }
    assert_eq!(
        superuser_query(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'y'"
        ),
        "1"
    );
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // Drift by hand on the hostile names: shown, revoked, gone.
    superuser_sql(
        &cluster,
        H_DBS[0],
        &format!(
            "GRANT INSERT ON {}.{} TO {};",
            quote::ident(H_SCHEMA),
            quote::ident(H_TABLE),
            quote::ident(H_ROLE)
        ),
    );
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains(&format!(
            "  database shop, name {}:\n    - REVOKE INSERT",
            H_DBS[0]
        )),
        "{shown}"
    );
    let apply = dbward(&out, &["apply", "--live", "--auto-approve"]);
    assert!(apply.status.success(), "{}", text(&apply));
    assert_eq!(
        superuser_query(
            &cluster,
            H_DBS[0],
            &format!(
                "SELECT has_table_privilege({}, {}, 'INSERT')",
                quote::literal(H_ROLE),
                hostile_table()
            )
        ),
        "f"
    );
    let plan = dbward(&out, &["plan", "--live", "--detailed-exitcode"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains("Live: no changes in 2 database name(s)."),
        "{shown}"
    );

    // A double quote never gets as far as a database: the manifest is refused first.
    let quoted = text_of.replace(&kdl(H_USER2), &kdl("Mixed \"Case\""));
    std::fs::write(out.with_extension("kdl"), quoted).expect("write manifest");
    let plan = dbward(&out, &["plan", "--live"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{shown}");
    assert!(shown.contains("unsafe_name"), "{shown}");
    assert!(!shown.contains("Live:"), "{shown}");
}

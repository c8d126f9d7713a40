//! The provisioning functions setup.sql installs (`dbward.activate`, `deactivate`, `drop`,
//! `sweep`), called as the admin user over real connections to a real PostgreSQL, with the
//! roles and grants of the compiled frozen config, exactly as the relay will call them.
//!
//! The cluster keeps initdb's `trust` for local sockets, so the test connects as any role over
//! the Unix socket: as `dbward-admin` (a non-superuser with CREATEROLE, as in production) to
//! call the functions, and as the provisioned users to prove they can (or cannot) log in.

use dbward_tests::{Cluster, dbward_apply, superuser_query, superuser_sql};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const ADMIN: &str = "dbward-admin";
/// A name that is SQL syntax, with both quote characters, exactly 63 bytes (`é` is two).
const HOSTILE: &str = "o'\"; DROP ROLE \"dbward-admin\"; -- ééééééééééééééx";

fn manifest(cluster: &Cluster) -> String {
    format!(
        r#"dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.localhost"
    client-cert-ttl "1h"
}}
database shop {{
    postgres host="127.0.0.1" port={port} version=15
    labels env=dev
    self-hosted {{
        server-names "127.0.0.1"
        config-dir "{config_dir}"
    }}
    admin-user "{ADMIN}" default-database=shop
    db-role reader {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT on=all-tables schema=public
    }}
    db-role writer {{
        grant INSERT UPDATE on=all-tables schema=public
    }}
}}
role analyst {{
    provision keep
    allow {{
        databases shop
        db-names shop
        db-roles reader
        permission INSERT on=table schema=public table=items
    }}
}}
role loader {{
    provision best-effort-drop
    allow {{
        databases shop
        db-names shop
        db-roles reader
        permission CREATE on=schema schema=public
    }}
}}
user kim {{
    roles analyst
}}
user leo {{
    roles loader
}}
"#,
        port = cluster.port,
        config_dir = cluster.config_dir().display(),
    )
}

/// What the relay passes to `dbward.activate` for one person: mode, roles, grants (JSON).
struct Rights {
    mode: &'static str,
    roles: Vec<String>,
    grants: String,
}

struct Setup {
    cluster: Cluster,
    out: std::path::PathBuf,
    _work: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Setup {
    fn new() -> Setup {
        let work = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster::init();
        let out = work.path().join("out");
        dbward_apply(&manifest(&cluster), &out);
        cluster.start();
        superuser_sql(&cluster, "postgres", "CREATE DATABASE shop;");
        superuser_sql(
            &cluster,
            "shop",
            "CREATE TABLE items (name text); CREATE TABLE other (v int);",
        );
        let setup = Setup {
            cluster,
            out,
            _work: work,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        };
        setup.run_setup();
        setup
    }

    fn run_setup(&self) -> String {
        self.cluster
            .peer_sql_file("shop", &self.out.join("databases/shop/setup.sql"))
            .unwrap_or_else(|e| panic!("setup.sql failed: {e}\nlog:\n{}", self.cluster.log()))
    }

    /// The rights the compiled frozen config gives `person` on `shop`.
    fn rights(&self, person: &str) -> Rights {
        let text = std::fs::read_to_string(self.out.join("relay/frozen.json")).expect("frozen");
        let config: dbward_frozen::Config = serde_json::from_str(&text).expect("parse frozen");
        let access = config
            .access
            .iter()
            .find(|a| a.identity == person && a.database == "shop")
            .expect("access entry");
        Rights {
            mode: match access.provision {
                dbward_frozen::Provision::Keep => "keep",
                dbward_frozen::Provision::BestEffortDrop => "best-effort-drop",
                dbward_frozen::Provision::Off => panic!("{person} is not provisioned"),
            },
            roles: access.db_roles.clone(),
            grants: serde_json::to_string(&access.grants).expect("grants to JSON"),
        }
    }

    async fn connect(&self, user: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(self.cluster.socket_dir())
            .port(self.cluster.port)
            .user(user)
            .dbname("shop")
            .connect(NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn admin(&self) -> Client {
        self.rt
            .block_on(self.connect(ADMIN))
            .expect("connect as the admin user")
    }

    fn query(&self, sql: &str) -> String {
        superuser_query(&self.cluster, "shop", sql)
    }

    /// The role's memberships and its privileges in `shop`, one sorted line each, and whether it
    /// may log in: what "exactly these rights" is compared with.
    fn held(&self, role: &str) -> String {
        let role = dbward::emit::quote::literal(role);
        self.query(&format!(
            "SELECT coalesce((SELECT CASE WHEN rolcanlogin THEN 'login' ELSE 'nologin' END \
               FROM pg_roles WHERE rolname = {role}), 'absent') || E'\\n' || coalesce(( \
             SELECT string_agg(line, E'\\n' ORDER BY line) FROM ( \
               SELECT 'member of ' || g.rolname AS line FROM pg_auth_members m \
               JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
               WHERE u.rolname = {role} \
               UNION ALL SELECT a.privilege_type || ' on ' || c.oid::regclass \
               FROM pg_class c, aclexplode(c.relacl) a JOIN pg_roles u ON u.oid = a.grantee \
               WHERE u.rolname = {role} \
               UNION ALL SELECT a.privilege_type || ' on schema ' || n.nspname \
               FROM pg_namespace n, aclexplode(n.nspacl) a JOIN pg_roles u ON u.oid = a.grantee \
               WHERE u.rolname = {role} \
               UNION ALL SELECT a.privilege_type || ' on database ' || d.datname \
               FROM pg_database d, aclexplode(d.datacl) a JOIN pg_roles u ON u.oid = a.grantee \
               WHERE u.rolname = {role}) lines), '')"
        ))
    }
}

async fn activate(
    admin: &Client,
    person: &str,
    r: &Rights,
) -> Result<String, tokio_postgres::Error> {
    let row = admin
        .query_one(
            "SELECT dbward.activate($1, $2, $3, $4::text::jsonb)",
            &[&person, &r.mode, &r.roles, &r.grants],
        )
        .await?;
    Ok(row.get(0))
}

async fn call(
    admin: &Client,
    function: &str,
    person: &str,
) -> Result<String, tokio_postgres::Error> {
    let row = admin
        .query_one(&format!("SELECT dbward.{function}($1)"), &[&person])
        .await?;
    Ok(row.get(0))
}

fn code(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| error.to_string())
}

#[test]
fn keep_gives_exactly_the_compiled_rights_and_locks_the_user_afterwards() {
    let s = Setup::new();
    let admin = s.admin();
    let kim = s.rights("kim");
    // Rights kim held before (an older config, a role granted by hand) must go: "exactly" the
    // compiled ones.
    let wider = Rights {
        mode: "keep",
        roles: vec!["reader".into(), "writer".into()],
        grants: s.rights("leo").grants,
    };
    let outcome = s.rt.block_on(activate(&admin, "kim", &wider)).unwrap();
    assert_eq!(outcome, "created");
    assert_eq!(
        s.held("kim"),
        "login\nCREATE on schema public\nmember of dbward-auto-user\nmember of reader\nmember of writer"
    );
    superuser_sql(
        &s.cluster,
        "shop",
        "REVOKE writer FROM kim; GRANT writer TO kim; ALTER ROLE kim NOLOGIN;",
    );
    for _ in 0..2 {
        let outcome = s.rt.block_on(activate(&admin, "kim", &kim)).unwrap();
        assert_eq!(
            outcome, "activated",
            "a second call is a no-op, never an error"
        );
        assert_eq!(
            s.held("kim"),
            "login\nINSERT on items\nmember of dbward-auto-user\nmember of reader"
        );
    }
    // The user really logs in and really has the rights.
    s.rt.block_on(async {
        let client = s.connect("kim").await.expect("kim logs in");
        client
            .execute("INSERT INTO items VALUES ('x')", &[])
            .await
            .expect("insert");
        client
            .query("SELECT * FROM other", &[])
            .await
            .expect("select through reader");
        let denied = client.execute("DELETE FROM other", &[]).await.unwrap_err();
        assert_eq!(denied.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
        // While kim is connected, deactivate leaves the user alone.
        assert_eq!(call(&admin, "deactivate", "kim").await.unwrap(), "in-use");
        let n: i32 = admin
            .query_one("SELECT dbward.sessions('kim')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    });
    // Dropping the client does not wait for its backend to exit: until it has, kim is in use
    // (the relay passes the ending backend's pid; this test calls without one).
    let gone = dbward_tests::wait_for(std::time::Duration::from_secs(20), || {
        // The connection task runs on the test's runtime: let it close the socket.
        s.rt.block_on(tokio::task::yield_now());
        (superuser_query(
            &s.cluster,
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'kim';",
        ) == "0")
            .then_some(())
    });
    assert!(gone.is_some(), "kim's backend never exited");
    for expected in ["deactivated", "deactivated"] {
        assert_eq!(
            s.rt.block_on(call(&admin, "deactivate", "kim")).unwrap(),
            expected
        );
        assert_eq!(s.held("kim"), "nologin\nmember of dbward-auto-user");
    }
    let Err(refused) = s.rt.block_on(s.connect("kim")) else {
        panic!("kim is locked after deactivate, yet logged in");
    };
    assert_eq!(
        refused.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
    assert_eq!(
        s.rt.block_on(call(&admin, "deactivate", "nobody")).unwrap(),
        "absent"
    );
}

#[test]
fn best_effort_drop_drops_or_falls_back_when_the_user_owns_a_table() {
    let s = Setup::new();
    let admin = s.admin();
    let leo = s.rights("leo");
    assert_eq!(
        s.rt.block_on(activate(&admin, "leo", &leo)).unwrap(),
        "created"
    );
    assert_eq!(
        s.held("leo"),
        "login\nCREATE on schema public\nmember of dbward-auto-user\nmember of reader"
    );
    assert_eq!(
        s.rt.block_on(call(&admin, "drop", "leo")).unwrap(),
        "dropped"
    );
    assert_eq!(s.held("leo"), "absent");
    assert_eq!(
        s.rt.block_on(call(&admin, "drop", "leo")).unwrap(),
        "absent"
    );

    // A session that creates a table: the drop falls back, the table stays, the user is locked.
    assert_eq!(
        s.rt.block_on(activate(&admin, "leo", &leo)).unwrap(),
        "created"
    );
    s.rt.block_on(async {
        let client = s.connect("leo").await.expect("leo logs in");
        client
            .batch_execute("CREATE TABLE leos (v int); INSERT INTO leos VALUES (1)")
            .await
            .expect("create a table");
    });
    let dropped = dbward_tests::wait_for(std::time::Duration::from_secs(10), || {
        let outcome = s.rt.block_on(call(&admin, "drop", "leo")).unwrap();
        (outcome != "in-use").then_some(outcome)
    });
    assert_eq!(dropped.as_deref(), Some("deactivated"));
    assert_eq!(s.held("leo"), "nologin\nmember of dbward-auto-user");
    assert_eq!(s.query("SELECT count(*) FROM leos"), "1", "the table stays");
    assert_eq!(
        s.rt.block_on(call(&admin, "drop", "leo")).unwrap(),
        "deactivated"
    );
    // The next session reuses the user, and its table.
    assert_eq!(
        s.rt.block_on(activate(&admin, "leo", &leo)).unwrap(),
        "activated"
    );
    s.rt.block_on(async {
        let client = s.connect("leo").await.expect("leo logs in again");
        client
            .query("SELECT * FROM leos", &[])
            .await
            .expect("own table");
    });
}

#[test]
fn a_role_made_by_hand_is_refused_and_left_untouched() {
    let s = Setup::new();
    let admin = s.admin();
    superuser_sql(
        &s.cluster,
        "shop",
        "CREATE ROLE kim LOGIN; GRANT DELETE ON other TO kim;",
    );
    let before = s.held("kim");
    for function in ["activate", "deactivate", "drop"] {
        let result = if function == "activate" {
            s.rt.block_on(activate(&admin, "kim", &s.rights("kim")))
        } else {
            s.rt.block_on(call(&admin, function, "kim"))
        };
        let error = result.expect_err("refused");
        assert_eq!(code(&error), "WD001", "{function}: {error:?}");
        let message = error
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(
            message.contains("not a member of \"dbward-auto-user\""),
            "{message}"
        );
    }
    assert_eq!(s.held("kim"), before);
    // The admin user itself is never provisioned either.
    let error = s.rt.block_on(call(&admin, "drop", ADMIN)).unwrap_err();
    assert_eq!(code(&error), "WD001");
    // Nor is a superuser; and names PostgreSQL would truncate are refused.
    let error =
        s.rt.block_on(call(&admin, "deactivate", "postgres"))
            .unwrap_err();
    assert_eq!(code(&error), "WD001");
    let long = "x".repeat(64);
    let error =
        s.rt.block_on(activate(&admin, &long, &s.rights("kim")))
            .unwrap_err();
    assert_eq!(code(&error), "WD002");
}

#[test]
fn concurrent_activations_and_drops_serialize_on_the_advisory_lock() {
    let s = Setup::new();
    let kim = s.rights("kim");
    let leo = s.rights("leo");
    s.rt.block_on(async {
        let mut admins = Vec::new();
        for _ in 0..4 {
            admins.push(s.connect(ADMIN).await.expect("admin connection"));
        }
        for round in 0..15 {
            // Two connections activate one new user at once; two others activate and drop
            // another user at once (the drop may see a user being activated, or none).
            let (a, b, c, d) = tokio::join!(
                activate(&admins[0], "kim", &kim),
                activate(&admins[1], "kim", &kim),
                activate(&admins[2], "leo", &leo),
                call(&admins[3], "drop", "leo"),
            );
            for (what, result) in [
                ("activate", a),
                ("activate", b),
                ("activate", c),
                ("drop", d),
            ] {
                let outcome = result.unwrap_or_else(|e| panic!("round {round}: {what}: {e:?}"));
                assert!(
                    ["created", "activated", "dropped", "absent"].contains(&outcome.as_str()),
                    "{outcome}"
                );
            }
            let (e, f) = tokio::join!(
                call(&admins[0], "drop", "kim"),
                call(&admins[1], "drop", "kim")
            );
            let mut outcomes = [e.unwrap(), f.unwrap()];
            outcomes.sort();
            assert_eq!(
                outcomes,
                ["absent".to_owned(), "dropped".to_owned()],
                "round {round}"
            );
        }
    });
    assert_eq!(s.held("kim"), "absent");
}

#[test]
fn hostile_names_are_created_and_dropped_exactly() {
    let s = Setup::new();
    let admin = s.admin();
    assert_eq!(HOSTILE.len(), 63);
    let leo = s.rights("leo");
    assert_eq!(
        s.rt.block_on(activate(&admin, HOSTILE, &leo)).unwrap(),
        "created"
    );
    assert_eq!(
        s.held(HOSTILE),
        "login\nCREATE on schema public\nmember of dbward-auto-user\nmember of reader"
    );
    s.rt.block_on(async {
        s.connect(HOSTILE).await.expect("the hostile user logs in");
    });
    let outcome = dbward_tests::wait_for(std::time::Duration::from_secs(10), || {
        let outcome = s.rt.block_on(call(&admin, "drop", HOSTILE)).unwrap();
        (outcome != "in-use").then_some(outcome)
    });
    assert_eq!(outcome.as_deref(), Some("dropped"));
    assert_eq!(s.held(HOSTILE), "absent");
    assert_eq!(
        s.query(&format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{ADMIN}'"
        )),
        "1"
    );
}

#[test]
fn the_sweep_retires_logins_without_a_session() {
    let s = Setup::new();
    let admin = s.admin();
    s.rt.block_on(async {
        activate(&admin, "kim", &s.rights("kim")).await.unwrap();
        activate(&admin, "leo", &s.rights("leo")).await.unwrap();
        activate(&admin, HOSTILE, &s.rights("kim")).await.unwrap();
        // The hostile user has a session: it stays. Just activated users are left alone
        // by a sweep that lets activations settle.
        let _session = s.connect(HOSTILE).await.expect("login");
        let rows = admin
            .query("SELECT * FROM dbward.sweep()", &[])
            .await
            .unwrap();
        let pending: Vec<String> = rows.iter().map(|r| r.get::<_, String>(2)).collect();
        assert_eq!(pending, ["pending", "pending"]);
        let rows = admin
            .query("SELECT * FROM dbward.sweep('0 seconds') ORDER BY 1", &[])
            .await
            .unwrap();
        let swept: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(
            swept,
            [
                ("kim".into(), "keep".into(), "deactivated".into()),
                ("leo".into(), "best-effort-drop".into(), "dropped".into())
            ]
        );
        let again = admin
            .query("SELECT * FROM dbward.sweep('0 seconds')", &[])
            .await
            .unwrap();
        assert!(again.is_empty(), "a second sweep finds nothing");
    });
    assert_eq!(s.held("kim"), "nologin\nmember of dbward-auto-user");
    assert_eq!(s.held("leo"), "absent");
    assert!(s.held(HOSTILE).starts_with("login\n"));
}

#[test]
fn a_second_session_with_other_rights_is_refused() {
    let s = Setup::new();
    let admin = s.admin();
    let kim = s.rights("kim");
    s.rt.block_on(async {
        activate(&admin, "kim", &kim).await.unwrap();
        let _open = s.connect("kim").await.expect("login");
        assert_eq!(activate(&admin, "kim", &kim).await.unwrap(), "activated");
        let changed = Rights {
            mode: "keep",
            roles: vec!["writer".into()],
            grants: "[]".into(),
        };
        let error = activate(&admin, "kim", &changed).await.unwrap_err();
        assert_eq!(code(&error), "WD003");
    });
    assert_eq!(
        s.held("kim"),
        "login\nINSERT on items\nmember of dbward-auto-user\nmember of reader",
        "the open session keeps its rights"
    );
}

#[test]
fn setup_sql_reruns_change_nothing_and_leave_provisioned_users_alone() {
    let s = Setup::new();
    let admin = s.admin();
    s.rt.block_on(activate(&admin, "kim", &s.rights("kim")))
        .unwrap();
    let snapshot = || {
        s.query(
            "SELECT string_agg(line, E'\\n' ORDER BY line) FROM ( \
               SELECT p.oid::regprocedure || ' ' || pg_get_userbyid(p.proowner) || ' ' \
                 || coalesce(p.proacl::text, '') || ' ' || md5(p.prosrc) AS line \
               FROM pg_proc p WHERE p.pronamespace = 'dbward'::regnamespace \
               UNION ALL SELECT 'schema ' || nspname || ' ' || pg_get_userbyid(nspowner) || ' ' \
                 || coalesce(nspacl::text, '') FROM pg_namespace WHERE nspname = 'dbward' \
               UNION ALL SELECT 'relation ' || oid::regclass || ' ' || coalesce(relacl::text, '') \
                 FROM pg_class WHERE relnamespace IN ('public'::regnamespace, 'dbward'::regnamespace) \
               UNION ALL SELECT 'role ' || rolname || ' ' || rolcanlogin || rolcreaterole FROM pg_roles \
               UNION ALL SELECT 'member ' || roleid::regrole || ' ' || member::regrole || ' ' || admin_option \
                 FROM pg_auth_members \
               UNION ALL SELECT 'database ' || datacl::text FROM pg_database WHERE datname = 'shop' \
             ) lines",
        )
    };
    let before = snapshot();
    assert!(
        before.contains(
            r#"activate(text,text,text[],jsonb) dbward-admin {"\"dbward-admin\"=X/\"dbward-admin\""}"#
        ),
        "owned by the admin user, EXECUTE for nobody else: {before}"
    );
    // The rerun executes nothing: not a grant, not a function replaced.
    let (_, stderr) = s
        .cluster
        .peer_sql_file_output("shop", &s.out.join("databases/shop/setup.sql"))
        .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));
    assert_eq!(
        dbward_tests::change_notices(&stderr),
        Vec::<String>::new(),
        "{stderr}"
    );
    assert_eq!(snapshot(), before);

    // A function replaced by hand and opened to everyone: both are drift, and converged.
    superuser_sql(
        &s.cluster,
        "shop",
        "CREATE OR REPLACE FUNCTION dbward.sessions(person text) RETURNS integer \
         LANGUAGE sql AS 'SELECT 0'; GRANT EXECUTE ON FUNCTION dbward.sweep(interval) TO PUBLIC;",
    );
    let (_, stderr) = s
        .cluster
        .peer_sql_file_output("shop", &s.out.join("databases/shop/setup.sql"))
        .unwrap_or_else(|e| panic!("setup.sql failed: {e}"));
    assert_eq!(
        dbward_tests::change_notices(&stderr),
        [
            "REVOKE ALL ON FUNCTION dbward.sweep(interval) FROM PUBLIC",
            "CREATE OR REPLACE FUNCTION dbward.sessions(text) -- the source as in setup.sql",
        ],
        "{stderr}"
    );
    assert_eq!(snapshot(), before);
    assert_eq!(
        s.held("kim"),
        "login\nINSERT on items\nmember of dbward-auto-user\nmember of reader"
    );
    // Nobody but the admin user may call the functions.
    let error =
        s.rt.block_on(async {
            s.connect("kim")
                .await
                .unwrap()
                .query("SELECT dbward.sweep()", &[])
                .await
        })
        .unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
}

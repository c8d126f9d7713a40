//! Automatic user provisioning through the relay, end to end: a real PostgreSQL with the
//! `dbward` functions setup.sql installs, the relay (in-process, or the real `dbward-relay`
//! binary where a process must die), real psql and tokio-postgres. Covers `keep` and
//! `best-effort-drop`, a second session, a hand-made role, rights changed on reload, the sweep
//! (at start, and after a `kill -9`), warm admin connections, two relays on one database, a
//! hostile person name, a refused admin user and cancel. RDS provisioning is in `rds`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dbward_relay::audit::AuditSink;
use dbward_relay::metrics::Metrics;
use dbward_relay::state::Shared;
use dbward_tests::{Cluster, free_port, superuser_query, superuser_sql, wait_for, workspace_bin};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::relay::{Deployment, PUBLIC_NAME, apply, connect};

/// People whose database users the relay provisions on `shop`: kim keeps hers (stripped and
/// locked after each session), leo's is dropped, pat's name is taken by a hand-made role.
const PROVISIONED: &str = r#"role analyst {
    provision keep
    allow {
        databases shop
        db-names shop
        db-roles reader
    }
}
role loader {
    provision best-effort-drop
    allow {
        databases shop
        db-names shop
        db-roles reader
        permission CREATE on=schema schema=public
    }
}
user kim {
    roles analyst
}
user leo {
    roles loader
}
user pat {
    roles analyst
}
"#;

/// One row of facts about a role, as the superuser sees them: `LOGIN|member of reader|member
/// of dbward-auto-user`, or `absent`.
fn role_facts(cluster: &Cluster, role: &str) -> String {
    superuser_query(
        cluster,
        "shop",
        &format!(
            "SELECT coalesce((SELECT concat_ws('|', rolcanlogin, \
               pg_has_role(oid, 'reader', 'MEMBER'), pg_has_role(oid, 'dbward-auto-user', 'MEMBER')) \
               FROM pg_roles WHERE rolname = '{role}'), 'absent');"
        ),
    )
}

#[test]
fn provisioned_users_are_activated_for_the_session_and_retired_after() {
    let d = Deployment::start_extra(PROVISIONED, |_| {});
    let shop = format!("shop.{PUBLIC_NAME}");
    let kim = d.issue("kim", "1h");
    let leo = d.issue("leo", "1h");
    superuser_sql(
        &d.cluster,
        "shop",
        "CREATE TABLE items (id int); INSERT INTO items VALUES (1);",
    );
    assert_eq!(role_facts(&d.cluster, "kim"), "absent");

    // keep: during the session, kim logs in as herself with exactly the reader role.
    let (client, _) = d
        .block(d.connect(&kim, "kim", "shop"))
        .expect("kim connects");
    let row = d
        .block(client.query_one("SELECT current_user::text, count(*) FROM items", &[]))
        .expect("kim reads items through reader");
    assert_eq!(row.get::<_, String>(0), "kim");
    assert_eq!(role_facts(&d.cluster, "kim"), "t|t|t");
    let err = d
        .block(client.simple_query("INSERT INTO items VALUES (2)"))
        .expect_err("reader cannot write");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    // A second session of kim's; closing the first leaves it working, with its rights.
    let (second, _) = d
        .block(d.connect(&kim, "kim", "shop"))
        .expect("kim's second session");
    drop(client);
    wait_for(Duration::from_secs(10), || {
        d.audit()
            .iter()
            .any(|e| e["event"] == "user.deprovisioned")
            .then_some(())
    })
    .expect("the first session's end was handled");
    let row = d
        .block(second.query_one("SELECT count(*) FROM items", &[]))
        .expect("the second session still reads items");
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(role_facts(&d.cluster, "kim"), "t|t|t");
    let in_use = d.last_event("user.deprovisioned");
    assert_eq!(in_use["outcome"], "in-use", "{in_use}");
    drop(second);
    // After the session: stripped and locked, still a member of dbward-auto-user.
    let facts = wait_for(Duration::from_secs(20), || {
        let facts = role_facts(&d.cluster, "kim");
        (facts == "f|f|t").then_some(facts)
    });
    assert_eq!(
        facts.as_deref(),
        Some("f|f|t"),
        "{}",
        role_facts(&d.cluster, "kim")
    );
    let provisioned: Vec<Value> = d
        .audit()
        .into_iter()
        .filter(|e| e["event"] == "user.provisioned")
        .collect();
    assert_eq!(provisioned[0]["outcome"], "created", "{provisioned:?}");
    assert_eq!(provisioned[1]["outcome"], "activated", "{provisioned:?}");
    let provisioned = &provisioned[0];
    assert_eq!(provisioned["mode"], "keep");
    assert_eq!(provisioned["roles"], serde_json::json!(["reader"]));
    let retired = d.last_event("user.deprovisioned");
    assert_eq!(retired["outcome"], "deactivated", "{retired}");
    let mut metrics = String::new();
    d.shared.metrics.render(&mut metrics);
    assert!(
        metrics.contains("dbward_provision_activate_seconds_count 2"),
        "{metrics}"
    );

    // The next session re-enables the same user; psql works too.
    let out = d
        .psql(
            &d.conninfo(&shop, Some(&kim), "kim", "shop"),
            "SELECT current_user || ':' || count(*) FROM items",
        )
        .unwrap_or_else(|e| panic!("kim's second session: {e}"));
    assert_eq!(out, "kim:1");

    // best-effort-drop: the user exists during the session and is gone after it.
    let out = d
        .psql(
            &d.conninfo(&shop, Some(&leo), "leo", "shop"),
            "SELECT current_user::text",
        )
        .unwrap_or_else(|e| panic!("leo's session: {e}"));
    assert_eq!(out, "leo");
    let gone = wait_for(Duration::from_secs(20), || {
        (role_facts(&d.cluster, "leo") == "absent").then_some(())
    });
    assert!(
        gone.is_some(),
        "leo was not dropped: {}",
        role_facts(&d.cluster, "leo")
    );

    // A table leo created keeps the user: stripped and locked, reused by the next session.
    d.psql(
        &d.conninfo(&shop, Some(&leo), "leo", "shop"),
        "CREATE TABLE leos (id int)",
    )
    .unwrap_or_else(|e| panic!("leo creates a table: {e}"));
    let locked = wait_for(Duration::from_secs(20), || {
        (role_facts(&d.cluster, "leo") == "f|f|t").then_some(())
    });
    assert!(
        locked.is_some(),
        "leo was not locked: {}",
        role_facts(&d.cluster, "leo")
    );
    let out = d
        .psql(
            &d.conninfo(&shop, Some(&leo), "leo", "shop"),
            "SELECT count(*) FROM leos",
        )
        .unwrap_or_else(|e| panic!("leo's user is reused: {e}"));
    assert_eq!(out, "0");
}

#[test]
fn provisioning_refuses_a_hand_made_role_and_leaves_it_untouched() {
    let d = Deployment::start_extra(PROVISIONED, |_| {});
    let shop = format!("shop.{PUBLIC_NAME}");
    let pat = d.issue("pat", "1h");
    superuser_sql(
        &d.cluster,
        "shop",
        "CREATE ROLE pat LOGIN CONNECTION LIMIT 3;",
    );
    let err = d
        .psql(&d.conninfo(&shop, Some(&pat), "pat", "shop"), "select 1")
        .expect_err("a hand-made role is never taken over");
    assert!(
        err.contains("cannot provision database user \"pat\""),
        "{err}"
    );
    assert!(err.contains("dbward leaves it untouched"), "{err}");
    assert!(err.contains("HINT:  rename or drop that role"), "{err}");
    assert_eq!(role_facts(&d.cluster, "pat"), "t|f|f");
    let limit = superuser_query(
        &d.cluster,
        "shop",
        "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'pat';",
    );
    assert_eq!(limit, "3");
    let denied = d.last_event("session.denied");
    assert_eq!(denied["reason"], "provision", "{denied}");
    let provisioned = d.last_event("user.provisioned");
    assert_eq!(provisioned["outcome"], "failed", "{provisioned}");
    let mut metrics = String::new();
    d.shared.metrics.render(&mut metrics);
    assert!(
        metrics.contains("dbward_sessions_denied_total{reason=\"provision\"} 1"),
        "{metrics}"
    );
}

/// What a relay killed mid-session leaves (a provisioned user still `LOGIN`, no session) is
/// retired by the sweep a relay runs when it starts.
#[test]
fn a_starting_relay_sweeps_users_left_active() {
    let d = Deployment::start_extra(PROVISIONED, |_| {});
    // kim's user as a killed relay leaves it: activated, and no session (activated a minute
    // ago, past the sweep's settling time).
    superuser_query(
        &d.cluster,
        "shop",
        "SELECT dbward.activate('kim', 'keep', '{reader}', '[]'); \
         UPDATE dbward.provisioned SET activated_at = now() - interval '1 minute';",
    );
    assert_eq!(role_facts(&d.cluster, "kim"), "t|t|t");

    // A relay (re)starts on the same config.
    let listener =
        d.rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .expect("bind");
    let shutdown = CancellationToken::new();
    d.rt.spawn(dbward_relay::run(
        listener,
        Arc::clone(&d.shared),
        shutdown.clone(),
    ));
    let swept = wait_for(Duration::from_secs(20), || {
        (role_facts(&d.cluster, "kim") == "f|f|t").then_some(())
    });
    shutdown.cancel();
    assert!(
        swept.is_some(),
        "kim was not swept: {}",
        role_facts(&d.cluster, "kim")
    );
    // Audited and counted: the sweep's own event, not a session's.
    let event = wait_for(Duration::from_secs(5), || {
        d.audit().into_iter().find(|e| {
            e["event"] == "user.deprovisioned" && e["reason"] == "sweep" && e["db_user"] == "kim"
        })
    })
    .expect("no user.deprovisioned event with reason sweep");
    assert_eq!(event["outcome"], "deactivated", "{event}");
    assert_eq!(event["mode"], "keep", "{event}");
    assert_eq!(event["database"], "shop", "{event}");
    assert!(
        metric(&d, "dbward_provision_swept_total{outcome=\"deactivated\"}") >= 1,
        "{}",
        metrics(&d)
    );
}

/// An admin user that cannot log in fails the session with a FATAL naming it.
#[test]
fn a_refused_admin_connection_fails_the_session_clearly() {
    let d = Deployment::start_extra(PROVISIONED, |_| {});
    let shop = format!("shop.{PUBLIC_NAME}");
    let kim = d.issue("kim", "1h");
    // The admin user can no longer log in, and its warm connections (the sweep at start left
    // one) are gone: the pool finds its connection broken and a new one is refused.
    superuser_sql(&d.cluster, "shop", "ALTER ROLE \"dbward-admin\" NOLOGIN;");
    superuser_query(
        &d.cluster,
        "shop",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE usename = 'dbward-admin'",
    );
    let err = d
        .psql(&d.conninfo(&shop, Some(&kim), "kim", "shop"), "select 1")
        .expect_err("no admin connection, no session");
    assert!(
        err.contains("FATAL:  cannot provision database user \"kim\": the admin user \"dbward-admin\" could not connect to database name \"shop\""),
        "{err}"
    );
    assert!(err.contains("not permitted to log in"), "{err}");
    assert!(
        err.contains("HINT:  check that the admin user \"dbward-admin\" can log in"),
        "{err}"
    );
    assert_eq!(role_facts(&d.cluster, "kim"), "absent");
    let denied = d.last_event("session.denied");
    assert_eq!(denied["reason"], "provision", "{denied}");
}

/// The rights of a provisioned person changed (SIGHUP) while a session of theirs is open: a new
/// session is refused with a message saying why, the open one keeps its rights, and once it
/// has ended the next session gets the new rights.
#[test]
fn a_provisioned_person_whose_rights_changed_must_close_old_sessions_first() {
    let d = Deployment::start_extra(PROVISIONED, |_| {});
    let shop = format!("shop.{PUBLIC_NAME}");
    let kim = d.issue("kim", "1h");
    let (client, _) = d
        .block(d.connect(&kim, "kim", "shop"))
        .expect("kim connects");
    let row = d
        .block(client.query_one("select has_schema_privilege('public', 'CREATE')", &[]))
        .expect("kim's rights");
    assert!(!row.get::<_, bool>(0), "analyst has no CREATE on public");

    let text = fs::read_to_string(d.manifest_path()).unwrap();
    let changed = text.replace(
        "user kim {\n    roles analyst\n}",
        "user kim {\n    roles loader\n}",
    );
    assert_ne!(text, changed);
    fs::write(d.manifest_path(), changed).unwrap();
    apply(&d.manifest_path(), &d.out());
    assert!(
        dbward_relay::ops::reload(&d.shared, &d.out().join("relay/frozen.json")),
        "the new config was not taken"
    );

    let err = d
        .psql(&d.conninfo(&shop, Some(&kim), "kim", "shop"), "select 1")
        .expect_err("other rights while an old session is open");
    assert!(
        err.contains("FATAL:  cannot provision database user \"kim\": database user kim has other open sessions with different rights"),
        "{err}"
    );
    assert!(err.contains("HINT:  close the other sessions"), "{err}");
    let row = d
        .block(client.query_one("SELECT current_user::text", &[]))
        .expect("the open session goes on");
    assert_eq!(row.get::<_, String>(0), "kim");
    drop(client);

    // Once it has ended, the new rights apply (best-effort-drop: dropped after the session).
    let dropped = wait_for(Duration::from_secs(20), || {
        d.psql(
            &d.conninfo(&shop, Some(&kim), "kim", "shop"),
            "select current_user",
        )
        .ok()
    });
    assert_eq!(dropped.as_deref(), Some("kim"));
    // The new rights are loader's: CREATE on schema public, which analyst did not have.
    let gone = wait_for(Duration::from_secs(20), || {
        (role_facts(&d.cluster, "kim") == "absent").then_some(())
    });
    assert!(gone.is_some(), "{}", role_facts(&d.cluster, "kim"));
    let create = d
        .psql(
            &d.conninfo(&shop, Some(&kim), "kim", "shop"),
            "select has_schema_privilege('public', 'CREATE')",
        )
        .unwrap_or_else(|e| panic!("kim's session with the new rights: {e}"));
    assert_eq!(create, "t");
    let gone = wait_for(Duration::from_secs(20), || {
        (role_facts(&d.cluster, "kim") == "absent").then_some(())
    });
    assert!(
        gone.is_some(),
        "kim was not dropped: {}",
        role_facts(&d.cluster, "kim")
    );
}

/// Cancel works for a provisioned session as for any other.
#[test]
fn cancel_works_for_a_provisioned_session() {
    let d = Deployment::start_extra(PROVISIONED, |_| {});
    let kim = d.issue("kim", "1h");
    d.block(async {
        let (client, tls) = d.connect(&kim, "kim", "shop").await.expect("kim connects");
        let token = client.cancel_token();
        let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(60)").await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tls).await.expect("send cancel");
        let result = tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("query still running 5 s after cancel")
            .unwrap();
        let err = result.expect_err("the query was cancelled");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            "{err:?}"
        );
    });
}

/// The relay's metrics, as `/metrics` shows them.
fn metrics(d: &Deployment) -> String {
    let mut text = String::new();
    d.shared.metrics.render(&mut text);
    text
}

/// The value of one metric sample (`name{labels}` as written), 0 when absent.
fn metric(d: &Deployment, sample: &str) -> u64 {
    metrics(d)
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// How many `user.deprovisioned` events sessions (not the sweep) produced in `events`.
fn retirements(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == "user.deprovisioned" && e["reason"].is_null())
        .count()
}

/// Activation and retirement reuse one warm admin connection: after the first session, five
/// more open no admin connection, and the same admin backend serves them all.
#[test]
fn admin_connections_are_kept_warm_and_reused() {
    let d = Deployment::start_extra(PROVISIONED, |_| {});
    let shop = format!("shop.{PUBLIC_NAME}");
    let kim = d.issue("kim", "1h");
    let admin_backends = || {
        superuser_query(
            &d.cluster,
            "shop",
            "SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '') FROM pg_stat_activity \
             WHERE usename = 'dbward-admin' AND application_name = 'dbward-relay'",
        )
    };
    let session = |n: usize| {
        let out = d
            .psql(
                &d.conninfo(&shop, Some(&kim), "kim", "shop"),
                "select current_user",
            )
            .unwrap_or_else(|e| panic!("kim's session {n}: {e}"));
        assert_eq!(out, "kim");
        // Retired before the next one starts, so that no two calls need a connection at once.
        wait_for(Duration::from_secs(20), || {
            (retirements(&d.audit()) >= n).then_some(())
        })
        .unwrap_or_else(|| panic!("session {n} was not retired"));
    };
    session(1);
    let backends = admin_backends();
    assert!(
        !backends.is_empty() && !backends.contains(','),
        "one warm admin backend: {backends:?}"
    );
    let opened = metric(&d, "dbward_provision_admin_connections_opened_total");
    assert!(opened >= 1, "{}", metrics(&d));
    for n in 2..=6 {
        session(n);
    }
    assert_eq!(
        admin_backends(),
        backends,
        "the same admin backend served every call"
    );
    assert_eq!(
        metric(&d, "dbward_provision_admin_connections_opened_total"),
        opened,
        "no admin connection was opened after the first session"
    );
    let outcomes: Vec<Value> = d
        .audit()
        .into_iter()
        .filter(|e| e["event"] == "user.deprovisioned")
        .map(|e| e["outcome"].clone())
        .collect();
    assert!(outcomes.iter().all(|o| o == "deactivated"), "{outcomes:?}");
    // A reload builds new targets: the warm connection of the old config is not reused.
    assert!(
        dbward_relay::ops::reload(&d.shared, &d.out().join("relay/frozen.json")),
        "reload"
    );
    session(7);
    assert_eq!(
        metric(&d, "dbward_provision_admin_connections_opened_total"),
        opened + 1,
        "{}",
        metrics(&d)
    );
}

/// A second relay on the same frozen config and database (its own process state, its own
/// port), as another replica would be.
struct Replica {
    port: u16,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    audit: PathBuf,
}

impl Replica {
    fn start(d: &Deployment) -> Replica {
        let audit = d.dir.path().join("audit-replica.jsonl");
        let loaded = dbward_relay::config::load(&d.out().join("relay/frozen.json"))
            .expect("load the config");
        let sink = AuditSink::start(
            Some(audit.clone()),
            dbward_relay::replica::ReplicaId::parse("test").unwrap(),
        )
        .expect("open audit log");
        let shared = Arc::new(Shared::new(loaded, sink, Metrics::new()));
        let listener =
            d.rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
                .expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let shutdown = CancellationToken::new();
        d.rt.spawn(dbward_relay::run(
            listener,
            Arc::clone(&shared),
            shutdown.clone(),
        ));
        Replica {
            port,
            shared,
            shutdown,
            audit,
        }
    }

    fn audit(&self) -> Vec<Value> {
        self.shared.audit.flush();
        fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("audit line is JSON"))
            .collect()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Two relays on one database, one session of kim's on each, opened at the same instant: both
/// work (the advisory lock serializes the activations), the user stays active until the last
/// session on either relay has ended (counted in pg_stat_activity), and then it is retired.
#[test]
fn two_relays_share_one_provisioned_user() {
    let d = Deployment::start_extra(PROVISIONED, |_| {});
    let replica = Replica::start(&d);
    let kim = d.issue("kim", "1h");
    let out = d.out();
    for round in 1..=3 {
        let (first, second) = d.block(async {
            tokio::join!(
                connect(d.relay_port, &out, &kim, "kim", "shop"),
                connect(replica.port, &out, &kim, "kim", "shop"),
            )
        });
        let (first, _) = first.unwrap_or_else(|e| panic!("round {round}, relay 1: {e}"));
        let (second, _) = second.unwrap_or_else(|e| panic!("round {round}, relay 2: {e}"));
        for client in [&first, &second] {
            let row = d
                .block(client.query_one("SELECT current_user::text", &[]))
                .expect("kim's session works");
            assert_eq!(row.get::<_, String>(0), "kim");
        }
        assert_eq!(role_facts(&d.cluster, "kim"), "t|t|t");

        // The first relay's session ends; the other relay's session keeps the user.
        drop(first);
        let in_use = wait_for(Duration::from_secs(20), || {
            let events = d.audit();
            (retirements(&events) >= round).then(|| {
                events
                    .into_iter()
                    .rev()
                    .find(|e| e["event"] == "user.deprovisioned")
                    .unwrap()
            })
        })
        .expect("relay 1 handled its session's end");
        assert_eq!(in_use["outcome"], "in-use", "round {round}: {in_use}");
        assert_eq!(role_facts(&d.cluster, "kim"), "t|t|t");
        let row = d
            .block(second.query_one("SELECT count(*) FROM pg_class", &[]))
            .expect("the session on relay 2 goes on");
        assert!(row.get::<_, i64>(0) > 0);

        // The last session ends: retired by the relay it ran on.
        drop(second);
        let retired = wait_for(Duration::from_secs(20), || {
            (role_facts(&d.cluster, "kim") == "f|f|t").then_some(())
        });
        assert!(retired.is_some(), "{}", role_facts(&d.cluster, "kim"));
        let event = wait_for(Duration::from_secs(5), || {
            let events = replica.audit();
            (retirements(&events) >= round).then(|| {
                events
                    .into_iter()
                    .rev()
                    .find(|e| e["event"] == "user.deprovisioned")
                    .unwrap()
            })
        })
        .expect("relay 2 handled its session's end");
        assert_eq!(event["outcome"], "deactivated", "round {round}: {event}");
    }
    // No error anywhere: every activation and retirement succeeded, nothing was refused.
    for events in [d.audit(), replica.audit()] {
        assert!(
            !events
                .iter()
                .any(|e| e["outcome"] == "failed" || e["event"] == "session.denied"),
            "{events:?}"
        );
        let provisioned = events
            .iter()
            .filter(|e| e["event"] == "user.provisioned")
            .count();
        assert_eq!(provisioned, 3, "{events:?}");
    }
}

/// The real `dbward-relay` binary, killed on drop.
struct Binary {
    child: Child,
    log: PathBuf,
}

impl Binary {
    /// Starts `dbward-relay --config config` and waits until `port` accepts connections.
    fn start(config: &Path, port: u16, log: PathBuf) -> Binary {
        let child = Command::new(workspace_bin("dbward-relay"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("relay log"))
            .spawn()
            .expect("start dbward-relay");
        let mut binary = Binary { child, log };
        let up = wait_for(Duration::from_secs(20), || {
            if let Ok(Some(status)) = binary.child.try_wait() {
                panic!("the relay exited with {status}:\n{}", binary.log());
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        assert!(up.is_some(), "the relay did not listen:\n{}", binary.log());
        binary
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no shutdown, no retirement.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the relay");
        self.child.wait().expect("reap the relay");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The deployment's frozen config, listening on `port` instead (so that the real binary can
/// run next to the in-process relay), written next to the original; returns its path.
fn frozen_on_port(d: &Deployment, port: u16) -> PathBuf {
    let path = d.out().join("relay/frozen.json");
    let text = fs::read_to_string(&path).expect("read frozen.json");
    let mut config = dbward_frozen::Config::from_json(&path, &text).expect("parse frozen.json");
    config.relay.listen = format!("127.0.0.1:{port}");
    config.seal();
    let copy = d.out().join("relay/frozen-binary.json");
    fs::write(&copy, config.to_json()).expect("write the config copy");
    copy
}

/// `kill -9` of the real relay mid-session leaves kim's user active; the restarted relay's
/// sweep retires it (audited with reason `sweep`).
#[test]
fn a_relay_killed_mid_session_is_swept_after_restart() {
    let d = Deployment::start_extra(PROVISIONED, |_| {});
    // Only the binary relay sweeps in this test.
    d.shutdown.cancel();
    let kim = d.issue("kim", "1h");
    let port = free_port();
    let config = frozen_on_port(&d, port);
    let mut relay = Binary::start(&config, port, d.dir.path().join("relay-1.log"));
    let (client, _) = d
        .block(connect(port, &d.out(), &kim, "kim", "shop"))
        .expect("kim connects through the binary");
    let row = d
        .block(client.query_one("SELECT current_user::text", &[]))
        .expect("kim's session works");
    assert_eq!(row.get::<_, String>(0), "kim");

    relay.kill();
    drop(client);
    // The session's backend ends with the relay's socket; the user stays as the relay left it.
    let ended = wait_for(Duration::from_secs(20), || {
        (superuser_query(
            &d.cluster,
            "shop",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'kim'",
        ) == "0")
            .then_some(())
    });
    assert!(ended.is_some(), "kim's backend outlived the relay");
    assert_eq!(role_facts(&d.cluster, "kim"), "t|t|t");
    // Past the sweep's settling time (an activation this recent may be a session connecting).
    superuser_sql(
        &d.cluster,
        "shop",
        "UPDATE dbward.provisioned SET activated_at = now() - interval '1 minute';",
    );

    let relay = Binary::start(&config, port, d.dir.path().join("relay-2.log"));
    let swept = wait_for(Duration::from_secs(20), || {
        (role_facts(&d.cluster, "kim") == "f|f|t").then_some(())
    });
    assert!(
        swept.is_some(),
        "kim was not swept: {}\n{}",
        role_facts(&d.cluster, "kim"),
        relay.log()
    );
    let event = wait_for(Duration::from_secs(10), || {
        let text = fs::read_to_string(d.dir.path().join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str::<Value>(line).expect("audit line is JSON"))
            .find(|e| e["event"] == "user.deprovisioned" && e["reason"] == "sweep")
    })
    .unwrap_or_else(|| panic!("no sweep audit event:\n{}", relay.log()));
    assert_eq!(event["db_user"], "kim", "{event}");
    assert_eq!(event["outcome"], "deactivated", "{event}");
    assert!(
        relay
            .log()
            .contains("sweep: provisioned user without a session"),
        "{}",
        relay.log()
    );
}

/// A person name with a quote, spaces and a backslash, exactly 63 bytes (PostgreSQL's limit):
/// the relay creates that exact user and drops it after the session. One byte more is refused
/// by the compiler, since PostgreSQL would silently truncate it.
#[test]
fn a_hostile_person_name_is_created_and_dropped_exactly() {
    let mut name = String::from("o'brien x\\y; drop role kim; --");
    while name.len() < 63 {
        name.push('z');
    }
    assert_eq!(name.len(), 63);
    let kdl_name = name.replace('\\', "\\\\");
    let extra = format!("{PROVISIONED}user \"{kdl_name}\" {{\n    roles loader\n}}\n");
    let d = Deployment::start_extra(&extra, |_| {});
    let certs = d.issue(&name, "1h");
    let exists = || {
        superuser_query(
            &d.cluster,
            "shop",
            &format!(
                "SELECT count(*) FROM pg_roles WHERE rolname = $n${name}$n$ \
                 AND pg_has_role(oid, 'dbward-auto-user', 'MEMBER')"
            ),
        )
    };
    assert_eq!(exists(), "0");
    let (client, _) = d
        .block(d.connect(&certs, &name, "shop"))
        .expect("the hostile name connects");
    let row = d
        .block(client.query_one("SELECT current_user::text", &[]))
        .expect("current_user");
    assert_eq!(row.get::<_, String>(0), name);
    assert_eq!(exists(), "1");
    // Nothing else was made of it (no truncated or unquoted variant).
    let others = superuser_query(
        &d.cluster,
        "shop",
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'o%brien%'",
    );
    assert_eq!(others, "1");
    assert_eq!(role_facts(&d.cluster, "kim"), "absent");
    drop(client);
    let dropped = wait_for(Duration::from_secs(20), || (exists() == "0").then_some(()));
    assert!(dropped.is_some(), "the user was not dropped");
    let event = d.last_event("user.deprovisioned");
    assert_eq!(event["outcome"], "dropped", "{event}");
    assert_eq!(event["db_user"], name.as_str(), "{event}");

    // 64 bytes: refused before anything is generated.
    let long = format!("{name}z");
    let manifest = d.dir.path().join("too-long.kdl");
    let text = fs::read_to_string(d.manifest_path()).unwrap();
    fs::write(
        &manifest,
        format!(
            "{text}user \"{}\" {{\n    roles loader\n}}\n",
            long.replace('\\', "\\\\")
        ),
    )
    .unwrap();
    let out = Command::new(workspace_bin("dbward"))
        .arg("check")
        .arg(&manifest)
        .output()
        .expect("run dbward check");
    let stderr =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("dbward::name_too_long"), "{stderr}");
    assert!(stderr.contains("is 64 bytes long"), "{stderr}");
    assert!(stderr.contains("silently truncate"), "{stderr}");
}

/// Sessions of one person back to back, each opened as the previous one closes (what `pgbench
/// -C` or a reconnecting client does): the retirement of the ending session never takes the
/// user away from the one starting, on either mode.
#[test]
fn back_to_back_sessions_of_one_person_all_succeed() {
    let d = Deployment::start_extra(PROVISIONED, |_| {});
    for person in ["kim", "leo"] {
        let certs = d.issue(person, "1h");
        let out = d.out();
        d.block(async {
            for n in 0..40 {
                let (client, _) = connect(d.relay_port, &out, &certs, person, "shop")
                    .await
                    .unwrap_or_else(|e| panic!("{person}'s session {n}: {e:?}"));
                client
                    .simple_query("select 1")
                    .await
                    .unwrap_or_else(|e| panic!("{person}'s session {n}: {e:?}"));
                drop(client);
            }
        });
    }
}

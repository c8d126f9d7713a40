//! What the hosts must do after an apply, from the changes it wrote: which self-hosted
//! PostgreSQL must reload (pg_hba.conf, pg_ident.conf, certificates) or restart (a setting
//! PostgreSQL reads only at start, such as `hba_file`), where setup.sql must run, and whether
//! the relay must reload. Printed by `dbward apply` after it wrote the files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::{Action, Plan};

/// Settings dbward may write to a postgresql.conf snippet that PostgreSQL reads only when it
/// starts (`context = postmaster` in `pg_settings`); every other one takes a reload.
const RESTART_SETTINGS: &[&str] = &[
    "hba_file",
    "ident_file",
    "listen_addresses",
    "port",
    "shared_preload_libraries",
];

/// Files of a self-hosted server that a reload picks up.
const RELOAD_FILES: &[&str] = &[
    "pg_hba.conf",
    "pg_ident.conf",
    "server.crt",
    "server.key",
    "client-ca.crt",
];

#[derive(Default)]
struct Host<'a> {
    reload: Vec<&'a str>,
    restart: Vec<String>,
    setup: bool,
}

/// The steps left to the hosts after `plan` was written under `out` (as the user wrote it);
/// empty when there are none. `self_hosted` names the databases with an `install.sh`; `live`
/// is whether setup.sql already ran (`apply --live`).
pub fn after_apply(plan: &Plan, out: &str, self_hosted: &BTreeSet<String>, live: bool) -> String {
    let mut hosts: BTreeMap<&str, Host> = BTreeMap::new();
    let mut relay = false;
    for change in &plan.changes {
        if change.path.starts_with("relay/") {
            relay = true;
            continue;
        }
        let Some((database, file)) = change
            .path
            .strip_prefix("databases/")
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        let host = hosts.entry(database).or_default();
        match file {
            "setup.sql" => host.setup = change.action != Action::Remove,
            "postgresql.conf" => {
                let before = change.before.as_ref().map(|v| settings(&v.bytes));
                let after = change.after.as_ref().map(|v| settings(&v.bytes));
                for name in RESTART_SETTINGS {
                    let old = before.as_ref().and_then(|s| s.get(*name));
                    let new = after.as_ref().and_then(|s| s.get(*name));
                    if old != new {
                        host.restart.push((*name).to_owned());
                    }
                }
                host.reload.push("postgresql.conf");
            }
            file if RELOAD_FILES.contains(&file) => host.reload.push(file),
            _ => {}
        }
    }
    let mut text = String::new();
    for (database, host) in &hosts {
        let setup = host.setup && !live;
        if host.reload.is_empty() && host.restart.is_empty() && !setup {
            continue;
        }
        let mut what = Vec::new();
        if !host.restart.is_empty() {
            what.push(format!(
                "PostgreSQL must restart: {} changed",
                host.restart.join(", ")
            ));
        } else if !host.reload.is_empty() {
            what.push(format!(
                "PostgreSQL must reload, SELECT pg_reload_conf(): {} changed",
                host.reload.join(", ")
            ));
        }
        if setup {
            what.push("setup.sql must run in each database name".to_owned());
        }
        let how = if self_hosted.contains(*database) {
            format!("on its host, as root: sudo sh {out}/databases/{database}/install.sh")
        } else {
            format!(
                "run {out}/databases/{database}/setup.sql as its admin user, or `dbward apply \
                 --live`"
            )
        };
        let _ = writeln!(text, "  {database}: {how}\n      ({})", what.join("; "));
    }
    if relay {
        let _ = writeln!(
            text,
            "  dbward-relay: reload it to use the new config: systemctl reload dbward-relay, or\n      \
             kill -HUP its pid (a config that does not load is refused; the old one stays)"
        );
    }
    if text.is_empty() {
        text
    } else {
        format!("\nNext steps:\n{text}")
    }
}

/// `name = value` lines of a postgresql.conf, comments dropped, the last one winning.
fn settings(bytes: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (name, value) = line.split_once('=')?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Change, FileVersion, State};

    fn change(path: &str, before: Option<&str>, after: Option<&str>) -> Change {
        let version = |t: &str| FileVersion {
            bytes: t.as_bytes().to_vec(),
            mode: 0o644,
        };
        Change {
            path: path.into(),
            action: match (before, after) {
                (None, _) => Action::Add,
                (_, None) => Action::Remove,
                _ => Action::Change,
            },
            before: before.map(version),
            after: after.map(version),
            sensitive: false,
            drift: None,
        }
    }

    fn plan(changes: Vec<Change>) -> Plan {
        Plan {
            changes,
            state_outdated: false,
            next_state: State::default(),
            base_state: State::default(),
        }
    }

    #[test]
    fn a_new_hba_file_needs_a_restart_and_new_rules_a_reload() {
        let first = plan(vec![
            change("databases/shop/install.sh", None, Some("")),
            change(
                "databases/shop/postgresql.conf",
                None,
                Some("hba_file = 'x'\n"),
            ),
            change("databases/shop/setup.sql", None, Some("")),
            change("relay/frozen.json", None, Some("{}")),
        ]);
        let shop = BTreeSet::from(["shop".to_owned()]);
        let text = after_apply(&first, "out", &shop, false);
        assert!(
            text.contains(
                "  shop: on its host, as root: sudo sh out/databases/shop/install.sh\n      \
                 (PostgreSQL must restart: hba_file changed; setup.sql must run in each \
                 database name)\n"
            ),
            "{text}"
        );
        assert!(text.contains("dbward-relay: reload it"), "{text}");
        let rules = plan(vec![change(
            "databases/shop/pg_hba.conf",
            Some("a"),
            Some("b"),
        )]);
        let text = after_apply(&rules, "out", &shop, false);
        assert!(
            text.contains(
                "(PostgreSQL must reload, SELECT pg_reload_conf(): pg_hba.conf changed)\n"
            ),
            "{text}"
        );
        assert!(!text.contains("dbward-relay"), "{text}");
        let comment_only = plan(vec![change(
            "databases/shop/postgresql.conf",
            Some("# a\nhba_file = 'x'\n"),
            Some("# b\nhba_file = 'x'\n"),
        )]);
        assert!(!after_apply(&comment_only, "out", &shop, false).contains("restart"));
    }

    #[test]
    fn setup_sql_of_a_cloud_database_is_left_to_its_admin_unless_live_ran_it() {
        let cloud = plan(vec![change(
            "databases/orders/setup.sql",
            Some("a"),
            Some("b"),
        )]);
        let none = BTreeSet::new();
        let text = after_apply(&cloud, "/o", &none, false);
        assert!(
            text.contains(
                "  orders: run /o/databases/orders/setup.sql as its admin user, or `dbward \
                 apply --live`\n      (setup.sql must run in each database name)\n"
            ),
            "{text}"
        );
        assert_eq!(after_apply(&cloud, "/o", &none, true), "");
        assert_eq!(after_apply(&plan(vec![]), "/o", &none, false), "");
    }
}

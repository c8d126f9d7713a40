//! The access table explained (`dbward explain`): who can reach which database, as which
//! database user, with what provisioning — and why, so a reviewer sees the effect of a change.
//!
//! [`explain`] turns a [`Model`] into an [`Explanation`]: one [`Entry`] per (person, database)
//! from [`Model::access`], plus the pairs an `allow` matched but nothing was left of
//! ([`Blocked`], usually a `deny`), and the people who reach nothing at all. The explanation
//! renders as a table for people ([`Explanation::render`]) and as a stable JSON document for
//! tools ([`Explanation::to_json`], format `"dbward-explain/1"`).
//!
//! Nothing here decides access: the entries are the model's access table as computed by
//! [`crate::model::access`]; this module only adds the "via which role" view.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde::Serialize;

use crate::model::access::RoleReach;
use crate::model::{Access, Grant, Model, NameSet, ObjectKind, Provision};

/// Restricts an explanation to one person and/or one database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub user: Option<String>,
    pub database: Option<String>,
}

/// Why an explanation could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("there is no user `{name}` in this manifest; {hint}")]
    UnknownUser { name: String, hint: String },
    #[error("there is no database `{name}` in this manifest; {hint}")]
    UnknownDatabase { name: String, hint: String },
}

/// What one person may do on one database. Names are borrowed from the [`Model`]: an
/// unfiltered explanation has an entry per access entry (124,000 for 1,000 databases and
/// 5,000 people), and copying their names cost more than the rest of the explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry<'m> {
    pub user: &'m str,
    pub database: &'m str,
    /// The person's roles with an `allow` that selects this database.
    pub via: Vec<&'m str>,
    /// Declared database users the person may log in as.
    pub db_users: Vec<&'m str>,
    /// The user the relay creates for the person (their own name) when provisioning is on.
    pub provisioned_user: Option<&'m str>,
    pub provision: Provision,
    /// Database names the person may open: `"*"` or a list.
    pub db_names: Names<'m>,
    /// db-roles granted to the provisioned user.
    pub db_roles: Vec<&'m str>,
    /// Permissions granted to the provisioned user.
    pub permissions: Vec<Permission<'m>>,
}

/// A (person, database) pair some `allow` selected, but where nothing is left to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked<'m> {
    pub user: &'m str,
    pub database: &'m str,
    /// The roles whose `allow` selected the database.
    pub allowed_by: Vec<&'m str>,
    /// The roles whose `deny` selects the database (empty when nothing was denied and the
    /// allow simply names nothing the database has).
    pub denied_by: Vec<&'m str>,
}

/// `"*"` or explicit names, serialized as the string `"*"` or an array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Names<'m> {
    Any(&'static str),
    Only(&'m [String]),
}

impl<'m> Names<'m> {
    fn from_set(set: &'m NameSet) -> Names<'m> {
        match set {
            NameSet::Any => Names::Any("*"),
            NameSet::Only(names) => Names::Only(names),
        }
    }

    fn display(&self) -> Cow<'m, str> {
        match self {
            Names::Any(star) => Cow::Borrowed(star),
            Names::Only([one]) => Cow::Borrowed(one),
            Names::Only(names) => Cow::Owned(names.join(", ")),
        }
    }
}

/// One granted permission: `SELECT on table in schema public`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Permission<'m> {
    pub privileges: Vec<&'static str>,
    /// The `on=` keyword: `database`, `schema`, `table`, `all-tables`, …
    pub on: &'static str,
    pub schema: Option<&'m str>,
    pub object: Option<&'m str>,
}

impl<'m> Permission<'m> {
    fn from_grant(grant: &'m Grant) -> Permission<'m> {
        Permission {
            privileges: grant.privileges.iter().map(|p| p.sql()).collect(),
            on: object_kind(grant.on),
            schema: grant.schema.as_deref(),
            object: grant.object.as_deref(),
        }
    }

    fn display(&self) -> String {
        let mut text = format!("{} on {}", self.privileges.join(" "), self.on);
        if let Some(object) = &self.object {
            text.push_str(&format!(" {object}"));
        }
        if let Some(schema) = &self.schema {
            text.push_str(&format!(" in schema {schema}"));
        }
        text
    }
}

/// The manifest keyword of an object kind.
pub fn object_kind(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Database => "database",
        ObjectKind::Schema => "schema",
        ObjectKind::Table => "table",
        ObjectKind::AllTables => "all-tables",
        ObjectKind::Sequence => "sequence",
        ObjectKind::AllSequences => "all-sequences",
        ObjectKind::Function => "function",
        ObjectKind::AllFunctions => "all-functions",
    }
}

/// The manifest keyword of a provisioning mode.
pub fn provision_mode(mode: Provision) -> &'static str {
    match mode {
        Provision::Off => "off",
        Provision::Keep => "keep",
        Provision::BestEffortDrop => "best-effort-drop",
    }
}

/// The access table, filtered, with the "via" and "blocked" views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation<'m> {
    /// Always `"dbward-explain/1"`; bumped if the document's shape ever changes incompatibly.
    pub format: &'static str,
    pub filter: FilterJson,
    /// Sorted by person, then database.
    pub access: Vec<Entry<'m>>,
    /// Sorted by person, then database.
    pub blocked: Vec<Blocked<'m>>,
    /// People (within the filter) who can reach no database at all, sorted.
    pub users_without_access: Vec<&'m str>,
}

/// The filter as it appears in the JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilterJson {
    pub user: Option<String>,
    pub database: Option<String>,
}

/// Explains a model's access table, restricted by `filter`. Unknown names in the filter are
/// errors with a "did you mean".
pub fn explain<'m>(model: &'m Model, filter: &Filter) -> Result<Explanation<'m>, ExplainError> {
    if let Some(name) = &filter.user
        && !model.users.contains_key(name)
    {
        return Err(ExplainError::UnknownUser {
            name: name.clone(),
            hint: hint(name, model.users.keys(), "users"),
        });
    }
    if let Some(name) = &filter.database
        && !model.databases.contains_key(name)
    {
        return Err(ExplainError::UnknownDatabase {
            name: name.clone(),
            hint: hint(name, model.databases.keys(), "databases"),
        });
    }
    // Each person is visited only on the databases their roles' allow blocks select (as the
    // access table itself is computed): testing every selector of every role against every
    // database made an unfiltered explain of 1,000 databases and 5,000 people cost 4.5 checks.
    let reach = RoleReach::new(model);
    let only_db = filter.database.as_ref().map(|name| reach.position(name));
    let mut access = Vec::new();
    let mut blocked = Vec::new();
    let mut without = Vec::new();
    let users = model
        .users
        .iter()
        .filter(|(u, _)| filter.user.as_deref().is_none_or(|w| w == u.as_str()));
    for (user_name, user) in users {
        let mut reaches_any = false;
        let mut candidates = reach.candidates(user);
        if let Some(only) = only_db {
            candidates.retain(|&p| Some(p) == only);
        }
        // The person's entries are sorted by database, as the candidates are: walk both.
        let mut entries = model.access.of_user(user_name).peekable();
        for position in candidates {
            let Some(db_name) = reach.name(position) else {
                continue;
            };
            while entries.next_if(|e| e.database < db_name).is_some() {}
            match entries.next_if(|e| e.database == db_name) {
                Some(entry) => {
                    reaches_any = true;
                    let via = reach.selecting(user, position, false).collect();
                    access.push(describe(entry, via));
                }
                None => blocked.push(Blocked {
                    user: user_name,
                    database: db_name,
                    allowed_by: reach.selecting(user, position, false).collect(),
                    denied_by: reach.selecting(user, position, true).collect(),
                }),
            }
        }
        if !reaches_any {
            without.push(user_name.as_str());
        }
    }
    Ok(Explanation {
        format: "dbward-explain/1",
        filter: FilterJson {
            user: filter.user.clone(),
            database: filter.database.clone(),
        },
        access,
        blocked,
        users_without_access: without,
    })
}

fn describe<'m>(entry: Access<'m>, via: Vec<&'m str>) -> Entry<'m> {
    let rights = entry.rights;
    let provisioning = rights.provision != Provision::Off;
    Entry {
        user: entry.user,
        database: entry.database,
        via,
        db_users: rights.db_users.iter().map(String::as_str).collect(),
        provisioned_user: provisioning.then_some(entry.user),
        provision: rights.provision,
        db_names: Names::from_set(&rights.db_names),
        db_roles: rights.db_roles.iter().map(String::as_str).collect(),
        permissions: rights
            .permissions
            .iter()
            .map(Permission::from_grant)
            .collect(),
    }
}

/// "did you mean `alice`?" when a known name is close, and the list of known names.
fn hint<'a>(name: &str, known: impl Iterator<Item = &'a String>, what: &str) -> String {
    let known: BTreeSet<&String> = known.collect();
    let closest = known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let list: Vec<&str> = known.iter().map(|k| k.as_str()).collect();
    let list = if list.is_empty() {
        format!("it declares no {what}")
    } else {
        format!("its {what} are: {}", list.join(", "))
    };
    match closest {
        Some((_, k)) => format!("did you mean `{k}`? ({list})"),
        None => format!("check the spelling ({list})"),
    }
}

impl Explanation<'_> {
    /// The explanation as a table for people, one row per (person, database, login).
    pub fn render(&self) -> String {
        /// What an entry's rows share, computed once per entry (not per row).
        struct Shared<'a> {
            names: Cow<'a, str>,
            via: Cow<'a, str>,
            /// The provisioned user's login and what it is granted, when provisioning is on.
            provisioned: Option<(String, String)>,
        }
        const HEADER: [&str; 6] = [
            "USER",
            "DATABASE",
            "LOG IN AS",
            "DB NAMES",
            "VIA",
            "PROVISIONED USER GETS",
        ];
        let shared: Vec<Shared<'_>> = self
            .access
            .iter()
            .map(|entry| Shared {
                names: entry.db_names.display(),
                via: match entry.via.as_slice() {
                    [one] => Cow::Borrowed(*one),
                    all => Cow::Owned(all.join(", ")),
                },
                provisioned: entry.provisioned_user.as_ref().map(|user| {
                    let mut grants: Vec<String> = Vec::new();
                    if !entry.db_roles.is_empty() {
                        grants.push(format!("db-roles {}", entry.db_roles.join(", ")));
                    }
                    grants.extend(entry.permissions.iter().map(Permission::display));
                    if grants.is_empty() {
                        grants.push("no privileges".into());
                    }
                    (
                        format!("{user} (provisioned, {})", provision_mode(entry.provision)),
                        grants.join("; "),
                    )
                }),
            })
            .collect();
        // Every row of the table, as borrowed cells: first to size the columns, then to
        // write them (a table of 250,000 rows is not worth a copy of each cell).
        let rows = || {
            std::iter::once(HEADER).chain(self.access.iter().zip(&shared).flat_map(
                |(entry, shared)| {
                    let plain = entry.db_users.iter().map(move |login| {
                        [
                            entry.user,
                            entry.database,
                            *login,
                            &*shared.names,
                            &*shared.via,
                            "-",
                        ]
                    });
                    let provisioned = shared.provisioned.iter().map(move |(login, grants)| {
                        [
                            entry.user,
                            entry.database,
                            login.as_str(),
                            &*shared.names,
                            &*shared.via,
                            grants.as_str(),
                        ]
                    });
                    plain.chain(provisioned)
                },
            ))
        };
        let mut out = String::new();
        if self.access.is_empty() {
            out.push_str("nobody can reach anything");
            if let Some(user) = &self.filter.user {
                out.push_str(&format!(" as user {user}"));
            }
            if let Some(db) = &self.filter.database {
                out.push_str(&format!(" on database {db}"));
            }
            out.push('\n');
        } else {
            out.push_str(&table(rows));
        }
        if !self.blocked.is_empty() {
            out.push_str("\nselected by an allow, but nothing is left:\n");
            for b in &self.blocked {
                let why = if b.denied_by.is_empty() {
                    format!(
                        "the allow of {} names no db-user, db-name or provisioning this database has",
                        b.allowed_by.join(", ")
                    )
                } else {
                    format!(
                        "allowed by {}; denied by {} (deny beats allow)",
                        b.allowed_by.join(", "),
                        b.denied_by.join(", ")
                    )
                };
                out.push_str(&format!("  {} on {}: {why}\n", b.user, b.database));
            }
        }
        if !self.users_without_access.is_empty() {
            out.push_str(&format!(
                "\nno access{}: {}\n",
                self.filter
                    .database
                    .as_ref()
                    .map(|d| format!(" to {d}"))
                    .unwrap_or_default(),
                self.users_without_access.join(", ")
            ));
        }
        out
    }

    /// The explanation as a JSON document (`"format": "dbward-explain/1"`). Field order and
    /// sorting are fixed, so the output of an unchanged manifest never changes.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Appends `count` spaces (a slice at a time: a table of 200,000 rows pads a million cells).
fn pad_with_spaces(out: &mut String, mut count: usize) {
    const SPACES: &str = "                                                                ";
    while count > 0 {
        let now = count.min(SPACES.len());
        out.push_str(&SPACES[..now]);
        count -= now;
    }
}

/// Left-aligned columns, two spaces apart, without trailing spaces. `rows` is called twice:
/// once to size the columns, once to write them.
fn table<'a, const N: usize, I>(rows: impl Fn() -> I) -> String
where
    I: Iterator<Item = [&'a str; N]>,
{
    let mut widths = [0usize; N];
    let mut bytes = 0;
    for row in rows() {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
            bytes += cell.len() + 2;
        }
    }
    let mut out = String::with_capacity(bytes);
    for row in rows() {
        let start = out.len();
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < N {
                let pad = widths[i] - cell.chars().count() + 2;
                pad_with_spaces(&mut out, pad);
            }
        }
        let kept = out[start..].trim_end().len();
        out.truncate(start + kept);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;

    fn model(text: &str) -> Model {
        let checked = crate::check(&Source::new("m.kdl", text));
        match checked.model {
            Some(model) => model,
            None => panic!("manifest does not check: {:#?}", checked.diagnostics),
        }
    }

    fn reference() -> Model {
        model(include_str!("../../examples/full.kdl"))
    }

    fn entry<'a, 'm>(e: &'a Explanation<'m>, user: &str, db: &str) -> Option<&'a Entry<'m>> {
        e.access.iter().find(|x| x.user == user && x.database == db)
    }

    #[test]
    fn alice_reaches_ledger_reports_and_analytics_but_not_orders() {
        let m = reference();
        let e = explain(&m, &Filter::default()).unwrap();
        let ledger = entry(&e, "alice", "ledger").expect("alice reaches ledger");
        assert_eq!(ledger.db_users, ["cloudsql-user@acme-prod.iam"]);
        assert_eq!(ledger.db_names, Names::Any("*"));
        assert_eq!(ledger.via, ["developer"]);
        let reports = entry(&e, "alice", "reports").expect("alice reaches reports");
        assert_eq!(reports.db_users, ["dbward"]);
        assert!(entry(&e, "alice", "orders").is_none());
        // analyst provisions a user named after her on analytics (team=data), with `reader`.
        let analytics = entry(&e, "alice", "analytics").expect("alice reaches analytics");
        assert_eq!(analytics.provision, Provision::Keep);
        assert_eq!(analytics.provisioned_user, Some("alice"));
        assert_eq!(analytics.db_roles, ["reader"]);
        assert!(analytics.db_users.is_empty());
    }

    #[test]
    fn bob_supports_orders_as_readonly() {
        let m = reference();
        let e = explain(&m, &Filter::default()).unwrap();
        let orders = entry(&e, "bob", "orders").expect("bob reaches orders");
        assert_eq!(orders.db_users, ["readonly"]);
        let Names::Only(names) = &orders.db_names else {
            panic!("support lists db-names");
        };
        assert!(names.contains(&"orders".to_string()));
        assert_eq!(orders.via, ["support", "auditor"]);
        // auditor provisions a throw-away user with SELECT on the public tables.
        assert_eq!(orders.provision, Provision::BestEffortDrop);
        assert_eq!(orders.permissions.len(), 1);
        assert_eq!(
            orders.permissions[0].display(),
            "SELECT on table in schema public"
        );
        // bob logs in to analytics as report-bot, never as readonly (analytics has none).
        let analytics = entry(&e, "bob", "analytics").expect("bob reaches analytics");
        assert_eq!(analytics.db_users, ["report-bot"]);
        assert!(entry(&e, "bob", "ledger").is_none());
        assert!(entry(&e, "bob", "reports").is_none());
    }

    #[test]
    fn deny_takes_effect_and_is_explained() {
        // The reference, with developers allowed everywhere: the team=payments deny must
        // remove orders for alice and nothing else.
        let text = include_str!("../../examples/full.kdl").replacen(
            "databases env=dev",
            "databases \"*\"",
            1,
        );
        let m = model(&text);
        let e = explain(&m, &Filter::default()).unwrap();
        assert!(entry(&e, "alice", "orders").is_none());
        assert!(entry(&e, "alice", "ledger").is_some());
        let blocked = e
            .blocked
            .iter()
            .find(|b| b.user == "alice" && b.database == "orders")
            .expect("orders is reported as blocked");
        assert_eq!(blocked.allowed_by, ["developer"]);
        assert_eq!(blocked.denied_by, ["developer"]);
        assert!(
            e.render()
                .contains("alice on orders: allowed by developer; denied by developer")
        );
    }

    #[test]
    fn filters_narrow_and_unknown_names_suggest() {
        let m = reference();
        let only_bob = Filter {
            user: Some("bob".into()),
            database: None,
        };
        let e = explain(&m, &only_bob).unwrap();
        assert!(e.access.iter().all(|x| x.user == "bob"));
        assert_eq!(e.access.len(), 2);
        let on_orders = Filter {
            user: None,
            database: Some("orders".into()),
        };
        let e = explain(&m, &on_orders).unwrap();
        assert_eq!(e.access.len(), 1);
        assert_eq!(e.users_without_access, ["alice"]);

        let err = explain(
            &m,
            &Filter {
                user: Some("alcie".into()),
                database: None,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("did you mean `alice`?"), "{err}");
        let err = explain(
            &m,
            &Filter {
                user: None,
                database: Some("order".into()),
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("did you mean `orders`?"), "{err}");
    }

    #[test]
    fn json_is_stable_and_complete() {
        let m = reference();
        let e = explain(&m, &Filter::default()).unwrap();
        let json = e.to_json();
        assert_eq!(json["format"], "dbward-explain/1");
        let first = &json["access"][0];
        assert_eq!(first["user"], "alice");
        assert_eq!(first["database"], "analytics");
        assert_eq!(first["provision"], "keep");
        assert_eq!(first["db_names"], "*");
        assert_eq!(first["provisioned_user"], "alice");
        assert_eq!(
            json,
            explain(&reference(), &Filter::default()).unwrap().to_json()
        );
    }

    /// The explanation as it was computed before `RoleReach`: every selector of every role
    /// tested against every database, for every person.
    fn brute_force(m: &Model) -> (Vec<Entry<'_>>, Vec<Blocked<'_>>, Vec<&str>) {
        use crate::model::access::matches;
        let (mut access, mut blocked, mut without) = (Vec::new(), Vec::new(), Vec::new());
        for (user_name, user) in &m.users {
            let mut any = false;
            for (db_name, db) in &m.databases {
                let selecting = |deny: bool| -> Vec<&str> {
                    user.roles
                        .iter()
                        .filter(|r| {
                            m.roles.get(*r).is_some_and(|role| {
                                let rules = if deny { &role.deny } else { &role.allow };
                                rules.iter().any(|rule| matches(&rule.databases, db))
                            })
                        })
                        .map(String::as_str)
                        .collect()
                };
                match m.access.get(user_name, db_name) {
                    Some(entry) => {
                        any = true;
                        access.push(describe(entry, selecting(false)));
                    }
                    None if !selecting(false).is_empty() => blocked.push(Blocked {
                        user: user_name,
                        database: db_name,
                        allowed_by: selecting(false),
                        denied_by: selecting(true),
                    }),
                    None => {}
                }
            }
            if !any {
                without.push(user_name.as_str());
            }
        }
        (access, blocked, without)
    }

    #[test]
    fn same_answer_as_testing_every_selector_on_every_database() {
        let examples = [
            include_str!("../../examples/full.kdl"),
            include_str!("../../examples/self-hosted.kdl"),
            include_str!("../../examples/auto-provisioning.kdl"),
            include_str!("../../examples/quickstart.kdl"),
        ];
        for text in examples {
            let m = model(text);
            let e = explain(&m, &Filter::default()).unwrap();
            let (access, blocked, without) = brute_force(&m);
            assert_eq!(e.access, access);
            assert_eq!(e.blocked, blocked);
            assert_eq!(e.users_without_access, without);
        }
    }

    #[test]
    fn table_lists_one_row_per_login() {
        let text = explain(&reference(), &Filter::default()).unwrap().render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("USER"), "{text}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("bob") && l.contains("orders") && l.contains("readonly")),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("bob (provisioned, best-effort-drop)")),
            "{text}"
        );
        assert!(text.lines().all(|l| l == l.trim_end()));
    }
}

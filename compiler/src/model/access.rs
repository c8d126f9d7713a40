//! The access table: for each (person, database), what the person may do there.
//!
//! **The semantics (decided; users rely on them):**
//! 1. Nothing is allowed by default.
//! 2. *Allow* is a union: every `allow` block of every role the person holds whose `databases`
//!    selector matches the database adds its db-users, db-names, db-roles and permissions.
//!    `db-users "*"` means the database's *declared* `db-user`s (so the table is always an explicit
//!    list — least privilege); a listed db-user the database does not declare adds nothing there.
//!    `db-roles "*"` likewise means the declared `db-role`s.
//! 3. *Deny beats allow*: then every `deny` block of any of the person's roles that matches the
//!    database subtracts. A deny with only `databases` removes the whole database. Otherwise each
//!    dimension it lists (db-users, db-names, db-roles) is subtracted, and `"*"` empties that
//!    dimension. (A deny that lists db-names cannot narrow an allowed `db-names "*"`, since the
//!    set of all other names cannot be written down; the rules reject that combination.)
//! 4. Provisioning is on when any role that provisions and whose allow matches reaches the
//!    database; `keep` wins over `best-effort-drop` because it is the less destructive.
//! 5. An entry is stored only if it allows something: it opens at least one database name, and it
//!    has a db-user to log in as or provisioning on.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::types::*;

/// A person's combination of roles that cannot be expressed: a deny listing db-names against an
/// allowed `db-names "*"`. Reported by the `deny_narrows_wildcard` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WildcardNarrowing {
    pub user: String,
    pub database: String,
    /// The role holding the deny, and the deny block's index within the role.
    pub role: String,
    pub deny_index: usize,
}

/// Whether a `databases` selector matches a database.
pub fn matches(selector: &Selector, db: &Database) -> bool {
    match selector {
        Selector::Any => true,
        Selector::Names(names) => names.contains(&db.name),
        Selector::Labels(labels) => labels
            .iter()
            .all(|(k, v)| db.labels.get(k).is_some_and(|have| have == v)),
    }
}

/// Resolves a name set against what the database declares: `"*"` is everything declared, a list
/// keeps only the declared names.
pub fn resolve_declared<'a>(
    set: &NameSet,
    declared: impl Iterator<Item = &'a String>,
) -> BTreeSet<String> {
    declared
        .filter(|name| set.contains(name))
        .cloned()
        .collect()
}

fn union(into: &mut Option<NameSet>, add: &NameSet) {
    *into = Some(match (into.take(), add) {
        (Some(NameSet::Any), _) | (_, NameSet::Any) => NameSet::Any,
        (None, NameSet::Only(b)) => NameSet::Only(b.clone()),
        (Some(NameSet::Only(a)), NameSet::Only(b)) => {
            let all: BTreeSet<String> = a.into_iter().chain(b.iter().cloned()).collect();
            NameSet::Only(all.into_iter().collect())
        }
    });
}

/// `have - remove`; `None` when the result cannot be expressed (`"*"` minus a list).
fn subtract(have: &NameSet, remove: &NameSet) -> Option<NameSet> {
    match (have, remove) {
        (_, NameSet::Any) => Some(NameSet::Only(Vec::new())),
        (NameSet::Any, NameSet::Only(_)) => None,
        (NameSet::Only(a), NameSet::Only(b)) => Some(NameSet::Only(
            a.iter().filter(|n| !b.contains(n)).cloned().collect(),
        )),
    }
}

fn is_empty(set: &NameSet) -> bool {
    matches!(set, NameSet::Only(v) if v.is_empty())
}

/// `keep` beats `best-effort-drop` beats `off`.
pub fn combine_provision(a: Provision, b: Provision) -> Provision {
    let rank = |p: Provision| match p {
        Provision::Off => 0,
        Provision::BestEffortDrop => 1,
        Provision::Keep => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// The access one set of roles grants on one database, before `deny` (None: no allow matched).
pub fn allowed(roles: &[&Role], db: &Database) -> Option<Access> {
    let mut acc: Option<Access> = None;
    let mut db_names: Option<NameSet> = None;
    for role in roles {
        for allow in role.allow.iter().filter(|a| matches(&a.databases, db)) {
            let entry = acc.get_or_insert_with(|| Access {
                user: String::new(),
                database: db.name.clone(),
                db_users: BTreeSet::new(),
                db_names: NameSet::Only(Vec::new()),
                db_roles: BTreeSet::new(),
                permissions: Vec::new(),
                provision: Provision::Off,
            });
            if let Some(users) = &allow.db_users {
                entry
                    .db_users
                    .extend(resolve_declared(users, db.db_users.keys()));
            }
            if let Some(names) = &allow.db_names {
                union(&mut db_names, names);
            }
            if let Some(roles) = &allow.db_roles {
                entry
                    .db_roles
                    .extend(resolve_declared(roles, db.db_roles.keys()));
            }
            entry.permissions.extend(allow.permissions.iter().cloned());
            entry.provision = combine_provision(entry.provision, role.provision);
        }
    }
    let mut acc = acc?;
    acc.db_names = db_names.unwrap_or(NameSet::Only(Vec::new()));
    acc.permissions.sort();
    acc.permissions.dedup();
    Some(acc)
}

/// What one deny block did to an access entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyEffect {
    /// It subtracted the dimensions it lists (possibly nothing).
    Subtracted,
    /// It lists no dimension: the whole database is removed.
    RemovesDatabase,
    /// It lists db-names against an allowed `"*"`, which cannot be expressed.
    CannotNarrowWildcard,
}

/// Applies one deny block to an entry.
pub fn apply_deny(acc: &mut Access, deny: &Rule, db: &Database) -> DenyEffect {
    if deny.db_users.is_none() && deny.db_names.is_none() && deny.db_roles.is_none() {
        return DenyEffect::RemovesDatabase;
    }
    if let Some(users) = &deny.db_users {
        let remove = resolve_declared(users, db.db_users.keys());
        acc.db_users
            .retain(|u| !remove.contains(u) && !matches!(users, NameSet::Any));
    }
    if let Some(roles) = &deny.db_roles {
        let remove = resolve_declared(roles, db.db_roles.keys());
        acc.db_roles
            .retain(|r| !remove.contains(r) && !matches!(roles, NameSet::Any));
    }
    if let Some(names) = &deny.db_names {
        match subtract(&acc.db_names, names) {
            Some(rest) => acc.db_names = rest,
            None => return DenyEffect::CannotNarrowWildcard,
        }
    }
    DenyEffect::Subtracted
}

/// Whether an access entry allows anything (and so is stored).
pub fn allows_something(acc: &Access) -> bool {
    (!acc.db_users.is_empty() || acc.provision != Provision::Off) && !is_empty(&acc.db_names)
}

/// One (set of roles, database) evaluated: the entry (if it allows anything) and the deny
/// blocks, as (role, index), that could not be applied.
type Evaluated = (Option<Access>, Vec<(String, usize)>);

/// Applies allow then deny for one set of roles on one database.
fn evaluate(roles: &[&Role], db: &Database) -> Evaluated {
    let Some(mut acc) = allowed(roles, db) else {
        return (None, Vec::new());
    };
    let mut removed = false;
    let mut problems = Vec::new();
    for role in roles {
        for (index, deny) in role.deny.iter().enumerate() {
            if !matches(&deny.databases, db) {
                continue;
            }
            match apply_deny(&mut acc, deny, db) {
                DenyEffect::Subtracted => {}
                DenyEffect::RemovesDatabase => removed = true,
                DenyEffect::CannotNarrowWildcard => problems.push((role.name.clone(), index)),
            }
        }
    }
    let entry = (!removed && allows_something(&acc)).then_some(acc);
    (entry, problems)
}

/// Computes the access table of a model, and the combinations that cannot be expressed.
pub fn compute(model: &Model) -> (BTreeMap<(String, String), Access>, Vec<WildcardNarrowing>) {
    // Entries are produced in key order; collecting them at the end builds the map in bulk.
    let mut table = Vec::new();
    let mut problems = Vec::new();
    let databases: Vec<&Database> = model.databases.values().collect();
    // Which databases (by index, ascending) each role's allow blocks reach, computed once: a
    // person is only evaluated on the databases their roles can reach, not on every database.
    let reach: BTreeMap<&str, Vec<usize>> = model
        .roles
        .values()
        .map(|role| {
            let dbs = (0..databases.len())
                .filter(|&i| {
                    role.allow
                        .iter()
                        .any(|a| matches(&a.databases, databases[i]))
                })
                .collect();
            (role.name.as_str(), dbs)
        })
        .collect();
    // People who hold the same roles get the same access: evaluate each combination once.
    let mut role_sets: HashMap<Vec<&str>, usize> = HashMap::new();
    let mut memo: HashMap<(usize, usize), Evaluated> = HashMap::new();
    for user in model.users.values() {
        let mut names: Vec<&str> = user
            .roles
            .iter()
            .map(String::as_str)
            .filter(|r| model.roles.contains_key(*r))
            .collect();
        names.sort_unstable();
        names.dedup();
        let roles: Vec<&Role> = names.iter().filter_map(|r| model.roles.get(*r)).collect();
        let mut candidates: Vec<usize> = names
            .iter()
            .filter_map(|r| reach.get(r))
            .flatten()
            .copied()
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let next_id = role_sets.len();
        let set_id = *role_sets.entry(names).or_insert(next_id);
        for index in candidates {
            let db = databases[index];
            let (entry, narrowing) = memo
                .entry((set_id, index))
                .or_insert_with(|| evaluate(&roles, db));
            for (role, deny_index) in narrowing.iter() {
                problems.push(WildcardNarrowing {
                    user: user.name.clone(),
                    database: db.name.clone(),
                    role: role.clone(),
                    deny_index: *deny_index,
                });
            }
            if let Some(entry) = entry {
                let mut entry = entry.clone();
                entry.user = user.name.clone();
                table.push(((user.name.clone(), db.name.clone()), entry));
            }
        }
    }
    (table.into_iter().collect(), problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;

    fn reference() -> Model {
        let source = Source::new("reference.kdl", include_str!("testdata/reference.kdl"));
        let checked = crate::check(&source);
        assert!(checked.diagnostics.is_empty(), "{:#?}", checked.diagnostics);
        checked.model.expect("reference manifest is valid")
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn only(names: &[&str]) -> NameSet {
        NameSet::Only(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn reference_access_table() {
        let model = reference();
        let keys: Vec<(&str, &str)> = model
            .access
            .keys()
            .map(|(u, d)| (u.as_str(), d.as_str()))
            .collect();
        // alice: developer reaches the dev databases (ledger, reports; the payments deny does
        // not match them); analyst provisions on team=data (analytics).
        // bob: support + auditor reach the prod databases (orders, analytics).
        assert_eq!(
            keys,
            [
                ("alice", "analytics"),
                ("alice", "ledger"),
                ("alice", "reports"),
                ("bob", "analytics"),
                ("bob", "orders"),
            ]
        );
        let a = &model.access[&("alice".into(), "ledger".into())];
        assert_eq!(a.db_users, set(&["cloudsql-user@acme-prod.iam"]));
        assert_eq!(a.db_names, NameSet::Any);
        assert_eq!(a.provision, Provision::Off);

        let a = &model.access[&("alice".into(), "analytics".into())];
        assert!(a.db_users.is_empty());
        assert_eq!(a.provision, Provision::Keep);
        assert_eq!(a.db_roles, set(&["reader"]));

        let b = &model.access[&("bob".into(), "orders".into())];
        assert_eq!(b.db_users, set(&["readonly"]));
        assert_eq!(b.db_names, only(&["analytics", "orders"]));
        assert_eq!(b.provision, Provision::BestEffortDrop);
        assert_eq!(b.permissions.len(), 1);
        assert_eq!(b.permissions[0].on, ObjectKind::Table);
        assert_eq!(b.permissions[0].object, None);

        let b = &model.access[&("bob".into(), "analytics".into())];
        assert_eq!(b.db_users, set(&["report-bot"]));
    }

    #[test]
    fn reference_model_defaults() {
        let model = reference();
        let ledger = &model.databases["ledger"];
        assert_eq!(ledger.postgres.port, 5432);
        assert_eq!(ledger.postgres.host, None);
        let analytics = &model.databases["analytics"];
        assert_eq!(
            analytics
                .admin_user
                .as_ref()
                .map(|a| a.default_database.as_str()),
            Some("postgres")
        );
        assert_eq!(
            model.relay.client_cert_ttl,
            std::time::Duration::from_secs(43_200)
        );
        assert!(model.relay.audit.as_ref().is_some_and(|a| a.queries));
        assert_eq!(model.roles["developer"].provision, Provision::Off);
        assert_eq!(
            model.databases["orders"].db_roles["writer"].member_of,
            vec!["reader".to_string()]
        );
    }

    fn checked(text: &str) -> crate::Checked {
        let source = Source::new(
            "t.kdl",
            format!("{}{text}", crate::model::rules::test_support::PRELUDE),
        );
        crate::check(&source)
    }

    const TWO_DBS: &str = "database a {\n    postgres host=\"h\"\n    labels env=prod\n    self-hosted {\n        config-dir \"/etc/x\"\n    }\n    db-user u1\n    db-user u2\n}\ndatabase b {\n    postgres host=\"h\"\n    labels env=dev\n    self-hosted {\n        config-dir \"/etc/x\"\n    }\n    db-user u1\n}\nuser p {\n    roles r\n}\n";

    #[test]
    fn deny_subtracts_dimensions_and_whole_databases() {
        let c = checked(&format!(
            "{TWO_DBS}role r {{\n    allow {{\n        databases \"*\"\n        db-users \"*\"\n        db-names \"x\" \"y\"\n    }}\n    deny {{\n        databases env=prod\n        db-users u2\n        db-names y\n    }}\n    deny {{\n        databases b\n    }}\n}}\n"
        ));
        let model = c.model.unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
        assert_eq!(model.access.len(), 1, "b is denied entirely");
        let a = &model.access[&("p".into(), "a".into())];
        assert_eq!(a.db_users, set(&["u1"]));
        assert_eq!(a.db_names, only(&["x"]));
    }

    #[test]
    fn deny_star_empties_and_drops_the_entry() {
        let c = checked(&format!(
            "{TWO_DBS}role r {{\n    allow {{\n        databases \"*\"\n        db-users \"*\"\n        db-names \"*\"\n    }}\n    deny {{\n        databases a\n        db-users \"*\"\n    }}\n}}\n"
        ));
        let model = c.model.unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
        let keys: Vec<_> = model.access.keys().cloned().collect();
        assert_eq!(keys, [("p".to_string(), "b".to_string())]);
    }
}

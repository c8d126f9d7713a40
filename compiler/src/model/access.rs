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

use std::collections::{BTreeSet, HashMap};

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
pub fn allowed(roles: &[&Role], db: &Database) -> Option<Rights> {
    let mut acc: Option<Rights> = None;
    let mut db_names: Option<NameSet> = None;
    for role in roles {
        for allow in role.allow.iter().filter(|a| matches(&a.databases, db)) {
            let entry = acc.get_or_insert_with(|| Rights {
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
pub fn apply_deny(acc: &mut Rights, deny: &Rule, db: &Database) -> DenyEffect {
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
pub fn allows_something(acc: &Rights) -> bool {
    (!acc.db_users.is_empty() || acc.provision != Provision::Off) && !is_empty(&acc.db_names)
}

/// One (set of roles, database) evaluated: the entry (if it allows anything) and the deny
/// blocks, as (role, index), that could not be applied.
type Evaluated = (Option<Rights>, Vec<(String, usize)>);

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

/// Which databases a selector matches, answered from an index of names and labels instead of
/// testing every database (selectors are evaluated for every block of every role).
pub struct Selection<'m> {
    count: usize,
    by_name: HashMap<&'m str, usize>,
    by_label: HashMap<(&'m str, &'m str), Vec<usize>>,
}

impl<'m> Selection<'m> {
    /// Indexes databases by their position in `databases`.
    pub fn new(databases: &[&'m Database]) -> Selection<'m> {
        let mut by_label: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (index, db) in databases.iter().enumerate() {
            for (key, value) in &db.labels {
                by_label
                    .entry((key.as_str(), value.as_str()))
                    .or_default()
                    .push(index);
            }
        }
        Selection {
            count: databases.len(),
            by_name: databases
                .iter()
                .enumerate()
                .map(|(index, db)| (db.name.as_str(), index))
                .collect(),
            by_label,
        }
    }

    /// The positions of the databases `selector` matches, ascending; the same answer as
    /// [`matches()`] on each database.
    pub fn select(&self, selector: &Selector) -> Vec<usize> {
        match selector {
            Selector::Any => (0..self.count).collect(),
            Selector::Names(names) => {
                let mut found: Vec<usize> = names
                    .iter()
                    .filter_map(|name| self.by_name.get(name.as_str()).copied())
                    .collect();
                found.sort_unstable();
                found
            }
            Selector::Labels(labels) => {
                let mut lists = Vec::with_capacity(labels.len());
                for (key, value) in labels {
                    match self.by_label.get(&(key.as_str(), value.as_str())) {
                        Some(list) => lists.push(list),
                        // No database carries this label, so none carries them all.
                        None => return Vec::new(),
                    }
                }
                // Intersect, starting from the shortest list.
                lists.sort_by_key(|list| list.len());
                let Some((first, rest)) = lists.split_first() else {
                    // No labels: every database carries all of none.
                    return (0..self.count).collect();
                };
                first
                    .iter()
                    .copied()
                    .filter(|index| rest.iter().all(|list| list.binary_search(index).is_ok()))
                    .collect()
            }
        }
    }

    /// The union of what several selectors match, ascending.
    pub fn select_any<'r>(&self, selectors: impl IntoIterator<Item = &'r Selector>) -> Vec<usize> {
        let mut all: Vec<usize> = selectors
            .into_iter()
            .flat_map(|selector| self.select(selector))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Which databases each role's `allow` and `deny` blocks select, indexed once per model, so
/// "which of this person's roles select this database" is a lookup rather than a test of every
/// selector against every database (`explain` and `diff` ask it for every access entry).
pub struct RoleReach<'m> {
    /// Database names, sorted (positions index `Model::databases` in order).
    databases: Vec<&'m str>,
    by_role: HashMap<&'m str, Reach>,
}

impl<'m> RoleReach<'m> {
    pub fn new(model: &'m Model) -> RoleReach<'m> {
        let databases: Vec<&Database> = model.databases.values().collect();
        let selection = Selection::new(&databases);
        let by_role = model
            .roles
            .values()
            .map(|role| {
                let reach = Reach {
                    allow: selection.select_any(role.allow.iter().map(|a| &a.databases)),
                    deny: selection.select_any(role.deny.iter().map(|d| &d.databases)),
                };
                (role.name.as_str(), reach)
            })
            .collect();
        RoleReach {
            databases: databases.iter().map(|db| db.name.as_str()).collect(),
            by_role,
        }
    }

    /// The position of a database, by name.
    pub fn position(&self, database: &str) -> Option<usize> {
        self.databases.binary_search(&database).ok()
    }

    /// The name of the database at `position`.
    pub fn name(&self, position: usize) -> Option<&'m str> {
        self.databases.get(position).copied()
    }

    /// The databases (positions, ascending) some `allow` of the person's roles selects.
    pub fn candidates(&self, user: &User) -> Vec<usize> {
        let mut all: Vec<usize> = user
            .roles
            .iter()
            .filter_map(|r| self.by_role.get(r.as_str()))
            .flat_map(|reach| reach.allow.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The person's roles, in the order they hold them, whose `allow` (or, with `deny`, whose
    /// `deny`) selects the database at `position`.
    pub fn selecting<'u>(
        &self,
        user: &'u User,
        position: usize,
        deny: bool,
    ) -> impl Iterator<Item = &'u str> + use<'_, 'u> {
        user.roles
            .iter()
            .filter(move |r| {
                self.by_role.get(r.as_str()).is_some_and(|reach| {
                    let list = if deny { &reach.deny } else { &reach.allow };
                    list.binary_search(&position).is_ok()
                })
            })
            .map(String::as_str)
    }
}

/// The databases (positions, ascending) one role's blocks reach.
struct Reach {
    allow: Vec<usize>,
    deny: Vec<usize>,
}

/// One evaluation of (role set, database) in the table being built: the index of its rights if
/// the entry allows something, and the deny blocks, as (role position, deny index), that could
/// not be applied.
type Shared = (Option<usize>, Vec<(usize, usize)>);

/// Computes the access table of a model, and the combinations that cannot be expressed.
///
/// The table grows with people times databases, so the work per entry is kept to a few
/// lookups. The result on a database depends only on which of the person's roles have a block
/// that matches it (a role without one adds nothing, and removes nothing); so each (those
/// roles, database) is evaluated once and its [`Rights`] shared by every entry it produces —
/// the on-call people of a hundred different teams share one evaluation per database.
pub fn compute(model: &Model) -> (AccessTable, Vec<WildcardNarrowing>) {
    let databases: Vec<&Database> = model.databases.values().collect();
    let roles: Vec<&Role> = model.roles.values().collect();
    let role_index: HashMap<&str, usize> = roles
        .iter()
        .enumerate()
        .map(|(index, role)| (role.name.as_str(), index))
        .collect();
    let selection = Selection::new(&databases);
    let reach: Vec<Reach> = roles
        .iter()
        .map(|role| Reach {
            allow: selection.select_any(role.allow.iter().map(|a| &a.databases)),
            deny: selection.select_any(role.deny.iter().map(|d| &d.databases)),
        })
        .collect();

    let mut rights: Vec<Rights> = Vec::new();
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    // Sets of roles (ascending positions in `roles`, so in name order) by id.
    let mut role_sets: HashMap<Vec<usize>, usize> = HashMap::new();
    let mut memo: HashMap<(usize, usize), Shared> = HashMap::new();
    let mut relevant: Vec<usize> = Vec::new();
    for (user_index, user) in model.users.values().enumerate() {
        let mut held: Vec<usize> = user
            .roles
            .iter()
            .filter_map(|r| role_index.get(r.as_str()).copied())
            .collect();
        held.sort_unstable();
        held.dedup();
        // A person is only evaluated on the databases their roles' allow blocks reach.
        let mut candidates: Vec<usize> = held
            .iter()
            .flat_map(|&r| reach[r].allow.iter().copied())
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        for db_index in candidates {
            relevant.clear();
            relevant.extend(held.iter().copied().filter(|&r| {
                reach[r].allow.binary_search(&db_index).is_ok()
                    || reach[r].deny.binary_search(&db_index).is_ok()
            }));
            let set_id = match role_sets.get(relevant.as_slice()) {
                Some(&id) => id,
                None => {
                    let id = role_sets.len();
                    role_sets.insert(relevant.clone(), id);
                    id
                }
            };
            let db = databases[db_index];
            let (entry, narrowing) = memo.entry((set_id, db_index)).or_insert_with(|| {
                let set: Vec<&Role> = relevant.iter().map(|&r| roles[r]).collect();
                let (entry, narrowing) = evaluate(&set, db);
                let narrowing = narrowing
                    .into_iter()
                    .filter_map(|(role, deny)| Some((*role_index.get(role.as_str())?, deny)))
                    .collect();
                let entry = entry.map(|e| {
                    rights.push(e);
                    rights.len() - 1
                });
                (entry, narrowing)
            });
            for &(role, deny_index) in narrowing.iter() {
                problems.push(WildcardNarrowing {
                    user: user.name.clone(),
                    database: db.name.clone(),
                    role: roles[role].name.clone(),
                    deny_index,
                });
            }
            if let Some(shared) = *entry {
                rows.push(Row {
                    user: user_index,
                    database: db_index,
                    rights: shared,
                });
            }
        }
    }
    let table = AccessTable::new(
        model.users.keys().cloned().collect(),
        model.databases.keys().cloned().collect(),
        rights,
        rows,
    );
    (table, problems)
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

    fn rights<'m>(model: &'m Model, user: &str, database: &str) -> &'m Rights {
        match model.access.get(user, database) {
            Some(entry) => entry.rights,
            None => panic!("no entry for ({user}, {database})"),
        }
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
        let keys: Vec<(&str, &str)> = model.access.iter().map(|a| (a.user, a.database)).collect();
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
        let a = rights(&model, "alice", "ledger");
        assert_eq!(a.db_users, set(&["cloudsql-user@acme-prod.iam"]));
        assert_eq!(a.db_names, NameSet::Any);
        assert_eq!(a.provision, Provision::Off);

        let a = rights(&model, "alice", "analytics");
        assert!(a.db_users.is_empty());
        assert_eq!(a.provision, Provision::Keep);
        assert_eq!(a.db_roles, set(&["reader"]));

        let b = rights(&model, "bob", "orders");
        assert_eq!(b.db_users, set(&["readonly"]));
        assert_eq!(b.db_names, only(&["analytics", "orders"]));
        assert_eq!(b.provision, Provision::BestEffortDrop);
        assert_eq!(b.permissions.len(), 1);
        assert_eq!(b.permissions[0].on, ObjectKind::Table);
        assert_eq!(b.permissions[0].object, None);

        let b = rights(&model, "bob", "analytics");
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
        let a = rights(&model, "p", "a");
        assert_eq!(a.db_users, set(&["u1"]));
        assert_eq!(a.db_names, only(&["x"]));
    }

    #[test]
    fn deny_star_empties_and_drops_the_entry() {
        let c = checked(&format!(
            "{TWO_DBS}role r {{\n    allow {{\n        databases \"*\"\n        db-users \"*\"\n        db-names \"*\"\n    }}\n    deny {{\n        databases a\n        db-users \"*\"\n    }}\n}}\n"
        ));
        let model = c.model.unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
        let keys: Vec<_> = model.access.iter().map(|a| (a.user, a.database)).collect();
        assert_eq!(keys, [("p", "b")]);
    }

    /// The access semantics written out literally: every person evaluated with all their roles
    /// on every database, nothing shared.
    fn naive(model: &Model) -> (Vec<(String, String, Rights)>, Vec<WildcardNarrowing>) {
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for user in model.users.values() {
            let mut names: Vec<&String> = user.roles.iter().collect();
            names.sort();
            names.dedup();
            let roles: Vec<&Role> = names.iter().filter_map(|r| model.roles.get(*r)).collect();
            for db in model.databases.values() {
                let (entry, narrowing) = evaluate(&roles, db);
                for (role, deny_index) in narrowing {
                    problems.push(WildcardNarrowing {
                        user: user.name.clone(),
                        database: db.name.clone(),
                        role,
                        deny_index,
                    });
                }
                if let Some(entry) = entry {
                    entries.push((user.name.clone(), db.name.clone(), entry));
                }
            }
        }
        (entries, problems)
    }

    /// Twelve databases and every combination of six overlapping roles (allow and deny blocks
    /// by name, label and `"*"`, denies of whole databases, of single dimensions and against a
    /// wildcard, two provisioning modes), so sharing evaluations between people is tested
    /// against the literal semantics where it is most likely to go wrong.
    fn overlapping_roles() -> String {
        let mut m = String::from(crate::model::rules::test_support::PRELUDE);
        for i in 0..12 {
            let env = if i % 2 == 0 { "prod" } else { "dev" };
            let team = ["a", "b", "c"][i % 3];
            m.push_str(&format!(
                "database d{i} {{\n    postgres host=\"h\"\n    labels env={env} team={team}\n    self-hosted {{\n        config-dir \"/x\"\n    }}\n    admin-user boss\n    db-role r1\n"
            ));
            if i % 3 == 0 {
                m.push_str("    db-role r2\n");
            }
            m.push_str("    db-user u1\n");
            if i % 2 == 0 {
                m.push_str("    db-user u2\n");
            }
            m.push_str("}\n");
        }
        m.push_str(
            "role wide {\n    allow {\n        databases \"*\"\n        db-users \"*\"\n        db-names \"*\"\n    }\n}\n\
             role prod {\n    provision keep\n    allow {\n        databases env=prod\n        db-users u2\n        db-names n1 n2\n        db-roles \"*\"\n    }\n}\n\
             role team-a {\n    allow {\n        databases team=a\n        db-users u1\n        db-names n2 n3\n        permission SELECT on=table schema=public\n    }\n    deny {\n        databases env=dev\n        db-users u1\n    }\n}\n\
             role denier {\n    deny {\n        databases team=b\n        db-names n1\n    }\n    deny {\n        databases d4\n    }\n}\n\
             role prov {\n    provision best-effort-drop\n    allow {\n        databases d1 d2 d5\n        db-names \"*\"\n        db-roles r2\n    }\n    deny {\n        databases env=prod\n        db-names \"*\"\n    }\n}\n\
             role narrow {\n    deny {\n        databases \"*\"\n        db-names n2\n    }\n}\n",
        );
        let roles = ["wide", "prod", "team-a", "denier", "prov", "narrow"];
        for mask in 1..(1u32 << roles.len()) {
            let held: Vec<&str> = (0..roles.len())
                .filter(|bit| mask & (1 << bit) != 0)
                .map(|bit| roles[bit])
                .collect();
            m.push_str(&format!(
                "user p{mask} {{\n    roles {}\n}}\n",
                held.join(" ")
            ));
        }
        m
    }

    #[test]
    fn shared_evaluation_equals_the_literal_semantics() {
        for (name, text) in [
            ("overlapping", overlapping_roles()),
            (
                "reference",
                include_str!("testdata/reference.kdl").to_string(),
            ),
        ] {
            let source = Source::new(format!("{name}.kdl"), text);
            let parsed = crate::syntax::parse(&source);
            let manifest = parsed
                .manifest
                .unwrap_or_else(|| panic!("{name}: {:#?}", parsed.diagnostics));
            let model = crate::model::lower::build(&manifest);
            let (table, problems) = compute(&model);
            let (entries, expected_problems) = naive(&model);
            let got: Vec<(String, String, Rights)> = table
                .iter()
                .map(|a| (a.user.to_string(), a.database.to_string(), a.rights.clone()))
                .collect();
            assert_eq!(got, entries, "{name}: access table");
            assert_eq!(problems, expected_problems, "{name}: wildcard narrowings");
            assert!(
                !got.is_empty(),
                "{name}: the table must not be trivially empty"
            );
        }
        // The generated manifest must exercise what it claims to.
        let source = Source::new("o.kdl", overlapping_roles());
        let manifest = crate::syntax::parse(&source).manifest.expect("parses");
        let model = crate::model::lower::build(&manifest);
        let (table, problems) = compute(&model);
        assert!(!problems.is_empty(), "a deny narrows a wildcard somewhere");
        assert!(
            table
                .iter()
                .any(|a| a.rights.provision == Provision::BestEffortDrop)
                && table.iter().any(|a| a.rights.provision == Provision::Keep)
        );
        assert!(table.get("p1", "d4").is_some() && table.get("p9", "d4").is_none());
        // The selector index answers what `matches` answers, for every block and for selectors
        // naming what does not exist.
        let databases: Vec<&Database> = model.databases.values().collect();
        let selection = Selection::new(&databases);
        let mut selectors: Vec<Selector> = model
            .roles
            .values()
            .flat_map(|r| r.allow.iter().chain(&r.deny))
            .map(|rule| rule.databases.clone())
            .collect();
        let labels = |pairs: &[(&str, &str)]| {
            Selector::Labels(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        selectors.extend([
            Selector::Names(["d3", "nope", "d0"].map(String::from).into()),
            labels(&[]),
            labels(&[("env", "prod"), ("team", "b")]),
            labels(&[("env", "prod"), ("team", "x")]),
            labels(&[("owner", "prod")]),
        ]);
        for selector in &selectors {
            let expected: Vec<usize> = (0..databases.len())
                .filter(|&i| matches(selector, databases[i]))
                .collect();
            assert_eq!(selection.select(selector), expected, "{selector:?}");
        }
        // Lookups agree with iteration.
        for entry in table.iter() {
            assert_eq!(table.get(entry.user, entry.database), Some(entry));
        }
        let by_user: usize = model.users.keys().map(|u| table.of_user(u).count()).sum();
        let by_db: usize = model
            .databases
            .keys()
            .map(|d| table.of_database(d).count())
            .sum();
        assert_eq!((by_user, by_db), (table.len(), table.len()));
    }
}

//! Access changes: who gains and who loses access, as whom, between two access tables.
//!
//! A reviewer of a manifest change needs *who can now reach what, as whom*, not a diff of
//! pg_hba.conf and frozen.json. [`diff`] compares two access tables in the relay's own form
//! ([`dbward_frozen::Access`], so what is compared is exactly what the relay enforces) and
//! returns an [`AccessDiff`]: one [`AccessChange`] per (person, database) that appears,
//! disappears or changes. Both `dbward plan` (the new table against the frozen config deployed
//! under `--out`, [`deployed`]) and `dbward diff OLD NEW` (two manifests, [`Table::of_model`])
//! use it, and render it the same ways: text lines ([`AccessDiff::render`]), Markdown for a
//! pull-request comment ([`AccessDiff::markdown`]) and JSON ([`AccessDiff::to_json`]).
//!
//! Which roles give an entry ("via") is not in the frozen config: it is shown when the side
//! the entry comes from is a manifest, and left out for a deployed frozen.json.

use std::fmt::Write as _;

use dbward_frozen as frozen;
use frozen::{Grant, GrantOn, NameSet, Privilege, Provision};
use schemars::JsonSchema;
use serde::Serialize;

use crate::model::access::RoleReach;
use crate::model::{Model, User};

/// One side of a comparison: access entries sorted by (person, database), each with the
/// roles that give it when known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub entries: Vec<frozen::Access>,
    /// Parallel to `entries`: the person's roles whose `allow` selects the database; `None`
    /// when the table comes from a frozen config, which does not record roles.
    pub via: Vec<Option<Vec<String>>>,
}

impl Table {
    /// A model's access table, with the roles that give each entry.
    pub fn of_model(model: &Model) -> Table {
        let entries = crate::emit::frozen::access_entries(model);
        let reach = RoleReach::new(model);
        let via = entries
            .iter()
            .map(|entry| {
                let user = model.users.get(&entry.identity)?;
                let position = reach.position(&entry.database)?;
                Some(via(&reach, user, position))
            })
            .collect();
        Table { entries, via }
    }

    /// A frozen config's access table (roles unknown).
    pub fn of_frozen(config: &frozen::Config) -> Table {
        Table::of_entries(config.access.clone())
    }

    /// Access entries (roles unknown), sorted here.
    pub fn of_entries(mut entries: Vec<frozen::Access>) -> Table {
        entries.sort_by(|a, b| (&a.identity, &a.database).cmp(&(&b.identity, &b.database)));
        entries.dedup_by(|a, b| a.identity == b.identity && a.database == b.database);
        let via = vec![None; entries.len()];
        Table { entries, via }
    }
}

/// A model compared with the frozen config deployed under an output directory (its
/// `relay/frozen.json` bytes, `None` when nothing is deployed: then every entry is added).
/// A frozen.json that cannot be verified is compared as it reads, with a note; one that cannot
/// be read at all counts as nothing deployed, with a note.
pub fn deployed(model: &Model, frozen_json: Option<&[u8]>) -> AccessDiff {
    let new = Table::of_model(model);
    let path = std::path::Path::new(crate::emit::layout::FROZEN);
    let (old, note) = match frozen_json {
        None => (Table::default(), None),
        Some(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            match frozen::Config::from_json(path, &text) {
                Ok(config) => (Table::of_frozen(&config), None),
                Err(err) => match serde_json::from_str::<AccessOnly>(&text) {
                    Ok(only) => (
                        Table::of_entries(only.access),
                        Some(format!(
                            "the deployed access table was compared as it reads, but the relay \
                             would refuse it: {err}"
                        )),
                    ),
                    Err(_) => (
                        Table::default(),
                        Some(format!(
                            "the deployed access table cannot be read, so every entry is shown \
                             as added: {err}"
                        )),
                    ),
                },
            }
        }
    };
    let mut diff = diff(&old, &new);
    diff.note = note;
    diff
}

/// Only the access table of a frozen.json: what is compared, also when the rest of the file is
/// another format version or was edited by hand.
#[derive(serde::Deserialize)]
struct AccessOnly {
    access: Vec<frozen::Access>,
}

/// The access changes of a plan: its change to `relay/frozen.json`, if any. With the model
/// the plan was made from (`dbward show` of a plan whose manifest has not moved), the lines
/// say "via" as `dbward plan` printed them; without it they cannot.
pub fn of_plan(plan: &crate::plan::Plan, model: Option<&Model>) -> AccessDiff {
    let Some(change) = plan
        .changes
        .iter()
        .find(|c| c.path == crate::emit::layout::FROZEN)
    else {
        return AccessDiff::default();
    };
    let before = change.before.as_ref().map(|v| v.bytes.as_slice());
    if let Some(model) = model {
        return deployed(model, before);
    }
    let read = |bytes: Option<&[u8]>| {
        bytes
            .and_then(|b| serde_json::from_slice::<AccessOnly>(b).ok())
            .map(|only| Table::of_entries(only.access))
            .unwrap_or_default()
    };
    diff(
        &read(before),
        &read(change.after.as_ref().map(|v| v.bytes.as_slice())),
    )
}

/// What changed in one (person, database) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessChange {
    /// The person can now reach the database.
    Added {
        entry: frozen::Access,
        via: Option<Vec<String>>,
    },
    /// The person can no longer reach the database.
    Removed {
        entry: frozen::Access,
        via: Option<Vec<String>>,
    },
    /// The person still reaches the database, differently.
    Changed {
        before: frozen::Access,
        after: frozen::Access,
        via: Option<Vec<String>>,
    },
}

/// Every access change between two tables, sorted by (person, database).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessDiff {
    pub changes: Vec<AccessChange>,
    /// Something the reader must know about the comparison itself (an unreadable deployed
    /// table).
    pub note: Option<String>,
}

/// Compares two access tables (each sorted by person, then database).
pub fn diff(old: &Table, new: &Table) -> AccessDiff {
    let mut changes = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.entries.len() || j < new.entries.len() {
        let order = match (old.entries.get(i), new.entries.get(j)) {
            (Some(a), Some(b)) => (a.identity.as_str(), a.database.as_str())
                .cmp(&(b.identity.as_str(), b.database.as_str())),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                changes.push(AccessChange::Removed {
                    entry: old.entries[i].clone(),
                    via: old.via.get(i).cloned().flatten(),
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                changes.push(AccessChange::Added {
                    entry: new.entries[j].clone(),
                    via: new.via.get(j).cloned().flatten(),
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (a, b) = (&old.entries[i], &new.entries[j]);
                if a != b {
                    changes.push(AccessChange::Changed {
                        before: a.clone(),
                        after: b.clone(),
                        via: new.via.get(j).cloned().flatten(),
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    AccessDiff {
        changes,
        note: None,
    }
}

/// The person's roles whose `allow` selects the database at `position`, owned.
fn via(reach: &RoleReach<'_>, user: &User, position: usize) -> Vec<String> {
    reach
        .selecting(user, position, false)
        .map(str::to_owned)
        .collect()
}

/// Compares the access tables of two models: the same changes as
/// `diff(&Table::of_model(old), &Table::of_model(new))`, without building either table.
///
/// `dbward diff` compares two manifests of 124,000 entries each where a change touches a few
/// hundred: converting every entry to the relay's form and finding the roles of each cost as
/// much as a third check. Here an entry is converted only when it appears, disappears, or its
/// rights or certificate cut-off differ; equal rights and cut-off convert to equal entries
/// ([`crate::emit::frozen::access_entry`] is a function of them), so skipping those compares
/// exactly what the relay enforces. "Via" is found only for the changes.
pub fn diff_models(old: &Model, new: &Model) -> AccessDiff {
    use std::cmp::Ordering;

    use crate::emit::frozen::access_entry;

    let (old_reach, new_reach) = (RoleReach::new(old), RoleReach::new(new));
    let via_of = |reach: &RoleReach<'_>, user: &User, database: &str| {
        reach
            .position(database)
            .map(|position| via(reach, user, position))
    };
    let mut changes = Vec::new();
    // Every person of either side, in name order; then each person's entries, in database
    // order: together the (person, database) order of the tables.
    let mut old_users = old.users.iter().peekable();
    let mut new_users = new.users.iter().peekable();
    while let Some((old_user, new_user)) = next_person(&mut old_users, &mut new_users) {
        let old_cutoff = old_user.and_then(|u| u.certificates_issued_after);
        let new_cutoff = new_user.and_then(|u| u.certificates_issued_after);
        let mut before = old_user
            .map(|u| old.access.of_user(&u.name))
            .into_iter()
            .flatten()
            .peekable();
        let mut after = new_user
            .map(|u| new.access.of_user(&u.name))
            .into_iter()
            .flatten()
            .peekable();
        // The `else` branches below are never taken: `peek` has just seen the entry, and a
        // person has entries only on a side that has the person.
        loop {
            let order = match (before.peek(), after.peek()) {
                (Some(a), Some(b)) => a.database.cmp(b.database),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            match order {
                Ordering::Less => {
                    let Some((a, user)) = before.next().zip(old_user) else {
                        break;
                    };
                    changes.push(AccessChange::Removed {
                        entry: access_entry(a, old_cutoff),
                        via: via_of(&old_reach, user, a.database),
                    });
                }
                Ordering::Greater => {
                    let Some((b, user)) = after.next().zip(new_user) else {
                        break;
                    };
                    changes.push(AccessChange::Added {
                        entry: access_entry(b, new_cutoff),
                        via: via_of(&new_reach, user, b.database),
                    });
                }
                Ordering::Equal => {
                    let (Some(a), Some(b), Some(user)) = (before.next(), after.next(), new_user)
                    else {
                        break;
                    };
                    if a.rights == b.rights && old_cutoff == new_cutoff {
                        continue;
                    }
                    let (a, b) = (access_entry(a, old_cutoff), access_entry(b, new_cutoff));
                    if a != b {
                        let via = via_of(&new_reach, user, &b.database);
                        changes.push(AccessChange::Changed {
                            before: a,
                            after: b,
                            via,
                        });
                    }
                }
            }
        }
    }
    AccessDiff {
        changes,
        note: None,
    }
}

/// The people of one model, in name order.
type People<'a> = std::iter::Peekable<std::collections::btree_map::Iter<'a, String, User>>;

/// The next person of either side, in name order, with their `user` on each side that has it.
fn next_person<'a>(
    old: &mut People<'a>,
    new: &mut People<'a>,
) -> Option<(Option<&'a User>, Option<&'a User>)> {
    use std::cmp::Ordering;
    let order = match (old.peek(), new.peek()) {
        (Some((a, _)), Some((b, _))) => a.cmp(b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => return None,
    };
    let take = |side: &mut People<'a>| side.next().map(|(_, user)| user);
    Some(match order {
        Ordering::Less => (take(old), None),
        Ordering::Greater => (None, take(new)),
        Ordering::Equal => (take(old), take(new)),
    })
}

/// ANSI colours for `+`, `-` and `~` lines, used only when colour is on.
const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

impl AccessDiff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// (added, changed, removed) entries.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for change in &self.changes {
            match change {
                AccessChange::Added { .. } => counts.0 += 1,
                AccessChange::Changed { .. } => counts.1 += 1,
                AccessChange::Removed { .. } => counts.2 += 1,
            }
        }
        counts
    }

    /// One line per added or removed entry, one per changed aspect of a changed entry, each
    /// `(sign, text)`, in (person, database) order.
    pub fn lines(&self) -> Vec<(char, String)> {
        let mut lines = Vec::new();
        for change in &self.changes {
            match change {
                AccessChange::Added { entry, via } => lines.push(('+', whole(entry, via))),
                AccessChange::Removed { entry, via } => lines.push(('-', whole(entry, via))),
                AccessChange::Changed { before, after, .. } => {
                    for (aspect, old, new) in aspects(before, after) {
                        lines.push((
                            '~',
                            format!(
                                "{} → {}: {aspect} {old} → {new}",
                                before.identity, before.database
                            ),
                        ));
                    }
                }
            }
        }
        lines
    }

    /// `Access: 2 added, 1 changed, 1 removed.` or `Access: no changes.`
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "Access: no changes.".to_string();
        }
        let (add, change, remove) = self.counts();
        format!("Access: {add} added, {change} changed, {remove} removed.")
    }

    /// The changes as text: a heading, the lines (coloured when `color`), the summary.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        if let Some(note) = &self.note {
            let _ = writeln!(out, "Note: {note}\n");
        }
        if self.is_empty() {
            out.push_str("Access changes: none; nobody gains or loses access.\n");
            return out;
        }
        out.push_str("Access changes (who can reach what, as whom):\n\n");
        for (sign, text) in self.lines() {
            let paint = match sign {
                '+' => GREEN,
                '-' => RED,
                _ => YELLOW,
            };
            if color {
                let _ = writeln!(out, "  {paint}{sign} {text}{RESET}");
            } else {
                let _ = writeln!(out, "  {sign} {text}");
            }
        }
        let _ = writeln!(out, "\n{}", self.summary());
        out
    }

    /// The changes as Markdown for a pull-request comment: a heading, a table of the changes,
    /// then the full lines in a collapsed `diff` block (which GitHub colours).
    pub fn markdown(&self, title: &str) -> String {
        let mut out = format!("### {}\n\n", escape_markdown(title));
        if let Some(note) = &self.note {
            let _ = writeln!(out, "> {}\n", escape_markdown(note));
        }
        if self.is_empty() {
            out.push_str("No access changes: nobody gains or loses access.\n");
            return out;
        }
        let (add, change, remove) = self.counts();
        let _ = writeln!(
            out,
            "**{add} added, {change} changed, {remove} removed** (person → database)\n"
        );
        out.push_str("| | person | database | access |\n|---|---|---|---|\n");
        for change in &self.changes {
            let (sign, entry, text) = match change {
                AccessChange::Added { entry, via } => ("➕", entry, logins(entry, via)),
                AccessChange::Removed { entry, via } => ("➖", entry, logins(entry, via)),
                AccessChange::Changed { before, after, .. } => {
                    let text = aspects(before, after)
                        .into_iter()
                        .map(|(aspect, old, new)| format!("{aspect} {old} → {new}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    ("✏️", after, text)
                }
            };
            let _ = writeln!(
                out,
                "| {sign} | {} | {} | {} |",
                escape_markdown(&entry.identity),
                escape_markdown(&entry.database),
                escape_markdown(&text)
            );
        }
        let lines = self.lines();
        // A fence longer than any run of backticks in the text, so no name can end it.
        let longest = lines
            .iter()
            .map(|(_, text)| longest_backtick_run(text))
            .max()
            .unwrap_or(0);
        let fence = "`".repeat(longest.max(2) + 1);
        let _ = writeln!(
            out,
            "\n<details><summary>Details ({} lines)</summary>\n\n{fence}diff",
            lines.len()
        );
        for (sign, text) in &lines {
            let _ = writeln!(out, "{sign} {text}");
        }
        let _ = writeln!(out, "{fence}\n\n</details>");
        out
    }

    /// The changes as the JSON part of the plan and diff documents.
    pub fn to_json(&self) -> AccessChangesJson {
        let (add, change, remove) = self.counts();
        AccessChangesJson {
            summary: AccessSummaryJson {
                add,
                change,
                remove,
            },
            changes: self
                .changes
                .iter()
                .map(|change| match change {
                    AccessChange::Added { entry, via } => AccessChangeJson {
                        action: "add".into(),
                        user: entry.identity.clone(),
                        database: entry.database.clone(),
                        via: via.clone(),
                        changed: Vec::new(),
                        before: None,
                        after: Some(EntryJson::of(entry)),
                    },
                    AccessChange::Removed { entry, via } => AccessChangeJson {
                        action: "remove".into(),
                        user: entry.identity.clone(),
                        database: entry.database.clone(),
                        via: via.clone(),
                        changed: Vec::new(),
                        before: Some(EntryJson::of(entry)),
                        after: None,
                    },
                    AccessChange::Changed { before, after, via } => AccessChangeJson {
                        action: "change".into(),
                        user: after.identity.clone(),
                        database: after.database.clone(),
                        via: via.clone(),
                        changed: aspects(before, after)
                            .into_iter()
                            .map(|(aspect, _, _)| aspect.to_string())
                            .collect(),
                        before: Some(EntryJson::of(before)),
                        after: Some(EntryJson::of(after)),
                    },
                })
                .collect(),
            note: self.note.clone(),
        }
    }
}

/// An entry as one line: `alice → shop as app (db-names shop) via developer`.
fn whole(entry: &frozen::Access, via: &Option<Vec<String>>) -> String {
    format!(
        "{} → {} {}",
        entry.identity,
        entry.database,
        logins(entry, via)
    )
}

/// What an entry lets the person do: `as app, readonly (db-names shop) via developer`, with the
/// provisioned user and what it is granted when provisioning is on.
fn logins(entry: &frozen::Access, via: &Option<Vec<String>>) -> String {
    let mut as_whom = Vec::new();
    if !entry.db_users.is_empty() {
        as_whom.push(entry.db_users.join(", "));
    }
    if entry.provision != Provision::Off {
        as_whom.push(format!(
            "{} (provisioned, {}: {})",
            entry.identity,
            crate::explain::provision_mode(entry.provision),
            granted(entry)
        ));
    }
    let mut text = format!(
        "as {} (db-names {})",
        as_whom.join(", or "),
        names(&entry.db_names)
    );
    if let Some(via) = via
        && !via.is_empty()
    {
        let _ = write!(text, " via {}", via.join(", "));
    }
    text
}

/// What a provisioned user is granted: `db-roles reader; SELECT on every table in schema public`.
fn granted(entry: &frozen::Access) -> String {
    let mut parts = Vec::new();
    if !entry.db_roles.is_empty() {
        parts.push(format!("db-roles {}", entry.db_roles.join(", ")));
    }
    parts.extend(entry.grants.iter().map(grant));
    if parts.is_empty() {
        "no privileges".to_string()
    } else {
        parts.join("; ")
    }
}

/// The aspects that differ between two entries of one (person, database), as
/// `(aspect, before, after)` in a fixed order.
fn aspects(a: &frozen::Access, b: &frozen::Access) -> Vec<(&'static str, String, String)> {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let grants = |g: &[Grant]| {
        if g.is_empty() {
            "none".to_string()
        } else {
            g.iter().map(grant).collect::<Vec<_>>().join("; ")
        }
    };
    let mut out = Vec::new();
    if a.db_users != b.db_users {
        out.push(("db-users", list(&a.db_users), list(&b.db_users)));
    }
    if a.db_names != b.db_names {
        out.push(("db-names", names(&a.db_names), names(&b.db_names)));
    }
    if a.provision != b.provision {
        out.push((
            "provision",
            crate::explain::provision_mode(a.provision).to_string(),
            crate::explain::provision_mode(b.provision).to_string(),
        ));
    }
    if a.db_roles != b.db_roles {
        out.push(("db-roles", list(&a.db_roles), list(&b.db_roles)));
    }
    if a.grants != b.grants {
        out.push(("permissions", grants(&a.grants), grants(&b.grants)));
    }
    if a.certificates_issued_after != b.certificates_issued_after {
        let when = |t: Option<i64>| match t {
            None => "any".to_string(),
            Some(t) => time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| t.to_string()),
        };
        out.push((
            "certificates-issued-after",
            when(a.certificates_issued_after),
            when(b.certificates_issued_after),
        ));
    }
    out
}

fn names(set: &NameSet) -> String {
    match set {
        NameSet::Any => "*".to_string(),
        NameSet::Only(names) if names.is_empty() => "none".to_string(),
        NameSet::Only(names) => names.join(", "),
    }
}

/// A grant for people: `SELECT on every table in schema public`, `CONNECT on the database`.
fn grant(grant: &Grant) -> String {
    let privileges: Vec<&str> = grant
        .privileges
        .iter()
        .map(|p| match p {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Truncate => "TRUNCATE",
            Privilege::References => "REFERENCES",
            Privilege::Trigger => "TRIGGER",
            Privilege::Usage => "USAGE",
            Privilege::Create => "CREATE",
            Privilege::Connect => "CONNECT",
            Privilege::Temporary => "TEMPORARY",
            Privilege::Execute => "EXECUTE",
            Privilege::All => "ALL PRIVILEGES",
        })
        .collect();
    let kind = match grant.on {
        GrantOn::Database => return format!("{} on the database", privileges.join(" ")),
        GrantOn::Schema => "schema",
        GrantOn::Table => "table",
        GrantOn::Sequence => "sequence",
        GrantOn::Function => "function",
    };
    let schema = grant.schema.as_deref().unwrap_or("public");
    match (&grant.object, grant.on) {
        (_, GrantOn::Schema) => format!("{} on schema {schema}", privileges.join(" ")),
        (Some(object), _) => format!(
            "{} on {kind} {object} in schema {schema}",
            privileges.join(" ")
        ),
        (None, _) => format!(
            "{} on every {kind} in schema {schema}",
            privileges.join(" ")
        ),
    }
}

/// Text safe in a Markdown table cell or paragraph: no table breaks, no HTML, no emphasis.
fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' | '\\' | '*' | '_' | '`' | '[' | ']' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// Access changes in the plan and diff JSON documents.
#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct AccessChangesJson {
    pub summary: AccessSummaryJson,
    /// Sorted by person, then database.
    pub changes: Vec<AccessChangeJson>,
    /// Something to know about the comparison itself (a deployed table that cannot be read).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

/// Entries that appear, change and disappear.
#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct AccessSummaryJson {
    pub add: usize,
    pub change: usize,
    pub remove: usize,
}

/// One (person, database) whose access appears, changes or disappears.
#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct AccessChangeJson {
    /// `add` (the person can now reach the database), `change` or `remove`.
    pub action: String,
    /// The person (their certificate's CN).
    pub user: String,
    /// The manifest name of the database.
    pub database: String,
    /// The person's roles whose `allow` selects the database (the new manifest's, or for a
    /// removal the old one's); absent when that side is a deployed frozen config.
    pub via: Option<Vec<String>>,
    /// For `change`: which aspects differ, among `db-users`, `db-names`, `provision`,
    /// `db-roles`, `permissions` and `certificates-issued-after`.
    pub changed: Vec<String>,
    /// The entry before (absent for `add`) and after (absent for `remove`).
    pub before: Option<EntryJson>,
    pub after: Option<EntryJson>,
}

/// One access entry as the relay enforces it.
#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct EntryJson {
    /// Database users the person may log in as.
    pub db_users: Vec<String>,
    /// Database names the person may open: `"any"` or `{"only": [...]}`, as in frozen.json.
    pub db_names: NameSetJson,
    /// `off`, `keep` or `best-effort-drop`.
    pub provision: String,
    /// Roles granted to the provisioned user.
    pub db_roles: Vec<String>,
    /// Privileges granted to the provisioned user, for people
    /// (`SELECT on every table in schema public`).
    pub permissions: Vec<String>,
    /// The person's certificates issued before this instant (seconds since the Unix epoch)
    /// are refused; absent when any is accepted.
    pub certificates_issued_after: Option<i64>,
}

/// `"*"` or a list of names.
#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[serde(untagged)]
pub enum NameSetJson {
    /// Always `"*"`: every database name.
    Any(String),
    Only(Vec<String>),
}

impl EntryJson {
    fn of(entry: &frozen::Access) -> EntryJson {
        EntryJson {
            db_users: entry.db_users.clone(),
            db_names: match &entry.db_names {
                NameSet::Any => NameSetJson::Any("*".into()),
                NameSet::Only(names) => NameSetJson::Only(names.clone()),
            },
            provision: crate::explain::provision_mode(entry.provision).to_string(),
            db_roles: entry.db_roles.clone(),
            permissions: entry.grants.iter().map(grant).collect(),
            certificates_issued_after: entry.certificates_issued_after,
        }
    }
}

/// Version of the `dbward diff --format json` document; bumped on any incompatible change.
pub const DIFF_JSON_VERSION: u32 = 1;

/// `dbward diff OLD NEW --format json`: the access changes between two manifests.
#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct DiffJson {
    pub format_version: u32,
    /// The manifests compared, as given on the command line.
    pub old: String,
    pub new: String,
    /// `true` when anyone gains, loses or changes access.
    pub has_changes: bool,
    pub access: AccessChangesJson,
}

impl DiffJson {
    pub fn new(old: &str, new: &str, diff: &AccessDiff) -> DiffJson {
        DiffJson {
            format_version: DIFF_JSON_VERSION,
            old: old.to_string(),
            new: new.to_string(),
            has_changes: !diff.is_empty(),
            access: diff.to_json(),
        }
    }
}

/// The JSON Schema of the diff document, as checked in at `schemas/diff.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(DiffJson);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
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

    fn full() -> String {
        include_str!("../../examples/full.kdl").to_string()
    }

    #[test]
    fn same_manifest_has_no_changes() {
        let m = model(&full());
        let d = diff(&Table::of_model(&m), &Table::of_model(&m));
        assert!(d.is_empty());
        assert_eq!(d.summary(), "Access: no changes.");
    }

    #[test]
    fn nothing_deployed_means_everything_is_added() {
        let m = model(&full());
        let d = deployed(&m, None);
        assert_eq!(d.counts(), (m.access.len(), 0, 0));
        let text = d.render(false);
        assert!(
            text.contains("+ bob → orders as readonly, or bob (provisioned, best-effort-drop"),
            "{text}"
        );
        assert!(text.contains("via support, auditor"), "{text}");
        assert!(!text.contains('\x1b'));
        assert!(d.render(true).contains("\x1b[32m+ "));
    }

    #[test]
    fn deployed_frozen_json_is_the_old_side() {
        let m = model(&full());
        let config = crate::emit::frozen::build(&m).unwrap();
        let bytes = config.to_json().into_bytes();
        assert!(deployed(&m, Some(&bytes)).is_empty());
        let d = deployed(&m, Some(b"not json"));
        assert!(
            d.note
                .as_deref()
                .is_some_and(|n| n.contains("cannot be read"))
        );
        assert_eq!(d.counts().0, m.access.len());
    }

    #[test]
    fn a_certificate_cutoff_is_a_change_with_its_own_line() {
        let m = model(&full());
        let old = Table::of_model(&m);
        let mut new = old.clone();
        new.entries[0].certificates_issued_after = Some(1_796_083_200);
        let d = diff(&old, &new);
        assert_eq!(d.counts(), (0, 1, 0));
        let lines = d.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0]
                .1
                .ends_with(": certificates-issued-after any → 2026-12-01T00:00:00Z"),
            "{lines:?}"
        );
    }

    /// `diff_models` skips converting entries whose rights and cut-off are equal; it must find
    /// exactly the changes of comparing the two models' whole tables in the relay's form.
    #[test]
    fn comparing_models_is_comparing_their_whole_tables() {
        let base = full();
        let alice = "user alice {\n    roles developer analyst\n";
        let variants = [
            base.clone(),
            // Developers reach every database: added entries, and a deny that now matters.
            base.replacen("databases env=dev", "databases \"*\"", 1),
            // A certificate cut-off: the same rights, a changed entry.
            base.replacen(
                alice,
                &format!("{alice}    certificates-issued-after \"2026-12-01T00:00:00Z\"\n"),
                1,
            ),
            // bob leaves and carol arrives: a person on one side only.
            base.replacen("user bob {", "user carol {", 1),
            // Other privileges: changed permissions.
            base.replacen("permission SELECT on=", "permission SELECT INSERT on=", 1),
            // Other rights in the manifest, the same entries in the relay's form: no change.
            base.replacen("on=table schema=public", "on=all-tables schema=public", 1),
            // support reaches nothing: bob keeps only what auditor gives.
            base.replacen(
                "databases env=prod\n        db-users",
                "databases env=none\n        db-users",
                1,
            ),
        ];
        let models: Vec<Model> = variants.iter().map(|text| model(text)).collect();
        for old in &models {
            for new in &models {
                let whole = diff(&Table::of_model(old), &Table::of_model(new));
                assert_eq!(diff_models(old, new), whole);
            }
        }
        // The variants do exercise each kind of change, and the no-change conversion.
        let kinds = |d: &AccessDiff| d.counts();
        assert_eq!(kinds(&diff_models(&models[0], &models[2])), (0, 3, 0));
        let (added, _, removed) = kinds(&diff_models(&models[0], &models[3]));
        assert!(added > 0 && removed > 0);
        assert!(diff_models(&models[0], &models[5]).is_empty());
        assert_ne!(models[0].access, models[5].access);
        assert!(kinds(&diff_models(&models[0], &models[6])).1 > 0);
    }

    #[test]
    fn markdown_escapes_and_fences() {
        let m = model(&full());
        let md = deployed(&m, None).markdown("dbward: access changes");
        assert!(md.contains("| ➕ | alice | analytics |"), "{md}");
        assert!(md.contains("<details>") && md.contains("```diff"), "{md}");
        assert_eq!(escape_markdown("a|b<c>"), "a\\|b&lt;c&gt;");
    }
}

#[cfg(test)]
mod schema_tests {
    #[test]
    fn diff_schema_file_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/diff.schema.json");
        let expected = super::json_schema();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &expected).unwrap();
            return;
        }
        let actual = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            actual == expected,
            "schemas/diff.schema.json is stale: run `UPDATE_GOLDEN=1 cargo nextest run -p dbward \
             diff_schema_file_is_current` and commit the result"
        );
    }
}

//! Rule: names that reach SQL, pg_hba.conf, pg_ident.conf, TLS SNI, certificate subjects or file
//! paths are safe there. Codes: `dbward::name_too_long`, `dbward::unsafe_name`,
//! `dbward::reserved_name`, `dbward::invalid_database_name`, `dbward::invalid_person_name`.
//!
//! **Why it matters:** PostgreSQL truncates identifiers to 63 bytes (two names can collide);
//! pg_hba.conf reads `all`, `sameuser`, `+group`, `@file` and `/regex` as keywords even where a
//! name was meant, and cannot quote a `"` at all; a newline in a name ends a config line. A name
//! like `x"; DROP ROLE y; --` must never get as far as a file.
//!
//! **Example:**
//! ```kdl
//! db-user all            // reserved_name: pg_hba.conf reads it as "every user"
//! database Orders_DB {}  // invalid_database_name: used in DNS names and paths
//! ```
//!
//! **How to fix:** rename. Database and cloud names are DNS labels (lower-case letters, digits,
//! `-`); PostgreSQL names are at most 63 bytes, without `"` or control characters, and not a
//! pg_hba keyword, `public` or `pg_…`.

use super::walk_known;
use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::Manifest;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER: usize = 63;

/// Words pg_hba.conf treats as keywords in its database and user columns.
const HBA_KEYWORDS: &[&str] = &["all", "sameuser", "samerole", "samegroup", "replication"];

/// Role names PostgreSQL reserves (`CREATE ROLE public` fails; these are special in GRANT).
const RESERVED_ROLES: &[&str] = &[
    "public",
    "none",
    "current_user",
    "session_user",
    "current_role",
];

/// What a name is used for, which decides the rules it must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A manifest database or cloud name: DNS label (SNI, file paths).
    DnsLabel,
    /// A PostgreSQL role (db-user, db-role, admin-user): identifier + hba + reserved role names.
    PgRole,
    /// A person: becomes a certificate CN and a provisioned PostgreSQL user.
    Person,
    /// A PostgreSQL database name (db-names, default-database): identifier + hba keywords.
    PgDatabase,
    /// A schema, table, sequence or function in SQL (quoted by the emitters).
    SqlObject,
    /// Free text that only has to be printable (role names, labels).
    Text,
}

/// Checks one name; returns the problem, if any, as (code, message, help).
pub fn problem(name: &str, usage: Use) -> Option<(&'static str, String, String)> {
    if name.is_empty() {
        return Some((
            "dbward::unsafe_name",
            "a name cannot be empty".into(),
            "write a name".into(),
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Some((
            "dbward::unsafe_name",
            format!("the name contains the control character {:?}", c),
            "remove it: control characters would end or corrupt lines of generated config files"
                .into(),
        ));
    }
    if usage == Use::Text {
        return None;
    }
    if usage == Use::DnsLabel {
        let ok = name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        return (!ok).then(|| {
            let suggestion: String = name
                .to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            (
                "dbward::invalid_database_name",
                format!("`{name}` is not a DNS label"),
                format!(
                    "this name is used in TLS server names (<name>.<public-name>) and file paths: \
                     use lower-case letters, digits and `-`, at most 63, e.g. `{}`",
                    suggestion.trim_matches('-')
                ),
            )
        });
    }
    if name.contains('"') {
        return Some((
            "dbward::unsafe_name",
            format!("`{name}` contains a double quote"),
            "remove the `\"`: pg_hba.conf and pg_ident.conf cannot quote it, and it is never needed in a name".into(),
        ));
    }
    if name.len() > MAX_IDENTIFIER {
        return Some((
            "dbward::name_too_long",
            format!(
                "`{name}` is {} bytes long; PostgreSQL names are at most {MAX_IDENTIFIER}",
                name.len()
            ),
            "shorten it: PostgreSQL would silently truncate it, and two names could become one"
                .into(),
        ));
    }
    if usage == Use::SqlObject {
        return None;
    }
    if HBA_KEYWORDS.contains(&name.to_ascii_lowercase().as_str()) {
        return Some((
            "dbward::reserved_name",
            format!("`{name}` is a pg_hba.conf keyword"),
            "choose another name: pg_hba.conf would read it as a keyword, not as this name".into(),
        ));
    }
    if let Some(c) = name.chars().next().filter(|c| matches!(c, '+' | '@' | '/')) {
        let meaning = match c {
            '+' => "a group membership",
            '@' => "a file to include",
            _ => "a regular expression",
        };
        return Some((
            "dbward::reserved_name",
            format!("`{name}` starts with `{c}`, which pg_hba.conf reads as {meaning}"),
            format!("choose a name that does not start with `{c}`"),
        ));
    }
    if matches!(usage, Use::PgRole | Use::Person) {
        let lower = name.to_ascii_lowercase();
        if RESERVED_ROLES.contains(&lower.as_str()) || lower.starts_with("pg_") {
            return Some((
                "dbward::reserved_name",
                format!("`{name}` is reserved by PostgreSQL"),
                "choose another name: `public`, `pg_…` and the current_user-style words cannot be role names".into(),
            ));
        }
    }
    if usage == Use::Person && name.contains('/') {
        return Some((
            "dbward::invalid_person_name",
            format!("`{name}` contains `/`"),
            "a person's name becomes a certificate subject, a PostgreSQL user and a file name: remove the `/`".into(),
        ));
    }
    None
}

/// Which namespace a name lives in: names of one kind are compared with each other by the
/// look-alike rule ([`super::confusable_names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Database,
    Cloud,
    Role,
    Person,
    /// A PostgreSQL role: db-user, db-role and admin-user share PostgreSQL's one namespace.
    DbUser,
    /// A PostgreSQL database name (db-names, default-database).
    DbName,
    SqlObject,
    LabelKey,
    LabelValue,
}

impl Kind {
    /// What the name is, in a message ("user `carol`").
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Database => "database",
            Kind::Cloud => "cloud",
            Kind::Role => "role",
            Kind::Person => "user",
            Kind::DbUser => "database user",
            Kind::DbName => "database name",
            Kind::SqlObject => "SQL object",
            Kind::LabelKey => "label",
            Kind::LabelValue => "label value",
        }
    }
}

/// Which names to check: (node path, property or `None` for arguments, all arguments?, usage,
/// namespace).
const NAMES: &[(&str, Option<&str>, bool, Use, Kind)] = &[
    ("database", None, false, Use::DnsLabel, Kind::Database),
    ("cloud", None, false, Use::DnsLabel, Kind::Cloud),
    ("role", None, false, Use::Text, Kind::Role),
    ("user", None, false, Use::Person, Kind::Person),
    ("database/db-role", None, false, Use::PgRole, Kind::DbUser),
    ("database/db-user", None, false, Use::PgRole, Kind::DbUser),
    (
        "database/admin-user",
        None,
        false,
        Use::PgRole,
        Kind::DbUser,
    ),
    (
        "database/admin-user",
        Some("default-database"),
        false,
        Use::PgDatabase,
        Kind::DbName,
    ),
    (
        "role/allow/db-names",
        None,
        true,
        Use::PgDatabase,
        Kind::DbName,
    ),
    (
        "role/deny/db-names",
        None,
        true,
        Use::PgDatabase,
        Kind::DbName,
    ),
    (
        "database/db-role/grant",
        Some("schema"),
        false,
        Use::SqlObject,
        Kind::SqlObject,
    ),
    (
        "database/db-role/grant",
        Some("table"),
        false,
        Use::SqlObject,
        Kind::SqlObject,
    ),
    (
        "database/db-role/grant",
        Some("sequence"),
        false,
        Use::SqlObject,
        Kind::SqlObject,
    ),
    (
        "database/db-role/grant",
        Some("function"),
        false,
        Use::SqlObject,
        Kind::SqlObject,
    ),
    (
        "role/allow/permission",
        Some("schema"),
        false,
        Use::SqlObject,
        Kind::SqlObject,
    ),
    (
        "role/allow/permission",
        Some("table"),
        false,
        Use::SqlObject,
        Kind::SqlObject,
    ),
    (
        "role/allow/permission",
        Some("sequence"),
        false,
        Use::SqlObject,
        Kind::SqlObject,
    ),
    (
        "role/allow/permission",
        Some("function"),
        false,
        Use::SqlObject,
        Kind::SqlObject,
    ),
];

/// Calls `f` on every name the manifest writes (defined or referred to), in manifest order,
/// with its span, what it is used for and its namespace. Label keys and values are `Use::Text`.
pub fn each_name<'a>(manifest: &'a Manifest, mut f: impl FnMut(&'a str, Span, Use, Kind)) {
    walk_known(manifest, |node, spec| {
        for (path, prop, all_args, usage, kind) in NAMES {
            if spec.path != *path {
                continue;
            }
            let values: Vec<(&str, Span)> = match prop {
                Some(p) => node
                    .prop(p)
                    .and_then(|p| Some((p.value.as_str()?, p.value.span)))
                    .into_iter()
                    .collect(),
                None if *all_args => node.str_args().filter(|(s, _)| *s != "*").collect(),
                None => node.str_args().take(1).collect(),
            };
            for (name, span) in values {
                f(name, span, *usage, *kind);
            }
        }
        if spec.path == "database/labels" || spec.path.ends_with("/databases") {
            for prop in &node.props {
                f(&prop.name.text, prop.name.span, Use::Text, Kind::LabelKey);
                if let Some(value) = prop.value.as_str() {
                    f(value, prop.value.span, Use::Text, Kind::LabelValue);
                }
            }
        }
    });
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    each_name(manifest, |name, span, usage, _| {
        // A name with an invisible or bidirectional character gets that one error
        // (`invisible_characters`), not a second one about the same character.
        if name.chars().any(|c| crate::source::hidden(c).is_some()) {
            return;
        }
        if let Some((code, message, help)) = problem(name, usage) {
            diags.push(
                Diagnostic::error(code, message)
                    .label(span, "unsafe here")
                    .help(help),
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::test_support::{absent, expect};

    #[test]
    fn injection_is_rejected() {
        let body = "database d {\n    db-user \"x\\\"; DROP ROLE y; --\"\n}\n";
        expect(body, "dbward::unsafe_name", "double quote");
        assert!(
            problem("o'brien", Use::PgRole).is_none(),
            "single quotes are quoted by emitters"
        );
        assert!(problem("a\nb", Use::PgRole).is_some());
    }

    #[test]
    fn hba_keywords_prefixes_and_reserved() {
        for bad in [
            "all",
            "ALL",
            "sameuser",
            "samerole",
            "samegroup",
            "replication",
            "+admins",
            "@file",
            "/^x$",
            "public",
            "pg_monitor",
        ] {
            assert!(problem(bad, Use::PgRole).is_some(), "{bad}");
        }
        assert!(
            problem("pg_data", Use::PgDatabase).is_none(),
            "pg_ is only reserved for roles"
        );
        assert!(problem(&"x".repeat(64), Use::PgRole).is_some());
        assert!(problem(&"x".repeat(63), Use::PgRole).is_none());
    }

    #[test]
    fn dns_labels_and_people() {
        assert!(problem("orders", Use::DnsLabel).is_none());
        assert!(problem("Orders_DB", Use::DnsLabel).is_some());
        assert!(problem("-x", Use::DnsLabel).is_some());
        assert!(problem("a/b", Use::Person).is_some());
        // Provisioned users get their grants as data (`dbward.activate`), so `$` is fine.
        assert!(problem("a$dbward_user$b", Use::Person).is_none());
        expect(
            "database Orders {\n}\n",
            "dbward::invalid_database_name",
            "`Orders`",
        );
        expect(
            "user \"al/ice\" {\n    roles r\n}\n",
            "dbward::invalid_person_name",
            "`/`",
        );
        expect(
            "database d {\n    db-user all\n}\n",
            "dbward::reserved_name",
            "keyword",
        );
        absent(
            "database d {\n    db-user \"cloudsql-user@acme-prod.iam\"\n}\n",
            "dbward::reserved_name",
        );
    }
}

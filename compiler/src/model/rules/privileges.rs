//! Rule `dbward::privilege_not_applicable` / `dbward::invalid_grant_target`: privileges apply to
//! the object kind they are granted on, and the target names what that kind needs.
//!
//! **Why it matters:** `GRANT INSERT ON DATABASE` is an SQL error at apply time, half-way
//! through a script; a grant without `schema=` cannot be written at all.
//!
//! **Example:**
//! ```kdl
//! grant INSERT on=database                 // privilege_not_applicable
//! grant SELECT on=all-tables               // invalid_grant_target: needs schema=
//! ```
//!
//! **How to fix:** use a privilege the kind has (database: CONNECT, CREATE, TEMPORARY; schema:
//! USAGE, CREATE; tables: SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER;
//! sequences: USAGE, SELECT, UPDATE; functions: EXECUTE; ALL everywhere) and give `schema=` for
//! every kind but `database`.

use super::walk_known;
use crate::diag::Diagnostic;
use crate::model::lower::object_kind;
use crate::model::types::ObjectKind;
use crate::syntax::ast::Manifest;

/// The privileges PostgreSQL accepts on each object kind.
pub fn applicable(kind: ObjectKind) -> &'static [&'static str] {
    match kind {
        ObjectKind::Database => &["CONNECT", "CREATE", "TEMPORARY", "ALL"],
        ObjectKind::Schema => &["USAGE", "CREATE", "ALL"],
        ObjectKind::Table | ObjectKind::AllTables => &[
            "SELECT",
            "INSERT",
            "UPDATE",
            "DELETE",
            "TRUNCATE",
            "REFERENCES",
            "TRIGGER",
            "ALL",
        ],
        ObjectKind::Sequence | ObjectKind::AllSequences => &["USAGE", "SELECT", "UPDATE", "ALL"],
        ObjectKind::Function | ObjectKind::AllFunctions => &["EXECUTE", "ALL"],
    }
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    walk_known(manifest, |node, spec| {
        if !matches!(
            spec.path,
            "database/db-role/grant" | "role/allow/permission"
        ) {
            return;
        }
        let Some(on) = node.prop("on") else { return };
        let Some(word) = on.value.as_str() else {
            return;
        };
        let Some(kind) = object_kind(word) else {
            return;
        };
        let allowed = applicable(kind);
        for (privilege, span) in node.str_args() {
            if crate::syntax::PRIVILEGES.contains(&privilege) && !allowed.contains(&privilege) {
                diags.push(
                    Diagnostic::error(
                        "dbward::privilege_not_applicable",
                        format!("{privilege} cannot be granted on={word}"),
                    )
                    .label(span, format!("not a privilege of a {word}"))
                    .label(on.value.span, "object kind")
                    .help(format!("on={word} takes: {}", allowed.join(", "))),
                );
            }
        }
        let schema = node.prop("schema");
        match (kind, schema) {
            (ObjectKind::Database, Some(s)) => diags.push(
                Diagnostic::error(
                    "dbward::invalid_grant_target",
                    "on=database takes no schema=",
                )
                .label(s.span, "not for a database")
                .help("remove schema=; a database grant applies to the database the SQL runs in"),
            ),
            (ObjectKind::Database, None) | (_, Some(_)) => {}
            (_, None) => diags.push(
                Diagnostic::error(
                    "dbward::invalid_grant_target",
                    format!("on={word} needs schema="),
                )
                .label(node.head_span(), "which schema?")
                .help("add schema=…, e.g. schema=public"),
            ),
        }
        let fits = match kind {
            ObjectKind::Table => Some("table"),
            ObjectKind::Sequence => Some("sequence"),
            ObjectKind::Function => Some("function"),
            _ => None,
        };
        for key in ["table", "sequence", "function"] {
            if let Some(p) = node.prop(key)
                && fits != Some(key)
            {
                diags.push(
                    Diagnostic::error("dbward::invalid_grant_target", format!("{key}= does not go with on={word}"))
                        .label(p.name.span, "does not fit the object kind")
                        .help(format!("use on={key} {key}=… for one {key}, or remove {key}= to grant on every object of the kind")),
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    fn grant(line: &str) -> String {
        format!("database d {{\n    db-role r {{\n        {line}\n    }}\n}}\n")
    }

    #[test]
    fn kinds() {
        expect(
            &grant("grant INSERT on=database"),
            "dbward::privilege_not_applicable",
            "INSERT cannot be granted on=database",
        );
        expect(
            &grant("grant EXECUTE on=all-tables schema=public"),
            "dbward::privilege_not_applicable",
            "EXECUTE",
        );
        absent(
            &grant("grant CONNECT TEMPORARY on=database"),
            "dbward::privilege_not_applicable",
        );
        absent(
            &grant("grant USAGE SELECT on=all-sequences schema=s"),
            "dbward::privilege_not_applicable",
        );
    }

    #[test]
    fn targets() {
        expect(
            &grant("grant SELECT on=all-tables"),
            "dbward::invalid_grant_target",
            "needs schema=",
        );
        expect(
            &grant("grant CONNECT on=database schema=public"),
            "dbward::invalid_grant_target",
            "no schema=",
        );
        expect(
            &grant("grant SELECT on=all-tables schema=public table=t"),
            "dbward::invalid_grant_target",
            "table=",
        );
        absent(
            &grant("grant SELECT on=table schema=public table=t"),
            "dbward::invalid_grant_target",
        );
    }
}

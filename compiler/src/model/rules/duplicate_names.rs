//! Rule `dbward::duplicate_name`: databases, clouds, roles and users have unique names, and so do
//! the db-roles and db-users of one database (they are all PostgreSQL roles there).
//!
//! **Why it matters:** two `database orders` blocks would have to be merged by guessing, and the
//! access table would silently depend on which one came last.
//!
//! **Example:**
//! ```kdl
//! user alice { roles developer }
//! user alice { roles support }     // duplicate_name
//! ```
//!
//! **How to fix:** rename one of them, or merge the two blocks into one.

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::{Manifest, Node};

fn report<'a>(nodes: impl Iterator<Item = &'a Node>, what: &str, diags: &mut Vec<Diagnostic>) {
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    for node in nodes {
        let Some(name) = node.first_str() else {
            continue;
        };
        let span = node.first_arg_span();
        if let Some(first) = seen.get(name) {
            diags.push(
                Diagnostic::error(
                    "dbward::duplicate_name",
                    format!("{what} `{name}` is declared twice"),
                )
                .label(span, "declared again here")
                .label(*first, "first declared here")
                .help(format!(
                    "rename one of them, or merge both into one `{}` block",
                    node.name()
                )),
            );
        } else {
            seen.insert(name, span);
        }
    }
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    report(manifest.nodes_named("database"), "database", diags);
    report(manifest.nodes_named("cloud"), "cloud", diags);
    report(manifest.nodes_named("role"), "role", diags);
    report(manifest.nodes_named("user"), "user", diags);
    for db in manifest.nodes_named("database") {
        // db-roles and db-users share PostgreSQL's one namespace of roles.
        let pg_roles = db
            .children()
            .iter()
            .filter(|n| n.name() == "db-role" || n.name() == "db-user" || n.name() == "admin-user");
        report(pg_roles, "PostgreSQL role", diags);
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    #[test]
    fn duplicates() {
        expect(
            "user a {\n    roles r\n}\nuser a {\n    roles r\n}\nrole r {\n}\n",
            "dbward::duplicate_name",
            "user `a`",
        );
        expect(
            "database d {\n    db-role x\n    db-user x\n}\n",
            "dbward::duplicate_name",
            "`x`",
        );
        expect(
            "role r {\n}\nrole r {\n}\n",
            "dbward::duplicate_name",
            "role `r`",
        );
        absent(
            "database d {\n    db-role x\n    db-user y\n}\n",
            "dbward::duplicate_name",
        );
    }
}

//! Rule: `allow`/`deny` blocks say clearly what they select and grant. Codes:
//! `dbward::invalid_selector`, `dbward::mixed_wildcard`, `dbward::allow_without_login`.
//!
//! **Why it matters:** `databases orders env=prod` could mean "orders *and* prod" or "orders
//! *or* prod"; `db-users "*" app` reads like a restriction but is everything. An access system
//! must not make people guess, so these are errors. An allow with no way to log in (no db-users
//! and no provisioning) grants nothing, which is worth a warning.
//!
//! **Example:**
//! ```kdl
//! allow {
//!     databases orders env=prod     // invalid_selector: names or labels, not both
//!     db-names "*" postgres         // mixed_wildcard
//! }
//! ```
//!
//! **How to fix:** select by `"*"`, by names, or by labels — one of them; write `"*"` alone.

use super::walk_known;
use crate::diag::Diagnostic;
use crate::syntax::ast::{Manifest, Node};

fn provisions(role: &Node) -> bool {
    role.child("provision")
        .and_then(Node::first_str)
        .is_some_and(|m| m != "off")
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    walk_known(manifest, |node, spec| {
        let name = spec.name();
        if name == "databases" {
            match (node.args.is_empty(), node.props.is_empty()) {
                (true, true) => diags.push(
                    Diagnostic::error("dbward::invalid_selector", "`databases` selects nothing")
                        .label(node.head_span(), "which databases?")
                        .help("write `databases \"*\"`, `databases NAME…` or `databases KEY=VALUE…`"),
                ),
                (false, false) => diags.push(
                    Diagnostic::error("dbward::invalid_selector", "`databases` mixes names and labels")
                        .label(node.args[0].span, "a name")
                        .label(node.props[0].span, "a label")
                        .help("select either by names or by labels (all labels must match); use two blocks for both"),
                ),
                _ => {}
            }
        }
        if matches!(name, "databases" | "db-users" | "db-names" | "db-roles")
            && node.args.len() > 1
            && let Some((_, span)) = node.str_args().find(|(s, _)| *s == "*")
        {
            diags.push(
                Diagnostic::error(
                    "dbward::mixed_wildcard",
                    format!("`\"*\"` already means every one; `{name}` lists more"),
                )
                .label(span, "everything")
                .help(format!(
                    "write `{name} \"*\"` alone, or list the names without `\"*\"`"
                )),
            );
        }
    });
    for role in manifest.nodes_named("role") {
        if provisions(role) {
            continue;
        }
        for allow in role.children_named("allow") {
            if allow.child("db-users").is_none() {
                diags.push(
                    Diagnostic::warning("dbward::allow_without_login", "this allow block lets nobody log in")
                        .label(allow.head_span(), "no db-users, and the role does not provision")
                        .help("add `db-users …` (the database users people may log in as), or `provision keep` to the role"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::expect;

    const DB: &str = "database orders {\n    labels env=prod\n    db-user app\n}\n";

    #[test]
    fn selectors() {
        expect(
            &format!(
                "{DB}role r {{\n    allow {{\n        databases orders env=prod\n        db-users app\n        db-names \"*\"\n    }}\n}}\n"
            ),
            "dbward::invalid_selector",
            "mixes",
        );
        expect(
            &format!(
                "{DB}role r {{\n    allow {{\n        databases\n        db-users app\n        db-names \"*\"\n    }}\n}}\n"
            ),
            "dbward::invalid_selector",
            "selects nothing",
        );
        expect(
            &format!(
                "{DB}role r {{\n    allow {{\n        databases \"*\"\n        db-users app\n        db-names \"*\" postgres\n    }}\n}}\n"
            ),
            "dbward::mixed_wildcard",
            "db-names",
        );
        expect(
            &format!(
                "{DB}role r {{\n    allow {{\n        databases \"*\"\n        db-names \"*\"\n    }}\n}}\n"
            ),
            "dbward::allow_without_login",
            "nobody",
        );
    }
}

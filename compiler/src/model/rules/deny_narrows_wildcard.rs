//! Rule `dbward::deny_narrows_wildcard`: a deny cannot take single names out of an allowed
//! `db-names "*"`.
//!
//! **Why it matters:** the access table stores explicit sets; "every database name except
//! `postgres`" cannot be written down for pg_hba.conf or checked by the relay without guessing
//! which names exist. Rather than silently widen or drop the deny, the manifest must say it.
//!
//! **Example:**
//! ```kdl
//! role dev  { allow { databases "*"; db-users "*"; db-names "*" } }
//! role safe { deny  { databases "*"; db-names postgres } }    // with both: deny_narrows_wildcard
//! ```
//!
//! **How to fix:** list the database names the allow opens instead of `"*"`, or deny with
//! `db-names "*"` (nothing) or `databases …` alone (the whole database).

use std::collections::BTreeSet;

use super::by_name;
use crate::diag::Diagnostic;
use crate::model::access::WildcardNarrowing;
use crate::syntax::ast::Manifest;

pub fn check(manifest: &Manifest, narrowings: &[WildcardNarrowing], diags: &mut Vec<Diagnostic>) {
    let roles = by_name(manifest, "role");
    let mut seen = BTreeSet::new();
    for n in narrowings {
        if !seen.insert((&n.role, n.deny_index)) {
            continue;
        }
        let Some(role) = roles.get(n.role.as_str()) else {
            continue;
        };
        let Some(deny) = role.children_named("deny").nth(n.deny_index) else {
            continue;
        };
        let span = deny
            .child("db-names")
            .map_or(deny.head_span(), |d| d.head_span());
        diags.push(
            Diagnostic::error(
                "dbward::deny_narrows_wildcard",
                format!("this deny removes single db-names, but `{}` is allowed `db-names \"*\"` on database `{}`", n.user, n.database),
            )
            .label(span, "cannot narrow \"*\"")
            .help("list the database names the allow should open instead of \"*\", or deny `db-names \"*\"` or the whole database"),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    const BASE: &str = "database d {\n    postgres host=\"h\"\n    self-hosted {\n        config-dir \"/x\"\n    }\n    db-user app\n}\nuser p {\n    roles a b\n}\nrole a {\n    allow {\n        databases \"*\"\n        db-users \"*\"\n        db-names NAMES\n    }\n}\n";

    #[test]
    fn narrowing_a_wildcard() {
        let deny =
            "role b {\n    deny {\n        databases \"*\"\n        db-names postgres\n    }\n}\n";
        expect(
            &format!("{}{deny}", BASE.replace("NAMES", "\"*\"")),
            "dbward::deny_narrows_wildcard",
            "`p`",
        );
        absent(
            &format!("{}{deny}", BASE.replace("NAMES", "postgres app")),
            "dbward::deny_narrows_wildcard",
        );
    }
}

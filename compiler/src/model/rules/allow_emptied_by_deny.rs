//! Rule `dbward::allow_emptied_by_deny` (warning): an allow block that the same role's deny
//! blocks cancel on every database it selects.
//!
//! **Why it matters:** deny beats allow, so such a block grants nothing. That is rarely what the
//! author meant: usually the deny is too broad (`db-users "*"` instead of one user) or the allow
//! selects the wrong databases.
//!
//! **Example:**
//! ```kdl
//! role dev {
//!     allow { databases env=prod; db-users "*"; db-names "*" }
//!     deny  { databases env=prod }      // cancels the whole allow
//! }
//! ```
//!
//! **How to fix:** narrow the deny, or remove both blocks.

use super::by_name;
use crate::diag::Diagnostic;
use crate::model::access::{DenyEffect, Selection, allowed, allows_something, apply_deny, matches};
use crate::model::types::{Database, Model, Role};
use crate::syntax::ast::Manifest;

pub fn check(manifest: &Manifest, model: &Model, diags: &mut Vec<Diagnostic>) {
    let nodes = by_name(manifest, "role");
    let databases: Vec<&Database> = model.databases.values().collect();
    let selection = Selection::new(&databases);
    for role in model.roles.values() {
        let Some(node) = nodes.get(role.name.as_str()) else {
            continue;
        };
        for (index, allow) in role.allow.iter().enumerate() {
            // This allow block alone, with all of the role's denies.
            let alone = Role {
                allow: vec![allow.clone()],
                ..role.clone()
            };
            let mut reached = 0;
            let mut emptied = 0;
            for db in selection
                .select(&allow.databases)
                .into_iter()
                .filter_map(|index| databases.get(index).copied())
            {
                let Some(mut acc) = allowed(&[&alone], db) else {
                    continue;
                };
                if !allows_something(&acc) {
                    continue;
                }
                reached += 1;
                let mut removed = false;
                for deny in role.deny.iter().filter(|d| matches(&d.databases, db)) {
                    if apply_deny(&mut acc, deny, db) == DenyEffect::RemovesDatabase {
                        removed = true;
                    }
                }
                if removed || !allows_something(&acc) {
                    emptied += 1;
                }
            }
            if reached > 0 && emptied == reached {
                let Some(allow_node) = node.children_named("allow").nth(index) else {
                    continue;
                };
                let mut diag = Diagnostic::warning(
                    "dbward::allow_emptied_by_deny",
                    format!(
                        "role `{}` denies everything this allow block grants",
                        role.name
                    ),
                )
                .label(allow_node.head_span(), "grants nothing in the end");
                if let Some(deny) = node.child("deny") {
                    diag = diag.label(deny.head_span(), "because of this deny");
                }
                diags.push(diag.help(
                    "narrow the deny (e.g. to one db-user or database), or remove the allow block",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    const DB: &str = "database d {\n    postgres host=\"h\"\n    labels env=prod team=a\n    self-hosted {\n        config-dir \"/x\"\n    }\n    db-user app\n}\ndatabase e {\n    postgres host=\"h\"\n    labels env=prod team=b\n    self-hosted {\n        config-dir \"/x\"\n    }\n    db-user app\n}\nuser p {\n    roles r\n}\n";

    #[test]
    fn warns_only_when_everything_is_cancelled() {
        let allow = "    allow {\n        databases env=prod\n        db-users \"*\"\n        db-names \"*\"\n    }\n";
        expect(
            &format!("{DB}role r {{\n{allow}    deny {{\n        databases env=prod\n    }}\n}}\n"),
            "dbward::allow_emptied_by_deny",
            "`r`",
        );
        expect(
            &format!(
                "{DB}role r {{\n{allow}    deny {{\n        databases \"*\"\n        db-users app\n    }}\n}}\n"
            ),
            "dbward::allow_emptied_by_deny",
            "`r`",
        );
        absent(
            &format!("{DB}role r {{\n{allow}    deny {{\n        databases team=a\n    }}\n}}\n"),
            "dbward::allow_emptied_by_deny",
        );
    }
}

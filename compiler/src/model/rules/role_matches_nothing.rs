//! Rule `dbward::role_matches_nothing` (warning): an allow block whose `databases` selects no
//! database.
//!
//! **Why it matters:** usually a typo in a label value (`env=prdo`) or a database that was
//! renamed: the role silently grants nothing, and someone finds out when they are locked out.
//!
//! **Example:**
//! ```kdl
//! role support { allow { databases env=prdo; db-users readonly; db-names "*" } }
//! ```
//!
//! **How to fix:** correct the selector (the help suggests close label values), or remove the
//! block if the databases are gone.

use std::collections::BTreeSet;

use super::{Databases, labels_of, suggestion};
use crate::diag::Diagnostic;
use crate::model::types::Model;
use crate::syntax::ast::Manifest;

pub fn check(manifest: &Manifest, _model: &Model, diags: &mut Vec<Diagnostic>) {
    let databases = Databases::new(manifest);
    for role in manifest.nodes_named("role") {
        let role_name = role.first_str().unwrap_or("?");
        for allow in role.children_named("allow") {
            let Some(selector) = allow.child("databases") else {
                continue;
            };
            if databases.selects_any(selector) {
                continue;
            }
            // Suggest a close value for the first label no database carries.
            let mut help = String::new();
            for prop in &selector.props {
                let Some(value) = prop.value.as_str() else {
                    continue;
                };
                let values: BTreeSet<&str> = manifest
                    .nodes_named("database")
                    .filter_map(|db| labels_of(db).get(prop.name.text.as_str()).copied())
                    .collect();
                if !values.contains(value) {
                    help = suggestion(value, values.iter().copied());
                    if help.is_empty() {
                        let list: Vec<&str> = values.into_iter().collect();
                        help = format!(
                            "no database has {}={value}; values in use: {}",
                            prop.name.text,
                            list.join(", ")
                        );
                    }
                    break;
                }
            }
            if help.is_empty() {
                help = "no database carries all of these labels together; check the selector or remove the block".into();
            }
            diags.push(
                Diagnostic::warning(
                    "dbward::role_matches_nothing",
                    format!("role `{role_name}` allows access to no database here"),
                )
                .label(selector.head_span(), "selects no database")
                .help(help),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, diags};

    const DB: &str = "database d {\n    postgres host=\"h\"\n    labels env=prod team=a\n    self-hosted {\n        config-dir \"/x\"\n    }\n    db-user app\n}\nuser p {\n    roles r\n}\n";

    #[test]
    fn warns_with_suggestion() {
        let all = diags(&format!(
            "{DB}role r {{\n    allow {{\n        databases env=prdo\n        db-users \"*\"\n        db-names \"*\"\n    }}\n}}\n"
        ));
        let d = all
            .iter()
            .find(|d| d.code == "dbward::role_matches_nothing")
            .expect("warned");
        assert_eq!(d.severity, crate::diag::Severity::Warning);
        assert!(d.help.as_deref().unwrap_or("").contains("`prod`"), "{d:?}");
        absent(
            &format!(
                "{DB}role r {{\n    allow {{\n        databases env=prod\n        db-users \"*\"\n        db-names \"*\"\n    }}\n}}\n"
            ),
            "dbward::role_matches_nothing",
        );
    }
}

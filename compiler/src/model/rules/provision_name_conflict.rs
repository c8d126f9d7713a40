//! Rule `dbward::provision_name_conflict`: a person whose user is provisioned on a database must
//! not share their name with a role the manifest declares there.
//!
//! **Why it matters:** provisioning creates (or reuses) a PostgreSQL user named after the person.
//! If `db-user alice` (or a db-role, or the admin user) already exists, the relay refuses the
//! session at run time — or, worse, someone would be handed a role meant for something else.
//! Found here, it is a rename; found at 3 a.m., it is an outage.
//!
//! **Example:**
//! ```kdl
//! database orders { db-user alice }
//! role analyst { provision keep; allow { databases orders; db-names "*" } }
//! user alice { roles analyst }          // provision_name_conflict
//! ```
//!
//! **How to fix:** rename the db-user (or db-role), or do not provision that person there.

use std::collections::BTreeSet;

use super::by_name;
use crate::diag::Diagnostic;
use crate::model::types::{Model, Provision};
use crate::syntax::ast::Manifest;

pub fn check(manifest: &Manifest, model: &Model, diags: &mut Vec<Diagnostic>) {
    let users = by_name(manifest, "user");
    let databases = by_name(manifest, "database");
    // Only the few names a database declares can conflict, so ask the table about those rather
    // than walk every provisioned entry. The order of diagnostics is settled by sorting.
    for db in model.databases.values() {
        let db_name = db.name.as_str();
        let declared: BTreeSet<&str> = db
            .db_users
            .keys()
            .chain(db.db_roles.keys())
            .chain(db.admin_user.as_ref().map(|a| &a.name))
            .map(String::as_str)
            .collect();
        for person in declared {
            let provisioned = model
                .access
                .get(person, db_name)
                .is_some_and(|a| a.rights.provision != Provision::Off);
            if !provisioned {
                continue;
            }
            // A name declared as several things is reported as the first of them.
            let what = if db.db_users.contains_key(person) {
                "db-user"
            } else if db.db_roles.contains_key(person) {
                "db-role"
            } else {
                "admin-user"
            };
            let Some(user) = users.get(person) else {
                continue;
            };
            let mut diag = Diagnostic::error(
            "dbward::provision_name_conflict",
            format!("`{person}` would be provisioned on database `{db_name}`, which already declares a {what} of that name"),
        )
        .label(user.first_arg_span(), "provisioned as this name");
            if let Some(db_node) = databases.get(db_name) {
                let declared = db_node
                    .children()
                    .iter()
                    .find(|n| n.name() == what && n.first_str() == Some(person));
                if let Some(node) = declared {
                    diag = diag.label(node.first_arg_span(), format!("the {what}"));
                }
            }
            diags.push(diag.help(format!(
            "rename the {what} in database `{db_name}`: provisioned users are named after the person"
        )));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    const BASE: &str = "database orders {\n    postgres host=\"h\"\n    self-hosted {\n        config-dir \"/x\"\n    }\n    admin-user boss\n    db-user alice\n}\nrole analyst {\n    provision keep\n    allow {\n        databases orders\n        db-names \"*\"\n    }\n}\n";

    #[test]
    fn conflicts() {
        expect(
            &format!("{BASE}user alice {{\n    roles analyst\n}}\n"),
            "dbward::provision_name_conflict",
            "db-user",
        );
        expect(
            &format!("{BASE}user boss {{\n    roles analyst\n}}\n"),
            "dbward::provision_name_conflict",
            "admin-user",
        );
        absent(
            &format!("{BASE}user bob {{\n    roles analyst\n}}\n"),
            "dbward::provision_name_conflict",
        );
    }
}

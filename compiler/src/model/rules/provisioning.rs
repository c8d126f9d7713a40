//! Rule: automatic provisioning has what it needs. Codes: `dbward::provision_without_admin`,
//! `dbward::needs_provisioning`, `dbward::unknown_db_role` (for `db-roles` a matched database
//! does not define), `dbward::provision_unsupported` (a database whose logins are cloud
//! identities: Cloud SQL, Azure).
//!
//! **Why it matters:** the relay creates provisioned users *as the database's admin user*, and
//! grants them the listed db-roles; without an admin user, or with a db-role the database does not
//! have, the first session would fail. `db-roles` and `permission` only mean something for a
//! provisioned user, so on a role that does not provision they would silently do nothing. On
//! Cloud SQL and Azure every login is a cloud identity (a service account the relay
//! impersonates, an Entra principal it gets tokens for): a user the relay creates in SQL has
//! none, so every session would be refused at connect time.
//!
//! **Example:**
//! ```kdl
//! role analyst {
//!     allow { databases team=data; db-names "*"; db-roles reader }   // needs_provisioning
//! }
//! ```
//!
//! **How to fix:** add `provision keep` (or `best-effort-drop`) to the role, `admin-user …` to
//! each database it provisions on, and `db-role …` to each database it grants on.

use super::{Databases, declared, suggestion};
use crate::diag::Diagnostic;
use crate::syntax::ast::{Manifest, Node};

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    let databases = Databases::new(manifest);
    for role in manifest.nodes_named("role") {
        let role_name = role.first_str().unwrap_or("?");
        let mode = role.child("provision");
        let provisions = mode.and_then(Node::first_str).is_some_and(|m| m != "off");
        for allow in role.children_named("allow") {
            if !provisions {
                for what in ["db-roles", "permission"] {
                    if let Some(node) = allow.child(what) {
                        diags.push(
                            Diagnostic::error("dbward::needs_provisioning", format!("`{what}` only applies to provisioned users, and role `{role_name}` does not provision"))
                                .label(node.head_span(), "would do nothing")
                                .help(format!("add `provision keep` (or `provision best-effort-drop`) to role `{role_name}`, or remove `{what}`")),
                        );
                    }
                }
                continue;
            }
            let Some(mode) = mode else { continue };
            let matched = allow
                .child("databases")
                .map(|s| databases.selected(s))
                .unwrap_or_default();
            for db in &matched {
                let db_name = db.first_str().unwrap_or("?");
                let cloud_logins = [
                    (
                        "cloud-sql",
                        "Cloud SQL",
                        "its IAM users are service accounts, created through the Cloud SQL Admin API, that the relay impersonates",
                    ),
                    (
                        "azure-postgres",
                        "Azure Database for PostgreSQL",
                        "each of its logins is an Entra principal (`client-id`/`object-id`) the relay gets tokens for",
                    ),
                ];
                if let Some((kind, product, why)) = cloud_logins
                    .iter()
                    .find(|(kind, ..)| db.child(kind).is_some())
                {
                    diags.push(
                        Diagnostic::error("dbward::provision_unsupported", format!("role `{role_name}` provisions users on database `{db_name}`, but {product} cannot log in a user the relay creates"))
                            .label(mode.head_span(), "provisions")
                            .label(db.child(kind).map_or(db.first_arg_span(), Node::head_span), format!("{why}; a created user has no such identity"))
                            .help(format!("give people a `db-user` of database `{db_name}` (`db-users` in the allow block) instead, or narrow `databases` to self-hosted and RDS databases, where provisioning works")),
                    );
                    continue;
                }
                if db.child("admin-user").is_none() {
                    diags.push(
                        Diagnostic::error("dbward::provision_without_admin", format!("role `{role_name}` provisions users on database `{db_name}`, which has no admin-user"))
                            .label(mode.head_span(), "provisions")
                            .label(db.first_arg_span(), "no admin-user")
                            .help(format!("add `admin-user NAME` to database `{db_name}`: the relay creates provisioned users as that user")),
                    );
                }
                let db_roles = declared(db, "db-role");
                for roles_node in allow.children_named("db-roles") {
                    for (name, span) in roles_node.str_args().filter(|(s, _)| *s != "*") {
                        if !db_roles.contains(&name) {
                            let hint = suggestion(name, db_roles.iter().copied());
                            diags.push(
                                Diagnostic::error("dbward::unknown_db_role", format!("database `{db_name}` has no db-role `{name}`"))
                                    .label(span, "asked for here")
                                    .label(db.first_arg_span(), "selected database")
                                    .help(if hint.is_empty() {
                                        format!("declare `db-role {name}` in database `{db_name}`, or narrow `databases` so it does not select it")
                                    } else {
                                        hint
                                    }),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    const DB: &str = "database orders {\n    postgres host=\"h\"\n    self-hosted {\n        config-dir \"/x\"\n    }\n    db-role reader\n}\n";

    #[test]
    fn needs_provisioning() {
        expect(
            &format!(
                "{DB}role r {{\n    allow {{\n        databases orders\n        db-names \"*\"\n        db-roles reader\n    }}\n}}\n"
            ),
            "dbward::needs_provisioning",
            "`db-roles`",
        );
        expect(
            &format!(
                "{DB}role r {{\n    provision off\n    allow {{\n        databases orders\n        db-names \"*\"\n        permission SELECT on=table schema=public\n    }}\n}}\n"
            ),
            "dbward::needs_provisioning",
            "`permission`",
        );
    }

    #[test]
    fn cloud_identity_databases_cannot_provision() {
        for (kind, product) in [
            (
                "cloud-sql cloud=g instance=\"acme-prod:us-central1:x\"",
                "Cloud SQL",
            ),
            (
                "azure-postgres cloud=a server=\"flex\"",
                "Azure Database for PostgreSQL",
            ),
        ] {
            expect(
                &format!(
                    "database d {{\n    postgres version=16\n    {kind}\n    admin-user boss\n}}\nrole r {{\n    provision keep\n    allow {{\n        databases d\n        db-names \"*\"\n    }}\n}}\n"
                ),
                "dbward::provision_unsupported",
                product,
            );
        }
        let with_admin = DB.replace("db-role reader", "db-role reader\n    admin-user boss");
        absent(
            &format!(
                "{with_admin}role r {{\n    provision keep\n    allow {{\n        databases orders\n        db-names \"*\"\n    }}\n}}\n"
            ),
            "dbward::provision_unsupported",
        );
    }

    #[test]
    fn admin_and_db_roles() {
        expect(
            &format!(
                "{DB}role r {{\n    provision keep\n    allow {{\n        databases orders\n        db-names \"*\"\n    }}\n}}\n"
            ),
            "dbward::provision_without_admin",
            "`orders`",
        );
        let with_admin = DB.replace("db-role reader", "db-role reader\n    admin-user boss");
        absent(
            &format!(
                "{with_admin}role r {{\n    provision keep\n    allow {{\n        databases orders\n        db-names \"*\"\n        db-roles reader\n    }}\n}}\n"
            ),
            "dbward::provision_without_admin",
        );
        expect(
            &format!(
                "{with_admin}role r {{\n    provision keep\n    allow {{\n        databases orders\n        db-names \"*\"\n        db-roles readr\n    }}\n}}\n"
            ),
            "dbward::unknown_db_role",
            "`readr`",
        );
    }
}

//! Rule `dbward::cloud_sql_user_name`: Cloud SQL IAM database users are written the way Cloud
//! SQL names them — a service account's email without `.gserviceaccount.com`.
//!
//! **Why it matters:** Cloud SQL creates the PostgreSQL user `name@project.iam` for the service
//! account `name@project.iam.gserviceaccount.com`. With the full email, the GRANTs and the
//! relay's logins would name a user that does not exist.
//!
//! **Example:**
//! ```kdl
//! database ledger {
//!     cloud-sql cloud=gcp-prod instance="acme-prod:us-central1:ledger"
//!     db-user "reporting@acme-prod.iam.gserviceaccount.com"   // cloud_sql_user_name
//! }
//! ```
//!
//! **How to fix:** drop `.gserviceaccount.com`: `db-user "reporting@acme-prod.iam"`.

use crate::diag::Diagnostic;
use crate::syntax::ast::Manifest;

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    for db in manifest.nodes_named("database") {
        if db.child("cloud-sql").is_none() {
            continue;
        }
        for user in db.children_named("db-user") {
            let Some(name) = user.first_str() else {
                continue;
            };
            if let Some(short) = name.strip_suffix(".gserviceaccount.com") {
                diags.push(
                    Diagnostic::error(
                        "dbward::cloud_sql_user_name",
                        format!("the database user of this service account is `{short}` on Cloud SQL, not `{name}`"),
                    )
                    .label(user.first_arg_span(), "a service account email")
                    .help(format!("write `db-user \"{short}\"`: Cloud SQL drops `.gserviceaccount.com`")),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    #[test]
    fn full_email_is_rejected() {
        let db = |user: &str| {
            format!(
                "cloud g {{\n    gcp project=\"acme-prod\"\n}}\ndatabase l {{\n    cloud-sql cloud=g instance=\"acme-prod:us-central1:l\"\n    db-user \"{user}\"\n}}\n"
            )
        };
        expect(
            &db("r@acme-prod.iam.gserviceaccount.com"),
            "dbward::cloud_sql_user_name",
            "`r@acme-prod.iam`",
        );
        absent(&db("r@acme-prod.iam"), "dbward::cloud_sql_user_name");
    }
}

//! Rule: a database is exactly one kind, and has a host when its kind needs one. Codes:
//! `dbward::missing_database_kind`, `dbward::conflicting_database_kinds`, `dbward::missing_host`,
//! `dbward::invalid_postgres_version`.
//!
//! **Why it matters:** the kind decides how the relay authenticates (mutual TLS or a cloud token)
//! and which files are generated; guessing it would send credentials the wrong way.
//!
//! **Example:**
//! ```kdl
//! database orders {
//!     postgres port=5432            // missing_host: self-hosted needs host=
//!     self-hosted { config-dir "/etc/postgresql/15/main/dbward" }
//! }
//! ```
//!
//! **How to fix:** keep exactly one of `self-hosted`, `aws-rds`, `cloud-sql`, `azure-postgres`,
//! and give `postgres host=…` for `self-hosted` and `aws-rds`.

use crate::diag::Diagnostic;
use crate::syntax::ast::{Manifest, Node};

const KINDS: &[&str] = &["self-hosted", "aws-rds", "cloud-sql", "azure-postgres"];

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    for db in manifest.nodes_named("database") {
        let name = db.first_str().unwrap_or("?");
        let kinds: Vec<&Node> = db
            .children()
            .iter()
            .filter(|n| KINDS.contains(&n.name()))
            .collect();
        match kinds.as_slice() {
            [] => diags.push(
                Diagnostic::error("dbward::missing_database_kind", format!("database `{name}` does not say where it runs"))
                    .label(db.first_arg_span(), "needs a kind")
                    .help("add one of `self-hosted { … }`, `aws-rds cloud=… resource-id=…`, `cloud-sql cloud=… instance=…` or `azure-postgres cloud=… server=…`"),
            ),
            [_] => {}
            [first, second, ..] => diags.push(
                Diagnostic::error("dbward::conflicting_database_kinds", format!("database `{name}` declares more than one kind"))
                    .label(second.head_span(), "second kind")
                    .label(first.head_span(), "first kind")
                    .help("a database runs in one place: keep one kind, or declare two databases"),
            ),
        }
        let pg = db.child("postgres");
        if let Some(kind) = kinds.first() {
            let needs_host = matches!(kind.name(), "self-hosted" | "aws-rds");
            if needs_host && pg.and_then(|p| p.prop("host")).is_none() {
                let span = pg.map_or(db.first_arg_span(), Node::head_span);
                diags.push(
                    Diagnostic::error("dbward::missing_host", format!("database `{name}` is `{}` but has no host", kind.name()))
                        .label(span, "needs `host=`")
                        .help(format!("add `postgres host=\"…\"` (the address the relay connects to); `{}` databases have no endpoint dbward can derive", kind.name())),
                );
            }
        }
        if let Some(version) = pg.and_then(|p| p.prop("version"))
            && let Some(v) = version.value.as_int()
            && !(10..=30).contains(&v)
        {
            diags.push(
                Diagnostic::error(
                    "dbward::invalid_postgres_version",
                    format!("version={v} is not a PostgreSQL major version dbward supports"),
                )
                .label(version.value.span, "expected 10 or later")
                .help("write the server's major version, e.g. `version=16`"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    #[test]
    fn kinds_and_hosts() {
        expect(
            "database d {\n    postgres host=\"h\"\n}\n",
            "dbward::missing_database_kind",
            "`d`",
        );
        expect(
            "database d {\n    postgres host=\"h\"\n    self-hosted {\n        config-dir \"/x\"\n    }\n    azure-postgres cloud=a server=\"srv\"\n}\n",
            "dbward::conflicting_database_kinds",
            "`d`",
        );
        expect(
            "database d {\n    postgres port=5432\n    self-hosted {\n        config-dir \"/x\"\n    }\n}\n",
            "dbward::missing_host",
            "no host",
        );
        expect(
            "database d {\n    postgres host=\"h\" version=9\n    self-hosted {\n        config-dir \"/x\"\n    }\n}\n",
            "dbward::invalid_postgres_version",
            "9",
        );
        absent(
            "database d {\n    postgres version=15\n    cloud-sql cloud=g instance=\"p-123456:us-central1:i\"\n}\n",
            "dbward::missing_host",
        );
    }
}

//! Rule: a cloud is exactly one kind, its settings belong to that kind, and each database binding
//! points at a cloud of the matching kind. Codes: `dbward::missing_cloud_kind`,
//! `dbward::conflicting_cloud_kinds`, `dbward::wrong_cloud_setting`, `dbward::wrong_cloud_kind`.
//!
//! **Why it matters:** an `aws-rds` database bound to a `gcp` cloud has no account to sign
//! tokens for; the relay would fail at the first connection instead of at compile time.
//!
//! **Example:**
//! ```kdl
//! cloud gcp-prod { gcp project="acme-prod" }
//! database analytics {
//!     aws-rds cloud=gcp-prod resource-id="db-ABC"   // wrong_cloud_kind
//! }
//! ```
//!
//! **How to fix:** bind the database to a cloud of its kind (`aws-rds` → `aws`, `cloud-sql` →
//! `gcp`, `azure-postgres` → `azure`).

use super::by_name;
use crate::diag::Diagnostic;
use crate::syntax::ast::{Manifest, Node};

const KINDS: &[&str] = &["aws", "gcp", "azure"];

/// The kind of a cloud node, when it declares exactly one.
fn kind_of(cloud: &Node) -> Option<&'static str> {
    let kinds: Vec<&str> = KINDS
        .iter()
        .copied()
        .filter(|k| cloud.child(k).is_some())
        .collect();
    match kinds.as_slice() {
        [one] => Some(one),
        _ => None,
    }
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    for cloud in manifest.nodes_named("cloud") {
        let present: Vec<&Node> = cloud
            .children()
            .iter()
            .filter(|n| KINDS.contains(&n.name()))
            .collect();
        match present.as_slice() {
            [] => diags.push(
                Diagnostic::error("dbward::missing_cloud_kind", format!("cloud `{}` does not say which cloud it is", cloud.first_str().unwrap_or("?")))
                    .label(cloud.head_span(), "needs `aws`, `gcp` or `azure`")
                    .help("add one of `aws account=… region=…`, `gcp project=…` or `azure subscription=… tenant=…`"),
            ),
            [_] => {}
            [first, second, ..] => diags.push(
                Diagnostic::error("dbward::conflicting_cloud_kinds", format!("cloud `{}` declares more than one kind", cloud.first_str().unwrap_or("?")))
                    .label(second.head_span(), "second kind")
                    .label(first.head_span(), "first kind")
                    .help("declare one `cloud` block per account, each with a single kind"),
            ),
        }
        let kind = kind_of(cloud);
        for (setting, belongs) in [
            ("relay-role", "aws"),
            ("relay-service-account", "gcp"),
            ("relay-identity", "azure"),
        ] {
            for node in cloud.children_named(setting) {
                if kind.is_some_and(|k| k != belongs) {
                    diags.push(
                        Diagnostic::error("dbward::wrong_cloud_setting", format!("`{setting}` belongs to an `{belongs}` cloud, but this one is `{}`", kind.unwrap_or("?")))
                            .label(node.head_span(), format!("only for `{belongs}`"))
                            .help(match kind {
                                Some("aws") => "an aws cloud names the relay's IAM role with `relay-role ARN`",
                                Some("gcp") => "a gcp cloud names the relay's service account with `relay-service-account EMAIL`",
                                _ => "an azure cloud names the relay's identity with `relay-identity client-id=…`",
                            }),
                    );
                }
            }
        }
    }
    let clouds = by_name(manifest, "cloud");
    for db in manifest.nodes_named("database") {
        for (binding, wants) in [
            ("aws-rds", "aws"),
            ("cloud-sql", "gcp"),
            ("azure-postgres", "azure"),
        ] {
            for node in db.children_named(binding) {
                let Some(prop) = node.prop("cloud") else {
                    continue;
                };
                let Some(name) = prop.value.as_str() else {
                    continue;
                };
                let Some(cloud) = clouds.get(name) else {
                    continue;
                };
                let Some(kind) = kind_of(cloud) else { continue };
                if kind != wants {
                    let fitting: Vec<&str> = clouds
                        .iter()
                        .filter(|(_, c)| kind_of(c) == Some(wants))
                        .map(|(n, _)| *n)
                        .collect();
                    diags.push(
                        Diagnostic::error(
                            "dbward::wrong_cloud_kind",
                            format!(
                                "`{binding}` needs an `{wants}` cloud, but `{name}` is `{kind}`"
                            ),
                        )
                        .label(prop.value.span, format!("an `{kind}` cloud"))
                        .label(cloud.first_arg_span(), "declared here")
                        .help(if fitting.is_empty() {
                            format!("declare a cloud with `{wants} …` and bind the database to it")
                        } else {
                            format!("bind it to an `{wants}` cloud: {}", fitting.join(", "))
                        }),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    const CLOUDS: &str = "cloud g {\n    gcp project=\"acme-prod\"\n}\ncloud a {\n    aws account=\"123456789012\" region=\"us-east-1\"\n}\n";

    #[test]
    fn kinds() {
        expect(
            &format!("{CLOUDS}database d {{\n    aws-rds cloud=g resource-id=\"db-ABC\"\n}}\n"),
            "dbward::wrong_cloud_kind",
            "needs an `aws` cloud",
        );
        absent(
            &format!("{CLOUDS}database d {{\n    aws-rds cloud=a resource-id=\"db-ABC\"\n}}\n"),
            "dbward::wrong_cloud_kind",
        );
        expect(
            "cloud x {\n    relay-role \"arn:aws:iam::123456789012:role/r\"\n}\n",
            "dbward::missing_cloud_kind",
            "`x`",
        );
        expect(
            "cloud x {\n    gcp project=\"acme-prod\"\n    aws account=\"123456789012\" region=\"us-east-1\"\n}\n",
            "dbward::conflicting_cloud_kinds",
            "`x`",
        );
        expect(
            "cloud x {\n    gcp project=\"acme-prod\"\n    relay-role \"arn:aws:iam::123456789012:role/r\"\n}\n",
            "dbward::wrong_cloud_setting",
            "`relay-role`",
        );
    }
}

//! Rule: cloud identifiers have the shape their cloud gives them. Codes:
//! `dbward::invalid_aws_account`, `dbward::invalid_aws_region`, `dbward::invalid_arn`,
//! `dbward::invalid_rds_resource_id`, `dbward::invalid_gcp_project`,
//! `dbward::invalid_service_account`, `dbward::invalid_cloud_sql_instance`,
//! `dbward::invalid_azure_id`, `dbward::invalid_azure_server`.
//!
//! **Why it matters:** these strings end up in IAM policies and token requests. A wrong one is
//! accepted by `apply` but fails — or grants the wrong thing — in the cloud, far from the typo.
//!
//! **Example:**
//! ```kdl
//! aws account="12345" region="us-east-1"      // invalid_aws_account: 12 digits
//! aws-rds cloud=aws-prod resource-id="mydb"   // invalid_rds_resource_id: db-… or cluster-…
//! ```
//!
//! **How to fix:** copy the identifier from the cloud console; the help line shows its shape.

use super::walk_known;
use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::Manifest;

fn is_lower_alnum_dash(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// 12 digits.
pub fn aws_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `us-east-1`, `eu-central-1`, `us-gov-west-1`, `ap-southeast-2`, `cn-north-1`.
pub fn aws_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|p| !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `arn:aws:iam::123456789012:role/path/name`.
pub fn iam_role_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts.as_slice() else {
        return false;
    };
    let Some(name) = resource.strip_prefix("role/") else {
        return false;
    };
    *arn == "arn"
        && matches!(*partition, "aws" | "aws-cn" | "aws-us-gov")
        && *service == "iam"
        && region.is_empty()
        && aws_account(account)
        && !name.is_empty()
        && name.len() <= 512
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
}

/// `db-ABCDEFGHIJKL01234` or `cluster-ABCDEFGHIJKL01234` (upper-case letters and digits).
pub fn rds_resource_id(s: &str) -> bool {
    let rest = s.strip_prefix("db-").or_else(|| s.strip_prefix("cluster-"));
    rest.is_some_and(|r| {
        !r.is_empty()
            && r.len() <= 64
            && r.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    })
}

/// 6–30 lower-case letters, digits and hyphens, starting with a letter, not ending with `-`.
pub fn gcp_project(s: &str) -> bool {
    (6..=30).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && is_lower_alnum_dash(s)
}

/// `name@project.iam.gserviceaccount.com` (or another `…gserviceaccount.com` domain).
pub fn service_account(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    (6..=30).contains(&local.len())
        && local.starts_with(|c: char| c.is_ascii_lowercase())
        && is_lower_alnum_dash(local)
        && domain.ends_with("gserviceaccount.com")
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `project:region:instance`.
pub fn cloud_sql_instance(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    let [project, region, instance] = parts.as_slice() else {
        return false;
    };
    let region_ok = region.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && a.bytes().all(|c| c.is_ascii_lowercase())
            && b.ends_with(|c: char| c.is_ascii_digit())
            && b.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    gcp_project(project)
        && region_ok
        && (1..=98).contains(&instance.len())
        && instance.starts_with(|c: char| c.is_ascii_lowercase())
        && !instance.ends_with('-')
        && is_lower_alnum_dash(instance)
}

/// A GUID: 8-4-4-4-12 hexadecimal digits.
pub fn guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What is wrong with a string that is not a [`guid`], for the label: the group that breaks the
/// 8-4-4-4-12 shape, or the character that is not hexadecimal.
fn guid_problem(s: &str) -> String {
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() != 5 {
        return format!(
            "{} groups separated by `-`, a GUID has 5 (8-4-4-4-12 hex digits)",
            parts.len()
        );
    }
    for (index, (part, want)) in parts.iter().zip([8, 4, 4, 4, 12]).enumerate() {
        if let Some(c) = part.chars().find(|c| !c.is_ascii_hexdigit()) {
            return format!("group {} has `{c}`, which is not a hex digit", index + 1);
        }
        if part.chars().count() != want {
            return format!(
                "group {} has {} hex digits, not {want}",
                index + 1,
                part.chars().count()
            );
        }
    }
    "not a GUID".to_owned()
}

/// An Azure flexible server name: 3–63 lower-case letters, digits and hyphens.
pub fn azure_server(s: &str) -> bool {
    (3..=63).contains(&s.len())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && is_lower_alnum_dash(s)
}

/// One identifier to validate: where it is, how to check it, and how to talk about it.
struct IdCheck {
    path: &'static str,
    /// The property holding it, or `None` for the node's first argument.
    prop: Option<&'static str>,
    valid: fn(&str) -> bool,
    code: &'static str,
    what: &'static str,
    shape: &'static str,
}

const fn id(
    path: &'static str,
    prop: Option<&'static str>,
    valid: fn(&str) -> bool,
    code: &'static str,
    what: &'static str,
    shape: &'static str,
) -> IdCheck {
    IdCheck {
        path,
        prop,
        valid,
        code,
        what,
        shape,
    }
}

const CHECKS: &[IdCheck] = &[
    id(
        "cloud/aws",
        Some("account"),
        aws_account,
        "dbward::invalid_aws_account",
        "AWS account id",
        "12 digits, like \"123456789012\"",
    ),
    id(
        "cloud/aws",
        Some("region"),
        aws_region,
        "dbward::invalid_aws_region",
        "AWS region",
        "like \"us-east-1\" or \"eu-central-1\"",
    ),
    id(
        "cloud/relay-role",
        None,
        iam_role_arn,
        "dbward::invalid_arn",
        "IAM role ARN",
        "like \"arn:aws:iam::123456789012:role/dbward-relay\"",
    ),
    id(
        "database/aws-rds",
        Some("resource-id"),
        rds_resource_id,
        "dbward::invalid_rds_resource_id",
        "RDS resource id",
        "\"db-…\" for an instance or \"cluster-…\" for Aurora, upper-case letters and digits (the DbiResourceId / DbClusterResourceId, not the name)",
    ),
    id(
        "cloud/gcp",
        Some("project"),
        gcp_project,
        "dbward::invalid_gcp_project",
        "Google Cloud project id",
        "6–30 lower-case letters, digits and hyphens, like \"acme-prod\"",
    ),
    id(
        "cloud/relay-service-account",
        None,
        service_account,
        "dbward::invalid_service_account",
        "service account email",
        "like \"dbward-relay@acme-prod.iam.gserviceaccount.com\"",
    ),
    id(
        "database/cloud-sql",
        Some("instance"),
        cloud_sql_instance,
        "dbward::invalid_cloud_sql_instance",
        "Cloud SQL instance",
        "the connection name \"project:region:instance\", like \"acme-prod:us-central1:ledger\"",
    ),
    id(
        "cloud/azure",
        Some("subscription"),
        guid,
        "dbward::invalid_azure_id",
        "Azure subscription id",
        "a GUID like \"11111111-2222-3333-4444-555555555555\"",
    ),
    id(
        "cloud/azure",
        Some("tenant"),
        guid,
        "dbward::invalid_azure_id",
        "Azure tenant id",
        "a GUID like \"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\"",
    ),
    id(
        "cloud/relay-identity",
        Some("client-id"),
        guid,
        "dbward::invalid_azure_id",
        "Azure client id",
        "a GUID like \"99999999-8888-7777-6666-555555555555\"",
    ),
    id(
        "cloud/relay-identity",
        Some("object-id"),
        guid,
        "dbward::invalid_azure_id",
        "Azure object id",
        "a GUID like \"0f0e0d0c-0b0a-0908-0706-050403020100\" (`az identity show --query principalId`)",
    ),
    id(
        "database/db-user",
        Some("client-id"),
        guid,
        "dbward::invalid_azure_id",
        "Azure client id",
        "a GUID like \"99999999-8888-7777-6666-555555555555\" (`az identity show --query clientId`)",
    ),
    id(
        "database/db-user",
        Some("object-id"),
        guid,
        "dbward::invalid_azure_id",
        "Azure object id",
        "a GUID like \"0f0e0d0c-0b0a-0908-0706-050403020100\" (`az identity show --query principalId`)",
    ),
    id(
        "database/admin-user",
        Some("client-id"),
        guid,
        "dbward::invalid_azure_id",
        "Azure client id",
        "a GUID like \"99999999-8888-7777-6666-555555555555\" (`az identity show --query clientId`)",
    ),
    id(
        "database/admin-user",
        Some("object-id"),
        guid,
        "dbward::invalid_azure_id",
        "Azure object id",
        "a GUID like \"0f0e0d0c-0b0a-0908-0706-050403020100\" (`az identity show --query principalId`)",
    ),
    id(
        "database/azure-postgres",
        Some("server"),
        azure_server,
        "dbward::invalid_azure_server",
        "Azure server name",
        "3–63 lower-case letters, digits and hyphens (the name, not the full host name)",
    ),
];

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    walk_known(manifest, |node, spec| {
        for check in CHECKS {
            if spec.path != check.path {
                continue;
            }
            let value = match check.prop {
                Some(p) => node.prop(p).map(|p| &p.value),
                None => node.args.first(),
            };
            let Some(value) = value else { continue };
            let Some(text) = value.as_str() else { continue };
            if !(check.valid)(text) {
                let mut diag = bad(check.code, check.what, text, value.span, check.shape);
                // Every Azure id is a GUID: say which part breaks its shape.
                if check.code == "dbward::invalid_azure_id"
                    && let Some(label) = diag.labels.first_mut()
                {
                    label.text = format!(
                        "not {} {}: {}",
                        article(check.what),
                        check.what,
                        guid_problem(text)
                    );
                }
                diags.push(diag);
            }
        }
    });
}

/// "a" or "an" before `word` (by its first letter; the names here have no silent letters).
fn article(word: &str) -> &'static str {
    if word.starts_with(['A', 'E', 'I', 'O', 'U', 'a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn bad(code: &'static str, what: &str, text: &str, span: Span, shape: &str) -> Diagnostic {
    Diagnostic::error(code, format!("`{text}` is not a valid {what}"))
        .label(span, format!("not {} {what}", article(what)))
        .help(format!("write {shape}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::test_support::expect;

    #[test]
    fn validators() {
        assert!(
            aws_account("123456789012") && !aws_account("12345") && !aws_account("12345678901a")
        );
        assert!(
            aws_region("us-east-1")
                && aws_region("us-gov-west-1")
                && !aws_region("useast1")
                && !aws_region("us-east")
        );
        assert!(iam_role_arn("arn:aws:iam::123456789012:role/dbward-relay"));
        assert!(
            !iam_role_arn("arn:aws:iam::123456789012:user/x")
                && !iam_role_arn("arn:aws:s3:::bucket")
        );
        assert!(rds_resource_id("cluster-ABCDEFGHIJKL0123456789") && rds_resource_id("db-ABC123"));
        assert!(!rds_resource_id("mydb") && !rds_resource_id("db-abc"));
        assert!(gcp_project("acme-prod") && !gcp_project("Acme") && !gcp_project("a"));
        assert!(
            service_account("dbward-relay@acme-prod.iam.gserviceaccount.com")
                && !service_account("me@gmail.com")
        );
        assert!(
            cloud_sql_instance("acme-prod:us-central1:ledger")
                && !cloud_sql_instance("ledger")
                && !cloud_sql_instance("acme-prod:us-central1")
        );
        assert!(guid("11111111-2222-3333-4444-555555555555") && !guid("1111-2222"));
        assert_eq!(
            guid_problem("7c9e6679-7425-40de-944b-e07fc1f9"),
            "group 5 has 8 hex digits, not 12"
        );
        assert_eq!(
            guid_problem("7c9e6679-7425-40de-944g-e07fc1f90ae7"),
            "group 4 has `g`, which is not a hex digit"
        );
        assert!(guid_problem("my-subscription").starts_with("2 groups"));
        assert!(
            azure_server("reports-flex") && !azure_server("Reports.postgres.database.azure.com")
        );
    }

    #[test]
    fn reported() {
        expect(
            "cloud a {\n    aws account=\"12345\" region=\"us-east-1\"\n}\n",
            "dbward::invalid_aws_account",
            "`12345`",
        );
        expect(
            "cloud a {\n    aws account=\"123456789012\" region=\"useast\"\n}\n",
            "dbward::invalid_aws_region",
            "`useast`",
        );
        expect(
            "cloud z {\n    azure subscription=\"x\" tenant=\"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\"\n}\n",
            "dbward::invalid_azure_id",
            "`x`",
        );
        expect(
            "database d {\n    cloud-sql cloud=g instance=\"ledger\"\n}\n",
            "dbward::invalid_cloud_sql_instance",
            "`ledger`",
        );
    }
}

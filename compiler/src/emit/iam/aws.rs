//! The AWS IAM policy for the relay's role: `rds-db:connect` for exactly the database users
//! the manifest allows on each RDS/Aurora database (never a wildcard user), plus the read-only
//! describe calls the relay uses to look up endpoints.
//!
//! A second policy, [`live_policy`], is for whoever runs `dbward plan --live` / `apply --live`
//! (an operator, a CI role): `rds-db:connect` as each RDS database's admin user, which the
//! relay's policy grants only when provisioning needs it. Kept apart so the relay's role does
//! not gain the admin login just because someone converges the databases.

use serde_json::{Value, json};

use super::super::{EmitError, Logins};
use crate::model::{Cloud, CloudKind, Database, DatabaseKind, Model};

/// The IAM policy document (attach it to the relay's role).
pub fn policy(model: &Model, cloud: &Cloud, databases: &[&Database]) -> Result<Value, EmitError> {
    let CloudKind::Aws {
        account, region, ..
    } = &cloud.kind
    else {
        return Err(super::wrong_cloud(cloud, databases.first().copied(), "aws"));
    };
    let mut resources = Vec::new();
    for db in databases {
        let DatabaseKind::AwsRds { resource_id, .. } = &db.kind else {
            return Err(super::wrong_cloud(cloud, Some(db), "aws-rds"));
        };
        let logins = Logins::of(model, &db.name);
        for user in logins.db_users.iter().chain(logins.admin.iter()) {
            resources.push(format!(
                "arn:aws:rds-db:{region}:{account}:dbuser:{resource_id}/{user}"
            ));
        }
    }
    resources.sort();
    resources.dedup();
    let mut statements = Vec::new();
    if !resources.is_empty() {
        statements.push(json!({
            "Sid": "DbwardRelayConnect",
            "Effect": "Allow",
            "Action": "rds-db:connect",
            "Resource": resources,
        }));
    }
    statements.push(json!({
        "Sid": "DbwardRelayDescribe",
        "Effect": "Allow",
        "Action": ["rds:DescribeDBClusters", "rds:DescribeDBInstances"],
        "Resource": [
            format!("arn:aws:rds:{region}:{account}:cluster:*"),
            format!("arn:aws:rds:{region}:{account}:db:*"),
        ],
    }));
    Ok(json!({
        "Version": "2012-10-17",
        "Statement": statements,
    }))
}

/// The IAM policy for whoever runs `dbward … --live` (attach it to that principal, not to the
/// relay): `rds-db:connect` as the admin user of every RDS database that has one. `None` when
/// no database of this cloud has an admin user.
pub fn live_policy(cloud: &Cloud, databases: &[&Database]) -> Result<Option<Value>, EmitError> {
    let CloudKind::Aws {
        account, region, ..
    } = &cloud.kind
    else {
        return Err(super::wrong_cloud(cloud, databases.first().copied(), "aws"));
    };
    let mut resources = Vec::new();
    for db in databases {
        let DatabaseKind::AwsRds { resource_id, .. } = &db.kind else {
            return Err(super::wrong_cloud(cloud, Some(db), "aws-rds"));
        };
        if let Some(admin) = &db.admin_user {
            resources.push(format!(
                "arn:aws:rds-db:{region}:{account}:dbuser:{resource_id}/{}",
                admin.name
            ));
        }
    }
    if resources.is_empty() {
        return Ok(None);
    }
    resources.sort();
    resources.dedup();
    Ok(Some(json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DbwardLiveConnectAsAdmin",
            "Effect": "Allow",
            "Action": "rds-db:connect",
            "Resource": resources,
        }],
    })))
}

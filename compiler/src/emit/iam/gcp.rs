//! The Google Cloud IAM bindings for Cloud SQL IAM database authentication: the relay's service
//! account may connect (Cloud SQL Client) and mint tokens for each database service account
//! (Service Account Token Creator on that account only); each database service account may
//! log in (Cloud SQL Instance User).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::super::EmitError;
use crate::model::{Cloud, CloudKind, Database, DatabaseKind};

/// Cloud SQL IAM users drop this suffix from the service account's email.
pub const SA_SUFFIX: &str = ".gserviceaccount.com";

/// The service account email of a Cloud SQL IAM database user name.
pub fn service_account(db_user: &str) -> String {
    if db_user.ends_with(SA_SUFFIX) {
        db_user.to_owned()
    } else {
        format!("{db_user}{SA_SUFFIX}")
    }
}

/// The bindings document: `{ project, bindings: [{ resource, role, members }] }`.
pub fn bindings(cloud: &Cloud, databases: &[&Database]) -> Result<Value, EmitError> {
    let CloudKind::Gcp {
        project,
        relay_service_account,
    } = &cloud.kind
    else {
        return Err(super::wrong_cloud(cloud, databases.first().copied(), "gcp"));
    };
    let relay = relay_service_account
        .as_ref()
        .ok_or_else(|| EmitError::MissingRelayIdentity {
            cloud: cloud.name.clone(),
            what: "relay service account",
            node: "relay-service-account EMAIL",
        })?;
    let mut accounts = BTreeSet::new();
    let mut instances = BTreeSet::new();
    for db in databases {
        let DatabaseKind::CloudSql { instance, .. } = &db.kind else {
            return Err(super::wrong_cloud(cloud, Some(db), "cloud-sql"));
        };
        instances.insert(instance.clone());
        let users = db
            .db_users
            .keys()
            .chain(db.admin_user.iter().map(|a| &a.name));
        for user in users {
            accounts.insert(service_account(user));
        }
    }
    let project_resource = format!("projects/{project}");
    let mut bindings = vec![json!({
        "resource": project_resource,
        "role": "roles/cloudsql.client",
        "members": [format!("serviceAccount:{relay}")],
    })];
    if !accounts.is_empty() {
        bindings.push(json!({
            "resource": project_resource,
            "role": "roles/cloudsql.instanceUser",
            "members": accounts.iter().map(|a| format!("serviceAccount:{a}")).collect::<Vec<_>>(),
        }));
    }
    for account in &accounts {
        bindings.push(json!({
            "resource": format!("projects/{project}/serviceAccounts/{account}"),
            "role": "roles/iam.serviceAccountTokenCreator",
            "members": [format!("serviceAccount:{relay}")],
        }));
    }
    Ok(json!({
        "project": project,
        "instances": instances,
        "bindings": bindings,
    }))
}

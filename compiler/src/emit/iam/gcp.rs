//! The Google Cloud IAM bindings for Cloud SQL IAM database authentication: the relay's service
//! account may connect (Cloud SQL Client) and mint tokens for each database service account
//! (Service Account Token Creator on that account only); each database service account may
//! log in (Cloud SQL Instance User).
//!
//! [`live_bindings`] is for whoever runs `dbward plan --live` / `apply --live`: Token Creator
//! on each admin user's service account, which dbward impersonates to log in as it, and Cloud
//! SQL Client in the project when an instance is looked up (no `host` or no `ca-file`), as the
//! relay looks it up.

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

/// The bindings whoever runs `dbward … --live` needs (`iam/live/gcp/<cloud>.json`): Service
/// Account Token Creator on the service account of every Cloud SQL database's admin user, and
/// Cloud SQL Client in the project (`cloudsql.instances.get` for `connectSettings`,
/// `cloudsql.instances.connect` for `generateEphemeralCert`) when one of those databases has no
/// `host` or no `ca-file`, so dbward looks its instance up. The members are left empty (dbward
/// cannot know who runs it); the notes say whom to add. `None` when no database of this cloud
/// has an admin user.
pub fn live_bindings(cloud: &Cloud, databases: &[&Database]) -> Result<Option<Value>, EmitError> {
    let CloudKind::Gcp { project, .. } = &cloud.kind else {
        return Err(super::wrong_cloud(cloud, databases.first().copied(), "gcp"));
    };
    let with_admin: Vec<&&Database> = databases
        .iter()
        .filter(|db| db.admin_user.is_some())
        .collect();
    let admins: BTreeSet<String> = with_admin
        .iter()
        .filter_map(|db| db.admin_user.as_ref())
        .map(|admin| service_account(&admin.name))
        .collect();
    if admins.is_empty() {
        return Ok(None);
    }
    let looked_up = with_admin.iter().any(|db| {
        matches!(&db.kind, DatabaseKind::CloudSql { ca_file, .. }
            if ca_file.is_none() || db.postgres.host.is_none())
    });
    let mut bindings = Vec::new();
    let mut notes = vec![
        "Add whoever runs `dbward plan --live` / `dbward apply --live` (`user:you@example.com`, or the CI job's `serviceAccount:…`) to `members`: dbward logs in as each Cloud SQL database's admin user with a login token it gets by impersonating the admin user's service account, with the Google credentials of the machine it runs on (GOOGLE_APPLICATION_CREDENTIALS or the metadata server).".to_owned(),
    ];
    if looked_up {
        bindings.push(json!({
            "resource": format!("projects/{project}"),
            "role": "roles/cloudsql.client",
            "members": [],
        }));
        notes.push("Cloud SQL Client is there because a database has no `host` or no `ca-file`: dbward then looks its instance up as the relay does (Cloud SQL Admin connectSettings, cloudsql.instances.get) and presents an ephemeral client certificate (generateEphemeralCert, cloudsql.instances.connect).".to_owned());
    }
    bindings.extend(admins.iter().map(|account| {
        json!({
            "resource": format!("projects/{project}/serviceAccounts/{account}"),
            "role": "roles/iam.serviceAccountTokenCreator",
            "members": [],
        })
    }));
    Ok(Some(json!({
        "project": project,
        "notes": notes,
        "bindings": bindings,
    })))
}

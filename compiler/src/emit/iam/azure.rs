//! The Azure side of one cloud binding: the custom role for the relay's identity (read access
//! to the PostgreSQL flexible servers it reaches) and where to assign it, and the Entra
//! identities the relay logs in as, each with the database users it maps to.
//!
//! Logging in is granted inside PostgreSQL (setup.sql creates each principal with its object
//! id), not by Azure RBAC; what Azure must be told is that the relay's host may use every
//! identity (`identities`, `notes`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::super::EmitError;
use crate::model::{Cloud, CloudKind, Database, DatabaseKind, Model};

/// What the operator does with `identities`; emitted with them so the file explains itself.
const NOTES: &[&str] = &[
    "Assign every identity under `identities` to the host the relay runs on (a user-assigned managed identity: `az vm identity assign --identities RESOURCE_ID`, `az containerapp identity assign --user-assigned RESOURCE_ID`, or the pod's workload identity); an app registration instead needs its secret or certificate in the relay's environment. The relay asks Entra for a token by each identity's client id.",
    "Database logins are not granted by Azure RBAC: setup.sql creates each database user with pgaadauth_create_principal_with_oid and the identity's object id, so the database accepts a token whose oid is that object id for that user only.",
    "`dbward plan --live` and `dbward apply --live` log in as each server's admin user, with the token of the identity that `logsInAs` it: run them where that identity is available (assigned to the host, or an app registration's secret or certificate in AZURE_CLIENT_ID with AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH).",
];

/// The role definition, its assignment and the identities: `{ roleDefinition, assignment,
/// identities, notes, servers }`, the first two shaped as `az role definition create
/// --role-definition` and `az role assignment create` expect. Without a `relay-identity` there
/// is no assignment.
pub fn role(model: &Model, cloud: &Cloud, databases: &[&Database]) -> Result<Value, EmitError> {
    let CloudKind::Azure {
        subscription,
        relay_identity,
        ..
    } = &cloud.kind
    else {
        return Err(super::wrong_cloud(
            cloud,
            databases.first().copied(),
            "azure",
        ));
    };
    let mut servers = Vec::new();
    // Each identity, with the `database/user` logins it maps to.
    let mut identities: BTreeMap<(String, Option<String>), Vec<String>> = BTreeMap::new();
    for db in databases {
        let DatabaseKind::AzurePostgres { server, .. } = &db.kind else {
            return Err(super::wrong_cloud(cloud, Some(db), "azure-postgres"));
        };
        servers.push(server.clone());
        for (user, principal) in model.entra_principals(db) {
            identities
                .entry((principal.client_id, principal.object_id))
                .or_default()
                .push(format!("{}/{user}", db.name));
        }
    }
    let identities: Vec<Value> = identities
        .into_iter()
        .map(|((client_id, object_id), logins)| {
            json!({
                "clientId": client_id,
                "objectId": object_id,
                "logsInAs": logins,
            })
        })
        .collect();
    servers.sort();
    servers.dedup();
    let scope = format!("/subscriptions/{subscription}");
    let mut document = json!({
        "roleDefinition": {
            "Name": format!("dbward relay ({})", cloud.name),
            "IsCustom": true,
            "Description": format!(
                "Lets the dbward relay read the Azure Database for PostgreSQL servers it connects to: {}",
                servers.join(", ")
            ),
            "Actions": [
                "Microsoft.DBforPostgreSQL/flexibleServers/read",
                "Microsoft.DBforPostgreSQL/flexibleServers/databases/read",
            ],
            "NotActions": [],
            "DataActions": [],
            "NotDataActions": [],
            "AssignableScopes": [scope],
        },
        "identities": identities,
        "notes": NOTES,
        "servers": servers,
    });
    if let (Some(relay), Some(map)) = (relay_identity, document.as_object_mut()) {
        map.insert(
            "assignment".to_owned(),
            json!({
                "assignee": relay.client_id,
                "role": format!("dbward relay ({})", cloud.name),
                "scope": scope,
            }),
        );
    }
    Ok(document)
}

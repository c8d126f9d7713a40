//! The Azure custom role for the relay's identity: read access to the PostgreSQL flexible
//! servers it reaches (to look up their endpoints), and where to assign it. Logging in is
//! granted inside PostgreSQL (setup.sql creates the Entra principals), not by Azure RBAC.

use serde_json::{Value, json};

use super::super::EmitError;
use crate::model::{Cloud, CloudKind, Database, DatabaseKind};

/// The role definition and its assignment: `{ roleDefinition, assignment }`, shaped as
/// `az role definition create --role-definition` and `az role assignment create` expect.
pub fn role(cloud: &Cloud, databases: &[&Database]) -> Result<Value, EmitError> {
    let CloudKind::Azure {
        subscription,
        relay_client_id,
        ..
    } = &cloud.kind
    else {
        return Err(super::wrong_cloud(
            cloud,
            databases.first().copied(),
            "azure",
        ));
    };
    let client_id = relay_client_id
        .as_ref()
        .ok_or_else(|| EmitError::MissingRelayIdentity {
            cloud: cloud.name.clone(),
            what: "relay identity",
            node: "relay-identity client-id=\"…\"",
        })?;
    let mut servers = Vec::new();
    for db in databases {
        let DatabaseKind::AzurePostgres { server, .. } = &db.kind else {
            return Err(super::wrong_cloud(cloud, Some(db), "azure-postgres"));
        };
        servers.push(server.clone());
    }
    servers.sort();
    servers.dedup();
    let scope = format!("/subscriptions/{subscription}");
    Ok(json!({
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
        "assignment": {
            "assignee": client_id,
            "role": format!("dbward relay ({})", cloud.name),
            "scope": scope,
        },
        "servers": servers,
    }))
}

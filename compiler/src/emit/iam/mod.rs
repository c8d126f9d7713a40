//! IAM JSON for the clouds the manifest binds: what an operator attaches so the relay may
//! authenticate to each cloud database, and nothing more.
//!
//! One file per cloud binding, `iam/<provider>/<cloud>.json`, covering every database that uses
//! it; and for AWS and GCP, `iam/live/<provider>/<cloud>.json`: what whoever runs
//! `dbward … --live` needs.
//! Output is `serde_json` pretty-printed with sorted keys and a trailing newline, so it is
//! byte-for-byte reproducible and diffs cleanly in a plan.

pub mod aws;
pub mod azure;
pub mod gcp;

use serde_json::Value;

use super::EmitError;
use crate::model::{Cloud, CloudKind, Database, Model};

/// `(path, text)` of every IAM file the model needs. Clouds no database uses get no file.
pub fn emit(model: &Model) -> Result<Vec<(String, String)>, EmitError> {
    let mut files = Vec::new();
    for (name, cloud) in &model.clouds {
        let databases: Vec<&Database> = model
            .databases
            .values()
            .filter(|db| db.kind.cloud() == Some(name.as_str()))
            .collect();
        if databases.is_empty() {
            continue;
        }
        let (provider, document) = match &cloud.kind {
            CloudKind::Aws { .. } => ("aws", aws::policy(model, cloud, &databases)?),
            CloudKind::Gcp { .. } => ("gcp", gcp::bindings(cloud, &databases)?),
            CloudKind::Azure { .. } => ("azure", azure::role(model, cloud, &databases)?),
        };
        files.push((format!("iam/{provider}/{name}.json"), pretty(&document)));
        // What whoever runs `--live` needs to log in as the admin users (not Azure: admin users
        // log in as their own Entra identity, which no RBAC role grants).
        let live = match &cloud.kind {
            CloudKind::Aws { .. } => aws::live_policy(cloud, &databases)?,
            CloudKind::Gcp { .. } => gcp::live_bindings(cloud, &databases)?,
            CloudKind::Azure { .. } => None,
        };
        if let Some(live) = live {
            files.push((format!("iam/live/{provider}/{name}.json"), pretty(&live)));
        }
    }
    Ok(files)
}

/// Pretty JSON with a trailing newline.
pub fn pretty(value: &Value) -> String {
    // Serializing a `Value` cannot fail: its keys are strings and it holds no non-finite floats.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// The error for a database bound to a cloud of another kind (the front end rules this out;
/// the emitters still refuse a hand-built model). `database` is the one at fault, when known.
fn wrong_cloud(cloud: &Cloud, database: Option<&Database>, expected: &'static str) -> EmitError {
    EmitError::WrongCloud {
        database: database.map(|d| d.name.clone()).unwrap_or_default(),
        cloud: cloud.name.clone(),
        expected,
    }
}

//! The plan as a versioned JSON document for CI bots (`dbward plan --json`). It never carries
//! file content of sensitive files, nor even their hashes.

use schemars::JsonSchema;
use serde::Serialize;

use super::{Action, Drift, Plan, sha256};

/// Version of the plan JSON document; bumped on any incompatible change.
pub const PLAN_JSON_VERSION: u32 = 1;

/// `dbward plan --json`: what apply would change, for CI bots. Never holds a secret.
#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct PlanJson {
    pub format_version: u32,
    /// `true` when `changes` is not empty, or (with `--live`) a database needs changes.
    pub has_changes: bool,
    pub summary: Summary,
    pub changes: Vec<ChangeJson>,
    /// Who gains, loses or changes access: the new access table against the one in the
    /// frozen config deployed under `--out` (always present in `dbward plan --json`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub access: Option<crate::diff::AccessChangesJson>,
    /// With `--live`: what the databases need changed (absent without `--live`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub live: Option<LiveJson>,
}

/// The live part of a plan: the statements setup.sql would execute in each database name.
#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct LiveJson {
    /// Statements that add (CREATE, GRANT), change (ALTER ROLE, a replaced function) and
    /// remove (REVOKE).
    pub add: usize,
    pub change: usize,
    pub remove: usize,
    /// Every database name that was read, with its statements (empty when it is converged).
    pub databases: Vec<LiveDatabaseJson>,
    /// Databases or names that could not be read; the plan is incomplete when not empty.
    pub failures: Vec<LiveFailureJson>,
    /// A db-name the manifest lists that does not exist, a privilege setup.sql cannot revoke, ….
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct LiveDatabaseJson {
    /// The manifest's database.
    pub database: String,
    /// The database name on the server.
    pub db_name: String,
    pub statements: Vec<LiveStatementJson>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct LiveStatementJson {
    /// `add`, `change` or `remove`.
    pub action: String,
    /// The statement, exactly as apply executes it (a replaced function's source is not shown).
    pub sql: String,
}

#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct LiveFailureJson {
    pub database: String,
    /// Absent when the server itself could not be reached.
    pub db_name: Option<String>,
    pub message: String,
}

/// The live part of the JSON document.
pub fn live_json(report: &crate::live::LiveReport) -> LiveJson {
    let (add, change, remove) = crate::live::counts(report);
    LiveJson {
        add,
        change,
        remove,
        databases: report
            .changes
            .iter()
            .map(|c| LiveDatabaseJson {
                database: c.database.clone(),
                db_name: c.db_name.clone(),
                statements: c
                    .statements
                    .iter()
                    .map(|sql| LiveStatementJson {
                        action: match crate::live::sign(sql) {
                            '+' => "add",
                            '-' => "remove",
                            _ => "change",
                        }
                        .into(),
                        sql: sql.clone(),
                    })
                    .collect(),
            })
            .collect(),
        failures: report
            .failures
            .iter()
            .map(|f| LiveFailureJson {
                database: f.database.clone(),
                db_name: f.db_name.clone(),
                message: f.message.clone(),
            })
            .collect(),
        warnings: report.warnings.clone(),
    }
}

#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    /// Changes that overwrite or remove a hand edit (apply needs `--force`).
    pub drifted: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct ChangeJson {
    pub path: String,
    /// `add`, `change` or `remove`.
    pub action: String,
    pub sensitive: bool,
    /// `edited` (changed by hand since the last apply), `unmanaged` (never written by dbward),
    /// or absent.
    pub drift: Option<String>,
    pub mode_before: Option<u32>,
    pub mode_after: Option<u32>,
    /// `sha256:<hex>` of the content before and after; absent for sensitive files.
    pub sha256_before: Option<String>,
    pub sha256_after: Option<String>,
    /// Unified diff for changed text files that are not sensitive.
    pub diff: Option<String>,
}

/// The JSON Schema of the plan document, as checked in at `schemas/plan.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(PlanJson);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The JSON document of a plan.
pub fn to_json(plan: &Plan) -> PlanJson {
    let (add, change, destroy) = plan.counts();
    let changes = plan
        .changes
        .iter()
        .map(|c| {
            let hash = |v: &Option<super::FileVersion>| {
                if c.sensitive {
                    None
                } else {
                    v.as_ref().map(|v| sha256(&v.bytes))
                }
            };
            let diff = match (&c.before, &c.after) {
                (Some(before), Some(after)) if !c.sensitive => {
                    match (
                        std::str::from_utf8(&before.bytes),
                        std::str::from_utf8(&after.bytes),
                    ) {
                        (Ok(old), Ok(new)) if old != new => Some(
                            similar::TextDiff::from_lines(old, new)
                                .unified_diff()
                                .header(&format!("a/{}", c.path), &format!("b/{}", c.path))
                                .to_string(),
                        ),
                        _ => None,
                    }
                }
                _ => None,
            };
            ChangeJson {
                path: c.path.clone(),
                action: match c.action {
                    Action::Add => "add",
                    Action::Change => "change",
                    Action::Remove => "remove",
                }
                .into(),
                sensitive: c.sensitive,
                drift: c.drift.map(|d| {
                    match d {
                        Drift::Edited => "edited",
                        Drift::Unmanaged => "unmanaged",
                    }
                    .into()
                }),
                mode_before: c.before.as_ref().map(|v| v.mode),
                mode_after: c.after.as_ref().map(|v| v.mode),
                sha256_before: hash(&c.before),
                sha256_after: hash(&c.after),
                diff,
            }
        })
        .collect();
    PlanJson {
        format_version: PLAN_JSON_VERSION,
        has_changes: !plan.is_empty(),
        summary: Summary {
            add,
            change,
            destroy,
            drifted: plan.drifted().count(),
        },
        changes,
        access: None,
        live: None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plan_schema_file_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/plan.schema.json");
        let expected = super::json_schema();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &expected).unwrap();
            return;
        }
        let actual = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            actual == expected,
            "schemas/plan.schema.json is stale: run `UPDATE_GOLDEN=1 cargo nextest run -p dbward \
             plan_schema_file_is_current` and commit the result"
        );
    }
}

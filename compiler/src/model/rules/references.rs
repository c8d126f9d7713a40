//! Rule: every reference names something declared. Codes: `dbward::unknown_role`,
//! `dbward::unknown_db_role`, `dbward::unknown_db_user`, `dbward::unknown_database`,
//! `dbward::unknown_label`, `dbward::unknown_cloud`, `dbward::membership_cycle`.
//!
//! **Why it matters:** a misspelled role or db-user would otherwise grant nothing (or, worse,
//! something else) without anyone noticing until a person is locked out at 3 a.m.
//!
//! **Example:**
//! ```kdl
//! user alice { roles developr }    // unknown_role: did you mean `developer`?
//! ```
//!
//! **How to fix:** follow the "did you mean" hint, or declare what is referenced.

use std::collections::{BTreeMap, BTreeSet};

use super::{Databases, by_name, declared, labels_of, suggestion};
use crate::diag::Diagnostic;
use crate::syntax::ast::{Manifest, Node};

fn unknown(
    code: &'static str,
    what: &str,
    name: &str,
    span: crate::diag::Span,
    known: &[&str],
    declare: &str,
) -> Diagnostic {
    let hint = suggestion(name, known.iter().copied());
    Diagnostic::error(code, format!("unknown {what} `{name}`"))
        .label(span, format!("no {what} is called this"))
        .help(if hint.is_empty() {
            if known.is_empty() {
                declare.to_string()
            } else {
                format!("{declare}, or use one of: {}", known.join(", "))
            }
        } else {
            hint
        })
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    let role_names = by_name(manifest, "role");
    let roles: Vec<&str> = role_names.keys().copied().collect();
    let clouds: Vec<&str> = by_name(manifest, "cloud").keys().copied().collect();
    let database_names = by_name(manifest, "database");
    let databases: Vec<&str> = database_names.keys().copied().collect();
    let index = Databases::new(manifest);

    for user in manifest.nodes_named("user") {
        for roles_node in user.children_named("roles") {
            for (name, span) in roles_node.str_args() {
                if !role_names.contains_key(name) {
                    diags.push(unknown(
                        "dbward::unknown_role",
                        "role",
                        name,
                        span,
                        &roles,
                        &format!("declare it with `role {name} {{ … }}`"),
                    ));
                }
            }
        }
    }

    for db in manifest.nodes_named("database") {
        for kind in ["aws-rds", "cloud-sql", "azure-postgres"] {
            for binding in db.children_named(kind) {
                if let Some(prop) = binding.prop("cloud")
                    && let Some(name) = prop.value.as_str()
                    && !clouds.contains(&name)
                {
                    diags.push(unknown(
                        "dbward::unknown_cloud",
                        "cloud",
                        name,
                        prop.value.span,
                        &clouds,
                        &format!("declare it with `cloud {name} {{ … }}`"),
                    ));
                }
            }
        }
        let db_roles = declared(db, "db-role");
        for member in db
            .children_named("db-role")
            .chain(db.children_named("db-user"))
        {
            for of in member.children_named("member-of") {
                for (name, span) in of.str_args() {
                    if !db_roles.contains(&name) {
                        diags.push(unknown(
                            "dbward::unknown_db_role",
                            "db-role",
                            name,
                            span,
                            &db_roles,
                            &format!("declare `db-role {name}` in this database"),
                        ));
                    }
                }
            }
        }
        check_cycles(db, diags);
    }

    let label_keys: BTreeSet<&str> = manifest
        .nodes_named("database")
        .flat_map(|db| labels_of(db).into_keys())
        .collect();
    let label_keys: Vec<&str> = label_keys.into_iter().collect();
    for role in manifest.nodes_named("role") {
        for block in role
            .children()
            .iter()
            .filter(|n| n.name() == "allow" || n.name() == "deny")
        {
            let Some(selector) = block.child("databases") else {
                continue;
            };
            for (name, span) in selector.str_args() {
                if name != "*" && !database_names.contains_key(name) {
                    diags.push(unknown(
                        "dbward::unknown_database",
                        "database",
                        name,
                        span,
                        &databases,
                        &format!("declare it with `database {name} {{ … }}`"),
                    ));
                }
            }
            for prop in &selector.props {
                let key = prop.name.text.as_str();
                if !label_keys.contains(&key) {
                    let hint = suggestion(key, label_keys.iter().copied());
                    diags.push(
                        Diagnostic::error(
                            "dbward::unknown_label",
                            format!("no database has a label `{key}`"),
                        )
                        .label(prop.name.span, "unknown label")
                        .help(if hint.is_empty() {
                            format!("add `labels {key}=…` to the databases this should select")
                        } else {
                            hint
                        }),
                    );
                }
            }
            // db-users must exist on at least one selected database (a role may span databases
            // that each declare a different subset).
            let matched = index.selected(selector);
            if matched.is_empty() {
                continue;
            }
            let known: BTreeSet<&str> = matched
                .iter()
                .flat_map(|db| declared(db, "db-user"))
                .collect();
            let known: Vec<&str> = known.into_iter().collect();
            for users in block.children_named("db-users") {
                for (name, span) in users.str_args() {
                    if name != "*" && !known.contains(&name) {
                        diags.push(unknown(
                            "dbward::unknown_db_user",
                            "db-user",
                            name,
                            span,
                            &known,
                            &format!("declare `db-user {name}` in a database this block selects"),
                        ));
                    }
                }
            }
            // In an allow, db-roles are checked per database by the provisioning rule; a deny
            // only has to name one that exists somewhere it applies.
            if block.name() == "deny" {
                let known: BTreeSet<&str> = matched
                    .iter()
                    .flat_map(|db| declared(db, "db-role"))
                    .collect();
                let known: Vec<&str> = known.into_iter().collect();
                for roles in block.children_named("db-roles") {
                    for (name, span) in roles.str_args() {
                        if name != "*" && !known.contains(&name) {
                            diags.push(unknown(
                                "dbward::unknown_db_role",
                                "db-role",
                                name,
                                span,
                                &known,
                                &format!(
                                    "declare `db-role {name}` in a database this block selects"
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// db-roles that are members of each other in a circle: PostgreSQL refuses such GRANTs.
fn check_cycles(db: &Node, diags: &mut Vec<Diagnostic>) {
    let edges: BTreeMap<&str, (&Node, Vec<&str>)> = db
        .children_named("db-role")
        .filter_map(|r| {
            let name = r.first_str()?;
            let of = r
                .children_named("member-of")
                .flat_map(|m| m.str_args().map(|(s, _)| s))
                .collect();
            Some((name, (r, of)))
        })
        .collect();
    let mut reported = BTreeSet::new();
    for &start in edges.keys() {
        // Depth-first search from `start`, looking for a way back to it.
        let mut stack = vec![(start, vec![start])];
        let mut visited = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            let Some((_, next)) = edges.get(at) else {
                continue;
            };
            for &n in next {
                if n == start {
                    let mut members: Vec<&str> = path.clone();
                    members.sort_unstable();
                    if reported.insert(members) {
                        let node = edges[start].0;
                        let mut cycle = path.clone();
                        cycle.push(start);
                        diags.push(
                            Diagnostic::error(
                                "dbward::membership_cycle",
                                format!(
                                    "db-roles are members of each other in a circle: {}",
                                    cycle.join(" -> ")
                                ),
                            )
                            .label(node.first_arg_span(), "part of the circle")
                            .help("remove one `member-of` so that membership goes one way"),
                        );
                    }
                } else if visited.insert(n) {
                    let mut p = path.clone();
                    p.push(n);
                    stack.push((n, p));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, diags, expect};

    const DB: &str = "database orders {\n    labels env=prod\n    db-role reader\n    db-user app {\n        member-of reader\n    }\n}\n";

    #[test]
    fn unknown_role_suggests() {
        let all = diags("role developer {\n}\nuser a {\n    roles developr\n}\n");
        let d = all
            .iter()
            .find(|d| d.code == "dbward::unknown_role")
            .expect("reported");
        assert!(
            d.help.as_deref().unwrap_or("").contains("`developer`"),
            "{d:?}"
        );
    }

    #[test]
    fn unknown_references() {
        expect(
            &format!("{DB}database b {{\n    db-user x {{\n        member-of readr\n    }}\n}}\n"),
            "dbward::unknown_db_role",
            "`readr`",
        );
        expect(
            &format!(
                "{DB}role r {{\n    allow {{\n        databases order\n        db-names \"*\"\n    }}\n}}\n"
            ),
            "dbward::unknown_database",
            "`order`",
        );
        expect(
            &format!(
                "{DB}role r {{\n    allow {{\n        databases evn=prod\n        db-names \"*\"\n    }}\n}}\n"
            ),
            "dbward::unknown_label",
            "`evn`",
        );
        expect(
            &format!(
                "{DB}role r {{\n    allow {{\n        databases env=prod\n        db-users ap\n        db-names \"*\"\n    }}\n}}\n"
            ),
            "dbward::unknown_db_user",
            "`ap`",
        );
        expect(
            "database d {\n    aws-rds cloud=nope resource-id=\"db-ABC\"\n}\n",
            "dbward::unknown_cloud",
            "`nope`",
        );
        absent(
            &format!(
                "{DB}role r {{\n    allow {{\n        databases env=prod\n        db-users app\n        db-names \"*\"\n    }}\n}}\n"
            ),
            "dbward::unknown_db_user",
        );
    }

    #[test]
    fn deny_db_roles_must_exist() {
        expect(
            &format!(
                "{DB}role r {{\n    deny {{\n        databases orders\n        db-roles writer\n    }}\n}}\n"
            ),
            "dbward::unknown_db_role",
            "`writer`",
        );
        absent(
            &format!(
                "{DB}role r {{\n    deny {{\n        databases orders\n        db-roles reader\n    }}\n}}\n"
            ),
            "dbward::unknown_db_role",
        );
    }

    #[test]
    fn cycles() {
        expect(
            "database d {\n    db-role a {\n        member-of b\n    }\n    db-role b {\n        member-of a\n    }\n}\n",
            "dbward::membership_cycle",
            "a -> b -> a",
        );
        absent(
            "database d {\n    db-role a {\n        member-of b\n    }\n    db-role b\n}\n",
            "dbward::membership_cycle",
        );
    }
}

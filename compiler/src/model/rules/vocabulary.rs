//! Rule: the manifest uses the language's nodes and properties, in the right places, with the
//! right number of arguments. Codes: `dbward::unknown_node`, `dbward::unknown_property`,
//! `dbward::duplicate_property`, `dbward::missing_property`, `dbward::missing_argument`,
//! `dbward::unexpected_argument`, `dbward::missing_block`, `dbward::unexpected_block`,
//! `dbward::missing_node`, `dbward::duplicate_node`, `dbward::type_annotation`.
//!
//! **Why it matters:** an unknown or misplaced node is almost always a typo, and ignoring it
//! would silently drop a rule someone meant — for an access system, a silent failure.
//!
//! **Example:**
//! ```kdl
//! database orders {
//!     postgress host="pg.internal"    // unknown_node: did you mean `postgres`?
//! }
//! ```
//!
//! **How to fix:** follow the "did you mean" hint, or move the node where the language expects
//! it; the full vocabulary is in `schemas/` (generated from [`crate::syntax::vocabulary`]).

use std::collections::BTreeMap;

use super::suggestion;
use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::{Manifest, Node};
use crate::syntax::{Block, ChildIndex, children_of, vocabulary};

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    check_nodes(&ChildIndex::new(), &manifest.nodes, "", None, diags);
}

fn check_nodes(
    index: &ChildIndex,
    nodes: &[Node],
    parent: &str,
    parent_node: Option<&Node>,
    diags: &mut Vec<Diagnostic>,
) {
    let allowed = index.children(parent);
    let mut seen: BTreeMap<&str, &Node> = BTreeMap::new();
    for node in nodes {
        let name = node.name();
        let Some(&(_, spec)) = allowed.iter().find(|(n, _)| *n == name) else {
            diags.push(unknown_node(node, parent));
            continue;
        };
        if !spec.repeatable {
            if let Some(first) = seen.get(spec.name()) {
                diags.push(
                    Diagnostic::error(
                        "dbward::duplicate_node",
                        format!("`{}` appears more than once here", spec.name()),
                    )
                    .label(node.head_span(), "second one")
                    .label(first.head_span(), "first one")
                    .help(format!(
                        "keep a single `{}` and merge what it says",
                        spec.name()
                    )),
                );
            } else {
                seen.insert(spec.name(), node);
            }
        }
        check_node(node, spec, diags);
        // The children of a node that takes no block were reported with it, not one by one.
        if spec.block != Block::No {
            check_nodes(index, node.children(), spec.path, Some(node), diags);
        }
    }
    // Required children (the `dbward` line itself is the version rule's business).
    for &(_, child) in allowed {
        if child.required
            && child.path != "dbward"
            && !nodes.iter().any(|n| n.name() == child.name())
        {
            let (span, place) = match parent_node {
                Some(p) => (p.head_span(), format!("this `{}` block", p.name())),
                None => (Span::at(0), "the manifest".to_string()),
            };
            let help = match child.path {
                "role/allow/db-names" => {
                    "write `db-names \"*\"` to allow every database name, or list the names"
                        .to_string()
                }
                "role/allow/databases" | "role/deny/databases" => {
                    "add `databases \"*\"`, `databases NAME…` or `databases KEY=VALUE…`".to_string()
                }
                _ => format!("add `{}` to {place} ({})", child.name(), child.doc),
            };
            diags.push(
                Diagnostic::error(
                    "dbward::missing_node",
                    format!("`{}` is required in {place}", child.name()),
                )
                .label(span, format!("needs a `{}`", child.name()))
                .help(help),
            );
        }
    }
}

fn unknown_node(node: &Node, parent: &str) -> Diagnostic {
    let name = node.name();
    let here: Vec<&str> = children_of(parent).map(|s| s.name()).collect();
    let hint = suggestion(name, here.iter().copied());
    let place = if parent.is_empty() {
        "at the top level".to_string()
    } else {
        format!("inside `{parent}`")
    };
    // The node exists, just not here: say where it belongs.
    let elsewhere = vocabulary()
        .iter()
        .find(|s| s.name() == name)
        .map(|s| match s.parent() {
            "" => format!("`{name}` belongs at the top level"),
            p => format!("`{name}` belongs inside `{p}`"),
        });
    let help = match (hint.is_empty(), elsewhere) {
        (false, _) => hint,
        (true, Some(where_)) => where_,
        (true, None) if here.is_empty() => format!("`{parent}` takes no child nodes"),
        (true, None) => format!("expected one of: {}", here.join(", ")),
    };
    Diagnostic::error(
        "dbward::unknown_node",
        format!("unknown node `{name}` {place}"),
    )
    .label(node.head_span(), "not part of the language here")
    .help(help)
}

fn check_node(node: &Node, spec: &crate::syntax::NodeSpec, diags: &mut Vec<Diagnostic>) {
    let name = spec.name();
    for ty in node
        .ty
        .iter()
        .chain(node.args.iter().filter_map(|a| a.ty.as_ref()))
        .chain(node.props.iter().filter_map(|p| p.value.ty.as_ref()))
    {
        diags.push(
            Diagnostic::error(
                "dbward::type_annotation",
                format!(
                    "type annotation `({})` is not used by the manifest language",
                    ty.text
                ),
            )
            .label(ty.span, "remove this")
            .help("remove the `(…)` annotation; values are typed by where they appear"),
        );
    }
    match spec.args {
        None => {
            if let Some(first) = node.args.first() {
                diags.push(
                    Diagnostic::error(
                        "dbward::unexpected_argument",
                        format!("`{name}` takes no arguments"),
                    )
                    .label(first.span, "unexpected")
                    .help(if spec.props.is_empty() {
                        format!("remove the value; `{name}` is {}", spec.doc)
                    } else {
                        let props: Vec<String> =
                            spec.props.iter().map(|p| format!("{}=…", p.name)).collect();
                        format!("`{name}` takes properties: {}", props.join(" "))
                    }),
                );
            }
        }
        Some(args) => {
            if node.args.len() < args.min {
                diags.push(
                    Diagnostic::error(
                        "dbward::missing_argument",
                        format!("`{name}` needs {}", args.what),
                    )
                    .label(
                        node.head_span(),
                        format!("expected {} after this", args.what),
                    )
                    .help(format!("write `{name} <{}>`: {}", args.what, spec.doc)),
                );
            }
            if let Some(max) = args.max
                && let Some(extra) = node.args.get(max)
            {
                diags.push(
                    Diagnostic::error(
                        "dbward::unexpected_argument",
                        if max == 1 {
                            format!("`{name}` takes a single value ({})", args.what)
                        } else {
                            format!("`{name}` takes at most {max} values ({})", args.what)
                        },
                    )
                    .label(extra.span, "one too many")
                    .help("remove the extra value, or write another node for it"),
                );
            }
        }
    }
    let mut props_seen: BTreeMap<&str, Span> = BTreeMap::new();
    for prop in &node.props {
        let key = prop.name.text.as_str();
        if let Some(first) = props_seen.insert(key, prop.name.span) {
            diags.push(
                Diagnostic::error(
                    "dbward::duplicate_property",
                    format!("`{key}` is given twice"),
                )
                .label(prop.name.span, "second one")
                .label(first, "first one")
                .help(format!("keep one `{key}=`")),
            );
        }
        if spec.prop(key).is_none() && spec.any_props.is_none() {
            let hint = suggestion(key, spec.props.iter().map(|p| p.name));
            let help = if !hint.is_empty() {
                hint
            } else if spec.props.is_empty() {
                format!("`{name}` takes no properties")
            } else {
                let known: Vec<&str> = spec.props.iter().map(|p| p.name).collect();
                format!("`{name}` takes: {}", known.join(", "))
            };
            diags.push(
                Diagnostic::error(
                    "dbward::unknown_property",
                    format!("unknown property `{key}` on `{name}`"),
                )
                .label(prop.name.span, "not a property of this node")
                .help(help),
            );
        }
    }
    for required in spec.props.iter().filter(|p| p.required) {
        if node.prop(required.name).is_none() {
            diags.push(
                Diagnostic::error(
                    "dbward::missing_property",
                    format!("`{name}` needs `{}=`", required.name),
                )
                .label(node.head_span(), format!("missing `{}=`", required.name))
                .help(format!("add `{}=…` to this `{name}`", required.name)),
            );
        }
    }
    match (spec.block, &node.children) {
        (Block::No, Some(_)) => diags.push(
            Diagnostic::error(
                "dbward::unexpected_block",
                format!("`{name}` takes no `{{ … }}` block"),
            )
            .label(node.head_span(), "this node")
            .help(format!("remove the block; `{name}` is {}", spec.doc)),
        ),
        (Block::Required, None) => diags.push(
            Diagnostic::error(
                "dbward::missing_block",
                format!("`{name}` needs a `{{ … }}` block"),
            )
            .label(node.head_span(), "no block")
            .help(format!(
                "add a block after it, `{name} … {{ … }}`, holding {}",
                block_contents(spec.path)
            )),
        ),
        _ => {}
    }
}

/// "`a`, `b` or `c`": the nodes a block may hold, for help lines.
fn block_contents(path: &str) -> String {
    let names: Vec<String> = children_of(path)
        .map(|s| format!("`{}`", s.name()))
        .collect();
    match names.as_slice() {
        [] => "its contents".to_string(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, diags, expect};

    #[test]
    fn unknown_node_suggests() {
        let all = diags("database orders {\n    postgress host=\"h\"\n}\n");
        let d = all
            .iter()
            .find(|d| d.code == "dbward::unknown_node")
            .expect("reported");
        assert!(
            d.help.as_deref().unwrap_or("").contains("`postgres`"),
            "{d:?}"
        );
    }

    #[test]
    fn misplaced_node_says_where_it_belongs() {
        let all = diags("grant SELECT on=database\n");
        let d = all
            .iter()
            .find(|d| d.code == "dbward::unknown_node")
            .expect("reported");
        assert!(
            d.help.as_deref().unwrap_or("").contains("database/db-role"),
            "{d:?}"
        );
    }

    #[test]
    fn unknown_property_suggests() {
        let all = diags("database orders {\n    postgres hots=\"h\"\n}\n");
        let d = all
            .iter()
            .find(|d| d.code == "dbward::unknown_property")
            .expect("reported");
        assert!(d.help.as_deref().unwrap_or("").contains("`host`"), "{d:?}");
    }

    #[test]
    fn duplicates_and_missing() {
        expect(
            "cloud c {\n    aws account=\"123456789012\" account=\"123456789012\" region=\"us-east-1\"\n}\n",
            "dbward::duplicate_property",
            "`account`",
        );
        expect(
            "cloud c {\n    aws region=\"us-east-1\"\n}\n",
            "dbward::missing_property",
            "`account=`",
        );
        expect(
            "role r {\n    allow {\n        databases \"*\"\n        db-users \"*\"\n    }\n}\n",
            "dbward::missing_node",
            "`db-names`",
        );
        expect("role r\n", "dbward::missing_block", "`role`");
        expect(
            "user u {\n    roles\n}\n",
            "dbward::missing_argument",
            "`roles`",
        );
        expect("dbward version=1\n", "dbward::duplicate_node", "`dbward`");
        expect(
            "database (x)orders {\n}\n",
            "dbward::type_annotation",
            "(x)",
        );
        absent(
            "user u {\n    roles a\n}\nrole a {\n    allow {\n        databases \"*\"\n        db-names \"*\"\n    }\n}\n",
            "dbward::missing_node",
        );
    }
}

//! schemas/dbward.kdl-schema agrees with the parser: the test reads the KDL Schema document
//! and the compiler's vocabulary (`dbward::syntax::vocabulary()`, what `dbward check` accepts)
//! into one shape each, and fails on every node, property, argument or allowed value that one
//! has and the other lacks. The human reference (schemas/reference.md) is checked to mention
//! every node, and every example is validated against the schema's shapes.

use std::collections::BTreeMap;
use std::path::Path;

use dbward::source::Source;
use dbward::syntax::ast::{Data, Node};
use dbward::syntax::{Block, ValueKind, vocabulary};

/// The type of a value, as both sides can say it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    String,
    Integer,
    Bool,
    OneOf(Vec<String>),
}

/// What a node accepts, as both sides can say it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Shape {
    /// Arguments: (min, max, kind); `None` when the node takes none.
    args: Option<(usize, Option<usize>, Kind)>,
    /// Properties: name -> (required, kind).
    props: BTreeMap<String, (bool, Kind)>,
    /// Any property name accepted, with values of this kind (label maps).
    any_props: Option<Kind>,
    /// Takes a `{ … }` block.
    block: bool,
    /// Must appear in its parent.
    required: bool,
    /// May appear more than once.
    repeatable: bool,
}

fn schema_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/dbward.kdl-schema")
}

fn kind(kind: ValueKind) -> Kind {
    match kind {
        ValueKind::String => Kind::String,
        ValueKind::Integer => Kind::Integer,
        ValueKind::Bool => Kind::Bool,
        ValueKind::OneOf(words) => Kind::OneOf(words.iter().map(|w| w.to_string()).collect()),
    }
}

/// The parser's side.
fn from_vocabulary() -> BTreeMap<String, Shape> {
    vocabulary()
        .iter()
        .map(|spec| {
            let shape = Shape {
                args: spec.args.map(|a| (a.min, a.max, kind(a.kind))),
                props: spec
                    .props
                    .iter()
                    .map(|p| (p.name.to_string(), (p.required, kind(p.kind))))
                    .collect(),
                any_props: spec.any_props.map(kind),
                block: spec.block != Block::No,
                required: spec.required,
                repeatable: spec.repeatable,
            };
            (spec.path.to_string(), shape)
        })
        .collect()
}

/// The words of KDL Schema this document may use (anything else is a typo that would be
/// silently ignored by a schema tool, so it is an error here).
const NODE_WORDS: &[&str] = &[
    "min",
    "max",
    "value",
    "prop",
    "children",
    "other-props-allowed",
];
const VALIDATION_WORDS: &[&str] = &[
    "min",
    "max",
    "type",
    "enum",
    "pattern",
    "format",
    "required",
    "min-length",
    "max-length",
    ">=",
    "<=",
];

fn first_arg(node: &Node) -> Option<&Data> {
    node.args.first().map(|v| &v.data)
}

fn int_child(node: &Node, name: &str) -> Option<usize> {
    node.children
        .as_deref()?
        .iter()
        .find(|c| c.name.text == name)
        .and_then(|c| match first_arg(c) {
            Some(Data::Integer(i)) => usize::try_from(*i).ok(),
            _ => None,
        })
}

fn bool_child(node: &Node, name: &str) -> bool {
    node.children
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|c| c.name.text == name && matches!(first_arg(c), Some(Data::Bool(true))))
}

/// The kind a `value` or `prop` node declares with `type` and `enum`.
fn declared_kind(node: &Node, at: &str, errors: &mut Vec<String>) -> Kind {
    let children = node.children.as_deref().unwrap_or_default();
    for child in children {
        if !VALIDATION_WORDS.contains(&child.name.text.as_str()) {
            errors.push(format!("{at}: unknown validation `{}`", child.name.text));
        }
    }
    let ty = children
        .iter()
        .find(|c| c.name.text == "type")
        .and_then(|c| c.args.first())
        .and_then(|v| v.as_str());
    let words: Option<Vec<String>> = children.iter().find(|c| c.name.text == "enum").map(|c| {
        c.args
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    });
    match (ty, words) {
        (Some("string"), Some(words)) => Kind::OneOf(words),
        (Some("string"), None) => Kind::String,
        // An enum of numbers (`version`) is a constraint the vocabulary expresses elsewhere.
        (Some("number"), _) => Kind::Integer,
        (Some("boolean"), _) => Kind::Bool,
        (other, _) => {
            errors.push(format!(
                "{at}: `type` must be string, number or boolean, not {other:?}"
            ));
            Kind::String
        }
    }
}

/// The schema's side: walks `node` declarations, collecting their shapes by path.
fn collect(
    nodes: &[Node],
    parent: &str,
    out: &mut BTreeMap<String, Shape>,
    errors: &mut Vec<String>,
) {
    for node in nodes.iter().filter(|n| n.name.text == "node") {
        let Some(name) = node.args.first().and_then(|v| v.as_str()) else {
            errors.push(format!("{parent}: a `node` without a name"));
            continue;
        };
        let path = if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}/{name}")
        };
        let mut shape = Shape {
            required: int_child(node, "min").is_some_and(|m| m >= 1),
            repeatable: int_child(node, "max").is_none_or(|m| m > 1),
            any_props: None,
            ..Shape::default()
        };
        let other_props = bool_child(node, "other-props-allowed");
        for child in node.children.as_deref().unwrap_or_default() {
            let word = child.name.text.as_str();
            if !NODE_WORDS.contains(&word) && word != "node" {
                errors.push(format!("{path}: unknown schema node `{word}`"));
            }
            match word {
                "value" => {
                    let min = int_child(child, "min").unwrap_or(0);
                    let max = int_child(child, "max");
                    let kind = declared_kind(child, &format!("{path} value"), errors);
                    shape.args = Some((min, max, kind));
                }
                "prop" => {
                    let kind = declared_kind(child, &format!("{path} prop"), errors);
                    match child.args.first().and_then(|v| v.as_str()) {
                        Some(key) => {
                            let required = bool_child(child, "required");
                            if shape
                                .props
                                .insert(key.to_string(), (required, kind))
                                .is_some()
                            {
                                errors.push(format!("{path}: prop `{key}` declared twice"));
                            }
                        }
                        None => shape.any_props = Some(kind),
                    }
                }
                "children" => {
                    shape.block = true;
                    collect(
                        child.children.as_deref().unwrap_or_default(),
                        &path,
                        out,
                        errors,
                    );
                }
                _ => {}
            }
        }
        if shape.any_props.is_some() != other_props {
            errors.push(format!(
                "{path}: a nameless `prop` and `other-props-allowed #true` go together"
            ));
        }
        if out.insert(path.clone(), shape).is_some() {
            errors.push(format!("{path}: declared twice"));
        }
    }
}

fn from_schema() -> BTreeMap<String, Shape> {
    let path = schema_path();
    let text = std::fs::read_to_string(&path).expect("schemas/dbward.kdl-schema exists");
    let source = Source::new(path.display().to_string(), text);
    let parsed = dbward::syntax::parse(&source);
    let manifest = parsed.manifest.unwrap_or_else(|| {
        panic!(
            "the schema is not valid KDL:\n{}",
            dbward::diag::render(&source, &parsed.diagnostics, 100, false)
        )
    });
    let [document] = manifest.nodes.as_slice() else {
        panic!("a KDL Schema has exactly one top-level `document` node");
    };
    assert_eq!(document.name.text, "document");
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    collect(
        document.children.as_deref().unwrap_or_default(),
        "",
        &mut out,
        &mut errors,
    );
    assert!(
        errors.is_empty(),
        "the schema is malformed:\n{}",
        errors.join("\n")
    );
    out
}

#[test]
fn schema_and_parser_accept_the_same_language() {
    let schema = from_schema();
    let parser = from_vocabulary();
    let mut problems = Vec::new();
    for path in parser.keys().filter(|p| !schema.contains_key(*p)) {
        problems.push(format!("the parser accepts `{path}`, the schema lacks it"));
    }
    for path in schema.keys().filter(|p| !parser.contains_key(*p)) {
        problems.push(format!(
            "the schema declares `{path}`, the parser does not accept it"
        ));
    }
    for (path, want) in &parser {
        let Some(have) = schema.get(path) else {
            continue;
        };
        for (key, spec) in &want.props {
            match have.props.get(key) {
                None => problems.push(format!("`{path}`: the schema lacks property `{key}`")),
                Some(s) if s != spec => problems.push(format!(
                    "`{path}` property `{key}`: parser says (required, kind) = {spec:?}, schema {s:?}"
                )),
                Some(_) => {}
            }
        }
        for key in have.props.keys().filter(|k| !want.props.contains_key(*k)) {
            problems.push(format!(
                "`{path}`: the schema has property `{key}`, the parser does not"
            ));
        }
        let fields = [
            (
                "arguments (min, max, kind)",
                format!("{:?}", want.args),
                format!("{:?}", have.args),
            ),
            (
                "any property",
                format!("{:?}", want.any_props),
                format!("{:?}", have.any_props),
            ),
            (
                "takes a block",
                want.block.to_string(),
                have.block.to_string(),
            ),
            (
                "required",
                want.required.to_string(),
                have.required.to_string(),
            ),
            (
                "repeatable",
                want.repeatable.to_string(),
                have.repeatable.to_string(),
            ),
        ];
        for (what, parser_says, schema_says) in fields {
            if parser_says != schema_says {
                problems.push(format!(
                    "`{path}` {what}: parser says {parser_says}, schema says {schema_says}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "schemas/dbward.kdl-schema and the parser's vocabulary disagree; update the schema \
         (and schemas/reference.md) with the language:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_comparison_catches_a_missing_node() {
    // Guard against a test that cannot fail: drop one node from the schema's side and one
    // property from the parser's side, and both must be noticed.
    let mut schema = from_schema();
    assert!(schema.remove("role/allow/db-roles").is_some());
    let parser = from_vocabulary();
    assert!(parser.keys().any(|p| !schema.contains_key(p)));
    let mut parser = parser;
    parser.get_mut("relay/audit").unwrap().props.clear();
    assert_ne!(parser.get("relay/audit"), from_schema().get("relay/audit"));
}

#[test]
fn the_reference_documents_every_node() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/reference.md");
    let reference = std::fs::read_to_string(path).expect("schemas/reference.md exists");
    let missing: Vec<&str> = vocabulary()
        .iter()
        .map(|spec| spec.path)
        .filter(|path| !reference.contains(&format!("`{path}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "schemas/reference.md has no heading for: {}",
        missing.join(", ")
    );
}

/// Checks one manifest's nodes against the schema's shapes, collecting every violation.
fn conform(
    nodes: &[Node],
    parent: &str,
    schema: &BTreeMap<String, Shape>,
    errors: &mut Vec<String>,
) {
    let prefix = if parent.is_empty() {
        String::new()
    } else {
        format!("{parent}/")
    };
    // Required and at-most-once children of this block.
    for (path, shape) in schema.iter().filter(|(p, _)| {
        p.strip_prefix(&prefix)
            .is_some_and(|rest| !rest.contains('/'))
    }) {
        let name = &path[prefix.len()..];
        let count = nodes.iter().filter(|n| n.name.text == name).count();
        if shape.required && count == 0 {
            errors.push(format!("`{path}` is required but missing"));
        }
        if !shape.repeatable && count > 1 {
            errors.push(format!("`{path}` appears {count} times"));
        }
    }
    for node in nodes {
        let path = format!("{prefix}{}", node.name.text);
        let Some(shape) = schema.get(&path) else {
            errors.push(format!("`{path}` is not in the schema"));
            continue;
        };
        match &shape.args {
            None if !node.args.is_empty() => errors.push(format!("`{path}` takes no arguments")),
            None => {}
            Some((min, max, kind)) => {
                if node.args.len() < *min || max.is_some_and(|m| node.args.len() > m) {
                    errors.push(format!("`{path}` has {} arguments", node.args.len()));
                }
                if let Kind::OneOf(words) = kind {
                    for arg in &node.args {
                        if !arg.as_str().is_some_and(|s| words.iter().any(|w| w == s)) {
                            errors
                                .push(format!("`{path}`: {:?} is not one of {words:?}", arg.data));
                        }
                    }
                }
            }
        }
        for prop in &node.props {
            if !shape.props.contains_key(&prop.name.text) && shape.any_props.is_none() {
                errors.push(format!("`{path}` has no property `{}`", prop.name.text));
            }
        }
        for (key, (required, _)) in &shape.props {
            if *required && !node.props.iter().any(|p| &p.name.text == key) {
                errors.push(format!("`{path}` needs property `{key}`"));
            }
        }
        match (&node.children, shape.block) {
            (Some(children), true) => conform(children, &path, schema, errors),
            (Some(_), false) => errors.push(format!("`{path}` takes no block")),
            (None, _) => {}
        }
    }
}

#[test]
fn every_example_conforms_to_the_schema() {
    let schema = from_schema();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("examples/ exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_none_or(|e| e != "kdl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("UTF-8");
        let parsed = dbward::syntax::parse(&Source::new(path.display().to_string(), text));
        let manifest = parsed.manifest.expect("examples parse");
        let mut errors = Vec::new();
        conform(&manifest.nodes, "", &schema, &mut errors);
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            path.display(),
            errors.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} examples found");

    // And the validator is not blind: a misspelled property and a missing node are caught.
    let bad = "dbward version=1\nrelay {\n    listen \"127.0.0.1:6432\"\n}\nrole r {\n    provision sometimes\n}\n";
    let parsed = dbward::syntax::parse(&Source::new("bad.kdl", bad));
    let mut errors = Vec::new();
    conform(
        &parsed.manifest.expect("valid KDL").nodes,
        "",
        &schema,
        &mut errors,
    );
    let all = errors.join("\n");
    assert!(all.contains("`relay/public-name` is required"), "{all}");
    assert!(all.contains("\"sometimes\""), "{all}");
}

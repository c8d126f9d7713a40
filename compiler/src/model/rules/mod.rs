//! Validation rules, one per file. Each file's doc comment says what it catches, why it matters,
//! an example and how to fix it; each has its own tests.
//!
//! Rules read the AST (so they can point at spans) and push [`Diagnostic`]s; none stops at the
//! first problem. [`check`] runs the rules that decide whether a model can be built at all;
//! [`check_model`] runs those that need the resolved model and its access table.

pub mod access_blocks;
pub mod addresses;
pub mod allow_emptied_by_deny;
pub mod certificate_cutoffs;
pub mod cloud_ids;
pub mod cloud_kind;
pub mod cloud_sql_user_name;
pub mod confusable_names;
pub mod database_kind;
pub mod deny_narrows_wildcard;
pub mod duplicate_names;
pub mod durations;
pub mod entra_principals;
pub mod host_in_server_names;
pub mod invisible_characters;
pub mod kubernetes;
pub mod mixed_script_names;
pub mod peers;
pub mod privileges;
pub mod provision_name_conflict;
pub mod provisioning;
pub mod references;
pub mod role_matches_nothing;
pub mod safe_names;
pub mod user_without_roles;
pub mod value_types;
pub mod version;
pub mod vocabulary;

use std::collections::{BTreeMap, HashMap};

use super::access::WildcardNarrowing;
use super::types::Model;
use crate::diag::Diagnostic;
use crate::syntax::ast::{Manifest, Node};
use crate::syntax::{ChildIndex, NodeSpec};

/// Runs every rule that works on the AST alone.
pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    version::check(manifest, diags);
    vocabulary::check(manifest, diags);
    value_types::check(manifest, diags);
    duplicate_names::check(manifest, diags);
    references::check(manifest, diags);
    cloud_kind::check(manifest, diags);
    database_kind::check(manifest, diags);
    cloud_ids::check(manifest, diags);
    invisible_characters::check(manifest, diags);
    safe_names::check(manifest, diags);
    confusable_names::check(manifest, diags);
    mixed_script_names::check(manifest, diags);
    durations::check(manifest, diags);
    certificate_cutoffs::check(manifest, diags);
    addresses::check(manifest, diags);
    kubernetes::check(manifest, diags);
    peers::check(manifest, diags);
    host_in_server_names::check(manifest, diags);
    privileges::check(manifest, diags);
    access_blocks::check(manifest, diags);
    provisioning::check(manifest, diags);
    cloud_sql_user_name::check(manifest, diags);
    entra_principals::check(manifest, diags);
}

/// Runs the rules that need the model and the access computation.
pub fn check_model(
    manifest: &Manifest,
    model: &Model,
    narrowings: &[WildcardNarrowing],
    diags: &mut Vec<Diagnostic>,
) {
    deny_narrows_wildcard::check(manifest, narrowings, diags);
    role_matches_nothing::check(manifest, model, diags);
    user_without_roles::check(manifest, diags);
    allow_emptied_by_deny::check(manifest, model, diags);
    provision_name_conflict::check(manifest, model, diags);
}

/// Calls `f` on every node whose path the vocabulary knows, with its spec (children of unknown
/// nodes are skipped: the vocabulary rule has already reported their parent).
pub fn walk_known<'a>(manifest: &'a Manifest, mut f: impl FnMut(&'a Node, &'static NodeSpec)) {
    fn go<'a>(
        index: &ChildIndex,
        nodes: &'a [Node],
        parent: &'static str,
        f: &mut impl FnMut(&'a Node, &'static NodeSpec),
    ) {
        if nodes.is_empty() {
            return;
        }
        let children = index.children(parent);
        for node in nodes {
            let name = node.name();
            if let Some((_, spec)) = children.iter().find(|(n, _)| *n == name) {
                f(node, spec);
                go(index, node.children(), spec.path, f);
            }
        }
    }
    go(&ChildIndex::new(), &manifest.nodes, "", &mut f);
}

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        if candidate == word {
            continue;
        }
        let score = if candidate.to_lowercase() == lower {
            1.0
        } else {
            strsim::normalized_damerau_levenshtein(&lower, &candidate.to_lowercase())
                .max(strsim::jaro_winkler(&lower, &candidate.to_lowercase()) - 0.15)
        };
        if score >= 0.7 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// " (did you mean `x`?)" or "".
pub fn suggestion<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    did_you_mean(word, candidates)
        .map(|c| format!("did you mean `{c}`?"))
        .unwrap_or_default()
}

/// Top-level nodes of one kind, by their name argument (the first wins; duplicates are a rule).
pub fn by_name<'a>(manifest: &'a Manifest, kind: &'a str) -> BTreeMap<&'a str, &'a Node> {
    let mut map = BTreeMap::new();
    for node in manifest.nodes_named(kind) {
        if let Some(name) = node.first_str() {
            map.entry(name).or_insert(node);
        }
    }
    map
}

/// The string value of a database's `labels`, by key.
pub fn labels_of(db: &Node) -> BTreeMap<&str, &str> {
    db.children_named("labels")
        .flat_map(|l| l.props.iter())
        .filter_map(|p| Some((p.name.text.as_str(), p.value.as_str()?)))
        .collect()
}

/// The manifest's `database` nodes indexed by name and by label, so that the `databases`
/// selector of every allow and deny block is evaluated without testing every database (with
/// thousands of both, testing each pair dominated `dbward check`).
pub struct Databases<'a> {
    /// In manifest order; the lists below hold positions in it, ascending.
    nodes: Vec<&'a Node>,
    by_name: HashMap<&'a str, Vec<usize>>,
    /// Every string-valued `labels` property, as (key, value).
    by_label: HashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> Databases<'a> {
    pub fn new(manifest: &'a Manifest) -> Databases<'a> {
        let nodes: Vec<&Node> = manifest.nodes_named("database").collect();
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (index, db) in nodes.iter().enumerate() {
            if let Some(name) = db.first_str() {
                by_name.entry(name).or_default().push(index);
            }
            for prop in db.children_named("labels").flat_map(|l| l.props.iter()) {
                if let Some(value) = prop.value.as_str() {
                    let list = by_label
                        .entry((prop.name.text.as_str(), value))
                        .or_default();
                    // A label written twice on one database lists it once.
                    if list.last() != Some(&index) {
                        list.push(index);
                    }
                }
            }
        }
        Databases {
            nodes,
            by_name,
            by_label,
        }
    }

    /// Positions of the databases carrying every one of `wanted` (all of them when it is empty).
    fn with_labels(&self, wanted: &[(&str, &str)]) -> Vec<usize> {
        let mut lists = Vec::with_capacity(wanted.len());
        for pair in wanted {
            match self.by_label.get(pair) {
                Some(list) => lists.push(list),
                None => return Vec::new(),
            }
        }
        lists.sort_by_key(|list| list.len());
        let Some((first, rest)) = lists.split_first() else {
            return (0..self.nodes.len()).collect();
        };
        first
            .iter()
            .copied()
            .filter(|index| rest.iter().all(|list| list.binary_search(index).is_ok()))
            .collect()
    }

    /// Positions of the databases named by a selector's arguments (`"*"`: all of them).
    fn named(&self, selector: &Node) -> Vec<usize> {
        let names: Vec<&str> = selector.str_args().map(|(s, _)| s).collect();
        if names.contains(&"*") {
            return (0..self.nodes.len()).collect();
        }
        let mut found: Vec<usize> = names
            .iter()
            .filter_map(|name| self.by_name.get(name))
            .flatten()
            .copied()
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// The databases (nodes, in manifest order) a `databases` selector node matches: by labels
    /// when it has properties (those with a string value), else by name or `"*"`.
    pub fn selected(&self, selector: &Node) -> Vec<&'a Node> {
        let positions = if selector.props.is_empty() {
            self.named(selector)
        } else {
            let wanted: Vec<(&str, &str)> = selector
                .props
                .iter()
                .filter_map(|p| Some((p.name.text.as_str(), p.value.as_str()?)))
                .collect();
            self.with_labels(&wanted)
        };
        positions
            .into_iter()
            .filter_map(|index| self.nodes.get(index).copied())
            .collect()
    }

    /// Whether a `databases` selector node matches at least one database (a property whose
    /// value is not a string matches none).
    pub fn selects_any(&self, selector: &Node) -> bool {
        if selector.props.is_empty() {
            return !self.named(selector).is_empty();
        }
        let wanted: Vec<(&str, &str)> = selector
            .props
            .iter()
            .filter_map(|p| Some((p.name.text.as_str(), p.value.as_str()?)))
            .collect();
        wanted.len() == selector.props.len() && !self.with_labels(&wanted).is_empty()
    }
}

/// Names declared by children `kind` of a node (`db-user` of a database).
pub fn declared<'a>(node: &'a Node, kind: &'a str) -> Vec<&'a str> {
    node.children_named(kind)
        .filter_map(Node::first_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Databases;
    use crate::source::Source;
    use crate::syntax::ast::Node;

    /// Whether one database node matches a selector node, testing it directly.
    fn direct(db: &Node, selector: &Node) -> bool {
        let carries = |key: &str, value: &str| {
            db.children_named("labels")
                .flat_map(|l| l.props.iter())
                .any(|p| p.name.text == key && p.value.as_str() == Some(value))
        };
        if !selector.props.is_empty() {
            selector
                .props
                .iter()
                .filter_map(|p| Some((p.name.text.as_str(), p.value.as_str()?)))
                .all(|(k, v)| carries(k, v))
        } else {
            let names: Vec<&str> = selector.str_args().map(|(s, _)| s).collect();
            names.contains(&"*") || db.first_str().is_some_and(|n| names.contains(&n))
        }
    }

    #[test]
    fn the_database_index_selects_what_testing_each_database_selects() {
        let text = "database a {\n    labels env=prod team=x\n}\ndatabase b {\n    labels env=dev team=x\n    labels env=prod\n}\ndatabase a {\n    labels env=prod\n}\ndatabase c\n\
             s { databases \"*\"; }\ns { databases a c nope; }\ns { databases env=prod; }\n\
             s { databases env=prod team=x; }\ns { databases team=y; }\ns { databases env=1; }\n\
             s { databases env=1 team=x; }\ns { databases; }\n";
        let source = Source::new("t.kdl", text);
        let manifest = crate::syntax::parse(&source).manifest.expect("parses");
        let index = Databases::new(&manifest);
        let dbs: Vec<&Node> = manifest.nodes_named("database").collect();
        let selectors: Vec<&Node> = manifest
            .nodes_named("s")
            .filter_map(|s| s.child("databases"))
            .collect();
        assert_eq!(selectors.len(), 8);
        for selector in selectors {
            let expected: Vec<&Node> = dbs
                .iter()
                .copied()
                .filter(|db| direct(db, selector))
                .collect();
            let got = index.selected(selector);
            assert_eq!(got.len(), expected.len());
            assert!(got.iter().zip(&expected).all(|(g, e)| std::ptr::eq(*g, *e)));
            let all_strings = selector.props.iter().all(|p| p.value.as_str().is_some());
            assert_eq!(
                index.selects_any(selector),
                all_strings && !expected.is_empty()
            );
        }
    }
}

#[cfg(test)]
pub mod test_support {
    //! Runs the whole front end on a snippet, for the rules' own tests.
    use crate::diag::Diagnostic;
    use crate::source::Source;

    /// A valid manifest prefix (version and relay) so snippets only write what they test.
    pub const PRELUDE: &str = "dbward version=1\nrelay {\n    listen \"0.0.0.0:6432\"\n    public-name \"db.example.com\"\n}\n";

    /// All diagnostics of `PRELUDE + body`.
    pub fn diags(body: &str) -> Vec<Diagnostic> {
        let source = Source::new("test.kdl", format!("{PRELUDE}{body}"));
        crate::check(&source).diagnostics
    }

    /// The codes of all diagnostics of `PRELUDE + body`.
    pub fn codes(body: &str) -> Vec<&'static str> {
        diags(body).iter().map(|d| d.code).collect()
    }

    /// Asserts that `body` yields a diagnostic with `code` whose message contains `text`.
    #[track_caller]
    pub fn expect(body: &str, code: &str, text: &str) {
        let all = diags(body);
        assert!(
            all.iter()
                .any(|d| d.code == code && d.message.contains(text)),
            "expected {code} containing {text:?}, got: {all:#?}"
        );
    }

    /// Asserts that `body` yields no diagnostic with `code`.
    #[track_caller]
    pub fn absent(body: &str, code: &str) {
        let all = diags(body);
        assert!(
            all.iter().all(|d| d.code != code),
            "expected no {code}, got: {all:#?}"
        );
    }
}

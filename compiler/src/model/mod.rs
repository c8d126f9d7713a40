//! Resolution: `ast::Manifest` -> [`Model`], with every name resolved and the access table
//! computed. Validation rules live one per file under [`rules`].
//!
//! [`resolve`] runs the AST rules first; only a manifest without errors is lowered into a
//! [`Model`] ([`lower`]), its access table computed ([`access`]), and the rules that need the
//! model (mostly warnings) run last.

pub mod access;
pub mod lower;
pub mod rules;
mod types;

pub use types::*;

use crate::diag::{self, Diagnostic};
use crate::syntax::ast;

/// Resolves a parsed manifest. The model is `Some` only when no diagnostic is an error.
pub fn resolve(manifest: &ast::Manifest) -> (Option<Model>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    if manifest.nodes.is_empty() {
        diags.push(
            Diagnostic::error("dbward::empty_manifest", "the manifest is empty")
                .help("start with `dbward version=1` and a `relay { … }` block (see examples/quickstart.kdl)"),
        );
        return (None, diags);
    }
    rules::check(manifest, &mut diags);
    if diag::has_errors(&diags) {
        diag::sort(&mut diags);
        return (None, diags);
    }
    let mut model = lower::build(manifest);
    let (table, narrowings) = access::compute(&model);
    model.access = table;
    rules::check_model(manifest, &model, &narrowings, &mut diags);
    diag::sort(&mut diags);
    if diag::has_errors(&diags) {
        return (None, diags);
    }
    (Some(model), diags)
}

//! dbward compiles one KDL manifest into everything a PostgreSQL access deployment needs.
//!
//! The pipeline, one phase per module:
//!
//! 1. [`syntax`] — KDL text ([`source::Source`]) to a spanned [`syntax::ast::Manifest`], plus
//!    diagnostics: [`syntax::parse`] returns a [`syntax::Parsed`].
//! 2. [`model`] — check the manifest against the language ([`syntax::vocabulary`]) and the
//!    validation rules ([`model::rules`]), resolve names, evaluate selectors and compute the access
//!    table: [`model::resolve`] returns an `Option<`[`model::Model`]`>` and diagnostics.
//! 3. [`emit`] — pure functions from `Model` to files: [`emit::emit`] takes the model and an
//!    [`emit::env::Env`] (clock, keys, the files that exist now) and returns
//!    [`emit::Artifacts`] (bytes, mode and sensitivity per relative path).
//! 4. [`plan`] — compare artifacts with what is on disk and with what the last apply wrote:
//!    [`plan::compute`] returns a [`plan::Plan`] of additions, changes, removals and drift.
//! 5. [`apply`] — write a plan to disk atomically: [`apply::apply`] returns what it wrote.
//! 6. [`live`] — with `--live`, the running databases: [`live::targets`] picks the databases
//!    with an admin user from the model and artifacts, and [`live::run`] runs their setup.sql
//!    in one transaction per database name, rolled back (plan) or committed (apply), returning
//!    a [`live::LiveReport`] of the statements it executed.
//!
//! [`workflow`] composes the phases for `plan` and `apply`: [`workflow::prepare`] compiles a
//! checked manifest against an output directory into a [`workflow::Prepared`], whose `plan`,
//! `live` and `write` (re-checking under the apply lock that nothing moved) the subcommands
//! call; [`workflow::load_saved`] does the same for a saved plan file.
//!
//! [`check`] runs phases 1 and 2 in one call: it is the front end every subcommand uses, and
//! returns a [`Checked`] whose model exists only when there is no error.
//!
//! Beside the pipeline: [`diag`] holds the diagnostics and their rendering ([`diag::render`] for
//! people, [`diag::to_json`] for CI); [`fmt`] rewrites a manifest in canonical form;
//! [`explain`] prints the access table; [`diff`] compares two access tables (who gains and
//! who loses access, for `plan` and `dbward diff`); [`cli`] holds the subcommands of the
//! `dbward` binary (they parse arguments, ask and print; nothing in the library imports from
//! `cli`).

pub mod apply;
pub mod cli;
pub mod diag;
pub mod diff;
pub mod emit;
pub mod explain;
pub mod fmt;
pub mod live;
pub mod model;
pub mod plan;
pub mod source;
pub mod syntax;
pub mod workflow;

use diag::Diagnostic;
use model::Model;
use source::Source;

/// The front end's result: the model when the manifest has no error, and every diagnostic
/// (errors and warnings, sorted by position).
#[derive(Debug, Clone)]
pub struct Checked {
    /// `Some` only when no diagnostic is an error (warnings allowed).
    pub model: Option<Model>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        diag::has_errors(&self.diagnostics)
    }

    pub fn has_warnings(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == diag::Severity::Warning)
    }
}

/// Parses and resolves a manifest: the one-shot front end.
pub fn check(source: &Source) -> Checked {
    let parsed = syntax::parse(source);
    let mut diagnostics = parsed.diagnostics;
    let mut model = None;
    if let Some(manifest) = &parsed.manifest {
        let (resolved, more) = model::resolve(manifest);
        diagnostics.extend(more);
        model = resolved;
    }
    if diag::has_errors(&diagnostics) {
        model = None;
    }
    Checked { model, diagnostics }
}

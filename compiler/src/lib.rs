//! dbward compiles one KDL manifest into everything a PostgreSQL access deployment needs.
//!
//! The pipeline, one phase per module:
//!
//! 1. [`syntax`] — KDL text ([`source::Source`]) to a spanned `ast::Manifest`, plus diagnostics.
//! 2. [`model`] — resolve names, evaluate selectors and compute the access table: [`model::Model`].
//! 3. [`emit`] — pure functions from `Model` to `Artifacts` (files with bytes, mode, sensitivity).
//! 4. [`plan`] — compare artifacts with what exists on disk: a `Plan` of changes with diffs.
//! 5. [`apply`] — write a plan to disk atomically.

pub mod apply;
pub mod cli;
pub mod emit;
pub mod model;
pub mod plan;
pub mod source;
pub mod syntax;

//! Resolution: `ast::Manifest` -> [`Model`], with every name resolved and the access table
//! computed. Validation rules live one per file under `rules/`.

mod types;

pub use types::*;

//! The end-to-end suite: one test binary, so the workspace links it once.
//!
//! Modules, in the order a deployment happens:
//! - `harness`: the real-PostgreSQL harness itself works (start, SQL, stop).
//! - `schema`: schemas/dbward.kdl-schema and the parser's vocabulary accept the same language.
//! - `examples`: every examples/*.kdl checks cleanly and is canonical; `dbward fmt` and
//!   `dbward explain` through the real binary.
//! - `artifacts`: the generated postgresql.conf, pg_hba.conf, pg_ident.conf, certificates and
//!   setup.sql, installed into a real PostgreSQL: allowed logins work, everything else is refused.
//! - `golden`: every text emitter over every example, against checked-in golden files.

mod artifacts;
mod examples;
mod golden;
mod harness;
mod schema;

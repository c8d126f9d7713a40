//! The end-to-end suite: one test binary, so the workspace links it once.
//!
//! Modules, in the order a deployment happens:
//! - `harness`: the real-PostgreSQL harness itself works (start, SQL, stop).

mod harness;

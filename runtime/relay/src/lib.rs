//! dbward-relay: a small, fast PostgreSQL relay that executes a dbward frozen config.
//!
//! - [`state`]: the shared runtime state ([`state::Shared`], [`state::Loaded`]).
//! - [`tls`]: rustls configs for clients and upstreams, built once per config load.
//! - [`protocol`]: the PostgreSQL messages the relay reads and writes.
//! - [`upstream`]: how to reach and authenticate to each database.
//! - [`listener`]: the accept loop ([`run`]); [`session`]: one client from TLS to relaying.
//! - [`cancel`]: relay-issued cancel keys.
//! - [`audit`], [`metrics`]: what the relay reports.

pub mod audit;
pub mod cancel;
pub mod config;
pub mod http;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod session;
pub mod state;
pub mod tls;
pub mod upstream;

pub use listener::run;

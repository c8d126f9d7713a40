//! PostgreSQL wire-protocol messages the relay reads or writes, and nothing more.
//!
//! - [`startup`]: the first packet of a connection ([`Startup`]) and the StartupMessage.
//! - [`backend`]: the few server messages the relay writes itself (errors, AuthenticationOk,
//!   BackendKeyData) and the frame header it reads.
//! - [`options`]: the startup `options` string, to find and strip `dbward.database`.
//! - [`frames`]: reading whole messages during startup, and spotting queries while relaying.
//!
//! Parsers never panic and return `Ok(None)` while their input is incomplete.

pub mod backend;
pub mod frames;
pub mod options;
pub mod startup;

pub use startup::{Startup, StartupError, StartupMessage};

/// The key a client uses to cancel: issued by the relay, never the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub pid: u32,
    pub secret: u32,
}

/// The key an upstream backend issued; only ever sent back to that upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub pid: u32,
    pub secret: u32,
}

/// A fixed-seed xorshift generator for the parsers' property tests: reproducible random input
/// without a dependency.
#[cfg(test)]
pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

//! Emitters: pure functions from a [`Model`](crate::model::Model) to [`Artifacts`].
//!
//! **Emitters never do I/O.** The clock, key generation and the files that exist now (to keep
//! certificates byte for byte) come in through one [`Env`] value, so tests pin them and the same
//! manifest with the same state always yields byte-identical artifacts.
//!
//! The output layout under `--out DIR` (paths are always `/`-separated and relative):
//!
//! ```text
//! ca/users-ca.crt|key            signs person certificates (`dbward cert issue`)
//! ca/server-ca.crt|key           signs server certificates: the relay's and each database's
//! ca/relay-client-ca.crt|key     signs the relay's upstream client certificate only
//! relay/frozen.json              the frozen runtime config
//! relay/server.crt|key           the relay's certificate for `<public-name>`, `*.<public-name>`
//! relay/users-ca.crt             what the relay trusts for client certificates
//! relay/server-ca.crt            what the relay trusts for upstream server certificates
//! relay/upstream-client.crt|key  what the relay presents to self-hosted upstreams
//! databases/<db>/…               postgresql.conf, pg_hba.conf, pg_ident.conf, server.crt|key,
//!                                client-ca.crt (self-hosted only) and setup.sql (every kind)
//! iam/{aws,gcp,azure}/<cloud>.json
//! ```

use std::collections::BTreeMap;

/// Relative paths of the fixed artifacts, shared by every emitter that refers to them.
pub mod layout {
    pub const USERS_CA_CERT: &str = "ca/users-ca.crt";
    pub const USERS_CA_KEY: &str = "ca/users-ca.key";
    pub const SERVER_CA_CERT: &str = "ca/server-ca.crt";
    pub const SERVER_CA_KEY: &str = "ca/server-ca.key";
    pub const RELAY_CLIENT_CA_CERT: &str = "ca/relay-client-ca.crt";
    pub const RELAY_CLIENT_CA_KEY: &str = "ca/relay-client-ca.key";
    pub const FROZEN: &str = "relay/frozen.json";
    pub const RELAY_SERVER_CERT: &str = "relay/server.crt";
    pub const RELAY_SERVER_KEY: &str = "relay/server.key";
    pub const RELAY_USERS_CA: &str = "relay/users-ca.crt";
    pub const RELAY_SERVER_CA: &str = "relay/server-ca.crt";
    pub const RELAY_UPSTREAM_CERT: &str = "relay/upstream-client.crt";
    pub const RELAY_UPSTREAM_KEY: &str = "relay/upstream-client.key";
    /// Subject CN of the relay's upstream client certificate, mapped in `pg_ident.conf`.
    pub const RELAY_UPSTREAM_CN: &str = "dbward-relay";

    /// `databases/<db>/<file>`.
    pub fn database_file(database: &str, file: &str) -> String {
        format!("databases/{database}/{file}")
    }
}

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub bytes: Vec<u8>,
    /// Unix permission bits: `0o600` for private keys, `0o644` otherwise.
    pub mode: u32,
    /// Private keys and anything else whose content must never be printed (plans show
    /// `(sensitive)` instead of a diff).
    pub sensitive: bool,
}

impl Artifact {
    /// A public text file (`0o644`).
    pub fn text(text: impl Into<String>) -> Artifact {
        Artifact {
            bytes: text.into().into_bytes(),
            mode: 0o644,
            sensitive: false,
        }
    }

    /// A secret (`0o600`, never printed).
    pub fn secret(bytes: impl Into<Vec<u8>>) -> Artifact {
        Artifact {
            bytes: bytes.into(),
            mode: 0o600,
            sensitive: true,
        }
    }
}

/// Every file a manifest produces, by relative path. Ordered, so output is reproducible.
pub type Artifacts = BTreeMap<String, Artifact>;

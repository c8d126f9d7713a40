//! The frozen runtime configuration: the only input `dbward-relay` accepts.
//!
//! The compiler (`dbward apply`) makes every access decision ahead of time and writes it here as
//! `relay/frozen.json`; the relay loads it, checks its format version and its checksum, and
//! refuses anything it does not understand (`deny_unknown_fields` everywhere). This crate is
//! deliberately light — serde, a hash and nothing async — so the relay never links the
//! compiler's dependencies.
//!
//! **Invariants**
//! - **Serialization is canonical**: maps are `BTreeMap`s and sets are sorted `Vec`s, so the same
//!   config always serializes to the same bytes, and the checksum can be recomputed by the reader.
//! - **Paths are relative to the directory holding `frozen.json`**, so an output directory can be
//!   moved or mounted elsewhere as a whole. [`Config::resolve_path`] turns them into real paths.
//! - **No secret is stored inline**: keys are referenced by path, never embedded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format version this build writes and reads. A relay refuses any other.
/// Version 2 added the idle limits to [`Limits`] and made [`Access::grants`] structured;
/// version 3 added [`Revocation`] and [`Access::certificates_issued_after`].
pub const FORMAT_VERSION: u32 = 4;

/// The whole frozen configuration, as written to `relay/frozen.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Always [`FORMAT_VERSION`] for configs this build writes.
    pub format_version: u32,
    /// `sha256:<hex>` of the canonical JSON of this config with `checksum` set to `""`.
    pub checksum: String,
    pub relay: Relay,
    /// Every database the relay can reach, by manifest name.
    pub databases: BTreeMap<String, Database>,
    /// The compiled access table: one entry per (person, database) pair that allows anything,
    /// sorted by (identity, database) without duplicates (checked on load). A pair that is
    /// absent allows nothing.
    pub access: Vec<Access>,
}

/// How the relay listens and presents itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// Socket address to listen on, e.g. `0.0.0.0:6432`.
    pub listen: String,
    /// DNS name clients use; a database is selected by SNI `<database>.<public_name>`.
    pub public_name: String,
    /// The relay's own server certificate and key, and the CA that signs user certificates.
    pub tls: ServerTls,
    /// The certificate the relay presents to self-hosted upstreams (mutual TLS).
    pub upstream_identity: Option<TlsIdentity>,
    pub audit: Option<Audit>,
    /// Address of the `/metrics`, `/livez`, `/readyz` HTTP endpoint, when enabled.
    pub metrics: Option<String>,
    pub limits: Limits,
    /// What happens to sessions in flight when their access goes away.
    pub revocation: Revocation,
    /// The other replicas of this relay, to which CancelRequests for their sessions are
    /// forwarded (a load balancer may send a client's cancel to any replica).
    pub peers: Option<Peers>,
}

/// The peer ids a relay can encode in the cancel keys it issues (12 bits of the key's pid).
pub const MAX_PEER_ID: u16 = 4095;

/// `relay { peers … }`: the replicas of one relay, each with its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    /// The certificate every replica presents to the others (client and server), its key, and
    /// the CA that signs it: a forward from anything else is refused.
    pub tls: PeerTls,
    /// Every replica, this one included, sorted by id without duplicates.
    pub members: Vec<Peer>,
}

/// TLS between replicas: one certificate for the whole fleet, signed by a CA of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The DNS name in `cert` that each side checks on the other's.
    pub server_name: String,
}

/// One replica: its id (0–[`MAX_PEER_ID`]) and where it accepts forwarded cancels. A replica
/// listens on its own entry's address: that IP address and port, or every address on that
/// port when the host is a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub id: u16,
    /// `host:port` of its peer listener.
    pub address: String,
}

/// `revoke-grace` when the manifest does not say: 10 seconds, long enough for a statement in
/// flight to finish, short enough that a removed person is gone before anyone asks.
pub const DEFAULT_REVOKE_GRACE_MS: u64 = 10_000;

/// How long `dbward cert issue` backdates a person's certificate (`notBefore` is this long
/// before the moment it signs it, so a relay whose clock is a little behind accepts it). The
/// relay adds it back to `notBefore` to know when a certificate was issued.
pub const CERTIFICATE_BACKDATE_SECS: u64 = 3600;

/// Revocation that takes effect on sessions already open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// After a reload, a session whose person, database user or database name the new config
    /// no longer allows (or whose certificate it locks out) is ended this long later, unless a
    /// reload in between allowed it again. `0` ends it at once.
    pub grace_ms: u64,
    /// End a session when its client certificate expires (its chain's earliest `notAfter`), as
    /// Teleport's `disconnect_expired_cert` does.
    pub disconnect_expired_cert: bool,
    /// Every person's certificates issued before this instant (seconds since the Unix epoch)
    /// are refused, and the sessions using them ended: see [`Access::certificates_issued_after`].
    pub certificates_issued_after: Option<i64>,
}

impl Default for Revocation {
    fn default() -> Self {
        Revocation {
            grace_ms: DEFAULT_REVOKE_GRACE_MS,
            disconnect_expired_cert: true,
            certificates_issued_after: None,
        }
    }
}

impl Revocation {
    /// Whether a certificate whose `notBefore` is `not_before` (seconds since the epoch) is
    /// locked out for a person whose own cutoff is `person`: it was issued
    /// ([`CERTIFICATE_BACKDATE_SECS`] after `notBefore`) before the later of the two cutoffs.
    /// Returns that cutoff when it is.
    pub fn locks_out(&self, person: Option<i64>, not_before: i64) -> Option<i64> {
        let cutoff = match (self.certificates_issued_after, person) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b)?,
        };
        let issued = not_before.saturating_add(CERTIFICATE_BACKDATE_SECS as i64);
        (issued < cutoff).then_some(cutoff)
    }
}

/// Server-side TLS material for client connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain for `*.<public_name>` and `<public_name>`.
    pub cert: PathBuf,
    /// PEM private key of `cert` (mode 0600).
    pub key: PathBuf,
    /// PEM CA certificate that issues user certificates; clients must present one it signed.
    pub client_ca: PathBuf,
}

/// A certificate and its key, presented as a TLS client identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where audit events go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// JSON-lines file the relay appends to. Absolute, or relative to `frozen.json`'s directory.
    pub path: PathBuf,
    /// Whether to record one `session.query` event per Query or Parse message.
    pub queries: bool,
}

/// `idle-timeout` when the manifest does not say: 15 minutes, the idle limit after which
/// PCI DSS (requirement 8.2.8) wants a person to authenticate again. A forgotten psql on an
/// unlocked laptop should not keep a database session open all day; psql reconnects by itself
/// and connection pools replace closed connections.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 15 * 60 * 1000;

/// `idle-in-transaction-timeout` when the manifest does not say: 5 minutes. An open transaction
/// holds locks and the oldest snapshot (blocking vacuum); nobody legitimately thinks that long
/// inside one.
pub const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// Operational limits of the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Concurrent client connections accepted; further ones are refused.
    pub max_connections: u32,
    /// Time allowed from accept to a completed startup (TLS + StartupMessage).
    pub handshake_timeout_ms: u64,
    /// Time SIGTERM waits for sessions to end before exiting anyway.
    pub drain_timeout_ms: u64,
    /// Time allowed to connect and authenticate to an upstream.
    pub upstream_connect_timeout_ms: u64,
    /// A session waiting for its client (no query running, not in a transaction) with no byte
    /// in either direction for this long is ended with FATAL 57P05, as PostgreSQL's
    /// `idle_session_timeout` does. `0` turns it off.
    pub idle_timeout_ms: u64,
    /// The same inside an open transaction (the last ReadyForQuery said `T` or `E`): FATAL
    /// 25P03, as PostgreSQL's `idle_in_transaction_session_timeout`. `0` turns it off.
    pub idle_in_transaction_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            drain_timeout_ms: 30_000,
            upstream_connect_timeout_ms: 10_000,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            idle_in_transaction_timeout_ms: DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
        }
    }
}

/// One upstream PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub host: String,
    pub port: u16,
    pub tls: UpstreamTls,
    pub auth: UpstreamAuth,
    /// Login the relay uses for automatic provisioning, when the manifest names one.
    pub admin_user: Option<AdminUser>,
}

/// How the relay verifies the upstream server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Name the server certificate must be valid for (`verify-full`); a DNS name or an IP.
    pub server_name: String,
    /// PEM CA bundle that must have issued the server certificate. `None` means the platform's
    /// well-known roots (cloud databases whose CA is public).
    pub ca: Option<PathBuf>,
}

/// How the relay authenticates to the upstream server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "method")]
pub enum UpstreamAuth {
    /// Mutual TLS with [`Relay::upstream_identity`]; PostgreSQL maps it via `pg_ident.conf`.
    Mtls,
    /// An RDS IAM auth token (SigV4) used as the password.
    RdsIam { region: String },
    /// A Google OAuth access token (scope `sqlservice.login`) for the database user's service
    /// account, obtained by impersonating it as `relay_service_account`, used as the password.
    CloudSqlIam {
        relay_service_account: String,
        /// The instance connection name, `project:region:instance`: the server certificate
        /// must name it, and without a manifest `host` its address and CA are looked up by it.
        /// Empty in configs compiled before it was recorded (recompile them).
        #[serde(default)]
        instance: String,
        /// Which of the instance's addresses the relay dials when it looks the instance up
        /// (no `host` in the manifest). Absent in older configs: public, as Google's connectors
        /// default to.
        #[serde(default)]
        ip_type: CloudSqlIpType,
    },
    /// Microsoft Entra ID tokens (resource `https://ossrdbms-aad.database.windows.net`) used as the
    /// password; each database user logs in as its own Entra principal.
    AzureEntra {
        tenant: String,
        /// The Entra principal of each database user the relay logs in as (the admin user too,
        /// when it is an Entra principal), by database user name.
        principals: BTreeMap<String, EntraPrincipal>,
    },
}

/// An Entra principal: the identity the relay asks a token for, and the object id the
/// database maps to the role (the token's `oid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntraPrincipal {
    pub client_id: String,
    /// `None` when the manifest gives none (a `relay-identity` written without `object-id`):
    /// setup.sql cannot create such a principal, so it must already exist on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
}

/// Which address of a Cloud SQL instance to dial (the manifest's `cloud-sql ip-type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CloudSqlIpType {
    /// The instance's public IP (`PRIMARY` in the Cloud SQL Admin API): Google's connectors'
    /// default.
    #[default]
    Public,
    /// The instance's private IP, in the VPC it is peered with.
    Private,
    /// Private Service Connect: the instance's DNS name.
    Psc,
}

/// The admin login of a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUser {
    pub name: String,
    pub default_database: String,
}

/// What one person may do on one database. Deny rules have already been applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// The person: the subject CN of their client certificate.
    pub identity: String,
    /// The manifest name of the database.
    pub database: String,
    /// Database users this person may log in as (sorted). With provisioning on, the person's
    /// own name is allowed in addition.
    pub db_users: Vec<String>,
    /// Database names (PostgreSQL `dbname`) this person may open.
    pub db_names: NameSet,
    /// Automatic user provisioning for this person on this database.
    pub provision: Provision,
    /// Roles granted to a provisioned user (sorted).
    pub db_roles: Vec<String>,
    /// Privileges granted to a provisioned user. Structured, never SQL text: the relay passes
    /// them as JSON to the database's `dbward.activate`, which quotes every name itself.
    pub grants: Vec<Grant>,
    /// The person's certificates issued before this instant (seconds since the Unix epoch;
    /// the manifest's `user … { certificates-issued-after … }`) are refused, and sessions using
    /// them ended. The same on every entry of the person.
    pub certificates_issued_after: Option<i64>,
}

/// One privilege grant to a provisioned user, as `dbward.activate` reads it (its JSON form is
/// the procedure's `grants` argument).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Privilege keywords, each valid for `on`; `ALL` means every privilege of the kind.
    pub privileges: Vec<Privilege>,
    pub on: GrantOn,
    /// The schema of the object(s); `None` only for `database`.
    pub schema: Option<String>,
    /// One object of the schema; `None` means every object of the kind in the schema.
    /// Functions are named without arguments (every overload).
    pub object: Option<String>,
}

/// The PostgreSQL privileges a provisioned user may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
    Truncate,
    References,
    Trigger,
    Usage,
    Create,
    Connect,
    Temporary,
    Execute,
    All,
}

/// What a [`Grant`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GrantOn {
    /// The database the session opens (the procedure's `current_database()`).
    Database,
    Schema,
    /// Tables, views, materialized views, foreign and partitioned tables.
    Table,
    Sequence,
    Function,
}

impl Access {
    /// The table's sort key: (identity, database).
    fn key(&self) -> (&str, &str) {
        (&self.identity, &self.database)
    }
}

/// A set of names, or every name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum NameSet {
    /// The manifest said `"*"`.
    Any,
    /// Exactly these names (sorted).
    Only(Vec<String>),
}

impl NameSet {
    pub fn contains(&self, name: &str) -> bool {
        match self {
            NameSet::Any => true,
            NameSet::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// Automatic user provisioning mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Provision {
    Off,
    Keep,
    BestEffortDrop,
}

/// Why a frozen config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid frozen config: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path} has format version {found}, this relay understands only {FORMAT_VERSION}; \
         recompile it with a matching `dbward apply`"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "{path} has been modified since it was compiled (checksum mismatch); \
         regenerate it with `dbward apply` instead of editing it"
    )]
    Checksum { path: PathBuf },
    #[error(
        "{path} lists access for {identity} on {database} out of order or twice; \
         regenerate it with `dbward apply`"
    )]
    AccessOrder {
        path: PathBuf,
        identity: String,
        database: String,
    },
    #[error(
        "{path} lists peer {id} out of order, twice or above {MAX_PEER_ID}; regenerate it with \
         `dbward apply`"
    )]
    PeerIds { path: PathBuf, id: u16 },
}

impl Config {
    /// Computes and stores the checksum. Call after every change, before writing.
    pub fn seal(&mut self) {
        self.checksum = self.compute_checksum();
    }

    /// The checksum the config should carry, computed over its canonical JSON.
    pub fn compute_checksum(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.checksum = String::new();
        // Serializing these types cannot fail: no maps with non-string keys, no floats.
        let bytes = serde_json::to_vec(&unsealed).expect("frozen config serializes");
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    }

    /// Pretty, canonical JSON with a trailing newline, as written to `frozen.json`.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("frozen config serializes");
        text.push('\n');
        text
    }

    /// Parses and verifies a config from JSON text (format version and checksum).
    pub fn from_json(path: &Path, text: &str) -> Result<Config, LoadError> {
        // Check the version first, so an old or new format gets the version error rather
        // than a confusing unknown-field error.
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: u32,
        }
        let version: VersionOnly =
            serde_json::from_str(text).map_err(|source| LoadError::Parse {
                path: path.to_owned(),
                source,
            })?;
        if version.format_version != FORMAT_VERSION {
            return Err(LoadError::Version {
                path: path.to_owned(),
                found: version.format_version,
            });
        }
        let config: Config = serde_json::from_str(text).map_err(|source| LoadError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if config.checksum != config.compute_checksum() {
            return Err(LoadError::Checksum {
                path: path.to_owned(),
            });
        }
        // `access_for` binary-searches: an unsorted or duplicated table is not understood.
        if let Some(pair) = config
            .access
            .windows(2)
            .find(|pair| Access::key(&pair[0]) >= Access::key(&pair[1]))
        {
            return Err(LoadError::AccessOrder {
                path: path.to_owned(),
                identity: pair[1].identity.clone(),
                database: pair[1].database.clone(),
            });
        }
        if let Some(peers) = &config.relay.peers {
            let out_of_range = peers.members.iter().find(|p| p.id > MAX_PEER_ID);
            let unsorted = peers.members.windows(2).find(|p| p[0].id >= p[1].id);
            if let Some(peer) = out_of_range.or(unsorted.map(|p| &p[1])) {
                return Err(LoadError::PeerIds {
                    path: path.to_owned(),
                    id: peer.id,
                });
            }
        }
        Ok(config)
    }

    /// Reads, parses and verifies `frozen.json`.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_json(path, &text)
    }

    /// Resolves a path from the config against the directory of `frozen.json`.
    pub fn resolve_path(config_path: &Path, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            config_path
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(path)
        }
    }

    /// The access entry for a person on a database, if any.
    /// Every session asks this, so it is a binary search over the sorted table.
    pub fn access_for(&self, identity: &str, database: &str) -> Option<&Access> {
        self.access
            .binary_search_by(|a| a.key().cmp(&(identity, database)))
            .ok()
            .map(|i| &self.access[i])
    }

    /// The JSON Schema of this format, as checked in at `schemas/frozen.schema.json`.
    pub fn json_schema() -> String {
        let schema = schemars::schema_for!(Config);
        let mut text = serde_json::to_string_pretty(&schema).expect("schema serializes");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        let mut config = Config {
            format_version: FORMAT_VERSION,
            checksum: String::new(),
            relay: Relay {
                listen: "127.0.0.1:6432".into(),
                public_name: "db.example.com".into(),
                tls: ServerTls {
                    cert: "server.crt".into(),
                    key: "server.key".into(),
                    client_ca: "users-ca.crt".into(),
                },
                upstream_identity: None,
                audit: None,
                metrics: None,
                limits: Limits::default(),
                revocation: Revocation::default(),
                peers: None,
            },
            databases: BTreeMap::new(),
            access: vec![],
        };
        config.seal();
        config
    }

    #[test]
    fn round_trips_and_verifies() {
        let config = sample();
        let back = Config::from_json(Path::new("f.json"), &config.to_json()).unwrap();
        assert_eq!(back, config);
    }

    fn entry(identity: &str, database: &str) -> Access {
        Access {
            identity: identity.into(),
            database: database.into(),
            db_users: vec!["app".into()],
            db_names: NameSet::Any,
            provision: Provision::Off,
            db_roles: vec![],
            grants: vec![],
            certificates_issued_after: None,
        }
    }

    #[test]
    fn a_certificate_is_locked_out_when_issued_before_the_later_cutoff() {
        let backdate = CERTIFICATE_BACKDATE_SECS as i64;
        let mut revocation = Revocation::default();
        // Issued (notBefore + the backdate) at 1000.
        let not_before = 1000 - backdate;
        assert_eq!(revocation.locks_out(None, not_before), None);
        assert_eq!(
            revocation.locks_out(Some(1000), not_before),
            None,
            "at the cutoff"
        );
        assert_eq!(revocation.locks_out(Some(1001), not_before), Some(1001));
        revocation.certificates_issued_after = Some(2000);
        assert_eq!(revocation.locks_out(None, not_before), Some(2000));
        assert_eq!(revocation.locks_out(Some(500), not_before), Some(2000));
        assert_eq!(revocation.locks_out(Some(3000), not_before), Some(3000));
        assert_eq!(revocation.locks_out(Some(900), 2000), None);
    }

    #[test]
    fn access_is_found_by_binary_search_and_must_be_sorted() {
        let mut config = sample();
        config.access = vec![
            entry("alice", "orders"),
            entry("alice", "shop"),
            entry("bob", "a"),
        ];
        config.seal();
        let config = Config::from_json(Path::new("f.json"), &config.to_json()).unwrap();
        assert_eq!(config.access_for("alice", "shop").unwrap().database, "shop");
        assert_eq!(config.access_for("bob", "a").unwrap().identity, "bob");
        assert!(config.access_for("alice", "a").is_none());
        assert!(config.access_for("carol", "shop").is_none());

        for access in [
            vec![entry("bob", "a"), entry("alice", "shop")],
            vec![entry("alice", "shop"), entry("alice", "shop")],
        ] {
            let mut bad = sample();
            bad.access = access;
            bad.seal();
            let err = Config::from_json(Path::new("f.json"), &bad.to_json()).unwrap_err();
            assert!(matches!(err, LoadError::AccessOrder { .. }), "{err}");
        }
    }

    #[test]
    fn detects_tampering() {
        let text = sample().to_json().replace("127.0.0.1:6432", "0.0.0.0:6432");
        let err = Config::from_json(Path::new("f.json"), &text).unwrap_err();
        assert!(matches!(err, LoadError::Checksum { .. }), "{err}");
    }

    #[test]
    fn refuses_other_versions_and_unknown_fields() {
        for other in [FORMAT_VERSION - 1, FORMAT_VERSION + 1] {
            let text = sample().to_json().replace(
                &format!("\"format_version\": {FORMAT_VERSION}"),
                &format!("\"format_version\": {other}"),
            );
            let err = Config::from_json(Path::new("f.json"), &text).unwrap_err();
            assert!(
                matches!(err, LoadError::Version { found, .. } if found == other),
                "{err}"
            );
        }

        let text = sample()
            .to_json()
            .replacen('{', "{\n  \"surprise\": true,", 1);
        let err = Config::from_json(Path::new("f.json"), &text).unwrap_err();
        assert!(matches!(err, LoadError::Parse { .. }), "{err}");
    }
}

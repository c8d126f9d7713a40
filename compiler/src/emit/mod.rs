//! Emitters: pure functions from a [`Model`] to [`Artifacts`].
//!
//! **Emitters never do I/O.** The clock, key generation and the files that exist now (to keep
//! certificates byte for byte) come in through one [`Env`] value, so tests pin them and the same
//! manifest with the same state always yields byte-identical artifacts.
//!
//! [`emit`] is the entry point: [`emit_text`] (every file computed from the model alone) plus
//! [`pki::emit`] (certificates and keys). The text emitters, one module each:
//!
//! - [`postgres`] — a self-hosted server's `postgresql.conf` snippet, `pg_hba.conf`, `pg_ident.conf`;
//! - [`kubernetes`] — with `relay { kubernetes … }`, a kustomization (the Secret built from the
//!   relay's files), Deployment, Service and PodDisruptionBudget under `relay/`;
//! - [`install`] — a self-hosted server's `install.sh`: those files put in place, the server
//!   reloaded or restarted, setup.sql run;
//! - [`sql`] — every database's idempotent `setup.sql` (roles, memberships, GRANTs, cloud logins);
//! - [`iam`] — the AWS policy, GCP bindings and Azure role of each cloud binding;
//! - [`frozen`] — the relay's `frozen.json`;
//! - [`quote`] — quoting for every one of those languages; nothing is written unquoted.
//!
//! **Least privilege is enforced three times from one table**: the relay reads the access table
//! from frozen.json, and [`Logins`] (its union per database) drives pg_hba.conf, pg_ident.conf
//! and the AWS policy, so the database and the cloud refuse what the relay would refuse.
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
//! ca/peer-ca.crt|key             with `relay { peers … }`: signs the replicas' certificate only
//! relay/peer.crt|key, peer-ca.crt  what replicas present to, and trust from, each other
//! databases/<db>/…               postgresql.conf, pg_hba.conf, pg_ident.conf, server.crt|key,
//!                                client-ca.crt, install.sh (self-hosted only) and setup.sql
//!                                (every kind)
//! relay/kustomization.yaml        with `relay { kubernetes … }`: `kubectl apply -k OUT/relay`
//! relay/kubernetes/*.yaml        its Deployment (a StatefulSet and a headless Service with
//!                                `peers`), Service and PodDisruptionBudget
//! iam/{aws,gcp,azure}/<cloud>.json
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{DatabaseKind, Model, NameSet, Provision};

pub mod env;
pub mod frozen;
pub mod iam;
pub mod install;
pub mod kubernetes;
pub mod pki;
pub mod postgres;
pub mod quote;
pub mod sql;

pub use env::Env;

/// Why the artifacts could not be produced. The front end rejects almost everything first;
/// these are the checks that only make sense while writing a particular file.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(
        "database `{database}`: the name `{name}` cannot be written to pg_hba.conf/pg_ident.conf \
         (they have no way to quote `\"` or control characters); rename it in the manifest"
    )]
    UnquotableName { database: String, name: String },
    #[error(
        "database `{database}`: host `{host}` is not one of its server-names, so the relay \
         could not verify the server certificate; add \"{host}\" to `server-names`"
    )]
    HostNotInServerNames { database: String, host: String },
    #[error("database `{database}` has no host; add `postgres host=\"…\"` to its block")]
    MissingHost { database: String },
    #[error(
        "cloud `{cloud}` (used by database `{database}`) is not declared or is not a {expected} \
         cloud; point `cloud=` at a `cloud NAME {{ {expected} … }}` block"
    )]
    WrongCloud {
        database: String,
        cloud: String,
        expected: &'static str,
    },
    #[error(
        "cloud `{cloud}` has no {what}; add `{node}` to its block so the relay can authenticate"
    )]
    MissingRelayIdentity {
        cloud: String,
        what: &'static str,
        node: &'static str,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

/// Every artifact of a model: the text files ([`emit_text`]) and the certificates and keys
/// ([`pki::emit`], which keeps existing ones from `env` byte for byte while they are valid).
pub fn emit(model: &Model, env: &Env) -> Result<Artifacts, EmitError> {
    let mut out = emit_text(model)?;
    pki::emit(model, env, &mut out)?;
    if let Some(k8s) = &model.relay.kubernetes {
        // After the certificates: the Secret it describes holds them.
        let drain = dbward_frozen::Limits::default().drain_timeout_ms;
        kubernetes::emit(&model.relay, k8s, drain, &mut out);
    }
    Ok(out)
}

/// Who may log in to one database through the relay: the union, over the access table, of what
/// any person may do there. pg_hba.conf, pg_ident.conf and the AWS policy are built from it, so
/// the database and the cloud enforce the same least privilege as the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logins {
    /// Database users any person may log in as, plus the names of people whose users are
    /// provisioned on this database. Excludes the admin user.
    pub db_users: BTreeSet<String>,
    /// Database names any person may open; `None` when some person may open every name (`"*"`).
    pub db_names: Option<BTreeSet<String>>,
    /// The admin user, when the relay needs it: provisioning is on for someone on this database.
    pub admin: Option<String>,
}

impl Logins {
    /// Computes the logins of `database` from the model's access table.
    pub fn of(model: &Model, database: &str) -> Logins {
        let mut db_users = BTreeSet::new();
        let mut db_names = Some(BTreeSet::new());
        let mut provisioning = false;
        for access in model.access.of_database(database) {
            db_users.extend(access.rights.db_users.iter().cloned());
            if access.rights.provision != Provision::Off {
                provisioning = true;
                db_users.insert(access.user.to_string());
            }
            match (&access.rights.db_names, &mut db_names) {
                (NameSet::Any, _) => db_names = None,
                (NameSet::Only(names), Some(set)) => set.extend(names.iter().cloned()),
                // Already every name: nothing to add.
                (NameSet::Only(_), None) => {}
            }
        }
        let admin = model
            .databases
            .get(database)
            .and_then(|db| db.admin_user.as_ref())
            .filter(|_| provisioning)
            .map(|admin| admin.name.clone());
        if let Some(admin) = &admin {
            db_users.remove(admin);
        }
        Logins {
            db_users,
            db_names,
            admin,
        }
    }
}

/// Every artifact that is text computed from the model alone: the PostgreSQL configuration
/// and setup.sql of each database, the IAM JSON of each cloud and the frozen relay config.
/// Certificates and keys (which need the environment) come from `pki::emit`.
pub fn emit_text(model: &Model) -> Result<Artifacts, EmitError> {
    let mut out = Artifacts::new();
    for (name, db) in &model.databases {
        let logins = Logins::of(model, name);
        if let DatabaseKind::SelfHosted { config_dir, .. } = &db.kind {
            let file = |f: &str| layout::database_file(name, f);
            out.insert(
                file(postgres::CONF),
                Artifact::text(postgres::conf(db, config_dir)),
            );
            out.insert(
                file(postgres::HBA),
                Artifact::text(postgres::hba(db, &logins)?),
            );
            out.insert(
                file(postgres::IDENT),
                Artifact::text(postgres::ident(db, &logins)?),
            );
            out.insert(
                file(install::INSTALL),
                Artifact::text(install::script(db, config_dir, &logins)),
            );
        }
        out.insert(
            layout::database_file(name, sql::SETUP),
            Artifact::text(sql::setup(model, db)?),
        );
    }
    for (path, text) in iam::emit(model)? {
        out.insert(path, Artifact::text(text));
    }
    out.insert(
        layout::FROZEN.to_owned(),
        Artifact::text(frozen::build(model)?.to_json()),
    );
    Ok(out)
}

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
    /// With `relay { peers … }`: the CA of the replicas' certificate, and that certificate.
    pub const PEER_CA_CERT: &str = "ca/peer-ca.crt";
    pub const PEER_CA_KEY: &str = "ca/peer-ca.key";
    pub const RELAY_PEER_CA: &str = "relay/peer-ca.crt";
    pub const RELAY_PEER_CERT: &str = "relay/peer.crt";
    pub const RELAY_PEER_KEY: &str = "relay/peer.key";
    /// The name in the replicas' certificate, which each checks on the other's. Under
    /// `.invalid` (RFC 6761), so no public CA can ever issue it.
    pub const PEER_SERVER_NAME: &str = "peer.dbward-relay.invalid";
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::source::Source;

    /// Every example's model.
    fn examples() -> Vec<(String, Model)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut models = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "kdl") {
                let text = std::fs::read_to_string(&path).unwrap();
                let name = path.display().to_string();
                let checked = crate::check(&Source::new(&name, text));
                models.push((name, checked.model.expect("examples compile")));
            }
        }
        assert!(!models.is_empty());
        models
    }

    #[test]
    fn same_model_and_state_give_byte_identical_artifacts() {
        let now = time::macros::datetime!(2026-01-01 0:00 UTC);
        for (name, model) in examples() {
            let first = emit(&model, &Env::for_tests(now, BTreeMap::new())).unwrap();
            let existing = first
                .iter()
                .map(|(path, a)| (path.clone(), a.bytes.clone()))
                .collect();
            let second = emit(&model, &Env::for_tests(now, existing)).unwrap();
            assert_eq!(
                first, second,
                "{name}: a second emit over the first one differs"
            );
            assert_eq!(emit_text(&model).unwrap(), emit_text(&model).unwrap());
        }
    }

    #[test]
    fn secrets_are_marked_and_never_inlined_in_public_files() {
        let now = time::macros::datetime!(2026-01-01 0:00 UTC);
        for (name, model) in examples() {
            let artifacts = emit(&model, &Env::for_tests(now, BTreeMap::new())).unwrap();
            let secrets: Vec<&Artifact> = artifacts
                .iter()
                .filter(|(path, _)| path.ends_with(".key"))
                .map(|(_, a)| a)
                .collect();
            assert!(!secrets.is_empty(), "{name}: keys are emitted");
            for secret in &secrets {
                assert!(secret.sensitive && secret.mode == 0o600, "{name}");
            }
            for (path, artifact) in artifacts.iter().filter(|(_, a)| !a.sensitive) {
                let text = String::from_utf8_lossy(&artifact.bytes);
                assert!(!text.contains("PRIVATE KEY"), "{name}: {path} holds a key");
            }
        }
    }

    #[test]
    fn logins_are_the_union_of_the_access_table() {
        let (_, model) = examples()
            .into_iter()
            .find(|(name, _)| name.ends_with("full.kdl"))
            .expect("full.kdl");
        // bob may reach orders as readonly (support) and is provisioned there (auditor).
        let orders = Logins::of(&model, "orders");
        assert_eq!(
            orders
                .db_users
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["bob", "readonly"]
        );
        assert_eq!(orders.admin.as_deref(), Some("dbward-admin"));
        assert_eq!(
            orders.db_names,
            Some(["analytics".to_owned(), "orders".to_owned()].into())
        );
        // Nobody reaches a database that is not in the access table.
        let none = Logins::of(&model, "no-such-db");
        assert!(none.db_users.is_empty() && none.admin.is_none());
    }
}

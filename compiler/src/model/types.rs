//! The resolved model: what the manifest means, with every name resolved and the access table
//! computed. Emitters read only this; they never see KDL.
//!
//! **Invariant: a `Model` exists only for a manifest with no errors.** Every reference in it
//! points at something that exists, every name has been checked for safe use in SQL, pg_hba and
//! file paths, and every collection is ordered (`BTreeMap`, sorted `Vec`) so output is
//! reproducible.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use dbward_frozen::{EntraPrincipal, NameSet, Provision};

/// A whole, valid manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// The `dbward version=N` the manifest declared.
    pub version: u32,
    pub relay: Relay,
    pub clouds: BTreeMap<String, Cloud>,
    pub databases: BTreeMap<String, Database>,
    pub roles: BTreeMap<String, Role>,
    pub users: BTreeMap<String, User>,
    /// The access table, keyed by (person, database). A pair that is absent allows nothing;
    /// a pair whose entry allows nothing is not stored.
    pub access: AccessTable,
}

impl Model {
    /// The Entra principal of each login of an `azure-postgres` database, by role name: every
    /// db-user and the admin user, each with its own `client-id`/`object-id`, else the cloud's
    /// `relay-identity` (whose object id may be unknown). Empty for other kinds. The front end
    /// (`rules::entra_principals`) has made sure every login has one and none is shared.
    pub fn entra_principals(&self, db: &Database) -> BTreeMap<String, EntraPrincipal> {
        let DatabaseKind::AzurePostgres { cloud, .. } = &db.kind else {
            return BTreeMap::new();
        };
        let relay = match self.clouds.get(cloud).map(|c| &c.kind) {
            Some(CloudKind::Azure {
                relay_identity: Some(identity),
                ..
            }) => Some(identity.principal()),
            _ => None,
        };
        let logins: Vec<(&String, &Option<EntraPrincipal>)> = db
            .db_users
            .values()
            .map(|u| (&u.name, &u.principal))
            .chain(db.admin_user.iter().map(|a| (&a.name, &a.principal)))
            .collect();
        let mut principals = BTreeMap::new();
        // Own principals first, then the relay identity for the rest (names are unique among
        // a database's logins: `duplicate_names`).
        for (name, own) in &logins {
            if let Some(principal) = own {
                principals
                    .entry((*name).clone())
                    .or_insert_with(|| principal.clone());
            }
        }
        for (name, _) in &logins {
            if let Some(principal) = &relay {
                principals
                    .entry((*name).clone())
                    .or_insert_with(|| principal.clone());
            }
        }
        principals
    }
}

/// The `relay { … }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// `listen "host:port"`, validated as a socket address.
    pub listen: String,
    /// `public-name`: the DNS name clients use; databases are `<db>.<public-name>`.
    pub public_name: String,
    /// `client-cert-ttl`: lifetime of user certificates from `dbward cert issue`.
    pub client_cert_ttl: Duration,
    /// `idle-timeout`; `None` when turned off (`"off"`).
    pub idle_timeout: Option<Duration>,
    /// `idle-in-transaction-timeout`; `None` when turned off.
    pub idle_in_transaction_timeout: Option<Duration>,
    pub audit: Option<Audit>,
    /// `metrics "host:port"`.
    pub metrics: Option<String>,
    /// `kubernetes image=… [replicas=…] [namespace=…] [service-type=…]`.
    pub kubernetes: Option<Kubernetes>,
    /// `revoke-grace`: how long after a reload a session whose access it removed is ended.
    pub revoke_grace: Duration,
    /// `disconnect-expired-cert`: end sessions when their client certificate expires.
    pub disconnect_expired_cert: bool,
    /// `certificates-issued-after` (seconds since the Unix epoch): everyone's older client
    /// certificates are refused.
    pub certificates_issued_after: Option<i64>,
    /// `peers { peer ID address=… }`: the relay's replicas.
    pub peers: Option<Peers>,
}

/// `relay { peers … }`: every replica of the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// (id, `host:port`), sorted by id. With `kubernetes` and no `peer` listed, one per replica
    /// of the StatefulSet ([`kubernetes_peers`]).
    pub members: Vec<(u16, String)>,
}

/// The name of the relay's Kubernetes objects; its pods are `dbward-relay-N`.
pub const KUBERNETES_NAME: &str = "dbward-relay";

/// The port a replica on Kubernetes accepts forwarded cancels on: the relay's port + 1.
pub fn kubernetes_peer_port(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .map_or(0, |port| port.wrapping_add(1))
}

/// The peers of a relay on Kubernetes: pod `dbward-relay-N` of the StatefulSet is peer N (the
/// relay takes its id from the ordinal at the end of its host name, the pod's name), reached
/// through the headless Service `dbward-relay-peers`.
pub fn kubernetes_peers(listen: &str, kubernetes: &Kubernetes) -> Vec<(u16, String)> {
    let domain = kubernetes
        .namespace
        .as_ref()
        .map(|ns| format!(".{ns}.svc"))
        .unwrap_or_default();
    let port = kubernetes_peer_port(listen);
    (0..kubernetes
        .replicas
        .min(u32::from(dbward_frozen::MAX_PEER_ID) + 1))
        .map(|i| {
            (
                i as u16,
                format!("{KUBERNETES_NAME}-{i}.{KUBERNETES_NAME}-peers{domain}:{port}"),
            )
        })
        .collect()
}

/// `relay { kubernetes … }`: write a Deployment, Service and PodDisruptionBudget for the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubernetes {
    pub image: String,
    pub replicas: u32,
    pub namespace: Option<String>,
    pub service_type: String,
}

/// `audit PATH queries=BOOL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub path: String,
    pub queries: bool,
}

/// A `cloud NAME { … }` binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloud {
    pub name: String,
    pub kind: CloudKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudKind {
    /// `aws account=… region=…` and `relay-role ARN`.
    Aws {
        account: String,
        region: String,
        relay_role: Option<String>,
    },
    /// `gcp project=…` and `relay-service-account EMAIL`.
    Gcp {
        project: String,
        relay_service_account: Option<String>,
    },
    /// `azure subscription=… tenant=…` and `relay-identity client-id=… object-id=…`.
    Azure {
        subscription: String,
        tenant: String,
        relay_identity: Option<RelayIdentity>,
    },
}

/// `relay-identity client-id=… [object-id=…]`: the relay's own Entra identity, and the principal
/// of the one database user of a server that names none (GUIDs lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayIdentity {
    pub client_id: String,
    /// Required only where the identity is some database user's principal.
    pub object_id: Option<String>,
}

impl RelayIdentity {
    /// The identity as a principal (its object id may be unknown: see
    /// [`EntraPrincipal::object_id`]).
    pub fn principal(&self) -> EntraPrincipal {
        EntraPrincipal {
            client_id: self.client_id.clone(),
            object_id: self.object_id.clone(),
        }
    }
}

/// A `database NAME { … }`: one PostgreSQL server (or cluster) and what lives on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    pub name: String,
    pub postgres: Postgres,
    /// `labels key=value …`, matched by role selectors.
    pub labels: BTreeMap<String, String>,
    pub kind: DatabaseKind,
    pub admin_user: Option<AdminUser>,
    /// `db-role NAME { … }`: group roles with privileges, by name.
    pub db_roles: BTreeMap<String, DbRole>,
    /// `db-user NAME { … }`: login roles clients may connect as, by name.
    pub db_users: BTreeMap<String, DbUser>,
}

/// `postgres host=… port=… version=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postgres {
    /// Required for `self-hosted` and `aws-rds`; cloud kinds without it derive their endpoint.
    pub host: Option<String>,
    /// Defaults to 5432.
    pub port: u16,
    /// Major version, when declared.
    pub version: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `self-hosted { server-names …; config-dir … }`.
    SelfHosted {
        server_names: Vec<String>,
        config_dir: String,
    },
    /// `aws-rds cloud=… resource-id=… [ca-file=…]`.
    AwsRds {
        cloud: String,
        resource_id: String,
        /// Absolute path of the CA bundle the relay verifies the server with (Amazon's RDS
        /// bundle); `None` means the platform's public roots.
        ca_file: Option<String>,
    },
    /// `cloud-sql cloud=… instance="project:region:instance" [ca-file=…] [ip-type=…]`.
    CloudSql {
        cloud: String,
        instance: String,
        /// The instance's server CA (PEM), with `host`: skips the Cloud SQL Admin lookup.
        ca_file: Option<String>,
        /// `public` (the default), `private` or `psc`: which address the relay dials when it
        /// looks the instance up.
        ip_type: Option<String>,
    },
    /// `azure-postgres cloud=… server=… [ca-file=…]`.
    AzurePostgres {
        cloud: String,
        server: String,
        /// A PEM bundle the server certificate must chain to, instead of the public roots
        /// (a server behind a private endpoint with its own CA, or a test server).
        ca_file: Option<String>,
    },
}

impl DatabaseKind {
    /// The cloud binding this database uses, if any.
    pub fn cloud(&self) -> Option<&str> {
        match self {
            DatabaseKind::SelfHosted { .. } => None,
            DatabaseKind::AwsRds { cloud, .. }
            | DatabaseKind::CloudSql { cloud, .. }
            | DatabaseKind::AzurePostgres { cloud, .. } => Some(cloud),
        }
    }
}

/// `admin-user NAME default-database=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUser {
    pub name: String,
    /// Defaults to `postgres`.
    pub default_database: String,
    /// `client-id=… object-id=…` (azure-postgres): the Entra principal it logs in as.
    pub principal: Option<EntraPrincipal>,
}

/// `db-role NAME { grant …; member-of … }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbRole {
    pub name: String,
    /// Other db-roles of the same database this one is a member of (resolved).
    pub member_of: Vec<String>,
    pub grants: Vec<Grant>,
}

/// `db-user NAME { member-of … }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbUser {
    pub name: String,
    /// db-roles of the same database this user is a member of (resolved).
    pub member_of: Vec<String>,
    /// `client-id=… object-id=…` (azure-postgres): the Entra principal it logs in as; `None`
    /// means the cloud's `relay-identity` (see [`Model::entra_principals`]).
    pub principal: Option<EntraPrincipal>,
}

/// `grant PRIV… on=KIND schema=… [table=…]`, and a role's `permission` with the same shape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// Upper-case privilege keywords, in manifest order, each valid for `on`.
    pub privileges: Vec<Privilege>,
    pub on: ObjectKind,
    /// Required for every kind but `database`.
    pub schema: Option<String>,
    /// For `table`/`sequence`/`function`: one object. `None` means every object of that kind in
    /// the schema (`permission SELECT on=table schema=public`).
    pub object: Option<String>,
}

/// The PostgreSQL privileges the manifest may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

impl Privilege {
    /// The SQL keyword.
    pub fn sql(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Truncate => "TRUNCATE",
            Privilege::References => "REFERENCES",
            Privilege::Trigger => "TRIGGER",
            Privilege::Usage => "USAGE",
            Privilege::Create => "CREATE",
            Privilege::Connect => "CONNECT",
            Privilege::Temporary => "TEMPORARY",
            Privilege::Execute => "EXECUTE",
            Privilege::All => "ALL PRIVILEGES",
        }
    }
}

/// The object kinds of `on=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// `on=database`: the database the statement runs in.
    Database,
    /// `on=schema`.
    Schema,
    /// `on=table` (one table with `table=`, or every table in the schema without it).
    Table,
    /// `on=all-tables`: every table in the schema.
    AllTables,
    /// `on=sequence`.
    Sequence,
    /// `on=all-sequences`.
    AllSequences,
    /// `on=function`.
    Function,
    /// `on=all-functions`.
    AllFunctions,
}

/// A `role NAME { … }` as written, with references resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub provision: Provision,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

/// One `allow { … }` or `deny { … }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub databases: Selector,
    /// `db-users`; `None` when the block does not mention them.
    pub db_users: Option<NameSet>,
    /// `db-names`; `None` when the block does not mention them.
    pub db_names: Option<NameSet>,
    /// `db-roles`; `None` when the block does not mention them.
    pub db_roles: Option<NameSet>,
    /// `permission …` lines.
    pub permissions: Vec<Grant>,
}

/// `databases "*"`, `databases orders analytics`, or `databases env=prod team=data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every database.
    Any,
    /// These databases by name.
    Names(BTreeSet<String>),
    /// Databases carrying every one of these labels.
    Labels(BTreeMap<String, String>),
}

/// A `user NAME { roles … }`: a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub roles: Vec<String>,
    /// `certificates-issued-after` (seconds since the Unix epoch): this person's older client
    /// certificates are refused.
    pub certificates_issued_after: Option<i64>,
}

/// What one person may do on one database, after combining all their roles and applying deny.
/// People whose roles reach a database the same way share one `Rights` (see [`AccessTable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    /// Database users they may log in as. `"*"` in the manifest has been resolved to the
    /// database's declared `db-user`s, so this is always explicit (least privilege).
    pub db_users: BTreeSet<String>,
    /// Database names they may open.
    pub db_names: NameSet,
    /// db-roles granted to their provisioned user (only meaningful when provisioning is on).
    pub db_roles: BTreeSet<String>,
    /// Permissions granted to their provisioned user.
    pub permissions: Vec<Grant>,
    /// Provisioning: on when any of their roles that reaches this database provisions.
    pub provision: Provision,
}

/// One entry of the access table: a person, a database, and what the person may do there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access<'a> {
    pub user: &'a str,
    pub database: &'a str,
    pub rights: &'a Rights,
}

/// One stored entry: indices into [`AccessTable`]'s names and rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Row {
    pub user: usize,
    pub database: usize,
    pub rights: usize,
}

/// The access table: for each (person, database) pair that allows something, its [`Rights`].
///
/// Stored compactly because it is the one part of the model that grows with people times
/// databases (2 million entries for 5,000 databases in the benchmark): an entry is three
/// indices, and the entries of people whose roles reach a database the same way share one
/// `Rights`. Iteration is in (person, database) name order, like a map keyed by the pair; two
/// tables are equal when they hold the same entries, however their rights are shared.
#[derive(Debug, Clone, Default)]
pub struct AccessTable {
    /// Every person's name, sorted; rows refer to them by index.
    users: Vec<String>,
    /// Every database's name, sorted; rows refer to them by index.
    databases: Vec<String>,
    rights: Vec<Rights>,
    /// Sorted by (user, database), so by name too.
    rows: Vec<Row>,
    /// For each database, the positions in `rows` of its entries, ascending (what emitters ask
    /// for each database, without scanning the whole table).
    by_database: Vec<Vec<usize>>,
}

impl PartialEq for AccessTable {
    fn eq(&self, other: &AccessTable) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for AccessTable {}

impl AccessTable {
    /// Builds the table from sorted names and rows sorted by (user, database) with no duplicate
    /// pair, every index in range (the access computation produces them so).
    pub(super) fn new(
        users: Vec<String>,
        databases: Vec<String>,
        rights: Vec<Rights>,
        rows: Vec<Row>,
    ) -> AccessTable {
        let mut by_database = vec![Vec::new(); databases.len()];
        for (position, row) in rows.iter().enumerate() {
            if let Some(list) = by_database.get_mut(row.database) {
                list.push(position);
            }
        }
        AccessTable {
            users,
            databases,
            rights,
            rows,
            by_database,
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn entry(&self, row: &Row) -> Option<Access<'_>> {
        Some(Access {
            user: self.users.get(row.user)?,
            database: self.databases.get(row.database)?,
            rights: self.rights.get(row.rights)?,
        })
    }

    /// Every entry, sorted by person, then database.
    pub fn iter(&self) -> impl Iterator<Item = Access<'_>> + '_ {
        self.rows.iter().filter_map(|row| self.entry(row))
    }

    /// The entry of (`user`, `database`); `None` means the person may do nothing there.
    pub fn get(&self, user: &str, database: &str) -> Option<Access<'_>> {
        let user = self.users.binary_search_by(|u| u.as_str().cmp(user)).ok()?;
        let database = self
            .databases
            .binary_search_by(|d| d.as_str().cmp(database))
            .ok()?;
        let position = self
            .rows
            .binary_search_by(|row| (row.user, row.database).cmp(&(user, database)))
            .ok()?;
        self.entry(&self.rows[position])
    }

    /// The entries of one person, sorted by database.
    pub fn of_user(&self, user: &str) -> impl Iterator<Item = Access<'_>> + '_ {
        let rows = match self.users.binary_search_by(|u| u.as_str().cmp(user)) {
            Ok(index) => {
                let start = self.rows.partition_point(|row| row.user < index);
                let end = self.rows.partition_point(|row| row.user <= index);
                &self.rows[start..end]
            }
            Err(_) => &[],
        };
        rows.iter().filter_map(|row| self.entry(row))
    }

    /// The entries on one database, sorted by person.
    pub fn of_database(&self, database: &str) -> impl Iterator<Item = Access<'_>> + '_ {
        let positions = self
            .databases
            .binary_search_by(|d| d.as_str().cmp(database))
            .ok()
            .and_then(|index| self.by_database.get(index))
            .map_or(&[][..], Vec::as_slice);
        positions
            .iter()
            .filter_map(|&position| self.entry(self.rows.get(position)?))
    }
}

//! Lowering: a checked AST to the typed [`Model`] (without the access table, which
//! [`access`](super::access) computes from it).
//!
//! Lowering runs only after the rules found no error, so it can take the manifest's shape for
//! granted; it still never panics, falling back to defaults where a value is somehow missing.

use std::collections::BTreeSet;
use std::time::Duration;

use super::rules::certificate_cutoffs::parse_cutoff;
use super::rules::durations::{parse_duration, parse_grace, parse_timeout};
use super::types::*;
use crate::syntax::ast::{Manifest, Node};

/// `client-cert-ttl` when the manifest does not say.
pub const DEFAULT_CLIENT_CERT_TTL: Duration = Duration::from_secs(12 * 3600);
/// `idle-timeout` when the manifest does not say (see [`dbward_frozen::DEFAULT_IDLE_TIMEOUT_MS`]
/// for why).
pub const DEFAULT_IDLE_TIMEOUT: Duration =
    Duration::from_millis(dbward_frozen::DEFAULT_IDLE_TIMEOUT_MS);
/// `idle-in-transaction-timeout` when the manifest does not say.
pub const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT: Duration =
    Duration::from_millis(dbward_frozen::DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS);
/// `revoke-grace` when the manifest does not say.
pub const DEFAULT_REVOKE_GRACE: Duration =
    Duration::from_millis(dbward_frozen::DEFAULT_REVOKE_GRACE_MS);
/// `postgres port=` when the manifest does not say.
pub const DEFAULT_PORT: u16 = 5432;
/// `admin-user default-database=` when the manifest does not say.
pub const DEFAULT_ADMIN_DATABASE: &str = "postgres";

/// Builds the model (with an empty access table).
pub fn build(manifest: &Manifest) -> Model {
    let version = manifest
        .nodes_named("dbward")
        .next()
        .and_then(|n| n.prop("version"))
        .and_then(|p| p.value.as_int())
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(1);
    let relay = manifest
        .nodes_named("relay")
        .next()
        .map(relay)
        .unwrap_or_else(|| relay(&empty_node()));
    Model {
        version,
        relay,
        clouds: manifest
            .nodes_named("cloud")
            .filter_map(cloud)
            .map(|c| (c.name.clone(), c))
            .collect(),
        databases: manifest
            .nodes_named("database")
            .filter_map(database)
            .map(|d| (d.name.clone(), d))
            .collect(),
        roles: manifest
            .nodes_named("role")
            .filter_map(role)
            .map(|r| (r.name.clone(), r))
            .collect(),
        users: manifest
            .nodes_named("user")
            .filter_map(user)
            .map(|u| (u.name.clone(), u))
            .collect(),
        access: AccessTable::default(),
    }
}

fn empty_node() -> Node {
    Node {
        name: crate::syntax::ast::Ident {
            text: String::new(),
            span: Default::default(),
        },
        ty: None,
        args: Vec::new(),
        props: Vec::new(),
        children: None,
        span: Default::default(),
    }
}

/// The single string argument of child `name`.
fn child_str(node: &Node, name: &str) -> Option<String> {
    node.child(name)
        .and_then(Node::first_str)
        .map(str::to_string)
}

/// Every string argument of every child called `name`.
fn child_strs(node: &Node, name: &str) -> Vec<String> {
    node.children_named(name)
        .flat_map(|c| c.str_args().map(|(s, _)| s.to_string()))
        .collect()
}

fn relay(node: &Node) -> Relay {
    let kubernetes = node.child("kubernetes").map(|k| Kubernetes {
        image: k.prop_str("image").unwrap_or_default().to_owned(),
        replicas: k
            .prop("replicas")
            .and_then(|p| p.value.as_int())
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(2),
        namespace: k.prop_str("namespace").map(str::to_owned),
        service_type: k.prop_str("service-type").unwrap_or("ClusterIP").to_owned(),
    });
    let listen = child_str(node, "listen").unwrap_or_default();
    Relay {
        listen: listen.clone(),
        public_name: child_str(node, "public-name").unwrap_or_default(),
        client_cert_ttl: child_str(node, "client-cert-ttl")
            .and_then(|s| parse_duration(&s).ok())
            .unwrap_or(DEFAULT_CLIENT_CERT_TTL),
        idle_timeout: timeout(node, "idle-timeout", DEFAULT_IDLE_TIMEOUT),
        idle_in_transaction_timeout: timeout(
            node,
            "idle-in-transaction-timeout",
            DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT,
        ),
        audit: node.child("audit").map(|a| Audit {
            path: a.first_str().unwrap_or_default().to_string(),
            queries: a
                .prop("queries")
                .and_then(|p| p.value.as_bool())
                .unwrap_or(false),
        }),
        metrics: child_str(node, "metrics"),
        kubernetes: kubernetes.clone(),
        revoke_grace: child_str(node, "revoke-grace")
            .and_then(|s| parse_grace(&s).ok())
            .unwrap_or(DEFAULT_REVOKE_GRACE),
        disconnect_expired_cert: node
            .child("disconnect-expired-cert")
            .and_then(|c| c.args.first())
            .and_then(|v| v.as_bool())
            .unwrap_or(true),
        certificates_issued_after: cutoff(node),
        peers: node.child("peers").map(|p| {
            let mut members: Vec<(u16, String)> = p
                .children_named("peer")
                .filter_map(|peer| {
                    let id = peer.args.first()?.as_int()?;
                    Some((
                        u16::try_from(id).ok()?,
                        peer.prop_str("address")?.to_owned(),
                    ))
                })
                .collect();
            members.sort();
            members.dedup_by_key(|(id, _)| *id);
            if let (true, Some(kubernetes)) = (members.is_empty(), &kubernetes) {
                members = kubernetes_peers(&listen, kubernetes);
            }
            Peers { members }
        }),
    }
}

/// The `certificates-issued-after` child of a `relay` or `user` node, in seconds since the epoch.
fn cutoff(node: &Node) -> Option<i64> {
    child_str(node, "certificates-issued-after").and_then(|s| parse_cutoff(&s).ok())
}

/// A timeout child: its duration, `None` for `"off"`, `default` when absent.
fn timeout(node: &Node, name: &str, default: Duration) -> Option<Duration> {
    match child_str(node, name) {
        Some(text) => parse_timeout(&text).unwrap_or(Some(default)),
        None => Some(default),
    }
}

fn cloud(node: &Node) -> Option<Cloud> {
    let name = node.first_str()?.to_string();
    let prop = |child: &Node, key: &str| child.prop_str(key).unwrap_or_default().to_string();
    let kind = if let Some(aws) = node.child("aws") {
        CloudKind::Aws {
            account: prop(aws, "account"),
            region: prop(aws, "region"),
            relay_role: child_str(node, "relay-role"),
        }
    } else if let Some(gcp) = node.child("gcp") {
        CloudKind::Gcp {
            project: prop(gcp, "project"),
            relay_service_account: child_str(node, "relay-service-account"),
        }
    } else {
        let azure = node.child("azure")?;
        CloudKind::Azure {
            subscription: prop(azure, "subscription"),
            tenant: prop(azure, "tenant"),
            relay_identity: node.child("relay-identity").and_then(|n| {
                Some(RelayIdentity {
                    client_id: n.prop_str("client-id")?.to_ascii_lowercase(),
                    object_id: n.prop_str("object-id").map(str::to_ascii_lowercase),
                })
            }),
        }
    };
    Some(Cloud { name, kind })
}

fn database(node: &Node) -> Option<Database> {
    let name = node.first_str()?.to_string();
    let pg = node.child("postgres");
    let pg_int = |key: &str| pg.and_then(|p| p.prop(key)).and_then(|p| p.value.as_int());
    let postgres = Postgres {
        host: pg.and_then(|p| p.prop_str("host")).map(str::to_string),
        port: pg_int("port")
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(DEFAULT_PORT),
        version: pg_int("version").and_then(|v| u32::try_from(v).ok()),
    };
    let labels = node
        .children_named("labels")
        .flat_map(|l| l.props.iter())
        .filter_map(|p| Some((p.name.text.clone(), p.value.as_str()?.to_string())))
        .collect();
    Some(Database {
        kind: database_kind(node, &postgres)?,
        name,
        postgres,
        labels,
        admin_user: node.child("admin-user").map(|a| AdminUser {
            name: a.first_str().unwrap_or_default().to_string(),
            default_database: a
                .prop_str("default-database")
                .unwrap_or(DEFAULT_ADMIN_DATABASE)
                .to_string(),
            principal: entra_principal(a),
        }),
        db_roles: node
            .children_named("db-role")
            .filter_map(|r| {
                let name = r.first_str()?.to_string();
                Some((
                    name.clone(),
                    DbRole {
                        name,
                        member_of: child_strs(r, "member-of"),
                        grants: r.children_named("grant").filter_map(grant).collect(),
                    },
                ))
            })
            .collect(),
        db_users: node
            .children_named("db-user")
            .filter_map(|u| {
                let name = u.first_str()?.to_string();
                Some((
                    name.clone(),
                    DbUser {
                        name,
                        member_of: child_strs(u, "member-of"),
                        principal: entra_principal(u),
                    },
                ))
            })
            .collect(),
    })
}

/// `client-id=… object-id=…` of a db-user or admin-user, GUIDs lower-cased (Entra compares
/// them case-insensitively; the frozen config and setup.sql carry one spelling).
fn entra_principal(node: &Node) -> Option<EntraPrincipal> {
    Some(EntraPrincipal {
        client_id: node.prop_str("client-id")?.to_ascii_lowercase(),
        object_id: Some(node.prop_str("object-id")?.to_ascii_lowercase()),
    })
}

fn database_kind(node: &Node, postgres: &Postgres) -> Option<DatabaseKind> {
    let prop = |child: &Node, key: &str| child.prop_str(key).unwrap_or_default().to_string();
    if let Some(sh) = node.child("self-hosted") {
        let mut server_names = child_strs(sh, "server-names");
        if server_names.is_empty() {
            server_names.extend(postgres.host.clone());
        }
        return Some(DatabaseKind::SelfHosted {
            server_names,
            config_dir: child_str(sh, "config-dir").unwrap_or_default(),
        });
    }
    if let Some(rds) = node.child("aws-rds") {
        return Some(DatabaseKind::AwsRds {
            cloud: prop(rds, "cloud"),
            resource_id: prop(rds, "resource-id"),
            ca_file: rds.prop_str("ca-file").map(str::to_owned),
        });
    }
    if let Some(sql) = node.child("cloud-sql") {
        return Some(DatabaseKind::CloudSql {
            cloud: prop(sql, "cloud"),
            instance: prop(sql, "instance"),
            ca_file: sql.prop_str("ca-file").map(str::to_owned),
            ip_type: sql.prop_str("ip-type").map(str::to_owned),
        });
    }
    let az = node.child("azure-postgres")?;
    Some(DatabaseKind::AzurePostgres {
        cloud: prop(az, "cloud"),
        server: prop(az, "server"),
        ca_file: az.prop_str("ca-file").map(str::to_owned),
    })
}

/// `PRIV… on=KIND schema=… [table=|sequence=|function=…]`, shared by `grant` and `permission`.
pub fn grant(node: &Node) -> Option<Grant> {
    let privileges = node
        .str_args()
        .filter_map(|(p, _)| privilege(p))
        .collect::<Vec<_>>();
    let on = object_kind(node.prop_str("on")?)?;
    let object = ["table", "sequence", "function"]
        .iter()
        .find_map(|k| node.prop_str(k))
        .map(str::to_string);
    Some(Grant {
        privileges,
        on,
        schema: node.prop_str("schema").map(str::to_string),
        object,
    })
}

pub fn privilege(word: &str) -> Option<Privilege> {
    Some(match word {
        "SELECT" => Privilege::Select,
        "INSERT" => Privilege::Insert,
        "UPDATE" => Privilege::Update,
        "DELETE" => Privilege::Delete,
        "TRUNCATE" => Privilege::Truncate,
        "REFERENCES" => Privilege::References,
        "TRIGGER" => Privilege::Trigger,
        "USAGE" => Privilege::Usage,
        "CREATE" => Privilege::Create,
        "CONNECT" => Privilege::Connect,
        "TEMPORARY" => Privilege::Temporary,
        "EXECUTE" => Privilege::Execute,
        "ALL" => Privilege::All,
        _ => return None,
    })
}

pub fn object_kind(word: &str) -> Option<ObjectKind> {
    Some(match word {
        "database" => ObjectKind::Database,
        "schema" => ObjectKind::Schema,
        "table" => ObjectKind::Table,
        "all-tables" => ObjectKind::AllTables,
        "sequence" => ObjectKind::Sequence,
        "all-sequences" => ObjectKind::AllSequences,
        "function" => ObjectKind::Function,
        "all-functions" => ObjectKind::AllFunctions,
        _ => return None,
    })
}

pub fn provision(word: &str) -> Provision {
    match word {
        "keep" => Provision::Keep,
        "best-effort-drop" => Provision::BestEffortDrop,
        _ => Provision::Off,
    }
}

fn role(node: &Node) -> Option<Role> {
    Some(Role {
        name: node.first_str()?.to_string(),
        provision: node
            .child("provision")
            .and_then(Node::first_str)
            .map_or(Provision::Off, provision),
        allow: node.children_named("allow").map(rule).collect(),
        deny: node.children_named("deny").map(rule).collect(),
    })
}

/// An `allow`/`deny` block.
pub fn rule(node: &Node) -> Rule {
    Rule {
        databases: node
            .child("databases")
            .map_or(Selector::Names(BTreeSet::new()), selector),
        db_users: node.child("db-users").map(name_set),
        db_names: node.child("db-names").map(name_set),
        db_roles: node.child("db-roles").map(name_set),
        permissions: node
            .children_named("permission")
            .filter_map(grant)
            .collect(),
    }
}

/// `databases "*"`, `databases a b`, or `databases k=v …`.
pub fn selector(node: &Node) -> Selector {
    if !node.props.is_empty() {
        return Selector::Labels(
            node.props
                .iter()
                .filter_map(|p| Some((p.name.text.clone(), p.value.as_str()?.to_string())))
                .collect(),
        );
    }
    let names: BTreeSet<String> = node.str_args().map(|(s, _)| s.to_string()).collect();
    if names.contains("*") {
        Selector::Any
    } else {
        Selector::Names(names)
    }
}

/// A list of names where `"*"` means every name.
pub fn name_set(node: &Node) -> NameSet {
    let names: BTreeSet<String> = node.str_args().map(|(s, _)| s.to_string()).collect();
    if names.contains("*") {
        NameSet::Any
    } else {
        NameSet::Only(names.into_iter().collect())
    }
}

fn user(node: &Node) -> Option<User> {
    Some(User {
        name: node.first_str()?.to_string(),
        roles: child_strs(node, "roles"),
        certificates_issued_after: cutoff(node),
    })
}

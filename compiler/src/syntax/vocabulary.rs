//! The vocabulary of the manifest language: every node, where it may appear, its arguments and
//! properties. **This table is the single source of truth for what `dbward check` accepts**:
//! the vocabulary rule checks manifests against it, `schemas/` is tested against it, and "did you
//! mean" suggestions come from it.

/// The type a value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A string, quoted or bare (`orders`, `"10.0.4.12"`).
    String,
    /// An integer without quotes (`5432`).
    Integer,
    /// `#true` or `#false`.
    Bool,
    /// One of these strings exactly.
    OneOf(&'static [&'static str]),
}

/// The positional arguments a node takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgSpec {
    pub kind: ValueKind,
    pub min: usize,
    /// `None`: any number.
    pub max: Option<usize>,
    /// What an argument is, for messages: "a database name".
    pub what: &'static str,
}

/// One property a node accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropSpec {
    pub name: &'static str,
    pub kind: ValueKind,
    pub required: bool,
}

/// Whether a node takes a `{ … }` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    No,
    Optional,
    Required,
}

/// One node of the language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSpec {
    /// Slash-separated path from the top level: `"database/db-role/grant"`.
    pub path: &'static str,
    /// `None`: the node takes no arguments.
    pub args: Option<ArgSpec>,
    pub props: &'static [PropSpec],
    /// `Some(kind)`: any property name is accepted (label maps), each with a value of `kind`.
    pub any_props: Option<ValueKind>,
    pub block: Block,
    /// The node must appear (once) inside its parent.
    pub required: bool,
    /// The node may appear more than once inside its parent.
    pub repeatable: bool,
    /// One line for the human reference and `--help`-style messages.
    pub doc: &'static str,
}

impl NodeSpec {
    /// The node's own name: the last segment of its path.
    pub fn name(&self) -> &'static str {
        self.path.rsplit('/').next().unwrap_or(self.path)
    }

    /// The parent's path, `""` for top-level nodes.
    pub fn parent(&self) -> &'static str {
        self.path.rsplit_once('/').map_or("", |(p, _)| p)
    }

    pub fn prop(&self, name: &str) -> Option<&'static PropSpec> {
        self.props.iter().find(|p| p.name == name)
    }
}

/// The privilege keywords `grant` and `permission` accept.
pub const PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
    "USAGE",
    "CREATE",
    "CONNECT",
    "TEMPORARY",
    "EXECUTE",
    "ALL",
];

/// The object kinds of `on=`.
pub const OBJECT_KINDS: &[&str] = &[
    "database",
    "schema",
    "table",
    "all-tables",
    "sequence",
    "all-sequences",
    "function",
    "all-functions",
];

/// The addresses of a Cloud SQL instance `cloud-sql ip-type` picks from (the first is the
/// default, as in Google's connectors).
pub const CLOUD_SQL_IP_TYPES: &[&str] = &["public", "private", "psc"];
/// The Kubernetes Service types the relay's Service may have.
pub const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer"];

/// The provisioning modes of `provision`.
pub const PROVISION_MODES: &[&str] = &["off", "keep", "best-effort-drop"];

const fn args(
    kind: ValueKind,
    min: usize,
    max: Option<usize>,
    what: &'static str,
) -> Option<ArgSpec> {
    Some(ArgSpec {
        kind,
        min,
        max,
        what,
    })
}

const fn prop(name: &'static str, kind: ValueKind, required: bool) -> PropSpec {
    PropSpec {
        name,
        kind,
        required,
    }
}

const fn node(path: &'static str, doc: &'static str) -> NodeSpec {
    NodeSpec {
        path,
        args: None,
        props: &[],
        any_props: None,
        block: Block::No,
        required: false,
        repeatable: false,
        doc,
    }
}

const NAME: ValueKind = ValueKind::String;
const S: ValueKind = ValueKind::String;

/// The properties of `grant` and `permission`.
const GRANT_PROPS: &[PropSpec] = &[
    prop("on", ValueKind::OneOf(OBJECT_KINDS), true),
    prop("schema", S, false),
    prop("table", S, false),
    prop("sequence", S, false),
    prop("function", S, false),
];

static VOCABULARY: &[NodeSpec] = &[
    NodeSpec {
        props: &[prop("version", ValueKind::Integer, true)],
        required: true,
        ..node("dbward", "the language version; always `dbward version=1`")
    },
    NodeSpec {
        block: Block::Required,
        required: true,
        ..node("relay", "the relay every client connects through")
    },
    NodeSpec {
        args: args(S, 1, Some(1), "a \"host:port\" address"),
        required: true,
        ..node(
            "relay/listen",
            "the address the relay listens on, \"host:port\"",
        )
    },
    NodeSpec {
        args: args(S, 1, Some(1), "a DNS name"),
        required: true,
        ..node(
            "relay/public-name",
            "the DNS name clients use; a database is reached at <database>.<public-name>",
        )
    },
    NodeSpec {
        args: args(S, 1, Some(1), "a duration such as \"12h\""),
        ..node(
            "relay/client-cert-ttl",
            "lifetime of the client certificates `dbward cert issue` hands out (default \"12h\")",
        )
    },
    NodeSpec {
        args: args(S, 1, Some(1), "a duration such as \"15m\", or \"off\""),
        ..node(
            "relay/idle-timeout",
            "end a session idle (waiting for its client, outside a transaction) this long \
             (default \"15m\"; \"off\" turns it off)",
        )
    },
    NodeSpec {
        args: args(S, 1, Some(1), "a duration such as \"5m\", or \"off\""),
        ..node(
            "relay/idle-in-transaction-timeout",
            "end a session idle this long inside an open transaction (default \"5m\"; \"off\" \
             turns it off)",
        )
    },
    NodeSpec {
        args: args(S, 1, Some(1), "a duration such as \"10s\", or \"0s\""),
        ..node(
            "relay/revoke-grace",
            "after a reload, end sessions whose access it removed this long later (default \
             \"10s\"; \"0s\" ends them at once)",
        )
    },
    NodeSpec {
        args: args(ValueKind::Bool, 1, Some(1), "#true or #false"),
        ..node(
            "relay/disconnect-expired-cert",
            "end a session when its client certificate expires (default #true)",
        )
    },
    NodeSpec {
        args: args(
            S,
            1,
            Some(1),
            "an RFC 3339 time such as \"2026-11-30T12:00:00Z\"",
        ),
        ..node(
            "relay/certificates-issued-after",
            "refuse everyone's client certificates issued before this time, and end the \
             sessions using them",
        )
    },
    NodeSpec {
        args: args(S, 1, Some(1), "a file path"),
        props: &[prop("queries", ValueKind::Bool, false)],
        ..node(
            "relay/audit",
            "JSON-lines audit log file; queries=#true also records every query",
        )
    },
    NodeSpec {
        args: args(S, 1, Some(1), "a \"host:port\" address"),
        ..node(
            "relay/metrics",
            "address of the /metrics, /livez and /readyz endpoint",
        )
    },
    NodeSpec {
        props: &[
            prop("image", S, true),
            prop("replicas", ValueKind::Integer, false),
            prop("namespace", S, false),
            prop("service-type", ValueKind::OneOf(SERVICE_TYPES), false),
        ],
        ..node(
            "relay/kubernetes",
            "also write Kubernetes manifests for the relay under relay/ (kubectl apply -k): \
             image, replicas (default 2), namespace, service-type (default ClusterIP)",
        )
    },
    NodeSpec {
        block: Block::Optional,
        ..node(
            "relay/peers",
            "the relay's replicas behind one load balancer, which forward each other's \
             CancelRequests (with kubernetes: empty, one per pod of the StatefulSet)",
        )
    },
    NodeSpec {
        args: args(ValueKind::Integer, 1, Some(1), "a peer id from 0 to 4095"),
        props: &[prop("address", S, true)],
        repeatable: true,
        ..node(
            "relay/peers/peer",
            "one replica: its id (encoded in the cancel keys it issues) and the \"host:port\" \
             where it accepts cancels the others forward",
        )
    },
    NodeSpec {
        args: args(NAME, 1, Some(1), "a cloud name"),
        block: Block::Required,
        repeatable: true,
        ..node(
            "cloud",
            "a cloud binding: how the relay proves who it is to one cloud account",
        )
    },
    NodeSpec {
        props: &[prop("account", S, true), prop("region", S, true)],
        ..node("cloud/aws", "an AWS account and region")
    },
    NodeSpec {
        args: args(S, 1, Some(1), "an IAM role ARN"),
        ..node("cloud/relay-role", "the IAM role the relay runs as (aws)")
    },
    NodeSpec {
        props: &[prop("project", S, true)],
        ..node("cloud/gcp", "a Google Cloud project")
    },
    NodeSpec {
        args: args(S, 1, Some(1), "a service account email"),
        ..node(
            "cloud/relay-service-account",
            "the service account the relay runs as (gcp)",
        )
    },
    NodeSpec {
        props: &[prop("subscription", S, true), prop("tenant", S, true)],
        ..node("cloud/azure", "an Azure subscription and Entra ID tenant")
    },
    NodeSpec {
        props: &[prop("client-id", S, true), prop("object-id", S, false)],
        ..node(
            "cloud/relay-identity",
            "the managed identity or app registration the relay authenticates as (azure); the Entra principal of a db-user that names none (object-id then required)",
        )
    },
    NodeSpec {
        args: args(NAME, 1, Some(1), "a database name"),
        block: Block::Required,
        repeatable: true,
        ..node("database", "one PostgreSQL server and what lives on it")
    },
    NodeSpec {
        props: &[
            prop("host", S, false),
            prop("port", ValueKind::Integer, false),
            prop("version", ValueKind::Integer, false),
        ],
        ..node(
            "database/postgres",
            "where the server is: host, port (default 5432), major version",
        )
    },
    NodeSpec {
        any_props: Some(S),
        ..node(
            "database/labels",
            "key=value labels that role selectors match",
        )
    },
    NodeSpec {
        block: Block::Required,
        ..node(
            "database/self-hosted",
            "a server you run, reached with mutual TLS",
        )
    },
    NodeSpec {
        args: args(S, 1, None, "a DNS name or IP address"),
        ..node(
            "database/self-hosted/server-names",
            "names and addresses the server certificate is valid for (default: the host)",
        )
    },
    NodeSpec {
        args: args(S, 1, Some(1), "a directory path"),
        required: true,
        ..node(
            "database/self-hosted/config-dir",
            "where the generated files live on the database host",
        )
    },
    NodeSpec {
        props: &[
            prop("cloud", NAME, true),
            prop("resource-id", S, true),
            prop("ca-file", S, false),
        ],
        ..node(
            "database/aws-rds",
            "Amazon RDS or Aurora with IAM authentication",
        )
    },
    NodeSpec {
        props: &[
            prop("cloud", NAME, true),
            prop("instance", S, true),
            prop("ca-file", S, false),
            prop("ip-type", ValueKind::OneOf(CLOUD_SQL_IP_TYPES), false),
        ],
        ..node(
            "database/cloud-sql",
            "Google Cloud SQL with IAM database authentication",
        )
    },
    NodeSpec {
        props: &[
            prop("cloud", NAME, true),
            prop("server", S, true),
            prop("ca-file", S, false),
        ],
        ..node(
            "database/azure-postgres",
            "Azure Database for PostgreSQL with Microsoft Entra ID",
        )
    },
    NodeSpec {
        args: args(NAME, 1, Some(1), "a PostgreSQL user name"),
        props: &[
            prop("default-database", NAME, false),
            prop("client-id", S, false),
            prop("object-id", S, false),
        ],
        ..node(
            "database/admin-user",
            "the login automatic provisioning uses (default-database defaults to postgres); on azure-postgres, the Entra administrator: client-id and object-id of its principal (default: the relay-identity)",
        )
    },
    NodeSpec {
        args: args(NAME, 1, Some(1), "a PostgreSQL role name"),
        block: Block::Optional,
        repeatable: true,
        ..node(
            "database/db-role",
            "a PostgreSQL group role with privileges",
        )
    },
    NodeSpec {
        args: args(ValueKind::OneOf(PRIVILEGES), 1, None, "a privilege"),
        props: GRANT_PROPS,
        repeatable: true,
        ..node(
            "database/db-role/grant",
            "privileges on objects: GRANT … ON … TO the role",
        )
    },
    NodeSpec {
        args: args(NAME, 1, None, "a db-role name"),
        repeatable: true,
        ..node(
            "database/db-role/member-of",
            "db-roles of this database the role belongs to",
        )
    },
    NodeSpec {
        args: args(NAME, 1, Some(1), "a PostgreSQL user name"),
        props: &[prop("client-id", S, false), prop("object-id", S, false)],
        block: Block::Optional,
        repeatable: true,
        ..node(
            "database/db-user",
            "a login role clients may connect as; on azure-postgres, client-id and object-id of the Entra principal it logs in as (default: the relay-identity)",
        )
    },
    NodeSpec {
        args: args(NAME, 1, None, "a db-role name"),
        repeatable: true,
        ..node(
            "database/db-user/member-of",
            "db-roles of this database the user belongs to",
        )
    },
    NodeSpec {
        args: args(NAME, 1, Some(1), "a role name"),
        block: Block::Required,
        repeatable: true,
        ..node(
            "role",
            "an access role: who may reach which databases, as whom",
        )
    },
    NodeSpec {
        args: args(
            ValueKind::OneOf(PROVISION_MODES),
            1,
            Some(1),
            "a provisioning mode",
        ),
        ..node(
            "role/provision",
            "automatic user provisioning: off (default), keep or best-effort-drop",
        )
    },
    NodeSpec {
        block: Block::Required,
        repeatable: true,
        ..node(
            "role/allow",
            "what the role allows on the databases it selects",
        )
    },
    NodeSpec {
        args: args(NAME, 0, None, "a database name or \"*\""),
        any_props: Some(S),
        required: true,
        ..node(
            "role/allow/databases",
            "which databases: \"*\", names, or labels (key=value, all must match)",
        )
    },
    NodeSpec {
        args: args(NAME, 1, None, "a db-user name or \"*\""),
        ..node(
            "role/allow/db-users",
            "database users the person may log in as",
        )
    },
    NodeSpec {
        args: args(NAME, 1, None, "a database name or \"*\""),
        required: true,
        ..node(
            "role/allow/db-names",
            "PostgreSQL database names the person may open",
        )
    },
    NodeSpec {
        args: args(NAME, 1, None, "a db-role name or \"*\""),
        ..node(
            "role/allow/db-roles",
            "db-roles granted to the person's provisioned user",
        )
    },
    NodeSpec {
        args: args(ValueKind::OneOf(PRIVILEGES), 1, None, "a privilege"),
        props: GRANT_PROPS,
        repeatable: true,
        ..node(
            "role/allow/permission",
            "privileges granted to the person's provisioned user",
        )
    },
    NodeSpec {
        block: Block::Required,
        repeatable: true,
        ..node(
            "role/deny",
            "what the role takes away again; deny beats allow",
        )
    },
    NodeSpec {
        args: args(NAME, 0, None, "a database name or \"*\""),
        any_props: Some(S),
        required: true,
        ..node(
            "role/deny/databases",
            "which databases the deny applies to; alone, it removes them entirely",
        )
    },
    NodeSpec {
        args: args(NAME, 1, None, "a db-user name or \"*\""),
        ..node("role/deny/db-users", "database users taken away")
    },
    NodeSpec {
        args: args(NAME, 1, None, "a database name or \"*\""),
        ..node("role/deny/db-names", "database names taken away")
    },
    NodeSpec {
        args: args(NAME, 1, None, "a db-role name or \"*\""),
        ..node("role/deny/db-roles", "db-roles taken away")
    },
    NodeSpec {
        args: args(NAME, 1, Some(1), "a person's name"),
        block: Block::Optional,
        repeatable: true,
        ..node(
            "user",
            "a person, identified by the CN of their client certificate",
        )
    },
    NodeSpec {
        args: args(NAME, 1, None, "a role name"),
        ..node("user/roles", "the access roles this person holds")
    },
    NodeSpec {
        args: args(
            S,
            1,
            Some(1),
            "an RFC 3339 time such as \"2026-11-30T12:00:00Z\"",
        ),
        ..node(
            "user/certificates-issued-after",
            "refuse this person's client certificates issued before this time (a lost or \
             stolen one), and end the sessions using them",
        )
    },
];

/// Every node of the language, parents before children.
pub fn vocabulary() -> &'static [NodeSpec] {
    VOCABULARY
}

/// The spec of the node at `path` (`"database/db-role/grant"`).
pub fn spec(path: &str) -> Option<&'static NodeSpec> {
    VOCABULARY.iter().find(|s| s.path == path)
}

/// Whether `path` names a node directly under `parent` (`""` for the top level), comparing bytes
/// in place: this runs for every node of large manifests, several times each.
fn is_child_of(path: &str, parent: &str) -> bool {
    let own = if parent.is_empty() {
        Some(path)
    } else {
        path.strip_prefix(parent)
            .and_then(|rest| rest.strip_prefix('/'))
    };
    own.is_some_and(|own| !own.contains('/'))
}

/// The spec of the node called `name` directly under `parent` (`""` for the top level), without
/// building the child's path.
pub fn child_spec(parent: &str, name: &str) -> Option<&'static NodeSpec> {
    let len = if parent.is_empty() {
        name.len()
    } else {
        parent.len() + 1 + name.len()
    };
    VOCABULARY
        .iter()
        .find(|s| s.path.len() == len && s.path.ends_with(name) && is_child_of(s.path, parent))
}

/// The vocabulary arranged by parent, for walks that look up every node of a manifest: finding a
/// node's spec is then a scan of its siblings' few names, not of the whole vocabulary.
#[derive(Debug, Clone)]
pub struct ChildIndex {
    /// (parent path, [(child name, child spec)]), one entry per parent (`""`: the top level).
    by_parent: Vec<(&'static str, Vec<(&'static str, &'static NodeSpec)>)>,
}

impl ChildIndex {
    pub fn new() -> ChildIndex {
        let mut by_parent: Vec<(&'static str, Vec<(&'static str, &'static NodeSpec)>)> = Vec::new();
        for spec in VOCABULARY {
            let parent = spec.parent();
            let index = match by_parent.iter().position(|(p, _)| *p == parent) {
                Some(index) => index,
                None => {
                    by_parent.push((parent, Vec::new()));
                    by_parent.len() - 1
                }
            };
            by_parent[index].1.push((spec.name(), spec));
        }
        ChildIndex { by_parent }
    }

    /// The nodes allowed directly under `parent` (`""` for the top level), with their names.
    pub fn children(&self, parent: &str) -> &[(&'static str, &'static NodeSpec)] {
        self.by_parent
            .iter()
            .find(|(p, _)| *p == parent)
            .map_or(&[], |(_, children)| children.as_slice())
    }
}

impl Default for ChildIndex {
    fn default() -> ChildIndex {
        ChildIndex::new()
    }
}

/// The specs of the nodes allowed directly under `parent` (`""` for the top level).
pub fn children_of(parent: &str) -> impl Iterator<Item = &'static NodeSpec> + '_ {
    VOCABULARY
        .iter()
        .filter(move |s| is_child_of(s.path, parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parent_exists_and_takes_a_block() {
        for spec in vocabulary() {
            let parent = spec.parent();
            if parent.is_empty() {
                continue;
            }
            let p = super::spec(parent).unwrap_or_else(|| panic!("{} has no parent", spec.path));
            assert_ne!(
                p.block,
                Block::No,
                "{} is under a node without a block",
                spec.path
            );
        }
    }

    #[test]
    fn child_lookups_agree_with_the_paths() {
        let mut parents: Vec<&str> = vocabulary().iter().map(|s| s.parent()).collect();
        parents.extend(["database/db-role/grant", "nowhere", "data", "database/"]);
        let mut names: Vec<&str> = vocabulary().iter().map(|s| s.name()).collect();
        names.extend(["", "/", "db-role/grant", "database/db-user", "x"]);
        for parent in &parents {
            let children: Vec<&str> = children_of(parent).map(|s| s.path).collect();
            let expected: Vec<&str> = vocabulary()
                .iter()
                .filter(|s| s.parent() == *parent)
                .map(|s| s.path)
                .collect();
            assert_eq!(children, expected, "children of {parent:?}");
            let indexed: Vec<(&str, &str)> = ChildIndex::new()
                .children(parent)
                .iter()
                .map(|(name, spec)| (*name, spec.path))
                .collect();
            let expected: Vec<(&str, &str)> = vocabulary()
                .iter()
                .filter(|s| s.parent() == *parent)
                .map(|s| (s.name(), s.path))
                .collect();
            assert_eq!(indexed, expected, "index of {parent:?}");
            for name in &names {
                let expected = vocabulary()
                    .iter()
                    .find(|s| s.parent() == *parent && s.name() == *name)
                    .map(|s| s.path);
                assert_eq!(
                    child_spec(parent, name).map(|s| s.path),
                    expected,
                    "{parent:?} / {name:?}"
                );
            }
        }
        assert_eq!(
            child_spec("database", "db-role").map(|s| s.path),
            Some("database/db-role")
        );
    }

    #[test]
    fn paths_are_unique() {
        let mut paths: Vec<_> = vocabulary().iter().map(|s| s.path).collect();
        paths.sort_unstable();
        let before = paths.len();
        paths.dedup();
        assert_eq!(before, paths.len());
    }
}

//! Rule: every login of an `azure-postgres` database is exactly one Entra principal of its own.
//! Codes: `dbward::entra_principal_not_azure`, `dbward::incomplete_entra_principal`,
//! `dbward::missing_entra_principal`, `dbward::relay_identity_needs_object_id`,
//! `dbward::shared_entra_principal`, `dbward::entra_id_mismatch`.
//!
//! **Why it matters:** Azure Database for PostgreSQL maps a role to one Entra object id and
//! accepts a token only when its `oid` is that object id. A db-user without a principal cannot
//! log in at all; two db-users on one principal cannot both work (and sharing one would undo
//! least privilege); a client id paired with the wrong object id gets tokens the database
//! refuses with "oid mismatch", far from the typo.
//!
//! **Example:**
//! ```kdl
//! cloud azure-prod {
//!     azure subscription="…" tenant="…"
//!     relay-identity client-id="99999999-8888-7777-6666-555555555555"  // no object-id
//! }
//! database reports {
//!     azure-postgres cloud=azure-prod server="reports-flex"
//!     db-user reporting   // relay_identity_needs_object_id: it would log in as the relay-identity
//!     db-user etl client-id="11111111-…" object-id="22222222-…"
//!     db-user loader client-id="33333333-…" object-id="22222222-…"  // shared_entra_principal
//! }
//! ```
//!
//! **How to fix:** give each db-user its own managed identity (or app registration) with
//! `client-id="…" object-id="…"` (`az identity show --name NAME --resource-group RG --query
//! '{clientId:clientId, objectId:principalId}'`); at most one login of a server (a db-user or the admin-user, whose names differ) may
//! fall back to the `relay-identity`, which then needs its `object-id`.

use std::collections::BTreeMap;

use super::{by_name, cloud_ids::guid};
use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::{Manifest, Node, Prop};

const AZ_HINT: &str = "`az identity show --name NAME --resource-group RG --query '{clientId:clientId, objectId:principalId}'`";

/// Where a login's principal comes from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Its own `client-id`/`object-id` properties.
    Own { object: &'a Prop },
    /// The cloud's `relay-identity`.
    Relay { object: &'a Prop },
}

/// A login (db-user or admin-user) of an Azure database and its principal.
struct Claim<'a> {
    /// `db-user` or `admin-user`.
    kind: &'a str,
    role: &'a str,
    node: &'a Node,
    source: Source<'a>,
}

impl Claim<'_> {
    fn object_id(&self) -> String {
        let object = match self.source {
            Source::Own { object, .. } | Source::Relay { object } => object,
        };
        object
            .value
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase()
    }

    fn object_span(&self) -> Span {
        match self.source {
            Source::Own { object, .. } => object.value.span,
            Source::Relay { .. } => self.node.first_arg_span(),
        }
    }
}

/// A string property holding a valid GUID (an invalid one is `cloud_ids`'s to report).
fn guid_prop<'a>(node: &'a Node, key: &str) -> Option<&'a Prop> {
    node.prop(key)
        .filter(|p| p.value.as_str().is_some_and(guid))
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    let clouds = by_name(manifest, "cloud");
    // Manifest-wide: which object id each client id was given with, and the reverse, with
    // where and by whom, so one identity is written the same way everywhere.
    let mut identities: Vec<(String, String, Span, Span, String)> = Vec::new();
    // Every client id written, with whose it is (a relay-identity may have no object id).
    let mut client_ids: Vec<(String, String)> = Vec::new();
    for (name, cloud) in &clouds {
        let Some(relay) = cloud.child("relay-identity") else {
            continue;
        };
        let who = format!("the relay-identity of cloud `{name}`");
        if let Some(client) = guid_prop(relay, "client-id") {
            let id = client
                .value
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            client_ids.push((id, who.clone()));
            if let Some(object) = guid_prop(relay, "object-id") {
                identities.push(identity(client, object, who));
            }
        }
    }
    for db in manifest.nodes_named("database") {
        let db_name = db.first_str().unwrap_or("?");
        let logins: Vec<(&str, &Node)> = db
            .children_named("db-user")
            .map(|n| ("db-user", n))
            .chain(db.children_named("admin-user").map(|n| ("admin-user", n)))
            .collect();
        let Some(azure) = db.child("azure-postgres") else {
            not_azure(db, &logins, diags);
            continue;
        };
        let cloud_name = azure.prop_str("cloud").unwrap_or("?");
        // An unknown cloud, or one of another kind, is another rule's error; nothing to add.
        let Some(cloud) = clouds
            .get(cloud_name)
            .filter(|c| c.child("azure").is_some())
        else {
            continue;
        };
        let relay = cloud.child("relay-identity");
        let mut claims: Vec<Claim> = Vec::new();
        let mut need_object_id: Vec<(&str, &Node)> = Vec::new();
        for &(kind, node) in &logins {
            let Some(role) = node.first_str() else {
                continue;
            };
            let (client, object) = (node.prop("client-id"), node.prop("object-id"));
            match (client, object) {
                (Some(client), Some(object)) => {
                    if guid_prop(node, "client-id").is_some()
                        && guid_prop(node, "object-id").is_some()
                    {
                        let who = format!("{kind} `{role}` of database `{db_name}`");
                        let id = client.value.as_str().unwrap_or_default();
                        client_ids.push((id.to_ascii_lowercase(), who.clone()));
                        identities.push(identity(client, object, who));
                        claims.push(Claim {
                            kind,
                            role,
                            node,
                            source: Source::Own { object },
                        });
                    }
                    continue;
                }
                (Some(given), None) | (None, Some(given)) => {
                    let missing = if client.is_some() {
                        "object-id"
                    } else {
                        "client-id"
                    };
                    diags.push(
                        Diagnostic::error(
                            "dbward::incomplete_entra_principal",
                            format!("{kind} `{role}` names an Entra principal without its `{missing}`"),
                        )
                        .label(given.span, format!("needs `{missing}` too"))
                        .help(format!(
                            "the relay asks a token for the client id, and the database maps the object id to `{role}`: \
                             give both, as {AZ_HINT} shows them"
                        )),
                    );
                    continue;
                }
                (None, None) => {}
            }
            match relay {
                None => diags.push(
                    Diagnostic::error(
                        "dbward::missing_entra_principal",
                        format!("{kind} `{role}` of azure database `{db_name}` has no Entra principal to log in as"),
                    )
                    .label(node.first_arg_span(), "needs `client-id=… object-id=…`")
                    .help(format!(
                        "give it its managed identity (or app registration) with `client-id=\"…\" object-id=\"…\"` ({AZ_HINT}), \
                         or add `relay-identity client-id=\"…\" object-id=\"…\"` to cloud `{cloud_name}` for one login per server"
                    )),
                ),
                Some(relay) => match guid_prop(relay, "object-id") {
                    Some(object) => claims.push(Claim {
                        kind,
                        role,
                        node,
                        source: Source::Relay { object },
                    }),
                    None if relay.prop("object-id").is_none() => need_object_id.push((kind, node)),
                    // An object-id that is not a GUID: `cloud_ids` says so.
                    None => {}
                },
            }
        }
        if let (Some(relay), Some(&(kind, first))) = (relay, need_object_id.first()) {
            let mut diag = Diagnostic::error(
                "dbward::relay_identity_needs_object_id",
                format!(
                    "{kind} `{}` of database `{db_name}` names no principal, so it logs in as the relay-identity of cloud `{cloud_name}`, which has no `object-id`",
                    first.first_str().unwrap_or("?")
                ),
            )
            .label(relay.head_span(), "add `object-id=\"…\"` here");
            for (_, node) in &need_object_id {
                diag = diag.label(node.first_arg_span(), "logs in as the relay-identity");
            }
            diags.push(diag.help(
                "the database maps the identity's object id to the role: add it with \
                 `az identity show --name NAME --resource-group RG --query principalId` \
                 (an app registration: `az ad sp show --id CLIENT_ID --query id`), \
                 or give the db-user its own `client-id=\"…\" object-id=\"…\"`",
            ));
        }
        shared(db_name, &claims, diags);
    }
    mismatched(&identities, &client_ids, diags);
}

/// `(client id, object id, client span, object span, who)` of one written identity.
fn identity(client: &Prop, object: &Prop, who: String) -> (String, String, Span, Span, String) {
    (
        client
            .value
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase(),
        object
            .value
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase(),
        client.value.span,
        object.value.span,
        who,
    )
}

/// `client-id`/`object-id` on a login of a database that is not `azure-postgres`.
fn not_azure(db: &Node, logins: &[(&str, &Node)], diags: &mut Vec<Diagnostic>) {
    let kind = ["self-hosted", "aws-rds", "cloud-sql"]
        .into_iter()
        .find(|k| db.child(k).is_some());
    let Some(kind) = kind else {
        // No kind at all: `database_kind` reports that.
        return;
    };
    for &(node_kind, node) in logins {
        for key in ["client-id", "object-id"] {
            if let Some(prop) = node.prop(key) {
                diags.push(
                    Diagnostic::error(
                        "dbward::entra_principal_not_azure",
                        format!("`{key}` belongs to a {node_kind} of an `azure-postgres` database, but `{}` is `{kind}`", db.first_str().unwrap_or("?")),
                    )
                    .label(prop.span, "only for azure-postgres")
                    .help(format!("remove `{key}`: it names the Entra principal an Azure database user logs in as, which a `{kind}` database does not use")),
                );
            }
        }
    }
}

/// Two roles of one server on one principal.
fn shared(db_name: &str, claims: &[Claim], diags: &mut Vec<Diagnostic>) {
    let mut first_by_object: BTreeMap<String, &Claim> = BTreeMap::new();
    for claim in claims {
        let object = claim.object_id();
        let Some(first) = first_by_object.get(&object) else {
            first_by_object.insert(object, claim);
            continue;
        };
        let both_relay = matches!(
            (first.source, claim.source),
            (Source::Relay { .. }, Source::Relay { .. })
        );
        let message = if both_relay {
            format!(
                "{} `{}` and {} `{}` of database `{db_name}` name no principal, so both would log in as the relay-identity",
                first.kind, first.role, claim.kind, claim.role
            )
        } else {
            format!(
                "{} `{}` and {} `{}` of database `{db_name}` share one Entra principal (object id `{object}`)",
                first.kind, first.role, claim.kind, claim.role
            )
        };
        diags.push(
            Diagnostic::error("dbward::shared_entra_principal", message)
                .label(claim.object_span(), format!("also used by `{}`", first.role))
                .label(first.object_span(), format!("used by `{}`", first.role))
                .help(format!(
                    "the database maps one object id to one role, so a principal can log in as `{}` or `{}`, not both: \
                     give `{}` its own managed identity with `client-id=\"…\" object-id=\"…\"` ({AZ_HINT})",
                    first.role, claim.role, claim.role
                )),
        );
    }
}

/// One identity written with different ids in two places, or a client id written as an
/// object id.
fn mismatched(
    identities: &[(String, String, Span, Span, String)],
    client_ids: &[(String, String)],
    diags: &mut Vec<Diagnostic>,
) {
    for (i, (client, object, client_span, object_span, who)) in identities.iter().enumerate() {
        if let Some((_, owner)) = client_ids.iter().find(|(id, _)| id == object) {
            diags.push(
                Diagnostic::error(
                    "dbward::entra_id_mismatch",
                    format!("the object id of {who} is the client id of {owner}"),
                )
                .label(*object_span, "a client id, not an object id")
                .help(format!(
                    "did you mean that identity's object id? it is a different GUID: {AZ_HINT}"
                )),
            );
            continue;
        }
        let earlier = &identities[..i];
        if let Some(first) = earlier.iter().find(|e| e.0 == *client && e.1 != *object) {
            diags.push(
                Diagnostic::error(
                    "dbward::entra_id_mismatch",
                    format!(
                        "client id `{client}` has object id `{}` for {}, but `{object}` for {who}",
                        first.1, first.4
                    ),
                )
                .label(*object_span, format!("`{}` for {}", first.1, first.4))
                .label(first.3, "the object id given first")
                .help(format!(
                    "one identity has one object id; did you mean `{}`? check with {AZ_HINT}",
                    first.1
                )),
            );
        } else if let Some(first) = earlier.iter().find(|e| e.1 == *object && e.0 != *client) {
            diags.push(
                Diagnostic::error(
                    "dbward::entra_id_mismatch",
                    format!(
                        "object id `{object}` has client id `{}` for {}, but `{client}` for {who}",
                        first.0, first.4
                    ),
                )
                .label(*client_span, format!("`{}` for {}", first.0, first.4))
                .label(first.2, "the client id given first")
                .help(format!(
                    "one identity has one client id; did you mean `{}`? check with {AZ_HINT}",
                    first.0
                )),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, codes, expect};

    const A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";
    const C: &str = "cccccccc-0000-0000-0000-000000000003";
    const D: &str = "dddddddd-0000-0000-0000-000000000004";

    /// An azure cloud with `relay` as its relay-identity line (may be empty), and a database
    /// with `logins` as its db-user/admin-user lines.
    fn azure(relay: &str, logins: &str) -> String {
        format!(
            "cloud az {{\n    azure subscription=\"11111111-2222-3333-4444-555555555555\" tenant=\"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\"\n    {relay}\n}}\n\
             database reports {{\n    postgres version=16\n    azure-postgres cloud=az server=\"reports-flex\"\n{logins}}}\n"
        )
    }

    #[test]
    fn own_principals_and_one_relay_default_are_accepted() {
        let text = azure(
            &format!("relay-identity client-id=\"{A}\" object-id=\"{B}\""),
            &format!(
                "    db-user reporting client-id=\"{C}\" object-id=\"{D}\"\n    admin-user dbward\n"
            ),
        );
        let all = codes(&text);
        assert!(all.is_empty(), "{all:?}");
    }

    #[test]
    fn relay_identity_without_object_id_is_reported_where_used() {
        let text = azure(
            &format!("relay-identity client-id=\"{A}\""),
            "    db-user reporting\n",
        );
        expect(
            &text,
            "dbward::relay_identity_needs_object_id",
            "which has no `object-id`",
        );
        // Not used as a principal: no object id needed.
        absent(
            &azure(
                &format!("relay-identity client-id=\"{A}\""),
                &format!("    db-user reporting client-id=\"{C}\" object-id=\"{D}\"\n"),
            ),
            "dbward::relay_identity_needs_object_id",
        );
    }

    #[test]
    fn no_principal_at_all() {
        expect(
            &azure("", "    db-user reporting\n"),
            "dbward::missing_entra_principal",
            "db-user `reporting`",
        );
        // An unknown cloud is reported by `references` alone.
        absent(
            &azure("", "    db-user reporting\n").replace("cloud=az ", "cloud=nope "),
            "dbward::missing_entra_principal",
        );
    }

    #[test]
    fn half_a_principal() {
        expect(
            &azure("", &format!("    db-user reporting client-id=\"{C}\"\n")),
            "dbward::incomplete_entra_principal",
            "without its `object-id`",
        );
    }

    #[test]
    fn shared_principals() {
        expect(
            &azure(
                "",
                &format!(
                    "    db-user etl client-id=\"{A}\" object-id=\"{B}\"\n    db-user loader client-id=\"{C}\" object-id=\"{B}\"\n"
                ),
            ),
            "dbward::shared_entra_principal",
            "share one Entra principal",
        );
        expect(
            &azure(
                &format!("relay-identity client-id=\"{A}\" object-id=\"{B}\""),
                "    db-user etl\n    db-user loader\n",
            ),
            "dbward::shared_entra_principal",
            "both would log in as the relay-identity",
        );
        // Same client id, another object id: one identity written two ways.
        expect(
            &azure(
                "",
                &format!(
                    "    db-user etl client-id=\"{A}\" object-id=\"{B}\"\n    db-user loader client-id=\"{A}\" object-id=\"{C}\"\n"
                ),
            ),
            "dbward::entra_id_mismatch",
            "has object id",
        );
        // A client id pasted as the object id.
        expect(
            &azure(
                &format!("relay-identity client-id=\"{A}\" object-id=\"{B}\""),
                &format!("    db-user etl client-id=\"{C}\" object-id=\"{A}\"\n"),
            ),
            "dbward::entra_id_mismatch",
            "is the client id of the relay-identity",
        );
    }

    #[test]
    fn guids_are_checked() {
        expect(
            &azure(
                "",
                "    db-user etl client-id=\"nope\" object-id=\"also-nope\"\n",
            ),
            "dbward::invalid_azure_id",
            "`nope` is not a valid Azure client id",
        );
    }

    #[test]
    fn principals_only_on_azure() {
        expect(
            &format!(
                "database d {{\n    postgres host=\"h\"\n    self-hosted {{\n        config-dir \"/x\"\n    }}\n    db-user app client-id=\"{A}\" object-id=\"{B}\"\n}}\n"
            ),
            "dbward::entra_principal_not_azure",
            "`client-id` belongs to a db-user of an `azure-postgres` database",
        );
    }
}

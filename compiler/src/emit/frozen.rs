//! `relay/frozen.json`: the model turned into the relay's only input, a sealed
//! [`dbward_frozen::Config`].
//!
//! Paths in it are relative to `relay/` (where the relay's certificate files sit next to it),
//! so an output directory can be mounted anywhere. Every access decision is here already; the
//! relay only looks entries up.

use std::path::PathBuf;

use dbward_frozen as frozen;

use super::EmitError;
use crate::model::{
    Access, CloudKind, Database, DatabaseKind, Grant, Model, ObjectKind, Privilege,
};

/// The frozen config of a model, sealed (checksum set).
pub fn build(model: &Model) -> Result<frozen::Config, EmitError> {
    let mut databases = std::collections::BTreeMap::new();
    for (name, db) in &model.databases {
        databases.insert(name.clone(), database(model, db)?);
    }
    let access = access_entries(model);
    let relay = &model.relay;
    let mut config = frozen::Config {
        format_version: frozen::FORMAT_VERSION,
        checksum: String::new(),
        relay: frozen::Relay {
            listen: relay.listen.clone(),
            public_name: relay.public_name.clone(),
            tls: frozen::ServerTls {
                cert: relative(super::layout::RELAY_SERVER_CERT),
                key: relative(super::layout::RELAY_SERVER_KEY),
                client_ca: relative(super::layout::RELAY_USERS_CA),
            },
            upstream_identity: Some(frozen::TlsIdentity {
                cert: relative(super::layout::RELAY_UPSTREAM_CERT),
                key: relative(super::layout::RELAY_UPSTREAM_KEY),
            }),
            audit: relay.audit.as_ref().map(|audit| frozen::Audit {
                path: PathBuf::from(&audit.path),
                queries: audit.queries,
            }),
            metrics: relay.metrics.clone(),
            limits: frozen::Limits {
                idle_timeout_ms: millis(relay.idle_timeout),
                idle_in_transaction_timeout_ms: millis(relay.idle_in_transaction_timeout),
                ..frozen::Limits::default()
            },
            revocation: frozen::Revocation {
                grace_ms: u64::try_from(relay.revoke_grace.as_millis()).unwrap_or(u64::MAX),
                disconnect_expired_cert: relay.disconnect_expired_cert,
                certificates_issued_after: relay.certificates_issued_after,
            },
            peers: relay.peers.as_ref().map(|peers| frozen::Peers {
                tls: frozen::PeerTls {
                    cert: relative(super::layout::RELAY_PEER_CERT),
                    key: relative(super::layout::RELAY_PEER_KEY),
                    ca: relative(super::layout::RELAY_PEER_CA),
                    server_name: super::layout::PEER_SERVER_NAME.into(),
                },
                members: peers
                    .members
                    .iter()
                    .map(|(id, address)| frozen::Peer {
                        id: *id,
                        address: address.clone(),
                    })
                    .collect(),
            }),
        },
        databases,
        access,
    };
    config.seal();
    Ok(config)
}

/// The model's access table as the relay reads it (sorted by person, then database): what
/// `build` seals, and what `dbward plan` and `dbward diff` compare.
pub fn access_entries(model: &Model) -> Vec<frozen::Access> {
    model
        .access
        .iter()
        .map(|entry| {
            let cutoff = model
                .users
                .get(entry.user)
                .and_then(|user| user.certificates_issued_after);
            access_entry(entry, cutoff)
        })
        .collect()
}

/// One entry of the access table as the relay reads it, with the person's
/// `certificates-issued-after`. A function of its arguments only: equal rights and cut-off give
/// equal entries (what `dbward diff` relies on to skip converting unchanged entries).
pub fn access_entry(entry: Access<'_>, certificates_issued_after: Option<i64>) -> frozen::Access {
    let rights = entry.rights;
    frozen::Access {
        identity: entry.user.to_string(),
        database: entry.database.to_string(),
        db_users: rights.db_users.iter().cloned().collect(),
        db_names: rights.db_names.clone(),
        provision: rights.provision,
        db_roles: rights.db_roles.iter().cloned().collect(),
        grants: rights.permissions.iter().map(frozen_grant).collect(),
        certificates_issued_after,
    }
}

/// A manifest permission as the relay hands it to `dbward.activate`: names as data, never SQL.
fn frozen_grant(grant: &Grant) -> frozen::Grant {
    let on = match grant.on {
        ObjectKind::Database => frozen::GrantOn::Database,
        ObjectKind::Schema => frozen::GrantOn::Schema,
        ObjectKind::Table | ObjectKind::AllTables => frozen::GrantOn::Table,
        ObjectKind::Sequence | ObjectKind::AllSequences => frozen::GrantOn::Sequence,
        ObjectKind::Function | ObjectKind::AllFunctions => frozen::GrantOn::Function,
    };
    let every = matches!(
        grant.on,
        ObjectKind::AllTables | ObjectKind::AllSequences | ObjectKind::AllFunctions
    );
    frozen::Grant {
        privileges: grant
            .privileges
            .iter()
            .map(|p| match p {
                Privilege::Select => frozen::Privilege::Select,
                Privilege::Insert => frozen::Privilege::Insert,
                Privilege::Update => frozen::Privilege::Update,
                Privilege::Delete => frozen::Privilege::Delete,
                Privilege::Truncate => frozen::Privilege::Truncate,
                Privilege::References => frozen::Privilege::References,
                Privilege::Trigger => frozen::Privilege::Trigger,
                Privilege::Usage => frozen::Privilege::Usage,
                Privilege::Create => frozen::Privilege::Create,
                Privilege::Connect => frozen::Privilege::Connect,
                Privilege::Temporary => frozen::Privilege::Temporary,
                Privilege::Execute => frozen::Privilege::Execute,
                Privilege::All => frozen::Privilege::All,
            })
            .collect(),
        on,
        // The manifest's default schema, as setup.sql's GRANTs use it.
        schema: match grant.on {
            ObjectKind::Database => None,
            _ => Some(grant.schema.clone().unwrap_or_else(|| "public".to_owned())),
        },
        object: if every { None } else { grant.object.clone() },
    }
}

/// A timeout in the frozen config's milliseconds, `0` meaning off.
fn millis(timeout: Option<std::time::Duration>) -> u64 {
    timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
}

/// A `relay/…` layout path relative to `relay/`, where frozen.json lives.
fn relative(layout_path: &str) -> PathBuf {
    PathBuf::from(layout_path.strip_prefix("relay/").unwrap_or(layout_path))
}

/// One upstream: where it is, how its certificate is verified, how the relay authenticates.
fn database(model: &Model, db: &Database) -> Result<frozen::Database, EmitError> {
    let cloud = |expected: &'static str| {
        db.kind
            .cloud()
            .and_then(|name| model.clouds.get(name))
            .ok_or_else(|| EmitError::WrongCloud {
                database: db.name.clone(),
                cloud: db.kind.cloud().unwrap_or_default().to_owned(),
                expected,
            })
    };
    let wrong = |expected: &'static str| EmitError::WrongCloud {
        database: db.name.clone(),
        cloud: db.kind.cloud().unwrap_or_default().to_owned(),
        expected,
    };
    let host = db.postgres.host.clone();
    let (host, tls, auth) = match &db.kind {
        DatabaseKind::SelfHosted { server_names, .. } => {
            let host = host.ok_or_else(|| EmitError::MissingHost {
                database: db.name.clone(),
            })?;
            if !crate::model::rules::host_in_server_names::covers(server_names, &host) {
                return Err(EmitError::HostNotInServerNames {
                    database: db.name.clone(),
                    host,
                });
            }
            let tls = frozen::UpstreamTls {
                server_name: host.clone(),
                ca: Some(relative(super::layout::RELAY_SERVER_CA)),
            };
            (host, tls, frozen::UpstreamAuth::Mtls)
        }
        DatabaseKind::AwsRds { ca_file, .. } => {
            let CloudKind::Aws { region, .. } = &cloud("aws")?.kind else {
                return Err(wrong("aws"));
            };
            let host = host.ok_or_else(|| EmitError::MissingHost {
                database: db.name.clone(),
            })?;
            // RDS certificates chain to Amazon's CA, which is not among the public roots:
            // `ca-file` names the bundle; without it the relay uses the public roots.
            let tls = frozen::UpstreamTls {
                server_name: host.clone(),
                ca: ca_file.as_ref().map(std::path::PathBuf::from),
            };
            let auth = frozen::UpstreamAuth::RdsIam {
                region: region.clone(),
            };
            (host, tls, auth)
        }
        DatabaseKind::CloudSql {
            instance,
            ca_file,
            ip_type,
            ..
        } => {
            let CloudKind::Gcp {
                relay_service_account,
                ..
            } = &cloud("gcp")?.kind
            else {
                return Err(wrong("gcp"));
            };
            let relay_service_account =
                relay_service_account
                    .clone()
                    .ok_or_else(|| EmitError::MissingRelayIdentity {
                        cloud: db.kind.cloud().unwrap_or_default().to_owned(),
                        what: "relay service account",
                        node: "relay-service-account EMAIL",
                    })?;
            // Without an explicit host, the instance connection name stands for the endpoint:
            // Cloud SQL's server certificates name the instance as `project:instance`, and
            // its address is looked up through the Cloud SQL Admin API (as Google's connectors do).
            let (host, server_name) = match host {
                Some(host) => (host.clone(), host),
                None => {
                    let mut parts = instance.split(':');
                    let project = parts.next().unwrap_or_default();
                    let id = parts.next_back().unwrap_or_default();
                    (instance.clone(), format!("{project}:{id}"))
                }
            };
            // `ca-file` (with `host`) is the instance's server CA; without it the relay takes the
            // CA from connectSettings.
            let tls = frozen::UpstreamTls {
                server_name,
                ca: ca_file.as_ref().map(std::path::PathBuf::from),
            };
            let auth = frozen::UpstreamAuth::CloudSqlIam {
                relay_service_account,
                instance: instance.clone(),
                // The vocabulary admits only these three values.
                ip_type: match ip_type.as_deref() {
                    Some("private") => frozen::CloudSqlIpType::Private,
                    Some("psc") => frozen::CloudSqlIpType::Psc,
                    _ => frozen::CloudSqlIpType::Public,
                },
            };
            (host, tls, auth)
        }
        DatabaseKind::AzurePostgres {
            server, ca_file, ..
        } => {
            let CloudKind::Azure { tenant, .. } = &cloud("azure")?.kind else {
                return Err(wrong("azure"));
            };
            // Every login is its own Entra principal (the front end made sure each has one);
            // the relay asks a token for its client id, and the database checks its object id.
            let principals = model.entra_principals(db);
            let logins = db
                .db_users
                .keys()
                .chain(db.admin_user.iter().map(|a| &a.name));
            for name in logins {
                if !principals.contains_key(name) {
                    return Err(EmitError::MissingRelayIdentity {
                        cloud: db.kind.cloud().unwrap_or_default().to_owned(),
                        what: "Entra principal (relay identity with its object id)",
                        node: "relay-identity client-id=\"…\" object-id=\"…\"",
                    });
                }
            }
            // Flexible servers are reached at a fixed, publicly trusted name; `ca-file`
            // replaces the public roots.
            let host = host.unwrap_or_else(|| format!("{server}.postgres.database.azure.com"));
            let tls = frozen::UpstreamTls {
                server_name: host.clone(),
                ca: ca_file.as_ref().map(std::path::PathBuf::from),
            };
            let auth = frozen::UpstreamAuth::AzureEntra {
                tenant: tenant.to_ascii_lowercase(),
                principals,
            };
            (host, tls, auth)
        }
    };
    Ok(frozen::Database {
        host,
        port: db.postgres.port,
        tls,
        auth,
        admin_user: db.admin_user.as_ref().map(|admin| frozen::AdminUser {
            name: admin.name.clone(),
            default_database: admin.default_database.clone(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(host: &str) -> crate::model::Model {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/quickstart.kdl"
        ))
        .unwrap()
        .replace("host=\"127.0.0.1\"", &format!("host=\"{host}\""));
        crate::check(&crate::source::Source::new("q.kdl", text))
            .model
            .expect("compiles")
    }

    #[test]
    fn self_hosted_upstreams_verify_the_host_against_server_ca() {
        let config = build(&model("localhost")).unwrap();
        let shop = &config.databases["shop"];
        assert_eq!(shop.tls.server_name, "localhost");
        assert_eq!(
            shop.tls.ca.as_deref(),
            Some(std::path::Path::new("server-ca.crt"))
        );
        assert_eq!(shop.auth, frozen::UpstreamAuth::Mtls);
        assert_eq!(config.checksum, config.compute_checksum(), "sealed");
        // The front end refuses such a manifest (`dbward::host_not_in_server_names`); the emitter
        // still refuses a hand-built model that slipped past it.
        let mut bad = model("localhost");
        bad.databases.get_mut("shop").unwrap().postgres.host = Some("pg.internal".into());
        let err = build(&bad).unwrap_err();
        assert!(
            matches!(err, EmitError::HostNotInServerNames { ref host, .. } if host == "pg.internal"),
            "{err}"
        );
    }

    #[test]
    fn revocation_settings_and_cutoffs_reach_the_relay() {
        let defaults = build(&model("localhost")).unwrap().relay.revocation;
        assert_eq!(defaults, frozen::Revocation::default());
        assert_eq!(defaults.grace_ms, 10_000);
        assert!(defaults.disconnect_expired_cert);

        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/quickstart.kdl"
        ))
        .unwrap()
        .replace(
            "    public-name",
            "    revoke-grace \"0s\"\n    disconnect-expired-cert #false\n    \
             certificates-issued-after \"2026-01-01T00:00:00Z\"\n    public-name",
        )
        .replace(
            "user alice {",
            "user alice {\n    certificates-issued-after \"2026-11-30T13:00:00+01:00\"",
        );
        let checked = crate::check(&crate::source::Source::new("q.kdl", text));
        let model = checked
            .model
            .unwrap_or_else(|| panic!("{:?}", checked.diagnostics));
        let config = build(&model).unwrap();
        assert_eq!(
            config.relay.revocation,
            frozen::Revocation {
                grace_ms: 0,
                disconnect_expired_cert: false,
                certificates_issued_after: Some(1_767_225_600),
            }
        );
        let alice: Vec<_> = config
            .access
            .iter()
            .filter(|a| a.identity == "alice")
            .collect();
        assert!(!alice.is_empty());
        for access in alice {
            assert_eq!(access.certificates_issued_after, Some(1_796_040_000));
        }
        assert!(
            config
                .access
                .iter()
                .filter(|a| a.identity != "alice")
                .all(|a| a.certificates_issued_after.is_none())
        );
    }

    #[test]
    fn schema_file_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/frozen.schema.json");
        let expected = dbward_frozen::Config::json_schema();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &expected).unwrap();
            return;
        }
        let actual = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            actual == expected,
            "schemas/frozen.schema.json is stale: run `UPDATE_GOLDEN=1 cargo nextest run -p dbward \
             schema_file_is_current` and commit the result"
        );
    }
}

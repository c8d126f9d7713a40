//! Tests of certificate issuance and of the keep-or-reissue rule.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::model::{Database, Model, Postgres, Relay};

/// A hand-built model: relay `db.example.com` and self-hosted databases named as given, each
/// with `server-names "<name>.internal" "10.0.0.1"`.
pub(crate) fn model(databases: &[&str]) -> Model {
    Model {
        version: 1,
        relay: Relay {
            listen: "127.0.0.1:6432".into(),
            public_name: "db.example.com".into(),
            client_cert_ttl: Duration::from_secs(8 * 3600),
            idle_timeout: None,
            idle_in_transaction_timeout: None,
            audit: None,
            metrics: None,
            kubernetes: None,
            revoke_grace: Duration::from_secs(10),
            disconnect_expired_cert: true,
            certificates_issued_after: None,
            peers: None,
        },
        clouds: BTreeMap::new(),
        databases: databases
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    Database {
                        name: name.to_string(),
                        postgres: Postgres {
                            host: Some(format!("{name}.internal")),
                            port: 5432,
                            version: Some(15),
                        },
                        labels: BTreeMap::new(),
                        kind: DatabaseKind::SelfHosted {
                            server_names: vec![format!("{name}.internal"), "10.0.0.1".into()],
                            config_dir: "/etc/dbward".into(),
                        },
                        admin_user: None,
                        db_roles: BTreeMap::new(),
                        db_users: BTreeMap::new(),
                    },
                )
            })
            .collect(),
        roles: BTreeMap::new(),
        users: BTreeMap::new(),
        access: Default::default(),
    }
}

const NOW: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

fn run(model: &Model, now: OffsetDateTime, existing: &Artifacts) -> Artifacts {
    let env = Env::for_tests(
        now,
        existing
            .iter()
            .map(|(path, artifact)| (path.clone(), artifact.bytes.clone()))
            .collect(),
    );
    let mut out = Artifacts::new();
    emit(model, &env, &mut out).unwrap();
    out
}

fn parse(pem: &[u8]) -> Vec<u8> {
    pem_contents(pem, "CERTIFICATE").unwrap()
}

/// Paths whose bytes differ between two runs.
fn changed(a: &Artifacts, b: &Artifacts) -> BTreeSet<String> {
    a.keys()
        .chain(b.keys())
        .filter(|path| a.get(*path) != b.get(*path))
        .cloned()
        .collect()
}

#[test]
fn first_run_issues_every_certificate_with_the_right_names_and_modes() {
    let out = run(&model(&["orders"]), NOW, &Artifacts::new());
    let paths: Vec<&str> = out.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "ca/relay-client-ca.crt",
            "ca/relay-client-ca.key",
            "ca/server-ca.crt",
            "ca/server-ca.key",
            "ca/users-ca.crt",
            "ca/users-ca.key",
            "databases/orders/client-ca.crt",
            "databases/orders/server.crt",
            "databases/orders/server.key",
            "relay/server-ca.crt",
            "relay/server.crt",
            "relay/server.key",
            "relay/upstream-client.crt",
            "relay/upstream-client.key",
            "relay/users-ca.crt",
        ]
    );
    for (path, artifact) in &out {
        if path.ends_with(".key") {
            assert_eq!((artifact.mode, artifact.sensitive), (0o600, true), "{path}");
        } else {
            assert_eq!(
                (artifact.mode, artifact.sensitive),
                (0o644, false),
                "{path}"
            );
        }
    }
    assert_eq!(out["relay/users-ca.crt"], out["ca/users-ca.crt"]);
    assert_eq!(out["relay/server-ca.crt"], out["ca/server-ca.crt"]);
    assert_eq!(
        out["databases/orders/client-ca.crt"],
        out["ca/relay-client-ca.crt"]
    );

    let der = parse(&out["databases/orders/server.crt"].bytes);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(sans, ["DNSName(orders.internal)", "IPAddress(0a:00:00:01)"]);
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );

    // Each leaf verifies against its CA's public key.
    let verify = |leaf: &str, ca: &str| {
        let leaf_der = parse(&out[leaf].bytes);
        let ca_der = parse(&out[ca].bytes);
        let (_, leaf_cert) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        leaf_cert
            .verify_signature(Some(ca_cert.public_key()))
            .unwrap_or_else(|e| panic!("{leaf} not signed by {ca}: {e}"));
    };
    verify("databases/orders/server.crt", "ca/server-ca.crt");
    verify("relay/server.crt", "ca/server-ca.crt");
    verify("relay/upstream-client.crt", "ca/relay-client-ca.crt");

    let der = parse(&out["relay/server.crt"].bytes);
    let (_, relay) = x509_parser::parse_x509_certificate(&der).unwrap();
    let names: Vec<String> = relay
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        names,
        ["DNSName(db.example.com)", "DNSName(*.db.example.com)"]
    );

    let der = parse(&out["relay/upstream-client.crt"].bytes);
    let (_, client) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(client.subject().to_string(), "CN=dbward-relay");
    assert!(
        client
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth
    );
}

#[test]
fn second_run_keeps_every_byte() {
    let model = model(&["orders", "billing"]);
    let first = run(&model, NOW, &Artifacts::new());
    let second = run(&model, NOW + time::Duration::days(30), &first);
    assert_eq!(changed(&first, &second), BTreeSet::new());
}

#[test]
fn changed_server_names_reissue_only_that_certificate() {
    let first = run(&model(&["orders", "billing"]), NOW, &Artifacts::new());
    let mut changed_model = model(&["orders", "billing"]);
    if let Some(db) = changed_model.databases.get_mut("orders")
        && let DatabaseKind::SelfHosted { server_names, .. } = &mut db.kind
    {
        server_names.push("orders.example.net".into());
    }
    let second = run(&changed_model, NOW, &first);
    assert_eq!(
        changed(&first, &second),
        BTreeSet::from([
            "databases/orders/server.crt".to_string(),
            "databases/orders/server.key".to_string()
        ])
    );
}

#[test]
fn renewal_window_reissues_leaves_but_not_cas() {
    let model = model(&["orders"]);
    let first = run(&model, NOW, &Artifacts::new());
    // 250 days into a 365-day life: past two thirds.
    let later = run(&model, NOW + time::Duration::days(250), &first);
    let reissued = changed(&first, &later);
    assert!(reissued.contains("databases/orders/server.crt"));
    assert!(reissued.contains("relay/server.crt"));
    assert!(reissued.contains("relay/upstream-client.crt"));
    assert!(
        !reissued.iter().any(|p| p.starts_with("ca/")),
        "{reissued:?}"
    );
}

#[test]
fn a_new_ca_reissues_what_it_signed() {
    let model = model(&["orders"]);
    let first = run(&model, NOW, &Artifacts::new());
    let mut without_ca = first.clone();
    without_ca.remove("ca/server-ca.key");
    let second = run(&model, NOW, &without_ca);
    let reissued = changed(&first, &second);
    for path in [
        "ca/server-ca.crt",
        "relay/server.crt",
        "relay/server-ca.crt",
        "databases/orders/server.crt",
    ] {
        assert!(reissued.contains(path), "{path} not reissued: {reissued:?}");
    }
    assert!(!reissued.contains("ca/users-ca.crt"));
    assert!(!reissued.contains("relay/upstream-client.crt"));
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_reissued() {
    let model = model(&["orders"]);
    let first = run(&model, NOW, &Artifacts::new());
    let mut swapped = first.clone();
    let other_key = first["relay/server.key"].clone();
    swapped.insert("databases/orders/server.key".into(), other_key);
    let second = run(&model, NOW, &swapped);
    assert_ne!(
        second["databases/orders/server.crt"],
        first["databases/orders/server.crt"]
    );
    // Garbage where a certificate should be is replaced, not an error.
    let mut garbage = first.clone();
    garbage.insert("relay/server.crt".into(), Artifact::text("not a cert"));
    let third = run(&model, NOW, &garbage);
    assert!(
        third["relay/server.crt"]
            .bytes
            .starts_with(b"-----BEGIN CERTIFICATE-----")
    );
}

#[test]
fn person_certificates_are_client_certificates_signed_by_the_users_ca() {
    let out = run(&model(&[]), NOW, &Artifacts::new());
    let env = Env::for_tests(NOW, BTreeMap::new());
    let person = issue_person(
        &env,
        &out["ca/users-ca.crt"].bytes,
        &out["ca/users-ca.key"].bytes,
        "alice",
        Duration::from_secs(8 * 3600),
    )
    .unwrap();
    let der = parse(person.cert_pem.as_bytes());
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.subject().to_string(), "CN=alice");
    assert_eq!(
        cert.validity().not_after.to_datetime(),
        NOW + time::Duration::hours(8)
    );
    let ca_der = parse(&out["ca/users-ca.crt"].bytes);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    assert!(person.key_pem.contains("PRIVATE KEY"));

    let err = issue_person(&env, b"junk", b"junk", "alice", Duration::from_secs(60)).unwrap_err();
    assert!(err.to_string().contains("ca/users-ca.crt"), "{err}");
}

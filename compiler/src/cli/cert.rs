//! `dbward cert issue MANIFEST --out DIR --user NAME [--ttl 8h] --dest DIR`: signs a person's
//! client certificate with the users CA that `apply` wrote under DIR, and writes what `psql`
//! needs to reach every database the person may use through the relay.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use time::format_description::well_known::Rfc3339;

use super::plan::load_model;
use crate::apply::write_atomic;
use crate::emit::env::Env;
use crate::emit::layout;
use crate::emit::pki;
use crate::model::{Model, NameSet};

/// Arguments of `dbward cert`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertArgs {
    #[command(subcommand)]
    pub command: CertCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertCommand {
    /// Issue a client certificate for a person, with a pg_service.conf to use it.
    Issue(IssueArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct IssueArgs {
    /// The manifest.
    pub manifest: PathBuf,
    /// The output directory `dbward apply` wrote (holds the users CA).
    #[arg(long)]
    pub out: PathBuf,
    /// The person (a `user` of the manifest).
    #[arg(long)]
    pub user: String,
    /// Lifetime, e.g. `8h`, `30m`, `1d` (default: the relay's `client-cert-ttl`).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Where to write postgresql.crt, postgresql.key, root.crt and pg_service.conf.
    #[arg(long)]
    pub dest: PathBuf,
}

pub fn run(args: CertArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CertCommand::Issue(args) => issue(&args),
    }
}

fn issue(args: &IssueArgs) -> anyhow::Result<ExitCode> {
    let (_, model) = load_model(&args.manifest)?;
    if !model.users.contains_key(&args.user) {
        let hint = match crate::model::rules::did_you_mean(
            &args.user,
            model.users.keys().map(String::as_str),
        ) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!(
                "the users are: {}",
                model.users.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        anyhow::bail!(
            "there is no user `{}` in {}; {hint}",
            args.user,
            args.manifest.display(),
        );
    }
    let ttl = match &args.ttl {
        Some(text) => crate::model::rules::durations::parse_duration(text)
            .map_err(|e| anyhow::anyhow!("--ttl: {e}; write it like `8h`, `30m` or `1d`"))?,
        None => model.relay.client_cert_ttl,
    };
    let read_ca = |relative: &str| {
        let path = args.out.join(relative);
        fs::read(&path).with_context(|| {
            format!(
                "cannot read {}: run `dbward apply {} --out {}` first",
                path.display(),
                args.manifest.display(),
                args.out.display()
            )
        })
    };
    let ca_cert = read_ca(layout::USERS_CA_CERT)?;
    // The CA key is checked like ssh checks a key: group or others must not have any access.
    let ca_key_path = args.out.join(layout::USERS_CA_KEY);
    let ca_key = match crate::emit::env::read_private_key(&ca_key_path) {
        Err(error @ crate::emit::env::EnvError::KeyMode { .. }) => return Err(error.into()),
        Err(_) => read_ca(layout::USERS_CA_KEY)?,
        Ok(bytes) => bytes,
    };
    let root = read_ca(layout::SERVER_CA_CERT)?;

    let env = Env::new(
        time::OffsetDateTime::now_utc(),
        Default::default(),
        crate::emit::env::KeySource::Random,
    );
    let person = pki::issue_person(&env, &ca_cert, &ca_key, &args.user, ttl)?;

    if !args.dest.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&args.dest)
            .with_context(|| format!("cannot create {}", args.dest.display()))?;
    }
    let dest = fs::canonicalize(&args.dest)
        .with_context(|| format!("cannot resolve {}", args.dest.display()))?;
    write_atomic(
        &dest.join("postgresql.key"),
        person.key_pem.as_bytes(),
        0o600,
    )?;
    write_atomic(
        &dest.join("postgresql.crt"),
        person.cert_pem.as_bytes(),
        0o644,
    )?;
    write_atomic(&dest.join("root.crt"), &root, 0o644)?;
    let (services, first) = service_file(&model, &args.user, &dest);
    write_atomic(&dest.join("pg_service.conf"), services.as_bytes(), 0o644)?;

    let until = person
        .not_after
        .format(&Rfc3339)
        .unwrap_or_else(|_| person.not_after.to_string());
    println!(
        "Issued a certificate for {} valid until {until} ({}).",
        args.user,
        human(ttl)
    );
    println!(
        "Wrote {0}/postgresql.crt, {0}/postgresql.key (0600), {0}/root.crt and {0}/pg_service.conf.",
        dest.display()
    );
    match first {
        Some(service) => println!(
            "Connect with:\n  PGSERVICEFILE={}/pg_service.conf psql \"service={service}\"",
            dest.display()
        ),
        None => println!(
            "{} may not reach any database yet: grant a role in the manifest and apply it.",
            args.user
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// One `pg_service.conf` stanza per database the person may reach, and the first service name.
pub fn service_file(model: &Model, user: &str, dest: &Path) -> (String, Option<String>) {
    let port = model
        .relay
        .listen
        .rsplit_once(':')
        .map(|(_, port)| port)
        .unwrap_or("5432");
    // A `*.localhost` name is the loopback by definition (RFC 6761), but not every resolver
    // knows it (a fresh Debian does not): libpq connects to `hostaddr` and still checks the
    // certificate and sends SNI for `host`, so the service works without DNS.
    let local_address = local_relay_address(model);
    let mut text = format!(
        "# Written by `dbward cert issue` for {user}. One service per database they may reach\n\
         # through the relay; use with PGSERVICEFILE=<this file> psql \"service=<database>\".\n"
    );
    let mut first = None;
    for entry in model.access.of_user(user) {
        let (database, access) = (entry.database, entry.rights);
        first.get_or_insert_with(|| database.to_string());
        let dbname = match &access.db_names {
            NameSet::Only(names) if !names.iter().any(|n| n == database) => names.first().cloned(),
            _ => Some(database.to_string()),
        };
        // The first declared login; a person with only a provisioned user logs in as
        // themself. Every choice is listed, so they can pick another with `user=`.
        let provisioned = access.provision != crate::model::Provision::Off;
        let mut logins: Vec<String> = access.db_users.iter().cloned().collect();
        if provisioned {
            logins.push(format!("{user} (created for the session)"));
        }
        let login = match access.db_users.iter().next() {
            Some(first) => Some(first.clone()),
            None if provisioned => Some(user.to_string()),
            None => None,
        };
        let _ = write!(
            text,
            "\n# {user} may log in to {database} as: {}\n[{database}]\nhost={database}.{public}\n\
             port={port}\n",
            logins.join(", "),
            public = model.relay.public_name
        );
        if let Some(address) = &local_address {
            let _ = writeln!(text, "hostaddr={address}");
        }
        if let Some(dbname) = dbname {
            let _ = writeln!(text, "dbname={dbname}");
        }
        if let Some(login) = login {
            let _ = writeln!(text, "user={login}");
        }
        let _ = write!(
            text,
            "sslmode=verify-full\nsslcert={0}/postgresql.crt\nsslkey={0}/postgresql.key\n\
             sslrootcert={0}/root.crt\n",
            dest.display()
        );
    }
    (text, first)
}

/// The address to connect to when the relay's public name is `localhost` or under it: the
/// address it listens on (the loopback of its family when it listens on every address).
fn local_relay_address(model: &Model) -> Option<std::net::IpAddr> {
    let public = model
        .relay
        .public_name
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if public != "localhost" && !public.ends_with(".localhost") {
        return None;
    }
    let listen: std::net::SocketAddr = model.relay.listen.parse().ok()?;
    Some(match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    })
}

fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;

    #[test]
    fn one_verify_full_service_per_reachable_database() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/full.kdl");
        let text = std::fs::read_to_string(path).unwrap();
        let model = crate::check(&Source::new("full.kdl", text)).model.unwrap();
        let (file, first) = service_file(&model, "bob", Path::new("/home/bob/.dbward"));
        assert_eq!(first.as_deref(), Some("analytics"));
        let stanzas: Vec<&str> = file.split("\n[").skip(1).collect();
        assert!(
            file.contains(
                "# bob may log in to analytics as: report-bot, bob (created for the session)\n"
            ),
            "{file}"
        );
        assert_eq!(stanzas.len(), 2, "{file}");
        assert!(
            stanzas[0].starts_with(
                "analytics]\nhost=analytics.db.example.com\nport=6432\ndbname=analytics\n\
                 user=report-bot\nsslmode=verify-full\n"
            ),
            "{file}"
        );
        assert!(
            stanzas[1].starts_with("orders]\nhost=orders.db.example.com\nport=6432\n"),
            "{file}"
        );
        assert!(stanzas[1].contains("\nuser=readonly\n"), "{file}");
        assert!(file.contains("sslkey=/home/bob/.dbward/postgresql.key\n"));
        let (nobody, none) = service_file(&model, "nobody", Path::new("/x"));
        assert!(none.is_none() && !nobody.contains('['));
    }

    #[test]
    fn a_localhost_public_name_connects_to_the_listen_address() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/quickstart.kdl");
        let text = std::fs::read_to_string(path).unwrap();
        let model = crate::check(&Source::new("quickstart.kdl", text.clone()))
            .model
            .unwrap();
        let (file, _) = service_file(&model, "alice", Path::new("/d"));
        assert!(
            file.contains(
                "host=shop.db.localhost
port=6432
hostaddr=127.0.0.1
"
            ),
            "{file}"
        );
        let everywhere = text.replace("\"127.0.0.1:6432\"", "\"[::]:6432\"");
        let model = crate::check(&Source::new("q.kdl", everywhere))
            .model
            .unwrap();
        let (file, _) = service_file(&model, "alice", Path::new("/d"));
        assert!(file.contains("hostaddr=::1\n"), "{file}");
        // A real DNS name is left to the resolver.
        let full = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/full.kdl");
        let model = crate::check(&Source::new(
            "full.kdl",
            std::fs::read_to_string(full).unwrap(),
        ))
        .model
        .unwrap();
        assert!(
            !service_file(&model, "bob", Path::new("/d"))
                .0
                .contains("hostaddr")
        );
    }
}

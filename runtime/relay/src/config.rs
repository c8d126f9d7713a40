//! Loading a frozen config the way the relay trusts it: format version and checksum
//! ([`dbward_frozen::Config::load`]), then every file it names — certificates and keys readable
//! and parseable, certificates within their validity period, private keys owned and
//! protected as PostgreSQL requires of `ssl_key_file` ([`key_mode_problem`]), the audit log
//! writable, the addresses valid — and finally the TLS configs built once ([`Loaded::build`]).
//!
//! The same function serves `--check`, startup and SIGHUP reload, so a config that passes
//! `--check` is exactly a config the relay would run, and a reload can never install a config
//! that startup would have refused.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use dbward_frozen::{Config, LoadError};

use crate::state::Loaded;
use crate::tls::{self, TlsError};

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable, not JSON, another format version, or a checksum mismatch.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Files or values the config names are unusable; every problem is listed.
    #[error("{config} cannot be used:\n{problems}")]
    Files { config: PathBuf, problems: Problems },
    /// The TLS configs could not be built from otherwise readable files (e.g. a key that does
    /// not match its certificate).
    #[error("{config} cannot be used: {source}")]
    Tls { config: PathBuf, source: TlsError },
}

/// Every problem found while verifying the files of one config, one per line.
#[derive(Debug)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

/// Reads and verifies `frozen.json` and everything it names, and builds what sessions need.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let config = Config::load(path)?;
    let problems = verify_files(path, &config);
    if !problems.is_empty() {
        return Err(ConfigError::Files {
            config: path.to_owned(),
            problems: Problems(problems),
        });
    }
    crate::revoke::warn_future_cutoffs(&config);
    Loaded::build(path, config).map_err(|source| ConfigError::Tls {
        config: path.to_owned(),
        source,
    })
}

/// The audit log of a config, resolved against its directory.
pub fn audit_path(loaded: &Loaded) -> Option<PathBuf> {
    let audit = loaded.config.relay.audit.as_ref()?;
    Some(Config::resolve_path(&loaded.path, &audit.path))
}

/// Checks every file and address the config names; returns one message per problem, each
/// naming the file and saying how to fix it. Checking everything (instead of stopping at the
/// first problem) lets `--check` show an operator the whole list at once.
fn verify_files(config_path: &Path, config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let resolve = |p: &Path| Config::resolve_path(config_path, p);
    let relay = &config.relay;

    if relay.listen.parse::<SocketAddr>().is_err() {
        problems.push(format!(
            "relay.listen {:?} is not an IP address and port (e.g. 0.0.0.0:6432); fix `listen` \
             in the manifest and run `dbward apply`",
            relay.listen
        ));
    }
    if let Some(metrics) = &relay.metrics
        && metrics.parse::<SocketAddr>().is_err()
    {
        problems.push(format!(
            "relay.metrics {metrics:?} is not an IP address and port (e.g. 127.0.0.1:9187); fix \
             `metrics` in the manifest and run `dbward apply`"
        ));
    }

    let mut certs = vec![&relay.tls.cert, &relay.tls.client_ca];
    let mut keys = vec![&relay.tls.key];
    if let Some(identity) = &relay.upstream_identity {
        certs.push(&identity.cert);
        keys.push(&identity.key);
    }
    if let Some(peers) = &relay.peers {
        certs.extend([&peers.tls.cert, &peers.tls.ca]);
        keys.push(&peers.tls.key);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let cert_problems = |cert: &Path| -> Vec<String> {
        match tls::load_certs(cert) {
            Ok(ders) => ders
                .iter()
                .filter_map(|der| validity_problem(cert, der.as_ref(), now))
                .collect(),
            Err(error) => vec![error.to_string()],
        }
    };
    for cert in certs {
        problems.extend(cert_problems(&resolve(cert)));
    }
    // Several databases often share one `ca-file` (one bundle per cloud): check each file once
    // and name every database that uses it, so a problem appears once and says where it is.
    let mut ca_files: std::collections::BTreeMap<PathBuf, Vec<&str>> =
        std::collections::BTreeMap::new();
    for (name, db) in &config.databases {
        if let Some(ca) = &db.tls.ca {
            ca_files.entry(resolve(ca)).or_default().push(name);
        }
    }
    for (ca, names) in &ca_files {
        let (noun, names) = match names.as_slice() {
            [one] => ("database", (*one).to_owned()),
            many => ("databases", many.join(", ")),
        };
        problems.extend(
            cert_problems(ca)
                .into_iter()
                .map(|problem| format!("ca-file of {noun} {names}: {problem}")),
        );
    }
    for key in keys {
        let key = resolve(key);
        if let Some(problem) = key_mode_problem(&key) {
            problems.push(problem);
        } else if let Err(error) = tls::load_key(&key) {
            problems.push(error.to_string());
        }
    }

    if let Some(audit) = &relay.audit
        && let Some(problem) = audit_problem(&resolve(&audit.path))
    {
        problems.push(problem);
    }
    problems
}

/// A certificate outside its validity period fails every handshake that checks it, so it is a
/// problem of the config, not of one session: say which file and how to fix it.
fn validity_problem(path: &Path, der: &[u8], now: i64) -> Option<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Some(format!(
            "{} holds a certificate that cannot be parsed; regenerate it with `dbward apply`",
            path.display()
        ));
    };
    let validity = cert.validity();
    let date = |t: x509_parser::time::ASN1Time| {
        time::OffsetDateTime::from_unix_timestamp(t.timestamp())
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| t.timestamp().to_string())
    };
    if now > validity.not_after.timestamp() {
        Some(format!(
            "certificate {} ({}) expired on {}; run `dbward apply` to reissue it",
            path.display(),
            cert.subject(),
            date(validity.not_after)
        ))
    } else if now < validity.not_before.timestamp() {
        Some(format!(
            "certificate {} ({}) is not valid until {}; check this machine's clock",
            path.display(),
            cert.subject(),
            date(validity.not_before)
        ))
    } else {
        None
    }
}

/// A private key must pass PostgreSQL's own rule for `ssl_key_file`: a regular file, owned by
/// the user the relay runs as (then no group or other bits: `0600` or less) or by root (then
/// group read is allowed: `0640` or less, so a root-owned key can be shared with the relay's
/// group), and by nobody else.
fn key_mode_problem(key: &Path) -> Option<String> {
    let meta = match fs::metadata(key) {
        Err(error) => {
            return Some(format!(
                "cannot read private key {}: {error}; check the path and that the relay may read it",
                key.display()
            ));
        }
        Ok(meta) => meta,
    };
    key_owner_problem(key, &meta, rustix::process::geteuid().as_raw())
}

/// [`key_mode_problem`] for a file's metadata and the relay's effective uid.
fn key_owner_problem(key: &Path, meta: &fs::Metadata, euid: u32) -> Option<String> {
    let path = key.display();
    if !meta.is_file() {
        return Some(format!(
            "private key {path} is not a regular file; point the config at the key file itself"
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    let owner = meta.uid();
    if owner != euid && owner != 0 {
        return Some(format!(
            "private key {path} is owned by uid {owner}, not by the user the relay runs as \
             (uid {euid}) or root; run `chown {euid} {path}`, or run the relay as its owner"
        ));
    }
    if owner == euid && mode & 0o077 != 0 {
        return Some(format!(
            "private key {path} is accessible by group or others (mode {mode:04o}); run \
             `chmod 600 {path}`"
        ));
    }
    if owner != euid && mode & 0o037 != 0 {
        return Some(format!(
            "private key {path}, owned by root, is accessible by others or writable by its \
             group (mode {mode:04o}); run `chmod 640 {path}` (root-owned keys may be \
             group-readable, as PostgreSQL allows)"
        ));
    }
    None
}

/// The audit log must be appendable, or creatable in an existing directory. Checked without
/// creating it, so `--check` changes nothing on disk.
fn audit_problem(path: &Path) -> Option<String> {
    let result = if path.exists() {
        fs::OpenOptions::new().append(true).open(path).map(drop)
    } else {
        match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            )),
            _ => Ok(()),
        }
    };
    result.err().map(|error| {
        format!(
            "cannot append to the audit log {}: {error}; create its directory and make it \
             writable by the relay, or change `audit` in the manifest",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_modes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("server.key");
        fs::write(&key, "not a key").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let problem = key_mode_problem(&key).unwrap();
        assert!(problem.contains("mode 0644"), "{problem}");
        assert!(problem.contains("chmod 600"), "{problem}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(key_mode_problem(&key), None);
        let missing = key_mode_problem(&dir.path().join("nope.key")).unwrap();
        assert!(missing.contains("nope.key"), "{missing}");
        assert!(
            key_mode_problem(dir.path())
                .unwrap()
                .contains("not a regular file")
        );
    }

    /// PostgreSQL's `ssl_key_file` rule, for a relay that does not run as the key's owner.
    #[test]
    fn key_owners_follow_postgresql() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("server.key");
        fs::write(&key, "not a key").unwrap();
        let owner = fs::metadata(&key).unwrap().uid();
        let problem = |mode: u32, euid: u32| {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            key_owner_problem(&key, &fs::metadata(&key).unwrap(), euid)
        };
        // Owned by the relay's user: 0600 or less.
        assert_eq!(problem(0o600, owner), None);
        assert_eq!(problem(0o400, owner), None);
        assert!(problem(0o640, owner).unwrap().contains("chmod 600"));
        if owner == 0 {
            // Owned by root, relay running as another user: 0640 or less.
            assert_eq!(problem(0o640, 1234), None);
            let open = problem(0o644, 1234).unwrap();
            assert!(
                open.contains("mode 0644") && open.contains("chmod 640"),
                "{open}"
            );
            assert!(problem(0o660, 1234).unwrap().contains("chmod 640"));
        } else {
            // Owned by someone who is neither the relay's user nor root.
            let foreign = problem(0o600, owner + 1).unwrap();
            assert!(
                foreign.contains(&format!("owned by uid {owner}")),
                "{foreign}"
            );
        }
    }

    #[test]
    fn certificates_must_be_within_their_validity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["relay.test".into()]).unwrap();
        params.not_before = time::macros::datetime!(2020-01-01 0:00 UTC);
        params.not_after = time::macros::datetime!(2021-01-01 0:00 UTC);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let path = Path::new("relay/server.crt");
        let now = time::macros::datetime!(2026-11-21 0:00 UTC).unix_timestamp();
        let expired = validity_problem(path, &der, now).unwrap();
        assert!(expired.contains("relay/server.crt"), "{expired}");
        assert!(expired.contains("expired on 2021-01-01"), "{expired}");
        assert!(expired.contains("dbward apply"), "{expired}");
        let early = time::macros::datetime!(2019-06-01 0:00 UTC).unix_timestamp();
        let future = validity_problem(path, &der, early).unwrap();
        assert!(future.contains("not valid until 2020-01-01"), "{future}");
        let during = time::macros::datetime!(2020-06-01 0:00 UTC).unix_timestamp();
        assert_eq!(validity_problem(path, &der, during), None);
        assert!(validity_problem(path, b"junk", now).is_some());
    }

    #[test]
    fn audit_log_must_be_appendable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(audit_problem(&dir.path().join("audit.jsonl")), None);
        let problem = audit_problem(&dir.path().join("missing/audit.jsonl")).unwrap();
        assert!(problem.contains("does not exist"), "{problem}");
        // `--check` must not create the log.
        assert!(!dir.path().join("audit.jsonl").exists());
    }
}

//! Certificates and keys: the three CAs, the relay's server and upstream-client certificates,
//! each self-hosted database's server certificate, and person certificates for `cert issue`;
//! with `relay { peers … }`, a fourth CA and the certificate the relay's replicas share.
//!
//! **A certificate is reissued only when what it says changes** (subject, names, usage, issuer,
//! key) **or its renewal window opens** (the last third of its life). Otherwise the existing
//! certificate and key are kept byte for byte from [`Env::existing`], so the same manifest with
//! the same state yields identical artifacts and an empty plan. The no-change path parses each
//! certificate once and never loads a private key or signs anything: it stays fast for
//! thousands of databases.
//!
//! Every key is ECDSA P-256.

use std::cell::OnceCell;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256};

use super::env::{Env, KeyError};
use super::{Artifact, Artifacts, layout};
use crate::model::{DatabaseKind, Model};

/// Lifetime of the three CAs.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of server and relay client certificates.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long before "now", so a server whose clock is a little behind
/// accepts them.
/// The relay adds the same back to a person's `notBefore` to tell when it was issued
/// (`certificates-issued-after`), so the constant is shared through `dbward-frozen`.
const BACKDATE: Duration = Duration::from_secs(dbward_frozen::CERTIFICATE_BACKDATE_SECS);

/// Subject CNs of the three CAs.
pub const USERS_CA_CN: &str = "dbward users CA";
pub const SERVER_CA_CN: &str = "dbward server CA";
pub const RELAY_CLIENT_CA_CN: &str = "dbward relay client CA";
pub const PEER_CA_CN: &str = "dbward relay peer CA";

/// Failures issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot issue the certificate {path}: {source}")]
    Sign {
        path: String,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "{path} cannot be used as a certificate name: {name:?} ({source}); use ASCII DNS names or IP addresses"
    )]
    BadName {
        path: String,
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "cannot load the CA key {path}: {reason}; restore it from a backup, or delete the CA certificate and its key to start a new CA (every certificate it signed is then reissued)"
    )]
    CaKey { path: String, reason: String },
    #[error(
        "{path} is not a certificate dbward can read: {reason}; run `dbward apply` to write it"
    )]
    BadCertificate { path: String, reason: String },
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Ca,
    Server,
    Client,
    /// Both: a relay replica's certificate, presented to the other replicas when it forwards
    /// a cancel and when it accepts one.
    Peer,
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// An IP address when `name` parses as one, else a DNS name.
    pub fn parse(name: &str) -> San {
        match name.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(name.to_string()),
        }
    }
}

/// What one certificate must say.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub cert_path: String,
    pub key_path: String,
    pub common_name: String,
    pub sans: Vec<San>,
    pub usage: Usage,
    pub lifetime: Duration,
}

/// A CA as used while emitting: its certificate, and its key loaded only when something must
/// be signed.
struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    /// Subject key identifier: leaves must name it as their authority key identifier.
    key_id: Vec<u8>,
    /// Raw DER of the subject name: leaves must carry it as their issuer.
    subject_raw: Vec<u8>,
    key_path: String,
    key_pem: String,
    /// Whether this run issued the CA anew (then every leaf it signs is reissued).
    reissued: bool,
    key: OnceCell<KeyPair>,
}

impl Ca {
    fn key(&self) -> Result<&KeyPair, PkiError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| PkiError::CaKey {
            path: self.key_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(self.key.get_or_init(|| key))
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        let key = self.key()?;
        Issuer::from_ca_cert_der(&self.cert_der.clone().into(), key).map_err(|e| PkiError::CaKey {
            path: self.key_path.clone(),
            reason: e.to_string(),
        })
    }
}

/// Emits every certificate and key the model needs into `out`.
pub fn emit(model: &Model, env: &Env, out: &mut Artifacts) -> Result<(), PkiError> {
    let users_ca = ca(
        env,
        out,
        layout::USERS_CA_CERT,
        layout::USERS_CA_KEY,
        USERS_CA_CN,
    )?;
    let server_ca = ca(
        env,
        out,
        layout::SERVER_CA_CERT,
        layout::SERVER_CA_KEY,
        SERVER_CA_CN,
    )?;
    let client_ca = ca(
        env,
        out,
        layout::RELAY_CLIENT_CA_CERT,
        layout::RELAY_CLIENT_CA_KEY,
        RELAY_CLIENT_CA_CN,
    )?;

    let public_name = &model.relay.public_name;
    leaf(
        env,
        out,
        &server_ca,
        &CertSpec {
            cert_path: layout::RELAY_SERVER_CERT.into(),
            key_path: layout::RELAY_SERVER_KEY.into(),
            common_name: public_name.clone(),
            sans: vec![
                San::parse(public_name),
                San::Dns(format!("*.{public_name}")),
            ],
            usage: Usage::Server,
            lifetime: LEAF_LIFETIME,
        },
    )?;
    leaf(
        env,
        out,
        &client_ca,
        &CertSpec {
            cert_path: layout::RELAY_UPSTREAM_CERT.into(),
            key_path: layout::RELAY_UPSTREAM_KEY.into(),
            common_name: layout::RELAY_UPSTREAM_CN.into(),
            sans: Vec::new(),
            usage: Usage::Client,
            lifetime: LEAF_LIFETIME,
        },
    )?;
    out.insert(
        layout::RELAY_USERS_CA.into(),
        Artifact::text(users_ca.cert_pem.clone()),
    );
    out.insert(
        layout::RELAY_SERVER_CA.into(),
        Artifact::text(server_ca.cert_pem.clone()),
    );

    if model.relay.peers.is_some() {
        // A CA of its own: a certificate it signs lets a replica cancel any session, so no
        // other CA's certificate (a person's, a database's) may ever pass for one.
        let peer_ca = ca(
            env,
            out,
            layout::PEER_CA_CERT,
            layout::PEER_CA_KEY,
            PEER_CA_CN,
        )?;
        leaf(
            env,
            out,
            &peer_ca,
            &CertSpec {
                cert_path: layout::RELAY_PEER_CERT.into(),
                key_path: layout::RELAY_PEER_KEY.into(),
                common_name: layout::PEER_SERVER_NAME.into(),
                sans: vec![San::Dns(layout::PEER_SERVER_NAME.into())],
                usage: Usage::Peer,
                lifetime: LEAF_LIFETIME,
            },
        )?;
        out.insert(
            layout::RELAY_PEER_CA.into(),
            Artifact::text(peer_ca.cert_pem.clone()),
        );
    }

    for (name, database) in &model.databases {
        let DatabaseKind::SelfHosted { server_names, .. } = &database.kind else {
            continue;
        };
        let common_name = server_names
            .first()
            .cloned()
            .unwrap_or_else(|| name.clone());
        leaf(
            env,
            out,
            &server_ca,
            &CertSpec {
                cert_path: layout::database_file(name, "server.crt"),
                key_path: layout::database_file(name, "server.key"),
                common_name,
                sans: server_names.iter().map(|n| San::parse(n)).collect(),
                usage: Usage::Server,
                lifetime: LEAF_LIFETIME,
            },
        )?;
        out.insert(
            layout::database_file(name, "client-ca.crt"),
            Artifact::text(client_ca.cert_pem.clone()),
        );
    }
    Ok(())
}

/// Keeps or issues one self-signed CA and records it in `out`.
fn ca(
    env: &Env,
    out: &mut Artifacts,
    cert_path: &str,
    key_path: &str,
    common_name: &str,
) -> Result<Ca, PkiError> {
    let spec = CertSpec {
        cert_path: cert_path.into(),
        key_path: key_path.into(),
        common_name: common_name.into(),
        sans: Vec::new(),
        usage: Usage::Ca,
        lifetime: CA_LIFETIME,
    };
    let kept = match (env.existing_bytes(cert_path), env.existing_bytes(key_path)) {
        (Some(cert), Some(key)) => {
            let parsed = parse_pem_cert(cert).ok();
            match parsed {
                Some(CaCert {
                    der,
                    key_id,
                    subject_raw,
                }) if still_valid(&spec, env.now, &der, key, None) => Some(Ca {
                    cert_pem: String::from_utf8_lossy(cert).into_owned(),
                    cert_der: der,
                    key_id,
                    subject_raw,
                    key_path: key_path.into(),
                    key_pem: String::from_utf8_lossy(key).into_owned(),
                    reissued: false,
                    key: OnceCell::new(),
                }),
                _ => None,
            }
        }
        _ => None,
    };
    let ca = match kept {
        Some(ca) => ca,
        None => {
            let key = env.generate_key()?;
            let params = params(&spec, env.now, &key)?;
            let cert = params.self_signed(&key).map_err(|source| PkiError::Sign {
                path: cert_path.into(),
                source,
            })?;
            let cert_pem = cert.pem();
            let CaCert {
                der,
                key_id,
                subject_raw,
            } = parse_pem_cert(cert_pem.as_bytes()).map_err(|reason| PkiError::BadCertificate {
                path: cert_path.into(),
                reason,
            })?;
            Ca {
                cert_pem,
                cert_der: der,
                key_id,
                subject_raw,
                key_path: key_path.into(),
                key_pem: key.serialize_pem(),
                reissued: true,
                key: OnceCell::from(key),
            }
        }
    };
    out.insert(cert_path.into(), Artifact::text(ca.cert_pem.clone()));
    out.insert(key_path.into(), Artifact::secret(ca.key_pem.clone()));
    Ok(ca)
}

/// Keeps or issues one certificate signed by `ca`, and records it (and its key) in `out`.
fn leaf(env: &Env, out: &mut Artifacts, ca: &Ca, spec: &CertSpec) -> Result<(), PkiError> {
    if !ca.reissued
        && let (Some(cert), Some(key)) = (
            env.existing_bytes(&spec.cert_path),
            env.existing_bytes(&spec.key_path),
        )
        && let Ok(der) = pem_contents(cert, "CERTIFICATE")
        && still_valid(spec, env.now, &der, key, Some(ca))
    {
        out.insert(
            spec.cert_path.clone(),
            Artifact::text(String::from_utf8_lossy(cert)),
        );
        out.insert(spec.key_path.clone(), Artifact::secret(key.to_vec()));
        return Ok(());
    }
    let key = env.generate_key()?;
    let cert_pem = sign(spec, env.now, &key, ca)?;
    out.insert(spec.cert_path.clone(), Artifact::text(cert_pem));
    out.insert(spec.key_path.clone(), Artifact::secret(key.serialize_pem()));
    Ok(())
}

fn sign(spec: &CertSpec, now: OffsetDateTime, key: &KeyPair, ca: &Ca) -> Result<String, PkiError> {
    let params = params(spec, now, key)?;
    let issuer = ca.issuer()?;
    let cert = params
        .signed_by(key, &issuer)
        .map_err(|source| PkiError::Sign {
            path: spec.cert_path.clone(),
            source,
        })?;
    Ok(cert.pem())
}

/// rcgen parameters for `spec`, valid from `now - BACKDATE` for `spec.lifetime`.
fn params(
    spec: &CertSpec,
    now: OffsetDateTime,
    key: &KeyPair,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, spec.common_name.as_str());
    params.distinguished_name = name;
    params.not_before = now - BACKDATE;
    params.not_after = now + spec.lifetime;
    for san in &spec.sans {
        params.subject_alt_names.push(match san {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(dns) => {
                SanType::DnsName(dns.clone().try_into().map_err(|source| PkiError::BadName {
                    path: spec.cert_path.clone(),
                    name: dns.clone(),
                    source,
                })?)
            }
        });
    }
    // A serial unique per issuance: the key, the subject and the instant, hashed.
    let mut hash = Sha256::new();
    hash.update(key.public_key_raw());
    hash.update(spec.common_name.as_bytes());
    hash.update(now.unix_timestamp_nanos().to_be_bytes());
    let mut serial = hash.finalize()[..16].to_vec();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    match spec.usage {
        Usage::Ca => {
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        }
        Usage::Server | Usage::Client | Usage::Peer => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = match spec.usage {
                Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
                Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
                _ => vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            };
        }
    }
    Ok(params)
}

/// The DER inside the first PEM block of `bytes`, which must carry `label`.
fn pem_contents(bytes: &[u8], label: &str) -> Result<Vec<u8>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(bytes).map_err(|e| e.to_string())?;
    if pem.label != label {
        return Err(format!("expected a PEM {label}, found {}", pem.label));
    }
    Ok(pem.contents)
}

/// What signing and issuer checks need from a CA certificate.
struct CaCert {
    der: Vec<u8>,
    key_id: Vec<u8>,
    subject_raw: Vec<u8>,
}

/// DER, subject key identifier and raw subject of a PEM certificate.
fn parse_pem_cert(bytes: &[u8]) -> Result<CaCert, String> {
    let der = pem_contents(bytes, "CERTIFICATE")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let key_id = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .ok_or("the certificate has no subject key identifier")?;
    let subject_raw = cert.subject().as_raw().to_vec();
    Ok(CaCert {
        der,
        key_id,
        subject_raw,
    })
}

/// Whether the certificate `der` (with its key file `key_pem`) still says exactly what `spec`
/// asks, was issued by `ca` (self-signed when `None`), and is outside its renewal window.
fn still_valid(
    spec: &CertSpec,
    now: OffsetDateTime,
    der: &[u8],
    key_pem: &[u8],
    ca: Option<&Ca>,
) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    says(spec, &cert)
        && issued_by(&cert, ca)
        && key_matches(&cert, key_pem)
        && outside_renewal_window(&cert, now)
}

/// Subject, names, usage and algorithm match the spec.
fn says(spec: &CertSpec, cert: &X509Certificate<'_>) -> bool {
    let cns: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .collect();
    if cns != [spec.common_name.as_str()] || cert.subject().iter().count() != 1 {
        return false;
    }
    if cert.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256
        || cert.public_key().algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY
    {
        return false;
    }
    let sans: Vec<San> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(San::Dns((*dns).to_string())),
                GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(San::Ip),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return false,
    };
    if sans != spec.sans {
        return false;
    }
    let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
    match spec.usage {
        Usage::Ca => cert.is_ca(),
        Usage::Server => !cert.is_ca() && eku.is_some_and(|e| e.server_auth && !e.client_auth),
        Usage::Client => !cert.is_ca() && eku.is_some_and(|e| e.client_auth && !e.server_auth),
        Usage::Peer => !cert.is_ca() && eku.is_some_and(|e| e.client_auth && e.server_auth),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The certificate names `ca` as its issuer (subject and key identifier), or is self-issued.
fn issued_by(cert: &X509Certificate<'_>, ca: Option<&Ca>) -> bool {
    let Some(ca) = ca else {
        return cert.issuer().as_raw() == cert.subject().as_raw();
    };
    let aki = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        });
    cert.issuer().as_raw() == ca.subject_raw.as_slice() && aki.as_deref() == Some(&ca.key_id[..])
}

/// The key file holds the private key of the certificate's public key. PKCS#8 P-256 keys as
/// rcgen (ring) writes them embed the public point, so finding it there proves the pair
/// without the cost of deriving it; a key written otherwise fails the check and is reissued.
fn key_matches(cert: &X509Certificate<'_>, key_pem: &[u8]) -> bool {
    let point = &cert.public_key().subject_public_key.data;
    if point.len() != 65 {
        return false;
    }
    match pem_contents(key_pem, "PRIVATE KEY") {
        Ok(der) => der.windows(point.len()).any(|w| w == &point[..]),
        Err(_) => false,
    }
}

/// Not yet in the last third of its life (and not expired).
fn outside_renewal_window(cert: &X509Certificate<'_>, now: OffsetDateTime) -> bool {
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if not_after <= not_before {
        return false;
    }
    let renew_at = not_before + (not_after - not_before) * 2 / 3;
    now < renew_at
}

/// A person's certificate and key, from `dbward cert issue`.
pub struct PersonCert {
    pub cert_pem: String,
    /// PKCS#8 PEM; secret.
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

/// Never prints the key.
impl std::fmt::Debug for PersonCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"(sensitive)")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Signs a client certificate for person `name` (CN = name, clientAuth) with the users CA
/// (`ca_cert_pem`, `ca_key_pem` as written under `--out`), valid for `ttl` from `env.now`.
pub fn issue_person(
    env: &Env,
    ca_cert_pem: &[u8],
    ca_key_pem: &[u8],
    name: &str,
    ttl: Duration,
) -> Result<PersonCert, PkiError> {
    let CaCert {
        der: cert_der,
        key_id,
        subject_raw,
    } = parse_pem_cert(ca_cert_pem).map_err(|reason| PkiError::BadCertificate {
        path: layout::USERS_CA_CERT.into(),
        reason,
    })?;
    let ca = Ca {
        cert_pem: String::from_utf8_lossy(ca_cert_pem).into_owned(),
        cert_der,
        key_id,
        subject_raw,
        key_path: layout::USERS_CA_KEY.into(),
        key_pem: String::from_utf8_lossy(ca_key_pem).into_owned(),
        reissued: false,
        key: OnceCell::new(),
    };
    let spec = CertSpec {
        cert_path: "postgresql.crt".into(),
        key_path: "postgresql.key".into(),
        common_name: name.into(),
        sans: Vec::new(),
        usage: Usage::Client,
        lifetime: ttl,
    };
    let key = env.generate_key()?;
    let cert_pem = sign(&spec, env.now, &key, &ca)?;
    Ok(PersonCert {
        cert_pem,
        key_pem: key.serialize_pem(),
        not_after: env.now + ttl,
    })
}

#[cfg(test)]
pub(crate) mod tests;

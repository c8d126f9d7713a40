//! TLS for both sides of the relay: the server config clients meet, the post-handshake check of
//! their certificate, and the client configs used towards upstreams.
//!
//! Everything here is built once per config load (see [`crate::state::Loaded`]), never per
//! session: building a rustls config parses PEM files and certificate stores.
//!
//! **Why the client certificate is verified after the handshake.** A failed certificate check
//! inside the handshake ends in a bare TLS alert (`certificate unknown`), which tells a person
//! nothing. Instead, the handshake asks for a certificate and checks its proof of possession
//! (the CertificateVerify signature), and [`ClientCertCheck::check`] then verifies the chain
//! against the users' CA with rustls' own WebPKI verifier. A session whose check fails is refused
//! with a PostgreSQL ErrorResponse that says what is wrong with the certificate; no byte of it is
//! ever relayed upstream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::verified::VerifiedChains;

/// The ALPN protocol name PostgreSQL 17 uses for direct TLS (`sslnegotiation=direct`).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read certificate {path}: {reason}; check the path and that the relay may read it"
    )]
    Cert { path: PathBuf, reason: String },
    #[error("{path} holds no certificate; regenerate it with `dbward apply`")]
    NoCert { path: PathBuf },
    #[error(
        "cannot read private key {path}: {reason}; check the path and that the relay may read it"
    )]
    Key { path: PathBuf, reason: String },
    #[error("invalid CA certificate in {path}: {reason}; regenerate it with `dbward apply`")]
    Ca { path: PathBuf, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider both sides use: ring, with the key-exchange groups reordered so that
/// P-256 comes first. PostgreSQL's default `ssl_ecdh_curve` is `prime256v1`, and offering
/// X25519 first would cost every upstream handshake a HelloRetryRequest round trip.
/// AES-128-GCM comes first among the cipher suites: every byte of a session is decrypted and
/// encrypted again by the relay, and AES-128 does that about a third faster than AES-256 at
/// a security level that is not the weak point of anything here.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{default_provider, kx_group};
    let mut provider = default_provider();
    provider.kx_groups = vec![kx_group::SECP256R1, kx_group::X25519, kx_group::SECP384R1];
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
            _ => 2,
        });
    Arc::new(provider)
}

/// The provider for upstream handshakes: [`provider`], offering TLS 1.3 with AES-128-GCM-SHA256
/// only. PostgreSQL (OpenSSL, `ssl_prefer_server_ciphers = on`) picks by its own order, which
/// puts AES-256-GCM-SHA384 first whenever the client offers it, and SHA-384 (the key schedule
/// and the transcript hash of every handshake) has no hardware help where SHA-256 has. Every
/// TLS 1.3 server must implement AES-128-GCM-SHA256 (RFC 8446, section 9.1); one configured
/// without it is retried with [`provider`] (see [`UpstreamTls`]).
pub fn upstream_provider() -> Arc<CryptoProvider> {
    let mut provider = (*provider()).clone();
    provider.cipher_suites.retain(|suite| {
        suite.version() != &rustls::version::TLS13
            || suite.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    });
    Arc::new(provider)
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads a PEM private key. The error never includes key material.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A root store holding every certificate of a PEM CA bundle.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Ca {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The server-side TLS of the relay, built once per config load.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Used for every client handshake.
    pub config: Arc<ServerConfig>,
    /// Verifies the client's certificate chain once the handshake is done.
    pub check: Arc<ClientCertCheck>,
}

impl ServerTls {
    /// Builds the server config: our certificate, a client certificate requested (and checked
    /// by [`ClientCertCheck`]), no TLS 1.3 tickets and no session cache (libpq never resumes, so
    /// both would only cost memory and CPU), and ALPN `postgresql` for direct TLS.
    pub fn build(cert: &Path, key: &Path, client_ca: &Path) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let roots = Arc::new(load_roots(client_ca)?);
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Ca {
                path: client_ca.to_owned(),
                reason: e.to_string(),
            })?;
        let check = Arc::new(ClientCertCheck {
            inner,
            verified: VerifiedChains::default(),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(check.clone())
            .with_single_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Key {
                path: key.to_owned(),
                reason: e.to_string(),
            })?;
        // Our cipher order (AES-128-GCM first), not the client's, picks the suite.
        config.ignore_client_order = true;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            check,
        })
    }
}

/// Asks for a client certificate during the handshake and verifies it afterwards.
///
/// As a rustls verifier it accepts any chain (and no chain) but checks the handshake signature,
/// so a client that presents a certificate proves it holds the key. [`ClientCertCheck::check`]
/// must be called before the session is used; the session code does so before anything else.
#[derive(Debug)]
pub struct ClientCertCheck {
    inner: Arc<dyn ClientCertVerifier>,
    /// Chains verified before, with what they carry (see [`crate::verified`]).
    verified: VerifiedChains<ClientCert>,
}

/// What a verified client certificate says: who, and when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject common name of the end-entity certificate: the person.
    pub identity: String,
    /// The end-entity certificate's `notBefore`, seconds since the epoch (what
    /// `certificates-issued-after` is compared with).
    pub not_before: i64,
    /// The earliest `notAfter` of the chain, seconds since the epoch: when it stops working.
    pub not_after: i64,
}

/// Why a client certificate was refused, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    #[error(
        "no client certificate was presented; connect with sslcert= and sslkey= set to the \
         certificate from `dbward cert issue`"
    )]
    Missing,
    #[error("the client certificate has expired; get a new one with `dbward cert issue`")]
    Expired,
    #[error("the client certificate is not valid yet; check the clock of this machine")]
    NotYetValid,
    #[error(
        "the client certificate was not issued by this relay's users' CA; get one with \
         `dbward cert issue` from the manifest this relay runs"
    )]
    UnknownIssuer,
    #[error("the client certificate was refused ({0}); get a new one with `dbward cert issue`")]
    Invalid(String),
    #[error("the client certificate has no subject common name (CN) naming a person")]
    NoCommonName,
}

impl ClientCertCheck {
    /// Verifies the peer's chain against the users' CA now and returns the identity (the
    /// subject common name of the end-entity certificate) and the chain's validity.
    pub fn check(&self, chain: Option<&[CertificateDer<'_>]>) -> Result<ClientCert, CertRefusal> {
        let Some((end_entity, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Err(CertRefusal::Missing);
        };
        let now = UnixTime::now();
        self.verified
            .get_or_verify(end_entity, intermediates, b"", now, || {
                self.inner
                    .verify_client_cert(end_entity, intermediates, now)
                    .map_err(refusal)?;
                let identity = common_name(end_entity).ok_or(CertRefusal::NoCommonName)?;
                let not_before = x509_parser::parse_x509_certificate(end_entity.as_ref())
                    .map(|(_, cert)| cert.validity().not_before.timestamp())
                    .map_err(|e| CertRefusal::Invalid(e.to_string()))?;
                let not_after = crate::verified::chain_not_after(end_entity, intermediates)
                    .and_then(|t| i64::try_from(t).ok())
                    .ok_or_else(|| CertRefusal::Invalid("unreadable validity".into()))?;
                Ok(ClientCert {
                    identity,
                    not_before,
                    not_after,
                })
            })
    }
}

/// Why rustls refused a client chain, in words a person can act on.
fn refusal(error: rustls::Error) -> CertRefusal {
    match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CertRefusal::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertRefusal::NotYetValid
            }
            CertificateError::UnknownIssuer => CertRefusal::UnknownIssuer,
            other => CertRefusal::Invalid(format!("{other:?}")),
        },
        other => CertRefusal::Invalid(other.to_string()),
    }
}

/// The subject CN of a DER certificate.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

impl ClientCertVerifier for ClientCertCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // A missing certificate is refused after the handshake with a readable message.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to `ClientCertCheck::check`, which every session runs first.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client side of the TLS to one upstream, built once per config load.
///
/// Handshakes offer [`upstream_provider`]'s suites (TLS 1.3 with AES-128-GCM-SHA256 only). A
/// server configured without that suite answers `handshake_failure`; the session is then
/// dialled again with every suite of [`provider`], and once that succeeds the upstream is
/// remembered as refusing the fast offer, so it costs one failed handshake per config load,
/// not one per session.
#[derive(Debug)]
pub struct UpstreamTls {
    fast: Arc<ClientConfig>,
    full: Arc<ClientConfig>,
    refuses_fast: AtomicBool,
}

impl UpstreamTls {
    /// Builds both configs with `build`, which is given the provider to use.
    fn new(
        build: impl Fn(Arc<CryptoProvider>) -> Result<ClientConfig, TlsError>,
    ) -> Result<UpstreamTls, TlsError> {
        let finish = |mut config: ClientConfig| {
            // PostgreSQL does not resume sessions; keeping tickets would only cost memory.
            config.resumption = rustls::client::Resumption::disabled();
            Arc::new(config)
        };
        Ok(UpstreamTls {
            fast: finish(build(upstream_provider())?),
            full: finish(build(provider())?),
            refuses_fast: AtomicBool::new(false),
        })
    }

    /// The config for the next handshake, and whether it is the fast offer.
    pub fn config(&self) -> (&Arc<ClientConfig>, bool) {
        if self.refuses_fast.load(Ordering::Relaxed) {
            (&self.full, false)
        } else {
            (&self.fast, true)
        }
    }

    /// The config with every suite, for a retry after [`is_refusal`].
    pub fn full(&self) -> &Arc<ClientConfig> {
        &self.full
    }

    /// Records that the server completed a handshake with the full offer after refusing the
    /// fast one. Returns true the first time, so the caller logs it once.
    pub fn remember_refusal(&self) -> bool {
        !self.refuses_fast.swap(true, Ordering::Relaxed)
    }
}

/// True when a handshake failed because the server refused what was offered (a
/// `handshake_failure` alert, which is what OpenSSL sends when no suite is shared).
pub fn is_refusal(error: &std::io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure
        ))
    )
}

/// The TLS for one upstream: trust `ca`, present `identity` when given (mutual TLS).
pub fn upstream_client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<UpstreamTls, TlsError> {
    let roots = Arc::new(load_roots(ca)?);
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Ca {
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    // One verifier for both configs, so that a chain verified once is remembered for both.
    let verifier = Arc::new(UpstreamCertCheck {
        inner,
        verified: VerifiedChains::default(),
    });
    let identity = match identity {
        Some((cert, key)) => Some((load_certs(cert)?, load_key(key)?, key)),
        None => None,
    };
    UpstreamTls::new(|provider| {
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        match &identity {
            Some((certs, key, key_path)) => builder
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| TlsError::Key {
                    path: key_path.to_path_buf(),
                    reason: e.to_string(),
                }),
            None => Ok(builder.with_no_client_auth()),
        }
    })
}

/// The TLS for an upstream whose certificate chains to a well-known public root (Mozilla's
/// list), without a client certificate.
pub fn public_roots_upstream() -> Result<UpstreamTls, TlsError> {
    UpstreamTls::new(public_roots_config)
}

/// A client config trusting the well-known public roots (Mozilla's list, from webpki-roots).
pub fn public_roots_config(provider: Arc<CryptoProvider>) -> Result<ClientConfig, TlsError> {
    let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The TLS for a Cloud SQL instance, verified the way Google's connectors do: the chain must
/// lead to `roots` (the instance's server CA), and the certificate must name the instance —
/// the SAN dNSName `dns_name` when the instance has one, else the subject CN
/// `project:instance`. The address dialled is never checked against the certificate (Cloud
/// SQL certificates carry no IP), and nothing is ever skipped. `identity` is the client
/// certificate to present (an ephemeral one from Cloud SQL Admin), if any.
pub fn cloudsql_upstream(
    roots: RootCertStore,
    instance_cn: String,
    dns_name: Option<String>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<UpstreamTls, TlsError> {
    let verifier = Arc::new(
        dbward_cloud::gcp::InstanceCertCheck::new(roots, provider(), instance_cn, dns_name)
            .map_err(|e| TlsError::Config(e.to_string()))?,
    );
    UpstreamTls::new(|provider| {
        let identity = identity
            .as_ref()
            .map(|(certs, key)| (certs.clone(), key.clone_key()));
        dbward_cloud::gcp::verify::client_config(provider, verifier.clone(), identity)
            .map_err(TlsError::Config)
    })
}

/// The roots of a PEM CA bundle given as text (Cloud SQL Admin's `serverCaCert`).
pub fn roots_from_pem(pem: &str, what: &str) -> Result<RootCertStore, TlsError> {
    dbward_cloud::gcp::verify::roots_from_pem(pem.as_bytes(), what).map_err(TlsError::Config)
}

/// rustls' WebPKI verification of upstream servers (`verify-full`), remembering chains it
/// accepted for a server name (see [`crate::verified`]). The handshake signature is checked on
/// every connection.
#[derive(Debug)]
struct UpstreamCertCheck {
    inner: Arc<WebPkiServerVerifier>,
    verified: VerifiedChains<()>,
}

impl ServerCertVerifier for UpstreamCertCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = server_name.to_str();
        self.verified
            .get_or_verify(end_entity, intermediates, name.as_bytes(), now, || {
                self.inner
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                    .map(drop)
            })
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_offers_p256_and_aes_128_first() {
        let provider = provider();
        assert_eq!(
            provider.kx_groups[0].name(),
            rustls::NamedGroup::secp256r1,
            "PostgreSQL accepts only P-256 by default"
        );
        assert_eq!(
            provider.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(
            provider.cipher_suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len(),
            "reordered, nothing dropped"
        );
    }

    #[test]
    fn upstreams_are_offered_aes_128_only_in_tls_13_and_every_tls_12_suite() {
        let full = provider();
        let fast = upstream_provider();
        let tls13: Vec<_> = fast
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .map(|s| s.suite())
            .collect();
        assert_eq!(tls13, [rustls::CipherSuite::TLS13_AES_128_GCM_SHA256]);
        let tls12 = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS12)
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(tls12(&fast), tls12(&full));
        assert_eq!(fast.kx_groups[0].name(), rustls::NamedGroup::secp256r1);
    }

    #[test]
    fn only_a_handshake_failure_alert_is_a_refusal() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert!(is_refusal(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure
        ))));
        assert!(!is_refusal(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
        ))));
        assert!(!is_refusal(&io(rustls::Error::InvalidCertificate(
            CertificateError::Expired
        ))));
        assert!(!is_refusal(&std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        )));
    }
}

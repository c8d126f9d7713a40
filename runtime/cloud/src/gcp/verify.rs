//! Verifying a Cloud SQL instance's server certificate: by the instance's name, not the address.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The roots of a PEM CA bundle (Cloud SQL Admin's `serverCaCert`, or a `ca-file`); `what`
/// names it in the error. At least one certificate is required.
pub fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{what}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{what}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{what} holds no certificate"));
    }
    Ok(roots)
}

/// A TLS client config for a Cloud SQL instance: the server verified by `check` (never by the
/// address dialled), presenting `identity` (an ephemeral client certificate and its key) when
/// given. Shared by the relay and `dbward plan --live`.
pub fn client_config(
    provider: Arc<CryptoProvider>,
    check: Arc<InstanceCertCheck>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(check);
    match identity {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("the Cloud SQL client certificate is unusable: {e}")),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Verifies a Cloud SQL server certificate the way Google's connectors do: the chain must lead
/// to the instance's server CA, and the certificate must name the instance — the SAN dNSName
/// when the instance has one, else the subject CN `project:instance`. The address dialled is
/// never checked against the certificate (Cloud SQL certificates carry no IP), and nothing is
/// ever skipped. Shared by the relay and `dbward plan --live`.
#[derive(Debug)]
pub struct InstanceCertCheck {
    roots: RootCertStore,
    /// For the handshake signatures.
    inner: Arc<WebPkiServerVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
    instance_cn: String,
    dns_name: Option<String>,
}

impl InstanceCertCheck {
    /// A check against `roots` for the instance named `instance_cn` (`project:instance`) or,
    /// when it has one, `dns_name`, with `provider`'s signature algorithms.
    pub fn new(
        roots: RootCertStore,
        provider: Arc<CryptoProvider>,
        instance_cn: String,
        dns_name: Option<String>,
    ) -> Result<InstanceCertCheck, rustls::Error> {
        let algorithms = provider.signature_verification_algorithms;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider)
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(InstanceCertCheck {
            roots,
            inner,
            algorithms,
            instance_cn,
            dns_name,
        })
    }

    /// Whether `end_entity` names the instance.
    fn names_instance(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let refuse = |found: String| {
            rustls::Error::General(format!(
                "the server certificate does not name Cloud SQL instance {}; it names {found} \
                 (check `instance` and `host` in the manifest: the address may be another \
                 instance's)",
                self.dns_name.as_deref().unwrap_or(&self.instance_cn)
            ))
        };
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        match &self.dns_name {
            Some(dns) => {
                let sans: Vec<String> = cert
                    .subject_alternative_name()
                    .ok()
                    .flatten()
                    .map(|ext| {
                        ext.value
                            .general_names
                            .iter()
                            .filter_map(|n| match n {
                                x509_parser::extensions::GeneralName::DNSName(d) => {
                                    Some(d.trim_end_matches('.').to_ascii_lowercase())
                                }
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if sans.iter().any(|s| s.eq_ignore_ascii_case(dns)) {
                    Ok(())
                } else {
                    Err(refuse(format!("the DNS names {sans:?}")))
                }
            }
            None => {
                let cn = cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .unwrap_or_default();
                if cn == self.instance_cn {
                    Ok(())
                } else {
                    Err(refuse(format!("CN {cn:?}")))
                }
            }
        }
    }
}

impl ServerCertVerifier for InstanceCertCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        self.names_instance(end_entity)?;
        Ok(ServerCertVerified::assertion())
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

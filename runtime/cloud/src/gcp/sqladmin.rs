//! Cloud SQL Admin API: where an instance is and which CA signs its certificate
//! (`connectSettings`), and ephemeral client certificates (`generateEphemeralCert`).

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use hyper::Method;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{Gcp, GcpError, google_error, parse_time};
use crate::cache::Token;
use crate::http::Call;
use crate::secret::Secret;

/// An instance connection name, `project:region:instance` (the project may itself hold a
/// colon, as legacy domain-scoped projects do: `example.com:project:region:instance`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceName {
    pub project: String,
    pub region: String,
    pub instance: String,
}

impl InstanceName {
    pub fn parse(text: &str) -> Result<InstanceName, GcpError> {
        let mut parts = text.rsplitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(instance), Some(region), Some(project))
                if [instance, region, project]
                    .iter()
                    .all(|p| !p.is_empty() && !p.contains(['/', '?', '#', ' '])) =>
            {
                Ok(InstanceName {
                    project: project.to_owned(),
                    region: region.to_owned(),
                    instance: instance.to_owned(),
                })
            }
            _ => Err(GcpError::Invalid(format!(
                "{text:?} is not a Cloud SQL instance connection name; write it \
                 \"project:region:instance\", as `gcloud sql instances describe` shows it"
            ))),
        }
    }

    /// The name the instance's server certificate carries as CN: `project:instance`.
    pub fn certificate_name(&self) -> String {
        format!("{}:{}", self.project, self.instance)
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.project, self.region, self.instance)
    }
}

/// Which of an instance's addresses to dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpType {
    /// `PRIMARY` in the API.
    Public,
    Private,
    /// Private Service Connect: reached by the instance's DNS name.
    Psc,
}

impl IpType {
    /// The manifest's word for it (`cloud-sql ip-type=…`), for messages.
    pub fn name(self) -> &'static str {
        match self {
            IpType::Public => "public",
            IpType::Private => "private",
            IpType::Psc => "psc",
        }
    }
}

/// What `connectSettings` says about an instance.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    /// The CA that signs the instance's server certificate (PEM).
    pub server_ca_pem: String,
    pub addresses: Vec<(IpType, IpAddr)>,
    /// The DNS name the server certificate carries as a SAN, on instances that have one.
    pub dns_name: Option<String>,
    pub psc_enabled: bool,
    pub database_version: Option<String>,
}

impl ConnectSettings {
    /// Where to dial for `kind` (an IP, or the DNS name for PSC), if the instance has one.
    pub fn address(&self, kind: IpType) -> Option<String> {
        match kind {
            IpType::Psc => self.dns_name.clone().filter(|_| self.psc_enabled),
            _ => self
                .addresses
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, ip)| ip.to_string()),
        }
    }

    /// Where to dial for the manifest's `ip-type`: that address and never another type; the
    /// error names what the instance has and what to change.
    pub fn dial(&self, kind: IpType, instance: &InstanceName) -> Result<String, GcpError> {
        self.address(kind).ok_or_else(|| {
            GcpError::Invalid(format!(
                "Cloud SQL instance {instance} has no {kind} address (it has: {}); set `ip-type` \
                 on `cloud-sql` in the manifest to one it has, or give the instance a {kind} \
                 address",
                self.available(),
                kind = kind.name(),
            ))
        })
    }

    /// The address types the instance offers, for messages: "public, private", or "none".
    pub fn available(&self) -> String {
        let kinds: Vec<&str> = [IpType::Public, IpType::Private, IpType::Psc]
            .into_iter()
            .filter(|kind| self.address(*kind).is_some())
            .map(IpType::name)
            .collect();
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        }
    }
}

/// A client certificate Cloud SQL signed for us.
#[derive(Debug, Clone)]
pub struct EphemeralCert {
    pub cert_pem: String,
    pub expires_at: Option<SystemTime>,
}

/// The RSA key pair the relay's ephemeral client certificates certify. Generated once (a
/// 2048-bit key, as Google's connectors use) and kept in memory only; `Debug` shows nothing of
/// it.
pub struct ClientKey {
    /// The private key, PKCS#8 DER (what rustls takes).
    pkcs8_der: Vec<u8>,
    /// The public key, PEM `PUBLIC KEY` (what `generateEphemeralCert` takes).
    public_pem: String,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey([redacted])")
    }
}

impl ClientKey {
    /// The modulus size of the key.
    pub const BITS: usize = 2048;

    /// A fresh key from the operating system's RNG. This takes a noticeable time (tens of
    /// milliseconds in release builds): call it off the session path, once.
    pub fn generate() -> Result<ClientKey, GcpError> {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let failed = |e: String| GcpError::Invalid(format!("cannot make an RSA client key: {e}"));
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, Self::BITS)
            .map_err(|e| failed(e.to_string()))?;
        let pkcs8_der = key
            .to_pkcs8_der()
            .map_err(|e| failed(e.to_string()))?
            .as_bytes()
            .to_vec();
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| failed(e.to_string()))?;
        Ok(ClientKey {
            pkcs8_der,
            public_pem,
        })
    }

    /// The private key, PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }

    /// The public key, PEM.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The TLS client identity presenting `cert_pem`, an ephemeral certificate Cloud SQL
    /// issued for this key (for `instance`, named in the error).
    pub fn identity(
        &self,
        cert_pem: &str,
        instance: &InstanceName,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), GcpError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|chain| !chain.is_empty())
            .ok_or_else(|| {
                GcpError::Invalid(format!(
                    "Cloud SQL Admin returned an ephemeral certificate for instance {instance} \
                     that is not a PEM certificate"
                ))
            })?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8_der.clone()));
        Ok((chain, key))
    }
}

impl Gcp {
    /// `GET {sqladmin}/sql/v1beta4/projects/{project}/instances/{instance}/connectSettings`.
    pub async fn connect_settings(&self, name: &InstanceName) -> Result<ConnectSettings, GcpError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            server_ca_cert: Option<CaCert>,
            #[serde(default)]
            ip_addresses: Vec<Mapping>,
            dns_name: Option<String>,
            #[serde(default)]
            psc_enabled: bool,
            region: Option<String>,
            database_version: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct CaCert {
            cert: String,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Mapping {
            #[serde(rename = "type")]
            kind: String,
            ip_address: String,
        }
        let url = format!(
            "{}/sql/v1beta4/projects/{}/instances/{}/connectSettings",
            self.sql_admin(),
            name.project,
            name.instance
        );
        let body = self.admin_call(Method::GET, &url, None, name).await?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| GcpError::Service {
            what: format!("Cloud SQL Admin connectSettings for {name}"),
            detail: format!("unexpected answer: {e}"),
        })?;
        if let Some(region) = &answer.region
            && region != &name.region
        {
            return Err(GcpError::Invalid(format!(
                "Cloud SQL instance {name} is in region {region}, not {}; fix the region in \
                 `instance` in the manifest",
                name.region
            )));
        }
        let server_ca_pem =
            answer
                .server_ca_cert
                .map(|c| c.cert)
                .ok_or_else(|| GcpError::Service {
                    what: format!("Cloud SQL Admin connectSettings for {name}"),
                    detail: "the answer has no serverCaCert".into(),
                })?;
        let addresses = answer
            .ip_addresses
            .iter()
            .filter_map(|m| {
                let kind = match m.kind.as_str() {
                    "PRIMARY" => IpType::Public,
                    "PRIVATE" => IpType::Private,
                    _ => return None,
                };
                Some((kind, m.ip_address.parse().ok()?))
            })
            .collect();
        Ok(ConnectSettings {
            server_ca_pem,
            addresses,
            dns_name: answer
                .dns_name
                .filter(|d| !d.is_empty())
                .map(|d| d.trim_end_matches('.').to_owned()),
            psc_enabled: answer.psc_enabled,
            database_version: answer.database_version,
        })
    }

    /// `POST {sqladmin}/sql/v1beta4/projects/{project}/instances/{instance}:generateEphemeralCert`:
    /// a client certificate for `public_key_pem` (an RSA public key, PEM `PUBLIC KEY`), bound to
    /// the IAM user whose `login` token is given (the certificate then expires with it).
    pub async fn generate_ephemeral_cert(
        &self,
        name: &InstanceName,
        public_key_pem: &str,
        login: Option<&Secret>,
    ) -> Result<EphemeralCert, GcpError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            ephemeral_cert: Cert,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Cert {
            cert: String,
            expiration_time: Option<String>,
        }
        let url = format!(
            "{}/sql/v1beta4/projects/{}/instances/{}:generateEphemeralCert",
            self.sql_admin(),
            name.project,
            name.instance
        );
        let mut request = serde_json::json!({ "public_key": public_key_pem });
        if let Some(login) = login {
            request["access_token"] = login.expose().into();
        }
        let body = self
            .admin_call(
                Method::POST,
                &url,
                Some(request.to_string().into_bytes()),
                name,
            )
            .await?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| GcpError::Service {
            what: format!("Cloud SQL Admin generateEphemeralCert for {name}"),
            detail: format!("unexpected answer: {e}"),
        })?;
        let expires_at = match answer.ephemeral_cert.expiration_time {
            Some(text) => Some(parse_time(&text).map_err(|detail| GcpError::Service {
                what: format!("Cloud SQL Admin generateEphemeralCert for {name}"),
                detail,
            })?),
            None => None,
        };
        Ok(EphemeralCert {
            cert_pem: answer.ephemeral_cert.cert,
            expires_at,
        })
    }

    /// An ephemeral client certificate for `key` (its PEM in [`Token::secret`], which keeps it
    /// out of `Debug`), bound to the IAM user whose `login` token is given, and expiring no
    /// later than that token: a certificate never outlives the login it rides with.
    pub async fn ephemeral_cert_for(
        &self,
        name: &InstanceName,
        key: &ClientKey,
        login: &Token,
    ) -> Result<Token, GcpError> {
        let cert = self
            .generate_ephemeral_cert(name, key.public_pem(), Some(&login.secret))
            .await?;
        let expires_at = cert
            .expires_at
            .map_or(login.expires_at, |t| t.min(login.expires_at));
        Ok(Token {
            secret: Secret::new(cert.cert_pem),
            expires_at,
        })
    }

    /// One authenticated Cloud SQL Admin call; the body of a 200.
    async fn admin_call(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        name: &InstanceName,
    ) -> Result<Vec<u8>, GcpError> {
        let own = self.own_token().await?;
        let mut call = Call::new(method, url);
        call.bearer = Some(&own.secret);
        call.body = body.map(|b| ("application/json", b));
        let answer = self
            .http()
            .send(call)
            .await
            .map_err(|detail| GcpError::Service {
                what: format!("Cloud SQL Admin call for {name}"),
                detail,
            })?;
        match answer.status {
            200 => Ok(answer.body),
            404 => Err(GcpError::InstanceNotFound {
                instance: name.to_string(),
            }),
            403 => Err(GcpError::InstanceDenied {
                instance: name.to_string(),
                detail: google_error(&answer.body),
            }),
            status => Err(GcpError::Service {
                what: format!("Cloud SQL Admin call for {name}"),
                detail: format!("HTTP {status}: {}", google_error(&answer.body)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_are_rsa_2048_and_ring_can_sign_with_them() {
        let key = ClientKey::generate().unwrap();
        let pair = ring::signature::RsaKeyPair::from_pkcs8(key.pkcs8_der()).unwrap();
        assert_eq!(pair.public().modulus_len() * 8, ClientKey::BITS);
        assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(format!("{key:?}"), "ClientKey([redacted])");
    }

    #[test]
    fn instance_names() {
        let name = InstanceName::parse("acme-prod:us-central1:ledger").unwrap();
        assert_eq!(name.certificate_name(), "acme-prod:ledger");
        assert_eq!(name.to_string(), "acme-prod:us-central1:ledger");
        let legacy = InstanceName::parse("example.com:acme:europe-west1:db").unwrap();
        assert_eq!(legacy.project, "example.com:acme");
        for bad in ["ledger", "p:ledger", "p::i", "p:r:i/x", ""] {
            let error = InstanceName::parse(bad).unwrap_err().to_string();
            assert!(error.contains("project:region:instance"), "{error}");
        }
    }
}

//! The one HTTP/1.1 client every cloud module uses: hyper over TCP, rustls (ring) verified
//! against the public (webpki) roots for `https://`.
//!
//! Credentials travel only over HTTPS. Plain `http://` is accepted for loopback addresses
//! (local test servers) and, when the caller says so, for the cloud's metadata server, which
//! is plain HTTP by design and reached on a link-local address.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::TcpStream;

use crate::secret::Secret;

/// Bound on one exchange, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connecting to a metadata server: off the cloud there is none, and the chain
/// should say so quickly.
const METADATA_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer accepted.
const MAX_RESPONSE: usize = 256 * 1024;

/// An HTTP client; cheap to clone.
#[derive(Clone)]
pub struct Http {
    tls: Arc<ClientConfig>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Http")
    }
}

/// One request. Header values that are credentials are [`Secret`]s.
pub struct Call<'a> {
    pub method: Method,
    pub url: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub bearer: Option<&'a Secret>,
    /// Headers whose values are credentials sent as they are (AWS's container authorization
    /// token, the IMDSv2 session token); never shown.
    pub secret_headers: Vec<(&'static str, &'a Secret)>,
    /// `(content type, bytes)`; the bytes may carry a secret (a JWT, a subject token), so
    /// they are never shown.
    pub body: Option<(&'static str, Vec<u8>)>,
    /// Whether plain HTTP to a non-loopback host is acceptable (the metadata server).
    pub metadata: bool,
}

/// Shows where a request goes, never what it carries: the body may hold a JWT assertion or a
/// subject token, so only its type and size are shown.
impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &self.headers)
            .field("bearer", &self.bearer)
            .field("secret_headers", &self.secret_headers)
            .field(
                "body",
                &self
                    .body
                    .as_ref()
                    .map(|(kind, bytes)| format!("{kind}, {} bytes", bytes.len())),
            )
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl<'a> Call<'a> {
    pub fn new(method: Method, url: &'a str) -> Call<'a> {
        Call {
            method,
            url,
            headers: Vec::new(),
            bearer: None,
            secret_headers: Vec::new(),
            body: None,
            metadata: false,
        }
    }
}

/// An answer of any status. Cloud APIs put what went wrong in the body of a 4xx, so callers
/// map statuses themselves.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// The answer's `Date` header, if it had one, and when (by the local clock) the answer's
    /// head arrived: what AWS's clock-skew correction learns from.
    pub date: Option<(String, SystemTime)>,
}

impl Http {
    /// A client trusting the public (Mozilla) roots.
    pub fn new() -> Result<Http, rustls::Error> {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Http::with_roots(roots)
    }

    /// A client trusting exactly `roots` (tests, private endpoints).
    pub fn with_roots(roots: rustls::RootCertStore) -> Result<Http, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Http { tls: Arc::new(tls) })
    }

    /// Sends `call`; the answer whatever its status, or why there is none. Errors name the
    /// URL, never a header or the body.
    pub async fn send(&self, call: Call<'_>) -> Result<Answer, String> {
        let url = call.url;
        tokio::time::timeout(TIMEOUT, self.exchange(call))
            .await
            .map_err(|_| format!("{url} did not answer within {TIMEOUT:?}"))?
    }

    async fn exchange(&self, call: Call<'_>) -> Result<Answer, String> {
        let url = call.url;
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid endpoint URL {url:?}: {e}"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("endpoint {url} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if call.metadata || is_loopback(&host) => false,
            Some("http") => {
                return Err(format!(
                    "endpoint {url} is plain http://; credentials are only sent over https:// \
                     (plain http is accepted for loopback test servers only)"
                ));
            }
            _ => return Err(format!("endpoint {url} is neither https:// nor http://")),
        };
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let connect = TcpStream::connect((host.as_str(), port));
        let tcp = if call.metadata {
            tokio::time::timeout(METADATA_CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    format!(
                        "cannot connect to {url}: no answer within {METADATA_CONNECT_TIMEOUT:?}"
                    )
                })?
        } else {
            connect.await
        }
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let mut request = Request::builder()
            .method(call.method)
            .uri(path)
            .header("host", authority)
            .header("user-agent", concat!("dbward/", env!("CARGO_PKG_VERSION")));
        for (name, value) in &call.headers {
            request = request.header(*name, value.as_str());
        }
        for (name, value) in &call.secret_headers {
            request = request.header(*name, value.expose());
        }
        if let Some(token) = call.bearer {
            request = request.header("authorization", format!("Bearer {}", token.expose()));
        }
        let payload = match call.body {
            Some((content_type, bytes)) => {
                request = request.header("content-type", content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|_| format!("cannot build the request to {url}"))?;
        if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("endpoint {url} has an invalid host name: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {url} failed: {e}"))?;
            send(TokioIo::new(stream), request, url).await
        } else {
            send(TokioIo::new(tcp), request, url).await
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn send<T>(io: TokioIo<T>, request: Request<Full<Bytes>>, url: &str) -> Result<Answer, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP with {url} failed: {e}"))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP with {url} failed: {e}"))?;
        let received = SystemTime::now();
        let date = response
            .headers()
            .get(hyper::header::DATE)
            .and_then(|d| d.to_str().ok())
            .map(|d| (d.to_owned(), received));
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the answer of {url} failed: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            body: body.to_vec(),
            date,
        })
    }
    .await;
    driver.abort();
    result
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_never_go_over_plain_http_to_a_remote_host() {
        let http = Http::new().unwrap();
        let secret = Secret::new("ya29.secret");
        let mut call = Call::new(Method::GET, "http://sqladmin.example.com/x");
        call.bearer = Some(&secret);
        let error = http.send(call).await.unwrap_err();
        assert!(error.contains("only sent over https://"), "{error}");
        assert!(!error.contains("ya29"), "{error}");
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("LOCALHOST"));
        assert!(!is_loopback("169.254.169.254"));
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn a_call_never_shows_its_body() {
        let mut call = Call::new(Method::POST, "https://oauth2.example/token");
        call.body = Some((
            "application/x-www-form-urlencoded",
            b"assertion=eyJhbGciOiJSUzI1NiJ9.secret".to_vec(),
        ));
        let shown = format!("{call:?}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(shown.contains("37 bytes"), "{shown}");
    }
}

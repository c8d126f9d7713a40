//! The operations HTTP endpoint on `relay.metrics`: `/metrics` (Prometheus text), `/livez` and
//! `/readyz`.
//!
//! It is deliberately tiny — HTTP/1.1 only, three fixed paths, no request bodies — and runs on
//! the same runtime as the relay. It serves until the process exits, so `/readyz` can say
//! "draining" while sessions finish after SIGTERM.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::ops::Health;
use crate::state::Shared;

/// A scraper that sends no complete request head within this time is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the endpoint on `listener` forever (until the task is dropped).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, health: Arc<Health>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Usually EMFILE: back off instead of spinning, keep serving afterwards.
                tracing::warn!(%error, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &shared, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "metrics endpoint connection ended with an error");
            }
        });
    }
}

/// The response to one request.
fn respond(request: &Request<Incoming>, shared: &Shared, health: &Health) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut body = String::with_capacity(8192);
            shared.metrics.render(&mut body);
            shared.audit.render_metrics(&mut body);
            health.render_metrics(&mut body);
            config_info(&mut body, &shared.current().config.checksum);
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        // Alive as long as the runtime answers at all.
        "/livez" => text(StatusCode::OK, "ok\n".into()),
        // A config is always loaded once the endpoint runs (the relay does not start without
        // one), so readiness only turns false while draining.
        "/readyz" => {
            if health.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            } else {
                text(StatusCode::OK, "ready\n".into())
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; the endpoints are /metrics, /livez and /readyz\n".into(),
        ),
    }
}

/// `dbward_config_info{checksum="sha256:…"} 1`: which frozen config new sessions use now, so a
/// dashboard (or an operator after SIGHUP) can see that a reload took effect.
fn config_info(out: &mut String, checksum: &str) {
    use std::fmt::Write as _;
    let name = "dbward_config_info";
    // A checksum is `sha256:` and hex digits; anything else is dropped rather than escaped, so
    // the label can never break the exposition format.
    let checksum: String = checksum
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ':')
        .collect();
    let _ = writeln!(
        out,
        "# HELP {name} The frozen config new sessions use, by checksum.\n# TYPE {name} gauge\n\
         {name}{{checksum=\"{checksum}\"}} 1"
    );
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

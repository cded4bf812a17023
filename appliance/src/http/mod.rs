//! The HTTPS front door shared by the console and the API: TLS (rustls),
//! HTTP/1.1 (hyper), request bodies bounded before they are read, and the
//! dispatch to `api`, `web` and embedded assets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use lifeboat_core::ops::Ops;

pub mod routing;

/// Largest request body accepted by any endpoint.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub type Body = Full<Bytes>;

/// A request with its body already read (and bounded).
pub struct Req {
    pub method: hyper::Method,
    pub path: String,
    pub query: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body's media type (`Content-Type` without parameters), lower-case.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type")
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Query string parameters (`a=1&b=2`), URL-decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_str(&self.query).unwrap_or_default()
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    }

    pub fn source(&self) -> String {
        self.peer.ip().to_string()
    }
}

pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A boot verification's screenshot (PNG, or PPM from an older QEMU).
pub fn screenshot(media_type: &str, bytes: Vec<u8>) -> Response<Body> {
    let media_type = match media_type {
        "image/png" => "image/png",
        _ => "image/x-portable-pixmap",
    };
    response(StatusCode::OK, media_type, bytes)
}

/// The HTTP status an operation's refusal answers with, in the API and the
/// console alike.
pub fn status_of(e: &lifeboat_core::ops::OpsError) -> StatusCode {
    use lifeboat_core::ops::OpsError::*;
    match e {
        Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Forbidden(_) => StatusCode::FORBIDDEN,
        NotFound(_) => StatusCode::NOT_FOUND,
        Conflict(_) => StatusCode::CONFLICT,
        BadRequest(_) => StatusCode::BAD_REQUEST,
        Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    response(status, "application/json", value.to_string())
}

pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

pub fn redirect(location: &str) -> Response<Body> {
    let mut r = response(StatusCode::SEE_OTHER, "text/plain", "");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r
}

fn security_headers(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        "strict-transport-security",
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
}

/// Past this many bytes an oversized body is no longer drained: the
/// connection is closed instead. Up to it, the client gets a clean 413.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
/// A request's headers must arrive within this (also on a kept-alive
/// connection), and its body within [`BODY_DEADLINE`]: a slow client ties up
/// a connection for at most that long.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);
const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// Connections served at once, in all and from one source address; more
/// are closed at once.
const MAX_CONNECTIONS: usize = 512;
const MAX_CONNECTIONS_PER_SOURCE: usize = 32;

async fn read_request(req: Request<Incoming>, peer: SocketAddr) -> Result<Req, Response<Body>> {
    let (parts, mut body) = req.into_parts();
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    };
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + BODY_DEADLINE;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "the request body did not arrive within {} s",
                        BODY_DEADLINE.as_secs()
                    ),
                ))
            }
        };
        let frame = frame.map_err(|e| {
            json_error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read request body: {e}"),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen > DRAIN_LIMIT {
                return Err(too_large());
            }
            if seen <= MAX_BODY_BYTES {
                buf.extend_from_slice(data);
            }
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers,
        body: Bytes::from(buf),
        peer,
    })
}

async fn handle(
    ops: Arc<Ops>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let mut resp = match read_request(req, peer).await {
        Err(r) => r,
        Ok(req) if req.path.starts_with("/api/") => crate::api::handle(&ops, req).await,
        Ok(req) if req.path == "/RPC2" => crate::xmlrpc::handle(&ops, req).await,
        // Where Prometheus looks by default; the same route as /api/v1/metrics.
        Ok(mut req) if req.path == "/metrics" => {
            req.path = "/api/v1/metrics".into();
            crate::api::handle(&ops, req).await
        }
        Ok(req) if req.path.starts_with("/assets/") => crate::web::assets::serve(&req.path),
        Ok(req) if req.path.starts_with("/downloads/") => crate::web::downloads::serve(&ops, &req),
        Ok(req) => crate::web::handle(&ops, req).await,
    };
    security_headers(&mut resp);
    Ok(resp)
}

pub fn tls_acceptor(ops: &Ops) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(Arc::new(ops.web_tls_config()?)))
}

/// For the fuzz target: `bytes` as a request (`METHOD TARGET`, header
/// lines, an empty line, the body) through everything the console and the
/// API do before an operation runs: the request's own parsing (query,
/// cookies, headers), the route tables, credentials, bodies and forms.
#[doc(hidden)]
pub fn fuzz_request(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let Some((method, target)) = lines.next().and_then(|l| l.split_once(' ')) else {
        return;
    };
    let Ok(method) = hyper::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = hyper::HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                headers.append(name, value);
            }
        }
    }
    let req = Req {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Bytes::from(body.as_bytes().to_vec()),
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
    };
    let _ = (req.query_pairs(), req.source());
    crate::api::fuzz_parse(&req);
    crate::web::fuzz_parse(&req);
}

/// Counts open connections, in all and per source address.
#[derive(Default)]
struct ConnectionCount {
    total: usize,
    by_source: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// A served connection's place in the [`ConnectionCount`], given back on drop.
struct ConnectionSlot {
    count: Arc<std::sync::Mutex<ConnectionCount>>,
    source: std::net::IpAddr,
}

impl ConnectionSlot {
    fn take(
        count: &Arc<std::sync::Mutex<ConnectionCount>>,
        source: std::net::IpAddr,
    ) -> Option<Self> {
        let mut c = count.lock().expect("connection count lock");
        let from_source = c.by_source.get(&source).copied().unwrap_or(0);
        if c.total >= MAX_CONNECTIONS || from_source >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        c.total += 1;
        c.by_source.insert(source, from_source + 1);
        Some(ConnectionSlot {
            count: count.clone(),
            source,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.count.lock().expect("connection count lock");
        c.total -= 1;
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

/// Serves the console and API over HTTPS forever.
pub async fn serve(ops: Arc<Ops>, listener: TcpListener) -> anyhow::Result<()> {
    let acceptor = tls_acceptor(&ops)?;
    let count = Arc::new(std::sync::Mutex::new(ConnectionCount::default()));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("web accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = ConnectionSlot::take(&count, peer.ip()) else {
            tracing::debug!(%peer, "web connection refused: too many open");
            continue;
        };
        let acceptor = acceptor.clone();
        let ops = ops.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "web TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper::service::service_fn(move |req| handle(ops.clone(), req, peer));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "web connection ended: {e}");
            }
        });
    }
}

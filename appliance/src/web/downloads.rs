//! `/downloads/…`: the static agent and its SHA-256, public like the
//! embedded assets (see `lifeboat_core::ops::AgentDownload` for why).

use hyper::header::{HeaderValue, CONTENT_DISPOSITION};
use hyper::{Method, Response, StatusCode};

use lifeboat_core::ops::{IssuedToken, Ops};

use crate::http::{response, Body, Req};

pub const AGENT_PATH: &str = "/downloads/lifeboat-agent";
pub const AGENT_SHA256_PATH: &str = "/downloads/lifeboat-agent.sha256";

pub fn serve(ops: &Ops, req: &Req) -> Response<Body> {
    if req.method != Method::GET && req.method != Method::HEAD {
        let mut r = response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "downloads are GET only\n",
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let known = req.path == AGENT_PATH || req.path == AGENT_SHA256_PATH;
    let Some(agent) = ops.agent_download().filter(|_| known) else {
        let why = if known {
            "this controller offers no agent download (start it with --agent-binary)\n"
        } else {
            "no such download\n"
        };
        return response(StatusCode::NOT_FOUND, "text/plain", why);
    };
    let (content_type, body) = if req.path == AGENT_SHA256_PATH {
        let line = format!("{}  lifeboat-agent\n", agent.sha256());
        ("text/plain", bytes::Bytes::from(line))
    } else {
        ("application/octet-stream", agent.bytes())
    };
    let len = body.len();
    let body = if req.method == Method::HEAD {
        bytes::Bytes::new()
    } else {
        body
    };
    let mut r = response(StatusCode::OK, content_type, body);
    if req.path == AGENT_PATH {
        r.headers_mut().insert(
            CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"lifeboat-agent\""),
        );
    }
    if req.method == Method::HEAD {
        r.headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

/// Whether a `Host` header is a plain `host[:port]`, safe to put into a
/// command or a file an operator will use.
pub fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// One command for the host's root shell: download the agent from this
/// console (its key pinned), check the binary's SHA-256, install it and
/// enroll. Without a download on offer, only the enrollment. The address
/// is the one the operator's browser (or script) used; it goes into a
/// shell command they will paste, so anything but a plain host[:port] is
/// replaced by a placeholder.
pub fn enroll_command(ops: &Ops, t: &IssuedToken, req: &Req) -> String {
    let authority = req
        .header("host")
        .filter(|h| plain_host(h))
        .unwrap_or("CONTROLLER");
    let host = match authority.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => authority,
    };
    let bin = "/usr/local/bin/lifeboat-agent";
    let enroll = format!(
        "{bin} --controller {host}:{} --token {} --ca-fingerprint {}",
        ops.agent_port(),
        t.token,
        t.ca_fingerprint
    );
    match ops.agent_download() {
        Some(agent) => format!(
            "curl -fsSk --pinnedpubkey '{pin}' -o {bin}.new https://{authority}{AGENT_PATH} && \
             echo '{sha}  {bin}.new' | sha256sum -c && chmod 755 {bin}.new && \
             mv {bin}.new {bin} && {enroll}",
            pin = ops.web_key_pin(),
            sha = agent.sha256(),
        ),
        None => enroll,
    }
}

//! REST API (`/api/v1`, JSON): a thin adapter over `ops`. Authentication is
//! HTTP Basic or a bearer token from `POST /api/v1/session`; errors are
//! `{"error": "..."}` with the matching status code. Every route, with its
//! guard and handler, is one entry of [`routes::ROUTES`].
//!
//! Cross-site requests: a state-changing request (POST, PUT, PATCH) must say
//! `Content-Type: application/json`, which an HTML form cannot send, and
//! no answer challenges a browser to remember Basic credentials.

mod access;
mod alerts;
pub use alerts::alert_filter;
mod backups;
mod ha;
mod inventory;
mod logging;
mod metrics;
mod openapi;
pub mod routes;
mod views;

use std::sync::Arc;

use base64::Engine;
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;

use crate::http::routing::Lookup;
use crate::http::{json_error, Body, Req};
use lifeboat_core::model::Principal;
use lifeboat_core::ops::{Ops, OpsError};
use routes::{Guard, Reply};

fn error_response(e: &OpsError) -> Response<Body> {
    let status = crate::http::status_of(e);
    let mut r = json_error(status, &e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        // Not `Basic`: a browser would prompt and then send the remembered
        // credentials with every cross-site request to this origin.
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer realm=\"Lifeboat\""),
        );
    }
    r
}

fn bad_request(msg: impl Into<String>) -> OpsError {
    OpsError::BadRequest(msg.into())
}

/// `?limit=`: 1 to `max`, `default` when absent.
fn query_limit(req: &Req, max: usize, default: usize) -> Result<usize, OpsError> {
    match req.query_param("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| bad_request(format!("limit: 1 to {max}"))),
        None => Ok(default),
    }
}

/// `?level=` (a log level), `default` when absent.
pub fn log_level_param(
    req: &Req,
    default: lifeboat_core::model::LogLevel,
) -> Result<lifeboat_core::model::LogLevel, OpsError> {
    match req.query_param("level") {
        Some(l) => lifeboat_core::model::LogLevel::parse(&l).ok_or_else(|| {
            bad_request(format!(
                "level: {l:?} is not error, warn, info, debug or trace"
            ))
        }),
        None => Ok(default),
    }
}

/// What a successful DELETE answers.
fn deleted() -> Reply {
    Ok(crate::http::json(
        StatusCode::OK,
        &serde_json::json!({"deleted": true}),
    ))
}

fn parse_body<T: for<'de> Deserialize<'de>>(req: &Req) -> Result<T, OpsError> {
    if req.body.is_empty() {
        return Err(bad_request("a JSON request body is required"));
    }
    serde_json::from_slice(&req.body).map_err(|e| bad_request(format!("malformed JSON body: {e}")))
}

/// Like [`parse_body`], with the type's default for an empty body.
fn parse_optional_body<T: for<'de> Deserialize<'de> + Default>(req: &Req) -> Result<T, OpsError> {
    if req.body.is_empty() {
        return Ok(T::default());
    }
    parse_body(req)
}

/// The principal behind the request's credentials.
pub(crate) async fn authenticate(ops: &Ops, req: &Req) -> Result<Principal, OpsError> {
    let source = req.source();
    let unauthorized =
        || OpsError::Unauthorized("authentication required (HTTP Basic or bearer token)".into());
    let Some(auth) = req.header("authorization") else {
        // An Excel web query cannot send headers: an export, and only an
        // export (read-only), takes an API token from the query string.
        if req.method == Method::GET && req.path.starts_with("/api/v1/exports/") {
            if let Some(token) = req.query_param("access_token") {
                return ops.api_token(&token, &source);
            }
        }
        return Err(unauthorized());
    };
    if let Some(b64) = auth.strip_prefix("Basic ") {
        let (user, password) = basic_credentials(b64)
            .ok_or_else(|| OpsError::Unauthorized("malformed Basic credentials".into()))?;
        return ops.basic_login(&user, &password, &source).await;
    }
    if let Some(token) = auth.strip_prefix("Bearer ") {
        return ops.bearer(token.trim(), &source);
    }
    Err(unauthorized())
}

/// The user and password of an HTTP Basic `Authorization` value.
fn basic_credentials(b64: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// For the fuzz target: everything the API does with a request before an
/// operation runs, without one running (no credentials are checked).
pub(crate) fn fuzz_parse(req: &Req) {
    use lifeboat_core::model::*;
    use lifeboat_core::ops::{PolicyInput, RestoreOptions};
    let _ = refuse_non_json(req);
    let _ = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .map(basic_credentials);
    let below = req.path.strip_prefix("/api/v1").unwrap_or(&req.path);
    let segments = crate::http::routing::segments(below);
    let _ = routes::find(req.method.as_str(), &segments);
    let _ = inventory::query_from(req);
    let _ = parse_body::<PolicyInput>(req);
    let _ = parse_optional_body::<RestoreOptions>(req);
    let _ = parse_body::<DatastoreInput>(req);
    let _ = parse_body::<UserInput>(req);
    let _ = parse_body::<RoleDef>(req);
    let _ = parse_body::<AccessPolicy>(req);
    let _ = parse_body::<Directory>(req);
    let _ = parse_body::<TokenRequest>(req);
    let _ = parse_body::<HostHa>(req);
    let _ = parse_body::<VmHa>(req);
    let _ = parse_body::<ClusterHa>(req);
    let _ = parse_body::<PhysicalMachine>(req);
    let _ = parse_body::<AsNew>(req);
}

/// A state-changing request must carry JSON: an HTML form (the tool of a
/// cross-site request forgery) can only send form or plain-text bodies.
fn refuse_non_json(req: &Req) -> Option<Response<Body>> {
    if !matches!(req.method, Method::POST | Method::PUT | Method::PATCH) {
        return None;
    }
    if req.media_type().as_deref() == Some("application/json") {
        return None;
    }
    Some(json_error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        &format!(
            "{} requests need Content-Type: application/json (also with an empty body)",
            req.method
        ),
    ))
}

pub async fn handle(ops: &Arc<Ops>, req: Req) -> Response<Body> {
    if let Some(refused) = refuse_non_json(&req) {
        return refused;
    }
    match route(ops, &req).await {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, OpsError::Internal(_)) {
                tracing::error!(path = req.path, "API error: {e}");
            }
            error_response(&e)
        }
    }
}

/// `req` as a REST request of `who`, whom the caller authenticated (the
/// XML-RPC adapter): every check a REST request gets after its credentials.
pub(crate) async fn handle_as(ops: &Arc<Ops>, who: &Principal, req: &Req) -> Response<Body> {
    let answer = async {
        let segments = below_api(req)?;
        let found = routes::find(req.method.as_str(), &segments);
        route_as(ops, who, req, &segments, found).await
    };
    match answer.await {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, OpsError::Internal(_)) {
                tracing::error!(path = req.path, "API error: {e}");
            }
            error_response(&e)
        }
    }
}

/// The path's segments below `/api/v1`.
fn below_api(req: &Req) -> Result<Vec<&str>, OpsError> {
    let no_such = || OpsError::NotFound(format!("no such endpoint: {}", req.path));
    let below = req.path.strip_prefix("/api/v1").ok_or_else(no_such)?;
    if !below.is_empty() && !below.starts_with('/') {
        return Err(no_such());
    }
    Ok(crate::http::routing::segments(below))
}

async fn route(ops: &Arc<Ops>, req: &Req) -> Reply {
    let segments = below_api(req)?;
    let found = routes::find(req.method.as_str(), &segments);
    if let Lookup::Found(route) = found {
        if route.guard == Guard::Public {
            return route.call(ops, None, req, &segments).await;
        }
    }
    // Only an authenticated caller learns which paths exist.
    let who = authenticate(ops, req).await?;
    route_as(ops, &who, req, &segments, found).await
}

async fn route_as(
    ops: &Arc<Ops>,
    who: &Principal,
    req: &Req,
    segments: &[&str],
    found: Lookup<'static, routes::Route>,
) -> Reply {
    let no_such = || OpsError::NotFound(format!("no such endpoint: {}", req.path));
    let route = match found {
        Lookup::Found(route) => route,
        Lookup::WrongMethod => {
            return Ok(json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {} not allowed on {}", req.method, req.path),
            ))
        }
        Lookup::NotFound => return Err(no_such()),
    };
    // A VM the caller may not see stays unseen: 404, as for one that does
    // not exist, before anything (a 403 or a 400) could tell.
    if ops.names_hidden_vm(who, segments) {
        return Err(OpsError::NotFound(format!("no such object: {}", req.path)));
    }
    if let Some(privilege) = route.guard.privilege() {
        let action = format!("{} {}", route.method, route.path);
        ops.require_for(who, privilege, &action, &req.path).await?;
    }
    route.call(ops, Some(who), req, segments).await
}

//! REST API (`/api/v1`, JSON): a thin adapter over `ops`. Authentication is
//! HTTP Basic or a bearer token from `POST /api/v1/session`; errors are
//! `{"error": "..."}` with the matching status code.

mod access;
mod ha;
pub mod routes;
mod views;

use std::sync::Arc;

use base64::Engine;
use hyper::{Method, Response, StatusCode};
use lifeboat_proto::{BackupMode, PowerAction};
use serde::Deserialize;
use serde_json::json;

use crate::http::{json, json_error, Body, Req};
use lifeboat_core::model::DatastoreInput;
use lifeboat_core::model::Principal;
use lifeboat_core::ops::{Ops, OpsError, PolicyInput, VmQuery, VmSort};
pub use views::{backup_json, datastore_json, host_json, job_json, vm_json};

fn error_response(e: &OpsError) -> Response<Body> {
    let status = match e {
        OpsError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        OpsError::Forbidden(_) => StatusCode::FORBIDDEN,
        OpsError::NotFound(_) => StatusCode::NOT_FOUND,
        OpsError::Conflict(_) => StatusCode::CONFLICT,
        OpsError::BadRequest(_) => StatusCode::BAD_REQUEST,
        OpsError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = json_error(status, &e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"Lifeboat\""),
        );
    }
    r
}

fn bad_request(msg: impl Into<String>) -> OpsError {
    OpsError::BadRequest(msg.into())
}

fn parse_body<T: for<'de> Deserialize<'de>>(req: &Req) -> Result<T, OpsError> {
    if req.body.is_empty() {
        return Err(bad_request("a JSON request body is required"));
    }
    serde_json::from_slice(&req.body).map_err(|e| bad_request(format!("malformed JSON body: {e}")))
}

/// The principal behind the request's credentials.
async fn authenticate(ops: &Ops, req: &Req) -> Result<Principal, OpsError> {
    let source = req.source();
    let unauthorized =
        || OpsError::Unauthorized("authentication required (HTTP Basic or bearer token)".into());
    let Some(auth) = req.header("authorization") else {
        return Err(unauthorized());
    };
    if let Some(b64) = auth.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| OpsError::Unauthorized("malformed Basic credentials".into()))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| OpsError::Unauthorized("malformed Basic credentials".into()))?;
        return ops.basic_login(user, password, &source).await;
    }
    if let Some(token) = auth.strip_prefix("Bearer ") {
        return ops.bearer(token.trim(), &source);
    }
    Err(unauthorized())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    #[serde(default)]
    datastore: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    replace: bool,
    #[serde(default)]
    start: bool,
    #[serde(default)]
    as_new: Option<lifeboat_core::model::AsNew>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupPatch {
    protected: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerBody {
    action: String,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

pub async fn handle(ops: &Arc<Ops>, req: Req) -> Response<Body> {
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

fn query_from(req: &Req) -> Result<VmQuery, OpsError> {
    let number = |name: &str| -> Result<Option<usize>, OpsError> {
        req.query_param(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| bad_request(format!("{name} must be a positive number")))
            })
            .transpose()
    };
    let sort = match req.query_param("sort") {
        None => VmSort::Name,
        Some(s) => {
            VmSort::parse(&s).ok_or_else(|| bad_request(format!("unknown sort key {s:?}")))?
        }
    };
    let state = req.query_param("state");
    if let Some(s) = &state {
        if !["running", "paused", "stopped", "unknown"].contains(&s.as_str()) {
            return Err(bad_request(format!("unknown state {s:?}")));
        }
    }
    Ok(VmQuery {
        name: req.query_param("name"),
        host: req.query_param("host"),
        state,
        sort,
        descending: req.query_param("order").as_deref() == Some("desc"),
        page: number("page")?.unwrap_or(1),
        per_page: number("per_page")?.unwrap_or(usize::MAX),
    })
}

/// What a sub-router answers for a path that is not its own.
fn not_mine() -> OpsError {
    OpsError::NotFound(String::new())
}

/// A sub-router's answer: `None` when the path was not its own.
fn claimed(result: Result<Response<Body>, OpsError>) -> Option<Result<Response<Body>, OpsError>> {
    match result {
        Err(OpsError::NotFound(msg)) if msg.is_empty() => None,
        other => Some(other),
    }
}

async fn route(ops: &Arc<Ops>, req: &Req) -> Result<Response<Body>, OpsError> {
    let segments: Vec<&str> = req
        .path
        .trim_start_matches("/api/v1")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let m = &req.method;

    // The one unauthenticated route: trading a password for a token.
    if segments == ["session"] && m == Method::POST {
        let body: LoginBody = parse_body(req)?;
        let (principal, token, _) = ops
            .login(&body.username, &body.password, &req.source())
            .await?;
        return Ok(json(
            StatusCode::CREATED,
            &json!({
                "token": token,
                "user": principal.user(),
                "role": principal.role(),
                "privileges": principal.privileges().map(|p| p.as_str()).collect::<Vec<_>>(),
                "idle_timeout_secs": lifeboat_core::model::SESSION_IDLE.as_secs(),
            }),
        ));
    }
    if !req.path.starts_with("/api/v1/") && req.path != "/api/v1" {
        return Err(OpsError::NotFound(format!(
            "no such endpoint: {}",
            req.path
        )));
    }

    let who = authenticate(ops, req).await?;
    match routes::find(m.as_str(), &segments) {
        routes::Lookup::Found(route) => {
            // A VM the caller may not see stays unseen: 404, as for one that
            // does not exist, before anything (a 403 or a 400) could tell.
            if ops.names_hidden_vm(&who, &segments) {
                return Err(OpsError::NotFound(format!("no such object: {}", req.path)));
            }
            if let Some(privilege) = route.privilege {
                let action = format!("{} {}", route.method, route.path);
                ops.require_for(&who, privilege, &action, &req.path).await?;
            }
        }
        routes::Lookup::WrongMethod => {
            return Ok(json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {m} not allowed on {}", req.path),
            ))
        }
        routes::Lookup::NotFound => {
            return Err(OpsError::NotFound(format!(
                "no such endpoint: {}",
                req.path
            )))
        }
    }
    if segments == ["routes"] {
        let list: Vec<_> = routes::ROUTES
            .iter()
            .map(|r| json!({"method": r.method, "path": r.path, "privilege": r.privilege.map(|p| p.as_str())}))
            .collect();
        return Ok(json(StatusCode::OK, &json!(list)));
    }
    // The catalog answered every wrong method above: only routes it lists
    // get here, so there is no 405 to give below.
    match (segments.as_slice(), m) {
        (["session"], &Method::DELETE) => {
            let token = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .ok_or_else(|| bad_request("DELETE /session needs the bearer token to end"))?;
            ops.logout(&who, token.trim()).await?;
            Ok(json(StatusCode::OK, &json!({"ended": true})))
        }
        (["enrollment-tokens"], &Method::POST) => {
            let issued = ops.issue_enrollment_token(&who).await?;
            Ok(json(
                StatusCode::CREATED,
                &json!({
                    "token": issued.token,
                    "ca_fingerprint": issued.ca_fingerprint,
                    "expires_at": lifeboat_core::model::rfc3339(issued.record.expires_at),
                }),
            ))
        }
        (["hosts"], &Method::GET) => {
            let hosts = ops.hosts(&who)?;
            Ok(json(StatusCode::OK, &hosts.iter().map(host_json).collect()))
        }
        (["hosts", id], &Method::GET) => Ok(json(StatusCode::OK, &host_json(&ops.host(&who, id)?))),
        (["vms"], &Method::GET) => {
            let page = ops.vms(&who, &query_from(req)?)?;
            let items: Vec<_> = page
                .items
                .iter()
                .map(|v| vm_json(v, &ops.vm_host_name(v), false))
                .collect();
            let mut r = json(StatusCode::OK, &serde_json::Value::Array(items));
            if let Ok(v) = page.total.to_string().parse() {
                r.headers_mut().insert("x-total-count", v);
            }
            Ok(r)
        }
        (["vms", id], &Method::GET) => {
            let vm = ops.vm(&who, id)?;
            Ok(json(
                StatusCode::OK,
                &vm_json(&vm, &ops.vm_host_name(&vm), true),
            ))
        }
        (["vms", id, "power"], &Method::POST) => {
            let body: PowerBody = parse_body(req)?;
            let action = PowerAction::parse(&body.action).ok_or_else(|| {
                bad_request(format!(
                    "unknown action {:?}; expected one of start, shutdown, poweroff, pause, resume, reboot",
                    body.action
                ))
            })?;
            let job = ops.power(&who, id, action, body.timeout_secs).await?;
            Ok(json(StatusCode::ACCEPTED, &json!({"job": job.id})))
        }
        (["vms", id, "backups"], &Method::POST) => {
            let body: BackupBody = if req.body.is_empty() {
                BackupBody {
                    datastore: None,
                    mode: None,
                }
            } else {
                parse_body(req)?
            };
            let mode = match body.mode.as_deref().unwrap_or("auto") {
                "auto" => BackupMode::Auto,
                "full" => BackupMode::Full,
                "incremental" => BackupMode::Incremental,
                other => {
                    return Err(bad_request(format!(
                        "unknown mode {other:?}; expected auto, full or incremental"
                    )))
                }
            };
            let job = ops
                .backup(&who, id, body.datastore.as_deref(), mode)
                .await?;
            Ok(json(StatusCode::ACCEPTED, &json!({"job": job.id})))
        }
        (["vms", id, "backups"], &Method::GET) => {
            ops.vm(&who, id)?;
            let list = ops.vm_backups(&who, id).await?;
            Ok(json(
                StatusCode::OK,
                &list.iter().map(|b| backup_json(b, false)).collect(),
            ))
        }
        (["datastores"], &Method::GET) => {
            let list = ops.datastores(&who).await?;
            Ok(json(
                StatusCode::OK,
                &list.iter().map(datastore_json).collect(),
            ))
        }
        (["datastores"], &Method::POST) => {
            let input: DatastoreInput = parse_body(req)?;
            let added = ops.add_datastore(&who, input).await?;
            Ok(json(StatusCode::CREATED, &datastore_json(&added)))
        }
        (["datastores", name], &Method::GET) => Ok(json(
            StatusCode::OK,
            &datastore_json(&ops.datastore(&who, name).await?),
        )),
        (["datastores", name], &Method::DELETE) => {
            ops.delete_datastore(&who, name).await?;
            Ok(json(StatusCode::OK, &json!({"deleted": true})))
        }
        (["datastores", name, "mount"], &Method::POST) => Ok(json(
            StatusCode::OK,
            &datastore_json(&ops.mount_datastore(&who, name).await?),
        )),
        (["backups", reference], &Method::GET) => {
            let b = ops.backup_manifest(&who, reference).await?;
            Ok(json(StatusCode::OK, &backup_json(&b, true)))
        }
        (["backups", reference], &Method::PUT | &Method::PATCH) => {
            let patch: BackupPatch = parse_body(req)?;
            ops.set_protected(&who, reference, patch.protected).await?;
            let b = ops.backup_manifest(&who, reference).await?;
            Ok(json(StatusCode::OK, &backup_json(&b, true)))
        }
        (["backup-policies"], &Method::GET) => {
            Ok(json(StatusCode::OK, &json!(ops.policies(&who)?)))
        }
        (["backup-policies"], &Method::POST) => {
            let input: PolicyInput = parse_body(req)?;
            let p = ops.create_policy(&who, input).await?;
            Ok(json(StatusCode::CREATED, &json!(p)))
        }
        (["backup-policies", id], &Method::GET) => {
            Ok(json(StatusCode::OK, &json!(ops.policy(&who, id)?)))
        }
        (["backup-policies", id], &Method::PUT) => {
            let input: PolicyInput = parse_body(req)?;
            Ok(json(
                StatusCode::OK,
                &json!(ops.update_policy(&who, id, input).await?),
            ))
        }
        (["backup-policies", id], &Method::DELETE) => {
            ops.delete_policy(&who, id).await?;
            Ok(json(StatusCode::OK, &json!({"deleted": true})))
        }
        (["backup-policies", id, "run"], &Method::POST) => {
            let job = ops.run_policy(&who, id).await?;
            Ok(json(StatusCode::ACCEPTED, &json!({"job": job.id})))
        }
        (["backups", reference, "verify"], &Method::POST) => {
            let job = ops.verify(&who, reference).await?;
            Ok(json(StatusCode::ACCEPTED, &json!({"job": job.id})))
        }
        (["backups", reference, "restore"], &Method::POST) => {
            let body: RestoreBody = if req.body.is_empty() {
                RestoreBody::default()
            } else {
                parse_body(req)?
            };
            let job = ops
                .restore(
                    &who,
                    reference,
                    body.host.as_deref(),
                    body.replace,
                    body.start,
                    body.as_new,
                )
                .await?;
            Ok(json(StatusCode::ACCEPTED, &json!({"job": job.id})))
        }
        (["jobs"], &Method::GET) => {
            let vm = req.query_param("vm");
            let jobs = ops.jobs(&who, vm.as_deref(), 200)?;
            Ok(json(StatusCode::OK, &jobs.iter().map(job_json).collect()))
        }
        (["jobs", id], &Method::GET) => {
            let id: u64 = id
                .parse()
                .map_err(|_| OpsError::NotFound(format!("no job with id {id}")))?;
            Ok(json(StatusCode::OK, &job_json(&ops.job(&who, id)?)))
        }
        _ => {
            if let Some(result) = ha::route(ops, &who, req, &segments).await {
                return result;
            }
            if let Some(result) = access::route(ops, &who, req, &segments).await {
                return result;
            }
            Err(OpsError::NotFound(format!(
                "no such endpoint: {}",
                req.path
            )))
        }
    }
}

//! XML-RPC adapter (`POST /RPC2`): a method call becomes the REST request
//! its method mirrors ([`methods::METHODS`]), made as the caller, and the
//! REST answer becomes the method's value; every error is a fault with a
//! code and a message.
//!
//! What is refused before dxr parses anything: a body over
//! [`MAX_CALL_BYTES`], one that is not UTF-8, any DOCTYPE (so no entity is
//! ever declared, let alone expanded; dxr's quick-xml expands only the five
//! predefined ones and character references), elements nested deeper than
//! [`MAX_DEPTH`]. Credentials come only from the `Authorization` header
//! (HTTP Basic or a bearer token), never from a cookie, and the body must
//! be `text/xml`: a cross-site page can send neither.

pub mod methods;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dxr::{Fault, FaultResponse, MethodCall, MethodResponse, Value};
use http_body_util::BodyExt;
use hyper::{Method as HttpMethod, Response, StatusCode};
use serde_json::Value as Json;

use crate::http::{Body, Req};
use lifeboat_core::model::Principal;
use lifeboat_core::ops::Ops;
use methods::{Arg, Target};

/// The largest method call read (the HTTP layer refuses over 1 MiB).
pub const MAX_CALL_BYTES: usize = 256 * 1024;
/// The deepest nesting of elements (a value four arrays deep is 13).
pub const MAX_DEPTH: usize = 40;

/// Fault codes of the protocol, as the interoperability convention for
/// XML-RPC servers numbers them; an operation's own refusal carries its
/// REST status (400, 401, 403, 404, 409, 500).
pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;

/// Calls refused before reaching an operation, by code (shown in
/// `/metrics` as `lifeboat_xmlrpc_refused_total`).
static REFUSED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
const REFUSED_CODES: [i32; 4] = [
    PARSE_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    INVALID_PARAMS,
];

/// (fault code, count) of the calls refused so far.
pub fn refused_counts() -> Vec<(i32, u64)> {
    REFUSED_CODES
        .iter()
        .zip(&REFUSED)
        .map(|(code, n)| (*code, n.load(Ordering::Relaxed)))
        .collect()
}

#[derive(Debug)]
struct Refusal {
    code: i32,
    message: String,
}

fn refuse(code: i32, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

pub async fn handle(ops: &Arc<Ops>, req: Req) -> Response<Body> {
    if req.method != HttpMethod::POST {
        let mut r = crate::http::response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "XML-RPC: POST a methodCall to /RPC2\n",
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return r;
    }
    let answer = match call(ops, &req).await {
        Ok(value) => MethodResponse { value }.to_xml(),
        Err(refusal) => {
            if let Some(i) = REFUSED_CODES.iter().position(|c| *c == refusal.code) {
                REFUSED[i].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    peer = %req.peer,
                    code = refusal.code,
                    "XML-RPC call refused: {}",
                    refusal.message
                );
            }
            FaultResponse {
                fault: Fault::new(refusal.code, refusal.message),
            }
            .to_xml()
        }
    };
    match answer {
        Ok(xml) => crate::http::response(
            StatusCode::OK,
            "text/xml; charset=utf-8",
            format!("<?xml version=\"1.0\"?>\n{xml}"),
        ),
        Err(e) => {
            tracing::error!("XML-RPC: cannot write the answer: {e}");
            crate::http::response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "cannot write the answer\n",
            )
        }
    }
}

async fn call(ops: &Arc<Ops>, req: &Req) -> Result<Value, Refusal> {
    if !matches!(
        req.media_type().as_deref(),
        Some("text/xml" | "application/xml")
    ) {
        return Err(refuse(
            INVALID_REQUEST,
            "the body must be an XML-RPC methodCall sent as Content-Type: text/xml",
        ));
    }
    let (name, params) = parse_call(&req.body)?;
    let method = methods::find(&name).ok_or_else(|| {
        refuse(
            METHOD_NOT_FOUND,
            format!("unknown method {name:?} (system.listMethods lists them)"),
        )
    })?;
    let who = crate::api::authenticate(ops, req)
        .await
        .map_err(|e| refuse(crate::http::status_of(&e).as_u16().into(), e.to_string()))?;
    let rest = bind(method, params)?;
    match method.target {
        Target::Local => local(method.name, &rest),
        Target::Rest(http_method, _) => rest_call(ops, &who, req, http_method, rest).await,
    }
}

/// The method's name and arguments, after the checks above.
fn parse_call(body: &[u8]) -> Result<(String, Vec<Value>), Refusal> {
    if body.len() > MAX_CALL_BYTES {
        return Err(refuse(
            PARSE_ERROR,
            format!("the call is larger than {MAX_CALL_BYTES} bytes"),
        ));
    }
    let text =
        std::str::from_utf8(body).map_err(|_| refuse(PARSE_ERROR, "the call is not UTF-8"))?;
    check_shape(text)?;
    let call = MethodCall::from_xml(text).map_err(|_| {
        refuse(
            PARSE_ERROR,
            "not a well-formed XML-RPC methodCall (methodName, then params of values)",
        )
    })?;
    Ok((call.name.into_owned(), call.params))
}

/// Refuses a DOCTYPE (entity declarations), nesting over [`MAX_DEPTH`]
/// and a second root element, reading the document once without building
/// anything.
fn check_shape(text: &str) -> Result<(), Refusal> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0usize;
    let mut roots = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::DocType(_)) => {
                return Err(refuse(
                    PARSE_ERROR,
                    "a DOCTYPE is refused: XML-RPC declares no entities",
                ))
            }
            Ok(Event::Start(_) | Event::Empty(_)) if depth == 0 && roots > 0 => {
                return Err(refuse(PARSE_ERROR, "more than one root element"))
            }
            Ok(Event::Empty(_)) if depth == 0 => roots += 1,
            Ok(Event::Start(_)) => {
                roots += usize::from(depth == 0);
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(refuse(
                        PARSE_ERROR,
                        format!("elements are nested deeper than {MAX_DEPTH}"),
                    ));
                }
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Eof) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(refuse(PARSE_ERROR, format!("not well-formed XML: {e}"))),
        }
    }
}

/// A REST request's parts, from a method's arguments.
#[derive(Debug, Default, PartialEq)]
pub struct RestParts {
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<serde_json::Map<String, Json>>,
}

/// Maps `params` onto the method's route, checking their number and types.
fn bind(method: &methods::Method, params: Vec<Value>) -> Result<RestParts, Refusal> {
    let least = method.params.iter().filter(|p| p.required).count();
    let most = method.params.len();
    if params.len() < least || params.len() > most {
        let expected = if least == most {
            least.to_string()
        } else {
            format!("{least} to {most}")
        };
        return Err(refuse(
            INVALID_PARAMS,
            format!(
                "{} takes {expected} arguments, not {}: {}",
                method.name,
                params.len(),
                method.full_help()
            ),
        ));
    }
    let mut parts = RestParts {
        path: match method.target {
            Target::Rest(_, path) => path.to_string(),
            Target::Local => String::new(),
        },
        ..Default::default()
    };
    for (i, (param, value)) in method.params.iter().zip(params).enumerate() {
        let bad = |what: &str| {
            refuse(
                INVALID_PARAMS,
                format!(
                    "{}: argument {} ({}) must be {what}, not {}",
                    method.name,
                    i + 1,
                    param.name,
                    kind_of(&value)
                ),
            )
        };
        match param.arg {
            Arg::Path(placeholder) => {
                let segment = segment(&value).ok_or_else(|| bad("a string id"))?;
                parts.path = parts.path.replace(&format!("{{{placeholder}}}"), &segment);
            }
            Arg::Object => {
                let object = match &value {
                    Value::String(s) => s.as_str(),
                    _ => return Err(bad("a string host:ID or vm:UUID")),
                };
                let (kind, id) = match object.split_once(':') {
                    Some(("host", id)) => ("hosts", id),
                    Some(("vm", id)) => ("vms", id),
                    _ => return Err(bad("host:ID or vm:UUID")),
                };
                let id = segment(&Value::String(id.to_string()))
                    .ok_or_else(|| bad("host:ID or vm:UUID"))?;
                parts.path = parts.path.replace("{object}", &format!("{kind}/{id}"));
            }
            Arg::Query(name) => match value {
                Value::String(s) => parts.query.push((name.to_string(), s)),
                _ => return Err(bad("a string")),
            },
            Arg::Filter => {
                let Value::Struct(members) = &value else {
                    return Err(bad("a struct"));
                };
                for (k, v) in members {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Integer(n) => n.to_string(),
                        Value::Long(n) => n.to_string(),
                        Value::Boolean(b) => b.to_string(),
                        _ => return Err(bad("a struct of strings, integers and booleans")),
                    };
                    parts.query.push((k.clone(), text));
                }
            }
            Arg::Field(name) => match value {
                Value::String(s) => {
                    parts
                        .body
                        .get_or_insert_with(Default::default)
                        .insert(name.to_string(), Json::String(s));
                }
                _ => return Err(bad("a string")),
            },
            Arg::Body => {
                let json = to_json(&value).map_err(|e| bad(&e))?;
                let Json::Object(members) = json else {
                    return Err(bad("a struct"));
                };
                parts
                    .body
                    .get_or_insert_with(Default::default)
                    .extend(members);
            }
        }
    }
    Ok(parts)
}

/// A path segment from an id: a string or an integer, with nothing that
/// could reach another route (`/`, `?`, `#`, `%`, `..`, controls).
fn segment(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Integer(n) => n.to_string(),
        Value::Long(n) => n.to_string(),
        _ => return None,
    };
    let clean = !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 256
        && !s.chars().any(|c| {
            matches!(c, '/' | '?' | '#' | '%' | '\\') || c.is_control() || c.is_whitespace()
        });
    clean.then_some(s)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "an int",
        Value::Long(_) => "an i8",
        Value::Boolean(_) => "a boolean",
        Value::String(_) => "a string",
        Value::Double(_) => "a double",
        Value::DateTime(_) => "a dateTime",
        Value::Base64(_) => "base64",
        Value::Struct(_) => "a struct",
        Value::Array(_) => "an array",
        Value::Nil => "nil",
        _ => "another type",
    }
}

/// An argument as JSON (for a REST body).
fn to_json(v: &Value) -> Result<Json, String> {
    Ok(match v {
        Value::Integer(n) => Json::from(*n),
        Value::Long(n) => Json::from(*n),
        Value::Boolean(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Double(d) => serde_json::Number::from_f64(*d)
            .map(Json::Number)
            .ok_or("a finite number")?,
        Value::Struct(members) => Json::Object(
            members
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Value::Nil => Json::Null,
        _ => {
            return Err(
                "strings, numbers, booleans, structs and arrays (times as RFC 3339 strings)".into(),
            )
        }
    })
}

/// A REST answer as an XML-RPC value: objects become structs (a null
/// member is left out, as XML-RPC has no null in a struct), integers
/// `int` or `i8` by size.
pub fn to_xmlrpc(v: Json) -> Value {
    match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => i32::try_from(i).map_or(Value::Long(i), Value::Integer),
            None => Value::Double(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) => Value::String(s),
        Json::Array(items) => Value::Array(items.into_iter().map(to_xmlrpc).collect()),
        Json::Object(members) => Value::Struct(
            members
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, to_xmlrpc(v)))
                .collect(),
        ),
    }
}

fn query_value(rest: &RestParts, name: &str) -> String {
    rest.query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The methods answered here.
fn local(name: &str, rest: &RestParts) -> Result<Value, Refusal> {
    let named = || {
        let wanted = query_value(rest, "name");
        methods::find(&wanted).ok_or_else(|| {
            refuse(
                INVALID_PARAMS,
                format!("no method {wanted:?} (system.listMethods lists them)"),
            )
        })
    };
    Ok(match name {
        "system.listMethods" => Value::Array(
            methods::METHODS
                .iter()
                .map(|m| Value::String(m.name.to_string()))
                .collect(),
        ),
        "system.methodHelp" => Value::String(named()?.full_help()),
        "system.methodSignature" => Value::Array(
            named()?
                .signatures()
                .into_iter()
                .map(|s| Value::Array(s.into_iter().map(|t| Value::String(t.into())).collect()))
                .collect(),
        ),
        "lifeboat.version" => to_xmlrpc(serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "api": "/api/v1",
        })),
        other => {
            return Err(refuse(
                METHOD_NOT_FOUND,
                format!("{other} has no implementation"),
            ))
        }
    })
}

/// The REST request `rest` describes, made as `who` through the REST
/// router (its privilege checks, scope and audit), its answer converted.
async fn rest_call(
    ops: &Arc<Ops>,
    who: &Principal,
    req: &Req,
    http_method: &str,
    rest: RestParts,
) -> Result<Value, Refusal> {
    let mut headers = hyper::HeaderMap::new();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    let body = match &rest.body {
        Some(members) => Bytes::from(serde_json::to_vec(members).unwrap_or_default()),
        None => Bytes::new(),
    };
    let inner = Req {
        method: http_method.parse().unwrap_or(HttpMethod::GET),
        path: format!("/api/v1{}", rest.path),
        query: serde_urlencoded::to_string(&rest.query).unwrap_or_default(),
        headers,
        body,
        peer: req.peer,
    };
    let answer = crate::api::handle_as(ops, who, &inner).await;
    let status = answer.status();
    let bytes = answer
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: Json = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
    if status.is_success() {
        return Ok(to_xmlrpc(json));
    }
    let message = json["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| status.to_string());
    Err(refuse(i32::from(status.as_u16()), message))
}

/// For the fuzz target: everything done with a call's body before an
/// operation runs.
#[doc(hidden)]
pub fn fuzz_call(body: &[u8]) {
    if let Ok((name, params)) = parse_call(body) {
        if let Some(method) = methods::find(&name) {
            let _ = bind(method, params);
        }
    }
}

#[cfg(test)]
mod tests;

//! REST handlers for the controller's own log: its settings (level,
//! forwarding to a syslog channel) and the recent records.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::routes::{Call, Reply};
use super::{bad_request, parse_body};
use crate::http::json;
use lifeboat_core::model::{rfc3339, LogLevel, LogRecord};
use lifeboat_core::ops::{LoggingSettings, MAX_LOG_LIST};

pub fn record_json(r: &LogRecord) -> Value {
    json!({
        "seq": r.seq,
        "at": rfc3339(r.at_ms / 1000),
        "at_ms": r.at_ms,
        "level": r.level,
        "target": r.target,
        "message": r.message,
    })
}

pub async fn settings(c: Call<'_>) -> Reply {
    Ok(json(StatusCode::OK, &json!(c.ops.logging(c.who())?)))
}

pub async fn set_settings(c: Call<'_>) -> Reply {
    let input: LoggingSettings = parse_body(c.req)?;
    c.ops.set_logging(c.who(), input).await?;
    settings(c).await
}

/// `?level=` (the least severe shown, default `trace`), `?after=` (a
/// record number), `?limit=`.
pub async fn recent(c: Call<'_>) -> Reply {
    let level = super::log_level_param(c.req, LogLevel::Trace)?;
    let after = match c.req.query_param("after") {
        Some(a) => a
            .parse::<u64>()
            .map_err(|_| bad_request("after: a record number"))?,
        None => 0,
    };
    let limit = super::query_limit(c.req, MAX_LOG_LIST, 200)?;
    let records = c.ops.recent_log(c.who(), level, after, limit)?;
    let list: Vec<Value> = records.iter().map(record_json).collect();
    Ok(json(StatusCode::OK, &Value::Array(list)))
}

//! REST handlers for alerts: the history, rules, channels and a channel's
//! test.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::routes::{Call, Reply};
use super::{bad_request, deleted, parse_body};
use crate::http::json;
use lifeboat_core::model::{
    rfc3339, Alert, ChannelInput, DeliveryState, EventKind, RuleInput, Severity,
};
use lifeboat_core::ops::{AlertFilter, OpsError, MAX_ALERT_LIST};

/// An alert as the API shows it: times as RFC 3339 and milliseconds.
pub fn alert_json(a: &Alert) -> Value {
    let deliveries: Vec<Value> = a
        .deliveries
        .iter()
        .map(|d| {
            let (state, at_ms) = match d.state {
                DeliveryState::Pending { next_at_ms } => ("pending", next_at_ms),
                DeliveryState::Sent { at_ms } => ("sent", at_ms),
                DeliveryState::Failed { at_ms } => ("failed", at_ms),
            };
            json!({
                "channel": d.channel,
                "state": state,
                "at": rfc3339(at_ms / 1000),
                "at_ms": at_ms,
                "attempts": d.attempts,
                "last_error": d.last_error,
            })
        })
        .collect();
    json!({
        "id": a.id,
        "at": rfc3339(a.at_ms / 1000),
        "at_ms": a.at_ms,
        "rule": a.rule,
        "rule_name": a.rule_name,
        "event": a.event.as_str(),
        "severity": a.severity.as_str(),
        "subject": a.subject,
        "message": a.message,
        "repeats": a.repeats,
        "last_at_ms": a.last_at_ms,
        "suppressed": a.suppressed,
        "deliveries": deliveries,
    })
}

/// `event`, `severity`, `object` and `limit` (default 100).
pub fn alert_filter(req: &crate::http::Req) -> Result<AlertFilter, OpsError> {
    let event = match req.query_param("event") {
        Some(e) => {
            Some(EventKind::parse(&e).ok_or_else(|| bad_request(format!("unknown event {e:?}")))?)
        }
        None => None,
    };
    let severity = match req.query_param("severity") {
        Some(s) => Some(Severity::parse(&s).ok_or_else(|| {
            bad_request(format!(
                "unknown severity {s:?} (info, warning, major or critical)"
            ))
        })?),
        None => None,
    };
    let limit = super::query_limit(req, MAX_ALERT_LIST, 100)?;
    Ok(AlertFilter {
        event,
        severity,
        object: req.query_param("object"),
        limit,
    })
}

pub async fn list(c: Call<'_>) -> Reply {
    let alerts = c.ops.alerts(c.who(), &alert_filter(c.req)?)?;
    let list: Vec<Value> = alerts.iter().map(alert_json).collect();
    Ok(json(StatusCode::OK, &Value::Array(list)))
}

pub async fn get(c: Call<'_>) -> Reply {
    let id = c
        .arg("id")
        .parse::<u64>()
        .map_err(|_| OpsError::NotFound(format!("no alert {}", c.arg("id"))))?;
    Ok(json(
        StatusCode::OK,
        &alert_json(&c.ops.alert(c.who(), id)?),
    ))
}

pub async fn rules(c: Call<'_>) -> Reply {
    Ok(json(StatusCode::OK, &json!(c.ops.alert_rules(c.who())?)))
}

pub async fn create_rule(c: Call<'_>) -> Reply {
    let input: RuleInput = parse_body(c.req)?;
    let rule = c.ops.put_alert_rule(c.who(), None, input).await?;
    Ok(json(StatusCode::CREATED, &json!(rule)))
}

pub async fn update_rule(c: Call<'_>) -> Reply {
    let input: RuleInput = parse_body(c.req)?;
    let rule = c
        .ops
        .put_alert_rule(c.who(), Some(c.arg("id")), input)
        .await?;
    Ok(json(StatusCode::OK, &json!(rule)))
}

pub async fn delete_rule(c: Call<'_>) -> Reply {
    c.ops.delete_alert_rule(c.who(), c.arg("id")).await?;
    deleted()
}

pub async fn channels(c: Call<'_>) -> Reply {
    Ok(json(StatusCode::OK, &json!(c.ops.alert_channels(c.who())?)))
}

pub async fn create_channel(c: Call<'_>) -> Reply {
    let input: ChannelInput = parse_body(c.req)?;
    let channel = c.ops.put_alert_channel(c.who(), None, input).await?;
    Ok(json(StatusCode::CREATED, &json!(channel)))
}

pub async fn update_channel(c: Call<'_>) -> Reply {
    let input: ChannelInput = parse_body(c.req)?;
    let channel = c
        .ops
        .put_alert_channel(c.who(), Some(c.arg("id")), input)
        .await?;
    Ok(json(StatusCode::OK, &json!(channel)))
}

pub async fn delete_channel(c: Call<'_>) -> Reply {
    c.ops.delete_alert_channel(c.who(), c.arg("id")).await?;
    deleted()
}

/// Queues a test alert on the channel; 202 with the alert (its delivery
/// shows in `GET /alerts/{id}`).
pub async fn test_channel(c: Call<'_>) -> Reply {
    let alert = c.ops.test_alert_channel(c.who(), c.arg("id")).await?;
    Ok(json(StatusCode::ACCEPTED, &alert_json(&alert)))
}

//! REST handlers for hosts, VMs, power, jobs and agent enrollment.

use hyper::StatusCode;
use lifeboat_proto::PowerAction;
use serde::Deserialize;
use serde_json::json;

use super::routes::{Call, Reply};
use super::views::{host_json, job_json, vm_json};
use super::{bad_request, parse_body};
use crate::http::{json, Req};
use lifeboat_core::ops::{OpsError, VmQuery, VmSort};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerBody {
    action: String,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

pub(super) fn query_from(req: &Req) -> Result<VmQuery, OpsError> {
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

pub async fn issue_enrollment_token(c: Call<'_>) -> Reply {
    let issued = c.ops.issue_enrollment_token(c.who()).await?;
    Ok(json(
        StatusCode::CREATED,
        &json!({
            "token": issued.token,
            "ca_fingerprint": issued.ca_fingerprint,
            "expires_at": lifeboat_core::model::rfc3339(issued.record.expires_at),
            "command": crate::web::downloads::enroll_command(c.ops, &issued, c.req),
        }),
    ))
}

pub async fn hosts(c: Call<'_>) -> Reply {
    let hosts = c.ops.hosts(c.who())?;
    Ok(json(StatusCode::OK, &hosts.iter().map(host_json).collect()))
}

pub async fn host(c: Call<'_>) -> Reply {
    Ok(json(
        StatusCode::OK,
        &host_json(&c.ops.host(c.who(), c.arg("id"))?),
    ))
}

pub async fn vms(c: Call<'_>) -> Reply {
    let page = c.ops.vms(c.who(), &query_from(c.req)?)?;
    let items: Vec<_> = page
        .items
        .iter()
        .map(|v| vm_json(v, &c.ops.vm_host_name(v), false))
        .collect();
    let mut r = json(StatusCode::OK, &serde_json::Value::Array(items));
    if let Ok(v) = page.total.to_string().parse() {
        r.headers_mut().insert("x-total-count", v);
    }
    Ok(r)
}

pub async fn vm(c: Call<'_>) -> Reply {
    let vm = c.ops.vm(c.who(), c.arg("id"))?;
    Ok(json(
        StatusCode::OK,
        &vm_json(&vm, &c.ops.vm_host_name(&vm), true),
    ))
}

pub async fn power(c: Call<'_>) -> Reply {
    let body: PowerBody = parse_body(c.req)?;
    let action = PowerAction::parse(&body.action).ok_or_else(|| {
        bad_request(format!(
            "unknown action {:?}; expected one of start, shutdown, poweroff, pause, resume, reboot",
            body.action
        ))
    })?;
    let job = c
        .ops
        .power(c.who(), c.arg("id"), action, body.timeout_secs)
        .await?;
    Ok(json(StatusCode::ACCEPTED, &json!({"job": job.id})))
}

pub async fn jobs(c: Call<'_>) -> Reply {
    let vm = c.req.query_param("vm");
    let jobs = c.ops.jobs(c.who(), vm.as_deref(), 200)?;
    Ok(json(StatusCode::OK, &jobs.iter().map(job_json).collect()))
}

pub async fn job(c: Call<'_>) -> Reply {
    let id = c.arg("id");
    let id: u64 = id
        .parse()
        .map_err(|_| OpsError::NotFound(format!("no job with id {id}")))?;
    Ok(json(StatusCode::OK, &job_json(&c.ops.job(c.who(), id)?)))
}

//! REST routes for high availability: `/api/v1/cluster`, `/ha/settings`,
//! `/hosts/{id}/ha`, `/vms/{id}/ha`, `/failovers`, `/ha/events`,
//! `/physical-machines`; their routes are in `routes::ROUTES`.

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::routes::{Call, Reply};
use super::views::host_json;
use super::{parse_body, parse_optional_body};
use crate::http::json;
use lifeboat_core::model::Failover;
use lifeboat_core::ops::ClusterView;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FailbackBody {
    #[serde(default)]
    confirm: bool,
}

fn ok(v: Value) -> Reply {
    Ok(json(StatusCode::OK, &v))
}

pub async fn cluster(c: Call<'_>) -> Reply {
    ok(cluster_json(&c.ops.cluster_view(c.who())?))
}

pub async fn settings(c: Call<'_>) -> Reply {
    ok(json!(c.ops.cluster_view(c.who())?.settings))
}

pub async fn set_settings(c: Call<'_>) -> Reply {
    ok(json!(
        c.ops.set_cluster_ha(c.who(), parse_body(c.req)?).await?
    ))
}

pub async fn events(c: Call<'_>) -> Reply {
    let source = c.req.query_param("source");
    ok(json!(c.ops.ha_history(c.who(), source.as_deref(), 500)?))
}

pub async fn host_ha(c: Call<'_>) -> Reply {
    ok(json!(c.ops.host_ha(c.who(), c.arg("id"))?))
}

pub async fn set_host_ha(c: Call<'_>) -> Reply {
    let input = parse_body(c.req)?;
    ok(json!(c.ops.set_host_ha(c.who(), c.arg("id"), input).await?))
}

pub async fn vm_ha(c: Call<'_>) -> Reply {
    ok(json!(c.ops.vm_ha(c.who(), c.arg("id"))?))
}

pub async fn set_vm_ha(c: Call<'_>) -> Reply {
    let input = parse_body(c.req)?;
    ok(json!(c.ops.set_vm_ha(c.who(), c.arg("id"), input).await?))
}

pub async fn failovers(c: Call<'_>) -> Reply {
    let list = c.ops.failovers(c.who())?;
    ok(Value::Array(list.iter().map(failover_json).collect()))
}

pub async fn failover(c: Call<'_>) -> Reply {
    ok(failover_json(&c.ops.failover(c.who(), c.arg("id"))?))
}

pub async fn physical_machines(c: Call<'_>) -> Reply {
    ok(json!(c.ops.physical_machines(c.who())?))
}

pub async fn add_physical_machine(c: Call<'_>) -> Reply {
    let pm = c
        .ops
        .add_physical_machine(c.who(), parse_body(c.req)?)
        .await?;
    Ok(json(StatusCode::CREATED, &json!(pm)))
}

pub async fn physical_machine(c: Call<'_>) -> Reply {
    ok(json!(c.ops.physical_machine(c.who(), c.arg("id"))?))
}

pub async fn delete_physical_machine(c: Call<'_>) -> Reply {
    c.ops.delete_physical_machine(c.who(), c.arg("id")).await?;
    ok(json!({"deleted": true}))
}

pub async fn failback(c: Call<'_>) -> Reply {
    let body: FailbackBody = parse_optional_body(c.req)?;
    let id = c.arg("id");
    ok(json!(
        c.ops.failback_physical(c.who(), id, body.confirm).await?
    ))
}

pub fn cluster_json(c: &ClusterView) -> Value {
    json!({
        "settings": c.settings,
        "admission_warning": c.admission_warning,
        "hosts": c.hosts.iter().map(|h| {
            let mut v = host_json(&h.view);
            v["ha_state"] = json!(h.state.as_str());
            v["ha_reason"] = json!(h.reason);
            v["protected_vms"] = json!(h.protected_vms);
            v
        }).collect::<Vec<_>>(),
    })
}

pub fn failover_json(f: &Failover) -> Value {
    let mut v = json!(f);
    if let Some(vms) = v["vms"].as_array_mut() {
        for vm in vms {
            // The cached definition is large and not for display.
            vm.as_object_mut().map(|o| o.remove("config"));
        }
    }
    v["timeline"] = f
        .timeline()
        .iter()
        .map(|(secs, what)| json!({"seconds": secs, "what": what}))
        .collect();
    v
}

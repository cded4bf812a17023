//! REST routes for high availability: `/api/v1/cluster`, `/ha/settings`,
//! `/hosts/{id}/ha`, `/vms/{id}/ha`, `/failovers`, `/ha/events`,
//! `/physical-machines`.

use std::sync::Arc;

use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::parse_body;
use super::views::host_json;
use crate::http::{json, Body, Req};
use lifeboat_core::model::Failover;
use lifeboat_core::model::Principal;
use lifeboat_core::ops::{ClusterView, Ops, OpsError};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FailbackBody {
    #[serde(default)]
    confirm: bool,
}

/// `None` when the path is not an HA route.
pub(super) async fn route(
    ops: &Arc<Ops>,
    who: &Principal,
    req: &Req,
    segments: &[&str],
) -> Option<Result<Response<Body>, OpsError>> {
    let m = &req.method;

    let ok = |v: Value| Ok(json(StatusCode::OK, &v));
    let result = async {
        match (segments, m) {
            (["cluster"], &Method::GET) => ok(cluster_json(&ops.cluster_view(who)?)),
            (["ha", "settings"], &Method::GET) => ok(json!(ops.cluster_view(who)?.settings)),
            (["ha", "settings"], &Method::PUT) => {
                ok(json!(ops.set_cluster_ha(who, parse_body(req)?).await?))
            }
            (["ha", "events"], &Method::GET) => {
                let source = req.query_param("source");
                ok(json!(ops.ha_history(who, source.as_deref(), 500)?))
            }
            (["hosts", id, "ha"], &Method::GET) => ok(json!(ops.host_ha(who, id)?)),
            (["hosts", id, "ha"], &Method::PUT) => {
                ok(json!(ops.set_host_ha(who, id, parse_body(req)?).await?))
            }
            (["vms", id, "ha"], &Method::GET) => ok(json!(ops.vm_ha(who, id)?)),
            (["vms", id, "ha"], &Method::PUT) => {
                ok(json!(ops.set_vm_ha(who, id, parse_body(req)?).await?))
            }
            (["failovers"], &Method::GET) => ok(Value::Array(
                ops.failovers(who)?.iter().map(failover_json).collect(),
            )),
            (["failovers", id], &Method::GET) => ok(failover_json(&ops.failover(who, id)?)),
            (["physical-machines"], &Method::GET) => ok(json!(ops.physical_machines(who)?)),
            (["physical-machines"], &Method::POST) => {
                let pm = ops.add_physical_machine(who, parse_body(req)?).await?;
                Ok(json(StatusCode::CREATED, &json!(pm)))
            }
            (["physical-machines", id], &Method::GET) => ok(json!(ops.physical_machine(who, id)?)),
            (["physical-machines", id], &Method::DELETE) => {
                ops.delete_physical_machine(who, id).await?;
                ok(json!({"deleted": true}))
            }
            (["physical-machines", id, "failback"], &Method::POST) => {
                let body: FailbackBody = if req.body.is_empty() {
                    FailbackBody::default()
                } else {
                    parse_body(req)?
                };
                ok(json!(ops.failback_physical(who, id, body.confirm).await?))
            }
            _ => Err(super::not_mine()),
        }
    }
    .await;
    super::claimed(result)
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

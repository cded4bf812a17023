//! REST routes for access control: `/api/v1/users`, `/roles`,
//! `/privileges`, `/policies` (access policies), `/category-rules`,
//! `/vms/{id}/categories`, and `/audit` (JSON, or CSV with `format=csv`).

use std::sync::Arc;

use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::parse_body;
use crate::http::{json, response, Body, Req};
use lifeboat_core::model::{Principal, Privilege};
use lifeboat_core::ops::{audit_csv, AuditFilter, Ops, OpsError};

/// `None` when the path is not one of these routes.
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
            (["users"], &Method::GET) => ok(json!(ops.users(who)?)),
            (["users"], &Method::POST) => {
                let user = ops.create_user(who, parse_body(req)?).await?;
                Ok(json(StatusCode::CREATED, &json!(user)))
            }
            (["users", name], &Method::GET) => ok(json!(ops.user(who, name)?)),
            (["users", name], &Method::PUT | &Method::PATCH) => {
                ok(json!(ops.update_user(who, name, parse_body(req)?).await?))
            }
            (["users", name], &Method::DELETE) => {
                ops.delete_user(who, name).await?;
                ok(json!({"deleted": true}))
            }
            (["roles"], &Method::GET) => ok(json!(ops.roles(who)?)),
            (["roles"], &Method::POST) => {
                let role = ops.put_role(who, parse_body(req)?, true).await?;
                Ok(json(StatusCode::CREATED, &json!(role)))
            }
            (["roles", name], &Method::GET) => ok(json!(ops.role(who, name)?)),
            (["roles", name], &Method::PUT) => {
                let mut role: lifeboat_core::model::RoleDef = parse_body(req)?;
                if role.name != *name {
                    return Err(OpsError::BadRequest("a role cannot be renamed".into()));
                }
                role.builtin = false;
                ok(json!(ops.put_role(who, role, false).await?))
            }
            (["roles", name], &Method::DELETE) => {
                ops.delete_role(who, name).await?;
                ok(json!({"deleted": true}))
            }
            (["policies"], &Method::GET) => ok(json!(ops.access_policies(who)?)),
            (["policies"], &Method::POST) => {
                let policy = ops.put_access_policy(who, parse_body(req)?, true).await?;
                Ok(json(StatusCode::CREATED, &json!(policy)))
            }
            (["policies", name], &Method::GET) => ok(json!(ops.access_policy(who, name)?)),
            (["policies", name], &Method::PUT) => {
                let policy: lifeboat_core::model::AccessPolicy = parse_body(req)?;
                if policy.name != *name {
                    return Err(OpsError::BadRequest("a policy cannot be renamed".into()));
                }
                ok(json!(ops.put_access_policy(who, policy, false).await?))
            }
            (["policies", name], &Method::DELETE) => {
                ops.delete_access_policy(who, name).await?;
                ok(json!({"deleted": true}))
            }
            (["category-rules"], &Method::GET) => ok(json!(ops.category_rules(who)?)),
            (["category-rules"], &Method::POST) => {
                let rule = ops.add_category_rule(who, parse_body(req)?).await?;
                Ok(json(StatusCode::CREATED, &json!(rule)))
            }
            (["category-rules", id], &Method::DELETE) => {
                ops.delete_category_rule(who, id).await?;
                ok(json!({"deleted": true}))
            }
            (["vms", id, "categories"], &Method::GET) => {
                let (own, effective) = ops.vm_own_categories(who, id)?;
                ok(json!({"own": own, "effective": effective}))
            }
            (["vms", id, "categories"], &Method::PUT) => ok(json!(
                ops.set_vm_categories(who, id, parse_body(req)?).await?
            )),
            (["directories"], &Method::GET) => ok(Value::Array(
                ops.directories(who)?.iter().map(directory_json).collect(),
            )),
            (["directories"], &Method::POST) => {
                let d = ops.put_directory(who, parse_body(req)?, true).await?;
                Ok(json(StatusCode::CREATED, &directory_json(&d)))
            }
            (["directories", name], &Method::GET) => ok(directory_json(&ops.directory(who, name)?)),
            (["directories", name], &Method::PUT) => {
                let d: lifeboat_core::model::Directory = parse_body(req)?;
                if d.name != *name {
                    return Err(OpsError::BadRequest("a directory cannot be renamed".into()));
                }
                ok(directory_json(&ops.put_directory(who, d, false).await?))
            }
            (["directories", name], &Method::DELETE) => {
                ops.delete_directory(who, name).await?;
                ok(json!({"deleted": true}))
            }
            (["tokens"], &Method::GET) => ok(json!(ops.api_tokens(who))),
            (["tokens"], &Method::POST) => {
                let (token, record) = ops.create_api_token(who, parse_body(req)?).await?;
                let mut v = json!(record);
                v["token"] = json!(token);
                Ok(json(StatusCode::CREATED, &v))
            }
            (["tokens", id], &Method::DELETE) => {
                ops.revoke_api_token(who, id).await?;
                ok(json!({"revoked": true}))
            }
            (["privileges"], &Method::GET) => ok(json!(Privilege::ALL
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>())),
            (["audit"], &Method::GET) => {
                let number = |name: &str| -> Result<Option<u64>, OpsError> {
                    req.query_param(name)
                        .map(|v| {
                            v.parse().map_err(|_| {
                                OpsError::BadRequest(format!("{name} must be UNIX seconds"))
                            })
                        })
                        .transpose()
                };
                let filter = AuditFilter {
                    user: req.query_param("user"),
                    action: req.query_param("action"),
                    object: req.query_param("object"),
                    since: number("since")?,
                    until: number("until")?,
                    limit: number("limit")?.unwrap_or(1000) as usize,
                };
                let records = ops.audit_records(who, &filter)?;
                match req.query_param("format").as_deref() {
                    None | Some("json") => ok(json!(records)),
                    Some("csv") => Ok(response(
                        StatusCode::OK,
                        "text/csv; charset=utf-8",
                        audit_csv(&records),
                    )),
                    Some(other) => Err(OpsError::BadRequest(format!("unknown format {other:?}"))),
                }
            }
            _ => Err(super::not_mine()),
        }
    }
    .await;
    super::claimed(result)
}

/// A directory as shown: the sealed bind password is left out.
fn directory_json(d: &lifeboat_core::model::Directory) -> Value {
    let mut v = json!(d);
    if let Some(o) = v.as_object_mut() {
        o.remove("bind_password_sealed");
        o.insert(
            "bind_password_set".into(),
            json!(!d.bind_password_sealed.is_empty()),
        );
    }
    v
}

//! REST handlers for sessions, API tokens and access control: `/session`,
//! `/tokens`, `/users`, `/roles`, `/privileges`, `/policies` (access
//! policies), `/category-rules`, `/directories`, `/vms/{id}/categories`,
//! and `/audit` (JSON, or CSV with `format=csv`).

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::routes::{Call, Reply};
use super::{deleted, parse_body};
use crate::http::{json, response};
use lifeboat_core::model::{AccessPolicy, Directory, Privilege, RoleDef, SESSION_IDLE};
use lifeboat_core::ops::OpsError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

fn ok(v: Value) -> Reply {
    Ok(json(StatusCode::OK, &v))
}

fn created(v: Value) -> Reply {
    Ok(json(StatusCode::CREATED, &v))
}

/// The one unauthenticated route: trading a password for a token.
pub async fn login(c: Call<'_>) -> Reply {
    let body: LoginBody = parse_body(c.req)?;
    let (principal, token, _) = c
        .ops
        .login(&body.username, &body.password, &c.req.source())
        .await?;
    created(json!({
        "token": token,
        "user": principal.user(),
        "role": principal.role(),
        "privileges": principal.privileges().map(|p| p.as_str()).collect::<Vec<_>>(),
        "idle_timeout_secs": SESSION_IDLE.as_secs(),
    }))
}

pub async fn logout(c: Call<'_>) -> Reply {
    let token = c
        .req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .ok_or_else(|| {
            OpsError::BadRequest("DELETE /session needs the bearer token to end".into())
        })?;
    c.ops.logout(c.who(), token.trim()).await?;
    ok(json!({"ended": true}))
}

pub async fn privileges(_: Call<'_>) -> Reply {
    ok(json!(Privilege::ALL
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()))
}

pub async fn tokens(c: Call<'_>) -> Reply {
    ok(json!(c.ops.api_tokens(c.who())))
}

pub async fn create_token(c: Call<'_>) -> Reply {
    let (token, record) = c.ops.create_api_token(c.who(), parse_body(c.req)?).await?;
    let mut v = json!(record);
    v["token"] = json!(token);
    created(v)
}

pub async fn revoke_token(c: Call<'_>) -> Reply {
    c.ops.revoke_api_token(c.who(), c.arg("id")).await?;
    ok(json!({"revoked": true}))
}

pub async fn users(c: Call<'_>) -> Reply {
    ok(json!(c.ops.users(c.who())?))
}

pub async fn create_user(c: Call<'_>) -> Reply {
    created(json!(c.ops.create_user(c.who(), parse_body(c.req)?).await?))
}

pub async fn user(c: Call<'_>) -> Reply {
    ok(json!(c.ops.user(c.who(), c.arg("name"))?))
}

pub async fn update_user(c: Call<'_>) -> Reply {
    let input = parse_body(c.req)?;
    ok(json!(
        c.ops.update_user(c.who(), c.arg("name"), input).await?
    ))
}

pub async fn delete_user(c: Call<'_>) -> Reply {
    c.ops.delete_user(c.who(), c.arg("name")).await?;
    deleted()
}

pub async fn roles(c: Call<'_>) -> Reply {
    ok(json!(c.ops.roles(c.who())?))
}

pub async fn create_role(c: Call<'_>) -> Reply {
    created(json!(
        c.ops.put_role(c.who(), parse_body(c.req)?, true).await?
    ))
}

pub async fn role(c: Call<'_>) -> Reply {
    ok(json!(c.ops.role(c.who(), c.arg("name"))?))
}

pub async fn update_role(c: Call<'_>) -> Reply {
    let mut role: RoleDef = parse_body(c.req)?;
    if role.name != c.arg("name") {
        return Err(OpsError::BadRequest("a role cannot be renamed".into()));
    }
    role.builtin = false;
    ok(json!(c.ops.put_role(c.who(), role, false).await?))
}

pub async fn delete_role(c: Call<'_>) -> Reply {
    c.ops.delete_role(c.who(), c.arg("name")).await?;
    deleted()
}

pub async fn policies(c: Call<'_>) -> Reply {
    ok(json!(c.ops.access_policies(c.who())?))
}

pub async fn create_policy(c: Call<'_>) -> Reply {
    let policy = c.ops.put_access_policy(c.who(), parse_body(c.req)?, true);
    created(json!(policy.await?))
}

pub async fn policy(c: Call<'_>) -> Reply {
    ok(json!(c.ops.access_policy(c.who(), c.arg("name"))?))
}

pub async fn update_policy(c: Call<'_>) -> Reply {
    let policy: AccessPolicy = parse_body(c.req)?;
    if policy.name != c.arg("name") {
        return Err(OpsError::BadRequest("a policy cannot be renamed".into()));
    }
    ok(json!(
        c.ops.put_access_policy(c.who(), policy, false).await?
    ))
}

pub async fn delete_policy(c: Call<'_>) -> Reply {
    c.ops.delete_access_policy(c.who(), c.arg("name")).await?;
    deleted()
}

pub async fn category_rules(c: Call<'_>) -> Reply {
    ok(json!(c.ops.category_rules(c.who())?))
}

pub async fn add_category_rule(c: Call<'_>) -> Reply {
    created(json!(
        c.ops.add_category_rule(c.who(), parse_body(c.req)?).await?
    ))
}

pub async fn delete_category_rule(c: Call<'_>) -> Reply {
    c.ops.delete_category_rule(c.who(), c.arg("id")).await?;
    deleted()
}

pub async fn vm_categories(c: Call<'_>) -> Reply {
    let (own, effective) = c.ops.vm_own_categories(c.who(), c.arg("id"))?;
    ok(json!({"own": own, "effective": effective}))
}

pub async fn set_vm_categories(c: Call<'_>) -> Reply {
    let input = parse_body(c.req)?;
    ok(json!(
        c.ops.set_vm_categories(c.who(), c.arg("id"), input).await?
    ))
}

pub async fn directories(c: Call<'_>) -> Reply {
    let list = c.ops.directories(c.who())?;
    ok(Value::Array(list.iter().map(directory_json).collect()))
}

pub async fn create_directory(c: Call<'_>) -> Reply {
    let d = c
        .ops
        .put_directory(c.who(), parse_body(c.req)?, true)
        .await?;
    created(directory_json(&d))
}

pub async fn directory(c: Call<'_>) -> Reply {
    ok(directory_json(&c.ops.directory(c.who(), c.arg("name"))?))
}

pub async fn update_directory(c: Call<'_>) -> Reply {
    let d: Directory = parse_body(c.req)?;
    if d.name != c.arg("name") {
        return Err(OpsError::BadRequest("a directory cannot be renamed".into()));
    }
    ok(directory_json(
        &c.ops.put_directory(c.who(), d, false).await?,
    ))
}

pub async fn delete_directory(c: Call<'_>) -> Reply {
    c.ops.delete_directory(c.who(), c.arg("name")).await?;
    deleted()
}

pub async fn audit(c: Call<'_>) -> Reply {
    let req = c.req;
    let filter = crate::reports::audit_filter(req, 1000)?;
    let records = c.ops.audit_records(c.who(), &filter)?;
    match req.query_param("format").as_deref() {
        None | Some("json") => ok(json!(records)),
        Some("csv") => Ok(response(
            StatusCode::OK,
            "text/csv; charset=utf-8",
            crate::reports::audit_table(&records).csv(),
        )),
        Some(other) => Err(OpsError::BadRequest(format!("unknown format {other:?}"))),
    }
}

/// A directory as shown: the sealed bind password is left out.
fn directory_json(d: &Directory) -> Value {
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

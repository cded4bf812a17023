//! Console forms for access control: users, roles, access policies,
//! category rules, VM categories, directories and API tokens. Their entries
//! (path, privilege, handler) are in `forms::FORMS`.

use std::collections::{BTreeMap, BTreeSet};

use hyper::StatusCode;
use lifeboat_core::model::{
    AccessPolicy, CategoryRule, GroupMapping, Privilege, RoleDef, TokenRequest, UserInput,
};
use lifeboat_core::ops::OpsError;

use super::forms::{FormReply, Submission};
use super::{admin_pages, html};
use crate::http::redirect;

/// Lines of `KEY=VALUE`.
fn pairs(text: &str) -> Result<BTreeMap<String, String>, OpsError> {
    super::ha_pages::parse_pairs(text).map_err(OpsError::BadRequest)
}

fn privileges_of(s: &Submission<'_>) -> Result<BTreeSet<Privilege>, OpsError> {
    s.form
        .iter()
        .filter(|(k, _)| k == "privilege")
        .map(|(_, v)| {
            serde_json::from_value(serde_json::json!(v))
                .map_err(|_| OpsError::BadRequest(format!("unknown privilege {v:?}")))
        })
        .collect()
}

pub async fn create_user(s: Submission<'_>) -> FormReply {
    let input = UserInput {
        name: s.field("name"),
        password: s.field("password"),
        role: s.field("role"),
        ..Default::default()
    };
    s.ops.create_user(s.who, input).await?;
    Ok(redirect("/users"))
}

pub async fn update_user(s: Submission<'_>) -> FormReply {
    let input = UserInput {
        role: s.field("role"),
        disabled: s.field("disabled").map(|d| d == "true"),
        ..Default::default()
    };
    s.ops.update_user(s.who, s.arg("name"), input).await?;
    Ok(redirect("/users"))
}

pub async fn delete_user(s: Submission<'_>) -> FormReply {
    s.ops.delete_user(s.who, s.arg("name")).await?;
    Ok(redirect("/users"))
}

pub async fn create_role(s: Submission<'_>) -> FormReply {
    let role = RoleDef {
        name: s.field("name").unwrap_or_default(),
        description: s.field("description").unwrap_or_default(),
        privileges: privileges_of(&s)?,
        builtin: false,
    };
    s.ops.put_role(s.who, role, true).await?;
    Ok(redirect("/roles"))
}

pub async fn delete_role(s: Submission<'_>) -> FormReply {
    s.ops.delete_role(s.who, s.arg("name")).await?;
    Ok(redirect("/roles"))
}

pub async fn create_access_policy(s: Submission<'_>) -> FormReply {
    let rules = s
        .text("rules")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (effect, rest) = line.trim().split_once(' ').unwrap_or((line, ""));
            let (key, value) = rest.trim().split_once('=').unwrap_or((rest, ""));
            serde_json::from_value(serde_json::json!({
                "effect": effect, "key": key.trim(), "value": value.trim()
            }))
            .map_err(|_| OpsError::BadRequest(format!("cannot read rule {line:?}")))
        })
        .collect::<Result<_, _>>()?;
    let policy = AccessPolicy {
        name: s.text("name"),
        description: String::new(),
        rules,
    };
    s.ops.put_access_policy(s.who, policy, true).await?;
    Ok(redirect("/access-policies"))
}

pub async fn delete_access_policy(s: Submission<'_>) -> FormReply {
    s.ops.delete_access_policy(s.who, s.arg("name")).await?;
    Ok(redirect("/access-policies"))
}

pub async fn add_category_rule(s: Submission<'_>) -> FormReply {
    let rule = CategoryRule {
        id: String::new(),
        key: s.text("key"),
        value: s.text("value"),
        name_pattern: s.text("name_pattern"),
        host: s.text("host"),
    };
    s.ops.add_category_rule(s.who, rule).await?;
    Ok(redirect("/access-policies"))
}

pub async fn delete_category_rule(s: Submission<'_>) -> FormReply {
    s.ops.delete_category_rule(s.who, s.arg("id")).await?;
    Ok(redirect("/access-policies"))
}

pub async fn set_vm_categories(s: Submission<'_>) -> FormReply {
    let id = s.arg("id");
    s.ops
        .set_vm_categories(s.who, id, pairs(&s.text("categories"))?)
        .await?;
    Ok(redirect(&format!("/vms/{id}")))
}

fn group_mapping(line: &str) -> Result<GroupMapping, OpsError> {
    let (group, rest) = line
        .trim()
        .split_once('=')
        .ok_or_else(|| OpsError::BadRequest(format!("mapping {line:?}: GROUP=ROLE[:POLICIES]")))?;
    let (role, policies) = rest.split_once(':').unwrap_or((rest, ""));
    Ok(GroupMapping {
        group: group.trim().to_string(),
        role: role.trim().to_string(),
        policies: policies
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
    })
}

pub async fn create_directory(s: Submission<'_>) -> FormReply {
    let mappings = s
        .text("mappings")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(group_mapping)
        .collect::<Result<Vec<_>, _>>()?;
    let directory = serde_json::from_value(serde_json::json!({
        "name": s.text("name"),
        "url": s.text("url"),
        "starttls": s.checked("starttls"),
        "allow_plain": s.checked("allow_plain"),
        "ca_pem": s.text("ca_pem"),
        "bind_dn": s.text("bind_dn"),
        "bind_password": s.field("bind_password").unwrap_or_default(),
        "user_base": s.text("user_base"),
        "user_attribute": s.text("user_attribute"),
        "group_base": s.text("group_base"),
        "nested_groups": s.checked("nested_groups"),
        "mappings": mappings,
    }))
    .map_err(|e| OpsError::BadRequest(e.to_string()))?;
    s.ops.put_directory(s.who, directory, true).await?;
    Ok(redirect("/directories"))
}

pub async fn delete_directory(s: Submission<'_>) -> FormReply {
    s.ops.delete_directory(s.who, s.arg("name")).await?;
    Ok(redirect("/directories"))
}

pub async fn create_token(s: Submission<'_>) -> FormReply {
    let privileges = privileges_of(&s)?;
    let request = TokenRequest {
        name: s.text("name"),
        expires_in_days: s.text("expires_in_days").parse().unwrap_or(0),
        privileges: (!privileges.is_empty()).then_some(privileges),
    };
    let (token, _) = s.ops.create_api_token(s.who, request).await?;
    let page = admin_pages::tokens(s.ctx, &s.ops.api_tokens(s.who), Some(&token));
    Ok(html(StatusCode::OK, page))
}

pub async fn revoke_token(s: Submission<'_>) -> FormReply {
    s.ops.revoke_api_token(s.who, s.arg("id")).await?;
    Ok(redirect("/tokens"))
}

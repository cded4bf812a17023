//! Console forms for access control: users, roles, access policies,
//! category rules, VM categories, directories and API tokens.

use std::sync::Arc;

use hyper::{Response, StatusCode};

use super::layout::PageCtx;
use super::{admin_pages, field, html};
use crate::http::{redirect, Body};
use lifeboat_core::model::Principal;
use lifeboat_core::ops::{Ops, OpsError};

type Form = [(String, String)];

/// Lines of `KEY=VALUE`.
fn pairs(text: &str) -> Result<std::collections::BTreeMap<String, String>, OpsError> {
    super::ha_pages::parse_pairs(text).map_err(OpsError::BadRequest)
}

fn privileges_of(
    form: &Form,
) -> Result<std::collections::BTreeSet<lifeboat_core::model::Privilege>, OpsError> {
    form.iter()
        .filter(|(k, _)| k == "privilege")
        .map(|(_, v)| {
            serde_json::from_value(serde_json::json!(v))
                .map_err(|_| OpsError::BadRequest(format!("unknown privilege {v:?}")))
        })
        .collect()
}

/// `None` when the path is not one of these forms.
pub(super) async fn post(
    ops: &Arc<Ops>,
    who: &Principal,
    form: &Form,
    segments: &[&str],
    ctx: &PageCtx<'_>,
) -> Option<Result<Response<Body>, OpsError>> {
    let text = |name: &str| field(form, name).unwrap_or_default().trim().to_string();
    let result = async {
        match segments {
            ["users"] => {
                let input = lifeboat_core::model::UserInput {
                    name: field(form, "name"),
                    password: field(form, "password"),
                    role: field(form, "role"),
                    ..Default::default()
                };
                ops.create_user(who, input).await?;
                Ok(redirect("/users"))
            }
            ["users", name] => {
                let input = lifeboat_core::model::UserInput {
                    role: field(form, "role"),
                    disabled: field(form, "disabled").map(|d| d == "true"),
                    ..Default::default()
                };
                ops.update_user(who, name, input).await?;
                Ok(redirect("/users"))
            }
            ["users", name, "delete"] => {
                ops.delete_user(who, name).await?;
                Ok(redirect("/users"))
            }
            ["roles"] => {
                let privileges = privileges_of(form)?;
                let role = lifeboat_core::model::RoleDef {
                    name: field(form, "name").unwrap_or_default(),
                    description: field(form, "description").unwrap_or_default(),
                    privileges,
                    builtin: false,
                };
                ops.put_role(who, role, true).await?;
                Ok(redirect("/roles"))
            }
            ["roles", name, "delete"] => {
                ops.delete_role(who, name).await?;
                Ok(redirect("/roles"))
            }
            ["access-policies"] => {
                let rules = text("rules")
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
                let policy = lifeboat_core::model::AccessPolicy {
                    name: text("name"),
                    description: String::new(),
                    rules,
                };
                ops.put_access_policy(who, policy, true).await?;
                Ok(redirect("/access-policies"))
            }
            ["access-policies", name, "delete"] => {
                ops.delete_access_policy(who, name).await?;
                Ok(redirect("/access-policies"))
            }
            ["category-rules"] => {
                let rule = lifeboat_core::model::CategoryRule {
                    id: String::new(),
                    key: text("key"),
                    value: text("value"),
                    name_pattern: text("name_pattern"),
                    host: text("host"),
                };
                ops.add_category_rule(who, rule).await?;
                Ok(redirect("/access-policies"))
            }
            ["category-rules", id, "delete"] => {
                ops.delete_category_rule(who, id).await?;
                Ok(redirect("/access-policies"))
            }
            ["vms", id, "categories"] => {
                ops.set_vm_categories(who, id, pairs(&text("categories"))?)
                    .await?;
                Ok(redirect(&format!("/vms/{id}")))
            }
            ["directories"] => {
                let mappings = text("mappings")
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|line| {
                        let (group, rest) = line.trim().split_once('=').ok_or_else(|| {
                            OpsError::BadRequest(format!("mapping {line:?}: GROUP=ROLE[:POLICIES]"))
                        })?;
                        let (role, policies) = rest.split_once(':').unwrap_or((rest, ""));
                        Ok(lifeboat_core::model::GroupMapping {
                            group: group.trim().to_string(),
                            role: role.trim().to_string(),
                            policies: policies
                                .split(',')
                                .map(|p| p.trim().to_string())
                                .filter(|p| !p.is_empty())
                                .collect(),
                        })
                    })
                    .collect::<Result<Vec<lifeboat_core::model::GroupMapping>, OpsError>>()?;
                let directory = serde_json::from_value(serde_json::json!({
                    "name": text("name"),
                    "url": text("url"),
                    "starttls": field(form, "starttls").is_some(),
                    "allow_plain": field(form, "allow_plain").is_some(),
                    "ca_pem": text("ca_pem"),
                    "bind_dn": text("bind_dn"),
                    "bind_password": field(form, "bind_password").unwrap_or_default(),
                    "user_base": text("user_base"),
                    "user_attribute": text("user_attribute"),
                    "group_base": text("group_base"),
                    "nested_groups": field(form, "nested_groups").is_some(),
                    "mappings": mappings,
                }))
                .map_err(|e| OpsError::BadRequest(e.to_string()))?;
                ops.put_directory(who, directory, true).await?;
                Ok(redirect("/directories"))
            }
            ["directories", name, "delete"] => {
                ops.delete_directory(who, name).await?;
                Ok(redirect("/directories"))
            }
            ["tokens"] => {
                let privileges = privileges_of(form)?;
                let request = lifeboat_core::model::TokenRequest {
                    name: text("name"),
                    expires_in_days: text("expires_in_days").parse().unwrap_or(0),
                    privileges: (!privileges.is_empty()).then_some(privileges),
                };
                let (token, _) = ops.create_api_token(who, request).await?;
                let page = admin_pages::tokens(ctx, &ops.api_tokens(who), Some(&token));
                Ok(html(StatusCode::OK, page))
            }
            ["tokens", id, "delete"] => {
                ops.revoke_api_token(who, id).await?;
                Ok(redirect("/tokens"))
            }
            _ => Err(OpsError::NotFound(String::new())),
        }
    }
    .await;
    match result {
        Err(OpsError::NotFound(msg)) if msg.is_empty() => None,
        other => Some(other),
    }
}

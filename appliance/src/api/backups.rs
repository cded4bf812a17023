//! REST handlers for datastores, backups, restores and backup policies.

use hyper::StatusCode;
use lifeboat_proto::BackupMode;
use serde::Deserialize;
use serde_json::json;

use super::routes::{Call, Reply};
use super::views::{backup_json, datastore_json};
use super::{bad_request, deleted, parse_body, parse_optional_body};
use crate::http::json;
use lifeboat_core::model::DatastoreInput;
use lifeboat_core::ops::{BootVerifyOptions, PolicyInput, RestoreOptions};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    #[serde(default)]
    datastore: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupPatch {
    protected: bool,
}

fn job_accepted(id: u64) -> Reply {
    Ok(json(StatusCode::ACCEPTED, &json!({"job": id})))
}

pub async fn backup_vm(c: Call<'_>) -> Reply {
    let body: BackupBody = parse_optional_body(c.req)?;
    let mode = match body.mode.as_deref().unwrap_or("auto") {
        "auto" => BackupMode::Auto,
        "full" => BackupMode::Full,
        "incremental" => BackupMode::Incremental,
        other => {
            return Err(bad_request(format!(
                "unknown mode {other:?}; expected auto, full or incremental"
            )))
        }
    };
    let job = c
        .ops
        .backup(c.who(), c.arg("id"), body.datastore.as_deref(), mode)
        .await?;
    job_accepted(job.id)
}

pub async fn vm_backups(c: Call<'_>) -> Reply {
    let id = c.arg("id");
    c.ops.vm(c.who(), id)?;
    let list = c.ops.vm_backups(c.who(), id).await?;
    Ok(json(
        StatusCode::OK,
        &list.iter().map(|b| backup_json(b, false)).collect(),
    ))
}

pub async fn datastores(c: Call<'_>) -> Reply {
    let list = c.ops.datastores(c.who()).await?;
    Ok(json(
        StatusCode::OK,
        &list.iter().map(datastore_json).collect(),
    ))
}

pub async fn add_datastore(c: Call<'_>) -> Reply {
    let input: DatastoreInput = parse_body(c.req)?;
    let added = c.ops.add_datastore(c.who(), input).await?;
    Ok(json(StatusCode::CREATED, &datastore_json(&added)))
}

pub async fn datastore(c: Call<'_>) -> Reply {
    let ds = c.ops.datastore(c.who(), c.arg("name")).await?;
    Ok(json(StatusCode::OK, &datastore_json(&ds)))
}

pub async fn delete_datastore(c: Call<'_>) -> Reply {
    c.ops.delete_datastore(c.who(), c.arg("name")).await?;
    deleted()
}

pub async fn mount_datastore(c: Call<'_>) -> Reply {
    let ds = c.ops.mount_datastore(c.who(), c.arg("name")).await?;
    Ok(json(StatusCode::OK, &datastore_json(&ds)))
}

pub async fn backup(c: Call<'_>) -> Reply {
    let b = c.ops.backup_manifest(c.who(), c.arg("ref")).await?;
    Ok(json(StatusCode::OK, &backup_json(&b, true)))
}

pub async fn set_protected(c: Call<'_>) -> Reply {
    let patch: BackupPatch = parse_body(c.req)?;
    let reference = c.arg("ref");
    c.ops
        .set_protected(c.who(), reference, patch.protected)
        .await?;
    let b = c.ops.backup_manifest(c.who(), reference).await?;
    Ok(json(StatusCode::OK, &backup_json(&b, true)))
}

pub async fn delete_backup(c: Call<'_>) -> Reply {
    c.ops.delete_backup(c.who(), c.arg("ref")).await?;
    deleted()
}

pub async fn verify(c: Call<'_>) -> Reply {
    let job = c.ops.verify(c.who(), c.arg("ref")).await?;
    job_accepted(job.id)
}

pub async fn boot_verify(c: Call<'_>) -> Reply {
    let options: BootVerifyOptions = parse_optional_body(c.req)?;
    let job = c.ops.boot_verify(c.who(), c.arg("ref"), options).await?;
    job_accepted(job.id)
}

pub async fn boot_screenshot(c: Call<'_>) -> Reply {
    let (media_type, bytes) = c.ops.boot_screenshot(c.who(), c.arg("ref")).await?;
    Ok(crate::http::screenshot(&media_type, bytes))
}

pub async fn restore(c: Call<'_>) -> Reply {
    let options: RestoreOptions = parse_optional_body(c.req)?;
    let job = c.ops.restore(c.who(), c.arg("ref"), options).await?;
    job_accepted(job.id)
}

pub async fn policies(c: Call<'_>) -> Reply {
    Ok(json(StatusCode::OK, &json!(c.ops.policies(c.who())?)))
}

pub async fn create_policy(c: Call<'_>) -> Reply {
    let input: PolicyInput = parse_body(c.req)?;
    let p = c.ops.create_policy(c.who(), input).await?;
    Ok(json(StatusCode::CREATED, &json!(p)))
}

pub async fn policy(c: Call<'_>) -> Reply {
    Ok(json(
        StatusCode::OK,
        &json!(c.ops.policy(c.who(), c.arg("id"))?),
    ))
}

pub async fn update_policy(c: Call<'_>) -> Reply {
    let input: PolicyInput = parse_body(c.req)?;
    let p = c.ops.update_policy(c.who(), c.arg("id"), input).await?;
    Ok(json(StatusCode::OK, &json!(p)))
}

pub async fn delete_policy(c: Call<'_>) -> Reply {
    c.ops.delete_policy(c.who(), c.arg("id")).await?;
    deleted()
}

pub async fn run_policy(c: Call<'_>) -> Reply {
    let job = c.ops.run_policy(c.who(), c.arg("id")).await?;
    job_accepted(job.id)
}

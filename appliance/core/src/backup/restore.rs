//! Restore planning and the restore job. A plan turns a backup (manifest and
//! indexes) into the request an agent carries out: where each disk goes, and
//! the definition to create. The job then serves the backup's chunks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_proto::{Command, Outcome, RestoreDisk, RestoreReport, RestoreRequest};
use roxmltree::Document;

use super::serve::serve_chunks;
use super::{ChunkDigest, Datastore, FixedIndexReader, Manifest};
use crate::hub::Hub;
use crate::jobs::Jobs;

const RESTORE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Why a backup cannot be planned for a restore.
#[derive(Debug, thiserror::Error)]
pub enum RestorePlanError {
    #[error("the backed-up domain XML does not parse: {0}")]
    Unparsable(#[from] roxmltree::Error),
    #[error("disk {0} has no file in the backed-up definition")]
    NoFile(String),
}

/// `target → source file` of every disk in a libvirt domain definition.
pub fn disk_paths(config: &str) -> Result<Vec<(String, String)>, RestorePlanError> {
    let doc = Document::parse(config)?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("disk") && n.attribute("device").unwrap_or("disk") == "disk")
        .filter_map(|d| {
            let target = d
                .children()
                .find(|n| n.has_tag_name("target"))?
                .attribute("dev")?;
            let file = d
                .children()
                .find(|n| n.has_tag_name("source"))?
                .attribute("file")?;
            Some((target.to_string(), file.to_string()))
        })
        .collect())
}

/// The request for restoring a backup exactly as it was: same UUID, name,
/// MACs and disk paths. The job token is filled in by [`run`].
pub fn exact_request(
    manifest: &Manifest,
    indexes: &[FixedIndexReader],
    replace: bool,
    start: bool,
) -> Result<RestoreRequest, RestorePlanError> {
    let paths = disk_paths(&manifest.vm.hypervisor_config)?;
    let disks = manifest
        .disks
        .iter()
        .zip(indexes)
        .map(|(d, idx)| {
            let path = paths
                .iter()
                .find(|(t, _)| *t == d.target)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| RestorePlanError::NoFile(d.target.clone()))?;
            Ok(RestoreDisk {
                target: d.target.clone(),
                path,
                format: if d.format == "raw" {
                    "raw".into()
                } else {
                    "qcow2".into()
                },
                size_bytes: d.size_bytes,
                digests: idx.digests().iter().map(|x| x.to_hex()).collect(),
            })
        })
        .collect::<Result<Vec<_>, RestorePlanError>>()?;
    Ok(RestoreRequest {
        job_token: String::new(),
        uuid: manifest.vm.uuid.as_str().to_string(),
        name: manifest.vm.name.clone(),
        config: manifest.vm.hypervisor_config.clone(),
        disks,
        replace,
        start,
        config_drive: None,
        instant_config: None,
        instant_bandwidth_mib: None,
    })
}

/// Runs a restore on `host_id`: serves the chunks the request names.
pub async fn run(
    hub: Arc<Hub>,
    jobs: Arc<Jobs>,
    job_id: u64,
    host_id: String,
    store: Arc<Datastore>,
    mut request: RestoreRequest,
) -> Result<RestoreReport, super::job::JobError> {
    use super::job::JobError;
    let allowed: HashSet<ChunkDigest> = request
        .disks
        .iter()
        .flat_map(|d| d.digests.iter())
        .filter_map(|h| h.parse().ok())
        .collect();
    let (token, channel) = hub.expect_data_channel(&host_id);
    request.job_token = token.clone();
    let server = tokio::spawn(async move {
        let stream = channel.await.map_err(JobError::DataChannel)?;
        serve_chunks(stream, store, allowed)
            .await
            .map_err(JobError::DataChannel)
    });
    let (progress, reporter) = super::job::job_progress(jobs, job_id);
    let reply = hub
        .request_with_progress(
            &host_id,
            Command::Restore(request),
            RESTORE_TIMEOUT,
            Some(progress),
        )
        .await;
    hub.forget_data_channel(&token);
    reporter.abort();
    match reply {
        Ok(Some(Outcome::Restore(report))) => {
            let _ = server.await;
            Ok(report)
        }
        Ok(_) => {
            server.abort();
            Err(JobError::NoReport("restore"))
        }
        Err(e) => {
            server.abort();
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::disk_paths;

    #[test]
    fn finds_file_disks_but_not_cdroms() {
        let xml = "<domain><devices>\
            <disk type='file' device='disk'><source file='/img/a.qcow2'/><target dev='vda'/></disk>\
            <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda'/></disk>\
            <disk type='file' device='cdrom'><target dev='sdb'/></disk></devices></domain>";
        assert_eq!(
            disk_paths(xml).unwrap(),
            vec![("vda".to_string(), "/img/a.qcow2".to_string())]
        );
        assert!(disk_paths("<domain").is_err());
    }
}

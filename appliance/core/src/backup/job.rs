//! One backup run, from plan to manifest: find the previous checkpoint for an
//! incremental run, open the data channel, drive the agent, receive the
//! disks, and write the manifest last. Any failure removes the new backup
//! directory, so an interrupted backup leaves nothing visible.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_proto::{BackupReport, BackupRequest, Command, Outcome, PreviousBackup, PreviousDisk};

use super::manifest::{
    BackupInfo, BackupMode, DiskEntry, Manifest, Nic, VmDescription, FORMAT_VERSION,
};
use super::receive::{receive_disks, ReceivedDisk};
use super::{BackupId, Datastore, VmUuid};
use crate::clock::unix_now;
use crate::hub::Hub;
use crate::inventory::Vm;
use crate::jobs::Jobs;

/// Upper bound for one backup run.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

pub struct BackupRun {
    pub job_id: u64,
    pub vm: Vm,
    pub host_name: String,
    pub hypervisor: String,
    pub datastore: Arc<Datastore>,
    pub mode: lifeboat_proto::BackupMode,
}

/// Why a backup or restore job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Datastore(#[from] super::BackupError),
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Receive(#[from] super::receive::ReceiveError),
    #[error("data channel: {0}")]
    DataChannel(String),
    #[error(transparent)]
    Agent(#[from] crate::hub::HubError),
    #[error("the agent answered without a {0} report")]
    NoReport(&'static str),
}

/// A finished backup.
pub struct BackupDone {
    pub id: BackupId,
    pub manifest: Manifest,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> super::Result<T> + Send + 'static,
) -> Result<T, JobError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// The newest complete backup of `vm` that left a checkpoint, with its
/// per-disk digests: what an incremental run builds on.
fn previous_backup(
    store: &Datastore,
    vm: &VmUuid,
) -> super::Result<Option<(BackupId, PreviousBackup)>> {
    for id in store.list_backups(vm)?.into_iter().rev() {
        let Ok((manifest, indexes)) = store.open_backup(vm, &id) else {
            continue;
        };
        let Some(checkpoint) = manifest.backup.checkpoint.clone() else {
            return Ok(None);
        };
        let disks = manifest
            .disks
            .iter()
            .zip(&indexes)
            .map(|(d, idx)| PreviousDisk {
                target: d.target.clone(),
                size_bytes: d.size_bytes,
                digests: idx.digests().iter().map(|x| x.to_hex()).collect(),
            })
            .collect();
        return Ok(Some((id, PreviousBackup { checkpoint, disks })));
    }
    Ok(None)
}

/// The libvirt checkpoint name for a backup id (`lifeboat-20261125T203000Z`).
pub fn checkpoint_name(id: &BackupId) -> String {
    format!("lifeboat-{}", id.as_str().replace([':', '-'], ""))
}

pub async fn run(hub: Arc<Hub>, jobs: Arc<Jobs>, plan: BackupRun) -> Result<BackupDone, JobError> {
    let vm_uuid: VmUuid = plan.vm.info.uuid.parse()?;
    let started_at = unix_now();
    let store = plan.datastore.clone();
    let (uuid, mode) = (vm_uuid.clone(), plan.mode);
    let (previous, id, dir) = blocking(move || {
        let previous = match mode {
            lifeboat_proto::BackupMode::Full => None,
            _ => previous_backup(&store, &uuid)?,
        };
        let (id, dir) = store.new_backup_dir(&uuid, started_at)?;
        Ok((previous, id, dir))
    })
    .await?;
    let result = run_in(&hub, &jobs, &plan, previous, &id, dir.clone(), started_at).await;
    if result.is_err() {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
    }
    result.map(|manifest| BackupDone { id, manifest })
}

async fn run_in(
    hub: &Arc<Hub>,
    jobs: &Arc<Jobs>,
    plan: &BackupRun,
    previous: Option<(BackupId, PreviousBackup)>,
    id: &BackupId,
    dir: PathBuf,
    started_at: u64,
) -> Result<Manifest, JobError> {
    let targets: Vec<String> = plan
        .vm
        .info
        .disks
        .iter()
        .filter(|d| d.device == "disk")
        .map(|d| d.target.clone())
        .collect();
    let (token, channel) = hub.expect_data_channel(&plan.vm.host_id);
    let (parent, previous) = previous.map_or((None, None), |(id, p)| (Some(id), Some(p)));
    let request = BackupRequest {
        vm: plan.vm.info.uuid.clone(),
        job_token: token.clone(),
        mode: plan.mode,
        checkpoint: checkpoint_name(id),
        previous,
    };

    let receiver = {
        let store = plan.datastore.clone();
        let targets = targets.clone();
        tokio::spawn(async move {
            let stream = channel.await.map_err(JobError::DataChannel)?;
            Ok::<_, JobError>(receive_disks(stream, store, dir, started_at, targets).await?)
        })
    };

    let (progress, reporter) = job_progress(jobs.clone(), plan.job_id);
    let reply = hub
        .request_with_progress(
            &plan.vm.host_id,
            Command::Backup(request),
            BACKUP_TIMEOUT,
            Some(progress),
        )
        .await;
    hub.forget_data_channel(&token);
    let report = match reply {
        Ok(Some(Outcome::Backup(report))) => report,
        other => {
            reporter.abort();
            // When the controller's side failed first (a full or broken
            // datastore), the agent only saw its connection drop: the
            // receiver's reason is the one worth reporting.
            let receiver_error = match tokio::time::timeout(Duration::from_secs(5), receiver).await
            {
                Ok(Ok(Err(reason))) => Some(reason),
                _ => None,
            };
            return Err(match (receiver_error, other) {
                (Some(reason), _) => reason,
                (None, Err(e)) => e.into(),
                (None, Ok(_)) => JobError::NoReport("backup"),
            });
        }
    };
    let received = receiver.await??;
    reporter.abort();
    let manifest = manifest_for(plan, id, parent, started_at, &report, &received)?;
    let (store, vm, id2, m) = (
        plan.datastore.clone(),
        plan.vm.info.uuid.clone(),
        id.clone(),
        manifest.clone(),
    );
    blocking(move || {
        let uuid: VmUuid = vm.parse()?;
        m.write_atomic(&store.backup_dir(&uuid, &id2))
    })
    .await?;
    Ok(manifest)
}

/// A progress callback for a hub request, and the task that copies what it
/// receives into the job at most once a second (abort it when done).
pub fn job_progress(
    jobs: Arc<Jobs>,
    job_id: u64,
) -> (crate::hub::ProgressFn, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::watch::channel((0u64, 0u64));
    let reporter = tokio::spawn(report_progress(jobs, job_id, rx));
    let progress: crate::hub::ProgressFn = Arc::new(move |done, total| {
        tx.send_replace((done, total));
    });
    (progress, reporter)
}

async fn report_progress(
    jobs: Arc<Jobs>,
    job_id: u64,
    mut rx: tokio::sync::watch::Receiver<(u64, u64)>,
) {
    while rx.changed().await.is_ok() {
        let (done, total) = *rx.borrow_and_update();
        let _ = jobs
            .update(job_id, |j| {
                j.bytes_done = done;
                j.bytes_total = total;
                // 100 % is for a finished job only.
                j.percent = done
                    .saturating_mul(100)
                    .checked_div(total)
                    .unwrap_or(0)
                    .min(99) as u8;
            })
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn manifest_for(
    plan: &BackupRun,
    id: &BackupId,
    parent: Option<BackupId>,
    started_at: u64,
    report: &BackupReport,
    received: &[ReceivedDisk],
) -> Result<Manifest, JobError> {
    let info = &plan.vm.info;
    let incremental = report.mode == lifeboat_proto::BackupMode::Incremental;
    let disks = received
        .iter()
        .map(|r| {
            let format = report
                .disks
                .iter()
                .find(|d| d.target == r.target)
                .map(|d| d.format.clone())
                .unwrap_or_else(|| "raw".into());
            DiskEntry {
                target: r.target.clone(),
                format,
                size_bytes: r.size_bytes,
                index_file: r.index_file.clone(),
                index_checksum: hex::encode(r.index_checksum),
                chunk_count: r.chunk_count,
            }
        })
        .collect();
    Ok(Manifest {
        format_version: FORMAT_VERSION,
        vm: VmDescription {
            uuid: info.uuid.parse()?,
            name: info.name.clone(),
            origin_host_id: plan.vm.host_id.clone(),
            origin_host_name: plan.host_name.clone(),
            hypervisor: plan.hypervisor.clone(),
            hypervisor_config: info.config.clone(),
            vcpus: info.vcpus,
            memory_mib: info.memory_mib,
            nics: info
                .nics
                .iter()
                .map(|n| Nic {
                    mac: n.mac.clone(),
                    network: n.network.clone().unwrap_or_default(),
                    model: n.model.clone().unwrap_or_default(),
                })
                .collect(),
            guest_os: None,
            categories: Default::default(),
        },
        backup: BackupInfo {
            id: id.clone(),
            mode: if incremental {
                BackupMode::Incremental
            } else {
                BackupMode::Full
            },
            parent: if incremental { parent } else { None },
            started_at,
            finished_at: unix_now().max(started_at),
            bytes_read: report.bytes_read,
            bytes_new: received.iter().map(|r| r.bytes_new).sum(),
            checkpoint: report.checkpoint.clone(),
            guest_frozen: report.frozen,
        },
        disks,
    })
}

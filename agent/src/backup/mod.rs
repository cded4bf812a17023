//! Backups on the host: ask the hypervisor for NBD exports of the VM's disks,
//! plan which chunks to read (all, or only what changed since the previous
//! checkpoint), and stream them to the controller over a data channel.

pub mod plan;
pub mod send;

use std::sync::{Arc, Mutex};

use anyhow::Context;
use lifeboat_proto::{BackedUpDisk, BackupMode, BackupReport, BackupRequest};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::hypervisor::{BackupExports, ExportedDisk, Hypervisor};
use crate::nbd::{self, NbdClient};
use plan::{plan_disk, ChunkPlan};
use send::{send_disk, SharedSource};

/// Ranges whose extents carry `flag` in `context`.
fn ranges_with(
    client: &mut NbdClient,
    context: &str,
    flag: u32,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let size = client.size();
    Ok(client
        .block_status(context, 0, size)?
        .into_iter()
        .filter(|e| e.flags & flag != 0)
        .map(|e| (e.offset, e.length))
        .collect())
}

/// Connects to a disk's export and plans its chunks.
fn open_disk(
    disk: &ExportedDisk,
    previous: Option<&[String]>,
) -> anyhow::Result<(NbdClient, Vec<ChunkPlan>)> {
    let mut contexts = vec![nbd::BASE_ALLOCATION];
    if let Some(c) = &disk.dirty_context {
        contexts.push(c);
    }
    let mut client = NbdClient::connect_unix(&disk.socket, &disk.export, &contexts)
        .with_context(|| format!("connecting to the export of {}", disk.target))?;
    let size = client.size();
    let zero = if client.has_context(nbd::BASE_ALLOCATION) {
        ranges_with(&mut client, nbd::BASE_ALLOCATION, nbd::STATE_ZERO)?
    } else {
        Vec::new()
    };
    let dirty = match &disk.dirty_context {
        Some(c) if client.has_context(c) => Some(ranges_with(&mut client, c, nbd::STATE_DIRTY)?),
        _ => None,
    };
    let plan = plan_disk(size, dirty.as_deref(), previous, &zero);
    Ok((client, plan))
}

/// Runs one backup: exports, data channel, every disk, report.
pub async fn run<S, F>(
    driver: Arc<dyn Hypervisor>,
    request: BackupRequest,
    mut channel: S,
    progress: F,
) -> anyhow::Result<BackupReport>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(u64, u64) + Send + Sync,
{
    let (d, vm, req) = (driver.clone(), request.vm.clone(), request.clone());
    let exports = tokio::task::spawn_blocking(move || d.begin_backup(&vm, &req))
        .await
        .context("backup task panicked")??;
    let result = send_all(&*exports, &request, &mut channel, &progress).await;
    lifeboat_proto::buffers::CHUNK_BUFFERS.release_spares();
    let _ = channel.shutdown().await;
    let report = result.map(|(disks, bytes_read)| BackupReport {
        mode: exports.info().mode,
        frozen: exports.info().frozen,
        checkpoint: exports.info().checkpoint.clone(),
        bytes_read,
        disks,
    });
    let ok = report.is_ok();
    let finished = tokio::task::spawn_blocking(move || exports.finish(ok))
        .await
        .context("backup task panicked")?;
    match (report, finished) {
        (Ok(r), Ok(())) => Ok(r),
        (Ok(_), Err(e)) => Err(e).context("ending the backup on the hypervisor"),
        (Err(e), _) => Err(e),
    }
}

async fn send_all<S, F>(
    exports: &dyn BackupExports,
    request: &BackupRequest,
    channel: &mut S,
    progress: &F,
) -> anyhow::Result<(Vec<BackedUpDisk>, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(u64, u64) + Send + Sync,
{
    crate::link::expect_ready(channel).await?;
    let incremental = exports.info().mode == BackupMode::Incremental;
    let mut opened = Vec::new();
    for disk in &exports.info().disks {
        let previous = request
            .previous
            .as_ref()
            .filter(|_| incremental)
            .and_then(|p| p.disks.iter().find(|d| d.target == disk.target))
            .map(|d| d.digests.clone());
        let disk2 = disk.clone();
        let (client, plan) =
            tokio::task::spawn_blocking(move || open_disk(&disk2, previous.as_deref()))
                .await
                .context("backup task panicked")??;
        opened.push((disk.clone(), client, plan));
    }
    let total: u64 = opened.iter().map(|(_, c, _)| c.size()).sum();
    let mut base = 0u64;
    let mut disks = Vec::new();
    let mut bytes_read = 0u64;
    for (disk, client, plan) in opened {
        let size = client.size();
        let source: SharedSource = Arc::new(Mutex::new(Box::new(client)));
        let report = |done: u64| progress(base + done, total);
        let read = send_disk(channel, source, &disk.target, size, plan, &report).await?;
        bytes_read += read;
        base += size;
        disks.push(BackedUpDisk {
            target: disk.target.clone(),
            format: disk.format.clone(),
            size_bytes: size,
            bytes_read: read,
        });
    }
    Ok((disks, bytes_read))
}

//! Instant restores: the VM runs from its backup within seconds, while its
//! data is still on the controller. Each disk is served to QEMU by an NBD
//! export on this host whose reads fetch (and verify) the backup's chunks
//! on demand over the job's data channel; QEMU runs the VM on a new qcow2
//! image backed by that export, so every guest write lands on the host's
//! own storage from the first second. A block-stream (`virsh blockpull`)
//! then copies the rest into the image while the guest runs, after which
//! the image has no backing and the VM is redefined as an ordinary VM on
//! its own disks.
//!
//! Failures keep the guest's writes: once the VM has started, nothing here
//! removes its images. A disk whose data cannot be fetched any more (the
//! controller or this agent gone) pauses the guest at its next read of
//! uncopied data (the disks' error policy is `stop`), it never sees a
//! failed read; the job fails and says so.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use lifeboat_proto::{
    chunk, instant_socket, ChunkDigest, RestoreDisk, RestoreReport, RestoreRequest, CHUNK_SIZE,
    INSTANT_SOCKET_DIR,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::blocking;
use crate::hypervisor::Hypervisor;
use crate::nbd::server::{Export, NbdServer};
use crate::restore::{receive_chunk, send_fetch, zero_digest};

/// Decoded chunks kept per disk (4 MiB each).
const CACHE_CHUNKS: usize = 16;
/// Chunks fetched with the one a read needs, for the sequential reads of
/// the background copy (and of a booting guest).
const READ_AHEAD: usize = 4;

type FetchReply = oneshot::Sender<anyhow::Result<Vec<Vec<u8>>>>;

/// Fetches chunk blobs over the job's data channel for blocking callers (the
/// NBD server's threads), one request at a time, in order.
#[derive(Clone)]
struct Fetcher {
    requests: mpsc::Sender<(Vec<(u64, ChunkDigest)>, FetchReply)>,
}

impl Fetcher {
    fn spawn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(mut chan: S) -> Fetcher {
        let (tx, mut rx) = mpsc::channel::<(Vec<(u64, ChunkDigest)>, FetchReply)>(8);
        tokio::spawn(async move {
            let mut broken: Option<String> = None;
            while let Some((wanted, reply)) = rx.recv().await {
                if let Some(reason) = &broken {
                    let _ = reply.send(Err(anyhow::anyhow!("{reason}")));
                    continue;
                }
                let result = async {
                    send_fetch(&mut chan, &wanted).await?;
                    let mut blobs = Vec::with_capacity(wanted.len());
                    for (i, want) in &wanted {
                        blobs.push(receive_chunk(&mut chan, *i, want).await?);
                    }
                    Ok(blobs)
                }
                .await;
                if let Err(e) = &result {
                    broken = Some(format!("the backup's data channel failed: {e:#}"));
                }
                let _ = reply.send(result);
            }
        });
        Fetcher { requests: tx }
    }

    /// Blocking: must not run on the async runtime.
    fn fetch(&self, wanted: Vec<(u64, ChunkDigest)>) -> anyhow::Result<Vec<Vec<u8>>> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .blocking_send((wanted, tx))
            .map_err(|_| anyhow::anyhow!("the instant restore has ended"))?;
        rx.blocking_recv()
            .map_err(|_| anyhow::anyhow!("the backup's data channel closed"))?
    }
}

/// One disk of the backup, read through its chunks.
struct BackupDisk {
    size: u64,
    digests: Vec<ChunkDigest>,
    zero: Vec<bool>,
    fetcher: Fetcher,
    /// Most recently used last.
    cache: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
}

impl BackupDisk {
    fn new(disk: &RestoreDisk, fetcher: Fetcher) -> anyhow::Result<BackupDisk> {
        let digests = crate::restore::parse_digests(disk)?;
        let zero = (0u64..)
            .zip(&digests)
            .map(|(i, d)| *d == zero_digest(disk.size_bytes, i))
            .collect();
        Ok(BackupDisk {
            size: disk.size_bytes,
            digests,
            zero,
            fetcher,
            cache: Mutex::new(VecDeque::with_capacity(CACHE_CHUNKS)),
        })
    }

    fn cached(&self, i: u64) -> Option<Arc<Vec<u8>>> {
        let mut cache = self.cache.lock().ok()?;
        let k = cache.iter().position(|(j, _)| *j == i)?;
        let entry = cache.remove(k)?;
        let data = entry.1.clone();
        cache.push_back(entry);
        Some(data)
    }

    /// Chunk `i` (not a zero chunk), fetched with a few after it if needed.
    fn chunk(&self, i: u64) -> anyhow::Result<Arc<Vec<u8>>> {
        if let Some(data) = self.cached(i) {
            return Ok(data);
        }
        let wanted: Vec<(u64, ChunkDigest)> = (i..self.digests.len() as u64)
            .filter(|&j| j == i || (!self.zero[j as usize] && self.cached(j).is_none()))
            .take(READ_AHEAD)
            .map(|j| (j, self.digests[j as usize]))
            .collect();
        let blobs = self.fetcher.fetch(wanted.clone())?;
        let mut wanted_data = None;
        for ((j, digest), blob) in wanted.into_iter().zip(blobs) {
            let data = Arc::new(
                chunk::decode_verified(&blob, &digest)
                    .with_context(|| format!("chunk {j} of the backup"))?,
            );
            if j == i {
                wanted_data = Some(data.clone());
            }
            let mut cache = self
                .cache
                .lock()
                .map_err(|_| anyhow::anyhow!("chunk cache poisoned"))?;
            cache.retain(|(k, _)| *k != j);
            if cache.len() == CACHE_CHUNKS {
                cache.pop_front();
            }
            cache.push_back((j, data));
        }
        wanted_data.context("the fetched chunk went missing")
    }
}

impl Export for BackupDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = at / CHUNK_SIZE;
            let within = (at % CHUNK_SIZE) as usize;
            let n = (buf.len() - done).min(CHUNK_SIZE as usize - within);
            let out = &mut buf[done..done + n];
            if self.zero[i as usize] {
                out.fill(0);
            } else {
                let data = self.chunk(i)?;
                let piece = data
                    .get(within..within + n)
                    .context("a chunk shorter than its place in the disk")?;
                out.copy_from_slice(piece);
            }
            done += n;
        }
        Ok(())
    }
}

/// The uid and gid libvirt runs QEMU as (`user`/`group` in qemu.conf; the
/// Debian default `libvirt-qemu`), so only QEMU may use the export.
fn qemu_owner() -> Option<(u32, u32)> {
    use nix::unistd::{Group, User};
    let conf = std::fs::read_to_string("/etc/libvirt/qemu.conf").unwrap_or_default();
    let setting = |key: &str| {
        conf.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .filter_map(|rest| rest.trim_start().strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .next_back()
    };
    let user = setting("user").unwrap_or_else(|| "libvirt-qemu".into());
    let (uid, primary) = match user.strip_prefix('+') {
        Some(n) => (n.parse().ok()?, None),
        None => {
            let u = User::from_name(&user).ok()??;
            (u.uid.as_raw(), Some(u.gid.as_raw()))
        }
    };
    let gid = match setting("group") {
        Some(g) => match g.strip_prefix('+') {
            Some(n) => n.parse().ok()?,
            None => Group::from_name(&g).ok()??.gid.as_raw(),
        },
        None => primary?,
    };
    Some((uid, gid))
}

/// Serves every disk of the backup on its socket, owned by QEMU's user.
fn serve_disks(request: &RestoreRequest, fetcher: &Fetcher) -> anyhow::Result<Vec<NbdServer>> {
    let dir = Path::new(INSTANT_SOCKET_DIR);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    let owner = qemu_owner();
    request
        .disks
        .iter()
        .map(|disk| {
            let path = instant_socket(&request.uuid, &disk.target);
            let export = Arc::new(BackupDisk::new(disk, fetcher.clone())?);
            let server = NbdServer::serve(Path::new(&path), &disk.target, export)
                .with_context(|| format!("serving {path}"))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .with_context(|| format!("handing {path} to QEMU's user"))?;
            }
            Ok(server)
        })
        .collect()
}

/// Creates each disk's image: a qcow2 file backed by its export.
fn create_images(request: &RestoreRequest) -> anyhow::Result<()> {
    for disk in &request.disks {
        if let Some(dir) = Path::new(&disk.path).parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let backing = format!(
            "nbd+unix:///{}?socket={}",
            disk.target,
            instant_socket(&request.uuid, &disk.target)
        );
        // -u: the export is opened by QEMU, not probed now.
        let out = std::process::Command::new("qemu-img")
            .args([
                "create", "-q", "-f", "qcow2", "-F", "raw", "-u", "-b", &backing,
            ])
            .arg(&disk.path)
            .arg(disk.size_bytes.to_string())
            .output()
            .context("running qemu-img (is qemu-utils installed?)")?;
        if !out.status.success() {
            bail!(
                "qemu-img create {}: {}",
                disk.path,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Runs one instant restore: exports, images, the VM started from them,
/// the background copy, the final definition.
pub async fn run<S, F>(
    driver: Arc<dyn Hypervisor>,
    request: RestoreRequest,
    mut channel: S,
    progress: F,
) -> anyhow::Result<RestoreReport>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(u64, u64) + Send + Sync + 'static,
{
    if request.instant_config.is_none() {
        bail!("not an instant restore");
    }
    if let Some(d) = request.disks.iter().find(|d| d.format != "qcow2") {
        bail!(
            "an instant restore writes qcow2 images, not {:?} ({})",
            d.format,
            d.target
        );
    }
    let (d, r) = (driver.clone(), request.clone());
    blocking(move || d.check_restore(&r).map_err(Into::into)).await?;
    crate::link::expect_ready(&mut channel).await?;
    let fetcher = Fetcher::spawn(channel);
    let (r, f) = (request.clone(), fetcher.clone());
    let servers = blocking(move || serve_disks(&r, &f)).await?;
    let (d, r) = (driver.clone(), request.clone());
    let started = blocking(move || {
        create_images(&r)?;
        if let Some(drive) = &r.config_drive {
            crate::config_drive::write_config_drive(Path::new(&drive.path), &drive.files)
                .context("writing the config drive")?;
        }
        d.start_instant(&r).map_err(Into::into)
    })
    .await;
    if let Err(e) = started {
        // The VM never ran: nothing of the guest's is lost by removing it all.
        crate::restore::remove_temps(&request);
        for disk in &request.disks {
            let _ = std::fs::remove_file(&disk.path);
        }
        return Err(e.context("starting the VM from its backup"));
    }
    tracing::info!(
        vm = request.name,
        "running from its backup; copying its disks"
    );
    let total: u64 = request.disks.iter().map(|d| d.size_bytes).sum();
    let progress = Arc::new(progress);
    let mut base = 0u64;
    for disk in &request.disks {
        let (d, uuid, target, size) = (
            driver.clone(),
            request.uuid.clone(),
            disk.target.clone(),
            disk.size_bytes,
        );
        let (p, bandwidth) = (progress.clone(), request.instant_bandwidth_mib);
        let copied = blocking(move || {
            let report = |cur: u64, end: u64| {
                let done = (size * cur.min(end)).checked_div(end).unwrap_or(0);
                p(base + done, total)
            };
            d.copy_instant_disk(&uuid, &target, bandwidth, &report)
                .map_err(Into::into)
        })
        .await;
        if let Err(e) = copied {
            return Err(e.context(format!(
                "copying disk {} while the VM runs; the VM keeps its images and every write \
                 it made, but still reads uncopied data from the backup",
                disk.target
            )));
        }
        base += size;
    }
    let (d, r) = (driver.clone(), request.clone());
    blocking(move || d.finish_instant(&r).map_err(Into::into))
        .await
        .context("defining the VM on its own disks")?;
    drop(servers);
    drop(fetcher);
    progress(total, total);
    Ok(RestoreReport {
        uuid: request.uuid,
        name: request.name,
        bytes_written: total,
    })
}

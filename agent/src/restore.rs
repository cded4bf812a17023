//! Restores on the host: write each disk image from chunks fetched over a
//! data channel, then define the VM. Images are written beside their final
//! path and renamed into place only when every disk is complete, and the VM
//! is defined last: a failed restore leaves no VM and no half image behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lifeboat_proto::{
    chunk, read_any, write_frame, ChunkDigest, DataMessage, DataReply, Frame, RestoreDisk,
    RestoreReport, RestoreRequest, CHUNK_SIZE,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::hypervisor::Hypervisor;
use crate::nbd::NbdClient;

/// Chunks fetched per request.
const BATCH: usize = 16;

fn temp_path(path: &str) -> PathBuf {
    PathBuf::from(format!("{path}.lifeboat-restore"))
}

/// A writable NBD export of a new image, served by `qemu-nbd`.
struct NewImage {
    child: Child,
    socket: PathBuf,
}

impl NewImage {
    fn create(disk: &RestoreDisk, temp: &Path) -> anyhow::Result<NewImage> {
        if !matches!(disk.format.as_str(), "qcow2" | "raw") {
            bail!("cannot restore into format {:?}", disk.format);
        }
        if let Some(dir) = temp.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", &disk.format])
            .arg(temp)
            .arg(disk.size_bytes.to_string())
            .output()
            .context("running qemu-img (is qemu-utils installed?)")?;
        if !out.status.success() {
            bail!(
                "qemu-img create: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let socket = temp.with_extension("sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("qemu-nbd")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--format={}", disk.format))
            .args(["--export-name=disk", "--cache=none", "--aio=threads"])
            .arg(temp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting qemu-nbd")?;
        let mut image = NewImage { child, socket };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !image.socket.exists() {
            if image.child.try_wait()?.is_some() || Instant::now() > deadline {
                bail!("qemu-nbd did not start serving {}", temp.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(image)
    }
}

impl Drop for NewImage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("restore task panicked")?
}

/// Writes one disk image from its chunks. Returns the bytes written.
async fn write_disk<S: AsyncRead + AsyncWrite + Unpin>(
    chan: &mut S,
    disk: &RestoreDisk,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> anyhow::Result<u64> {
    let expected = disk.size_bytes.div_ceil(CHUNK_SIZE);
    if disk.digests.len() as u64 != expected {
        bail!(
            "disk {}: {} digests for {expected} chunks",
            disk.target,
            disk.digests.len()
        );
    }
    let digests: Vec<ChunkDigest> = disk
        .digests
        .iter()
        .map(|h| h.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let temp = temp_path(&disk.path);
    let (d, t) = (disk.clone(), temp.clone());
    let image = Arc::new(blocking(move || NewImage::create(&d, &t)).await?);
    let socket = image.socket.clone();
    let client =
        blocking(move || NbdClient::connect_unix(&socket, "disk", &[]).map_err(Into::into)).await?;
    let client = Arc::new(std::sync::Mutex::new(client));
    let mut written = 0u64;
    for (batch_no, batch) in digests.chunks(BATCH).enumerate() {
        let first = (batch_no * BATCH) as u64;
        // A fresh image reads as zeros: zero chunks need no transfer at all.
        let wanted: Vec<(u64, ChunkDigest)> = batch
            .iter()
            .enumerate()
            .map(|(k, d)| (first + k as u64, *d))
            .filter(|(i, d)| *d != zero_digest(disk.size_bytes, *i))
            .collect();
        if !wanted.is_empty() {
            let fetch = DataMessage::Fetch {
                digests: wanted.iter().map(|(_, d)| d.to_hex()).collect(),
            };
            write_frame(chan, &fetch).await?;
            for (i, want) in &wanted {
                let blob = match read_any::<_, DataReply>(chan).await? {
                    Frame::Chunk { digest, blob } if digest == want.0 => blob,
                    Frame::Chunk { .. } => bail!("the controller sent the wrong chunk for {i}"),
                    Frame::Message(DataReply::Failed { reason }) => {
                        bail!("the controller stopped the restore: {reason}")
                    }
                    Frame::Message(other) => bail!("unexpected {other:?} during restore"),
                };
                let (client, want, offset) = (client.clone(), *want, i * CHUNK_SIZE);
                written += blocking(move || {
                    let data = chunk::decode_verified(&blob, &want)?;
                    let mut c = client
                        .lock()
                        .map_err(|_| anyhow::anyhow!("image writer poisoned"))?;
                    c.write_at(offset, &data)?;
                    Ok(data.len() as u64)
                })
                .await?;
            }
        }
        progress(((first + batch.len() as u64) * CHUNK_SIZE).min(disk.size_bytes));
    }
    blocking(move || {
        let mut c = client
            .lock()
            .map_err(|_| anyhow::anyhow!("image writer poisoned"))?;
        c.flush()?;
        Ok(())
    })
    .await?;
    drop(image);
    Ok(written)
}

fn zero_digest(size: u64, i: u64) -> ChunkDigest {
    ChunkDigest::of_zeros(CHUNK_SIZE.min(size - i * CHUNK_SIZE) as usize)
}

/// Removes what a failed restore wrote: temp images and the config drive
/// (whose path was checked to be free before the restore began).
fn remove_temps(request: &RestoreRequest) {
    for d in &request.disks {
        let _ = std::fs::remove_file(temp_path(&d.path));
    }
    if let Some(drive) = &request.config_drive {
        let _ = std::fs::remove_file(&drive.path);
    }
}

/// Runs one restore: checks, images, definition.
pub async fn run<S, F>(
    driver: Arc<dyn Hypervisor>,
    request: RestoreRequest,
    mut channel: S,
    progress: F,
) -> anyhow::Result<RestoreReport>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(u64, u64) + Send + Sync,
{
    let (d, r) = (driver.clone(), request.clone());
    blocking(move || d.check_restore(&r).map_err(Into::into)).await?;
    crate::link::expect_ready(&mut channel).await?;
    let total: u64 = request.disks.iter().map(|d| d.size_bytes).sum();
    let mut base = 0u64;
    let mut bytes_written = 0u64;
    for disk in &request.disks {
        let report = |done: u64| progress(base + done, total);
        match write_disk(&mut channel, disk, &report).await {
            Ok(n) => bytes_written += n,
            Err(e) => {
                remove_temps(&request);
                return Err(e.context(format!("restoring disk {}", disk.target)));
            }
        }
        base += disk.size_bytes;
    }
    if let Some(drive) = request.config_drive.clone() {
        let written = blocking(move || {
            crate::config_drive::write_config_drive(Path::new(&drive.path), &drive.files)
        })
        .await;
        if let Err(e) = written {
            remove_temps(&request);
            return Err(e.context("writing the config drive"));
        }
    }
    let (d, r) = (driver.clone(), request.clone());
    let defined = blocking(move || {
        let temps: Vec<(PathBuf, String)> = r
            .disks
            .iter()
            .map(|x| (temp_path(&x.path), x.path.clone()))
            .collect();
        d.define_restored(&r, &temps).map_err(Into::into)
    })
    .await;
    if let Err(e) = defined {
        remove_temps(&request);
        return Err(e);
    }
    Ok(RestoreReport {
        uuid: request.uuid,
        name: request.name,
        bytes_written,
    })
}

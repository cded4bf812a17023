//! Restores on the host: write each disk image from chunks fetched over a
//! data channel, then define the VM. Images are written beside their final
//! path and renamed into place only when every disk is complete, and the VM
//! is defined last: a failed restore leaves no VM and no half image behind.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lifeboat_proto::{
    buffers::CHUNK_BUFFERS, chunk, read_any, write_frame, ChunkDigest, DataMessage, DataReply,
    Frame, RestoreDisk, RestoreReport, RestoreRequest, CHUNK_SIZE,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::blocking;
use crate::hypervisor::Hypervisor;
use crate::nbd::NbdClient;

/// Chunks fetched per request.
const BATCH: usize = 16;
/// Fetch requests sent ahead of the chunks being received, so the
/// controller reads the next batch while this one crosses the network.
const FETCHES_AHEAD: usize = 2;
/// Inside a chunk, pieces of this size that are all zeros are not written:
/// a new image reads as zeros already, and a qcow2 image then allocates no
/// cluster for them.
const ZERO_PIECE: usize = 64 * 1024;

fn temp_path(path: &str) -> PathBuf {
    PathBuf::from(format!("{path}.lifeboat-restore"))
}

/// A writable NBD export of a new image, served by `qemu-nbd` to
/// `connections` clients at once.
struct NewImage {
    child: Child,
    socket: PathBuf,
}

impl NewImage {
    fn create(disk: &RestoreDisk, temp: &Path, connections: usize) -> anyhow::Result<NewImage> {
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
        // Direct I/O: the data goes from qemu-nbd's buffers to the disk,
        // never copied into the page cache (which costs more than all the
        // rest of a restore). Every connection flushes (qcow2's metadata,
        // fdatasync) before the image counts.
        let child = Command::new("qemu-nbd")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--format={}", disk.format))
            .arg(format!("--shared={connections}"))
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

/// The spans of `data` to write, as (start, end): every [`ZERO_PIECE`] that
/// is not all zeros, neighbours merged.
fn nonzero_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (k, piece) in data.chunks(ZERO_PIECE).enumerate() {
        if is_zero(piece) {
            continue;
        }
        let (start, end) = (k * ZERO_PIECE, k * ZERO_PIECE + piece.len());
        match spans.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => spans.push((start, end)),
        }
    }
    spans
}

/// True if every byte is zero; the OR of each 4 KiB page (which the
/// compiler vectorises) ends the scan at the first page that is not.
fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, b| acc | b) == 0)
}

/// The image's writers: one NBD connection per worker, each taken for one
/// chunk's writes and put back.
type Writers = Arc<Mutex<Vec<NbdClient>>>;

/// Verifies one fetched chunk and writes its non-zero spans at `offset`.
/// Returns the bytes written.
fn write_chunk(
    writers: &Writers,
    offset: u64,
    blob: Vec<u8>,
    want: &ChunkDigest,
) -> anyhow::Result<u64> {
    let data = chunk::decode_verified_borrowed(&blob, want)?;
    let spans = nonzero_spans(&data);
    let mut client = writers
        .lock()
        .map_err(|_| anyhow::anyhow!("image writers poisoned"))?
        .pop()
        .context("no free image writer")?;
    let mut written = 0u64;
    let result = spans.iter().try_for_each(|&(start, end)| {
        written += (end - start) as u64;
        client.write_at(offset + start as u64, &data[start..end])
    });
    if let Ok(mut free) = writers.lock() {
        free.push(client);
    }
    drop(data);
    CHUNK_BUFFERS.give(blob);
    result?;
    Ok(written)
}

/// Receives the chunk the controller sends for position `i`.
pub(crate) async fn receive_chunk<S: AsyncRead + Unpin>(
    chan: &mut S,
    i: u64,
    want: &ChunkDigest,
) -> anyhow::Result<Vec<u8>> {
    match read_any::<_, DataReply>(chan).await? {
        Frame::Chunk { digest, blob } if digest == want.0 => Ok(blob),
        Frame::Chunk { .. } => bail!("the controller sent the wrong chunk for {i}"),
        Frame::Message(DataReply::Failed { reason }) => {
            bail!("the controller stopped the restore: {reason}")
        }
        Frame::Message(other) => bail!("unexpected {other:?} during restore"),
    }
}

pub(crate) async fn send_fetch<S: AsyncWrite + Unpin>(
    chan: &mut S,
    batch: &[(u64, ChunkDigest)],
) -> anyhow::Result<()> {
    let digests = batch.iter().map(|(_, d)| d.to_hex()).collect();
    write_frame(chan, &DataMessage::Fetch { digests }).await?;
    Ok(())
}

/// A disk's chunk digests, one for each chunk of its size.
pub(crate) fn parse_digests(disk: &RestoreDisk) -> anyhow::Result<Vec<ChunkDigest>> {
    let expected = disk.size_bytes.div_ceil(CHUNK_SIZE);
    if disk.digests.len() as u64 != expected {
        bail!(
            "disk {}: {} digests for {expected} chunks",
            disk.target,
            disk.digests.len()
        );
    }
    disk.digests
        .iter()
        .map(|h| h.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Writes one disk image from its chunks. Returns the bytes written.
///
/// Three things overlap: the controller reads the next batch while this
/// one arrives ([`FETCHES_AHEAD`]), and each chunk is decompressed,
/// verified and written on a worker (one per core, and one more) while
/// the next is received. Progress follows the chunks in order.
async fn write_disk<S: AsyncRead + AsyncWrite + Unpin>(
    chan: &mut S,
    disk: &RestoreDisk,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> anyhow::Result<u64> {
    let size = disk.size_bytes;
    let digests = parse_digests(disk)?;
    // A new image reads as zeros: zero chunks need no transfer at all.
    let wanted: Vec<(u64, ChunkDigest)> = (0u64..)
        .zip(digests)
        .filter(|(i, d)| *d != zero_digest(size, *i))
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let (d, temp) = (disk.clone(), temp_path(&disk.path));
    let image = blocking(move || NewImage::create(&d, &temp, workers)).await?;
    let socket = image.socket.clone();
    let writers: Writers = Arc::new(Mutex::new(
        blocking(move || {
            (0..workers)
                .map(|_| NbdClient::connect_unix(&socket, "disk", &[]).map_err(Into::into))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await?,
    ));
    let batches: Vec<&[(u64, ChunkDigest)]> = wanted.chunks(BATCH).collect();
    for batch in batches.iter().take(FETCHES_AHEAD) {
        send_fetch(chan, batch).await?;
    }
    let mut running = VecDeque::with_capacity(workers);
    let mut written = 0u64;
    for (k, batch) in batches.iter().enumerate() {
        for &(i, want) in batch.iter() {
            let blob = receive_chunk(chan, i, &want).await?;
            if running.len() == workers {
                let task: WriteTask = running.pop_front().context("no running write")?;
                let (end, n) = task.await?;
                written += n;
                progress(end);
            }
            let (writers, end) = (writers.clone(), ((i + 1) * CHUNK_SIZE).min(size));
            running.push_back(Box::pin(blocking(move || {
                Ok((end, write_chunk(&writers, i * CHUNK_SIZE, blob, &want)?))
            })));
        }
        if let Some(next) = batches.get(k + FETCHES_AHEAD) {
            send_fetch(chan, next).await?;
        }
    }
    for task in running {
        let (end, n) = task.await?;
        written += n;
        progress(end);
    }
    blocking(move || {
        let mut writers = writers
            .lock()
            .map_err(|_| anyhow::anyhow!("image writers poisoned"))?;
        for client in writers.iter_mut() {
            client.flush()?;
        }
        Ok(())
    })
    .await?;
    drop(image);
    progress(size);
    Ok(written)
}

/// A chunk being written: the end of its range in the disk, and the bytes written.
type WriteTask =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<(u64, u64)>> + Send>>;

pub(crate) fn zero_digest(size: u64, i: u64) -> ChunkDigest {
    ChunkDigest::of_zeros(CHUNK_SIZE.min(size - i * CHUNK_SIZE) as usize)
}

/// Removes what a failed restore wrote: temp images and the config drive
/// (whose path was checked to be free before the restore began).
pub(crate) fn remove_temps(request: &RestoreRequest) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pieces_with_data_are_written() {
        let mut data = vec![0u8; 4 * ZERO_PIECE + 100];
        assert!(nonzero_spans(&data).is_empty());
        // One byte in the first piece, the second and third touching, and
        // the short tail.
        data[7] = 1;
        data[ZERO_PIECE + 5] = 2;
        data[3 * ZERO_PIECE - 1] = 3;
        data[4 * ZERO_PIECE + 99] = 4;
        assert_eq!(
            nonzero_spans(&data),
            vec![(0, 3 * ZERO_PIECE), (4 * ZERO_PIECE, 4 * ZERO_PIECE + 100)]
        );
        data[ZERO_PIECE + 5] = 0;
        data[3 * ZERO_PIECE - 1] = 0;
        assert_eq!(
            nonzero_spans(&data),
            vec![(0, ZERO_PIECE), (4 * ZERO_PIECE, 4 * ZERO_PIECE + 100)]
        );
        assert!(is_zero(&[]) && !is_zero(&[0, 0, 9]));
    }
}

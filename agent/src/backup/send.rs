//! The agent's end of a backup data channel: for each disk, read the planned
//! chunks, hash them, ask the controller which it lacks, compress only those
//! (on every core) and upload them. The host does the CPU work; the network
//! carries only new data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use lifeboat_proto::{
    buffers::CHUNK_BUFFERS, chunk, read_frame, write_chunk, write_frame, ChunkDigest, DataMessage,
    DataReply,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::plan::{chunk_range, ChunkPlan};
use crate::blocking;

/// Chunks per `Digests` message (and per read batch): 16 × 4 MiB = 64 MiB.
const BATCH: usize = 16;

/// Bytes per second a backup may read from a disk; 0 = unlimited. Set once
/// from the agent's `--backup-read-limit-mib`, to spare busy hosts.
pub static READ_LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Sleeps as needed so reads stay under [`READ_LIMIT`].
struct Pacer {
    started: std::time::Instant,
    bytes: u64,
}

impl Pacer {
    fn new() -> Pacer {
        Pacer {
            started: std::time::Instant::now(),
            bytes: 0,
        }
    }

    fn consumed(&mut self, n: u64) {
        let limit = READ_LIMIT.get().copied().unwrap_or(0);
        if limit == 0 {
            return;
        }
        self.bytes += n;
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / limit as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// A disk to read from: an NBD export, in practice.
pub trait DiskSource: Send {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()>;
}

impl DiskSource for crate::nbd::NbdClient {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        crate::nbd::NbdClient::read_at(self, offset, buf).map_err(Into::into)
    }
}

pub type SharedSource = Arc<Mutex<Box<dyn DiskSource>>>;

/// A chunk the controller lacks: its digest and data.
type ToUpload = (ChunkDigest, Vec<u8>);

/// One chunk after reading and hashing.
struct Hashed {
    digest: ChunkDigest,
    /// The data, when it was read (not for reused or zero chunks).
    data: Option<Vec<u8>>,
    /// A chunk known to be zeros: never read, made when needed.
    zero: bool,
}

fn read_chunk(source: &SharedSource, size: u64, i: u64) -> anyhow::Result<Vec<u8>> {
    let (offset, len) = chunk_range(size, i);
    // Reads fill the whole buffer or fail, so stale contents never leak.
    let mut buf = CHUNK_BUFFERS.take(len as usize);
    source
        .lock()
        .map_err(|_| anyhow::anyhow!("disk reader poisoned"))?
        .read_at(offset, &mut buf)
        .with_context(|| format!("reading chunk {i} at offset {offset}"))?;
    Ok(buf)
}

/// Reads and hashes one batch. Returns the chunks and the bytes read.
fn hash_batch(
    source: &SharedSource,
    size: u64,
    first: u64,
    plan: &[ChunkPlan],
    pacer: &Mutex<Pacer>,
) -> anyhow::Result<(Vec<Hashed>, u64)> {
    let mut out = Vec::with_capacity(plan.len());
    let mut read = 0u64;
    for (k, p) in plan.iter().enumerate() {
        let i = first + k as u64;
        out.push(match p {
            ChunkPlan::Read => {
                let data = read_chunk(source, size, i)?;
                read += data.len() as u64;
                if let Ok(mut p) = pacer.lock() {
                    p.consumed(data.len() as u64);
                }
                Hashed {
                    digest: ChunkDigest::of(&data),
                    data: Some(data),
                    zero: false,
                }
            }
            ChunkPlan::Zero => {
                let (_, len) = chunk_range(size, i);
                Hashed {
                    digest: ChunkDigest::of_zeros(len as usize),
                    data: None,
                    zero: true,
                }
            }
            ChunkPlan::Reuse(hex) => Hashed {
                digest: hex
                    .parse()
                    .map_err(|e| anyhow::anyhow!("previous index: {e}"))?,
                data: None,
                zero: false,
            },
        });
    }
    Ok((out, read))
}

/// The data of the chunks the controller asked for, in its order. Chunks we
/// did not read (reused, zero) are read or made now. Returns them and the
/// bytes this read.
fn take_missing(
    source: &SharedSource,
    size: u64,
    first: u64,
    batch: &mut [Hashed],
    missing: &[ChunkDigest],
) -> anyhow::Result<(Vec<ToUpload>, u64)> {
    let mut extra_read = 0u64;
    let mut out = Vec::with_capacity(missing.len());
    let position: HashMap<ChunkDigest, usize> = batch
        .iter()
        .enumerate()
        .map(|(k, h)| (h.digest, k))
        .collect();
    for want in missing {
        let k = *position.get(want).with_context(|| {
            format!("the controller asked for chunk {want}, which is not in this batch")
        })?;
        let data = match batch[k].data.take() {
            Some(d) => d,
            None if batch[k].zero => {
                let mut zeros = CHUNK_BUFFERS.take(chunk_range(size, first + k as u64).1 as usize);
                zeros.fill(0);
                zeros
            }
            None => {
                let d = read_chunk(source, size, first + k as u64)?;
                extra_read += d.len() as u64;
                if ChunkDigest::of(&d) != *want {
                    bail!(
                        "chunk {} changed since the previous backup but was not marked dirty",
                        first + k as u64
                    );
                }
                d
            }
        };
        out.push((*want, data));
    }
    recycle(batch);
    Ok((out, extra_read))
}

/// Returns the buffers of chunks the controller already had.
fn recycle(batch: &mut [Hashed]) {
    for data in batch.iter_mut().filter_map(|h| h.data.take()) {
        CHUNK_BUFFERS.give(data);
    }
}

/// Compresses `chunks` on every core and uploads them in order, each as soon
/// as it and those before it are ready, so the controller stores while the
/// agent still compresses.
async fn upload<S: AsyncWrite + Unpin>(chan: &mut S, chunks: Vec<ToUpload>) -> anyhow::Result<()> {
    // One more than the cores, so a core is busy while a chunk is written.
    let depth = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let mut chunks = chunks.into_iter();
    let mut running = std::collections::VecDeque::with_capacity(depth);
    loop {
        while running.len() < depth {
            let Some((digest, data)) = chunks.next() else {
                break;
            };
            running.push_back(blocking(move || {
                let mut blob = CHUNK_BUFFERS.take(0);
                chunk::encode_into(&data, true, &mut blob)?;
                CHUNK_BUFFERS.give(data);
                Ok((digest, blob))
            }));
        }
        let Some(next) = running.pop_front() else {
            return Ok(());
        };
        let (digest, blob) = next.await?;
        write_chunk(chan, &digest.0, &blob).await?;
        CHUNK_BUFFERS.give(blob);
    }
}

/// Sends one disk. `progress` is called with the bytes of the disk covered so
/// far. Returns the bytes actually read from the disk.
pub async fn send_disk<S: AsyncRead + AsyncWrite + Unpin>(
    chan: &mut S,
    source: SharedSource,
    target: &str,
    size: u64,
    plan: Vec<ChunkPlan>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> anyhow::Result<u64> {
    write_frame(
        chan,
        &DataMessage::DiskBegin {
            target: target.to_string(),
            size_bytes: size,
        },
    )
    .await?;
    let mut bytes_read = 0u64;
    let plan = Arc::new(plan);
    let pacer = Arc::new(Mutex::new(Pacer::new()));
    // Reading and hashing batch N+1 runs while batch N is being exchanged,
    // compressed and uploaded: disk, CPU and network work overlap.
    let read_batch = |first: usize| {
        let end = (first + BATCH).min(plan.len());
        let (src, p, pace) = (source.clone(), plan.clone(), pacer.clone());
        tokio::task::spawn_blocking(move || {
            hash_batch(&src, size, first as u64, &p[first..end], &pace)
        })
    };
    let mut next = (!plan.is_empty()).then(|| read_batch(0));
    let mut first = 0usize;
    while let Some(reading) = next.take() {
        let end = (first + BATCH).min(plan.len());
        let (mut batch, read) = reading.await.context("reader task panicked")??;
        if end < plan.len() {
            next = Some(read_batch(end));
        }
        bytes_read += read;
        let digests = batch.iter().map(|h| h.digest.to_hex()).collect();
        write_frame(
            chan,
            &DataMessage::Digests {
                first: first as u64,
                digests,
            },
        )
        .await?;
        let missing: Vec<ChunkDigest> = match read_frame::<_, DataReply>(chan).await? {
            DataReply::Missing { digests } => digests
                .iter()
                .map(|h| h.parse())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("controller sent a bad digest: {e}"))?,
            DataReply::Failed { reason } => bail!("the controller stopped the backup: {reason}"),
            DataReply::Ready => bail!("unexpected ready on the data channel"),
        };
        if !missing.is_empty() {
            let src = source.clone();
            let (chunks, extra) =
                blocking(move || take_missing(&src, size, first as u64, &mut batch, &missing))
                    .await?;
            bytes_read += extra;
            upload(chan, chunks).await?;
        } else {
            recycle(&mut batch);
        }
        let (done_to, _) = chunk_range(size, (end - 1) as u64);
        progress((done_to + chunk_range(size, (end - 1) as u64).1).min(size));
        first = end;
    }
    write_frame(chan, &DataMessage::DiskEnd).await?;
    Ok(bytes_read)
}

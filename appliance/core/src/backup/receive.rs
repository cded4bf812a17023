//! The controller's end of a backup data channel: it records each disk's
//! chunk digests in a new index, answers which chunks the datastore lacks,
//! and verifies every uploaded chunk before storing it. Anything the agent
//! sends that breaks the protocol ends the channel with a reason.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_proto::buffers::CHUNK_BUFFERS;
use lifeboat_proto::{read_any, write_frame, DataMessage, DataReply, Frame, FrameError};

use super::manifest::index_file_name_for;
use super::{BackupError, ChunkDigest, Datastore, FixedIndexWriter};
use crate::hub::DataStream;

/// Most digests one `Digests` message may carry (64 × 4 MiB = 256 MiB).
pub const MAX_DIGESTS_PER_MESSAGE: usize = 64;
/// Chunks verified and written at once per data channel.
const MAX_INSERTS_IN_FLIGHT: usize = 8;
/// An agent silent for this long on its data channel is given up on.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("data channel: {0}")]
    Frame(#[from] FrameError),
    #[error("agent broke the data protocol: {0}")]
    Protocol(String),
    #[error("the agent sent nothing for {} s", IDLE_TIMEOUT.as_secs())]
    Timeout,
    #[error(transparent)]
    Store(#[from] BackupError),
}

/// One disk as received: what the manifest records.
#[derive(Debug, Clone)]
pub struct ReceivedDisk {
    pub target: String,
    pub size_bytes: u64,
    pub chunk_count: u64,
    pub index_file: String,
    pub index_checksum: [u8; 32],
    /// Bytes of chunk blobs that were new to the datastore.
    pub bytes_new: u64,
}

struct OpenDisk {
    target: String,
    size_bytes: u64,
    index_file: String,
    writer: FixedIndexWriter,
    bytes_new: u64,
}

fn protocol(msg: impl Into<String>) -> ReceiveError {
    ReceiveError::Protocol(msg.into())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, ReceiveError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| protocol(format!("storage task failed: {e}")))?
        .map_err(ReceiveError::Store)
}

/// Receives the disks named in `expected` into `dir` (a fresh backup
/// directory of `store`). On error the caller removes `dir`; chunks already
/// stored are valid and simply shared with later backups.
pub async fn receive_disks(
    mut stream: DataStream,
    store: Arc<Datastore>,
    dir: PathBuf,
    ctime: u64,
    expected: Vec<String>,
) -> Result<Vec<ReceivedDisk>, ReceiveError> {
    let result = receive_loop(&mut stream, &store, &dir, ctime, &expected).await;
    CHUNK_BUFFERS.release_spares();
    if let Err(e) = &result {
        let reply = DataReply::Failed {
            reason: e.to_string(),
        };
        let _ = write_frame(&mut stream, &reply).await;
    }
    result
}

async fn next<T: serde::de::DeserializeOwned>(
    stream: &mut DataStream,
) -> Result<Frame<T>, ReceiveError> {
    match tokio::time::timeout(IDLE_TIMEOUT, read_any::<_, T>(stream)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ReceiveError::Timeout),
    }
}

/// Chunk inserts (verify, write, fsync) running beside the receiving, so the
/// next batch's digests are answered while earlier chunks are still being
/// stored. A digest being stored counts as present: if its insert fails,
/// the whole backup fails with it.
struct Inserts {
    running: tokio::task::JoinSet<Result<ChunkDigest, BackupError>>,
    pending: HashSet<ChunkDigest>,
}

impl Inserts {
    fn new() -> Self {
        Inserts {
            running: tokio::task::JoinSet::new(),
            pending: HashSet::new(),
        }
    }

    /// Starts storing a chunk, first waiting for one if too many run.
    async fn start(
        &mut self,
        store: &Arc<Datastore>,
        digest: ChunkDigest,
        blob: Vec<u8>,
    ) -> Result<(), ReceiveError> {
        // At most a few chunks in memory per channel, whatever the agent sends.
        if self.running.len() >= MAX_INSERTS_IN_FLIGHT {
            self.reap_one().await?;
        }
        let store = store.clone();
        self.pending.insert(digest);
        self.running.spawn_blocking(move || {
            let stored = store.chunks().insert(&digest, &blob).map(|_| digest);
            CHUNK_BUFFERS.give(blob);
            stored
        });
        Ok(())
    }

    /// Waits for one insert; false if none was running.
    async fn reap_one(&mut self) -> Result<bool, ReceiveError> {
        let Some(done) = self.running.join_next().await else {
            return Ok(false);
        };
        let digest = done.map_err(|e| protocol(format!("storage task failed: {e}")))??;
        self.pending.remove(&digest);
        Ok(true)
    }

    /// Waits until every chunk received so far is durable.
    async fn finish(&mut self) -> Result<(), ReceiveError> {
        while self.reap_one().await? {}
        Ok(())
    }
}

async fn receive_loop(
    stream: &mut DataStream,
    store: &Arc<Datastore>,
    dir: &Path,
    ctime: u64,
    expected: &[String],
) -> Result<Vec<ReceivedDisk>, ReceiveError> {
    write_frame(stream, &DataReply::Ready).await?;
    let mut done: Vec<ReceivedDisk> = Vec::new();
    let mut open: Option<OpenDisk> = None;
    let mut inserts = Inserts::new();
    loop {
        let msg = match next::<DataMessage>(stream).await {
            Ok(Frame::Message(m)) => m,
            Ok(Frame::Chunk { .. }) => return Err(protocol("a chunk nobody asked for")),
            Err(ReceiveError::Frame(FrameError::Closed)) if open.is_none() => break,
            Err(e) => return Err(e),
        };
        match msg {
            DataMessage::DiskBegin { target, size_bytes } => {
                if open.is_some() {
                    return Err(protocol("disk_begin inside a disk"));
                }
                if !expected.contains(&target) || done.iter().any(|d| d.target == target) {
                    return Err(protocol(format!("unexpected disk {target:?}")));
                }
                let index_file = index_file_name_for(&target);
                let path = dir.join(&index_file);
                let writer =
                    blocking(move || FixedIndexWriter::create(&path, size_bytes, ctime)).await?;
                open = Some(OpenDisk {
                    target,
                    size_bytes,
                    index_file,
                    writer,
                    bytes_new: 0,
                });
            }
            DataMessage::Digests { first, digests } => {
                let disk = open
                    .take()
                    .ok_or_else(|| protocol("digests outside a disk"))?;
                let (disk, mut missing) = record_digests(store, disk, first, &digests).await?;
                missing.retain(|d| !inserts.pending.contains(d));
                let reply = DataReply::Missing {
                    digests: missing.iter().map(|d| d.to_hex()).collect(),
                };
                write_frame(stream, &reply).await?;
                open = Some(receive_chunks(stream, store, disk, &missing, &mut inserts).await?);
            }
            DataMessage::Fetch { .. } => return Err(protocol("fetch on a backup channel")),
            DataMessage::DiskEnd => {
                let disk = open
                    .take()
                    .ok_or_else(|| protocol("disk_end outside a disk"))?;
                let OpenDisk {
                    target,
                    size_bytes,
                    index_file,
                    writer,
                    bytes_new,
                } = disk;
                inserts.finish().await?;
                let chunk_count = writer.chunk_count();
                let index_checksum = blocking(move || writer.finish()).await?;
                done.push(ReceivedDisk {
                    target,
                    size_bytes,
                    chunk_count,
                    index_file,
                    index_checksum,
                    bytes_new,
                });
            }
        }
    }
    if let Some(missing) = expected
        .iter()
        .find(|t| !done.iter().any(|d| &d.target == *t))
    {
        return Err(protocol(format!("disk {missing:?} never sent")));
    }
    Ok(done)
}

/// Writes the digests into the index and asks the store which it lacks.
async fn record_digests(
    store: &Arc<Datastore>,
    mut disk: OpenDisk,
    first: u64,
    hex: &[String],
) -> Result<(OpenDisk, Vec<ChunkDigest>), ReceiveError> {
    if hex.is_empty() || hex.len() > MAX_DIGESTS_PER_MESSAGE {
        return Err(protocol(format!("{} digests in one message", hex.len())));
    }
    let digests: Vec<ChunkDigest> = hex
        .iter()
        .map(|h| h.parse().map_err(|e| protocol(format!("{e}"))))
        .collect::<Result<_, _>>()?;
    let store = store.clone();
    blocking(move || {
        for (i, d) in digests.iter().enumerate() {
            disk.writer.set(first + i as u64, d)?;
        }
        let missing = store.chunks().missing(&digests)?;
        Ok((disk, missing))
    })
    .await
}

/// Receives exactly the `missing` chunks, in order, and starts storing each
/// (verification and fsync run in parallel, see [`Inserts`]).
async fn receive_chunks(
    stream: &mut DataStream,
    store: &Arc<Datastore>,
    mut disk: OpenDisk,
    missing: &[ChunkDigest],
    inserts: &mut Inserts,
) -> Result<OpenDisk, ReceiveError> {
    for want in missing {
        let (digest, blob) = match next::<DataMessage>(stream).await? {
            Frame::Chunk { digest, blob } => (ChunkDigest(digest), blob),
            Frame::Message(_) => return Err(protocol("expected a chunk")),
        };
        if digest != *want {
            return Err(protocol(format!("sent chunk {digest}, expected {want}")));
        }
        disk.bytes_new += blob.len() as u64;
        inserts.start(store, digest, blob).await?;
    }
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use lifeboat_proto::{chunk, read_frame, write_chunk};

    use super::*;
    use crate::backup::TestDir;

    const SIZE: u64 = 3 * lifeboat_proto::CHUNK_SIZE;

    /// Runs `receive_disks` for one disk `vda` against `agent`, which plays
    /// the other end of the channel.
    async fn receive<F, Fut>(tag: &str, agent: F) -> Result<Vec<ReceivedDisk>, ReceiveError>
    where
        F: FnOnce(tokio::io::DuplexStream) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let root = TestDir::new(tag);
        let store = Arc::new(Datastore::create_or_open(&root).unwrap());
        let dir = root.join("backup");
        std::fs::create_dir(&dir).unwrap();
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let controller = receive_disks(Box::new(ours), store, dir, 0, vec!["vda".into()]);
        let (received, ()) = tokio::join!(controller, agent(theirs));
        received
    }

    /// Waits for the controller's ready, then opens disk `vda`.
    async fn begin_disk(chan: &mut tokio::io::DuplexStream) {
        assert!(matches!(read_frame(chan).await.unwrap(), DataReply::Ready));
        let begin = DataMessage::DiskBegin {
            target: "vda".into(),
            size_bytes: SIZE,
        };
        write_frame(chan, &begin).await.unwrap();
    }

    async fn ask(
        chan: &mut tokio::io::DuplexStream,
        first: u64,
        digests: &[ChunkDigest],
    ) -> Vec<String> {
        let digests = digests.iter().map(|d| d.to_hex()).collect();
        write_frame(chan, &DataMessage::Digests { first, digests })
            .await
            .unwrap();
        match read_frame::<_, DataReply>(chan).await.unwrap() {
            DataReply::Missing { digests } => digests,
            other => panic!("expected missing, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_chunk_is_asked_for_once_even_while_it_is_being_stored() {
        let data = vec![7u8; 1000];
        let d = ChunkDigest::of(&data);
        let received = receive("recv-once", |mut chan| async move {
            begin_disk(&mut chan).await;
            assert_eq!(ask(&mut chan, 0, &[d, d]).await, vec![d.to_hex()]);
            write_chunk(&mut chan, &d.0, &chunk::encode(&data, true).unwrap())
                .await
                .unwrap();
            // Asked right after the upload: stored or still being stored,
            // it is not asked for again.
            assert!(ask(&mut chan, 2, &[d]).await.is_empty());
            write_frame(&mut chan, &DataMessage::DiskEnd).await.unwrap();
        })
        .await
        .unwrap();
        assert_eq!((received.len(), received[0].chunk_count), (1, 3));
    }

    #[tokio::test]
    async fn a_chunk_that_fails_verification_fails_the_disk() {
        let d = ChunkDigest::of(b"what the agent announced");
        let err = receive("recv-bad", |mut chan| async move {
            begin_disk(&mut chan).await;
            assert_eq!(ask(&mut chan, 0, &[d]).await.len(), 1);
            let other = chunk::encode(b"what it sent", true).unwrap();
            write_chunk(&mut chan, &d.0, &other).await.unwrap();
            // The bad chunk may still be in verification when this batch is
            // answered; the disk's end waits for it and fails.
            let _ = write_frame(&mut chan, &DataMessage::DiskEnd).await;
            let reply = read_frame::<_, DataReply>(&mut chan).await;
            assert!(matches!(reply, Ok(DataReply::Failed { .. })), "{reply:?}");
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("does not match digest"), "{err}");
    }
}

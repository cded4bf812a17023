//! The controller's end of a restore data channel: it sends the chunk blobs
//! an agent fetches, as stored (compressed), and only chunks of the backup
//! being restored — an agent cannot read other VMs' data through it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_proto::{
    buffers::CHUNK_BUFFERS, read_any, write_chunk, write_frame, DataMessage, DataReply, Frame,
    FrameError,
};

use super::receive::MAX_DIGESTS_PER_MESSAGE;
use super::{ChunkDigest, Datastore};
use crate::hub::DataStream;

const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest chunk file served: a blob is at most 4 MiB plus a small header.
const MAX_BLOB: u64 = 5 * 1024 * 1024;

/// Chunk files read ahead of the one being sent.
const READ_AHEAD: usize = 3;

/// Reads one stored chunk blob, refusing one too large to be honest.
fn read_blob(path: &std::path::Path, digest: &ChunkDigest) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("chunk {digest} is missing: {e}"))?;
    let mut blob = CHUNK_BUFFERS.take(0);
    (&mut f)
        .take(MAX_BLOB + 1)
        .read_to_end(&mut blob)
        .map_err(|e| e.to_string())?;
    if blob.len() as u64 > MAX_BLOB {
        return Err(format!("chunk {digest} is damaged (oversized)"));
    }
    Ok(blob)
}

/// Serves fetches until the agent closes the channel. Returns bytes sent.
pub async fn serve_chunks(
    mut stream: DataStream,
    store: Arc<Datastore>,
    allowed: HashSet<ChunkDigest>,
) -> Result<u64, String> {
    write_frame(&mut stream, &DataReply::Ready)
        .await
        .map_err(|e| e.to_string())?;
    let mut sent = 0u64;
    let result = async {
        loop {
            let msg =
                match tokio::time::timeout(IDLE_TIMEOUT, read_any::<_, DataMessage>(&mut stream))
                    .await
                {
                    Err(_) => return Err("the agent went silent".to_string()),
                    Ok(Err(FrameError::Closed)) => return Ok(()),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Ok(Ok(Frame::Message(m))) => m,
                    Ok(Ok(Frame::Chunk { .. })) => {
                        return Err("unexpected chunk from the agent".into())
                    }
                };
            let DataMessage::Fetch { digests } = msg else {
                return Err("only fetch is allowed on a restore channel".into());
            };
            if digests.is_empty() || digests.len() > MAX_DIGESTS_PER_MESSAGE {
                return Err(format!("{} digests in one fetch", digests.len()));
            }
            // Each chunk file is read while the one before it is sent.
            let mut reads = std::collections::VecDeque::with_capacity(READ_AHEAD);
            let mut digests = digests.into_iter();
            loop {
                while reads.len() < READ_AHEAD {
                    let Some(hex) = digests.next() else { break };
                    let digest: ChunkDigest = hex.parse().map_err(|e| format!("{e}"))?;
                    if !allowed.contains(&digest) {
                        return Err(format!("chunk {digest} is not part of this backup"));
                    }
                    let path = store.chunks().chunk_path(&digest);
                    reads.push_back((
                        digest,
                        tokio::task::spawn_blocking(move || read_blob(&path, &digest)),
                    ));
                }
                let Some((digest, read)) = reads.pop_front() else {
                    break;
                };
                let blob = read.await.map_err(|e| e.to_string())??;
                sent += blob.len() as u64;
                write_chunk(&mut stream, &digest.0, &blob)
                    .await
                    .map_err(|e| e.to_string())?;
                CHUNK_BUFFERS.give(blob);
            }
        }
    }
    .await;
    if let Err(e) = &result {
        let _ = write_frame(&mut stream, &DataReply::Failed { reason: e.clone() }).await;
    }
    result.map(|()| sent)
}

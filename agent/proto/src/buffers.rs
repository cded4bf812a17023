//! Chunk-sized buffers kept for reuse. A backup moves thousands of 4 MiB
//! chunks; faulting in (and zeroing) fresh memory for every read, blob and
//! received frame costs more than compressing them. Both ends take their
//! chunk buffers here and give them back when done.

use std::sync::Mutex;

use crate::chunk::blob_capacity;
use crate::CHUNK_SIZE;

pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

/// The process's chunk buffers: enough spares for a read-ahead batch, the
/// batch being sent and the chunks being compressed or stored; more are
/// freed, and all are when a transfer ends.
pub static CHUNK_BUFFERS: BufferPool = BufferPool::new(48);

impl BufferPool {
    pub const fn new(keep: usize) -> Self {
        BufferPool {
            free: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// A buffer of `len` bytes with room for any chunk blob. Its contents
    /// are stale: the caller overwrites all of it (or fails and drops it).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let spare = self.free.lock().ok().and_then(|mut free| free.pop());
        let mut buf =
            spare.unwrap_or_else(|| Vec::with_capacity(blob_capacity(CHUNK_SIZE as usize)));
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        buf
    }

    /// Frees the spare buffers: called when a transfer ends, so an idle
    /// process does not keep them.
    pub fn release_spares(&self) {
        if let Ok(mut free) = self.free.lock() {
            *free = Vec::new();
        }
    }

    /// Returns a buffer for reuse.
    pub fn give(&self, buf: Vec<u8>) {
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.keep {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_resizes() {
        let pool = BufferPool::new(1);
        let mut a = pool.take(10);
        assert_eq!(a.len(), 10);
        a.fill(7);
        let ptr = a.as_ptr();
        pool.give(a);
        pool.give(vec![1, 2, 3]); // over `keep`: freed
        let b = pool.take(4);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 4));
        pool.give(b);
        pool.release_spares();
        assert!(pool.free.lock().unwrap().is_empty());
        let c = pool.take(20);
        assert_eq!(c.len(), 20);
        assert!(c.capacity() >= blob_capacity(CHUNK_SIZE as usize));
    }
}

//! Which chunks of a disk must be read, and which can take their digest from
//! the previous backup's index: a pure function of the disk size, the
//! changed extents and the previous index, so it is tested without a disk.

use lifeboat_proto::CHUNK_SIZE;

/// What to do for one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkPlan {
    /// Read the chunk and hash it.
    Read,
    /// Unchanged since the previous backup: reuse this digest (hex).
    Reuse(String),
    /// Known to read as zeros (a hole): no read needed.
    Zero,
}

/// Byte ranges `(offset, length)`.
pub type Ranges = [(u64, u64)];

pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE)
}

/// The byte range of chunk `i` in a disk of `size` bytes.
pub fn chunk_range(size: u64, i: u64) -> (u64, u64) {
    let start = i * CHUNK_SIZE;
    (start, CHUNK_SIZE.min(size - start))
}

fn overlaps(ranges: &Ranges, start: u64, len: u64) -> bool {
    ranges
        .iter()
        .any(|&(o, l)| o < start + len && start < o + l)
}

fn covered(ranges: &Ranges, start: u64, len: u64) -> bool {
    // Ranges come sorted and merged from the NBD client; walk them in order.
    let mut pos = start;
    for &(o, l) in ranges {
        if o <= pos && pos < o + l {
            pos = o + l;
            if pos >= start + len {
                return true;
            }
        }
    }
    false
}

/// Plans every chunk of a disk.
///
/// - `dirty`: ranges written since the previous backup's checkpoint, or
///   `None` for a full read.
/// - `previous`: the previous index's digests; only used with `dirty`, and
///   only if the disk did not change size.
/// - `zero`: ranges known to read as zeros (holes).
pub fn plan_disk(
    size: u64,
    dirty: Option<&Ranges>,
    previous: Option<&[String]>,
    zero: &Ranges,
) -> Vec<ChunkPlan> {
    let count = chunk_count(size);
    let previous = previous.filter(|p| p.len() as u64 == count);
    (0..count)
        .map(|i| {
            let (start, len) = chunk_range(size, i);
            match (dirty, previous) {
                (Some(dirty), Some(prev)) if !overlaps(dirty, start, len) => {
                    ChunkPlan::Reuse(prev[i as usize].clone())
                }
                _ if covered(zero, start, len) => ChunkPlan::Zero,
                _ => ChunkPlan::Read,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn digests(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:064x}")).collect()
    }

    #[test]
    fn a_full_plan_reads_everything_but_holes() {
        let size = 10 * MIB; // 3 chunks, the last 2 MiB
        assert_eq!(chunk_count(size), 3);
        assert_eq!(chunk_range(size, 2), (8 * MIB, 2 * MIB));
        let plan = plan_disk(size, None, None, &[(4 * MIB, 6 * MIB)]);
        assert_eq!(
            plan,
            vec![ChunkPlan::Read, ChunkPlan::Zero, ChunkPlan::Zero]
        );
        // A hole covering only part of a chunk does not spare the read.
        let plan = plan_disk(size, None, None, &[(0, 2 * MIB)]);
        assert_eq!(plan[0], ChunkPlan::Read);
    }

    #[test]
    fn an_incremental_plan_reads_only_dirty_chunks() {
        let size = 100 * 4 * MIB;
        let prev = digests(100);
        // One 64 KiB write inside chunk 7, one straddling chunks 41 and 42.
        let dirty = [(7 * 4 * MIB + 100, 64 * 1024), (42 * 4 * MIB - 10, 20)];
        let plan = plan_disk(size, Some(&dirty), Some(&prev), &[]);
        let reads: Vec<usize> = plan
            .iter()
            .enumerate()
            .filter(|(_, p)| **p == ChunkPlan::Read)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(reads, vec![7, 41, 42]);
        assert_eq!(plan[0], ChunkPlan::Reuse(prev[0].clone()));
    }

    #[test]
    fn a_resized_disk_or_missing_index_is_read_in_full() {
        let size = 8 * MIB;
        let plan = plan_disk(size, Some(&[]), Some(&digests(3)), &[]);
        assert!(plan.iter().all(|p| *p == ChunkPlan::Read));
        let plan = plan_disk(size, Some(&[]), None, &[]);
        assert!(plan.iter().all(|p| *p == ChunkPlan::Read));
    }
}

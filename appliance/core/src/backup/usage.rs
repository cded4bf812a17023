//! What each VM's backups cost in a datastore: every chunk's stored size
//! (the compressed blob on disk) split evenly between the VMs whose backups
//! reference it, so deduplicated data is paid for once, by its sharers.

use std::collections::{HashMap, HashSet};

use super::datastore::Datastore;
use super::{BackupError, VmUuid};
use lifeboat_proto::ChunkDigest;

/// Bytes of the datastore each VM's backups account for (their shares).
/// Unreadable backups and missing chunks count nothing. Blocking: it reads
/// every index and stats every chunk once.
pub fn vm_shares(store: &Datastore) -> Result<HashMap<VmUuid, f64>, BackupError> {
    let mut chunks_of: HashMap<VmUuid, HashSet<ChunkDigest>> = HashMap::new();
    for (vm, id) in store.list_all()? {
        let Ok((_, indexes)) = store.open_backup(&vm, &id) else {
            continue;
        };
        let set = chunks_of.entry(vm).or_default();
        for index in &indexes {
            set.extend(index.digests().iter().copied());
        }
    }
    let mut sharers: HashMap<ChunkDigest, u32> = HashMap::new();
    for set in chunks_of.values() {
        for d in set {
            *sharers.entry(*d).or_default() += 1;
        }
    }
    let size: HashMap<ChunkDigest, u64> = sharers
        .keys()
        .filter_map(|d| {
            let len = std::fs::metadata(store.chunks().chunk_path(d)).ok()?.len();
            Some((*d, len))
        })
        .collect();
    Ok(chunks_of
        .into_iter()
        .map(|(vm, set)| {
            let bytes = set
                .iter()
                .filter_map(|d| Some(*size.get(d)? as f64 / f64::from(sharers[d])))
                .sum();
            (vm, bytes)
        })
        .collect())
}

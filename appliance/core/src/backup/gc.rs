//! Removing backups and the chunks no backup needs. GC marks (touches) every
//! chunk a complete backup references, then sweeps what is older than the
//! cutoff; it sweeps nothing unless the mark covered every complete backup.

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::time::SystemTime;

use super::manifest::MANIFEST_FILE;
use super::{
    fsync_dir, io_at, sweep_cutoff, BackupError, BackupId, ChunkDigest, Datastore, SweepStats,
    VmUuid,
};

/// What a backup's manifest is renamed to while the backup is removed: from
/// that rename on, the backup is no longer complete, so nothing lists, opens
/// or restores it, and a removal cut short can be finished later.
pub const PRUNED_MANIFEST: &str = ".manifest.json.pruned";

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] BackupError),
    #[error("backup {vm}/{id} is unreadable, so GC stopped before removing anything: {source}")]
    UnreadableBackup {
        vm: VmUuid,
        id: BackupId,
        source: Box<BackupError>,
    },
    #[error("backup {vm}/{id} has no manifest: it is still running or was interrupted")]
    Incomplete { vm: VmUuid, id: BackupId },
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub backups_marked: u64,
    /// Distinct chunks touched.
    pub chunks_marked: u64,
    /// Chunks some backup references that the store lacks, each once.
    pub missing_chunks: Vec<ChunkDigest>,
    /// The backups referencing them: they cannot be restored in full.
    pub backups_missing_chunks: Vec<(VmUuid, BackupId)>,
    pub sweep: SweepStats,
}

/// Marks every chunk referenced by a complete backup, then removes chunks
/// (and leftover temp files) last touched before [`sweep_cutoff`]. Pass the
/// start of the oldest backup still running, if any: its chunks have no
/// finished index yet. A backup that cannot be read stops GC before the
/// sweep; one pruned while GC runs is skipped. Holds one digest per distinct
/// chunk in memory (32 bytes each, plus set overhead).
pub fn collect_garbage(
    store: &Datastore,
    oldest_running_backup_start: Option<SystemTime>,
) -> Result<GcReport, GcError> {
    // Before the mark: every touch below then lands after the cutoff.
    let gc_started = SystemTime::now();
    let mut report = GcReport::default();
    let (mut touched, mut missing) = (HashSet::new(), HashSet::new());
    for (vm, id) in store.list_all()? {
        let indexes = match store.open_backup(&vm, &id) {
            Ok((_, indexes)) => indexes,
            Err(_) if !store.backup_dir(&vm, &id).join(MANIFEST_FILE).is_file() => continue,
            Err(e) => {
                let source = Box::new(e);
                return Err(GcError::UnreadableBackup { vm, id, source });
            }
        };
        report.backups_marked += 1;
        let mut lacks_chunks = false;
        for digest in indexes.iter().flat_map(|index| index.digests()) {
            if touched.contains(digest) {
                continue;
            }
            if missing.contains(digest) {
                lacks_chunks = true;
                continue;
            }
            match store.chunks().touch(digest) {
                Ok(()) => {
                    touched.insert(*digest);
                }
                Err(BackupError::ChunkMissing(_)) => {
                    missing.insert(*digest);
                    report.missing_chunks.push(*digest);
                    lacks_chunks = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if lacks_chunks {
            report.backups_missing_chunks.push((vm, id));
        }
    }
    report.chunks_marked = touched.len() as u64;
    let cutoff = sweep_cutoff(gc_started, oldest_running_backup_start);
    report.sweep = store.chunks().sweep(cutoff)?;
    Ok(report)
}

/// Removes backup `vm/id`: first its manifest is renamed away (so a removal
/// cut short never leaves something that looks complete), then the rest.
/// Returns false if there was no such backup. A directory without a manifest
/// is refused, since it may be a backup still running; one whose removal was
/// cut short is finished. Chunks stay until the next GC.
pub fn prune_backup(store: &Datastore, vm: &VmUuid, id: &BackupId) -> Result<bool, GcError> {
    let dir = store.backup_dir(vm, id);
    let (manifest, pruned) = (dir.join(MANIFEST_FILE), dir.join(PRUNED_MANIFEST));
    match fs::rename(&manifest, &pruned) {
        Ok(()) => fsync_dir(&dir)?,
        Err(e) if e.kind() == ErrorKind::NotFound => match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_at(&dir)(e).into()),
            Ok(_) if !pruned.is_file() => {
                let (vm, id) = (vm.clone(), id.clone());
                return Err(GcError::Incomplete { vm, id });
            }
            Ok(_) => {} // an earlier removal stopped half way
        },
        Err(e) => return Err(io_at(&manifest)(e).into()),
    }
    fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
    if let Some(vm_dir) = dir.parent() {
        fsync_dir(vm_dir)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::verify::{verify_backup, write_test_backup};
    use crate::backup::{chunk, TestDir, CHUNK_SIZE};
    use std::fs::File;
    use std::time::Duration;

    const T0: u64 = 1_795_638_600; // 2026-11-25T20:30:00Z
    const TWO_DAYS: Duration = Duration::from_secs(2 * 86_400);

    fn vm() -> VmUuid {
        "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162".parse().unwrap()
    }

    /// Sets every chunk's mtime `by` into the past: untouched for that long.
    fn age_all(ds: &Datastore, by: Duration) {
        for digest in ds.chunks().iter_digests().unwrap() {
            let path = ds.chunks().chunk_path(&digest.unwrap());
            let file = File::options().write(true).open(path).unwrap();
            file.set_modified(SystemTime::now() - by).unwrap();
        }
    }

    fn put(ds: &Datastore, data: &[u8]) -> ChunkDigest {
        let digest = ChunkDigest::of(data);
        ds.chunks()
            .insert(&digest, &chunk::encode(data, true).unwrap())
            .unwrap();
        digest
    }

    #[test]
    fn gc_after_prune_removes_only_unreferenced_chunks() {
        let root = TestDir::new("gc");
        let ds = Datastore::create_or_open(&root).unwrap();
        let (shared, only_a, only_b) = (
            vec![1u8; CHUNK_SIZE as usize],
            vec![2u8; 100],
            vec![3u8; 100],
        );
        let a = write_test_backup(&ds, &vm(), T0, &[&shared, &only_a]);
        let b = write_test_backup(&ds, &vm(), T0 + 86_400, &[&shared, &only_b]);
        let orphan = put(&ds, b"written by nobody");
        age_all(&ds, TWO_DAYS);
        // Written 30 minutes ago, e.g. by a backup that has just finished:
        // inside the safety margin, so kept though no index names it.
        let recent = put(&ds, b"recent");
        File::options()
            .write(true)
            .open(ds.chunks().chunk_path(&recent))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(1800))
            .unwrap();

        assert!(prune_backup(&ds, &vm(), &a).unwrap());
        assert!(!ds.backup_dir(&vm(), &a).exists());
        assert_eq!(ds.list_backups(&vm()).unwrap(), vec![b.clone()]);

        let report = collect_garbage(&ds, None).unwrap();
        assert_eq!((report.backups_marked, report.chunks_marked), (1, 2));
        assert!(report.missing_chunks.is_empty() && report.backups_missing_chunks.is_empty());
        assert_eq!((report.sweep.removed, report.sweep.kept), (2, 3));
        let chunks = ds.chunks();
        assert!(!chunks.contains(&ChunkDigest::of(&only_a)) && !chunks.contains(&orphan));
        assert!(
            chunks.contains(&ChunkDigest::of(&shared))
                && chunks.contains(&ChunkDigest::of(&only_b))
        );
        assert!(chunks.contains(&recent));
        let check = verify_backup(&ds, &vm(), &b, &mut |_, _| {}).unwrap();
        assert!(check.ok(), "{check:?}");
    }

    #[test]
    fn a_running_backup_keeps_chunks_touched_since_its_start() {
        let root = TestDir::new("gc-running");
        let ds = Datastore::create_or_open(&root).unwrap();
        let uploaded = put(&ds, b"uploaded by a running backup");
        age_all(&ds, TWO_DAYS);
        let started = SystemTime::now() - 3 * TWO_DAYS;
        let report = collect_garbage(&ds, Some(started)).unwrap();
        assert_eq!((report.sweep.removed, report.sweep.kept), (0, 1));
        assert!(ds.chunks().contains(&uploaded));
        collect_garbage(&ds, None).unwrap();
        assert!(
            !ds.chunks().contains(&uploaded),
            "garbage once no backup runs"
        );
    }

    #[test]
    fn missing_chunks_are_reported_and_unreadable_backups_stop_gc() {
        let root = TestDir::new("gc-damage");
        let ds = Datastore::create_or_open(&root).unwrap();
        let id = write_test_backup(&ds, &vm(), T0, &[b"lost".as_slice()]);
        let lost = ChunkDigest::of(b"lost");
        ds.chunks().remove(&lost).unwrap();
        let orphan = put(&ds, b"orphan");
        age_all(&ds, TWO_DAYS);
        let report = collect_garbage(&ds, None).unwrap();
        assert_eq!(report.missing_chunks, vec![lost]);
        assert_eq!(report.backups_missing_chunks, vec![(vm(), id.clone())]);
        assert!(!ds.chunks().contains(&orphan));

        let orphan = put(&ds, b"orphan");
        age_all(&ds, TWO_DAYS);
        fs::write(ds.backup_dir(&vm(), &id).join("vda.fidx"), b"garbage").unwrap();
        let err = collect_garbage(&ds, None).unwrap_err();
        assert!(matches!(err, GcError::UnreadableBackup { .. }), "{err}");
        assert!(ds.chunks().contains(&orphan), "nothing swept");
    }

    #[test]
    fn prune_refuses_incomplete_and_finishes_interrupted() {
        let root = TestDir::new("gc-prune");
        let ds = Datastore::create_or_open(&root).unwrap();
        let never = BackupId::from_unix(T0 - 60).unwrap();
        assert!(!prune_backup(&ds, &vm(), &never).unwrap());

        let (running, dir) = ds.new_backup_dir(&vm(), T0).unwrap();
        let err = prune_backup(&ds, &vm(), &running).unwrap_err();
        assert!(matches!(err, GcError::Incomplete { .. }), "{err}");
        assert!(dir.is_dir(), "a running backup is left alone");

        // A removal cut short after the manifest was renamed away.
        let id = write_test_backup(&ds, &vm(), T0 + 60, &[b"x".as_slice()]);
        let dir = ds.backup_dir(&vm(), &id);
        fs::rename(dir.join(MANIFEST_FILE), dir.join(PRUNED_MANIFEST)).unwrap();
        assert!(
            ds.list_backups(&vm()).unwrap().is_empty(),
            "not complete any more"
        );
        assert!(prune_backup(&ds, &vm(), &id).unwrap());
        assert!(!dir.exists());
    }
}

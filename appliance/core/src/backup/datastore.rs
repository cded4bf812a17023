//! `Datastore`: a root with `.chunks/` and `vm/<vm-uuid>/<backup-id>/`. Paths are
//! built only from parsed names; a backup is visible only once its manifest
//! exists, and opening one checks every index against the manifest.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::manifest::MANIFEST_FILE;
use super::{
    fsync_dir, io_at, BackupError, BackupId, ChunkStore, FixedIndexReader, Manifest, Result, VmUuid,
};

/// How many following seconds `new_backup_dir` tries when the id is taken.
const MAX_ID_BUMPS: u64 = 60;

pub struct Datastore {
    root: PathBuf,
    chunks: ChunkStore,
}

impl Datastore {
    pub fn create_or_open(root: &Path) -> Result<Self> {
        let vm_dir = root.join("vm");
        fs::create_dir_all(&vm_dir).map_err(io_at(&vm_dir))?;
        let chunks = ChunkStore::create(&root.join(".chunks"))?;
        fsync_dir(root)?;
        Ok(Datastore {
            root: root.into(),
            chunks,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunks(&self) -> &ChunkStore {
        &self.chunks
    }

    pub fn backup_dir(&self, vm: &VmUuid, id: &BackupId) -> PathBuf {
        self.vm_dir(vm).join(id.as_str())
    }

    /// Creates the directory for a backup started at `started_at` (UNIX
    /// seconds). If that second is taken, the next free one is used, so ids
    /// stay unique and ordered. The directory stays invisible to listings
    /// until the manifest is written into it.
    pub fn new_backup_dir(&self, vm: &VmUuid, started_at: u64) -> Result<(BackupId, PathBuf)> {
        let vm_dir = self.vm_dir(vm);
        if !vm_dir.is_dir() {
            fs::create_dir_all(&vm_dir).map_err(io_at(&vm_dir))?;
            fsync_dir(&self.root.join("vm"))?;
        }
        for bump in 0..MAX_ID_BUMPS {
            let id = BackupId::from_unix(started_at.saturating_add(bump))?;
            let dir = vm_dir.join(id.as_str());
            match fs::create_dir(&dir) {
                Ok(()) => {
                    fsync_dir(&vm_dir)?;
                    return Ok((id, dir));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_at(&dir)(e)),
            }
        }
        Err(BackupError::NoFreeBackupId(vm.clone()))
    }

    /// The VM's complete backups (those with a manifest), oldest first.
    pub fn list_backups(&self, vm: &VmUuid) -> Result<Vec<BackupId>> {
        let vm_dir = self.vm_dir(vm);
        let mut ids: Vec<BackupId> = subdirs::<BackupId>(&vm_dir)?
            .into_iter()
            .filter(|id| vm_dir.join(id.as_str()).join(MANIFEST_FILE).is_file())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every complete backup in the datastore, by VM then time.
    pub fn list_all(&self) -> Result<Vec<(VmUuid, BackupId)>> {
        let mut all = Vec::new();
        for vm in subdirs::<VmUuid>(&self.root.join("vm"))? {
            all.extend(
                self.list_backups(&vm)?
                    .into_iter()
                    .map(|id| (vm.clone(), id)),
            );
        }
        all.sort();
        Ok(all)
    }

    /// Reads a backup's manifest and opens its indexes, checking that the
    /// manifest names this VM and id and that each index is the one it lists
    /// (size, chunk count, digest-list SHA-256).
    pub fn open_backup(
        &self,
        vm: &VmUuid,
        id: &BackupId,
    ) -> Result<(Manifest, Vec<FixedIndexReader>)> {
        let dir = self.backup_dir(vm, id);
        let manifest = Manifest::read(&dir)?;
        let mismatch = |reason: String| BackupError::BackupMismatch {
            vm: vm.clone(),
            id: id.clone(),
            reason,
        };
        if manifest.vm.uuid != *vm || manifest.backup.id != *id {
            let (m_vm, m_id) = (&manifest.vm.uuid, &manifest.backup.id);
            return Err(mismatch(format!("the manifest is for {m_vm}/{m_id}")));
        }
        let mut indexes = Vec::with_capacity(manifest.disks.len());
        for disk in &manifest.disks {
            let index = FixedIndexReader::open(&dir.join(&disk.index_file))?;
            if hex::encode(index.checksum()) != disk.index_checksum {
                return Err(mismatch(format!(
                    "{} is not the index the manifest lists",
                    disk.index_file
                )));
            }
            if (index.image_size(), index.chunk_count()) != (disk.size_bytes, disk.chunk_count) {
                return Err(mismatch(format!(
                    "{} describes another disk size",
                    disk.index_file
                )));
            }
            indexes.push(index);
        }
        Ok((manifest, indexes))
    }

    /// Removes every backup directory without a manifest: what an interrupted
    /// backup leaves. Run it only while no backup is being written (at
    /// controller start), since a running backup has no manifest yet.
    /// Directories whose names are not ours are left alone.
    pub fn cleanup_incomplete(&self) -> Result<Vec<(VmUuid, BackupId)>> {
        let mut removed = Vec::new();
        for vm in subdirs::<VmUuid>(&self.root.join("vm"))? {
            let vm_dir = self.vm_dir(&vm);
            for id in subdirs::<BackupId>(&vm_dir)? {
                let dir = vm_dir.join(id.as_str());
                if dir.join(MANIFEST_FILE).is_file() {
                    continue;
                }
                fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
                fsync_dir(&vm_dir)?;
                removed.push((vm.clone(), id));
            }
        }
        Ok(removed)
    }

    fn vm_dir(&self, vm: &VmUuid) -> PathBuf {
        self.root.join("vm").join(vm.as_str())
    }
}

/// The real subdirectories of `dir` (not symlinks) whose names parse as `T`
/// in canonical spelling; a missing `dir` has none.
fn subdirs<T>(dir: &Path) -> Result<Vec<T>>
where
    T: std::str::FromStr + ToString,
{
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_at(dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_at(dir))?;
        if !entry.file_type().map_err(io_at(dir))?.is_dir() {
            continue;
        }
        let name = entry.file_name();
        let parsed = name
            .to_str()
            .and_then(|n| n.parse::<T>().ok().filter(|t| t.to_string() == n));
        match parsed {
            Some(t) => found.push(t),
            None => {
                tracing::warn!(dir = %dir.display(), name = ?name, "ignoring unexpected directory in datastore")
            }
        }
    }
    Ok(found)
}

/// A backup marked protected is never removed by retention.
const PROTECTED_FILE: &str = "protected";

impl Datastore {
    pub fn is_protected(&self, vm: &VmUuid, id: &BackupId) -> bool {
        self.backup_dir(vm, id).join(PROTECTED_FILE).exists()
    }

    pub fn set_protected(&self, vm: &VmUuid, id: &BackupId, protected: bool) -> Result<()> {
        let path = self.backup_dir(vm, id).join(PROTECTED_FILE);
        let result = if protected {
            std::fs::write(&path, b"protected\n")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        result.map_err(io_at(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{chunk, manifest, ChunkDigest, FixedIndexWriter, TestDir, CHUNK_SIZE};

    const T0: u64 = 1_795_638_600; // 2026-11-25T20:30:00Z

    fn vm() -> VmUuid {
        "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162".parse().unwrap()
    }

    /// A complete one-disk backup whose chunks are `fill` bytes.
    fn backup(ds: &Datastore, started_at: u64, fill: u8) -> BackupId {
        let (id, dir) = ds.new_backup_dir(&vm(), started_at).unwrap();
        let size = CHUNK_SIZE + 100;
        let mut index = FixedIndexWriter::create(&dir.join("vda.fidx"), size, started_at).unwrap();
        for (i, len) in [(0, CHUNK_SIZE), (1, 100)] {
            let data = vec![fill; len as usize];
            let digest = ChunkDigest::of(&data);
            ds.chunks()
                .insert(&digest, &chunk::encode(&data, true).unwrap())
                .unwrap();
            index.set(i, &digest).unwrap();
        }
        let checksum = index.finish().unwrap();
        let mut m = manifest::sample(&vm(), &id);
        m.disks[0].size_bytes = size;
        m.disks[0].chunk_count = 2;
        m.disks[0].index_checksum = hex::encode(checksum);
        m.write_atomic(&dir).unwrap();
        id
    }

    #[test]
    fn backup_round_trip() {
        let root = TestDir::new("ds-rt");
        let ds = Datastore::create_or_open(&root).unwrap();
        assert!(root.join(".chunks").is_dir() && root.join("vm").is_dir());
        let id = backup(&ds, T0, 1);
        assert_eq!(id.as_str(), "2026-11-25T20:30:00Z");
        assert!(root
            .join("vm")
            .join(vm().as_str())
            .join(id.as_str())
            .join("manifest.json")
            .is_file());
        let ds = Datastore::create_or_open(&root).unwrap();
        assert_eq!(ds.list_backups(&vm()).unwrap(), vec![id.clone()]);
        let (m, indexes) = ds.open_backup(&vm(), &id).unwrap();
        assert_eq!((m.backup.id, indexes.len()), (id, 1));
        let last = ds.chunks().read(&indexes[0].digests()[1]).unwrap();
        assert_eq!(last, vec![1u8; 100]);
    }

    #[test]
    fn ids_are_unique_and_ordered() {
        let root = TestDir::new("ds-ids");
        let ds = Datastore::create_or_open(&root).unwrap();
        let first = backup(&ds, T0, 1);
        let second = backup(&ds, T0, 2);
        assert_eq!(second.as_str(), "2026-11-25T20:30:01Z");
        let other: VmUuid = "00000000-0000-4000-8000-000000000001".parse().unwrap();
        ds.new_backup_dir(&other, T0).unwrap(); // incomplete: not listed
        assert_eq!(ds.list_all().unwrap(), vec![(vm(), first), (vm(), second)]);
    }

    #[test]
    fn incomplete_backup_is_invisible_and_cleaned_up() {
        let root = TestDir::new("ds-incomplete");
        let ds = Datastore::create_or_open(&root).unwrap();
        let complete = backup(&ds, T0, 1);
        let (partial, dir) = ds.new_backup_dir(&vm(), T0 + 3600).unwrap();
        fs::write(dir.join(".vda.fidx.tmp-1"), b"half").unwrap();
        let junk = root.join("vm").join("not-a-uuid");
        fs::create_dir_all(junk.join("whatever")).unwrap();
        assert_eq!(ds.list_backups(&vm()).unwrap(), vec![complete.clone()]);
        assert_eq!(ds.cleanup_incomplete().unwrap(), vec![(vm(), partial)]);
        assert!(
            !dir.exists() && junk.exists(),
            "foreign directories are left alone"
        );
        assert_eq!(ds.list_backups(&vm()).unwrap(), vec![complete]);
    }

    #[test]
    fn swapped_index_or_moved_manifest_is_refused() {
        let root = TestDir::new("ds-swap");
        let ds = Datastore::create_or_open(&root).unwrap();
        let (a, b) = (backup(&ds, T0, 1), backup(&ds, T0 + 60, 2));
        let (dir_a, dir_b) = (ds.backup_dir(&vm(), &a), ds.backup_dir(&vm(), &b));
        fs::copy(dir_b.join("vda.fidx"), dir_a.join("vda.fidx")).unwrap();
        let err = ds.open_backup(&vm(), &a).unwrap_err();
        assert!(matches!(err, BackupError::BackupMismatch { .. }), "{err}");
        fs::copy(dir_a.join("manifest.json"), dir_b.join("manifest.json")).unwrap();
        let err = ds.open_backup(&vm(), &b).unwrap_err();
        assert!(err.to_string().contains("the manifest is for"), "{err}");
    }

    #[test]
    fn path_traversal_names_are_refused() {
        for bad in [
            "..",
            "../../etc",
            "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162/..",
            "/etc/passwd",
        ] {
            assert!(bad.parse::<VmUuid>().is_err(), "{bad}");
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
        // A manifest naming a traversing index file is refused before any open.
        let root = TestDir::new("ds-traversal");
        let ds = Datastore::create_or_open(&root).unwrap();
        let id = backup(&ds, T0, 1);
        let path = ds.backup_dir(&vm(), &id).join("manifest.json");
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("\"vda.fidx\"", "\"../../x.fidx\"");
        fs::write(&path, text).unwrap();
        let err = ds.open_backup(&vm(), &id).unwrap_err();
        assert!(matches!(err, BackupError::CorruptManifest { .. }), "{err}");
        // An uppercase spelling of a VM directory is not a second VM.
        let upper = root
            .join("vm")
            .join(vm().as_str().to_uppercase())
            .join(id.as_str());
        fs::create_dir_all(&upper).unwrap();
        fs::copy(&path, upper.join("manifest.json")).unwrap();
        assert_eq!(ds.list_all().unwrap().len(), 1);
    }
}

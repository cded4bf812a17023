//! Import: one streaming pass over an untrusted archive, every member checked
//! against the header and the datastore's own validation before it counts;
//! the backup appears complete (manifest last) or not at all.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, ErrorKind, Read};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{
    check_size, ArchiveError, ArchiveHeader, Hashing, MemberName, Progress, Result, CHUNKS_PREFIX,
    HEADER_FILE, MAX_HEADER_SIZE,
};
use crate::backup::manifest::MANIFEST_FILE;
use crate::backup::{
    fsync_dir, io_at, temp_name, write_file_atomic, BackupError, BackupId, ChunkDigest, Datastore,
    VmUuid,
};

/// Imports an archive written by [`export_backup`], streaming it once. Chunks
/// are stored as they arrive (each verified by `ChunkStore::insert`; unused
/// ones are GC's to remove). Manifest and indexes go to a staging directory in
/// the datastore, are checked with `open_backup`, and move into place only at
/// the end, manifest last. On any error no backup directory is left behind.
///
/// [`export_backup`]: super::export_backup
pub fn import_archive(
    store: &Datastore,
    input: impl Read,
    progress: &dyn Progress,
) -> Result<(VmUuid, BackupId)> {
    progress.phase("importing", None);
    let mut archive = tar::Archive::new(CountingReader {
        inner: input,
        progress,
    });
    let mut entries = archive.entries().map_err(ArchiveError::Stream)?;
    let first = entries.next().transpose().map_err(|e| {
        let e: String = e.to_string().chars().take(100).collect();
        ArchiveError::NotAnArchive(format!("it does not start with a tar header ({e})"))
    })?;
    let first = first.ok_or_else(|| ArchiveError::NotAnArchive("the archive is empty".into()))?;
    let path = member_path(&first)?;
    if path != HEADER_FILE {
        return Err(ArchiveError::NotAnArchive(format!(
            "the first member is {path:?}, not {HEADER_FILE}"
        )));
    }
    check_size(&path, first.size(), MAX_HEADER_SIZE)?;
    let header = ArchiveHeader::parse(&read_member(first, &path)?)?;
    let (vm, id) = (header.vm.clone(), header.backup.clone());
    if store.backup_dir(&vm, &id).exists() {
        return Err(ArchiveError::AlreadyExists { vm, id });
    }
    let staging = Staging::create(store, &vm, &id)?;
    let members = &header.members;
    let position: HashMap<&MemberName, usize> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (&m.name, i))
        .collect();
    let first_chunk = members
        .iter()
        .position(|m| m.name.rank() == 2)
        .unwrap_or(members.len());
    let mut referenced = None;
    let mut next = 0;
    for entry in entries {
        let entry = entry.map_err(ArchiveError::Stream)?;
        let path = member_path(&entry)?;
        let found = MemberName::parse(&path).and_then(|n| position.get(&n).copied());
        let Some(pos) = found else {
            return Err(match path == HEADER_FILE {
                true => ArchiveError::Duplicate(path),
                false => ArchiveError::Unknown(path),
            });
        };
        let name = &members[pos].name;
        if pos < next {
            return Err(ArchiveError::Duplicate(path));
        }
        if pos > next {
            let reason = format!(
                "out of order: {} should come first",
                members[next].name.path()
            );
            return Err(ArchiveError::BadMember { name: path, reason });
        }
        check_size(&path, entry.size(), name.size_limit())?;
        if entry.size() != members[pos].size {
            let reason = format!(
                "{} bytes, the archive header says {}",
                entry.size(),
                members[pos].size
            );
            return Err(ArchiveError::BadMember { name: path, reason });
        }
        if pos == first_chunk {
            referenced = Some(staging.check_backup(&header)?);
        }
        let sha256 = match name {
            MemberName::Manifest => {
                let bytes = read_member(entry, &path)?;
                write_file_atomic(&staging.dir, MANIFEST_FILE, &bytes)?;
                Sha256::digest(&bytes).into()
            }
            MemberName::Index(file) => staging.write_index(entry, file, &path)?,
            MemberName::Chunk(digest) => {
                let blob = read_member(entry, &path)?;
                let sha256: [u8; 32] = Sha256::digest(&blob).into();
                if sha256 == members[pos].sha256 {
                    store.chunks().insert(digest, &blob).map_err(|e| match e {
                        BackupError::Chunk(_) => {
                            let source = Box::new(e);
                            BackupError::ChunkDamaged {
                                digest: *digest,
                                source,
                            }
                        }
                        other => other,
                    })?;
                }
                sha256
            }
        };
        if sha256 != members[pos].sha256 {
            return Err(ArchiveError::ChecksumMismatch(path));
        }
        next += 1;
    }
    if let Some(missing) = members.get(next) {
        let (path, listed) = (missing.name.path(), members.len());
        return Err(ArchiveError::Incomplete(format!(
            "it ends before member {path:?} ({next} of {listed} members read)"
        )));
    }
    let referenced = match referenced {
        Some(r) => r,
        None => staging.check_backup(&header)?,
    };
    staging.commit(store, &referenced)?;
    Ok((vm, id))
}

/// Where an import puts manifest and indexes until they are checked: a
/// datastore of its own (`<datastore>/.import.tmp-<random>/`, a name that
/// listings and cleanup ignore), so `open_backup` checks them exactly as it
/// checks any backup. Removed on drop.
struct Staging {
    scratch: Datastore,
    dir: PathBuf,
    vm: VmUuid,
    id: BackupId,
    _cleanup: RemoveOnDrop,
}

impl Staging {
    fn create(store: &Datastore, vm: &VmUuid, id: &BackupId) -> Result<Staging> {
        let root = store.root().join(temp_name("import"));
        fs::create_dir(&root).map_err(io_at(&root))?;
        let cleanup = RemoveOnDrop(root);
        let scratch = Datastore::create_or_open(&cleanup.0)?;
        let dir = scratch.backup_dir(vm, id);
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let (vm, id) = (vm.clone(), id.clone());
        Ok(Staging {
            scratch,
            dir,
            vm,
            id,
            _cleanup: cleanup,
        })
    }

    /// Streams an index member into the staging dir; returns its SHA-256.
    fn write_index<R: Read>(
        &self,
        entry: tar::Entry<'_, R>,
        file: &str,
        member: &str,
    ) -> Result<[u8; 32]> {
        let path = self.dir.join(file);
        let mut out = File::create_new(&path).map_err(io_at(&path))?;
        let size = entry.size();
        let mut data = Hashing::new(entry);
        let copied = io::copy(&mut data, &mut out).map_err(ArchiveError::Stream)?;
        if copied != size {
            return Err(ArchiveError::Incomplete(format!(
                "member {member:?} is truncated"
            )));
        }
        out.sync_all().map_err(io_at(&path))?;
        Ok(data.finish())
    }

    /// Checks manifest and indexes as a backup, and that the archive lists
    /// exactly the chunks they use; returns those digests, each once.
    fn check_backup(&self, header: &ArchiveHeader) -> Result<Vec<ChunkDigest>> {
        // Errors name the staging copy; the wrapper says where it came from.
        let (manifest, indexes) =
            (self.scratch.open_backup(&self.vm, &self.id)).map_err(ArchiveError::InvalidBackup)?;
        let listed: HashSet<String> = (header.members.iter())
            .filter(|m| matches!(m.name, MemberName::Index(_)))
            .map(|m| m.name.path())
            .collect();
        if listed
            != manifest
                .disks
                .iter()
                .map(|d| d.index_file.clone())
                .collect()
        {
            return Err(ArchiveError::BadHeader(
                "its index files are not the ones the manifest lists".into(),
            ));
        }
        let listed: HashSet<ChunkDigest> = (header.members.iter())
            .filter_map(|m| match m.name {
                MemberName::Chunk(d) => Some(d),
                _ => None,
            })
            .collect();
        let mut seen = HashSet::new();
        let used: Vec<ChunkDigest> = (indexes.iter().flat_map(|i| i.digests()))
            .filter(|d| seen.insert(**d))
            .copied()
            .collect();
        if let Some(d) = used.iter().find(|d| !listed.contains(d)) {
            return Err(ArchiveError::Incomplete(format!(
                "chunk {d}, used by the backup, is not in it"
            )));
        }
        if let Some(d) = listed.iter().find(|d| !seen.contains(d)) {
            let reason = "this chunk is not used by the backup".into();
            return Err(ArchiveError::BadMember {
                name: format!("{CHUNKS_PREFIX}{d}"),
                reason,
            });
        }
        Ok(used)
    }

    /// Makes the staged backup visible: claims the backup directory (it must
    /// not exist), moves the indexes in, then the manifest, and reopens it.
    fn commit(self, store: &Datastore, used: &[ChunkDigest]) -> Result<()> {
        // Touch every chunk just before the backup references them: a GC that
        // started while the archive streamed spares only chunks touched after
        // its cutoff, and the first inserts may be older than that.
        if let Some(d) = store.chunks().missing(used)?.first() {
            return Err(ArchiveError::Incomplete(format!(
                "chunk {d} vanished from the datastore during import"
            )));
        }
        let final_dir = store.backup_dir(&self.vm, &self.id);
        let vm_dir = final_dir.parent().unwrap_or(store.root());
        fs::create_dir_all(vm_dir).map_err(io_at(vm_dir))?;
        fsync_dir(&store.root().join("vm"))?;
        match fs::create_dir(&final_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let (vm, id) = (self.vm.clone(), self.id.clone());
                return Err(ArchiveError::AlreadyExists { vm, id });
            }
            Err(e) => return Err(io_at(&final_dir)(e).into()),
        }
        let moved = (|| -> Result<()> {
            let index_files = fs::read_dir(&self.dir).map_err(io_at(&self.dir))?;
            for entry in index_files {
                let name = entry.map_err(io_at(&self.dir))?.file_name();
                if name != MANIFEST_FILE {
                    let to = final_dir.join(&name);
                    fs::rename(self.dir.join(&name), &to).map_err(io_at(&to))?;
                }
            }
            fsync_dir(&final_dir)?;
            let to = final_dir.join(MANIFEST_FILE);
            fs::rename(self.dir.join(MANIFEST_FILE), &to).map_err(io_at(&to))?;
            fsync_dir(&final_dir)?;
            store.open_backup(&self.vm, &self.id)?;
            Ok(())
        })();
        if moved.is_err() {
            // Manifest first, so the backup is invisible before it is gone.
            let _ = fs::remove_file(final_dir.join(MANIFEST_FILE));
            let _ = fs::remove_dir_all(&final_dir);
            let _ = fsync_dir(vm_dir);
        }
        moved
    }
}

/// A directory removed with everything in it when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The member's path, if the entry is a regular file with a safe path.
fn member_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String> {
    let raw = entry.path_bytes();
    let shown = String::from_utf8_lossy(&raw).into_owned();
    let kind = entry.header().entry_type();
    if !kind.is_file() {
        let kind = match kind {
            _ if kind.is_symlink() => "a symbolic link",
            _ if kind.is_hard_link() => "a hard link",
            _ if kind.is_character_special() || kind.is_block_special() => "a device",
            _ if kind.is_dir() => "a directory",
            _ if kind.is_fifo() => "a FIFO",
            _ => "not a regular file",
        };
        return Err(ArchiveError::NotARegularFile { name: shown, kind });
    }
    let unsafe_path = |reason| {
        Err(ArchiveError::UnsafePath {
            name: shown.clone(),
            reason,
        })
    };
    let Ok(path) = std::str::from_utf8(&raw) else {
        return unsafe_path("not UTF-8");
    };
    if path.starts_with('/') {
        return unsafe_path("absolute path");
    }
    if path.split('/').any(|c| c == "..") {
        return unsafe_path("contains `..`");
    }
    Ok(path.to_string())
}

/// The whole member; its size was checked against its kind's limit.
fn read_member<R: Read>(entry: tar::Entry<'_, R>, name: &str) -> Result<Vec<u8>> {
    let size = entry.size();
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(ArchiveError::Stream)?;
    if bytes.len() as u64 != size {
        return Err(ArchiveError::Incomplete(format!(
            "member {name:?} is truncated"
        )));
    }
    Ok(bytes)
}

struct CountingReader<'p, R> {
    inner: R,
    progress: &'p dyn Progress,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

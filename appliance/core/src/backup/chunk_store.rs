//! `ChunkStore`: one blob file per digest at `.chunks/<first 4 hex>/<64 hex>`.
//! A file exists only if its blob decoded to data with that digest; inserts are
//! atomic; the GC sweep never removes a chunk touched after its cutoff.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::chunk::{self, HEADER_SIZE, MAX_PAYLOAD};
use super::{fsync_dir, io_at, write_file_atomic, BackupError, ChunkDigest, Result};

/// Slack subtracted from the sweep cutoff, for clock steps on the appliance
/// and coarse mtimes on some shares (FAT/SMB keep 2 s).
pub const GC_SAFETY_MARGIN: Duration = Duration::from_secs(3600);

/// The GC sweep cutoff: chunks last touched before it are garbage. Marking
/// touches every chunk an index references, and every chunk a backup is told
/// it need not upload is touched then ([`ChunkStore::missing`], `insert`), so
/// taking the earlier of the GC start and the oldest running backup's start
/// keeps every chunk a finished or running backup may reference.
pub fn sweep_cutoff(
    gc_started: SystemTime,
    oldest_running_backup: Option<SystemTime>,
) -> SystemTime {
    let base = oldest_running_backup.map_or(gc_started, |b| b.min(gc_started));
    base.checked_sub(GC_SAFETY_MARGIN).unwrap_or(UNIX_EPOCH)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepStats {
    pub removed: u64,
    pub removed_bytes: u64,
    pub kept: u64,
    pub kept_bytes: u64,
    /// Leftover temp files of interrupted inserts.
    pub temp_files_removed: u64,
}

pub struct ChunkStore {
    dir: PathBuf,
    /// Serialises a sweep's check-then-unlink of one chunk with touches, so a
    /// chunk touched while the sweep runs is never removed. One `ChunkStore`
    /// per datastore per process (the `Datastore` owns it).
    gc_lock: Mutex<()>,
}

impl ChunkStore {
    /// Creates `dir` (the `.chunks` directory) if needed and opens it.
    pub fn create(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        if let Some(parent) = dir.parent() {
            fsync_dir(parent)?;
        }
        Self::open(dir)
    }

    /// Opens an existing `.chunks` directory. Prefix directories are made on
    /// first use, not up front: 65,536 mkdirs are slow on a network share.
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = fs::metadata(dir).map_err(io_at(dir))?;
        if !meta.is_dir() {
            let source = std::io::Error::new(ErrorKind::NotADirectory, "not a directory");
            return Err(BackupError::Io {
                path: dir.into(),
                source,
            });
        }
        Ok(ChunkStore {
            dir: dir.into(),
            gc_lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn chunk_path(&self, digest: &ChunkDigest) -> PathBuf {
        let hex = digest.to_hex();
        self.dir.join(&hex[..4]).join(hex)
    }

    pub fn contains(&self, digest: &ChunkDigest) -> bool {
        fs::metadata(self.chunk_path(digest)).is_ok_and(|m| m.is_file())
    }

    /// The digests the store lacks, each once, in first-seen order. Present
    /// ones are touched: the caller will reference them without uploading.
    pub fn missing(&self, digests: &[ChunkDigest]) -> Result<Vec<ChunkDigest>> {
        let mut seen = std::collections::HashSet::new();
        let mut missing = Vec::new();
        for digest in digests.iter().filter(|d| seen.insert(**d)) {
            match self.touch(digest) {
                Ok(()) => {}
                Err(BackupError::ChunkMissing(_)) => missing.push(*digest),
                Err(e) => return Err(e),
            }
        }
        Ok(missing)
    }

    /// Stores `blob` under `digest` after verifying it decodes to data with that
    /// digest. Returns false if the chunk was already there (then only touched).
    /// Concurrent inserts of one chunk are safe: each renames its own complete
    /// temp file over the same name, and the contents are identical.
    pub fn insert(&self, digest: &ChunkDigest, blob: &[u8]) -> Result<bool> {
        match self.touch(digest) {
            Ok(()) => return Ok(false),
            Err(BackupError::ChunkMissing(_)) => {}
            Err(e) => return Err(e),
        }
        chunk::verify(blob, digest)?;
        let hex = digest.to_hex();
        let prefix_dir = self.dir.join(&hex[..4]);
        if !prefix_dir.is_dir() {
            match fs::create_dir(&prefix_dir) {
                Ok(()) => fsync_dir(&self.dir)?,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_at(&prefix_dir)(e)),
            }
        }
        write_file_atomic(&prefix_dir, &hex, blob)?;
        Ok(true)
    }

    /// The chunk's data, verified against its digest.
    pub fn read(&self, digest: &ChunkDigest) -> Result<Vec<u8>> {
        let path = self.chunk_path(digest);
        let file = File::open(&path).map_err(|e| missing_or_io(e, digest, &path))?;
        // Bounded read: a file grown beyond any valid blob is damage, not data.
        let limit = (HEADER_SIZE + MAX_PAYLOAD) as u64;
        let mut blob = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut blob)
            .map_err(io_at(&path))?;
        let damaged = |source: chunk::ChunkError| BackupError::ChunkDamaged {
            digest: *digest,
            source: Box::new(source.into()),
        };
        if blob.len() as u64 > limit {
            return Err(damaged(chunk::ChunkError::BadHeader(
                "file larger than any chunk blob".into(),
            )));
        }
        chunk::decode_verified(&blob, digest).map_err(damaged)
    }

    /// Removes a chunk; false if it was not there.
    pub fn remove(&self, digest: &ChunkDigest) -> Result<bool> {
        let path = self.chunk_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Moves a damaged chunk aside as `<digest>.bad` (kept for inspection):
    /// the store then reports it missing, so the next backup that has this
    /// data uploads it again, which heals every backup that references it.
    pub fn quarantine(&self, digest: &ChunkDigest) -> Result<bool> {
        let path = self.chunk_path(digest);
        let bad = path.with_extension("bad");
        match fs::rename(&path, &bad) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Sets the chunk's mtime to now (GC mark). The time is set explicitly,
    /// not left to the file server, so a share's clock skew does not matter.
    pub fn touch(&self, digest: &ChunkDigest) -> Result<()> {
        let path = self.chunk_path(digest);
        let _gc = self.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| missing_or_io(e, digest, &path))?;
        file.set_modified(SystemTime::now()).map_err(io_at(&path))
    }

    /// Every digest in the store, in no particular order.
    pub fn iter_digests(&self) -> Result<impl Iterator<Item = Result<ChunkDigest>>> {
        let outer = fs::read_dir(&self.dir).map_err(io_at(&self.dir))?;
        let dir = self.dir.clone();
        Ok(outer.flat_map(
            move |entry| -> Box<dyn Iterator<Item = Result<ChunkDigest>>> {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => return Box::new(std::iter::once(Err(io_at(&dir)(e)))),
                };
                let Some(prefix) = prefix_name(&entry) else {
                    return Box::new(std::iter::empty());
                };
                let path = entry.path();
                match fs::read_dir(&path) {
                    Ok(inner) => Box::new(inner.filter_map(move |e| match e {
                        Ok(e) => chunk_name(&e, &prefix).map(Ok),
                        Err(e) => Some(Err(io_at(&path)(e))),
                    })),
                    Err(e) => Box::new(std::iter::once(Err(io_at(&path)(e)))),
                }
            },
        ))
    }

    /// GC sweep: removes every chunk (and leftover temp file) whose mtime is
    /// before `older_than`, normally [`sweep_cutoff`]. Other files are left alone.
    pub fn sweep(&self, older_than: SystemTime) -> Result<SweepStats> {
        let mut stats = SweepStats::default();
        for entry in fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let entry = entry.map_err(io_at(&self.dir))?;
            let Some(prefix) = prefix_name(&entry) else {
                continue;
            };
            let prefix_dir = entry.path();
            for file in fs::read_dir(&prefix_dir).map_err(io_at(&prefix_dir))? {
                let file = file.map_err(io_at(&prefix_dir))?;
                let is_chunk = chunk_name(&file, &prefix).is_some();
                let is_temp = file
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"));
                if !is_chunk && !is_temp {
                    continue;
                }
                let path = file.path();
                let _gc = self.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
                let meta = match fs::symlink_metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_at(&path)(e)),
                };
                if meta.modified().map_err(io_at(&path))? >= older_than {
                    stats.kept += u64::from(is_chunk);
                    stats.kept_bytes += if is_chunk { meta.len() } else { 0 };
                    continue;
                }
                match fs::remove_file(&path) {
                    Ok(()) if is_chunk => {
                        stats.removed += 1;
                        stats.removed_bytes += meta.len();
                    }
                    Ok(()) => stats.temp_files_removed += 1,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io_at(&path)(e)),
                }
            }
        }
        Ok(stats)
    }
}

fn missing_or_io(e: std::io::Error, digest: &ChunkDigest, path: &Path) -> BackupError {
    match e.kind() {
        ErrorKind::NotFound => BackupError::ChunkMissing(*digest),
        _ => io_at(path)(e),
    }
}

/// The entry's name if it is a prefix directory name (4 lowercase hex).
fn prefix_name(entry: &fs::DirEntry) -> Option<String> {
    let name = entry.file_name().into_string().ok()?;
    let ok = name.len() == 4 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some(name)
}

/// The digest a chunk file names, if it is one and sits in its own prefix dir.
fn chunk_name(entry: &fs::DirEntry, prefix: &str) -> Option<ChunkDigest> {
    let digest: ChunkDigest = entry.file_name().to_str()?.parse().ok()?;
    digest.to_hex().starts_with(prefix).then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::TestDir;

    fn store(dir: &TestDir) -> ChunkStore {
        ChunkStore::create(&dir.join(".chunks")).unwrap()
    }

    fn put(store: &ChunkStore, data: &[u8]) -> ChunkDigest {
        let digest = ChunkDigest::of(data);
        store
            .insert(&digest, &chunk::encode(data, true).unwrap())
            .unwrap();
        digest
    }

    fn age(store: &ChunkStore, digest: &ChunkDigest, by: Duration) {
        let file = OpenOptions::new()
            .write(true)
            .open(store.chunk_path(digest))
            .unwrap();
        file.set_modified(SystemTime::now() - by).unwrap();
    }

    #[test]
    fn insert_read_and_layout() {
        let dir = TestDir::new("chunks-basic");
        let store = store(&dir);
        let data = b"some chunk data".repeat(1000);
        let digest = ChunkDigest::of(&data);
        let blob = chunk::encode(&data, true).unwrap();
        assert!(!store.contains(&digest));
        assert!(store.insert(&digest, &blob).unwrap());
        assert!(
            !store.insert(&digest, &blob).unwrap(),
            "second insert is a no-op"
        );
        assert!(store.contains(&digest));
        let hex = digest.to_hex();
        assert!(dir.join(".chunks").join(&hex[..4]).join(&hex).is_file());
        assert_eq!(store.read(&digest).unwrap(), data);
        let listed: Vec<_> = store
            .iter_digests()
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(listed, vec![digest]);
        assert!(store.remove(&digest).unwrap());
        assert!(!store.remove(&digest).unwrap());
        assert!(matches!(
            store.read(&digest),
            Err(BackupError::ChunkMissing(_))
        ));
    }

    #[test]
    fn refuses_a_blob_under_the_wrong_digest() {
        let dir = TestDir::new("chunks-wrong");
        let store = store(&dir);
        let wrong = ChunkDigest::of(b"claimed");
        let err = store
            .insert(&wrong, &chunk::encode(b"actual", true).unwrap())
            .unwrap_err();
        assert!(
            matches!(
                err,
                BackupError::Chunk(chunk::ChunkError::DigestMismatch { .. })
            ),
            "{err}"
        );
        assert!(!store.contains(&wrong));
        assert_eq!(store.iter_digests().unwrap().count(), 0);
    }

    #[test]
    fn damaged_chunk_is_an_error_naming_it() {
        let dir = TestDir::new("chunks-damaged");
        let store = store(&dir);
        let digest = put(&store, &[7u8; 5000]);
        let path = store.chunk_path(&digest);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let err = store.read(&digest).unwrap_err();
        assert!(matches!(err, BackupError::ChunkDamaged { .. }), "{err}");
        assert!(err.to_string().contains(&digest.to_hex()), "{err}");
    }

    #[test]
    fn missing_dedups_and_touches_present_chunks() {
        let dir = TestDir::new("chunks-missing");
        let store = store(&dir);
        let present = put(&store, b"present");
        age(&store, &present, Duration::from_secs(86_400));
        let (a, b) = (ChunkDigest::of(b"a"), ChunkDigest::of(b"b"));
        assert_eq!(store.missing(&[a, present, b, a]).unwrap(), vec![a, b]);
        let cutoff = SystemTime::now() - Duration::from_secs(60);
        assert!(
            fs::metadata(store.chunk_path(&present))
                .unwrap()
                .modified()
                .unwrap()
                > cutoff
        );
    }

    #[test]
    fn concurrent_inserts_of_one_chunk_are_safe() {
        let dir = TestDir::new("chunks-race");
        let store = store(&dir);
        let data = vec![42u8; 1 << 20];
        let digest = ChunkDigest::of(&data);
        let blob = chunk::encode(&data, true).unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| store.insert(&digest, &blob).unwrap());
            }
        });
        assert_eq!(store.read(&digest).unwrap(), data);
        let prefix = store.chunk_path(&digest).parent().unwrap().to_path_buf();
        assert_eq!(
            fs::read_dir(prefix).unwrap().count(),
            1,
            "no temp files left"
        );
    }

    #[test]
    fn sweep_keeps_touched_and_removes_old_untouched() {
        let dir = TestDir::new("chunks-gc");
        let store = store(&dir);
        let (kept, old, fresh) = (
            put(&store, b"kept"),
            put(&store, b"old"),
            put(&store, b"fresh"),
        );
        let two_days = Duration::from_secs(2 * 86_400);
        age(&store, &kept, two_days);
        age(&store, &old, two_days);
        let prefix_dir = store.chunk_path(&old).parent().unwrap().to_path_buf();
        let (temp, junk) = (prefix_dir.join(".x.tmp-1"), prefix_dir.join("notes.txt"));
        for path in [&temp, &junk] {
            File::create(path)
                .unwrap()
                .set_modified(SystemTime::now() - two_days)
                .unwrap();
        }
        let gc_started = SystemTime::now();
        store.touch(&kept).unwrap(); // mark
        let stats = store.sweep(sweep_cutoff(gc_started, None)).unwrap();
        assert_eq!(
            (stats.removed, stats.kept, stats.temp_files_removed),
            (1, 2, 1)
        );
        assert!(store.contains(&kept) && store.contains(&fresh) && !store.contains(&old));
        assert!(!temp.exists() && junk.exists());
        assert!(matches!(
            store.touch(&old),
            Err(BackupError::ChunkMissing(_))
        ));
    }

    #[test]
    fn cutoff_respects_running_backups() {
        let gc = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let backup = gc - Duration::from_secs(500);
        assert_eq!(sweep_cutoff(gc, None), gc - GC_SAFETY_MARGIN);
        assert_eq!(sweep_cutoff(gc, Some(backup)), backup - GC_SAFETY_MARGIN);
        assert_eq!(
            sweep_cutoff(gc, Some(gc + GC_SAFETY_MARGIN)),
            gc - GC_SAFETY_MARGIN
        );
    }
}

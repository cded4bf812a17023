//! Backup archives (`*.lbarchive`): one backup as a self-contained tar of its
//! manifest, indexes and every chunk they use, for tape or any traditional
//! backup system, and the way back in. Import trusts no byte of the archive:
//! members are checked against the archive header and the datastore's own
//! validation, and the backup appears complete (manifest last) or not at all.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fixed_index::{HEADER_SIZE as INDEX_HEADER_SIZE, MAX_IMAGE_SIZE};
use super::manifest::{index_file_name_ok, MANIFEST_FILE, MAX_MANIFEST_SIZE};
use super::{chunk, fsync_dir, io_at, temp_name, write_file_atomic, BackupError};
use super::{BackupId, ChunkDigest, Datastore, VmUuid, CHUNK_SIZE};

/// The first member: what the archive holds, with sizes and SHA-256s.
pub const HEADER_FILE: &str = "lifeboat-archive.json";
pub const FORMAT_NAME: &str = "lifeboat-archive";
pub const FORMAT_VERSION: u32 = 1;
/// File name extension `rescan` picks up.
pub const ARCHIVE_EXTENSION: &str = "lbarchive";
/// Bounds what parsing the header allocates: about 1.5 million chunks, i.e.
/// 6 TiB of distinct data in one backup.
pub const MAX_HEADER_SIZE: u64 = 256 << 20;
const MAX_BLOB_SIZE: u64 = (chunk::HEADER_SIZE + chunk::MAX_PAYLOAD) as u64;
const MAX_INDEX_SIZE: u64 = INDEX_HEADER_SIZE as u64 + 32 * (MAX_IMAGE_SIZE / CHUNK_SIZE);
const CHUNKS_PREFIX: &str = "chunks/";
const BLOCK: u64 = 512;
/// `rescan` leaves files modified more recently alone: they may still be
/// being copied in (from tape, say).
pub const RESCAN_SETTLE_TIME: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("reading or writing the archive stream: {0}")]
    Stream(#[source] io::Error),
    #[error("not a Lifeboat backup archive: {0}")]
    NotAnArchive(String),
    #[error("the backup in the archive is invalid: {0}")]
    InvalidBackup(#[source] BackupError),
    #[error("archive header {HEADER_FILE}: {0}")]
    BadHeader(String),
    #[error("archive member {name:?} is {kind}; only regular files are allowed")]
    NotARegularFile { name: String, kind: &'static str },
    #[error("archive member {name:?} has an unsafe path: {reason}")]
    UnsafePath { name: String, reason: &'static str },
    #[error("archive member {0:?} is not part of this backup archive")]
    Unknown(String),
    #[error("archive member {0:?} appears twice")]
    Duplicate(String),
    #[error("archive member {name:?} is {size} bytes, over the {limit}-byte limit for its kind")]
    Oversized { name: String, size: u64, limit: u64 },
    #[error("archive member {name:?}: {reason}")]
    BadMember { name: String, reason: String },
    #[error("archive member {0:?} does not match its SHA-256 in the archive header")]
    ChecksumMismatch(String),
    #[error("archive is incomplete: {0}")]
    Incomplete(String),
    #[error("{0} changed while it was being exported")]
    ChangedDuringExport(PathBuf),
    #[error("backup {vm}/{id} already exists in the datastore")]
    AlreadyExists { vm: VmUuid, id: BackupId },
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// Where export and import report how far they are; `&()` reports nothing.
pub trait Progress {
    /// A phase starts: what it does and, when known, how many bytes it covers.
    fn phase(&self, _what: &str, _total: Option<u64>) {}
    /// `bytes` more of the current phase are done.
    fn advance(&self, _bytes: u64) {}
}

impl Progress for () {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportStats {
    /// Bytes written: the whole tar stream.
    pub archive_bytes: u64,
    pub index_files: u64,
    pub chunks: u64,
    /// Chunk blob bytes (compressed, as stored).
    pub chunk_bytes: u64,
}

/// One archive `rescan` processed, and where it went.
#[derive(Debug)]
pub struct ImportResult {
    pub archive: PathBuf,
    /// In `done/` or `failed/` beside the archive.
    pub moved_to: PathBuf,
    pub outcome: Result<(VmUuid, BackupId)>,
}

/// A member of the archive by what it is; its path follows from that.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MemberName {
    Manifest,
    Index(String),
    Chunk(ChunkDigest),
}

impl MemberName {
    fn parse(path: &str) -> Option<Self> {
        if path == MANIFEST_FILE {
            Some(MemberName::Manifest)
        } else if index_file_name_ok(path) {
            Some(MemberName::Index(path.into()))
        } else {
            let digest = path.strip_prefix(CHUNKS_PREFIX)?.parse().ok()?;
            Some(MemberName::Chunk(digest))
        }
    }

    fn path(&self) -> String {
        match self {
            MemberName::Manifest => MANIFEST_FILE.into(),
            MemberName::Index(file) => file.clone(),
            MemberName::Chunk(d) => format!("{CHUNKS_PREFIX}{d}"),
        }
    }

    /// Members come in this order, so import can check manifest and indexes
    /// before any chunk is stored.
    fn rank(&self) -> u8 {
        match self {
            MemberName::Manifest => 0,
            MemberName::Index(_) => 1,
            MemberName::Chunk(_) => 2,
        }
    }

    fn size_limit(&self) -> u64 {
        [MAX_MANIFEST_SIZE, MAX_INDEX_SIZE, MAX_BLOB_SIZE][self.rank() as usize]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "MemberText", into = "MemberText")]
struct Member {
    name: MemberName,
    size: u64,
    sha256: [u8; 32],
}

/// The JSON form of a member; parsed into [`Member`] entry by entry, so a huge
/// header is never held twice.
#[derive(Serialize, Deserialize)]
struct MemberText {
    name: String,
    size: u64,
    sha256: String,
}

impl TryFrom<MemberText> for Member {
    type Error = String;
    fn try_from(m: MemberText) -> Result<Self, String> {
        let name = MemberName::parse(&m.name).ok_or_else(|| format!("bad member {:?}", m.name))?;
        let hex_ok = m.sha256.len() == 64 && !m.sha256.bytes().any(|b| b.is_ascii_uppercase());
        let mut sha256 = [0u8; 32];
        if !hex_ok || hex::decode_to_slice(&m.sha256, &mut sha256).is_err() {
            return Err(format!(
                "member {:?}: sha256 is not 64 lowercase hex",
                m.name
            ));
        }
        Ok(Member {
            name,
            size: m.size,
            sha256,
        })
    }
}

impl From<Member> for MemberText {
    fn from(m: Member) -> Self {
        MemberText {
            name: m.name.path(),
            size: m.size,
            sha256: hex::encode(m.sha256),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ArchiveHeader {
    format: String,
    format_version: u32,
    vm: VmUuid,
    backup: BackupId,
    /// UNIX seconds of the export, and the exporting program; informative.
    created_at: u64,
    created_by: String,
    /// Every member after the header, in archive order.
    members: Vec<Member>,
}

impl ArchiveHeader {
    fn parse(bytes: &[u8]) -> Result<Self> {
        // Format and version first: a newer header may not parse as this one.
        #[derive(Deserialize)]
        struct Probe {
            format: String,
            format_version: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| ArchiveError::NotAnArchive(format!("{HEADER_FILE}: {e}")))?;
        if probe.format != FORMAT_NAME {
            let msg = format!("{HEADER_FILE} names format {:?}", probe.format);
            return Err(ArchiveError::NotAnArchive(msg));
        }
        if probe.format_version > FORMAT_VERSION {
            let (what, found, supported) = ("backup archive", probe.format_version, FORMAT_VERSION);
            return Err(BackupError::NewerFormat {
                what,
                found,
                supported,
            }
            .into());
        }
        let bad = |reason: String| Err(ArchiveError::BadHeader(reason));
        if probe.format_version != FORMAT_VERSION {
            return bad(format!("unknown format version {}", probe.format_version));
        }
        let header: ArchiveHeader =
            serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadHeader(e.to_string()))?;
        let mut names = HashSet::new();
        let mut previous_rank = 0;
        for (i, m) in header.members.iter().enumerate() {
            if !names.insert(&m.name) {
                return bad(format!("{} is listed twice", m.name.path()));
            }
            if m.size > m.name.size_limit() {
                let (name, size, limit) = (m.name.path(), m.size, m.name.size_limit());
                return Err(ArchiveError::Oversized { name, size, limit });
            }
            let rank = m.name.rank();
            if (i == 0) != (rank == 0) || rank < previous_rank {
                return bad(
                    "members must be manifest.json, then the indexes, then the chunks".into(),
                );
            }
            previous_rank = rank;
        }
        if header.members.is_empty() {
            return bad("lists no members".into());
        }
        Ok(header)
    }
}

/// Writes the backup `vm`/`id` as an archive to `out`. The backup is opened and
/// checked first, and every chunk is verified on the way, so a damaged backup
/// fails here rather than on the day it is restored from tape.
pub fn export_backup(
    store: &Datastore,
    vm: &VmUuid,
    id: &BackupId,
    out: impl Write,
    progress: &dyn Progress,
) -> Result<ExportStats> {
    let (manifest, indexes) = store.open_backup(vm, id)?;
    let dir = store.backup_dir(vm, id);
    let mut seen = HashSet::new();
    let digests: Vec<ChunkDigest> = (indexes.iter().flat_map(|i| i.digests()))
        .filter(|d| seen.insert(**d))
        .copied()
        .collect();
    let mut members = vec![file_member(&dir, MemberName::Manifest)?];
    for disk in &manifest.disks {
        members.push(file_member(
            &dir,
            MemberName::Index(disk.index_file.clone()),
        )?);
    }
    // Pass 1: the header, written first, needs every member's SHA-256.
    let mut chunk_bytes = 0;
    for d in &digests {
        let path = store.chunks().chunk_path(d);
        chunk_bytes += fs::metadata(&path)
            .map_err(|e| missing_or_io(e, d, &path))?
            .len();
    }
    progress.phase("checking chunks", Some(chunk_bytes));
    for d in &digests {
        let blob = read_blob(store, d)?;
        chunk::decode_verified(&blob, d).map_err(|e| BackupError::ChunkDamaged {
            digest: *d,
            source: Box::new(e.into()),
        })?;
        progress.advance(blob.len() as u64);
        let (size, sha256) = (blob.len() as u64, Sha256::digest(&blob).into());
        members.push(Member {
            name: MemberName::Chunk(*d),
            size,
            sha256,
        });
    }
    let header = ArchiveHeader {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        vm: vm.clone(),
        backup: id.clone(),
        created_at: crate::clock::unix_now(),
        created_by: concat!("lifeboat ", env!("CARGO_PKG_VERSION")).into(),
        members,
    };
    let mut json =
        serde_json::to_vec(&header).map_err(|e| ArchiveError::BadHeader(e.to_string()))?;
    json.push(b'\n');
    // Refuse now rather than write an archive that import would refuse.
    check_size(HEADER_FILE, json.len() as u64, MAX_HEADER_SIZE)?;
    // Pass 2: the tar stream. Entries carry the backup's start time, so one
    // backup always exports to the same members.
    let padded = |size: u64| BLOCK + size.div_ceil(BLOCK) * BLOCK;
    let total = padded(json.len() as u64)
        + header.members.iter().map(|m| padded(m.size)).sum::<u64>()
        + 2 * BLOCK;
    progress.phase("writing archive", Some(total));
    let mut out = CountingWriter {
        inner: out,
        progress,
        written: 0,
    };
    let mtime = manifest.backup.started_at;
    let json_len = json.len() as u64;
    write_member(&mut out, HEADER_FILE, &mut &json[..], json_len, mtime)
        .map_err(ArchiveError::Stream)?;
    for m in &header.members {
        let path = match &m.name {
            MemberName::Chunk(d) => store.chunks().chunk_path(d),
            other => dir.join(other.path()),
        };
        let mut data = Hashing::new(match &m.name {
            MemberName::Chunk(d) => {
                Box::new(io::Cursor::new(read_blob(store, d)?)) as Box<dyn Read>
            }
            _ => Box::new(File::open(&path).map_err(io_at(&path))?),
        });
        write_member(&mut out, &m.name.path(), &mut data, m.size, mtime).map_err(|e| {
            match e.kind() {
                ErrorKind::UnexpectedEof => ArchiveError::ChangedDuringExport(path.clone()),
                _ => ArchiveError::Stream(e),
            }
        })?;
        if data.finish() != m.sha256 {
            return Err(ArchiveError::ChangedDuringExport(path));
        }
    }
    out.write_all(&[0; 2 * BLOCK as usize])
        .map_err(ArchiveError::Stream)?;
    out.flush().map_err(ArchiveError::Stream)?;
    let index_files = manifest.disks.len() as u64;
    let chunks = digests.len() as u64;
    Ok(ExportStats {
        archive_bytes: out.written,
        index_files,
        chunks,
        chunk_bytes,
    })
}

/// Imports an archive written by [`export_backup`], streaming it once. Chunks
/// are stored as they arrive (each verified by `ChunkStore::insert`; unused
/// ones are GC's to remove). Manifest and indexes go to a staging directory in
/// the datastore, are checked with `open_backup`, and move into place only at
/// the end, manifest last. On any error no backup directory is left behind.
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

/// Imports every `*.lbarchive` file in `drop_dir` (e.g. `<datastore>/import/`)
/// that has not been modified for [`RESCAN_SETTLE_TIME`], then moves it into
/// `done/` or `failed/` beside it; a failure gets a `<name>.error` text file
/// there. Archives are never deleted, and a moved one never replaces another.
pub fn rescan(store: &Datastore, drop_dir: &Path) -> Result<Vec<ImportResult>> {
    let entries = match fs::read_dir(drop_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_at(drop_dir)(e).into()),
    };
    let settled_before = SystemTime::now() - RESCAN_SETTLE_TIME;
    let mut archives = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_at(drop_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let candidate = !name.starts_with('.') && name.ends_with(&format!(".{ARCHIVE_EXTENSION}"));
        // symlink_metadata: a symlink in the drop dir is not followed.
        let meta = fs::symlink_metadata(entry.path()).map_err(io_at(&entry.path()))?;
        if candidate
            && meta.is_file()
            && meta.modified().map_err(io_at(&entry.path()))? < settled_before
        {
            archives.push((name, entry.path()));
        }
    }
    archives.sort();
    let mut results = Vec::new();
    for (name, path) in archives {
        let outcome = File::open(&path)
            .map_err(|e| io_at(&path)(e).into())
            .and_then(|f| import_archive(store, io::BufReader::with_capacity(1 << 20, f), &()));
        let to = drop_dir.join(if outcome.is_ok() { "done" } else { "failed" });
        fs::create_dir_all(&to).map_err(io_at(&to))?;
        let moved_name = (0..)
            .map(|n| match n {
                0 => name.clone(),
                n => format!("{name}.{n}"),
            })
            .find(|n| !to.join(n).exists() && !to.join(format!("{n}.error")).exists())
            .unwrap_or_default();
        if let Err(e) = &outcome {
            tracing::warn!(archive = %path.display(), "import failed: {e}");
            write_file_atomic(
                &to,
                &format!("{moved_name}.error"),
                format!("{e}\n").as_bytes(),
            )?;
        }
        let moved_to = to.join(&moved_name);
        fs::rename(&path, &moved_to).map_err(io_at(&moved_to))?;
        fsync_dir(&to)?;
        results.push(ImportResult {
            archive: path,
            moved_to,
            outcome,
        });
    }
    Ok(results)
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

fn check_size(name: &str, size: u64, limit: u64) -> Result<()> {
    if size > limit {
        return Err(ArchiveError::Oversized {
            name: name.into(),
            size,
            limit,
        });
    }
    Ok(())
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

/// A chunk file's raw blob, read with a bound: a file larger than any valid
/// blob is damage, not data.
fn read_blob(store: &Datastore, digest: &ChunkDigest) -> Result<Vec<u8>> {
    let path = store.chunks().chunk_path(digest);
    let file = File::open(&path).map_err(|e| missing_or_io(e, digest, &path))?;
    let mut blob = Vec::new();
    file.take(MAX_BLOB_SIZE + 1)
        .read_to_end(&mut blob)
        .map_err(io_at(&path))?;
    if blob.len() as u64 > MAX_BLOB_SIZE {
        let source = chunk::ChunkError::BadHeader("file larger than any chunk blob".into());
        return Err(BackupError::ChunkDamaged {
            digest: *digest,
            source: Box::new(source.into()),
        }
        .into());
    }
    Ok(blob)
}

fn missing_or_io(e: io::Error, digest: &ChunkDigest, path: &Path) -> BackupError {
    match e.kind() {
        ErrorKind::NotFound => BackupError::ChunkMissing(*digest),
        _ => io_at(path)(e),
    }
}

/// A member of a backup directory, hashed, for the header.
fn file_member(dir: &Path, name: MemberName) -> Result<Member> {
    let path = dir.join(name.path());
    let size = fs::metadata(&path).map_err(io_at(&path))?.len();
    check_size(&name.path(), size, name.size_limit())?;
    let mut data = Hashing::new(File::open(&path).map_err(io_at(&path))?);
    io::copy(&mut data, &mut io::sink()).map_err(io_at(&path))?;
    Ok(Member {
        name,
        size,
        sha256: data.finish(),
    })
}

/// One ustar entry: header block, exactly `size` bytes, zero padding.
fn write_member(
    out: &mut impl Write,
    path: &str,
    data: &mut impl Read,
    size: u64,
    mtime: u64,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path)?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    out.write_all(header.as_bytes())?;
    let copied = io::copy(&mut data.take(size), out)?;
    if copied != size {
        return Err(io::Error::new(
            ErrorKind::UnexpectedEof,
            format!("{path} is shorter than listed"),
        ));
    }
    let pad = (BLOCK - size % BLOCK) % BLOCK;
    out.write_all(&[0; BLOCK as usize][..pad as usize])
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }
    fn finish(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
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

struct CountingWriter<'p, W> {
    inner: W,
    progress: &'p dyn Progress,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A complete two-disk backup for tests: `vda` is one 4 MiB chunk and a
/// 100-byte one, `vdb` that same 100-byte chunk (stored and exported once).
#[cfg(test)]
pub(crate) fn sample_backup(ds: &Datastore) -> (VmUuid, BackupId) {
    use super::{manifest, FixedIndexWriter};
    let vm: VmUuid = "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162".parse().unwrap();
    let (id, dir) = ds.new_backup_dir(&vm, 1_795_638_600).unwrap();
    let (a, b) = (vec![1u8; CHUNK_SIZE as usize], vec![2u8; 100]);
    let mut m = manifest::sample(&vm, &id);
    m.disks.push(m.disks[0].clone());
    (m.disks[1].target, m.disks[1].index_file) = ("vdb".into(), "vdb.fidx".into());
    for (disk, chunks) in m.disks.iter_mut().zip([vec![&a, &b], vec![&b]]) {
        let size = chunks.iter().map(|c| c.len() as u64).sum();
        let mut index = FixedIndexWriter::create(&dir.join(&disk.index_file), size, 0).unwrap();
        for (i, data) in chunks.into_iter().enumerate() {
            let digest = ChunkDigest::of(data);
            let blob = chunk::encode(data, true).unwrap();
            ds.chunks().insert(&digest, &blob).unwrap();
            index.set(i as u64, &digest).unwrap();
        }
        disk.index_checksum = hex::encode(index.finish().unwrap());
        (disk.size_bytes, disk.chunk_count) = (size, size.div_ceil(CHUNK_SIZE));
    }
    m.write_atomic(&dir).unwrap();
    (vm, id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::TestDir;
    use std::cell::Cell;
    use tar::{EntryType, Header};

    type Members = Vec<(String, Vec<u8>)>;

    /// A datastore with the sample backup, and its archive.
    fn exported(tag: &str) -> (TestDir, Datastore, VmUuid, BackupId, Vec<u8>) {
        let root = TestDir::new(tag);
        let ds = Datastore::create_or_open(&root).unwrap();
        let (vm, id) = sample_backup(&ds);
        let mut archive = Vec::new();
        export_backup(&ds, &vm, &id, &mut archive, &()).unwrap();
        (root, ds, vm, id, archive)
    }

    /// Deletes the backup and its chunks: the datastore as a restore finds it.
    fn forget(ds: &Datastore, vm: &VmUuid, id: &BackupId) {
        let (_, indexes) = ds.open_backup(vm, id).unwrap();
        for d in indexes.iter().flat_map(|i| i.digests()) {
            ds.chunks().remove(d).unwrap();
        }
        fs::remove_dir_all(ds.backup_dir(vm, id)).unwrap();
    }

    fn members(archive: &[u8]) -> Members {
        let mut tar = tar::Archive::new(archive);
        let entries = tar.entries().unwrap().map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (
                String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                data,
            )
        });
        entries.collect()
    }

    /// A tar entry whose name is written raw, past the `tar` crate's checks.
    fn entry(name: &[u8], kind: EntryType, data: &[u8]) -> (Header, Vec<u8>) {
        let mut header = Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        (header, data.to_vec())
    }

    fn tar_of(entries: impl IntoIterator<Item = (Header, Vec<u8>)>) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (header, data) in entries {
            builder.append(&header, &data[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn files(members: &Members) -> Vec<(Header, Vec<u8>)> {
        let file = |(p, d): &(String, Vec<u8>)| entry(p.as_bytes(), EntryType::Regular, d);
        members.iter().map(file).collect()
    }

    /// Makes the header describe `path`'s current bytes, so only the checks
    /// behind the header's checksum can catch what was changed.
    fn relist(members: &mut Members, path: &str) {
        let data = &members.iter().find(|(p, _)| p == path).unwrap().1;
        let (size, sha) = (data.len(), hex::encode(Sha256::digest(data)));
        let mut header: serde_json::Value = serde_json::from_slice(&members[0].1).unwrap();
        let mut listed = header["members"].as_array_mut().unwrap().iter_mut();
        let listed = listed.find(|m| m["name"] == path).unwrap();
        (listed["size"], listed["sha256"]) = (size.into(), sha.into());
        members[0].1 = serde_json::to_vec(&header).unwrap();
    }

    fn assert_nothing_left(ds: &Datastore, vm: &VmUuid, id: &BackupId, case: &str) {
        assert!(!ds.backup_dir(vm, id).exists(), "{case}: backup dir left");
        let names: Vec<_> = fs::read_dir(ds.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{case}: staging left: {names:?}");
    }

    #[derive(Default)]
    struct Counter(Cell<u64>);
    impl Progress for Counter {
        fn advance(&self, bytes: u64) {
            self.0.set(self.0.get() + bytes);
        }
    }

    #[test]
    fn export_then_import_restores_the_identical_backup() {
        let (_root, ds, vm, id, _) = exported("archive-rt");
        let (manifest, indexes) = ds.open_backup(&vm, &id).unwrap();
        let mut archive = Vec::new();
        let counter = Counter::default();
        let stats = export_backup(&ds, &vm, &id, &mut archive, &counter).unwrap();
        assert_eq!((stats.index_files, stats.chunks), (2, 2));
        assert_eq!(stats.archive_bytes, archive.len() as u64);
        let (a, b) = (
            ChunkDigest::of(&vec![1u8; CHUNK_SIZE as usize]),
            ChunkDigest::of(&[2u8; 100]),
        );
        let names: Vec<String> = members(&archive).into_iter().map(|(p, _)| p).collect();
        let expected = [HEADER_FILE, MANIFEST_FILE, "vda.fidx", "vdb.fidx"].map(String::from);
        let chunks = [format!("chunks/{a}"), format!("chunks/{b}")];
        assert_eq!(names, [expected.as_slice(), &chunks].concat());
        assert_eq!(archive.len() % 512, 0);

        forget(&ds, &vm, &id);
        assert_eq!(ds.chunks().iter_digests().unwrap().count(), 0);
        let counter = Counter::default();
        assert_eq!(
            import_archive(&ds, &archive[..], &counter).unwrap(),
            (vm.clone(), id.clone())
        );
        assert!(counter.0.get() >= archive.len() as u64 - 1024);
        let (again, again_indexes) = ds.open_backup(&vm, &id).unwrap();
        assert_eq!(again, manifest);
        for (before, after) in indexes.iter().zip(&again_indexes) {
            assert_eq!(before.digests(), after.digests());
        }
        assert_eq!(
            ds.chunks().read(&a).unwrap(),
            vec![1u8; CHUNK_SIZE as usize]
        );
        assert_eq!(ds.chunks().read(&b).unwrap(), vec![2u8; 100]);
        assert_nothing_left(&ds, &vm, &BackupId::from_unix(0).unwrap(), "after import");

        let err = import_archive(&ds, &archive[..], &()).unwrap_err();
        assert!(matches!(err, ArchiveError::AlreadyExists { .. }), "{err}");
    }

    #[test]
    fn bad_archives_are_refused_and_leave_no_backup() {
        let (_root, ds, vm, id, archive) = exported("archive-bad");
        let good = members(&archive);
        forget(&ds, &vm, &id);
        let (chunk_a, chunk_b) = (good[4].0.clone(), good[5].0.clone());
        let with = |at: usize, extra: (Header, Vec<u8>)| {
            let mut entries = files(&good);
            entries.insert(at, extra);
            tar_of(entries)
        };
        let changed = |change: &dyn Fn(&mut Members)| {
            let mut m = good.clone();
            change(&mut m);
            tar_of(files(&m))
        };
        let v2 = |json: &[u8]| {
            let mut v: serde_json::Value = serde_json::from_slice(json).unwrap();
            v["format_version"] = 2.into();
            serde_json::to_vec(&v).unwrap()
        };
        // (case, archive, how the error's Debug form starts)
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "symlink",
                with(5, entry(chunk_a.as_bytes(), EntryType::Symlink, b"")),
                "NotARegularFile",
            ),
            (
                "hard link",
                with(1, entry(b"manifest.json", EntryType::Link, b"")),
                "NotARegularFile",
            ),
            (
                "device",
                with(1, entry(b"vda.fidx", EntryType::Block, b"")),
                "NotARegularFile",
            ),
            (
                "dot-dot",
                with(1, entry(b"../x", EntryType::Regular, b"x")),
                "UnsafePath",
            ),
            (
                "absolute",
                with(1, entry(b"/etc/x", EntryType::Regular, b"x")),
                "UnsafePath",
            ),
            (
                "unknown",
                with(3, entry(b"notes.txt", EntryType::Regular, b"x")),
                "Unknown",
            ),
            (
                "duplicate",
                with(6, entry(chunk_b.as_bytes(), EntryType::Regular, &good[5].1)),
                "Duplicate",
            ),
            (
                "header twice",
                with(
                    1,
                    entry(HEADER_FILE.as_bytes(), EntryType::Regular, &good[0].1),
                ),
                "Duplicate",
            ),
            (
                "oversized",
                changed(&|m| m[5].1 = vec![0; 5 << 20]),
                "Oversized",
            ),
            (
                "flipped chunk byte",
                changed(&|m| *m[4].1.last_mut().unwrap() ^= 1),
                "ChecksumMismatch",
            ),
            (
                "flipped, relisted",
                changed(&|m| {
                    *m[4].1.last_mut().unwrap() ^= 1;
                    relist(m, &chunk_a)
                }),
                "Backup(ChunkDamaged",
            ),
            (
                "tampered index",
                changed(&|m| {
                    m[2].1[4096] ^= 1;
                    relist(m, "vda.fidx")
                }),
                "InvalidBackup(CorruptIndex",
            ),
            (
                "archive v2",
                changed(&|m| m[0].1 = v2(&m[0].1)),
                "Backup(NewerFormat { what: \"backup archive\", found: 2",
            ),
            (
                "manifest v2",
                changed(&|m| {
                    m[1].1 = v2(&m[1].1);
                    relist(m, MANIFEST_FILE)
                }),
                "InvalidBackup(NewerFormat { what: \"backup manifest\", found: 2",
            ),
            (
                "truncated",
                changed(&|m| {
                    m.pop();
                }),
                "Incomplete",
            ),
            ("out of order", changed(&|m| m.swap(4, 5)), "BadMember"),
            (
                "no header",
                changed(&|m| {
                    m.remove(0);
                }),
                "NotAnArchive",
            ),
            ("not a tar", b"hello".repeat(200), "NotAnArchive"),
        ];
        for (case, archive, expected) in cases {
            // Each case from an empty chunk store: `insert` does not look at
            // a blob whose chunk the store already has.
            for digest in ds.chunks().iter_digests().unwrap() {
                ds.chunks().remove(&digest.unwrap()).unwrap();
            }
            let Err(err) = import_archive(&ds, &archive[..], &()) else {
                panic!("{case}: imported")
            };
            assert!(format!("{err:?}").starts_with(expected), "{case}: {err:?}");
            assert_nothing_left(&ds, &vm, &id, case);
        }
        import_archive(&ds, &tar_of(files(&good))[..], &()).unwrap();
        ds.open_backup(&vm, &id).unwrap();
    }

    #[test]
    fn rescan_imports_dropped_archives_and_files_them() {
        let (root, ds, vm, id, archive) = exported("archive-rescan");
        forget(&ds, &vm, &id);
        let drop_dir = root.join("import");
        assert!(
            rescan(&ds, &drop_dir).unwrap().is_empty(),
            "no drop dir yet"
        );
        fs::create_dir(&drop_dir).unwrap();
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let put = |name: &str, data: &[u8], settled: bool| {
            fs::write(drop_dir.join(name), data).unwrap();
            let file = File::options()
                .write(true)
                .open(drop_dir.join(name))
                .unwrap();
            file.set_modified(if settled {
                an_hour_ago
            } else {
                SystemTime::now()
            })
            .unwrap();
        };
        put("good.lbarchive", &archive, true);
        put("bad.lbarchive", b"not a tar", true);
        put("fresh.lbarchive", &archive, false);
        put("notes.txt", b"", true);
        let results = rescan(&ds, &drop_dir).unwrap();
        let summary: Vec<_> = results
            .iter()
            .map(|r| {
                (
                    r.moved_to.strip_prefix(&drop_dir).unwrap().to_path_buf(),
                    r.outcome.is_ok(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("failed/bad.lbarchive".into(), false),
                ("done/good.lbarchive".into(), true)
            ]
        );
        assert_eq!(
            results[1].outcome.as_ref().unwrap(),
            &(vm.clone(), id.clone())
        );
        let error = fs::read_to_string(drop_dir.join("failed/bad.lbarchive.error")).unwrap();
        assert!(error.contains("archive"), "{error}");
        assert!(drop_dir.join("fresh.lbarchive").is_file() && drop_dir.join("notes.txt").is_file());
        ds.open_backup(&vm, &id).unwrap();

        // A second failure of the same name lands beside the first.
        put("bad.lbarchive", b"still not a tar", true);
        let results = rescan(&ds, &drop_dir).unwrap();
        assert_eq!(results[0].moved_to, drop_dir.join("failed/bad.lbarchive.1"));
        assert!(drop_dir.join("failed/bad.lbarchive.1.error").is_file());
        assert!(drop_dir.join("failed/bad.lbarchive").is_file());
    }
}

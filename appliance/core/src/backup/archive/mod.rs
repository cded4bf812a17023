//! Backup archives (`*.lbarchive`): one backup as a self-contained tar of its
//! manifest, indexes and every chunk they use, for tape or any traditional
//! backup system, and the way back in. Import trusts no byte of the archive:
//! members are checked against the archive header and the datastore's own
//! validation, and the backup appears complete (manifest last) or not at all.
//!
//! This file holds the format (header, members, limits); `export`, `import`
//! and `rescan` (the drop-directory import) each live in their own file.

mod export;
mod import;
mod rescan;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fixed_index::{HEADER_SIZE as INDEX_HEADER_SIZE, MAX_IMAGE_SIZE};
use super::manifest::{index_file_name_ok, MANIFEST_FILE, MAX_MANIFEST_SIZE};
#[cfg(test)]
use super::Datastore;
use super::{chunk, BackupError};
use super::{BackupId, ChunkDigest, VmUuid, CHUNK_SIZE};

pub use export::export_backup;
pub use import::import_archive;
// Nothing calls the drop directory yet; `ops` will (see `backup`'s top comment).
#[allow(unused_imports)]
pub use rescan::{rescan, ImportResult, RESCAN_SETTLE_TIME};

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

//! Export: one backup, verified chunk by chunk, written as a deterministic
//! ustar stream whose header (first member) lists every member's SHA-256.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{
    check_size, ArchiveError, ArchiveHeader, ExportStats, Hashing, Member, MemberName, Progress,
    Result, BLOCK, FORMAT_NAME, FORMAT_VERSION, HEADER_FILE, MAX_BLOB_SIZE, MAX_HEADER_SIZE,
};
use crate::backup::{chunk, io_at, BackupError, BackupId, ChunkDigest, Datastore, VmUuid};

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

//! The fixed index (`.fidx`): a disk image as its 4 MiB chunks' digests behind a
//! 4096-byte header. The writer publishes only complete files (temp, fsync,
//! rename); the reader refuses any header, length or checksum that disagrees.

use std::fs::{self, File};
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{fsync_dir, io_at, temp_name, BackupError, ChunkDigest, Result, CHUNK_SIZE};

pub const MAGIC: [u8; 8] = *b"LBFIXIDX";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 4096;
const DIGEST_SIZE: u64 = 32;
/// Largest image an index may describe (VHDX's and qcow2-in-practice's 64 TiB);
/// it bounds a reader's allocation to 512 MiB of digests.
pub const MAX_IMAGE_SIZE: u64 = 64 << 40;

/// Writes an index whose chunks arrive in any order; see [`Self::finish`].
pub struct FixedIndexWriter {
    final_path: PathBuf,
    temp_path: PathBuf,
    file: File,
    image_size: u64,
    ctime: u64,
    uuid: [u8; 16],
    written: Vec<bool>,
    finished: bool,
}

impl FixedIndexWriter {
    /// Starts `path` (the final name) for an image of `image_size` bytes. The
    /// data goes to a temp file beside it; nothing appears at `path` until
    /// `finish`, and a writer dropped unfinished removes its temp file.
    pub fn create(path: &Path, image_size: u64, ctime: u64) -> Result<Self> {
        if image_size > MAX_IMAGE_SIZE {
            return Err(BackupError::IndexWriter(format!(
                "image of {image_size} bytes is over the limit"
            )));
        }
        let (dir, name) = split_path(path)?;
        let temp_path = dir.join(temp_name(name));
        let count = image_size.div_ceil(CHUNK_SIZE);
        let file = File::create_new(&temp_path).map_err(io_at(&temp_path))?;
        // Sized up front (sparse), so positional writes may come in any order.
        file.set_len(HEADER_SIZE as u64 + count * DIGEST_SIZE)
            .map_err(io_at(&temp_path))?;
        Ok(FixedIndexWriter {
            final_path: path.to_path_buf(),
            temp_path,
            file,
            image_size,
            ctime,
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            written: vec![false; count as usize],
            finished: false,
        })
    }

    pub fn chunk_count(&self) -> u64 {
        self.written.len() as u64
    }

    /// Records the digest of chunk `position` (0-based). Setting a position
    /// again overwrites it, so a retried upload is harmless.
    pub fn set(&mut self, position: u64, digest: &ChunkDigest) -> Result<()> {
        let count = self.chunk_count();
        let slot = usize::try_from(position)
            .ok()
            .and_then(|p| self.written.get_mut(p));
        let Some(slot) = slot else {
            return Err(BackupError::IndexWriter(format!(
                "chunk {position} is beyond the {count} chunks"
            )));
        };
        let offset = HEADER_SIZE as u64 + position * DIGEST_SIZE;
        self.file
            .write_all_at(digest.as_bytes(), offset)
            .map_err(io_at(&self.temp_path))?;
        *slot = true;
        Ok(())
    }

    /// Checks every position was set, writes the header with the SHA-256 of
    /// the digest list, fsyncs and renames to the final name (never over an
    /// existing file). Returns that SHA-256, which the manifest records.
    pub fn finish(mut self) -> Result<[u8; 32]> {
        if let Some(first) = self.written.iter().position(|w| !w) {
            let unset = self.written.iter().filter(|w| !**w).count();
            return Err(BackupError::IndexWriter(format!(
                "{unset} chunks never set, first {first}"
            )));
        }
        let checksum = hash_digest_list(&self.file, self.chunk_count(), &self.temp_path)?;
        let header = encode_header(
            &self.uuid,
            self.ctime,
            self.image_size,
            self.chunk_count(),
            &checksum,
        );
        let temp = &self.temp_path;
        self.file.write_all_at(&header, 0).map_err(io_at(temp))?;
        self.file.sync_all().map_err(io_at(temp))?;
        // Best-effort no-clobber: backup dirs are fresh, so a clash is a bug.
        if self.final_path.exists() {
            let source = std::io::Error::new(ErrorKind::AlreadyExists, "index already exists");
            return Err(BackupError::Io {
                path: self.final_path.clone(),
                source,
            });
        }
        fs::rename(temp, &self.final_path).map_err(io_at(&self.final_path))?;
        self.finished = true;
        let (dir, _) = split_path(&self.final_path)?;
        fsync_dir(dir)?;
        Ok(checksum)
    }
}

impl Drop for FixedIndexWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// A validated index, digests in memory.
#[derive(Debug)]
pub struct FixedIndexReader {
    path: PathBuf,
    uuid: [u8; 16],
    ctime: u64,
    image_size: u64,
    digests: Vec<ChunkDigest>,
    checksum: [u8; 32],
}

impl FixedIndexReader {
    pub fn open(path: &Path) -> Result<Self> {
        let corrupt = |reason: String| BackupError::CorruptIndex {
            path: path.into(),
            reason,
        };
        let file = File::open(path).map_err(io_at(path))?;
        let file_len = file.metadata().map_err(io_at(path))?.len();
        let mut header = vec![0u8; HEADER_SIZE];
        if file_len < HEADER_SIZE as u64 {
            return Err(corrupt(format!(
                "{file_len} bytes, shorter than the header"
            )));
        }
        file.read_exact_at(&mut header, 0).map_err(io_at(path))?;
        let le64 =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
        if header[0..8] != MAGIC {
            return Err(corrupt("not a fixed index (bad magic)".into()));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if version > FORMAT_VERSION {
            let what = "fixed index";
            return Err(BackupError::NewerFormat {
                what,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let (image_size, chunk_size, count) = (le64(40), le64(48), le64(56));
        let checks = [
            (
                version == FORMAT_VERSION,
                format!("unknown format version {version}"),
            ),
            (
                header[12..16] == [0; 4] && header[96..].iter().all(|b| *b == 0),
                "reserved bytes are not zero".into(),
            ),
            (
                chunk_size == CHUNK_SIZE,
                format!("chunk size {chunk_size}, expected {CHUNK_SIZE}"),
            ),
            (
                image_size <= MAX_IMAGE_SIZE,
                format!("image size {image_size} is over the limit"),
            ),
            (
                count == image_size.div_ceil(CHUNK_SIZE),
                format!("{count} chunks cannot hold {image_size} bytes"),
            ),
        ];
        if let Some((_, reason)) = checks.into_iter().find(|(ok, _)| !ok) {
            return Err(corrupt(reason));
        }
        let expected_len = HEADER_SIZE as u64 + count * DIGEST_SIZE;
        if file_len != expected_len {
            return Err(corrupt(format!(
                "{file_len} bytes, expected {expected_len} for {count} chunks"
            )));
        }
        let mut list = vec![0u8; (count * DIGEST_SIZE) as usize];
        file.read_exact_at(&mut list, HEADER_SIZE as u64)
            .map_err(io_at(path))?;
        let checksum: [u8; 32] = Sha256::digest(&list).into();
        if header[64..96] != checksum {
            return Err(corrupt(
                "digest list does not match its SHA-256 in the header".into(),
            ));
        }
        let digests = list
            .chunks_exact(DIGEST_SIZE as usize)
            .map(|d| ChunkDigest(d.try_into().unwrap_or_default()))
            .collect();
        Ok(FixedIndexReader {
            path: path.into(),
            uuid: header[16..32].try_into().unwrap_or_default(),
            ctime: le64(32),
            image_size,
            digests,
            checksum,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.uuid)
    }
    pub fn ctime(&self) -> u64 {
        self.ctime
    }
    pub fn image_size(&self) -> u64 {
        self.image_size
    }
    pub fn chunk_count(&self) -> u64 {
        self.digests.len() as u64
    }
    pub fn digests(&self) -> &[ChunkDigest] {
        &self.digests
    }
    /// SHA-256 of the digest list, as stored in the header and the manifest.
    pub fn checksum(&self) -> [u8; 32] {
        self.checksum
    }

    /// Byte offset and length of chunk `i` in the image; the last chunk is
    /// short when the image size is not a multiple of the chunk size.
    pub fn chunk_range(&self, i: u64) -> Option<(u64, u64)> {
        let offset = i
            .checked_mul(CHUNK_SIZE)
            .filter(|_| i < self.chunk_count())?;
        Some((offset, CHUNK_SIZE.min(self.image_size - offset)))
    }
}

fn encode_header(
    uuid: &[u8; 16],
    ctime: u64,
    size: u64,
    count: u64,
    checksum: &[u8; 32],
) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_SIZE];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..32].copy_from_slice(uuid);
    for (at, value) in [(32, ctime), (40, size), (48, CHUNK_SIZE), (56, count)] {
        h[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    h[64..96].copy_from_slice(checksum);
    h
}

fn hash_digest_list(file: &File, count: u64, path: &Path) -> Result<[u8; 32]> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(HEADER_SIZE as u64))
        .map_err(io_at(path))?;
    let mut hasher = Sha256::new();
    let copied =
        std::io::copy(&mut reader.take(count * DIGEST_SIZE), &mut hasher).map_err(io_at(path))?;
    if copied != count * DIGEST_SIZE {
        return Err(BackupError::IndexWriter(format!(
            "temp index {} is short",
            path.display()
        )));
    }
    Ok(hasher.finalize().into())
}

fn split_path(path: &Path) -> Result<(&Path, &str)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str());
    let name =
        name.ok_or_else(|| BackupError::IndexWriter(format!("bad index path {}", path.display())))?;
    Ok((dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::TestDir;

    fn digest(i: u64) -> ChunkDigest {
        ChunkDigest::of(&i.to_le_bytes())
    }

    /// Writes an index for `size` bytes, chunks set in reverse order.
    fn write(dir: &Path, name: &str, size: u64) -> (PathBuf, [u8; 32]) {
        let path = dir.join(name);
        let mut w = FixedIndexWriter::create(&path, size, 1_795_638_600).unwrap();
        for i in (0..w.chunk_count()).rev() {
            w.set(i, &digest(i)).unwrap();
        }
        (path.clone(), w.finish().unwrap())
    }

    fn corrupt_reason(path: &Path) -> String {
        match FixedIndexReader::open(path) {
            Err(BackupError::CorruptIndex { reason, .. }) => reason,
            other => panic!("expected CorruptIndex, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_with_short_last_chunk() {
        let dir = TestDir::new("fidx-rt");
        let size = 3 * CHUNK_SIZE + 12_345;
        let (path, checksum) = write(&dir, "vda.fidx", size);
        assert_eq!(fs::metadata(&path).unwrap().len(), 4096 + 4 * 32);
        let r = FixedIndexReader::open(&path).unwrap();
        assert_eq!(
            (r.image_size(), r.chunk_count(), r.ctime()),
            (size, 4, 1_795_638_600)
        );
        assert_eq!(r.checksum(), checksum);
        assert_eq!(r.digests(), &[digest(0), digest(1), digest(2), digest(3)]);
        assert_eq!(r.chunk_range(0), Some((0, CHUNK_SIZE)));
        assert_eq!(r.chunk_range(3), Some((3 * CHUNK_SIZE, 12_345)));
        assert_eq!(r.chunk_range(4), None);
        assert_eq!(fs::read_dir(&*dir).unwrap().count(), 1, "no temp file left");
        let (empty, _) = write(&dir, "empty.fidx", 0);
        assert_eq!(FixedIndexReader::open(&empty).unwrap().chunk_count(), 0);
    }

    #[test]
    fn writer_refuses_gaps_positions_and_clobbering() {
        let dir = TestDir::new("fidx-writer");
        let path = dir.join("vda.fidx");
        let mut w = FixedIndexWriter::create(&path, 2 * CHUNK_SIZE, 0).unwrap();
        assert!(matches!(
            w.set(2, &digest(2)),
            Err(BackupError::IndexWriter(_))
        ));
        w.set(0, &digest(0)).unwrap();
        assert!(matches!(w.finish(), Err(BackupError::IndexWriter(_))));
        assert_eq!(
            fs::read_dir(&*dir).unwrap().count(),
            0,
            "unfinished writer leaves nothing"
        );
        write(&dir, "vda.fidx", 1);
        let mut again = FixedIndexWriter::create(&path, 1, 0).unwrap();
        again.set(0, &digest(0)).unwrap();
        assert!(again.finish().is_err(), "must not replace a finished index");
    }

    #[test]
    fn tampered_digest_list_is_refused() {
        let dir = TestDir::new("fidx-tamper");
        let (path, _) = write(&dir, "vda.fidx", 2 * CHUNK_SIZE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_SIZE + 40] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(corrupt_reason(&path).contains("SHA-256"));
    }

    #[test]
    fn wrong_lengths_and_headers_are_refused() {
        let dir = TestDir::new("fidx-len");
        let (path, _) = write(&dir, "vda.fidx", 2 * CHUNK_SIZE);
        let good = fs::read(&path).unwrap();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "expected"),
            ([good.as_slice(), &[0u8; 32]].concat(), "expected"),
            (good[..100].to_vec(), "shorter than the header"),
        ];
        let mut patch = |at: usize, bytes: &[u8], why: &'static str| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            cases.push((b, why));
        };
        patch(0, b"X", "magic");
        patch(8, &0u32.to_le_bytes(), "version");
        patch(40, &(5 * CHUNK_SIZE).to_le_bytes(), "cannot hold");
        patch(48, &65_536u64.to_le_bytes(), "chunk size");
        patch(200, &[1], "reserved");
        for (bytes, why) in cases {
            fs::write(&path, &bytes).unwrap();
            let reason = corrupt_reason(&path);
            assert!(reason.contains(why), "{why}: {reason}");
        }
        let mut newer = good.clone();
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        fs::write(&path, &newer).unwrap();
        let err = FixedIndexReader::open(&path).unwrap_err();
        assert!(
            matches!(err, BackupError::NewerFormat { found: 2, .. }),
            "{err}"
        );
    }
}

//! Verifying a backup: every distinct chunk its indexes reference is read back
//! and checked (CRC32, SHA-256). The outcome is recorded beside the manifest
//! in `verify.json`, written atomically; the backup's own files are never changed.

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::manifest::MANIFEST_FILE;
use super::{
    write_file_atomic, BackupError, BackupId, ChunkDigest, Datastore, Result, VmUuid, CHUNK_SIZE,
};
use crate::clock::unix_now;

pub const VERIFY_FILE: &str = "verify.json";
/// Digests listed per kind in `verify.json` (the counts stay exact): a store
/// with rotten media could otherwise make the file as large as an index.
pub const MAX_RECORDED_DIGESTS: usize = 1000;
/// Bounds what `last_verify` reads: the lists above plus an error message.
const MAX_VERIFY_FILE_SIZE: u64 = 1 << 20;

/// What one verification found. `chunks_checked` counts every distinct chunk
/// looked at; `bytes_checked` is the data of those that proved good.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub damaged: Vec<ChunkDigest>,
    pub missing: Vec<ChunkDigest>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.damaged.is_empty() && self.missing.is_empty()
    }
}

/// The last verification's outcome, as stored in `verify.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyState {
    /// UNIX seconds when the verification finished.
    pub time: u64,
    pub ok: bool,
    /// The first [`MAX_RECORDED_DIGESTS`] of each.
    pub damaged: Vec<ChunkDigest>,
    pub missing: Vec<ChunkDigest>,
    #[serde(default)]
    pub damaged_count: u64,
    #[serde(default)]
    pub missing_count: u64,
    /// Set when the manifest or an index itself failed its checks, so no
    /// chunk could be looked at.
    #[serde(default)]
    pub error: Option<String>,
}

impl VerifyState {
    fn new(report: &VerifyReport, error: Option<String>) -> Self {
        let first =
            |list: &[ChunkDigest]| list.iter().take(MAX_RECORDED_DIGESTS).copied().collect();
        VerifyState {
            time: unix_now(),
            ok: report.ok() && error.is_none(),
            damaged: first(&report.damaged),
            missing: first(&report.missing),
            damaged_count: report.damaged.len() as u64,
            missing_count: report.missing.len() as u64,
            error,
        }
    }
}

/// Verifies backup `vm/id` and records the outcome in its `verify.json`.
/// Damaged and missing chunks are findings, not errors; a manifest or index
/// that fails its checks is recorded as a failed verification and returned as
/// the error. Other I/O errors (an unreachable share) abort without recording
/// anything, since they say nothing about the backup. `progress` gets
/// (bytes done, bytes total) after each chunk.
pub fn verify_backup(
    store: &Datastore,
    vm: &VmUuid,
    id: &BackupId,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let dir = store.backup_dir(vm, id);
    let indexes = match store.open_backup(vm, id) {
        Ok((_, indexes)) => indexes,
        Err(e) if is_damage(&e) => {
            let state = VerifyState::new(&VerifyReport::default(), Some(e.to_string()));
            record(&dir, &state)?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    // Each distinct chunk once, with its data length (only an image's last
    // chunk is short; equal digests mean equal data, so equal lengths).
    let mut seen = HashSet::new();
    let mut chunks = Vec::new();
    for index in &indexes {
        for (position, digest) in (0u64..).zip(index.digests()) {
            if seen.insert(*digest) {
                let len = CHUNK_SIZE.min(index.image_size() - position * CHUNK_SIZE);
                chunks.push((*digest, len));
            }
        }
    }
    let total: u64 = chunks.iter().map(|(_, len)| len).sum();
    let (mut report, mut done) = (VerifyReport::default(), 0);
    for (digest, len) in chunks {
        match store.chunks().read(&digest) {
            Ok(data) => report.bytes_checked += data.len() as u64,
            Err(BackupError::ChunkDamaged { .. }) => report.damaged.push(digest),
            Err(BackupError::ChunkMissing(_)) => report.missing.push(digest),
            Err(e) => return Err(e),
        }
        report.chunks_checked += 1;
        done += len;
        progress(done, total);
    }
    record(&dir, &VerifyState::new(&report, None))?;
    Ok(report)
}

/// The recorded outcome of the last verification, if there is a readable one.
pub fn last_verify(store: &Datastore, vm: &VmUuid, id: &BackupId) -> Option<VerifyState> {
    let path = store.backup_dir(vm, id).join(VERIFY_FILE);
    let read = || -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(&path)?
            .take(MAX_VERIFY_FILE_SIZE + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let result = match read() {
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => Err(e.to_string()),
        Ok(bytes) if bytes.len() as u64 > MAX_VERIFY_FILE_SIZE => Err("file too large".into()),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
    };
    match result {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring an unreadable verify result");
            None
        }
    }
}

/// Whether an error opening a backup means the backup itself is bad (as
/// opposed to the store being unreachable or the backup being gone).
fn is_damage(e: &BackupError) -> bool {
    match e {
        BackupError::CorruptManifest { .. }
        | BackupError::CorruptIndex { .. }
        | BackupError::BackupMismatch { .. } => true,
        // An index the manifest lists but that is not there.
        BackupError::Io { path, source } => {
            source.kind() == ErrorKind::NotFound && path.file_name() != Some(MANIFEST_FILE.as_ref())
        }
        _ => false,
    }
}

fn record(dir: &Path, state: &VerifyState) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(state).map_err(|e| BackupError::Io {
        path: dir.join(VERIFY_FILE),
        source: e.into(),
    })?;
    json.push(b'\n');
    write_file_atomic(dir, VERIFY_FILE, &json)
}

/// Writes a complete one-disk backup whose chunks hold `chunks` (all but the
/// last exactly `CHUNK_SIZE` long), inserting them into the chunk store.
#[cfg(test)]
pub(crate) fn write_test_backup(
    ds: &Datastore,
    vm: &VmUuid,
    started_at: u64,
    chunks: &[&[u8]],
) -> BackupId {
    use super::{chunk, manifest, FixedIndexWriter};
    let (id, dir) = ds.new_backup_dir(vm, started_at).unwrap();
    let size: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let mut index = FixedIndexWriter::create(&dir.join("vda.fidx"), size, started_at).unwrap();
    for (position, data) in (0u64..).zip(chunks) {
        let digest = ChunkDigest::of(data);
        ds.chunks()
            .insert(&digest, &chunk::encode(data, true).unwrap())
            .unwrap();
        index.set(position, &digest).unwrap();
    }
    let checksum = index.finish().unwrap();
    let mut m = manifest::sample(vm, &id);
    m.disks[0].size_bytes = size;
    m.disks[0].chunk_count = chunks.len() as u64;
    m.disks[0].index_checksum = hex::encode(checksum);
    m.write_atomic(&dir).unwrap();
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::TestDir;
    use std::fs;

    const T0: u64 = 1_795_638_600; // 2026-11-25T20:30:00Z

    fn vm() -> VmUuid {
        "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162".parse().unwrap()
    }

    #[test]
    fn good_then_damaged_then_missing() {
        let root = TestDir::new("verify");
        let ds = Datastore::create_or_open(&root).unwrap();
        let (full, tail) = (vec![1u8; CHUNK_SIZE as usize], vec![2u8; 100]);
        // A repeated chunk is read once.
        let id = write_test_backup(&ds, &vm(), T0, &[&full, &full, &tail]);
        let (full_d, tail_d) = (ChunkDigest::of(&full), ChunkDigest::of(&tail));
        assert_eq!(last_verify(&ds, &vm(), &id), None, "never verified");
        let manifest_path = ds.backup_dir(&vm(), &id).join(MANIFEST_FILE);
        let manifest = fs::read(&manifest_path).unwrap();

        let mut calls = Vec::new();
        let report = verify_backup(&ds, &vm(), &id, &mut |done, total| {
            calls.push((done, total))
        })
        .unwrap();
        let total = CHUNK_SIZE + 100;
        assert_eq!(
            report,
            VerifyReport {
                chunks_checked: 2,
                bytes_checked: total,
                ..Default::default()
            }
        );
        assert_eq!(calls, [(CHUNK_SIZE, total), (total, total)]);
        let state = last_verify(&ds, &vm(), &id).unwrap();
        assert!(
            state.ok && state.error.is_none() && state.time >= T0,
            "{state:?}"
        );

        // One flipped byte in a chunk file: that chunk is damaged.
        let path = ds.chunks().chunk_path(&tail_d);
        let mut blob = fs::read(&path).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 0x01;
        fs::write(&path, blob).unwrap();
        let report = verify_backup(&ds, &vm(), &id, &mut |_, _| {}).unwrap();
        assert_eq!(
            (report.damaged, report.missing, report.bytes_checked),
            (vec![tail_d], vec![], CHUNK_SIZE)
        );
        let state = last_verify(&ds, &vm(), &id).unwrap();
        assert_eq!(
            (state.ok, state.damaged, state.damaged_count),
            (false, vec![tail_d], 1)
        );

        // A deleted chunk file: that chunk is missing.
        fs::remove_file(ds.chunks().chunk_path(&full_d)).unwrap();
        let report = verify_backup(&ds, &vm(), &id, &mut |_, _| {}).unwrap();
        assert_eq!((report.chunks_checked, report.bytes_checked), (2, 0));
        assert_eq!(
            (report.damaged, report.missing),
            (vec![tail_d], vec![full_d])
        );
        let state = last_verify(&ds, &vm(), &id).unwrap();
        assert_eq!((state.missing, state.missing_count), (vec![full_d], 1));

        assert_eq!(
            fs::read(&manifest_path).unwrap(),
            manifest,
            "manifest untouched"
        );
        assert_eq!(ds.list_backups(&vm()).unwrap(), vec![id], "still listed");
    }

    #[test]
    fn a_bad_index_is_recorded_as_failed() {
        let root = TestDir::new("verify-index");
        let ds = Datastore::create_or_open(&root).unwrap();
        let id = write_test_backup(&ds, &vm(), T0, &[b"tiny"]);
        let index = ds.backup_dir(&vm(), &id).join("vda.fidx");
        let mut bytes = fs::read(&index).unwrap();
        bytes[4096] ^= 0xff; // a digest: the header's checksum no longer matches
        fs::write(&index, bytes).unwrap();
        let err = verify_backup(&ds, &vm(), &id, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, BackupError::CorruptIndex { .. }), "{err}");
        let state = last_verify(&ds, &vm(), &id).unwrap();
        assert!(
            !state.ok
                && state
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains("SHA-256")),
            "{state:?}"
        );

        // The index gone entirely is damage too; a missing backup is not.
        fs::remove_file(&index).unwrap();
        verify_backup(&ds, &vm(), &id, &mut |_, _| {}).unwrap_err();
        assert!(last_verify(&ds, &vm(), &id).is_some_and(|s| !s.ok));
        let gone = BackupId::from_unix(T0 + 60).unwrap();
        verify_backup(&ds, &vm(), &gone, &mut |_, _| {}).unwrap_err();
        assert!(!ds.backup_dir(&vm(), &gone).exists());

        let verify_file = ds.backup_dir(&vm(), &id).join(VERIFY_FILE);
        fs::write(&verify_file, b"{ not json").unwrap();
        assert_eq!(last_verify(&ds, &vm(), &id), None);
    }
}

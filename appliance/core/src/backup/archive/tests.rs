//! Round trip, hostile archives (bad paths, kinds, sizes, order, checksums)
//! and the drop-directory rescan.

use super::*;
use crate::backup::TestDir;
use std::cell::Cell;
use std::fs::{self, File};
use std::time::{Duration, SystemTime};
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

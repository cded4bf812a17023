//! The manifest (`manifest.json`): all that is needed to rebuild the VM, tied to
//! each index by checksum. Written last and atomically, so its presence means
//! the backup is complete; newer format versions are refused with a clear error.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{io_at, write_file_atomic, BackupError, BackupId, Result, VmUuid, CHUNK_SIZE};

pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// Generous for a domain XML and many disks; bounds what a read allocates.
pub const MAX_MANIFEST_SIZE: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub vm: VmDescription,
    pub backup: BackupInfo,
    pub disks: Vec<DiskEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDescription {
    pub uuid: VmUuid,
    pub name: String,
    pub origin_host_id: String,
    pub origin_host_name: String,
    /// Which hypervisor `hypervisor_config` is for: `libvirt`, ...
    pub hypervisor: String,
    /// The hypervisor's own configuration, verbatim (libvirt domain XML).
    pub hypervisor_config: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub nics: Vec<Nic>,
    pub guest_os: Option<String>,
    pub categories: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub mac: String,
    pub network: String,
    pub model: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    Full,
    Incremental,
}

impl BackupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupMode::Full => "full",
            BackupMode::Incremental => "incremental",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// Also the backup directory's name.
    pub id: BackupId,
    pub mode: BackupMode,
    /// The backup an incremental one was taken against.
    pub parent: Option<BackupId>,
    /// UNIX seconds.
    pub started_at: u64,
    pub finished_at: u64,
    pub bytes_read: u64,
    /// Bytes of chunk data uploaded, i.e. not already in the datastore.
    pub bytes_new: u64,
    /// The hypervisor checkpoint created with this backup (a libvirt
    /// checkpoint): the next incremental backup reads what changed after it.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// Whether the guest's filesystems were frozen through its guest agent.
    #[serde(default)]
    pub guest_frozen: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    /// The disk's name in the VM (`vda`).
    pub target: String,
    /// The original image format (`qcow2`, `raw`, ...), to restore into.
    pub format: String,
    pub size_bytes: u64,
    /// The `.fidx` file name inside the backup directory.
    pub index_file: String,
    /// Hex SHA-256 of the index's digest list (its header field), so a
    /// swapped or rewritten index is detected.
    pub index_checksum: String,
    pub chunk_count: u64,
}

impl Manifest {
    /// Writes `dir/manifest.json` atomically (temp, fsync, rename, fsync dir).
    /// Call it after every index is finished: its presence means complete.
    pub fn write_atomic(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        self.validate(&path)?;
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|e| corrupt(&path, e.to_string()))?;
        json.push(b'\n');
        write_file_atomic(dir, MANIFEST_FILE, &json)
    }

    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let file = std::fs::File::open(&path).map_err(io_at(&path))?;
        let mut bytes = Vec::new();
        let mut limited = file.take(MAX_MANIFEST_SIZE + 1);
        limited.read_to_end(&mut bytes).map_err(io_at(&path))?;
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(corrupt(
                &path,
                format!("larger than {MAX_MANIFEST_SIZE} bytes"),
            ));
        }
        // The version first: a newer manifest may not parse as this one.
        #[derive(Deserialize)]
        struct VersionProbe {
            format_version: u32,
        }
        let probe: VersionProbe =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e.to_string()))?;
        if probe.format_version > FORMAT_VERSION {
            let (what, found, supported) =
                ("backup manifest", probe.format_version, FORMAT_VERSION);
            return Err(BackupError::NewerFormat {
                what,
                found,
                supported,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e.to_string()))?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    /// Internal consistency; `path` only names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let fail = |reason: String| Err(corrupt(path, reason));
        if self.format_version != FORMAT_VERSION {
            return fail(format!(
                "format version {} is not {FORMAT_VERSION}",
                self.format_version
            ));
        }
        let b = &self.backup;
        match (&b.mode, &b.parent) {
            (BackupMode::Incremental, None) => {
                return fail("incremental backup without a parent".into())
            }
            (_, Some(parent)) if parent >= &b.id => {
                return fail(format!("parent {parent} is not older"))
            }
            _ => {}
        }
        if b.finished_at < b.started_at {
            return fail("finished before it started".into());
        }
        let (mut targets, mut files) = (HashSet::new(), HashSet::new());
        for d in &self.disks {
            if !targets.insert(&d.target) || !files.insert(&d.index_file) {
                return fail(format!(
                    "disk {:?} or index {:?} listed twice",
                    d.target, d.index_file
                ));
            }
            if !index_file_name_ok(&d.index_file) {
                return fail(format!("bad index file name {:?}", d.index_file));
            }
            let hex_ok = d.index_checksum.len() == 64
                && d.index_checksum
                    .bytes()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
            if !hex_ok {
                return fail(format!(
                    "disk {:?}: index checksum is not 64 hex digits",
                    d.target
                ));
            }
            if d.chunk_count != d.size_bytes.div_ceil(CHUNK_SIZE) {
                return fail(format!(
                    "disk {:?}: {} chunks for {} bytes",
                    d.target, d.chunk_count, d.size_bytes
                ));
            }
        }
        Ok(())
    }
}

/// The index file name for a disk target: unsafe characters become `_`
/// (`scsi0:0` → `scsi0_0.fidx`). Unique targets can still collide; the
/// manifest check catches that.
pub fn index_file_name_for(target: &str) -> String {
    let stem: String = target
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = if stem.is_empty() { "disk".into() } else { stem };
    format!("{stem}.fidx")
}

/// A plain file name: `[A-Za-z0-9_-]+.fidx`, so it cannot leave the backup dir.
pub fn index_file_name_ok(name: &str) -> bool {
    name.len() <= 128
        && name.strip_suffix(".fidx").is_some_and(|stem| {
            !stem.is_empty()
                && stem
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

fn corrupt(path: &Path, reason: String) -> BackupError {
    BackupError::CorruptManifest {
        path: path.into(),
        reason,
    }
}

/// A valid manifest for tests (one 10 MiB disk, index checksum of zeros).
#[cfg(test)]
pub(crate) fn sample(vm: &VmUuid, id: &BackupId) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        vm: VmDescription {
            uuid: vm.clone(),
            name: "web01".into(),
            origin_host_id: "host-1".into(),
            origin_host_name: "kvm1".into(),
            hypervisor: "libvirt".into(),
            hypervisor_config: "<domain type='kvm'><name>web01</name></domain>".into(),
            vcpus: 2,
            memory_mib: 2048,
            nics: vec![Nic {
                mac: "52:54:00:12:34:56".into(),
                network: "default".into(),
                model: "virtio".into(),
            }],
            guest_os: Some("debian12".into()),
            categories: BTreeMap::from([("tier".into(), "web".into())]),
        },
        backup: BackupInfo {
            id: id.clone(),
            mode: BackupMode::Full,
            parent: None,
            started_at: id.unix_seconds(),
            finished_at: id.unix_seconds() + 60,
            bytes_read: 10 << 20,
            bytes_new: 4 << 20,
            checkpoint: None,
            guest_frozen: false,
        },
        disks: vec![DiskEntry {
            target: "vda".into(),
            format: "qcow2".into(),
            size_bytes: 10 << 20,
            index_file: "vda.fidx".into(),
            index_checksum: "0".repeat(64),
            chunk_count: 3,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::TestDir;

    fn ids() -> (VmUuid, BackupId) {
        let vm = "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162".parse().unwrap();
        (vm, "2026-11-25T20:30:00Z".parse().unwrap())
    }

    fn reason(result: Result<Manifest>) -> String {
        match result {
            Err(BackupError::CorruptManifest { reason, .. }) => reason,
            other => panic!("expected CorruptManifest, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_leaves_only_the_manifest() {
        let dir = TestDir::new("manifest-rt");
        let (vm, id) = ids();
        let m = sample(&vm, &id);
        m.write_atomic(&dir).unwrap();
        assert_eq!(Manifest::read(&dir).unwrap(), m);
        let names: Vec<_> = std::fs::read_dir(&*dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![MANIFEST_FILE]);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(json["backup"]["id"], "2026-11-25T20:30:00Z");
        assert_eq!(json["backup"]["mode"], "full");
    }

    #[test]
    fn newer_format_is_a_clear_error() {
        let dir = TestDir::new("manifest-v2");
        let v2 = r#"{"format_version": 2, "vm": "now an object of another shape", "extra": []}"#;
        std::fs::write(dir.join(MANIFEST_FILE), v2).unwrap();
        let err = Manifest::read(&dir).unwrap_err();
        assert!(
            matches!(
                err,
                BackupError::NewerFormat {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn malformed_files_are_refused() {
        let dir = TestDir::new("manifest-bad");
        let path = dir.join(MANIFEST_FILE);
        for bad in ["", "{", "[]", r#"{"format_version": 1}"#] {
            std::fs::write(&path, bad).unwrap();
            reason(Manifest::read(&dir));
        }
        let (vm, id) = ids();
        let mut v0 = serde_json::to_value(sample(&vm, &id)).unwrap();
        v0["format_version"] = 0.into();
        std::fs::write(&path, v0.to_string()).unwrap();
        assert!(reason(Manifest::read(&dir)).contains("version"));
        let mut traversal = serde_json::to_value(sample(&vm, &id)).unwrap();
        traversal["vm"]["uuid"] = "../../etc".into();
        std::fs::write(&path, traversal.to_string()).unwrap();
        assert!(reason(Manifest::read(&dir)).contains("VM uuid"));
        std::fs::write(&path, vec![b' '; MAX_MANIFEST_SIZE as usize + 1]).unwrap();
        assert!(reason(Manifest::read(&dir)).contains("larger"));
    }

    #[test]
    fn inconsistent_content_is_refused() {
        let (vm, id) = ids();
        let path = Path::new("manifest.json");
        type Breaker = fn(&mut Manifest);
        let cases: [(&str, Breaker); 6] = [
            ("parent", |m| m.backup.mode = BackupMode::Incremental),
            ("older", |m| m.backup.parent = Some(m.backup.id.clone())),
            ("index file", |m| {
                m.disks[0].index_file = "../vda.fidx".into()
            }),
            ("checksum", |m| m.disks[0].index_checksum = "XYZ".into()),
            ("chunks", |m| m.disks[0].chunk_count = 2),
            ("twice", |m| m.disks.push(m.disks[0].clone())),
        ];
        for (why, break_it) in cases {
            let mut m = sample(&vm, &id);
            break_it(&mut m);
            let got = reason(m.validate(path).map(|_| m.clone()));
            assert!(got.contains(why), "{why}: {got}");
        }
    }

    #[test]
    fn index_file_names() {
        assert_eq!(index_file_name_for("vda"), "vda.fidx");
        assert_eq!(index_file_name_for("scsi0:0"), "scsi0_0.fidx");
        assert_eq!(index_file_name_for("../x"), "___x.fidx");
        assert_eq!(index_file_name_for(""), "disk.fidx");
        for name in [".fidx", "a/b.fidx", "..fidx", "vda.idx", "vda .fidx"] {
            assert!(!index_file_name_ok(name), "{name}");
        }
    }
}

//! Entry points for the fuzz targets (`fuzz/`) only, built with the
//! `fuzzing` feature: each feeds untrusted bytes to the code that reads
//! them from a datastore, an archive or a host, and must return (an error
//! is fine), never panic, hang or allocate without bound.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::backup::{Datastore, FixedIndexReader, Manifest};

/// A private scratch directory for this process (in `/dev/shm` when there
/// is one: the targets write a file per input).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = match std::path::Path::new("/dev/shm").is_dir() {
            true => PathBuf::from("/dev/shm"),
            false => std::env::temp_dir(),
        };
        let dir = base.join(format!("lifeboat-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz scratch directory");
        dir
    })
}

/// A fixed index file (`<disk>.fidx`) as found in a datastore.
pub fn fixed_index(bytes: &[u8]) {
    let path = scratch().join("vda.fidx");
    if std::fs::write(&path, bytes).is_ok() {
        if let Ok(index) = FixedIndexReader::open(&path) {
            let _ = (index.image_size(), index.digests().len());
        }
    }
}

/// A backup's `manifest.json`, then its definition planned for a restore.
pub fn manifest(bytes: &[u8]) {
    let dir = scratch().join("backup");
    let _ = std::fs::create_dir_all(&dir);
    if std::fs::write(dir.join(crate::backup::manifest::MANIFEST_FILE), bytes).is_err() {
        return;
    }
    if let Ok(m) = Manifest::read(&dir) {
        let _ = crate::backup::restore::disk_paths(&m.vm.hypervisor_config);
        definition(&m.vm.hypervisor_config);
    }
}

/// A libvirt domain definition about to be sent to a host: checked, its
/// disks remapped for failover, listed for a restore.
pub fn definition(xml: &str) {
    let dirs = ["/var/lib/libvirt/images".to_string()];
    let _ = crate::inventory::definition::check_definition(
        xml,
        &crate::inventory::definition::DefinitionRules {
            name: "web01",
            uuid: "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162",
            disk_dirs: &dirs,
            allow_passthrough: false,
        },
    );
    let from = [("san".to_string(), "/mnt/a".to_string())].into();
    let to = [("san".to_string(), "/mnt/b".to_string())].into();
    let _ = crate::ha::remap::remap_disks(xml, &from, &to);
    let _ = crate::backup::restore::disk_paths(xml);
}

/// A backup archive imported into a datastore (as `lifeboat backup import`
/// or the drop directory would). One that imports is removed again.
pub fn archive(bytes: &[u8]) {
    let root = scratch().join("datastore");
    let Ok(store) = Datastore::create_or_open(&root) else {
        return;
    };
    if let Ok((vm, _)) = crate::backup::archive::import_archive(&store, &mut &bytes[..], &()) {
        let _ = std::fs::remove_dir_all(root.join("vm").join(vm.as_str()));
    }
}

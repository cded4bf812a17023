//! The offline side of a datastore: what `lifeboat backup export|import|list`
//! does directly on a datastore directory, with the file permissions of
//! whoever runs it and without the controller (for tape, another backup
//! system, disaster recovery). Safe while the controller runs: export and
//! list only read, import writes a backup the way a backup job does
//! (manifest last, atomically). An imported archive is untrusted input and
//! is checked member by member (`backup::archive`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::backup::archive::{self, ArchiveError, ExportStats, Progress};
use crate::backup::{BackupError, BackupId, BackupMode, Datastore, Manifest, VmUuid};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(
        "{0} is not a Lifeboat datastore (no vm/ and .chunks/ in it); name one with --datastore"
    )]
    NotADatastore(PathBuf),
    #[error("there is no complete backup {vm}/{id} in {dir} (see `lifeboat backup list`)")]
    NoSuchBackup {
        vm: VmUuid,
        id: BackupId,
        dir: PathBuf,
    },
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One line of a listing. A broken manifest is listed, not fatal: the
/// listing is how one finds it.
pub struct ListedBackup {
    pub vm: VmUuid,
    pub id: BackupId,
    pub summary: Result<BackupLine, String>,
}

pub struct BackupLine {
    pub name: String,
    pub full: bool,
    pub disks: usize,
    pub size_bytes: u64,
}

pub struct OfflineDatastore {
    dir: PathBuf,
    store: Datastore,
}

impl OfflineDatastore {
    /// Opens an existing datastore; a mistyped path must not create an empty one.
    pub fn open(dir: &Path) -> Result<OfflineDatastore, OfflineError> {
        if !dir.join("vm").is_dir() || !dir.join(".chunks").is_dir() {
            return Err(OfflineError::NotADatastore(dir.to_path_buf()));
        }
        Ok(OfflineDatastore {
            dir: dir.to_path_buf(),
            store: Datastore::create_or_open(dir)?,
        })
    }

    /// Refuses before anything is written when the backup is not complete.
    pub fn check_exportable(&self, vm: &VmUuid, id: &BackupId) -> Result<(), OfflineError> {
        if self.store.list_backups(vm)?.contains(id) {
            return Ok(());
        }
        Err(OfflineError::NoSuchBackup {
            vm: vm.clone(),
            id: id.clone(),
            dir: self.dir.clone(),
        })
    }

    pub fn export(
        &self,
        vm: &VmUuid,
        id: &BackupId,
        out: &mut dyn Write,
        progress: &dyn Progress,
    ) -> Result<ExportStats, OfflineError> {
        self.check_exportable(vm, id)?;
        Ok(archive::export_backup(&self.store, vm, id, out, progress)?)
    }

    pub fn import(
        &self,
        input: &mut dyn Read,
        progress: &dyn Progress,
    ) -> Result<(VmUuid, BackupId), OfflineError> {
        Ok(archive::import_archive(&self.store, input, progress)?)
    }

    pub fn list(&self, vm: Option<&VmUuid>) -> Result<Vec<ListedBackup>, OfflineError> {
        let backups = match vm {
            Some(vm) => (self.store.list_backups(vm)?.into_iter())
                .map(|id| (vm.clone(), id))
                .collect(),
            None => self.store.list_all()?,
        };
        Ok(backups
            .into_iter()
            .map(|(vm, id)| {
                let summary = Manifest::read(&self.store.backup_dir(&vm, &id))
                    .map(|m| BackupLine {
                        name: m.vm.name.clone(),
                        full: m.backup.mode == BackupMode::Full,
                        disks: m.disks.len(),
                        size_bytes: m.disks.iter().map(|d| d.size_bytes).sum(),
                    })
                    .map_err(|e| e.to_string());
                ListedBackup { vm, id, summary }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{archive::sample_backup, TestDir};

    #[test]
    fn export_import_and_list_offline() {
        let dir = TestDir::new("offline");
        let (src, dst) = (dir.join("src"), dir.join("dst"));
        let (vm, id) = sample_backup(&Datastore::create_or_open(&src).unwrap());
        Datastore::create_or_open(&dst).unwrap();
        let (src, dst) = (
            OfflineDatastore::open(&src).unwrap(),
            OfflineDatastore::open(&dst).unwrap(),
        );
        let mut archive = Vec::new();
        let stats = src.export(&vm, &id, &mut archive, &()).unwrap();
        assert_eq!(archive.len() as u64, stats.archive_bytes);
        let missing: BackupId = "2020-01-01T00:00:00Z".parse().unwrap();
        let err = src.export(&vm, &missing, &mut Vec::new(), &()).unwrap_err();
        assert!(matches!(err, OfflineError::NoSuchBackup { .. }), "{err}");

        assert_eq!(
            dst.import(&mut &archive[..], &()).unwrap(),
            (vm.clone(), id.clone())
        );
        let again = dst.import(&mut &archive[..], &()).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");

        let listed = dst.list(Some(&vm)).unwrap();
        assert_eq!(listed.len(), 1);
        let line = listed[0].summary.as_ref().unwrap();
        assert_eq!(
            (line.name.as_str(), line.full, line.disks),
            ("web01", true, 2)
        );
    }

    #[test]
    fn a_mistyped_path_is_refused_and_not_created() {
        let dir = TestDir::new("offline-bad");
        let err = OfflineDatastore::open(&dir.join("nope")).err().unwrap();
        assert!(
            err.to_string().contains("not a Lifeboat datastore"),
            "{err}"
        );
        assert!(!dir.join("nope").exists());
    }
}

//! Removing backups, in every way there is: a policy's retention, deleting
//! one backup, and unprotecting one (which hands it to retention). Each
//! needs `delete-backup` and touches only VMs inside the caller's scope.

use std::time::SystemTime;

use super::{Ops, OpsError};
use crate::access::{require, Principal, Privilege};
use crate::backup::gc::{collect_garbage, prune_backup};
use crate::backup::prune::{compute_prune, PruneMark, PruneOptions};
use crate::backup::{Datastore, VmUuid};

/// Runs blocking datastore work off the async workers.
async fn blocking<T, E: std::fmt::Display + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, OpsError>
where
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| OpsError::Internal(e.to_string()))?
        .map_err(|e| OpsError::Internal(e.to_string()))
}

impl Ops {
    /// Marks a backup protected from retention, or not.
    pub async fn set_protected(
        &self,
        who: &Principal,
        reference: &str,
        protected: bool,
    ) -> Result<(), OpsError> {
        let b = self.backup_manifest(who, reference).await?;
        let result = async {
            require(who, Privilege::Backup, "protecting backups")?;
            if !protected {
                // Unprotecting hands the backup to retention.
                require(who, Privilege::DeleteBackup, "unprotecting backups")?;
            }
            let store = self
                .datastores
                .get(&b.reference.datastore)
                .ok_or_else(|| OpsError::NotFound(format!("no backup {reference}")))?;
            let (vm, id) = (b.reference.vm.clone(), b.reference.id.clone());
            blocking(move || store.set_protected(&vm, &id, protected)).await
        }
        .await;
        let action = if protected {
            "protect backup"
        } else {
            "unprotect backup"
        };
        self.audited(who, action, &format!("backup {reference}"), result)
            .await
    }

    /// Deletes one backup: its manifest goes first (the backup is then no
    /// longer listed or restorable), its chunks at the next garbage
    /// collection. A protected backup is refused until unprotected.
    pub async fn delete_backup(&self, who: &Principal, reference: &str) -> Result<(), OpsError> {
        let b = self.backup_manifest(who, reference).await?;
        let result = async {
            require(who, Privilege::DeleteBackup, "deleting backups")?;
            if b.protected {
                return Err(OpsError::Conflict(format!(
                    "backup {reference} is protected; unprotect it first"
                )));
            }
            let store = self
                .datastores
                .get(&b.reference.datastore)
                .ok_or_else(|| OpsError::NotFound(format!("no backup {reference}")))?;
            let (vm, id) = (b.reference.vm.clone(), b.reference.id.clone());
            blocking(move || prune_backup(&store, &vm, &id)).await?;
            Ok(())
        }
        .await;
        self.audited(who, "delete backup", &format!("backup {reference}"), result)
            .await
    }
}

/// Retention for each VM, then garbage collection of the datastore.
pub(super) fn apply_retention(
    store: &Datastore,
    vms: &[String],
    retention: &PruneOptions,
    oldest_running: Option<SystemTime>,
) -> Result<(), String> {
    for vm in vms {
        let Ok(vm) = vm.parse::<VmUuid>() else {
            continue;
        };
        let ids = store.list_backups(&vm).map_err(|e| e.to_string())?;
        let marked: Vec<_> = ids
            .iter()
            .map(|id| (id.clone(), store.is_protected(&vm, id)))
            .collect();
        for (id, mark) in compute_prune(&marked, retention) {
            if mark == PruneMark::Remove {
                prune_backup(store, &vm, &id).map_err(|e| e.to_string())?;
                tracing::info!(
                    vm = vm.as_str(),
                    backup = id.as_str(),
                    "pruned by retention"
                );
            }
        }
    }
    let report = collect_garbage(store, oldest_running).map_err(|e| e.to_string())?;
    tracing::info!(
        removed = report.sweep.removed,
        kept = report.sweep.kept,
        "garbage collected"
    );
    Ok(())
}

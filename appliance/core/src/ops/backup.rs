//! Backup operations: start a backup job, list a VM's backups, read one;
//! list, add and remove datastores.

use std::sync::Arc;

use lifeboat_proto::{BackupMode, BootSignal, PowerState, RestoreRequest};

use super::{Ops, OpsError};
use crate::access::{require, Principal, Privilege};
use crate::backup::as_new::{as_new_request, has_guest_agent, instant_domains, AsNew};
use crate::backup::boot_verify::{self, last_boot_verify, BootVerifyState};
use crate::backup::datastores::{
    DatastoreEntry, DatastoreInput, DatastoresError, Health, Location, DEFAULT_DATASTORE,
};
use crate::backup::job::{self, BackupRun};
use crate::backup::restore;
use crate::backup::verify::{last_verify, verify_backup, VerifyState};
use crate::backup::{BackupId, Manifest, VmUuid};
use crate::jobs::{Job, NewJob};

/// Names one backup across the API: `DATASTORE:VM-UUID@BACKUP-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRef {
    pub datastore: String,
    pub vm: VmUuid,
    pub id: BackupId,
}

impl BackupRef {
    pub fn parse(s: &str) -> Option<BackupRef> {
        let (datastore, rest) = s.split_once(':')?;
        let (vm, id) = rest.split_once('@')?;
        Some(BackupRef {
            datastore: datastore.to_string(),
            vm: vm.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

impl std::fmt::Display for BackupRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}@{}",
            self.datastore,
            self.vm.as_str(),
            self.id.as_str()
        )
    }
}

/// A backup opened for an operation: what is listed, plus where it lives
/// and its indexes.
struct OpenedBackup {
    summary: BackupSummary,
    store: Arc<crate::backup::Datastore>,
    indexes: Vec<crate::backup::FixedIndexReader>,
}

/// A datastore as listed. `capacity` is the reason when it is unreachable.
pub struct DatastoreView {
    pub name: String,
    pub path: std::path::PathBuf,
    pub capacity: Result<crate::backup::datastores::Capacity, String>,
    pub backups: usize,
    /// Its configuration; an SMB password in it is sealed, never shown.
    pub location: Location,
    pub built_in: bool,
}

impl DatastoreView {
    /// Blocking: reads the filesystem's capacity and counts backups.
    fn of(entry: DatastoreEntry) -> DatastoreView {
        let built_in = entry.built_in();
        let (capacity, backups) = match &entry.health {
            Health::Ready(store) => (
                crate::backup::datastores::capacity(store).map_err(|e| e.to_string()),
                store.list_all().map(|l| l.len()).unwrap_or(0),
            ),
            Health::Pending(what) => (Err(what.to_string()), 0),
            Health::Unreachable(error) => (Err(error.clone()), 0),
        };
        DatastoreView {
            name: entry.name,
            path: entry.root,
            capacity,
            backups,
            location: entry.location,
            built_in,
        }
    }
}

impl From<DatastoresError> for OpsError {
    fn from(e: DatastoresError) -> Self {
        match e {
            DatastoresError::Invalid(_) => OpsError::BadRequest(e.to_string()),
            DatastoresError::NotFound(_) => OpsError::NotFound(e.to_string()),
            DatastoresError::Duplicate(_)
            | DatastoresError::Unreachable { .. }
            | DatastoresError::Conflict(_) => OpsError::Conflict(e.to_string()),
            DatastoresError::Store(e) => e.into(),
            DatastoresError::Secrets(_) | DatastoresError::Backup(_) => {
                OpsError::Internal(e.to_string())
            }
        }
    }
}

/// One backup as listed.
pub struct BackupSummary {
    pub reference: BackupRef,
    pub manifest: Manifest,
    /// The last verification, if any.
    pub verify: Option<VerifyState>,
    /// Kept by retention whatever its age.
    pub protected: bool,
    /// The last boot verification, if any.
    pub boot_verify: Option<BootVerifyState>,
}

/// How to boot-verify a backup.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootVerifyOptions {
    /// The host's id or name; default: the VM's origin host.
    #[serde(default)]
    pub host: Option<String>,
    /// What shows the guest is up; default: its guest agent answering.
    #[serde(default)]
    pub signal: Option<BootSignal>,
    /// Seconds the guest has (10 to 3600; default 300).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// How to restore a backup.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOptions {
    /// The host's id or name; default: the VM's origin host.
    #[serde(default)]
    pub host: Option<String>,
    /// Replace the VM if the host has it (exact restores only).
    #[serde(default)]
    pub replace: bool,
    /// Start the VM once restored.
    #[serde(default)]
    pub start: bool,
    /// Restore as a new VM with this identity.
    #[serde(default)]
    pub as_new: Option<AsNew>,
    /// Let the definition hand host devices (PCI/USB, block devices,
    /// directories) to the guest; needs `administer`.
    #[serde(default)]
    pub allow_passthrough: bool,
    /// Instant restore: the VM starts at once, running from the backup
    /// while its disks are copied onto the host in the background; the
    /// disks end as qcow2 images. Not with `replace`.
    #[serde(default)]
    pub instant: bool,
    /// MiB/s the background copy of an instant restore may use (default:
    /// unlimited).
    #[serde(default)]
    pub bandwidth_mib: Option<u64>,
}

/// Turns a checked restore into an instant one: every disk becomes a
/// qcow2 image first backed by the agent's export of the backup, the VM
/// starts from those, and `config` (the same images standing alone) is
/// what it keeps once they are copied.
fn make_instant(request: &mut RestoreRequest, bandwidth_mib: Option<u64>) -> Result<(), OpsError> {
    let sockets: Vec<(String, String)> = request
        .disks
        .iter()
        .map(|d| {
            let socket = lifeboat_proto::instant_socket(&request.uuid, &d.target);
            (d.target.clone(), socket)
        })
        .collect();
    let (running, after) =
        instant_domains(&request.config, &sockets).map_err(OpsError::BadRequest)?;
    for disk in &mut request.disks {
        disk.format = "qcow2".into();
    }
    request.config = after;
    request.instant_config = Some(running);
    request.instant_bandwidth_mib = bandwidth_mib.filter(|b| *b > 0);
    request.start = true;
    Ok(())
}

fn not_found(what: &str) -> OpsError {
    OpsError::NotFound(format!("no backup {what}"))
}

impl Ops {
    /// Starts a backup job of a VM into a datastore (default `local`).
    pub async fn backup(
        self: &Arc<Self>,
        who: &Principal,
        vm_id: &str,
        datastore: Option<&str>,
        mode: BackupMode,
    ) -> Result<Job, OpsError> {
        let vm = self.vm(who, vm_id)?;
        let object = format!("vm {} ({})", vm.info.name, vm.info.uuid);
        let result = async {
            require(who, Privilege::Backup, "backups")?;
            let name = datastore.unwrap_or(DEFAULT_DATASTORE).to_string();
            if !self.datastores.contains(&name) {
                return Err(OpsError::BadRequest(format!("no datastore named {name:?}")));
            }
            self.require_host_online(&vm)?;
            let host = self.inventory.host(&vm.host_id);
            let job = self
                .jobs
                .create(NewJob {
                    kind: "backup",
                    description: format!("back up {} to {name}", vm.info.name),
                    vm: Some(vm.info.uuid.clone()),
                    host: Some(vm.host_id.clone()),
                    user: who.user.clone(),
                })
                .await?;
            let host_name = host
                .as_ref()
                .map(|h| h.host.name.clone())
                .unwrap_or_default();
            let hypervisor = host
                .map(|h| h.host.facts.driver.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "libvirt".into());
            let (hub, jobs, datastores, vm) = (
                self.hub.clone(),
                self.jobs.clone(),
                self.datastores.clone(),
                vm.clone(),
            );
            let job_id = job.id;
            tokio::spawn(async move {
                let _ = jobs.start(job_id).await;
                // Resolved in the job: an unreachable datastore fails the job
                // with its reason, which the job list keeps (scheduled runs too).
                let store = match datastores.for_backup(&name) {
                    Ok(store) => store,
                    Err(e) => {
                        tracing::warn!(job_id, "backup not started: {e}");
                        let _ = jobs.finish(job_id, Err(e.to_string())).await;
                        return;
                    }
                };
                let run = BackupRun {
                    job_id,
                    host_name,
                    hypervisor,
                    vm,
                    datastore: store,
                    mode,
                };
                let result = job::run(hub, jobs.clone(), run).await;
                match &result {
                    Ok(done) => {
                        tracing::info!(job_id, backup = done.id.as_str(), "backup complete")
                    }
                    Err(e) => tracing::warn!(job_id, "backup failed: {e}"),
                }
                let bytes = result
                    .as_ref()
                    .map(|d| d.manifest.backup.bytes_read)
                    .unwrap_or(0);
                let _ = jobs
                    .update(job_id, |j| {
                        if bytes > 0 {
                            j.bytes_done = bytes;
                            j.bytes_total = j.bytes_total.max(bytes);
                        }
                    })
                    .await;
                let _ = jobs
                    .finish(job_id, result.map(|_| ()).map_err(|e| e.to_string()))
                    .await;
            });
            Ok(job)
        }
        .await;
        self.audited(who, "backup", &object, result).await
    }

    /// Restores a backup exactly as it was (same UUID, name, MACs and disk
    /// paths), or as a new VM, onto a host (default: the VM's origin host).
    pub async fn restore(
        self: &Arc<Self>,
        who: &Principal,
        reference: &str,
        options: RestoreOptions,
    ) -> Result<Job, OpsError> {
        let RestoreOptions {
            host,
            replace,
            start,
            as_new,
            allow_passthrough,
            instant,
            bandwidth_mib,
        } = options;
        let host = host.as_deref();
        let opened = self.open_backup(who, reference).await?;
        let backup = &opened.summary;
        let object = format!("backup {reference}");
        let result = async {
            require(who, Privilege::Restore, "restores")?;
            let m = &backup.manifest;
            let dest = self.restore_host(host.unwrap_or(&m.vm.origin_host_id))?;
            if as_new.is_none() {
                self.refuse_second_copy(m.vm.uuid.as_str(), &dest.host.id)?;
            }
            if instant && replace {
                return Err(OpsError::BadRequest(
                    "an instant restore cannot replace a VM; remove it first or restore as new"
                        .into(),
                ));
            }
            if bandwidth_mib.is_some() && !instant {
                return Err(OpsError::BadRequest(
                    "bandwidth_mib is for instant restores".into(),
                ));
            }
            let store = opened.store.clone();
            let exact = restore::exact_request(m, &opened.indexes, replace, start)
                .map_err(|e| OpsError::BadRequest(e.to_string()))?;
            let request = match &as_new {
                None => exact,
                Some(new) => {
                    require(who, Privilege::CreateVm, "restoring as a new VM")?;
                    new.validate().map_err(OpsError::BadRequest)?;
                    let taken = self
                        .inventory
                        .with_vms(|vms| vms.filter(|v| v.info.name == new.name).count() > 0);
                    if taken {
                        // The same words whether or not the caller sees
                        // that VM: nothing about it is told.
                        return Err(OpsError::Conflict(format!(
                            "the name {:?} is taken; choose another",
                            new.name
                        )));
                    }
                    as_new_request(exact, new).map_err(OpsError::BadRequest)?
                }
            };
            // The manifest is untrusted: what the host will write and define
            // is checked against the plan and that host's storage first.
            if allow_passthrough {
                require(who, Privilege::Administer, "restoring with host devices")?;
            }
            self.check_restore_for(&dest.host.id, &request, allow_passthrough)?;
            let mut request = request;
            if instant {
                make_instant(&mut request, bandwidth_mib)?;
            }
            if as_new.is_none() {
                self.refuse_other_domain(&request.uuid, &request.name)?;
                if self.inventory.vm(&request.uuid).map(|v| v.host_id) != Some(dest.host.id.clone())
                {
                    self.inventory.expect_move(&request.uuid, &dest.host.id);
                }
            }
            let job = self
                .jobs
                .create(NewJob {
                    kind: "restore",
                    description: format!(
                        "{}restore {}{} on {}",
                        if instant { "instant " } else { "" },
                        m.vm.name,
                        match &as_new {
                            Some(new) => format!(" as new VM {}", new.name),
                            None => String::new(),
                        },
                        dest.host.name
                    ),
                    vm: Some(m.vm.uuid.as_str().to_string()),
                    host: Some(dest.host.id.clone()),
                    user: who.user.clone(),
                })
                .await?;
            let (hub, jobs, job_id, host_id) = (
                self.hub.clone(),
                self.jobs.clone(),
                job.id,
                dest.host.id.clone(),
            );
            tokio::spawn(async move {
                let _ = jobs.start(job_id).await;
                let result = restore::run(hub, jobs.clone(), job_id, host_id, store, request).await;
                match &result {
                    Ok(r) => tracing::info!(job_id, vm = r.name, "restore complete"),
                    Err(e) => tracing::warn!(job_id, "restore failed: {e}"),
                }
                let outcome = result.map(|_| ()).map_err(|e| match instant {
                    // Whatever broke, the VM may be running on its images.
                    true => format!(
                        "{e}; if the VM started, it keeps its images and every write of its \
                         guest (see \"Instant restore\" in docs/backup.md to complete it)"
                    ),
                    false => e.to_string(),
                });
                let _ = jobs.finish(job_id, outcome).await;
            });
            Ok(job)
        }
        .await;
        self.audited(who, "restore", &object, result).await
    }

    /// The connected host `wanted` (an id or a name) names, to restore onto.
    fn restore_host(&self, wanted: &str) -> Result<crate::inventory::HostView, OpsError> {
        let dest = self
            .inventory
            .hosts()
            .into_iter()
            .find(|h| h.host.id == wanted || h.host.name == wanted)
            .ok_or_else(|| OpsError::BadRequest(format!("no host {wanted:?} to restore onto")))?;
        if !self.hub.is_connected(&dest.host.id) {
            return Err(OpsError::Conflict(format!(
                "host {} is offline",
                dest.host.name
            )));
        }
        Ok(dest)
    }

    /// Boot-verifies a backup: restores it as an isolated sandbox VM (a
    /// new identity, no network) onto a host (default: the VM's origin
    /// host), boots it there, waits for the sign of life (default: the
    /// guest agent, where the VM has its channel), records the outcome
    /// beside the backup and has the host remove the sandbox.
    pub async fn boot_verify(
        self: &Arc<Self>,
        who: &Principal,
        reference: &str,
        options: BootVerifyOptions,
    ) -> Result<Job, OpsError> {
        let opened = self.open_backup(who, reference).await?;
        let object = format!("backup {reference}");
        let result = async {
            // A restore and a verification. The sandbox is no VM of the
            // caller's: Lifeboat names it, keeps it off every network and
            // removes it, so `create-vm` is not asked for.
            require(who, Privilege::Restore, "boot-verifying backups")?;
            require(who, Privilege::Backup, "boot-verifying backups")?;
            let m = &opened.summary.manifest;
            let dest =
                self.restore_host(options.host.as_deref().unwrap_or(&m.vm.origin_host_id))?;
            boot_verify::check_room(
                &dest.host.name,
                m.vm.memory_mib,
                dest.host.facts.memory_free_bytes,
            )
            .map_err(OpsError::Conflict)?;
            let has_agent = has_guest_agent(&m.vm.hypervisor_config);
            let signal = match options.signal {
                Some(BootSignal::GuestAgent) | None if !has_agent => {
                    return Err(OpsError::BadRequest(
                        "the VM has no guest agent channel: give a serial console line to wait \
                         for ({\"signal\": {\"kind\": \"serial_line\", \"text\": \"...\"}})"
                            .into(),
                    ))
                }
                Some(signal) => signal,
                None => BootSignal::GuestAgent,
            };
            let exact = restore::exact_request(m, &opened.indexes, false, false)
                .map_err(|e| OpsError::BadRequest(e.to_string()))?;
            let timeout = options
                .timeout_secs
                .unwrap_or(boot_verify::DEFAULT_TIMEOUT_SECS);
            let plan = boot_verify::plan(exact, signal, timeout).map_err(OpsError::BadRequest)?;
            // The manifest is untrusted: the sandbox's definition is checked
            // like any restore's.
            self.check_restore_for(&dest.host.id, &plan.restore, false)?;
            let job = self
                .jobs
                .create(NewJob {
                    kind: "boot-verify",
                    description: format!(
                        "boot-verify backup {} of {} on {} as sandbox {}",
                        opened.summary.reference.id.as_str(),
                        m.vm.name,
                        dest.host.name,
                        plan.restore.name
                    ),
                    vm: Some(m.vm.uuid.as_str().to_string()),
                    host: Some(dest.host.id.clone()),
                    user: who.user.clone(),
                })
                .await?;
            let (hub, jobs, job_id) = (self.hub.clone(), self.jobs.clone(), job.id);
            let host = (dest.host.id.clone(), dest.host.name.clone());
            let r = opened.summary.reference.clone();
            let store = opened.store.clone();
            tokio::spawn(async move {
                let _ = jobs.start(job_id).await;
                let result =
                    boot_verify::run(hub, jobs.clone(), job_id, host, store, (r.vm, r.id), plan)
                        .await;
                match &result {
                    Ok(()) => tracing::info!(job_id, "boot verification passed"),
                    Err(e) => tracing::warn!(job_id, "boot verification failed: {e}"),
                }
                let _ = jobs.finish(job_id, result).await;
            });
            Ok(job)
        }
        .await;
        self.audited(who, "boot verify", &object, result).await
    }

    /// The last boot verification's screenshot of a backup: media type
    /// and bytes.
    pub async fn boot_screenshot(
        &self,
        who: &Principal,
        reference: &str,
    ) -> Result<(String, Vec<u8>), OpsError> {
        let opened = self.open_backup(who, reference).await?;
        let r = opened.summary.reference;
        tokio::task::spawn_blocking(move || boot_verify::screenshot(&opened.store, &r.vm, &r.id))
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))?
            .ok_or_else(|| OpsError::NotFound(format!("no boot screenshot of backup {reference}")))
    }

    /// An exact restore must not redefine another VM: the backup's UUID, if
    /// known, must belong to a VM of the backup's name.
    fn refuse_other_domain(&self, uuid: &str, name: &str) -> Result<(), OpsError> {
        match self.inventory.vm(uuid) {
            Some(vm) if vm.info.name != name => Err(OpsError::Conflict(
                "the backup's UUID belongs to another VM now; restore it as a new VM".into(),
            )),
            _ => Ok(()),
        }
    }

    /// An exact restore onto another host while the VM runs on a live host
    /// would run it twice (same UUID, same MACs): refused. With its host
    /// down or the VM stopped, the restore moves it (the old host forgets
    /// its definition once the restored VM runs).
    fn refuse_second_copy(&self, uuid: &str, dest: &str) -> Result<(), OpsError> {
        let Some(vm) = self.inventory.vm(uuid) else {
            return Ok(());
        };
        let runs = matches!(
            vm.info.power_state,
            PowerState::Running | PowerState::Paused
        );
        if vm.host_id != dest && runs && self.hub.is_connected(&vm.host_id) {
            return Err(OpsError::Conflict(format!(
                "VM {} runs on host {}: stop it there first, or restore it as a new VM",
                vm.info.name,
                self.inventory.host_name(&vm.host_id)
            )));
        }
        Ok(())
    }

    /// The datastores with their capacity and number of backups; an
    /// unreachable one with the reason instead.
    pub async fn datastores(&self, who: &Principal) -> Result<Vec<DatastoreView>, OpsError> {
        require(who, Privilege::View, "listing datastores")?;
        let entries = self.datastores.entries();
        tokio::task::spawn_blocking(move || entries.into_iter().map(DatastoreView::of).collect())
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))
    }

    pub async fn datastore(&self, who: &Principal, name: &str) -> Result<DatastoreView, OpsError> {
        require(who, Privilege::View, "listing datastores")?;
        let entry = self.datastores.entry(name)?;
        tokio::task::spawn_blocking(move || DatastoreView::of(entry))
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))
    }

    /// Adds a datastore; a share is mounted before this answers, and is
    /// saved (listed unreachable, with the reason) even when that fails.
    /// Mounting runs as root on the controller, hence administrators only.
    pub async fn add_datastore(
        &self,
        who: &Principal,
        input: DatastoreInput,
    ) -> Result<DatastoreView, OpsError> {
        let object = format!("datastore {}", input.name);
        let result = async {
            require(who, Privilege::ManageDatastores, "managing datastores")?;
            let datastores = self.datastores.clone();
            tokio::task::spawn_blocking(move || datastores.add(input).map(DatastoreView::of))
                .await
                .map_err(|e| OpsError::Internal(e.to_string()))?
                .map_err(OpsError::from)
        }
        .await;
        self.audited(who, "add datastore", &object, result).await
    }

    /// Removes a datastore that holds no backups (its files stay).
    pub async fn delete_datastore(&self, who: &Principal, name: &str) -> Result<(), OpsError> {
        let result = async {
            require(who, Privilege::ManageDatastores, "managing datastores")?;
            if let Some(p) = self
                .policies
                .all()
                .into_iter()
                .find(|p| p.datastore == name)
            {
                return Err(OpsError::Conflict(format!(
                    "backup policy {:?} uses datastore {name}",
                    p.name
                )));
            }
            let (datastores, name) = (self.datastores.clone(), name.to_string());
            tokio::task::spawn_blocking(move || datastores.remove(&name))
                .await
                .map_err(|e| OpsError::Internal(e.to_string()))?
                .map_err(OpsError::from)
        }
        .await;
        self.audited(
            who,
            "remove datastore",
            &format!("datastore {name}"),
            result,
        )
        .await
    }

    /// Mounts a share again, e.g. after its server came back.
    pub async fn mount_datastore(
        &self,
        who: &Principal,
        name: &str,
    ) -> Result<DatastoreView, OpsError> {
        let result = async {
            require(who, Privilege::ManageDatastores, "managing datastores")?;
            let (datastores, name) = (self.datastores.clone(), name.to_string());
            tokio::task::spawn_blocking(move || datastores.remount(&name).map(DatastoreView::of))
                .await
                .map_err(|e| OpsError::Internal(e.to_string()))?
                .map_err(OpsError::from)
        }
        .await;
        self.audited(who, "mount datastore", &format!("datastore {name}"), result)
            .await
    }

    /// Verifies a backup: re-reads every chunk it uses and checks its digest.
    /// Damaged chunks are quarantined so the next backup uploads them again;
    /// the job fails when anything is damaged or missing.
    pub async fn verify(
        self: &Arc<Self>,
        who: &Principal,
        reference: &str,
    ) -> Result<Job, OpsError> {
        let OpenedBackup {
            summary: backup,
            store,
            ..
        } = self.open_backup(who, reference).await?;
        let result = async {
            require(who, Privilege::Backup, "verifying backups")?;
            let job = self
                .jobs
                .create(NewJob {
                    kind: "verify",
                    description: format!(
                        "verify backup {} of {}",
                        backup.reference.id.as_str(),
                        backup.manifest.vm.name
                    ),
                    vm: Some(backup.manifest.vm.uuid.as_str().to_string()),
                    host: None,
                    user: who.user.clone(),
                })
                .await?;
            let (jobs, job_id, r) = (self.jobs.clone(), job.id, backup.reference.clone());
            tokio::spawn(async move {
                let _ = jobs.start(job_id).await;
                let (progress, reporter) = job::job_progress(jobs.clone(), job_id);
                let result = tokio::task::spawn_blocking(move || {
                    let mut report_progress = |done, total| progress(done, total);
                    let report = verify_backup(&store, &r.vm, &r.id, &mut report_progress)
                        .map_err(|e| e.to_string())?;
                    for d in &report.damaged {
                        if let Err(e) = store.chunks().quarantine(d) {
                            tracing::error!("cannot quarantine damaged chunk {d}: {e}");
                        }
                    }
                    if report.ok() {
                        Ok(())
                    } else {
                        Err(format!(
                            "backup is bad: {} damaged and {} missing chunks of {} checked",
                            report.damaged.len(),
                            report.missing.len(),
                            report.chunks_checked
                        ))
                    }
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                reporter.abort();
                if let Err(e) = &result {
                    tracing::warn!(job_id, "verify: {e}");
                }
                let _ = jobs.finish(job_id, result).await;
            });
            Ok(job)
        }
        .await;
        self.audited(who, "verify", &format!("backup {reference}"), result)
            .await
    }

    /// Every complete backup of a VM, oldest first, in every datastore.
    pub async fn vm_backups(
        &self,
        who: &Principal,
        vm_id: &str,
    ) -> Result<Vec<BackupSummary>, OpsError> {
        require(who, Privilege::View, "listing backups")?;
        let vm: VmUuid = vm_id
            .parse()
            .ok()
            .filter(|_| self.visible_uuid(who, vm_id))
            .ok_or_else(|| OpsError::NotFound(format!("no VM with id {vm_id}")))?;
        let stores = self.datastores.ready();
        tokio::task::spawn_blocking(move || {
            let wanted = stores
                .iter()
                .flat_map(|(name, store)| {
                    let ids = store.list_backups(&vm).unwrap_or_default();
                    ids.into_iter().map(|id| (name.clone(), vm.clone(), id))
                })
                .collect();
            summarize(&stores, wanted)
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()))
    }

    /// Every backup in every ready datastore of a VM the caller may see
    /// (one no longer in the inventory only for unrestricted callers), by
    /// datastore, VM and time.
    pub async fn all_backups(&self, who: &Principal) -> Result<Vec<BackupSummary>, OpsError> {
        require(who, Privilege::View, "listing backups")?;
        let stores = self.datastores.ready();
        let listed = {
            let stores = stores.clone();
            tokio::task::spawn_blocking(move || {
                stores
                    .iter()
                    .flat_map(|(name, store)| {
                        let all = store.list_all().unwrap_or_default();
                        all.into_iter().map(|(vm, id)| (name.clone(), vm, id))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))?
        };
        let wanted: Vec<_> = listed
            .into_iter()
            .filter(|(_, vm, _)| self.visible_uuid(who, vm.as_str()))
            .collect();
        tokio::task::spawn_blocking(move || summarize(&stores, wanted))
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))
    }

    /// One backup's manifest, validated against its indexes.
    pub async fn backup_manifest(
        &self,
        who: &Principal,
        reference: &str,
    ) -> Result<BackupSummary, OpsError> {
        Ok(self.open_backup(who, reference).await?.summary)
    }

    /// Opens a backup (manifest, indexes, validated against each other) with
    /// the datastore that holds it: once per operation.
    async fn open_backup(
        &self,
        who: &Principal,
        reference: &str,
    ) -> Result<OpenedBackup, OpsError> {
        require(who, Privilege::View, "viewing backups")?;
        let r = BackupRef::parse(reference)
            .filter(|r| self.visible_uuid(who, r.vm.as_str()))
            .ok_or_else(|| not_found(reference))?;
        let store = self
            .datastores
            .get(&r.datastore)
            .ok_or_else(|| not_found(reference))?;
        let (vm, id, s) = (r.vm.clone(), r.id.clone(), store.clone());
        let (manifest, indexes, verify, protected, boot) = tokio::task::spawn_blocking(move || {
            s.open_backup(&vm, &id).map(|(m, indexes)| {
                (
                    m,
                    indexes,
                    last_verify(&s, &vm, &id),
                    s.is_protected(&vm, &id),
                    last_boot_verify(&s, &vm, &id),
                )
            })
        })
        .await
        .map_err(|e| OpsError::Internal(e.to_string()))?
        .map_err(|e| match e {
            crate::backup::BackupError::Io { .. } => not_found(reference),
            other => OpsError::Conflict(format!("backup {reference} is damaged: {other}")),
        })?;
        Ok(OpenedBackup {
            summary: BackupSummary {
                reference: r,
                manifest,
                verify,
                protected,
                boot_verify: boot,
            },
            store,
            indexes,
        })
    }
}

/// The summaries (manifest, last verification, protection) of `wanted`
/// (datastore, VM, backup); one whose manifest cannot be read is left out.
/// Blocking.
fn summarize(
    stores: &[(String, std::sync::Arc<crate::backup::datastore::Datastore>)],
    wanted: Vec<(String, VmUuid, BackupId)>,
) -> Vec<BackupSummary> {
    wanted
        .into_iter()
        .filter_map(|(datastore, vm, id)| {
            let store = &stores.iter().find(|(n, _)| *n == datastore)?.1;
            let manifest = Manifest::read(&store.backup_dir(&vm, &id)).ok()?;
            Some(BackupSummary {
                verify: last_verify(store, &vm, &id),
                protected: store.is_protected(&vm, &id),
                boot_verify: last_boot_verify(store, &vm, &id),
                reference: BackupRef { datastore, vm, id },
                manifest,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::BackupRef;

    #[test]
    fn backup_refs_round_trip_and_refuse_junk() {
        let s = "local:0b6a1f3e-7a39-4f3c-9b7e-3f1e2d4c5b6a@2026-11-25T20:30:00Z";
        let r = BackupRef::parse(s).unwrap();
        assert_eq!(r.datastore, "local");
        assert_eq!(r.to_string(), s);
        assert!(BackupRef::parse("local:../../etc@2026-11-25T20:30:00Z").is_none());
        assert!(BackupRef::parse("local:0b6a1f3e-7a39-4f3c-9b7e-3f1e2d4c5b6a@yesterday").is_none());
        assert!(BackupRef::parse("nothing").is_none());
    }
}

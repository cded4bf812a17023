//! Hypervisor drivers: one per platform behind the [`Hypervisor`] trait.
//!
//! Drivers are blocking (they run the platform's own CLI tools); the link
//! calls them from `spawn_blocking` so the async runtime never waits on them.

use std::time::Duration;

use std::path::PathBuf;

use crate::metrics::counters::VmCounters;

use lifeboat_proto::{
    BackupMode, BackupRequest, BootCheckReport, BootCheckRequest, HostFacts, PowerAction,
    RestoreRequest, StartVmRequest, VmInfo,
};

pub mod libvirt;
pub mod sim;

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("no VM with UUID {0} on this host")]
    UnknownVm(String),
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("cannot parse hypervisor output: {0}")]
    Parse(String),
    #[error("{0}")]
    Refused(String),
}

pub trait Hypervisor: Send + Sync + Restorer {
    /// Short driver name reported to the controller (`libvirt`, `sim`, ...).
    fn driver(&self) -> &'static str;
    /// Host facts: hostname, hypervisor version, CPUs and memory.
    fn host_facts(&self) -> Result<HostFacts, HypervisorError>;
    /// Every VM defined on the host, running or not.
    fn inventory(&self) -> Result<Vec<VmInfo>, HypervisorError>;
    /// Cumulative statistics of every running VM, read in one go.
    fn vm_counters(&self) -> Result<Vec<VmCounters>, HypervisorError> {
        Ok(Vec::new())
    }
    /// Runs one power action and returns once the hypervisor has done it.
    /// `shutdown` asks the guest (ACPI) and powers off after `timeout`.
    fn power(
        &self,
        uuid: &str,
        action: PowerAction,
        timeout: Duration,
    ) -> Result<(), HypervisorError>;
    /// Exports the VM's disks over NBD for a backup: point-in-time views of a
    /// running VM (creating `request.checkpoint` for the next incremental), or
    /// the disks of a stopped VM as they are.
    fn begin_backup(
        &self,
        uuid: &str,
        request: &BackupRequest,
    ) -> Result<Box<dyn BackupExports>, HypervisorError> {
        let _ = (uuid, request);
        Err(HypervisorError::Refused(format!(
            "the {} driver cannot back up VMs",
            self.driver()
        )))
    }
    /// Self-fence one VM: stop it now, without asking the guest. Must not
    /// depend on the management daemon being healthy.
    fn hard_stop(&self, uuid: &str) -> Result<(), HypervisorError> {
        Err(self.no_failover(uuid))
    }
    /// Defines a failed-over VM from its cached configuration and brings it
    /// to the requested state. Idempotent: a VM already defined here with
    /// that UUID is redefined only while stopped, and one already in the
    /// requested state is left alone.
    fn start_from_config(&self, request: &StartVmRequest) -> Result<(), HypervisorError> {
        Err(self.no_failover(&request.uuid))
    }
    /// Forgets a stopped VM's definition; its disks stay where they are.
    fn undefine_keeping_disks(&self, uuid: &str) -> Result<(), HypervisorError> {
        Err(self.no_failover(uuid))
    }
    /// Boots a boot-verification sandbox, waits for its sign of life,
    /// then removes it with its files (see [`lifeboat_proto::SANDBOX_PREFIX`]).
    fn boot_check(&self, request: &BootCheckRequest) -> Result<BootCheckReport, HypervisorError> {
        Err(HypervisorError::Refused(format!(
            "the {} driver cannot boot-verify backups (VM {})",
            self.driver(),
            request.uuid
        )))
    }
    /// Removes sandboxes an earlier run left mid-check; called at start.
    fn sweep_sandboxes(&self) -> Result<(), HypervisorError> {
        Ok(())
    }
    #[doc(hidden)]
    fn no_failover(&self, uuid: &str) -> HypervisorError {
        HypervisorError::Refused(format!(
            "the {} driver takes no part in failover (VM {uuid})",
            self.driver()
        ))
    }
}

/// Restores need a hypervisor that can define VMs.
pub trait Restorer {
    /// Refuses, before anything is written, a restore that would clash with
    /// what is on the host: an existing VM (unless replacing a stopped one),
    /// a VM of the same name, a missing network, an existing file.
    fn check_restore(&self, request: &RestoreRequest) -> Result<(), HypervisorError>;
    /// Moves the finished images (temp, final path) into place and defines
    /// (and optionally starts) the VM.
    fn define_restored(
        &self,
        request: &RestoreRequest,
        images: &[(PathBuf, String)],
    ) -> Result<(), HypervisorError>;

    /// Defines and starts the VM of an instant restore from its
    /// `instant_config`, on images backed by the backup's exports. On error
    /// the VM is not defined.
    fn start_instant(&self, request: &RestoreRequest) -> Result<(), HypervisorError> {
        Err(HypervisorError::Refused(format!(
            "this host cannot run {} from its backup",
            request.name
        )))
    }

    /// Copies what disk `target` of the running VM `uuid` still reads from
    /// its backup into its own image (at most `bandwidth_mib` MiB/s), then
    /// drops the backing. `progress` gets (bytes copied, bytes to copy).
    fn copy_instant_disk(
        &self,
        uuid: &str,
        target: &str,
        _bandwidth_mib: Option<u64>,
        _progress: &dyn Fn(u64, u64),
    ) -> Result<(), HypervisorError> {
        Err(HypervisorError::Refused(format!(
            "this host cannot copy disk {target} of {uuid}"
        )))
    }

    /// Replaces the instant definition with `config`, the VM on its own
    /// disks, once every image stands alone.
    fn finish_instant(&self, request: &RestoreRequest) -> Result<(), HypervisorError> {
        Err(HypervisorError::Refused(format!(
            "this host cannot finish the instant restore of {}",
            request.name
        )))
    }
}

/// One disk exported for a backup.
#[derive(Debug, Clone)]
pub struct ExportedDisk {
    pub target: String,
    /// Format of the disk image (`qcow2`, `raw`).
    pub format: String,
    pub socket: PathBuf,
    pub export: String,
    /// Meta context listing what changed since the previous checkpoint,
    /// when this run is incremental.
    pub dirty_context: Option<String>,
}

/// What a backup run exports, and what kind of run it is.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub disks: Vec<ExportedDisk>,
    /// Full or incremental: what this run really is.
    pub mode: BackupMode,
    /// The checkpoint this run created (or keeps recording), if any.
    pub checkpoint: Option<String>,
    /// Whether the guest's filesystems were frozen for the point in time.
    pub frozen: bool,
}

/// A backup in progress on the hypervisor: its exports, until finished.
pub trait BackupExports: Send + Sync {
    fn info(&self) -> &ExportInfo;
    /// Ends the backup. After a failed run the new checkpoint is removed, so
    /// the next incremental never builds on a backup that does not exist.
    fn finish(self: Box<Self>, succeeded: bool) -> Result<(), HypervisorError>;
}

//! Instant restores on libvirt: start the VM on images backed by the
//! agent's NBD exports of the backup, copy the rest with `virsh blockpull`
//! (QEMU's block-stream) while the guest runs, and redefine it on its own
//! disks once no image has a backing any more.

use std::time::Duration;

use lifeboat_proto::{instant_socket, RestoreRequest};

use super::LibvirtDriver;
use crate::hypervisor::HypervisorError;

/// How often a copy's progress is read.
const POLL: Duration = Duration::from_millis(500);

fn failed(message: String) -> HypervisorError {
    HypervisorError::Command {
        command: "instant restore".into(),
        message,
    }
}

/// `(copied, total)` from `virsh blockjob --raw` (` cur=12` and ` end=34`
/// lines); `None` when no job runs.
fn parse_progress(out: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Some((field("cur")?, field("end")?))
}

impl LibvirtDriver {
    pub(super) fn start_instant_vm(&self, r: &RestoreRequest) -> Result<(), HypervisorError> {
        let config = r
            .instant_config
            .as_deref()
            .ok_or_else(|| HypervisorError::Refused("not an instant restore".into()))?;
        self.define_from(config)?;
        if let Err(e) = self.virsh_on(&r.uuid, "start", &[]) {
            let _ = self.virsh_on(&r.uuid, "undefine", &[]);
            return Err(e);
        }
        Ok(())
    }

    /// Whether the running VM still reads disk `target` from its export.
    fn still_backed(&self, uuid: &str, target: &str) -> Result<bool, HypervisorError> {
        let xml = self.virsh_on(uuid, "dumpxml", &[])?;
        Ok(xml.contains(&instant_socket(uuid, target)))
    }

    pub(super) fn copy_disk(
        &self,
        uuid: &str,
        target: &str,
        bandwidth_mib: Option<u64>,
        progress: &dyn Fn(u64, u64),
    ) -> Result<(), HypervisorError> {
        if !self.still_backed(uuid, target)? {
            return Ok(());
        }
        let limit = bandwidth_mib.filter(|b| *b > 0).map(|b| b.to_string());
        let mut args = vec!["--path", target];
        if let Some(limit) = &limit {
            args.extend(["--bandwidth", limit]);
        }
        self.virsh_on(uuid, "blockpull", &args)?;
        loop {
            std::thread::sleep(POLL);
            let out = self.virsh_on(uuid, "blockjob", &["--path", target, "--raw"])?;
            if let Some((cur, end)) = parse_progress(&out) {
                progress(cur, end);
                continue;
            }
            // The job is over: it either dropped the backing or failed.
            return if self.still_backed(uuid, target)? {
                Err(failed(format!(
                    "the copy of disk {target} stopped before its end (see the host's libvirt log)"
                )))
            } else {
                Ok(())
            };
        }
    }

    pub(super) fn finish_instant_vm(&self, r: &RestoreRequest) -> Result<(), HypervisorError> {
        for disk in &r.disks {
            if self.still_backed(&r.uuid, &disk.target)? {
                return Err(failed(format!(
                    "disk {} still reads from the backup",
                    disk.target
                )));
            }
        }
        // The running VM is unchanged; its next start uses this definition.
        self.define_from(&r.config)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_progress;

    #[test]
    fn reads_block_pull_progress() {
        let raw = " type=Block Pull\n bandwidth=1\n cur=1572864\n end=67108864\n\n";
        assert_eq!(parse_progress(raw), Some((1572864, 67108864)));
        assert_eq!(parse_progress("No current block job for vda\n"), None);
        assert_eq!(parse_progress(" type=Block Pull\n cur=x\n end=1\n"), None);
    }
}

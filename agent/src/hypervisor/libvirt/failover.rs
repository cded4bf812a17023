//! The libvirt side of failover: fencing a VM without relying on libvirtd,
//! starting a VM elsewhere from its cached definition, and forgetting the
//! stale definition a returning host still has.

use std::path::Path;

use lifeboat_proto::{PowerState, StartVmRequest};

use super::{is_uuid, LibvirtDriver};
use crate::hypervisor::HypervisorError;

impl LibvirtDriver {
    /// SIGKILLs every QEMU of this host (this network namespace) started
    /// with `-uuid UUID`. The kill needs no daemon, so a fence works when
    /// libvirtd hangs; libvirtd sees its QEMU die and marks the VM shut off
    /// by itself (`virsh destroy` would take a second or two more).
    pub(super) fn hard_stop_impl(&self, uuid: &str) -> Result<(), HypervisorError> {
        if !is_uuid(uuid) {
            return Err(HypervisorError::UnknownVm(uuid.to_string()));
        }
        kill_qemu_of(uuid)
            .map(drop)
            .map_err(|message| HypervisorError::Command {
                command: format!("kill the QEMU of {uuid}"),
                message,
            })
    }

    pub(super) fn start_from_config_impl(
        &self,
        request: &StartVmRequest,
    ) -> Result<(), HypervisorError> {
        if !is_uuid(&request.uuid) {
            return Err(HypervisorError::UnknownVm(request.uuid.clone()));
        }
        let current = self.domstate(&request.uuid).ok();
        if current == Some(request.state) {
            return Ok(()); // a resumed failover finds its work done
        }
        if matches!(current, Some(PowerState::Running | PowerState::Paused)) {
            return Err(HypervisorError::Refused(format!(
                "VM {} already runs on this host",
                request.uuid
            )));
        }
        self.define_from(&request.config)?;
        match request.state {
            PowerState::Running => self.virsh_on(&request.uuid, "start", &[]).map(drop),
            PowerState::Paused => self
                .virsh_on(&request.uuid, "start", &["--paused"])
                .map(drop),
            PowerState::Stopped | PowerState::Unknown => Ok(()),
        }
    }

    pub(super) fn undefine_keeping_disks_impl(&self, uuid: &str) -> Result<(), HypervisorError> {
        if !is_uuid(uuid) {
            return Err(HypervisorError::UnknownVm(uuid.to_string()));
        }
        if matches!(
            self.domstate(uuid)?,
            PowerState::Running | PowerState::Paused
        ) {
            return Err(HypervisorError::Refused(format!(
                "VM {uuid} runs here; a running VM is never undefined"
            )));
        }
        self.virsh_on(
            uuid,
            "undefine",
            &[
                "--checkpoints-metadata",
                "--snapshots-metadata",
                "--managed-save",
            ],
        )
        .map(drop)
    }
}

/// Kills the QEMU processes in our network namespace whose argv has
/// `-uuid UUID`; returns how many. Other namespaces are other hosts when
/// several share one kernel (tests), so they are left alone.
fn kill_qemu_of(uuid: &str) -> Result<usize, String> {
    let own_net = std::fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if std::fs::read_link(dir.join("ns/net")).ok().as_ref() != Some(&own_net) {
            continue;
        }
        if !runs_vm(&dir, uuid) {
            continue;
        }
        let pid = nix::unistd::Pid::from_raw(pid);
        match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => killed += 1,
            Err(e) => return Err(format!("kill -9 {pid}: {e}")),
        }
    }
    Ok(killed)
}

fn runs_vm(proc_dir: &Path, uuid: &str) -> bool {
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let is_qemu = args
        .next()
        .and_then(|a| a.rsplit(|b| *b == b'/').next())
        .is_some_and(|name| name.starts_with(b"qemu-system") || name.starts_with(b"qemu-kvm"));
    is_qemu && {
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        argv.windows(2)
            .any(|w| w[0] == b"-uuid" && w[1].eq_ignore_ascii_case(uuid.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_qemu_with_that_uuid_is_a_match() {
        let dir = std::env::temp_dir().join(format!("lifeboat-fence-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let uuid = "0c1d2e3f-0000-4000-8000-000000000001";
        let write = |argv: &[&str]| std::fs::write(dir.join("cmdline"), argv.join("\0")).unwrap();
        write(&["/usr/bin/qemu-system-x86_64", "-name", "x", "-uuid", uuid]);
        assert!(runs_vm(&dir, uuid));
        assert!(runs_vm(&dir, &uuid.to_uppercase()));
        write(&["/usr/bin/qemu-system-x86_64", "-uuid", "another"]);
        assert!(!runs_vm(&dir, uuid));
        write(&["/usr/bin/bash", "-c", "echo -uuid", uuid]);
        assert!(!runs_vm(&dir, uuid));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

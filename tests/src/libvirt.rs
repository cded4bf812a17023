//! A libvirtd at `qemu:///system`, driven with `virsh` like the agent: the
//! machine's own ([`Libvirt::ensure`], started by hand when it is not running:
//! there is no systemd), or that of one simulated host of a
//! [`crate::Cluster`] ([`crate::Host::libvirt`]), whose commands run inside
//! the host's namespaces through `nsenter`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Once};
use std::time::Duration;

use crate::cluster::{HostNs, SharedStorage};
use crate::host_lock::HostLock;
use crate::tiny_vm::TinyVm;
use crate::wait::poll_until;

/// Every domain and disk the harness makes is named with this prefix, then
/// the test process id, so leftovers of a killed run can be found.
pub(crate) const NAME_PREFIX: &str = "lbe2e-";
/// A directory the `libvirt-qemu` user can traverse, for test VM disks.
pub(crate) const IMAGE_DIR: &str = "/var/lib/libvirt/images/lifeboat-e2e";
const SYSTEM_URI: &str = "qemu:///system";
const LIBVIRTD_LOG: &str = "/var/log/libvirt/libvirtd.log";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A handle on one libvirtd; cheap to clone. A host's handle follows the
/// host across [`crate::Host::restart`], and its commands fail (never reach
/// another libvirtd) while the host is down.
#[derive(Clone, Debug)]
pub struct Libvirt {
    uri: String,
    /// `None` for the machine's own libvirtd.
    in_host: Option<InHost>,
}

/// Where a cluster host's libvirtd lives, and the storage all hosts share.
#[derive(Clone, Debug)]
pub(crate) struct InHost {
    pub(crate) host: Arc<HostNs>,
    pub(crate) storage: Arc<SharedStorage>,
}

impl Libvirt {
    /// Makes sure the system libvirtd answers at `qemu:///system`, starting
    /// `virtlogd` and `libvirtd` if it does not (as root, without systemd).
    /// Once per test process it also lets `libvirt-qemu` use /dev/kvm, as
    /// udev would, and removes domains and disks of dead test processes.
    pub fn ensure() -> Libvirt {
        let libvirt = Libvirt {
            uri: SYSTEM_URI.to_string(),
            in_host: None,
        };
        if !libvirt.answers() {
            let _lock = HostLock::acquire("libvirtd");
            if !libvirt.answers() {
                start_daemons();
                let what = format!("libvirtd to answer at {SYSTEM_URI} (see {LIBVIRTD_LOG})");
                poll_until(&what, START_TIMEOUT, || libvirt.try_virsh(&["uri"]));
            }
        }
        static HOST_SETUP: Once = Once::new();
        HOST_SETUP.call_once(|| {
            let _lock = HostLock::acquire("libvirt-host-setup");
            let_qemu_use_kvm();
            libvirt.sweep_leftovers();
        });
        libvirt
    }

    /// The libvirtd of a cluster host, at `qemu:///system` inside it.
    pub(crate) fn in_host(host: Arc<HostNs>, storage: Arc<SharedStorage>) -> Libvirt {
        Libvirt {
            uri: SYSTEM_URI.to_string(),
            in_host: Some(InHost { host, storage }),
        }
    }

    pub(crate) fn host_context(&self) -> Option<&InHost> {
        self.in_host.as_ref()
    }

    /// The URI as seen from where virsh runs: for a cluster host, inside it.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The cluster host this libvirtd runs in (`lbh1`...), or `None` for
    /// the machine's own.
    pub fn host_name(&self) -> Option<&str> {
        self.in_host.as_ref().map(|h| h.host.name.as_str())
    }

    /// A command that runs `program` where this libvirtd runs: as is for the
    /// machine's own, through `nsenter -t ANCHOR -m -n` for a cluster host.
    /// `Err` while the host is down.
    pub fn command(&self, program: &str) -> Result<Command, String> {
        match &self.in_host {
            None => Ok(Command::new(program)),
            Some(in_host) => in_host.host.command(program),
        }
    }

    /// Runs `virsh -c URI ARGS...` and returns its stdout; panics with its
    /// stderr if it fails.
    pub fn virsh(&self, args: &[&str]) -> String {
        self.try_virsh(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Libvirt::virsh`], but a failure is an `Err` with the stderr.
    pub fn try_virsh(&self, args: &[&str]) -> Result<String, String> {
        let on = match self.host_name() {
            Some(host) => format!(" on {host}"),
            None => String::new(),
        };
        let output = self
            .command("virsh")
            .map_err(|e| format!("virsh {}{on}: {e}", args.join(" ")))?
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .output()
            .map_err(|e| format!("virsh {}{on}: cannot run: {e}", args.join(" ")))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "virsh {}{on} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// The domain's state as virsh words it: `running`, `shut off`, `paused`...
    pub fn domstate(&self, name: &str) -> String {
        self.virsh(&["domstate", name]).trim().to_string()
    }

    /// Defines (does not start) a 64 MiB, one-vCPU VM with an empty 64 MiB
    /// qcow2 disk `vda` and one NIC; see [`TinyVm`]. On a cluster host the
    /// disk is on the cluster's shared storage.
    pub fn define_tiny_vm(&self, label: &str) -> TinyVm {
        TinyVm::define(self.clone(), label)
    }

    /// Like [`Libvirt::define_tiny_vm`], but the VM boots a real Linux
    /// ([`crate::LinuxGuest`]) that runs a guest agent.
    pub fn define_vm_with_guest_agent(&self, label: &str, guest: &crate::LinuxGuest) -> TinyVm {
        TinyVm::define_with_guest(self.clone(), label, guest)
    }

    /// Destroys and undefines `name` (with its snapshot and checkpoint
    /// metadata) if it exists; its disks stay. For domains a test made
    /// through the product, e.g. a restore as a new VM. Panics only if the
    /// domain is still there afterwards.
    /// Waits until the guest agent of domain `name` answers a ping (a
    /// booting guest starts it last).
    pub fn wait_guest_agent(&self, name: &str, timeout: std::time::Duration) {
        let ping = r#"{"execute":"guest-ping"}"#;
        crate::wait_until("the guest agent to answer", timeout, || {
            self.try_virsh(&["qemu-agent-command", name, "--timeout", "2", ping])
                .is_ok()
        });
    }

    pub fn remove_domain(&self, name: &str) {
        if let Err(error) = self.try_remove_domain(name) {
            if self.try_virsh(&["domstate", name]).is_ok() {
                panic!("could not remove domain {name}: {error}");
            }
        }
    }

    /// Like [`Libvirt::remove_domain`], but a failure is an `Err`, not a
    /// panic. A domain that is not defined counts as removed; a libvirtd
    /// that does not answer (a cluster host that is down) is an `Err`.
    pub fn try_remove_domain(&self, name: &str) -> Result<(), String> {
        let _ = self.try_virsh(&["destroy", name]);
        let undefine = [
            "undefine",
            name,
            "--managed-save",
            "--snapshots-metadata",
            "--checkpoints-metadata",
        ];
        match self.try_virsh(&undefine) {
            Ok(_) => Ok(()),
            Err(error) => match self.try_virsh(&["domstate", name]) {
                Ok(_) => Err(error),
                Err(_) if self.answers() => Ok(()),
                Err(_) => Err(error),
            },
        }
    }

    /// The names of all domains this libvirtd knows, running or not.
    pub fn domain_names(&self) -> Vec<String> {
        self.virsh(&["list", "--all", "--name"])
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// True if the libvirtd answers (`virsh uri` succeeds).
    pub fn answers(&self) -> bool {
        self.try_virsh(&["uri"]).is_ok()
    }

    /// Removes `lbe2e-<pid>-...` domains and disks whose test process is
    /// gone, from the machine's own libvirtd and [`IMAGE_DIR`] only: cluster
    /// hosts keep their domain definitions in their own `/etc/libvirt/qemu`
    /// and their disks in the shared directory, which [`crate::Cluster`]
    /// sweeps itself, so the two never touch each other's.
    fn sweep_leftovers(&self) {
        for name in self.domain_names().iter().filter(|n| is_leftover(n)) {
            self.remove_domain(name);
        }
        if let Ok(entries) = std::fs::read_dir(IMAGE_DIR) {
            for entry in entries.flatten() {
                if is_leftover(&entry.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// `"kvm"` when /dev/kvm can be opened read-write, else `"qemu"` (TCG);
/// `LIFEBOAT_E2E_VIRT_TYPE` overrides, e.g. to test under TCG on a KVM host.
pub fn virt_type() -> String {
    if let Ok(forced) = std::env::var("LIFEBOAT_E2E_VIRT_TYPE") {
        return forced;
    }
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if kvm.is_ok() { "kvm" } else { "qemu" }.to_string()
}

/// `virtlogd` first: QEMU's console and log output go through it.
fn start_daemons() {
    for daemon in ["virtlogd", "libvirtd"] {
        // `-d` forks into the background once the daemon has started. It
        // fails if another one holds the pid file, which is just as good.
        let output = Command::new(daemon).arg("-d").output().unwrap_or_else(|e| {
            panic!("cannot run {daemon} (is libvirt-daemon-system installed?): {e}")
        });
        if !output.status.success() {
            eprintln!(
                "{daemon} -d: {}; {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
}

/// Debian's udev rules give /dev/kvm to group `kvm`, which `libvirt-qemu`
/// is in; without udev (containers, this build machine) it can be root-only,
/// and QEMU then fails with "Could not access KVM kernel module".
pub(crate) fn let_qemu_use_kvm() {
    let kvm = Path::new("/dev/kvm");
    let Ok(metadata) = std::fs::metadata(kvm) else {
        return;
    };
    if metadata.permissions().mode() & 0o077 != 0 {
        return; // someone (udev, an admin) already decided who may use it
    }
    let chgrp = Command::new("chgrp").arg("kvm").arg(kvm).status();
    let chmod = Command::new("chmod").arg("0660").arg(kvm).status();
    if !matches!((chgrp, chmod), (Ok(a), Ok(b)) if a.success() && b.success()) {
        eprintln!("could not give /dev/kvm to group kvm; VMs may fail to start under KVM");
    }
}

/// True for `lbe2e-<pid>-...` when no process `<pid>` exists.
pub(crate) fn is_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
        return false;
    };
    let pid = rest.split('-').next().unwrap_or("");
    pid.parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// A domain a test had Lifeboat make (a restore as a new VM), removed with
/// its files when the guard drops.
pub struct RestoredVm<'a> {
    pub libvirt: &'a Libvirt,
    pub name: String,
    pub files: Vec<std::path::PathBuf>,
}

impl Drop for RestoredVm<'_> {
    fn drop(&mut self) {
        self.libvirt.remove_domain(&self.name);
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_dead_processes_are_leftovers() {
        let own = format!("{NAME_PREFIX}{}-vm-0-1", std::process::id());
        assert!(!is_leftover(&own));
        assert!(!is_leftover("production-vm"));
        assert!(!is_leftover("lbe2e-notapid-x"));
        // Linux pids stay below 2^22.
        assert!(is_leftover("lbe2e-4999999-vm-0-1.qcow2"));
    }
}

//! A tiny real VM for tests: 64 MiB RAM, one vCPU, no OS, an empty 64 MiB
//! qcow2 disk `vda` and one user-mode NIC (needs no libvirt network). Its
//! guard destroys and undefines it and deletes its disk on drop.
//!
//! On the machine's own libvirtd the disk is in [`IMAGE_DIR`]. On a cluster
//! host ([`crate::Host::define_tiny_vm`]) it is on the cluster's shared
//! storage: created from the root side in [`crate::Cluster::shared_dir`], and
//! named in the domain XML by the defining host's own path to it
//! ([`crate::Host::shared_mount`]).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::libvirt::{virt_type, Libvirt, IMAGE_DIR, NAME_PREFIX};
use crate::scratch::{safe_label, unique_suffix};

const MEMORY_MIB: u32 = 64;
const DISK_SIZE: &str = "64M";
/// QEMU's path to the `vda` virtio block device, as libvirt names it; the
/// device path, not the node name, or `qemu-io` refuses to write.
const VDA_DEVICE: &str = "/machine/peripheral/virtio-disk0/virtio-backend";

pub struct TinyVm {
    libvirt: Libvirt,
    name: String,
    uuid: String,
    /// The disk as the test process sees it.
    disk: PathBuf,
    /// The disk as the defining libvirtd sees it: the path in the XML.
    domain_disk: PathBuf,
    mac: String,
    /// Boots a real Linux with a guest agent instead of nothing.
    guest: Option<crate::guest::LinuxGuest>,
}

impl TinyVm {
    pub(crate) fn define(libvirt: Libvirt, label: &str) -> TinyVm {
        Self::define_on(libvirt, label, false)
    }

    /// On a cluster host: the disk in the host's own image directory.
    pub(crate) fn define_local(libvirt: Libvirt, label: &str) -> TinyVm {
        Self::define_on(libvirt, label, true)
    }

    /// On the machine's own libvirtd: a VM that boots `guest` (256 MiB,
    /// a guest agent channel), its disk blank like a tiny VM's.
    pub(crate) fn define_with_guest(
        libvirt: Libvirt,
        label: &str,
        guest: &crate::guest::LinuxGuest,
    ) -> TinyVm {
        Self::define_full(libvirt, label, false, Some(guest.clone()))
    }

    fn define_on(libvirt: Libvirt, label: &str, host_local: bool) -> TinyVm {
        Self::define_full(libvirt, label, host_local, None)
    }

    fn define_full(
        libvirt: Libvirt,
        label: &str,
        host_local: bool,
        guest: Option<crate::guest::LinuxGuest>,
    ) -> TinyVm {
        // The pid right after the prefix: see `Libvirt::sweep_leftovers`.
        let name = format!("{NAME_PREFIX}{}-{}", unique_suffix(), safe_label(label));
        let file = format!("{name}.qcow2");
        let (disk, domain_disk) = match libvirt.host_context() {
            Some(in_host) if host_local => {
                let images = in_host.host.local_images.get().expect("host images");
                let in_host_dir = Path::new("/var/lib/libvirt/images");
                (images.join(&file), in_host_dir.join(&file))
            }
            Some(in_host) => (
                in_host.storage.dir.join(&file),
                in_host.host.shared_mount.join(&file),
            ),
            None => {
                create_image_dir();
                let disk = Path::new(IMAGE_DIR).join(&file);
                (disk.clone(), disk)
            }
        };
        let mut vm = TinyVm {
            libvirt,
            mac: mac_for(&name),
            uuid: String::new(),
            disk,
            domain_disk,
            name,
            guest,
        };
        // A disk-booting guest's disk starts as its root image; any other
        // is blank.
        let mut qemu_img = Command::new("qemu-img");
        match vm.guest.as_ref().and_then(|g| g.root_image.as_ref()) {
            Some(root) => qemu_img
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(root)
                .arg(&vm.disk),
            None => qemu_img
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&vm.disk)
                .arg(DISK_SIZE),
        };
        let output = qemu_img
            .output()
            .unwrap_or_else(|e| panic!("cannot run qemu-img (is qemu-utils installed?): {e}"));
        assert!(
            output.status.success(),
            "qemu-img create {}: {}",
            vm.disk.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        // Written next to the disk, where the defining libvirtd sees it too.
        let xml_path = vm.disk.with_extension("xml");
        std::fs::write(&xml_path, vm.domain_xml())
            .unwrap_or_else(|e| panic!("write {}: {e}", xml_path.display()));
        let defined = vm.libvirt.try_virsh(&[
            "define",
            &vm.domain_disk.with_extension("xml").to_string_lossy(),
        ]);
        let _ = std::fs::remove_file(&xml_path);
        defined.unwrap_or_else(|e| panic!("{e}"));
        vm.uuid = vm.libvirt.virsh(&["domuuid", &vm.name]).trim().to_string();
        vm
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The qcow2 disk behind `vda`, as this test process sees it (for a VM
    /// on a cluster host: in [`crate::Cluster::shared_dir`]).
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// The disk's file name, `lbe2e-....qcow2`: the same on every host, and
    /// what [`crate::DoubleRunMonitor`] looks for in QEMU command lines.
    pub fn disk_file_name(&self) -> &str {
        self.disk
            .file_name()
            .and_then(|name| name.to_str())
            .expect("disk names are built from safe ASCII")
    }

    /// The disk's path in the domain XML: the defining host's own path to
    /// it (for the machine's own libvirtd, the same as [`TinyVm::disk`]).
    pub fn domain_disk(&self) -> &Path {
        &self.domain_disk
    }

    /// The libvirtd the VM was defined on.
    pub fn libvirt(&self) -> &Libvirt {
        &self.libvirt
    }

    pub fn mac(&self) -> &str {
        &self.mac
    }

    pub fn start(&self) {
        self.libvirt.virsh(&["start", &self.name]);
    }

    /// Hard power-off.
    pub fn destroy(&self) {
        self.libvirt.virsh(&["destroy", &self.name]);
    }

    /// `running`, `shut off`, ...
    pub fn state(&self) -> String {
        self.libvirt.domstate(&self.name)
    }

    /// Writes `len` bytes of `pattern` at `offset` of the stopped VM's disk
    /// image, from outside (`len` in qemu-io units: `4M`).
    pub fn write_offline(&self, pattern: u8, offset: u64, len: &str) {
        crate::image::write_image_pattern(&self.disk, pattern, offset, len);
    }

    /// Writes `len` bytes of `pattern` at `offset` of `vda` while the VM
    /// runs, as a guest would (through QEMU's block layer, so a backup in
    /// progress sees it as a guest write). `len` takes qemu-io units: `1M`.
    pub fn write_pattern(&self, pattern: u8, offset: u64, len: &str) {
        self.hmp_qemu_io(&format!("write -P {pattern:#04x} {offset} {len}"));
    }

    /// Runs a qemu-io command on `vda` through QEMU's monitor.
    fn hmp_qemu_io(&self, io_command: &str) {
        let command = format!("qemu-io -d {VDA_DEVICE} \"{io_command}\"");
        let output = self
            .libvirt
            .virsh(&["qemu-monitor-command", &self.name, "--hmp", &command]);
        // HMP answers nothing on success (qemu-io's report goes to QEMU's
        // log) and reports errors as text, with a zero exit status.
        assert!(
            output.trim().is_empty(),
            "{command} on {}: {}",
            self.name,
            output.trim()
        );
    }

    /// Flushes `vda` as a guest's flush would: what was written before is
    /// on the disk file (qcow2 metadata included) even if QEMU is then
    /// killed, e.g. with its host.
    pub fn flush_disk(&self) {
        self.hmp_qemu_io("flush");
    }

    fn domain_xml(&self) -> String {
        let (memory, os, guest_devices) = match &self.guest {
            None => (MEMORY_MIB, "<boot dev='hd'/>".to_string(), String::new()),
            Some(g) => {
                // A disk-booting guest has a display too, for screenshots.
                let (console, video) = match g.root_image {
                    Some(_) => ("console=tty0 ", "<video><model type='vga'/></video>"),
                    None => ("", ""),
                };
                (
                    256,
                    format!(
                        "<kernel>{}</kernel><initrd>{}</initrd><cmdline>{console}console=ttyS0 panic=-1</cmdline>",
                        g.kernel.display(),
                        g.initrd.display()
                    ),
                    format!(
                        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <serial type='pty'/>{video}"
                    ),
                )
            }
        };
        // A real kernel runs under TCG: nested KVM on some build machines
        // fails to emulate its `lock cmpxchg16b` ("KVM internal error").
        let virt_type = match (&self.guest, std::env::var("LIFEBOAT_E2E_VIRT_TYPE")) {
            (Some(_), Err(_)) => "qemu".to_string(),
            _ => virt_type(),
        };
        format!(
            "<domain type='{virt_type}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type>{os}</os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>
    {guest_devices}
  </devices>
</domain>
",
            name = self.name,
            disk = self.domain_disk.display(),
            mac = self.mac,
        )
    }
}

/// On the machine's own libvirtd: destroys and undefines the VM (panics if
/// that fails) and deletes its disk. On a cluster host: destroys and
/// undefines it on every host of the cluster that is up and knows it (a
/// failover may have moved it), reporting what it could not remove, then
/// deletes its disk. [`crate::Cluster`]'s own drop removes what is left.
impl Drop for TinyVm {
    fn drop(&mut self) {
        match self.libvirt.host_context() {
            None => self.libvirt.remove_domain(&self.name),
            Some(in_host) => {
                for host in &in_host.storage.hosts {
                    if !host.is_up() {
                        continue;
                    }
                    let libvirt = Libvirt::in_host(host.clone(), in_host.storage.clone());
                    if let Err(error) = libvirt.try_remove_domain(&self.name) {
                        eprintln!("could not remove {} from {}: {error}", self.name, host.name);
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&self.disk);
    }
}

/// A locally administered MAC in QEMU's 52:54:00 range, fixed per name.
fn mac_for(name: &str) -> String {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    let [a, b, c, ..] = hasher.finish().to_le_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

fn create_image_dir() {
    std::fs::create_dir_all(IMAGE_DIR).unwrap_or_else(|e| panic!("create {IMAGE_DIR}: {e}"));
    std::fs::set_permissions(IMAGE_DIR, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {IMAGE_DIR}: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_and_in_the_qemu_range() {
        let mac = mac_for("lbe2e-1-a");
        assert_eq!(mac, mac_for("lbe2e-1-a"));
        assert!(mac.starts_with("52:54:00:") && mac.len() == 17, "{mac}");
    }
}

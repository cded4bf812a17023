//! A minimal real Linux guest for tests that need one: Debian's cloud
//! kernel and an initramfs with busybox and Debian's `qemu-guest-agent`,
//! which makes a filesystem on the VM's disk, mounts it and runs the guest
//! agent on its virtio-serial channel. Built once per machine from the
//! Debian packages (`apt-get download`) and kept in a cache directory the
//! `libvirt-qemu` user can read.

use std::path::{Path, PathBuf};

use crate::host_lock::HostLock;
use crate::libvirt::IMAGE_DIR;
use crate::process::run_checked as output;
use crate::scratch::ScratchDir;

/// Where `tests/install-deps.sh` puts the guest's Debian packages.
const GUEST_DEBS: &str = "/var/cache/lifeboat-e2e/guest-debs";

/// Modules the guest loads, in dependency order.
const MODULES: [&str; 7] = [
    "virtio/virtio_ring.ko",
    "virtio/virtio.ko",
    "virtio/virtio_pci_legacy_dev.ko",
    "virtio/virtio_pci_modern_dev.ko",
    "virtio/virtio_pci.ko",
    "block/virtio_blk.ko",
    "char/virtio_console.ko",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_console; do
    insmod /lib/modules/$m.ko
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mke2fs -q /dev/vda && mount -t ext4 /dev/vda /mnt && echo guest-data > /mnt/hello
port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/$(basename $p)
done
echo "lifeboat-guest: disk $(grep -c vda /proc/mounts) mounted, agent on $port"
mkdir -p /run /var/run
/usr/sbin/qemu-ga -m virtio-serial -p $port &
exec sleep 2147483647
"#;

/// A kernel and initramfs for a VM with a guest agent.
#[derive(Clone, Debug)]
pub struct LinuxGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl LinuxGuest {
    /// The cached guest, built first if needed (a minute, once per machine).
    pub fn ensure() -> LinuxGuest {
        let dir = Path::new(IMAGE_DIR).join("guest");
        let guest = LinuxGuest {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.gz"),
        };
        if guest.initrd.is_file() && guest.kernel.is_file() {
            return guest;
        }
        let _lock = HostLock::acquire("linux-guest");
        if !(guest.initrd.is_file() && guest.kernel.is_file()) {
            build(&dir);
        }
        guest
    }
}

fn build(dir: &Path) {
    let work = ScratchDir::new("guest-build");
    let w = work.path();
    // tests/install-deps.sh downloads the packages; without it, do it here.
    let debs = if Path::new(GUEST_DEBS).is_dir() {
        PathBuf::from(GUEST_DEBS)
    } else {
        let kernel = output("apt-cache", &["depends", "linux-image-cloud-amd64"], w)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-"))
            .map(str::to_string)
            .expect("the cloud kernel package (did apt-get update run?)");
        let args = ["download", &kernel, "busybox-static", "qemu-guest-agent"];
        output("apt-get", &args, w);
        w.to_path_buf()
    };
    let x = w.join("x");
    for deb in std::fs::read_dir(&debs)
        .expect("read the download dir")
        .flatten()
    {
        if deb.path().extension().is_some_and(|e| e == "deb") {
            output(
                "dpkg-deb",
                &["-x", &deb.path().to_string_lossy(), &x.to_string_lossy()],
                w,
            );
        }
    }
    let root = w.join("root");
    for d in [
        "bin",
        "usr/sbin",
        "lib/modules",
        "proc",
        "sys",
        "dev",
        "mnt",
        "run",
        "tmp",
        "var",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("make the initramfs tree");
    }
    copy(&x.join("bin/busybox"), &root.join("bin/busybox"));
    let agent = x.join("usr/sbin/qemu-ga");
    copy(&agent, &root.join("usr/sbin/qemu-ga"));
    // The agent's libraries, from this machine (the same Debian release).
    for lib in output("ldd", &[&agent.to_string_lossy()], w)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|word| word.starts_with('/')))
    {
        let lib = Path::new(lib);
        copy(lib, &root.join(lib.strip_prefix("/").expect("absolute")));
    }
    let modules = std::fs::read_dir(x.join("lib/modules"))
        .expect("kernel modules")
        .flatten()
        .next()
        .expect("one kernel version")
        .path()
        .join("kernel/drivers");
    for m in MODULES {
        let name = Path::new(m).file_name().expect("module name");
        copy(&modules.join(m), &root.join("lib/modules").join(name));
    }
    std::fs::write(root.join("init"), INIT).expect("write init");
    output("chmod", &["755", &root.join("init").to_string_lossy()], w);

    std::fs::create_dir_all(dir).expect("make the guest cache dir");
    let initrd = dir.join("initrd.gz.tmp");
    let script = format!(
        "find . | {} cpio -o -H newc 2>/dev/null | gzip -1 > {}",
        root.join("bin/busybox").display(),
        initrd.display()
    );
    output("sh", &["-c", &script], &root);
    let vmlinuz = std::fs::read_dir(x.join("boot"))
        .expect("kernel boot dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz"))
        .expect("vmlinuz")
        .path();
    copy(&vmlinuz, &dir.join("vmlinuz"));
    std::fs::rename(&initrd, dir.join("initrd.gz")).expect("put the initramfs in place");
}

fn copy(from: &Path, to: &Path) {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).expect("make dir");
    }
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

//! A minimal real Linux guest for tests that need one: Debian's cloud
//! kernel and an initramfs with busybox and Debian's `qemu-guest-agent`,
//! which makes a filesystem on the VM's disk, mounts it and runs the guest
//! agent on its virtio-serial channel. Built once per machine from the
//! Debian packages (`apt-get download`) and kept in a cache directory the
//! `libvirt-qemu` user can read.
//!
//! [`LinuxGuest::disk_booting`] is the same system booted from its disk:
//! the initramfs only mounts the VM's ext4 disk and hands over to the
//! `/sbin/init` on it, which starts the guest agent. Damage the disk and
//! the guest no longer comes up, as a real one would not.

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

/// The start of every init here: busybox's applets, the kernel's
/// filesystems.
macro_rules! init_start {
    () => {
        "#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
"
    };
}

/// The virtio drivers loaded, then up to 10 s for the disk to appear.
macro_rules! load_drivers {
    () => {
        "for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_console; do
    insmod /lib/modules/$m.ko
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
"
    };
}

/// The guest agent started on its virtio-serial port, after `echo`ing
/// what the line before says (`$port` is the port).
macro_rules! start_guest_agent {
    ($said:literal) => {
        concat!(
            "port=
for p in /sys/class/virtio-ports/*; do
    [ \"$(cat $p/name 2>/dev/null)\" = org.qemu.guest_agent.0 ] && port=/dev/$(basename $p)
done
echo \"",
            $said,
            "\"
mkdir -p /run /var/run
/usr/sbin/qemu-ga -m virtio-serial -p $port &
exec sleep 2147483647
"
        )
    };
}

const INIT: &str = concat!(
    init_start!(),
    load_drivers!(),
    "mke2fs -q /dev/vda && mount -t ext4 /dev/vda /mnt && echo guest-data > /mnt/hello\n",
    start_guest_agent!("lifeboat-guest: disk $(grep -c vda /proc/mounts) mounted, agent on $port"),
);

/// The initramfs of the disk-booting guest: mount the disk, run its init.
/// Without either it powers the VM off, as a firmware finding nothing
/// to boot would stop.
const DISK_BOOT_INIT: &str = concat!(
    init_start!(),
    load_drivers!(),
    r#"if ! mount -t ext4 /dev/vda /mnt; then
    echo "lifeboat-guest: no root filesystem on the disk"; poweroff -f
fi
if [ ! -x /mnt/sbin/init ]; then
    echo "lifeboat-guest: no init on the disk"; poweroff -f
fi
umount /proc /sys /dev
exec switch_root /mnt /sbin/init
"#
);

/// `/sbin/init` on the disk-booting guest's disk.
const DISK_INIT: &str = concat!(
    init_start!(),
    start_guest_agent!("lifeboat-guest: booted from disk, agent on $port"),
);

/// What [`LinuxGuest::disk_booting`] prints on its serial console once its
/// disk's init runs.
pub const DISK_BOOTED_LINE: &str = "lifeboat-guest: booted from disk";

/// A kernel and initramfs for a VM with a guest agent; for a disk-booting
/// guest, also the raw ext4 image its disk starts as.
#[derive(Clone, Debug)]
pub struct LinuxGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub root_image: Option<PathBuf>,
}

impl LinuxGuest {
    /// The cached guest, built first if needed (a minute, once per machine).
    pub fn ensure() -> LinuxGuest {
        let dir = Path::new(IMAGE_DIR).join("guest");
        let guest = LinuxGuest {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.gz"),
            root_image: None,
        };
        let built = || BUILT.iter().all(|f| dir.join(f).is_file());
        if built() {
            return guest;
        }
        let _lock = HostLock::acquire("linux-guest");
        if !built() {
            build(&dir);
        }
        guest
    }

    /// The guest booted from its disk: a VM defined with it gets a copy of
    /// the root image as its disk (see the module's documentation).
    pub fn disk_booting(&self) -> LinuxGuest {
        let dir = self.initrd.parent().expect("the guest cache dir");
        LinuxGuest {
            kernel: self.kernel.clone(),
            initrd: dir.join(DISK_INITRD),
            root_image: Some(dir.join(ROOT_IMAGE)),
        }
    }
}

const DISK_INITRD: &str = "initrd-disk.gz";
const ROOT_IMAGE: &str = "root.ext4";
/// Every file of a complete build, the last one made last.
const BUILT: [&str; 4] = ["vmlinuz", DISK_INITRD, ROOT_IMAGE, "initrd.gz"];

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
    std::fs::create_dir_all(dir).expect("make the guest cache dir");
    // The disk-booting guest's disk: the same tree with its own init.
    std::fs::create_dir_all(root.join("sbin")).expect("make sbin");
    write_executable(&root.join("sbin/init"), DISK_INIT);
    let image = dir.join(ROOT_IMAGE);
    output(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-d",
            &root.to_string_lossy(),
            &image.to_string_lossy(),
            "48M",
        ],
        w,
    );
    std::fs::remove_dir_all(root.join("sbin")).expect("remove sbin");
    // Its initramfs: busybox and the modules, nothing of the system.
    let boot = w.join("boot-root");
    for d in ["bin", "lib/modules", "proc", "sys", "dev", "mnt"] {
        std::fs::create_dir_all(boot.join(d)).expect("make the initramfs tree");
    }
    copy(&root.join("bin/busybox"), &boot.join("bin/busybox"));
    for m in MODULES {
        let name = Path::new(m).file_name().expect("module name");
        let module = Path::new("lib/modules").join(name);
        copy(&root.join(&module), &boot.join(&module));
    }
    write_executable(&boot.join("init"), DISK_BOOT_INIT);
    cpio(&boot, &dir.join(DISK_INITRD));

    write_executable(&root.join("init"), INIT);
    let initrd = dir.join("initrd.gz.tmp");
    cpio(&root, &initrd);
    let vmlinuz = std::fs::read_dir(x.join("boot"))
        .expect("kernel boot dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz"))
        .expect("vmlinuz")
        .path();
    copy(&vmlinuz, &dir.join("vmlinuz"));
    std::fs::rename(&initrd, dir.join("initrd.gz")).expect("put the initramfs in place");
}

fn write_executable(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("write a script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

/// `tree` as a gzipped newc cpio archive at `to` (an initramfs).
fn cpio(tree: &Path, to: &Path) {
    let script = format!(
        "find . | {} cpio -o -H newc 2>/dev/null | gzip -1 > {}",
        tree.join("bin/busybox").display(),
        to.display()
    );
    output("sh", &["-c", &script], tree);
}

fn copy(from: &Path, to: &Path) {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).expect("make dir");
    }
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

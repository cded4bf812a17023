//! How a cluster host boots: its anchor process enters the host's network
//! namespace, makes a private mount namespace in which the host's own
//! directories replace libvirt's and the shared storage appears at the
//! host's own path, starts virtlogd and libvirtd there, and then holds the
//! namespaces for everything that `nsenter`s the host later.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::cluster::net::Netns;
use crate::process::{read_log, tail, LoggedProcess};
use crate::wait::poll_until;

pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directories libvirt keeps state in, each replaced inside a host by a
/// directory of its own: `(directory in the host, directory in the host's
/// scratch directory)`. `/etc/libvirt/qemu` holds the persistent domain
/// definitions, so those are per host; `/run/libvirt` is emptied when the
/// host restarts, as a tmpfs would be on a reboot.
const PRIVATE_DIRS: [(&str, &str); 6] = [
    ("/run/libvirt", "run"),
    ("/var/lib/libvirt", "lib"),
    ("/var/log/libvirt", "log"),
    ("/var/cache/libvirt", "cache"),
    ("/etc/libvirt/qemu", "qemu"),
    ("/etc/libvirt/storage", "storage"),
];

/// Where a host's libvirtd caches what it probed of QEMU (3 to 4 s of work,
/// done when it first needs it), relative to its cache directory.
const CAPABILITIES: &str = "cache/qemu/capabilities";
/// A copy of the hosts' QEMU capabilities cache kept across clusters, so a
/// new host's libvirtd does not probe QEMU again. libvirtd throws a cache
/// away when the host CPUID it reads differs from the cached one, and on
/// this machine that differs between CPUs (it includes the APIC ID of the
/// CPU the reading thread is on): so hosts run libvirtd on CPU 0 (libvirtd
/// still lets QEMU use every CPU). libvirtd re-probes if the copy is stale.
const CAPABILITIES_CACHE: &str = "/var/cache/lifeboat-e2e/qemu-capabilities";
/// The machine's own libvirtd's cache: a seed when there is no copy yet.
const ROOT_CAPABILITIES_CACHE: &str = "/var/cache/libvirt/qemu/capabilities";

/// Makes a new host's directories in its scratch directory `dir`, the mount
/// points (on the root filesystem) and an empty `networks/autostart`, so no
/// default network (a bridge and dnsmasq per host) starts.
pub(crate) fn prepare_dirs(dir: &Path, shared_mount: &Path) {
    make_dir(dir);
    for (target, private) in PRIVATE_DIRS {
        make_dir(&dir.join(private));
        // Normally there with libvirt, except /etc/libvirt/storage.
        std::fs::create_dir_all(target).unwrap_or_else(|e| panic!("create {target}: {e}"));
    }
    make_dir(&dir.join("qemu/networks/autostart"));
    make_dir(&dir.join("qemu/autostart"));
    make_dir(shared_mount);
    seed_capabilities_cache(dir);
}

/// Empties the host's `/run/libvirt`, as a reboot would.
pub(crate) fn empty_run_dir(dir: &Path) {
    let run = dir.join("run");
    std::fs::remove_dir_all(&run).unwrap_or_else(|e| panic!("empty {}: {e}", run.display()));
    make_dir(&run);
}

/// Starts the anchor of the host whose scratch directory is `dir`, and
/// waits until it has mounted everything and started the daemons (not until
/// libvirtd answers). `ip netns exec`, `unshare` and the script's final
/// `exec` all exec in place: the returned process is the anchor itself.
pub(crate) fn start(
    netns: &Netns,
    dir: &Path,
    shared: &Path,
    shared_mount: &Path,
) -> LoggedProcess {
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let script = dir.join("anchor.sh");
    std::fs::write(&script, script_text(dir, shared, shared_mount))
        .unwrap_or_else(|e| panic!("write {}: {e}", script.display()));
    let mut command = netns.exec("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh"])
        .arg(&script);
    let what = format!("{} anchor", netns.name);
    let log = dir.join("anchor.log");
    let mut anchor = LoggedProcess::spawn(&what, command, &log);
    // Until the ready file exists, entering the anchor's namespaces could
    // still reach the machine's own /run/libvirt, and its libvirtd.
    poll_until(
        &format!("{what} to mount and start libvirtd"),
        START_TIMEOUT,
        || {
            if let Some(status) = anchor.exit_status() {
                panic!("{what} exited ({status}): {}", tail(&read_log(&log), 20));
            }
            if ready.exists() {
                Ok(())
            } else {
                Err("no ready file yet")
            }
        },
    );
    anchor
}

fn script_text(dir: &Path, shared: &Path, shared_mount: &Path) -> String {
    let mut script = String::from("set -eu\n");
    for (target, private) in PRIVATE_DIRS {
        script += &format!("mount --bind {} {target}\n", quote(&dir.join(private)));
    }
    script += &format!("mount --bind {} {}\n", quote(shared), quote(shared_mount));
    // Private pid files: the default ones in /run are the machine's.
    // libvirtd on CPU 0: see `CAPABILITIES_CACHE`.
    for (daemon, pin) in [("virtlogd", ""), ("libvirtd", "taskset -c 0 ")] {
        script += &format!(
            "{pin}{daemon} -d -p {}\n",
            quote(&dir.join(format!("{daemon}.pid")))
        );
    }
    script += &format!("touch {}\nexec sleep infinity\n", quote(&dir.join("ready")));
    script
}

/// Starts a host's cache with the kept copy (or the machine libvirtd's).
/// Best effort: without it, the host probes QEMU itself.
fn seed_capabilities_cache(dir: &Path) {
    let kept = Path::new(CAPABILITIES_CACHE);
    let source = if kept.is_dir() {
        kept
    } else {
        Path::new(ROOT_CAPABILITIES_CACHE)
    };
    copy_files(source, &dir.join(CAPABILITIES));
}

/// Keeps a copy of the capabilities the host whose scratch directory is
/// `dir` has loaded (or probed), for the hosts of later clusters.
pub(crate) fn keep_capabilities(dir: &Path) {
    copy_files(&dir.join(CAPABILITIES), Path::new(CAPABILITIES_CACHE));
}

/// Copies the files of `from` into `to`, creating it; best effort.
fn copy_files(from: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    if std::fs::create_dir_all(to).is_err() {
        return;
    }
    for entry in entries.flatten() {
        let _ = std::fs::copy(entry.path(), to.join(entry.file_name()));
    }
}

/// Creates `dir` (and its parents) with mode 0755, so that libvirt's
/// `libvirt-qemu` user can traverse it.
pub(crate) fn make_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
}

/// `path` in single quotes for `sh`.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_sh() {
        assert_eq!(quote(Path::new("/tmp/a b")), "'/tmp/a b'");
        assert_eq!(quote(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }

    #[test]
    fn the_anchor_mounts_then_starts_the_daemons_then_holds_on() {
        let text = script_text(Path::new("/s"), Path::new("/srv/x"), Path::new("/mnt/h1"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "mount --bind '/s/run' /run/libvirt");
        assert!(lines.contains(&"mount --bind '/s/qemu' /etc/libvirt/qemu"));
        assert!(lines.contains(&"mount --bind '/srv/x' '/mnt/h1'"));
        assert!(lines.contains(&"taskset -c 0 libvirtd -d -p '/s/libvirtd.pid'"));
        assert_eq!(lines.last(), Some(&"exec sleep infinity"));
    }
}

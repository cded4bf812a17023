//! Backups of a VM whose guest runs a QEMU guest agent freeze its
//! filesystems for the point in time (and thaw them after); a VM without
//! one is backed up crash-consistent. The guest is a real Linux (Debian's
//! cloud kernel, busybox, Debian's qemu-guest-agent) with an ext4
//! filesystem mounted on the disk being backed up.

use std::time::Duration;

use lifeboat_e2e::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn a_guest_with_an_agent_is_frozen_for_the_backup_and_thawed_after() {
    let guest = LinuxGuest::ensure();
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_vm_with_guest_agent("fsfreeze", &guest);
    let plain = libvirt.define_tiny_vm("no-agent");
    vm.start();
    plain.start();
    libvirt.wait_guest_agent(vm.name(), BOOT_TIMEOUT);
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "guest-host", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    api.wait_vm(plain.name(), READY_TIMEOUT);

    let frozen = api.full_backup(vm.uuid());
    let (status, backup) = api.get(&format!("/api/v1/backups/{frozen}"));
    assert_eq!(status, 200, "{backup}");
    assert_eq!(backup["guest_frozen"], true, "{backup}");
    let status = libvirt.virsh(&[
        "qemu-agent-command",
        vm.name(),
        r#"{"execute":"guest-fsfreeze-status"}"#,
    ]);
    assert!(
        status.contains("thawed"),
        "thawed after the backup: {status}"
    );
    // The guest's filesystem is in the backup: restore and look for it.
    let job = api.post_job(
        &format!("/api/v1/backups/{frozen}/restore"),
        &json!({"as_new": {"name": format!("{}-copy", vm.name())}}),
        Duration::from_secs(120),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    let copy = format!("{}-copy", vm.name());
    let disk = libvirt.virsh(&["domblklist", &copy]);
    let path = disk
        .lines()
        .find_map(|l| l.trim().strip_prefix("vda").map(str::trim))
        .expect("the copy's vda")
        .to_string();
    let raw = std::env::temp_dir().join(format!("{copy}.raw"));
    let converted = std::process::Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw", &path])
        .arg(&raw)
        .status()
        .expect("qemu-img convert");
    assert!(converted.success());
    let bytes = std::fs::read(&raw).expect("read the raw copy");
    let _ = std::fs::remove_file(&raw);
    // The ext2/3/4 superblock starts at 1024; its magic 0xEF53 is at +56.
    assert_eq!(
        &bytes[1024 + 56..1024 + 58],
        &[0x53, 0xef],
        "an ext filesystem in the backup"
    );
    libvirt.remove_domain(&copy);
    let _ = std::fs::remove_file(&path);

    let crash_consistent = api.full_backup(plain.uuid());
    let (_, backup) = api.get(&format!("/api/v1/backups/{crash_consistent}"));
    assert_eq!(
        backup["guest_frozen"], false,
        "no agent, no freeze: {backup}"
    );
}

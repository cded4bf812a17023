//! Backup and restore with real libvirt/KVM VMs: a hot backup is point-in-time
//! while the guest keeps writing, restores byte for byte, and an incremental
//! backup reads only what changed; a stopped VM is read directly.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lifeboat_e2e::*;

const MIB: u64 = 1024 * 1024;
const DISK: u64 = 64 * MIB;
const JOB: Duration = Duration::from_secs(180);

/// Checks with `qemu-io` that `[offset, offset+len)` of a qcow2 image holds
/// `pattern` (0 = zeros).
fn assert_pattern(image: &Path, pattern: u8, offset: u64, len: u64) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-r", "-U", "-c"])
        .arg(format!("read -P {pattern:#04x} {offset} {len}"))
        .arg(image)
        .output()
        .expect("run qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success()
            && text.contains(&format!("read {len}/{len}"))
            && !text.contains("failed"),
        "{} at {offset}+{len} is not {pattern:#04x}: {text}",
        image.display()
    );
}

fn backup(api: &Api, vm: &TinyVm, mode: &str) -> Value {
    let job = api.post_job(
        &format!("/api/v1/vms/{}/backups", vm.uuid()),
        &json!({"mode": mode}),
        JOB,
    );
    assert_eq!(job["state"], "succeeded", "backup: {job}");
    job
}

fn backups(api: &Api, vm: &TinyVm) -> Vec<Value> {
    let (status, list) = api.get(&format!("/api/v1/vms/{}/backups", vm.uuid()));
    assert_eq!(status, 200, "{list}");
    list.as_array().cloned().unwrap_or_default()
}

fn restore_replacing(api: &Api, backup_id: &str) -> Value {
    let job = api.post_job(
        &format!("/api/v1/backups/{backup_id}/restore"),
        &json!({"replace": true}),
        JOB,
    );
    assert_eq!(job["state"], "succeeded", "restore: {job}");
    job
}

#[test]
fn hot_backup_is_point_in_time_and_restores_byte_for_byte() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("hot");
    let controller = Controller::start();
    // Slow reads keep the backup running long enough that the guest's next
    // write lands before the backup reaches it: that write must not show.
    let _agent = Agent::options("kvm-hot")
        .libvirt_uri(libvirt.uri())
        .arg("--backup-read-limit-mib")
        .arg("16")
        .start(&controller);
    let api = controller.api();
    api.wait_host_status("kvm-hot", "online", READY_TIMEOUT);
    api.wait_vm(vm.name(), READY_TIMEOUT);
    vm.start();
    vm.write_pattern(0xaa, 0, "64M"); // pattern A everywhere

    let (status, answer) = api.post(
        &format!("/api/v1/vms/{}/backups", vm.uuid()),
        &json!({"mode": "full"}),
    );
    assert_eq!(status, 202, "{answer}");
    let socket = format!("/run/lifeboat-agent/backup-{}/backup.sock", vm.uuid());
    poll_until("the backup's NBD export", Duration::from_secs(60), || {
        if Path::new(&socket).exists() {
            Ok(())
        } else {
            Err("not yet")
        }
    });
    // Pattern B, written after the point in time, before the backup reads it.
    vm.write_pattern(0xbb, 60 * MIB, "4M");
    vm.write_pattern(0xbb, 0, "1M");
    let job = api.wait_job(&answer["job"], JOB);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", controller.log());
    assert_eq!(job["progress"]["percent"], 100);
    assert!(
        job["progress"]["bytes_total"].as_u64().unwrap_or(0) >= DISK,
        "{job}"
    );

    let list = backups(&api, &vm);
    assert_eq!(list.len(), 1, "{list:?}");
    let b = &list[0];
    assert_eq!(b["mode"], "full");
    assert_eq!(
        b["bytes_read"], DISK,
        "a full backup of a fully written disk reads it all"
    );
    let (status, detail) = api.get(&format!(
        "/api/v1/backups/{}",
        b["id"].as_str().unwrap_or_default()
    ));
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["manifest"]["vm"]["name"], vm.name());
    assert!(detail["manifest"]["vm"]["hypervisor_config"]
        .as_str()
        .unwrap_or_default()
        .contains(vm.mac()));

    // Restore over the original (stopped) VM: the disk holds A, not B.
    vm.destroy();
    restore_replacing(&api, b["id"].as_str().unwrap_or_default());
    assert_pattern(vm.disk(), 0xaa, 0, DISK);
    assert_eq!(libvirt.virsh(&["domuuid", vm.name()]).trim(), vm.uuid());
    assert!(libvirt.virsh(&["domiflist", vm.name()]).contains(vm.mac()));
    vm.start();
    assert_eq!(vm.state(), "running");
}

#[test]
fn incremental_backup_reads_only_changed_chunks() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("incr");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-incr", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_status("kvm-incr", "online", READY_TIMEOUT);
    api.wait_vm(vm.name(), READY_TIMEOUT);
    vm.start();
    vm.write_pattern(0xaa, 0, "64M");

    backup(&api, &vm, "auto");
    let first = backups(&api, &vm).remove(0);
    assert_eq!(first["mode"], "full", "no checkpoint yet: {first}");
    assert!(first["checkpoint"].as_str().is_some(), "{first}");

    // Change 1 MiB: the incremental reads one 4 MiB chunk of 16.
    vm.write_pattern(0xcc, 10 * MIB, "1M");
    backup(&api, &vm, "auto");
    let list = backups(&api, &vm);
    assert_eq!(list.len(), 2);
    let second = &list[1];
    assert_eq!(second["mode"], "incremental", "{second}");
    assert_eq!(second["parent"], first["time"]);
    assert_eq!(second["bytes_read"], 4 * MIB, "{second}");
    eprintln!("incremental read {} of {DISK} bytes", second["bytes_read"]);

    // The incremental backup alone restores the whole disk.
    vm.destroy();
    restore_replacing(&api, second["id"].as_str().unwrap_or_default());
    assert_pattern(vm.disk(), 0xaa, 0, 10 * MIB);
    assert_pattern(vm.disk(), 0xcc, 10 * MIB, MIB);
    assert_pattern(vm.disk(), 0xaa, 11 * MIB, DISK - 11 * MIB);
}

#[test]
fn stopped_vm_is_backed_up_directly() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("cold");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-cold", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_status("kvm-cold", "online", READY_TIMEOUT);
    api.wait_vm(vm.name(), READY_TIMEOUT);
    vm.start();
    vm.write_pattern(0x5a, 8 * MIB, "2M");
    vm.destroy();

    backup(&api, &vm, "full");
    let b = backups(&api, &vm).remove(0);
    assert_eq!(b["mode"], "full");
    // Only the written chunks are read: the rest of the image is a hole.
    assert_eq!(b["bytes_read"], 4 * MIB, "{b}");

    restore_replacing(&api, b["id"].as_str().unwrap_or_default());
    assert_pattern(vm.disk(), 0, 0, 8 * MIB);
    assert_pattern(vm.disk(), 0x5a, 8 * MIB, 2 * MIB);
    assert_pattern(vm.disk(), 0, 10 * MIB, DISK - 10 * MIB);
}

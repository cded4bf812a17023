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

fn backup(api: &Api, vm: &TinyVm, mode: &str) -> Value {
    let job = api.post_job(
        &format!("/api/v1/vms/{}/backups", vm.uuid()),
        &json!({"mode": mode}),
        JOB,
    );
    assert_eq!(job["state"], "succeeded", "backup: {job}");
    job
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
    api.wait_host_with_vm("kvm-hot", vm.name());
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

    let list = api.backups(vm.uuid());
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
    assert_image_pattern(vm.disk(), 0xaa, 0, DISK);
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
    api.wait_host_with_vm("kvm-incr", vm.name());
    vm.start();
    vm.write_pattern(0xaa, 0, "64M");

    backup(&api, &vm, "auto");
    let first = api.backups(vm.uuid()).remove(0);
    assert_eq!(first["mode"], "full", "no checkpoint yet: {first}");
    assert!(first["checkpoint"].as_str().is_some(), "{first}");

    // Change 1 MiB: the incremental reads one 4 MiB chunk of 16.
    vm.write_pattern(0xcc, 10 * MIB, "1M");
    backup(&api, &vm, "auto");
    let list = api.backups(vm.uuid());
    assert_eq!(list.len(), 2);
    let second = &list[1];
    assert_eq!(second["mode"], "incremental", "{second}");
    assert_eq!(second["parent"], first["time"]);
    assert_eq!(second["bytes_read"], 4 * MIB, "{second}");
    eprintln!("incremental read {} of {DISK} bytes", second["bytes_read"]);

    // The incremental backup alone restores the whole disk.
    vm.destroy();
    restore_replacing(&api, second["id"].as_str().unwrap_or_default());
    assert_image_pattern(vm.disk(), 0xaa, 0, 10 * MIB);
    assert_image_pattern(vm.disk(), 0xcc, 10 * MIB, MIB);
    assert_image_pattern(vm.disk(), 0xaa, 11 * MIB, DISK - 11 * MIB);
}

#[test]
fn stopped_vm_is_backed_up_directly() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("cold");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-cold", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("kvm-cold", vm.name());
    vm.start();
    vm.write_pattern(0x5a, 8 * MIB, "2M");
    vm.destroy();

    backup(&api, &vm, "full");
    let b = api.backups(vm.uuid()).remove(0);
    assert_eq!(b["mode"], "full");
    // Only the written chunks are read: the rest of the image is a hole.
    assert_eq!(b["bytes_read"], 4 * MIB, "{b}");

    restore_replacing(&api, b["id"].as_str().unwrap_or_default());
    assert_image_pattern(vm.disk(), 0, 0, 8 * MIB);
    assert_image_pattern(vm.disk(), 0x5a, 8 * MIB, 2 * MIB);
    assert_image_pattern(vm.disk(), 0, 10 * MIB, DISK - 10 * MIB);
}

fn verify(api: &Api, backup_id: &str) -> Value {
    api.post_job(
        &format!("/api/v1/backups/{backup_id}/verify"),
        &json!({}),
        JOB,
    )
}

#[test]
fn verify_catches_a_flipped_byte_and_the_next_backup_heals_it() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("verify");
    vm.write_offline(0x77, 0, "8M");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-verify", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("kvm-verify", vm.name());

    backup(&api, &vm, "full");
    let id = api.backups(vm.uuid())[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(verify(&api, &id)["state"], "succeeded");
    let (_, b) = api.get(&format!("/api/v1/backups/{id}"));
    assert_eq!(b["verify"]["ok"], true, "{b}");

    // Flip the last byte of every stored chunk holding data.
    let chunks = controller.data_dir().join("datastores/local/.chunks");
    let mut flipped = 0;
    for prefix in std::fs::read_dir(&chunks).expect("chunk dir") {
        for chunk in std::fs::read_dir(prefix.expect("prefix").path()).expect("prefix dir") {
            let path = chunk.expect("chunk").path();
            let mut bytes = std::fs::read(&path).expect("read chunk");
            if bytes.len() > 100 {
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
                std::fs::write(&path, bytes).expect("write chunk");
                flipped += 1;
            }
        }
    }
    assert!(flipped > 0, "no chunk to damage");
    let job = verify(&api, &id);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .contains("damaged"),
        "{job}"
    );
    let (_, b) = api.get(&format!("/api/v1/backups/{id}"));
    assert_eq!(b["verify"]["ok"], false, "{b}");
    assert!(
        b["verify"]["damaged_chunks"].as_u64().unwrap_or(0) >= 1,
        "{b}"
    );

    // The damaged chunks were set aside: the next backup uploads them again,
    // and the old backup verifies clean once more.
    backup(&api, &vm, "full");
    assert_eq!(
        verify(&api, &id)["state"],
        "succeeded",
        "the old backup is healed"
    );
    restore_replacing(&api, &id);
    assert_image_pattern(vm.disk(), 0x77, 0, 8 * MIB);
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(controller_binary())
        .args(args)
        .output()
        .expect("run lifeboat");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lifeboat {args:?}: {text}");
    text
}

#[test]
fn export_delete_import_restore_keeps_everything() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("archive");
    vm.write_offline(0x42, 4 * MIB, "6M");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-archive", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("kvm-archive", vm.name());
    backup(&api, &vm, "full");
    let b = api.backups(vm.uuid()).remove(0);
    let (id, time) = (
        b["id"].as_str().unwrap_or_default(),
        b["time"].as_str().unwrap_or_default(),
    );
    let (_, before) = api.get(&format!("/api/v1/backups/{id}"));

    // Export to a file, as for tape.
    let store = controller.data_dir().join("datastores/local");
    let scratch = ScratchDir::new("archive");
    let archive = scratch.path().join("vm.lbarchive");
    let ds = store.to_string_lossy().to_string();
    let arc = archive.to_string_lossy().to_string();
    cli(&[
        "backup",
        "export",
        "--datastore",
        &ds,
        "--vm",
        vm.uuid(),
        "--backup",
        time,
        "--output",
        &arc,
    ]);
    assert!(std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0) > 4096);

    // Lose the backup and every chunk.
    std::fs::remove_dir_all(store.join("vm").join(vm.uuid())).expect("remove backup");
    std::fs::remove_dir_all(store.join(".chunks")).expect("remove chunks");
    std::fs::create_dir_all(store.join(".chunks")).expect("recreate chunk dir");
    assert!(api.backups(vm.uuid()).is_empty());

    // Import it back: the backup and all its metadata return.
    let text = cli(&["backup", "import", "--datastore", &ds, &arc]);
    assert!(text.contains(vm.uuid()), "{text}");
    let (status, after) = api.get(&format!("/api/v1/backups/{id}"));
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        after["manifest"], before["manifest"],
        "metadata must survive the round trip"
    );
    assert_eq!(
        api.post_job(&format!("/api/v1/backups/{id}/verify"), &json!({}), JOB)["state"],
        "succeeded"
    );
    restore_replacing(&api, id);
    assert_image_pattern(vm.disk(), 0, 0, 4 * MIB);
    assert_image_pattern(vm.disk(), 0x42, 4 * MIB, 6 * MIB);
    assert_image_pattern(vm.disk(), 0, 10 * MIB, DISK - 10 * MIB);
}

/// Removes a VM a test created through a restore, with its files.
fn isoinfo(args: &[&str], iso: &str) -> String {
    let out = Command::new("isoinfo")
        .args(args)
        .args(["-i", iso])
        .output()
        .expect("isoinfo (genisoimage)");
    assert!(
        out.status.success(),
        "isoinfo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn restore_as_new_runs_beside_the_original_with_a_new_identity() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("orig");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-asnew", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("kvm-asnew", vm.name());
    vm.start();
    vm.write_pattern(0x6b, 2 * MIB, "3M");
    backup(&api, &vm, "full");
    let id = api.backups(vm.uuid())[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let new_name = format!("{}-copy", vm.name());
    let dir = vm.disk().parent().expect("image dir").to_path_buf();
    let _cleanup = RestoredVm {
        libvirt: &libvirt,
        name: new_name.clone(),
        files: vec![
            dir.join(format!("{new_name}-vda.qcow2")),
            dir.join(format!("{new_name}-cidata.iso")),
        ],
    };
    let body = json!({"start": true, "as_new": {"name": new_name, "hostname": "copy01", "domain": "lab.example"}});
    let job = api.post_job(&format!("/api/v1/backups/{id}/restore"), &body, JOB);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", controller.log());

    // Both run at once: a new VM, not a second copy of the old one.
    assert_eq!(vm.state(), "running");
    assert_eq!(libvirt.domstate(&new_name), "running");
    let new_uuid = libvirt.virsh(&["domuuid", &new_name]).trim().to_string();
    assert_ne!(new_uuid, vm.uuid());
    let nics = libvirt.virsh(&["domiflist", &new_name]);
    assert!(
        !nics.contains(vm.mac()),
        "the copy must not reuse the MAC: {nics}"
    );
    let disks = libvirt.virsh(&["domblklist", &new_name, "--details"]);
    let new_disk = dir.join(format!("{new_name}-vda.qcow2"));
    assert!(disks.contains(&*new_disk.to_string_lossy()), "{disks}");
    assert!(
        !disks.contains(&*vm.disk().to_string_lossy()),
        "the copy shares the original's disk: {disks}"
    );
    libvirt.virsh(&["destroy", &new_name]);
    assert_image_pattern(&new_disk, 0x6b, 2 * MIB, 3 * MIB);

    // The config drive carries the new identity for cloud-init.
    let iso = disks
        .lines()
        .find(|l| l.contains("cdrom"))
        .and_then(|l| l.split_whitespace().last())
        .expect("a config drive CD-ROM")
        .to_string();
    assert!(isoinfo(&["-d"], &iso).contains("Volume id: cidata"));
    let meta = isoinfo(&["-J", "-x", "/meta-data"], &iso);
    assert!(
        meta.contains(&new_uuid) && meta.contains("copy01"),
        "{meta}"
    );
    let user = isoinfo(&["-J", "-x", "/user-data"], &iso);
    assert!(
        user.starts_with("#cloud-config") && user.contains("copy01.lab.example"),
        "{user}"
    );

    // The same name again is refused, and nothing is written.
    let (status, body) = api.post(
        &format!("/api/v1/backups/{id}/restore"),
        &json!({"as_new": {"name": new_name}}),
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = api.post(
        &format!("/api/v1/backups/{id}/restore"),
        &json!({"as_new": {"name": "bad/name"}}),
    );
    assert_eq!(status, 400, "{body}");
    // An exact restore onto the running original is refused too.
    let job = api.post_job(&format!("/api/v1/backups/{id}/restore"), &json!({}), JOB);
    assert_eq!(job["state"], "failed");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .contains("already exists"),
        "{job}"
    );
}

#[test]
fn restore_onto_a_host_without_the_vms_network_is_refused_cleanly() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("nonet");
    // Attach the VM to a network this host does not have (defining it is
    // allowed; only starting would fail).
    let xml = libvirt.virsh(&["dumpxml", "--inactive", vm.name()]);
    let start = xml.find("<interface").expect("an interface");
    let end = xml[start..].find("</interface>").expect("its end") + start + "</interface>".len();
    let iface = format!(
        "<interface type='network'><mac address='{}'/><source network='lbe2e-missing-net'/><model type='virtio'/></interface>",
        vm.mac()
    );
    let scratch = ScratchDir::new("nonet");
    let file = scratch.path().join("nonet.xml");
    std::fs::write(&file, format!("{}{}{}", &xml[..start], iface, &xml[end..])).expect("write xml");
    libvirt.virsh(&["define", &file.to_string_lossy()]);

    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-nonet", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("kvm-nonet", vm.name());
    backup(&api, &vm, "full");
    let id = api.backups(vm.uuid())[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // The original goes away; its restore needs a network this host lacks.
    libvirt.virsh(&["undefine", vm.name()]);
    let disk_before = std::fs::metadata(vm.disk()).map(|m| m.len()).ok();
    let job = api.post_job(&format!("/api/v1/backups/{id}/restore"), &json!({}), JOB);
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no network") && error.contains("lbe2e-missing-net"),
        "{error}"
    );
    assert!(
        libvirt.try_virsh(&["domstate", vm.name()]).is_err(),
        "nothing may be defined"
    );
    assert_eq!(
        std::fs::metadata(vm.disk()).map(|m| m.len()).ok(),
        disk_before,
        "nothing may be written"
    );
}

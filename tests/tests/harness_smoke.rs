//! The harness itself against the real libvirt: a tiny VM defines, starts,
//! runs, takes a guest-style write into its disk, and is gone after its guard
//! drops. If this fails, every libvirt end-to-end test would fail too.

use std::time::Duration;

use lifeboat_e2e::{wait_until, Libvirt};

#[test]
fn tiny_vm_runs_and_is_cleaned_up() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("smoke");
    let (name, disk) = (vm.name().to_string(), vm.disk().to_path_buf());
    assert!(
        name.starts_with(&format!("lbe2e-{}-", std::process::id())),
        "{name}"
    );
    assert_eq!(vm.uuid().len(), 36, "uuid {:?}", vm.uuid());
    assert_eq!(libvirt.virsh(&["domuuid", &name]).trim(), vm.uuid());
    assert_eq!(vm.state(), "shut off");

    vm.start();
    wait_until(&format!("{name} running"), Duration::from_secs(30), || {
        libvirt.domstate(&name) == "running"
    });
    vm.write_pattern(0xab, 0, "1M");
    vm.destroy();
    assert_eq!(vm.state(), "shut off");

    // The write went to the disk file, through QEMU's block layer.
    lifeboat_e2e::assert_image_pattern(&disk, 0xab, 0, 1024 * 1024);

    drop(vm);
    assert!(
        libvirt.try_virsh(&["domstate", &name]).is_err(),
        "{name} still defined"
    );
    assert!(!disk.exists(), "{} still exists", disk.display());
}

#[test]
fn two_tiny_vms_run_at_once() {
    let libvirt = Libvirt::ensure();
    let vms = [
        libvirt.define_tiny_vm("pair-a"),
        libvirt.define_tiny_vm("pair-b"),
    ];
    assert_ne!(vms[0].mac(), vms[1].mac());
    for vm in &vms {
        vm.start();
    }
    for vm in &vms {
        assert_eq!(vm.state(), "running");
    }
}

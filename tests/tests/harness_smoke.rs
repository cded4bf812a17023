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

/// The load-test fleet (`--sim-hosts`): one agent process enrolls each of its
/// simulated hosts with its own token and identity, and a restart without a
/// token brings back the same hosts rather than new ones.
#[test]
fn one_agent_process_plays_a_fleet_of_simulated_hosts() {
    let controller = lifeboat_e2e::Controller::start();
    let api = controller.api();
    let mut fleet = lifeboat_e2e::Agent::options("fleet")
        .arg("--sim-vms")
        .arg("2")
        .start_sim_fleet(&controller, 3);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let host =
                api.wait_host_status(&format!("fleet-{i:04}"), "online", Duration::from_secs(60));
            assert_eq!(host["driver"], "sim", "{host}");
            host["id"].as_str().expect("host id").to_string()
        })
        .collect();
    lifeboat_e2e::poll_until("six simulated VMs", Duration::from_secs(30), || {
        let (_, vms) = api.get("/api/v1/vms");
        let n = vms.as_array().map_or(0, Vec::len);
        if n == 6 {
            Ok(())
        } else {
            Err(format!("{n} VMs"))
        }
    });

    fleet.restart_without_token();
    for (i, id) in ids.iter().enumerate() {
        lifeboat_e2e::poll_until(
            &format!("fleet-{i:04} back online"),
            Duration::from_secs(60),
            || {
                let (_, host) = api.get(&format!("/api/v1/hosts/{id}"));
                (host["status"] == "online"
                    && fleet.log().matches("starting the link").count() >= 6)
                    .then_some(())
                    .ok_or(format!("{host}"))
            },
        );
    }
    assert!(fleet.log().contains("already enrolled"), "{}", fleet.log());
    let (_, hosts) = api.get("/api/v1/hosts");
    assert_eq!(hosts.as_array().map(Vec::len), Some(3), "{hosts}");
}

// SCRATCH live check, to be deleted.
#[path = "../src/hypervisor/mod.rs"]
mod hypervisor;
use hypervisor::{libvirt::LibvirtDriver, Hypervisor, HypervisorError};
use lifeboat_proto::{PowerAction as A, PowerState};
use std::time::{Duration, Instant};

fn domstate(uuid: &str) -> String {
    let o = std::process::Command::new("virsh").args(["domstate", uuid]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn main() {
    let uuid = std::env::args().nth(1).expect("uuid");
    let d = LibvirtDriver::new(None);
    if uuid == "race" {
        tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).init();
        let t = Instant::now();
        let mut n = 0; let mut seen = 0;
        while t.elapsed() < Duration::from_secs(15) {
            let inv = d.inventory().expect("inventory must not fail during define/undefine churn");
            seen = seen.max(inv.len()); n += 1;
        }
        println!("race: {n} inventories OK, max {seen} VMs seen");
        return;
    }
    if let Some(mode) = std::env::args().nth(2) {
        let t = Instant::now();
        let r = d.power(&uuid, match mode.as_str() { "reboot" => A::Reboot, "shutdown" => A::Shutdown, "poweroff" => A::Poweroff, _ => A::Start }, Duration::from_secs(3));
        println!("{mode} -> {:?} in {:?}; virsh domstate = {}", r, t.elapsed(), domstate(&uuid));
        return;
    }
    println!("facts: {:?}", d.host_facts());
    let t = Instant::now();
    let inv = d.inventory().unwrap();
    println!("inventory #1 took {:?}", t.elapsed());
    let t = Instant::now();
    let inv2 = d.inventory().unwrap();
    println!("inventory #2 (cached) took {:?}", t.elapsed());
    assert_eq!(inv, inv2);
    for vm in &inv {
        println!("{} {} {:?} vcpus={} mem={}MiB config_len={} inactive_cfg_has_id={}", vm.uuid, vm.name, vm.power_state, vm.vcpus, vm.memory_mib, vm.config.len(), vm.config.contains("<domain type='kvm' id="));
        for disk in &vm.disks { println!("   disk {:?}", disk); }
        for nic in &vm.nics { println!("   nic {:?}", nic); }
    }
    let vm = inv.iter().find(|v| v.uuid == uuid).unwrap();
    assert_eq!(vm.power_state, PowerState::Stopped);

    let step = |a: A, timeout: u64| {
        let t = Instant::now();
        let r = d.power(&uuid, a, Duration::from_secs(timeout));
        println!("{:<9} -> {:?} in {:?}; virsh domstate = {}", a.as_str(), r, t.elapsed(), domstate(&uuid));
        r
    };
    step(A::Start, 0).unwrap();
    let inv = d.inventory().unwrap();
    let vm = inv.iter().find(|v| v.uuid == uuid).unwrap();
    println!("after start inventory: {:?} disks={:?}", vm.power_state, vm.disks);
    assert_eq!(vm.power_state, PowerState::Running);
    assert!(!vm.config.contains("<domain type='kvm' id="), "config must be the inactive XML");
    assert!(matches!(step(A::Start, 0), Err(HypervisorError::Refused(_))));
    step(A::Pause, 0).unwrap();
    assert_eq!(domstate(&uuid), "paused");
    assert_eq!(d.inventory().unwrap().iter().find(|v| v.uuid == uuid).unwrap().power_state, PowerState::Paused);
    assert!(matches!(step(A::Pause, 0), Err(HypervisorError::Refused(_))));
    assert!(matches!(step(A::Reboot, 0), Err(HypervisorError::Refused(_))));
    step(A::Resume, 0).unwrap();
    assert_eq!(domstate(&uuid), "running");
    assert!(matches!(step(A::Resume, 0), Err(HypervisorError::Refused(_))));
    step(A::Reboot, 0).unwrap();
    assert_eq!(domstate(&uuid), "running");
    let t = Instant::now();
    step(A::Shutdown, 3).unwrap();
    assert!(t.elapsed() >= Duration::from_secs(3));
    assert_eq!(domstate(&uuid), "shut off");
    assert!(matches!(step(A::Shutdown, 3), Err(HypervisorError::Refused(_))));
    assert!(matches!(step(A::Poweroff, 0), Err(HypervisorError::Refused(_))));
    assert!(matches!(step(A::Pause, 0), Err(HypervisorError::Refused(_))));
    step(A::Start, 0).unwrap();
    step(A::Pause, 0).unwrap();
    step(A::Shutdown, 1).unwrap(); // paused guest: ACPI ignored, destroyed after 1 s
    assert_eq!(domstate(&uuid), "shut off");
    step(A::Start, 0).unwrap();
    step(A::Poweroff, 0).unwrap();
    assert_eq!(domstate(&uuid), "shut off");
    let r = d.power("00000000-0000-0000-0000-000000000001", A::Start, Duration::ZERO);
    println!("unknown uuid -> {:?}", r);
    assert!(matches!(r, Err(HypervisorError::UnknownVm(_))));
    let r = d.power("--help", A::Start, Duration::ZERO);
    println!("malformed uuid -> {:?}", r);
    assert!(matches!(r, Err(HypervisorError::UnknownVm(_))));
    let bad = LibvirtDriver::new(Some("qemu:///nonexistent".into()));
    println!("bad uri -> {:?}", bad.inventory().map(|v| v.len()));
    println!("ALL LIVE CHECKS PASSED");
}

//! The multi-host topology itself, before any failover test leans on it:
//! hosts in network namespaces with their own libvirtd over shared storage,
//! a double-run monitor that sees even a QEMU that dies on the image lock,
//! partitions, kills and restarts, and an agent inside a host.

use std::path::Path;
use std::time::{Duration, Instant};

use lifeboat_e2e::*;

/// A port nothing listens on: a connect is refused if the host is reachable.
const CLOSED_PORT: u16 = 9;
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const VM_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn hosts_share_storage_run_vms_apart_and_fail_on_demand() {
    let started = Instant::now();
    let cluster = Cluster::start(2);
    let (h1, h2) = (cluster.host(1), cluster.host(2));
    eprintln!("cluster of 2 started in {:?}", started.elapsed());
    assert_eq!((h1.name(), h1.index()), ("lbh1", 1));
    assert_eq!(
        (h2.address(), h2.gateway()),
        ("10.77.2.2".into(), "10.77.2.1".into())
    );
    assert_ne!(h1.shared_mount(), h2.shared_mount());

    // One storage, seen by each host at its own path.
    std::fs::write(cluster.shared_dir().join("hello"), "shared\n").unwrap();
    for host in [h1, h2] {
        let out = host
            .command("cat")
            .arg(host.shared_mount().join("hello"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "shared\n",
            "{}",
            host.name()
        );
    }

    let vm = h1.define_tiny_vm("smoke");
    let (name, disk) = (vm.name().to_string(), vm.disk_file_name().to_string());
    assert!(
        vm.disk().starts_with(cluster.shared_dir()),
        "{}",
        vm.disk().display()
    );
    assert!(vm.domain_disk().starts_with(h1.shared_mount()));
    assert!(vm.disk().is_file());

    let mut monitor = DoubleRunMonitor::start(&[&disk]);
    vm.start();
    wait_until(&format!("{name} running on lbh1"), VM_TIMEOUT, || {
        vm.state() == "running"
    });
    assert_eq!(running_qemu_hosts(&disk), ["lbh1"]);
    vm.write_pattern(0xab, 0, "1M");
    // Flushed, or the kill below would lose the write, as a crash would.
    vm.flush_disk();

    // Definitions are per host: neither host 2 nor the machine's own
    // libvirtd knows the VM.
    assert!(!h2.libvirt().domain_names().contains(&name));
    assert!(!Libvirt::ensure().domain_names().contains(&name));
    monitor.stop();
    monitor.assert_never_doubled();
    assert_eq!(monitor.max_running(&disk), 1);

    // Host 2 tries to run the same disk while host 1 runs it: QEMU's image
    // lock stops it, but the monitor still sees the second QEMU.
    let mut second = DoubleRunMonitor::start(&[&disk]);
    let xml = h1.libvirt().virsh(&["dumpxml", &name]).replace(
        &h1.shared_mount().display().to_string(),
        &h2.shared_mount().display().to_string(),
    );
    std::fs::write(cluster.shared_dir().join("on-h2.xml"), xml).unwrap();
    let xml_in_h2 = h2.shared_mount().join("on-h2.xml");
    h2.libvirt()
        .virsh(&["define", &xml_in_h2.to_string_lossy()]);
    let attempt = Instant::now();
    let refused = h2.libvirt().try_virsh(&["start", &name]).unwrap_err();
    assert!(refused.contains("lock"), "{refused}");
    second.stop();
    eprintln!(
        "double start refused by the image lock in {:?}",
        attempt.elapsed()
    );
    // Seen although it lived only milliseconds (so
    // `second.assert_never_doubled()` would panic, listing this).
    assert_eq!(second.max_running(&disk), 2, "{:?}", second.doubles());
    let doubles = second.doubles();
    let hosts: Vec<&str> = doubles[0]
        .processes
        .iter()
        .map(|p| p.host.as_str())
        .collect();
    assert!(
        hosts.contains(&"lbh1") && hosts.contains(&"lbh2"),
        "{}",
        doubles[0]
    );
    // Host 2 keeps the (shut off) definition: the VM's guard removes it too.
    assert_eq!(h2.libvirt().domstate(&name), "shut off");
    assert_eq!(running_qemu_hosts(&disk), ["lbh1"]);

    // Reachability from the root namespace: a physical machine's service,
    // and each host's kernel (a refused connect means "up, reachable").
    let machine = PhysicalMachine::start();
    assert_eq!(
        probe_tcp(&machine.address(), machine.port(), PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    let page = ureq::get(&machine.url())
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(page.contains("physical machine"), "{page}");
    for host in [h1, h2] {
        assert_eq!(
            probe_tcp(&host.address(), CLOSED_PORT, PROBE_TIMEOUT),
            TcpProbe::Refused
        );
    }

    // A partition drops host 1's traffic; it keeps running.
    h1.partition();
    assert_eq!(
        probe_tcp(&h1.address(), CLOSED_PORT, PROBE_TIMEOUT),
        TcpProbe::TimedOut
    );
    assert_eq!(
        probe_tcp(&h2.address(), CLOSED_PORT, PROBE_TIMEOUT),
        TcpProbe::Refused
    );
    assert_eq!(h1.libvirt().domstate(&name), "running");
    assert_eq!(running_qemu_hosts(&disk), ["lbh1"]);
    h1.heal();
    assert_eq!(
        probe_tcp(&h1.address(), CLOSED_PORT, PROBE_TIMEOUT),
        TcpProbe::Refused
    );

    // Killing host 1 leaves nothing running in it, the VM included, and
    // nothing answering at its address.
    assert!(!h1.pids().is_empty());
    let killed_at = h1.kill();
    eprintln!("host 1 killed in {:?}", killed_at.elapsed());
    assert_eq!(h1.killed_at(), Some(killed_at));
    assert!(h1.pids().is_empty(), "{:?}", h1.pids());
    assert!(running_qemu_hosts(&disk).is_empty());
    assert!(h1.libvirt().try_virsh(&["uri"]).is_err());
    assert!(h1.anchor_pid().is_none());
    let probe = probe_tcp(&h1.address(), CLOSED_PORT, Duration::from_secs(5));
    assert!(
        matches!(probe, TcpProbe::Unreachable(_) | TcpProbe::TimedOut),
        "{probe:?}"
    );
    assert_eq!(
        probe_tcp(&h2.address(), CLOSED_PORT, PROBE_TIMEOUT),
        TcpProbe::Refused
    );

    // A machine that is powered off stops answering too.
    machine.kill();
    assert_ne!(
        probe_tcp(&machine.address(), machine.port(), PROBE_TIMEOUT),
        TcpProbe::Connected
    );

    // Powered on again, host 1 still has the VM's definition, and the kill
    // released the disk's lock: the VM starts again there.
    let restarted = Instant::now();
    h1.restart();
    eprintln!("host 1 restarted in {:?}", restarted.elapsed());
    assert_eq!(vm.state(), "shut off");
    vm.start();
    wait_until(&format!("{name} running again"), VM_TIMEOUT, || {
        vm.state() == "running"
    });
    assert_eq!(running_qemu_hosts(&disk), ["lbh1"]);
    assert_image_pattern(vm.disk(), 0xab, 0, 1024 * 1024);

    let disk_path = vm.disk().to_path_buf();
    assert_eq!(cluster.hosts_defining(&name), ["lbh1", "lbh2"]);
    drop(vm);
    assert!(cluster.hosts_defining(&name).is_empty());
    assert!(h1.libvirt().try_virsh(&["domstate", &name]).is_err());
    assert!(running_qemu_hosts(&disk).is_empty());
    assert!(!disk_path.exists());
    let shared = cluster.shared_dir().to_path_buf();
    drop(cluster);
    assert!(!shared.exists());
    assert!(!Path::new("/run/netns/lbh1").exists());
    eprintln!("whole scenario took {:?}", started.elapsed());
}

#[test]
fn an_agent_in_a_host_comes_online_and_reports_its_vms() {
    let cluster = Cluster::start(2);
    let controller = Controller::options().agent_listen_any().start();
    let h2 = cluster.host(2);
    let vm = h2.define_tiny_vm("inventory");
    let mut agent = h2.start_agent(&controller, "e2e-h2");

    let api = controller.api();
    let host = api.wait_host_status("e2e-h2", "online", Duration::from_secs(60));
    assert!(
        h2.pids().contains(&agent.pid().unwrap()),
        "the agent runs outside lbh2"
    );
    let listed = api.wait_vm(vm.name(), Duration::from_secs(60));
    assert_eq!(listed["host"], host["id"], "{listed}");

    // Powered off and on again, the host runs its agent again: it enters
    // the host as the host is now (a new anchor).
    h2.kill();
    h2.restart();
    agent.restart_without_token();
    let pid = agent.pid().unwrap();
    wait_until("the restarted agent inside lbh2", READY_TIMEOUT, || {
        h2.pids().contains(&pid)
    });
    api.wait_host_status("e2e-h2", "online", Duration::from_secs(60));
    assert!(h2.pids().contains(&pid), "{}", agent.log());
}

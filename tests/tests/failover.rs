//! Failover on a real multi-host topology: each host a network namespace
//! with its own libvirtd and agent, VM disks on one shared storage that
//! every host mounts at its own path. Every scenario asserts the VM ends up
//! running exactly once, and a monitor scanning all processes every 20 ms
//! asserts no two QEMUs ever used its disk at the same time.

use std::time::{Duration, Instant};

use lifeboat_e2e::*;

#[test]
fn a_dead_hosts_vm_restarts_on_another_host_exactly_once() {
    let ha = HaCluster::start(2);
    let vm = ha.protected_vm(1, "dead-host");
    let monitor = DoubleRunMonitor::start(&[vm.disk_file_name()]);
    assert_admission_control(&ha);
    let killed = ha.cluster.host(1).kill();
    ha.wait_running_only_on(&vm, 2);
    let took = killed.elapsed();
    monitor.assert_never_doubled();
    assert_eq!(monitor.max_running(vm.disk_file_name()), 1);
    let failover = ha.wait_failover_done();
    let steps = failover_steps(&failover);
    assert!(steps[0].starts_with("detected"), "{steps:?}");
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("failed: silent past the fence timeout")),
        "{steps:?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("placed:") && s.ends_with("on h2")),
        "{steps:?}"
    );
    assert!(steps.iter().any(|s| s.starts_with("started:")), "{steps:?}");
    // The domain XML host 2 got names the disk where host 2 mounts it.
    let xml = ha.cluster.host(2).libvirt().virsh(&["dumpxml", vm.name()]);
    let on_h2 = ha.cluster.host(2).shared_mount().join(vm.disk_file_name());
    assert!(xml.contains(&on_h2.display().to_string()), "{xml}");
    // The console shows it, in a real browser.
    let failover_page = format!("/failovers/{}", failover["id"].as_str().unwrap());
    let shots = browser_screenshots(&ha.controller, &["/cluster", &failover_page]);
    assert_eq!(shots.len(), 3);
    // With the defaults (3 misses of 1 s, fence timeout 5 s, margin 1 s).
    assert!(took < Duration::from_secs(30), "failover took {took:?}");
    eprintln!("host death → VM running elsewhere: {took:?}");
}

/// Two hosts absorb the loss of one, not of both.
fn assert_admission_control(ha: &HaCluster) {
    let api = ha.api();
    let (_, cluster) = api.get("/api/v1/cluster");
    assert!(cluster["admission_warning"].is_null(), "{cluster}");
    let h1 = cluster["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "h1")
        .cloned();
    assert_eq!(h1.unwrap()["protected_vms"], 1, "{cluster}");
    let mut settings = cluster["settings"].clone();
    settings["tolerated_host_failures"] = json!(2);
    assert_eq!(api.put("/api/v1/ha/settings", &settings).0, 200);
    let (_, cluster) = api.get("/api/v1/cluster");
    let warning = cluster["admission_warning"].as_str().unwrap_or_default();
    assert!(warning.contains("losing 2"), "{cluster}");
    settings["tolerated_host_failures"] = json!(1);
    assert_eq!(api.put("/api/v1/ha/settings", &settings).0, 200);
}

#[test]
fn an_out_of_band_fence_lets_the_failover_start_before_the_fence_timeout() {
    let ha = HaCluster::start(2);
    let vm = ha.protected_vm(1, "oob-fence");
    let monitor = DoubleRunMonitor::start(&[vm.disk_file_name()]);
    // The "IPMI" of host 1: power it off by killing everything in it.
    let (status, body) = ha.api().put(
        &format!("/api/v1/hosts/{}/ha", ha.host_ids[0]),
        &json!({
            "storage_mounts": {"shared": ha.cluster.host(1).shared_mount()},
            "fence_command": "ip netns pids lbh1 | xargs -r kill -9",
        }),
    );
    assert_eq!(status, 200, "{body}");
    ha.cluster.host(1).partition();
    ha.wait_running_only_on(&vm, 2);
    let failover = ha.wait_failover_done();
    let steps = failover_steps(&failover);
    assert!(
        steps
            .iter()
            .any(|s| s == "fenced: out-of-band fence succeeded"),
        "{steps:?}"
    );
    assert!(
        !ha.agents[0].log().contains("SELF-FENCE"),
        "the out-of-band fence came first"
    );
    monitor.assert_never_doubled();
}

#[test]
fn a_partitioned_host_fences_itself_then_its_vm_runs_elsewhere_and_healing_adds_no_duplicate() {
    let ha = HaCluster::start(2);
    let vm = ha.protected_vm(1, "partition");
    let monitor = DoubleRunMonitor::start(&[vm.disk_file_name()]);
    ha.cluster.host(1).partition();
    let agent = &ha.agents[0];
    wait_until("host 1's agent to fence itself", FAILOVER_DEADLINE, || {
        agent.log().contains("SELF-FENCE")
    });
    ha.wait_running_only_on(&vm, 2);
    let failover = ha.wait_failover_done();
    assert!(
        failover_steps(&failover)
            .iter()
            .any(|s| s.contains("reports a self-fence")),
        "{failover}"
    );
    // Host 1 lives on, cut off, with the VM still defined there but off.
    // libvirtd learns of the QEMU the agent killed from its monitor socket
    // closing, on its own time: busy hosts have shown it a moment late.
    let h1 = ha.cluster.host(1).libvirt();
    wait_until(
        "host 1's libvirt to see its VM off",
        FAILOVER_DEADLINE,
        || h1.domstate(vm.name()) == "shut off",
    );

    ha.cluster.host(1).heal();
    ha.api().wait_host_status("h1", "online", FAILOVER_DEADLINE);
    wait_until(
        "the stale copy on host 1 to be undefined",
        FAILOVER_DEADLINE,
        || ha.cluster.hosts_defining(vm.name()) == ["lbh2"],
    );
    assert!(
        agent.log().contains("undefining a stale copy"),
        "{}",
        agent.log()
    );
    // Still exactly one, and the controller keeps it on host 2.
    ha.wait_running_only_on(&vm, 2);
    assert_eq!(ha.failovers().len(), 1, "no second failover");
    monitor.assert_never_doubled();
    assert_eq!(monitor.max_running(vm.disk_file_name()), 1);
}

#[test]
fn a_controller_restarted_during_a_failover_completes_it_without_a_duplicate() {
    let mut ha = HaCluster::start(3);
    let vm = ha.protected_vm(1, "ctl-restart");
    let monitor = DoubleRunMonitor::start(&[vm.disk_file_name()]);
    ha.cluster.host(1).kill();
    wait_until("a failover to be opened", FAILOVER_DEADLINE, || {
        !ha.failovers().is_empty()
    });
    ha.controller.kill_9();
    ha.controller.restart();
    let deadline = Instant::now() + FAILOVER_DEADLINE;
    let mut where_now = Vec::new();
    while Instant::now() < deadline {
        where_now = running_qemu_hosts(vm.disk_file_name());
        if where_now.len() == 1 && where_now[0] != "lbh1" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(where_now.len(), 1, "{where_now:?}\n{}", ha.controller.log());
    let n: usize = where_now[0].trim_start_matches("lbh").parse().unwrap();
    ha.wait_running_only_on(&vm, n);
    let failover = ha.wait_failover_done();
    assert_eq!(ha.failovers().len(), 1, "{failover}");
    monitor.assert_never_doubled();
}

#[test]
fn a_dead_physical_machine_gets_its_standby_vm_started_and_failback_needs_confirmation() {
    let ha = HaCluster::start(2);
    let physical = PhysicalMachine::start();
    let standby = ha.cluster.host(2).define_tiny_vm("p2v-standby");
    let api = ha.api();
    api.wait_vm(standby.name(), READY_TIMEOUT);
    let (status, pm) = api.post(
        "/api/v1/physical-machines",
        &json!({
            "name": "erp-server",
            "checks": [
                {"kind": "tcp", "address": physical.address(), "port": physical.port()},
                {"kind": "http", "url": physical.url(), "expect_status": 200},
            ],
            "failed_rounds": 2,
            "interval_ms": 500,
            "standby_vm": standby.name(),
        }),
    );
    assert_eq!(status, 201, "{pm}");
    let id = pm["id"].as_str().unwrap().to_string();
    assert_eq!(standby.state(), "shut off");
    physical.kill();
    wait_until("the standby VM to run", FAILOVER_DEADLINE, || {
        standby.state() == "running"
    });
    let (_, pm) = api.get(&format!("/api/v1/physical-machines/{id}"));
    assert_eq!(pm["state"], "failed_over", "{pm}");
    let failover = ha.wait_failover_done();
    assert_eq!(failover["kind"], "physical", "{failover}");

    let (status, body) = api.post(
        &format!("/api/v1/physical-machines/{id}/failback"),
        &json!({}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        standby.state(),
        "running",
        "an unconfirmed failback changes nothing"
    );
    // Confirmed, but the machine is still down: refused, nothing stopped.
    let (status, body) = api.post(
        &format!("/api/v1/physical-machines/{id}/failback"),
        &json!({"confirm": true}),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("still fails"),
        "{body}"
    );
    assert_eq!(standby.state(), "running");
}

#[test]
fn a_vm_without_shared_storage_fails_over_by_restoring_its_latest_backup_on_another_host() {
    let ha = HaCluster::start(2);
    let vm = ha.cluster.host(1).define_local_tiny_vm("by-restore");
    vm.write_offline(0xab, 0, "1M");
    vm.start();
    let api = ha.api();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    let (status, body) = api.put(
        &format!("/api/v1/vms/{}/ha", vm.uuid()),
        &json!({"enabled": true, "method": "restore"}),
    );
    assert_eq!(status, 200, "{body}");
    ha.wait_protected_on(1, 1);
    let job = api.post_job(
        &format!("/api/v1/vms/{}/backups", vm.uuid()),
        &json!({"mode": "full"}),
        Duration::from_secs(120),
    );
    assert_eq!(job["state"], "succeeded", "{job}");

    ha.cluster.host(1).kill();
    let on_h2 = ha.cluster.host(2).libvirt();
    wait_until("the VM to run on h2, restored", FAILOVER_DEADLINE, || {
        on_h2
            .try_virsh(&["domstate", vm.name()])
            .is_ok_and(|s| s.trim() == "running")
    });
    let failover = ha.wait_failover_done();
    assert!(
        failover_steps(&failover)
            .iter()
            .any(|s| s.starts_with("started:")),
        "{failover}"
    );
    // Same identity, its own copy of the disk on h2's storage, with the data.
    assert_eq!(on_h2.virsh(&["domuuid", vm.name()]).trim(), vm.uuid());
    let restored = ha.cluster.host(2).local_images().join(vm.disk_file_name());
    assert_image_pattern(&restored, 0xab, 0, 1024 * 1024);
    let (_, v) = api.get(&format!("/api/v1/vms/{}", vm.uuid()));
    assert_eq!(v["host"], ha.host_ids[1].as_str(), "{v}");
}

/// Protects an existing VM with the given settings.
fn protect(ha: &HaCluster, vm: &TinyVm, settings: Value) {
    let api = ha.api();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    let (status, body) = api.put(&format!("/api/v1/vms/{}/ha", vm.uuid()), &settings);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn each_vm_returns_to_its_state_before_the_failure_in_priority_order() {
    let ha = HaCluster::start(2);
    let h1 = ha.cluster.host(1);
    let running = h1.define_tiny_vm("was-running");
    let paused = h1.define_tiny_vm("was-paused");
    let stopped = h1.define_tiny_vm("was-stopped");
    running.start();
    paused.start();
    h1.libvirt().virsh(&["suspend", paused.name()]);
    protect(&ha, &running, json!({"enabled": true, "priority": "low"}));
    protect(&ha, &paused, json!({"enabled": true, "priority": "high"}));
    protect(
        &ha,
        &stopped,
        json!({"enabled": true, "priority": "medium"}),
    );
    ha.wait_protected_on(1, 3);
    let api = ha.api();
    wait_until(
        "the controller to know the paused VM",
        READY_TIMEOUT,
        || api.get(&format!("/api/v1/vms/{}", paused.uuid())).1["power_state"] == "paused",
    );
    let disks = [
        running.disk_file_name(),
        paused.disk_file_name(),
        stopped.disk_file_name(),
    ];
    let monitor = DoubleRunMonitor::start(&disks);

    h1.kill();
    let failover = ha.wait_failover_done();
    let on_h2 = ha.cluster.host(2).libvirt();
    assert_eq!(on_h2.domstate(running.name()), "running");
    assert_eq!(on_h2.domstate(paused.name()), "paused");
    assert_eq!(
        on_h2.domstate(stopped.name()),
        "shut off",
        "defined, not started"
    );
    let started: Vec<String> = failover_steps(&failover)
        .into_iter()
        .filter(|s| s.starts_with("started:"))
        .collect();
    let order = [paused.name(), stopped.name(), running.name()];
    assert_eq!(started.len(), 3, "{started:?}");
    for (step, name) in started.iter().zip(order) {
        assert!(step.contains(name), "priority order: {started:?}");
    }
    monitor.assert_never_doubled();
}

#[test]
fn a_vm_that_cannot_be_placed_is_raised_and_placed_once_room_appears() {
    let ha = HaCluster::start(2);
    // h2 runs a VM of anti-affinity group "db": a second one may not join it.
    let blocker = ha.cluster.host(2).define_tiny_vm("db-a");
    blocker.start();
    protect(
        &ha,
        &blocker,
        json!({"enabled": false, "anti_affinity_group": "db"}),
    );
    let vm = ha.cluster.host(1).define_tiny_vm("db-b");
    vm.start();
    protect(
        &ha,
        &vm,
        json!({"enabled": true, "anti_affinity_group": "db"}),
    );
    ha.wait_protected_on(1, 1);
    let api = ha.api();
    wait_until("the controller to know both run", READY_TIMEOUT, || {
        [&vm, &blocker]
            .iter()
            .all(|v| api.get(&format!("/api/v1/vms/{}", v.uuid())).1["power_state"] == "running")
    });

    ha.cluster.host(1).kill();
    wait_until(
        "the VM to be raised as unplaceable",
        FAILOVER_DEADLINE,
        || {
            let (_, events) = api.get(&format!("/api/v1/ha/events?source={}", ha.host_ids[0]));
            events.as_array().unwrap().iter().any(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("ALERT") && m.contains(vm.name()))
            })
        },
    );
    assert_eq!(ha.failovers()[0]["state"], "running", "still trying");
    assert!(running_qemu_hosts(vm.disk_file_name()).is_empty());

    // Room appears: the other "db" VM stops; the retry places it.
    ha.cluster
        .host(2)
        .libvirt()
        .virsh(&["destroy", blocker.name()]);
    ha.wait_running_only_on(&vm, 2);
    let failover = ha.wait_failover_done();
    let steps = failover_steps(&failover);
    assert!(
        steps.iter().any(|s| s.starts_with("unplaceable:")),
        "{steps:?}"
    );
    assert!(steps.iter().any(|s| s.starts_with("placed:")), "{steps:?}");
}

#[test]
fn an_exact_restore_onto_another_host_is_refused_while_the_vm_runs_and_moves_it_once_stopped() {
    let ha = HaCluster::start(2);
    let vm = ha.cluster.host(1).define_local_tiny_vm("move-by-restore");
    vm.write_offline(0xcd, 0, "1M");
    vm.start();
    let api = ha.api();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    let backup = api.full_backup(vm.uuid());
    let restore = format!("/api/v1/backups/{backup}/restore");
    let onto_h2 = json!({"host": "h2", "start": true});

    let (status, body) = api.post(&restore, &onto_h2);
    assert_eq!(status, 409, "it runs on h1: {body}");
    assert!(
        ha.cluster.hosts_defining(vm.name()) == ["lbh1"],
        "nothing written on h2"
    );

    ha.cluster.host(1).libvirt().virsh(&["destroy", vm.name()]);
    wait_until("the controller to see it stopped", READY_TIMEOUT, || {
        api.get(&format!("/api/v1/vms/{}", vm.uuid())).1["power_state"] == "stopped"
    });
    let job = api.post_job(&restore, &onto_h2, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job}");
    let on_h2 = ha.cluster.host(2).libvirt();
    assert_eq!(on_h2.domstate(vm.name()), "running");
    assert_eq!(
        on_h2.virsh(&["domuuid", vm.name()]).trim(),
        vm.uuid(),
        "same identity"
    );
    let restored = ha.cluster.host(2).local_images().join(vm.disk_file_name());
    assert_image_pattern(&restored, 0xcd, 0, 1024 * 1024);
    // The old host forgets its stopped copy; the VM lives on h2 only.
    wait_until("h1 to forget its copy", FAILOVER_DEADLINE, || {
        ha.cluster.hosts_defining(vm.name()) == ["lbh2"]
    });
    let (_, v) = api.get(&format!("/api/v1/vms/{}", vm.uuid()));
    assert_eq!(v["host"], ha.host_ids[1].as_str(), "{v}");
}

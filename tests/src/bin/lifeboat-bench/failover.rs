//! `failover`: seconds from a host's death to its HA VM running on another
//! host, and from a partition to the partitioned host's self-fence, over
//! several runs with the default HA settings, on a two-host topology (one
//! network namespace and libvirtd per host, shared storage). The VM
//! ping-pongs between the hosts: each run kills (or partitions) the host it
//! runs on, then brings that host back. Baseline in the same run: a bare
//! `virsh start` of the same VM, the part of a failover no controller can
//! avoid. A monitor checks every 20 ms that no two QEMUs ever use the disk.

use std::time::Instant;

use lifeboat_e2e::*;

use crate::median;

pub fn run(args: &[String]) {
    let mut runs = 10;
    for (flag, value) in crate::flag_values(args) {
        match flag.as_str() {
            "--runs" => runs = value.max(1),
            _ => crate::usage(),
        }
    }
    let mut ha = HaCluster::start(2);
    let vm = ha.protected_vm(1, "bench-failover");
    let monitor = DoubleRunMonitor::start(&[vm.disk_file_name()]);
    let baseline = bare_start_secs(&ha, &vm);

    let mut deaths = Vec::new();
    let mut on = 1;
    for run in 1..=runs {
        let other = 3 - on;
        let killed = ha.cluster.host(on).kill();
        wait_qemu_on(&ha, &vm, other);
        let secs = killed.elapsed().as_secs_f64();
        deaths.push(secs);
        eprintln!("death run {run}: h{on} killed → VM running on h{other} in {secs:.2} s");
        ha.wait_running_only_on(&vm, other);
        ha.revive(on);
        wait_forgotten(&ha, &vm, other);
        ha.wait_protected_on(other, 1);
        on = other;
    }

    let mut fences = Vec::new();
    let mut partitions = Vec::new();
    for run in 1..=runs {
        let other = 3 - on;
        let host = ha.cluster.host(on);
        host.partition();
        let cut = Instant::now();
        crate::poll_fast(
            "the partitioned host to stop its VM",
            FAILOVER_DEADLINE,
            || {
                (!running_qemu_hosts(vm.disk_file_name()).contains(&format!("lbh{on}")))
                    .then_some(())
            },
        );
        let fenced = cut.elapsed().as_secs_f64();
        wait_qemu_on(&ha, &vm, other);
        let moved = cut.elapsed().as_secs_f64();
        fences.push(fenced);
        partitions.push(moved);
        eprintln!(
            "partition run {run}: h{on} cut off → self-fence {fenced:.2} s, running on h{other} {moved:.2} s"
        );
        ha.wait_running_only_on(&vm, other);
        host.heal();
        ha.api()
            .wait_host_status(&format!("h{on}"), "online", FAILOVER_DEADLINE);
        wait_forgotten(&ha, &vm, other);
        ha.wait_protected_on(other, 1);
        on = other;
    }
    monitor.assert_never_doubled();
    let (scans, gap) = monitor.scans();
    let failovers = ha.failovers();
    let double_runs = monitor.doubles().len();

    println!("failover benchmark: {runs} runs each, default HA settings, 2 hosts");
    println!("  bare `virsh start` of the VM (baseline): {baseline:.2} s");
    print_stats("host death → VM running elsewhere", &deaths, baseline);
    print_stats("partition → self-fence (VM stopped)", &fences, baseline);
    print_stats("partition → VM running elsewhere", &partitions, baseline);
    println!(
        "  failovers recorded: {}; double runs: {double_runs} ({scans} scans, longest gap {gap:?})",
        failovers.len()
    );
    if let Some(f) = failovers.first() {
        println!("  last failover's timeline (s after last sign of life):");
        for step in f["timeline"].as_array().into_iter().flatten() {
            println!(
                "    {:>6.1}  {}",
                step["seconds"].as_f64().unwrap_or(0.0),
                step["what"].as_str().unwrap_or("")
            );
        }
    }
}

fn print_stats(what: &str, secs: &[f64], baseline: f64) {
    let mut sorted = secs.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let p95 = sorted[((sorted.len() as f64 * 0.95).ceil() as usize).clamp(1, sorted.len()) - 1];
    let med = median(sorted.clone());
    println!(
        "  {what}: median {med:.2} s, p95 {p95:.2} s, min {:.2} s, max {:.2} s ({:.1}× a bare start)",
        sorted[0],
        sorted[sorted.len() - 1],
        med / baseline
    );
}

/// Polls fast for the VM running on host `n`: a QEMU of it in that host,
/// and libvirt there calling it running.
fn wait_qemu_on(ha: &HaCluster, vm: &TinyVm, n: usize) {
    let host = format!("lbh{n}");
    let libvirt = ha.cluster.host(n).libvirt();
    crate::poll_fast(
        &format!("{} to run on {host}", vm.name()),
        FAILOVER_DEADLINE,
        || {
            (running_qemu_hosts(vm.disk_file_name()).contains(&host)
                && libvirt
                    .try_virsh(&["domstate", vm.name()])
                    .is_ok_and(|s| s.trim() == "running"))
            .then_some(())
        },
    );
}

/// Waits until only host `n` still defines the VM.
fn wait_forgotten(ha: &HaCluster, vm: &TinyVm, n: usize) {
    let only = vec![format!("lbh{n}")];
    wait_until(
        "the stale definition to be removed",
        FAILOVER_DEADLINE,
        || ha.cluster.hosts_defining(vm.name()) == only,
    );
}

/// Destroys the VM on host 1 and starts it again with `virsh start`,
/// timing the start until it runs; the controller sees no failure.
fn bare_start_secs(ha: &HaCluster, vm: &TinyVm) -> f64 {
    let libvirt = ha.cluster.host(1).libvirt();
    let mut times = Vec::new();
    for _ in 0..3 {
        libvirt.virsh(&["destroy", vm.name()]);
        let t = Instant::now();
        libvirt.virsh(&["start", vm.name()]);
        wait_qemu_on(ha, vm, 1);
        times.push(t.elapsed().as_secs_f64());
    }
    // The controller must know it runs (not "paused" while starting) before
    // a failure, or the failover brings it back paused.
    ha.wait_running_only_on(vm, 1);
    ha.wait_protected_on(1, 1);
    median(times)
}

//! Performance monitoring end to end: a real Linux guest burning CPU and
//! writing its disk under a real libvirtd shows it in the API within two
//! sampling intervals, matching what `virsh domstats` says over the same
//! window; the host's memory matches `/proc/meminfo`; the series, the
//! Prometheus exposition, bad queries, and a scoped user who must not see
//! the VM in any of them.

use std::time::{Duration, Instant};

use lifeboat_e2e::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const INTERVAL_SECS: u64 = 2;
const PASSWORD: &str = "metrics-pass-1";

/// `virsh domstats` counters of one domain: (time of its vCPUs in ns, sum
/// of wr.bytes).
fn domstats(libvirt: &Libvirt, name: &str) -> (u64, u64) {
    let out = libvirt.virsh(&["domstats", "--vcpu", "--block", name]);
    let cpu = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("vcpu.") && l.contains(".time="))
        .filter_map(|l| l.split_once('=')?.1.parse::<u64>().ok())
        .sum();
    let written = out
        .lines()
        .filter(|l| l.trim().starts_with("block.") && l.contains(".wr.bytes="))
        .filter_map(|l| l.trim().split_once('=')?.1.parse::<u64>().ok())
        .sum();
    (cpu, written)
}

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn value(current: &Value, key: &str) -> Option<f64> {
    current["values"][key].as_f64()
}

#[test]
fn a_busy_guest_shows_in_the_api_as_virsh_sees_it() {
    let guest = LinuxGuest::ensure();
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_vm_with_guest_agent("metrics", &guest);
    let hidden = libvirt.define_tiny_vm("metrics-hidden");
    vm.start();
    hidden.start();
    libvirt.wait_guest_agent(vm.name(), BOOT_TIMEOUT);
    let controller = Controller::start();
    let api = controller.api();
    // Bad settings are refused; 2 s is taken and reaches agents.
    let (status, body) = api.put("/api/v1/metrics/settings", &json!({"interval_secs": 0}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.put(
        "/api/v1/metrics/settings",
        &json!({"interval_secs": INTERVAL_SECS}),
    );
    assert_eq!(status, 200, "{body}");
    let _agent = Agent::start(&controller, "metrics-host", Some(libvirt.uri()));
    let host = api.wait_host_status("metrics-host", "online", READY_TIMEOUT);
    let host_id = host["id"].as_str().unwrap().to_string();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    api.wait_vm(hidden.name(), READY_TIMEOUT);
    let vm_path = format!("/api/v1/vms/{}/metrics", vm.uuid());

    // The load: one vCPU spinning, and the disk written with fsync.
    let load = r#"{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c",
        "(while :; do :; done) & (while :; do dd if=/dev/zero of=/mnt/load bs=1M count=4 conv=fsync 2>/dev/null; done) &"]}}"#
        .replace('\n', " ");
    libvirt.virsh(&["qemu-agent-command", vm.name(), &load]);
    let started = Instant::now();
    let busy = poll_until(
        "CPU and disk writes of the busy guest in the API",
        Duration::from_secs(60),
        || {
            let (status, c) = api.try_get(&format!("{vm_path}/current"))?;
            match (value(&c, "cpu"), value(&c, "disk_write")) {
                (Some(cpu), Some(w)) if status == 200 && cpu > 50.0 && w > 0.0 => {
                    Ok(started.elapsed())
                }
                _ => Err(format!("{status} {c}")),
            }
        },
    );
    // Two intervals, and a second for the guest's shell to start the load.
    assert!(
        busy <= Duration::from_secs(2 * INTERVAL_SECS + 3),
        "took {busy:?} to show"
    );

    // The API over a window against virsh's own counters over the same one.
    let (cpu0, written0) = domstats(&libvirt, vm.name());
    let t0 = Instant::now();
    let (mut cpus, mut writes, mut last_at) = (Vec::new(), Vec::new(), String::new());
    while t0.elapsed() < Duration::from_secs(12) {
        let (_, c) = api.get(&format!("{vm_path}/current"));
        let at = c["at"].as_str().unwrap_or_default().to_string();
        if at != last_at {
            cpus.extend(value(&c, "cpu"));
            writes.extend(value(&c, "disk_write"));
            last_at = at;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (cpu1, written1) = domstats(&libvirt, vm.name());
    let seconds = t0.elapsed().as_secs_f64();
    let virsh_cpu = (cpu1 - cpu0) as f64 / 1e9 / seconds * 100.0;
    let virsh_write = (written1 - written0) as f64 / seconds;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    assert!(cpus.len() >= 4, "one new sample per interval: {cpus:?}");
    let (api_cpu, api_write) = (mean(&cpus), mean(&writes));
    println!("CPU: API {api_cpu:.1} %, virsh {virsh_cpu:.1} %; writes: API {api_write:.0} B/s, virsh {virsh_write:.0} B/s");
    // The windows differ by up to an interval at each end: 10 points of
    // CPU, and a third of a bursty write rate.
    assert!(
        (api_cpu - virsh_cpu).abs() <= 10.0,
        "{api_cpu} vs {virsh_cpu}"
    );
    assert!(
        (api_write - virsh_write).abs() <= virsh_write / 3.0,
        "{api_write} vs {virsh_write}"
    );

    // The host's memory is what /proc/meminfo says.
    let (status, h) = api.get(&format!("/api/v1/hosts/{host_id}/metrics/current"));
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        value(&h, "memory_total"),
        Some((meminfo_kib("MemTotal:") * 1024) as f64),
        "{h}"
    );
    let used = ((meminfo_kib("MemTotal:") - meminfo_kib("MemAvailable:")) * 1024) as f64;
    let host_used = value(&h, "memory_used").unwrap();
    assert!(
        (host_used - used).abs() < 0.05 * used.max(1e9),
        "{host_used} vs {used}"
    );
    assert!(value(&h, "cpu").is_some(), "{h}");

    // The series: the minute being added up holds the load; max ≥ avg.
    let (status, series) = api.get(&format!("{vm_path}?metric=cpu&timeframe=hour"));
    assert_eq!(status, 200, "{series}");
    let points = series["metrics"]["cpu"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 60);
    assert_eq!(series["step_secs"], 60);
    let last_avg = points.last().unwrap()[1].as_f64().unwrap();
    assert!(last_avg > 30.0, "{series}");
    let (_, max) = api.get(&format!("{vm_path}?metric=cpu&timeframe=hour&cf=max"));
    let last_max = max["metrics"]["cpu"]["points"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()[1]
        .as_f64()
        .unwrap();
    assert!(last_max >= last_avg * 0.97, "{last_max} < {last_avg}");
    let (status, all) = api.get(&format!("/api/v1/hosts/{host_id}/metrics?timeframe=year"));
    assert_eq!(status, 200, "{all}");
    assert!(
        all["metrics"]["disk_read_iops"]["points"].is_array(),
        "{all}"
    );
    for bad in [
        "?timeframe=fortnight",
        "?cf=median",
        "?metric=temperature",
        "?metric=balloon",
    ] {
        let (status, body) = api.get(&format!("{vm_path}{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = api.get("/api/v1/vms/00000000-0000-4000-8000-000000000000/metrics");
    assert_eq!(status, 404);

    // Prometheus, at the usual path, with the API's credentials.
    let scrape = api.raw_request("GET", "/metrics", &[], b"");
    assert_eq!(scrape.status, 200);
    let text = scrape.text();
    let line = format!("lifeboat_vm_cpu_percent{{uuid=\"{}\"", vm.uuid());
    assert!(text.contains(&line), "{text}");
    assert!(
        text.contains("lifeboat_host_memory_used_bytes{id="),
        "{text}"
    );
    assert_eq!(
        api.anonymous()
            .raw_request("GET", "/metrics", &[], b"")
            .status,
        401
    );

    // A scoped user: the hidden VM is absent from every answer.
    api.user_without_vm(hidden.uuid(), "watcher", PASSWORD, "auditor");
    let watcher = controller.api_as("watcher", PASSWORD);
    poll_until(
        "the hidden VM's own figures",
        Duration::from_secs(30),
        || {
            let (_, c) = api.try_get(&format!("/api/v1/vms/{}/metrics/current", hidden.uuid()))?;
            value(&c, "cpu").map(|_| ()).ok_or(c.to_string())
        },
    );
    let hidden_path = format!("/api/v1/vms/{}/metrics", hidden.uuid());
    assert_eq!(watcher.get(&hidden_path).0, 404);
    assert_eq!(watcher.get(&format!("{hidden_path}/current")).0, 404);
    assert_eq!(watcher.get(&format!("{vm_path}/current")).0, 200);
    let seen = watcher.raw_request("GET", "/metrics", &[], b"").text();
    assert!(
        !seen.contains(hidden.uuid()) && !seen.contains(hidden.name()),
        "{seen}"
    );
    assert!(seen.contains(vm.uuid()));
    let (_, sorted) = watcher.get("/api/v1/vms?sort=cpu-use&order=desc");
    let names: Vec<&str> = sorted
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(
        names.first(),
        Some(&vm.name()),
        "the busy VM first: {names:?}"
    );
    assert!(!names.contains(&hidden.name()));

    // The console: gauges and graphs with axes and data, no JavaScript.
    let mut console = ConsoleClient::new(&controller);
    assert_eq!(console.login(controller.admin_password()).status, 303);
    let dashboard = console.get("/").text();
    assert!(dashboard.contains("Estate CPU"), "{dashboard}");
    assert!(
        dashboard.contains("class=\"value level-"),
        "a filled gauge: {dashboard}"
    );
    assert!(!dashboard.contains("<script"), "no JavaScript");
    for page in [format!("/hosts/{host_id}"), format!("/vms/{}", vm.uuid())] {
        let text = console.get(&page).text();
        assert!(text.contains("<g class=\"axis\">"), "{page}: axes");
        assert!(text.contains("class=\"ytick\""), "{page}: value labels");
        assert!(text.contains("class=\"xtick\""), "{page}: time labels");
        let cpu_line = text
            .split("class=\"line s0\" d=\"")
            .nth(1)
            .map(|d| &d[..d.find('"').unwrap_or(0)])
            .unwrap_or_default();
        assert!(
            cpu_line.starts_with('M'),
            "{page}: a CPU line with data: {cpu_line:?}"
        );
        assert!(
            text.contains("http-equiv=\"refresh\""),
            "{page}: refreshes itself"
        );
        let week = console.get(&format!("{page}?timeframe=week"));
        assert_eq!(week.status, 200);
        assert!(week.text().contains("last week"));
    }
    let sorted = console.get("/vms?sort=cpu-use&order=desc").text();
    let busy_at = sorted.find(vm.name()).expect("the busy VM is listed");
    let idle_at = sorted.find(hidden.name()).expect("the idle VM is listed");
    assert!(busy_at < idle_at, "sorted by CPU use, busiest first");

    let vm_page = format!("/vms/{}", vm.uuid());
    let host_page = format!("/hosts/{host_id}");
    let shots = browser_screenshots(&controller, &[&host_page, &vm_page]);
    for shot in &shots {
        eprintln!("screenshot: {}", shot.display());
    }
    assert_eq!(shots.len(), 3);
}

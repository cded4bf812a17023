//! `metrics`: simulated hosts (the `sim` driver: load generation only)
//! report their VMs' figures every interval; measured over a window: the
//! values the controller takes in per second, its CPU and memory, the
//! store's size, and the console's dashboard, host and VM pages (gauges and
//! graphs) against a static asset served by the same stack in the same run.

use std::time::{Duration, Instant};

use lifeboat_e2e::*;

struct Args {
    agents: usize,
    vms: usize,
    interval: usize,
    seconds: usize,
    requests: usize,
}

fn parse_args(flags: &[String]) -> Args {
    let mut args = Args {
        agents: 200,
        vms: 25_000,
        interval: 10,
        seconds: 60,
        requests: 200,
    };
    for (flag, value) in super::flag_values(flags) {
        match flag.as_str() {
            "--agents" => args.agents = value,
            "--vms" => args.vms = value,
            "--interval" => args.interval = value,
            "--seconds" => args.seconds = value,
            "--requests" => args.requests = value,
            _ => super::usage(),
        }
    }
    args
}

/// The controller's count of metric values taken in, from `/metrics`.
fn values_taken(api: &Api) -> u64 {
    let text = api.raw_request("GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix("lifeboat_metric_values_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

fn p99(api: &Api, cookie: &str, requests: usize, path: &str) -> (f64, f64) {
    let mut ms: Vec<f64> = (0..requests)
        .map(|_| {
            let t = Instant::now();
            let r = api.raw_request("GET", path, &[("cookie", cookie)], b"");
            assert_eq!(r.status, 200, "GET {path}");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

pub fn run(flags: &[String]) {
    let args = parse_args(flags);
    let controller = Controller::start();
    let api = controller.api();
    let (status, body) = api.put(
        "/api/v1/metrics/settings",
        &json!({"interval_secs": args.interval}),
    );
    assert_eq!(status, 200, "{body}");
    let (_agents, total) = super::sim_fleet(&controller, args.agents, args.vms);
    // Two intervals so every agent is sampling with rates.
    std::thread::sleep(Duration::from_secs(2 * args.interval as u64 + 2));
    let pid = controller.pid().expect("controller pid");
    let store = controller.data_dir().join("lifeboat.redb");
    let store_before = std::fs::metadata(&store).map(|m| m.len()).unwrap_or(0);
    let (values0, cpu0, t0) = (values_taken(&api), cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(args.seconds as u64));
    let (values1, cpu1, window) = (values_taken(&api), cpu_seconds(pid), t0.elapsed());
    let store_after = std::fs::metadata(&store).map(|m| m.len()).unwrap_or(0);
    let per_second = (values1 - values0) as f64 / window.as_secs_f64();
    let cpu_percent = (cpu1 - cpu0) / window.as_secs_f64() * 100.0;
    // Each VM's sample is 9 values, each host's 12 (fewer when a rate is
    // not known yet).
    let vm_samples_per_second = total as f64 / args.interval as f64;

    let (status, session) = api.anonymous().post(
        "/api/v1/session",
        &json!({"username": ADMIN_USER, "password": controller.admin_password()}),
    );
    assert_eq!(status, 201, "{session}");
    let cookie = format!(
        "lb_session={}",
        session["token"].as_str().unwrap_or_default()
    );
    let (_, vms) = api.get("/api/v1/vms?per_page=1&state=running");
    let vm = vms[0]["id"].as_str().expect("a running VM").to_string();
    let host = vms[0]["host"].as_str().expect("its host").to_string();
    let n = args.requests;
    let rows = [
        ("static asset (baseline)", "/assets/style.css".to_string()),
        ("dashboard (gauges)", "/".to_string()),
        ("host page (gauges, 7 graphs)", format!("/hosts/{host}")),
        ("VM page (gauges, 5 graphs), hour", format!("/vms/{vm}")),
        ("VM page, month", format!("/vms/{vm}?timeframe=month")),
        (
            "API: VM series, day",
            format!("/api/v1/vms/{vm}/metrics?timeframe=day"),
        ),
        ("Prometheus /metrics (all objects)", "/metrics".to_string()),
    ];
    let measured: Vec<(&str, (f64, f64))> = rows
        .iter()
        .map(|(name, path)| (*name, p99(&api, &cookie, n, path)))
        .collect();
    let baseline = measured[0].1 .1.max(0.001);

    println!(
        "{total} VMs on {} simulated hosts, sampled every {} s; window {:.0} s",
        args.agents,
        args.interval,
        window.as_secs_f64()
    );
    println!("metric values taken in: {per_second:.0}/s ({vm_samples_per_second:.0} VM samples/s)");
    println!("controller CPU: {cpu_percent:.1} % of one core (2 cores: 200 %)");
    println!(
        "controller RSS: {} MiB now, {} MiB peak",
        status_kib(pid, "VmRSS:") / 1024,
        status_kib(pid, "VmHWM:") / 1024
    );
    println!(
        "store: {:.1} MiB, grew {:.1} MiB in the window",
        store_after as f64 / 1048576.0,
        store_after.saturating_sub(store_before) as f64 / 1048576.0
    );
    println!();
    println!(
        "| request ({n} each, sequential, keep-alive) | p50 ms | p99 ms | p99 / baseline p99 |"
    );
    println!("|---|---|---|---|");
    for (name, (p50, p99)) in &measured {
        println!("| {name} | {p50:.2} | {p99:.2} | {:.1}× |", p99 / baseline);
    }
}

//! Benchmarks that need real processes. Build first:
//! `cargo build --release -p lifeboat -p lifeboat-agent -p lifeboat-e2e`, then
//! `./target/release/lifeboat-bench console|backup|failover|appliance|metrics|snmp [--flag N ...]`.
//! Results go to docs/PERFORMANCE.md by hand, with the machine and date.

mod appliance;
mod backup;
mod console;
mod failover;
mod metrics;
mod snmp;

fn usage() -> ! {
    eprintln!(
        "usage: lifeboat-bench console [--vms N] [--agents N] [--requests N]\n       \
         lifeboat-bench backup [--size-mib N] [--runs N] [--full-only 1]\n       \
         lifeboat-bench failover [--runs N]\n       \
         lifeboat-bench appliance [--runs N]\n       \
         lifeboat-bench metrics [--agents N] [--vms N] [--interval S] [--seconds N] [--requests N]\n       \
         lifeboat-bench snmp [--agents N] [--vms N] [--repetitions N] [--requests N] [--walks N]"
    );
    std::process::exit(2)
}

/// `--flag N` pairs; anything else is a usage error.
fn flag_values(flags: &[String]) -> Vec<(String, usize)> {
    flags
        .chunks(2)
        .map(|pair| match pair {
            [flag, value] => match value.parse() {
                Ok(v) => (flag.clone(), v),
                Err(_) => usage(),
            },
            _ => usage(),
        })
        .collect()
}

/// Polls `attempt` every 10 ms until it gives a value, panicking after
/// `timeout` with `what`. Timed waits use this: the harness's waits back
/// off to 250 ms and would round every measurement up to such a step.
fn poll_fast<T>(
    what: &str,
    timeout: std::time::Duration,
    mut attempt: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// How many simulated hosts one agent process plays (`--sim-hosts`).
const SIM_HOSTS_PER_PROCESS: usize = 500;

/// `agents` simulated hosts (the `sim` driver: load generation only) with
/// `vms` VMs between them, once all are in the inventory; and their count.
fn sim_fleet(
    controller: &lifeboat_e2e::Controller,
    agents: usize,
    vms: usize,
) -> (Vec<lifeboat_e2e::Agent>, usize) {
    let api = controller.api();
    let per_agent = vms.div_ceil(agents);
    // A process per host would leave the machine's cores to thousands of
    // agent runtimes rather than to the controller being measured.
    let fleet: Vec<lifeboat_e2e::Agent> = (0..agents)
        .step_by(SIM_HOSTS_PER_PROCESS)
        .map(|first| {
            let hosts = SIM_HOSTS_PER_PROCESS.min(agents - first);
            lifeboat_e2e::Agent::options(&format!("sim{first:04}"))
                .arg("--sim-vms")
                .arg(&per_agent.to_string())
                .start_sim_fleet(controller, hosts)
        })
        .collect();
    let total = per_agent * agents;
    lifeboat_e2e::poll_until(
        &format!("{total} VMs in the inventory"),
        std::time::Duration::from_secs(600),
        || {
            let r = api.raw_request("GET", "/api/v1/vms?per_page=1", &[], b"");
            let n: usize = r
                .header("x-total-count")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if n == total {
                Ok(())
            } else {
                Err(format!("{n} so far"))
            }
        },
    );
    (fleet, total)
}

/// The middle value (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("console") => console::run(&args[1..]),
        Some("backup") => backup::run(&args[1..]),
        Some("failover") => failover::run(&args[1..]),
        Some("appliance") => appliance::run(&args[1..]),
        Some("metrics") => metrics::run(&args[1..]),
        Some("snmp") => snmp::run(&args[1..]),
        _ => usage(),
    }
}

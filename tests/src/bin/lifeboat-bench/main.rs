//! Benchmarks that need real processes. Build first:
//! `cargo build --release -p lifeboat -p lifeboat-agent -p lifeboat-e2e`, then
//! `./target/release/lifeboat-bench console|backup|failover|appliance|metrics [--flag N ...]`.
//! Results go to docs/PERFORMANCE.md by hand, with the machine and date.

mod appliance;
mod backup;
mod console;
mod failover;
mod metrics;

fn usage() -> ! {
    eprintln!(
        "usage: lifeboat-bench console [--vms N] [--agents N] [--requests N]\n       \
         lifeboat-bench backup [--size-mib N] [--runs N] [--full-only 1]\n       \
         lifeboat-bench failover [--runs N]\n       \
         lifeboat-bench appliance [--runs N]\n       \
         lifeboat-bench metrics [--agents N] [--vms N] [--interval S] [--seconds N] [--requests N]"
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
        _ => usage(),
    }
}

//! `console`: a controller with 25,000 VMs on simulated hosts (the `sim`
//! driver: load generation only), then latency of console pages and API
//! lists, each compared with a static asset served by the same stack in the
//! same run, and the controller's resident memory.

use std::time::Instant;

use lifeboat_e2e::*;

struct Args {
    vms: usize,
    agents: usize,
    requests: usize,
}

fn parse_args(flags: &[String]) -> Args {
    let mut args = Args {
        vms: 25_000,
        agents: 10,
        requests: 300,
    };
    for (flag, value) in super::flag_values(flags) {
        match flag.as_str() {
            "--vms" => args.vms = value,
            "--agents" => args.agents = value,
            "--requests" => args.requests = value,
            _ => super::usage(),
        }
    }
    args
}

struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
}

fn measure(api: &Api, cookie: &str, requests: usize, path: impl Fn(usize) -> String) -> Stats {
    let mut ms: Vec<f64> = Vec::with_capacity(requests);
    for i in 0..requests {
        let p = path(i);
        let t = Instant::now();
        let r = api.raw_request("GET", &p, &[("cookie", cookie)], b"");
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.status, 200, "GET {p}: {}", r.status);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

pub fn run(flags: &[String]) {
    let args = parse_args(flags);
    let controller = Controller::start();
    let api = controller.api();
    let started = Instant::now();
    let (_agents, total) = super::sim_fleet(&controller, args.agents, args.vms);
    let ingest = started.elapsed();
    let (status, session) = api.anonymous().post(
        "/api/v1/session",
        &json!({"username": ADMIN_USER, "password": controller.admin_password()}),
    );
    assert_eq!(status, 201, "{session}");
    let cookie = format!(
        "lb_session={}",
        session["token"].as_str().unwrap_or_default()
    );
    // A user restricted by an access policy: every listing is filtered by
    // VM categories (a name rule matching the VMs of one host in ten).
    let admin = controller.api();
    for (path, body) in [
        (
            "/api/v1/category-rules",
            json!({"key": "department", "value": "Finance", "name_pattern": "sim-simhost0000-*"}),
        ),
        (
            "/api/v1/policies",
            json!({"name": "finance", "rules": [{"effect": "allow", "key": "department", "value": "Finance"}]}),
        ),
        (
            "/api/v1/users",
            json!({"name": "finance-viewer", "password": "bench-passw0rd", "role": "auditor", "policies": ["finance"]}),
        ),
    ] {
        let (status, answer) = admin.post(path, &body);
        assert_eq!(status, 201, "{path}: {answer}");
    }
    let (status, restricted) = api.anonymous().post(
        "/api/v1/session",
        &json!({"username": "finance-viewer", "password": "bench-passw0rd"}),
    );
    assert_eq!(status, 201, "{restricted}");
    let restricted_cookie = format!(
        "lb_session={}",
        restricted["token"].as_str().unwrap_or_default()
    );
    let pages = total.div_ceil(50);
    let n = args.requests;
    // A fixed pseudo-random page sequence, the same in every run.
    let page = |i: usize| (i * 7919) % pages + 1;

    let rows: Vec<(&str, Stats)> = vec![
        (
            "static asset (baseline)",
            measure(&api, &cookie, n, |_| "/assets/style.css".into()),
        ),
        (
            "console: VM list page",
            measure(&api, &cookie, n, |i| format!("/vms?page={}", page(i))),
        ),
        (
            "console: VM list sorted by memory, desc",
            measure(&api, &cookie, n, |i| {
                format!("/vms?sort=memory&order=desc&page={}", page(i))
            }),
        ),
        (
            "console: VM list filtered by name",
            measure(&api, &cookie, n, |i| {
                format!("/vms?name=sim-simhost000{}-00{}", i % 10, i % 100)
            }),
        ),
        (
            "console: dashboard",
            measure(&api, &cookie, n, |_| "/".into()),
        ),
        (
            "API: GET /api/v1/vms?per_page=50",
            measure(&api, &cookie, n, |i| {
                format!("/api/v1/vms?per_page=50&page={}", page(i))
            }),
        ),
        (
            "console: VM list page, user with an access policy",
            measure(&api, &restricted_cookie, n, |i| {
                format!("/vms?page={}", page(i) % 50 + 1)
            }),
        ),
        (
            "console: dashboard, user with an access policy",
            measure(&api, &restricted_cookie, n, |_| "/".into()),
        ),
    ];
    let pid = controller.pid().unwrap_or(0);
    let baseline = rows[0].1.p99.max(0.001);
    println!(
        "VMs: {total} on {} simulated hosts; inventory ingested in {:.1} s",
        args.agents,
        ingest.as_secs_f64()
    );
    println!(
        "controller RSS: {} MiB now, {} MiB peak",
        status_kib(pid, "VmRSS:") / 1024,
        status_kib(pid, "VmHWM:") / 1024
    );
    println!();
    println!("| request ({n} each, sequential, keep-alive) | p50 ms | p99 ms | max ms | p99 / baseline p99 |");
    println!("|---|---|---|---|---|");
    for (name, s) in &rows {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.1}× |",
            s.p50,
            s.p99,
            s.max,
            s.p99 / baseline
        );
    }
}

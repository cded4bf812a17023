//! `lifeboat-bench snmp`: LIFEBOAT-MIB's VM table walked with GETBULK at
//! fleet size (simulated hosts), timed per request, beside a baseline
//! measured in the same run: a GET of sysUpTime.0 (the agent's cost with
//! no table), and the REST API's full VM list. Also net-snmp's own
//! `snmpbulkwalk` of the table, wall clock, as an operator would run it.

use std::process::Command;
use std::time::{Duration, Instant};

use async_snmp::{Auth, Client, Oid, Value};
use lifeboat_e2e::{free_port, json, Controller, ADMIN_USER};

const COMMUNITY: &str = "bench-ro";
/// lbVmTable and its lbVmName column.
const VM_TABLE: [u32; 11] = [1, 3, 6, 1, 4, 1, 32473, 1, 1, 3, 1];
const SYS_UPTIME: [u32; 9] = [1, 3, 6, 1, 2, 1, 1, 3, 0];

struct Args {
    agents: usize,
    vms: usize,
    repetitions: usize,
    requests: usize,
    walks: usize,
}

fn parse_args(flags: &[String]) -> Args {
    let mut a = Args {
        agents: 2000,
        vms: 25_000,
        repetitions: 40,
        requests: 500,
        walks: 3,
    };
    for (flag, v) in super::flag_values(flags) {
        match flag.as_str() {
            "--agents" => a.agents = v,
            "--vms" => a.vms = v,
            "--repetitions" => a.repetitions = v,
            "--requests" => a.requests = v,
            "--walks" => a.walks = v,
            _ => super::usage(),
        }
    }
    a
}

fn quantile(ms: &mut [f64], q: f64) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[((ms.len() as f64 - 1.0) * q).round() as usize]
}

/// One GETBULK walk of lbVmTable: (rows, milliseconds per request, wall).
async fn walk(client: &Client, repetitions: u32) -> (usize, Vec<f64>, Duration) {
    let table = Oid::from_slice(&VM_TABLE);
    let names = Oid::from_slice(&[&VM_TABLE[..], &[2]].concat());
    let mut next = table.clone();
    let (mut rows, mut per_request) = (0, Vec::new());
    let started = Instant::now();
    'walk: loop {
        let t = Instant::now();
        let got = client
            .get_bulk(std::slice::from_ref(&next), 0, repetitions)
            .await
            .expect("GETBULK");
        per_request.push(t.elapsed().as_secs_f64() * 1000.0);
        if got.is_empty() {
            break;
        }
        for vb in got {
            if !vb.oid.starts_with(&table) || matches!(vb.value, Value::EndOfMibView) {
                break 'walk;
            }
            rows += usize::from(vb.oid.starts_with(&names));
            next = vb.oid;
        }
    }
    (rows, per_request, started.elapsed())
}

pub fn run(flags: &[String]) {
    let args = parse_args(flags);
    let controller = Controller::start();
    let api = controller.api();
    let (_agents, total) = super::sim_fleet(&controller, args.agents, args.vms);
    let port = free_port();
    let (status, body) = api.put(
        "/api/v1/snmp",
        &json!({"enabled": true, "listen": format!("127.0.0.1:{port}"),
            "communities": [{"community": COMMUNITY, "networks": ["127.0.0.1"], "user": ADMIN_USER}],
            "users": []}),
    );
    assert_eq!(status, 200, "{body}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let target = format!("127.0.0.1:{port}");
    let client = runtime.block_on(async {
        Client::builder(target.as_str(), Auth::v2c(COMMUNITY))
            .request_timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("SNMP client")
    });
    let uptime = Oid::from_slice(&SYS_UPTIME);
    super::poll_fast("the SNMP agent", Duration::from_secs(60), || {
        runtime.block_on(client.get(&uptime)).ok()
    });

    // Baseline: the cheapest request, as many times.
    let mut get_ms: Vec<f64> = (0..args.requests)
        .map(|_| {
            let t = Instant::now();
            runtime.block_on(client.get(&uptime)).expect("GET");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let (get_p50, get_p99) = (quantile(&mut get_ms, 0.5), quantile(&mut get_ms, 0.99));

    let mut bulk_ms = Vec::new();
    let mut walls = Vec::new();
    for _ in 0..args.walks {
        let (rows, ms, wall) = runtime.block_on(walk(&client, args.repetitions as u32));
        assert_eq!(rows, total, "every VM is a row");
        bulk_ms.extend(ms);
        walls.push(wall.as_secs_f64());
    }
    let requests_per_walk = bulk_ms.len() / args.walks;
    let (bulk_p50, bulk_p99) = (quantile(&mut bulk_ms, 0.5), quantile(&mut bulk_ms, 0.99));
    // The slowest requests are the ones that recompute the caller's view
    // (every 2 s).
    let bulk_max = quantile(&mut bulk_ms, 1.0);
    let wall = super::median(walls);

    // Baseline: the same rows over REST, in one answer.
    let t = Instant::now();
    let (status, list) = api.get("/api/v1/vms");
    let rest = t.elapsed().as_secs_f64();
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(total));

    // net-snmp, as an operator runs it.
    let t = Instant::now();
    let out = Command::new("snmpbulkwalk")
        .env("MIBS", "")
        .args(["-v2c", "-c", COMMUNITY, "-On", "-Cr40", "-t", "10"])
        .arg(format!("udp:{target}"))
        .arg(".1.3.6.1.4.1.32473.1.1.3")
        .output()
        .expect("snmpbulkwalk (package snmp)");
    let net_snmp = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let varbinds = String::from_utf8_lossy(&out.stdout).lines().count();

    println!(
        "{total} VMs on {} simulated hosts; GETBULK max-repetitions {}, {} walks",
        args.agents, args.repetitions, args.walks
    );
    println!();
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| GETBULK walk of lbVmTable (9 columns), median wall | {wall:.2} s: {:.0} rows/s, {requests_per_walk} requests |",
        total as f64 / wall
    );
    println!(
        "| GETBULK request p50 / p99 / max | {bulk_p50:.2} / {bulk_p99:.2} / {bulk_max:.1} ms |"
    );
    println!(
        "| baseline: GET sysUpTime.0 p50 / p99 ({} requests) | {get_p50:.2} / {get_p99:.2} ms |",
        args.requests
    );
    println!(
        "| GETBULK p99 / GET p99 | {:.1}× |",
        bulk_p99 / get_p99.max(0.001)
    );
    println!(
        "| baseline: REST GET /api/v1/vms (all rows, one answer) | {rest:.2} s: {:.0} rows/s |",
        total as f64 / rest
    );
    println!("| SNMP walk rows/s / REST rows/s | {:.2}× |", rest / wall);
    println!(
        "| net-snmp snmpbulkwalk -Cr40 of lbVmTable | {net_snmp:.2} s for {varbinds} values |"
    );
}

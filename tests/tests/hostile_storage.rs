//! Whoever can write the shared storage cannot speak for a host there: a
//! storage heartbeat the host did not sign is no sign of its life, a
//! genuine one replayed is not newer, and a fence claim added to it is
//! refused. A dead host with a forger at work still fails over, and for the
//! right reason: silent past the fence timeout, not "it fenced itself".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_e2e::*;

fn write_atomically(path: &std::path::Path, value: &Value) {
    let tmp = path.with_extension("forged.tmp");
    std::fs::write(&tmp, value.to_string()).expect("write forged heartbeat");
    std::fs::rename(&tmp, path).expect("rename forged heartbeat");
}

#[test]
fn a_forged_or_replayed_storage_heartbeat_fakes_neither_life_nor_a_fence() {
    let ha = HaCluster::start(2);
    let vm = ha.protected_vm(1, "forged-beat");
    let monitor = DoubleRunMonitor::start(&[vm.disk_file_name()]);
    let h1 = ha.host_ids[0].clone();
    let beat_file = ha
        .cluster
        .shared_dir()
        .join(".lifeboat-heartbeat")
        .join(format!("{h1}.json"));
    let genuine: Value = poll_until("h1's signed storage heartbeat", READY_TIMEOUT, || {
        let text = std::fs::read_to_string(&beat_file).map_err(|e| e.to_string())?;
        let beat: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if beat["mac"].as_str().is_some_and(|m| m.len() == 64) {
            Ok(beat)
        } else {
            Err(text)
        }
    });

    let killed = ha.cluster.host(1).kill();
    // The forger: the genuine heartbeat replayed, and copies of it with a
    // newer sequence number and a self-fence claim, every 200 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let forger = {
        let (stop, beat_file, uuid) = (stop.clone(), beat_file.clone(), vm.uuid().to_string());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut forged = genuine.clone();
                if n.is_multiple_of(2) {
                    forged["seq"] = json!(genuine["seq"].as_u64().unwrap() + n);
                    forged["fenced"] = json!({"outage": 1, "stopped": [uuid]});
                }
                write_atomically(&beat_file, &forged);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    ha.wait_running_only_on(&vm, 2);
    let took = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    forger.join().expect("forger");
    monitor.assert_never_doubled();

    let failover = ha.wait_failover_done();
    let steps = failover_steps(&failover);
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("failed: silent past the fence timeout")),
        "{steps:?}"
    );
    assert!(
        !steps
            .iter()
            .any(|s| s.starts_with("fenced") || s.starts_with("partitioned")),
        "{steps:?}"
    );
    let (_, events) = ha.api().get(&format!("/api/v1/ha/events?source={h1}"));
    for event in events.as_array().unwrap() {
        assert!(
            event["state"] != "fenced" && event["state"] != "partitioned",
            "{events}"
        );
    }
    // A believed fence claim would have let the VM start after detection
    // (3 s); without one the controller waits out fence timeout + margin.
    assert!(took >= Duration::from_secs(6), "failover after {took:?}");
}

//! An enrolled but hostile host, and strangers on the agent port, against
//! the real controller. A host may lie only about itself: its report of a
//! VM another host owns is refused, audited and raised in its history, and
//! the owner's VM is left alone (still defined, still obeying the
//! controller through its own host). A stranger costs bounded memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use lifeboat_e2e::*;

#[test]
fn a_second_agent_cannot_claim_the_first_hosts_vm_in_any_letter_case() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("claimed");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "owner-host", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("owner-host", vm.name());
    let owner = api.wait_host_status("owner-host", "online", READY_TIMEOUT);
    let owner_id = owner["id"].as_str().unwrap().to_string();

    let mut hostile = HostileAgent::enroll(&controller, "evil-host");
    let claim = vm.uuid().to_uppercase();
    hostile.report(vec![
        reported_vm(&claim, vm.name(), "running"),
        reported_vm("../../etc/passwd", "escape", "running"),
    ]);
    let events_path = format!("/api/v1/ha/events?source={}", hostile.host_id);
    poll_until(
        "the claim to be refused in the hostile host's history",
        READY_TIMEOUT,
        || {
            hostile.heartbeat();
            let (_, events) = api.get(&events_path);
            let text = events.to_string();
            if text.contains("report refused") && text.contains(vm.uuid()) {
                Ok(())
            } else {
                Err(text)
            }
        },
    );
    let (_, audit) = api.get("/api/v1/audit?action=agent%20report");
    let records = audit.as_array().unwrap();
    assert!(
        records.iter().any(|r| r["object"] == "host evil-host"
            && r["result"].as_str().unwrap().contains(vm.uuid())),
        "{audit}"
    );

    // The VM is still the owner's, in every form of its UUID, and nothing
    // of the report (not the path-shaped "UUID" either) became a VM.
    for id in [vm.uuid().to_string(), claim] {
        let (status, found) = api.get(&format!("/api/v1/vms/{id}"));
        assert_eq!(status, 200, "{found}");
        assert_eq!(found["host"], owner_id.as_str(), "{found}");
    }
    let (_, hosts) = api.get("/api/v1/hosts");
    let evil = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "evil-host")
        .cloned()
        .unwrap();
    assert_eq!(evil["vm_count"], 0, "{hosts}");
    let (_, all) = api.get("/api/v1/vms?name=escape");
    assert_eq!(all.as_array().unwrap().len(), 0, "{all}");
    assert_eq!(libvirt.domstate(vm.name()), "shut off", "never undefined");

    // And it still obeys the controller through its own host.
    hostile.heartbeat();
    let job = api.post_job(
        &format!("/api/v1/vms/{}/power", vm.uuid()),
        &json!({"action": "start"}),
        READY_TIMEOUT,
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["host"], owner_id.as_str(), "{job}");
    assert_eq!(libvirt.domstate(vm.name()), "running");
}

#[test]
fn a_hostile_agent_cannot_report_figures_for_another_hosts_vm_or_break_the_archives() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("measured");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "honest-host", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("honest-host", vm.name());

    let mut hostile = HostileAgent::enroll(&controller, "liar-host");
    let forged_vm = json!({"uuid": vm.uuid(), "cpu_percent": 99.5, "memory_used_bytes": 1,
        "disks": [], "nics": []});
    let absurd = json!({"uuid": "../../x", "cpu_percent": 1e300, "disks":
        (0..1000).map(|i| json!({"name": format!("d{i}"), "read_bps": -1.0})).collect::<Vec<_>>(),
        "nics": []});
    let batch = json!({"type": "metrics", "interval_ms": 1000,
        "host": {"cpu_percent": 1e308, "load1": -3.0, "memory_used_bytes": 5,
                 "memory_total_bytes": 10, "swap_used_bytes": 0, "swap_total_bytes": 0,
                 "net": {"rx_bps": 1e30}, "disk": {}},
        "vms": [forged_vm, absurd]});
    let path = format!("/api/v1/hosts/{}/metrics/current", hostile.host_id);
    let current = poll_until("the liar's own figures", READY_TIMEOUT, || {
        hostile.send(&batch);
        hostile.heartbeat();
        let (status, c) = api.try_get(&path)?;
        if status == 200 && c["at"].is_string() {
            Ok(c)
        } else {
            Err(c.to_string())
        }
    });
    // Its own figures count, tamed: no impossible share, no negative load,
    // no rate past a terabyte per second.
    assert!(current["values"]["cpu"].is_null(), "{current}");
    assert!(current["values"]["load"].is_null(), "{current}");
    assert!(current["values"]["net_rx"].is_null(), "{current}");
    assert_eq!(current["values"]["memory_used"], 5.0);
    // Another host's VM: nothing of the forged figures shows.
    let (_, theirs) = api.get(&format!("/api/v1/vms/{}/metrics/current", vm.uuid()));
    assert_ne!(theirs["values"]["cpu"], 99.5, "{theirs}");
    assert_ne!(theirs["values"]["memory_used"], 1.0, "{theirs}");
    assert_eq!(api.get("/api/v1/vms/..%2F..%2Fx/metrics").0, 404);
    // The link and the controller are fine.
    hostile.heartbeat();
    let (status, series) = api.get(&format!(
        "/api/v1/hosts/{}/metrics?metric=cpu",
        hostile.host_id
    ));
    assert_eq!(status, 200, "{series}");
}

/// A frame header claiming a 16 MiB chunk, and the first 256 KiB of it.
fn chunk_flood_frame() -> Vec<u8> {
    let mut v = (16u32 << 20).to_be_bytes().to_vec();
    v.push(1); // a chunk frame
    v.extend_from_slice(&[0xab; 32]); // its "digest"
    v.extend(std::iter::repeat_n(0x5a, 256 * 1024));
    v
}

/// Waits for the controller to close the connection (a close or a reset:
/// it stops reading what is still in flight); panics if it kept it open
/// (the read times out).
fn wait_closed(stream: &mut TlsStream) {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    let mut all = Vec::new();
    match stream.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe) => {}
        Err(e) => panic!("the controller kept a flooding connection open: {e}"),
    }
}

#[test]
fn strangers_flooding_the_agent_port_cost_bounded_memory() {
    let controller = Controller::start();
    let api = controller.api();
    assert_eq!(api.get("/api/v1/hosts").0, 200);
    let before = controller.rss_kib();
    assert!(before > 0);

    // 120 connections without a certificate, each announcing a 16 MiB chunk
    // and sending a quarter MiB of it: each is refused on the length alone,
    // before any buffer for it exists.
    let mut floods: Vec<TlsStream> = (0..120).map(|_| stranger_tls(&controller)).collect();
    for s in &mut floods {
        let _ = s.write_all(&chunk_flood_frame());
    }
    for s in &mut floods {
        wait_closed(s);
    }
    let refusals = controller
        .log()
        .matches("exceeds the 65536-byte limit")
        .count();
    assert_eq!(refusals, 120, "{}", controller.log());
    let after = controller.rss_kib();
    eprintln!("controller RSS: {before} KiB before, {after} KiB after 120 x 16 MiB frames");
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    drop(floods);

    // Connections that never finish their handshake hold a place for at
    // most the handshake deadline, and only 128 at once.
    let idle: Vec<TcpStream> = (0..160)
        .map(|_| TcpStream::connect(controller.agent_addr()).expect("connect"))
        .collect();
    poll_until(
        "the controller to close connections over the cap",
        Duration::from_secs(10),
        || {
            if controller
                .log()
                .contains("connections are already authenticating")
            {
                Ok(())
            } else {
                Err(controller.log())
            }
        },
    );
    let started = Instant::now();
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf); // returns once the controller closes it
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "half-open handshakes were held for {:?}",
        started.elapsed()
    );
    // Unharmed: a real enrollment still works.
    let enrolled = HostileAgent::enroll(&controller, "after-the-flood");
    assert!(!enrolled.host_id.is_empty());
    assert_eq!(api.get("/api/v1/hosts").1.as_array().unwrap().len(), 1);
}

//! The working core, end to end: a real controller, a real agent and a real
//! libvirtd with tiny real VMs. Discovery, power operations (checked with
//! `virsh domstate`), changes made with `virsh` behind Lifeboat's back, agent
//! restart without a token, and `kill -9` of the controller.

use std::time::{Duration, Instant};

use lifeboat_e2e::*;

/// The bound for an outside change to reach the controller.
const CHANGE_VISIBLE: Duration = Duration::from_secs(5);
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

fn vm_field(api: &Api, id: &str, field: &str) -> String {
    let (status, vm) = api.get(&format!("/api/v1/vms/{id}"));
    assert_eq!(status, 200, "{vm}");
    vm[field].as_str().unwrap_or_default().to_string()
}

/// Polls the API until the VM reports `state`, within `timeout`.
fn wait_power_state(api: &Api, id: &str, state: &str, timeout: Duration) {
    poll_until(
        &format!("VM {id} to be {state} in the API"),
        timeout,
        || {
            let (status, vm) = api.try_get(&format!("/api/v1/vms/{id}"))?;
            if status == 200 && vm["power_state"] == state {
                Ok(())
            } else {
                Err(format!("{status} {}", vm["power_state"]))
            }
        },
    );
}

fn power(api: &Api, id: &str, body: Value) -> Value {
    api.post_job(&format!("/api/v1/vms/{id}/power"), &body, JOB_TIMEOUT)
}

#[test]
fn discovers_vms_and_runs_every_power_operation() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("power");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-power", Some(libvirt.uri()));
    let api = controller.api();
    let host = api.wait_host_status("kvm-power", "online", READY_TIMEOUT);
    assert_eq!(host["driver"], "libvirt");
    assert!(
        host["memory_total_bytes"].as_u64().unwrap_or(0) > 0,
        "{host}"
    );

    let listed = api.wait_vm(vm.name(), READY_TIMEOUT);
    let id = vm.uuid();
    assert_eq!(listed["id"], id);
    assert_eq!(listed["host"], host["id"]);
    assert_eq!(listed["power_state"], "stopped");

    let (status, detail) = api.get(&format!("/api/v1/vms/{id}"));
    assert_eq!(status, 200);
    assert_eq!(detail["vcpus"], 1);
    assert_eq!(detail["memory_mib"], 64);
    let disk = &detail["disks"][0];
    assert_eq!(disk["target"], "vda");
    assert_eq!(disk["format"], "qcow2");
    assert_eq!(disk["source"], vm.disk().to_string_lossy().as_ref());
    assert_eq!(disk["capacity_bytes"], 64 * 1024 * 1024);
    assert_eq!(detail["nics"][0]["mac"], vm.mac());
    let config = detail["config"].as_str().unwrap_or_default();
    assert!(
        config.contains("<domain") && config.contains(id),
        "config: {config}"
    );

    // Each step: the job succeeds, libvirt agrees, and so does the API.
    let steps: [(&str, Value, &str, &str); 7] = [
        ("start", json!({"action": "start"}), "running", "running"),
        ("pause", json!({"action": "pause"}), "paused", "paused"),
        ("resume", json!({"action": "resume"}), "running", "running"),
        ("reboot", json!({"action": "reboot"}), "running", "running"),
        // No guest OS answers ACPI: the timeout must end in a power-off.
        (
            "shutdown",
            json!({"action": "shutdown", "timeout_secs": 2}),
            "shut off",
            "stopped",
        ),
        (
            "start again",
            json!({"action": "start"}),
            "running",
            "running",
        ),
        (
            "poweroff",
            json!({"action": "poweroff"}),
            "shut off",
            "stopped",
        ),
    ];
    for (label, body, virsh_state, api_state) in steps {
        let job = power(&api, id, body);
        assert_eq!(
            job["state"],
            "succeeded",
            "{label}: {job}\n{}",
            controller.log()
        );
        assert_eq!(job["user"], "admin");
        assert_eq!(libvirt.domstate(vm.name()), virsh_state, "{label}");
        wait_power_state(&api, id, api_state, CHANGE_VISIBLE);
    }

    // A nonsense transition is refused up front, and makes no job.
    let (_, before) = api.get("/api/v1/jobs");
    let (status, body) = api.post(
        &format!("/api/v1/vms/{id}/power"),
        &json!({"action": "resume"}),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped"),
        "{body}"
    );
    let (_, after) = api.get("/api/v1/jobs");
    assert_eq!(
        before.as_array().map(Vec::len),
        after.as_array().map(Vec::len)
    );
}

#[test]
fn changes_made_with_virsh_reach_the_controller_quickly() {
    let libvirt = Libvirt::ensure();
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-outside", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_status("kvm-outside", "online", READY_TIMEOUT);

    // Defined outside Lifeboat, after the agent connected.
    let vm = libvirt.define_tiny_vm("outside");
    let t = Instant::now();
    api.wait_vm(vm.name(), CHANGE_VISIBLE);
    eprintln!("define visible after {:?}", t.elapsed());

    vm.start();
    let t = Instant::now();
    wait_power_state(&api, vm.uuid(), "running", CHANGE_VISIBLE);
    eprintln!("start visible after {:?}", t.elapsed());

    libvirt.virsh(&["suspend", vm.name()]);
    wait_power_state(&api, vm.uuid(), "paused", CHANGE_VISIBLE);

    vm.destroy();
    wait_power_state(&api, vm.uuid(), "stopped", CHANGE_VISIBLE);

    let uuid = vm.uuid().to_string();
    drop(vm); // undefines the domain
    let t = Instant::now();
    poll_until(
        "the undefined VM to leave the inventory",
        CHANGE_VISIBLE,
        || match api.get(&format!("/api/v1/vms/{uuid}")) {
            (404, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        },
    );
    eprintln!("undefine visible after {:?}", t.elapsed());
}

#[test]
fn agent_restarts_without_token_and_keeps_its_identity() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("restart");
    let controller = Controller::start();
    let mut agent = Agent::start(&controller, "kvm-restart", Some(libvirt.uri()));
    let api = controller.api();
    let first = api.wait_host_status("kvm-restart", "online", READY_TIMEOUT);
    api.wait_vm(vm.name(), READY_TIMEOUT);

    agent.kill_9();
    api.wait_host_status("kvm-restart", "offline", Duration::from_secs(20));
    // While the host is offline its VMs are still listed, but cannot be driven.
    let (status, body) = api.post(
        &format!("/api/v1/vms/{}/power", vm.uuid()),
        &json!({"action": "start"}),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("offline"),
        "{body}"
    );

    agent.restart_without_token();
    let again = api.wait_host_status("kvm-restart", "online", READY_TIMEOUT);
    assert_eq!(
        first["id"], again["id"],
        "the agent must come back as the same host"
    );
    let (_, hosts) = api.get("/api/v1/hosts");
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "{hosts}");
    let job = power(&api, vm.uuid(), json!({"action": "start"}));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", agent.log());
    assert_eq!(libvirt.domstate(vm.name()), "running");
}

#[test]
fn controller_kill_9_loses_nothing_acknowledged() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("crash");
    let mut controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-crash", Some(libvirt.uri()));
    let api = controller.api();
    let host = api.wait_host_status("kvm-crash", "online", READY_TIMEOUT);
    api.wait_vm(vm.name(), READY_TIMEOUT);
    let started = power(&api, vm.uuid(), json!({"action": "start"}));
    assert_eq!(started["state"], "succeeded", "{started}");

    // A burst of acknowledged writes (sessions), then an immediate kill -9.
    let tokens: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..24)
            .map(|_| {
                s.spawn(|| {
                    let (status, body) = api.anonymous().post(
                        "/api/v1/session",
                        &json!({"username": ADMIN_USER, "password": controller.admin_password()}),
                    );
                    assert_eq!(status, 201, "{body}");
                    body["token"].as_str().unwrap_or_default().to_string()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("login thread"))
            .collect()
    });
    // A job that is still running when the controller dies: its outcome is
    // unknown, and the controller must say so after the restart.
    let (status, answer) = api.post(
        &format!("/api/v1/vms/{}/power", vm.uuid()),
        &json!({"action": "shutdown", "timeout_secs": 60}),
    );
    assert_eq!(status, 202, "{answer}");
    let running_job = answer["job"].clone();
    poll_until("the shutdown job to run", Duration::from_secs(10), || {
        let (_, job) = api.get(&format!("/api/v1/jobs/{running_job}"));
        if job["state"] == "running" {
            Ok(())
        } else {
            Err(job.to_string())
        }
    });
    controller.kill_9();

    controller.restart();
    let api = controller.api();
    for token in &tokens {
        let (status, body) = api.anonymous().with_bearer(token).get("/api/v1/hosts");
        assert_eq!(status, 200, "an acknowledged session was lost: {body}");
    }
    let (_, job) = api.get(&format!("/api/v1/jobs/{}", started["id"]));
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, job) = api.get(&format!("/api/v1/jobs/{running_job}"));
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{job}"
    );

    // The agent finds the restarted controller on its own, as the same host.
    let again = api.wait_host_status("kvm-crash", "online", Duration::from_secs(40));
    assert_eq!(again["id"], host["id"]);
    let vm_after = api.wait_vm(vm.name(), READY_TIMEOUT);
    assert_eq!(vm_after["host"], host["id"]);
    assert_eq!(vm_field(&api, vm.uuid(), "name"), vm.name());
    let job = power(&api, vm.uuid(), json!({"action": "poweroff"}));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(libvirt.domstate(vm.name()), "shut off");
}

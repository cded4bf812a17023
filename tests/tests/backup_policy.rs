//! Backup policies end to end: a policy backs up the VMs it covers, retention
//! keeps what it says and never a protected backup, and bad policies are
//! refused.

use std::time::Duration;

use lifeboat_e2e::*;

const JOB: Duration = Duration::from_secs(180);

fn run_policy(api: &Api, id: &str) {
    let job = api.post_job(
        &format!("/api/v1/backup-policies/{id}/run"),
        &json!({}),
        JOB,
    );
    assert_eq!(job["state"], "succeeded", "{job}");
}

fn backup_times(api: &Api, vm: &TinyVm) -> Vec<String> {
    let (_, list) = api.get(&format!("/api/v1/vms/{}/backups", vm.uuid()));
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|b| b["time"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn policy_backs_up_and_retention_keeps_the_newest_and_the_protected() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("policy");
    vm.write_offline(0x31, 0, "4M");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "kvm-policy", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_status("kvm-policy", "online", READY_TIMEOUT);
    api.wait_vm(vm.name(), READY_TIMEOUT);

    for (body, why) in [
        (
            json!({"name": "x", "schedule": "mon..xyz 25:00", "vms": [vm.uuid()]}),
            "bad schedule",
        ),
        (
            json!({"name": "x", "schedule": "daily 02:00"}),
            "no targets",
        ),
        (
            json!({"name": "x", "schedule": "daily 02:00", "vms": ["../etc"]}),
            "bad VM id",
        ),
        (
            json!({"name": "x", "schedule": "daily", "vms": [vm.uuid()], "datastore": "nope"}),
            "no datastore",
        ),
        (
            json!({"name": "x", "schedule": "daily", "vms": [vm.uuid()], "retention": {"keep_forever": 1}}),
            "unknown field",
        ),
    ] {
        let (status, body) = api.post("/api/v1/backup-policies", &body);
        assert_eq!(status, 400, "{why}: {body}");
    }
    let (status, policy) = api.post(
        "/api/v1/backup-policies",
        &json!({"name": "nightly", "schedule": "daily 02:00", "name_pattern": vm.name(), "retention": {"keep_last": 2}}),
    );
    assert_eq!(status, 201, "{policy}");
    assert_eq!(policy["schedule"], "02:00", "normalized: {policy}");
    let id = policy["id"].as_str().unwrap_or_default().to_string();
    let (status, listed) = api.get("/api/v1/backup-policies");
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));

    for _ in 0..3 {
        run_policy(&api, &id);
    }
    let times = backup_times(&api, &vm);
    assert_eq!(times.len(), 2, "keep_last 2: {times:?}");

    // Protect the older one: it survives two more runs.
    let (_, list) = api.get(&format!("/api/v1/vms/{}/backups", vm.uuid()));
    let oldest = list[0]["id"].as_str().unwrap_or_default().to_string();
    let (status, b) = api.put(
        &format!("/api/v1/backups/{oldest}"),
        &json!({"protected": true}),
    );
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["protected"], true);
    run_policy(&api, &id);
    run_policy(&api, &id);
    let after = backup_times(&api, &vm);
    assert_eq!(
        after.len(),
        3,
        "the protected backup plus the newest two: {after:?}"
    );
    assert_eq!(after[0], times[0], "the protected backup is kept");

    let (status, _) = api.delete(&format!("/api/v1/backup-policies/{id}"));
    assert_eq!(status, 200);
    let (status, _) = api.get(&format!("/api/v1/backup-policies/{id}"));
    assert_eq!(status, 404);
}

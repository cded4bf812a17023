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
    api.wait_host_with_vm("kvm-policy", vm.name());

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

#[test]
fn a_policy_for_a_category_backs_up_exactly_the_vms_of_that_category() {
    let libvirt = Libvirt::ensure();
    let finance = libvirt.define_tiny_vm("cat-fin-ledger");
    let tagged = libvirt.define_tiny_vm("cat-payroll");
    let other = libvirt.define_tiny_vm("cat-other");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "category-host", Some(libvirt.uri()));
    let api = controller.api();
    for vm in [&finance, &tagged, &other] {
        api.wait_vm(vm.name(), READY_TIMEOUT);
    }
    // Finance by name rule, and one VM tagged by hand.
    let (status, body) = api.post(
        "/api/v1/category-rules",
        &json!({"key": "department", "value": "Finance", "name_pattern": "*-cat-fin-*"}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.put(
        &format!("/api/v1/vms/{}/categories", tagged.uuid()),
        &json!({"department": "Finance"}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.post(
        "/api/v1/backup-policies",
        &json!({"name": "finance", "schedule": "daily 02:00", "category": "department"}),
    );
    assert_eq!(status, 400, "a category is key=value: {body}");
    let (status, policy) = api.post(
        "/api/v1/backup-policies",
        &json!({"name": "finance", "schedule": "daily 02:00", "category": "department=Finance"}),
    );
    assert_eq!(status, 201, "{policy}");
    run_policy(&api, policy["id"].as_str().unwrap());
    assert_eq!(backup_times(&api, &finance).len(), 1);
    assert_eq!(backup_times(&api, &tagged).len(), 1);
    assert!(backup_times(&api, &other).is_empty(), "not of the category");
}

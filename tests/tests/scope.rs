//! Access policies by VM category: the Finance backup admin backs up
//! Finance VMs, may not create VMs, and cannot even see the HR VM — it is
//! a 404 through the API and the console, and absent from every list, job
//! history and audit record; deny beats allow.

use lifeboat_e2e::*;

const PASSWORD: &str = "long-enough-passw0rd";

fn created(answer: (u16, Value)) -> Value {
    assert_eq!(answer.0, 201, "{}", answer.1);
    answer.1
}

#[test]
fn a_vm_outside_a_users_policies_does_not_exist_for_them() {
    let libvirt = Libvirt::ensure();
    let fin = libvirt.define_tiny_vm("fin-db");
    let hr = libvirt.define_tiny_vm("hr-app");
    let misc = libvirt.define_tiny_vm("misc");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "scope-host", Some(libvirt.uri()));
    let admin = controller.api();
    for vm in [&fin, &hr, &misc] {
        admin.wait_vm(vm.name(), READY_TIMEOUT);
    }

    // Categories: Finance by name pattern, HR set on the VM.
    created(admin.post(
        "/api/v1/category-rules",
        &json!({"key": "department", "value": "Finance", "name_pattern": "*-fin-*"}),
    ));
    let (status, _) = admin.post(
        "/api/v1/category-rules",
        &json!({"key": "department", "value": "x"}),
    );
    assert_eq!(status, 400, "a rule must select something");
    let (status, body) = admin.put(
        &format!("/api/v1/vms/{}/categories", hr.uuid()),
        &json!({"department": "HR"}),
    );
    assert_eq!(status, 200, "{body}");
    let (_, c) = admin.get(&format!("/api/v1/vms/{}/categories", fin.uuid()));
    assert_eq!(c["effective"]["department"], "Finance", "{c}");

    created(admin.post(
        "/api/v1/policies",
        &json!({"name": "finance", "rules": [
            {"effect": "allow", "key": "department", "value": "Finance"}]}),
    ));
    created(admin.post(
        "/api/v1/policies",
        &json!({"name": "not-hr", "rules": [
            {"effect": "allow", "key": "*", "value": "*"},
            {"effect": "deny", "key": "department", "value": "HR"}]}),
    ));
    let (status, _) = admin.post(
        "/api/v1/users",
        &json!({"name": "x", "password": PASSWORD, "role": "auditor", "policies": ["nope"]}),
    );
    assert_eq!(status, 400, "an unknown policy is refused");
    created(admin.post(
        "/api/v1/users",
        &json!({"name": "finbackup", "password": PASSWORD, "role": "backup-admin", "policies": ["finance"]}),
    ));
    created(admin.post(
        "/api/v1/users",
        &json!({"name": "generalist", "password": PASSWORD, "role": "operator", "policies": ["not-hr"]}),
    ));
    assert_eq!(admin.delete("/api/v1/policies/finance").0, 409, "assigned");

    // History the Finance admin must not see: a job and a backup of HR.
    let hr_backup = admin.full_backup(hr.uuid());
    let hr_job = admin.get(&format!("/api/v1/jobs?vm={}", hr.uuid())).1[0]["id"].clone();

    let finance = admin.login_as("finbackup", PASSWORD);
    let (_, vms) = finance.get("/api/v1/vms");
    let names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [fin.name()], "only Finance");
    let hr_vm = format!("/api/v1/vms/{}", hr.uuid());
    for path in [
        hr_vm.clone(),
        format!("{hr_vm}/backups"),
        format!("{hr_vm}/ha"),
        format!("{hr_vm}/categories"),
        format!("/api/v1/vms/{}", misc.uuid()),
        format!("/api/v1/jobs/{hr_job}"),
        format!("/api/v1/backups/{hr_backup}"),
    ] {
        let (status, body) = finance.get(&path);
        assert_eq!(status, 404, "GET {path}: {body}");
    }
    for (path, body) in [
        (format!("{hr_vm}/power"), json!({"action": "start"})),
        (format!("{hr_vm}/backups"), json!({"mode": "full"})),
        (format!("/api/v1/backups/{hr_backup}/restore"), json!({})),
        (format!("/api/v1/backups/{hr_backup}/verify"), json!({})),
    ] {
        let (status, answer) = finance.post(&path, &body);
        assert_eq!(
            status, 404,
            "POST {path}: {answer} (404, not 403: it does not exist for them)"
        );
    }
    let (_, jobs) = finance.get("/api/v1/jobs");
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j["vm"] != hr.uuid()),
        "{jobs}"
    );
    let (_, audit) = finance.get("/api/v1/audit");
    let audit_text = audit.to_string();
    assert!(
        !audit_text.contains(hr.uuid()) && !audit_text.contains(hr.name()),
        "{audit}"
    );
    let (status, policy) = admin.post(
        "/api/v1/backup-policies",
        &json!({"name": "nightly", "schedule": "daily 02:00", "vms": [fin.uuid(), hr.uuid()]}),
    );
    assert_eq!(status, 201, "{policy}");
    let (_, seen) = finance.get("/api/v1/backup-policies");
    assert_eq!(seen[0]["vms"], json!([fin.uuid()]), "{seen}");
    let (_, hosts) = finance.get("/api/v1/hosts");
    assert_eq!(hosts[0]["vm_count"], 1, "{hosts}");

    // What Finance may do, it does; creating a VM it may not.
    let fin_backup = finance.full_backup(fin.uuid());
    let (status, body) = finance.post(
        &format!("/api/v1/backups/{fin_backup}/restore"),
        &json!({"as_new": {"name": "fin-copy"}}),
    );
    assert_eq!(status, 403, "{body}");

    // The console hides it the same way.
    let mut console = ConsoleClient::new(&controller);
    assert_eq!(console.login_as("finbackup", PASSWORD).status, 303);
    let list = console.get("/vms").text();
    assert!(list.contains(fin.name()) && !list.contains(hr.name()) && !list.contains(misc.name()));
    assert_eq!(console.get(&format!("/vms/{}", hr.uuid())).status, 404);
    assert_eq!(console.get(&format!("/jobs/{hr_job}")).status, 404);
    let audit_page = console.get("/audit").text();
    assert!(!audit_page.contains(hr.name()), "audit page");
    let csv = console.get("/audit.csv").text();
    assert!(
        !csv.contains(hr.uuid()) && !csv.contains(hr.name()),
        "{csv}"
    );

    // Deny beats allow: everything but HR.
    let generalist = admin.login_as("generalist", PASSWORD);
    let (_, vms) = generalist.get("/api/v1/vms");
    // (Other tests' VMs on this libvirtd are visible to it too.)
    let names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&fin.name()) && names.contains(&misc.name()),
        "{names:?}"
    );
    assert!(!names.contains(&hr.name()), "{names:?}");
    assert_eq!(generalist.get(&hr_vm).0, 404);

    // Moving the VM out of HR makes it visible at once.
    let (status, _) = admin.put(&format!("{hr_vm}/categories"), &json!({}));
    assert_eq!(status, 200);
    assert_eq!(generalist.get(&hr_vm).0, 200);
    assert_eq!(finance.get(&hr_vm).0, 404, "still not Finance");
}

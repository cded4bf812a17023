//! Privileges and scope hold for every principal, whatever route they take:
//! removing backups in any way needs `delete-backup` and touches only the
//! caller's VMs; a restricted user manager cannot widen any scope; no text a
//! restricted user gets names a VM hidden from them; API tokens end with
//! their grounds; login names are one user whatever their case.

use lifeboat_e2e::*;

const PASSWORD: &str = "long-enough-passw0rd";

fn created(answer: (u16, Value)) -> Value {
    assert_eq!(answer.0, 201, "{}", answer.1);
    answer.1
}

/// Two VMs, `fin-*` (department Finance) and `hr-*` (HR), and a `finance`
/// access policy; custom roles for restricted principals.
struct Estate {
    _libvirt: Libvirt,
    fin: TinyVm,
    hr: TinyVm,
    controller: Controller,
    _agent: Agent,
}

impl Estate {
    fn start() -> Estate {
        let libvirt = Libvirt::ensure();
        let fin = libvirt.define_tiny_vm("fin-ledger");
        let hr = libvirt.define_tiny_vm("hr-payroll");
        let controller = Controller::start();
        let agent = Agent::start(&controller, "scoped-host", Some(libvirt.uri()));
        let admin = controller.api();
        admin.wait_vm(fin.name(), READY_TIMEOUT);
        admin.wait_vm(hr.name(), READY_TIMEOUT);
        // By exact name: tests running beside this one define VMs on the
        // same libvirtd, which this controller's agent reports too.
        for (vm, department) in [(&fin, "Finance"), (&hr, "HR")] {
            created(admin.post(
                "/api/v1/category-rules",
                &json!({"key": "department", "value": department, "name_pattern": vm.name()}),
            ));
        }
        for (name, department) in [("finance", "Finance"), ("hr", "HR")] {
            created(admin.post(
                "/api/v1/policies",
                &json!({"name": name, "rules": [
                    {"effect": "allow", "key": "department", "value": department}]}),
            ));
        }
        for (role, privileges) in [
            ("backup-no-delete", json!(["view", "backup"])),
            ("user-manager", json!(["view", "manage-users", "backup"])),
            ("ha-operator", json!(["view", "manage-ha"])),
        ] {
            created(admin.post(
                "/api/v1/roles",
                &json!({"name": role, "privileges": privileges}),
            ));
        }
        Estate {
            _libvirt: libvirt,
            fin,
            hr,
            controller,
            _agent: agent,
        }
    }

    fn user(&self, name: &str, role: &str, policies: &[&str]) -> Api {
        created(self.controller.api().post(
            "/api/v1/users",
            &json!({"name": name, "password": PASSWORD, "role": role, "policies": policies}),
        ));
        self.controller.api().login_as(name, PASSWORD)
    }

    fn audit_has(&self, user: &str, words: &str) -> bool {
        let (_, records) = self
            .controller
            .api()
            .get(&format!("/api/v1/audit?user={user}"));
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["result"].as_str().unwrap_or_default().contains(words))
    }
}

fn policy(name: &str, keep_last: Option<u32>) -> Value {
    let mut p = json!({"name": name, "schedule": "*-*-* 03:00", "name_pattern": "*"});
    if let Some(n) = keep_last {
        p["retention"] = json!({"keep_last": n});
    }
    p
}

#[test]
fn removing_backups_needs_delete_backup_and_stays_inside_the_callers_scope() {
    let e = Estate::start();
    let admin = e.controller.api();
    for vm in [&e.fin, &e.hr] {
        admin.full_backup(vm.uuid());
        admin.full_backup(vm.uuid());
    }

    // Without delete-backup: no retention, no unprotecting, no deleting.
    let no_delete = e.user("fin-nodelete", "backup-no-delete", &["finance"]);
    let (status, body) = no_delete.post("/api/v1/backup-policies", &policy("keep1", Some(1)));
    assert_eq!(status, 403, "{body}");
    assert!(e.audit_has("fin-nodelete", "delete-backup"));
    let fin_backup = admin.backups(e.fin.uuid())[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/v1/backups/{fin_backup}");
    assert_eq!(no_delete.put(&path, &json!({"protected": true})).0, 200);
    let (status, body) = no_delete.put(&path, &json!({"protected": false}));
    assert_eq!(status, 403, "{body}");
    assert_eq!(no_delete.delete(&path).0, 403);
    assert_eq!(admin.put(&path, &json!({"protected": false})).0, 200);

    // A restricted user with delete-backup: a policy over every VM name runs
    // on their VMs only, names no other, and prunes only theirs.
    let finance = e.user("fin-admin", "backup-admin", &["finance"]);
    let p = created(finance.post("/api/v1/backup-policies", &policy("keep1", Some(1))));
    let job = finance.post_job(
        &format!("/api/v1/backup-policies/{}/run", p["id"].as_str().unwrap()),
        &json!({}),
        std::time::Duration::from_secs(180),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(!job.to_string().contains(e.hr.name()), "{job}");
    assert_eq!(admin.backups(e.fin.uuid()).len(), 1, "pruned to the last");
    assert_eq!(
        admin.backups(e.hr.uuid()).len(),
        2,
        "another scope's VM untouched"
    );

    // Deleting: a hidden VM's backup does not exist; a protected one is kept.
    let hr_backup = admin.backups(e.hr.uuid())[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = finance.delete(&format!("/api/v1/backups/{hr_backup}"));
    assert_eq!(status, 404, "{body}");
    assert!(!body.to_string().contains(e.hr.name()), "{body}");
    let last = admin.backups(e.fin.uuid())[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/v1/backups/{last}");
    assert_eq!(finance.put(&path, &json!({"protected": true})).0, 200);
    assert_eq!(finance.delete(&path).0, 409, "protected");
    assert_eq!(finance.put(&path, &json!({"protected": false})).0, 200);
    assert_eq!(finance.delete(&path).0, 200);
    assert!(admin.backups(e.fin.uuid()).is_empty());
    assert_eq!(admin.backups(e.hr.uuid()).len(), 2);
}

#[test]
fn a_restricted_user_manager_cannot_widen_any_scope() {
    let e = Estate::start();
    let admin = e.controller.api();
    let manager = e.user("fin-manager", "user-manager", &["finance"]);
    created(admin.post(
        "/api/v1/users",
        &json!({"name": "hr-clerk", "password": PASSWORD, "role": "auditor", "policies": ["hr"]}),
    ));

    // What decides scope is for unrestricted principals only.
    let attempts = [
        (
            "POST",
            "/api/v1/policies",
            json!({"name": "all", "rules": [{"effect": "allow", "key": "*", "value": "*"}]}),
        ),
        (
            "POST",
            "/api/v1/category-rules",
            json!({"key": "department", "value": "Finance", "name_pattern": "*"}),
        ),
        (
            "PUT",
            "/api/v1/policies/finance",
            json!({"name": "finance", "rules": [{"effect": "allow", "key": "*", "value": "*"}]}),
        ),
    ];
    for (method, path, body) in attempts {
        let answer = manager.raw_request(
            method,
            path,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.text());
    }
    let (status, _) = manager.put(
        &format!("/api/v1/vms/{}/categories", e.fin.uuid()),
        &json!({"department": "HR"}),
    );
    assert_eq!(status, 403, "re-tagging a VM moves it between scopes");
    let (status, _) = manager.delete("/api/v1/category-rules/anything");
    assert!(status == 403 || status == 404, "{status}");
    assert!(e.audit_has("fin-manager", "users without access policies"));

    // Users: only of exactly their own scope.
    let user = |name: &str, policies: Value| json!({"name": name, "password": PASSWORD, "role": "backup-no-delete", "policies": policies});
    assert_eq!(
        manager.post("/api/v1/users", &user("wide", json!([]))).0,
        403
    );
    assert_eq!(
        manager
            .post("/api/v1/users", &user("other", json!(["hr"])))
            .0,
        403
    );
    assert_eq!(
        manager
            .post("/api/v1/users", &user("both", json!(["finance", "hr"])))
            .0,
        403
    );
    created(manager.post("/api/v1/users", &user("fin-clerk", json!(["finance"]))));
    let (_, listed) = manager.get("/api/v1/users");
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert!(
        names.contains(&"fin-clerk") && names.contains(&"fin-manager"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"hr-clerk") && !names.contains(&"admin"),
        "{names:?}"
    );
    for (method, path) in [
        ("PATCH", "/api/v1/users/hr-clerk"),
        ("DELETE", "/api/v1/users/hr-clerk"),
    ] {
        let answer = manager.raw_request(
            method,
            path,
            &[("content-type", "application/json")],
            br#"{"disabled": true}"#,
        );
        assert_eq!(answer.status, 404, "{method} {path}: {}", answer.text());
    }
    let (status, _) = manager.put("/api/v1/users/fin-clerk", &json!({"policies": []}));
    assert_eq!(status, 403, "no dropping a user's policies");
    let (_, clerk) = admin.get("/api/v1/users/hr-clerk");
    assert_eq!(clerk["disabled"], false, "{clerk}");
}

#[test]
fn no_answer_to_a_restricted_user_names_a_hidden_vm() {
    let e = Estate::start();
    let admin = e.controller.api();
    let ha = e.user("fin-ha", "ha-operator", &["finance"]);
    let pm = |standby: &str| {
        json!({"name": "db-server", "checks": [{"kind": "icmp", "address": "127.0.0.1"}],
               "standby_vm": standby})
    };
    for standby in [e.hr.name(), e.hr.uuid()] {
        let (status, body) = ha.post("/api/v1/physical-machines", &pm(standby));
        assert_eq!(status, 404, "{body}");
        let text = body.to_string();
        let other = if standby == e.hr.name() {
            e.hr.uuid()
        } else {
            e.hr.name()
        };
        assert!(!text.contains(other), "{text}");
    }
    created(ha.post("/api/v1/physical-machines", &pm(e.fin.name())));

    // Counts in the cluster view are of the VMs they see.
    for vm in [&e.fin, &e.hr] {
        let (status, body) = admin.put(
            &format!("/api/v1/vms/{}/ha", vm.uuid()),
            &json!({"enabled": true}),
        );
        assert_eq!(status, 200, "{body}");
    }
    let host = |api: &Api| api.get("/api/v1/cluster").1["hosts"][0].clone();
    assert_eq!(host(&admin)["protected_vms"], 2);
    assert!(host(&admin)["vm_count"].as_u64().unwrap() >= 2);
    assert_eq!(host(&ha)["protected_vms"], 1);
    assert_eq!(host(&ha)["vm_count"], 1);

    // A VM gone from the inventory stays hidden in the audit trail.
    let auditor = e.user("fin-auditor", "auditor", &["finance"]);
    let (_, trail) = auditor.get("/api/v1/audit");
    let text = trail.to_string();
    assert!(
        !text.contains(e.hr.uuid()) && !text.contains(e.hr.name()),
        "{text}"
    );
    let gone = e.hr.uuid().to_string();
    drop(e.hr);
    wait_until("the HR VM to leave the inventory", READY_TIMEOUT, || {
        admin.get(&format!("/api/v1/vms/{gone}")).0 == 404
    });
    let (_, trail) = auditor.get("/api/v1/audit");
    assert!(!trail.to_string().contains(&gone), "{trail}");
    let (_, all) = admin.get("/api/v1/audit");
    assert!(
        all.to_string().contains(&gone),
        "the unrestricted still see it"
    );
}

#[test]
fn api_tokens_end_with_their_grounds_and_login_names_have_one_form() {
    let controller = Controller::start();
    let admin = controller.api();
    created(admin.post(
        "/api/v1/users",
        &json!({"name": "Script.User", "password": PASSWORD, "role": "operator"}),
    ));
    // One user, whatever the case or spacing of the name.
    for name in ["script.user", " SCRIPT.USER ", "Script.User"] {
        let (status, body) = admin.anonymous().post(
            "/api/v1/session",
            &json!({"username": name, "password": PASSWORD}),
        );
        assert_eq!(status, 201, "{name:?}: {body}");
        assert_eq!(body["user"], "script.user");
    }
    // HTTP Basic logins are audited like any other, refusals too.
    let (status, _) = admin
        .with_basic("Script.User", "wrong-password")
        .get("/api/v1/vms");
    assert_eq!(status, 401);
    assert_eq!(
        admin
            .with_basic("script.user", PASSWORD)
            .get("/api/v1/vms")
            .0,
        200
    );
    let (_, audit) = admin.get("/api/v1/audit?action=login");
    let basic: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["object"] == "http basic")
        .collect();
    assert!(
        basic
            .iter()
            .any(|r| r["user"] == "script.user" && r["result"] == "ok"),
        "{audit}"
    );
    assert!(
        basic
            .iter()
            .any(|r| r["result"].as_str().unwrap().starts_with("refused")),
        "{audit}"
    );
    let dup = admin.post(
        "/api/v1/users",
        &json!({"name": "SCRIPT.user", "password": PASSWORD, "role": "auditor"}),
    );
    assert_eq!(dup.0, 409, "{}", dup.1);

    let user = admin.login_as("script.user", PASSWORD);
    let t1 = created(user.post(
        "/api/v1/tokens",
        &json!({"name": "seven days", "expires_in_days": 7}),
    ));
    let t1 = user.with_bearer(t1["token"].as_str().unwrap());
    assert_eq!(t1.get("/api/v1/vms").0, 200);
    // A token cannot make a token that outlives it or exceeds it.
    let (status, body) = t1.post(
        "/api/v1/tokens",
        &json!({"name": "longer", "expires_in_days": 30}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("outlives"),
        "{body}"
    );
    let t2 = created(t1.post(
        "/api/v1/tokens",
        &json!({"name": "narrow", "expires_in_days": 1, "privileges": ["view"]}),
    ));
    let t2 = user.with_bearer(t2["token"].as_str().unwrap());
    let (status, body) = t2.post(
        "/api/v1/tokens",
        &json!({"name": "wider", "expires_in_days": 1, "privileges": ["view", "power"]}),
    );
    assert_eq!(status, 403, "{body}");

    // Deleting the user ends their tokens; a new user of that name inherits
    // none of them.
    assert_eq!(admin.delete("/api/v1/users/script.user").0, 200);
    assert_eq!(t1.get("/api/v1/vms").0, 401);
    created(admin.post(
        "/api/v1/users",
        &json!({"name": "script.user", "password": PASSWORD, "role": "administrator"}),
    ));
    assert_eq!(t1.get("/api/v1/vms").0, 401);
    assert_eq!(t2.get("/api/v1/vms").0, 401);

    // Lockout counts one user however the name is written.
    for name in [
        "Script.User",
        "SCRIPT.USER",
        " script.user",
        "script.USER",
        "Script.user",
    ] {
        let (status, _) = admin.anonymous().post(
            "/api/v1/session",
            &json!({"username": name, "password": "wrong-password"}),
        );
        assert_eq!(status, 401);
    }
    let (status, body) = admin.anonymous().post(
        "/api/v1/session",
        &json!({"username": "script.user", "password": PASSWORD}),
    );
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("too many"),
        "{body}"
    );
}

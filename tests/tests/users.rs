//! Users, roles and the audit trail through the REST API, against a real
//! VM: built-in and custom roles grant exactly their privileges, a role
//! change or a disabled user takes effect at once (sessions end), nobody
//! hands out more than they hold, the last administrator stays, and every
//! action is in the audit trail, readable as JSON or CSV by those allowed.

use lifeboat_e2e::*;

const PASSWORD: &str = "long-enough-passw0rd";

fn login(api: &Api, user: &str) -> Api {
    api.login_as(user, PASSWORD)
}

fn create_user(admin: &Api, name: &str, role: &str) {
    let (status, body) = admin.post(
        "/api/v1/users",
        &json!({"name": name, "password": PASSWORD, "role": role}),
    );
    assert_eq!(status, 201, "{body}");
    assert!(body.get("password_hash").is_none(), "{body}");
}

#[test]
fn roles_grant_exactly_their_privileges_and_changes_apply_at_once() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("rbac");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "rbac-host", Some(libvirt.uri()));
    let admin = controller.api();
    admin.wait_vm(vm.name(), READY_TIMEOUT);
    let vm_path = format!("/api/v1/vms/{}", vm.uuid());

    // Custom roles: checked, and never clashing with built-in ones.
    for (body, status) in [
        (
            json!({"name": "finance-backup", "privileges": ["view", "fly"]}),
            400,
        ),
        (json!({"name": "operator", "privileges": ["view"]}), 400),
        (json!({"name": "Bad Name", "privileges": ["view"]}), 400),
        (
            json!({"name": "user-admin", "privileges": ["view", "view-reports", "manage-users"]}),
            201,
        ),
        (json!({"name": "look-only", "privileges": ["view"]}), 201),
        (json!({"name": "user-admin", "privileges": ["view"]}), 409),
    ] {
        let (got, answer) = admin.post("/api/v1/roles", &body);
        assert_eq!(got, status, "{body} → {answer}");
    }
    let (_, roles) = admin.get("/api/v1/roles");
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "administrator",
            "operator",
            "backup-admin",
            "auditor",
            "look-only",
            "user-admin"
        ]
    );

    // Users: checked.
    for (body, status) in [
        (
            json!({"name": "x", "password": "short", "role": "auditor"}),
            400,
        ),
        (
            json!({"name": "x", "password": PASSWORD, "role": "no-such-role"}),
            400,
        ),
        (
            json!({"name": "x y", "password": PASSWORD, "role": "auditor"}),
            400,
        ),
        (
            json!({"name": "x", "password": PASSWORD, "role": "auditor", "admin": true}),
            400,
        ),
    ] {
        let (got, answer) = admin.post("/api/v1/users", &body);
        assert_eq!(got, status, "{body} → {answer}");
    }
    create_user(&admin, "alice", "backup-admin");
    create_user(&admin, "bob", "auditor");
    create_user(&admin, "carol", "user-admin");
    create_user(&admin, "erin", "look-only");
    let (status, _) = admin.post(
        "/api/v1/users",
        &json!({"name": "bob", "password": PASSWORD, "role": "auditor"}),
    );
    assert_eq!(status, 409);

    // The auditor reads, and may do nothing.
    let bob = login(&admin, "bob");
    assert_eq!(bob.get(&vm_path).0, 200);
    assert_eq!(bob.get("/api/v1/audit").0, 200);
    let (status, body) = bob.post(&format!("{vm_path}/power"), &json!({"action": "start"}));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("'power'"),
        "{body}"
    );
    assert_eq!(bob.get("/api/v1/users").0, 403);

    // The backup admin backs up, but may neither power nor create a VM.
    let alice = login(&admin, "alice");
    assert_eq!(
        alice
            .post(&format!("{vm_path}/power"), &json!({"action": "start"}))
            .0,
        403
    );
    let backup = alice.full_backup(vm.uuid());
    let restore = format!("/api/v1/backups/{backup}/restore");
    let (status, body) = alice.post(&restore, &json!({"as_new": {"name": "rbac-copy"}}));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("create-vm"),
        "{body}"
    );

    // A role change applies to the live session at once.
    let (status, body) = admin.put("/api/v1/users/alice", &json!({"role": "auditor"}));
    assert_eq!(status, 200, "{body}");
    let (status, _) = alice.post(&format!("{vm_path}/backups"), &json!({"mode": "full"}));
    assert_eq!(status, 403);

    // Disabling ends every session; enabling again does not revive them.
    assert_eq!(
        admin.put("/api/v1/users/bob", &json!({"disabled": true})).0,
        200
    );
    assert_eq!(bob.get(&vm_path).0, 401);
    let (status, _) = bob.anonymous().post(
        "/api/v1/session",
        &json!({"username": "bob", "password": PASSWORD}),
    );
    assert_eq!(status, 401, "a disabled user cannot log in");
    assert_eq!(
        admin
            .put("/api/v1/users/bob", &json!({"disabled": false}))
            .0,
        200
    );
    assert_eq!(bob.get(&vm_path).0, 401, "the old session stays ended");

    // Nobody hands out more than they hold.
    let carol = login(&admin, "carol");
    let (status, body) = carol.post(
        "/api/v1/users",
        &json!({"name": "mallory", "password": PASSWORD, "role": "administrator"}),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        carol
            .put("/api/v1/users/admin", &json!({"disabled": true}))
            .0,
        403
    );
    let (status, body) = carol.post(
        "/api/v1/roles",
        &json!({"name": "sneaky", "privileges": ["view", "power"]}),
    );
    assert_eq!(status, 403, "{body}");
    create_user(&carol, "dave", "auditor");

    // The last administrator stays.
    let (status, body) = admin.put("/api/v1/users/admin", &json!({"disabled": true}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        admin
            .put("/api/v1/users/admin", &json!({"role": "auditor"}))
            .0,
        409
    );
    assert_eq!(admin.delete("/api/v1/users/admin").0, 409);
    assert_eq!(admin.delete("/api/v1/roles/auditor").0, 409, "built in");
    assert_eq!(
        admin.delete("/api/v1/roles/user-admin").0,
        409,
        "held by carol"
    );

    // The audit trail has it all, as JSON and CSV, for those allowed.
    let (status, records) = admin.get("/api/v1/audit?user=alice");
    assert_eq!(status, 200, "{records}");
    let actions: Vec<(String, String)> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        actions.iter().any(|(a, r)| a == "backup" && r == "ok"),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|(a, r)| a == "POST /vms/{id}/power" && r.starts_with("refused")),
        "{actions:?}"
    );
    assert!(
        actions.iter().all(|(a, _)| a != "create user"),
        "filtered by user: {actions:?}"
    );
    let csv = admin.raw_request(
        "GET",
        "/api/v1/audit?format=csv&action=create%20user",
        &[],
        b"",
    );
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let text = csv.text();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("seq,time,user,source,action,object,result")
    );
    let rows: Vec<&str> = lines.collect();
    assert!(
        rows.iter()
            .any(|l| l.contains(",carol,") && l.contains("user dave,ok")),
        "{text}"
    );
    assert!(rows.iter().all(|l| l.contains(",create user,")), "{text}");
    let dave = login(&admin, "dave");
    assert_eq!(dave.get("/api/v1/audit").0, 200, "auditors read the trail");
    let erin = login(&admin, "erin");
    assert_eq!(erin.get(&vm_path).0, 200);
    assert_eq!(
        erin.get("/api/v1/audit").0,
        403,
        "look-only has no view-reports"
    );
    assert_eq!(admin.get("/api/v1/audit?since=yesterday").0, 400);
    let (status, _) = admin.anonymous().post(
        "/api/v1/session",
        &json!({"username": "alice", "password": "not her password"}),
    );
    assert_eq!(status, 401);
    let (_, failed) = admin.get("/api/v1/audit?user=alice&action=login");
    let first = &failed[0];
    assert!(
        first["result"].as_str().unwrap().starts_with("refused"),
        "{failed}"
    );
    assert_eq!(first["source"], "127.0.0.1", "{failed}");
}

#[test]
fn api_tokens_carry_their_own_privileges_and_expiry_and_never_outrank_their_owner() {
    let controller = Controller::start();
    let admin = controller.api();
    create_user(&admin, "tina", "operator");
    create_user(&admin, "uwe", "operator");
    let tina = login(&admin, "tina");

    for (body, status) in [
        (json!({"name": "ci", "expires_in_days": 0}), 400),
        (json!({"name": "ci", "expires_in_days": 400}), 400),
        (
            json!({"name": "ci", "expires_in_days": 7, "privileges": ["manage-users"]}),
            403,
        ),
        (json!({"name": "", "expires_in_days": 7}), 400),
    ] {
        let (got, answer) = tina.post("/api/v1/tokens", &body);
        assert_eq!(got, status, "{body} → {answer}");
    }
    let (status, made) = tina.post(
        "/api/v1/tokens",
        &json!({"name": "read-only script", "expires_in_days": 7, "privileges": ["view"]}),
    );
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    let script = admin.with_bearer(&token);
    assert_eq!(script.get("/api/v1/hosts").0, 200);
    let policy = |name: &str| json!({"name": name, "schedule": "daily 02:00", "name_pattern": "*"});
    let (status, body) = script.post("/api/v1/backup-policies", &policy("by-script"));
    assert_eq!(status, 403, "the token has only view: {body}");
    let (_, listed) = tina.get("/api/v1/tokens");
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&token),
        "the token is shown once only"
    );
    let (_, seen_by_uwe) = login(&admin, "uwe").get("/api/v1/tokens");
    assert_eq!(seen_by_uwe, json!([]));
    assert_eq!(
        login(&admin, "uwe")
            .delete(&format!("/api/v1/tokens/{id}"))
            .0,
        404
    );

    // The owner disabled: the token is dead; enabled again: it lives.
    assert_eq!(
        admin
            .put("/api/v1/users/tina", &json!({"disabled": true}))
            .0,
        200
    );
    assert_eq!(script.get("/api/v1/hosts").0, 401);
    assert_eq!(
        admin
            .put("/api/v1/users/tina", &json!({"disabled": false}))
            .0,
        200
    );
    assert_eq!(script.get("/api/v1/hosts").0, 200);
    // A token with all her rights, then the owner demoted: the token can
    // do no more than she now can. (Disabling ended her session.)
    let tina = login(&admin, "tina");
    let (_, full) = tina.post(
        "/api/v1/tokens",
        &json!({"name": "full", "expires_in_days": 1}),
    );
    let full = admin.with_bearer(full["token"].as_str().unwrap());
    assert_eq!(full.post("/api/v1/backup-policies", &policy("one")).0, 201);
    assert_eq!(
        admin
            .put("/api/v1/users/tina", &json!({"role": "auditor"}))
            .0,
        200
    );
    assert_eq!(full.post("/api/v1/backup-policies", &policy("two")).0, 403);
    assert_eq!(tina.delete(&format!("/api/v1/tokens/{id}")).0, 200);
    assert_eq!(script.get("/api/v1/hosts").0, 401, "revoked");
}

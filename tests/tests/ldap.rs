//! Directory users from a real OpenLDAP: users in `finance-backup`,
//! `hr-admins` and `auditors` get the role and access policies their group
//! maps to, at every login; the Finance backup admin backs up Finance VMs,
//! may not create VMs and cannot see the HR VM; a wrong password and a
//! locked-out user are refused; a directory that is down does not stop the
//! local administrator.

use std::time::{Duration, Instant};

use lifeboat_e2e::*;

const PASSWORD: &str = "directory-user-pw";

fn login(api: &Api, user: &str, password: &str) -> (u16, Value) {
    api.anonymous().post(
        "/api/v1/session",
        &json!({"username": user, "password": password}),
    )
}

fn session(api: &Api, user: &str) -> Api {
    api.login_as(user, PASSWORD)
}

fn directory(slapd: &Slapd, name: &str, url: &str, starttls: bool) -> Value {
    json!({
        "name": name,
        "url": url,
        "starttls": starttls,
        "ca_pem": slapd.ca_pem(),
        "bind_dn": LDAP_ADMIN_DN,
        "bind_password": LDAP_ADMIN_PASSWORD,
        "user_base": format!("ou=people,{LDAP_BASE_DN}"),
        "user_attribute": "uid",
        "group_base": format!("ou=groups,{LDAP_BASE_DN}"),
        "mappings": [
            {"group": "finance-backup", "role": "backup-admin", "policies": ["finance"]},
            {"group": "hr-admins", "role": "operator", "policies": ["hr"]},
            {"group": "auditors", "role": "auditor"},
        ],
    })
}

#[test]
fn directory_groups_decide_role_and_scope_at_every_login() {
    let mut slapd = Slapd::start();
    for user in ["fiona", "harry", "audrey"] {
        slapd.add_user(user, PASSWORD);
    }
    slapd.add_group("finance-backup", &["fiona"]);
    slapd.add_group("hr-admins", &["harry"]);
    slapd.add_group("auditors", &["audrey"]);

    let libvirt = Libvirt::ensure();
    let fin = libvirt.define_tiny_vm("fin-ledger");
    let hr = libvirt.define_tiny_vm("hr-payroll");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "ldap-host", Some(libvirt.uri()));
    let admin = controller.api();
    admin.wait_vm(fin.name(), READY_TIMEOUT);
    admin.wait_vm(hr.name(), READY_TIMEOUT);
    for (name, value, pattern) in [("finance", "Finance", "*-fin-*"), ("hr", "HR", "*-hr-*")] {
        let (status, body) = admin.post(
            "/api/v1/category-rules",
            &json!({"key": "department", "value": value, "name_pattern": pattern}),
        );
        assert_eq!(status, 201, "{body}");
        let (status, body) = admin.post(
            "/api/v1/policies",
            &json!({"name": name, "rules": [{"effect": "allow", "key": "department", "value": value}]}),
        );
        assert_eq!(status, 201, "{body}");
    }

    // Plain LDAP only when allowed; the bind password is never shown.
    let (status, body) = admin.post(
        "/api/v1/directories",
        &directory(&slapd, "plain", &slapd.ldap_url(), false),
    );
    assert_eq!(status, 400, "{body}");
    // Two directories; the first is down (nothing listens there), so every
    // login below also proves a dead directory is skipped.
    let dead = format!("ldaps://127.0.0.1:{}", free_port());
    for (name, url) in [("branch", dead), ("corp", slapd.ldaps_url())] {
        let (status, body) =
            admin.post("/api/v1/directories", &directory(&slapd, name, &url, false));
        assert_eq!(status, 201, "{body}");
    }
    let (_, listed) = admin.get("/api/v1/directories");
    let text = listed.to_string();
    assert!(
        !text.contains(LDAP_ADMIN_PASSWORD) && listed[1]["bind_password_set"] == true,
        "{listed}"
    );

    // The Finance backup admin, over LDAPS.
    let fiona = session(&admin, "fiona");
    let (_, vms) = fiona.get("/api/v1/vms");
    let names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [fin.name()]);
    assert_eq!(fiona.get(&format!("/api/v1/vms/{}", hr.uuid())).0, 404);
    let backup = fiona.full_backup(fin.uuid());
    let (status, body) = fiona.post(
        &format!("/api/v1/backups/{backup}/restore"),
        &json!({"as_new": {"name": "ledger-copy"}}),
    );
    assert_eq!(status, 403, "{body}");
    let mut console = ConsoleClient::new(&controller);
    assert_eq!(console.login_as("fiona", PASSWORD).status, 303);
    assert_eq!(console.get(&format!("/vms/{}", hr.uuid())).status, 404);
    // Nor does it show in her exports, though the admin's trail has it.
    admin.full_backup(hr.uuid());
    let csv = fiona
        .raw_request("GET", "/api/v1/audit?format=csv", &[], b"")
        .text();
    assert!(csv.contains(fin.uuid()), "her own backup is there: {csv}");
    assert!(
        !csv.contains(hr.uuid()) && !csv.contains(hr.name()),
        "{csv}"
    );
    assert!(console
        .get("/audit.csv")
        .text()
        .lines()
        .all(|l| !l.contains(hr.uuid())));
    // HTTP Basic works for directory users too, and is audited.
    assert_eq!(
        admin.with_basic("fiona", PASSWORD).get("/api/v1/vms").0,
        200
    );
    let (_, audit) = admin.get("/api/v1/audit?user=fiona&action=login");
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["object"] == "http basic" && r["result"] == "ok"),
        "{audit}"
    );
    // A directory user's token lasts no longer than a session: the
    // directory is asked again only at a login.
    let fiona = session(&admin, "fiona");
    let (status, token) = fiona.post(
        "/api/v1/tokens",
        &json!({"name": "script", "expires_in_days": 30}),
    );
    assert_eq!(status, 201, "{token}");
    let lasts = token["expires_at"].as_u64().unwrap() - token["created_at"].as_u64().unwrap();
    assert!(lasts <= 12 * 3600, "{token}");

    // HR sees HR only; the auditor sees all and may do nothing.
    let harry = session(&admin, "harry");
    assert_eq!(harry.get(&format!("/api/v1/vms/{}", fin.uuid())).0, 404);
    assert_eq!(harry.get(&format!("/api/v1/vms/{}", hr.uuid())).0, 200);
    let audrey = session(&admin, "audrey");
    assert_eq!(audrey.get(&format!("/api/v1/vms/{}", hr.uuid())).0, 200);
    let (status, _) = audrey.post(
        &format!("/api/v1/vms/{}/power", hr.uuid()),
        &json!({"action": "start"}),
    );
    assert_eq!(status, 403);

    // Moving Fiona to the auditors changes her rights at her next login.
    slapd.move_user("fiona", "finance-backup", "auditors");
    let fiona = session(&admin, "fiona");
    assert_eq!(
        fiona.get(&format!("/api/v1/vms/{}", hr.uuid())).0,
        200,
        "auditors see all"
    );
    let (status, _) = fiona.post(&format!("/api/v1/vms/{}/backups", fin.uuid()), &json!({}));
    assert_eq!(status, 403, "no longer a backup admin");
    let (_, user) = admin.get("/api/v1/users/fiona");
    assert_eq!(
        (user["role"].clone(), user["policies"].clone()),
        (json!("auditor"), json!([]))
    );

    // StartTLS on the plain port works as well.
    let (status, body) = admin.put("/api/v1/directories/corp", &{
        let mut d = directory(&slapd, "corp", &slapd.ldap_url(), true);
        d.as_object_mut().unwrap().remove("bind_password");
        d
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        login(&admin, "harry", PASSWORD).0,
        201,
        "StartTLS, kept bind password"
    );

    // Wrong passwords are refused.
    assert_eq!(login(&admin, "harry", "wrong").0, 401);
    assert_eq!(login(&admin, "nobody", PASSWORD).0, 401);
    assert_eq!(
        login(&admin, "harry", "").0,
        401,
        "an empty password is no anonymous bind"
    );

    // The directory goes down: directory users cannot log in, the local
    // administrator can, at once.
    slapd.stop();
    assert_eq!(login(&admin, "harry", PASSWORD).0, 401);
    let started = Instant::now();
    let (status, body) = login(&admin, ADMIN_USER, controller.admin_password());
    assert_eq!(status, 201, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait on the directory"
    );

    // Enough failures lock out, before the directory is even asked.
    assert_eq!(login(&admin, "audrey", "wrong").0, 401);
    let (status, body) = login(&admin, "audrey", PASSWORD);
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("too many"),
        "{body}"
    );
}

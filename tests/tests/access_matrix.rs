//! Walks every REST route (from the controller's own route list) and every
//! console page and form as each built-in role, and checks each answer
//! against the role's privileges: refused (403) exactly when the role lacks
//! the route's privilege. The router serves no route missing from that
//! list, so a new route cannot slip in without a declared check.

use std::collections::HashSet;

use lifeboat_e2e::*;

const PASSWORD: &str = "long-enough-passw0rd";
const BUILT_IN: [&str; 4] = ["administrator", "operator", "backup-admin", "auditor"];

/// A console form: its path, fields, and the privilege it needs.
type ConsoleForm<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);

/// Privileges of each built-in role, from the controller.
fn privileges(admin: &Api, role: &str) -> HashSet<String> {
    let (status, r) = admin.get(&format!("/api/v1/roles/{role}"));
    assert_eq!(status, 200, "{r}");
    r["privileges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn user_for(admin: &Api, role: &str) -> String {
    if role == "administrator" {
        return ADMIN_USER.to_string();
    }
    let name = format!("as-{role}");
    let (status, body) = admin.post(
        "/api/v1/users",
        &json!({"name": name, "password": PASSWORD, "role": role}),
    );
    assert_eq!(status, 201, "{body}");
    name
}

#[test]
fn every_api_route_and_console_page_refuses_exactly_the_roles_without_its_privilege() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("matrix");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "matrix-host", Some(libvirt.uri()));
    let admin = controller.api();
    admin.wait_vm(vm.name(), READY_TIMEOUT);
    let host = admin.wait_host_status("matrix-host", "online", READY_TIMEOUT);
    let host_id = host["id"].as_str().unwrap().to_string();

    let (status, routes) = admin.get("/api/v1/routes");
    assert_eq!(status, 200, "{routes}");
    let routes = routes.as_array().unwrap().clone();
    assert!(routes.len() >= 70, "{} routes", routes.len());

    let mut walked = 0;
    for role in BUILT_IN {
        let held = privileges(&admin, role);
        let user = user_for(&admin, role);
        let password = if role == "administrator" {
            controller.admin_password().to_string()
        } else {
            PASSWORD.to_string()
        };
        let api = admin.with_basic(&user, &password);
        walked += walk_routes(&api, role, &held, false, &routes);

        // The console, page by page and form by form.
        let mut console = ConsoleClient::new(&controller);
        assert_eq!(
            console.login_as(&user, &password).status,
            303,
            "{role} console login"
        );
        let vm_page = format!("/vms/{}", vm.uuid());
        let host_page = format!("/hosts/{host_id}");
        let pages: [(&str, &str); 21] = [
            ("/", "view"),
            ("/hosts", "view"),
            (&host_page, "view"),
            ("/vms", "view"),
            (&vm_page, "view"),
            ("/jobs", "view"),
            ("/policies", "view"),
            ("/datastores", "view"),
            ("/cluster", "view"),
            ("/physical", "view"),
            ("/roles", "view"),
            ("/agents", "manage-hosts"),
            ("/users", "manage-users"),
            ("/access-policies", "manage-users"),
            ("/directories", "manage-users"),
            ("/tokens", "view"),
            ("/audit", "view-reports"),
            ("/audit.csv", "view-reports"),
            ("/alerts", "view"),
            ("/logs", "administer"),
            ("/snmp", "administer"),
        ];
        for (page, needed) in pages {
            let answer = console.get(page);
            let what = format!("{role}: console GET {page} → {}", answer.status);
            if held.contains(needed) {
                assert_eq!(answer.status, 200, "{what}");
            } else {
                assert_eq!(answer.status, 403, "{what}");
            }
            walked += 1;
        }
        let csrf = csrf_of(&console.get("/").text());
        let forms: Vec<ConsoleForm> = vec![
            (
                format!("{vm_page}/power"),
                vec![("action", "pause")],
                "power",
            ),
            (
                format!("{vm_page}/ha"),
                vec![("priority", "low"), ("method", "restart")],
                "manage-ha",
            ),
            (
                format!("{host_page}/ha"),
                vec![("probe", "icmp")],
                "manage-ha",
            ),
            (
                "/cluster/settings".into(),
                vec![("misses", "x")],
                "manage-ha",
            ),
            ("/physical".into(), vec![("name", "")], "manage-ha"),
            ("/users".into(), vec![("name", "")], "manage-users"),
            ("/roles".into(), vec![("name", "")], "manage-users"),
            (
                "/access-policies".into(),
                vec![("name", "")],
                "manage-users",
            ),
            ("/category-rules".into(), vec![("key", "")], "manage-users"),
            ("/directories".into(), vec![("name", "")], "manage-users"),
            (
                format!("{vm_page}/categories"),
                vec![("categories", "x")],
                "manage-users",
            ),
            ("/agents/tokens".into(), vec![], "manage-hosts"),
            (
                "/datastores".into(),
                vec![("name", "")],
                "manage-datastores",
            ),
            ("/policies".into(), vec![("name", "")], "backup"),
            ("/logs/settings".into(), vec![("level", "x")], "administer"),
            ("/snmp/settings".into(), vec![("listen", "x")], "administer"),
            ("/alert-rules".into(), vec![("name", "")], "administer"),
        ];
        for (path, mut fields, needed) in forms {
            fields.push(("csrf", &csrf));
            let answer = console.request("POST", &path, &fields);
            let what = format!(
                "{role}: console POST {path} → {} {}",
                answer.status,
                answer.text().chars().take(200).collect::<String>()
            );
            if held.contains(needed) {
                assert_ne!(answer.status, 403, "{what}");
            } else {
                assert_eq!(answer.status, 403, "{what}");
            }
            walked += 1;
        }
    }

    // Hidden: an operator whose only policy matches no VM gets 404 for
    // every route and page naming the VM, whatever the privilege.
    let (status, body) = admin.post(
        "/api/v1/policies",
        &json!({"name": "nothing", "rules": [{"effect": "allow", "key": "department", "value": "none"}]}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin.post(
        "/api/v1/users",
        &json!({"name": "hidden-op", "password": PASSWORD, "role": "operator", "policies": ["nothing"]}),
    );
    assert_eq!(status, 201, "{body}");
    let hidden = admin.with_basic("hidden-op", PASSWORD);
    let backup_ref = format!("local:{}@2026-01-01T00:00:00Z", vm.uuid());
    for route in &routes {
        let pattern = route["path"].as_str().unwrap();
        if !(pattern.starts_with("/vms/{id}") || pattern.starts_with("/backups/{ref}")) {
            continue;
        }
        let method = route["method"].as_str().unwrap();
        let path = pattern
            .replace("{id}", vm.uuid())
            .replace("{ref}", &backup_ref);
        let answer = hidden.raw_request(
            method,
            &format!("/api/v1{path}"),
            &[("content-type", "application/json")],
            b"{}",
        );
        assert_eq!(
            answer.status,
            404,
            "hidden: {method} {path} → {}",
            answer.text()
        );
        walked += 1;
    }
    let mut console = ConsoleClient::new(&controller);
    assert_eq!(console.login_as("hidden-op", PASSWORD).status, 303);
    let vm_page = format!("/vms/{}", vm.uuid());
    assert_eq!(console.get(&vm_page).status, 404);
    let csrf = csrf_of(&console.get("/").text());
    for action in ["power", "backups", "ha", "categories"] {
        let answer = console.request(
            "POST",
            &format!("{vm_page}/{action}"),
            &[("csrf", &csrf), ("action", "start")],
        );
        assert_eq!(
            answer.status, 404,
            "hidden: console POST {vm_page}/{action}"
        );
        walked += 1;
    }
    // Custom roles of restricted principals (an access policy matching no
    // VM): the privilege decides as for anyone, and what decides scope is
    // refused to them whatever they hold.
    let (status, body) = admin.post(
        "/api/v1/policies",
        &json!({"name": "narrow", "rules": [{"effect": "allow", "key": "department", "value": "none"}]}),
    );
    assert_eq!(status, 201, "{body}");
    for (role, granted) in [
        (
            "custom-backup",
            json!(["view", "backup", "delete-backup", "restore"]),
        ),
        ("custom-users", json!(["view", "manage-users"])),
        ("custom-ha", json!(["view", "manage-ha", "power"])),
    ] {
        let (status, body) = admin.post(
            "/api/v1/roles",
            &json!({"name": role, "privileges": granted}),
        );
        assert_eq!(status, 201, "{body}");
        let user = format!("scoped-{role}");
        let (status, body) = admin.post(
            "/api/v1/users",
            &json!({"name": user, "password": PASSWORD, "role": role, "policies": ["narrow"]}),
        );
        assert_eq!(status, 201, "{body}");
        let held = privileges(&admin, role);
        let api = admin.with_basic(&user, PASSWORD);
        walked += walk_routes(&api, role, &held, true, &routes);
    }
    eprintln!("walked {walked} route × role pairs");
}

/// Routes that decide scope: a restricted principal is refused them even
/// holding `manage-users`.
fn decides_scope(method: &str, path: &str) -> bool {
    method != "GET"
        && (path.starts_with("/policies")
            || path.starts_with("/category-rules")
            || path.starts_with("/directories")
            || path.ends_with("/categories")
            || (method == "POST" && path == "/users"))
}

/// Every route as one principal: refused (403) exactly when it lacks the
/// route's privilege; for a restricted principal, a path naming a VM it does
/// not see is a 404 first, and a route that decides scope gets nothing done. Returns how many routes were walked.
fn walk_routes(
    api: &Api,
    role: &str,
    held: &HashSet<String>,
    scoped: bool,
    routes: &[Value],
) -> usize {
    let mut walked = 0;
    for route in routes {
        let method = route["method"].as_str().unwrap();
        let pattern = route["path"].as_str().unwrap();
        // The caller's own session stays: logging out is not the point here.
        if method == "DELETE" && pattern == "/session" {
            continue;
        }
        let path = pattern
            .replace("{id}", "00000000-0000-4000-8000-00000000abcd")
            .replace("{name}", "no-such-name")
            .replace(
                "{ref}",
                "local:00000000-0000-4000-8000-00000000abcd@2026-01-01T00:00:00Z",
            );
        let answer = api.raw_request(
            method,
            &format!("/api/v1{path}"),
            &[("content-type", "application/json")],
            b"{}",
        );
        let needed = route["privilege"].as_str();
        let allowed = needed.is_none_or(|p| held.contains(p));
        let what = format!(
            "{role}: {method} {path} (needs {needed:?}) → {} {}",
            answer.status,
            answer.text()
        );
        let names_vm = pattern.starts_with("/vms/{id}") || pattern.starts_with("/backups/{ref}");
        if scoped && names_vm {
            // A VM they do not see does not exist, before any 403 could tell.
            assert_eq!(answer.status, 404, "{what}");
        } else if !allowed {
            assert_eq!(answer.status, 403, "{what}");
        } else if scoped && decides_scope(method, pattern) {
            assert!(!(200..300).contains(&answer.status), "{what}");
        } else {
            assert_ne!(answer.status, 403, "{what}");
            assert!(!answer.text().contains("no such endpoint"), "{what}");
            assert!(answer.status != 401 && answer.status != 405, "{what}");
        }
        walked += 1;
    }
    walked
}

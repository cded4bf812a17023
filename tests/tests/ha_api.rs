//! The HA settings API refuses bad input with a clear error and keeps what
//! it had; good input is stored and read back.

use lifeboat_e2e::*;

#[test]
fn ha_settings_are_validated_and_kept() {
    let controller = Controller::start();
    let api = controller.api();

    let (status, cluster) = api.get("/api/v1/cluster");
    assert_eq!(status, 200, "{cluster}");
    assert_eq!(cluster["settings"]["fence_timeout_ms"], 5000);
    assert_eq!(cluster["settings"]["misses"], 3);
    assert!(cluster["admission_warning"].is_null(), "{cluster}");

    for (body, expected) in [
        (json!({"fence_timeout_ms": 1000}), "fence_timeout_ms"),
        (json!({"fence_timout_ms": 9000}), "unknown field"),
        (json!({"misses": 0}), "misses"),
        (json!({"shared_storages": {"san": "relative"}}), "absolute"),
        (json!({"isolation_addresses": ["10.0.0.1"]}), "IP:PORT"),
    ] {
        let (status, answer) = api.put("/api/v1/ha/settings", &body);
        assert_eq!(status, 400, "{body} → {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{body} → {error}");
    }
    let raw = api.raw_request(
        "PUT",
        "/api/v1/ha/settings",
        &[("content-type", "application/json")],
        b"{not json",
    );
    assert_eq!(raw.status, 400, "{}", raw.text());
    let (_, settings) = api.get("/api/v1/ha/settings");
    assert_eq!(
        settings["fence_timeout_ms"], 5000,
        "nothing was changed: {settings}"
    );

    let good = json!({"fence_timeout_ms": 8000, "fence_margin_ms": 1000,
                      "shared_storages": {"san": "/srv/san"}});
    let (status, answer) = api.put("/api/v1/ha/settings", &good);
    assert_eq!(status, 200, "{answer}");
    let mut controller = controller;
    controller.kill_9();
    controller.restart();
    let (_, kept) = controller.api().get("/api/v1/ha/settings");
    assert_eq!(kept["fence_timeout_ms"], 8000, "{kept}");
    assert_eq!(kept["shared_storages"]["san"], "/srv/san", "{kept}");
    let api = controller.api();

    for path in [
        "/api/v1/vms/00000000-0000-4000-8000-000000000000/ha",
        "/api/v1/hosts/no-such-host/ha",
        "/api/v1/failovers/fo-1",
        "/api/v1/physical-machines/nope",
    ] {
        let (status, answer) = api.get(path);
        assert_eq!(status, 404, "{path} → {answer}");
    }
    let (status, _) = api.delete("/api/v1/cluster");
    assert_eq!(status, 405);
    let (status, list) = api.get("/api/v1/failovers");
    assert_eq!((status, list), (200, json!([])));
}

#[test]
fn vm_ha_and_physical_machines_refuse_bad_input() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("ha-api");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "ha-api-host", Some(libvirt.uri()));
    let api = controller.api();
    let found = api.wait_vm(vm.name(), READY_TIMEOUT);
    let path = format!("/api/v1/vms/{}/ha", found["id"].as_str().unwrap());

    let (status, ha) = api.get(&path);
    assert_eq!(status, 200, "{ha}");
    assert_eq!(ha["enabled"], false);
    for bad in [
        json!({"enabled": true, "priority": "urgent"}),
        json!({"enabled": true, "probe_address": "not-an-ip"}),
        json!({"enabld": true}),
        json!({"method": "teleport"}),
    ] {
        let (status, answer) = api.put(&path, &bad);
        assert_eq!(status, 400, "{bad} → {answer}");
    }
    assert_eq!(api.get(&path).1["enabled"], false, "nothing changed");
    let good = json!({"enabled": true, "priority": "low", "anti_affinity_group": "db"});
    let (status, answer) = api.put(&path, &good);
    assert_eq!(status, 200, "{answer}");
    let (_, ha) = api.get(&path);
    assert_eq!(
        (ha["enabled"].clone(), ha["priority"].clone()),
        (json!(true), json!("low"))
    );

    let physical = |checks: Value, standby: &str| json!({"name": "erp", "checks": checks, "standby_vm": standby});
    for (body, status_wanted) in [
        (
            physical(
                json!([{"kind": "http", "url": "ftp://x/", "expect_status": 200}]),
                vm.name(),
            ),
            400,
        ),
        (
            physical(
                json!([{"kind": "tcp", "address": "erp.example", "port": 80}]),
                vm.name(),
            ),
            400,
        ),
        (physical(json!([]), vm.name()), 400),
        (
            physical(
                json!([{"kind": "icmp", "address": "10.0.0.9"}]),
                "no-such-vm",
            ),
            404,
        ),
    ] {
        let (status, answer) = api.post("/api/v1/physical-machines", &body);
        assert_eq!(status, status_wanted, "{body} → {answer}");
    }
    assert_eq!(api.get("/api/v1/physical-machines").1, json!([]));
    let (status, answer) = api.post(
        "/api/v1/physical-machines/nope/failback",
        &json!({"confirm": true}),
    );
    assert_eq!(status, 404, "{answer}");
}

#[test]
fn the_fence_command_is_a_secret_only_an_administrator_sets() {
    let controller = Controller::start();
    let admin = controller.api();
    let host = HostileAgent::enroll(&controller, "fenced-host");
    let path = format!("/api/v1/hosts/{}/ha", host.host_id);
    let secret = "ipmitool -I lanplus -H 192.0.2.9 -U admin -P s3cret-bmc chassis power off";
    let (status, body) = admin.put(&path, &json!({"fence_command": secret}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fence_command_set"], true, "{body}");
    let (_, shown) = admin.get(&path);
    assert_eq!(shown["fence_command_set"], true, "{shown}");
    for text in [body.to_string(), shown.to_string()] {
        assert!(!text.contains("s3cret"), "{text}");
    }
    let mut console = ConsoleClient::admin(&controller);
    let page = console.get(&format!("/hosts/{}", host.host_id)).text();
    assert!(
        page.contains("leave empty to keep it") && !page.contains("s3cret"),
        "{page}"
    );
    let store = std::fs::read(controller.data_dir().join("lifeboat.redb")).unwrap();
    assert!(
        !store.windows(9).any(|w| w == b"s3cret-bm"),
        "the fence command is sealed at rest"
    );

    // Managing HA is not enough to set it; keeping it needs nothing.
    let (status, _) = admin.post(
        "/api/v1/roles",
        &json!({"name": "ha-only", "privileges": ["view", "manage-ha"]}),
    );
    assert_eq!(status, 201);
    let (status, _) = admin.post(
        "/api/v1/users",
        &json!({"name": "ha-op", "password": "long-enough-passw0rd", "role": "ha-only"}),
    );
    assert_eq!(status, 201);
    let ha_op = admin.login_as("ha-op", "long-enough-passw0rd");
    let (status, body) = ha_op.put(&path, &json!({"fence_command": "true"}));
    assert_eq!(status, 403, "{body}");
    let (status, body) = ha_op.put(&path, &json!({"probe": {"kind": "tcp", "port": 22}}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fence_command_set"], true, "kept: {body}");
    let (_, audit) = admin.get("/api/v1/audit?user=ha-op");
    assert!(audit.to_string().contains("administer"), "{audit}");
    // An administrator removes it with an empty one.
    let (status, body) = admin.put(&path, &json!({"fence_command": ""}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fence_command_set"], false, "{body}");
}

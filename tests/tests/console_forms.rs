//! The console's settings forms: grouped, labelled fields with units and
//! help; a refused value comes back next to its field with the reason,
//! the other entries kept, a password never echoed, nothing saved; and a
//! screenshot in Chromium of every settings form and of refusals there.

use lifeboat_e2e::*;

/// Submits `fields` to `action` as the console would (CSRF from `page`).
fn submit(b: &mut ConsoleClient, page: &str, action: &str, fields: &[(&str, &str)]) -> RawResponse {
    let shown = b.get(page);
    assert_eq!(shown.status, 200, "{page}");
    let csrf = csrf_of(&shown.text());
    let mut form: Vec<(&str, &str)> = vec![("csrf", csrf.as_str())];
    form.extend_from_slice(fields);
    b.request("POST", action, &form)
}

/// The markup of the row holding field `name`.
fn row<'a>(html: &'a str, name: &str) -> &'a str {
    let at = html
        .find(&format!("name=\"{name}\""))
        .unwrap_or_else(|| panic!("no field {name} in:\n{html}"));
    let start = html[..at].rfind("<div class=\"field").expect("a field row");
    let end = html[at..]
        .find("<div class=\"field")
        .map_or(html.len(), |e| at + e);
    &html[start..end]
}

fn assert_refused_at(html: &str, name: &str, reason: &str) {
    let r = row(html, name);
    assert!(r.contains("field invalid"), "{name} not marked:\n{r}");
    assert!(r.contains(reason), "{name} lacks {reason:?}:\n{r}");
    assert!(r.contains("role=\"alert\""), "{r}");
}

#[test]
fn settings_forms_show_a_refusal_at_its_field_and_keep_what_was_entered() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("forms");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "forms-host", Some(libvirt.uri()));
    let api = controller.api();
    let host = api.wait_host_status("forms-host", "online", READY_TIMEOUT);
    let host_id = host["id"].as_str().unwrap().to_string();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    let (_, before) = api.get("/api/v1/cluster");

    let mut b = ConsoleClient::new(&controller);
    assert_eq!(b.login(controller.admin_password()).status, 303);

    // Cluster HA: grouped, with units and help.
    let page = b.get("/cluster").text();
    for text in [
        "<fieldset>",
        "<legend>Failure detection</legend>",
        "class=\"unit\">ms<",
        "class=\"help\"",
    ] {
        assert!(page.contains(text), "{text}");
    }
    let r = submit(
        &mut b,
        "/cluster",
        "/cluster/settings",
        &[
            ("heartbeat_interval_ms", "777"),
            ("misses", "0"),
            ("fence_timeout_ms", "9000"),
            ("fence_margin_ms", "1500"),
            ("tolerated_host_failures", "1"),
            ("shared_storages", ""),
            ("isolation_addresses", "10.0.0.1:53"),
        ],
    );
    assert_eq!(r.status, 400);
    let html = r.text();
    assert_refused_at(&html, "misses", "misses must be between 1 and 100");
    assert!(row(&html, "misses").contains("value=\"0\""));
    assert!(
        row(&html, "heartbeat_interval_ms").contains("value=\"777\""),
        "the other entries are kept"
    );
    assert!(html.contains("10.0.0.1:53"));
    assert!(
        !html.contains("http-equiv=\"refresh\""),
        "a refused form must not reload itself"
    );
    let (_, after) = api.get("/api/v1/cluster");
    assert_eq!(before, after, "nothing saved");
    // A reason about another field lands there.
    let r = submit(
        &mut b,
        "/cluster",
        "/cluster/settings",
        &[
            ("heartbeat_interval_ms", "1000"),
            ("misses", "3"),
            ("fence_timeout_ms", "9000"),
            ("fence_margin_ms", "1500"),
            ("tolerated_host_failures", "0"),
            ("shared_storages", "bad name=/x"),
            ("isolation_addresses", ""),
        ],
    );
    assert_eq!(r.status, 400);
    assert_refused_at(&r.text(), "shared_storages", "storage name");

    // A VM's HA section, on the VM's page.
    let vm_page = format!("/vms/{}", vm.uuid());
    let r = submit(
        &mut b,
        &vm_page,
        &format!("/vms/{}/ha", vm.uuid()),
        &[
            ("enabled", "on"),
            ("priority", "high"),
            ("method", "restart"),
            ("anti_affinity_group", "web-tier"),
            ("probe_address", "not-an-ip"),
        ],
    );
    assert_eq!(r.status, 400);
    let html = r.text();
    assert_refused_at(&html, "probe_address", "must be an IP address");
    assert!(row(&html, "anti_affinity_group").contains("value=\"web-tier\""));
    assert!(row(&html, "enabled").contains("checked"));
    assert!(html.contains(vm.name()), "the VM's own page");

    // A datastore that lacks what its kind needs (a browser sends the
    // empty fields too).
    let r = submit(
        &mut b,
        "/datastores",
        "/datastores",
        &[
            ("name", "nas1"),
            ("kind", "nfs"),
            ("path", ""),
            ("server", ""),
            ("export", "/backups"),
            ("share", ""),
            ("username", ""),
            ("password", ""),
            ("domain", ""),
            ("options", ""),
        ],
    );
    assert_eq!(r.status, 400);
    let html = r.text();
    assert_refused_at(&html, "server", "kind nfs needs it");
    assert!(row(&html, "export").contains("value=\"/backups\""));

    // Monitoring: the sampling interval, and the SQL export, whose password
    // is never put back into the page.
    let r = submit(
        &mut b,
        "/monitoring",
        "/monitoring/sampling",
        &[("interval_secs", "0")],
    );
    assert_eq!(r.status, 400);
    assert_refused_at(&r.text(), "interval_secs", "1 to 3600 seconds");
    let r = submit(
        &mut b,
        "/monitoring",
        "/monitoring/sql-export",
        &[
            ("url", "postgresql://u:inline-secret@db.example.org/estate"),
            ("password", "typed-secret-123"),
            ("tls", "verify-full"),
            ("enabled", "on"),
        ],
    );
    assert_eq!(r.status, 400);
    let html = r.text();
    assert_refused_at(&html, "url", "leave the password out");
    assert!(
        !html.contains("typed-secret-123"),
        "a password is never echoed"
    );
    let (_, sql) = api.get("/api/v1/sql-export");
    assert!(sql["target"].is_null(), "{sql}");
    // SNMP: a community is set once and kept (never shown) when its field
    // is left empty; a refusal keeps what was entered, passwords excepted.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let snmp_form = |community: &str, networks: &str| -> Vec<(&'static str, String)> {
        [
            ("enabled", "on"),
            ("listen", listen.as_str()),
            ("c0_community", community),
            ("c0_networks", networks),
            ("c0_user", ADMIN_USER),
            ("u0_name", "nms"),
            ("u0_auth", "sha256"),
            ("u0_auth_password", "form-auth-pass-1"),
            ("u0_priv_password", "form-priv-pass-1"),
            ("u0_user", ADMIN_USER),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect()
    };
    let bad = snmp_form("forms-ro", "nowhere");
    let bad: Vec<(&str, &str)> = bad.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = submit(&mut b, "/snmp", "/snmp/settings", &bad);
    assert_eq!(r.status, 400);
    let html = r.text();
    assert!(html.contains("networks:"), "{html}");
    assert!(row(&html, "c0_networks").contains("value=\"nowhere\""));
    assert!(
        !html.contains("form-auth-pass-1") && !html.contains("forms-ro"),
        "secrets are never echoed"
    );
    let good = snmp_form("forms-ro", "127.0.0.1");
    let good: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(submit(&mut b, "/snmp", "/snmp/settings", &good).status, 303);
    // Saved again with the community left empty: it is kept.
    let shown = b.get("/snmp").text();
    assert!(shown.contains("name=\"c0_stored\""), "{shown}");
    let csrf = csrf_of(&shown);
    let again = snmp_form("", "127.0.0.0/8");
    let mut again: Vec<(&str, &str)> = again.iter().map(|(k, v)| (*k, v.as_str())).collect();
    again.retain(|(k, _)| !k.ends_with("password"));
    again.extend([("c0_stored", "0"), ("csrf", csrf.as_str())]);
    assert_eq!(b.request("POST", "/snmp/settings", &again).status, 303);
    let (_, snmp) = api.get("/api/v1/snmp");
    assert_eq!(
        snmp["communities"][0]["networks"],
        json!(["127.0.0.0/8"]),
        "{snmp}"
    );
    assert_eq!(snmp["users"][0]["name"], "nms", "{snmp}");
    poll_until("the kept community to answer", READY_TIMEOUT, || {
        let out = std::process::Command::new("snmpget")
            .env("MIBS", "")
            .args(["-v2c", "-c", "forms-ro", "-On", "-t", "1", "-r", "0"])
            .arg(format!("udp:{listen}"))
            .arg(".1.3.6.1.2.1.1.1.0")
            .output()
            .expect("snmpget");
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        said.contains("Lifeboat controller")
            .then_some(())
            .ok_or(said)
    });

    // A schedule it cannot read is refused at that field.
    let r = submit(
        &mut b,
        "/policies",
        "/policies",
        &[("name", "nightly"), ("schedule", "whenever")],
    );
    assert_eq!(r.status, 400);
    assert_refused_at(&r.text(), "schedule", "whenever");

    // Every settings form, and refusals as a browser shows them.
    let host_page = format!("/hosts/{host_id}");
    let refused_vm = format!("{vm_page}#probe_address=not-an-ip");
    let pages = [
        "/cluster",
        host_page.as_str(),
        vm_page.as_str(),
        "/datastores",
        "/policies",
        "/physical",
        "/users",
        "/roles",
        "/access-policies",
        "/directories",
        "/tokens",
        "/monitoring",
        "/snmp",
        "/alerts",
        "/logs",
        "/cluster#fence_timeout_ms=300",
        refused_vm.as_str(),
        "/monitoring#url=postgresql://u:pw@db/estate",
    ];
    let shots = browser_screenshots(&controller, &pages);
    assert_eq!(shots.len(), pages.len() + 1);
    for shot in &shots {
        eprintln!("screenshot: {}", shot.display());
    }
}

//! The SNMP agent end to end with net-snmp's own clients and real libvirt
//! VMs: LIFEBOAT-MIB passes `smilint -l 3`; only unrestricted
//! administrators configure SNMP and bad settings are refused by field; a
//! v2c community answers only from its networks and only in v2c; v3 users
//! need authPriv and the right keys (SHA-1 and SHA-256 with AES-128); GET,
//! GETNEXT and GETBULK walk the MIB with noSuchObject, noSuchInstance,
//! endOfMibView and tooBig where they belong; a community acting as a
//! scoped user sees neither the hidden VM nor its count; indices survive a
//! controller restart.

use std::process::Command;

use lifeboat_e2e::*;

const PASSWORD: &str = "snmp-user-pass-1";
const AUTH_PW: &str = "auth-pass-256";
const PRIV_PW: &str = "priv-pass-256";

fn mib_dir() -> String {
    format!("{}/../assets", env!("CARGO_MANIFEST_DIR"))
}

/// The IETF base modules (SNMPv2-SMI, -TC, -CONF, -MIB) both tools need.
fn base_mibs() -> String {
    format!(
        "{}/browser/node_modules/net-snmp/lib/mibs",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs a net-snmp client with LIFEBOAT-MIB loaded: (exit success, output).
fn snmp(tool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .args(["-M", &format!("{}:{}", base_mibs(), mib_dir())])
        .args(["-m", "SNMPv2-MIB:LIFEBOAT-MIB"])
        .args(["-t", "2", "-r", "1"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (is the `snmp` package installed?)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn v2c<'a>(community: &'a str, target: &'a str) -> Vec<&'a str> {
    vec!["-v2c", "-c", community, target]
}

fn v3<'a>(user: &'a str, auth: &'a str, target: &'a str) -> Vec<&'a str> {
    vec![
        "-v3", "-l", "authPriv", "-u", user, "-a", auth, "-A", AUTH_PW, "-x", "AES", "-X", PRIV_PW,
        target,
    ]
}

fn with<'a>(mut base: Vec<&'a str>, more: &[&'a str]) -> Vec<&'a str> {
    base.extend_from_slice(more);
    base
}

#[test]
fn lifeboat_mib_passes_smilint_level_3() {
    let out = Command::new("smilint")
        .env("SMIPATH", base_mibs())
        .args(["-l", "3"])
        .arg(format!("{}/LIFEBOAT-MIB.txt", mib_dir()))
        .output()
        .expect("smilint (is the `smitools` package installed?)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn net_snmp_clients_walk_lifeboat_mib_with_access_control() {
    let libvirt = Libvirt::ensure();
    let seen = libvirt.define_tiny_vm("snmp-seen");
    let hidden = libvirt.define_tiny_vm("snmp-hidden");
    seen.start();
    let mut controller = Controller::start();
    let api = controller.api();
    let _agent = Agent::start(&controller, "snmp-host", Some(libvirt.uri()));
    api.wait_host_status("snmp-host", "online", READY_TIMEOUT);
    api.wait_vm(seen.name(), READY_TIMEOUT);
    api.wait_vm(hidden.name(), READY_TIMEOUT);
    let (code, body) = api.put(
        &format!("/api/v1/vms/{}/categories", seen.uuid()),
        &json!({"team": "a"}),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = api.post(
        "/api/v1/policies",
        &json!({"name": "snmp-team-a", "rules": [{"effect": "allow", "key": "team", "value": "a"}]}),
    );
    assert_eq!(code, 201, "{body}");
    for (user, role, policies) in [
        ("snmp-operator", "operator", json!([])),
        ("snmp-scoped", "viewer", json!(["snmp-team-a"])),
    ] {
        let (code, body) = api.post(
            "/api/v1/users",
            &json!({"name": user, "password": PASSWORD, "role": role, "policies": policies}),
        );
        assert_eq!(code, 201, "{body}");
    }

    let port = free_port();
    let target = format!("udp:127.0.0.1:{port}");
    let settings = json!({
        "enabled": true,
        "listen": format!("127.0.0.1:{port}"),
        "communities": [
            {"community": "lb-public", "networks": ["127.0.0.0/8"], "user": ADMIN_USER},
            {"community": "lb-scoped", "networks": ["127.0.0.1"], "user": "snmp-scoped"},
            {"community": "lb-elsewhere", "networks": ["192.0.2.0/24"], "user": ADMIN_USER},
        ],
        "users": [
            {"name": "ops256", "auth": "sha256", "auth_password": AUTH_PW,
             "priv_password": PRIV_PW, "user": ADMIN_USER},
            {"name": "ops1", "auth": "sha1", "auth_password": AUTH_PW,
             "priv_password": PRIV_PW, "user": "snmp-scoped"},
        ],
    });

    // Refused, by field; only an unrestricted administrator may.
    for (change, field) in [
        (json!({"listen": "nowhere"}), "listen:"),
        (
            json!({"communities": [{"community": "x", "networks": [], "user": ADMIN_USER}]}),
            "networks:",
        ),
        (
            json!({"communities": [{"community": "x", "networks": ["10.0.0.0/40"], "user": ADMIN_USER}]}),
            "networks:",
        ),
        (
            json!({"communities": [{"community": "x", "networks": ["::1"], "user": "nobody"}]}),
            "user:",
        ),
        (
            json!({"users": [{"name": "u", "auth_password": "short", "priv_password": PRIV_PW, "user": ADMIN_USER}]}),
            "auth_password:",
        ),
        (
            json!({"users": [{"name": "u", "user": ADMIN_USER}]}),
            "auth_password:",
        ),
        (
            // Keeping a stored community that is not there.
            json!({"communities": [{"community": "", "stored": 7, "networks": ["::1"], "user": ADMIN_USER}]}),
            "community:",
        ),
    ] {
        let mut bad = settings.clone();
        for (k, v) in change.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let (code, body) = api.put("/api/v1/snmp", &bad);
        assert_eq!(code, 400, "{change}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").starts_with(field),
            "{change}: {body}"
        );
    }
    for user in ["snmp-operator", "snmp-scoped"] {
        let (code, body) = api
            .with_basic(user, PASSWORD)
            .put("/api/v1/snmp", &settings);
        assert_eq!(code, 403, "{user}: {body}");
    }
    let (code, body) = api.put("/api/v1/snmp", &settings);
    assert_eq!(code, 200, "{body}");
    assert!(
        !body.to_string().contains("lb-public") && !body.to_string().contains(AUTH_PW),
        "secrets shown: {body}"
    );
    assert_eq!(body["users"][0]["name"], "ops256", "{body}");

    // v2c GET, once the agent listens.
    let descr = poll_until("the SNMP agent to answer", READY_TIMEOUT, || {
        match snmp(
            "snmpget",
            &with(v2c("lb-public", &target), &["SNMPv2-MIB::sysDescr.0"]),
        ) {
            (true, out) if out.contains("Lifeboat controller") => Ok(out),
            (_, out) => Err(out),
        }
    });
    assert!(descr.contains(env!("CARGO_PKG_VERSION")), "{descr}");

    // A walk of the VM table with GETNEXT and with GETBULK agree.
    let (ok, walk) = snmp(
        "snmpwalk",
        &with(v2c("lb-public", &target), &["LIFEBOAT-MIB::lbVmTable"]),
    );
    assert!(ok, "{walk}");
    for want in [
        seen.name(),
        hidden.name(),
        seen.uuid(),
        "running",
        "snmp-host",
    ] {
        assert!(walk.contains(want), "{want} missing from\n{walk}");
    }
    let (ok, bulk) = snmp(
        "snmpbulkwalk",
        &with(
            v2c("lb-public", &target),
            &["-Cr25", "LIFEBOAT-MIB::lbVmTable"],
        ),
    );
    assert!(ok, "{bulk}");
    assert_eq!(bulk.trim(), walk.trim(), "GETBULK and GETNEXT walks differ");
    let (ok, ctl) = snmp(
        "snmpwalk",
        &with(v2c("lb-public", &target), &["LIFEBOAT-MIB::lbController"]),
    );
    assert!(ok && ctl.contains("lbVmCount.0 = Gauge32: 2"), "{ctl}");
    assert!(ctl.contains("lbHostsOnline.0 = Gauge32: 1"), "{ctl}");
    let (ok, hosts) = snmp(
        "snmpwalk",
        &with(v2c("lb-public", &target), &["LIFEBOAT-MIB::lbHostTable"]),
    );
    assert!(
        ok && hosts.contains("lbHostState.1 = INTEGER: online(1)"),
        "{hosts}"
    );
    let (ok, stores) = snmp(
        "snmpwalk",
        &with(
            v2c("lb-public", &target),
            &["LIFEBOAT-MIB::lbDatastoreTable"],
        ),
    );
    assert!(ok && stores.contains("lbDatastoreCapacityMiB."), "{stores}");

    // The protocol's exceptions, each where it belongs.
    let (_, out) = snmp(
        "snmpget",
        &with(
            v2c("lb-public", &target),
            &["LIFEBOAT-MIB::lbVmName.999999"],
        ),
    );
    assert!(out.contains("No Such Instance"), "{out}");
    let (_, out) = snmp(
        "snmpget",
        &with(v2c("lb-public", &target), &["LIFEBOAT-MIB::lbObjects.9.0"]),
    );
    assert!(out.contains("No Such Object"), "{out}");
    let (_, out) = snmp(
        "snmpgetnext",
        &with(v2c("lb-public", &target), &["LIFEBOAT-MIB::lbObjects.9"]),
    );
    assert!(
        out.contains("No more variables left in this MIB View"),
        "{out}"
    );
    let many: Vec<&str> = std::iter::repeat_n("SNMPv2-MIB::sysDescr.0", 60).collect();
    let (ok, out) = snmp("snmpget", &with(v2c("lb-public", &target), &many));
    assert!(!ok && out.contains("tooBig"), "{out}");

    // A community answers only from its networks, only in v2c, only its own.
    let (ok, out) = snmp(
        "snmpget",
        &with(v2c("lb-elsewhere", &target), &["SNMPv2-MIB::sysDescr.0"]),
    );
    assert!(
        !ok && out.contains("genError") && !out.contains("Lifeboat controller"),
        "{out}"
    );
    let (ok, out) = snmp(
        "snmpget",
        &["-v1", "-c", "lb-public", &target, "SNMPv2-MIB::sysDescr.0"],
    );
    assert!(!ok && out.contains("noSuchName"), "v1: {out}");
    let (ok, out) = snmp(
        "snmpget",
        &with(v2c("wrong", &target), &["SNMPv2-MIB::sysDescr.0"]),
    );
    assert!(!ok && out.contains("Timeout"), "{out}");

    // A scoped community sees only its VM, in the table and the count.
    let (ok, scoped) = snmp(
        "snmpwalk",
        &with(v2c("lb-scoped", &target), &["LIFEBOAT-MIB::lbObjects"]),
    );
    assert!(ok, "{scoped}");
    assert!(scoped.contains(seen.name()), "{scoped}");
    assert!(
        !scoped.contains(hidden.name()),
        "hidden VM shown:\n{scoped}"
    );
    assert!(scoped.contains("lbVmCount.0 = Gauge32: 1"), "{scoped}");

    // v3: authPriv with both hashes; wrong keys and lower levels refused.
    let (ok, out) = snmp(
        "snmpget",
        &with(v3("ops256", "SHA-256", &target), &["SNMPv2-MIB::sysName.0"]),
    );
    assert!(ok && out.contains("sysName.0 = STRING"), "{out}");
    let (ok, out) = snmp(
        "snmpwalk",
        &with(v3("ops1", "SHA", &target), &["LIFEBOAT-MIB::lbVmName"]),
    );
    assert!(
        ok && out.contains(seen.name()) && !out.contains(hidden.name()),
        "{out}"
    );
    let (ok, out) = snmp(
        "snmpget",
        &[
            "-v3",
            "-l",
            "authPriv",
            "-u",
            "ops256",
            "-a",
            "SHA-256",
            "-A",
            "wrong-password",
            "-x",
            "AES",
            "-X",
            PRIV_PW,
            &target,
            "SNMPv2-MIB::sysName.0",
        ],
    );
    assert!(!ok && out.contains("Authentication failure"), "{out}");
    let (ok, out) = snmp(
        "snmpget",
        &[
            "-v3",
            "-l",
            "noAuthNoPriv",
            "-u",
            "ops256",
            &target,
            "SNMPv2-MIB::sysName.0",
        ],
    );
    assert!(
        !ok && out.contains("authorizationError"),
        "noAuthNoPriv: {out}"
    );
    let (ok, out) = snmp(
        "snmpget",
        &[
            "-v3",
            "-l",
            "authNoPriv",
            "-u",
            "ops256",
            "-a",
            "SHA-256",
            "-A",
            AUTH_PW,
            &target,
            "SNMPv2-MIB::sysName.0",
        ],
    );
    assert!(
        !ok && out.contains("authorizationError"),
        "authNoPriv: {out}"
    );
    // A malformed datagram is dropped.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .send_to(b"\x30\x84\xff\xff\xff\xff\x02\x01", ("127.0.0.1", port))
        .unwrap();

    // Each refusal is counted (and logged).
    let refused = |kind: &str| -> u64 {
        let metrics = api.raw_request("GET", "/api/v1/metrics", &[], b"").text();
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("lifeboat_snmp_refused_total{{kind=\"{kind}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    poll_until("the refusals counted", READY_TIMEOUT, || {
        let counts: Vec<u64> = [
            "usm_wrong_digests",
            "community_outside_networks",
            "bad_community",
            "asn_parse_errors",
        ]
        .iter()
        .map(|k| refused(k))
        .collect();
        counts
            .iter()
            .all(|n| *n > 0)
            .then_some(())
            .ok_or(format!("{counts:?}"))
    });
    assert!(
        controller.log().contains("SNMP requests refused: ")
            && controller.log().contains("usm_wrong_digests"),
        "{}",
        controller.log()
    );

    // Indices stay with their VMs across a restart; v3 still works (the
    // engine's boot count moved on).
    let index_of = |walk: &str, name: &str| -> String {
        walk.lines()
            .find(|l| l.contains("lbVmName.") && l.contains(name))
            .and_then(|l| l.split("lbVmName.").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{name} not in\n{walk}"))
            .to_string()
    };
    let before = index_of(&walk, seen.name());
    controller.restart();
    let after = poll_until(
        "the SNMP agent back after a restart",
        READY_TIMEOUT,
        || match snmp(
            "snmpwalk",
            &with(
                v3("ops256", "SHA-256", &target),
                &["LIFEBOAT-MIB::lbVmName"],
            ),
        ) {
            (true, out) if out.contains(seen.name()) => Ok(out),
            (_, out) => Err(out),
        },
    );
    assert_eq!(index_of(&after, seen.name()), before, "{after}");

    let (_, audit) = api.get("/api/v1/audit?user=admin");
    assert!(audit.to_string().contains("set SNMP settings"), "{audit}");
}

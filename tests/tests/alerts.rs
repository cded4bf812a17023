//! Alerts end to end with real receivers and a real libvirt host: a
//! backup of a real VM and the agent's disconnection reach a webhook
//! (signed with HMAC-SHA256), a Common Base Event receiver (the CBE 1.0.1
//! element and attribute names) and aiosmtpd (STARTTLS and AUTH required;
//! plain text and HTML with a link to the console) and rsyslogd (RFC 5424
//! over TLS, structured data parsed); "send test alert"; a
//! repeat is counted, not sent; channels refuse bad settings by field and
//! never show their secrets; only unrestricted administrators manage them;
//! a scoped user sees no alert about a VM hidden from them; and a channel
//! that is down keeps its alert queued across a controller restart until
//! it is delivered.

use std::time::Duration;

use lifeboat_e2e::*;

const SECRET: &str = "webhook-signing-secret-1";
const SMTP_USER: &str = "alerts";
const SMTP_PASSWORD: &str = "smtp-pass-1";
const PASSWORD: &str = "alerts-user-pass-1";
const DELIVERY: Duration = Duration::from_secs(60);
const CONSOLE: &str = "https://lifeboat.example.org:8443";

/// Waits until `receiver` got a message that `pick` accepts, and returns it.
fn wait_for(receiver: &Receiver, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    poll_until(what, DELIVERY, || {
        let got = receiver.received();
        got.iter().find(|m| pick(m)).cloned().ok_or(format!(
            "{} messages so far: {:?}\n{}",
            got.len(),
            got,
            receiver.log()
        ))
    })
}

fn body_json(m: &Value) -> Value {
    serde_json::from_str(m["body"].as_str().unwrap_or_default()).unwrap_or_default()
}

fn is_webhook(event: &'static str) -> impl Fn(&Value) -> bool {
    move |m| m["path"] == "/hook" && body_json(m)["event"] == event
}

/// A channel with `config` is refused, the error naming `field`.
fn assert_channel_refused(api: &Api, config: &Value, field: &str) {
    let (status, body) = api.post(
        "/api/v1/alert-channels",
        &json!({"name": "bad", "config": config}),
    );
    assert_eq!(status, 400, "{config}: {body}");
    assert!(
        body["error"].as_str().unwrap().contains(field),
        "{config}: {body}"
    );
}

fn create(api: &Api, path: &str, body: &Value) -> String {
    let (status, created) = api.post(path, body);
    assert_eq!(status, 201, "POST {path}: {created}");
    created["id"].as_str().unwrap().to_string()
}

#[test]
fn events_reach_webhook_cbe_and_mail_receivers() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("alerts");
    let controller = Controller::start();
    let api = controller.api();
    let agent = Agent::start(&controller, "alerts-host", Some(libvirt.uri()));
    let host = api.wait_host_status("alerts-host", "online", READY_TIMEOUT);
    api.wait_vm(vm.name(), READY_TIMEOUT);
    let hooks = Receiver::https(SECRET);
    let mail = Receiver::smtp(SMTP_USER, SMTP_PASSWORD);

    // Bad settings are refused, each by its field.
    for (config, field) in [
        (
            json!({"type": "webhook", "url": "http://127.0.0.1/hook"}),
            "url:",
        ),
        (json!({"type": "cbe", "url": "https://"}), "url:"),
        (
            json!({"type": "webhook", "url": hooks.url("hook"), "ca_pem": "not a certificate"}),
            "ca_pem:",
        ),
        (
            json!({"type": "email", "server": "127.0.0.1", "from": "lifeboat@example.org", "to": ["nobody"]}),
            "to:",
        ),
        (
            json!({"type": "syslog", "address": "127.0.0.1"}),
            "address:",
        ),
        (
            json!({"type": "pager", "url": "https://x"}),
            "unknown variant",
        ),
    ] {
        assert_channel_refused(&api, &config, field);
    }

    let webhook = create(
        &api,
        "/api/v1/alert-channels",
        &json!({"name": "hooks", "config": {
        "type": "webhook", "url": hooks.url("hook"), "secret": SECRET, "ca_pem": hooks.ca_pem()}}),
    );
    let cbe = create(
        &api,
        "/api/v1/alert-channels",
        &json!({"name": "cbe", "config": {
        "type": "cbe", "url": hooks.url("cbe"), "ca_pem": hooks.ca_pem()}}),
    );
    let email = create(
        &api,
        "/api/v1/alert-channels",
        &json!({"name": "mail", "config": {
        "type": "email", "server": "127.0.0.1", "port": mail.port(), "security": "starttls",
        "username": SMTP_USER, "password": SMTP_PASSWORD, "from": "lifeboat@example.org",
        "to": ["ops@example.org"], "console_url": CONSOLE, "ca_pem": mail.ca_pem()}}),
    );
    let (status, channels) = api.get("/api/v1/alert-channels");
    assert_eq!(status, 200);
    let text = channels.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains(SMTP_PASSWORD),
        "{text}"
    );
    assert!(
        channels
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["secret_set"] == (c["config"]["type"] != "cbe")),
        "{text}"
    );

    // Only unrestricted administrators manage channels and rules.
    let (status, body) = api.post(
        "/api/v1/users",
        &json!({"name": "operator1", "password": PASSWORD, "role": "operator"}),
    );
    assert_eq!(status, 201, "{body}");
    let operator = controller.api_as("operator1", PASSWORD);
    assert_eq!(operator.get("/api/v1/alert-channels").0, 403);
    assert_eq!(
        operator
            .post(
                &format!("/api/v1/alert-channels/{webhook}/test"),
                &json!({})
            )
            .0,
        403
    );
    assert_eq!(
        operator
            .post(
                "/api/v1/alert-rules",
                &json!({"name": "x", "events": ["host-failed"]})
            )
            .0,
        403
    );

    let (status, body) = api.post(
        "/api/v1/alert-rules",
        &json!({"name": "r", "events": ["backup-failed"], "channels": ["channel-nope"]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("channels:"),
        "{body}"
    );
    let (status, body) = api.post(
        "/api/v1/alert-rules",
        &json!({"name": "r", "events": ["test"]}),
    );
    assert_eq!(status, 400, "{body}");
    create(
        &api,
        "/api/v1/alert-rules",
        &json!({
        "name": "backups and agents", "events": ["backup-succeeded", "agent-disconnected"],
        "severity": "major", "channels": [webhook, cbe, email], "dedup_secs": 600}),
    );

    // Send test alert.
    let (status, test) = api.post(
        &format!("/api/v1/alert-channels/{webhook}/test"),
        &json!({}),
    );
    assert_eq!(status, 202, "{test}");
    let got = wait_for(&hooks, "the test alert at the webhook", is_webhook("test"));
    assert_eq!(got["signature_ok"], true, "{got}");
    assert_eq!(got["headers"]["content-type"], "application/json");

    // A real backup: one alert on all three channels.
    api.full_backup(vm.uuid());
    let got = wait_for(
        &hooks,
        "the backup alert at the webhook",
        is_webhook("backup-succeeded"),
    );
    assert_eq!(got["signature_ok"], true, "{got}");
    let alert = body_json(&got);
    assert_eq!(alert["severity"], "major");
    assert_eq!(alert["subject"]["kind"], "vm");
    assert_eq!(alert["subject"]["id"], vm.uuid());
    assert_eq!(alert["subject"]["name"], vm.name());

    let got = wait_for(&hooks, "the Common Base Event", |m| m["path"] == "/cbe");
    assert_eq!(got["headers"]["content-type"], "application/xml");
    let xml = got["body"].as_str().unwrap();
    let doc = roxmltree::Document::parse(xml).unwrap();
    let event = doc.root_element();
    assert_eq!(event.tag_name().name(), "CommonBaseEvent", "{xml}");
    assert_eq!(
        event.tag_name().namespace(),
        Some("http://www.ibm.com/AC/commonbaseevent1_0_1")
    );
    for attr in [
        "version",
        "creationTime",
        "globalInstanceId",
        "severity",
        "msg",
    ] {
        assert!(event.attribute(attr).is_some(), "{attr} in {xml}");
    }
    assert_eq!(event.attribute("severity"), Some("40"));
    assert!(event.attribute("msg").unwrap().contains(vm.name()));
    let names: Vec<&str> = event
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().name())
        .collect();
    assert!(
        names.contains(&"sourceComponentId") && names.contains(&"situation"),
        "{names:?}"
    );
    let situation = event
        .children()
        .find(|n| n.has_tag_name("situation"))
        .unwrap();
    assert!(situation.attribute("categoryName").is_some());
    assert!(situation
        .children()
        .any(|n| n.has_tag_name("situationType")));

    let got = wait_for(&mail, "the alert mail", |m| {
        m["subject"]
            .as_str()
            .unwrap_or_default()
            .contains("backup-succeeded")
    });
    assert_eq!(
        (got["tls"].clone(), got["authenticated"].clone()),
        (json!(true), json!(true)),
        "{got}"
    );
    assert_eq!(got["to"], json!(["ops@example.org"]));
    assert_eq!(got["content_type"], "multipart/alternative");
    let part = |t: &str| {
        got["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] == t)
            .map(|p| p["text"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {t} part: {got}"))
    };
    let link = format!("{CONSOLE}/vms/{}", vm.uuid());
    assert!(part("text/plain").contains(&link), "{got}");
    assert!(
        part("text/html").contains(&format!("href=\"{link}\"")),
        "{got}"
    );

    // The history says where it went.
    let alert_id = alert["id"].as_u64().unwrap();
    let stored = poll_until("all three deliveries sent", DELIVERY, || {
        let (_, a) = api.try_get(&format!("/api/v1/alerts/{alert_id}"))?;
        let states: Vec<&Value> = a["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| &d["state"])
            .collect();
        (states.len() == 3 && states.iter().all(|s| *s == "sent"))
            .then_some(a.clone())
            .ok_or(a.to_string())
    });
    assert_eq!(stored["event"], "backup-succeeded");

    // A second backup within the window is a repeat: counted, not sent.
    api.full_backup(vm.uuid());
    poll_until("the repeat counted", DELIVERY, || {
        let (_, a) = api.try_get(&format!("/api/v1/alerts/{alert_id}"))?;
        (a["repeats"] == 1).then_some(()).ok_or(a.to_string())
    });
    api.post(
        &format!("/api/v1/alert-channels/{webhook}/test"),
        &json!({}),
    );
    poll_until("the second test alert", DELIVERY, || {
        let n = hooks
            .received()
            .iter()
            .filter(|m| is_webhook("test")(m))
            .count();
        (n == 2).then_some(()).ok_or(n)
    });
    let sent = hooks
        .received()
        .iter()
        .filter(|m| is_webhook("backup-succeeded")(m))
        .count();
    assert_eq!(sent, 1, "the repeat was not sent again");

    // A scoped user sees no alert about the VM hidden from them.
    api.user_without_vm(vm.uuid(), "watcher", PASSWORD, "auditor");
    let watcher = controller.api_as("watcher", PASSWORD);
    let (status, seen) = watcher.get("/api/v1/alerts");
    assert_eq!(status, 200, "{seen}");
    assert!(!seen.to_string().contains(vm.uuid()), "{seen}");
    assert!(
        seen.as_array()
            .unwrap()
            .iter()
            .any(|a| a["event"] == "test"),
        "{seen}"
    );
    assert_eq!(watcher.get(&format!("/api/v1/alerts/{alert_id}")).0, 404);
    assert!(api.get("/api/v1/alerts").1.to_string().contains(vm.uuid()));
    assert_eq!(api.get("/api/v1/alerts?severity=loud").0, 400);
    assert_eq!(api.get("/api/v1/alerts?limit=0").0, 400);

    // The agent goes away: its host's alert.
    drop(agent);
    let got = wait_for(
        &hooks,
        "the agent's disconnection at the webhook",
        is_webhook("agent-disconnected"),
    );
    assert_eq!(body_json(&got)["subject"]["id"], host["id"]);

    // The console lists the history and the channels with their test button.
    let mut console = ConsoleClient::new(&controller);
    console.login(controller.admin_password());
    let page = console.get("/alerts").text();
    for expected in [
        "backup-succeeded",
        "agent-disconnected",
        "Send test alert",
        "backups and agents",
    ] {
        assert!(page.contains(expected), "{expected} on /alerts");
    }
}

#[test]
fn syslog_alerts_reach_rsyslogd_over_tls_as_rfc_5424() {
    let rsyslog = Rsyslog::start_tls();
    let controller = Controller::start();
    let api = controller.api();
    let syslog = create(
        &api,
        "/api/v1/alert-channels",
        &json!({"name": "logs", "config": {
        "type": "syslog", "address": rsyslog.address(), "transport": "tls", "ca_pem": rsyslog.ca_pem()}}),
    );
    let (status, body) = api.post("/api/v1/alert-channels", &json!({"name": "logs", "config": {
        "type": "syslog", "address": rsyslog.address(), "transport": "udp", "ca_pem": rsyslog.ca_pem()}}));
    assert_eq!(status, 400, "a CA is for TLS: {body}");
    let (status, alert) = api.post(&format!("/api/v1/alert-channels/{syslog}/test"), &json!({}));
    assert_eq!(status, 202, "{alert}");
    let id = alert["id"].as_u64().unwrap().to_string();
    let got = poll_until("the alert in rsyslogd", DELIVERY, || {
        let got = rsyslog.received();
        got.iter()
            .find(|m| m["msgid"] == id.as_str())
            .cloned()
            .ok_or(format!("{got:?}\n{}\n{}", rsyslog.log(), controller.log()))
    });
    assert_eq!(got["protocol"], "1", "RFC 5424: {got}");
    assert_eq!(
        (
            got["app"].as_str(),
            got["facility"].as_str(),
            got["severity"].as_str()
        ),
        (Some("lifeboat"), Some("daemon"), Some("info")),
        "{got}"
    );
    let sd = got["sd"].as_str().unwrap();
    assert!(
        sd.starts_with("[lifeboat@32473 ") && sd.contains(r#"event="test""#),
        "{got}"
    );
    assert!(
        got["msg"]
            .as_str()
            .unwrap()
            .contains("Test alert on channel logs"),
        "{got}"
    );
}

#[test]
fn a_channel_that_is_down_keeps_its_alert_across_a_restart() {
    let mut hooks = Receiver::https(SECRET);
    hooks.stop();
    let mut controller = Controller::start();
    let api = controller.api();
    let webhook = create(
        &api,
        "/api/v1/alert-channels",
        &json!({"name": "hooks", "config": {
        "type": "webhook", "url": hooks.url("hook"), "secret": SECRET, "ca_pem": hooks.ca_pem()}}),
    );
    let (status, alert) = api.post(
        &format!("/api/v1/alert-channels/{webhook}/test"),
        &json!({}),
    );
    assert_eq!(status, 202, "{alert}");
    let id = alert["id"].as_u64().unwrap();
    let failed = poll_until("a failed attempt", DELIVERY, || {
        let (_, a) = api.try_get(&format!("/api/v1/alerts/{id}"))?;
        let d = &a["deliveries"][0];
        (d["attempts"].as_u64() >= Some(1))
            .then_some(d.clone())
            .ok_or(a.to_string())
    });
    assert_eq!(failed["state"], "pending", "{failed}");
    assert!(
        failed["last_error"].as_str().unwrap().contains("connect"),
        "{failed}"
    );

    controller.restart();
    hooks.resume();
    let api = controller.api();
    let got = wait_for(
        &hooks,
        "the queued alert after the restart",
        is_webhook("test"),
    );
    assert_eq!(body_json(&got)["id"], id);
    assert_eq!(got["signature_ok"], true);
    let (_, a) = api.get(&format!("/api/v1/alerts/{id}"));
    let d = &a["deliveries"][0];
    assert!(d["attempts"].as_u64() >= Some(2), "{a}");
    poll_until("the delivery recorded as sent", DELIVERY, || {
        let (_, a) = api.try_get(&format!("/api/v1/alerts/{id}"))?;
        (a["deliveries"][0]["state"] == "sent")
            .then_some(())
            .ok_or(a.to_string())
    });
}

const TRAP_AUTH: &str = "trap-auth-pass-1";
const TRAP_PRIV: &str = "trap-priv-pass-1";
/// LIFEBOAT-MIB's lbNotifications and lbAlarmEntry, numeric.
const NOTIFICATIONS: &str = ".1.3.6.1.4.1.32473.1.0";
const ALARM_ENTRY: &str = ".1.3.6.1.4.1.32473.1.1.5.1";

/// The lines of `trapd` for notification `n` (lbNotifications.n) of alert `id`.
fn notifications(trapd: &Snmptrapd, n: u32, id: u64) -> Vec<String> {
    let kind = format!("{NOTIFICATIONS}.{n}");
    let row = format!("{ALARM_ENTRY}.4.{id} = ");
    trapd
        .received()
        .into_iter()
        .filter(|l| l.contains(&kind) && l.contains(&row))
        .collect()
}

#[test]
fn snmp_notifications_reach_snmptrapd_and_the_alarm_table() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("alerts-snmp");
    let controller = Controller::start();
    let api = controller.api();
    let _agent = Agent::start(&controller, "snmp-alerts-host", Some(libvirt.uri()));
    api.wait_host_status("snmp-alerts-host", "online", READY_TIMEOUT);
    api.wait_vm(vm.name(), READY_TIMEOUT);

    // The agent serves lbAlarmTable; its engine ID is what a receiver of
    // v3 traps configures.
    let port = free_port();
    let (status, snmp) = api.put(
        "/api/v1/snmp",
        &json!({"enabled": true, "listen": format!("127.0.0.1:{port}"),
            "communities": [{"community": "lb-read", "networks": ["127.0.0.1"], "user": ADMIN_USER}],
            "users": []}),
    );
    assert_eq!(status, 200, "{snmp}");
    let engine_id = snmp["engine_id"].as_str().unwrap().to_string();
    let user = |name, engine_id| TrapUser {
        name,
        auth_password: TRAP_AUTH,
        priv_password: TRAP_PRIV,
        engine_id,
    };
    let mut trapd = Snmptrapd::configure(
        "lb-traps",
        &[user("trapper", Some(&engine_id)), user("informer", None)],
    );
    let snmp_channel = |name: &str, config: Value| {
        let mut config = config;
        config["type"] = json!("snmp");
        config["target"] = json!(trapd.target());
        create(
            &api,
            "/api/v1/alert-channels",
            &json!({"name": name, "config": config}),
        )
    };
    let v3 = |user: &str, notification: &str| {
        json!({"version": "v3", "notification": notification, "user": user, "auth": "sha256",
            "auth_password": TRAP_AUTH, "priv_password": TRAP_PRIV})
    };
    for (config, field) in [
        (
            json!({"type": "snmp", "target": "127.0.0.1", "community": "c"}),
            "target:",
        ),
        (
            json!({"type": "snmp", "target": "127.0.0.1:162", "version": "v2c"}),
            "community:",
        ),
        (
            json!({"type": "snmp", "target": "127.0.0.1:162", "version": "v3", "user": "u",
                "auth_password": "short", "priv_password": TRAP_PRIV}),
            "auth_password:",
        ),
    ] {
        assert_channel_refused(&api, &config, field);
    }
    let inform = snmp_channel("v3 inform", v3("informer", "inform"));
    let v3_trap = snmp_channel("v3 trap", v3("trapper", "trap"));
    let v2c_trap = snmp_channel(
        "v2c trap",
        json!({"version": "v2c", "notification": "trap", "community": "lb-traps"}),
    );
    let (_, channels) = api.get("/api/v1/alert-channels");
    assert!(
        !channels.to_string().contains(TRAP_AUTH) && !channels.to_string().contains("lb-traps"),
        "{channels}"
    );

    // An inform to a receiver that is not up yet fails, is retried, and
    // is delivered once the receiver acknowledges it.
    let (status, test) = api.post(&format!("/api/v1/alert-channels/{inform}/test"), &json!({}));
    assert_eq!(status, 202, "{test}");
    let inform_test = test["id"].as_u64().unwrap();
    let delivery = |id: u64| {
        let (_, a) = api.try_get(&format!("/api/v1/alerts/{id}")).unwrap();
        a["deliveries"][0].clone()
    };
    poll_until("the unanswered inform to be retried", DELIVERY, || {
        let d = delivery(inform_test);
        (d["state"] == "pending" && d["attempts"].as_u64() >= Some(1))
            .then_some(())
            .ok_or(d.to_string())
    });
    let d = delivery(inform_test);
    assert!(
        d["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("not acknowledged"),
        "{d}"
    );
    trapd.start();
    poll_until("the inform acknowledged", DELIVERY, || {
        let d = delivery(inform_test);
        (d["state"] == "sent").then_some(()).ok_or(d.to_string())
    });
    let got = notifications(&trapd, 5, inform_test);
    assert_eq!(got.len(), 1, "{}", trapd.log());
    assert!(
        got[0].contains("INFORM") && got[0].contains("informer"),
        "{}",
        got[0]
    );

    // Traps, v2c and v3 (from the controller's engine).
    for (channel, security) in [(&v2c_trap, "lb-traps"), (&v3_trap, "trapper")] {
        let (status, test) = api.post(
            &format!("/api/v1/alert-channels/{channel}/test"),
            &json!({}),
        );
        assert_eq!(status, 202, "{test}");
        let id = test["id"].as_u64().unwrap();
        let line = poll_until("the trap at snmptrapd", DELIVERY, || {
            notifications(&trapd, 5, id).pop().ok_or(format!(
                "{}\n{}",
                trapd.log(),
                controller.log()
            ))
        });
        assert!(line.contains("TRAP") && line.contains(security), "{line}");
        assert!(
            line.contains(&format!("{ALARM_ENTRY}.3.{id} = INTEGER: 1")),
            "info(1): {line}"
        );
    }

    // A real backup: lbJobAlarm on both rule channels, carrying the row.
    create(
        &api,
        "/api/v1/alert-rules",
        &json!({"name": "backups to SNMP", "events": ["backup-succeeded"], "severity": "major",
            "channels": [v2c_trap, inform]}),
    );
    api.full_backup(vm.uuid());
    let alert = poll_until("the backup alert", DELIVERY, || {
        let (_, all) = api.try_get("/api/v1/alerts?event=backup-succeeded")?;
        all.as_array()
            .and_then(|a| a.first().cloned())
            .ok_or(all.to_string())
    });
    let id = alert["id"].as_u64().unwrap();
    let lines = poll_until("lbJobAlarm on both channels", DELIVERY, || {
        let got = notifications(&trapd, 3, id);
        (got.len() == 2)
            .then_some(got.clone())
            .ok_or(format!("{got:?}\n{}", trapd.log()))
    });
    for line in &lines {
        for want in [
            format!("{ALARM_ENTRY}.3.{id} = INTEGER: 3"),
            format!("{ALARM_ENTRY}.4.{id} = STRING: \"backup-succeeded\""),
            format!("{ALARM_ENTRY}.6.{id} = STRING: \"{}\"", vm.uuid()),
        ] {
            assert!(line.contains(&want), "{want} in {line}");
        }
    }

    // lbAlarmTable lists the same alerts as the REST API.
    let walk_alarms = |community: &str| {
        let out = std::process::Command::new("snmpwalk")
            .env("MIBS", "")
            .args(["-v2c", "-c", community, "-On", "-t", "2", "-r", "1"])
            .arg(format!("udp:127.0.0.1:{port}"))
            .arg(ALARM_ENTRY)
            .output()
            .expect("snmpwalk (is the `snmp` package installed?)");
        let walk = String::from_utf8_lossy(&out.stdout).to_string();
        out.status.success().then_some(walk.clone()).ok_or(walk)
    };
    let walk = walk_alarms("lb-read").unwrap();
    let (_, all) = api.get("/api/v1/alerts");
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
    for a in all {
        let row = format!(
            "{ALARM_ENTRY}.4.{} = STRING: \"{}\"",
            a["id"],
            a["event"].as_str().unwrap()
        );
        assert!(walk.contains(&row), "{row} in {walk}");
    }
    assert_eq!(
        walk.lines()
            .filter(|l| l.starts_with(&format!("{ALARM_ENTRY}.8.")) && l.contains("= STRING:"))
            .count(),
        all.len(),
        "{walk}"
    );

    // A community acting as a user the VM is hidden from sees no row
    // about it.
    api.user_without_vm(vm.uuid(), "alarm-watcher", PASSWORD, "viewer");
    let (status, body) = api.put(
        "/api/v1/snmp",
        &json!({"enabled": true, "listen": format!("127.0.0.1:{port}"),
            "communities": [
                {"community": "lb-read", "networks": ["127.0.0.1"], "user": ADMIN_USER},
                {"community": "lb-scoped", "networks": ["127.0.0.1"], "user": "alarm-watcher"}],
            "users": []}),
    );
    assert_eq!(status, 200, "{body}");
    let scoped = poll_until("the restarted agent", READY_TIMEOUT, || {
        walk_alarms("lb-scoped")
    });
    assert!(
        scoped.contains(&format!("{ALARM_ENTRY}.4.{} = ", all[3]["id"])),
        "the test alerts are there: {scoped}"
    );
    assert!(
        !scoped.contains(&format!("{ALARM_ENTRY}.4.{id} = ")) && !scoped.contains(vm.uuid()),
        "{scoped}"
    );
}

/// Makes the console log a debug record: a TLS handshake that fails.
fn failed_handshake(controller: &Controller) {
    use std::io::Write;
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", controller.api_port())).unwrap();
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\n\r\n");
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let _ = std::io::Read::read_to_end(&mut tcp, &mut Vec::new());
}

fn handshake_records(api: &Api, after: u64) -> Vec<Value> {
    let (status, records) = api.get(&format!("/api/v1/logs?level=debug&after={after}"));
    assert_eq!(status, 200, "{records}");
    records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .unwrap_or_default()
                .contains("web TLS handshake failed")
        })
        .cloned()
        .collect()
}

#[test]
fn the_log_level_changes_at_run_time_and_the_log_reaches_rsyslogd() {
    let rsyslog = Rsyslog::start_tls();
    let mut controller = Controller::start();
    let api = controller.api();
    let (status, body) = api.post(
        "/api/v1/users",
        &json!({"name": "operator2", "password": PASSWORD, "role": "operator"}),
    );
    assert_eq!(status, 201, "{body}");
    let operator = controller.api_as("operator2", PASSWORD);
    for path in ["/api/v1/logs", "/api/v1/logging"] {
        assert_eq!(operator.get(path).0, 403, "{path}");
    }
    assert_eq!(operator.put("/api/v1/logging", &json!({})).0, 403);
    assert_eq!(api.anonymous().get("/api/v1/logs").0, 401);
    // An administrator under an access policy: a record may name a VM
    // hidden from them.
    let (status, body) = api.post(
        "/api/v1/policies",
        &json!({"name": "team-a", "rules": [{"effect": "allow", "key": "team", "value": "a"}]}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.post(
        "/api/v1/users",
        &json!({"name": "scoped-admin", "password": PASSWORD, "role": "administrator", "policies": ["team-a"]}),
    );
    assert_eq!(status, 201, "{body}");
    let scoped_admin = controller.api_as("scoped-admin", PASSWORD);
    for path in ["/api/v1/logs", "/api/v1/logging"] {
        assert_eq!(scoped_admin.get(path).0, 403, "{path}");
    }
    assert_eq!(scoped_admin.put("/api/v1/logging", &json!({})).0, 403);
    for bad in ["level=loud", "limit=0", "limit=99999", "after=x"] {
        let (status, body) = api.get(&format!("/api/v1/logs?{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
        let field = bad.split('=').next().unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{bad}: {body}"
        );
    }

    // At the default level (info), a failed handshake is not logged.
    let (status, settings) = api.get("/api/v1/logging");
    assert_eq!(status, 200, "{settings}");
    assert_eq!(settings["level"], "info", "{settings}");
    let (_, recent) = api.get("/api/v1/logs?level=info");
    let last = |records: &Value| {
        records
            .as_array()
            .and_then(|a| a.last())
            .map_or(0, |r| r["seq"].as_u64().unwrap())
    };
    let start = last(&recent);
    assert!(start > 0, "the controller's start is in the log: {recent}");
    assert!(
        recent.to_string().contains("Lifeboat controller: console"),
        "{recent}"
    );
    failed_handshake(&controller);

    // Debug from the console, at once.
    let mut console = ConsoleClient::admin(&controller);
    let csrf = csrf_of(&console.get("/logs").text());
    let answer = console.request(
        "POST",
        "/logs/settings",
        &[
            ("csrf", &csrf),
            ("level", "loud"),
            ("syslog_channel", ""),
            ("syslog_level", "info"),
        ],
    );
    assert_eq!(answer.status, 400, "a bad level: {}", answer.text());
    assert!(answer.text().contains("level:"), "{}", answer.text());
    let answer = console.request(
        "POST",
        "/logs/settings",
        &[
            ("csrf", &csrf),
            ("level", "debug"),
            ("syslog_channel", ""),
            ("syslog_level", "info"),
        ],
    );
    assert_eq!(answer.status, 303, "{}", answer.text());
    assert!(
        handshake_records(&api, start).is_empty(),
        "logged before the change"
    );
    failed_handshake(&controller);
    let seen = poll_until("the debug record", READY_TIMEOUT, || {
        handshake_records(&api, start)
            .pop()
            .ok_or("no handshake record yet")
    });
    assert_eq!(seen["level"], "debug", "{seen}");
    let page = console.get("/logs?level=debug").text();
    assert!(page.contains("web TLS handshake failed"), "{page}");

    // Forwarded to a syslog channel: the controller's own records, as
    // RFC 5424 with the level and module in structured data.
    let (status, channel) = api.post(
        "/api/v1/alert-channels",
        &json!({"name": "logs", "config": {
        "type": "syslog", "address": rsyslog.address(), "transport": "tls", "ca_pem": rsyslog.ca_pem()}}),
    );
    assert_eq!(status, 201, "{channel}");
    let channel = channel["id"].as_str().unwrap();
    let (status, body) = api.put(
        "/api/v1/logging",
        &json!({"level": "info", "syslog_channel": "channel-nope"}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("syslog_channel:"),
        "{body}"
    );
    let (status, body) = api.put(
        "/api/v1/logging",
        &json!({"level": "info", "syslog_channel": channel, "syslog_level": "info"}),
    );
    assert_eq!(status, 200, "{body}");
    let got = poll_until("the log record at rsyslogd", DELIVERY, || {
        let got = rsyslog.received();
        got.iter()
            .find(|m| {
                m["msg"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("log settings changed by admin")
            })
            .cloned()
            .ok_or(format!("{got:?}\n{}", rsyslog.log()))
    });
    let sd = got["sd"].as_str().unwrap();
    assert!(
        sd.starts_with("[lifeboat-log@32473 ") && sd.contains(r#"level="info""#),
        "{got}"
    );
    assert_eq!(
        (got["app"].as_str(), got["severity"].as_str()),
        (Some("lifeboat"), Some("info")),
        "{got}"
    );

    // Deleting the channel stops the forwarding.
    let (status, body) = api.delete(&format!("/api/v1/alert-channels/{channel}"));
    assert_eq!(status, 200, "{body}");
    let (_, settings) = api.get("/api/v1/logging");
    assert!(settings["syslog_channel"].is_null(), "{settings}");
    let (status, body) = api.put(
        "/api/v1/logging",
        &json!({"level": "info", "syslog_channel": channel}),
    );
    assert_eq!(status, 400, "a deleted channel: {body}");
    let (status, channel) = api.post(
        "/api/v1/alert-channels",
        &json!({"name": "logs again", "config": {
        "type": "syslog", "address": rsyslog.address(), "transport": "tls", "ca_pem": rsyslog.ca_pem()}}),
    );
    assert_eq!(status, 201, "{channel}");
    let channel = channel["id"].as_str().unwrap();
    let (status, body) = api.put(
        "/api/v1/logging",
        &json!({"level": "info", "syslog_channel": channel, "syslog_level": "info"}),
    );
    assert_eq!(status, 200, "{body}");

    // Back at info, and still there after a restart.
    let before = last(&api.get("/api/v1/logs").1);
    failed_handshake(&controller);
    controller.restart();
    let api = controller.api();
    let (_, settings) = api.get("/api/v1/logging");
    assert_eq!(
        (
            settings["level"].as_str(),
            settings["syslog_channel"].as_str()
        ),
        (Some("info"), Some(channel)),
        "{settings}"
    );
    failed_handshake(&controller);
    assert!(
        handshake_records(&api, 0).is_empty(),
        "debug records at info ({before} before the restart)"
    );
}

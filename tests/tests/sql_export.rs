//! The SQL export end to end against a real PostgreSQL server with TLS:
//! bad targets are refused with reasons (a password in the URL, an
//! untrusted certificate, a wrong password), only unrestricted
//! administrators may configure it, the password never comes back; then the
//! inventory and every finished minute of a real libvirt VM's samples
//! arrive, the database is stopped while sampling goes on and an inventory
//! change is made, and once it is back every minute is there exactly once,
//! with the figures the controller's own API shows, the change included; a
//! VM that goes away is marked removed.

use std::time::Duration;

use lifeboat_e2e::*;

const PASSWORD: &str = "sql-export-pass-1";
const CATCH_UP: Duration = Duration::from_secs(240);

fn status(api: &Api) -> Value {
    let (code, body) = api.get("/api/v1/sql-export");
    assert_eq!(code, 200, "{body}");
    body["status"].clone()
}

fn target(pg: &Postgres, password: &str, ca_pem: &str) -> Value {
    json!({"url": pg.url(), "password": password, "tls": "verify-full", "ca_pem": ca_pem})
}

/// Waits until the export's status shows an error containing `want`.
fn wait_error(api: &Api, want: &str) -> Value {
    poll_until(
        &format!("the SQL export to report {want:?}"),
        READY_TIMEOUT,
        || {
            let s = status(api);
            match s["error"].as_str() {
                Some(e) if e.contains(want) => Ok(s),
                _ => Err(s.to_string()),
            }
        },
    )
}

fn number(s: &str) -> u64 {
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("a number: {s:?}"))
}

#[test]
fn the_estate_streams_into_postgresql_and_catches_up_after_an_outage() {
    let mut pg = Postgres::start();
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("sqlx");
    let gone = libvirt.define_tiny_vm("sqlx-gone");
    vm.start();
    gone.start();
    let controller = Controller::start();
    let api = controller.api();
    let (code, body) = api.put("/api/v1/metrics/settings", &json!({"interval_secs": 1}));
    assert_eq!(code, 200, "{body}");
    let _agent = Agent::start(&controller, "sqlx-host", Some(libvirt.uri()));
    let host = api.wait_host_status("sqlx-host", "online", READY_TIMEOUT);
    let host_id = host["id"].as_str().unwrap().to_string();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    api.wait_vm(gone.name(), READY_TIMEOUT);

    // Refused with the field and the reason; nothing stored.
    let mut with_password = target(&pg, PG_PASSWORD, &pg.ca_pem());
    with_password["url"] = json!(pg
        .url()
        .replace("lifeboat@", &format!("lifeboat:{PG_PASSWORD}@")));
    let (code, body) = api.put("/api/v1/sql-export", &with_password);
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("url: leave the password out"),
        "{body}"
    );
    let (code, body) = api.put(
        "/api/v1/sql-export",
        &json!({"url": pg.url(), "tls": "verify-full"}),
    );
    assert_eq!(code, 400, "a first target needs a password: {body}");
    let (code, body) = api.put(
        "/api/v1/sql-export",
        &json!({"url": pg.url(), "password": "x", "ca_pem": "-----BEGIN CERTIFICATE-----\nnope\n"}),
    );
    assert_eq!(code, 400, "{body}");
    let (_, shown) = api.get("/api/v1/sql-export");
    assert!(shown["target"].is_null(), "{shown}");

    // Only an administrator without access policies configures it.
    let (code, body) = api.post(
        "/api/v1/policies",
        &json!({"name": "sqlx-some", "rules": [{"effect": "allow", "key": "team", "value": "a"}]}),
    );
    assert_eq!(code, 201, "{body}");
    for (user, role, policies) in [
        ("sqlx-operator", "operator", json!([])),
        ("sqlx-scoped-admin", "administrator", json!(["sqlx-some"])),
    ] {
        let (code, body) = api.post(
            "/api/v1/users",
            &json!({"name": user, "password": PASSWORD, "role": role, "policies": policies}),
        );
        assert_eq!(code, 201, "{body}");
        let other = api.with_basic(user, PASSWORD);
        let (code, body) = other.put(
            "/api/v1/sql-export",
            &target(&pg, PG_PASSWORD, &pg.ca_pem()),
        );
        assert_eq!(code, 403, "{user}: {body}");
    }

    // TLS is checked: the system's trust store does not know this CA.
    let (code, body) = api.put("/api/v1/sql-export", &target(&pg, PG_PASSWORD, ""));
    assert_eq!(code, 200, "{body}");
    wait_error(&api, "certificate");
    // A wrong password is the server's refusal, in words.
    let (code, body) = api.put("/api/v1/sql-export", &target(&pg, "wrong", &pg.ca_pem()));
    assert_eq!(code, 200, "{body}");
    wait_error(&api, "password authentication failed");
    let (code, body) = api.put(
        "/api/v1/sql-export",
        &target(&pg, PG_PASSWORD, &pg.ca_pem()),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["target"]["password_set"], true, "{body}");
    let shown = body.to_string();
    assert!(
        !shown.contains(PG_PASSWORD) && !shown.contains("sealed"),
        "{shown}"
    );

    // The inventory and finished minutes arrive.
    let vm_rows = format!(
        "SELECT count(*) FROM lifeboat_vm_samples WHERE vm_uuid = '{}'",
        vm.uuid()
    );
    poll_until("the VM's first minutes in PostgreSQL", CATCH_UP, || {
        let s = status(&api);
        let rows = pg
            .try_psql(PG_DATABASE, &vm_rows)
            .map(|n| number(&n))
            .unwrap_or(0);
        if rows >= 1 && s["state"] == "exporting" {
            Ok(())
        } else {
            Err(format!("{rows} rows; {s}"))
        }
    });
    assert_eq!(
        pg.query(&format!(
            "SELECT name, status, cpus > 0 FROM lifeboat_hosts WHERE host_id = '{host_id}'"
        )),
        "sqlx-host|online|t"
    );
    assert_eq!(
        pg.query(&format!(
            "SELECT name, power_state, host_id FROM lifeboat_vms WHERE vm_uuid = '{}' AND removed_at IS NULL",
            vm.uuid()
        )),
        format!("{}|running|{host_id}", vm.name())
    );
    assert!(
        number(&pg.query(&format!(
            "SELECT count(*) FROM lifeboat_host_samples WHERE host_id = '{host_id}' AND memory_used_avg > 0"
        ))) >= 1
    );
    let before_outage = number(&pg.query(&format!(
        "SELECT extract(epoch FROM max(at))::bigint FROM lifeboat_vm_samples WHERE vm_uuid = '{}'",
        vm.uuid()
    )));

    // The outage: sampling and an inventory change go on without it.
    pg.stop();
    wait_error(&api, "connect");
    let (code, body) = api.put(
        &format!("/api/v1/vms/{}/categories", vm.uuid()),
        &json!({"cost-center": "cc-42"}),
    );
    assert_eq!(code, 200, "{body}");
    poll_until(
        "two more finished minutes while the database is away",
        CATCH_UP,
        || {
            let s = status(&api);
            match s["lag_minutes"].as_u64() {
                Some(lag) if lag >= 3 => Ok(()),
                _ => Err(s.to_string()),
            }
        },
    );
    pg.restart();
    poll_until("the export to catch up", CATCH_UP, || {
        let s = status(&api);
        if s["state"] == "exporting" && s["lag_minutes"] == 0 && s["error"].is_null() {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });

    // Every minute once: no gap, no duplicate, across the outage.
    let summary = pg.query(&format!(
        "SELECT count(*), count(DISTINCT at), extract(epoch FROM min(at))::bigint, \
         extract(epoch FROM max(at))::bigint FROM lifeboat_vm_samples WHERE vm_uuid = '{}'",
        vm.uuid()
    ));
    let v: Vec<u64> = summary.split('|').map(number).collect();
    let (count, distinct, first, last) = (v[0], v[1], v[2], v[3]);
    assert_eq!(count, distinct, "{summary}");
    assert_eq!(
        count,
        (last - first) / 60 + 1,
        "a minute is missing: {summary}"
    );
    assert!(
        last >= before_outage + 3 * 60,
        "the outage's minutes: {summary}"
    );
    // The figures are the controller's own.
    let (code, series) = api.get(&format!(
        "/api/v1/vms/{}/metrics?timeframe=hour&cf=max&metric=cpu",
        vm.uuid()
    ));
    assert_eq!(code, 200, "{series}");
    let mut compared = 0;
    for point in series["metrics"]["cpu"]["points"].as_array().unwrap() {
        let (t, Some(api_max)) = (point[0].as_u64().unwrap(), point[1].as_f64()) else {
            continue;
        };
        if t < first || t > last {
            continue;
        }
        let db = pg.query(&format!(
            "SELECT cpu_max FROM lifeboat_vm_samples WHERE vm_uuid = '{}' AND at = to_timestamp({t})",
            vm.uuid()
        ));
        let db: f64 = db.parse().unwrap_or_else(|_| panic!("minute {t}: {db:?}"));
        assert!(
            (db - api_max).abs() <= 1e-6 * api_max.abs().max(1.0),
            "minute {t}: {db} vs {api_max}"
        );
        compared += 1;
    }
    assert!(compared >= 3, "{series}");
    // The change made during the outage, in the table and the change log.
    assert_eq!(
        pg.query(&format!(
            "SELECT categories->>'cost-center' FROM lifeboat_vms WHERE vm_uuid = '{}'",
            vm.uuid()
        )),
        "cc-42"
    );
    assert!(
        number(&pg.query(&format!(
            "SELECT count(*) FROM lifeboat_inventory_changes WHERE object_id = '{}' \
             AND change = 'changed' AND record->'categories'->>'cost-center' = 'cc-42'",
            vm.uuid()
        ))) == 1
    );

    // A VM that goes away is marked removed, within seconds.
    let gone_uuid = gone.uuid().to_string();
    drop(gone);
    poll_until("the removed VM marked in PostgreSQL", READY_TIMEOUT, || {
        let row = pg.query(&format!(
            "SELECT (v.removed_at IS NOT NULL)::text || '|' || count(c.*) FROM lifeboat_vms v \
             LEFT JOIN lifeboat_inventory_changes c ON c.object_id = v.vm_uuid AND c.change = 'removed' \
             WHERE v.vm_uuid = '{gone_uuid}' GROUP BY v.removed_at"
        ));
        if row == "true|1" {
            Ok(())
        } else {
            Err(row)
        }
    });
    // Settings changes are audited.
    let (_, audit) = api.get("/api/v1/audit?action=set%20SQL%20export");
    assert!(audit.to_string().contains("set SQL export"), "{audit}");
}

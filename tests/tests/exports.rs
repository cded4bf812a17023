//! Exports end to end: the VM, host, job and audit tables and a VM's metric
//! history as CSV and `.xlsx`, opened by Python's openpyxl (typed cells,
//! dates as dates, a header row, an autofilter), from the API and the
//! console; a scoped user's exports leave out what they may not see, and a
//! role without `view-reports` gets none.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lifeboat_e2e::*;

const PASSWORD: &str = "exports-pass-1";

/// Debian's Python, which has Debian's openpyxl (`tests/install-deps.sh`),
/// whatever other `python3` comes first on the PATH.
const PYTHON: &str = "/usr/bin/python3";

/// Runs the Python `script` on `file`; returns its stdout, one JSON value.
fn python(file: &Path, script: &str) -> Value {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// The first sheet: its header, its rows with each cell's Python type,
/// and its autofilter range.
const DESCRIBE: &str = r#"
import json, sys, openpyxl
wb = openpyxl.load_workbook(sys.argv[1])
ws = wb.worksheets[0]
rows = list(ws.iter_rows(values_only=True))
print(json.dumps({
    "title": ws.title,
    "header": list(rows[0]),
    "rows": [[None if v is None else str(v) for v in r] for r in rows[1:]],
    "types": [[type(v).__name__ for v in r] for r in rows[1:]],
    "bold": ws.cell(row=1, column=1).font.b,
    "autofilter": ws.auto_filter.ref,
}))
"#;

/// The first HTML table of the file as rows of cell texts (header first).
const PARSE_TABLE: &str = r#"
import json, sys
from html.parser import HTMLParser
class Table(HTMLParser):
    def __init__(self):
        super().__init__(); self.rows = []; self.cell = None
    def handle_starttag(self, tag, attrs):
        if tag == "tr": self.rows.append([])
        if tag in ("td", "th"): self.cell = ""
    def handle_endtag(self, tag):
        if tag in ("td", "th"): self.rows[-1].append(self.cell); self.cell = None
    def handle_data(self, data):
        if self.cell is not None: self.cell += data
t = Table(); t.feed(open(sys.argv[1], encoding="utf-8").read())
print(json.dumps(t.rows))
"#;

fn download(api: &Api, path: &str, dir: &Path, name: &str) -> std::path::PathBuf {
    let r = api.raw_request("GET", path, &[], b"");
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    let file = dir.join(name);
    std::fs::write(&file, &r.body).unwrap();
    file
}

#[test]
fn tables_export_as_csv_and_typed_xlsx_within_the_callers_scope() {
    let libvirt = Libvirt::ensure();
    let shown = libvirt.define_tiny_vm("export-shown");
    let hidden = libvirt.define_tiny_vm("export-hidden");
    shown.start();
    hidden.start();
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "export-host", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_vm(shown.name(), READY_TIMEOUT);
    api.wait_vm(hidden.name(), READY_TIMEOUT);
    let dir = ScratchDir::new("exports");

    // The VM table as Excel: a bold header, an autofilter over the data,
    // numbers as numbers and times as dates.
    let file = download(
        &api,
        "/api/v1/exports/vms?format=xlsx",
        dir.path(),
        "vms.xlsx",
    );
    let sheet = python(&file, DESCRIBE);
    assert_eq!(sheet["title"], "vms");
    assert_eq!(sheet["bold"], true, "{sheet}");
    let header: Vec<&str> = sheet["header"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(header[..4], ["name", "uuid", "host", "power_state"]);
    let rows = sheet["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{sheet}");
    assert_eq!(sheet["autofilter"], "A1:J3", "{sheet}");
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let row_of = |vm: &TinyVm| {
        rows.iter()
            .position(|r| r[col("uuid")] == vm.uuid())
            .unwrap_or_else(|| panic!("{} in {sheet}", vm.name()))
    };
    let r = row_of(&shown);
    let types = &sheet["types"][r];
    assert_eq!(types[col("memory_bytes")], "int", "{types}");
    assert_eq!(rows[r][col("memory_bytes")], (64u64 << 20).to_string());
    assert_eq!(types[col("updated")], "datetime", "{types}");
    assert_eq!(rows[r][col("power_state")], "running");

    // The same as CSV.
    let r = api.raw_request("GET", "/api/v1/exports/vms", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/csv"));
    assert!(r
        .header("content-disposition")
        .unwrap_or("")
        .contains("lifeboat-vms.csv"));
    let csv = r.text();
    assert!(csv.starts_with("name,uuid,host,power_state,"), "{csv}");
    assert!(csv.contains(shown.uuid()) && csv.contains(hidden.uuid()));

    // Hosts, jobs and the audit trail export too.
    for table in ["hosts", "jobs", "audit"] {
        let file = download(
            &api,
            &format!("/api/v1/exports/{table}?format=xlsx"),
            dir.path(),
            &format!("{table}.xlsx"),
        );
        let sheet = python(&file, DESCRIBE);
        assert_eq!(sheet["title"], table, "{sheet}");
        assert!(
            !sheet["rows"].as_array().unwrap().is_empty() || table == "jobs",
            "{sheet}"
        );
    }

    // A VM's metric history: one row per minute, times as dates.
    poll_until("the VM's first figures", Duration::from_secs(60), || {
        let (_, c) = api.try_get(&format!("/api/v1/vms/{}/metrics/current", shown.uuid()))?;
        c["values"]["cpu"].as_f64().map(|_| ()).ok_or(c.to_string())
    });
    let file = download(
        &api,
        &format!(
            "/api/v1/exports/vm-metrics?id={}&timeframe=hour&format=xlsx",
            shown.uuid()
        ),
        dir.path(),
        "history.xlsx",
    );
    let sheet = python(&file, DESCRIBE);
    assert_eq!(sheet["header"][0], "time");
    assert_eq!(sheet["header"][1], "cpu");
    assert_eq!(sheet["header"][2], "cpu_max");
    assert_eq!(sheet["rows"].as_array().unwrap().len(), 60);
    assert_eq!(sheet["types"][59][0], "datetime");
    assert_eq!(
        sheet["types"][59][1], "float",
        "the current minute has a figure: {sheet}"
    );

    // A set: the history of every VM on the host, named per row.
    let host_id = api.wait_host_status("export-host", "online", READY_TIMEOUT)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file = download(
        &api,
        &format!("/api/v1/exports/vm-metrics?host={host_id}&timeframe=hour&format=xlsx"),
        dir.path(),
        "set.xlsx",
    );
    let sheet = python(&file, DESCRIBE);
    assert_eq!(
        sheet["header"].as_array().unwrap()[..4],
        ["name", "id", "time", "cpu"]
    );
    let set_rows = sheet["rows"].as_array().unwrap();
    assert_eq!(set_rows.len(), 120, "two VMs, an hour of minutes each");
    for vm in [&shown, &hidden] {
        let of_vm = set_rows.iter().filter(|r| r[1] == vm.uuid()).count();
        assert_eq!(of_vm, 60, "{}", vm.name());
    }

    // Every backup, as Excel with typed cells.
    api.full_backup(shown.uuid());
    api.full_backup(hidden.uuid());
    let file = download(
        &api,
        "/api/v1/exports/backups?format=xlsx",
        dir.path(),
        "backups.xlsx",
    );
    let sheet = python(&file, DESCRIBE);
    assert_eq!(sheet["title"], "backups");
    let header: Vec<&str> = sheet["header"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    assert_eq!(sheet["rows"].as_array().unwrap().len(), 2, "{sheet}");
    let r = sheet["rows"]
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r[col("vm_uuid")] == shown.uuid())
        .unwrap();
    assert_eq!(sheet["rows"][r][col("mode")], "full");
    assert_eq!(sheet["rows"][r][col("datastore")], "local");
    assert_eq!(sheet["types"][r][col("started")], "datetime", "{sheet}");
    assert_eq!(sheet["types"][r][col("size_bytes")], "int", "{sheet}");

    // Bad requests.
    for (path, status) in [
        ("/api/v1/exports/passwords", 404),
        ("/api/v1/exports/vms?format=pdf", 400),
        (
            "/api/v1/exports/vm-metrics?id=00000000-0000-4000-8000-000000000000",
            404,
        ),
        ("/api/v1/exports/vms?timeframe=forever", 400),
    ] {
        assert_eq!(api.get(path).0, status, "{path}");
    }

    // A scoped user: the hidden VM is in no export, not even its history.
    let (status, body) = api.put(
        &format!("/api/v1/vms/{}/categories", hidden.uuid()),
        &json!({"team": "secret"}),
    );
    assert_eq!(status, 200, "{body}");
    for (path, body) in [
        (
            "/api/v1/policies",
            json!({"name": "no-secrets", "rules": [
                {"effect": "allow", "key": "*", "value": "*"},
                {"effect": "deny", "key": "team", "value": "secret"}]}),
        ),
        (
            "/api/v1/users",
            json!({"name": "reporter", "password": PASSWORD, "role": "auditor", "policies": ["no-secrets"]}),
        ),
        (
            "/api/v1/roles",
            json!({"name": "looker", "description": "views only", "privileges": ["view"]}),
        ),
        (
            "/api/v1/users",
            json!({"name": "looker", "password": PASSWORD, "role": "looker"}),
        ),
    ] {
        let (status, answer) = api.post(path, &body);
        assert_eq!(status, 201, "{path}: {answer}");
    }
    let reporter = controller.api_as("reporter", PASSWORD);
    let csv = reporter
        .raw_request("GET", "/api/v1/exports/vms", &[], b"")
        .text();
    assert!(csv.contains(shown.uuid()), "{csv}");
    assert!(
        !csv.contains(hidden.uuid()) && !csv.contains(hidden.name()),
        "{csv}"
    );
    let file = download(
        &reporter,
        "/api/v1/exports/vms?format=xlsx",
        dir.path(),
        "scoped.xlsx",
    );
    let sheet = python(&file, DESCRIBE);
    assert_eq!(sheet["rows"].as_array().unwrap().len(), 1, "{sheet}");
    let history = format!("/api/v1/exports/vm-metrics?id={}", hidden.uuid());
    assert_eq!(reporter.get(&history).0, 404);
    for set in [
        "/api/v1/exports/vm-metrics?timeframe=hour".to_string(),
        format!("/api/v1/exports/vm-metrics?host={host_id}&timeframe=hour"),
        "/api/v1/exports/backups".to_string(),
    ] {
        let csv = reporter.raw_request("GET", &set, &[], b"").text();
        assert!(csv.contains(shown.uuid()), "{set}: {csv}");
        assert!(
            !csv.contains(hidden.uuid()) && !csv.contains(hidden.name()),
            "{set}: {csv}"
        );
    }

    // An Excel web query: a token of the reporter's, made for reports
    // only, in the .iqy's URL; fetched with no header at all, an HTML
    // table Python's html.parser reads, within the reporter's scope.
    let (status, made) = reporter.post(
        "/api/v1/tokens",
        &json!({"name": "excel", "expires_in_days": 30, "privileges": ["view", "view-reports"]}),
    );
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_string();
    let iqy = api.anonymous().raw_request(
        "GET",
        &format!("/api/v1/exports/vms?format=iqy&access_token={token}"),
        &[],
        b"",
    );
    assert_eq!(iqy.status, 200, "{}", iqy.text());
    let iqy = iqy.text();
    let mut lines = iqy.lines();
    assert_eq!(
        (lines.next(), lines.next()),
        (Some("WEB"), Some("1")),
        "{iqy}"
    );
    let url = lines.next().unwrap().to_string();
    assert!(
        url.starts_with("https://") && url.contains("format=html"),
        "{url}"
    );
    let path = &url[url.find("/api/").unwrap()..];
    let page = api.anonymous().raw_request("GET", path, &[], b"");
    assert_eq!(page.status, 200);
    let html_file = dir.path().join("web-query.html");
    std::fs::write(&html_file, &page.body).unwrap();
    let table = python(&html_file, PARSE_TABLE);
    let table = table.as_array().unwrap();
    assert_eq!(table[0][0], "name", "{table:?}");
    assert_eq!(
        table.len(),
        2,
        "a header and the one VM the reporter sees: {table:?}"
    );
    assert_eq!(table[1][1], shown.uuid());
    // The same for Power Query, as JSON.
    let json_path = format!("/api/v1/exports/vms?format=json&access_token={token}");
    let (status, rows) = api.anonymous().get(&json_path);
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows[0]["uuid"], shown.uuid(), "{rows}");
    assert_eq!(rows[0]["memory_bytes"], (64u64 << 20) as f64);
    // A token in the URL opens exports only, and only an API token.
    let elsewhere = format!("/api/v1/vms?access_token={token}");
    assert_eq!(api.anonymous().get(&elsewhere).0, 401);
    let (_, session) = api.anonymous().post(
        "/api/v1/session",
        &json!({"username": "reporter", "password": PASSWORD}),
    );
    let session_token = session["token"].as_str().unwrap();
    let with_session = format!("/api/v1/exports/vms?access_token={session_token}");
    assert_eq!(
        api.anonymous().get(&with_session).0,
        401,
        "never a session token"
    );
    assert_eq!(
        api.anonymous()
            .get("/api/v1/exports/vms?access_token=nope")
            .0,
        401
    );

    // Charge-back, grouped by a category, priced, within the scope.
    let path = "/api/v1/exports/chargeback?period=day&group=team&rate_vcpu_hour=2&format=json";
    poll_until(
        "a finished minute of the shown VM",
        Duration::from_secs(120),
        || {
            let (_, rows) = api.try_get(path)?;
            // The newest day: the VM has run only today.
            let row = rows
                .as_array()
                .and_then(|r| r.iter().rfind(|r| r["uuid"] == shown.uuid()).cloned())
                .ok_or(rows.to_string())?;
            if row["vcpu_hours"].as_f64().unwrap_or(0.0) > 0.0 {
                Ok(())
            } else {
                Err(row.to_string())
            }
        },
    );
    let (status, rows) = api.get(path);
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().unwrap();
    let hidden_row = rows
        .iter()
        .find(|r| r["uuid"] == hidden.uuid())
        .expect("admin sees it");
    assert_eq!(
        hidden_row["team"], "secret",
        "grouped by the category: {hidden_row}"
    );
    let row = rows.iter().rfind(|r| r["uuid"] == shown.uuid()).unwrap();
    let (hours, vcpu_hours) = (
        row["running_hours"].as_f64().unwrap(),
        row["vcpu_hours"].as_f64().unwrap(),
    );
    assert!((vcpu_hours - hours * 1.0).abs() < 1e-9, "one vCPU: {row}");
    assert!(
        (row["cost"].as_f64().unwrap() - 2.0 * vcpu_hours).abs() < 1e-9,
        "{row}"
    );
    assert!(
        (row["memory_gib_hours"].as_f64().unwrap() - hours / 16.0).abs() < 1e-9,
        "64 MiB: {row}"
    );
    let (_, scoped) = reporter.get("/api/v1/exports/chargeback?format=json&period=day");
    assert!(!scoped.to_string().contains(hidden.uuid()), "{scoped}");
    let focus = api
        .raw_request(
            "GET",
            "/api/v1/exports/chargeback?focus=1&rate_vcpu_hour=2",
            &[],
            b"",
        )
        .text();
    assert!(
        focus.starts_with("ChargePeriodStart,ChargePeriodEnd,ChargeCategory,"),
        "{focus}"
    );
    assert_eq!(
        focus.lines().count(),
        1 + 2 * 5,
        "five measures per VM: {focus}"
    );
    for bad in [
        "from=yesterday",
        "period=week",
        "rate_vcpu_hour=-1",
        "from=2999-01-01",
    ] {
        let (status, body) = api.get(&format!("/api/v1/exports/chargeback?{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // No view-reports, no export (and the refusal is in the audit trail).
    let looker = controller.api_as("looker", PASSWORD);
    assert_eq!(looker.get("/api/v1/exports/vms").0, 403);
    assert_eq!(looker.get("/api/v1/vms").0, 200, "it may still list VMs");
    let (_, trail) = api.get("/api/v1/audit?user=looker");
    assert!(
        trail
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["object"] == "/api/v1/exports/vms"
                && r["result"] != "ok"
                && r["action"]
                    .as_str()
                    .is_some_and(|a| a.contains("/exports/")))),
        "the refused export is audited: {trail}"
    );

    // The console's download links, with the session cookie.
    let mut console = ConsoleClient::new(&controller);
    assert_eq!(console.login(controller.admin_password()).status, 303);
    let r = console.get("/exports/vms.xlsx");
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..2], b"PK");
    let r = console.get("/exports/hosts.csv");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("name,id,status,"), "{}", r.text());
    assert_eq!(console.get("/audit.csv").status, 200);
}

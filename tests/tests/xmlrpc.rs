//! XML-RPC end to end: Python's own `xmlrpc.client` (tests/peers/
//! xmlrpc_client.py) calls every method of `/RPC2` on a controller with a
//! real libvirt host, with good and bad credentials (Basic, a token, none,
//! a session cookie) and good and bad arguments, and sends bodies no
//! library would (declared and external entities, deep nesting, a huge
//! call, plain text); what it got is checked here against the REST API:
//! the same records, the same refusals, a scoped user seeing no hidden VM.

use std::process::Command;

use lifeboat_e2e::*;

const PASSWORD: &str = "xmlrpc-user-pass-1";

fn ok<'a>(out: &'a Value, call: &str) -> &'a Value {
    let got = &out[call];
    assert!(got.get("ok").is_some(), "{call}: {got}");
    &got["ok"]
}

fn fault(out: &Value, call: &str) -> (i64, String) {
    let got = &out[call];
    (
        got["fault"]
            .as_i64()
            .unwrap_or_else(|| panic!("{call} is no fault: {got}")),
        got["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// A REST answer as XML-RPC carries it: no null members.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn pick(v: &Value, keys: &[&str]) -> Value {
    Value::Object(
        keys.iter()
            .map(|k| (k.to_string(), v[*k].clone()))
            .collect(),
    )
}

#[test]
fn python_drives_every_method_with_good_and_bad_credentials_and_arguments() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("xmlrpc");
    let hidden = libvirt.define_tiny_vm("xmlrpc-hidden");
    let controller = Controller::start();
    let api = controller.api();
    let _agent = Agent::start(&controller, "xmlrpc-host", Some(libvirt.uri()));
    let host = api.wait_host_status("xmlrpc-host", "online", READY_TIMEOUT);
    let host_id = host["id"].as_str().unwrap().to_string();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    api.wait_vm(hidden.name(), READY_TIMEOUT);

    api.user_without_vm(hidden.uuid(), "rpc-viewer", PASSWORD, "viewer");
    let (status, made) = api.post(
        "/api/v1/tokens",
        &json!({"name": "rpc", "expires_in_days": 1, "privileges": ["view"]}),
    );
    assert_eq!(status, 201, "{made}");
    let console = ConsoleClient::admin(&controller);

    let restore_name = format!("{}-rpc-copy", vm.name());
    let dir = vm.disk().parent().expect("image dir").to_path_buf();
    let _restored = RestoredVm {
        libvirt: &libvirt,
        name: restore_name.clone(),
        files: vec![dir.join(format!("{restore_name}-vda.qcow2"))],
    };
    let scratch = ScratchDir::new("xmlrpc");
    let config = scratch.path().join("config.json");
    std::fs::write(
        &config,
        json!({
            "url": controller.url(), "ca": controller.ca_pem().display().to_string(),
            "user": ADMIN_USER, "password": controller.admin_password(),
            "token": made["token"], "cookie": console.cookie_header(),
            "scoped_user": "rpc-viewer", "scoped_password": PASSWORD,
            "host": host_id, "vm": vm.uuid(), "vm_name": vm.name(),
            "hidden_vm": hidden.uuid(), "restore_name": restore_name,
        })
        .to_string(),
    )
    .unwrap();
    let run = Command::new("/usr/bin/python3")
        .arg(format!(
            "{}/peers/xmlrpc_client.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(&config)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        controller.log()
    );
    let out: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    // Credentials.
    for call in ["no_credentials", "wrong_password", "bad_token"] {
        assert_eq!(fault(&out, call).0, 401, "{call}");
    }
    assert_eq!(
        ok(&out, "token_host_list").as_array().unwrap().len(),
        1,
        "a token works"
    );

    // Introspection.
    let methods: Vec<&str> = ok(&out, "listMethods")
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in [
        "system.listMethods",
        "system.methodHelp",
        "lifeboat.version",
        "host.list",
        "host.get",
        "vm.list",
        "vm.get",
        "vm.power",
        "vm.backup",
        "backup.list",
        "backup.restore",
        "backup.verify",
        "backup.bootVerify",
        "job.get",
        "job.list",
        "event.list",
        "alert.list",
        "metrics.get",
    ] {
        assert!(methods.contains(&m), "{m} in {methods:?}");
    }
    let help = ok(&out, "methodHelp").as_str().unwrap();
    assert!(
        help.starts_with("vm.power(id: string, action: string)")
            && help.contains("POST /api/v1/vms/{id}/power"),
        "{help}"
    );
    assert_eq!(
        ok(&out, "methodSignature"),
        &json!([
            ["struct", "string", "string", "string"],
            ["struct", "string", "string", "string", "string"]
        ])
    );
    assert_eq!(fault(&out, "methodHelp_unknown").0, -32602);
    assert_eq!(ok(&out, "version")["version"], env!("CARGO_PKG_VERSION"));

    // Reads are the REST records.
    let (_, rest_host) = api.get(&format!("/api/v1/hosts/{host_id}"));
    let keys = ["id", "name", "status", "hostname", "enrolled_at"];
    assert_eq!(pick(ok(&out, "host.get"), &keys), pick(&rest_host, &keys));
    assert_eq!(
        ok(&out, "host.list")[0]["id"],
        json!(host_id),
        "{}",
        out["host.list"]
    );
    let (_, rest_vm) = api.get(&format!("/api/v1/vms/{}", vm.uuid()));
    let rpc_vm = ok(&out, "vm.get");
    let rest_vm = without_nulls(&rest_vm);
    let vm_keys: Vec<&str> = rest_vm
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| !["power_state", "updated_at", "last_seen", "ha"].contains(k))
        .collect();
    assert!(vm_keys.len() >= 5, "{rest_vm}");
    assert_eq!(pick(rpc_vm, &vm_keys), pick(&rest_vm, &vm_keys));
    let named = ok(&out, "vm.list");
    assert_eq!(
        named.as_array().map(|a| a.len()),
        Some(1),
        "filtered by name: {named}"
    );
    assert_eq!(named[0]["id"], vm.uuid());
    let all = ok(&out, "vm.list_all").to_string();
    assert!(
        all.contains(vm.uuid()) && all.contains(hidden.uuid()),
        "{all}"
    );

    // Jobs ran and are the REST jobs.
    let backup = ok(&out, "vm.backup_done");
    assert_eq!(backup["state"], "succeeded", "{backup}");
    let (_, rest_job) = api.get(&format!("/api/v1/jobs/{}", backup["id"]));
    let job_keys = ["id", "kind", "state", "vm", "created_at", "finished_at"];
    assert_eq!(
        pick(ok(&out, "job.get"), &job_keys),
        pick(&rest_job, &job_keys)
    );
    assert!(ok(&out, "job.list")
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == backup["id"]));
    let (_, rest_backups) = api.get(&format!("/api/v1/vms/{}/backups", vm.uuid()));
    assert_eq!(
        ok(&out, "backup.list")[0]["id"],
        rest_backups[0]["id"],
        "{rest_backups}"
    );
    let (code, message) = fault(&out, "backup.bootVerify_no_agent");
    assert_eq!(code, 400, "{message}");
    assert!(message.contains("serial"), "{message}");
    for job in ["backup.verify_done", "backup.restore_done", "vm.power_done"] {
        assert_eq!(ok(&out, job)["state"], "succeeded", "{job}: {}", out[job]);
    }
    assert_eq!(libvirt.domstate(vm.name()), "running");
    assert!(
        libvirt.domain_names().contains(&restore_name),
        "restored as new"
    );
    assert!(ok(&out, "event.list").is_array());
    assert!(ok(&out, "alert.list").is_array());
    let (_, rest_series) = api.get(&format!(
        "/api/v1/hosts/{host_id}/metrics?metric=cpu&timeframe=hour"
    ));
    let rpc_series = ok(&out, "metrics.get_host");
    for key in ["timeframe", "step_secs"] {
        assert_eq!(rpc_series[key], rest_series[key], "{key}: {rpc_series}");
    }
    assert!(ok(&out, "metrics.get_vm").is_object());

    // Bad arguments: protocol faults, or the REST refusal with its status.
    for (call, code, says) in [
        ("unknown_method", -32601, "unknown method"),
        ("too_few", -32602, "takes 1 arguments, not 0"),
        ("too_many", -32602, "takes 0 arguments, not 1"),
        ("wrong_type", -32602, "must be a string id, not a boolean"),
        ("path_escape", -32602, "must be a string id"),
        ("no_such_vm", 404, ""),
        ("bad_action", 400, ""),
        ("bad_object", -32602, "host:ID or vm:UUID"),
        ("bad_metric", 400, "nope"),
        ("bad_option", 400, ""),
        ("base64_option", -32602, "strings, numbers"),
    ] {
        let (got, message) = fault(&out, call);
        assert_eq!(got, code, "{call}: {message}");
        assert!(message.contains(says), "{call}: {message}");
    }
    let (status, rest_refusal) = api.post(
        &format!("/api/v1/vms/{}/power", vm.uuid()),
        &json!({"action": "explode"}),
    );
    assert_eq!(status, 400);
    assert_eq!(
        fault(&out, "bad_action").1,
        rest_refusal["error"].as_str().unwrap(),
        "the same message as REST"
    );

    // The scoped viewer.
    assert_eq!(fault(&out, "scoped_vm.get_hidden").0, 404);
    assert_eq!(fault(&out, "scoped_backup.list_hidden").0, 404);
    let seen = ok(&out, "scoped_vm.list").to_string();
    assert!(seen.contains(vm.uuid()), "{seen}");
    assert!(!seen.contains(hidden.uuid()), "{seen}");
    assert_eq!(fault(&out, "scoped_vm.power").0, 403);

    // Bodies no library sends.
    for (call, says) in [
        ("raw_entities", "DOCTYPE"),
        ("raw_external_entity", "DOCTYPE"),
        ("raw_deep", "deeper"),
        ("raw_big", "larger than"),
        ("raw_not_xml", ""),
    ] {
        let got = &out[call];
        assert_eq!(
            (got["status"].as_i64(), got["fault"].as_i64()),
            (Some(200), Some(-32700)),
            "{call}: {got}"
        );
        assert!(
            got["message"].as_str().unwrap().contains(says),
            "{call}: {got}"
        );
    }
    assert_eq!(out["raw_huge"]["status"], 413, "{}", out["raw_huge"]);
    assert_eq!(out["raw_plain_text"]["fault"], -32600);
    assert_eq!(out["raw_get"]["status"], 405);
    assert_eq!(
        out["raw_cookie_only"]["fault"], 401,
        "a session cookie is no credential here"
    );
    assert_eq!(out["raw_good"]["ok"], true);

    // Refusals are counted; each is a log line.
    let metrics = api.raw_request("GET", "/api/v1/metrics", &[], b"").text();
    // Each sample follows its own family's TYPE line (the exposition
    // format's grouping).
    let mut family = String::new();
    for line in metrics.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            family = t.split(' ').next().unwrap_or_default().to_string();
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert_eq!(name, family, "{line} outside its family:\n{metrics}");
        }
    }
    let count = |code: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("lifeboat_xmlrpc_refused_total{{code=\"{code}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter for {code}: {metrics}"))
    };
    assert!(count("-32700") >= 5 && count("-32602") >= 6 && count("-32601") >= 1);
    assert!(
        controller
            .log()
            .contains("XML-RPC call refused: a DOCTYPE is refused"),
        "{}",
        controller.log()
    );
}

//! Boot verification on a real libvirt host with a real Linux guest that
//! boots from its disk: a good backup boots in its sandbox (judged by the
//! guest agent, or by a line on the serial console), with a screenshot;
//! a backup of a disk whose filesystem was overwritten passes every chunk
//! check yet fails to boot, raises an alert, and is shown as such. The
//! sandbox never stays behind, and the route is refused to those who may
//! not restore.

use std::time::Duration;

use lifeboat_e2e::*;

const JOB: Duration = Duration::from_secs(420);
const SANDBOX: &str = "lifeboat-verify-";

/// The tests take turns: each has its own agent on the machine's one
/// libvirtd, and an agent starting removes every sandbox on its host, as
/// the only agent of a host should.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a boot verification to its end; the job, and its sandbox's name.
fn boot_verify(api: &Api, backup: &str, body: Value) -> (Value, String) {
    let job = api.post_job(&format!("/api/v1/backups/{backup}/boot-verify"), &body, JOB);
    let sandbox = job["description"]
        .as_str()
        .and_then(|d| d.split(" as sandbox ").nth(1))
        .unwrap_or_else(|| panic!("no sandbox named in {job}"))
        .to_string();
    assert!(sandbox.starts_with(SANDBOX), "{sandbox}");
    (job, sandbox)
}

fn outcome(api: &Api, backup: &str) -> Value {
    let (status, b) = api.get(&format!("/api/v1/backups/{backup}"));
    assert_eq!(status, 200, "{b}");
    b["boot_verify"].clone()
}

/// Neither the sandbox's domain nor any of its files is left on the host.
fn assert_gone(libvirt: &Libvirt, sandbox: &str, disk_dir: &std::path::Path) {
    let domains = libvirt.domain_names();
    assert!(
        !domains.iter().any(|n| n == sandbox),
        "the sandbox stayed: {domains:?}"
    );
    let mut files: Vec<String> = std::fs::read_dir(disk_dir)
        .expect("the image dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.retain(|n| n.starts_with(sandbox));
    assert!(files.is_empty(), "sandbox files stayed: {files:?}");
    let log = format!("/var/log/libvirt/qemu/{sandbox}-serial.log");
    assert!(!std::path::Path::new(&log).exists(), "{log} stayed");
}

#[test]
fn a_backup_that_boots_is_verified_and_one_whose_disk_is_broken_is_not() {
    let _turn = one_at_a_time();
    let guest = LinuxGuest::ensure().disk_booting();
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_vm_with_guest_agent("bootv", &guest);
    let disk_dir = vm.disk().parent().expect("image dir").to_path_buf();
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "boot-host", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    let (status, body) = api.post(
        "/api/v1/alert-rules",
        &json!({"name": "boots", "events": ["boot-verify-failed"]}),
    );
    assert_eq!(status, 201, "{body}");

    // The guest boots from this disk as it is: back it up (stopped).
    let good = api.full_backup(vm.uuid());
    let (job, sandbox) = boot_verify(&api, &good, json!({"timeout_secs": 300}));
    assert_eq!(job["state"], "succeeded", "{job}\n{}", controller.log());
    let v = outcome(&api, &good);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["signal"]["kind"], "guest_agent", "{v}");
    assert_eq!(v["host"], "boot-host", "{v}");
    assert!(v["boot_secs"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert_eq!(v["screenshot"], true, "{v}");
    let shot = api.raw_request(
        "GET",
        &format!("/api/v1/backups/{good}/boot-screenshot"),
        &[],
        b"",
    );
    assert_eq!(shot.status, 200);
    assert_eq!(shot.header("content-type"), Some("image/png"));
    assert!(shot.body.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert_gone(&libvirt, &sandbox, &disk_dir);
    // The original was never touched: still there, still stopped.
    assert_eq!(vm.state(), "shut off");

    // The same backup judged by a line on its serial console instead.
    let (job, sandbox) = boot_verify(
        &api,
        &good,
        json!({"signal": {"kind": "serial_line", "text": DISK_BOOTED_LINE}, "timeout_secs": 300}),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(outcome(&api, &good)["signal"]["kind"], "serial_line");
    assert_gone(&libvirt, &sandbox, &disk_dir);

    // A policy boot-verifies each covered VM's new backup after its run.
    let (status, policy) = api.post(
        "/api/v1/backup-policies",
        &json!({"name": "nightly", "schedule": "daily 02:00", "vms": [vm.uuid()],
            "boot_verify": {"timeout_secs": 300}}),
    );
    assert_eq!(status, 201, "{policy}");
    let run = api.post_job(
        &format!(
            "/api/v1/backup-policies/{}/run",
            policy["id"].as_str().unwrap_or_default()
        ),
        &json!({}),
        JOB,
    );
    assert_eq!(run["state"], "succeeded", "{run}");
    let backups = api.backups(vm.uuid());
    let newest = backups.last().expect("the policy's backup");
    assert_ne!(newest["id"], good.as_str());
    assert_eq!(newest["boot_verify"]["ok"], true, "{newest}");
    let (status, body) = api.post(
        "/api/v1/backup-policies",
        &json!({"name": "bad", "schedule": "daily", "vms": [vm.uuid()],
            "boot_verify": {"timeout_secs": 99999}}),
    );
    assert_eq!(status, 400, "{body}");

    // Overwrite the filesystem's start: the image is still a valid qcow2
    // and every chunk of its backup checks out, but nothing boots from it.
    vm.write_offline(0, 0, "4M");
    let broken = api.full_backup(vm.uuid());
    let verify = api.post_job(&format!("/api/v1/backups/{broken}/verify"), &json!({}), JOB);
    assert_eq!(verify["state"], "succeeded", "chunks are fine: {verify}");
    let (job, sandbox) = boot_verify(&api, &broken, json!({"timeout_secs": 120}));
    assert_eq!(job["state"], "failed", "{job}");
    let v = outcome(&api, &broken);
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("did not boot"),
        "{v}"
    );
    assert_gone(&libvirt, &sandbox, &disk_dir);
    // The good backup's record stays as it was.
    assert_eq!(outcome(&api, &good)["ok"], true);
    // The failure is an alert.
    poll_until("a boot-verify-failed alert", READY_TIMEOUT, || {
        let (_, alerts) = api.get("/api/v1/alerts");
        let found = alerts.as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["event"] == "boot-verify-failed" && x["subject"]["id"] == vm.uuid())
        });
        if found {
            Ok(())
        } else {
            Err(alerts.to_string())
        }
    });

    // The console shows both outcomes on the VM's page.
    let mut console = ConsoleClient::admin(&controller);
    let page = console.get(&format!("/vms/{}", vm.uuid())).text();
    assert!(
        page.contains("does not boot") && page.contains("boots"),
        "{page}"
    );
    let page = console.get(&format!("/backups/{good}")).text();
    assert!(
        page.contains(&format!("/backups/{good}/boot-screen")),
        "{page}"
    );
    let shot = console.get(&format!("/backups/{good}/boot-screen"));
    assert_eq!(shot.status, 200);
    assert!(
        shot.body.starts_with(b"\x89PNG"),
        "the console serves the PNG"
    );

    // Refused: an auditor (no restore), a bad timeout, a bad signal, and
    // a VM the caller may not see is not found.
    let (status, _) = api.post(
        "/api/v1/users",
        &json!({"name": "audit", "password": "long-enough-passw0rd", "role": "auditor"}),
    );
    assert_eq!(status, 201);
    let auditor = api.with_basic("audit", "long-enough-passw0rd");
    let path = format!("/api/v1/backups/{good}/boot-verify");
    let (status, body) = auditor.post(&path, &json!({}));
    assert_eq!(status, 403, "{body}");
    let (status, body) = api.post(&path, &json!({"timeout_secs": 1}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.post(
        &path,
        &json!({"signal": {"kind": "serial_line", "text": ""}}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.post(&path, &json!({"signal": {"kind": "telepathy"}}));
    assert_eq!(status, 400, "{body}");
    api.user_without_vm(vm.uuid(), "scoped", "long-enough-passw0rd", "operator");
    let scoped = api.with_basic("scoped", "long-enough-passw0rd");
    let (status, body) = scoped.post(&path, &json!({}));
    assert_eq!(status, 404, "{body}");
    let (status, _) = scoped.get(&format!("/api/v1/backups/{good}/boot-screenshot"));
    assert_eq!(status, 404);
}

#[test]
fn a_vm_without_a_guest_agent_needs_a_serial_line() {
    let _turn = one_at_a_time();
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("noagent");
    let controller = Controller::start();
    let mut agent = Agent::start(&controller, "plain-host", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    let backup = api.full_backup(vm.uuid());
    let (status, body) = api.post(&format!("/api/v1/backups/{backup}/boot-verify"), &json!({}));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("serial"), "{body}");
    // The tiny VM's blank disk boots nothing: a serial line never comes.
    let (job, sandbox) = boot_verify(
        &api,
        &backup,
        json!({"signal": {"kind": "serial_line", "text": "login:"}, "timeout_secs": 10}),
    );
    assert_eq!(job["state"], "failed", "{job}");
    let v = outcome(&api, &backup);
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("within 10 s"),
        "{v}"
    );
    let disk_dir = vm.disk().parent().expect("image dir").to_path_buf();
    assert_gone(&libvirt, &sandbox, &disk_dir);

    // The agent dies in the middle of a check: the job fails, and the
    // agent's next start removes the sandbox it left.
    let (status, answer) = api.post(
        &format!("/api/v1/backups/{backup}/boot-verify"),
        &json!({"signal": {"kind": "serial_line", "text": "login:"}, "timeout_secs": 600}),
    );
    assert_eq!(status, 202, "{answer}");
    let (_, job) = api.get(&format!("/api/v1/jobs/{}", answer["job"]));
    let sandbox = job["description"]
        .as_str()
        .and_then(|d| d.split(" as sandbox ").nth(1))
        .expect("the sandbox's name")
        .to_string();
    poll_until("the sandbox to run", JOB, || {
        match libvirt.try_virsh(&["domstate", &sandbox]) {
            Ok(state) if state.trim() == "running" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // While it runs it is no VM of the host's.
    let (_, vms) = api.get("/api/v1/vms");
    assert!(!vms.to_string().contains(&sandbox), "{vms}");
    agent.kill_9();
    let job = api.wait_job(&answer["job"], JOB);
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(outcome(&api, &backup)["ok"], false);
    assert!(
        libvirt.domain_names().contains(&sandbox),
        "left by the killed agent"
    );
    agent.restart_without_token();
    poll_until(
        "the restarted agent to remove the sandbox",
        READY_TIMEOUT,
        || {
            let names = libvirt.domain_names();
            if names.contains(&sandbox) {
                Err(format!("{names:?}"))
            } else {
                Ok(())
            }
        },
    );
    assert_gone(&libvirt, &sandbox, &disk_dir);
}

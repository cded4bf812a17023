//! Datastores configured through the API: local directories under the
//! allowed roots, NFS and SMB shares mounted by the controller. This machine's
//! kernel cannot mount NFS or CIFS, so here the shares are proven up to the
//! mount(2) call: it fails and the datastore is kept, unreachable, with that
//! error. Real mounts of real NFS and SMB servers are proven by booting the
//! appliance (tests/tests/appliance.rs). The SMB password must appear nowhere:
//! not in an answer, the log, or any file of the data directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_e2e::*;

const PASSWORD: &str = "Sm8-pass,word=hunter2!";

fn smb(name: &str) -> Value {
    json!({"name": name, "kind": "smb", "server": "127.0.0.1", "share": "backups",
           "username": "svc-backup", "password": PASSWORD, "domain": "CORP"})
}

fn nfs(name: &str) -> Value {
    json!({"name": name, "kind": "nfs", "server": "127.0.0.1", "export": "/srv/backups",
           "options": "vers=4.2,soft,retry=0"})
}

/// Whether this kernel knows the filesystem type (then the exact error differs).
fn kernel_has(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .split_whitespace()
        .any(|t| t == fs)
}

fn listed(api: &Api, name: &str) -> Value {
    let (status, list) = api.get("/api/v1/datastores");
    assert_eq!(status, 200, "{list}");
    assert!(!list.to_string().contains(PASSWORD), "{list}");
    list.as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn assert_no_password_anywhere(controller: &Controller) {
    assert!(
        !controller.log().contains(PASSWORD),
        "the log holds the password"
    );
    for file in files_under(controller.data_dir()) {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        assert!(
            !name.starts_with(".credentials-"),
            "left behind: {}",
            file.display()
        );
        let bytes = std::fs::read(&file).unwrap_or_default();
        let found = bytes
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes());
        assert!(!found, "{} holds the password in clear", file.display());
    }
}

/// The unreachable share's error once its background mount has run.
fn wait_mount_error(api: &Api, name: &str) -> Value {
    poll_until(
        &format!("datastore {name} to finish mounting"),
        Duration::from_secs(90),
        || {
            let d = listed(api, name);
            match d["error"].as_str() {
                Some("mounting") | None => Err(format!("{d}")),
                Some(_) => Ok(d),
            }
        },
    )
}

fn assert_mount_failed(d: &Value, fs: &str) {
    assert_eq!(d["reachable"], false, "{d}");
    let error = d["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("mount failed"), "{d}");
    if !kernel_has(fs) {
        assert!(
            error.contains(&format!("unknown filesystem type '{fs}'")),
            "{d}"
        );
    }
}

#[test]
fn shares_are_kept_unreachable_with_the_mount_error_and_never_leak_the_password() {
    let mut controller = Controller::start();
    let api = controller.api();

    let (status, added) = api.post("/api/v1/datastores", &smb("winshare"));
    assert_eq!(status, 201, "{added}");
    assert!(!added.to_string().contains(PASSWORD), "{added}");
    assert_eq!(added["password"], "********");
    assert_eq!(added["kind"], "smb");
    assert_eq!(added["share"], "backups");
    assert_mount_failed(&added, "cifs");
    let (status, one) = api.get("/api/v1/datastores/winshare");
    assert_eq!(status, 200, "{one}");
    assert!(!one.to_string().contains(PASSWORD), "{one}");

    let key = controller.data_dir().join("secrets.key");
    let meta = std::fs::metadata(&key).expect("secrets.key created on first use");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);

    let (status, added) = api.post("/api/v1/datastores", &nfs("nfs1"));
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["export"], "/srv/backups");
    assert_mount_failed(&added, "nfs");

    // A backup into an unreachable share fails its job with the reason and
    // writes nothing under the empty mount point.
    let _agent = Agent::options("sim-host")
        .arg("--driver")
        .arg("sim")
        .arg("--sim-vms")
        .arg("1")
        .start(&controller);
    api.wait_host_status("sim-host", "online", Duration::from_secs(30));
    let vm = poll_until("the simulated VM", Duration::from_secs(30), || {
        let (_, vms) = api.get("/api/v1/vms");
        vms[0]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("{vms}"))
    });
    let job = api.post_job(
        &format!("/api/v1/vms/{vm}/backups"),
        &json!({"datastore": "winshare"}),
        Duration::from_secs(30),
    );
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("datastore winshare is unreachable: mount failed"),
        "{job}"
    );
    let mount_point = controller.data_dir().join("mnt/winshare");
    assert_eq!(
        std::fs::read_dir(&mount_point).map(|d| d.count()).ok(),
        Some(0)
    );

    assert_no_password_anywhere(&controller);

    // Configured datastores survive a restart and are mounted again.
    controller.restart();
    let api = controller.api();
    let again = wait_mount_error(&api, "winshare");
    assert_eq!(again["password"], "********");
    assert_mount_failed(&again, "cifs");
    assert_mount_failed(&wait_mount_error(&api, "nfs1"), "nfs");
    assert_no_password_anywhere(&controller);

    // An unreachable share can be removed; its empty mount point goes too.
    let (status, body) = api.delete("/api/v1/datastores/winshare");
    assert_eq!(status, 200, "{body}");
    assert!(listed(&api, "winshare").is_null());
    assert!(!mount_point.exists());
    controller.restart();
    assert!(listed(&controller.api(), "winshare").is_null());
    assert!(!listed(&controller.api(), "nfs1").is_null());
}

#[test]
fn local_datastores_stay_under_the_roots_and_bad_requests_are_refused() {
    let scratch = ScratchDir::new("datastore-roots");
    let data = scratch.path().join("data");
    let extra = scratch.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    let controller = Controller::options()
        .data_dir(&data)
        .arg("--datastore-root")
        .arg(&data.join("datastores").to_string_lossy())
        .arg("--datastore-root")
        .arg(&extra.to_string_lossy())
        .start();
    let api = controller.api();
    let local = |name: &str, path: &Path| json!({"name": name, "kind": "local", "path": path});
    std::os::unix::fs::symlink("/etc", data.join("datastores/evil")).unwrap();

    let refusals = [
        (
            local("etc", Path::new("/etc")),
            400,
            "not under an allowed datastore root",
        ),
        (
            local("up", &data.join("datastores/../../etc")),
            400,
            "not under an allowed datastore root",
        ),
        (
            local("link", &data.join("datastores/evil/lifeboat")),
            400,
            "resolves to /etc/lifeboat",
        ),
        (
            local("rel", Path::new("datastores/x")),
            400,
            "must be absolute",
        ),
        (
            local("srv", Path::new("/srv/lifeboat/x")),
            400,
            "not under an allowed datastore root",
        ),
        (
            json!({"name": "s3", "kind": "s3", "bucket": "b"}),
            400,
            "unknown field",
        ),
        (
            json!({"name": "s3", "kind": "s3"}),
            400,
            "unknown datastore kind \"s3\"",
        ),
        (
            json!({"name": "bad name", "kind": "local", "path": extra}),
            400,
            "datastore name",
        ),
        (
            json!({"name": "x", "kind": "nfs", "server": "a,credentials=/etc/shadow", "export": "/e"}),
            400,
            "server must be a host name",
        ),
        (
            json!({"name": "x", "kind": "smb", "server": "a,credentials=/etc/shadow", "share": "s", "username": "u"}),
            400,
            "server must be a host name",
        ),
        (
            json!({"name": "x", "kind": "smb", "server": "nas", "share": "s", "username": "u,uid=0"}),
            400,
            "username must be a user name; ',' is not allowed",
        ),
        (
            json!({"name": "x", "kind": "nfs", "server": "nas", "export": "/e", "options": "credentials=/etc/shadow"}),
            400,
            "\"credentials\" is not allowed",
        ),
        (
            json!({"name": "x", "kind": "nfs", "server": "nas", "export": "e"}),
            400,
            "export must be an absolute path",
        ),
        (
            json!({"name": "x", "kind": "nfs", "server": "nas", "share": "s", "export": "/e"}),
            400,
            "share: does not apply to kind nfs",
        ),
        (
            json!({"name": "x", "kind": "nfs", "server": "nas"}),
            400,
            "export: kind nfs needs it",
        ),
        (local("local", &extra.join("l")), 409, "already exists"),
    ];
    for (body, status, why) in refusals {
        let (got, answer) = api.post("/api/v1/datastores", &body);
        assert_eq!(got, status, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{body}: {answer}");
    }
    assert_eq!(
        api.get("/api/v1/datastores").1.as_array().map(Vec::len),
        Some(1)
    );
    assert!(!Path::new("/etc/lifeboat/.chunks").exists());

    let (status, disk) = api.post(
        "/api/v1/datastores",
        &local("disk2", &data.join("datastores/disk2")),
    );
    assert_eq!(status, 201, "{disk}");
    assert_eq!(disk["reachable"], true, "{disk}");
    assert_eq!(disk["kind"], "local");
    assert!(disk["total_bytes"].as_u64().unwrap_or(0) > 0, "{disk}");
    assert!(disk["free_bytes"].as_u64().is_some(), "{disk}");
    assert!(data.join("datastores/disk2/.chunks").is_dir());
    let (status, other) = api.post("/api/v1/datastores", &local("usb", &extra.join("usb")));
    assert_eq!(status, 201, "{other}");
    let (status, answer) = api.post("/api/v1/datastores", &local("disk2", &extra.join("b")));
    assert_eq!(
        (status, answer["error"].clone()),
        (409, json!("a datastore named \"disk2\" already exists"))
    );
    let (status, answer) = api.post(
        "/api/v1/datastores",
        &local("inner", &data.join("datastores/disk2/inner")),
    );
    assert_eq!(status, 409, "{answer}");

    // In use by a policy, built in, unknown: refused.
    let (status, policy) = api.post(
        "/api/v1/backup-policies",
        &json!({"name": "p", "schedule": "daily 02:00", "datastore": "disk2", "name_pattern": "*"}),
    );
    assert_eq!(status, 201, "{policy}");
    let (status, answer) = api.delete("/api/v1/datastores/disk2");
    assert_eq!(status, 409, "{answer}");
    let (status, _) = api.delete(&format!(
        "/api/v1/backup-policies/{}",
        policy["id"].as_str().unwrap()
    ));
    assert_eq!(status, 200);
    assert_eq!(api.delete("/api/v1/datastores/local").0, 409);
    assert_eq!(api.delete("/api/v1/datastores/nosuch").0, 404);
    let (status, answer) = api.post("/api/v1/datastores/disk2/mount", &json!({}));
    assert_eq!(status, 409, "{answer}");

    let (status, body) = api.delete("/api/v1/datastores/disk2");
    assert_eq!(status, 200, "{body}");
    assert!(listed(&api, "disk2").is_null());
    assert!(
        data.join("datastores/disk2/.chunks").is_dir(),
        "its files stay"
    );
    let mut controller = controller;
    controller.restart();
    let api = controller.api();
    assert!(listed(&api, "disk2").is_null());
    assert_eq!(listed(&api, "usb")["reachable"], true);
}

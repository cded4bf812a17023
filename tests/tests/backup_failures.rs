//! Backups under failure: the agent or the controller killed mid-backup, and
//! a full datastore. Each leaves no half backup visible, loses no earlier
//! backup, and the next run succeeds.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lifeboat_e2e::*;

const JOB: Duration = Duration::from_secs(180);

fn start_backup(api: &Api, vm: &TinyVm) -> Value {
    let (status, answer) = api.post(
        &format!("/api/v1/vms/{}/backups", vm.uuid()),
        &json!({"mode": "full"}),
    );
    assert_eq!(status, 202, "{answer}");
    answer["job"].clone()
}

fn wait_export(vm: &TinyVm) {
    let socket = format!("/run/lifeboat-agent/backup-{}/backup.sock", vm.uuid());
    poll_until("the backup's NBD export", Duration::from_secs(60), || {
        if Path::new(&socket).exists() {
            Ok(())
        } else {
            Err("not yet")
        }
    });
}

fn backup_dirs(data_dir: &Path, vm: &TinyVm) -> usize {
    let dir = data_dir.join("datastores/local/vm").join(vm.uuid());
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Temp files of staged chunks left in the chunk store.
fn staged_leftovers(data_dir: &Path) -> usize {
    let chunks = data_dir.join("datastores/local/.chunks");
    std::fs::read_dir(chunks)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|prefix| {
            std::fs::read_dir(prefix.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|f| f.file_name().to_string_lossy().contains(".tmp-"))
        .count()
}

fn slow_agent(controller: &Controller, name: &str, libvirt: &Libvirt) -> Agent {
    Agent::options(name)
        .libvirt_uri(libvirt.uri())
        .arg("--backup-read-limit-mib")
        .arg("8")
        .start(controller)
}

#[test]
fn agent_killed_mid_backup_then_a_clean_retry() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("agentkill");
    let controller = Controller::start();
    let mut agent = slow_agent(&controller, "kvm-agentkill", &libvirt);
    let api = controller.api();
    api.wait_host_with_vm("kvm-agentkill", vm.name());
    vm.start();
    vm.write_pattern(0x11, 0, "64M");

    let job = start_backup(&api, &vm);
    wait_export(&vm);
    agent.kill_9();
    let job = api.wait_job(&job, JOB);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        api.backups(vm.uuid()).is_empty(),
        "a half backup is visible"
    );
    assert_eq!(
        backup_dirs(controller.data_dir(), &vm),
        0,
        "a half backup directory remains"
    );
    poll_until(
        "staged chunks to be cleaned up",
        Duration::from_secs(30),
        || match staged_leftovers(controller.data_dir()) {
            0 => Ok(()),
            n => Err(format!("{n} temp files")),
        },
    );

    agent.restart_without_token();
    api.wait_host_status("kvm-agentkill", "online", READY_TIMEOUT);
    let job = api.wait_job(&start_backup(&api, &vm), JOB);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", agent.log());
    assert!(
        agent.log().contains("interrupted by an agent restart"),
        "{}",
        agent.log()
    );
    assert_eq!(api.backups(vm.uuid()).len(), 1);
}

#[test]
fn controller_killed_mid_backup_then_a_clean_retry() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("ctlkill");
    let mut controller = Controller::start();
    let agent = slow_agent(&controller, "kvm-ctlkill", &libvirt);
    let api = controller.api();
    api.wait_host_with_vm("kvm-ctlkill", vm.name());
    vm.start();
    vm.write_pattern(0x22, 0, "64M");

    let job = start_backup(&api, &vm);
    wait_export(&vm);
    controller.kill_9();
    controller.restart();
    let api = controller.api();
    let (_, j) = api.get(&format!("/api/v1/jobs/{job}"));
    assert_eq!(j["state"], "failed", "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{j}"
    );
    assert!(api.backups(vm.uuid()).is_empty());
    assert_eq!(backup_dirs(controller.data_dir(), &vm), 0);

    api.wait_host_status("kvm-ctlkill", "online", Duration::from_secs(40));
    // The agent ends its broken run on its own; retry until libvirt is free.
    let job = poll_until(
        "a retried backup to succeed",
        Duration::from_secs(120),
        || {
            let job = api.wait_job(&start_backup(&api, &vm), JOB);
            if job["state"] == "succeeded" {
                Ok(job)
            } else {
                Err(format!("{job}"))
            }
        },
    );
    assert_eq!(job["state"], "succeeded", "{}", agent.log());
    assert_eq!(api.backups(vm.uuid()).len(), 1);
}

/// A small tmpfs for the controller's data directory; unmounted on drop.
struct SmallDisk(ScratchDir);

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = ScratchDir::new("small-disk");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_datastore_fails_the_job_and_keeps_earlier_backups() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("full");
    let disk = SmallDisk::mount("24m");
    let controller = Controller::options()
        .data_dir(disk.0.path().join("data"))
        .start();
    let _agent = Agent::start(&controller, "kvm-full", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("kvm-full", vm.name());

    // A first backup of the empty disk fits.
    let job = api.wait_job(&start_backup(&api, &vm), JOB);
    assert_eq!(job["state"], "succeeded", "{job}");

    // Then 64 MiB of random data cannot fit in 24 MiB.
    let scratch = ScratchDir::new("random-disk");
    let raw = scratch.path().join("random.raw");
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=64", "status=none"])
        .arg(format!("of={}", raw.display()))
        .status()
        .expect("dd");
    assert!(status.success());
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(vm.disk())
        .status()
        .expect("qemu-img convert");
    assert!(status.success());
    let _ = std::fs::remove_file(&raw);

    let job = api.wait_job(&start_backup(&api, &vm), JOB);
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left"), "unclear error: {error}");
    let list = api.backups(vm.uuid());
    assert_eq!(list.len(), 1, "the earlier backup must survive: {list:?}");
    assert_eq!(
        staged_leftovers(&disk.0.path().join("data")),
        0,
        "staged chunks left behind"
    );
    let (status, _) = api.get(&format!(
        "/api/v1/backups/{}",
        list[0]["id"].as_str().unwrap_or_default()
    ));
    assert_eq!(status, 200);
    drop(controller);
}

//! Instant restore on a real libvirt host with a real Linux guest that
//! boots from its disk: the restored VM's guest agent answers while its
//! disk is still being copied from the backup, a file the guest writes
//! during the copy is kept, and afterwards the VM runs on its own disk
//! with the controller (and so the datastore) gone. An agent that dies
//! mid-copy leaves the VM's image with every write the guest made, which
//! an ordinary restore of the same backup completes. The route's new
//! options are refused where they make no sense or the caller may not.

use std::time::{Duration, Instant};

use base64::Engine;
use lifeboat_e2e::*;

const JOB: Duration = Duration::from_secs(420);
const BOOT: Duration = Duration::from_secs(180);

/// Runs `script` in the guest through its agent and returns what it
/// printed; panics if it fails.
fn guest_sh(libvirt: &Libvirt, vm: &str, script: &str) -> String {
    let exec = json!({"execute": "guest-exec", "arguments": {
        "path": "/bin/sh", "arg": ["-c", script], "capture-output": true}});
    let answer = libvirt.virsh(&["qemu-agent-command", vm, &exec.to_string()]);
    let pid = serde_json::from_str::<Value>(&answer).expect("guest-exec answers JSON")["return"]
        ["pid"]
        .as_i64()
        .expect("a pid");
    let status = json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}).to_string();
    let done = poll_until(
        &format!("`{script}` in {vm}"),
        Duration::from_secs(60),
        || {
            let answer = libvirt.try_virsh(&["qemu-agent-command", vm, &status])?;
            let v: Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
            match v["return"]["exited"].as_bool() {
                Some(true) => Ok(v["return"].clone()),
                _ => Err(answer),
            }
        },
    );
    assert_eq!(done["exitcode"], 0, "`{script}` in {vm}: {done}");
    let out = done["out-data"].as_str().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(out)
        .expect("base64 output");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Starts an instant restore of `backup` as the new VM `name`, copying at
/// 1 MiB/s so the copy outlasts the guest's boot; the job id.
fn start_instant(api: &Api, backup: &str, name: &str) -> Value {
    let (status, answer) = api.post(
        &format!("/api/v1/backups/{backup}/restore"),
        &json!({"as_new": {"name": name}, "instant": true, "bandwidth_mib": 1}),
    );
    assert_eq!(status, 202, "{answer}");
    answer["job"].clone()
}

fn job(api: &Api, id: &Value) -> Value {
    let (status, job) = api.get(&format!("/api/v1/jobs/{id}"));
    assert_eq!(status, 200, "{job}");
    job
}

fn backing_of(image: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(image)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).expect("qemu-img JSON");
    assert_eq!(info["format"], "qcow2", "{info}");
    info["backing-filename"].as_str().map(str::to_string)
}

#[test]
fn a_vm_runs_from_its_backup_at_once_and_ends_on_its_own_disk() {
    let guest = LinuxGuest::ensure().disk_booting();
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_vm_with_guest_agent("inst", &guest);
    let dir = vm.disk().parent().expect("image dir").to_path_buf();
    let controller = Controller::start();
    let agent = Agent::start(&controller, "instant-host", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    let backup = api.full_backup(vm.uuid());

    // Refused before anything is written: replacing, a bandwidth without
    // an instant restore, and a caller who may not restore.
    let path = format!("/api/v1/backups/{backup}/restore");
    for bad in [
        json!({"instant": true, "replace": true}),
        json!({"bandwidth_mib": 5}),
        json!({"instant": "yes"}),
    ] {
        let (status, body) = api.post(&path, &bad);
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = api.post(
        "/api/v1/users",
        &json!({"name": "audit", "password": "long-enough-passw0rd", "role": "auditor"}),
    );
    assert_eq!(status, 201);
    let auditor = api.with_basic("audit", "long-enough-passw0rd");
    let (status, body) = auditor.post(
        &path,
        &json!({"as_new": {"name": "sneaky"}, "instant": true}),
    );
    assert_eq!(status, 403, "{body}");
    assert!(!libvirt.domain_names().iter().any(|n| n == "sneaky"));

    let new = format!("{}-now", vm.name());
    let image = dir.join(format!("{new}-vda.qcow2"));
    let _cleanup = RestoredVm {
        libvirt: &libvirt,
        name: new.clone(),
        files: vec![image.clone(), dir.join(format!("{new}-cidata.iso"))],
    };
    let asked = Instant::now();
    let id = start_instant(&api, &backup, &new);
    libvirt.wait_guest_agent(&new, BOOT);
    let answered = asked.elapsed();
    let during = job(&api, &id);
    assert_eq!(during["state"], "running", "the copy is not done: {during}");
    assert!(
        during["description"]
            .as_str()
            .unwrap_or_default()
            .starts_with("instant restore"),
        "{during}"
    );
    assert!(
        during["progress"]["percent"].as_f64().unwrap_or(100.0) < 100.0,
        "{during}"
    );
    assert!(backing_of(&image).is_some_and(|b| b.starts_with("nbd+unix://")));
    // The guest reads its backup's files and writes its own while it runs.
    assert!(guest_sh(&libvirt, &new, "head -c 14 /sbin/init").starts_with("#!/bin/busybox"));
    guest_sh(&libvirt, &new, "echo written-during-copy > /kept && sync");
    let progressing = poll_until("the copy's progress to move", JOB, || {
        let j = job(&api, &id);
        match j["progress"]["bytes_done"].as_u64() {
            Some(done) if done > 0 && j["progress"]["rate_bytes_per_sec"].is_number() => Ok(j),
            _ => Err(j.to_string()),
        }
    });
    assert_eq!(progressing["state"], "running", "{progressing}");

    let done = api.wait_job(&id, JOB);
    assert_eq!(done["state"], "succeeded", "{done}\n{}", controller.log());
    assert_eq!(done["progress"]["percent"], 100, "{done}");
    println!(
        "guest agent answered {:.1} s after the call; the copy took {:.1} s",
        answered.as_secs_f64(),
        asked.elapsed().as_secs_f64()
    );
    assert_eq!(backing_of(&image), None, "the image stands alone");
    for xml in [
        libvirt.virsh(&["dumpxml", &new]),
        libvirt.virsh(&["dumpxml", "--inactive", &new]),
    ] {
        assert!(!xml.contains("nbd") && xml.contains("qcow2"), "{xml}");
    }

    // The original was never touched. Gone, it comes back exactly (same
    // name, UUID and path) the same instant way, copied at full speed.
    assert_eq!(vm.state(), "shut off");
    libvirt.virsh(&["undefine", vm.name()]);
    std::fs::remove_file(vm.disk()).expect("remove the original's disk");
    let exact = api.post_job(&path, &json!({"instant": true}), JOB);
    assert_eq!(exact["state"], "succeeded", "{exact}");
    assert!(
        exact["description"]
            .as_str()
            .unwrap_or_default()
            .starts_with("instant restore"),
        "{exact}"
    );
    assert_eq!(libvirt.domstate(vm.name()), "running");
    assert_eq!(libvirt.virsh(&["domuuid", vm.name()]).trim(), vm.uuid());
    assert_eq!(backing_of(vm.disk()), None);
    libvirt.wait_guest_agent(vm.name(), BOOT);

    // The datastore gone with the controller, and the agent gone: the VM
    // starts again from its own disk, with what the guest wrote.
    drop(agent);
    drop(controller);
    libvirt.virsh(&["destroy", &new]);
    libvirt.virsh(&["start", &new]);
    libvirt.wait_guest_agent(&new, BOOT);
    assert_eq!(
        guest_sh(&libvirt, &new, "cat /kept"),
        "written-during-copy\n"
    );
}

#[test]
fn an_agent_that_dies_mid_copy_leaves_every_guest_write_on_the_host() {
    let guest = LinuxGuest::ensure().disk_booting();
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_vm_with_guest_agent("instdie", &guest);
    let dir = vm.disk().parent().expect("image dir").to_path_buf();
    let controller = Controller::start();
    let mut agent = Agent::start(&controller, "instant-die", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_vm(vm.name(), READY_TIMEOUT);
    let backup = api.full_backup(vm.uuid());

    let new = format!("{}-cut", vm.name());
    let plain = format!("{}-plain", vm.name());
    let image = dir.join(format!("{new}-vda.qcow2"));
    let plain_image = dir.join(format!("{plain}-vda.qcow2"));
    let _cleanup = [
        RestoredVm {
            libvirt: &libvirt,
            name: new.clone(),
            files: vec![image.clone(), dir.join(format!("{new}-cidata.iso"))],
        },
        RestoredVm {
            libvirt: &libvirt,
            name: plain.clone(),
            files: vec![plain_image.clone(), dir.join(format!("{plain}-cidata.iso"))],
        },
    ];
    let id = start_instant(&api, &backup, &new);
    libvirt.wait_guest_agent(&new, BOOT);
    guest_sh(&libvirt, &new, "echo kept-across-the-cut > /kept && sync");
    assert_eq!(job(&api, &id)["state"], "running");

    // The agent dies: its exports go with it. The job fails and says what
    // is left; the VM and its image stay.
    agent.kill_9();
    let failed = api.wait_job(&id, JOB);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("keeps its images")),
        "{failed}"
    );
    assert!(
        libvirt.domain_names().contains(&new),
        "the VM stays defined"
    );
    // The image alone (its backing is gone with the agent) is sound.
    let alone = json!({"driver": "qcow2", "backing": null,
        "file": {"driver": "file", "filename": image}});
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-U", &format!("json:{alone}")])
        .output()
        .expect("run qemu-img");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // docs/backup.md's recovery: an ordinary restore of the same backup,
    // then the kept image rebased onto it. The guest's write is there.
    agent.restart_without_token();
    api.wait_host_status("instant-die", "online", READY_TIMEOUT);
    let restored = api.post_job(
        &format!("/api/v1/backups/{backup}/restore"),
        &json!({"as_new": {"name": plain}}),
        JOB,
    );
    assert_eq!(restored["state"], "succeeded", "{restored}");
    libvirt.virsh(&["destroy", &new]);
    let rebase = std::process::Command::new("qemu-img")
        .args(["rebase", "-u", "-F", "qcow2", "-b"])
        .arg(&plain_image)
        .arg(&image)
        .output()
        .expect("run qemu-img");
    assert!(
        rebase.status.success(),
        "{}",
        String::from_utf8_lossy(&rebase.stderr)
    );
    // Its inactive definition still names the export: drop that backing.
    let xml = libvirt.virsh(&["dumpxml", "--inactive", &new]);
    let start = xml
        .find("<backingStore type='network'")
        .expect("the NBD backing");
    let end =
        start + xml[start..].find("</backingStore>").expect("its end") + "</backingStore>".len();
    let fixed = format!("{}{}", &xml[..start], &xml[end..]);
    let file = dir.join(format!("{new}.xml"));
    std::fs::write(&file, fixed).expect("write the definition");
    libvirt.virsh(&["define", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    libvirt.virsh(&["start", &new]);
    libvirt.wait_guest_agent(&new, BOOT);
    assert_eq!(
        guest_sh(&libvirt, &new, "cat /kept"),
        "kept-across-the-cut\n"
    );
}

//! The appliance, end to end, as an operator meets it: `image/build` makes
//! the image; it boots under QEMU (KVM when it works here, TCG otherwise)
//! with a blank data disk; its text console shows the CA fingerprint and,
//! from its menu, the initial admin password; the agent is downloaded from
//! the appliance with the command its API hands out and enrolled against a
//! real libvirt VM on this machine; that VM is backed up to an NFS export
//! (nfs-ganesha) and an SMB share (smbd) that the appliance's own kernel
//! mounts, and restored from each; a share with a wrong password, and one
//! whose server is not there, say so; after a reboot from the console menu
//! and after booting a newer image on the same data disk (by UEFI, on SATA
//! and E1000), hosts, backups, datastores and users are all still there;
//! the power button shuts it down cleanly; the console menu resets a lost
//! admin password.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lifeboat_e2e::*;

const MIB: u64 = 1024 * 1024;
const BOOT: Duration = Duration::from_secs(300);
const JOB: Duration = Duration::from_secs(300);

/// The word after `label` on the console, once it shows one.
fn word_after(text: &str, label: &str) -> Option<String> {
    let at = text.rfind(label)? + label.len();
    let word = text[at..].split_whitespace().next()?;
    (!word.is_empty() && text[at..].contains('\n')).then(|| word.to_string())
}

/// Logs in as the operator would: the fingerprint from the text console,
/// the CA pinned against it, the password from the console menu.
fn operator_login(appliance: &Appliance, dir: &Path) -> (Api, String) {
    let fingerprint = appliance.ask("", "the CA fingerprint on the console", BOOT, |t| {
        word_after(t, "CA fingerprint:").filter(|w| w.starts_with("sha256:"))
    });
    let password = admin_password_from_menu(appliance);
    let ca = pinned_ca(appliance.https_port(), &fingerprint, dir);
    let api = Api::new(&appliance.https_url(), &ca)
        .expect("API client")
        .login_as(ADMIN_USER, &password);
    (api, fingerprint)
}

fn datastore(api: &Api, name: &str) -> Value {
    let (status, d) = api.get(&format!("/api/v1/datastores/{name}"));
    assert_eq!(status, 200, "{d}");
    d
}

fn wait_reachable(api: &Api, name: &str) -> Value {
    poll_until(&format!("datastore {name} mounted"), BOOT, || {
        let d = datastore(api, name);
        if d["reachable"] == true {
            Ok(d)
        } else {
            Err(d.to_string())
        }
    })
}

/// The datastore once its mount has failed.
fn mount_error(api: &Api, name: &str) -> Value {
    poll_until(&format!("datastore {name}'s mount error"), BOOT, || {
        let d = datastore(api, name);
        match d["error"].as_str() {
            Some("mounting") | None => Err(d.to_string()),
            Some(_) => Ok(d),
        }
    })
}

fn backup_to(api: &Api, vm: &str, store: &str) -> String {
    let job = api.post_job(
        &format!("/api/v1/vms/{vm}/backups"),
        &json!({"mode": "full", "datastore": store}),
        JOB,
    );
    assert_eq!(job["state"], "succeeded", "backup to {store}: {job}");
    let backups = api.backups(vm);
    backups
        .iter()
        .rev()
        .find(|b| b["datastore"] == store)
        .and_then(|b| b["id"].as_str())
        .unwrap_or_else(|| panic!("no backup in {store}: {backups:?}"))
        .to_string()
}

fn restore(api: &Api, backup: &str) {
    let job = api.post_job(
        &format!("/api/v1/backups/{backup}/restore"),
        &json!({"replace": true}),
        JOB,
    );
    assert_eq!(job["state"], "succeeded", "restore of {backup}: {job}");
}

/// What must survive a reboot and an upgrade.
fn assert_everything_kept(api: &Api, vm: &TinyVm, backups: &[&str]) {
    api.wait_host_status("appliance-host", "online", BOOT);
    for store in ["nfs", "smb"] {
        wait_reachable(api, store);
    }
    let ids: Vec<String> = api
        .backups(vm.uuid())
        .iter()
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .collect();
    for b in backups {
        assert!(ids.iter().any(|id| id == b), "backup {b} is gone: {ids:?}");
    }
    let (status, users) = api.get("/api/v1/users");
    assert_eq!(status, 200, "{users}");
    assert!(users.to_string().contains("\"auditor1\""), "{users}");
}

#[test]
fn the_appliance_boots_backs_up_to_real_shares_and_keeps_everything_across_reboot_and_upgrade() {
    let nfs = NfsServer::start();
    let smb = SmbServer::start();
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("appliance");
    let image = ApplianceImage::build("0.1.0-e2e");
    let work = ScratchDir::new("appliance-test");
    let data = Appliance::blank_disk(work.path(), "data.qcow2", "4G");
    let system = Appliance::system_disk(&image, work.path());
    let mut appliance = Appliance::boot(&system, &data, Hardware::Virtio);
    appliance.wait_console("formatting blank disk", BOOT);

    let (api, fingerprint) = operator_login(&appliance, work.path());
    let (status, user) = api.post(
        "/api/v1/users",
        &json!({"name": "auditor1", "password": "Auditor-pass-1", "role": "auditor"}),
    );
    assert_eq!(status, 201, "{user}");

    // The agent comes from the appliance, with the one command it hands out.
    let (status, issued) = api.post("/api/v1/enrollment-tokens", &json!({}));
    assert_eq!(status, 201, "{issued}");
    let command = issued["command"].as_str().unwrap_or_default();
    let token = issued["token"].as_str().unwrap_or_default();
    assert_eq!(issued["ca_fingerprint"], fingerprint.as_str());
    for part in [
        "--pinnedpubkey 'sha256//",
        "sha256sum -c",
        "/downloads/lifeboat-agent",
        token,
    ] {
        assert!(command.contains(part), "{part} missing from: {command}");
    }
    let install = command
        .split(" && /usr/local/bin/lifeboat-agent --controller ")
        .next()
        .expect("download part")
        .replace("/usr/local/bin/", &format!("{}/", work.path().display()));
    let out = Command::new("sh")
        .arg("-c")
        .arg(&install)
        .output()
        .expect("run the download command");
    assert!(
        out.status.success(),
        "{install}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_bin = work.path().join("lifeboat-agent");
    let _agent = Agent::options("appliance-host")
        .libvirt_uri(libvirt.uri())
        .binary(&agent_bin)
        .enroll(&appliance.agent_addr(), token, &fingerprint);
    let found = api.wait_host_with_vm("appliance-host", vm.name());
    assert_eq!(found["id"], vm.uuid());

    // Shares on this machine, mounted by the appliance's kernel.
    let (status, d) = api.post(
        "/api/v1/datastores",
        &json!({"name": "nfs", "kind": "nfs", "server": "10.0.2.2",
                "export": NfsServer::EXPORT, "options": format!("port={}", nfs.port())}),
    );
    assert_eq!(status, 201, "{d}");
    wait_reachable(&api, "nfs");
    let smb_share = |name: &str, password: &str| {
        json!({"name": name, "kind": "smb", "server": "10.0.2.2", "share": SmbServer::SHARE,
               "username": SmbServer::USER, "password": password,
               "options": format!("port={}", smb.port())})
    };
    let (status, d) = api.post("/api/v1/datastores", &smb_share("smb", SmbServer::PASSWORD));
    assert_eq!(status, 201, "{d}");
    wait_reachable(&api, "smb");
    let (status, bad) = api.post(
        "/api/v1/datastores",
        &smb_share("smb-bad", "not-the-password"),
    );
    assert_eq!(status, 201, "{bad}");
    let bad = mount_error(&api, "smb-bad");
    assert_eq!(bad["reachable"], false, "{bad}");
    let error = bad["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("access denied by the server: wrong user name or password"),
        "{bad}"
    );
    assert!(!bad.to_string().contains("not-the-password"), "{bad}");
    // A share whose server is not there says so too.
    let dead_port = free_port();
    let (status, d) = api.post(
        "/api/v1/datastores",
        &json!({"name": "nfs-down", "kind": "nfs", "server": "10.0.2.2",
                "export": "/x", "options": format!("port={dead_port}")}),
    );
    assert_eq!(status, 201, "{d}");
    let down = mount_error(&api, "nfs-down");
    let error = down["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the server refused the connection")
            || error.contains("the server is unreachable"),
        "{down}"
    );

    // Back up to each share, then restore from each over changed data.
    vm.write_offline(0x51, 0, "2M");
    let on_nfs = backup_to(&api, vm.uuid(), "nfs");
    vm.write_offline(0x52, 2 * MIB, "2M");
    let on_smb = backup_to(&api, vm.uuid(), "smb");
    let nfs_vm_dir = nfs.export_dir().join("vm").join(vm.uuid());
    let smb_vm_dir = smb.share_dir().join("vm").join(vm.uuid());
    assert!(nfs_vm_dir.is_dir(), "nothing written to the NFS export");
    assert!(smb_vm_dir.is_dir(), "nothing written to the SMB share");
    vm.write_offline(0x99, 0, "4M");
    restore(&api, &on_nfs);
    assert_image_pattern(vm.disk(), 0x51, 0, 2 * MIB);
    assert_image_pattern(vm.disk(), 0, 2 * MIB, 2 * MIB);
    restore(&api, &on_smb);
    assert_image_pattern(vm.disk(), 0x51, 0, 2 * MIB);
    assert_image_pattern(vm.disk(), 0x52, 2 * MIB, 2 * MIB);

    // Reboot from the console menu: everything is still there.
    let booted = appliance.console_count("Lifeboat appliance stopped.");
    appliance.ask("7", "the reboot question", BOOT, |t| {
        t.contains("Reboot now?").then_some(())
    });
    appliance.type_line("yes");
    poll_until("the appliance to restart", BOOT, || {
        if appliance.console_count("Lifeboat appliance stopped.") > booted {
            Ok(())
        } else {
            Err("not yet")
        }
    });
    let (api, again) = operator_login(&appliance, work.path());
    assert_eq!(again, fingerprint, "the CA changed across a reboot");
    assert_everything_kept(&api, &vm, &[&on_nfs, &on_smb]);

    // The power button shuts it down cleanly.
    let ports = appliance.ports();
    appliance.power_button();
    appliance.wait_powered_off(BOOT);
    assert!(appliance
        .console_text()
        .contains("Lifeboat appliance stopped."));
    drop(appliance);

    // A newer image on the same data disk, booted by UEFI firmware on SATA
    // disks and an E1000 NIC (what other hypervisors give the OVA).
    let newer = ApplianceImage::build("0.1.1-e2e");
    let system = Appliance::system_disk(&newer, work.path());
    let appliance = Appliance::boot_on_ports(&system, &data, Hardware::SataE1000Uefi, ports);
    appliance.wait_console("upgraded from 0.1.0-e2e to 0.1.1-e2e", BOOT);
    assert!(!appliance.console_text().contains("formatting blank disk"));
    let (api, after) = operator_login(&appliance, work.path());
    assert_eq!(after, fingerprint, "the CA changed across the upgrade");
    assert_everything_kept(&api, &vm, &[&on_nfs, &on_smb]);
    vm.write_offline(0x99, 0, "4M");
    restore(&api, &on_nfs);
    assert_image_pattern(vm.disk(), 0x51, 0, 2 * MIB);

    // The console menu resets a lost admin password: the old one stops
    // working, the new one is shown there.
    let old_password = admin_password_from_menu(&appliance);
    appliance.ask("4", "the reset question", BOOT, |t| {
        t.contains("Type yes").then_some(())
    });
    appliance.type_line("yes");
    let new_password = appliance.ask("", "the new admin password", BOOT, |t| {
        word_after(t, "New password for 'admin':")
    });
    assert_ne!(new_password, old_password);
    let ca = work.path().join("ca.pem");
    let anonymous = Api::new(&appliance.https_url(), &ca).expect("API client");
    let (status, _) = anonymous.anonymous().post(
        "/api/v1/session",
        &json!({"username": ADMIN_USER, "password": old_password}),
    );
    assert_eq!(status, 401);
    let api = anonymous.login_as(ADMIN_USER, &new_password);
    let (status, audit) = api.get("/api/v1/audit");
    assert_eq!(status, 200, "{audit}");
    assert!(
        audit.to_string().contains("reset admin password"),
        "{audit}"
    );
}

/// The initial admin password as the console menu shows it.
fn admin_password_from_menu(appliance: &Appliance) -> String {
    let password = appliance.ask("3", "the initial admin password", BOOT, |t| {
        word_after(t, "Initial admin password:")
    });
    appliance.type_line("");
    password
}

fn qemu_img_info(file: &Path) -> Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(file)
        .output()
        .expect("run qemu-img info");
    assert!(out.status.success(), "qemu-img info {}", file.display());
    serde_json::from_slice(&out.stdout).expect("qemu-img info JSON")
}

#[test]
fn the_ova_is_what_vmware_and_virtualbox_import() {
    let image = ApplianceImage::build("0.1.0-e2e");
    let work = ScratchDir::new("ova-check");
    let ova = image.ova();

    // A plain ustar archive, the descriptor first and the manifest second.
    let bytes = std::fs::read(&ova).expect("read the OVA");
    assert_eq!(
        &bytes[257..265],
        b"ustar\x0000",
        "not a POSIX ustar archive"
    );
    let out = Command::new("tar")
        .arg("-tf")
        .arg(&ova)
        .output()
        .expect("tar -tf");
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        names,
        [
            "lifeboat-appliance.ovf",
            "lifeboat-appliance.mf",
            "lifeboat-appliance-system.vmdk",
            "lifeboat-appliance-data.vmdk"
        ]
    );
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&ova)
        .arg("-C")
        .arg(work.path())
        .status()
        .expect("tar -xf");
    assert!(status.success());

    // Every file is in the manifest with its SHA-256, and nothing else is.
    let manifest = std::fs::read_to_string(work.path().join("lifeboat-appliance.mf")).unwrap();
    let mut listed = Vec::new();
    for line in manifest.lines() {
        let (name, digest) = line
            .strip_prefix("SHA256(")
            .and_then(|l| l.split_once(")= "))
            .unwrap_or_else(|| panic!("manifest line {line:?}"));
        assert_eq!(sha256_file(&work.path().join(name)), digest, "{name}");
        listed.push(name.to_string());
    }
    assert_eq!(
        listed,
        names[..1]
            .iter()
            .chain(&names[2..])
            .cloned()
            .collect::<Vec<_>>()
    );

    // The descriptor: OVF 1.0, its files and disks as they are, and the
    // hardware the issue asks for.
    let ovf = std::fs::read_to_string(work.path().join("lifeboat-appliance.ovf")).unwrap();
    let doc = roxmltree::Document::parse(&ovf).expect("the OVF parses");
    let ns = "http://schemas.dmtf.org/ovf/envelope/1";
    let root = doc.root_element();
    assert_eq!(
        (root.tag_name().namespace(), root.tag_name().name()),
        (Some(ns), "Envelope")
    );
    assert_eq!(root.attribute((ns, "version")), Some("1.0"));
    for file in root.descendants().filter(|n| n.has_tag_name((ns, "File"))) {
        let href = file.attribute((ns, "href")).expect("href");
        let size: u64 = file.attribute((ns, "size")).expect("size").parse().unwrap();
        let on_disk = std::fs::metadata(work.path().join(href)).expect(href).len();
        assert_eq!(size, on_disk, "{href}");
    }
    for disk in root.descendants().filter(|n| n.has_tag_name((ns, "Disk"))) {
        let file_ref = disk.attribute((ns, "fileRef")).unwrap();
        let href = root
            .descendants()
            .find(|n| n.has_tag_name((ns, "File")) && n.attribute((ns, "id")) == Some(file_ref))
            .and_then(|n| n.attribute((ns, "href")))
            .expect("the disk's file");
        let info = qemu_img_info(&work.path().join(href));
        assert_eq!(info["format"], "vmdk", "{href}");
        assert_eq!(
            info["format-specific"]["data"]["create-type"], "streamOptimized",
            "{href}"
        );
        let capacity: u64 = disk.attribute((ns, "capacity")).unwrap().parse().unwrap();
        assert_eq!(Some(capacity), info["virtual-size"].as_u64(), "{href}");
    }
    let rasd =
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
    let item = |resource_type: &str| {
        root.descendants()
            .filter(|n| n.has_tag_name((ns, "Item")))
            .find(|n| {
                n.children().any(|c| {
                    c.has_tag_name((rasd, "ResourceType")) && c.text() == Some(resource_type)
                })
            })
            .unwrap_or_else(|| panic!("no Item of ResourceType {resource_type}"))
    };
    let field = |node: roxmltree::Node, name: &str| {
        node.children()
            .find(|c| c.has_tag_name((rasd, name)))
            .and_then(|c| c.text())
            .map(str::to_string)
    };
    assert_eq!(field(item("3"), "VirtualQuantity").as_deref(), Some("2"));
    assert_eq!(field(item("4"), "VirtualQuantity").as_deref(), Some("1536"));
    assert_eq!(
        field(item("6"), "ResourceSubType").as_deref(),
        Some("lsilogic")
    );
    assert_eq!(
        field(item("10"), "ResourceSubType").as_deref(),
        Some("E1000")
    );

    // The qcow2 and vmdk are the same system disk.
    let qcow2 = qemu_img_info(&image.qcow2());
    assert_eq!(qcow2["format"], "qcow2");
    assert_eq!(
        qcow2["virtual-size"],
        qemu_img_info(&image.vmdk())["virtual-size"]
    );
}

//! A datastore and an archive are untrusted input: a manifest planted in
//! the datastore, or carried in by an imported archive, may point a disk at
//! any host file and carry `qemu:commandline`. A restore checks the
//! definition against the plan and the target host's storage before
//! anything is written: the victim file is untouched, nothing is defined,
//! the refusal is audited.

use std::path::{Path, PathBuf};
use std::process::Command;

use lifeboat_e2e::*;

const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// The backed-up definition with QEMU told to run a program of the
/// attacker's.
fn with_qemu_commandline(config: &str) -> String {
    config
        .replacen("<domain ", &format!("<domain xmlns:qemu='{QEMU_NS}' "), 1)
        .replace(
            "</domain>",
            "<qemu:commandline><qemu:arg value='-run-with'/><qemu:arg value='touch /tmp/pwned'/></qemu:commandline></domain>",
        )
}

fn backup_dir(controller: &Controller, backup_ref: &str) -> PathBuf {
    // local:<vm>@<id>
    let (vm, id) = backup_ref
        .trim_start_matches("local:")
        .split_once('@')
        .expect("a backup reference");
    controller
        .data_dir()
        .join("datastores/local/vm")
        .join(vm)
        .join(id)
}

fn restore_refused(api: &Api, backup_ref: &str, expected: &str) {
    let (status, body) = api.post(
        &format!("/api/v1/backups/{backup_ref}/restore"),
        &json!({"replace": true}),
    );
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(expected), "{error}");
}

fn run_cli(args: &[&str]) -> String {
    let out = Command::new(controller_binary())
        .args(args)
        .output()
        .expect("run lifeboat");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rewrites `manifest.json` inside an archive, with the header's size and
/// SHA-256 for it updated: the archive is then well-formed and consistent,
/// only its content is hostile (as a crafted archive would be).
fn rewrite_archive_manifest(archive: &Path, edit: &str) {
    let script = r#"
import hashlib, io, json, sys, tarfile
path, edit = sys.argv[1], json.loads(sys.argv[2])
with tarfile.open(path) as t:
    members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
header = json.loads(members[0][1])
out = []
for m, data in members[1:]:
    if m.name == "manifest.json":
        manifest = json.loads(data)
        manifest["vm"]["hypervisor_config"] = edit["config"]
        data = json.dumps(manifest).encode()
        for listed in header["members"]:
            if listed["name"] == "manifest.json":
                listed["size"] = len(data)
                listed["sha256"] = hashlib.sha256(data).hexdigest()
    out.append((m, data))
head = json.dumps(header, separators=(",", ":")).encode()
with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
    for m, data in [(members[0][0], head)] + out:
        m.size = len(data)
        t.addfile(m, io.BytesIO(data))
"#;
    let edit = json!({"config": edit}).to_string();
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(archive)
        .arg(edit)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_planted_or_imported_hostile_manifest_restores_nothing() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("hostile-manifest");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "victim-host", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("victim-host", vm.name());
    let backup_ref = api.full_backup(vm.uuid());
    let dir = backup_dir(&controller, &backup_ref);
    let manifest_path = dir.join("manifest.json");
    let genuine: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let config = genuine["vm"]["hypervisor_config"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        config.contains(&vm.disk().display().to_string()),
        "{config}"
    );

    let scratch = ScratchDir::new("victim");
    let victim = scratch.path().join("victim.conf");
    std::fs::write(&victim, "keep me\n").unwrap();
    let on_victim = config.replace(
        &vm.disk().display().to_string(),
        &victim.display().to_string(),
    );
    let commandline = with_qemu_commandline(&config);
    let other_vm = config.replacen(vm.uuid(), "00000000-0000-4000-8000-0000000000aa", 1);

    // 1. Planted straight into the datastore.
    for (hostile, expected) in [
        (&on_victim, "outside the host's VM storage"),
        (&commandline, "QEMU pass-through"),
        (&other_vm, "the definition is for"),
    ] {
        let mut planted = genuine.clone();
        planted["vm"]["hypervisor_config"] = json!(hostile);
        std::fs::write(&manifest_path, planted.to_string()).unwrap();
        restore_refused(&api, &backup_ref, expected);
    }
    std::fs::write(&manifest_path, genuine.to_string()).unwrap();

    // 2. Carried in by an archive: exported, made hostile, imported back.
    let datastore = controller.data_dir().join("datastores/local");
    let id = backup_ref.split_once('@').unwrap().1;
    let archive = scratch.path().join("hostile.lbarchive");
    run_cli(&[
        "backup",
        "export",
        "--datastore",
        datastore.to_str().unwrap(),
        "--vm",
        vm.uuid(),
        "--backup",
        id,
        "-o",
        archive.to_str().unwrap(),
    ]);
    rewrite_archive_manifest(&archive, &with_qemu_commandline(&on_victim));
    assert_eq!(api.delete(&format!("/api/v1/backups/{backup_ref}")).0, 200);
    let imported = run_cli(&[
        "backup",
        "import",
        "--datastore",
        datastore.to_str().unwrap(),
        archive.to_str().unwrap(),
    ]);
    assert!(imported.contains("imported backup"), "{imported}");
    restore_refused(&api, &backup_ref, "outside the host's VM storage");

    // Nothing happened on the host, and every refusal is in the trail.
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    assert!(!Path::new("/tmp/pwned").exists());
    assert_eq!(libvirt.domstate(vm.name()), "shut off");
    let (_, audit) = api.get("/api/v1/audit?action=restore");
    let refusals = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["result"]
                .as_str()
                .unwrap_or_default()
                .starts_with("refused")
        })
        .count();
    assert_eq!(refusals, 4, "{audit}");
}

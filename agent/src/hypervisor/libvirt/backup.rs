//! Backup exports for libvirt domains. A running (or paused) domain is backed
//! up with libvirt's backup API in pull mode: QEMU serves a point-in-time view
//! of each disk over NBD (copy-before-write into a scratch file) and records a
//! checkpoint (a dirty bitmap) so the next run can read only what changed. A
//! stopped domain's images are served read-only by `qemu-nbd`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_proto::{BackupMode, BackupRequest, PowerState};

use super::parse::{parse_domain, DiskSource};
use super::LibvirtDriver;
use crate::hypervisor::{BackupExports, ExportInfo, ExportedDisk, HypervisorError};

/// Where sockets live while a backup runs (one directory per VM).
const RUN_DIR: &str = "/run/lifeboat-agent";
/// Checkpoints this agent makes are named so; others are left alone.
const CHECKPOINT_PREFIX: &str = "lifeboat-";
const SOCKET_WAIT: Duration = Duration::from_secs(15);

/// VMs with a backup running in this agent: one at a time per VM, since
/// libvirt runs one backup job per domain.
static ACTIVE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Marks a VM as being backed up; the guard releases it.
struct ActiveGuard(String);

impl ActiveGuard {
    fn claim(uuid: &str) -> Result<ActiveGuard, HypervisorError> {
        let mut active = ACTIVE
            .lock()
            .map_err(|_| HypervisorError::Refused("backup registry poisoned".into()))?;
        if active.iter().any(|u| u == uuid) {
            return Err(HypervisorError::Refused(
                "a backup of this VM is already running".into(),
            ));
        }
        active.push(uuid.to_string());
        Ok(ActiveGuard(uuid.to_string()))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Ok(mut active) = ACTIVE.lock() {
            active.retain(|u| *u != self.0);
        }
    }
}

fn failed(command: &str, message: impl Into<String>) -> HypervisorError {
    HypervisorError::Command {
        command: command.to_string(),
        message: message.into(),
    }
}

/// A disk to back up, as the domain XML names it.
struct BackupDisk {
    target: String,
    path: String,
    format: String,
}

/// The running QEMU's user and group, which must own the socket directory.
fn qemu_owner(name: &str) -> Option<(u32, u32)> {
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid")).ok()?;
    let meta = std::fs::metadata(format!("/proc/{}", pid.trim())).ok()?;
    Some((meta.uid(), meta.gid()))
}

fn make_run_dir(uuid: &str, owner: Option<(u32, u32)>) -> Result<PathBuf, HypervisorError> {
    let io = |e: std::io::Error| failed("prepare backup directory", e.to_string());
    let dir = Path::new(RUN_DIR).join(format!("backup-{uuid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(io)?;
    }
    Ok(dir)
}

fn scratch_path(disk: &BackupDisk, uuid: &str) -> String {
    let dir = Path::new(&disk.path)
        .parent()
        .unwrap_or(Path::new("/var/tmp"));
    dir.join(format!(".lifeboat-scratch-{uuid}-{}.qcow2", disk.target))
        .to_string_lossy()
        .into_owned()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The `<domainbackup>` document for pull mode over a Unix socket.
fn backup_xml(
    socket: &Path,
    disks: &[BackupDisk],
    uuid: &str,
    incremental_from: Option<&str>,
) -> String {
    let mut xml = String::from("<domainbackup mode='pull'>\n");
    if let Some(from) = incremental_from {
        xml += &format!("  <incremental>{}</incremental>\n", xml_escape(from));
    }
    xml += &format!(
        "  <server transport='unix' socket='{}'/>\n  <disks>\n",
        xml_escape(&socket.to_string_lossy())
    );
    for d in disks {
        xml += &format!(
            "    <disk name='{}' backup='yes' type='file'><scratch file='{}'/></disk>\n",
            xml_escape(&d.target),
            xml_escape(&scratch_path(d, uuid))
        );
    }
    xml + "  </disks>\n</domainbackup>\n"
}

/// The `<domaincheckpoint>` document: a bitmap on every qcow2 disk.
fn checkpoint_xml(name: &str, disks: &[BackupDisk]) -> String {
    let mut xml = format!(
        "<domaincheckpoint>\n  <name>{}</name>\n  <disks>\n",
        xml_escape(name)
    );
    for d in disks {
        let kind = if d.format == "qcow2" { "bitmap" } else { "no" };
        xml += &format!(
            "    <disk name='{}' checkpoint='{kind}'/>\n",
            xml_escape(&d.target)
        );
    }
    xml + "  </disks>\n</domaincheckpoint>\n"
}

fn wait_for_socket(path: &Path, child: Option<&mut Child>) -> Result<(), HypervisorError> {
    let deadline = Instant::now() + SOCKET_WAIT;
    let mut child = child;
    while !path.exists() {
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(failed(
                    "qemu-nbd",
                    format!("exited with {status} before serving"),
                ));
            }
        }
        if Instant::now() > deadline {
            return Err(failed(
                "wait for NBD socket",
                format!("{} did not appear", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl LibvirtDriver {
    fn backup_disks(&self, uuid: &str) -> Result<(String, Vec<BackupDisk>), HypervisorError> {
        let xml = self.virsh_on(uuid, "dumpxml", &["--inactive"])?;
        let name = self.virsh_on(uuid, "domname", &[])?.trim().to_string();
        let facts = parse_domain(&xml)?;
        let mut disks = Vec::new();
        for d in facts.disks.into_iter().filter(|d| d.device == "disk") {
            let path = match &d.source {
                DiskSource::Path(p) => p.clone(),
                DiskSource::Volume { .. } => self.source_path(&d.source).unwrap_or_default(),
                other => {
                    return Err(HypervisorError::Refused(format!(
                        "disk {} ({other:?}) is not a file; only file-backed disks can be backed up yet",
                        d.target
                    )))
                }
            };
            disks.push(BackupDisk {
                target: d.target,
                path,
                format: d.format.unwrap_or_else(|| "raw".into()),
            });
        }
        if disks.is_empty() {
            return Err(HypervisorError::Refused(
                "the VM has no disk to back up".into(),
            ));
        }
        Ok((name, disks))
    }

    fn checkpoints(&self, uuid: &str) -> Vec<String> {
        self.virsh_on(uuid, "checkpoint-list", &["--name"])
            .map(|out| {
                out.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn freeze(&self, uuid: &str) -> bool {
        match self.virsh_on(uuid, "domfsfreeze", &[]) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(vm = uuid, "cannot freeze the guest's filesystems: {e}");
                false
            }
        }
    }

    /// Thaws, retrying: a guest left frozen would hang its writers.
    fn thaw(&self, uuid: &str) {
        for attempt in 1..=3 {
            match self.virsh_on(uuid, "domfsthaw", &[]) {
                Ok(_) => return,
                Err(e) => tracing::error!(vm = uuid, attempt, "cannot thaw the guest: {e}"),
            }
        }
    }

    /// Freezing works when the guest agent answers.
    fn guest_agent_answers(&self, uuid: &str) -> bool {
        self.virsh_on(
            uuid,
            "qemu-agent-command",
            &["--timeout", "2", r#"{"execute":"guest-ping"}"#],
        )
        .is_ok()
    }

    pub(super) fn begin_backup_impl(
        &self,
        uuid: &str,
        request: &BackupRequest,
    ) -> Result<Box<dyn BackupExports>, HypervisorError> {
        let guard = ActiveGuard::claim(uuid)?;
        let (name, disks) = self.backup_disks(uuid)?;
        self.clean_stale_backup(uuid, &disks);
        let exports = match self.domstate(uuid)? {
            PowerState::Running | PowerState::Paused => {
                self.begin_live(uuid, &name, disks, request)
            }
            PowerState::Stopped => begin_offline(uuid, disks, request),
            PowerState::Unknown => {
                Err(HypervisorError::Refused("the VM's state is unknown".into()))
            }
        }?;
        Ok(Box::new(Guarded {
            inner: exports,
            _guard: guard,
        }))
    }

    /// A run directory left behind means an agent died mid-backup: its
    /// libvirt job may still hold an NBD export and scratch files. End it.
    fn clean_stale_backup(&self, uuid: &str, disks: &[BackupDisk]) {
        let dir = Path::new(RUN_DIR).join(format!("backup-{uuid}"));
        if !dir.exists() {
            return;
        }
        tracing::warn!(
            vm = uuid,
            "cleaning up a backup interrupted by an agent restart"
        );
        let _ = self.end_backup_job(uuid);
        for d in disks {
            let _ = std::fs::remove_file(scratch_path(d, uuid));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn begin_live(
        &self,
        uuid: &str,
        name: &str,
        disks: Vec<BackupDisk>,
        request: &BackupRequest,
    ) -> Result<Box<dyn BackupExports>, HypervisorError> {
        let dir = make_run_dir(uuid, qemu_owner(name))?;
        let socket = dir.join("backup.sock");
        let mut existing = self.checkpoints(uuid);
        // The controller names each run's checkpoint after a backup id it
        // has never completed: one that exists is a failed run's leftover.
        if existing.contains(&request.checkpoint) {
            self.virsh_on(uuid, "checkpoint-delete", &[&request.checkpoint])?;
            existing.retain(|c| *c != request.checkpoint);
        }
        let incremental_from = request
            .previous
            .as_ref()
            .map(|p| p.checkpoint.clone())
            .filter(|c| request.mode != BackupMode::Full && existing.contains(c));
        if request.mode == BackupMode::Incremental && incremental_from.is_none() {
            tracing::info!(
                vm = uuid,
                "no usable checkpoint: this incremental backup reads everything"
            );
        }
        let with_checkpoint = disks.iter().any(|d| d.format == "qcow2");
        let backup_file = dir.join("backup.xml");
        let checkpoint_file = dir.join("checkpoint.xml");
        let io = |e: std::io::Error| failed("write backup XML", e.to_string());
        std::fs::write(
            &backup_file,
            backup_xml(&socket, &disks, uuid, incremental_from.as_deref()),
        )
        .map_err(io)?;
        std::fs::write(
            &checkpoint_file,
            checkpoint_xml(&request.checkpoint, &disks),
        )
        .map_err(io)?;
        let backup_arg = backup_file.to_string_lossy().into_owned();
        let checkpoint_arg = checkpoint_file.to_string_lossy().into_owned();
        let mut args = vec![backup_arg.as_str()];
        if with_checkpoint {
            args.push(checkpoint_arg.as_str());
        }
        // The point in time is fixed when backup-begin returns, so the
        // guest's filesystems are frozen just around it (`backup-begin
        // --quiesce` is not in libvirt 9.0). A freeze that fails leaves a
        // crash-consistent backup, said so in its manifest.
        let frozen = self.guest_agent_answers(uuid) && self.freeze(uuid);
        let begun = {
            let _nodes = super::block_nodes();
            self.virsh_on(uuid, "backup-begin", &args)
        };
        if frozen {
            self.thaw(uuid);
        }
        if let Err(e) = begun {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let exports = LiveBackup {
            driver: LibvirtDriver::new(self.uri.clone()),
            uuid: uuid.to_string(),
            dir,
            scratch: disks.iter().map(|d| scratch_path(d, uuid)).collect(),
            info: ExportInfo {
                checkpoint: with_checkpoint.then(|| request.checkpoint.clone()),
                mode: if incremental_from.is_some() {
                    BackupMode::Incremental
                } else {
                    BackupMode::Full
                },
                frozen,
                disks: disks
                    .iter()
                    .map(|d| ExportedDisk {
                        target: d.target.clone(),
                        format: d.format.clone(),
                        socket: socket.clone(),
                        export: d.target.clone(),
                        dirty_context: incremental_from
                            .as_ref()
                            .map(|_| format!("qemu:dirty-bitmap:backup-{}", d.target)),
                    })
                    .collect(),
            },
        };
        if let Err(e) = exports.wait_ready() {
            let _ = Box::new(exports).finish(false);
            return Err(e);
        }
        Ok(Box::new(exports))
    }
}

/// Exports that release the VM's backup claim when finished.
struct Guarded {
    inner: Box<dyn BackupExports>,
    _guard: ActiveGuard,
}

impl BackupExports for Guarded {
    fn info(&self) -> &ExportInfo {
        self.inner.info()
    }
    fn finish(self: Box<Self>, succeeded: bool) -> Result<(), HypervisorError> {
        self.inner.finish(succeeded)
    }
}

struct LiveBackup {
    driver: LibvirtDriver,
    uuid: String,
    dir: PathBuf,
    scratch: Vec<String>,
    info: ExportInfo,
}

impl LiveBackup {
    fn wait_ready(&self) -> Result<(), HypervisorError> {
        wait_for_socket(&self.dir.join("backup.sock"), None)
    }
}

impl BackupExports for LiveBackup {
    fn info(&self) -> &ExportInfo {
        &self.info
    }

    fn finish(self: Box<Self>, succeeded: bool) -> Result<(), HypervisorError> {
        // Ending a pull-mode job is an abort; libvirt then drops the NBD
        // server and the scratch files, and keeps the new checkpoint.
        let ended = self.driver.end_backup_job(&self.uuid);
        for s in &self.scratch {
            let _ = std::fs::remove_file(s);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Each checkpoint's bitmap costs a little on every guest write: keep
        // only the newest. After a failure, drop the new one instead, so the
        // next run builds on the last backup that exists.
        let _nodes = super::block_nodes();
        for c in self.driver.checkpoints(&self.uuid) {
            let is_new = Some(&c) == self.info.checkpoint.as_ref();
            if c.starts_with(CHECKPOINT_PREFIX) && (is_new != succeeded) {
                if let Err(e) = self.driver.virsh_on(&self.uuid, "checkpoint-delete", &[&c]) {
                    tracing::warn!(
                        vm = self.uuid,
                        checkpoint = c,
                        "cannot delete checkpoint: {e}"
                    );
                }
            }
        }
        ended
    }
}

impl LibvirtDriver {
    /// Aborts the VM's backup job and waits (at most 10 s) until libvirt
    /// reports no job, so its block nodes are gone before anything asks
    /// about the disk again. Holds [`super::block_nodes`] throughout.
    fn end_backup_job(&self, uuid: &str) -> Result<(), HypervisorError> {
        let _nodes = super::block_nodes();
        let aborted = self.virsh_on(uuid, "domjobabort", &[]).map(|_| ());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            match self.virsh_on(uuid, "domjobinfo", &[]) {
                Ok(info) if job_running(&info) => std::thread::sleep(Duration::from_millis(50)),
                _ => break,
            }
        }
        aborted
    }
}

/// Whether `virsh domjobinfo` shows a job (its "Job type:" is not None).
fn job_running(info: &str) -> bool {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("Job type:"))
        .is_some_and(|t| t.trim() != "None")
}

/// A stopped domain: each image served read-only by its own `qemu-nbd`. With
/// the previous checkpoint's bitmap still in a qcow2 image, the run is
/// incremental; the checkpoint stays valid (it keeps recording) for the next.
fn begin_offline(
    uuid: &str,
    disks: Vec<BackupDisk>,
    request: &BackupRequest,
) -> Result<Box<dyn BackupExports>, HypervisorError> {
    let dir = make_run_dir(uuid, None)?;
    let previous = request
        .previous
        .as_ref()
        .map(|p| p.checkpoint.clone())
        .filter(|_| request.mode != BackupMode::Full);
    let usable = previous.as_ref().is_some_and(|c| {
        disks
            .iter()
            .all(|d| d.format != "qcow2" || image_has_bitmap(&d.path, c))
    }) && disks.iter().all(|d| d.format == "qcow2");
    let mut exports = OfflineBackup {
        dir: dir.clone(),
        children: Vec::new(),
        info: ExportInfo {
            checkpoint: if usable { previous.clone() } else { None },
            mode: if usable {
                BackupMode::Incremental
            } else {
                BackupMode::Full
            },
            frozen: false,
            disks: Vec::new(),
        },
    };
    for d in &disks {
        let socket = dir.join(format!("{}.sock", d.target));
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["--read-only", "--persistent", "--shared=4"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--format={}", d.format))
            .arg(format!("--export-name={}", d.target));
        let dirty_context = match (&previous, usable) {
            (Some(c), true) => {
                cmd.arg(format!("--bitmap={c}"));
                Some(format!("qemu:dirty-bitmap:{c}"))
            }
            _ => None,
        };
        let child = cmd
            .arg(&d.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                failed(
                    "qemu-nbd",
                    format!("cannot start (is qemu-utils installed?): {e}"),
                )
            })?;
        exports.children.push(child);
        let last = exports.children.last_mut();
        if let Err(e) = wait_for_socket(&socket, last) {
            let _ = Box::new(exports).finish(false);
            return Err(e);
        }
        exports.info.disks.push(ExportedDisk {
            target: d.target.clone(),
            format: d.format.clone(),
            socket,
            export: d.target.clone(),
            dirty_context,
        });
    }
    Ok(Box::new(exports))
}

fn image_has_bitmap(path: &str, bitmap: &str) -> bool {
    let Ok(out) = Command::new("qemu-img")
        .args(["info", "--force-share", "--output=json", path])
        .output()
    else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["format-specific"]["data"]["bitmaps"].as_array().cloned())
        .is_some_and(|bitmaps| bitmaps.iter().any(|b| b["name"] == bitmap))
}

struct OfflineBackup {
    dir: PathBuf,
    children: Vec<Child>,
    info: ExportInfo,
}

impl BackupExports for OfflineBackup {
    fn info(&self) -> &ExportInfo {
        &self.info
    }
    fn finish(mut self: Box<Self>, _succeeded: bool) -> Result<(), HypervisorError> {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_shows_in_domjobinfo_until_it_is_gone() {
        assert!(job_running(
            "Job type:         Unbounded\nOperation:        Backup\n"
        ));
        assert!(!job_running("Job type:         None        \n"));
        assert!(!job_running(""));
    }

    fn disks() -> Vec<BackupDisk> {
        vec![
            BackupDisk {
                target: "vda".into(),
                path: "/img/a.qcow2".into(),
                format: "qcow2".into(),
            },
            BackupDisk {
                target: "vdb".into(),
                path: "/img/b.raw".into(),
                format: "raw".into(),
            },
        ]
    }

    #[test]
    fn backup_xml_for_full_and_incremental_runs() {
        let full = backup_xml(Path::new("/run/x/backup.sock"), &disks(), "u1", None);
        assert!(full.contains("<domainbackup mode='pull'>"));
        assert!(!full.contains("<incremental>"));
        assert!(full.contains("<disk name='vda' backup='yes' type='file'><scratch file='/img/.lifeboat-scratch-u1-vda.qcow2'/></disk>"));
        assert!(full.contains("socket='/run/x/backup.sock'"));
        let inc = backup_xml(Path::new("/s"), &disks(), "u1", Some("lifeboat-1"));
        assert!(inc.contains("<incremental>lifeboat-1</incremental>"));
    }

    #[test]
    fn checkpoints_cover_only_qcow2_disks_and_names_are_escaped() {
        let xml = checkpoint_xml("lifeboat-<2>", &disks());
        assert!(xml.contains("<name>lifeboat-&lt;2&gt;</name>"));
        assert!(xml.contains("<disk name='vda' checkpoint='bitmap'/>"));
        assert!(xml.contains("<disk name='vdb' checkpoint='no'/>"));
    }
}

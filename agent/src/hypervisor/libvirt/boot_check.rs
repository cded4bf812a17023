//! Boot verification on the host: start a sandbox VM restored from a
//! backup, wait for a real sign of life (its guest agent answering, or a
//! line on its serial console), take a screenshot where it has a display,
//! then remove the sandbox and its files, whatever happened.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use lifeboat_proto::{
    BootCheckReport, BootCheckRequest, BootSignal, PowerState, Screenshot, SANDBOX_PREFIX,
    SANDBOX_SERIAL_LOG_DIR,
};
use roxmltree::Document;

use super::parse::parse_domain_list;
use super::{is_uuid, LibvirtDriver};
use crate::hypervisor::HypervisorError;

const POLL: Duration = Duration::from_millis(250);
/// A screenshot larger than this is left out of the report.
const MAX_SCREENSHOT: u64 = 8 * 1024 * 1024;
/// How much of the end of a serial log is searched for the awaited line.
const SERIAL_TAIL: u64 = 1024 * 1024;

/// Whether a domain is a boot-verification sandbox (Lifeboat's own: never
/// reported as a VM of the host, removed when found left over).
pub(super) fn is_sandbox(name: &str) -> bool {
    name.starts_with(SANDBOX_PREFIX)
}

/// The files a sandbox owns: its disk images (in the image directories)
/// and its serial log (in libvirt's log directory).
#[derive(Debug, Default, PartialEq, Eq)]
struct SandboxFiles {
    images: Vec<String>,
    serial_log: Option<String>,
}

/// The sandbox's name and files, from its definition. Paths outside the
/// places a sandbox may own are not its files and are never removed.
fn sandbox_files(xml: &str) -> Result<(String, SandboxFiles), HypervisorError> {
    let doc = Document::parse(xml).map_err(|e| HypervisorError::Parse(e.to_string()))?;
    let root = doc.root_element();
    let name = root
        .children()
        .find(|n| n.has_tag_name("name"))
        .and_then(|n| n.text())
        .unwrap_or_default()
        .to_string();
    let mut files = SandboxFiles::default();
    for node in root.descendants() {
        if node.has_tag_name("disk") {
            let source = node.children().find(|n| n.has_tag_name("source"));
            if let Some(file) = source.and_then(|s| s.attribute("file")) {
                if crate::host_dirs::in_image_dirs(file) {
                    files.images.push(file.to_string());
                }
            }
        }
        let serial_log =
            node.has_tag_name("log") && node.parent().is_some_and(|p| p.has_tag_name("serial"));
        if let Some(file) = node.attribute("file").filter(|_| serial_log) {
            if lifeboat_os::paths::path_within(file, &[SANDBOX_SERIAL_LOG_DIR]) {
                files.serial_log = Some(file.to_string());
            }
        }
    }
    Ok((name, files))
}

/// Whether the last [`SERIAL_TAIL`] bytes of `path` hold `text`.
fn log_contains(path: &Path, text: &str) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(SERIAL_TAIL)))
        .is_err()
    {
        return false;
    }
    let mut tail = Vec::new();
    if f.take(SERIAL_TAIL).read_to_end(&mut tail).is_err() {
        return false;
    }
    String::from_utf8_lossy(&tail).contains(text)
}

impl LibvirtDriver {
    pub(super) fn boot_check_impl(
        &self,
        request: &BootCheckRequest,
    ) -> Result<BootCheckReport, HypervisorError> {
        if !is_uuid(&request.uuid) {
            return Err(HypervisorError::UnknownVm(request.uuid.clone()));
        }
        let xml = self.virsh_on(&request.uuid, "dumpxml", &["--inactive"])?;
        let (name, files) = sandbox_files(&xml)?;
        // A guard against a mistaken order: only sandboxes are booted and
        // removed here, never a VM someone runs.
        if !is_sandbox(&name) {
            return Err(HypervisorError::Refused(format!(
                "VM {name:?} is not a boot-verification sandbox"
            )));
        }
        let watched = self.boot_and_watch(request, &files);
        let removed = self.remove_sandbox(&request.uuid, &files);
        let report = watched?;
        removed?;
        Ok(report)
    }

    /// Removes the sandboxes an earlier run left behind (it stopped in the
    /// middle of a boot check). Called once at start, before the agent
    /// connects, so no check of this run is under way.
    pub(super) fn sweep_sandboxes_impl(&self) -> Result<(), HypervisorError> {
        let listed = parse_domain_list(&self.virsh(&["list", "--all", "--uuid", "--name"])?);
        for (uuid, name) in listed.into_iter().filter(|(_, name)| is_sandbox(name)) {
            tracing::warn!(
                vm = uuid,
                name,
                "removing a boot-verification sandbox an earlier run left"
            );
            let removed = self
                .virsh_on(&uuid, "dumpxml", &["--inactive"])
                .and_then(|xml| sandbox_files(&xml))
                .and_then(|(_, files)| self.remove_sandbox(&uuid, &files));
            if let Err(e) = removed {
                tracing::warn!(vm = uuid, name, "cannot remove the sandbox: {e}");
            }
        }
        Ok(())
    }

    /// Starts the sandbox and waits for its sign of life, its end, or the
    /// deadline; then takes its screenshot.
    fn boot_and_watch(
        &self,
        request: &BootCheckRequest,
        files: &SandboxFiles,
    ) -> Result<BootCheckReport, HypervisorError> {
        let uuid = request.uuid.as_str();
        let started = Instant::now();
        self.virsh_on(uuid, "start", &[])?;
        let deadline = started + Duration::from_secs(request.timeout_secs);
        let (booted, detail) = loop {
            let alive = match &request.signal {
                BootSignal::GuestAgent => self
                    .virsh_on(
                        uuid,
                        "qemu-agent-command",
                        &["--timeout", "2", r#"{"execute":"guest-ping"}"#],
                    )
                    .is_ok(),
                BootSignal::SerialLine { text } => files
                    .serial_log
                    .as_deref()
                    .is_some_and(|log| log_contains(Path::new(log), text)),
            };
            if alive {
                break (
                    true,
                    format!(
                        "{} after {:.1} s",
                        request.signal,
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            match self.domstate(uuid)? {
                PowerState::Running | PowerState::Paused => {}
                other => break (false, format!("the VM stopped during boot ({other:?})")),
            }
            if Instant::now() >= deadline {
                break (
                    false,
                    format!("no {} within {} s", request.signal, request.timeout_secs),
                );
            }
            std::thread::sleep(POLL);
        };
        Ok(BootCheckReport {
            booted,
            boot_ms: started.elapsed().as_millis() as u64,
            detail,
            screenshot: self.screenshot(uuid),
        })
    }

    /// The VM's display, where it has one and is still running.
    fn screenshot(&self, uuid: &str) -> Option<Screenshot> {
        let file = crate::host_dirs::ScratchFile::with_contents("screenshot", b"").ok()?;
        let path = file.path().to_string_lossy().into_owned();
        if let Err(e) = self.virsh_on(uuid, "screenshot", &["--file", &path]) {
            tracing::debug!(vm = uuid, "no screenshot: {e}");
            return None;
        }
        let mut bytes = Vec::new();
        std::fs::File::open(file.path())
            .ok()?
            .take(MAX_SCREENSHOT + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        let media_type = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            "image/png"
        } else if bytes.starts_with(b"P6") {
            "image/x-portable-pixmap"
        } else {
            return None;
        };
        (bytes.len() as u64 <= MAX_SCREENSHOT).then(|| Screenshot {
            media_type: media_type.to_string(),
            base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        })
    }

    /// Stops and forgets the sandbox and deletes its files.
    fn remove_sandbox(&self, uuid: &str, files: &SandboxFiles) -> Result<(), HypervisorError> {
        if matches!(
            self.domstate(uuid),
            Ok(PowerState::Running | PowerState::Paused)
        ) {
            self.virsh_on(uuid, "destroy", &[])?;
        }
        self.virsh_on(
            uuid,
            "undefine",
            &[
                "--nvram",
                "--checkpoints-metadata",
                "--snapshots-metadata",
                "--managed-save",
            ],
        )?;
        for file in files.images.iter().chain(&files.serial_log) {
            match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(vm = uuid, file, "cannot remove a sandbox file: {e}");
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sandboxes_own_files_are_listed() {
        let xml = "<domain><name>lifeboat-verify-1</name><devices>\
            <disk type='file' device='disk'><source file='/var/lib/libvirt/images/s-vda.qcow2'/></disk>\
            <disk type='file' device='disk'><source file='/etc/shadow'/></disk>\
            <disk type='file' device='cdrom'><source file='/var/lib/libvirt/images/s-cidata.iso'/></disk>\
            <serial type='pty'><log file='/var/log/libvirt/qemu/s-serial.log'/></serial>\
            <channel type='unix'><log file='/var/log/libvirt/qemu/other.log'/></channel>\
            </devices></domain>";
        let (name, files) = sandbox_files(xml).unwrap();
        assert_eq!(name, "lifeboat-verify-1");
        assert_eq!(
            files,
            SandboxFiles {
                images: vec![
                    "/var/lib/libvirt/images/s-vda.qcow2".into(),
                    "/var/lib/libvirt/images/s-cidata.iso".into()
                ],
                serial_log: Some("/var/log/libvirt/qemu/s-serial.log".into()),
            }
        );
        let outside = "<domain><name>x</name><devices>\
            <serial type='pty'><log file='/var/log/libvirt/qemu/../../../etc/passwd'/></serial>\
            </devices></domain>";
        assert_eq!(sandbox_files(outside).unwrap().1.serial_log, None);
    }

    #[test]
    fn the_awaited_line_is_found_in_the_log() {
        let dir = std::env::temp_dir().join(format!("lb-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("serial.log");
        assert!(!log_contains(&log, "login:"));
        std::fs::write(&log, "booting\nWelcome\nhost login: ").unwrap();
        assert!(log_contains(&log, "login:"));
        assert!(!log_contains(&log, "panic"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Boot verification: a backup restored into an isolated sandbox VM (a new
//! identity, no network), booted on a host and judged by a real sign of
//! life — the guest agent answering, or a line on the serial console —
//! then removed by that host. Every chunk checksum can pass for a disk that
//! no longer boots; only booting shows it.
//!
//! The outcome is recorded beside the manifest in `boot-verify.json` (the
//! screenshot, where the VM had a display, in `boot-screen.png`), written
//! atomically; the backup's own files are never changed.

use std::io::{ErrorKind, Read};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use lifeboat_proto::{
    BootCheckReport, BootCheckRequest, BootSignal, Command, Outcome, RestoreRequest,
    SANDBOX_PREFIX, SANDBOX_SERIAL_LOG_DIR,
};
use serde::{Deserialize, Serialize};

use super::as_new::{as_new_request, sandbox_domain, AsNew};
use super::job::JobError;
use super::{write_file_atomic, BackupId, Datastore, VmUuid};
use crate::clock::unix_now;
use crate::hub::Hub;
use crate::jobs::Jobs;

pub const BOOT_VERIFY_FILE: &str = "boot-verify.json";
/// The screenshot, by its media type.
const SCREENSHOT_FILES: [(&str, &str); 2] = [
    ("image/png", "boot-screen.png"),
    ("image/x-portable-pixmap", "boot-screen.ppm"),
];
const MAX_STATE_FILE: u64 = 64 * 1024;
/// How much of a host's description of a boot check is kept.
const MAX_DETAIL_CHARS: usize = 1000;
/// Largest screenshot kept (an agent's report is bounded as well).
const MAX_SCREENSHOT: u64 = 8 * 1024 * 1024;
/// Time allowed beyond the boot timeout for starting, the screenshot and
/// the removal of the sandbox.
const CHECK_MARGIN: Duration = Duration::from_secs(120);

pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 10..=3600;

/// The last boot verification's outcome, as stored in `boot-verify.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootVerifyState {
    /// UNIX seconds when the verification finished.
    pub time: u64,
    pub ok: bool,
    /// The host the sandbox ran on (its name).
    pub host: String,
    pub signal: BootSignal,
    /// Seconds from the start to the sign of life; unset when the sandbox
    /// never started.
    pub boot_secs: Option<f64>,
    pub detail: String,
    /// The media type of the stored screenshot, if there is one.
    pub screenshot: Option<String>,
}

/// A boot verification to run: the sandbox's restore and its check.
pub struct BootVerifyPlan {
    pub restore: RestoreRequest,
    pub check: BootCheckRequest,
}

/// Refuses a timeout out of [`TIMEOUT_RANGE`] and a serial line that is
/// empty, long or not printable.
pub fn check_options(signal: &BootSignal, timeout_secs: u64) -> Result<(), String> {
    if !TIMEOUT_RANGE.contains(&timeout_secs) {
        return Err(format!(
            "timeout_secs must be {} to {}",
            TIMEOUT_RANGE.start(),
            TIMEOUT_RANGE.end()
        ));
    }
    if let BootSignal::SerialLine { text } = signal {
        if text.trim().is_empty() || text.len() > 200 || text.chars().any(char::is_control) {
            return Err("the serial line to wait for must be 1 to 200 printable characters".into());
        }
    }
    Ok(())
}

/// Refuses to boot a sandbox of `memory_mib` on a host with less memory
/// free than that (`free_bytes` 0: the host did not say), so checking a
/// backup never starves the host's running VMs.
pub fn check_room(host: &str, memory_mib: u64, free_bytes: u64) -> Result<(), String> {
    let needed = memory_mib.saturating_mul(1 << 20);
    if free_bytes > 0 && needed > free_bytes {
        return Err(format!(
            "host {host} has {} MiB free, and the sandbox needs the VM's {memory_mib} MiB: choose another host",
            free_bytes >> 20
        ));
    }
    Ok(())
}

/// Plans the sandbox for a backup: restored as a new VM named
/// `lifeboat-verify-…`, stopped, with no network and a logged serial
/// console. `exact` is the backup's exact-restore request.
pub fn plan(
    exact: RestoreRequest,
    signal: BootSignal,
    timeout_secs: u64,
) -> Result<BootVerifyPlan, String> {
    check_options(&signal, timeout_secs)?;
    let name = format!(
        "{SANDBOX_PREFIX}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let as_new = AsNew {
        name: name.clone(),
        computer_name: None,
        domain: None,
        hostname: None,
    };
    let mut restore = as_new_request(exact, &as_new)?;
    restore.config = sandbox_domain(
        &restore.config,
        &format!("{SANDBOX_SERIAL_LOG_DIR}/{name}-serial.log"),
    )?;
    restore.start = false;
    restore.replace = false;
    let check = BootCheckRequest {
        uuid: restore.uuid.clone(),
        signal,
        timeout_secs,
    };
    Ok(BootVerifyPlan { restore, check })
}

/// Restores the sandbox on `host_id` (reporting progress to the job), has
/// the host boot, judge and remove it, and records the outcome beside the
/// backup. The job succeeds only when the guest showed its sign of life.
pub async fn run(
    hub: Arc<Hub>,
    jobs: Arc<Jobs>,
    job_id: u64,
    (host_id, host_name): (String, String),
    store: Arc<Datastore>,
    (vm, id): (VmUuid, BackupId),
    plan: BootVerifyPlan,
) -> Result<(), String> {
    let BootVerifyPlan { restore, check } = plan;
    let signal = check.signal.clone();
    let timeout = Duration::from_secs(check.timeout_secs) + CHECK_MARGIN;
    let restored = super::restore::run(
        hub.clone(),
        jobs,
        job_id,
        host_id.clone(),
        store.clone(),
        restore,
    )
    .await;
    let report = match restored {
        Err(e) => Err(format!("the sandbox could not be restored: {e}")),
        Ok(_) => match hub
            .request_with_progress(&host_id, Command::BootCheck(check), timeout, None)
            .await
        {
            Ok(Some(Outcome::BootCheck(report))) => Ok(report),
            Ok(_) => Err(JobError::NoReport("boot check").to_string()),
            Err(e) => Err(format!("the boot check failed: {e}")),
        },
    };
    let (state, screenshot) = outcome(&host_name, signal, &report);
    let ok = state.ok;
    let detail = state.detail.clone();
    let recorded = tokio::task::spawn_blocking(move || {
        record(&store, &vm, &id, &state, screenshot.as_deref())
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Err(e) = recorded {
        return Err(format!("{detail}; the outcome could not be recorded: {e}"));
    }
    if ok {
        Ok(())
    } else {
        Err(detail)
    }
}

/// The state to record for a check's report (or failure), and the
/// screenshot's bytes.
fn outcome(
    host: &str,
    signal: BootSignal,
    report: &Result<BootCheckReport, String>,
) -> (BootVerifyState, Option<Vec<u8>>) {
    let mut state = BootVerifyState {
        time: unix_now(),
        ok: false,
        host: host.to_string(),
        signal,
        boot_secs: None,
        detail: String::new(),
        screenshot: None,
    };
    let report = match report {
        Err(e) => {
            state.detail = e.clone();
            return (state, None);
        }
        Ok(report) => report,
    };
    state.ok = report.booted;
    state.boot_secs = Some(report.boot_ms as f64 / 1000.0);
    // The host's words, bounded: the record must stay small enough to read.
    let said: String = report.detail.chars().take(MAX_DETAIL_CHARS).collect();
    state.detail = if report.booted {
        format!("booted: {said}")
    } else {
        format!("did not boot: {said}")
    };
    let shot = report.screenshot.as_ref().and_then(|s| {
        let known = SCREENSHOT_FILES.iter().any(|(t, _)| *t == s.media_type);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&s.base64)
            .ok()?;
        (known && bytes.len() as u64 <= MAX_SCREENSHOT).then(|| (s.media_type.clone(), bytes))
    });
    state.screenshot = shot.as_ref().map(|(t, _)| t.clone());
    (state, shot.map(|(_, b)| b))
}

/// Writes the state and the screenshot (replacing an older one), the
/// state last.
fn record(
    store: &Datastore,
    vm: &VmUuid,
    id: &BackupId,
    state: &BootVerifyState,
    screenshot: Option<&[u8]>,
) -> super::Result<()> {
    let dir = store.backup_dir(vm, id);
    for (media_type, file) in SCREENSHOT_FILES {
        match (state.screenshot.as_deref() == Some(media_type), screenshot) {
            (true, Some(bytes)) => write_file_atomic(&dir, file, bytes)?,
            _ => {
                let _ = std::fs::remove_file(dir.join(file));
            }
        }
    }
    let json = serde_json::to_vec_pretty(state).expect("a boot verify state serializes");
    write_file_atomic(&dir, BOOT_VERIFY_FILE, &json)
}

/// Reads at most `limit` bytes of a file beside a backup; `None` if it is
/// missing, unreadable or larger.
fn read_bounded(path: &std::path::Path, limit: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot read: {e}");
            return None;
        }
        Ok(f) => f.take(limit + 1).read_to_end(&mut bytes).ok()?,
    };
    (bytes.len() as u64 <= limit).then_some(bytes)
}

/// The recorded outcome of the last boot verification, if readable.
pub fn last_boot_verify(store: &Datastore, vm: &VmUuid, id: &BackupId) -> Option<BootVerifyState> {
    let path = store.backup_dir(vm, id).join(BOOT_VERIFY_FILE);
    let bytes = read_bounded(&path, MAX_STATE_FILE)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| tracing::warn!(path = %path.display(), "ignoring a boot verify result: {e}"))
        .ok()
}

/// The last boot verification's screenshot: its media type and bytes.
pub fn screenshot(store: &Datastore, vm: &VmUuid, id: &BackupId) -> Option<(String, Vec<u8>)> {
    let media_type = last_boot_verify(store, vm, id)?.screenshot?;
    let file = SCREENSHOT_FILES.iter().find(|(t, _)| *t == media_type)?.1;
    let bytes = read_bounded(&store.backup_dir(vm, id).join(file), MAX_SCREENSHOT)?;
    Some((media_type, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_proto::{RestoreDisk, Screenshot};

    fn exact() -> RestoreRequest {
        RestoreRequest {
            job_token: String::new(),
            uuid: "6f1c2b7e-1111-4a5b-9c3d-0123456789ab".into(),
            name: "web".into(),
            config: "<domain><name>web</name><uuid>6f1c2b7e-1111-4a5b-9c3d-0123456789ab</uuid>\
                <os><type arch='x86_64' machine='pc-q35-8.2'>hvm</type></os><devices>\
                <disk type='file' device='disk'><source file='/img/web.qcow2'/><target dev='vda' bus='virtio'/></disk>\
                <interface type='network'><source network='prod'/></interface></devices></domain>"
                .into(),
            disks: vec![RestoreDisk {
                target: "vda".into(),
                path: "/img/web.qcow2".into(),
                format: "qcow2".into(),
                size_bytes: 1 << 20,
                digests: vec![],
            }],
            replace: true,
            start: true,
            config_drive: None,
            instant_config: None,
            instant_bandwidth_mib: None,
        }
    }

    #[test]
    fn the_sandbox_is_a_stopped_copy_without_network() {
        let p = plan(exact(), BootSignal::GuestAgent, 60).unwrap();
        assert!(
            p.restore.name.starts_with(SANDBOX_PREFIX),
            "{}",
            p.restore.name
        );
        assert_ne!(p.restore.uuid, exact().uuid);
        assert_eq!(p.check.uuid, p.restore.uuid);
        assert!(!p.restore.start && !p.restore.replace);
        assert!(!p.restore.config.contains("<interface"));
        assert!(p.restore.config.contains(&format!(
            "{SANDBOX_SERIAL_LOG_DIR}/{}-serial.log",
            p.restore.name
        )));
        assert_ne!(p.restore.disks[0].path, "/img/web.qcow2");
        // Two plans never share a name.
        let q = plan(exact(), BootSignal::GuestAgent, 60).unwrap();
        assert_ne!(p.restore.name, q.restore.name);
    }

    #[test]
    fn a_sandbox_needs_room_on_its_host() {
        assert!(check_room("kvm1", 2048, 4 << 30).is_ok());
        assert!(check_room("kvm1", 2048, 0).is_ok(), "free memory unknown");
        let refused = check_room("kvm1", 2048, 1 << 30).unwrap_err();
        assert!(
            refused.contains("1024 MiB free") && refused.contains("2048"),
            "{refused}"
        );
    }

    #[test]
    fn refuses_bad_timeouts_and_lines() {
        assert!(plan(exact(), BootSignal::GuestAgent, 5).is_err());
        assert!(plan(exact(), BootSignal::GuestAgent, 7200).is_err());
        for text in ["", "  ", "a\nb"] {
            let signal = BootSignal::SerialLine { text: text.into() };
            assert!(plan(exact(), signal, 60).is_err(), "{text:?}");
        }
        let long = BootSignal::SerialLine {
            text: "x".repeat(201),
        };
        assert!(plan(exact(), long, 60).is_err());
    }

    #[test]
    fn outcomes_keep_only_known_screenshots() {
        let png = Screenshot {
            media_type: "image/png".into(),
            base64: base64::engine::general_purpose::STANDARD.encode(b"\x89PNG..."),
        };
        let report = |booted, screenshot| {
            Ok(BootCheckReport {
                booted,
                boot_ms: 4500,
                detail: "guest agent answer after 4.5 s".into(),
                screenshot,
            })
        };
        let (state, shot) = outcome("kvm1", BootSignal::GuestAgent, &report(true, Some(png)));
        assert!(state.ok && state.detail.starts_with("booted"));
        assert_eq!(state.screenshot.as_deref(), Some("image/png"));
        assert_eq!(shot.as_deref(), Some(&b"\x89PNG..."[..]));
        let odd = Screenshot {
            media_type: "text/html".into(),
            base64: "PGh0bWw+".into(),
        };
        let (state, shot) = outcome("kvm1", BootSignal::GuestAgent, &report(false, Some(odd)));
        assert!(!state.ok && state.detail.starts_with("did not boot"));
        assert_eq!((state.screenshot, shot), (None, None));
        let long = Ok(BootCheckReport {
            booted: false,
            boot_ms: 1,
            detail: "x".repeat(1 << 20),
            screenshot: None,
        });
        let (state, _) = outcome("kvm1", BootSignal::GuestAgent, &long);
        assert!(state.detail.len() < 2000, "a hostile host's detail is cut");
        let (state, _) = outcome("kvm1", BootSignal::GuestAgent, &Err("host offline".into()));
        assert!(!state.ok && state.boot_secs.is_none() && state.detail == "host offline");
    }
}

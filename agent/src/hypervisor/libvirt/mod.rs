//! KVM/QEMU driver: discovers and powers libvirt domains by running `virsh`,
//! so the agent stays a static binary without the libvirt C library.
//! Guarantees: every `virsh` call is bounded by a timeout, one odd disk or a
//! domain undefined mid-scan never fails the whole inventory, and a
//! `shutdown` always ends with the domain off (ACPI first, then destroy).

mod backup;
mod boot_check;
mod failover;
mod instant;
mod parse;
mod restore;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use lifeboat_os::command::run_bounded;
use lifeboat_proto::{DiskInfo, HostFacts, PowerAction, PowerState, VmInfo};

use super::{Hypervisor, HypervisorError};
use crate::metrics::counters::VmCounters;
use parse::{
    memory_from_nodememstats, parse_blkinfo_table, parse_colon_fields, parse_domain,
    parse_domain_list, parse_domstats_counters, parse_domstats_states, power_state,
    version_summary, DiskSource, DiskSpec,
};

/// QEMU 7.2 can abort (an assertion in `qcow2_get_specific_info`) when it
/// is asked about a disk's block nodes while a backup job adds or tears
/// down its own nodes on that disk. The agent never overlaps the two: every
/// block query it makes and every backup job step holds this lock.
static BLOCK_NODES: Mutex<()> = Mutex::new(());

pub(super) fn block_nodes() -> MutexGuard<'static, ()> {
    // Guards no data: a panic while held must not stop later backups.
    BLOCK_NODES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A libvirtd wedged on a stuck QEMU monitor or hung storage must not wedge
/// the agent's heartbeat and inventory with it.
const VIRSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Each of virsh's outputs is kept up to this (domain XML, listings).
const MAX_VIRSH_OUTPUT: usize = 64 << 20;
/// How long a domain's dumped XML is reused while its power state is
/// unchanged. Edits that keep the state (`virsh edit`, disk hotplug) show up
/// within this delay; it keeps a 2-second inventory at two `virsh` calls for
/// the whole host instead of several per domain.
const XML_REFRESH: Duration = Duration::from_secs(30);
/// How often `shutdown` checks whether the guest has turned itself off.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);

pub struct LibvirtDriver {
    uri: Option<String>,
    /// Described domains keyed by UUID; see [`XML_REFRESH`].
    cache: Mutex<HashMap<String, CachedDomain>>,
}

struct CachedDomain {
    name: String,
    state: PowerState,
    described_at: Instant,
    vm: VmInfo,
}

impl CachedDomain {
    fn still_valid(&self, name: &str, state: PowerState, now: Instant) -> bool {
        self.name == name
            && self.state == state
            && now.duration_since(self.described_at) < XML_REFRESH
    }
}

impl LibvirtDriver {
    /// `uri` is passed to `virsh -c`; `None` lets virsh choose (as root:
    /// `qemu:///system`).
    pub fn new(uri: Option<String>) -> Self {
        LibvirtDriver {
            uri,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `virsh ARGS` and returns its stdout.
    fn virsh(&self, args: &[&str]) -> Result<String, HypervisorError> {
        let command_line = format!("virsh {}", args.join(" "));
        let mut cmd = Command::new("virsh");
        if let Some(uri) = &self.uri {
            cmd.arg("-c").arg(uri);
        }
        // C locale: state names and error texts are parsed, so no translations.
        cmd.args(args).env("LC_ALL", "C");
        let output = run_bounded(cmd, VIRSH_TIMEOUT, MAX_VIRSH_OUTPUT).map_err(|e| {
            HypervisorError::Command {
                command: command_line.clone(),
                message: e.to_string(),
            }
        })?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        Err(HypervisorError::Command {
            command: command_line,
            message: virsh_error_text(&output.stderr),
        })
    }

    /// Runs `virsh SUBCOMMAND --domain UUID ARGS`; a missing domain becomes
    /// [`HypervisorError::UnknownVm`]. `--domain` keeps a hostile value from
    /// being read as an option.
    fn virsh_on(
        &self,
        uuid: &str,
        subcommand: &str,
        args: &[&str],
    ) -> Result<String, HypervisorError> {
        let mut all = vec![subcommand, "--domain", uuid];
        all.extend_from_slice(args);
        self.virsh(&all).map_err(|e| match e {
            HypervisorError::Command { message, .. } if is_missing_domain(&message) => {
                HypervisorError::UnknownVm(uuid.to_string())
            }
            other => other,
        })
    }

    fn domstate(&self, uuid: &str) -> Result<PowerState, HypervisorError> {
        Ok(power_state(self.virsh_on(uuid, "domstate", &[])?.trim()))
    }

    fn lock_cache(&self) -> MutexGuard<'_, HashMap<String, CachedDomain>> {
        // The cache only saves work; a panic elsewhere must not disable it.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Dumps one domain and builds its [`VmInfo`]. Facts come from the live
    /// XML (what runs now); `config` is the persistent definition, which is
    /// what an operator needs to define the VM again elsewhere. Neither dump
    /// asks for `--security-info`, so VNC/SPICE passwords never leave the host.
    fn describe(
        &self,
        uuid: &str,
        name: &str,
        state: PowerState,
    ) -> Result<VmInfo, HypervisorError> {
        let live = self.virsh_on(uuid, "dumpxml", &[])?;
        let config = match state {
            // An inactive domain's XML already is its persistent definition.
            PowerState::Stopped => live.clone(),
            _ => self.virsh_on(uuid, "dumpxml", &["--inactive"])?,
        };
        let facts = parse_domain(&live)?;
        let capacities = self.disk_capacities(uuid, &facts.disks);
        let disks = facts
            .disks
            .into_iter()
            .map(|disk| DiskInfo {
                capacity_bytes: capacities.get(&disk.target).copied(),
                source: self.source_path(&disk.source),
                target: disk.target,
                device: disk.device,
                format: disk.format,
            })
            .collect();
        Ok(VmInfo {
            uuid: uuid.to_string(),
            name: name.to_string(),
            power_state: state,
            vcpus: facts.vcpus,
            memory_mib: facts.memory_mib,
            disks,
            nics: facts.nics,
            config,
        })
    }

    /// Virtual sizes by target, from one `domblkinfo --all`; empty on failure
    /// because a missing size must not hide the VM.
    fn disk_capacities(&self, uuid: &str, disks: &[DiskSpec]) -> HashMap<String, u64> {
        if disks.iter().all(|d| d.source == DiskSource::None) {
            return HashMap::new();
        }
        let table = {
            let _nodes = block_nodes();
            self.virsh_on(uuid, "domblkinfo", &["--all"])
        };
        match table {
            Ok(table) => parse_blkinfo_table(&table),
            Err(e) => {
                tracing::debug!(vm = uuid, error = %e, "disk sizes unavailable");
                HashMap::new()
            }
        }
    }

    /// Storage-pool volumes are resolved to a path for the backup reader;
    /// when the pool cannot tell, the `pool/volume` name is reported.
    fn source_path(&self, source: &DiskSource) -> Option<String> {
        match source {
            DiskSource::None => None,
            DiskSource::Path(path) => Some(path.clone()),
            DiskSource::Volume { pool, volume } => Some(
                self.virsh(&["vol-path", "--pool", pool, "--vol", volume])
                    .map(|out| out.trim().to_string())
                    .unwrap_or_else(|_| format!("{pool}/{volume}")),
            ),
            DiskSource::Network { protocol, name } => Some(format!("{protocol}:{name}")),
        }
    }

    fn inventory_entry(
        &self,
        cache: &mut HashMap<String, CachedDomain>,
        uuid: &str,
        name: &str,
        listed_state: Option<PowerState>,
    ) -> Result<VmInfo, HypervisorError> {
        // Missing from domstats: defined or renamed between the two calls.
        let state = match listed_state {
            Some(state) => state,
            None => self.domstate(uuid)?,
        };
        let now = Instant::now();
        if let Some(cached) = cache.get(uuid).filter(|c| c.still_valid(name, state, now)) {
            return Ok(cached.vm.clone());
        }
        let vm = self.describe(uuid, name, state)?;
        let entry = CachedDomain {
            name: name.to_string(),
            state,
            described_at: now,
            vm: vm.clone(),
        };
        cache.insert(uuid.to_string(), entry);
        Ok(vm)
    }

    fn hostname(&self) -> Result<String, HypervisorError> {
        match lifeboat_os::host::hostname() {
            name if !name.is_empty() => Ok(name),
            _ => Ok(self.virsh(&["hostname"])?.trim().to_string()),
        }
    }

    fn reboot(&self, uuid: &str) -> Result<(), HypervisorError> {
        match self.virsh_on(uuid, "reboot", &[]) {
            Ok(_) => Ok(()),
            Err(e @ HypervisorError::UnknownVm(_)) => Err(e),
            Err(reboot_error) => {
                tracing::warn!(vm = uuid, error = %reboot_error, "reboot refused, resetting instead");
                self.virsh_on(uuid, "reset", &[]).map(drop)
            }
        }
    }

    /// Asks the guest to shut down, waits up to `timeout`, then destroys it:
    /// a guest with no OS (or a hung one) ignores ACPI, and the caller was
    /// promised the VM ends up off.
    fn shutdown(&self, uuid: &str, timeout: Duration) -> Result<(), HypervisorError> {
        match self.virsh_on(uuid, "shutdown", &[]) {
            Ok(_) => {
                if self.wait_until_stopped(uuid, timeout)? {
                    return Ok(());
                }
            }
            Err(e @ HypervisorError::UnknownVm(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(vm = uuid, error = %e, "cannot ask guest to shut down, powering off")
            }
        }
        self.destroy(uuid)
    }

    /// True once the domain is off. A transient domain vanishes when it
    /// stops, so "gone" counts as off too.
    fn wait_until_stopped(&self, uuid: &str, timeout: Duration) -> Result<bool, HypervisorError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.domstate(uuid) {
                Ok(PowerState::Stopped) | Err(HypervisorError::UnknownVm(_)) => return Ok(true),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            thread::sleep(SHUTDOWN_POLL.min(deadline - now));
        }
    }

    /// `virsh destroy`, tolerating a guest that turned itself off meanwhile.
    fn destroy(&self, uuid: &str) -> Result<(), HypervisorError> {
        match self.virsh_on(uuid, "destroy", &[]) {
            Ok(_) => Ok(()),
            Err(e) => match self.wait_until_stopped(uuid, Duration::ZERO) {
                Ok(true) => Ok(()),
                _ => Err(e),
            },
        }
    }
}

impl Hypervisor for LibvirtDriver {
    fn begin_backup(
        &self,
        uuid: &str,
        request: &lifeboat_proto::BackupRequest,
    ) -> Result<Box<dyn crate::hypervisor::BackupExports>, HypervisorError> {
        if !is_uuid(uuid) {
            return Err(HypervisorError::UnknownVm(uuid.to_string()));
        }
        self.begin_backup_impl(uuid, request)
    }

    fn driver(&self) -> &'static str {
        "libvirt"
    }

    fn hard_stop(&self, uuid: &str) -> Result<(), HypervisorError> {
        self.hard_stop_impl(uuid)
    }

    fn start_from_config(
        &self,
        request: &lifeboat_proto::StartVmRequest,
    ) -> Result<(), HypervisorError> {
        self.start_from_config_impl(request)
    }

    fn undefine_keeping_disks(&self, uuid: &str) -> Result<(), HypervisorError> {
        self.undefine_keeping_disks_impl(uuid)
    }

    fn boot_check(
        &self,
        request: &lifeboat_proto::BootCheckRequest,
    ) -> Result<lifeboat_proto::BootCheckReport, HypervisorError> {
        self.boot_check_impl(request)
    }

    fn sweep_sandboxes(&self) -> Result<(), HypervisorError> {
        self.sweep_sandboxes_impl()
    }

    fn host_facts(&self) -> Result<HostFacts, HypervisorError> {
        let nodeinfo = parse_colon_fields(&self.virsh(&["nodeinfo"])?);
        let cpus = nodeinfo
            .get("CPU(s)")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| HypervisorError::Parse("`virsh nodeinfo` has no CPU(s) line".into()))?;
        let (memory_total_bytes, memory_free_bytes) = match self.virsh(&["nodememstats"]) {
            Ok(out) => memory_from_nodememstats(&out),
            Err(_) => None,
        }
        .or_else(|| lifeboat_os::host::memory().map(|m| (m.total, m.available)))
        .ok_or_else(|| {
            HypervisorError::Parse("no memory figures from nodememstats or /proc/meminfo".into())
        })?;
        Ok(HostFacts {
            hostname: self.hostname()?,
            driver: self.driver().to_string(),
            hypervisor_version: version_summary(&self.virsh(&["version", "--daemon"])?),
            cpus,
            memory_total_bytes,
            memory_free_bytes,
            image_dirs: Vec::new(),
        })
    }

    /// Two `virsh` calls per scan (names+UUIDs, then every state), plus dumps
    /// only for domains that are new, changed state or are older than
    /// [`XML_REFRESH`].
    fn inventory(&self) -> Result<Vec<VmInfo>, HypervisorError> {
        // A boot-verification sandbox is Lifeboat's own, not a VM of the estate.
        let mut domains = parse_domain_list(&self.virsh(&["list", "--all", "--uuid", "--name"])?);
        domains.retain(|(_, name)| !boot_check::is_sandbox(name));
        let states = parse_domstats_states(&self.virsh(&["domstats", "--state"])?);
        let mut cache = self.lock_cache();
        cache.retain(|uuid, _| domains.iter().any(|(listed, _)| listed == uuid));
        let mut vms = Vec::with_capacity(domains.len());
        for (uuid, name) in domains {
            match self.inventory_entry(&mut cache, &uuid, &name, states.get(&name).copied()) {
                Ok(vm) => vms.push(vm),
                // Undefined between the list and now: it is simply gone.
                Err(HypervisorError::UnknownVm(_)) => {
                    tracing::debug!(vm = %uuid, "domain vanished during the scan");
                    cache.remove(&uuid);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(vms)
    }

    /// One `virsh domstats` for every running domain; names are mapped to
    /// UUIDs with one `virsh list`.
    fn vm_counters(&self) -> Result<Vec<VmCounters>, HypervisorError> {
        let names: HashMap<String, String> =
            parse_domain_list(&self.virsh(&["list", "--uuid", "--name"])?)
                .into_iter()
                .map(|(uuid, name)| (name, uuid))
                .collect();
        // `--block` makes libvirt query the block nodes (see `block_nodes`).
        let nodes = block_nodes();
        let out = self.virsh(&[
            "domstats",
            "--list-running",
            "--cpu-total",
            "--balloon",
            "--vcpu",
            "--block",
            "--interface",
        ])?;
        drop(nodes);
        Ok(parse_domstats_counters(&out)
            .into_iter()
            .filter_map(|(name, mut c)| {
                c.uuid = names.get(&name)?.clone();
                Some(c)
            })
            .collect())
    }

    fn power(
        &self,
        uuid: &str,
        action: PowerAction,
        timeout: Duration,
    ) -> Result<(), HypervisorError> {
        if !is_uuid(uuid) {
            return Err(HypervisorError::UnknownVm(uuid.to_string()));
        }
        let state = self.domstate(uuid)?;
        check_transition(action, state)
            .map_err(|reason| HypervisorError::Refused(reason.to_string()))?;
        match action {
            PowerAction::Start => self.virsh_on(uuid, "start", &[]).map(drop),
            PowerAction::Poweroff => self.destroy(uuid),
            PowerAction::Pause => self.virsh_on(uuid, "suspend", &[]).map(drop),
            PowerAction::Resume => self.virsh_on(uuid, "resume", &[]).map(drop),
            PowerAction::Reboot => self.reboot(uuid),
            PowerAction::Shutdown => self.shutdown(uuid, timeout),
        }
    }
}

/// Whether a power action makes sense in the current state. Refusing early
/// gives the operator a plain reason instead of libvirt's wording.
fn check_transition(action: PowerAction, state: PowerState) -> Result<(), &'static str> {
    use PowerAction as A;
    use PowerState as S;
    match (action, state) {
        (A::Start, S::Running) => Err("VM is already running"),
        (A::Start, S::Paused) => Err("VM is paused; resume it instead"),
        (A::Shutdown | A::Poweroff, S::Stopped) => Err("VM is already stopped"),
        (A::Pause, S::Paused) => Err("VM is already paused"),
        (A::Resume, S::Running) => Err("VM is not paused"),
        (A::Reboot, S::Paused) => Err("VM is paused; resume it first"),
        (A::Pause | A::Resume | A::Reboot, S::Stopped) => Err("VM is not running"),
        _ => Ok(()),
    }
}

fn is_uuid(s: &str) -> bool {
    const DASHES: [usize; 4] = [8, 13, 18, 23];
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if DASHES.contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// How virsh reports a UUID, name or ID that matches no domain.
fn is_missing_domain(message: &str) -> bool {
    message.contains("failed to get domain") || message.contains("Domain not found")
}

/// virsh's stderr as one line: "error: a\nerror: b" becomes "a; b".
fn virsh_error_text(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("error:").trim())
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "virsh failed without a message".to_string()
    } else {
        lines.join("; ")
    }
}

/// For the fuzz target: one text, as virsh output and as domain XML, fed
/// to every parser of what virsh prints (a hostile or broken libvirtd, a
/// domain definition someone else wrote). Errors are fine; panics are not.
#[doc(hidden)]
pub fn fuzz_parsers(text: &str) {
    let _ = parse::power_state(text);
    let _ = parse::parse_domain_list(text);
    let _ = parse::parse_domstats_states(text);
    let _ = parse::parse_domstats_counters(text);
    let _ = parse::parse_blkinfo_table(text);
    let _ = parse::parse_colon_fields(text);
    let _ = parse::memory_from_nodememstats(text);
    let _ = parse::version_summary(text);
    let _ = parse::parse_domain(text);
    let _ = virsh_error_text(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_refused_with_a_reason() {
        use PowerAction as A;
        use PowerState as S;
        assert_eq!(
            check_transition(A::Start, S::Running),
            Err("VM is already running")
        );
        assert_eq!(
            check_transition(A::Shutdown, S::Stopped),
            Err("VM is already stopped")
        );
        assert_eq!(
            check_transition(A::Resume, S::Stopped),
            Err("VM is not running")
        );
        assert!(check_transition(A::Start, S::Stopped).is_ok());
        assert!(check_transition(A::Shutdown, S::Paused).is_ok());
        assert!(check_transition(A::Poweroff, S::Paused).is_ok());
        // An unknown state is left for libvirt to judge.
        for action in PowerAction::ALL {
            assert!(check_transition(action, S::Unknown).is_ok());
        }
    }

    #[test]
    fn uuids_and_virsh_errors() {
        assert!(is_uuid("a3ecdbd9-2840-4d65-acad-e59bbf2c5fb9"));
        assert!(!is_uuid("--help"));
        assert!(!is_uuid("a3ecdbd9-2840-4d65-acad-e59bbf2c5fb9x"));
        assert!(!is_uuid("a3ecdbd9x2840-4d65-acad-e59bbf2c5fb9"));
        let stderr = b"error: failed to get domain 'x'\nerror: Domain not found: no domain with matching uuid\n";
        let text = virsh_error_text(stderr);
        assert_eq!(
            text,
            "failed to get domain 'x'; Domain not found: no domain with matching uuid"
        );
        assert!(is_missing_domain(&text));
        assert!(!is_missing_domain(
            "Requested operation is not valid: domain is already running"
        ));
        assert_eq!(virsh_error_text(b"\n"), "virsh failed without a message");
    }
}

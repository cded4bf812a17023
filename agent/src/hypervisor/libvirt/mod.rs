//! KVM/QEMU driver: discovers and powers libvirt domains by running `virsh`,
//! so the agent stays a static binary without the libvirt C library.
//! Guarantees: every `virsh` call is bounded by a timeout, one odd disk or a
//! domain undefined mid-scan never fails the whole inventory, and a
//! `shutdown` always ends with the domain off (ACPI first, then destroy).

mod backup;
mod restore;

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use lifeboat_proto::{DiskInfo, HostFacts, NicInfo, PowerAction, PowerState, VmInfo};
use roxmltree::{Document, Node};

use super::{Hypervisor, HypervisorError};

/// A libvirtd wedged on a stuck QEMU monitor or hung storage must not wedge
/// the agent's heartbeat and inventory with it.
const VIRSH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a domain's dumped XML is reused while its power state is
/// unchanged. Edits that keep the state (`virsh edit`, disk hotplug) show up
/// within this delay; it keeps a 2-second inventory at two `virsh` calls for
/// the whole host instead of several per domain.
const XML_REFRESH: Duration = Duration::from_secs(30);
/// How often `shutdown` checks whether the guest has turned itself off.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

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
        let output = run_bounded(cmd, VIRSH_TIMEOUT).map_err(|e| HypervisorError::Command {
            command: command_line.clone(),
            message: e.to_string(),
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
        match self.virsh_on(uuid, "domblkinfo", &["--all"]) {
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
        match std::fs::read_to_string("/proc/sys/kernel/hostname") {
            Ok(name) if !name.trim().is_empty() => Ok(name.trim().to_string()),
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
        .or_else(|| {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| memory_from_meminfo(&m))
        })
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
        })
    }

    /// Two `virsh` calls per scan (names+UUIDs, then every state), plus dumps
    /// only for domains that are new, changed state or are older than
    /// [`XML_REFRESH`].
    fn inventory(&self) -> Result<Vec<VmInfo>, HypervisorError> {
        let domains = parse_domain_list(&self.virsh(&["list", "--all", "--uuid", "--name"])?);
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

/// Maps a state as `virsh domstate` prints it. "in shutdown" means the guest
/// is going down but QEMU still runs and holds its disks, so it is Running:
/// calling it Stopped could let failover start a second copy.
fn power_state(libvirt_state: &str) -> PowerState {
    match libvirt_state {
        "running" | "idle" | "blocked" | "in shutdown" => PowerState::Running,
        "paused" | "pmsuspended" => PowerState::Paused,
        "shut off" | "crashed" => PowerState::Stopped,
        _ => PowerState::Unknown,
    }
}

/// `virDomainState` numbers, as `virsh domstats --state` prints them.
fn power_state_from_code(code: u32) -> PowerState {
    const NAMES: [&str; 8] = [
        "no state",
        "running",
        "blocked",
        "paused",
        "in shutdown",
        "shut off",
        "crashed",
        "pmsuspended",
    ];
    NAMES
        .get(code as usize)
        .map_or(PowerState::Unknown, |name| power_state(name))
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

/// Runs `cmd`, killing it after `limit`. Pipes are drained on their own
/// threads so a large dump cannot fill one and stall the child.
fn run_bounded(mut cmd: Command, limit: Duration) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The readers are left behind: a grandchild (ssh transport) may
            // still hold the pipes open.
            let message = format!("no answer within {} s, killed", limit.as_secs());
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, message));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

// ---- Pure parsers over virsh output -------------------------------------

/// `virsh list --all --uuid --name`: "UUID NAME" per line (names may hold spaces).
fn parse_domain_list(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|line| line.trim().split_once(' '))
        .filter(|(uuid, _)| is_uuid(uuid))
        .map(|(uuid, name)| (uuid.to_string(), name.trim().to_string()))
        .collect()
}

/// `virsh domstats --state`: blocks of "Domain: 'NAME'" then "state.state=N".
fn parse_domstats_states(out: &str) -> HashMap<String, PowerState> {
    let mut states = HashMap::new();
    let mut current: Option<&str> = None;
    for line in out.lines() {
        let line = line.trim();
        if let Some(quoted) = line.strip_prefix("Domain: ") {
            current = quoted.strip_prefix('\'').and_then(|q| q.strip_suffix('\''));
        } else if let (Some(name), Some(code)) = (current, line.strip_prefix("state.state=")) {
            if let Ok(code) = code.parse() {
                states.insert(name.to_string(), power_state_from_code(code));
            }
        }
    }
    states
}

/// `virsh domblkinfo --all`: a table of target, capacity, allocation,
/// physical in bytes; "-" for a drive without media.
fn parse_blkinfo_table(out: &str) -> HashMap<String, u64> {
    out.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let target = cols.next()?;
            let capacity = cols.next()?.parse().ok()?;
            Some((target.to_string(), capacity))
        })
        .collect()
}

/// "Key:   value" lines (nodeinfo, nodememstats, version), keys trimmed.
fn parse_colon_fields(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A figure such as "24684084 KiB" or "24684084 kB" in bytes.
fn kib_figure(value: &str) -> Option<u64> {
    let number = value.split_whitespace().next()?.parse::<u64>().ok()?;
    number.checked_mul(KIB)
}

/// (total, free) from `virsh nodememstats`. Buffers and page cache count as
/// free: the kernel hands them to a starting VM on demand.
fn memory_from_nodememstats(out: &str) -> Option<(u64, u64)> {
    let fields = parse_colon_fields(out);
    let figure = |key: &str| fields.get(key).and_then(|v| kib_figure(v));
    let total = figure("total")?;
    let free = figure("free")? + figure("buffers").unwrap_or(0) + figure("cached").unwrap_or(0);
    Some((total, free.min(total)))
}

/// (total, available) from /proc/meminfo.
fn memory_from_meminfo(meminfo: &str) -> Option<(u64, u64)> {
    let fields = parse_colon_fields(meminfo);
    let figure = |key: &str| fields.get(key).and_then(|v| kib_figure(v));
    Some((
        figure("MemTotal")?,
        figure("MemAvailable").or_else(|| figure("MemFree"))?,
    ))
}

/// "QEMU 7.2.22, libvirt 9.0.0" from `virsh version --daemon`.
fn version_summary(out: &str) -> String {
    let fields = parse_colon_fields(out);
    let hypervisor = fields.get("Running hypervisor").map(String::as_str);
    let daemon = fields.get("Running against daemon").map(String::as_str);
    match (hypervisor, daemon) {
        (Some(h), Some(d)) => format!("{h}, libvirt {d}"),
        (Some(h), None) => h.to_string(),
        (None, Some(d)) => format!("libvirt {d}"),
        (None, None) => "unknown".to_string(),
    }
}

// ---- Pure parsers over domain XML ---------------------------------------

/// The parts of a domain XML the inventory reports.
#[derive(Debug, PartialEq)]
struct DomainFacts {
    vcpus: u32,
    memory_mib: u64,
    disks: Vec<DiskSpec>,
    nics: Vec<NicInfo>,
}

#[derive(Debug, PartialEq)]
struct DiskSpec {
    target: String,
    device: String,
    source: DiskSource,
    format: Option<String>,
}

#[derive(Debug, PartialEq)]
enum DiskSource {
    /// An empty CD-ROM or floppy drive.
    None,
    Path(String),
    Volume {
        pool: String,
        volume: String,
    },
    Network {
        protocol: String,
        name: String,
    },
}

fn parse_domain(xml: &str) -> Result<DomainFacts, HypervisorError> {
    let doc =
        Document::parse(xml).map_err(|e| HypervisorError::Parse(format!("domain XML: {e}")))?;
    let domain = doc.root_element();
    let memory = child(domain, "memory")
        .and_then(memory_bytes)
        .ok_or_else(|| HypervisorError::Parse("domain XML has no valid <memory>".into()))?;
    let vcpu = child(domain, "vcpu");
    let vcpus = vcpu
        .and_then(|v| v.attribute("current").or_else(|| v.text()))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| HypervisorError::Parse("domain XML has no valid <vcpu>".into()))?;
    let devices: Vec<Node> = child(domain, "devices")
        .map(|d| d.children().collect())
        .unwrap_or_default();
    Ok(DomainFacts {
        vcpus,
        memory_mib: memory / MIB,
        disks: devices
            .iter()
            .filter(|n| n.has_tag_name("disk"))
            .map(|n| parse_disk(*n))
            .collect(),
        nics: devices
            .iter()
            .filter(|n| n.has_tag_name("interface"))
            .map(|n| parse_nic(*n))
            .collect(),
    })
}

fn child<'a, 'i>(node: Node<'a, 'i>, tag: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(tag))
}

fn child_attr(node: Node, tag: &str, attr: &str) -> Option<String> {
    child(node, tag)
        .and_then(|c| c.attribute(attr))
        .map(str::to_string)
}

/// libvirt's memory units; a missing unit means KiB.
fn memory_bytes(node: Node) -> Option<u64> {
    const UNITS: [(&str, u64); 14] = [
        ("b", 1),
        ("bytes", 1),
        ("KB", 1_000),
        ("k", KIB),
        ("KiB", KIB),
        ("MB", 1_000_000),
        ("M", MIB),
        ("MiB", MIB),
        ("GB", 1_000_000_000),
        ("G", MIB * KIB),
        ("GiB", MIB * KIB),
        ("TB", 1_000_000_000_000),
        ("T", MIB * MIB),
        ("TiB", MIB * MIB),
    ];
    let unit = node.attribute("unit").unwrap_or("KiB");
    let factor = UNITS.iter().find(|(name, _)| *name == unit)?.1;
    node.text()?.trim().parse::<u64>().ok()?.checked_mul(factor)
}

fn parse_disk(disk: Node) -> DiskSpec {
    DiskSpec {
        target: child_attr(disk, "target", "dev").unwrap_or_default(),
        device: disk.attribute("device").unwrap_or("disk").to_string(),
        source: child(disk, "source").map_or(DiskSource::None, disk_source),
        format: child_attr(disk, "driver", "type"),
    }
}

/// Reads `<source>` by its attributes rather than the disk's `type`, which
/// covers file, block, dir, volume and network disks alike.
fn disk_source(source: Node) -> DiskSource {
    let attr = |name| source.attribute(name).map(str::to_string);
    if let Some(path) = attr("file").or_else(|| attr("dev")).or_else(|| attr("dir")) {
        return DiskSource::Path(path);
    }
    if let (Some(pool), Some(volume)) = (attr("pool"), attr("volume")) {
        return DiskSource::Volume { pool, volume };
    }
    if let (Some(protocol), Some(name)) = (attr("protocol"), attr("name")) {
        return DiskSource::Network { protocol, name };
    }
    DiskSource::None
}

/// A NIC's network is the libvirt network if any, else the host bridge or
/// (macvtap) device it sits on; user-mode NICs have none.
fn parse_nic(nic: Node) -> NicInfo {
    let source = child(nic, "source");
    let network = source.and_then(|s| {
        ["network", "bridge", "dev"]
            .iter()
            .find_map(|attr| s.attribute(*attr))
            .map(str::to_string)
    });
    NicInfo {
        mac: child_attr(nic, "mac", "address").unwrap_or_default(),
        network,
        model: child_attr(nic, "model", "type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running domain as `virsh dumpxml` prints it (trimmed), with an empty
    /// CD-ROM, a network NIC and a bridge NIC.
    const RUNNING_XML: &str = r#"<domain type='kvm' id='3'>
  <name>web01</name>
  <uuid>a3ecdbd9-2840-4d65-acad-e59bbf2c5fb9</uuid>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2' index='2'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/vg0/web01-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <controller type='usb' index='0' model='piix3-uhci'/>
    <interface type='network'>
      <mac address='52:54:00:91:ce:1c'/>
      <source network='default' portid='1930a843-e3f7-42a1-94b5-bb4c77557d16' bridge='virbr0'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source bridge='br0'/>
      <target dev='vnet1'/>
      <model type='e1000'/>
    </interface>
    <graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>"#;

    #[test]
    fn running_domain_facts() {
        let facts = parse_domain(RUNNING_XML).unwrap();
        assert_eq!(facts.vcpus, 2, "current vCPUs, not the hotplug maximum");
        assert_eq!(facts.memory_mib, 2048);
        assert_eq!(
            facts.disks,
            vec![
                DiskSpec {
                    target: "vda".into(),
                    device: "disk".into(),
                    source: DiskSource::Path("/var/lib/libvirt/images/web01.qcow2".into()),
                    format: Some("qcow2".into()),
                },
                DiskSpec {
                    target: "vdb".into(),
                    device: "disk".into(),
                    source: DiskSource::Path("/dev/vg0/web01-data".into()),
                    format: Some("raw".into()),
                },
                DiskSpec {
                    target: "hdc".into(),
                    device: "cdrom".into(),
                    source: DiskSource::None,
                    format: None,
                },
            ]
        );
        assert_eq!(
            facts.nics,
            vec![
                NicInfo {
                    mac: "52:54:00:91:ce:1c".into(),
                    network: Some("default".into()),
                    model: Some("virtio".into()),
                },
                NicInfo {
                    mac: "52:54:00:aa:bb:cc".into(),
                    network: Some("br0".into()),
                    model: Some("e1000".into()),
                },
            ]
        );
    }

    #[test]
    fn volume_network_and_user_mode_devices() {
        let xml = r#"<domain type='qemu'>
  <name>db</name>
  <memory unit='GiB'>1</memory>
  <vcpu>1</vcpu>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='default' volume='db.qcow2'/>
      <target dev='sda' bus='scsi'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='rbd/db-data'><host name='ceph1' port='6789'/></source>
      <target dev='sdb' bus='scsi'/>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:00:00:01'/>
    </interface>
  </devices>
</domain>"#;
        let facts = parse_domain(xml).unwrap();
        assert_eq!(facts.memory_mib, 1024);
        assert_eq!(facts.vcpus, 1);
        assert_eq!(
            facts.disks[0].source,
            DiskSource::Volume {
                pool: "default".into(),
                volume: "db.qcow2".into()
            }
        );
        assert_eq!(
            facts.disks[1].source,
            DiskSource::Network {
                protocol: "rbd".into(),
                name: "rbd/db-data".into()
            }
        );
        assert_eq!(facts.nics[0].network, None);
        assert_eq!(facts.nics[0].model, None);
    }

    #[test]
    fn broken_domain_xml_is_a_parse_error() {
        assert!(matches!(
            parse_domain("<domain>"),
            Err(HypervisorError::Parse(_))
        ));
        let no_memory = "<domain><name>x</name><vcpu>1</vcpu></domain>";
        assert!(matches!(
            parse_domain(no_memory),
            Err(HypervisorError::Parse(_))
        ));
        let bad_unit = "<domain><memory unit='parsecs'>1</memory><vcpu>1</vcpu></domain>";
        assert!(matches!(
            parse_domain(bad_unit),
            Err(HypervisorError::Parse(_))
        ));
    }

    #[test]
    fn memory_units() {
        let mib = |xml: &str| parse_domain(xml).unwrap().memory_mib;
        assert_eq!(
            mib("<domain><memory>65536</memory><vcpu>1</vcpu></domain>"),
            64
        );
        assert_eq!(
            mib("<domain><memory unit='M'>512</memory><vcpu>1</vcpu></domain>"),
            512
        );
        assert_eq!(
            mib("<domain><memory unit='bytes'>1048576</memory><vcpu>1</vcpu></domain>"),
            1
        );
        assert_eq!(
            mib("<domain><memory unit='G'>2</memory><vcpu>1</vcpu></domain>"),
            2048
        );
    }

    #[test]
    fn state_names_map_to_power_states() {
        for name in ["running", "idle", "blocked", "in shutdown"] {
            assert_eq!(power_state(name), PowerState::Running, "{name}");
        }
        for name in ["paused", "pmsuspended"] {
            assert_eq!(power_state(name), PowerState::Paused, "{name}");
        }
        for name in ["shut off", "crashed"] {
            assert_eq!(power_state(name), PowerState::Stopped, "{name}");
        }
        assert_eq!(power_state("no state"), PowerState::Unknown);
        assert_eq!(power_state("something new"), PowerState::Unknown);
    }

    #[test]
    fn state_codes_map_like_names() {
        assert_eq!(power_state_from_code(1), PowerState::Running);
        assert_eq!(power_state_from_code(3), PowerState::Paused);
        assert_eq!(power_state_from_code(4), PowerState::Running);
        assert_eq!(power_state_from_code(5), PowerState::Stopped);
        assert_eq!(power_state_from_code(6), PowerState::Stopped);
        assert_eq!(power_state_from_code(7), PowerState::Paused);
        assert_eq!(power_state_from_code(0), PowerState::Unknown);
        assert_eq!(power_state_from_code(99), PowerState::Unknown);
    }

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
    fn domain_list_and_states() {
        let list = "ae930b2b-f070-4630-aa11-bf9f679608d3 my vm\n\
                    a3ecdbd9-2840-4d65-acad-e59bbf2c5fb9 lbtest\n\n";
        assert_eq!(
            parse_domain_list(list),
            vec![
                (
                    "ae930b2b-f070-4630-aa11-bf9f679608d3".into(),
                    "my vm".into()
                ),
                (
                    "a3ecdbd9-2840-4d65-acad-e59bbf2c5fb9".into(),
                    "lbtest".into()
                ),
            ]
        );
        let stats = "Domain: 'my vm'\n  state.state=1\n  state.reason=1\n\n\
                     Domain: 'lbtest'\n  state.state=5\n  state.reason=2\n";
        let states = parse_domstats_states(stats);
        assert_eq!(states.get("my vm"), Some(&PowerState::Running));
        assert_eq!(states.get("lbtest"), Some(&PowerState::Stopped));
    }

    #[test]
    fn blkinfo_table_skips_empty_drives() {
        let table = " Target   Capacity   Allocation   Physical\n\
                     --------------------------------------------\n \
                     vda      67108864   204800       196616\n \
                     hdc      -          -            -\n";
        let sizes = parse_blkinfo_table(table);
        assert_eq!(sizes.len(), 1);
        assert_eq!(sizes.get("vda"), Some(&67_108_864));
    }

    #[test]
    fn host_figures() {
        let stats = "total  :             24684084 KiB\nfree   :             23622548 KiB\n\
                     buffers:                23220 KiB\ncached :               769008 KiB\n";
        assert_eq!(
            memory_from_nodememstats(stats),
            Some((24_684_084 * KIB, (23_622_548 + 23_220 + 769_008) * KIB))
        );
        let meminfo = "MemTotal:       24684084 kB\nMemFree:        23437800 kB\nMemAvailable:   24212536 kB\n";
        assert_eq!(
            memory_from_meminfo(meminfo),
            Some((24_684_084 * KIB, 24_212_536 * KIB))
        );
        let version = "Compiled against library: libvirt 9.0.0\nUsing library: libvirt 9.0.0\n\
                       Using API: QEMU 9.0.0\nRunning hypervisor: QEMU 7.2.22\nRunning against daemon: 9.0.0\n";
        assert_eq!(version_summary(version), "QEMU 7.2.22, libvirt 9.0.0");
        let nodeinfo = "CPU model:           x86_64\nCPU(s):              2\n";
        assert_eq!(
            parse_colon_fields(nodeinfo)
                .get("CPU(s)")
                .map(String::as_str),
            Some("2")
        );
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

    #[test]
    fn bounded_run_kills_a_hung_command() {
        let started = Instant::now();
        let mut cmd = Command::new("sleep");
        cmd.arg("5");
        let err = run_bounded(cmd, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(4));
        let out = run_bounded(Command::new("true"), Duration::from_secs(5)).unwrap();
        assert!(out.status.success());
    }
}

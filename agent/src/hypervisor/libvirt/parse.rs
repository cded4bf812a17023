//! Pure parsers over what `virsh` prints and over domain XML: no I/O, so each
//! is tested on captured output.

use std::collections::HashMap;

use lifeboat_proto::metrics::MAX_DEVICES;
use lifeboat_proto::{NicInfo, PowerState};
use roxmltree::{Document, Node};

use super::is_uuid;
use crate::hypervisor::HypervisorError;
use crate::metrics::counters::{DiskCounters, NicCounters, VmCounters};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Maps a state as `virsh domstate` prints it. "in shutdown" means the guest
/// is going down but QEMU still runs and holds its disks, so it is Running:
/// calling it Stopped could let failover start a second copy.
pub(super) fn power_state(libvirt_state: &str) -> PowerState {
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

// ---- Pure parsers over virsh output -------------------------------------

/// `virsh list --all --uuid --name`: "UUID NAME" per line (names may hold spaces).
pub(super) fn parse_domain_list(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|line| line.trim().split_once(' '))
        .filter(|(uuid, _)| is_uuid(uuid))
        .map(|(uuid, name)| (uuid.to_string(), name.trim().to_string()))
        .collect()
}

/// `virsh domstats --state`: blocks of "Domain: 'NAME'" then "state.state=N".
pub(super) fn parse_domstats_states(out: &str) -> HashMap<String, PowerState> {
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
pub(super) fn parse_blkinfo_table(out: &str) -> HashMap<String, u64> {
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
pub(super) fn parse_colon_fields(out: &str) -> HashMap<String, String> {
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
pub(super) fn memory_from_nodememstats(out: &str) -> Option<(u64, u64)> {
    let fields = parse_colon_fields(out);
    let figure = |key: &str| fields.get(key).and_then(|v| kib_figure(v));
    let total = figure("total")?;
    let free = figure("free")? + figure("buffers").unwrap_or(0) + figure("cached").unwrap_or(0);
    Some((total, free.min(total)))
}

/// "QEMU 7.2.22, libvirt 9.0.0" from `virsh version --daemon`.
pub(super) fn version_summary(out: &str) -> String {
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
pub(super) struct DomainFacts {
    pub(super) vcpus: u32,
    pub(super) memory_mib: u64,
    pub(super) disks: Vec<DiskSpec>,
    pub(super) nics: Vec<NicInfo>,
}

#[derive(Debug, PartialEq)]
pub(super) struct DiskSpec {
    pub(super) target: String,
    pub(super) device: String,
    pub(super) source: DiskSource,
    pub(super) format: Option<String>,
}

#[derive(Debug, PartialEq)]
pub(super) enum DiskSource {
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

pub(super) fn parse_domain(xml: &str) -> Result<DomainFacts, HypervisorError> {
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

/// `virsh domstats --cpu-total --balloon --vcpu --block --interface`: each
/// domain's cumulative counters, by domain name (the caller maps names to
/// UUIDs). Unknown or unparsable lines are skipped; device counts are capped.
pub(super) fn parse_domstats_counters(out: &str) -> Vec<(String, VmCounters)> {
    let mut domains: Vec<(String, HashMap<&str, &str>)> = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if let Some(quoted) = line.strip_prefix("Domain: ") {
            if let Some(name) = quoted.strip_prefix('\'').and_then(|q| q.strip_suffix('\'')) {
                domains.push((name.to_string(), HashMap::new()));
            }
        } else if let (Some((_, fields)), Some((k, v))) = (domains.last_mut(), line.split_once('='))
        {
            fields.insert(k, v);
        }
    }
    domains
        .into_iter()
        .map(|(name, f)| (name, counters_from_fields(&f)))
        .collect()
}

fn counters_from_fields(f: &HashMap<&str, &str>) -> VmCounters {
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    let kib = |k: &str| num(k).map(|v| v.saturating_mul(1024));
    let devices = |prefix: &str| {
        num(&format!("{prefix}.count"))
            .unwrap_or(0)
            .min(MAX_DEVICES as u64)
    };
    let disks = (0..devices("block"))
        .filter_map(|i| {
            let key = |what: &str| format!("block.{i}.{what}");
            Some(DiskCounters {
                name: f.get(key("name").as_str())?.to_string(),
                read_bytes: num(&key("rd.bytes")).unwrap_or(0),
                write_bytes: num(&key("wr.bytes")).unwrap_or(0),
                read_ops: num(&key("rd.reqs")).unwrap_or(0),
                write_ops: num(&key("wr.reqs")).unwrap_or(0),
            })
        })
        .collect();
    let nics = (0..devices("net"))
        .filter_map(|i| {
            let key = |what: &str| format!("net.{i}.{what}");
            Some(NicCounters {
                name: f.get(key("name").as_str())?.to_string(),
                rx_bytes: num(&key("rx.bytes")).unwrap_or(0),
                tx_bytes: num(&key("tx.bytes")).unwrap_or(0),
            })
        })
        .collect();
    // The guest's own view when its balloon driver reports statistics,
    // else what QEMU holds for it.
    let guest_used = match (kib("balloon.available"), kib("balloon.unused")) {
        (Some(a), Some(u)) if a >= u => Some(a - u),
        _ => None,
    };
    let vcpus = num("vcpu.current").map_or(0, |v| v.min(MAX_DEVICES as u64) as u32);
    // The vCPUs' own time: `cpu.time` adds QEMU's other threads, which
    // would put a busy guest above 100 % of its vCPUs.
    let vcpu_time = (0..vcpus)
        .map(|i| num(&format!("vcpu.{i}.time")))
        .sum::<Option<u64>>()
        .filter(|_| vcpus > 0);
    // QEMU's resident memory includes its own; never more than the guest has.
    let rss = kib("balloon.rss").map(|r| kib("balloon.current").map_or(r, |c| r.min(c)));
    VmCounters {
        uuid: String::new(),
        cpu_time_ns: vcpu_time.or_else(|| num("cpu.time")),
        vcpus,
        memory_used_bytes: guest_used.or(rss),
        balloon_bytes: kib("balloon.current"),
        disks,
        nics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domstats_counters_by_domain() {
        let out = "Domain: 'web-1'\n  state.state=1\n  cpu.time=2500000000\n  \
            balloon.current=1048576\n  balloon.rss=300000\n  vcpu.current=2\n  \
            vcpu.0.time=1000000000\n  vcpu.1.time=500000000\n  \
            block.count=2\n  block.0.name=vda\n  block.0.rd.reqs=10\n  \
            block.0.rd.bytes=40960\n  block.0.wr.reqs=3\n  block.0.wr.bytes=12288\n  \
            block.1.name=sda\n  net.count=1\n  net.0.name=vnet0\n  \
            net.0.rx.bytes=100\n  net.0.tx.bytes=200\n\n\
            Domain: 'db'\n  cpu.time=x\n  balloon.available=2000\n  balloon.unused=500\n  \
            balloon.rss=9999\n  block.count=99999999999\n\n\
            Domain: 'big'\n  balloon.current=100\n  balloon.rss=150\n  cpu.time=7\n";
        let vms = parse_domstats_counters(out);
        assert_eq!(vms.len(), 3);
        let (name, web) = &vms[0];
        assert_eq!(name, "web-1");
        assert_eq!(web.vcpus, 2);
        assert_eq!(
            web.memory_used_bytes,
            Some(300_000 * 1024),
            "rss without guest stats"
        );
        assert_eq!(web.balloon_bytes, Some(1024 * 1024 * 1024));
        assert_eq!(web.disks.len(), 2);
        assert_eq!(web.disks[0].read_bytes, 40960);
        assert_eq!(web.disks[0].write_ops, 3);
        assert_eq!(web.disks[1].read_bytes, 0);
        assert_eq!(web.nics[0].name, "vnet0");
        assert_eq!(web.nics[0].tx_bytes, 200);
        let (_, db) = &vms[1];
        assert_eq!(db.cpu_time_ns, None);
        assert_eq!(
            db.memory_used_bytes,
            Some(1500 * 1024),
            "the guest's own figure wins"
        );
        assert!(
            db.disks.is_empty(),
            "a huge count without names lists nothing"
        );
    }

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
}

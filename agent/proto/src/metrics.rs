//! Performance samples an agent sends: one batch per interval with the
//! host's figures and every running VM's. Counters are already rates here
//! (the agent keeps the previous reading); a rate the agent could not
//! compute — first reading, a counter that went backwards — is `None`, so a
//! restart is a gap, never a spike.

use serde::{Deserialize, Serialize};

/// Shortest sampling interval the controller may ask for.
pub const MIN_INTERVAL_MS: u64 = 1000;
/// Longest sampling interval the controller may ask for.
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
/// The interval agents use until the controller says otherwise.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Most VMs one batch may carry; the controller ignores a larger batch's
/// surplus (no host runs more, and a hostile one cannot make it buffer more).
pub const MAX_VMS_PER_BATCH: usize = 4096;
/// Most disks, NICs or mounts one sample may list.
pub const MAX_DEVICES: usize = 64;

/// One round of samples from a host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricBatch {
    /// The time the rates were measured over, in milliseconds.
    pub interval_ms: u64,
    pub host: HostSample,
    pub vms: Vec<VmSample>,
}

/// The host's own figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    /// Busy share of all CPUs, 0–100.
    pub cpu_percent: Option<f64>,
    /// One-minute load average.
    pub load1: Option<f64>,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub swap_total_bytes: u64,
    /// Sum over physical network interfaces.
    pub net: NetRates,
    /// Sum over physical disks.
    pub disk: DiskRates,
    /// Filesystems holding this host's VM storage (its image directories).
    #[serde(default)]
    pub mounts: Vec<MountSpace>,
}

/// Free space of one filesystem.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MountSpace {
    pub path: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// Bytes and operations per second of a disk, or a sum of disks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskRates {
    pub read_bps: Option<f64>,
    pub write_bps: Option<f64>,
    pub read_iops: Option<f64>,
    pub write_iops: Option<f64>,
}

/// Bytes per second through a NIC, or a sum of NICs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NetRates {
    pub rx_bps: Option<f64>,
    pub tx_bps: Option<f64>,
}

/// One running VM's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmSample {
    pub uuid: String,
    /// Busy share of the VM's vCPUs, 0–100.
    pub cpu_percent: Option<f64>,
    /// Guest memory in use (from the balloon driver's statistics when the
    /// guest reports them, else the memory QEMU holds for it).
    pub memory_used_bytes: Option<u64>,
    /// Memory the balloon currently gives the guest.
    pub balloon_bytes: Option<u64>,
    pub disks: Vec<NamedDisk>,
    pub nics: Vec<NamedNic>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamedDisk {
    /// Guest-visible target, e.g. `vda`.
    pub name: String,
    #[serde(flatten)]
    pub rates: DiskRates,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamedNic {
    /// Host-side interface, e.g. `vnet0`.
    pub name: String,
    #[serde(flatten)]
    pub rates: NetRates,
}

impl DiskRates {
    /// The sum of several disks' rates; a figure none of them had stays `None`.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a DiskRates>) -> DiskRates {
        all.into_iter()
            .fold(DiskRates::default(), |acc, d| DiskRates {
                read_bps: add(acc.read_bps, d.read_bps),
                write_bps: add(acc.write_bps, d.write_bps),
                read_iops: add(acc.read_iops, d.read_iops),
                write_iops: add(acc.write_iops, d.write_iops),
            })
    }
}

impl NetRates {
    /// The sum of several NICs' rates; a figure none of them had stays `None`.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a NetRates>) -> NetRates {
        all.into_iter()
            .fold(NetRates::default(), |acc, n| NetRates {
                rx_bps: add(acc.rx_bps, n.rx_bps),
                tx_bps: add(acc.tx_bps, n.tx_bps),
            })
    }
}

fn add(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Clamps an interval the controller asked for to what agents accept.
pub fn clamp_interval_ms(ms: u64) -> u64 {
    ms.clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_keep_unknown_figures_unknown() {
        let a = DiskRates {
            read_bps: Some(10.0),
            ..DiskRates::default()
        };
        let b = DiskRates {
            read_bps: Some(5.0),
            write_iops: Some(2.0),
            ..DiskRates::default()
        };
        let s = DiskRates::sum([&a, &b]);
        assert_eq!(s.read_bps, Some(15.0));
        assert_eq!(s.write_iops, Some(2.0));
        assert_eq!(s.write_bps, None);
        assert_eq!(NetRates::sum([]), NetRates::default());
    }

    #[test]
    fn a_named_disk_is_flat_on_the_wire() {
        let d = NamedDisk {
            name: "vda".into(),
            rates: DiskRates {
                read_bps: Some(1.0),
                ..DiskRates::default()
            },
        };
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["name"], "vda");
        assert_eq!(json["read_bps"], 1.0);
        assert_eq!(serde_json::from_value::<NamedDisk>(json).unwrap(), d);
    }
}

//! The host's own figures: CPU, load, memory and swap, network and disk
//! space from `sysinfo`; disk throughput and operations from
//! `/proc/diskstats` (which `sysinfo` does not count). Only physical
//! devices count (those with a `device` link in sysfs), so a bridge or a
//! device-mapper volume on top of a disk is not counted twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lifeboat_proto::metrics::{DiskRates, HostSample, MountSpace, NetRates, MAX_DEVICES};
use sysinfo::{Disks, Networks, System};

use super::counters::{disk_rates, net_rates, DiskCounters, NicCounters};

pub struct HostSampler {
    system: System,
    networks: Networks,
    disks: Disks,
    /// Directories whose filesystems' free space is reported.
    storage: Vec<PathBuf>,
    previous: Option<(Instant, Vec<DiskCounters>, Vec<NicCounters>)>,
}

impl HostSampler {
    pub fn new(storage: Vec<PathBuf>) -> HostSampler {
        let mut system = System::new();
        system.refresh_cpu_usage();
        HostSampler {
            system,
            networks: Networks::new_with_refreshed_list(),
            disks: Disks::new_with_refreshed_list(),
            storage,
            previous: None,
        }
    }

    /// One reading; blocking (reads `/proc` and `/sys`).
    pub fn sample(&mut self) -> HostSample {
        let at = Instant::now();
        let first = self.previous.is_none();
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.networks.refresh(true);
        self.disks.refresh(true);

        let nics: Vec<NicCounters> = self
            .networks
            .iter()
            .filter(|(name, _)| is_physical(Path::new("/sys/class/net"), name))
            .map(|(name, data)| NicCounters {
                name: name.clone(),
                rx_bytes: data.total_received(),
                tx_bytes: data.total_transmitted(),
            })
            .collect();
        let disks = std::fs::read_to_string("/proc/diskstats")
            .map(|text| parse_diskstats(&text))
            .unwrap_or_default()
            .into_iter()
            .filter(|d| is_physical(Path::new("/sys/block"), &d.name))
            .collect::<Vec<_>>();

        let (net, disk) = match &self.previous {
            Some((then, prev_disks, prev_nics)) => {
                let seconds = at.duration_since(*then).as_secs_f64();
                let disk = DiskRates::sum(
                    disks
                        .iter()
                        .map(|d| {
                            disk_rates(prev_disks.iter().find(|p| p.name == d.name), d, seconds)
                        })
                        .collect::<Vec<_>>()
                        .iter(),
                );
                let net = NetRates::sum(
                    nics.iter()
                        .map(|n| net_rates(prev_nics.iter().find(|p| p.name == n.name), n, seconds))
                        .collect::<Vec<_>>()
                        .iter(),
                );
                (net, disk)
            }
            None => (NetRates::default(), DiskRates::default()),
        };
        self.previous = Some((at, disks, nics));

        HostSample {
            // sysinfo's first CPU figure has no interval behind it.
            cpu_percent: (!first).then(|| f64::from(self.system.global_cpu_usage())),
            load1: Some(System::load_average().one),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            swap_used_bytes: self.system.used_swap(),
            swap_total_bytes: self.system.total_swap(),
            net,
            disk,
            mounts: self.storage_space(),
        }
    }

    /// The filesystem of each storage directory (the longest mount point
    /// that contains it), once each.
    fn storage_space(&self) -> Vec<MountSpace> {
        let mut seen: HashMap<&Path, MountSpace> = HashMap::new();
        for dir in &self.storage {
            let best = self
                .disks
                .iter()
                .filter(|d| dir.starts_with(d.mount_point()))
                .max_by_key(|d| d.mount_point().as_os_str().len());
            if let Some(d) = best {
                seen.entry(d.mount_point()).or_insert_with(|| MountSpace {
                    path: d.mount_point().display().to_string(),
                    free_bytes: d.available_space(),
                    total_bytes: d.total_space(),
                });
            }
        }
        let mut mounts: Vec<MountSpace> = seen.into_values().collect();
        mounts.sort_by(|a, b| a.path.cmp(&b.path));
        mounts.truncate(MAX_DEVICES);
        mounts
    }
}

/// A device backed by hardware (or a virtual machine's hardware) has a
/// `device` link in sysfs; loop, bridge, tap, dm and md devices do not.
fn is_physical(class_dir: &Path, name: &str) -> bool {
    !name.contains('/') && class_dir.join(name).join("device").exists()
}

/// `/proc/diskstats`: major, minor, name, reads completed, reads merged,
/// sectors read, ms reading, writes completed, merged, sectors written, ...
/// Sectors are 512 bytes whatever the device's block size.
pub fn parse_diskstats(text: &str) -> Vec<DiskCounters> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| f.get(i)?.parse::<u64>().ok();
            Some(DiskCounters {
                name: f.get(2)?.to_string(),
                read_ops: num(3)?,
                read_bytes: num(5)?.saturating_mul(512),
                write_ops: num(7)?,
                write_bytes: num(9)?.saturating_mul(512),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diskstats_lines_become_counters() {
        let text = " 254       0 vda 1200 3 40960 100 300 5 8192 50 0 150 150 0 0 0 0\n\
                    254       1 vda1 10 0 80 1 0 0 0 0 0 1 1\n\
                    garbage line\n";
        let disks = parse_diskstats(text);
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].name, "vda");
        assert_eq!(disks[0].read_ops, 1200);
        assert_eq!(disks[0].read_bytes, 40960 * 512);
        assert_eq!(disks[0].write_ops, 300);
        assert_eq!(disks[0].write_bytes, 8192 * 512);
    }

    #[test]
    fn a_reading_of_this_machine_matches_proc_meminfo() {
        let mut sampler = HostSampler::new(vec![std::env::temp_dir()]);
        let s = sampler.sample();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib = |key: &str| -> u64 {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        };
        assert_eq!(s.memory_total_bytes, kib("MemTotal:") * 1024);
        let used = (kib("MemTotal:") - kib("MemAvailable:")) * 1024;
        // Memory moves between the two reads; 5 % of the total is plenty.
        let slack = s.memory_total_bytes / 20;
        assert!(
            s.memory_used_bytes.abs_diff(used) < slack,
            "{s:?} vs {used}"
        );
        assert_eq!(s.cpu_percent, None, "the first reading has no interval");
        assert_eq!(s.mounts.len(), 1, "{:?}", s.mounts);
        assert!(s.mounts[0].total_bytes > 0);
        std::thread::sleep(std::time::Duration::from_millis(250));
        let again = sampler.sample();
        assert!(again
            .cpu_percent
            .is_some_and(|c| (0.0..=100.0).contains(&c)));
    }
}

//! Cumulative counters as the platform reports them, and the step that
//! turns two readings into rates. A counter that went backwards (the VM
//! restarted, the device was replaced) or a reading with no predecessor
//! gives no rate: a gap in the graph, never a spike.

use std::collections::HashMap;
use std::time::Instant;

use lifeboat_proto::metrics::{DiskRates, NamedDisk, NamedNic, NetRates, VmSample};

/// One disk's cumulative figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub name: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// One NIC's cumulative figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NicCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One running VM's cumulative figures, read in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmCounters {
    pub uuid: String,
    /// CPU time used by all vCPUs, in nanoseconds.
    pub cpu_time_ns: Option<u64>,
    pub vcpus: u32,
    pub memory_used_bytes: Option<u64>,
    pub balloon_bytes: Option<u64>,
    pub disks: Vec<DiskCounters>,
    pub nics: Vec<NicCounters>,
}

/// Per second, from two readings `seconds` apart; `None` if the counter
/// went backwards or no time passed.
pub fn rate(previous: u64, now: u64, seconds: f64) -> Option<f64> {
    (now >= previous && seconds > 0.0).then(|| (now - previous) as f64 / seconds)
}

pub fn disk_rates(previous: Option<&DiskCounters>, now: &DiskCounters, seconds: f64) -> DiskRates {
    let Some(p) = previous else {
        return DiskRates::default();
    };
    DiskRates {
        read_bps: rate(p.read_bytes, now.read_bytes, seconds),
        write_bps: rate(p.write_bytes, now.write_bytes, seconds),
        read_iops: rate(p.read_ops, now.read_ops, seconds),
        write_iops: rate(p.write_ops, now.write_ops, seconds),
    }
}

pub fn net_rates(previous: Option<&NicCounters>, now: &NicCounters, seconds: f64) -> NetRates {
    let Some(p) = previous else {
        return NetRates::default();
    };
    NetRates {
        rx_bps: rate(p.rx_bytes, now.rx_bytes, seconds),
        tx_bps: rate(p.tx_bytes, now.tx_bytes, seconds),
    }
}

/// The previous reading of every VM, to difference the next one against.
#[derive(Default)]
pub struct VmRates {
    previous: HashMap<String, (VmCounters, Instant)>,
}

impl VmRates {
    /// Samples from this round's readings; VMs no longer running are
    /// forgotten, so one that comes back starts without a rate.
    pub fn sample(&mut self, readings: Vec<VmCounters>, at: Instant) -> Vec<VmSample> {
        let mut next = HashMap::with_capacity(readings.len());
        let mut samples = Vec::with_capacity(readings.len());
        for now in readings {
            let previous = self.previous.get(&now.uuid);
            let seconds = previous.map_or(0.0, |(_, t)| at.duration_since(*t).as_secs_f64());
            let prev = previous.map(|(c, _)| c);
            samples.push(vm_sample(prev, &now, seconds));
            next.insert(now.uuid.clone(), (now, at));
        }
        self.previous = next;
        samples
    }
}

fn vm_sample(prev: Option<&VmCounters>, now: &VmCounters, seconds: f64) -> VmSample {
    let cpu_percent = prev
        .and_then(|p| Some((p.cpu_time_ns?, now.cpu_time_ns?)))
        .filter(|_| now.vcpus > 0)
        .and_then(|(p, n)| rate(p, n, seconds))
        .map(|ns_per_s| (ns_per_s / 1e9 / f64::from(now.vcpus) * 100.0).min(100.0));
    let disks = now
        .disks
        .iter()
        .map(|d| NamedDisk {
            name: d.name.clone(),
            rates: disk_rates(
                prev.and_then(|p| p.disks.iter().find(|x| x.name == d.name)),
                d,
                seconds,
            ),
        })
        .collect();
    let nics = now
        .nics
        .iter()
        .map(|n| NamedNic {
            name: n.name.clone(),
            rates: net_rates(
                prev.and_then(|p| p.nics.iter().find(|x| x.name == n.name)),
                n,
                seconds,
            ),
        })
        .collect();
    VmSample {
        uuid: now.uuid.clone(),
        cpu_percent,
        memory_used_bytes: now.memory_used_bytes,
        balloon_bytes: now.balloon_bytes,
        disks,
        nics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn vm(cpu_s: u64, read: u64) -> VmCounters {
        VmCounters {
            uuid: "u1".into(),
            cpu_time_ns: Some(cpu_s * 1_000_000_000),
            vcpus: 2,
            disks: vec![DiskCounters {
                name: "vda".into(),
                read_bytes: read,
                read_ops: read / 4096,
                ..DiskCounters::default()
            }],
            ..VmCounters::default()
        }
    }

    #[test]
    fn two_readings_make_rates_and_a_reset_makes_a_gap() {
        let mut rates = VmRates::default();
        let t0 = Instant::now();
        let first = rates.sample(vec![vm(100, 0)], t0);
        assert_eq!(first[0].cpu_percent, None, "no predecessor, no rate");
        assert_eq!(first[0].disks[0].rates.read_bps, None);

        // 10 s later: 10 CPU-seconds on 2 vCPUs is 50 %, 40 MB read is 4 MB/s.
        let t1 = t0 + Duration::from_secs(10);
        let second = rates.sample(vec![vm(110, 40_960_000)], t1);
        assert_eq!(second[0].cpu_percent, Some(50.0));
        assert_eq!(second[0].disks[0].rates.read_bps, Some(4_096_000.0));
        assert_eq!(second[0].disks[0].rates.read_iops, Some(1000.0));

        // The VM restarted: its counters start again from small values.
        let t2 = t1 + Duration::from_secs(10);
        let third = rates.sample(vec![vm(1, 4096)], t2);
        assert_eq!(third[0].cpu_percent, None, "a reset is not a spike");
        assert_eq!(third[0].disks[0].rates.read_bps, None);

        // It stopped, then came back: it starts without a rate again.
        rates.sample(vec![], t2 + Duration::from_secs(10));
        let back = rates.sample(vec![vm(5, 8192)], t2 + Duration::from_secs(20));
        assert_eq!(back[0].cpu_percent, None);
    }

    #[test]
    fn cpu_share_never_exceeds_all_vcpus() {
        let mut rates = VmRates::default();
        let t0 = Instant::now();
        rates.sample(vec![vm(0, 0)], t0);
        // Scheduling jitter can report a little more than the wall time.
        let s = rates.sample(vec![vm(21, 0)], t0 + Duration::from_secs(10));
        assert_eq!(s[0].cpu_percent, Some(100.0));
    }

    #[test]
    fn rate_needs_time_and_a_growing_counter() {
        assert_eq!(rate(10, 20, 2.0), Some(5.0));
        assert_eq!(rate(20, 10, 2.0), None);
        assert_eq!(rate(10, 20, 0.0), None);
    }
}

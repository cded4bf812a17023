//! Charge-back: what a VM used in a period, from its archived rows and its
//! facts, and what that costs at given rates. Pure: the caller reads the
//! rows and the facts.

use serde::{Deserialize, Serialize};

use super::archive::ARCHIVES;
use super::catalog::vm;
use super::SeriesSet;

/// Hours in a billing month (the FinOps convention: 8,760 / 12).
pub const HOURS_PER_MONTH: f64 = 730.0;

/// Price of one unit of each measure (in the operator's currency).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub vcpu_hour: f64,
    pub memory_gib_hour: f64,
    pub cpu_core_hour: f64,
    pub disk_gb_month: f64,
    pub backup_gb_month: f64,
}

/// A VM's size as configured, and its share of backup storage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VmFacts {
    pub vcpus: u32,
    pub memory_bytes: u64,
    /// Provisioned size of its disks.
    pub disk_bytes: u64,
    /// Its deduplicated share of the datastores' chunks.
    pub backup_bytes: f64,
}

/// What a VM used over one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Hours it was running (it reported figures).
    pub running_hours: f64,
    pub vcpu_hours: f64,
    pub memory_gib_hours: f64,
    /// CPU it actually used, in core-hours.
    pub cpu_core_hours: f64,
    pub disk_gb_months: f64,
    pub backup_gb_months: f64,
}

impl Usage {
    pub fn cost(&self, r: &Rates) -> f64 {
        self.vcpu_hours * r.vcpu_hour
            + self.memory_gib_hours * r.memory_gib_hour
            + self.cpu_core_hours * r.cpu_core_hour
            + self.disk_gb_months * r.disk_gb_month
            + self.backup_gb_months * r.backup_gb_month
    }
}

/// The archive fine enough, and still holding `start`, at time `now`.
pub fn archive_for(start: u64, now: u64) -> usize {
    (0..ARCHIVES.len())
        .find(|&a| start + ARCHIVES[a].step * ARCHIVES[a].min_rows >= now)
        .unwrap_or(ARCHIVES.len() - 1)
}

/// Usage over `[start, end)` from a VM's rows (`set`, any archive, covering
/// the period) and its facts. A row counts for the part of it inside the
/// period; a VM is running where its row has a CPU figure.
pub fn usage(set: &SeriesSet, start: u64, end: u64, facts: &VmFacts) -> Usage {
    let mut u = Usage::default();
    for (i, row) in set.rows.iter().enumerate() {
        let t = set.start + i as u64 * set.step;
        let overlap = (t + set.step).min(end).saturating_sub(t.max(start));
        let Some((cpu, _)) = row.get(vm::CPU).copied().flatten() else {
            continue;
        };
        if overlap == 0 {
            continue;
        }
        let hours = overlap as f64 / 3600.0;
        u.running_hours += hours;
        u.cpu_core_hours += cpu / 100.0 * f64::from(facts.vcpus) * hours;
    }
    u.vcpu_hours = u.running_hours * f64::from(facts.vcpus);
    u.memory_gib_hours = u.running_hours * facts.memory_bytes as f64 / f64::from(1u32 << 30);
    let months = end.saturating_sub(start) as f64 / 3600.0 / HOURS_PER_MONTH;
    u.disk_gb_months = facts.disk_bytes as f64 / 1e9 * months;
    u.backup_gb_months = facts.backup_bytes / 1e9 * months;
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::catalog::Kind;

    /// Half-hour rows over one day: running 50 % for the first 6 hours,
    /// then 100 % for 2 hours, then stopped.
    fn day() -> SeriesSet {
        let rows = (0..48)
            .map(|i| {
                let cpu = match i {
                    0..12 => Some(50.0),
                    12..16 => Some(100.0),
                    _ => None,
                };
                let mut row = vec![None; Kind::Vm.archived()];
                row[vm::CPU] = cpu.map(|c| (c, c));
                row
            })
            .collect();
        SeriesSet {
            kind: Kind::Vm,
            step: 1800,
            start: 86_400 * 20_000,
            rows,
        }
    }

    #[test]
    fn a_day_of_use_by_hand() {
        let set = day();
        let facts = VmFacts {
            vcpus: 2,
            memory_bytes: 4 << 30,
            disk_bytes: 100_000_000_000,
            backup_bytes: 7_300_000_000.0,
        };
        let u = usage(&set, set.start, set.start + 86_400, &facts);
        // Running 8 h; 2 vCPUs; 4 GiB.
        assert_eq!(u.running_hours, 8.0);
        assert_eq!(u.vcpu_hours, 16.0);
        assert_eq!(u.memory_gib_hours, 32.0);
        // 6 h × 50 % × 2 + 2 h × 100 % × 2 = 10 core-hours.
        assert_eq!(u.cpu_core_hours, 10.0);
        // 100 GB for 24 of 730 hours; 7.3 GB of backups likewise.
        assert!((u.disk_gb_months - 100.0 * 24.0 / 730.0).abs() < 1e-9);
        assert!((u.backup_gb_months - 0.24).abs() < 1e-9);
        let rates = Rates {
            vcpu_hour: 0.01,
            memory_gib_hour: 0.005,
            cpu_core_hour: 0.02,
            disk_gb_month: 0.1,
            backup_gb_month: 0.05,
        };
        let expected =
            16.0 * 0.01 + 32.0 * 0.005 + 10.0 * 0.02 + (100.0 * 24.0 / 730.0) * 0.1 + 0.24 * 0.05;
        assert!((u.cost(&rates) - expected).abs() < 1e-9);
    }

    #[test]
    fn rows_count_only_for_their_part_inside_the_period() {
        let set = day();
        // From 5:45 to 6:15: a quarter hour of 50 %, a quarter of 100 %.
        let u = usage(
            &set,
            set.start + 20_700,
            set.start + 22_500,
            &VmFacts {
                vcpus: 1,
                ..VmFacts::default()
            },
        );
        assert_eq!(u.running_hours, 0.5);
        assert_eq!(u.cpu_core_hours, 0.25 * 0.5 + 0.25 * 1.0);
    }

    #[test]
    fn the_finest_archive_that_still_holds_the_start() {
        let now = 1_800_000_000;
        assert_eq!(archive_for(now - 3600, now), 0);
        assert_eq!(archive_for(now - 10 * 86_400, now), 1);
        assert_eq!(archive_for(now - 200 * 86_400, now), 2);
        assert_eq!(archive_for(now - 2000 * 86_400, now), 3);
    }
}

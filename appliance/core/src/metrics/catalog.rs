//! What is measured: the metrics of a host and of a VM, their units and
//! which of them are archived (the rest are shown live only).

use serde::Serialize;

/// Whose figures a series holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Host,
    Vm,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::Vm => "vm",
        }
    }

    /// Every metric of this kind, archived ones first in archive order.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Kind::Host => &HOST,
            Kind::Vm => &VM,
        }
    }

    /// How many of [`Kind::metrics`] have archives.
    pub fn archived(self) -> usize {
        self.metrics().iter().filter(|m| m.archived).count()
    }

    pub fn metric(self, key: &str) -> Option<(usize, &'static Metric)> {
        self.metrics()
            .iter()
            .enumerate()
            .find(|(_, m)| m.key == key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Percent,
    /// A load average (runnable tasks).
    Load,
    Bytes,
    BytesPerSecond,
    PerSecond,
}

impl Unit {
    /// Stored values are integers in this many per natural unit (bytes as
    /// KiB), chosen so the 12-bit precision of the encoding is enough.
    pub fn storage_scale(self) -> f64 {
        match self {
            Unit::Percent | Unit::Load => 100.0,
            Unit::Bytes => 1.0 / 1024.0,
            Unit::BytesPerSecond => 1.0,
            Unit::PerSecond => 10.0,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Percent => "%",
            Unit::Load => "",
            Unit::Bytes => "B",
            Unit::BytesPerSecond => "B/s",
            Unit::PerSecond => "/s",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: Unit,
    #[serde(skip)]
    pub archived: bool,
}

const fn m(key: &'static str, label: &'static str, unit: Unit, archived: bool) -> Metric {
    Metric {
        key,
        label,
        unit,
        archived,
    }
}

/// Indices of the host metrics the controller reads by name.
pub mod host {
    pub const CPU: usize = 0;
    pub const MEMORY_USED: usize = 2;
    pub const MEMORY_TOTAL: usize = 11;
}

/// Indices of the VM metrics the controller reads by name.
pub mod vm {
    pub const CPU: usize = 0;
    pub const MEMORY_USED: usize = 1;
}

static HOST: [Metric; 12] = [
    m("cpu", "CPU", Unit::Percent, true),
    m("load", "Load (1 min)", Unit::Load, true),
    m("memory_used", "Memory used", Unit::Bytes, true),
    m("swap_used", "Swap used", Unit::Bytes, true),
    m("net_rx", "Network received", Unit::BytesPerSecond, true),
    m("net_tx", "Network sent", Unit::BytesPerSecond, true),
    m("disk_read", "Disk read", Unit::BytesPerSecond, true),
    m("disk_write", "Disk written", Unit::BytesPerSecond, true),
    m("disk_read_iops", "Disk reads", Unit::PerSecond, true),
    m("disk_write_iops", "Disk writes", Unit::PerSecond, true),
    m("storage_free", "VM storage free", Unit::Bytes, true),
    // A fact rather than a measurement: shown live, not archived.
    m("memory_total", "Memory", Unit::Bytes, false),
];

static VM: [Metric; 9] = [
    m("cpu", "CPU", Unit::Percent, true),
    m("memory_used", "Memory used", Unit::Bytes, true),
    m("disk_read", "Disk read", Unit::BytesPerSecond, true),
    m("disk_write", "Disk written", Unit::BytesPerSecond, true),
    m("disk_read_iops", "Disk reads", Unit::PerSecond, true),
    m("disk_write_iops", "Disk writes", Unit::PerSecond, true),
    m("net_rx", "Network received", Unit::BytesPerSecond, true),
    m("net_tx", "Network sent", Unit::BytesPerSecond, true),
    // Changes only when someone resizes the balloon: shown live.
    m("balloon", "Balloon", Unit::Bytes, false),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_metrics_come_first_and_indices_match_keys() {
        for kind in [Kind::Host, Kind::Vm] {
            let n = kind.archived();
            assert!(kind.metrics()[..n].iter().all(|m| m.archived));
            assert!(kind.metrics()[n..].iter().all(|m| !m.archived));
        }
        assert_eq!(Kind::Host.metric("cpu").unwrap().0, host::CPU);
        assert_eq!(
            Kind::Host.metric("memory_used").unwrap().0,
            host::MEMORY_USED
        );
        assert_eq!(
            Kind::Host.metric("memory_total").unwrap().0,
            host::MEMORY_TOTAL
        );
        assert_eq!(Kind::Vm.metric("cpu").unwrap().0, vm::CPU);
        assert_eq!(Kind::Vm.metric("memory_used").unwrap().0, vm::MEMORY_USED);
    }
}

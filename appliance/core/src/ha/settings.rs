//! HA settings: for the cluster, per host and per VM. Plain data with its
//! validation; stored by `ha::HaBook`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Cluster-wide detection and fencing timing, and what admission control
/// plans for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterHa {
    /// Agent heartbeat and controller probe interval.
    pub heartbeat_interval_ms: u64,
    /// Consecutive misses before a host is suspect.
    pub misses: u32,
    /// An agent cut off from the controller this long stops its HA VMs.
    pub fence_timeout_ms: u64,
    /// Added to the fence timeout before restarting a silent host's VMs.
    pub fence_margin_ms: u64,
    /// Admission control: warn when the loss of this many hosts could not
    /// be absorbed.
    pub tolerated_host_failures: u32,
    /// Shared storages by name, with where the controller sees each (for
    /// the storage heartbeat). Hosts say where they mount them.
    pub shared_storages: BTreeMap<String, String>,
    /// `IP:PORT` an agent tries to tell isolation from a controller outage;
    /// empty: each host's default gateway.
    pub isolation_addresses: Vec<String>,
}

impl Default for ClusterHa {
    fn default() -> Self {
        ClusterHa {
            heartbeat_interval_ms: 1000,
            misses: 3,
            fence_timeout_ms: 5000,
            fence_margin_ms: 1000,
            tolerated_host_failures: 1,
            shared_storages: BTreeMap::new(),
            isolation_addresses: Vec::new(),
        }
    }
}

impl ClusterHa {
    pub fn validate(&self) -> Result<(), String> {
        // Sessions idle for 10 s are dropped, and agents drop a link silent
        // for three intervals: longer intervals would cut healthy links.
        if !(200..=3000).contains(&self.heartbeat_interval_ms) {
            return Err("heartbeat_interval_ms must be between 200 and 3000".into());
        }
        if !(1..=100).contains(&self.misses) {
            return Err("misses must be between 1 and 100".into());
        }
        let detection = self.heartbeat_interval_ms * u64::from(self.misses);
        if self.fence_timeout_ms < detection || self.fence_timeout_ms > 600_000 {
            return Err(format!(
                "fence_timeout_ms must be at least heartbeat_interval_ms × misses ({detection}) and at most 600000"
            ));
        }
        if self.fence_margin_ms < 500 || self.fence_margin_ms > 600_000 {
            return Err("fence_margin_ms must be between 500 and 600000".into());
        }
        for (name, path) in &self.shared_storages {
            check_storage_name(name)
                .and_then(|()| check_absolute(path, "shared storage path"))
                .map_err(|e| format!("shared_storages: {e}"))?;
        }
        for address in &self.isolation_addresses {
            address
                .parse::<std::net::SocketAddr>()
                .map_err(|_| format!("isolation_addresses: {address:?} must be IP:PORT"))?;
        }
        Ok(())
    }
}

/// How the controller tests a host's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostProbe {
    /// ICMP echo from a raw socket.
    Icmp,
    /// A TCP connect; a refusal counts as an answer.
    Tcp { port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostHa {
    pub probe: HostProbe,
    /// Where to probe; empty: the address the agent connects from.
    pub address: String,
    /// In requests only: the out-of-band fence, run with `sh -c` (e.g.
    /// `ipmitool ... chassis power off`; exit status 0 means the host is
    /// off). Absent: keep the one set; empty: remove it. It holds a BMC
    /// password, so it is stored sealed in `fence_command_sealed`, setting
    /// it needs `administer`, and no answer shows it.
    #[serde(skip_serializing)]
    pub fence_command: Option<String>,
    /// Sealed with the controller's key; left out of every answer.
    pub fence_command_sealed: String,
    /// Where this host mounts each shared storage (name → path).
    pub storage_mounts: BTreeMap<String, String>,
}

/// A host's HA settings as shown: whether a fence command is set, never it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostHaView {
    pub probe: HostProbe,
    pub address: String,
    pub fence_command_set: bool,
    pub storage_mounts: BTreeMap<String, String>,
}

impl From<HostHa> for HostHaView {
    fn from(h: HostHa) -> HostHaView {
        HostHaView {
            probe: h.probe,
            address: h.address,
            fence_command_set: !h.fence_command_sealed.is_empty(),
            storage_mounts: h.storage_mounts,
        }
    }
}

impl Default for HostHa {
    fn default() -> Self {
        HostHa {
            probe: HostProbe::Icmp,
            address: String::new(),
            fence_command: None,
            fence_command_sealed: String::new(),
            storage_mounts: BTreeMap::new(),
        }
    }
}

impl HostHa {
    pub fn validate(&self) -> Result<(), String> {
        if !self.address.is_empty() && self.address.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("address {:?} must be an IP address", self.address));
        }
        let command = self.fence_command.as_deref().unwrap_or_default();
        if command.len() > 4096 || command.contains('\0') {
            return Err("fence_command is too long or holds a NUL byte".into());
        }
        for (name, path) in &self.storage_mounts {
            check_storage_name(name)
                .and_then(|()| check_absolute(path, "storage mount"))
                .map_err(|e| format!("storage_mounts: {e}"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    Medium,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMethod {
    /// Start it elsewhere from shared storage.
    Restart,
    /// Restore the latest backup on another host (no shared storage).
    Restore,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmHa {
    pub enabled: bool,
    pub priority: Priority,
    /// VMs sharing a group never run on one host after a failover.
    pub anti_affinity_group: String,
    pub method: FailoverMethod,
    /// The guest's address, pinged before its host is declared dead.
    pub probe_address: String,
}

impl Default for VmHa {
    fn default() -> Self {
        VmHa {
            enabled: false,
            priority: Priority::Medium,
            anti_affinity_group: String::new(),
            method: FailoverMethod::Restart,
            probe_address: String::new(),
        }
    }
}

impl VmHa {
    pub fn validate(&self) -> Result<(), String> {
        if self.anti_affinity_group.len() > 64
            || self.anti_affinity_group.chars().any(char::is_control)
        {
            return Err("anti_affinity_group: at most 64 printable characters".into());
        }
        if !self.probe_address.is_empty() && self.probe_address.parse::<std::net::IpAddr>().is_err()
        {
            return Err(format!(
                "probe_address {:?} must be an IP address",
                self.probe_address
            ));
        }
        Ok(())
    }
}

fn check_storage_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "storage name {name:?}: 1-64 letters, digits, '-', '_' or '.'"
        ))
    }
}

fn check_absolute(path: &str, what: &str) -> Result<(), String> {
    let p = std::path::Path::new(path);
    if p.is_absolute() && !p.components().any(|c| c == std::path::Component::ParentDir) {
        Ok(())
    } else {
        Err(format!(
            "{what} {path:?} must be an absolute path without '..'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        ClusterHa::default().validate().unwrap();
        HostHa::default().validate().unwrap();
        VmHa::default().validate().unwrap();
        let short_fence = ClusterHa {
            fence_timeout_ms: 1000,
            ..ClusterHa::default()
        };
        assert!(short_fence
            .validate()
            .unwrap_err()
            .contains("fence_timeout_ms"));
        let bad_mount = HostHa {
            storage_mounts: [("san".to_string(), "relative/dir".to_string())].into(),
            ..HostHa::default()
        };
        assert!(bad_mount.validate().unwrap_err().contains("absolute"));
        let bad_vm = VmHa {
            probe_address: "not-an-ip".into(),
            ..VmHa::default()
        };
        assert!(bad_vm.validate().is_err());
        let unknown = serde_json::from_str::<VmHa>(r#"{"enabld": true}"#);
        assert!(
            unknown.is_err(),
            "a misspelt field is an error, not ignored"
        );
    }
}

//! High-availability messages: what the controller tells an agent to
//! fence, and the storage heartbeat file through which an agent proves it
//! lives (and reports a self-fence) while it is cut off from the controller.

use serde::{Deserialize, Serialize};

/// What the controller tells an agent about high availability: which VMs to
/// hard-stop if it loses the controller, and how to tell isolation apart from
/// a controller outage. Sent at connect and whenever it changes; the agent
/// keeps the last one on disk so it still fences after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaAgentConfig {
    /// How often to send heartbeats (0: [`crate::HEARTBEAT_INTERVAL_MS`]).
    #[serde(default)]
    pub heartbeat_interval_ms: u64,
    /// Self-fence once the controller has been silent this long.
    pub fence_timeout_ms: u64,
    /// UUIDs of this host's HA-protected VMs.
    pub protected: Vec<String>,
    /// Directories on shared storage (as this host mounts them) where the
    /// agent writes its storage heartbeat every second.
    pub heartbeat_dirs: Vec<String>,
    /// `IP:PORT` addresses the agent tries when the controller is silent: a
    /// connection or a refusal proves the network works. Empty: the host's
    /// default gateway.
    pub isolation_addresses: Vec<String>,
}

/// The file an agent rewrites every second in each heartbeat directory,
/// `<dir>/<host id>.json`: proof of life through the storage path, and the
/// record of a self-fence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageHeartbeat {
    pub host_id: String,
    /// Increases with every write; the controller watches it change.
    pub seq: u64,
    /// Milliseconds since the agent last heard the controller.
    pub controller_silent_ms: u64,
    /// Set once the agent has hard-stopped its HA VMs in this outage.
    #[serde(default)]
    pub fenced: Option<FenceRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// The outage this fence belongs to: the agent's count of lost links.
    pub outage: u64,
    /// UUIDs it stopped (running or paused ones; stopped VMs need nothing).
    pub stopped: Vec<String>,
    /// Ones it could not stop, with the reason.
    #[serde(default)]
    pub failed: Vec<String>,
}

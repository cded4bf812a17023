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
    /// The key (hex) this host signs its storage heartbeat with; the
    /// controller trusts no heartbeat without its signature.
    #[serde(default)]
    pub storage_key: String,
    /// Changes with every connection; a heartbeat carries the one its agent
    /// got last, so one written in an earlier outage cannot be replayed.
    #[serde(default)]
    pub epoch: u64,
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
    /// [`HaAgentConfig::epoch`] of the agent's last connection.
    #[serde(default)]
    pub epoch: u64,
    /// HMAC-SHA256 (hex) of the heartbeat with this field empty, under the
    /// host's [`HaAgentConfig::storage_key`]: others who can write the
    /// shared storage cannot forge it.
    #[serde(default)]
    pub mac: String,
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl StorageHeartbeat {
    fn mac_over(&self, key: &[u8]) -> HmacSha256 {
        use hmac::Mac;
        let unsigned = StorageHeartbeat {
            mac: String::new(),
            ..self.clone()
        };
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&serde_json::to_vec(&unsigned).expect("a heartbeat serializes"));
        mac
    }

    /// Signs the heartbeat with `key`.
    pub fn sign(&mut self, key: &[u8]) {
        use hmac::Mac;
        self.mac = hex::encode(self.mac_over(key).finalize().into_bytes());
    }

    /// Whether it carries a valid signature under `key` (in constant time).
    pub fn verify(&self, key: &[u8]) -> bool {
        use hmac::Mac;
        hex::decode(&self.mac).is_ok_and(|tag| self.mac_over(key).verify_slice(&tag).is_ok())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_holder_signs_a_heartbeat_and_no_field_can_change() {
        let mut beat = StorageHeartbeat {
            host_id: "h1".into(),
            seq: 7,
            epoch: 42,
            ..StorageHeartbeat::default()
        };
        beat.sign(b"host key");
        assert!(beat.verify(b"host key"));
        assert!(!beat.verify(b"another key"));
        let mut forged = beat.clone();
        forged.fenced = Some(FenceRecord::default());
        assert!(!forged.verify(b"host key"), "a fence claim added later");
        let mut replayed = beat.clone();
        replayed.epoch = 43;
        assert!(!replayed.verify(b"host key"));
        let unsigned = StorageHeartbeat {
            mac: String::new(),
            ..beat
        };
        assert!(!unsigned.verify(b"host key"));
    }
}

//! The agent ⇄ controller wire protocol: message types, framing and version.
//!
//! Every frame is a 4-byte big-endian length followed by one JSON message. Both
//! sides refuse frames larger than [`MAX_FRAME_BYTES`] before allocating, so a
//! hostile peer cannot make the other side buffer unbounded data.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped on any incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 1;

/// The TLS server name the agent expects on the controller's agent port. The
/// controller CA is private and pinned by fingerprint, so a fixed name is safe
/// and lets agents dial the controller by any address (NAT, IP, DNS name).
pub const CONTROLLER_SERVER_NAME: &str = "lifeboat-controller";

/// Largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// How often a connected agent sends a heartbeat.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    Running,
    Paused,
    Stopped,
    Unknown,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::Running => "running",
            PowerState::Paused => "paused",
            PowerState::Stopped => "stopped",
            PowerState::Unknown => "unknown",
        }
    }

    pub const ALL: [PowerState; 4] = [
        PowerState::Running,
        PowerState::Paused,
        PowerState::Stopped,
        PowerState::Unknown,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    Start,
    Shutdown,
    Poweroff,
    Pause,
    Resume,
    Reboot,
}

impl PowerAction {
    pub const ALL: [PowerAction; 6] = [
        PowerAction::Start,
        PowerAction::Shutdown,
        PowerAction::Poweroff,
        PowerAction::Pause,
        PowerAction::Resume,
        PowerAction::Reboot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Start => "start",
            PowerAction::Shutdown => "shutdown",
            PowerAction::Poweroff => "poweroff",
            PowerAction::Pause => "pause",
            PowerAction::Resume => "resume",
            PowerAction::Reboot => "reboot",
        }
    }

    pub fn parse(s: &str) -> Option<PowerAction> {
        PowerAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One virtual disk as the hypervisor describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Guest-visible target, e.g. `vda`.
    pub target: String,
    /// `disk`, `cdrom`, ...
    pub device: String,
    /// Path (or volume name) of the backing file, if any.
    pub source: Option<String>,
    /// Image format, e.g. `qcow2` or `raw`.
    pub format: Option<String>,
    /// Virtual size in bytes, when the hypervisor could tell.
    pub capacity_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    pub mac: String,
    /// Libvirt network or bridge the NIC is attached to.
    pub network: Option<String>,
    pub model: Option<String>,
}

/// Everything the agent knows about one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub uuid: String,
    pub name: String,
    pub power_state: PowerState,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskInfo>,
    pub nics: Vec<NicInfo>,
    /// The hypervisor's own configuration (libvirt domain XML).
    pub config: String,
}

/// Facts about the host that change slowly or feed placement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    /// Hypervisor driver: `libvirt`, `sim`, ...
    pub driver: String,
    pub hypervisor_version: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
}

/// A command the controller asks an agent to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    Power {
        vm: String,
        action: PowerAction,
        /// For `shutdown`: seconds to wait for the guest before powering off.
        timeout_secs: u64,
    },
}

/// Messages sent by the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First message of an unauthenticated connection: trade a one-time token
    /// and a certificate signing request for a client certificate.
    Enroll {
        token: String,
        csr_pem: String,
        name: String,
        hostname: String,
    },
    /// First message of a mutually authenticated connection.
    Hello {
        protocol_version: u32,
        agent_version: String,
        facts: HostFacts,
    },
    Heartbeat {
        seq: u64,
        memory_free_bytes: u64,
    },
    /// The complete list of VMs on the host; replaces what the controller had.
    Inventory {
        vms: Vec<VmInfo>,
    },
    /// Answer to [`ControllerMessage::Request`] with the same `id`.
    Reply {
        id: u64,
        ok: bool,
        #[serde(default)]
        error: Option<String>,
    },
}

/// Messages sent by the controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControllerMessage {
    Enrolled {
        host_id: String,
        cert_pem: String,
        ca_pem: String,
    },
    /// The controller refused the connection; the reason is meant for the log.
    Rejected {
        reason: String,
    },
    Welcome {
        host_id: String,
    },
    Request {
        id: u64,
        command: Command,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one message as a frame and flushes it.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame and decodes it. A clean end of stream before the length
/// prefix is [`FrameError::Closed`].
pub async fn read_frame<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let msg = AgentMessage::Heartbeat {
            seq: 7,
            memory_free_bytes: 42,
        };
        write_frame(&mut a, &msg).await.unwrap();
        let got: AgentMessage = read_frame(&mut b).await.unwrap();
        assert!(matches!(got, AgentMessage::Heartbeat { seq: 7, .. }));
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame::<_, AgentMessage>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));
    }

    #[tokio::test]
    async fn garbage_is_malformed_not_a_panic() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&5u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{{{{{").await.unwrap();
        let err = read_frame::<_, AgentMessage>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)));
    }

    #[tokio::test]
    async fn closed_stream_is_closed() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let err = read_frame::<_, AgentMessage>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Closed));
    }

    #[test]
    fn power_action_names_round_trip() {
        for a in PowerAction::ALL {
            assert_eq!(PowerAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(PowerAction::parse("explode"), None);
    }
}

//! The agent ⇄ controller wire protocol: message types, framing and version.
//!
//! Every frame is a 4-byte big-endian length followed by one JSON message. Both
//! sides refuse frames larger than [`MAX_FRAME_BYTES`] before allocating, so a
//! hostile peer cannot make the other side buffer unbounded data.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod buffers;
pub mod chunk;
pub mod digest;
mod ha;
pub mod metrics;

pub use digest::ChunkDigest;
pub use ha::{FenceRecord, HaAgentConfig, StorageHeartbeat};
pub use metrics::MetricBatch;

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

impl VmInfo {
    /// The provisioned size of its disks (CD-ROMs and the like left out),
    /// as far as the hypervisor could tell.
    pub fn provisioned_disk_bytes(&self) -> u64 {
        self.disks
            .iter()
            .filter(|d| d.device == "disk")
            .filter_map(|d| d.capacity_bytes)
            .sum()
    }
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
    /// Directories this host keeps VM disks in (`--image-dir`): restores
    /// write only there, and definitions sent here name disks only there.
    #[serde(default)]
    pub image_dirs: Vec<String>,
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
    Backup(BackupRequest),
    Restore(RestoreRequest),
    /// Define a VM from its cached configuration (failover) and bring it to
    /// `state`: running, paused, or only defined when stopped.
    StartVm(StartVmRequest),
    /// Forget a VM's definition, keeping its disks: a stale copy on a host
    /// that came back after its VMs failed over.
    Undefine {
        uuid: String,
    },
    /// Boot a sandbox VM (restored from a backup just before) and report
    /// whether it came up, then remove it and its files.
    BootCheck(BootCheckRequest),
}

/// Names of boot-verification sandboxes start with this; an agent boots
/// and removes no other VM for a [`Command::BootCheck`].
pub const SANDBOX_PREFIX: &str = "lifeboat-verify-";
/// Where a sandbox's serial console is logged (libvirt's own log
/// directory): the controller names its log there, and the agent removes
/// a sandbox's log only from there.
pub const SANDBOX_SERIAL_LOG_DIR: &str = "/var/log/libvirt/qemu";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootCheckRequest {
    pub uuid: String,
    pub signal: BootSignal,
    /// How long the guest has to show its sign of life.
    pub timeout_secs: u64,
}

/// The sign of life a boot verification waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BootSignal {
    /// The QEMU guest agent answers a ping.
    GuestAgent,
    /// This text appears on the first serial console.
    SerialLine { text: String },
}

impl std::fmt::Display for BootSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootSignal::GuestAgent => f.write_str("guest agent answer"),
            BootSignal::SerialLine { text } => write!(f, "serial console line {text:?}"),
        }
    }
}

/// What a boot check saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootCheckReport {
    pub booted: bool,
    /// Milliseconds from the start to the sign of life (or to the end of
    /// waiting).
    pub boot_ms: u64,
    pub detail: String,
    /// The VM's display at the end of waiting, where it has one.
    pub screenshot: Option<Screenshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Screenshot {
    /// `image/png`, or `image/x-portable-pixmap` from older QEMU.
    pub media_type: String,
    pub base64: String,
}

/// Start a VM on this host from configuration the controller cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartVmRequest {
    pub uuid: String,
    /// The domain XML, disk paths already remapped for this host.
    pub config: String,
    pub state: PowerState,
}

/// Recreate a VM from a backup, fetching chunks over a data channel opened
/// with `job_token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub job_token: String,
    pub uuid: String,
    pub name: String,
    /// The hypervisor definition to create, already pointing at the disk
    /// paths below (and, for a restore as new, with its new identity).
    pub config: String,
    pub disks: Vec<RestoreDisk>,
    /// Replace an existing VM with the same UUID (it must be stopped).
    pub replace: bool,
    /// Start the VM once defined.
    pub start: bool,
    /// Files to attach as a config drive (a NoCloud `cidata` ISO).
    #[serde(default)]
    pub config_drive: Option<ConfigDrive>,
    /// An instant restore: the definition the VM runs from while its data
    /// is still being copied. Each disk is a new qcow2 image whose backing
    /// is the agent's NBD export of the backup ([`instant_socket`]); once
    /// every disk is copied, `config` (the same VM on its own disks)
    /// replaces it.
    #[serde(default)]
    pub instant_config: Option<String>,
    /// MiB/s the background copy of an instant restore may use; 0 or
    /// none: as fast as the host and the controller go.
    #[serde(default)]
    pub instant_bandwidth_mib: Option<u64>,
}

/// Where the agent serves a disk of a backup during an instant restore.
pub const INSTANT_SOCKET_DIR: &str = "/run/lifeboat-instant";

/// The Unix socket of disk `target` of VM `uuid` during an instant restore.
pub fn instant_socket(uuid: &str, target: &str) -> String {
    format!("{INSTANT_SOCKET_DIR}/{uuid}-{target}.sock")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreDisk {
    pub target: String,
    /// Where the image is written on the destination host.
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: String,
    pub size_bytes: u64,
    /// Hex SHA-256 of each chunk, in order.
    pub digests: Vec<String>,
}

/// A small ISO 9660 image with the volume label `cidata`, attached as a
/// CD-ROM, carrying the guest's new identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDrive {
    /// Where the ISO is written on the destination host.
    pub path: String,
    /// File name → contents (`meta-data`, `user-data`, ...).
    pub files: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub uuid: String,
    pub name: String,
    pub bytes_written: u64,
}

/// Fixed chunk size of every backup index.
pub const CHUNK_SIZE: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// Incremental when the previous checkpoint is usable, full otherwise.
    Auto,
    Full,
    Incremental,
}

/// Back up one VM's disks through a data channel opened with `job_token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupRequest {
    pub vm: String,
    pub job_token: String,
    pub mode: BackupMode,
    /// Checkpoint to create now, named after the backup, so the next backup
    /// can read only what changed after it.
    pub checkpoint: String,
    /// The previous backup's checkpoint and indexes, for an incremental run.
    #[serde(default)]
    pub previous: Option<PreviousBackup>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviousBackup {
    pub checkpoint: String,
    pub disks: Vec<PreviousDisk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviousDisk {
    pub target: String,
    pub size_bytes: u64,
    /// Hex SHA-256 of each chunk, in order.
    pub digests: Vec<String>,
}

/// What a finished backup reports back on the control link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReport {
    /// `full` or `incremental`: what was actually done.
    pub mode: BackupMode,
    /// Whether the guest's filesystems were frozen through its agent.
    pub frozen: bool,
    /// Checkpoint created for the next incremental backup, if any.
    pub checkpoint: Option<String>,
    pub bytes_read: u64,
    pub disks: Vec<BackedUpDisk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackedUpDisk {
    pub target: String,
    pub format: String,
    pub size_bytes: u64,
    pub bytes_read: u64,
}

/// The result a command returns besides success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    Backup(BackupReport),
    Restore(RestoreReport),
    BootCheck(BootCheckReport),
}

/// Messages an agent sends on a job's data channel (opened with
/// [`AgentMessage::OpenDataChannel`]), so bulk data never delays heartbeats
/// on the control link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DataMessage {
    /// A disk's chunks follow.
    DiskBegin {
        target: String,
        size_bytes: u64,
    },
    /// Digests (hex) of consecutive chunks from index `first`. The controller
    /// records them and answers [`DataReply::Missing`]; the agent then sends
    /// exactly those chunks as chunk frames, in that order.
    Digests {
        first: u64,
        digests: Vec<String>,
    },
    DiskEnd,
    /// Restore: send these chunks (hex digests), as chunk frames in order.
    Fetch {
        digests: Vec<String>,
    },
}

/// Answers on a data channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DataReply {
    Ready,
    Missing { digests: Vec<String> },
    Failed { reason: String },
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
    /// First message of a job's data channel: a second mutually
    /// authenticated connection that carries only that job's bulk data.
    OpenDataChannel { job_token: String },
    /// First message of a mutually authenticated connection.
    Hello {
        protocol_version: u32,
        agent_version: String,
        facts: HostFacts,
    },
    Heartbeat {
        seq: u64,
        memory_free_bytes: u64,
        /// The [`HaAgentConfig::epoch`] the agent holds: the controller
        /// learns which epoch its storage heartbeats now carry.
        #[serde(default)]
        epoch: u64,
    },
    /// The complete list of VMs on the host; replaces what the controller had.
    Inventory { vms: Vec<VmInfo> },
    /// Answer to [`ControllerMessage::Request`] with the same `id`.
    Reply {
        id: u64,
        ok: bool,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        outcome: Option<Outcome>,
    },
    /// After reconnecting: the agent fenced its HA VMs while it was cut off.
    Fenced(FenceRecord),
    /// Progress of a long request.
    Progress {
        id: u64,
        bytes_done: u64,
        bytes_total: u64,
    },
    /// One round of performance samples (see [`metrics`]).
    Metrics(MetricBatch),
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
    /// Answer to a heartbeat: proof the controller heard the agent. The agent
    /// times its fence from the sending of the last acknowledged heartbeat.
    HeartbeatAck {
        seq: u64,
    },
    HaConfig(HaAgentConfig),
    /// How often to send [`AgentMessage::Metrics`]; sent after `Welcome`
    /// and whenever the operator changes it.
    MetricsConfig {
        interval_ms: u64,
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
    #[error("frame of {0} bytes exceeds the {1}-byte limit")]
    TooLarge(usize, usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unexpected frame kind {0}")]
    UnexpectedKind(u8),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

const KIND_JSON: u8 = 0;
const KIND_CHUNK: u8 = 1;

/// One frame: a JSON message or a chunk of backup data.
#[derive(Debug)]
pub enum Frame<T> {
    Message(T),
    /// SHA-256 of the uncompressed chunk, and the chunk blob (see docs/formats.md).
    Chunk {
        digest: [u8; 32],
        blob: Vec<u8>,
    },
}

/// Writes one frame: `head` (a message, or a chunk's digest) in a single
/// write with the length and kind, then `tail` (a chunk's blob) as it is,
/// never copied into a frame buffer. A message goes out in one piece, so a
/// peer that answers and hangs up still gets all of it first.
async fn write_raw<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    head: &[u8],
    tail: &[u8],
) -> Result<(), FrameError> {
    let len = 1 + head.len() + tail.len();
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len, MAX_FRAME_BYTES));
    }
    let mut first = Vec::with_capacity(5 + head.len());
    first.extend_from_slice(&(len as u32).to_be_bytes());
    first.push(kind);
    first.extend_from_slice(head);
    w.write_all(&first).await?;
    if !tail.is_empty() {
        w.write_all(tail).await?;
    }
    w.flush().await?;
    Ok(())
}

/// Writes one message as a frame and flushes it.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    write_raw(w, KIND_JSON, &serde_json::to_vec(msg)?, &[]).await
}

/// Writes one chunk frame.
pub async fn write_chunk<W: AsyncWrite + Unpin>(
    w: &mut W,
    digest: &[u8; 32],
    blob: &[u8],
) -> Result<(), FrameError> {
    write_raw(w, KIND_CHUNK, digest, blob).await
}

/// Reads one frame of either kind. A clean end of stream before the length
/// prefix is [`FrameError::Closed`].
pub async fn read_any<R, T>(r: &mut R) -> Result<Frame<T>, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_any_within(r, MAX_FRAME_BYTES).await
}

/// [`read_any`] refusing frames over `limit` bytes before reading them: for
/// a peer that has not authenticated yet, whose frames are small.
pub async fn read_any_within<R, T>(r: &mut R, limit: usize) -> Result<Frame<T>, FrameError>
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
    let limit = limit.min(MAX_FRAME_BYTES);
    if len > limit {
        return Err(FrameError::TooLarge(len, limit));
    }
    if len == 0 {
        return Err(FrameError::UnexpectedKind(u8::MAX));
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind).await?;
    let rest = len - 1;
    match kind[0] {
        KIND_JSON => Ok(Frame::Message(serde_json::from_slice(
            &read_exactly(r, rest).await?,
        )?)),
        KIND_CHUNK if rest >= 32 => {
            let mut digest = [0u8; 32];
            r.read_exact(&mut digest).await?;
            let mut blob = buffers::CHUNK_BUFFERS.take(rest - 32);
            r.read_exact(&mut blob).await?;
            Ok(Frame::Chunk { digest, blob })
        }
        other => Err(FrameError::UnexpectedKind(other)),
    }
}

/// Reads exactly `n` bytes (already bounded by the caller) into a new buffer,
/// without zeroing it first. The buffer grows with what arrives, never to
/// the claimed length up front: a peer that announces a large frame and
/// sends nothing costs nothing.
async fn read_exactly<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    n: usize,
) -> Result<Vec<u8>, FrameError> {
    const STEP: usize = 64 * 1024;
    let mut buf = Vec::with_capacity(n.min(STEP));
    // Not `read_to_end`: probing for the end would grow (and copy) a full
    // buffer. `take` keeps a roomier allocation from reading the next frame.
    while buf.len() < n {
        if buf.len() == buf.capacity() {
            buf.reserve((n - buf.len()).min(buf.capacity().max(STEP)));
        }
        let want = (n - buf.len()) as u64;
        if (&mut *r).take(want).read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(buf)
}

/// Reads one JSON message; a chunk frame here is a protocol error.
pub async fn read_frame<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_frame_within(r, MAX_FRAME_BYTES).await
}

/// [`read_frame`] refusing frames over `limit` bytes (see [`read_any_within`]).
pub async fn read_frame_within<R, T>(r: &mut R, limit: usize) -> Result<T, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
    T: DeserializeOwned,
{
    match read_any_within(r, limit).await? {
        Frame::Message(m) => Ok(m),
        Frame::Chunk { .. } => Err(FrameError::UnexpectedKind(KIND_CHUNK)),
    }
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
            epoch: 0,
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
        assert!(matches!(err, FrameError::TooLarge(..)));
    }

    #[tokio::test]
    async fn a_strangers_frame_is_bounded_and_never_allocated_up_front() {
        // Over the stranger's limit: refused on the length alone.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(100_000u32).to_be_bytes()).await.unwrap();
        let err = read_frame_within::<_, AgentMessage>(&mut b, 64 * 1024)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge(100_000, 65_536)),
            "{err}"
        );
        // A large JSON frame that trickles in grows its buffer as bytes
        // arrive; a peer that stops early gets an error, not a 16 MiB buffer.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&(8u32 << 20).to_be_bytes()).await.unwrap();
        a.write_all(&[0u8]).await.unwrap();
        a.write_all(b"{\"type\":").await.unwrap();
        drop(a);
        let err = read_frame::<_, AgentMessage>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Io(_)), "{err}");
    }

    #[tokio::test]
    async fn garbage_is_malformed_not_a_panic() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&6u32.to_be_bytes()).await.unwrap();
        a.write_all(b"\0{{{{{").await.unwrap();
        let err = read_frame::<_, AgentMessage>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)));
    }

    #[tokio::test]
    async fn chunk_frames_round_trip_and_are_refused_where_json_is_expected() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_chunk(&mut a, &[7u8; 32], b"blob").await.unwrap();
        match read_any::<_, DataMessage>(&mut b).await.unwrap() {
            Frame::Chunk { digest, blob } => {
                assert_eq!((digest, blob.as_slice()), ([7u8; 32], &b"blob"[..]))
            }
            other => panic!("{other:?}"),
        }
        write_chunk(&mut a, &[7u8; 32], b"x").await.unwrap();
        let err = read_frame::<_, DataMessage>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::UnexpectedKind(1)));
        a.write_all(&[0, 0, 0, 3, 9, 9, 9]).await.unwrap();
        let err = read_any::<_, DataMessage>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::UnexpectedKind(9)));
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

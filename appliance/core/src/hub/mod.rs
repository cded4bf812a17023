//! Agent connections: the agent port's TLS listener, enrollment, mutually
//! authenticated sessions, heartbeats and request/response correlation.
//!
//! Every agent is identified by the fingerprint of the client certificate the
//! controller issued it; a certificate the store does not know is refused even
//! if our CA signed it. Anything an agent sends is treated as hostile input.

mod data;
pub mod enrollment;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_proto::{
    read_frame, read_frame_within, write_frame, AgentMessage, Command, ControllerMessage, Outcome,
    VmInfo, PROTOCOL_VERSION,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

use crate::clock::unix_now;
use crate::inventory::{Host, Inventory};
use crate::metrics::Metrics;
use crate::pki::{fingerprint, Pki};
pub use data::DataStream;
use data::DataWaiter;
use enrollment::EnrollmentTokens;

/// Time an agent has for the TLS handshake and its first message.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a job waits for its agent to open the data channel.
const DATA_CHANNEL_WAIT: Duration = Duration::from_secs(60);
/// A session with no frame for this long is dead (heartbeats come every second).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections at once that have not authenticated yet (in the TLS
/// handshake, or enrolling); more are closed at once. With the handshake
/// deadline and [`MAX_ENROLL_FRAME`] this bounds what strangers cost.
const MAX_UNAUTHENTICATED: usize = 128;
/// An enrollment message (token, CSR, names) is small; a stranger's larger
/// frame is refused before it is read.
const MAX_ENROLL_FRAME: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("host {0} is offline")]
    Offline(String),
    #[error("the agent did not answer within {0} s")]
    Timeout(u64),
    #[error("the agent disconnected before answering")]
    Disconnected,
    #[error("agent: {0}")]
    Agent(String),
}

/// Called with (bytes done, bytes total) as a request reports progress.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

struct PendingRequest {
    reply: oneshot::Sender<Result<Option<Outcome>, String>>,
    progress: Option<ProgressFn>,
}

type Pending = Arc<Mutex<HashMap<u64, PendingRequest>>>;

struct AgentHandle {
    connection: u64,
    outbox: mpsc::Sender<ControllerMessage>,
    pending: Pending,
}

pub struct Hub {
    inventory: Arc<Inventory>,
    /// Agent disconnections are events.
    sink: crate::alerts::Sink,
    metrics: Arc<Metrics>,
    pki: Arc<Pki>,
    pub tokens: EnrollmentTokens,
    agents: Mutex<HashMap<String, AgentHandle>>,
    data_channels: Mutex<HashMap<String, DataWaiter>>,
    next_connection: AtomicU64,
    next_request: AtomicU64,
    /// Self-fences agents reported after reconnecting, for the HA engine.
    fence_reports: Mutex<Vec<(String, lifeboat_proto::FenceRecord)>>,
    /// The storage-heartbeat epoch each agent says it holds, for the HA
    /// engine to store (the reader never waits on the disk).
    epoch_acks: Mutex<HashMap<String, u64>>,
}

impl Hub {
    pub fn new(
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
        pki: Arc<Pki>,
        tokens: EnrollmentTokens,
        sink: crate::alerts::Sink,
    ) -> Hub {
        Hub {
            sink,
            inventory,
            metrics,
            pki,
            tokens,
            agents: Mutex::new(HashMap::new()),
            data_channels: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            fence_reports: Mutex::new(Vec::new()),
            epoch_acks: Mutex::new(HashMap::new()),
        }
    }

    pub fn tls_acceptor(&self) -> Result<TlsAcceptor, crate::pki::TlsSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.pki.ca_der.clone())?;
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()?;
        let config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.pki.server_chain.clone(), self.pki.server_key())?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Accepts agent connections forever.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> Result<(), crate::pki::TlsSetupError> {
        let acceptor = self.tls_acceptor()?;
        let strangers = Arc::new(tokio::sync::Semaphore::new(MAX_UNAUTHENTICATED));
        let mut refusing = false;
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("agent port accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = strangers.clone().try_acquire_owned() else {
                if !refusing {
                    tracing::warn!(%addr, "agent port: {MAX_UNAUTHENTICATED} connections are already authenticating; closing new ones");
                    refusing = true;
                }
                continue;
            };
            refusing = false;
            let _ = tcp.set_nodelay(true);
            let hub = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::warn!(%addr, "agent port: TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%addr, "agent port: TLS handshake timed out");
                        return;
                    }
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| fingerprint(c));
                match peer {
                    // A certificate our CA issued: authenticated.
                    Some(fp) => {
                        drop(permit);
                        hub.session(tls, addr, &fp).await
                    }
                    None => {
                        hub.enroll(tls, addr).await;
                        drop(permit);
                    }
                }
            });
        }
    }

    async fn reject<S: AsyncWrite + Unpin>(stream: &mut S, addr: SocketAddr, reason: &str) {
        tracing::warn!(%addr, "agent refused: {reason}");
        let _ = write_frame(
            stream,
            &ControllerMessage::Rejected {
                reason: reason.to_string(),
            },
        )
        .await;
    }

    async fn enroll<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S, addr: SocketAddr) {
        let msg = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            read_frame_within::<_, AgentMessage>(&mut stream, MAX_ENROLL_FRAME),
        )
        .await;
        let (token, csr_pem, name, hostname) = match msg {
            Ok(Ok(AgentMessage::Enroll {
                token,
                csr_pem,
                name,
                hostname,
            })) => (token, csr_pem, name, hostname),
            Ok(Ok(_)) => {
                return Self::reject(
                    &mut stream,
                    addr,
                    "no client certificate: only enrollment is allowed",
                )
                .await
            }
            Ok(Err(e)) => {
                return Self::reject(&mut stream, addr, &format!("bad enrollment message: {e}"))
                    .await
            }
            Err(_) => return Self::reject(&mut stream, addr, "enrollment timed out").await,
        };
        match self.tokens.consume(&token).await {
            Ok(true) => {}
            Ok(false) => {
                return Self::reject(
                    &mut stream,
                    addr,
                    "invalid, used or expired enrollment token",
                )
                .await;
            }
            Err(e) => {
                return Self::reject(&mut stream, addr, &format!("controller store error: {e}"))
                    .await
            }
        }
        let host_id = uuid::Uuid::new_v4().to_string();
        let cert_pem = match self.pki.sign_agent_csr(&csr_pem, &host_id) {
            Ok(c) => c,
            Err(e) => return Self::reject(&mut stream, addr, &e.to_string()).await,
        };
        let Ok(cert_der) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
            return Self::reject(
                &mut stream,
                addr,
                "internal error: issued certificate unreadable",
            )
            .await;
        };
        let name = clean_name(if name.is_empty() { &hostname } else { &name }, &host_id);
        let host = Host {
            id: host_id.clone(),
            name: name.clone(),
            cert_fingerprint: fingerprint(&cert_der),
            enrolled_at: unix_now(),
            last_seen: unix_now(),
            agent_version: String::new(),
            facts: Default::default(),
            address: addr.ip().to_string(),
        };
        if let Err(e) = self.inventory.add_host(host).await {
            return Self::reject(&mut stream, addr, &format!("controller store error: {e}")).await;
        }
        tracing::info!(%addr, host_id, name, "agent enrolled");
        let reply = ControllerMessage::Enrolled {
            host_id,
            cert_pem,
            ca_pem: self.pki.ca_pem.clone(),
        };
        let _ = write_frame(&mut stream, &reply).await;
    }

    async fn session<S>(&self, mut stream: S, addr: SocketAddr, fingerprint: &str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(host) = self.inventory.host_by_fingerprint(fingerprint) else {
            return Self::reject(&mut stream, addr, "unknown client certificate").await;
        };
        let first = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            read_frame::<_, AgentMessage>(&mut stream),
        )
        .await;
        match first {
            Ok(Ok(AgentMessage::Hello {
                protocol_version,
                agent_version,
                facts,
            })) if protocol_version == PROTOCOL_VERSION => {
                self.control_session(stream, addr, host, agent_version, facts)
                    .await
            }
            Ok(Ok(AgentMessage::Hello {
                protocol_version, ..
            })) => {
                let reason = format!("protocol version {protocol_version} unsupported (controller speaks {PROTOCOL_VERSION})");
                Self::reject(&mut stream, addr, &reason).await
            }
            Ok(Ok(AgentMessage::OpenDataChannel { job_token })) => {
                self.attach_data_channel(Box::new(stream), addr, &host, &job_token)
                    .await
            }
            Ok(Ok(_)) => Self::reject(&mut stream, addr, "expected hello").await,
            Ok(Err(e)) => Self::reject(&mut stream, addr, &format!("bad hello: {e}")).await,
            Err(_) => Self::reject(&mut stream, addr, "hello timed out").await,
        }
    }

    async fn control_session<S>(
        &self,
        stream: S,
        addr: SocketAddr,
        host: Host,
        agent_version: String,
        facts: lifeboat_proto::HostFacts,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (outbox, mut inbox) = mpsc::channel::<ControllerMessage>(64);
        let pending: Pending = Arc::default();
        // A newer connection replaces an older one; dropping the old outbox
        // ends its writer, which closes it.
        self.agents.lock().expect("agents lock").insert(
            host.id.clone(),
            AgentHandle {
                connection,
                outbox: outbox.clone(),
                pending: pending.clone(),
            },
        );
        if let Err(e) = self
            .inventory
            .host_connected(&host.id, connection, agent_version, facts, addr.ip())
            .await
        {
            tracing::error!(host = host.name, "cannot record connection: {e}");
        }
        tracing::info!(%addr, host = host.name, connection, "agent connected");
        let _ = outbox
            .send(ControllerMessage::Welcome {
                host_id: host.id.clone(),
            })
            .await;
        let _ = outbox
            .send(ControllerMessage::MetricsConfig {
                interval_ms: self.metrics.settings().interval_secs * 1000,
            })
            .await;
        let writer_task = tokio::spawn(async move {
            while let Some(msg) = inbox.recv().await {
                if write_frame(&mut writer, &msg).await.is_err() {
                    break;
                }
            }
        });

        // Inventory reports are stored by their own task, so a slow disk
        // never delays the heartbeats behind them; a newer report replaces
        // one not yet stored (each is the host's whole list).
        let (reports, mut latest) = tokio::sync::watch::channel(None::<Vec<VmInfo>>);
        let inventory = self.inventory.clone();
        let (host_id, host_name) = (host.id.clone(), host.name.clone());
        let storer = tokio::spawn(async move {
            while latest.changed().await.is_ok() {
                let Some(vms) = latest.borrow_and_update().clone() else {
                    continue;
                };
                let count = vms.len();
                match inventory.replace_host_vms(&host_id, vms).await {
                    Ok(changed) if changed > 0 => {
                        tracing::debug!(host = host_name, count, changed, "inventory updated")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(host = host_name, "cannot store inventory: {e}"),
                }
            }
        });
        let reason = self
            .read_loop(&mut reader, &host, connection, &pending, &outbox, &reports)
            .await;
        drop(reports);
        let _ = storer.await;
        tracing::info!(%addr, host = host.name, connection, "agent disconnected: {reason}");
        writer_task.abort();
        {
            let mut agents = self.agents.lock().expect("agents lock");
            if agents
                .get(&host.id)
                .is_some_and(|a| a.connection == connection)
            {
                agents.remove(&host.id);
            }
        }
        for (_, p) in pending.lock().expect("pending lock").drain() {
            let _ = p.reply.send(Err(DISCONNECTED.into()));
        }
        if self.inventory.host_disconnected(&host.id, connection) {
            self.sink.raise(crate::alerts::Event::new(
                crate::alerts::EventKind::AgentDisconnected,
                crate::alerts::Subject {
                    kind: "host".into(),
                    id: host.id.clone(),
                    name: host.name.clone(),
                    vm: None,
                },
                format!("the agent of {} disconnected", host.name),
            ));
        }
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        host: &Host,
        connection: u64,
        pending: &Pending,
        outbox: &mpsc::Sender<ControllerMessage>,
        reports: &tokio::sync::watch::Sender<Option<Vec<VmInfo>>>,
    ) -> String {
        loop {
            let msg =
                match tokio::time::timeout(IDLE_TIMEOUT, read_frame::<_, AgentMessage>(reader))
                    .await
                {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return format!("no message for {} s", IDLE_TIMEOUT.as_secs()),
                };
            match msg {
                AgentMessage::Heartbeat {
                    seq,
                    memory_free_bytes,
                    epoch,
                } => {
                    self.inventory
                        .heartbeat(&host.id, connection, memory_free_bytes);
                    if epoch != 0 {
                        self.epoch_acks
                            .lock()
                            .expect("epoch acks lock")
                            .insert(host.id.clone(), epoch);
                    }
                    // Never blocks the reader: a full outbox means the link
                    // is failing, and the agent's fence clock should run.
                    let _ = outbox.try_send(ControllerMessage::HeartbeatAck { seq });
                }
                AgentMessage::Fenced(record) => {
                    tracing::warn!(
                        host = host.name,
                        stopped = record.stopped.len(),
                        "the agent reports it fenced its HA VMs while cut off"
                    );
                    self.fence_reports
                        .lock()
                        .expect("fence reports lock")
                        .push((host.id.clone(), record));
                }
                AgentMessage::Inventory { vms } => {
                    reports.send_replace(Some(vms));
                    self.inventory
                        .heartbeat(&host.id, connection, host.facts.memory_free_bytes);
                }
                AgentMessage::Reply {
                    id,
                    ok,
                    error,
                    outcome,
                } => {
                    if let Some(p) = pending.lock().expect("pending lock").remove(&id) {
                        let _ = p.reply.send(if ok {
                            Ok(outcome)
                        } else {
                            Err(error.unwrap_or_else(|| "failed".into()))
                        });
                    }
                }
                AgentMessage::Progress {
                    id,
                    bytes_done,
                    bytes_total,
                } => {
                    let progress = pending
                        .lock()
                        .expect("pending lock")
                        .get(&id)
                        .and_then(|p| p.progress.clone());
                    if let Some(f) = progress {
                        f(bytes_done, bytes_total);
                    }
                }
                AgentMessage::Metrics(batch) => {
                    let inventory = &self.inventory;
                    self.metrics.ingest(
                        &host.id,
                        &batch,
                        |uuid| inventory.owns(&host.id, uuid),
                        unix_now(),
                    );
                }
                AgentMessage::Enroll { .. }
                | AgentMessage::Hello { .. }
                | AgentMessage::OpenDataChannel { .. } => {
                    return "protocol violation: handshake message inside a session".into();
                }
            }
        }
    }

    /// Self-fences reported since the last call, as (host id, record).
    /// Epochs agents said they hold since the last call, by host.
    pub fn take_epoch_acks(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.epoch_acks.lock().expect("epoch acks lock"))
    }

    pub fn take_fence_reports(&self) -> Vec<(String, lifeboat_proto::FenceRecord)> {
        std::mem::take(&mut *self.fence_reports.lock().expect("fence reports lock"))
    }

    /// The current connection number of a host's agent, if connected.
    pub fn connection(&self, host_id: &str) -> Option<u64> {
        self.agents
            .lock()
            .expect("agents lock")
            .get(host_id)
            .map(|a| a.connection)
    }

    /// Queues a message for a connected agent without waiting; false if
    /// the agent is not connected or its queue is full.
    /// Sends `message` to every connected agent.
    pub fn broadcast(&self, message: &ControllerMessage) {
        for agent in self.agents.lock().expect("agents lock").values() {
            let _ = agent.outbox.try_send(message.clone());
        }
    }

    pub fn notify(&self, host_id: &str, message: ControllerMessage) -> bool {
        let agents = self.agents.lock().expect("agents lock");
        agents
            .get(host_id)
            .is_some_and(|a| a.outbox.try_send(message).is_ok())
    }

    pub fn is_connected(&self, host_id: &str) -> bool {
        self.agents
            .lock()
            .expect("agents lock")
            .contains_key(host_id)
    }

    /// Sends a command to a host's agent and waits for its reply.
    pub async fn request(
        &self,
        host_id: &str,
        command: Command,
        timeout: Duration,
    ) -> Result<(), HubError> {
        self.request_with_progress(host_id, command, timeout, None)
            .await
            .map(|_| ())
    }

    /// Like [`Hub::request`], reporting progress through `progress` and
    /// returning the command's outcome.
    pub async fn request_with_progress(
        &self,
        host_id: &str,
        command: Command,
        timeout: Duration,
        progress: Option<ProgressFn>,
    ) -> Result<Option<Outcome>, HubError> {
        let (outbox, pending) = {
            let agents = self.agents.lock().expect("agents lock");
            let a = agents
                .get(host_id)
                .ok_or_else(|| HubError::Offline(self.inventory.host_name(host_id)))?;
            (a.outbox.clone(), a.pending.clone())
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        pending.lock().expect("pending lock").insert(
            id,
            PendingRequest {
                reply: tx,
                progress,
            },
        );
        if outbox
            .send(ControllerMessage::Request { id, command })
            .await
            .is_err()
        {
            pending.lock().expect("pending lock").remove(&id);
            return Err(HubError::Offline(self.inventory.host_name(host_id)));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(outcome))) => Ok(outcome),
            Ok(Ok(Err(e))) if e == DISCONNECTED => Err(HubError::Disconnected),
            Ok(Ok(Err(e))) => Err(HubError::Agent(e)),
            Ok(Err(_)) => Err(HubError::Disconnected),
            Err(_) => {
                pending.lock().expect("pending lock").remove(&id);
                Err(HubError::Timeout(timeout.as_secs()))
            }
        }
    }
}

const DISCONNECTED: &str = "agent disconnected before answering";

/// A host name shown in the console: printable, at most 64 characters.
fn clean_name(name: &str, fallback: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| c.is_alphanumeric() || "-_.".contains(*c))
        .take(64)
        .collect();
    if cleaned.is_empty() {
        fallback.to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::clean_name;

    #[test]
    fn host_names_are_cleaned() {
        assert_eq!(clean_name("kvm-01.lab", "x"), "kvm-01.lab");
        assert_eq!(clean_name("<script>", "x"), "script");
        assert_eq!(clean_name("", "fallback"), "fallback");
        assert_eq!(clean_name(&"a".repeat(100), "x").len(), 64);
    }
}

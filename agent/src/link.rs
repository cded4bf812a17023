//! The connection to the controller: enrollment once, then a mutually
//! authenticated session that reconnects with back-off for as long as the
//! agent runs. One connection carries heartbeats, inventory and commands.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lifeboat_proto::{
    read_frame, write_frame, AgentMessage, Command, ControllerMessage, Outcome, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_rustls::TlsConnector;

use crate::fence::FenceWatchdog;
use crate::hypervisor::Hypervisor;
use crate::metrics::{Interval, Sampler};
use crate::{identity, tls};

/// How often the agent looks for VM changes made outside Lifeboat.
const INVENTORY_POLL: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A session that lasted this long resets the back-off.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// The controller acknowledges every heartbeat; this long (or three
/// heartbeat intervals, if longer) without any frame means the link is dead
/// even if TCP has not noticed (a silent partition).
const SILENCE_LIMIT: Duration = Duration::from_secs(4);

pub struct Enrollment<'a> {
    pub controller: &'a str,
    pub token: &'a str,
    pub ca_fingerprint: &'a str,
    pub name: &'a str,
    pub hostname: &'a str,
}

async fn connect(
    controller: &str,
    config: rustls::ClientConfig,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(controller))
        .await
        .context("connection timed out")?
        .with_context(|| format!("cannot connect to {controller}"))?;
    let _ = tcp.set_nodelay(true);
    let connector = TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(tls::server_name(), tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake with the controller failed")?;
    Ok(tls)
}

/// Trades the one-time token for a client certificate and saves the identity.
pub async fn enroll(e: &Enrollment<'_>, state_dir: &Path) -> anyhow::Result<()> {
    if !e.ca_fingerprint.starts_with("sha256:") || e.ca_fingerprint.len() != 7 + 64 {
        bail!("--ca-fingerprint must look like sha256:<64 hex digits>");
    }
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    let mut stream = connect(e.controller, tls::enrollment_config(e.ca_fingerprint)?).await?;
    write_frame(
        &mut stream,
        &AgentMessage::Enroll {
            token: e.token.to_string(),
            csr_pem: csr,
            name: e.name.to_string(),
            hostname: e.hostname.to_string(),
        },
    )
    .await?;
    match read_frame::<_, ControllerMessage>(&mut stream).await? {
        ControllerMessage::Enrolled {
            host_id,
            cert_pem,
            ca_pem,
        } => {
            identity::save(
                state_dir,
                &host_id,
                &key.serialize_pem(),
                &cert_pem,
                &ca_pem,
            )?;
            tracing::info!(host_id, "enrolled with the controller");
            Ok(())
        }
        ControllerMessage::Rejected { reason } => {
            bail!("the controller refused enrollment: {reason}")
        }
        other => bail!("unexpected answer to enrollment: {other:?}"),
    }
}

/// Keeps a session with the controller up forever.
pub async fn run(
    controller: String,
    state_dir: &Path,
    driver: Arc<dyn Hypervisor>,
) -> anyhow::Result<()> {
    let id = identity::load(state_dir)?;
    tracing::info!(
        host_id = id.host_id,
        controller,
        "starting the link to the controller"
    );
    let watchdog = FenceWatchdog::start(state_dir, &id.host_id, driver.clone());
    let config = tls::session_config(id.ca, id.cert, id.key)?;
    let metrics = Metrics {
        sampler: Sampler::new(
            crate::host_dirs::image_dirs()
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        ),
        interval: Arc::default(),
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        match session(
            &controller,
            config.clone(),
            driver.clone(),
            &watchdog,
            &metrics,
        )
        .await
        {
            Ok(()) => tracing::warn!("controller closed the connection"),
            Err(e) => tracing::warn!("link to the controller lost: {e:#}"),
        }
        if started.elapsed() > STABLE_SESSION {
            backoff = Duration::from_millis(500);
        }
        // Jitter keeps a fleet of agents from reconnecting in lock-step.
        let jitter = Duration::from_millis(rand_ms(250));
        tracing::info!("reconnecting in {:.1} s", (backoff + jitter).as_secs_f32());
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn rand_ms(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos % max.max(1)
}

fn memory_free_bytes() -> u64 {
    lifeboat_os::host::memory().map_or(0, |m| m.available)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("driver task panicked")
}

/// What a job needs to dial its own data channel to the controller.
#[derive(Clone)]
struct Dialer {
    controller: String,
    config: rustls::ClientConfig,
}

/// Sampling state kept across sessions.
struct Metrics {
    sampler: Arc<Mutex<Sampler>>,
    interval: Arc<Interval>,
}

async fn session(
    controller: &str,
    config: rustls::ClientConfig,
    driver: Arc<dyn Hypervisor>,
    watchdog: &Arc<FenceWatchdog>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let dialer = Dialer {
        controller: controller.to_string(),
        config: config.clone(),
    };
    let stream = connect(controller, config).await?;
    let (mut reader, mut writer) = tokio::io::split(stream);

    let d = driver.clone();
    let mut facts = blocking(move || d.host_facts()).await??;
    facts.image_dirs = crate::host_dirs::image_dirs();
    write_frame(
        &mut writer,
        &AgentMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            facts,
        },
    )
    .await?;
    match read_frame::<_, ControllerMessage>(&mut reader).await? {
        ControllerMessage::Welcome { host_id } => {
            tracing::info!(host_id, "connected to the controller")
        }
        ControllerMessage::Rejected { reason } => {
            bail!("the controller refused this agent: {reason}")
        }
        other => bail!("unexpected greeting: {other:?}"),
    }

    let (outbox, mut inbox) = mpsc::channel::<AgentMessage>(64);
    let writer_task = tokio::spawn(async move {
        while let Some(msg) = inbox.recv().await {
            write_frame(&mut writer, &msg).await?;
        }
        Ok::<(), lifeboat_proto::FrameError>(())
    });

    let refresh = Arc::new(Notify::new());
    let heartbeat = tokio::spawn(heartbeats(outbox.clone(), watchdog.clone()));
    let inventory = tokio::spawn(inventory_reports(
        driver.clone(),
        outbox.clone(),
        refresh.clone(),
    ));
    let samples = tokio::spawn(metric_reports(
        driver.clone(),
        metrics.sampler.clone(),
        metrics.interval.clone(),
        outbox.clone(),
    ));

    let result = async {
        loop {
            let silence_limit = SILENCE_LIMIT.max(watchdog.heartbeat_interval() * 3);
            let frame = tokio::time::timeout(silence_limit, read_frame(&mut reader))
                .await
                .context("the controller went silent")??;
            match frame {
                ControllerMessage::HeartbeatAck { seq } => {
                    watchdog.heartbeat_acked(seq);
                    if let Some(record) = watchdog.take_unreported() {
                        let _ = outbox.send(AgentMessage::Fenced(record)).await;
                    }
                }
                ControllerMessage::HaConfig(config) => watchdog.set_config(config),
                ControllerMessage::MetricsConfig { interval_ms } => {
                    metrics.interval.set_ms(interval_ms)
                }
                ControllerMessage::Request { id, command } => {
                    let (driver, outbox, refresh) =
                        (driver.clone(), outbox.clone(), refresh.clone());
                    let dialer = dialer.clone();
                    tokio::spawn(async move {
                        let reply =
                            run_command(driver.clone(), command, id, &dialer, &outbox).await;
                        // The new state goes out before the reply, on the same
                        // ordered connection: once the controller sees the job
                        // finish, its inventory already shows the result.
                        let d = driver.clone();
                        if let Ok(Ok(vms)) = blocking(move || d.inventory()).await {
                            let _ = outbox.send(AgentMessage::Inventory { vms }).await;
                        }
                        let _ = outbox.send(reply_message(id, reply)).await;
                        refresh.notify_one();
                    });
                }
                ControllerMessage::Rejected { reason } => {
                    bail!("the controller ended the session: {reason}")
                }
                other => tracing::warn!("ignoring unexpected message {other:?}"),
            }
        }
    }
    .await;
    heartbeat.abort();
    inventory.abort();
    samples.abort();
    writer_task.abort();
    result
}

fn reply_message(id: u64, result: anyhow::Result<Option<Outcome>>) -> AgentMessage {
    match result {
        Ok(outcome) => AgentMessage::Reply {
            id,
            ok: true,
            error: None,
            outcome,
        },
        Err(e) => AgentMessage::Reply {
            id,
            ok: false,
            error: Some(format!("{e:#}")),
            outcome: None,
        },
    }
}

async fn run_command(
    driver: Arc<dyn Hypervisor>,
    command: Command,
    id: u64,
    dialer: &Dialer,
    outbox: &mpsc::Sender<AgentMessage>,
) -> anyhow::Result<Option<Outcome>> {
    match command {
        Command::Power {
            vm,
            action,
            timeout_secs,
        } => {
            tracing::info!(vm, action = action.as_str(), "power operation");
            let timeout = Duration::from_secs(timeout_secs);
            let result = blocking(move || driver.power(&vm, action, timeout)).await?;
            if let Err(e) = &result {
                tracing::warn!(action = action.as_str(), "power operation failed: {e}");
            }
            result?;
            Ok(None)
        }
        Command::Backup(request) => {
            tracing::info!(vm = request.vm, mode = ?request.mode, "backup");
            let channel = open_data_channel(dialer, &request.job_token).await?;
            let progress = throttled_progress(id, outbox.clone());
            let report = crate::backup::run(driver, request, channel, progress).await;
            match &report {
                Ok(r) => tracing::info!(bytes_read = r.bytes_read, mode = ?r.mode, "backup sent"),
                Err(e) => tracing::warn!("backup failed: {e:#}"),
            }
            Ok(Some(Outcome::Backup(report?)))
        }
        Command::Restore(request) => {
            tracing::info!(vm = request.uuid, name = request.name, "restore");
            let channel = open_data_channel(dialer, &request.job_token).await?;
            let progress = throttled_progress(id, outbox.clone());
            let report = if request.instant_config.is_some() {
                crate::instant::run(driver, request, channel, progress).await
            } else {
                crate::restore::run(driver, request, channel, progress).await
            };
            match &report {
                Ok(r) => tracing::info!(bytes = r.bytes_written, name = r.name, "restore complete"),
                Err(e) => tracing::warn!("restore failed: {e:#}"),
            }
            Ok(Some(Outcome::Restore(report?)))
        }
        Command::StartVm(request) => {
            tracing::info!(vm = request.uuid, state = ?request.state, "failover start");
            blocking(move || driver.start_from_config(&request)).await??;
            Ok(None)
        }
        Command::Undefine { uuid } => {
            tracing::info!(vm = uuid, "undefining a stale copy (its disks stay)");
            blocking(move || driver.undefine_keeping_disks(&uuid)).await??;
            Ok(None)
        }
        Command::BootCheck(request) => {
            tracing::info!(vm = request.uuid, signal = %request.signal, "boot check");
            let report = blocking(move || driver.boot_check(&request)).await??;
            tracing::info!(booted = report.booted, "boot check: {}", report.detail);
            Ok(Some(Outcome::BootCheck(report)))
        }
    }
}

/// Waits for the controller to accept a data channel.
pub async fn expect_ready<S: tokio::io::AsyncRead + Unpin>(channel: &mut S) -> anyhow::Result<()> {
    match read_frame::<_, lifeboat_proto::DataReply>(channel).await? {
        lifeboat_proto::DataReply::Ready => Ok(()),
        lifeboat_proto::DataReply::Failed { reason } => {
            bail!("the controller refused the data channel: {reason}")
        }
        other => bail!("unexpected first reply on the data channel: {other:?}"),
    }
}

/// A job's own connection to the controller, for its bulk data.
async fn open_data_channel(
    dialer: &Dialer,
    job_token: &str,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut channel = connect(&dialer.controller, dialer.config.clone()).await?;
    let open = AgentMessage::OpenDataChannel {
        job_token: job_token.to_string(),
    };
    write_frame(&mut channel, &open).await?;
    Ok(channel)
}

/// Progress reports for request `id`, at most two a second, never blocking.
fn throttled_progress(
    id: u64,
    outbox: mpsc::Sender<AgentMessage>,
) -> impl Fn(u64, u64) + Send + Sync {
    let last = std::sync::Mutex::new(Instant::now() - Duration::from_secs(1));
    move |bytes_done, bytes_total| {
        let Ok(mut last) = last.lock() else { return };
        if last.elapsed() >= Duration::from_millis(500) || bytes_done == bytes_total {
            *last = Instant::now();
            let _ = outbox.try_send(AgentMessage::Progress {
                id,
                bytes_done,
                bytes_total,
            });
        }
    }
}

async fn heartbeats(outbox: mpsc::Sender<AgentMessage>, watchdog: Arc<FenceWatchdog>) {
    loop {
        let seq = watchdog.heartbeat_sent();
        let msg = AgentMessage::Heartbeat {
            seq,
            memory_free_bytes: memory_free_bytes(),
            epoch: watchdog.epoch(),
        };
        if outbox.send(msg).await.is_err() {
            return;
        }
        tokio::time::sleep(watchdog.heartbeat_interval()).await;
    }
}

/// Sends the full VM list at connect, then whenever it changes (polled, or
/// right after a command ran).
async fn inventory_reports(
    driver: Arc<dyn Hypervisor>,
    outbox: mpsc::Sender<AgentMessage>,
    refresh: Arc<Notify>,
) {
    let mut last = None;
    loop {
        let d = driver.clone();
        match blocking(move || d.inventory()).await {
            Ok(Ok(vms)) if last.as_ref() != Some(&vms) => {
                if outbox
                    .send(AgentMessage::Inventory { vms: vms.clone() })
                    .await
                    .is_err()
                {
                    return;
                }
                last = Some(vms);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("cannot read the VM inventory: {e}"),
            Err(e) => tracing::warn!("{e:#}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(INVENTORY_POLL) => {}
            _ = refresh.notified() => {}
        }
    }
}

/// One batch of performance samples per interval. A round that cannot be
/// sent at once (the link is slow) is dropped, not queued: samples are
/// worth less than heartbeats and commands.
async fn metric_reports(
    driver: Arc<dyn Hypervisor>,
    sampler: Arc<Mutex<Sampler>>,
    interval: Arc<Interval>,
    outbox: mpsc::Sender<AgentMessage>,
) {
    let mut next = Instant::now();
    loop {
        let (d, s) = (driver.clone(), sampler.clone());
        let batch = blocking(move || s.lock().expect("sampler lock").batch(d.as_ref())).await;
        match batch {
            Ok(batch) => match outbox.try_send(AgentMessage::Metrics(batch)) {
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!("link busy: dropping one round of samples")
                }
                Ok(()) => {}
            },
            Err(e) => tracing::warn!("{e:#}"),
        }
        // Fixed ticks, not sleeps after the work, so rounds do not drift;
        // a tick missed while sampling is skipped.
        next += interval.get();
        let now = Instant::now();
        if next < now {
            next = now + interval.get();
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

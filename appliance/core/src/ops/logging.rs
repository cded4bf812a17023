//! The controller's log as operators see and steer it: its level (changed
//! at run time, kept in the store), the recent records, and forwarding to
//! one of the syslog alert channels. Administrators without access
//! policies only: a log line may name any host or VM.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Ops, OpsError};
use crate::access::{require, Principal, Privilege};
use crate::alerts::channel::ChannelConfig;
use crate::alerts::send::{formats, transport, Origin};
use crate::logging::{Log, LogLevel, LogRecord};

/// Most records sent over one connection.
const FORWARD_BATCH: usize = 200;
/// Longest wait between attempts while the syslog server is away.
const FORWARD_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Most records one request for the recent log returns.
pub const MAX_LOG_LIST: usize = 2000;

/// Stored under `settings` in [`Table::Logging`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    /// What is logged at all (stderr, the recent log, syslog).
    #[serde(default)]
    pub level: LogLevel,
    /// A syslog alert channel the log is forwarded to.
    #[serde(default)]
    pub syslog_channel: Option<String>,
    /// What of the log is forwarded: this level and more severe.
    #[serde(default = "default_forward_level")]
    pub syslog_level: LogLevel,
}

fn default_forward_level() -> LogLevel {
    LogLevel::Info
}

#[derive(Debug, Clone, Serialize)]
pub struct LoggingView {
    #[serde(flatten)]
    pub settings: LoggingSettings,
    /// Records not forwarded because the queue was full.
    pub dropped: u64,
    /// The newest forwarding error, while forwarding fails.
    pub forward_error: Option<String>,
}

impl Ops {
    /// Attaches the process's log (once, at start) and applies the stored
    /// level to it, unless `keep_level` (the level was given at start).
    pub fn attach_log(self: &Arc<Self>, log: Arc<Log>, keep_level: bool) {
        if self.log.set(log.clone()).is_err() {
            return;
        }
        let settings = self.logging_settings();
        if !keep_level {
            if let Err(e) = log.set_level(settings.level) {
                tracing::error!("cannot set the log level: {e}");
            }
        }
        self.restart_forwarding(&settings);
    }

    fn logging_settings(&self) -> LoggingSettings {
        self.logging.get("settings").unwrap_or_default()
    }

    fn require_log_admin(who: &Principal, what: &'static str) -> Result<(), OpsError> {
        require(who, Privilege::Administer, what)?;
        super::require_unrestricted(who, what)
    }

    fn attached_log(&self) -> Result<&Arc<Log>, OpsError> {
        self.log
            .get()
            .ok_or_else(|| OpsError::Internal("this controller keeps no log".into()))
    }

    pub fn logging(&self, who: &Principal) -> Result<LoggingView, OpsError> {
        Self::require_log_admin(who, "viewing the log settings")?;
        let log = self.attached_log()?;
        let mut settings = self.logging_settings();
        settings.level = log.level();
        Ok(LoggingView {
            settings,
            dropped: log.dropped(),
            forward_error: self.forward_error.lock().expect("forward error").clone(),
        })
    }

    /// The newest `limit` records at `min` or more severe, after record
    /// number `after`, oldest first.
    pub fn recent_log(
        &self,
        who: &Principal,
        min: LogLevel,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, OpsError> {
        Self::require_log_admin(who, "reading the log")?;
        Ok(self
            .attached_log()?
            .recent(min, after, limit.min(MAX_LOG_LIST)))
    }

    /// Changes the level at once and keeps it for the next start; starts,
    /// moves or stops forwarding.
    pub async fn set_logging(
        self: &Arc<Self>,
        who: &Principal,
        settings: LoggingSettings,
    ) -> Result<(), OpsError> {
        let result = async {
            Self::require_log_admin(who, "configuring the log")?;
            let log = self.attached_log()?;
            if let Some(id) = &settings.syslog_channel {
                match self.alerts.channels.get(id).map(|c| c.config) {
                    Some(ChannelConfig::Syslog { .. }) => {}
                    Some(_) => {
                        return Err(OpsError::BadRequest(
                            "syslog_channel: not a syslog channel".into(),
                        ))
                    }
                    None => {
                        return Err(OpsError::BadRequest(format!(
                            "syslog_channel: no channel {id:?}"
                        )))
                    }
                }
            }
            self.logging.put("settings", settings.clone()).await?;
            log.set_level(settings.level).map_err(OpsError::Internal)?;
            self.restart_forwarding(&settings);
            Ok(())
        }
        .await;
        let outcome = self.audited(who, "set logging", "logging", result).await;
        if outcome.is_ok() {
            tracing::info!(
                level = settings.level.as_str(),
                syslog_channel = settings.syslog_channel.as_deref().unwrap_or("none"),
                "log settings changed by {}",
                who.user
            );
        }
        outcome
    }

    /// Stops forwarding the log to channel `id`, which is being deleted.
    pub(super) async fn stop_forwarding_to(&self, id: &str) -> Result<(), OpsError> {
        let mut settings = self.logging_settings();
        if settings.syslog_channel.as_deref() != Some(id) {
            return Ok(());
        }
        settings.syslog_channel = None;
        self.logging.put("settings", settings).await?;
        if let Some(log) = self.log.get() {
            // Its task ends once it sees its queue closed.
            log.forward(None);
        }
        tracing::info!("the log is no longer forwarded: its syslog channel {id} was deleted");
        Ok(())
    }

    /// Replaces the forwarding task by one for `settings` (or none).
    fn restart_forwarding(self: &Arc<Self>, settings: &LoggingSettings) {
        let Some(log) = self.log.get() else {
            return;
        };
        *self.forward_error.lock().expect("forward error") = None;
        let channel = settings.syslog_channel.clone();
        let Some(rx) = log.forward(channel.as_ref().map(|_| settings.syslog_level)) else {
            return;
        };
        let ops = self.clone();
        // The task ends when a later restart replaces its queue.
        tokio::spawn(ops.forward_loop(channel.unwrap_or_default(), rx));
    }

    /// Sends queued records to the channel in batches, one connection per
    /// batch; a batch that fails is sent again after a back-off, while
    /// new records wait in the queue.
    async fn forward_loop(
        self: Arc<Self>,
        channel: String,
        mut rx: tokio::sync::mpsc::Receiver<LogRecord>,
    ) {
        let origin = Origin {
            hostname: lifeboat_os::host::hostname(),
            version: env!("CARGO_PKG_VERSION"),
        };
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, FORWARD_BATCH).await > 0 {
            let lines: Vec<Vec<u8>> = batch
                .iter()
                .map(|r| formats::log_syslog(r, &origin))
                .collect();
            let mut backoff = Duration::from_secs(1);
            loop {
                let sent = match self.alerts.channels.get(&channel).map(|c| c.config) {
                    Some(ChannelConfig::Syslog {
                        address,
                        transport: how,
                        ca_pem,
                    }) => transport::syslog(&address, how, &ca_pem, &lines).await,
                    _ => Err(format!("the channel {channel} is gone")),
                };
                match sent {
                    Ok(()) => {
                        *self.forward_error.lock().expect("forward error") = None;
                        break;
                    }
                    Err(e) if rx.is_closed() => {
                        tracing::debug!("log forwarding replaced; dropping a batch: {e}");
                        return;
                    }
                    Err(e) => {
                        let first = self
                            .forward_error
                            .lock()
                            .expect("forward error")
                            .replace(e.clone())
                            .is_none();
                        if first {
                            // Once per outage, not once per attempt.
                            tracing::warn!("cannot forward the log to syslog: {e}");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(FORWARD_MAX_BACKOFF);
                    }
                }
            }
            batch.clear();
        }
    }
}

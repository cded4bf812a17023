//! Alerts: what happened (an [`Event`], raised by the domain modules
//! through a [`Sink`]), the operator's rules that turn events into alerts
//! (severity, channels, de-duplication, a rate limit), and each alert's
//! deliveries, which live inside the alert's record so that raising an
//! alert and queueing it on its channels is one commit: an alert is never
//! lost across a controller restart, and a channel that is down is retried
//! with back-off.

pub mod channel;
pub mod rule;
pub mod send;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::clock::unix_now_ms;
use crate::store::book::Book;
use crate::store::{Store, StoreError, Table};
pub use channel::{Channel, ChannelConfig, ChannelInput};
pub use rule::{Condition, Rule, RuleInput};

/// Alerts kept in the history; the oldest finished ones go first.
pub const MAX_ALERTS: usize = 5000;
/// A delivery is given up this long after its alert was raised.
pub const GIVE_UP_AFTER_MS: u64 = 24 * 3600 * 1000;
/// The first retry waits this long; each further one twice as long …
const FIRST_RETRY_MS: u64 = 5_000;
/// … up to this.
const MAX_RETRY_MS: u64 = 600_000;

/// What an alert rule can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    HostSuspect,
    HostFailed,
    HostRecovered,
    FailoverStarted,
    FailoverFinished,
    FailoverFailed,
    AgentDisconnected,
    BackupSucceeded,
    BackupFailed,
    RestoreSucceeded,
    RestoreFailed,
    VerifySucceeded,
    VerifyFailed,
    /// A backup's sandbox booted (or did not) in a boot verification.
    BootVerifySucceeded,
    BootVerifyFailed,
    /// A datastore above a rule's fill level.
    DatastoreFill,
    /// A host's or VM's CPU or memory above a rule's threshold for its duration.
    MetricThreshold,
    /// A job running longer than a rule allows.
    JobTooLong,
    /// "Send test alert" on a channel.
    Test,
}

impl EventKind {
    pub const ALL: [EventKind; 19] = [
        EventKind::HostSuspect,
        EventKind::HostFailed,
        EventKind::HostRecovered,
        EventKind::FailoverStarted,
        EventKind::FailoverFinished,
        EventKind::FailoverFailed,
        EventKind::AgentDisconnected,
        EventKind::BackupSucceeded,
        EventKind::BackupFailed,
        EventKind::RestoreSucceeded,
        EventKind::RestoreFailed,
        EventKind::VerifySucceeded,
        EventKind::VerifyFailed,
        EventKind::BootVerifySucceeded,
        EventKind::BootVerifyFailed,
        EventKind::DatastoreFill,
        EventKind::MetricThreshold,
        EventKind::JobTooLong,
        EventKind::Test,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::HostSuspect => "host-suspect",
            EventKind::HostFailed => "host-failed",
            EventKind::HostRecovered => "host-recovered",
            EventKind::FailoverStarted => "failover-started",
            EventKind::FailoverFinished => "failover-finished",
            EventKind::FailoverFailed => "failover-failed",
            EventKind::AgentDisconnected => "agent-disconnected",
            EventKind::BackupSucceeded => "backup-succeeded",
            EventKind::BackupFailed => "backup-failed",
            EventKind::RestoreSucceeded => "restore-succeeded",
            EventKind::RestoreFailed => "restore-failed",
            EventKind::VerifySucceeded => "verify-succeeded",
            EventKind::VerifyFailed => "verify-failed",
            EventKind::BootVerifySucceeded => "boot-verify-succeeded",
            EventKind::BootVerifyFailed => "boot-verify-failed",
            EventKind::DatastoreFill => "datastore-fill",
            EventKind::MetricThreshold => "metric-threshold",
            EventKind::JobTooLong => "job-too-long",
            EventKind::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The severity an alert gets when its rule names none.
    pub fn default_severity(self) -> Severity {
        match self {
            EventKind::HostFailed | EventKind::FailoverFailed => Severity::Critical,
            EventKind::FailoverStarted
            | EventKind::BackupFailed
            | EventKind::RestoreFailed
            | EventKind::VerifyFailed
            | EventKind::BootVerifyFailed => Severity::Major,
            EventKind::HostSuspect
            | EventKind::AgentDisconnected
            | EventKind::DatastoreFill
            | EventKind::MetricThreshold
            | EventKind::JobTooLong => Severity::Warning,
            EventKind::HostRecovered
            | EventKind::FailoverFinished
            | EventKind::BackupSucceeded
            | EventKind::RestoreSucceeded
            | EventKind::VerifySucceeded
            | EventKind::BootVerifySucceeded
            | EventKind::Test => Severity::Info,
        }
    }

    /// Raised by the condition checker for one rule only, not by a module.
    pub fn is_condition(self) -> bool {
        matches!(
            self,
            EventKind::DatastoreFill | EventKind::MetricThreshold | EventKind::JobTooLong
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warning,
    Major,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Info,
        Severity::Warning,
        Severity::Major,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// `host`, `vm`, `job`, `datastore`, `failover` or `channel`.
    pub kind: String,
    pub id: String,
    pub name: String,
    /// The VM it concerns, if any: an alert about a VM is shown only to
    /// those who may see that VM.
    #[serde(default)]
    pub vm: Option<String>,
}

/// Something that happened, as a domain module reports it.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub subject: Subject,
    pub message: String,
    pub at_ms: u64,
    /// For condition events and tests: the one rule (or channel) it is for.
    pub only_for: Option<String>,
}

impl Event {
    pub fn new(kind: EventKind, subject: Subject, message: impl Into<String>) -> Event {
        Event {
            kind,
            subject,
            message: message.into(),
            at_ms: unix_now_ms(),
            only_for: None,
        }
    }
}

/// Where domain modules report events; cheap to clone, never blocks.
#[derive(Clone)]
pub struct Sink(mpsc::UnboundedSender<Event>);

impl Sink {
    pub fn channel() -> (Sink, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Sink(tx), rx)
    }

    pub fn raise(&self, event: Event) {
        // Gone only while the controller shuts down.
        let _ = self.0.send(event);
    }
}

/// Where one alert stands on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum DeliveryState {
    Pending {
        next_at_ms: u64,
    },
    Sent {
        at_ms: u64,
    },
    /// Given up (after [`GIVE_UP_AFTER_MS`], or the channel was deleted).
    Failed {
        at_ms: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub channel: String,
    #[serde(flatten)]
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// One alert: a rule's response to an event, and its deliveries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alert {
    pub id: u64,
    pub at_ms: u64,
    pub rule: String,
    pub rule_name: String,
    pub event: EventKind,
    pub severity: Severity,
    pub subject: Subject,
    pub message: String,
    /// The same event for the same object again within the rule's
    /// de-duplication window: counted here, not sent again.
    pub repeats: u32,
    pub last_at_ms: u64,
    /// Over the rule's rate limit: recorded, not sent.
    pub suppressed: bool,
    pub deliveries: Vec<Delivery>,
}

impl Alert {
    pub fn pending(&self) -> bool {
        self.deliveries
            .iter()
            .any(|d| matches!(d.state, DeliveryState::Pending { .. }))
    }
}

/// How one attempt to deliver went.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Sent,
    /// Retried after [`backoff_ms`].
    Failed(String),
    /// Not retried: the channel is gone or disabled.
    GaveUp(String),
}

fn key(id: u64) -> String {
    format!("{id:016}")
}

/// How long the `attempts`-th failed attempt waits before the next.
pub fn backoff_ms(attempts: u32) -> u64 {
    FIRST_RETRY_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(MAX_RETRY_MS)
}

/// What de-duplication and the rate limit remember, rebuilt from the
/// history at start.
#[derive(Default)]
struct Memory {
    /// (rule, event, object) → the alert that counts repeats, and when.
    last: HashMap<(String, EventKind, String), (u64, u64)>,
    /// Per rule: when its recent alerts were sent (at most an hour back).
    sent: HashMap<String, VecDeque<u64>>,
}

pub struct Alerts {
    pub rules: Book<Rule>,
    pub channels: Book<Channel>,
    alerts: Book<Alert>,
    memory: Mutex<Memory>,
    next_id: std::sync::atomic::AtomicU64,
    /// Woken when a delivery becomes due.
    pub wake: Notify,
}

impl Alerts {
    pub fn load(store: Store) -> Result<Alerts, StoreError> {
        let alerts: Book<Alert> = Book::load(store.clone(), Table::Alerts)?;
        let all = alerts.all();
        let next = all.iter().map(|a| a.id).max().map_or(1, |m| m + 1);
        let mut memory = Memory::default();
        for a in &all {
            memory.last.insert(
                (a.rule.clone(), a.event, a.subject.id.clone()),
                (a.id, a.last_at_ms),
            );
            if !a.suppressed {
                memory
                    .sent
                    .entry(a.rule.clone())
                    .or_default()
                    .push_back(a.at_ms);
            }
        }
        Ok(Alerts {
            rules: Book::load(store.clone(), Table::AlertRules)?,
            channels: Book::load(store, Table::AlertChannels)?,
            alerts,
            memory: Mutex::new(memory),
            next_id: std::sync::atomic::AtomicU64::new(next),
            wake: Notify::new(),
        })
    }

    /// Newest first.
    pub fn history(&self, keep: impl Fn(&Alert) -> bool, limit: usize) -> Vec<Alert> {
        let mut all = self.alerts.all();
        all.reverse();
        all.into_iter().filter(|a| keep(a)).take(limit).collect()
    }

    pub fn get(&self, id: u64) -> Option<Alert> {
        self.alerts.get(&key(id))
    }

    /// Turns an event into the alerts its matching rules ask for, each
    /// stored with its deliveries queued before this returns.
    pub async fn handle(&self, event: &Event) -> Result<Vec<Alert>, StoreError> {
        let mut raised = Vec::new();
        for rule in self.rules.all() {
            let matches = match &event.only_for {
                Some(only) => rule.enabled && *only == rule.id,
                None => rule.enabled && rule.events.contains(&event.kind),
            };
            if matches {
                if let Some(alert) = self.raise(&rule, event).await? {
                    raised.push(alert);
                }
            }
        }
        Ok(raised)
    }

    /// An alert for `event` under `rule`: a repeat counted on the earlier
    /// alert (None), a suppressed one, or one queued on the rule's channels.
    async fn raise(&self, rule: &Rule, event: &Event) -> Result<Option<Alert>, StoreError> {
        let now = event.at_ms;
        let dedup_key = (rule.id.clone(), event.kind, event.subject.id.clone());
        let (repeat_of, suppressed) = {
            let mut m = self.memory.lock().expect("alerts memory");
            let repeat_of = m
                .last
                .get(&dedup_key)
                .filter(|(_, at)| now < at + rule.dedup_secs * 1000)
                .map(|(id, _)| *id);
            let sent = m.sent.entry(rule.id.clone()).or_default();
            while sent.front().is_some_and(|t| *t + 3_600_000 <= now) {
                sent.pop_front();
            }
            let suppressed = sent.len() >= rule.max_per_hour as usize;
            if repeat_of.is_none() && !suppressed {
                sent.push_back(now);
            }
            (repeat_of, suppressed)
        };
        if let Some(id) = repeat_of {
            let counted = self
                .alerts
                .update(&key(id), |earlier| {
                    earlier.repeats += 1;
                    earlier.last_at_ms = now;
                    Some(())
                })
                .await?;
            if counted.is_some() {
                self.memory
                    .lock()
                    .expect("alerts memory")
                    .last
                    .insert(dedup_key, (id, now));
                return Ok(None);
            }
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deliveries = if suppressed {
            Vec::new()
        } else {
            rule.channels
                .iter()
                .map(|c| Delivery {
                    channel: c.clone(),
                    state: DeliveryState::Pending { next_at_ms: now },
                    attempts: 0,
                    last_error: None,
                })
                .collect()
        };
        let alert = Alert {
            id,
            at_ms: now,
            rule: rule.id.clone(),
            rule_name: rule.name.clone(),
            event: event.kind,
            severity: rule.severity.unwrap_or(event.kind.default_severity()),
            subject: event.subject.clone(),
            message: event.message.clone(),
            repeats: 0,
            last_at_ms: now,
            suppressed,
            deliveries,
        };
        self.alerts.put(&key(id), alert.clone()).await?;
        self.memory
            .lock()
            .expect("alerts memory")
            .last
            .insert(dedup_key, (id, now));
        self.trim().await?;
        if alert.pending() {
            self.wake.notify_one();
        }
        Ok(Some(alert))
    }

    /// An alert outside the rules: a channel's test.
    pub async fn raise_test(&self, channel: &Channel, who: &str) -> Result<Alert, StoreError> {
        let now = unix_now_ms();
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let alert = Alert {
            id,
            at_ms: now,
            rule: String::new(),
            rule_name: "test".into(),
            event: EventKind::Test,
            severity: Severity::Info,
            subject: Subject {
                kind: "channel".into(),
                id: channel.id.clone(),
                name: channel.name.clone(),
                vm: None,
            },
            message: format!("Test alert on channel {}, sent by {who}", channel.name),
            repeats: 0,
            last_at_ms: now,
            suppressed: false,
            deliveries: vec![Delivery {
                channel: channel.id.clone(),
                state: DeliveryState::Pending { next_at_ms: now },
                attempts: 0,
                last_error: None,
            }],
        };
        self.alerts.put(&key(id), alert.clone()).await?;
        self.trim().await?;
        self.wake.notify_one();
        Ok(alert)
    }

    /// Drops the oldest alerts beyond [`MAX_ALERTS`] that wait for nothing.
    async fn trim(&self) -> Result<(), StoreError> {
        let excess = self.alerts.len().saturating_sub(MAX_ALERTS);
        if excess == 0 {
            return Ok(());
        }
        for (k, a) in self.alerts.entries().into_iter().take(excess * 2) {
            if !a.pending() && self.alerts.len() > MAX_ALERTS {
                self.alerts.delete(&k).await?;
            }
        }
        Ok(())
    }

    /// Deliveries due by `now_ms`: (alert, channel id), oldest alert first.
    pub fn due(&self, now_ms: u64) -> Vec<(Alert, String)> {
        let mut due = Vec::new();
        for a in self.alerts.all().into_iter().filter(Alert::pending) {
            for d in &a.deliveries {
                if let DeliveryState::Pending { next_at_ms } = d.state {
                    if next_at_ms <= now_ms {
                        due.push((a.clone(), d.channel.clone()));
                    }
                }
            }
        }
        due
    }

    /// When the next pending delivery is due, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.alerts
            .all()
            .iter()
            .flat_map(|a| &a.deliveries)
            .filter_map(|d| match d.state {
                DeliveryState::Pending { next_at_ms } => Some(next_at_ms),
                _ => None,
            })
            .min()
    }

    /// Records the outcome of one attempt to deliver alert `id` on `channel`.
    pub async fn delivered(
        &self,
        id: u64,
        channel: &str,
        outcome: Attempt,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.alerts
            .update(&key(id), |alert| {
                let at = alert.at_ms;
                let d = alert.deliveries.iter_mut().find(|d| d.channel == channel)?;
                d.attempts += 1;
                d.state = match outcome {
                    Attempt::Sent => DeliveryState::Sent { at_ms: now_ms },
                    Attempt::Failed(e) => {
                        let next = now_ms + backoff_ms(d.attempts);
                        d.last_error = Some(e);
                        if next > at + GIVE_UP_AFTER_MS {
                            DeliveryState::Failed { at_ms: now_ms }
                        } else {
                            DeliveryState::Pending { next_at_ms: next }
                        }
                    }
                    Attempt::GaveUp(e) => {
                        d.last_error = Some(e);
                        DeliveryState::Failed { at_ms: now_ms }
                    }
                };
                Some(())
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! The controller's own log, beside stderr: every tracing event that
//! passes the level filter is also kept in memory (the newest
//! [`KEPT_RECORDS`]) for the console and the API, and queued for a syslog
//! alert channel when one is chosen. The level filter can be changed while
//! the controller runs.
//!
//! Logging never waits: a record that does not fit in the forwarding queue
//! (the syslog server is away and the queue is full) is dropped and
//! counted.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// Records kept in memory.
pub const KEPT_RECORDS: usize = 2000;
/// Longest message kept (bytes, cut at a character boundary).
pub const MAX_MESSAGE: usize = 2048;
/// Records waiting for the syslog channel.
pub const FORWARD_QUEUE: usize = 10_000;

/// From the most to the least severe; a filter at a level keeps that
/// level and every more severe one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    pub fn parse(s: &str) -> Option<LogLevel> {
        LogLevel::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// Whether a record at `self` passes a filter at `filter`.
    pub fn passes(self, filter: LogLevel) -> bool {
        self <= filter
    }
}

impl From<tracing::Level> for LogLevel {
    fn from(l: tracing::Level) -> LogLevel {
        match l {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogRecord {
    /// Numbers records in the order they were made, from 1.
    pub seq: u64,
    pub at_ms: u64,
    pub level: LogLevel,
    /// The module that logged it, e.g. `lifeboat_core::hub`.
    pub target: String,
    /// The message, then the event's other fields as `name=value`.
    pub message: String,
}

type LevelSetter = Box<dyn Fn(LogLevel) -> Result<(), String> + Send + Sync>;

struct Forward {
    level: LogLevel,
    queue: tokio::sync::mpsc::Sender<LogRecord>,
}

/// What the log layer records into, and what changes its level.
#[derive(Default)]
pub struct Log {
    records: Mutex<VecDeque<LogRecord>>,
    next_seq: AtomicU64,
    level: Mutex<LogLevel>,
    set_level: OnceLock<LevelSetter>,
    forward: Mutex<Option<Forward>>,
    dropped: AtomicU64,
}

impl Log {
    /// The layer to add to the process's subscriber.
    pub fn layer(self: &std::sync::Arc<Self>) -> LogLayer {
        LogLayer(self.clone())
    }

    /// Registers what applies a new level to the subscriber's filter (once),
    /// and the level it starts at.
    pub fn on_level_change(&self, start: LogLevel, set: LevelSetter) {
        *self.level.lock().expect("log level") = start;
        let _ = self.set_level.set(set);
    }

    pub fn level(&self) -> LogLevel {
        *self.level.lock().expect("log level")
    }

    pub fn set_level(&self, level: LogLevel) -> Result<(), String> {
        if let Some(set) = self.set_level.get() {
            set(level)?;
        }
        *self.level.lock().expect("log level") = level;
        Ok(())
    }

    /// Forwards records at `level` or more severe into a new queue (its
    /// receiving end returned), or stops forwarding (`None`).
    pub fn forward(
        &self,
        level: Option<LogLevel>,
    ) -> Option<tokio::sync::mpsc::Receiver<LogRecord>> {
        let mut forward = self.forward.lock().expect("log forward");
        let Some(level) = level else {
            *forward = None;
            return None;
        };
        let (queue, rx) = tokio::sync::mpsc::channel(FORWARD_QUEUE);
        *forward = Some(Forward { level, queue });
        Some(rx)
    }

    /// Records dropped because the forwarding queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The newest `limit` records at `min` or more severe with a number
    /// above `after`, oldest first.
    pub fn recent(&self, min: LogLevel, after: u64, limit: usize) -> Vec<LogRecord> {
        let records = self.records.lock().expect("log records");
        let mut picked: Vec<LogRecord> = records
            .iter()
            .rev()
            .filter(|r| r.seq > after && r.level.passes(min))
            .take(limit)
            .cloned()
            .collect();
        picked.reverse();
        picked
    }

    fn record(&self, level: LogLevel, target: &str, message: String) {
        let record = LogRecord {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed) + 1,
            at_ms: crate::clock::unix_now_ms(),
            level,
            target: target.to_string(),
            message,
        };
        // Only the controller's own records leave the process: a record
        // from a library the forwarder itself uses (TLS, sockets) would
        // otherwise be sent about sending.
        if let Some(f) = self.forward.lock().expect("log forward").as_ref() {
            if level.passes(f.level)
                && target.starts_with("lifeboat")
                && f.queue.try_send(record.clone()).is_err()
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut records = self.records.lock().expect("log records");
        if records.len() == KEPT_RECORDS {
            records.pop_front();
        }
        records.push_back(record);
    }
}

/// Records each event into a [`Log`].
pub struct LogLayer(std::sync::Arc<Log>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut text = FieldText::default();
        event.record(&mut text);
        self.0
            .record(LogLevel::from(*meta.level()), meta.target(), text.finish());
    }
}

/// An event's fields as one line: the message first, then `name=value`.
#[derive(Default)]
struct FieldText {
    message: String,
    fields: String,
}

impl FieldText {
    fn finish(self) -> String {
        let mut line = self.message;
        if !self.fields.is_empty() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&self.fields);
        }
        let mut end = line.len().min(MAX_MESSAGE);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.replace(['\r', '\n'], " ")
    }
}

impl Visit for FieldText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            return;
        }
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}={value:?}", field.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    fn with_log(f: impl FnOnce()) -> Arc<Log> {
        let log = Arc::new(Log::default());
        let subscriber = tracing_subscriber::registry().with(log.layer());
        tracing::subscriber::with_default(subscriber, f);
        log
    }

    #[test]
    fn events_are_kept_with_their_fields_newest_last() {
        let log = with_log(|| {
            tracing::info!(host = "kvm01", connection = 3, "agent connected");
            tracing::warn!("disk {} is {}% full", "sda", 91);
            tracing::debug!(a = "line\nbreak", "x");
        });
        let all = log.recent(LogLevel::Trace, 0, 10);
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[0].message,
            r#"agent connected host="kvm01" connection=3"#
        );
        assert_eq!(all[0].level, LogLevel::Info);
        assert!(
            all[0].target.ends_with("logging::tests"),
            "{}",
            all[0].target
        );
        assert_eq!(all[1].message, "disk sda is 91% full");
        assert!(!all[2].message.contains('\n'));
        assert_eq!(
            log.recent(LogLevel::Warn, 0, 10)
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(log.recent(LogLevel::Trace, 2, 10).len(), 1, "after 2");
        assert_eq!(log.recent(LogLevel::Trace, 0, 1)[0].seq, 3, "the newest");
    }

    #[test]
    fn only_the_newest_records_are_kept_and_messages_are_bounded() {
        let log = with_log(|| {
            for i in 0..KEPT_RECORDS + 5 {
                tracing::info!("record {i} {}", "é".repeat(MAX_MESSAGE));
            }
        });
        let all = log.recent(LogLevel::Trace, 0, usize::MAX);
        assert_eq!(all.len(), KEPT_RECORDS);
        assert_eq!(all[0].seq, 6);
        assert!(all.iter().all(|r| r.message.len() <= MAX_MESSAGE));
    }

    #[test]
    fn forwarding_takes_the_chosen_levels_and_counts_what_does_not_fit() {
        let log = Arc::new(Log::default());
        let mut rx = log.forward(Some(LogLevel::Warn)).unwrap();
        for i in 0..FORWARD_QUEUE + 3 {
            log.record(LogLevel::Error, "lifeboat_core::x", format!("e{i}"));
        }
        log.record(LogLevel::Info, "lifeboat_core::x", "not forwarded".into());
        log.record(LogLevel::Error, "rustls::conn", "not ours".into());
        assert_eq!(log.dropped(), 3);
        assert_eq!(rx.try_recv().unwrap().message, "e0");
        assert!(log.forward(None).is_none());
        log.record(LogLevel::Error, "lifeboat_core::x", "after".into());
        let mut n = 1;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, FORWARD_QUEUE, "nothing after forwarding stopped");
    }

    #[test]
    fn the_level_setter_is_called_and_remembered() {
        let log = Log::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        log.on_level_change(
            LogLevel::Warn,
            Box::new(move |l| {
                s.lock().unwrap().push(l);
                Ok(())
            }),
        );
        assert_eq!(log.level(), LogLevel::Warn);
        log.set_level(LogLevel::Debug).unwrap();
        assert_eq!(log.level(), LogLevel::Debug);
        assert_eq!(*seen.lock().unwrap(), vec![LogLevel::Debug]);
        assert_eq!(LogLevel::parse("trace"), Some(LogLevel::Trace));
        assert!(LogLevel::Error.passes(LogLevel::Info));
        assert!(!LogLevel::Debug.passes(LogLevel::Info));
    }
}

//! Alert rules: which events, how severe, on which channels, how often.

use serde::{Deserialize, Serialize};

use super::{EventKind, Severity};

/// Longest a name may be.
const MAX_NAME: usize = 100;
/// Most channels one rule sends to.
const MAX_CHANNELS: usize = 16;

/// A condition the checker evaluates every few seconds; crossing it raises
/// its event for the rule that holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Condition {
    /// A datastore more than `above_percent` full.
    DatastoreFill { above_percent: f64 },
    /// A host's or VM's CPU or memory use above `above_percent` for
    /// `for_secs` without a break.
    Metric {
        object: MetricObject,
        metric: MetricName,
        above_percent: f64,
        for_secs: u64,
    },
    /// A job (of `job_kind`, or any) running longer than `minutes`.
    JobTooLong {
        minutes: u64,
        #[serde(default)]
        job_kind: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricObject {
    Host,
    Vm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricName {
    Cpu,
    Memory,
}

impl Condition {
    /// The event the condition raises.
    pub fn event(&self) -> EventKind {
        match self {
            Condition::DatastoreFill { .. } => EventKind::DatastoreFill,
            Condition::Metric { .. } => EventKind::MetricThreshold,
            Condition::JobTooLong { .. } => EventKind::JobTooLong,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let percent = |p: f64| {
            if (0.0..=100.0).contains(&p) {
                Ok(())
            } else {
                Err("condition.above_percent: 0 to 100".to_string())
            }
        };
        match self {
            Condition::DatastoreFill { above_percent } => percent(*above_percent),
            Condition::Metric {
                above_percent,
                for_secs,
                ..
            } => {
                percent(*above_percent)?;
                if *for_secs > 7 * 86_400 {
                    return Err("condition.for_secs: at most a week (604800)".into());
                }
                Ok(())
            }
            Condition::JobTooLong { minutes, job_kind } => {
                if !(1..=10_080).contains(minutes) {
                    return Err("condition.minutes: 1 to 10080 (a week)".into());
                }
                if job_kind.as_ref().is_some_and(|k| {
                    k.is_empty()
                        || k.len() > 32
                        || !k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                }) {
                    return Err("condition.job_kind: a job kind such as backup or restore".into());
                }
                Ok(())
            }
        }
    }
}

/// A rule as an operator gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Events it fires on (none when it has a condition).
    #[serde(default)]
    pub events: Vec<EventKind>,
    #[serde(default)]
    pub condition: Option<Condition>,
    /// None: each event's own severity.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Channel ids.
    #[serde(default)]
    pub channels: Vec<String>,
    /// The same event for the same object within this many seconds is a
    /// repeat: counted, not sent.
    #[serde(default = "default_dedup_secs")]
    pub dedup_secs: u64,
    /// Most alerts sent per hour; more are recorded as suppressed.
    #[serde(default = "default_max_per_hour")]
    pub max_per_hour: u32,
}

fn yes() -> bool {
    true
}
fn default_dedup_secs() -> u64 {
    300
}
fn default_max_per_hour() -> u32 {
    30
}

/// A rule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub events: Vec<EventKind>,
    pub condition: Option<Condition>,
    pub severity: Option<Severity>,
    pub channels: Vec<String>,
    pub dedup_secs: u64,
    pub max_per_hour: u32,
}

impl RuleInput {
    /// Checks everything but whether the channels exist; errors start with
    /// the field's name.
    pub fn validate(&self) -> Result<(), String> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(format!("name: 1 to {MAX_NAME} printable characters"));
        }
        match &self.condition {
            Some(c) => {
                c.validate()?;
                if !self.events.is_empty() {
                    return Err("events: a rule with a condition fires on it alone".into());
                }
            }
            None => {
                if self.events.is_empty() {
                    return Err("events: name at least one event, or give a condition".into());
                }
                if let Some(k) = self
                    .events
                    .iter()
                    .find(|k| k.is_condition() || **k == EventKind::Test)
                {
                    return Err(format!(
                        "events: {} is raised by a condition or a channel test, not an event",
                        k.as_str()
                    ));
                }
            }
        }
        if self.channels.len() > MAX_CHANNELS {
            return Err(format!("channels: at most {MAX_CHANNELS}"));
        }
        if self.dedup_secs > 7 * 86_400 {
            return Err("dedup_secs: at most a week (604800)".into());
        }
        if !(1..=3600).contains(&self.max_per_hour) {
            return Err("max_per_hour: 1 to 3600".into());
        }
        Ok(())
    }

    pub fn into_rule(self, id: String) -> Rule {
        let mut events = match &self.condition {
            Some(c) => vec![c.event()],
            None => self.events,
        };
        events.sort_by_key(|k| k.as_str());
        events.dedup();
        let mut channels = self.channels;
        channels.dedup();
        Rule {
            id,
            name: self.name.trim().to_string(),
            enabled: self.enabled,
            events,
            condition: self.condition,
            severity: self.severity,
            channels,
            dedup_secs: self.dedup_secs,
            max_per_hour: self.max_per_hour,
        }
    }
}

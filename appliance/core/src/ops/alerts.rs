//! Alerts through the operations layer: the history (what a principal may
//! see of it), rules and channels (administrators without access policies:
//! a channel receives news of the whole estate), a channel's test, and the
//! background work: turning events into alerts, checking rule conditions,
//! and delivering with retries.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Ops, OpsError};
use crate::access::{require, Principal, Privilege};
use crate::alerts::rule::{MetricName, MetricObject};
use crate::alerts::send::{self, Origin};
use crate::alerts::{
    Alert, Attempt, Channel, ChannelInput, Condition, Event, EventKind, Rule, RuleInput, Subject,
};
use crate::clock::{unix_now, unix_now_ms};
use crate::jobs::JobState;

/// How often rule conditions are checked.
const CONDITION_PERIOD: Duration = Duration::from_secs(10);
/// Longest the delivery loop sleeps without looking at the queue.
const DELIVERY_POLL: Duration = Duration::from_secs(5);
/// Most alerts one history request returns.
pub const MAX_ALERT_LIST: usize = 1000;

/// A channel as shown: its secret blanked, and whether one is stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelView {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub config: crate::alerts::ChannelConfig,
    pub secret_set: bool,
}

impl ChannelView {
    fn of(c: Channel) -> ChannelView {
        ChannelView {
            secret_set: c.config.has_secret(),
            config: c.config.without_secret(),
            id: c.id,
            name: c.name,
            enabled: c.enabled,
        }
    }
}

/// Which alerts to list.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub event: Option<EventKind>,
    pub severity: Option<crate::alerts::Severity>,
    /// A subject id (host, VM, job ...).
    pub object: Option<String>,
    pub limit: usize,
}

/// What the condition checker remembers between rounds.
#[derive(Default)]
struct ConditionState {
    /// (rule, object) → since when (UNIX seconds) the metric is above.
    above_since: HashMap<(String, String), u64>,
    /// (rule, object) whose crossing was raised and has not ended.
    raised: HashSet<(String, String)>,
}

impl Ops {
    pub fn alerts(&self, who: &Principal, filter: &AlertFilter) -> Result<Vec<Alert>, OpsError> {
        require(who, Privilege::View, "viewing alerts")?;
        let limit = filter.limit.clamp(1, MAX_ALERT_LIST);
        Ok(self.alerts.history(
            |a| {
                filter.event.is_none_or(|e| a.event == e)
                    && filter.severity.is_none_or(|s| a.severity == s)
                    && filter.object.as_ref().is_none_or(|o| a.subject.id == *o)
                    && self.alert_visible(who, a)
            },
            limit,
        ))
    }

    pub fn alert(&self, who: &Principal, id: u64) -> Result<Alert, OpsError> {
        require(who, Privilege::View, "viewing alerts")?;
        self.alerts
            .get(id)
            .filter(|a| self.alert_visible(who, a))
            .ok_or_else(|| OpsError::NotFound(format!("no alert {id}")))
    }

    /// An alert about a VM is for those who may see the VM; about a job,
    /// for those who may see its VM.
    fn alert_visible(&self, who: &Principal, a: &Alert) -> bool {
        if who.scope.is_none() {
            return true;
        }
        match &a.subject.vm {
            Some(uuid) => self.visible_uuid(who, uuid),
            None => a.subject.kind != "vm",
        }
    }

    fn require_alert_admin(who: &Principal, what: &'static str) -> Result<(), OpsError> {
        require(who, Privilege::Administer, what)?;
        super::require_unrestricted(who, what)
    }

    pub fn alert_rules(&self, who: &Principal) -> Result<Vec<Rule>, OpsError> {
        require(who, Privilege::View, "viewing alert rules")?;
        Ok(self.alerts.rules.all())
    }

    /// Creates (`id` None) or replaces a rule; its channels must exist.
    pub async fn put_alert_rule(
        &self,
        who: &Principal,
        id: Option<&str>,
        input: RuleInput,
    ) -> Result<Rule, OpsError> {
        let object = format!("alert rule {}", id.unwrap_or(input.name.trim()));
        let result = async {
            Self::require_alert_admin(who, "changing alert rules")?;
            input.validate().map_err(OpsError::BadRequest)?;
            if let Some(c) = input
                .channels
                .iter()
                .find(|c| self.alerts.channels.get(c).is_none())
            {
                return Err(OpsError::BadRequest(format!("channels: no channel {c}")));
            }
            let id = match id {
                Some(id) => {
                    self.alerts
                        .rules
                        .get(id)
                        .ok_or_else(|| OpsError::NotFound(format!("no alert rule {id}")))?;
                    id.to_string()
                }
                None => new_id("rule"),
            };
            let rule = input.into_rule(id.clone());
            self.alerts.rules.put(&id, rule.clone()).await?;
            Ok(rule)
        }
        .await;
        self.audited(who, "set alert rule", &object, result).await
    }

    pub async fn delete_alert_rule(&self, who: &Principal, id: &str) -> Result<(), OpsError> {
        let result = async {
            Self::require_alert_admin(who, "deleting alert rules")?;
            if !self.alerts.rules.delete(id).await? {
                return Err(OpsError::NotFound(format!("no alert rule {id}")));
            }
            Ok(())
        }
        .await;
        self.audited(
            who,
            "delete alert rule",
            &format!("alert rule {id}"),
            result,
        )
        .await
    }

    pub fn alert_channels(&self, who: &Principal) -> Result<Vec<ChannelView>, OpsError> {
        Self::require_alert_admin(who, "viewing alert channels")?;
        Ok(self
            .alerts
            .channels
            .all()
            .into_iter()
            .map(ChannelView::of)
            .collect())
    }

    /// Creates (`id` None) or replaces a channel; an empty secret keeps
    /// the stored one (of a channel of the same kind).
    pub async fn put_alert_channel(
        &self,
        who: &Principal,
        id: Option<&str>,
        mut input: ChannelInput,
    ) -> Result<ChannelView, OpsError> {
        let object = format!("alert channel {}", id.unwrap_or(input.name.trim()));
        let result = async {
            Self::require_alert_admin(who, "changing alert channels")?;
            input.validate().map_err(OpsError::BadRequest)?;
            let existing = match id {
                Some(id) => Some(
                    self.alerts
                        .channels
                        .get(id)
                        .ok_or_else(|| OpsError::NotFound(format!("no alert channel {id}")))?,
                ),
                None => None,
            };
            // An empty secret keeps the stored one (of a channel of the same kind).
            let mut stored = existing
                .filter(|c| c.config.kind() == input.config.kind())
                .map(|c| c.config);
            let stored: Vec<String> = stored
                .as_mut()
                .map(|c| c.secrets_mut().into_iter().map(|s| s.clone()).collect())
                .unwrap_or_default();
            let mut opened = input.config.clone();
            for (i, (secret, plain)) in input
                .config
                .secrets_mut()
                .into_iter()
                .zip(opened.secrets_mut())
                .enumerate()
            {
                if secret.is_empty() {
                    *secret = stored.get(i).cloned().unwrap_or_default();
                    *plain = if secret.is_empty() {
                        String::new()
                    } else {
                        "kept".into()
                    };
                } else {
                    *secret = self
                        .secrets
                        .seal(secret)
                        .map_err(|e| OpsError::Internal(e.to_string()))?;
                }
            }
            opened.validate_secrets().map_err(OpsError::BadRequest)?;
            let id = id.map_or_else(|| new_id("channel"), str::to_string);
            let channel = Channel {
                id: id.clone(),
                name: input.name.trim().to_string(),
                enabled: input.enabled,
                config: input.config,
            };
            self.alerts.channels.put(&id, channel.clone()).await?;
            Ok(ChannelView::of(channel))
        }
        .await;
        self.audited(who, "set alert channel", &object, result)
            .await
    }

    /// Deletes a channel; rules stop naming it, and its pending deliveries
    /// are given up.
    pub async fn delete_alert_channel(&self, who: &Principal, id: &str) -> Result<(), OpsError> {
        let result = async {
            Self::require_alert_admin(who, "deleting alert channels")?;
            if !self.alerts.channels.delete(id).await? {
                return Err(OpsError::NotFound(format!("no alert channel {id}")));
            }
            for mut rule in self.alerts.rules.all() {
                if rule.channels.iter().any(|c| c == id) {
                    rule.channels.retain(|c| c != id);
                    self.alerts.rules.put(&rule.id.clone(), rule).await?;
                }
            }
            self.stop_forwarding_to(id).await?;
            self.alerts.wake.notify_one();
            Ok(())
        }
        .await;
        self.audited(
            who,
            "delete alert channel",
            &format!("alert channel {id}"),
            result,
        )
        .await
    }

    /// Who sends the SNMP channels' alerts (the SNMP adapter, once).
    pub fn set_snmp_notifier(&self, notifier: Arc<dyn send::SnmpNotifier>) {
        let _ = self.snmp_notifier.set(notifier);
    }

    /// Queues a test alert on one channel ("send test alert").
    pub async fn test_alert_channel(&self, who: &Principal, id: &str) -> Result<Alert, OpsError> {
        let result = async {
            Self::require_alert_admin(who, "testing alert channels")?;
            let channel = self
                .alerts
                .channels
                .get(id)
                .ok_or_else(|| OpsError::NotFound(format!("no alert channel {id}")))?;
            Ok(self.alerts.raise_test(&channel, &who.user).await?)
        }
        .await;
        self.audited(
            who,
            "test alert channel",
            &format!("alert channel {id}"),
            result,
        )
        .await
    }

    /// Turns events into alerts, as they come (started once).
    pub(super) async fn alert_loop(self: Arc<Self>) {
        let Some(mut events) = self.alert_events.lock().expect("alert events").take() else {
            return;
        };
        while let Some(mut event) = events.recv().await {
            if event.subject.name.is_empty() {
                event.subject.name = self.subject_name(&event.subject);
            }
            if let Err(e) = self.alerts.handle(&event).await {
                tracing::error!("cannot record an alert for {}: {e}", event.kind.as_str());
            }
        }
    }

    fn subject_name(&self, s: &Subject) -> String {
        match s.kind.as_str() {
            "host" => self.inventory.host_name(&s.id),
            "vm" => self
                .inventory
                .vm(&s.id)
                .map_or_else(|| s.id.clone(), |v| v.info.name),
            _ => s.id.clone(),
        }
    }

    /// Delivers due alerts: one attempt at a time per channel, channels in
    /// parallel, each attempt's outcome stored before the next.
    pub(super) async fn delivery_loop(self: Arc<Self>) {
        let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
        let origin = Arc::new(Origin {
            hostname: lifeboat_os::host::hostname(),
            version: env!("CARGO_PKG_VERSION"),
        });
        loop {
            let now = unix_now_ms();
            for (alert, channel_id) in self.alerts.due(now) {
                if !busy
                    .lock()
                    .expect("busy channels")
                    .insert(channel_id.clone())
                {
                    continue;
                }
                let (ops, busy, origin) = (self.clone(), busy.clone(), origin.clone());
                tokio::spawn(async move {
                    let outcome = ops.attempt(&alert, &channel_id, &origin).await;
                    if let Attempt::Failed(e) | Attempt::GaveUp(e) = &outcome {
                        tracing::warn!("alert {} on channel {channel_id}: {e}", alert.id);
                    }
                    if let Err(e) = ops
                        .alerts
                        .delivered(alert.id, &channel_id, outcome, unix_now_ms())
                        .await
                    {
                        tracing::error!("cannot record the delivery of alert {}: {e}", alert.id);
                    }
                    busy.lock().expect("busy channels").remove(&channel_id);
                    ops.alerts.wake.notify_one();
                });
            }
            let wait = self
                .alerts
                .next_due()
                .map_or(DELIVERY_POLL, |at| {
                    Duration::from_millis(at.saturating_sub(unix_now_ms()))
                })
                .clamp(Duration::from_millis(50), DELIVERY_POLL);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.alerts.wake.notified() => {}
            }
        }
    }

    async fn attempt(&self, alert: &Alert, channel_id: &str, origin: &Origin) -> Attempt {
        let Some(channel) = self.alerts.channels.get(channel_id) else {
            return Attempt::GaveUp("the channel was deleted".into());
        };
        if !channel.enabled {
            return Attempt::GaveUp("the channel is disabled".into());
        }
        let mut config = channel.config;
        for secret in config.secrets_mut().into_iter().filter(|s| !s.is_empty()) {
            let plain: String = match self.secrets.open(secret.as_str()) {
                Ok(plain) => plain,
                Err(e) => return Attempt::GaveUp(format!("cannot open the channel's secret: {e}")),
            };
            *secret = plain;
        }
        let notifier = self.snmp_notifier.get().map(|n| n.as_ref());
        match send::deliver(&config, alert, origin, notifier).await {
            Ok(()) => Attempt::Sent,
            Err(e) => Attempt::Failed(e),
        }
    }

    /// Checks the rules' conditions every [`CONDITION_PERIOD`].
    pub(super) async fn condition_loop(self: Arc<Self>) {
        let mut state = ConditionState::default();
        let mut tick = tokio::time::interval(CONDITION_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for event in self.check_conditions(&mut state).await {
                self.sink.raise(event);
            }
        }
    }

    async fn check_conditions(&self, state: &mut ConditionState) -> Vec<Event> {
        let rules: Vec<(Rule, Condition)> = self
            .alerts
            .rules
            .all()
            .into_iter()
            .filter(|r| r.enabled)
            .filter_map(|r| r.condition.clone().map(|c| (r, c)))
            .collect();
        let now = unix_now();
        let mut crossing = Vec::new();
        let mut holding: HashSet<(String, String)> = HashSet::new();
        let system = Principal::system("alerts", "alert conditions");
        for (rule, condition) in &rules {
            let over: Vec<(Subject, String)> = match condition {
                Condition::DatastoreFill { above_percent } => self
                    .datastores(&system)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|d| {
                        let c = d.capacity.ok()?;
                        let used = c.total_bytes.saturating_sub(c.free_bytes) as f64;
                        let percent = used / (c.total_bytes.max(1) as f64) * 100.0;
                        (percent > *above_percent).then(|| {
                            (
                                subject("datastore", &d.name, &d.name, None),
                                format!("datastore {} is {percent:.0} % full (rule: above {above_percent} %)", d.name),
                            )
                        })
                    })
                    .collect(),
                Condition::Metric {
                    object,
                    metric,
                    above_percent,
                    for_secs,
                } => {
                    let mut over = Vec::new();
                    for (id, value) in self.current_percent(*object, *metric) {
                        let key = (rule.id.clone(), id.clone());
                        if value <= *above_percent {
                            state.above_since.remove(&key);
                            continue;
                        }
                        let since = *state.above_since.entry(key).or_insert(now);
                        if now.saturating_sub(since) >= *for_secs {
                            let (kind, vm) = match object {
                                MetricObject::Host => ("host", None),
                                MetricObject::Vm => ("vm", Some(id.clone())),
                            };
                            let what = match metric {
                                MetricName::Cpu => "CPU",
                                MetricName::Memory => "memory",
                            };
                            over.push((
                                subject(kind, &id, "", vm),
                                format!("{what} use {value:.0} % above {above_percent} % for {} s", now - since),
                            ));
                        }
                    }
                    over
                }
                Condition::JobTooLong { minutes, job_kind } => self
                    .jobs
                    .recent(usize::MAX, |j| {
                        j.state == JobState::Running
                            && job_kind.as_ref().is_none_or(|k| *k == j.kind)
                            && j.started_at.is_some_and(|s| now.saturating_sub(s) > minutes * 60)
                    })
                    .into_iter()
                    .map(|j| {
                        let running = now.saturating_sub(j.started_at.unwrap_or(now)) / 60;
                        (
                            subject("job", &j.id.to_string(), &j.description, j.vm.clone()),
                            format!("job {} ({}) has run {running} minutes (rule: {minutes})", j.id, j.description),
                        )
                    })
                    .collect(),
            };
            for (subject, message) in over {
                let key = (rule.id.clone(), subject.id.clone());
                holding.insert(key.clone());
                if state.raised.insert(key) {
                    let mut event = Event::new(condition.event(), subject, message);
                    event.only_for = Some(rule.id.clone());
                    crossing.push(event);
                }
            }
        }
        // A condition that ended may cross again.
        state.raised.retain(|k| holding.contains(k));
        crossing
    }

    /// Current CPU or memory percent of every host or VM reporting.
    fn current_percent(&self, object: MetricObject, metric: MetricName) -> Vec<(String, f64)> {
        let system = Principal::system("alerts", "alert conditions");
        let usage = match object {
            MetricObject::Host => self.host_usage(&system),
            MetricObject::Vm => self.vm_usage(&system),
        }
        .unwrap_or_default();
        usage
            .into_iter()
            .filter_map(|(id, u)| {
                let v = match metric {
                    MetricName::Cpu => u.cpu_percent,
                    MetricName::Memory => u.memory_percent(),
                };
                v.map(|v| (id, v))
            })
            .collect()
    }
}

fn subject(kind: &str, id: &str, name: &str, vm: Option<String>) -> Subject {
    Subject {
        kind: kind.into(),
        id: id.into(),
        name: name.into(),
        vm,
    }
}

/// A new random id such as `rule-3f2a…`.
fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

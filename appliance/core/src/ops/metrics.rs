//! Performance figures for every interface: series and live values of
//! hosts and VMs, the estate's gauges, the sampling settings and the
//! Prometheus exposition. A VM outside the caller's scope is absent from
//! every answer here, sums included.

use std::collections::HashMap;

use super::{Ops, OpsError};
use crate::access::{require, Principal, Privilege};
use crate::clock::unix_now;
use crate::metrics::archive::Timeframe;
use crate::metrics::catalog::{host, vm, Kind};
use crate::metrics::chargeback::{self, Rates, Usage as ChargeUsage, VmFacts};
use crate::metrics::{Current, MetricsSettings, MetricsStatus, ObjectKey, SeriesSet};

/// Live CPU and memory of one host or VM, for lists and gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_percent: Option<f64>,
    pub memory_used_bytes: Option<f64>,
    /// Memory the object has (a host's total, a VM's configured size).
    pub memory_total_bytes: Option<f64>,
}

impl Usage {
    pub fn memory_percent(&self) -> Option<f64> {
        match (self.memory_used_bytes, self.memory_total_bytes) {
            (Some(u), Some(t)) if t > 0.0 => Some((u / t * 100.0).min(100.0)),
            _ => None,
        }
    }
}

/// The dashboard's gauges: the estate's hosts together, and the busiest.
#[derive(Debug, Clone, Default)]
pub struct EstateUsage {
    /// CPU of all reporting hosts, weighted by their CPU count.
    pub cpu_percent: Option<f64>,
    pub memory_used_bytes: f64,
    pub memory_total_bytes: f64,
    pub hosts_reporting: usize,
    /// (host id, name, usage), busiest CPU first.
    pub top_hosts: Vec<(String, String, Usage)>,
    /// Every reporting host's usage, by host id (for the hosts table).
    pub hosts: HashMap<String, Usage>,
}

impl EstateUsage {
    pub fn memory_percent(&self) -> Option<f64> {
        Usage {
            cpu_percent: None,
            memory_used_bytes: Some(self.memory_used_bytes),
            memory_total_bytes: Some(self.memory_total_bytes),
        }
        .memory_percent()
    }
}

/// Hosts the dashboard shows a gauge of.
const TOP_HOSTS: usize = 5;

/// Bounds of the sampling interval an operator may set, in seconds.
pub const INTERVAL_SECS: std::ops::RangeInclusive<u64> = 1..=3600;

impl Ops {
    /// A host's archived figures over `timeframe`.
    pub async fn host_series(
        &self,
        who: &Principal,
        host_id: &str,
        timeframe: Timeframe,
    ) -> Result<SeriesSet, OpsError> {
        self.host(who, host_id)?;
        self.series(ObjectKey::host(host_id), timeframe).await
    }

    /// A VM's archived figures over `timeframe`; a VM the caller may not
    /// see is not found.
    pub async fn vm_series(
        &self,
        who: &Principal,
        uuid: &str,
        timeframe: Timeframe,
    ) -> Result<SeriesSet, OpsError> {
        let object = self.vm_object(who, uuid)?;
        self.series(object, timeframe).await
    }

    /// A VM `who` may see that is in the inventory or has a history (a
    /// deleted VM's figures stay for charge-back).
    fn vm_object(&self, who: &Principal, uuid: &str) -> Result<ObjectKey, OpsError> {
        require(who, Privilege::View, "viewing VM metrics")?;
        let object = ObjectKey::vm(uuid);
        let exists = self.inventory.vm(uuid).is_some() || self.metrics.knows(&object);
        if !exists || !self.visible_uuid(who, uuid) {
            return Err(OpsError::NotFound(format!("no VM with UUID {uuid}")));
        }
        Ok(object)
    }

    async fn series(&self, object: ObjectKey, timeframe: Timeframe) -> Result<SeriesSet, OpsError> {
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || metrics.series(&object, timeframe, unix_now()))
            .await
            .map_err(|e| OpsError::Internal(format!("metrics query: {e}")))?
            .map_err(OpsError::from)
    }

    /// A host's latest figures, if it reported recently.
    pub fn host_current(
        &self,
        who: &Principal,
        host_id: &str,
    ) -> Result<Option<Current>, OpsError> {
        self.host(who, host_id)?;
        Ok(self.metrics.current(&ObjectKey::host(host_id), unix_now()))
    }

    /// A VM's latest figures, if it reported recently.
    pub fn vm_current(&self, who: &Principal, uuid: &str) -> Result<Option<Current>, OpsError> {
        let object = self.vm_object(who, uuid)?;
        Ok(self.metrics.current(&object, unix_now()))
    }

    /// Live CPU and memory of every host that reported recently.
    pub fn host_usage(&self, who: &Principal) -> Result<HashMap<String, Usage>, OpsError> {
        require(who, Privilege::View, "viewing host metrics")?;
        Ok(self.metrics.with_current(Kind::Host, unix_now(), |hosts| {
            hosts
                .map(|(id, v)| {
                    let usage = Usage {
                        cpu_percent: v.get(host::CPU).copied().flatten(),
                        memory_used_bytes: v.get(host::MEMORY_USED).copied().flatten(),
                        memory_total_bytes: v.get(host::MEMORY_TOTAL).copied().flatten(),
                    };
                    (id.to_string(), usage)
                })
                .collect()
        }))
    }

    /// Live CPU and memory of every VM `who` may see that reported recently.
    pub fn vm_usage(&self, who: &Principal) -> Result<HashMap<String, Usage>, OpsError> {
        require(who, Privilege::View, "viewing VM metrics")?;
        let mut usage: HashMap<String, Usage> =
            self.metrics.with_current(Kind::Vm, unix_now(), |vms| {
                vms.map(|(id, v)| {
                    let u = Usage {
                        cpu_percent: v.get(vm::CPU).copied().flatten(),
                        memory_used_bytes: v.get(vm::MEMORY_USED).copied().flatten(),
                        memory_total_bytes: None,
                    };
                    (id.to_string(), u)
                })
                .collect()
            });
        let visible = self.visibility(who);
        let mut seen = HashMap::with_capacity(usage.len());
        self.inventory.with_vms(|vms| {
            for v in vms.filter(|v| visible(v)) {
                if let Some(mut u) = usage.remove(&v.info.uuid) {
                    u.memory_total_bytes = Some((v.info.memory_mib << 20) as f64);
                    seen.insert(v.info.uuid.clone(), u);
                }
            }
        });
        Ok(seen)
    }

    /// The dashboard's gauges.
    pub fn estate_usage(&self, who: &Principal) -> Result<EstateUsage, OpsError> {
        let usage = self.host_usage(who)?;
        let mut estate = EstateUsage::default();
        let (mut weighted, mut cpus) = (0.0, 0.0);
        let hosts = self.inventory.hosts();
        let mut reporting = Vec::with_capacity(usage.len());
        for h in &hosts {
            let Some(u) = usage.get(&h.host.id) else {
                continue;
            };
            if let Some(c) = u.cpu_percent {
                let n = f64::from(h.host.facts.cpus.max(1));
                weighted += c * n;
                cpus += n;
            }
            estate.memory_used_bytes += u.memory_used_bytes.unwrap_or(0.0);
            estate.memory_total_bytes += u.memory_total_bytes.unwrap_or(0.0);
            reporting.push((u.cpu_percent.unwrap_or(-1.0), h, *u));
        }
        estate.hosts_reporting = reporting.len();
        estate.cpu_percent = (cpus > 0.0).then(|| weighted / cpus);
        let busiest = |a: &(f64, _, _), b: &(f64, _, _)| b.0.total_cmp(&a.0);
        if reporting.len() > TOP_HOSTS {
            reporting.select_nth_unstable_by(TOP_HOSTS - 1, busiest);
            reporting.truncate(TOP_HOSTS);
        }
        reporting.sort_by(busiest);
        estate.top_hosts = reporting
            .into_iter()
            .map(|(_, h, u)| (h.host.id.clone(), h.host.name.clone(), u))
            .collect();
        estate.hosts = usage;
        Ok(estate)
    }

    pub fn metrics_settings(
        &self,
        who: &Principal,
    ) -> Result<(MetricsSettings, MetricsStatus), OpsError> {
        require(who, Privilege::View, "viewing metrics settings")?;
        Ok((self.metrics.settings(), self.metrics.status()))
    }

    /// Sets how often agents sample; connected agents are told at once.
    pub async fn set_metrics_settings(
        &self,
        who: &Principal,
        settings: MetricsSettings,
    ) -> Result<(), OpsError> {
        let result = async {
            require(who, Privilege::ManageHosts, "changing metrics settings")?;
            if !INTERVAL_SECS.contains(&settings.interval_secs) {
                return Err(OpsError::BadRequest(format!(
                    "interval_secs: the sampling interval must be {} to {} seconds",
                    INTERVAL_SECS.start(),
                    INTERVAL_SECS.end()
                )));
            }
            self.metrics.set_settings(settings).await?;
            self.hub
                .broadcast(&lifeboat_proto::ControllerMessage::MetricsConfig {
                    interval_ms: settings.interval_secs * 1000,
                });
            Ok(())
        }
        .await;
        self.audited(who, "set metrics settings", "metrics", result)
            .await
    }

    /// Writes what is finished of the metric archives (at shutdown).
    pub async fn flush_metrics(&self) {
        if let Err(e) = self.metrics.flush(unix_now()).await {
            tracing::error!("cannot write metric archives: {e}");
        }
    }
}

/// One object's latest figures, with the names a scrape labels them by.
#[derive(Debug, Clone)]
pub struct LabelledCurrent {
    pub kind: Kind,
    pub id: String,
    pub name: String,
    /// For a VM, the name of its host.
    pub host: Option<String>,
    /// By [`Kind::metrics`] index.
    pub values: Vec<Option<f64>>,
}

impl Ops {
    /// Every host's and every visible VM's latest figures (`/metrics`).
    pub fn current_all(&self, who: &Principal) -> Result<Vec<LabelledCurrent>, OpsError> {
        require(who, Privilege::View, "reading metrics")?;
        let now = unix_now();
        // One pass over the live figures per kind, under one lock each.
        let latest = |kind| -> HashMap<String, Vec<Option<f64>>> {
            self.metrics.with_current(kind, now, |objects| {
                objects
                    .map(|(id, v)| (id.to_string(), v.to_vec()))
                    .collect()
            })
        };
        let (mut host_values, mut vm_values) = (latest(Kind::Host), latest(Kind::Vm));
        let hosts: HashMap<String, String> = self
            .inventory
            .hosts()
            .into_iter()
            .map(|h| (h.host.id.clone(), h.host.name.clone()))
            .collect();
        let mut out: Vec<LabelledCurrent> = hosts
            .iter()
            .filter_map(|(id, name)| {
                Some(LabelledCurrent {
                    kind: Kind::Host,
                    values: host_values.remove(id)?,
                    id: id.clone(),
                    name: name.clone(),
                    host: None,
                })
            })
            .collect();
        let visible = self.visibility(who);
        self.inventory.with_vms(|vms| {
            for v in vms.filter(|v| visible(v)) {
                if let Some(values) = vm_values.remove(&v.info.uuid) {
                    out.push(LabelledCurrent {
                        kind: Kind::Vm,
                        id: v.info.uuid.clone(),
                        name: v.info.name.clone(),
                        host: hosts.get(&v.host_id).cloned(),
                        values,
                    });
                }
            }
        });
        out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Ok(out)
    }
}

/// How a charge-back report cuts its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargebackPeriod {
    Day,
    Month,
}

#[derive(Debug, Clone)]
pub struct ChargebackQuery {
    /// UNIX seconds, inclusive; the report's first period starts here.
    pub from: u64,
    /// UNIX seconds, exclusive.
    pub to: u64,
    pub period: ChargebackPeriod,
    /// A category key (e.g. `cost-center`) whose value each row carries.
    pub group_by: Option<String>,
    pub rates: Rates,
}

/// One VM over one period.
#[derive(Debug, Clone)]
pub struct ChargebackRow {
    pub period_start: u64,
    pub period_end: u64,
    pub uuid: String,
    pub name: String,
    /// The VM's value of the grouping key ("" without one).
    pub group: String,
    pub facts: VmFacts,
    pub usage: ChargeUsage,
    pub cost: f64,
}

/// Most periods one report may have (VMs × periods is the work).
const MAX_PERIODS: usize = 400;

/// The period starts in `[from, to)`: UTC days, or UTC calendar months
/// (the first period starts at `from` itself).
fn periods(from: u64, to: u64, period: ChargebackPeriod) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut start = from;
    while start < to && out.len() < MAX_PERIODS {
        let next = match period {
            ChargebackPeriod::Day => (start / 86_400 + 1) * 86_400,
            ChargebackPeriod::Month => {
                let Ok(t) = time::OffsetDateTime::from_unix_timestamp(start as i64) else {
                    break;
                };
                let (y, m) = match t.month() {
                    time::Month::December => (t.year() + 1, time::Month::January),
                    m => (t.year(), m.next()),
                };
                match time::Date::from_calendar_date(y, m, 1) {
                    Ok(d) => d.midnight().assume_utc().unix_timestamp() as u64,
                    Err(_) => break,
                }
            }
        };
        out.push((start, next.min(to)));
        start = next;
    }
    out
}

impl Ops {
    /// Charge-back: for every VM `who` may see, its use in each period of
    /// the range, and the cost at the given rates. Needs *view-reports*.
    pub async fn chargeback(
        &self,
        who: &Principal,
        q: &ChargebackQuery,
    ) -> Result<Vec<ChargebackRow>, OpsError> {
        require(who, Privilege::ViewReports, "charge-back reports")?;
        let now = unix_now();
        let to = q.to.min(now);
        if q.from >= to {
            return Err(OpsError::BadRequest(
                "from: the range must start before it ends, and before now".into(),
            ));
        }
        let spans = periods(q.from, to, q.period);
        if spans.last().is_some_and(|(_, end)| *end < to) {
            return Err(OpsError::BadRequest(format!(
                "the range holds more than {MAX_PERIODS} periods; choose a longer period or a shorter range"
            )));
        }
        let visible = self.visibility(who);
        let categorize = self.categorizer();
        let vms: Vec<(String, String, String, VmFacts)> = self.inventory.with_vms(|vms| {
            vms.filter(|v| visible(v))
                .map(|v| {
                    let group = q
                        .group_by
                        .as_ref()
                        .and_then(|k| categorize(v).get(k).cloned())
                        .unwrap_or_default();
                    let facts = VmFacts {
                        vcpus: v.info.vcpus,
                        memory_bytes: v.info.memory_mib << 20,
                        disk_bytes: v.info.provisioned_disk_bytes(),
                        backup_bytes: 0.0,
                    };
                    (v.info.uuid.clone(), v.info.name.clone(), group, facts)
                })
                .collect()
        });
        let datastores: Vec<_> = self
            .datastores
            .entries()
            .into_iter()
            .filter_map(|e| match e.health {
                crate::backup::datastores::Health::Ready(ds) => Some(ds),
                _ => None,
            })
            .collect();
        let metrics = self.metrics.clone();
        let rates = q.rates;
        tokio::task::spawn_blocking(move || -> Result<Vec<ChargebackRow>, OpsError> {
            let mut shares: HashMap<String, f64> = HashMap::new();
            for ds in &datastores {
                let found = crate::backup::usage::vm_shares(ds)
                    .map_err(|e| OpsError::Internal(format!("backup storage use: {e}")))?;
                for (vm, bytes) in found {
                    *shares.entry(vm.as_str().to_string()).or_default() += bytes;
                }
            }
            let mut rows = Vec::with_capacity(vms.len() * spans.len());
            for (uuid, name, group, mut facts) in vms {
                facts.backup_bytes = shares.get(&uuid).copied().unwrap_or(0.0);
                let object = ObjectKey::vm(&uuid);
                for &(start, end) in &spans {
                    let a = chargeback::archive_for(start, now);
                    let set = metrics.rows_between(&object, a, start, end)?;
                    let usage = chargeback::usage(&set, start, end, &facts);
                    rows.push(ChargebackRow {
                        period_start: start,
                        period_end: end,
                        uuid: uuid.clone(),
                        name: name.clone(),
                        group: group.clone(),
                        facts,
                        cost: usage.cost(&rates),
                        usage,
                    });
                }
            }
            rows.sort_by(|a, b| {
                (&a.group, &a.name, a.period_start).cmp(&(&b.group, &b.name, b.period_start))
            });
            Ok(rows)
        })
        .await
        .map_err(|e| OpsError::Internal(format!("charge-back task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        // 2026-01-30 12:00 to 2026-03-02 00:00.
        let (from, to) = (1_769_774_400, 1_772_409_600);
        let days = periods(from, to, ChargebackPeriod::Day);
        assert_eq!(
            days[0],
            (from, 1_769_817_600),
            "the first day ends at midnight"
        );
        assert_eq!(days.len(), 31);
        let months = periods(from, to, ChargebackPeriod::Month);
        // Rest of January, February, and one day of March.
        assert_eq!(
            months,
            vec![
                (from, 1_769_904_000),
                (1_769_904_000, 1_772_323_200),
                (1_772_323_200, to)
            ]
        );
    }
}

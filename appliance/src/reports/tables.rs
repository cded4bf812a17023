//! The exportable tables, each built from the `ops` answer the console
//! shows: hosts, VMs (with their current use), jobs, the audit trail, and
//! the metric history of one host or VM.

use lifeboat_core::model::Rates;
use lifeboat_core::model::{AuditRecord, MetricKind, Principal, SeriesSet, Timeframe};
use lifeboat_core::ops::{AuditFilter, ChargebackQuery, ChargebackRow, Ops, OpsError, VmQuery};

use super::{Cell, Report};

/// What an export may be narrowed by (from the query string).
#[derive(Debug, Default)]
pub struct ExportQuery {
    /// The host or VM of a metric history; none: a set of them.
    pub id: Option<String>,
    /// A VM metric set: the VMs on this host (id or name).
    pub host: Option<String>,
    pub timeframe: Option<Timeframe>,
    /// The audit trail's filters.
    pub audit: AuditFilter,
    /// The charge-back report's range, periods, grouping and rates.
    pub chargeback: Option<ChargebackQuery>,
    /// Charge-back rows in FinOps FOCUS columns, one per VM, period and
    /// measure.
    pub focus: bool,
}

/// Every table an export can name.
pub const TABLES: [&str; 7] = [
    "hosts",
    "vms",
    "backups",
    "jobs",
    "audit",
    "host-metrics",
    "vm-metrics",
];

/// Most jobs and audit records one export holds.
const MAX_ROWS: usize = 100_000;
/// Most hosts or VMs in one metric-history export.
const MAX_SET: usize = 1000;

pub async fn build(
    ops: &Ops,
    who: &Principal,
    table: &str,
    q: &ExportQuery,
) -> Result<Report, OpsError> {
    match table {
        "hosts" => hosts(ops, who),
        "vms" => vms(ops, who),
        "backups" => backups(ops, who).await,
        "jobs" => jobs(ops, who),
        "audit" => audit(ops, who, &q.audit),
        "chargeback" => {
            let query = q
                .chargeback
                .as_ref()
                .ok_or_else(|| OpsError::BadRequest("the charge-back range is missing".into()))?;
            let rows = ops.chargeback(who, query).await?;
            Ok(if q.focus {
                chargeback_focus(&rows, &query.rates)
            } else {
                chargeback(&rows, query.group_by.as_deref())
            })
        }
        "host-metrics" | "vm-metrics" => metric_history(ops, who, table, q).await,
        other => Err(OpsError::NotFound(format!(
            "no export named {other:?} (one of {})",
            TABLES.join(", ")
        ))),
    }
}

/// The history of one host or VM, or of a set: every host, or the VMs on
/// `host=` (every VM the caller sees when neither is given), one block of
/// rows per object, named in the first columns.
async fn metric_history(
    ops: &Ops,
    who: &Principal,
    table: &str,
    q: &ExportQuery,
) -> Result<Report, OpsError> {
    let timeframe = q.timeframe.unwrap_or(Timeframe::Day);
    let hosts = table == "host-metrics";
    if let Some(id) = q.id.as_deref() {
        let set = if hosts {
            ops.host_series(who, id, timeframe).await?
        } else {
            ops.vm_series(who, id, timeframe).await?
        };
        return Ok(metrics(&format!("{table} {}", short(id)), &set));
    }
    let objects: Vec<(String, String)> = if hosts {
        let hosts = ops.hosts(who)?.into_iter();
        hosts
            .map(|h| (h.host.name.clone(), h.host.id.clone()))
            .collect()
    } else {
        let query = VmQuery {
            host: q.host.clone(),
            per_page: usize::MAX,
            ..Default::default()
        };
        let vms = ops.vms(who, &query)?.items.into_iter();
        vms.map(|vm| (vm.info.name, vm.info.uuid)).collect()
    };
    if objects.len() > MAX_SET {
        return Err(OpsError::BadRequest(format!(
            "{} objects: a metric export holds at most {MAX_SET}; name one with id= (or host= for VMs)",
            objects.len()
        )));
    }
    let mut report: Option<Report> = None;
    for (name, id) in objects {
        let set = if hosts {
            ops.host_series(who, &id, timeframe).await?
        } else {
            ops.vm_series(who, &id, timeframe).await?
        };
        let part = metrics(table, &set);
        let all = report.get_or_insert_with(|| Report {
            name: table.into(),
            columns: ["name", "id"]
                .iter()
                .map(|c| c.to_string())
                .chain(part.columns.iter().cloned())
                .collect(),
            rows: Vec::new(),
        });
        all.rows.extend(part.rows.into_iter().map(|row| {
            let mut named = vec![name.clone().into(), id.clone().into()];
            named.extend(row);
            named
        }));
    }
    Ok(report.unwrap_or_else(|| Report {
        name: table.into(),
        columns: names(&["name", "id", "time"]),
        rows: Vec::new(),
    }))
}

async fn backups(ops: &Ops, who: &Principal) -> Result<Report, OpsError> {
    let rows = ops
        .all_backups(who)
        .await?
        .into_iter()
        .map(|b| {
            let m = &b.manifest;
            let size: u64 = m.disks.iter().map(|d| d.size_bytes).sum();
            let verified = match &b.verify {
                None => "never",
                Some(v) if v.ok => "ok",
                Some(_) => "damaged",
            };
            vec![
                m.vm.name.clone().into(),
                m.vm.uuid.as_str().into(),
                b.reference.datastore.clone().into(),
                b.reference.to_string().into(),
                Cell::Time(m.backup.started_at),
                Cell::Time(m.backup.finished_at),
                m.backup.mode.as_str().into(),
                (m.disks.len() as u64).into(),
                size.into(),
                m.backup.bytes_read.into(),
                m.backup.bytes_new.into(),
                verified.into(),
                b.verify
                    .as_ref()
                    .map(|v| v.time)
                    .map_or(Cell::Empty, Cell::Time),
                if b.protected { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    Ok(Report {
        name: "backups".into(),
        columns: names(&[
            "vm",
            "vm_uuid",
            "datastore",
            "reference",
            "started",
            "finished",
            "mode",
            "disks",
            "size_bytes",
            "bytes_read",
            "bytes_new",
            "verified",
            "verified_at",
            "protected",
        ]),
        rows,
    })
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn hosts(ops: &Ops, who: &Principal) -> Result<Report, OpsError> {
    let usage = ops.host_usage(who)?;
    let rows = ops
        .hosts(who)?
        .into_iter()
        .map(|h| {
            let u = usage.get(&h.host.id).copied().unwrap_or_default();
            let f = &h.host.facts;
            vec![
                h.host.name.as_str().into(),
                h.host.id.as_str().into(),
                h.status.as_str().into(),
                f.driver.clone().into(),
                u64::from(f.cpus).into(),
                f.memory_total_bytes.into(),
                u.cpu_percent.into(),
                u.memory_used_bytes.into(),
                (h.vm_count as u64).into(),
                Cell::Time(h.host.last_seen),
            ]
        })
        .collect();
    Ok(Report {
        name: "hosts".into(),
        columns: names(&[
            "name",
            "id",
            "status",
            "driver",
            "cpus",
            "memory_bytes",
            "cpu_percent",
            "memory_used_bytes",
            "vms",
            "last_seen",
        ]),
        rows,
    })
}

fn vms(ops: &Ops, who: &Principal) -> Result<Report, OpsError> {
    let usage = ops.vm_usage(who)?;
    let page = ops.vms(
        who,
        &VmQuery {
            per_page: usize::MAX,
            ..Default::default()
        },
    )?;
    let rows = page
        .items
        .iter()
        .map(|vm| {
            let u = usage.get(&vm.info.uuid).copied().unwrap_or_default();
            let disk_bytes: u64 = vm.info.disks.iter().filter_map(|d| d.capacity_bytes).sum();
            vec![
                vm.info.name.clone().into(),
                vm.info.uuid.clone().into(),
                ops.vm_host_name(vm).into(),
                vm.info.power_state.as_str().into(),
                u64::from(vm.info.vcpus).into(),
                (vm.info.memory_mib << 20).into(),
                disk_bytes.into(),
                u.cpu_percent.into(),
                u.memory_used_bytes.into(),
                Cell::Time(vm.updated_at),
            ]
        })
        .collect();
    Ok(Report {
        name: "vms".into(),
        columns: names(&[
            "name",
            "uuid",
            "host",
            "power_state",
            "vcpus",
            "memory_bytes",
            "disk_bytes",
            "cpu_percent",
            "memory_used_bytes",
            "updated",
        ]),
        rows,
    })
}

fn jobs(ops: &Ops, who: &Principal) -> Result<Report, OpsError> {
    let rows = ops
        .jobs(who, None, MAX_ROWS)?
        .into_iter()
        .map(|j| {
            vec![
                j.id.into(),
                j.kind.into(),
                j.description.into(),
                j.user.into(),
                j.state.as_str().into(),
                u64::from(j.percent).into(),
                j.bytes_done.into(),
                j.bytes_total.into(),
                Cell::Time(j.created_at),
                j.started_at.map_or(Cell::Empty, Cell::Time),
                j.finished_at.map_or(Cell::Empty, Cell::Time),
                j.error.map_or(Cell::Empty, Cell::Text),
            ]
        })
        .collect();
    Ok(Report {
        name: "jobs".into(),
        columns: names(&[
            "id",
            "kind",
            "description",
            "user",
            "state",
            "percent",
            "bytes_done",
            "bytes_total",
            "created",
            "started",
            "finished",
            "error",
        ]),
        rows,
    })
}

fn audit(ops: &Ops, who: &Principal, filter: &AuditFilter) -> Result<Report, OpsError> {
    let filter = AuditFilter {
        limit: filter.limit.clamp(1, MAX_ROWS),
        ..filter.clone()
    };
    Ok(audit_table(&ops.audit_records(who, &filter)?))
}

pub fn audit_table(records: &[AuditRecord]) -> Report {
    let rows = records
        .iter()
        .map(|r| {
            vec![
                r.seq.into(),
                Cell::Time(r.time),
                r.user.clone().into(),
                r.source.clone().into(),
                r.action.clone().into(),
                r.object.clone().into(),
                r.result.clone().into(),
            ]
        })
        .collect();
    Report {
        name: "audit".into(),
        columns: names(&[
            "seq", "time", "user", "source", "action", "object", "result",
        ]),
        rows,
    }
}

/// One row per slot: the time, then average and maximum of each metric.
fn metrics(name: &str, set: &SeriesSet) -> Report {
    let kind: MetricKind = set.kind;
    let archived = &kind.metrics()[..kind.archived()];
    let mut columns = vec!["time".to_string()];
    for m in archived {
        columns.push(m.key.to_string());
        columns.push(format!("{}_max", m.key));
    }
    let rows = (0..set.rows.len())
        .map(|r| {
            let mut row = vec![Cell::Time(set.start + r as u64 * set.step)];
            for (i, _) in archived.iter().enumerate() {
                let cell = set.rows[r].get(i).copied().flatten();
                row.push(cell.map(|c| c.0).into());
                row.push(cell.map(|c| c.1).into());
            }
            row
        })
        .collect();
    Report {
        name: name.into(),
        columns,
        rows,
    }
}

fn names(columns: &[&str]) -> Vec<String> {
    columns.iter().map(|c| c.to_string()).collect()
}

fn chargeback(rows: &[ChargebackRow], group_by: Option<&str>) -> Report {
    let mut columns = names(&["period_start", "period_end"]);
    columns.push(group_by.unwrap_or("group").to_string());
    columns.extend(names(&[
        "vm",
        "uuid",
        "vcpus",
        "memory_gib",
        "running_hours",
        "vcpu_hours",
        "memory_gib_hours",
        "cpu_core_hours",
        "disk_gb_months",
        "backup_gb_months",
        "cost",
    ]));
    let rows = rows
        .iter()
        .map(|r| {
            let u = &r.usage;
            vec![
                Cell::Time(r.period_start),
                Cell::Time(r.period_end),
                r.group.clone().into(),
                r.name.clone().into(),
                r.uuid.clone().into(),
                u64::from(r.facts.vcpus).into(),
                Cell::Number(r.facts.memory_bytes as f64 / f64::from(1u32 << 30)),
                Cell::Number(u.running_hours),
                Cell::Number(u.vcpu_hours),
                Cell::Number(u.memory_gib_hours),
                Cell::Number(u.cpu_core_hours),
                Cell::Number(u.disk_gb_months),
                Cell::Number(u.backup_gb_months),
                Cell::Number(r.cost),
            ]
        })
        .collect();
    Report {
        name: "chargeback".into(),
        columns,
        rows,
    }
}

/// FOCUS (FinOps Open Cost and Usage Specification) columns: a row per
/// VM, period and measure.
fn chargeback_focus(rows: &[ChargebackRow], rates: &Rates) -> Report {
    let mut out = Vec::new();
    for r in rows {
        let u = &r.usage;
        let measures = [
            ("vCPU", "Hours", u.vcpu_hours, rates.vcpu_hour),
            (
                "Memory",
                "GiB-Hours",
                u.memory_gib_hours,
                rates.memory_gib_hour,
            ),
            (
                "CPU used",
                "Core-Hours",
                u.cpu_core_hours,
                rates.cpu_core_hour,
            ),
            (
                "Disk provisioned",
                "GB-Months",
                u.disk_gb_months,
                rates.disk_gb_month,
            ),
            (
                "Backup storage",
                "GB-Months",
                u.backup_gb_months,
                rates.backup_gb_month,
            ),
        ];
        for (what, unit, quantity, price) in measures {
            let tags = if r.group.is_empty() {
                "{}".to_string()
            } else {
                serde_json::json!({ "group": r.group }).to_string()
            };
            out.push(vec![
                Cell::Time(r.period_start),
                Cell::Time(r.period_end),
                "Usage".into(),
                format!("{what} of {}", r.name).into(),
                r.uuid.clone().into(),
                r.name.clone().into(),
                "Virtual Machine".into(),
                "Lifeboat".into(),
                Cell::Number(quantity),
                unit.into(),
                Cell::Number(price),
                Cell::Number(quantity * price),
                Cell::Number(quantity * price),
                tags.into(),
            ]);
        }
    }
    Report {
        name: "chargeback-focus".into(),
        columns: names(&[
            "ChargePeriodStart",
            "ChargePeriodEnd",
            "ChargeCategory",
            "ChargeDescription",
            "ResourceId",
            "ResourceName",
            "ResourceType",
            "ServiceName",
            "ConsumedQuantity",
            "ConsumedUnit",
            "ListUnitPrice",
            "BilledCost",
            "EffectiveCost",
            "Tags",
        ]),
        rows: out,
    }
}

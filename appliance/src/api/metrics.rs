//! REST handlers for performance figures: series, current values, the
//! estate's gauges, the sampling settings, and the Prometheus exposition
//! (`GET /metrics`, also at `/api/v1/metrics`).

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::routes::{Call, Reply};
use super::{bad_request, parse_body};
use crate::http::{json, response, Req};
use crate::reports::ExportFormat;
use lifeboat_core::model::{
    rfc3339, Cf, Current, Detail, MetricKind, MetricsSettings, SeriesSet, SnmpInput,
    SqlTargetInput, Timeframe,
};
use lifeboat_core::ops::{OpsError, Usage};

/// `timeframe`, `cf` and `metric` (repeatable, default all archived).
struct SeriesQuery {
    timeframe: Timeframe,
    cf: Cf,
    metrics: Vec<(usize, &'static lifeboat_core::model::Metric)>,
}

fn series_query(req: &Req, kind: MetricKind) -> Result<SeriesQuery, OpsError> {
    let timeframe = match req.query_param("timeframe") {
        None => Timeframe::Hour,
        Some(t) => Timeframe::parse(&t).ok_or_else(|| {
            bad_request(format!(
                "unknown timeframe {t:?} (hour, day, week, month, year or decade)"
            ))
        })?,
    };
    let cf = match req.query_param("cf") {
        None => Cf::Avg,
        Some(c) => {
            Cf::parse(&c).ok_or_else(|| bad_request(format!("unknown cf {c:?} (avg or max)")))?
        }
    };
    let archived = &kind.metrics()[..kind.archived()];
    let asked: Vec<String> = req
        .query_pairs()
        .into_iter()
        .filter(|(k, _)| k == "metric")
        .map(|(_, v)| v)
        .collect();
    let metrics = if asked.is_empty() {
        archived.iter().enumerate().collect()
    } else {
        asked
            .iter()
            .map(|name| {
                archived
                    .iter()
                    .enumerate()
                    .find(|(_, m)| m.key == name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = archived.iter().map(|m| m.key).collect();
                        bad_request(format!(
                            "unknown metric {name:?} for a {} (one of {})",
                            kind.as_str(),
                            known.join(", ")
                        ))
                    })
            })
            .collect::<Result<_, _>>()?
    };
    Ok(SeriesQuery {
        timeframe,
        cf,
        metrics,
    })
}

fn series_json(set: &SeriesSet, q: &SeriesQuery) -> Value {
    let mut metrics = Map::new();
    for (i, m) in &q.metrics {
        let points: Vec<Value> = set
            .points(*i, q.cf)
            .into_iter()
            .map(|(t, v)| json!([t, v]))
            .collect();
        metrics.insert(
            m.key.to_string(),
            json!({"label": m.label, "unit": m.unit, "points": points}),
        );
    }
    json!({
        "timeframe": q.timeframe.as_str(),
        "cf": q.cf.as_str(),
        "step_secs": set.step,
        "start": set.start,
        "metrics": metrics,
    })
}

pub async fn host_series(c: Call<'_>) -> Reply {
    let q = series_query(c.req, MetricKind::Host)?;
    let set = c.ops.host_series(c.who(), c.arg("id"), q.timeframe).await?;
    Ok(json(StatusCode::OK, &series_json(&set, &q)))
}

pub async fn vm_series(c: Call<'_>) -> Reply {
    let q = series_query(c.req, MetricKind::Vm)?;
    let set = c.ops.vm_series(c.who(), c.arg("id"), q.timeframe).await?;
    Ok(json(StatusCode::OK, &series_json(&set, &q)))
}

pub fn current_json(kind: MetricKind, current: Option<&Current>) -> Value {
    let Some(c) = current else {
        return json!({"at": null, "values": {}});
    };
    let values: Map<String, Value> = kind
        .metrics()
        .iter()
        .zip(&c.values)
        .map(|(m, v)| (m.key.to_string(), json!(v)))
        .collect();
    let mut out = json!({"at": rfc3339(c.at), "values": values});
    match &c.detail {
        Detail::Host { mounts } => out["mounts"] = json!(mounts),
        Detail::Vm { disks, nics } => {
            out["disks"] = json!(disks);
            out["nics"] = json!(nics);
        }
        Detail::None => {}
    }
    out
}

pub async fn host_current(c: Call<'_>) -> Reply {
    let current = c.ops.host_current(c.who(), c.arg("id"))?;
    Ok(json(
        StatusCode::OK,
        &current_json(MetricKind::Host, current.as_ref()),
    ))
}

pub async fn vm_current(c: Call<'_>) -> Reply {
    let current = c.ops.vm_current(c.who(), c.arg("id"))?;
    Ok(json(
        StatusCode::OK,
        &current_json(MetricKind::Vm, current.as_ref()),
    ))
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "cpu_percent": u.cpu_percent,
        "memory_used_bytes": u.memory_used_bytes,
        "memory_total_bytes": u.memory_total_bytes,
        "memory_percent": u.memory_percent(),
    })
}

pub async fn estate(c: Call<'_>) -> Reply {
    let e = c.ops.estate_usage(c.who())?;
    let top: Vec<Value> = e
        .top_hosts
        .iter()
        .map(|(id, name, u)| json!({"id": id, "name": name, "usage": usage_json(u)}))
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({
            "cpu_percent": e.cpu_percent,
            "memory_used_bytes": e.memory_used_bytes,
            "memory_total_bytes": e.memory_total_bytes,
            "memory_percent": e.memory_percent(),
            "hosts_reporting": e.hosts_reporting,
            "top_hosts": top,
        }),
    ))
}

pub async fn settings(c: Call<'_>) -> Reply {
    let (s, status) = c.ops.metrics_settings(c.who())?;
    Ok(json(
        StatusCode::OK,
        &json!({"interval_secs": s.interval_secs, "status": status}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    interval_secs: u64,
}

pub async fn set_settings(c: Call<'_>) -> Reply {
    let body: SettingsBody = parse_body(c.req)?;
    let settings = MetricsSettings {
        interval_secs: body.interval_secs,
    };
    c.ops.set_metrics_settings(c.who(), settings).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"interval_secs": settings.interval_secs}),
    ))
}

/// The SQL export's target (no password) and status.
pub async fn sql_export(c: Call<'_>) -> Reply {
    let (target, status) = c.ops.sql_export(c.who())?;
    Ok(json(
        StatusCode::OK,
        &json!({"target": target, "status": status}),
    ))
}

pub async fn set_sql_export(c: Call<'_>) -> Reply {
    let input: SqlTargetInput = parse_body(c.req)?;
    c.ops.set_sql_export(c.who(), input).await?;
    sql_export(c).await
}

pub async fn delete_sql_export(c: Call<'_>) -> Reply {
    c.ops.delete_sql_export(c.who()).await?;
    super::deleted()
}

pub async fn snmp_settings(c: Call<'_>) -> Reply {
    Ok(json(StatusCode::OK, &json!(c.ops.snmp_settings(c.who())?)))
}

pub async fn set_snmp_settings(c: Call<'_>) -> Reply {
    let input: SnmpInput = parse_body(c.req)?;
    c.ops.set_snmp_settings(c.who(), input).await?;
    snmp_settings(c).await
}

/// One counter family in the exposition format: its HELP and TYPE, then
/// one sample per `(label value, count)`.
fn counter_family<L: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    samples: Vec<(L, u64)>,
) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
    for (value, n) in samples {
        out.push_str(&format!("{name}{{{label}=\"{value}\"}} {n}\n"));
    }
}

/// A label value in the exposition format: backslash, quote and newline
/// escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus exposition (text format 0.0.4): one gauge family per
/// metric and kind, e.g. `lifeboat_vm_cpu_percent{uuid,name,host}`.
pub async fn prometheus(c: Call<'_>) -> Reply {
    let all = c.ops.current_all(c.who())?;
    let (_, status) = c.ops.metrics_settings(c.who())?;
    let mut out = format!(
        "# HELP lifeboat_metric_values_total Metric values the controller took in since it started.\n\
         # TYPE lifeboat_metric_values_total counter\nlifeboat_metric_values_total {}\n",
        status.samples_in
    );
    counter_family(
        &mut out,
        "lifeboat_xmlrpc_refused_total",
        "XML-RPC calls refused before any operation, by fault code.",
        "code",
        crate::xmlrpc::refused_counts(),
    );
    counter_family(
        &mut out,
        "lifeboat_snmp_refused_total",
        "SNMP requests the agent refused, by kind.",
        "kind",
        crate::snmp::refused_counts(),
    );
    for kind in [MetricKind::Host, MetricKind::Vm] {
        for (i, metric) in kind.metrics().iter().enumerate() {
            let suffix = match metric.unit {
                lifeboat_core::model::Unit::Percent => "_percent",
                lifeboat_core::model::Unit::Bytes => "_bytes",
                lifeboat_core::model::Unit::BytesPerSecond => "_bytes_per_second",
                lifeboat_core::model::Unit::PerSecond => "_per_second",
                lifeboat_core::model::Unit::Load => "",
            };
            let name = format!("lifeboat_{}_{}{suffix}", kind.as_str(), metric.key);
            out.push_str(&format!(
                "# HELP {name} {} ({}).\n# TYPE {name} gauge\n",
                metric.label,
                kind.as_str()
            ));
            for o in all.iter().filter(|o| o.kind == kind) {
                let Some(v) = o.values.get(i).copied().flatten() else {
                    continue;
                };
                let labels = match kind {
                    MetricKind::Host => {
                        format!("id=\"{}\",name=\"{}\"", label(&o.id), label(&o.name))
                    }
                    MetricKind::Vm => format!(
                        "uuid=\"{}\",name=\"{}\",host=\"{}\"",
                        label(&o.id),
                        label(&o.name),
                        label(o.host.as_deref().unwrap_or(""))
                    ),
                };
                out.push_str(&format!("{name}{{{labels}}} {v}\n"));
            }
        }
    }
    Ok(response(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        out,
    ))
}

/// `GET /exports/{table}?format=csv|xlsx` (CSV by default).
pub async fn export(c: Call<'_>) -> Reply {
    let format = match c.req.query_param("format") {
        None => ExportFormat::Csv,
        Some(f) => ExportFormat::parse(&f)
            .ok_or_else(|| bad_request(format!("unknown format {f:?} (csv or xlsx)")))?,
    };
    crate::reports::export(c.ops, c.who(), c.req, c.arg("table"), format).await
}

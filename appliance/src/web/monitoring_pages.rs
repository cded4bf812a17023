//! The monitoring settings page: how often agents sample, what the
//! archives hold, and the SQL export's target and status.

use maud::{html, Markup};

use super::fields::{Field, Form};
use super::layout::{page, PageCtx};
use lifeboat_core::model::{rfc3339, MetricsSettings, MetricsStatus, Privilege, SqlExportStatus};
use lifeboat_core::ops::SqlTargetView;

pub fn monitoring(
    ctx: &PageCtx,
    settings: &MetricsSettings,
    status: &MetricsStatus,
    sql: Option<(Option<SqlTargetView>, SqlExportStatus)>,
) -> Markup {
    let sampling = Form::new(ctx, "/monitoring/sampling");
    page(
        ctx,
        "Monitoring",
        "/monitoring",
        Some(30),
        html! {
            p.muted {
                "Performance archives: " (status.objects) " (hosts and VMs). Values taken in since the controller started: "
                (status.samples_in) "."
            }
            form.stack method="post" action=(sampling.action()) {
                (sampling.head())
                fieldset {
                    legend { "Sampling" }
                    (sampling.row(Field::number("interval_secs", "Sampling interval", settings.interval_secs)
                        .unit("s").range(1, 3600).required()
                        .help("How often each agent measures its host and VMs; 1 to 3600. Connected agents are told at once.")))
                }
                @if ctx.who.can(Privilege::ManageHosts) { button type="submit" { "Save sampling" } }
            }
            @if ctx.who.can(Privilege::Administer) {
                p { a href="/snmp" { "SNMP agent settings →" } }
            }
            @if let Some((target, status)) = &sql {
                h2 { "SQL export (PostgreSQL)" }
                (sql_status(status))
                (sql_form(ctx, target.as_ref()))
            }
        },
    )
}

fn sql_status(s: &SqlExportStatus) -> Markup {
    html! {
        dl.facts {
            dt { "State" } dd { (super::layout::state_badge(s.state.as_str())) }
            @if let Some(e) = &s.error {
                dt { "Last error" } dd.error { (e) @if let Some(at) = s.error_at { " (" (rfc3339(at)) ")" } }
            }
            @if let Some(r) = s.retry_in_secs { dt { "Next attempt" } dd { "in " (r) " s" } }
            @if let Some(t) = s.metrics_through {
                dt { "Samples exported up to" } dd { (rfc3339(t)) " (" (s.lag_minutes) " minutes behind)" }
            }
            dt { "Since start" }
            dd {
                (s.sample_rows) " sample rows, " (s.inventory_changes) " inventory changes"
                @if s.skipped_minutes > 0 { ", " (s.skipped_minutes) " minutes skipped (older than the minute archive)" }
            }
        }
    }
}

fn sql_form(ctx: &PageCtx, target: Option<&SqlTargetView>) -> Markup {
    let f = Form::new(ctx, "/monitoring/sql-export");
    let url = target.map(|t| t.url.as_str()).unwrap_or_default();
    let tls = match target.map(|t| t.tls) {
        Some(lifeboat_core::model::SqlTls::Disable) => "disable",
        _ => "verify-full",
    };
    let password_help = if target.is_some_and(|t| t.password_set) {
        "Stored encrypted; leave empty to keep it."
    } else {
        "Stored encrypted with the controller's key and never shown again."
    };
    html! {
        form.stack method="post" action=(f.action()) {
            (f.head())
            fieldset {
                legend { "Database" }
                (f.row(Field::text("url", "URL", url).required()
                    .placeholder("postgresql://lifeboat@db.example.org:5432/lifeboat")
                    .help("One server, the user and the database; no password in it.")))
                (f.row(Field::password("password", "Password").help(password_help)))
                (f.row(Field::checkbox("enabled", "Export", target.is_none_or(|t| t.enabled))
                    .help("Untick to pause; the database keeps what it has.")))
            }
            fieldset {
                legend { "TLS" }
                (f.row(Field::select("tls", "Protection", &[
                    ("verify-full", "TLS, certificate and name checked"),
                    ("disable", "none (trusted network only)"),
                ], tls).help("Without TLS the samples and inventory cross the network in clear.")))
                (f.row(Field::textarea("ca_pem", "CA certificate", 4, target.map(|t| t.ca_pem.as_str()).unwrap_or_default())
                    .placeholder("-----BEGIN CERTIFICATE-----")
                    .help("PEM of the CA that signed the server's certificate; empty: the system's trust store.")))
            }
            button type="submit" { "Save SQL export" }
        }
        @if target.is_some() {
            form.inline method="post" action="/monitoring/sql-export/delete" {
                input type="hidden" name="csrf" value=(ctx.csrf);
                button type="submit" { "Stop exporting" }
            }
        }
    }
}

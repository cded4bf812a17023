//! The controller's log in the console: its settings (level, forwarding
//! to a syslog channel) and the recent records, newest first.

use maud::{html, Markup};

use super::fields::{Field, Form};
use super::forms::{FormReply, Submission};
use super::layout::{page, PageCtx};
use crate::http::redirect;
use lifeboat_core::model::{rfc3339, ChannelConfig, LogLevel, LogRecord};
use lifeboat_core::ops::{ChannelView, LoggingSettings, LoggingView, OpsError};

/// Records shown on the page.
pub const SHOWN: usize = 500;

fn levels() -> Vec<(&'static str, &'static str)> {
    LogLevel::ALL
        .iter()
        .map(|l| (l.as_str(), l.as_str()))
        .collect()
}

pub fn logs(
    ctx: &PageCtx,
    view: &LoggingView,
    channels: &[ChannelView],
    shown: LogLevel,
    records: &[LogRecord],
) -> Markup {
    page(
        ctx,
        "Log",
        "/logs",
        Some(10),
        html! {
            (settings_form(ctx, view, channels))
            h2 { "Recent records" }
            p { "At least: "
                @for (i, l) in LogLevel::ALL.iter().enumerate() {
                    @if i > 0 { " · " }
                    @if *l == shown { strong { (l.as_str()) } }
                    @else { a href={"/logs?level=" (l.as_str())} { (l.as_str()) } }
                }
                span.muted { " — the newest " (SHOWN) ", newest first; the controller keeps "
                    (lifeboat_core::model::KEPT_LOG_RECORDS) "." }
            }
            @if records.is_empty() {
                p.muted { "No records at this level." }
            } @else {
                table.log {
                    thead { tr { th { "#" } th { "When (UTC)" } th { "Level" } th { "Module" } th { "Message" } } }
                    tbody {
                        @for r in records.iter().rev() {
                            tr {
                                td.num { (r.seq) }
                                td { (rfc3339(r.at_ms / 1000)) }
                                td { span class={"badge level-" (r.level.as_str())} { (r.level.as_str()) } }
                                td { code { (r.target) } }
                                td { (r.message) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn settings_form(ctx: &PageCtx, view: &LoggingView, channels: &[ChannelView]) -> Markup {
    let f = Form::new(ctx, "/logs/settings");
    let mut syslog: Vec<(&str, &str)> = vec![("", "none")];
    syslog.extend(
        channels
            .iter()
            .filter(|c| matches!(c.config, ChannelConfig::Syslog { .. }))
            .map(|c| (c.id.as_str(), c.name.as_str())),
    );
    let s = &view.settings;
    let levels = levels();
    html! {
        form.stack method="post" action=(f.action()) {
            (f.head())
            fieldset {
                legend { "Logging" }
                (f.row(Field::select("level", "Level", &levels, s.level.as_str())
                    .help("What the controller logs at all: to its standard error, this page and syslog. Applies at once and after a restart.")))
                (f.row(Field::select("syslog_channel", "Forward to", &syslog, s.syslog_channel.as_deref().unwrap_or_default())
                    .help("A syslog alert channel (add one on the Alerts page); RFC 5424 over its transport.")))
                (f.row(Field::select("syslog_level", "Forward from", &levels, s.syslog_level.as_str())
                    .help("Records at this level and more severe are forwarded.")))
            }
            @if view.dropped > 0 {
                p.form-error { (view.dropped) " records were not forwarded: the queue was full." }
            }
            @if let Some(e) = &view.forward_error {
                p.form-error role="alert" { "Forwarding fails: " (e) }
            }
            button type="submit" { "Save" }
        }
    }
}

pub async fn set_logging(s: Submission<'_>) -> FormReply {
    let level = |name: &str| {
        LogLevel::parse(&s.text(name)).ok_or_else(|| {
            OpsError::BadRequest(format!("{name}: error, warn, info, debug or trace"))
        })
    };
    let settings = LoggingSettings {
        level: level("level")?,
        syslog_channel: s.non_empty("syslog_channel"),
        syslog_level: level("syslog_level")?,
    };
    s.ops.set_logging(s.who, settings).await?;
    Ok(redirect("/logs"))
}

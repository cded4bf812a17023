//! The alerts page: the history, the rules, and (for administrators) the
//! channels with a "send test alert" button each.

use maud::{html, Markup};

use super::fields::{Field, Form};
use super::layout::{page, state_badge, PageCtx};
use lifeboat_core::model::{
    rfc3339, Alert, ChannelConfig, Condition, DeliveryState, EventKind, Rule, Severity,
};
use lifeboat_core::ops::ChannelView;

pub fn alerts(
    ctx: &PageCtx,
    history: &[Alert],
    rules: &[Rule],
    channels: Option<&[ChannelView]>,
) -> Markup {
    page(
        ctx,
        "Alerts",
        "/alerts",
        Some(30),
        html! {
            p { "Severity: " a href="/alerts" { "all" }
                @for s in Severity::ALL { " · " a href={"/alerts?severity=" (s.as_str())} { (s.as_str()) } } }
            (history_table(history))
            h2 { "Rules" }
            (rules_table(ctx, rules, channels))
            @if let Some(channels) = channels {
                (rule_form(ctx, channels))
                h2 { "Channels" }
                (channels_table(ctx, channels))
                (channel_forms(ctx))
            }
        },
    )
}

fn rfc3339_ms(ms: u64) -> String {
    rfc3339(ms / 1000)
}

fn subject_link(a: &Alert) -> Markup {
    let s = &a.subject;
    let href = match s.kind.as_str() {
        "host" => Some(format!("/hosts/{}", s.id)),
        "vm" => Some(format!("/vms/{}", s.id)),
        "job" => Some(format!("/jobs/{}", s.id)),
        _ => None,
    };
    html! {
        (s.kind) " "
        @if let Some(h) = href { a href=(h) { (s.name) } } @else { (s.name) }
    }
}

fn history_table(history: &[Alert]) -> Markup {
    html! {
        @if history.is_empty() {
            p.muted { "No alerts yet." }
        } @else {
            table {
                thead { tr { th { "#" } th { "When" } th { "Severity" } th { "Event" } th { "Object" } th { "Message" } th { "Rule" } th { "Repeats" } th { "Delivery" } } }
                tbody {
                    @for a in history {
                        tr {
                            td { (a.id) }
                            td { (rfc3339_ms(a.at_ms)) }
                            td { (state_badge(a.severity.as_str())) }
                            td { (a.event.as_str()) }
                            td { (subject_link(a)) }
                            td { (a.message) }
                            td { (a.rule_name) }
                            td.num { (a.repeats) }
                            td { (delivery_summary(a)) }
                        }
                    }
                }
            }
        }
    }
}

fn delivery_summary(a: &Alert) -> Markup {
    html! {
        @if a.suppressed { span.muted { "suppressed (rate limit)" } }
        @for d in &a.deliveries {
            @let (state, detail) = match d.state {
                DeliveryState::Pending { next_at_ms } => ("pending", format!("next try {}", rfc3339_ms(next_at_ms))),
                DeliveryState::Sent { at_ms } => ("sent", rfc3339_ms(at_ms)),
                DeliveryState::Failed { at_ms } => ("failed", rfc3339_ms(at_ms)),
            };
            div {
                (d.channel) ": " (state_badge(state)) " " span.muted { (detail) }
                @if d.attempts > 1 { " · " (d.attempts) " attempts" }
                @if let Some(e) = &d.last_error { @if state != "sent" { br; span.error { (e) } } }
            }
        }
    }
}

fn condition_text(c: &Condition) -> String {
    match c {
        Condition::DatastoreFill { above_percent } => {
            format!("a datastore above {above_percent} % full")
        }
        Condition::Metric {
            object,
            metric,
            above_percent,
            for_secs,
        } => format!(
            "{} {} above {above_percent} % for {for_secs} s",
            match object {
                lifeboat_core::model::MetricObject::Host => "host",
                lifeboat_core::model::MetricObject::Vm => "VM",
            },
            match metric {
                lifeboat_core::model::MetricName::Cpu => "CPU",
                lifeboat_core::model::MetricName::Memory => "memory",
            },
        ),
        Condition::JobTooLong { minutes, job_kind } => format!(
            "a {} job running over {minutes} minutes",
            job_kind.as_deref().unwrap_or("")
        ),
    }
}

fn rules_table(ctx: &PageCtx, rules: &[Rule], channels: Option<&[ChannelView]>) -> Markup {
    let channel_name = |id: &str| {
        channels
            .and_then(|cs| cs.iter().find(|c| c.id == id))
            .map_or(id.to_string(), |c| c.name.clone())
    };
    html! {
        @if rules.is_empty() {
            p.muted { "No rules: events are not sent anywhere." }
        } @else {
            table {
                thead { tr { th { "Rule" } th { "On" } th { "Severity" } th { "Channels" } th { "Repeats within" } th { "At most" } th { "" } } }
                tbody {
                    @for r in rules {
                        tr {
                            td { (r.name) @if !r.enabled { " " span.muted { "(disabled)" } } }
                            td { @if let Some(c) = &r.condition { (condition_text(c)) } @else {
                                @for (i, e) in r.events.iter().enumerate() { @if i > 0 { ", " } (e.as_str()) } } }
                            td { (r.severity.map_or("each event's own", |s| s.as_str())) }
                            td { @for (i, c) in r.channels.iter().enumerate() { @if i > 0 { ", " } (channel_name(c)) } }
                            td.num { (r.dedup_secs) " s" }
                            td.num { (r.max_per_hour) " / hour" }
                            td { @if channels.is_some() {
                                form.inline method="post" action={"/alert-rules/" (r.id) "/delete"} {
                                    input type="hidden" name="csrf" value=(ctx.csrf);
                                    button type="submit" { "Delete" }
                                }
                            } }
                        }
                    }
                }
            }
        }
    }
}

fn rule_form(ctx: &PageCtx, channels: &[ChannelView]) -> Markup {
    let f = Form::new(ctx, "/alert-rules");
    let events: Vec<EventKind> = EventKind::ALL
        .into_iter()
        .filter(|k| !k.is_condition() && *k != EventKind::Test)
        .collect();
    let mut severities = vec![("", "each event's own")];
    severities.extend(Severity::ALL.iter().map(|s| (s.as_str(), s.as_str())));
    html! {
        h3 { "Add a rule" }
        form.stack method="post" action=(f.action()) {
            (f.head())
            fieldset {
                legend { "Rule" }
                (f.row(Field::text("name", "Name", "").required().help("Shown in the history and in every message.")))
                (f.row(Field::select("severity", "Severity", &severities, "").help("Overrides the severity each event has.")))
                (f.row(Field::number("dedup_secs", "Repeats within", 300).unit("s").range(0, 604_800)
                    .help("The same event for the same object again within this time is counted, not sent.")))
                (f.row(Field::number("max_per_hour", "At most", 30).unit("per hour").range(1, 3600)
                    .help("More alerts in an hour are recorded as suppressed and not sent.")))
            }
            fieldset.choices {
                legend { "On these events" }
                @for e in &events {
                    label { input type="checkbox" name="events" value=(e.as_str()) checked[f.ticked("events", e.as_str(), false)]; " " (e.as_str()) } " "
                }
            }
            fieldset {
                legend { "Or on a condition (instead of events)" }
                (f.row(Field::select("condition", "Condition", &[
                    ("", "none: the events above"),
                    ("datastore-fill", "a datastore above the threshold"),
                    ("host-cpu", "a host's CPU above the threshold"),
                    ("host-memory", "a host's memory above the threshold"),
                    ("vm-cpu", "a VM's CPU above the threshold"),
                    ("vm-memory", "a VM's memory above the threshold"),
                    ("job-too-long", "a job running longer than the minutes"),
                ], "").help("Checked every 10 s; an alert when it is crossed, another only after it ended.")))
                (f.row(Field::number("above_percent", "Threshold", 90).unit("%").range(0, 100)
                    .help("For fill level, CPU and memory.")))
                (f.row(Field::number("for_secs", "For", 300).unit("s").range(0, 604_800)
                    .help("For CPU and memory: how long it must stay above.")))
                (f.row(Field::number("minutes", "Job longer than", 120).unit("min").range(1, 10_080)
                    .help("For a job running too long.")))
            }
            fieldset.choices {
                legend { "Send on" }
                @if channels.is_empty() { span.muted { "No channels yet: add one below first." } }
                @for c in channels {
                    label { input type="checkbox" name="channels" value=(c.id) checked[f.ticked("channels", &c.id, false)]; " " (c.name) } " "
                }
            }
            button type="submit" { "Add rule" }
        }
    }
}

fn channel_target(c: &ChannelConfig) -> String {
    match c {
        ChannelConfig::Email { server, to, .. } => format!("{} via {server}", to.join(", ")),
        ChannelConfig::Syslog {
            address, transport, ..
        } => format!("{address} ({transport:?})").to_lowercase(),
        ChannelConfig::Webhook { url, .. } | ChannelConfig::Cbe { url, .. } => url.clone(),
        ChannelConfig::Snmp {
            target,
            version,
            notification,
            ..
        } => format!("{target} ({version:?} {notification:?})").to_lowercase(),
    }
}

fn channels_table(ctx: &PageCtx, channels: &[ChannelView]) -> Markup {
    html! {
        @if channels.is_empty() {
            p.muted { "No channels yet." }
        } @else {
            table {
                thead { tr { th { "Channel" } th { "Kind" } th { "To" } th { "" } } }
                tbody {
                    @for c in channels {
                        tr {
                            td { (c.name) @if !c.enabled { " " span.muted { "(disabled)" } } }
                            td { (c.config.kind()) }
                            td { (channel_target(&c.config)) }
                            td {
                                form.inline method="post" action={"/alert-channels/" (c.id) "/test"} {
                                    input type="hidden" name="csrf" value=(ctx.csrf);
                                    button type="submit" { "Send test alert" }
                                }
                                " "
                                form.inline method="post" action={"/alert-channels/" (c.id) "/delete"} {
                                    input type="hidden" name="csrf" value=(ctx.csrf);
                                    button type="submit" { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn channel_forms(ctx: &PageCtx) -> Markup {
    let ca_help =
        "PEM of the CA that signed the server's certificate; empty: the system's trust store.";
    let email = Form::new(ctx, "/alert-channels/email");
    let syslog = Form::new(ctx, "/alert-channels/syslog");
    let webhook = Form::new(ctx, "/alert-channels/webhook");
    let cbe = Form::new(ctx, "/alert-channels/cbe");
    let snmp = Form::new(ctx, "/alert-channels/snmp");
    html! {
        h3 { "Add an e-mail channel" }
        form.stack method="post" action=(email.action()) {
            (email.head())
            fieldset {
                legend { "SMTP server" }
                (email.row(Field::text("name", "Name", "").required()))
                (email.row(Field::text("server", "Server", "").required().placeholder("smtp.example.org")
                    .help("Its certificate must name it.")))
                (email.row(Field::number("port", "Port", "").range(1, 65535).help("Empty: 587 for STARTTLS, 465 for TLS.")))
                (email.row(Field::select("security", "Protection", &[("starttls", "STARTTLS (refused if not offered)"), ("tls", "TLS from the start")], "starttls")))
                (email.row(Field::text("username", "User name", "").help("Empty: no authentication.")))
                (email.row(Field::password("password", "Password").help("Stored encrypted and never shown again.")))
                (email.row(Field::textarea("ca_pem", "CA certificate", 3, "").help(ca_help)))
            }
            fieldset {
                legend { "Message" }
                (email.row(Field::text("from", "From", "").required().placeholder("lifeboat@example.org")))
                (email.row(Field::text("to", "To", "").required().help("Addresses separated by commas.")))
                (email.row(Field::text("console_url", "Console address", "").placeholder("https://lifeboat.example.org:8443")
                    .help("Each mail links to the alert's object here.")))
            }
            button type="submit" { "Add e-mail channel" }
        }
        h3 { "Add a syslog channel" }
        form.stack method="post" action=(syslog.action()) {
            (syslog.head())
            fieldset {
                legend { "RFC 5424 syslog" }
                (syslog.row(Field::text("name", "Name", "").required()))
                (syslog.row(Field::text("address", "Server", "").required().placeholder("logs.example.org:6514").help("HOST:PORT.")))
                (syslog.row(Field::select("transport", "Transport", &[("tls", "TLS (RFC 5425)"), ("tcp", "TCP"), ("udp", "UDP")], "tls")))
                (syslog.row(Field::textarea("ca_pem", "CA certificate", 3, "").help(ca_help)))
            }
            button type="submit" { "Add syslog channel" }
        }
        h3 { "Add a webhook" }
        form.stack method="post" action=(webhook.action()) {
            (webhook.head())
            fieldset {
                legend { "JSON POST over HTTPS" }
                (webhook.row(Field::text("name", "Name", "").required()))
                (webhook.row(Field::text("url", "URL", "").required().placeholder("https://hooks.example.org/lifeboat")))
                (webhook.row(Field::password("secret", "Signing secret")
                    .help("With one, each request carries X-Lifeboat-Signature: sha256=HMAC of the body.")))
                (webhook.row(Field::textarea("ca_pem", "CA certificate", 3, "").help(ca_help)))
            }
            button type="submit" { "Add webhook" }
        }
        h3 { "Add a Common Base Event receiver" }
        form.stack method="post" action=(cbe.action()) {
            (cbe.head())
            fieldset {
                legend { "IBM Common Base Event 1.0.1 XML over HTTPS" }
                (cbe.row(Field::text("name", "Name", "").required()))
                (cbe.row(Field::text("url", "URL", "").required().placeholder("https://events.example.org/cbe")))
                (cbe.row(Field::textarea("ca_pem", "CA certificate", 3, "").help(ca_help)))
            }
            button type="submit" { "Add CBE channel" }
        }
        h3 { "Add an SNMP notification receiver" }
        form.stack method="post" action=(snmp.action()) {
            (snmp.head())
            fieldset {
                legend { "Receiver" }
                (snmp.row(Field::text("name", "Name", "").required()))
                (snmp.row(Field::text("target", "Receiver", "").required().placeholder("nms.example.org:162").help("HOST:PORT.")))
                (snmp.row(Field::select("version", "Version", &[("v2c", "v2c (community)"), ("v3", "v3 (authPriv, AES-128)")], "v2c")))
                (snmp.row(Field::select("notification", "Send as", &[("inform", "inform (acknowledged, retried)"), ("trap", "trap (v2c only, unacknowledged)")], "inform")))
            }
            fieldset {
                legend { "Credentials" }
                (snmp.row(Field::password("community", "Community").help("For v2c. Stored encrypted.")))
                (snmp.row(Field::text("user", "User", "").help("For v3: the receiver's USM user.")))
                (snmp.row(Field::select("auth", "Hash", &[("sha256", "SHA-256"), ("sha1", "SHA-1")], "sha256")))
                (snmp.row(Field::password("auth_password", "Auth password").help("For v3; 8 characters or more. Stored encrypted.")))
                (snmp.row(Field::password("priv_password", "Privacy password").help("For v3; 8 characters or more. Stored encrypted.")))
            }
            p.muted { "Notifications are LIFEBOAT-MIB's lbHostAlarm, lbFailoverAlarm, lbJobAlarm, lbThresholdAlarm and lbTestAlarm." }
            button type="submit" { "Add SNMP receiver" }
        }
    }
}

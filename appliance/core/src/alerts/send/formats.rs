//! What each kind of channel is sent, from one alert (pure functions).

use quick_xml::events::{BytesDecl, BytesText, Event as Xml};
use quick_xml::Writer;
use serde_json::json;
use syslog::{Facility, Formatter5424, LogFormat, Severity as SyslogSeverity};

use super::Origin;
use crate::alerts::{Alert, Severity};
use crate::logging::{LogLevel, LogRecord};

/// The private enterprise number of LIFEBOAT-MIB (a placeholder, to be
/// registered before release), also the syslog SD-ID's.
pub const ENTERPRISE: u32 = 32473;

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// The webhook's JSON body; its field names are the REST API's.
pub fn webhook(alert: &Alert, origin: &Origin) -> Vec<u8> {
    let body = json!({
        "id": alert.id,
        "at": timestamp(alert.at_ms),
        "rule": alert.rule,
        "rule_name": alert.rule_name,
        "event": alert.event.as_str(),
        "severity": alert.severity.as_str(),
        "subject": alert.subject,
        "message": alert.message,
        "repeats": alert.repeats,
        "controller": origin.hostname,
        "version": origin.version,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `sha256=HEX`: HMAC-SHA256 of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body)))
}

/// CBE severity: 10 information, 30 warning, 40 minor, 50 critical.
fn cbe_severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "10",
        Severity::Warning => "30",
        Severity::Major => "40",
        Severity::Critical => "50",
    }
}

/// The alert as an IBM Common Base Event 1.0.1 document.
pub fn cbe(alert: &Alert, origin: &Origin) -> String {
    // 34 characters, starting with a letter, unique per alert and time.
    let instance = format!("LB{:016X}{:016X}", alert.at_ms, alert.id);
    let msg: String = format!("{}: {}", alert.subject.name, alert.message)
        .chars()
        .take(1024)
        .collect();
    let category = if alert.event == crate::alerts::EventKind::MetricThreshold {
        "PERFORMANCE"
    } else {
        "STATUS"
    };
    let application = format!("Lifeboat {}", origin.version);
    let alert_id = alert.id.to_string();
    let repeats = alert.repeats.to_string();
    let data: [(&str, &str, &str); 7] = [
        ("event", "string", alert.event.as_str()),
        ("rule", "string", &alert.rule_name),
        ("subjectKind", "string", &alert.subject.kind),
        ("subjectId", "string", &alert.subject.id),
        ("subjectName", "string", &alert.subject.name),
        ("alertId", "long", &alert_id),
        ("repeats", "int", &repeats),
    ];
    let mut w = Writer::new(Vec::new());
    let written: std::io::Result<()> = (|| {
        w.write_event(Xml::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        w.create_element("CommonBaseEvent")
            .with_attribute(("xmlns", "http://www.ibm.com/AC/commonbaseevent1_0_1"))
            .with_attribute(("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"))
            .with_attribute(("version", "1.0.1"))
            .with_attribute(("creationTime", timestamp(alert.at_ms).as_str()))
            .with_attribute(("globalInstanceId", instance.as_str()))
            .with_attribute(("severity", cbe_severity(alert.severity)))
            .with_attribute(("msg", msg.as_str()))
            .write_inner_content(|w| {
                for (name, kind, value) in data {
                    w.create_element("extendedDataElements")
                        .with_attribute(("name", name))
                        .with_attribute(("type", kind))
                        .write_inner_content(|w| {
                            w.create_element("values")
                                .write_text_content(BytesText::new(value))?;
                            Ok(())
                        })?;
                }
                w.create_element("sourceComponentId")
                    .with_attribute(("application", application.as_str()))
                    .with_attribute(("component", "Lifeboat"))
                    .with_attribute(("componentIdType", "ProductName"))
                    .with_attribute(("componentType", "VirtualMachineBackupAndFailoverController"))
                    .with_attribute(("location", origin.hostname.as_str()))
                    .with_attribute(("locationType", "Hostname"))
                    .with_attribute(("subComponent", alert.subject.kind.as_str()))
                    .write_empty()?;
                w.create_element("situation")
                    .with_attribute(("categoryName", "ReportSituation"))
                    .write_inner_content(|w| {
                        w.create_element("situationType")
                            .with_attribute(("xsi:type", "ReportSituation"))
                            .with_attribute(("reasoningScope", "EXTERNAL"))
                            .with_attribute(("reportCategory", category))
                            .write_empty()?;
                        Ok(())
                    })?;
                Ok(())
            })?;
        Ok(())
    })();
    debug_assert!(written.is_ok(), "writing to a Vec cannot fail");
    String::from_utf8(w.into_inner()).unwrap_or_default()
}

fn syslog_severity(s: Severity) -> SyslogSeverity {
    match s {
        Severity::Info => SyslogSeverity::LOG_INFO,
        Severity::Warning => SyslogSeverity::LOG_WARNING,
        Severity::Major => SyslogSeverity::LOG_ERR,
        Severity::Critical => SyslogSeverity::LOG_CRIT,
    }
}

/// One RFC 5424 message (facility daemon), without framing; MSGID is the
/// alert's number, the event in structured data `lifeboat@32473`.
pub fn syslog(alert: &Alert, origin: &Origin) -> Vec<u8> {
    let params = [
        ("alert", alert.id.to_string()),
        ("at", timestamp(alert.at_ms)),
        ("event", alert.event.as_str().to_string()),
        ("severity", alert.severity.as_str().to_string()),
        ("rule", alert.rule_name.clone()),
        ("kind", alert.subject.kind.clone()),
        ("id", alert.subject.id.clone()),
        ("name", alert.subject.name.clone()),
    ];
    rfc5424(
        origin,
        syslog_severity(alert.severity),
        alert.id,
        ("lifeboat", &params),
        &format!("{}: {}", alert.subject.name, alert.message),
    )
}

/// A record of the controller's own log as one RFC 5424 message: MSGID
/// its number, its level and module in structured data `lifeboat-log@32473`.
pub fn log_syslog(record: &LogRecord, origin: &Origin) -> Vec<u8> {
    let severity = match record.level {
        LogLevel::Error => SyslogSeverity::LOG_ERR,
        LogLevel::Warn => SyslogSeverity::LOG_WARNING,
        LogLevel::Info => SyslogSeverity::LOG_INFO,
        LogLevel::Debug | LogLevel::Trace => SyslogSeverity::LOG_DEBUG,
    };
    let params = [
        ("level", record.level.as_str().to_string()),
        ("target", record.target.clone()),
        ("at", timestamp(record.at_ms)),
    ];
    rfc5424(
        origin,
        severity,
        record.seq,
        ("lifeboat-log", &params),
        &record.message,
    )
}

fn rfc5424(
    origin: &Origin,
    severity: SyslogSeverity,
    number: u64,
    (sd_name, params): (&str, &[(&str, String)]),
    message: &str,
) -> Vec<u8> {
    let formatter = Formatter5424 {
        facility: Facility::LOG_DAEMON,
        hostname: Some(origin.hostname.clone()),
        process: "lifeboat".into(),
        pid: std::process::id(),
    };
    let data = std::collections::BTreeMap::from([(
        format!("{sd_name}@{ENTERPRISE}"),
        params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )]);
    let mut line = Vec::new();
    // The number is the MSGID: RFC 5424 allows any printable token.
    let msgid = u32::try_from(number % u64::from(u32::MAX)).unwrap_or(0);
    let _ = formatter.format(
        &mut line,
        severity,
        (msgid, data, message.replace(['\r', '\n'], " ")),
    );
    line
}

/// An e-mail's subject and its plain-text and HTML bodies.
pub fn email(alert: &Alert, origin: &Origin, console_url: &str) -> (String, String, String) {
    let subject = format!(
        "[Lifeboat {}] {} {}: {}",
        alert.severity.as_str().to_uppercase(),
        alert.subject.kind,
        alert.subject.name,
        alert.event.as_str()
    )
    .replace(['\r', '\n'], " ");
    let link = console_link(alert, console_url);
    let mut text = format!(
        "{}\n\nEvent:      {}\nSeverity:   {}\nObject:     {} {} ({})\nRule:       {}\nAt:         {}\nController: {} (Lifeboat {})\n",
        alert.message,
        alert.event.as_str(),
        alert.severity.as_str(),
        alert.subject.kind,
        alert.subject.name,
        alert.subject.id,
        alert.rule_name,
        timestamp(alert.at_ms),
        origin.hostname,
        origin.version,
    );
    if let Some(link) = &link {
        text.push_str(&format!("\nIn the console: {link}\n"));
    }
    let e = |s: &str| quick_xml::escape::escape(s).into_owned();
    let rows = [
        ("Event", alert.event.as_str().to_string()),
        ("Severity", alert.severity.as_str().to_string()),
        (
            "Object",
            format!(
                "{} {} ({})",
                alert.subject.kind, alert.subject.name, alert.subject.id
            ),
        ),
        ("Rule", alert.rule_name.clone()),
        ("At", timestamp(alert.at_ms)),
        (
            "Controller",
            format!("{} (Lifeboat {})", origin.hostname, origin.version),
        ),
    ];
    let mut html = format!(
        "<!DOCTYPE html><html><body><p>{}</p><table>",
        e(&alert.message)
    );
    for (k, v) in rows {
        html.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            e(k),
            e(&v)
        ));
    }
    html.push_str("</table>");
    if let Some(link) = &link {
        html.push_str(&format!("<p><a href=\"{0}\">{0}</a></p>", e(link)));
    }
    html.push_str("</body></html>");
    (subject, text, html)
}

/// The console page of the alert's object, under `console_url`.
fn console_link(alert: &Alert, console_url: &str) -> Option<String> {
    if console_url.is_empty() {
        return None;
    }
    let base = console_url.trim_end_matches('/');
    let id: String = alert
        .subject
        .id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    Some(match alert.subject.kind.as_str() {
        "host" => format!("{base}/hosts/{id}"),
        "vm" => format!("{base}/vms/{id}"),
        "job" => format!("{base}/jobs/{id}"),
        _ => format!("{base}/alerts"),
    })
}

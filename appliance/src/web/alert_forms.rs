//! The alert forms: rules, channels, a channel's test.

use lifeboat_core::model::{
    AuthProtocol, ChannelConfig, ChannelInput, Condition, EventKind, MetricName, MetricObject,
    RuleInput, Severity, SmtpSecurity, SnmpNotification, SnmpVersion, SyslogTransport,
};
use lifeboat_core::ops::OpsError;

use super::forms::{FormReply, Submission};
use crate::http::redirect;

fn bad(msg: String) -> OpsError {
    OpsError::BadRequest(msg)
}

/// Every value of a repeated field.
fn all<'a>(s: &'a Submission<'_>, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    s.form
        .iter()
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn number<T: std::str::FromStr>(s: &Submission<'_>, name: &str, default: T) -> Result<T, OpsError> {
    match s.non_empty(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| bad(format!("{name}: not a number"))),
    }
}

pub async fn create_rule(s: Submission<'_>) -> FormReply {
    let events = all(&s, "events")
        .map(|e| EventKind::parse(e).ok_or_else(|| bad(format!("events: unknown event {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let severity = match s.non_empty("severity") {
        Some(v) => Some(Severity::parse(&v).ok_or_else(|| bad("severity: unknown".into()))?),
        None => None,
    };
    let above_percent = number(&s, "above_percent", 90.0)?;
    let metric = |object, metric| -> Result<Condition, OpsError> {
        Ok(Condition::Metric {
            object,
            metric,
            above_percent,
            for_secs: number(&s, "for_secs", 300)?,
        })
    };
    let condition = match s.text("condition").as_str() {
        "" => None,
        "datastore-fill" => Some(Condition::DatastoreFill { above_percent }),
        "host-cpu" => Some(metric(MetricObject::Host, MetricName::Cpu)?),
        "host-memory" => Some(metric(MetricObject::Host, MetricName::Memory)?),
        "vm-cpu" => Some(metric(MetricObject::Vm, MetricName::Cpu)?),
        "vm-memory" => Some(metric(MetricObject::Vm, MetricName::Memory)?),
        "job-too-long" => Some(Condition::JobTooLong {
            minutes: number(&s, "minutes", 120)?,
            job_kind: None,
        }),
        other => return Err(bad(format!("condition: unknown condition {other}"))),
    };
    let input = RuleInput {
        name: s.text("name"),
        enabled: true,
        // A condition fires on its own event alone.
        events: if condition.is_some() {
            Vec::new()
        } else {
            events
        },
        condition,
        severity,
        channels: all(&s, "channels").map(str::to_string).collect(),
        dedup_secs: number(&s, "dedup_secs", 300)?,
        max_per_hour: number(&s, "max_per_hour", 30)?,
    };
    s.ops.put_alert_rule(s.who, None, input).await?;
    Ok(redirect("/alerts"))
}

pub async fn delete_rule(s: Submission<'_>) -> FormReply {
    s.ops.delete_alert_rule(s.who, s.arg("id")).await?;
    Ok(redirect("/alerts"))
}

pub async fn create_channel(s: Submission<'_>) -> FormReply {
    let ca_pem = s.text("ca_pem");
    let config = match s.arg("kind") {
        "email" => ChannelConfig::Email {
            server: s.text("server"),
            port: match s.non_empty("port") {
                Some(_) => Some(number(&s, "port", 0u16)?),
                None => None,
            },
            security: match s.text("security").as_str() {
                "tls" => SmtpSecurity::Tls,
                _ => SmtpSecurity::Starttls,
            },
            username: s.text("username"),
            password: s.field("password").unwrap_or_default(),
            from: s.text("from"),
            to: s
                .text("to")
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            console_url: s.text("console_url"),
            ca_pem,
        },
        "syslog" => ChannelConfig::Syslog {
            address: s.text("address"),
            transport: match s.text("transport").as_str() {
                "udp" => SyslogTransport::Udp,
                "tcp" => SyslogTransport::Tcp,
                _ => SyslogTransport::Tls,
            },
            ca_pem,
        },
        "webhook" => ChannelConfig::Webhook {
            url: s.text("url"),
            secret: s.field("secret").unwrap_or_default(),
            ca_pem,
        },
        "cbe" => ChannelConfig::Cbe {
            url: s.text("url"),
            ca_pem,
        },
        "snmp" => ChannelConfig::Snmp {
            target: s.text("target"),
            version: match s.text("version").as_str() {
                "v3" => SnmpVersion::V3,
                _ => SnmpVersion::V2c,
            },
            notification: match s.text("notification").as_str() {
                "trap" => SnmpNotification::Trap,
                _ => SnmpNotification::Inform,
            },
            community: s.field("community").unwrap_or_default(),
            user: s.text("user"),
            auth: match s.text("auth").as_str() {
                "sha1" => AuthProtocol::Sha1,
                _ => AuthProtocol::Sha256,
            },
            auth_password: s.field("auth_password").unwrap_or_default(),
            priv_password: s.field("priv_password").unwrap_or_default(),
        },
        other => return Err(OpsError::NotFound(format!("no channel kind {other}"))),
    };
    let input = ChannelInput {
        name: s.text("name"),
        enabled: true,
        config,
    };
    s.ops.put_alert_channel(s.who, None, input).await?;
    Ok(redirect("/alerts"))
}

pub async fn test_channel(s: Submission<'_>) -> FormReply {
    s.ops.test_alert_channel(s.who, s.arg("id")).await?;
    Ok(redirect("/alerts"))
}

pub async fn delete_channel(s: Submission<'_>) -> FormReply {
    s.ops.delete_alert_channel(s.who, s.arg("id")).await?;
    Ok(redirect("/alerts"))
}

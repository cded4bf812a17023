use super::send::{formats, Origin};
use super::*;

fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("lifeboat-alerts-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.redb");
    (Store::open(&path).unwrap(), path)
}

fn rule(id: &str, events: Vec<EventKind>, max_per_hour: u32) -> Rule {
    RuleInput {
        name: format!("rule {id}"),
        enabled: true,
        events,
        condition: None,
        severity: None,
        channels: vec!["c1".into(), "c2".into()],
        dedup_secs: 300,
        max_per_hour,
    }
    .into_rule(id.into())
}

fn host_event(kind: EventKind, host: &str, at_ms: u64) -> Event {
    Event {
        kind,
        subject: Subject {
            kind: "host".into(),
            id: host.into(),
            name: format!("name of {host}"),
            vm: None,
        },
        message: "its agent stopped answering".into(),
        at_ms,
        only_for: None,
    }
}

const T0: u64 = 1_800_000_000_000;

/// A fresh store's alerts with rule `r1` on `events` (channels c1, c2), and
/// the store's path.
async fn with_rule(
    name: &str,
    events: Vec<EventKind>,
    max_per_hour: u32,
) -> (Alerts, std::path::PathBuf) {
    let (store, path) = temp_store(name);
    let alerts = Alerts::load(store).unwrap();
    alerts
        .rules
        .put("r1", rule("r1", events, max_per_hour))
        .await
        .unwrap();
    (alerts, path)
}

#[tokio::test]
async fn an_event_becomes_one_alert_queued_on_each_channel_of_each_matching_rule() {
    let (alerts, _) = with_rule("match", vec![EventKind::HostFailed], 30).await;
    alerts
        .rules
        .put("r2", rule("r2", vec![EventKind::BackupFailed], 30))
        .await
        .unwrap();
    let raised = alerts
        .handle(&host_event(EventKind::HostFailed, "h1", T0))
        .await
        .unwrap();
    assert_eq!(raised.len(), 1);
    let a = &raised[0];
    assert_eq!((a.rule.as_str(), a.severity), ("r1", Severity::Critical));
    assert_eq!(a.deliveries.len(), 2);
    assert!(a.pending());
    assert_eq!(alerts.due(T0).len(), 2);
    assert_eq!(alerts.next_due(), Some(T0));
}

#[tokio::test]
async fn a_repeat_within_the_window_is_counted_not_sent_and_one_after_it_is_sent() {
    let (alerts, _) = with_rule("dedup", vec![EventKind::HostSuspect], 30).await;
    let first = alerts
        .handle(&host_event(EventKind::HostSuspect, "h1", T0))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let again = alerts
        .handle(&host_event(EventKind::HostSuspect, "h1", T0 + 60_000))
        .await
        .unwrap();
    assert!(again.is_empty(), "a repeat raises nothing new");
    let other_host = alerts
        .handle(&host_event(EventKind::HostSuspect, "h2", T0 + 60_000))
        .await
        .unwrap();
    assert_eq!(other_host.len(), 1, "another object is another alert");
    let stored = alerts.get(first[0].id).unwrap();
    assert_eq!((stored.repeats, stored.last_at_ms), (1, T0 + 60_000));
    // The window runs from the last repeat.
    let later = alerts
        .handle(&host_event(
            EventKind::HostSuspect,
            "h1",
            T0 + 60_000 + 300_000,
        ))
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
}

#[tokio::test]
async fn outcomes_recorded_at_once_on_several_channels_are_all_kept() {
    let (alerts, _) = with_rule("concurrent", vec![EventKind::HostFailed], 30).await;
    let alerts = std::sync::Arc::new(alerts);
    let raised = alerts
        .handle(&host_event(EventKind::HostFailed, "h1", T0))
        .await
        .unwrap();
    let id = raised[0].id;
    let tasks: Vec<_> = ["c1", "c2"]
        .into_iter()
        .map(|c| {
            let alerts = alerts.clone();
            tokio::spawn(async move { alerts.delivered(id, c, Attempt::Sent, T0 + 1).await })
        })
        .chain(std::iter::once({
            let alerts = alerts.clone();
            tokio::spawn(async move {
                alerts
                    .handle(&host_event(EventKind::HostFailed, "h1", T0 + 2))
                    .await
                    .map(|_| ())
            })
        }))
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stored = alerts.get(id).unwrap();
    assert_eq!(stored.repeats, 1);
    assert!(
        stored
            .deliveries
            .iter()
            .all(|d| matches!(d.state, DeliveryState::Sent { .. })),
        "{:?}",
        stored.deliveries
    );
    assert!(alerts.due(T0 + 10).is_empty(), "nothing is sent twice");
}

#[tokio::test]
async fn over_the_rate_limit_alerts_are_recorded_as_suppressed_with_no_delivery() {
    let (alerts, _) = with_rule("rate", vec![EventKind::HostFailed], 2).await;
    let mut suppressed = Vec::new();
    for i in 0..4 {
        let a = alerts
            .handle(&host_event(EventKind::HostFailed, &format!("h{i}"), T0 + i))
            .await
            .unwrap();
        suppressed.push(a[0].suppressed);
        assert_eq!(a[0].deliveries.is_empty(), a[0].suppressed);
    }
    assert_eq!(suppressed, [false, false, true, true]);
    // An hour later the limit has room again.
    let a = alerts
        .handle(&host_event(EventKind::HostFailed, "h9", T0 + 3_600_000))
        .await
        .unwrap();
    assert!(!a[0].suppressed);
}

#[tokio::test]
async fn failed_attempts_back_off_and_a_restart_keeps_the_queue_and_the_window() {
    let (alerts, path) = with_rule("restart", vec![EventKind::HostFailed], 30).await;
    let a = alerts
        .handle(&host_event(EventKind::HostFailed, "h1", T0))
        .await
        .unwrap()
        .remove(0);
    alerts
        .delivered(
            a.id,
            "c1",
            Attempt::Failed("connection refused".into()),
            T0 + 1,
        )
        .await
        .unwrap();
    alerts
        .delivered(a.id, "c2", Attempt::Sent, T0 + 2)
        .await
        .unwrap();
    let stored = alerts.get(a.id).unwrap();
    assert_eq!(
        stored.deliveries[0].state,
        DeliveryState::Pending {
            next_at_ms: T0 + 1 + 5_000
        }
    );
    assert_eq!(
        stored.deliveries[0].last_error.as_deref(),
        Some("connection refused")
    );
    assert_eq!(
        stored.deliveries[1].state,
        DeliveryState::Sent { at_ms: T0 + 2 }
    );
    assert!(alerts.due(T0 + 5_000).is_empty());
    assert_eq!(alerts.due(T0 + 5_001).len(), 1);
    drop(alerts);

    let alerts = Alerts::load(Store::open(&path).unwrap()).unwrap();
    assert_eq!(
        alerts.due(T0 + 5_001).len(),
        1,
        "the queue survives a restart"
    );
    assert!(
        alerts
            .handle(&host_event(EventKind::HostFailed, "h1", T0 + 10_000))
            .await
            .unwrap()
            .is_empty(),
        "the de-duplication window survives a restart"
    );
    let next = alerts
        .handle(&host_event(EventKind::HostFailed, "h2", T0 + 10_000))
        .await
        .unwrap();
    assert!(next[0].id > a.id, "ids keep counting up");
}

#[test]
fn backoff_doubles_from_five_seconds_up_to_ten_minutes() {
    let waits: Vec<u64> = (1..=9).map(backoff_ms).collect();
    assert_eq!(
        waits,
        [5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 600_000, 600_000]
    );
    assert_eq!(backoff_ms(u32::MAX), 600_000);
}

#[tokio::test]
async fn a_delivery_is_given_up_a_day_after_its_alert() {
    let (alerts, _) = with_rule("give-up", vec![EventKind::HostFailed], 30).await;
    let a = alerts
        .handle(&host_event(EventKind::HostFailed, "h1", T0))
        .await
        .unwrap()
        .remove(0);
    let late = T0 + GIVE_UP_AFTER_MS - 1_000;
    alerts
        .delivered(a.id, "c1", Attempt::Failed("down".into()), late)
        .await
        .unwrap();
    let stored = alerts.get(a.id).unwrap();
    assert_eq!(
        stored.deliveries[0].state,
        DeliveryState::Failed { at_ms: late }
    );
}

#[test]
fn rule_inputs_are_checked_field_by_field() {
    let ok = RuleInput {
        name: "hosts".into(),
        enabled: true,
        events: vec![EventKind::HostFailed],
        condition: None,
        severity: None,
        channels: vec![],
        dedup_secs: 300,
        max_per_hour: 30,
    };
    assert_eq!(ok.validate(), Ok(()));
    let bad = |f: fn(&mut RuleInput)| {
        let mut r = ok.clone();
        f(&mut r);
        r.validate().unwrap_err()
    };
    assert!(bad(|r| r.name = " ".into()).starts_with("name:"));
    assert!(bad(|r| r.events.clear()).starts_with("events:"));
    assert!(bad(|r| r.events = vec![EventKind::Test]).starts_with("events:"));
    assert!(bad(|r| r.max_per_hour = 0).starts_with("max_per_hour:"));
    assert!(bad(|r| {
        r.events.clear();
        r.condition = Some(Condition::DatastoreFill {
            above_percent: 120.0,
        });
    })
    .starts_with("condition.above_percent:"));
    assert!(bad(|r| r.condition = Some(Condition::JobTooLong {
        minutes: 5,
        job_kind: None
    }))
    .starts_with("events:"));
}

fn sample_alert() -> Alert {
    Alert {
        id: 42,
        at_ms: T0 + 123,
        rule: "r1".into(),
        rule_name: "Hosts & <failures>".into(),
        event: EventKind::HostFailed,
        severity: Severity::Critical,
        subject: Subject {
            kind: "host".into(),
            id: "h1".into(),
            name: "kvm\"01\"".into(),
            vm: None,
        },
        message: "no heartbeat for 30 s\nand no ping".into(),
        repeats: 0,
        last_at_ms: T0 + 123,
        suppressed: false,
        deliveries: vec![],
    }
}

fn origin() -> Origin {
    Origin {
        hostname: "lifeboat-1".into(),
        version: "1.2.3",
    }
}

#[test]
fn the_common_base_event_has_the_1_0_1_elements_and_attributes() {
    let xml = formats::cbe(&sample_alert(), &origin());
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "CommonBaseEvent");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.ibm.com/AC/commonbaseevent1_0_1")
    );
    assert_eq!(root.attribute("version"), Some("1.0.1"));
    assert_eq!(
        root.attribute("creationTime"),
        Some("2027-01-15T08:00:00.123Z")
    );
    assert_eq!(root.attribute("severity"), Some("50"));
    let id = root.attribute("globalInstanceId").unwrap();
    assert!((32..=64).contains(&id.len()) && id.starts_with(|c: char| c.is_ascii_alphabetic()));
    assert_eq!(
        root.attribute("msg"),
        Some("kvm\"01\": no heartbeat for 30 s\nand no ping")
    );
    let child = |name: &str| {
        root.children()
            .find(|n| n.tag_name().name() == name)
            .unwrap()
    };
    let source = child("sourceComponentId");
    for attr in [
        "component",
        "componentIdType",
        "componentType",
        "location",
        "locationType",
        "subComponent",
    ] {
        assert!(source.attribute(attr).is_some(), "sourceComponentId@{attr}");
    }
    let situation = child("situation");
    assert_eq!(situation.attribute("categoryName"), Some("ReportSituation"));
    let rule = root
        .children()
        .find(|n| n.attribute("name") == Some("rule"))
        .unwrap();
    assert_eq!(
        rule.first_element_child().unwrap().text(),
        Some("Hosts & <failures>")
    );
    // The schema's order: extended data, then source, then situation.
    let order: Vec<&str> = root
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().name())
        .collect();
    assert_eq!(order.last(), Some(&"situation"));
    assert_eq!(order[order.len() - 2], "sourceComponentId");
}

#[test]
fn the_syslog_message_is_rfc_5424_with_the_event_in_structured_data() {
    let line = String::from_utf8(formats::syslog(&sample_alert(), &origin())).unwrap();
    // <PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG; daemon (3) * 8 + crit (2).
    let fields: Vec<&str> = line.splitn(8, ' ').collect();
    assert_eq!(fields[0], "<26>1");
    assert!(
        time::OffsetDateTime::parse(fields[1], &time::format_description::well_known::Rfc3339)
            .is_ok()
    );
    assert_eq!(
        &fields[2..6],
        [
            "lifeboat-1",
            "lifeboat",
            &std::process::id().to_string(),
            "42"
        ]
    );
    assert_eq!(fields[6], "[lifeboat@32473", "{line}");
    assert!(line.contains(r#"event="host-failed""#), "{line}");
    assert!(
        line.contains(r#"name="kvm\"01\"""#),
        "SD values escaped: {line}"
    );
    assert!(
        line.ends_with("kvm\"01\": no heartbeat for 30 s and no ping"),
        "{line}"
    );
}

#[test]
fn the_webhook_body_is_signed_with_hmac_sha256() {
    let body = formats::webhook(&sample_alert(), &origin());
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["event"], "host-failed");
    assert_eq!(json["severity"], "critical");
    assert_eq!(json["subject"]["id"], "h1");
    // RFC 4231 test case 2.
    assert_eq!(
        formats::signature("Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn the_mail_escapes_html_and_links_to_the_object() {
    let (subject, text, html) = formats::email(&sample_alert(), &origin(), "https://lb.example/");
    assert_eq!(subject, "[Lifeboat CRITICAL] host kvm\"01\": host-failed");
    assert!(text.contains("https://lb.example/hosts/h1"));
    assert!(html.contains("Hosts &amp; &lt;failures&gt;"));
    assert!(!html.contains("<failures>"));
    assert!(html.contains("<a href=\"https://lb.example/hosts/h1\">"));
}

#[test]
fn channel_inputs_are_checked_and_views_carry_no_secret() {
    let webhook = ChannelConfig::Webhook {
        url: "https://hooks.example:8443/lifeboat".into(),
        secret: "s3cret".into(),
        ca_pem: String::new(),
    };
    assert_eq!(webhook.validate(), Ok(()));
    assert!(webhook.has_secret());
    assert!(!webhook.without_secret().has_secret());
    let plain = ChannelConfig::Cbe {
        url: "http://cbe.example/".into(),
        ca_pem: String::new(),
    };
    assert!(plain.validate().unwrap_err().starts_with("url:"));
    let mail = ChannelConfig::Email {
        server: "smtp.example".into(),
        port: None,
        security: channel::SmtpSecurity::Starttls,
        username: String::new(),
        password: String::new(),
        from: "lifeboat@example".into(),
        to: vec!["not an address".into()],
        console_url: String::new(),
        ca_pem: String::new(),
    };
    assert!(mail.validate().unwrap_err().starts_with("to:"));
    let syslog = ChannelConfig::Syslog {
        address: "logs.example".into(),
        transport: channel::SyslogTransport::Tcp,
        ca_pem: String::new(),
    };
    assert!(syslog.validate().unwrap_err().starts_with("address:"));
}

//! Delivering one alert on one channel: the message each kind of channel
//! gets (`formats.rs`, pure) and the transports — SMTP through lettre,
//! HTTPS POST through hyper and rustls, syslog over UDP, TCP or TLS.

pub mod formats;
pub mod transport;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::{Alert, ChannelConfig};

/// Longest one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Who sends: put in every message.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The controller's host name.
    pub hostname: String,
    pub version: &'static str,
}

/// Sends SNMP notifications: the SNMP adapter, which knows LIFEBOAT-MIB
/// and speaks the protocol, registers one at start.
pub trait SnmpNotifier: Send + Sync {
    /// Sends `alert` to the receiver `config` (a [`ChannelConfig::Snmp`],
    /// secrets opened) names; for an inform, Ok once it is acknowledged.
    fn notify<'a>(
        &'a self,
        config: &'a ChannelConfig,
        alert: &'a Alert,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// Sends `alert` as `config` says (its secrets opened). An error says what
/// failed, for the alert's history.
pub async fn deliver(
    config: &ChannelConfig,
    alert: &Alert,
    origin: &Origin,
    snmp: Option<&dyn SnmpNotifier>,
) -> Result<(), String> {
    let attempt = async {
        match config {
            ChannelConfig::Snmp { .. } => match snmp {
                Some(notifier) => notifier.notify(config, alert).await,
                None => Err("this controller has no SNMP adapter running".into()),
            },
            ChannelConfig::Email { .. } => transport::email(config, alert, origin).await,
            ChannelConfig::Syslog {
                address,
                transport: how,
                ca_pem,
            } => {
                let line = formats::syslog(alert, origin);
                transport::syslog(address, *how, ca_pem, &[line]).await
            }
            ChannelConfig::Webhook {
                url,
                secret,
                ca_pem,
            } => {
                let body = formats::webhook(alert, origin);
                let mut headers = Vec::new();
                if !secret.is_empty() {
                    headers.push(("x-lifeboat-signature", formats::signature(secret, &body)));
                }
                transport::https_post(url, ca_pem, "application/json", &headers, body).await
            }
            ChannelConfig::Cbe { url, ca_pem } => {
                let body = formats::cbe(alert, origin).into_bytes();
                transport::https_post(url, ca_pem, "application/xml", &[], body).await
            }
        }
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())))
}

//! Alert channels: where alerts go and how. Secrets (an SMTP password, a
//! webhook's signing key) are stored sealed and never shown again.

use serde::{Deserialize, Serialize};

const MAX_NAME: usize = 100;
const MAX_TEXT: usize = 1024;
const MAX_CA_PEM: usize = 64 * 1024;
const MAX_RECIPIENTS: usize = 20;

/// How an SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587); refused if the
    /// server does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyslogTransport {
    Udp,
    Tcp,
    /// RFC 5425.
    #[default]
    Tls,
}

/// A channel's settings; in an input, `password` and `secret` are the
/// plain values (empty: keep the stored one), in a stored channel sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ChannelConfig {
    Email {
        /// SMTP server host name (checked against its certificate).
        server: String,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        security: SmtpSecurity,
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
        from: String,
        to: Vec<String>,
        /// The console's address, for the link in each mail.
        #[serde(default)]
        console_url: String,
        /// PEM of the CA that signed the server's certificate; empty: the
        /// system's trust store.
        #[serde(default)]
        ca_pem: String,
    },
    /// RFC 5424 messages.
    Syslog {
        /// `HOST:PORT`.
        address: String,
        #[serde(default)]
        transport: SyslogTransport,
        #[serde(default)]
        ca_pem: String,
    },
    /// A JSON POST; with a secret, signed: `X-Lifeboat-Signature:
    /// sha256=HEX` (HMAC-SHA256 of the body).
    Webhook {
        url: String,
        #[serde(default)]
        secret: String,
        #[serde(default)]
        ca_pem: String,
    },
    /// IBM Common Base Event 1.0.1 XML, POSTed.
    Cbe {
        url: String,
        #[serde(default)]
        ca_pem: String,
    },
    /// An SNMP notification of LIFEBOAT-MIB: a v2c trap or inform, or a
    /// v3 (authPriv) trap or inform.
    Snmp {
        /// `HOST:PORT` of the receiver (usually port 162).
        target: String,
        #[serde(default)]
        version: SnmpVersion,
        #[serde(default)]
        notification: SnmpNotification,
        /// v2c.
        #[serde(default)]
        community: String,
        /// v3: the USM user, its hash, and its two passwords.
        #[serde(default)]
        user: String,
        #[serde(default)]
        auth: crate::snmp::AuthProtocol,
        #[serde(default)]
        auth_password: String,
        #[serde(default)]
        priv_password: String,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnmpVersion {
    #[default]
    V2c,
    V3,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnmpNotification {
    /// Sent once, unacknowledged.
    Trap,
    /// Acknowledged by the receiver; retried until it is.
    #[default]
    Inform,
}

impl ChannelConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelConfig::Email { .. } => "email",
            ChannelConfig::Syslog { .. } => "syslog",
            ChannelConfig::Webhook { .. } => "webhook",
            ChannelConfig::Cbe { .. } => "cbe",
            ChannelConfig::Snmp { .. } => "snmp",
        }
    }

    /// The secret fields of this kind (sealed when stored).
    pub fn secrets_mut(&mut self) -> Vec<&mut String> {
        match self {
            ChannelConfig::Email { password, .. } => vec![password],
            ChannelConfig::Webhook { secret, .. } => vec![secret],
            ChannelConfig::Snmp {
                community,
                auth_password,
                priv_password,
                ..
            } => vec![community, auth_password, priv_password],
            ChannelConfig::Syslog { .. } | ChannelConfig::Cbe { .. } => Vec::new(),
        }
    }

    /// Whether any secret is set.
    pub fn has_secret(&self) -> bool {
        self.clone().secrets_mut().iter().any(|s| !s.is_empty())
    }

    /// The same settings with the secrets blanked (for views).
    pub fn without_secret(&self) -> ChannelConfig {
        let mut c = self.clone();
        for s in c.secrets_mut() {
            s.clear();
        }
        c
    }

    /// Checks every field; errors start with the field's name.
    pub fn validate(&self) -> Result<(), String> {
        let text = |field: &str, v: &str, required: bool| {
            if required && v.trim().is_empty() {
                return Err(format!("{field}: required"));
            }
            if v.len() > MAX_TEXT || v.chars().any(char::is_control) {
                return Err(format!("{field}: at most {MAX_TEXT} printable characters"));
            }
            Ok(())
        };
        let ca = |ca_pem: &str| {
            if ca_pem.len() > MAX_CA_PEM {
                return Err(format!("ca_pem: at most {} KiB", MAX_CA_PEM / 1024));
            }
            if !ca_pem.trim().is_empty() {
                crate::pki::client_tls(ca_pem)?;
            }
            Ok(())
        };
        match self {
            ChannelConfig::Email {
                server,
                username,
                password,
                from,
                to,
                console_url,
                ca_pem,
                ..
            } => {
                text("server", server, true)?;
                host_name("server", server)?;
                text("username", username, false)?;
                text("password", password, false)?;
                mailbox("from", from)?;
                if to.is_empty() || to.len() > MAX_RECIPIENTS {
                    return Err(format!("to: 1 to {MAX_RECIPIENTS} addresses"));
                }
                for t in to {
                    mailbox("to", t)?;
                }
                if !console_url.is_empty() {
                    https_url("console_url", console_url)?;
                }
                ca(ca_pem)
            }
            ChannelConfig::Syslog {
                address,
                transport,
                ca_pem,
            } => {
                text("address", address, true)?;
                let (host, port) = address.rsplit_once(':').ok_or("address: HOST:PORT")?;
                host_name(
                    "address",
                    host.trim_start_matches('[').trim_end_matches(']'),
                )?;
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or("address: the port is 1 to 65535")?;
                if *transport != SyslogTransport::Tls && !ca_pem.trim().is_empty() {
                    return Err("ca_pem: a CA is for the tls transport".into());
                }
                ca(ca_pem)
            }
            ChannelConfig::Webhook {
                url,
                secret,
                ca_pem,
            } => {
                https_url("url", url)?;
                text("secret", secret, false)?;
                ca(ca_pem)
            }
            ChannelConfig::Cbe { url, ca_pem } => {
                https_url("url", url)?;
                ca(ca_pem)
            }
            ChannelConfig::Snmp {
                target,
                version,
                community,
                user,
                auth_password,
                priv_password,
                ..
            } => {
                text("target", target, true)?;
                let (host, port) = target.rsplit_once(':').ok_or("target: HOST:PORT")?;
                host_name("target", host.trim_start_matches('[').trim_end_matches(']'))?;
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or("target: the port is 1 to 65535")?;
                match version {
                    SnmpVersion::V2c => text("community", community, false),
                    SnmpVersion::V3 => {
                        text("user", user, true)?;
                        for (field, p) in [
                            ("auth_password", auth_password),
                            ("priv_password", priv_password),
                        ] {
                            if !p.is_empty() && !(8..=128).contains(&p.len()) {
                                return Err(format!("{field}: 8 to 128 characters"));
                            }
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    /// Checks what only a complete channel has: its secrets (after the
    /// stored ones were kept for empty fields).
    pub fn validate_secrets(&self) -> Result<(), String> {
        match self {
            ChannelConfig::Snmp {
                version: SnmpVersion::V2c,
                community,
                ..
            } if community.is_empty() => Err("community: required".into()),
            ChannelConfig::Snmp {
                version: SnmpVersion::V3,
                auth_password,
                priv_password,
                ..
            } if auth_password.is_empty() || priv_password.is_empty() => {
                Err("auth_password: both passwords are required for authPriv".into())
            }
            _ => Ok(()),
        }
    }
}

/// A host name or IP address, as a certificate would name it.
fn host_name(field: &str, host: &str) -> Result<(), String> {
    if host.parse::<std::net::IpAddr>().is_ok()
        || rustls::pki_types::ServerName::try_from(host.to_string()).is_ok()
    {
        Ok(())
    } else {
        Err(format!("{field}: not a host name or IP address"))
    }
}

fn mailbox(field: &str, address: &str) -> Result<(), String> {
    address
        .parse::<lettre::Address>()
        .map(|_| ())
        .map_err(|e| format!("{field}: {address}: {e}"))
}

/// An `https://` URL with a host (alerts leave the appliance encrypted).
pub fn https_url(field: &str, url: &str) -> Result<hyper::Uri, String> {
    if url.len() > MAX_TEXT {
        return Err(format!("{field}: at most {MAX_TEXT} characters"));
    }
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{field}: {e}"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none_or(str::is_empty) {
        return Err(format!("{field}: an https:// URL"));
    }
    Ok(uri)
}

/// A channel as an operator gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelInput {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub config: ChannelConfig,
}

fn yes() -> bool {
    true
}

impl ChannelInput {
    pub fn validate(&self) -> Result<(), String> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(format!("name: 1 to {MAX_NAME} printable characters"));
        }
        self.config.validate()
    }
}

/// A channel as stored: its secret sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub config: ChannelConfig,
}

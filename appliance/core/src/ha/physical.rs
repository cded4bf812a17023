//! Physical machines watched by health checks, each with a standby VM (for
//! instance from a P2V conversion) that starts when the machine fails.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthCheck {
    Icmp {
        address: String,
    },
    Tcp {
        address: String,
        port: u16,
    },
    /// GET `url` (http or https; the certificate is not checked: this is a
    /// liveness test, nothing secret is sent) expecting `expect_status`.
    Http {
        url: String,
        expect_status: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhysicalState {
    Monitoring,
    /// The standby VM was started; failback is a confirmed, manual action.
    FailedOver,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhysicalMachine {
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub checks: Vec<HealthCheck>,
    /// Failed rounds in a row before the standby VM starts.
    #[serde(default = "default_rounds")]
    pub failed_rounds: u32,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// UUID of the standby VM.
    pub standby_vm: String,
    /// Host (id or name) to start it on; empty: where it is defined.
    #[serde(default)]
    pub standby_host: String,
    #[serde(default = "monitoring")]
    pub state: PhysicalState,
}

fn default_rounds() -> u32 {
    3
}

fn default_interval() -> u64 {
    1000
}

fn monitoring() -> PhysicalState {
    PhysicalState::Monitoring
}

impl PhysicalMachine {
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.len() > 64 {
            return Err("name: 1-64 characters".into());
        }
        if self.checks.is_empty() || self.checks.len() > 16 {
            return Err("checks: 1 to 16 health checks".into());
        }
        for check in &self.checks {
            match check {
                HealthCheck::Icmp { address } | HealthCheck::Tcp { address, .. } => {
                    address
                        .parse::<std::net::IpAddr>()
                        .map_err(|_| format!("check address {address:?} must be an IP address"))?;
                }
                HealthCheck::Http { url, expect_status } => {
                    let uri: hyper::Uri = url
                        .parse()
                        .map_err(|_| format!("check url {url:?} is not a URL"))?;
                    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                        return Err(format!("check url {url:?} must be http:// or https://"));
                    }
                    if !(100..=599).contains(expect_status) {
                        return Err(format!(
                            "expect_status {expect_status} is not an HTTP status"
                        ));
                    }
                }
            }
        }
        if !(1..=100).contains(&self.failed_rounds) {
            return Err("failed_rounds must be between 1 and 100".into());
        }
        if !(200..=3_600_000).contains(&self.interval_ms) {
            return Err("interval_ms must be between 200 and 3600000".into());
        }
        if self.standby_vm.is_empty() {
            return Err("standby_vm: the UUID of the standby VM is required".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_validated() {
        let json = r#"{"name":"erp","standby_vm":"u","checks":[
            {"kind":"tcp","address":"10.0.0.5","port":443},
            {"kind":"http","url":"https://10.0.0.5/health","expect_status":200}]}"#;
        let pm: PhysicalMachine = serde_json::from_str(json).unwrap();
        pm.validate().unwrap();
        assert_eq!(pm.failed_rounds, 3);
        let mut bad = pm.clone();
        bad.checks = vec![HealthCheck::Http {
            url: "ftp://x/".into(),
            expect_status: 200,
        }];
        assert!(bad.validate().is_err());
        let mut bad = pm;
        bad.checks = vec![HealthCheck::Icmp {
            address: "host.example".into(),
        }];
        assert!(bad.validate().is_err());
    }
}

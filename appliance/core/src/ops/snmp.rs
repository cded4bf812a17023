//! SNMP: the agent's settings (administrators without access policies
//! only: a community sees through another user's eyes), the principal a
//! community or USM user acts as, and the view LIFEBOAT-MIB serves.

use std::collections::HashSet;

use lifeboat_proto::PowerState;

use super::{Ops, OpsError};
use crate::access::{require, Principal, Privilege};
use crate::alerts::{Alert, EventKind, Severity};
use crate::ha::detect::HostState;
use crate::inventory::HostStatus;
use crate::jobs::JobState;
use crate::snmp::{
    AuthProtocol, EngineState, IndexKind, PrivProtocol, SnmpInput, SnmpSettings, StoredCommunity,
    StoredUsmUser,
};

/// The settings as shown: no secret, only the networks and users.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnmpSettingsView {
    pub enabled: bool,
    pub listen: String,
    pub communities: Vec<CommunityView>,
    pub users: Vec<UsmUserView>,
    /// The controller's SNMP engine ID (hex): what a receiver of its v3
    /// traps configures for their users (`createUser -e`).
    pub engine_id: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CommunityView {
    pub networks: Vec<String>,
    pub user: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UsmUserView {
    pub name: String,
    pub auth: AuthProtocol,
    pub privacy: PrivProtocol,
    pub user: String,
}

/// What the SNMP adapter configures its agent with, secrets opened.
pub struct SnmpAgentConfig {
    pub listen: String,
    pub communities: Vec<AgentCommunity>,
    pub users: Vec<AgentUsmUser>,
}

pub struct AgentCommunity {
    pub community: String,
    pub networks: Vec<ipnet::IpNet>,
    pub user: String,
}

pub struct AgentUsmUser {
    pub name: String,
    pub auth: AuthProtocol,
    pub auth_password: String,
    pub privacy: PrivProtocol,
    pub priv_password: String,
    pub user: String,
}

/// LIFEBOAT-MIB's objects, as one principal sees them.
#[derive(Debug, Clone, Default)]
pub struct SnmpView {
    pub version: &'static str,
    pub degraded: bool,
    pub hosts_total: u32,
    pub hosts_online: u32,
    pub vms_total: u32,
    pub vms_running: u32,
    pub jobs_running: u32,
    pub hosts: Vec<SnmpHost>,
    pub vms: Vec<SnmpVm>,
    pub datastores: Vec<SnmpDatastore>,
    /// The most recent alerts `who` may see, oldest first.
    pub alarms: Vec<SnmpAlarm>,
}

#[derive(Debug, Clone)]
pub struct SnmpHost {
    pub index: u32,
    pub id: String,
    pub name: String,
    pub address: String,
    /// As in the MIB: online(1) ... fenced(6).
    pub state: i32,
    pub vm_count: u32,
    /// Hundredths of a percent.
    pub cpu: u32,
    pub memory: u32,
}

#[derive(Debug, Clone)]
pub struct SnmpVm {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub host: String,
    /// running(1), paused(2), stopped(3), unknown(4).
    pub power: i32,
    pub protected: bool,
    pub cpu: u32,
    pub memory: u32,
    /// UNIX seconds of the latest backup job's end (or start while it runs).
    pub last_backup_at: Option<u64>,
    /// none(1), succeeded(2), failed(3), running(4).
    pub last_backup_result: i32,
}

#[derive(Debug, Clone)]
pub struct SnmpDatastore {
    pub index: u32,
    pub name: String,
    pub capacity_mib: u32,
    pub used_mib: u32,
    pub used: u32,
}

/// One row of lbAlarmTable, and what a notification carries.
#[derive(Debug, Clone)]
pub struct SnmpAlarm {
    /// The alert's number.
    pub index: u32,
    /// UNIX seconds.
    pub at: u64,
    /// info(1), warning(2), major(3), critical(4).
    pub severity: i32,
    pub event: &'static str,
    pub kind: String,
    pub object_id: String,
    pub object_name: String,
    pub message: String,
    /// The notification's number under lbNotifications: lbHostAlarm(1),
    /// lbFailoverAlarm(2), lbJobAlarm(3), lbThresholdAlarm(4), lbTestAlarm(5).
    pub notification: u32,
}

/// Most alerts lbAlarmTable shows.
pub const SNMP_ALARMS: usize = 100;

impl SnmpAlarm {
    pub fn of(a: &Alert) -> SnmpAlarm {
        use EventKind::*;
        let notification = match a.event {
            HostSuspect | HostFailed | HostRecovered | AgentDisconnected => 1,
            FailoverStarted | FailoverFinished | FailoverFailed => 2,
            BackupSucceeded | BackupFailed | RestoreSucceeded | RestoreFailed | VerifySucceeded
            | VerifyFailed | BootVerifySucceeded | BootVerifyFailed | JobTooLong => 3,
            DatastoreFill | MetricThreshold => 4,
            Test => 5,
        };
        SnmpAlarm {
            index: u32::try_from(a.id).unwrap_or(u32::MAX),
            at: a.at_ms / 1000,
            severity: match a.severity {
                Severity::Info => 1,
                Severity::Warning => 2,
                Severity::Major => 3,
                Severity::Critical => 4,
            },
            event: a.event.as_str(),
            kind: a.subject.kind.clone(),
            object_id: a.subject.id.clone(),
            object_name: a.subject.name.clone(),
            message: a.message.clone(),
            notification,
        }
    }
}

/// A percentage as the MIB's hundredths, clamped to 0..=100 %.
fn hundredths(percent: Option<f64>) -> u32 {
    percent.map_or(0, |p| (p.clamp(0.0, 100.0) * 100.0).round() as u32)
}

fn mib_u32(bytes: u64) -> u32 {
    u32::try_from(bytes >> 20).unwrap_or(u32::MAX)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Ops {
    pub fn snmp_settings(&self, who: &Principal) -> Result<SnmpSettingsView, OpsError> {
        require(who, Privilege::Administer, "viewing the SNMP settings")?;
        let s = self.snmp.settings();
        let engine_id = self.snmp.engine().engine_id;
        Ok(SnmpSettingsView {
            engine_id,
            enabled: s.enabled,
            listen: s.listen,
            communities: s
                .communities
                .into_iter()
                .map(|c| CommunityView {
                    networks: c.networks,
                    user: c.user,
                })
                .collect(),
            users: s
                .users
                .into_iter()
                .map(|u| UsmUserView {
                    name: u.name,
                    auth: u.auth,
                    privacy: u.privacy,
                    user: u.user,
                })
                .collect(),
        })
    }

    /// Replaces the SNMP settings; the agent restarts with them. A USM
    /// user's empty password keeps the one stored for that name.
    pub async fn set_snmp_settings(
        &self,
        who: &Principal,
        input: SnmpInput,
    ) -> Result<(), OpsError> {
        let result = async {
            require(who, Privilege::Administer, "configuring SNMP")?;
            super::require_unrestricted(who, "configuring SNMP")?;
            input.validate().map_err(OpsError::BadRequest)?;
            let names = input
                .communities
                .iter()
                .map(|c| &c.user)
                .chain(input.users.iter().map(|u| &u.user));
            for user in names {
                if self.access.principal_for(user, "snmp").is_none() {
                    return Err(OpsError::BadRequest(format!(
                        "user: no enabled Lifeboat user {user:?}"
                    )));
                }
            }
            let seal = |s: &str| {
                self.secrets
                    .seal(s)
                    .map_err(|e| OpsError::Internal(e.to_string()))
            };
            let old = self.snmp.settings();
            let mut users = Vec::new();
            for u in &input.users {
                let stored = old.users.iter().find(|o| o.name == u.name);
                let keep = |given: &str, field: &str, old: Option<&String>| {
                    if given.is_empty() {
                        old.cloned().ok_or_else(|| {
                            OpsError::BadRequest(format!("{field}: required for a new user"))
                        })
                    } else {
                        seal(given)
                    }
                };
                users.push(StoredUsmUser {
                    name: u.name.clone(),
                    auth: u.auth,
                    auth_sealed: keep(
                        &u.auth_password,
                        "auth_password",
                        stored.map(|o| &o.auth_sealed),
                    )?,
                    privacy: u.privacy,
                    priv_sealed: keep(
                        &u.priv_password,
                        "priv_password",
                        stored.map(|o| &o.priv_sealed),
                    )?,
                    user: u.user.clone(),
                });
            }
            let communities = input
                .communities
                .iter()
                .map(|c| {
                    let community_sealed = match (c.community.is_empty(), c.stored) {
                        (true, Some(i)) => old
                            .communities
                            .get(i)
                            .map(|o| o.community_sealed.clone())
                            .ok_or_else(|| {
                                OpsError::BadRequest(format!("community: no stored community {i}"))
                            })?,
                        _ => seal(&c.community)?,
                    };
                    Ok(StoredCommunity {
                        community_sealed,
                        networks: c.networks.iter().map(|n| n.trim().to_string()).collect(),
                        user: c.user.clone(),
                    })
                })
                .collect::<Result<Vec<_>, OpsError>>()?;
            self.snmp
                .set_settings(SnmpSettings {
                    enabled: input.enabled,
                    listen: input.listen,
                    communities,
                    users,
                })
                .await?;
            Ok(())
        }
        .await;
        self.audited(who, "set SNMP settings", "snmp", result).await
    }

    /// The agent's configuration, secrets opened; `None` while SNMP is
    /// off. For the SNMP adapter only, which holds no principal.
    pub fn snmp_agent_config(&self) -> Result<Option<SnmpAgentConfig>, OpsError> {
        let s = self.snmp.settings();
        if !s.enabled {
            return Ok(None);
        }
        let open = |sealed: &str| {
            self.secrets
                .open(sealed)
                .map_err(|e| OpsError::Internal(format!("SNMP secret: {e}")))
        };
        let communities = s
            .communities
            .iter()
            .map(|c| {
                Ok(AgentCommunity {
                    community: open(&c.community_sealed)?,
                    networks: c
                        .networks
                        .iter()
                        .filter_map(|n| crate::snmp::parse_network(n).ok())
                        .collect(),
                    user: c.user.clone(),
                })
            })
            .collect::<Result<Vec<_>, OpsError>>()?;
        let users = s
            .users
            .iter()
            .map(|u| {
                Ok(AgentUsmUser {
                    name: u.name.clone(),
                    auth: u.auth,
                    auth_password: open(&u.auth_sealed)?,
                    privacy: u.privacy,
                    priv_password: open(&u.priv_sealed)?,
                    user: u.user.clone(),
                })
            })
            .collect::<Result<Vec<_>, OpsError>>()?;
        Ok(Some(SnmpAgentConfig {
            listen: s.listen,
            communities,
            users,
        }))
    }

    /// Resolves when the SNMP settings change after this call.
    pub fn snmp_settings_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.snmp.changed.notified()
    }

    /// The local SNMP engine as stored (boot count 0 before its first
    /// start).
    pub fn snmp_engine(&self) -> EngineState {
        self.snmp.engine()
    }

    /// Stores a boot count the running engine moved to.
    pub fn snmp_save_engine(&self, engine: &EngineState) -> Result<(), OpsError> {
        Ok(self.snmp.save_engine(engine)?)
    }

    /// The principal a community or USM user acts as: the named Lifeboat
    /// user's current role and access policies; `None` once that user is
    /// gone or disabled.
    pub fn snmp_principal(&self, user: &str, source: &str) -> Option<Principal> {
        self.access.principal_for(user, source)
    }

    /// LIFEBOAT-MIB as `who` sees it.
    pub async fn snmp_view(&self, who: &Principal) -> Result<SnmpView, OpsError> {
        require(who, Privilege::View, "reading SNMP")?;
        let hosts = self.hosts(who)?;
        let host_usage = self.host_usage(who)?;
        let vm_usage = self.vm_usage(who)?;
        let visible = self.visibility(who);
        let mut vms = Vec::new();
        self.inventory
            .with_vms(|all| vms.extend(all.filter(|v| visible(v)).cloned()));
        vms.sort_by(|a, b| a.info.uuid.cmp(&b.info.uuid));
        let datastores = self.datastores(who).await?;
        let protected: HashSet<String> = self
            .ha
            .vms
            .entries()
            .into_iter()
            .filter(|(_, ha)| ha.enabled)
            .map(|(uuid, _)| uuid)
            .collect();
        let backups = self.jobs.latest_by_vm("backup");
        let wanted: Vec<(IndexKind, String)> = hosts
            .iter()
            .map(|h| (IndexKind::Host, h.host.id.clone()))
            .chain(vms.iter().map(|v| (IndexKind::Vm, v.info.uuid.clone())))
            .chain(
                datastores
                    .iter()
                    .map(|d| (IndexKind::Datastore, d.name.clone())),
            )
            .collect();
        let mut indices = self.snmp.indices(&wanted).await?.into_iter();
        let host_names: std::collections::HashMap<&str, &str> = hosts
            .iter()
            .map(|h| (h.host.id.as_str(), h.host.name.as_str()))
            .collect();
        let mut degraded = false;
        let mut view = SnmpView {
            version: env!("CARGO_PKG_VERSION"),
            ..Default::default()
        };
        for h in &hosts {
            let usage = host_usage.get(&h.host.id).copied().unwrap_or_default();
            let ha = self.ha.watch(&h.host.id).state;
            let state = match (h.status, ha) {
                (_, HostState::Suspect) => 3,
                (_, HostState::Partitioned) => 4,
                (_, HostState::Failed) => 5,
                (_, HostState::Fenced) => 6,
                (HostStatus::Online, HostState::Ok) => 1,
                (HostStatus::Offline, HostState::Ok) => 2,
            };
            degraded |= state != 1;
            view.hosts.push(SnmpHost {
                index: indices.next().unwrap_or_default(),
                id: h.host.id.clone(),
                name: h.host.name.clone(),
                address: h.host.facts.hostname.clone(),
                state,
                vm_count: count(h.vm_count),
                cpu: hundredths(usage.cpu_percent),
                memory: hundredths(usage.memory_percent()),
            });
        }
        for v in &vms {
            let usage = vm_usage.get(&v.info.uuid).copied().unwrap_or_default();
            let backup = backups.get(&v.info.uuid);
            let (last_backup_at, last_backup_result) = match backup {
                None => (None, 1),
                Some(j) => match j.state {
                    JobState::Succeeded => (j.finished_at, 2),
                    JobState::Failed => (j.finished_at, 3),
                    JobState::Queued | JobState::Running => {
                        (j.started_at.or(Some(j.created_at)), 4)
                    }
                },
            };
            view.vms.push(SnmpVm {
                index: indices.next().unwrap_or_default(),
                name: v.info.name.clone(),
                uuid: v.info.uuid.clone(),
                host: host_names
                    .get(v.host_id.as_str())
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                power: match v.info.power_state {
                    PowerState::Running => 1,
                    PowerState::Paused => 2,
                    PowerState::Stopped => 3,
                    PowerState::Unknown => 4,
                },
                protected: protected.contains(&v.info.uuid),
                cpu: hundredths(usage.cpu_percent),
                memory: hundredths(usage.memory_percent()),
                last_backup_at,
                last_backup_result,
            });
        }
        for d in &datastores {
            let (capacity, used) = match &d.capacity {
                Ok(c) => (c.total_bytes, c.total_bytes.saturating_sub(c.free_bytes)),
                Err(_) => {
                    degraded = true;
                    (0, 0)
                }
            };
            view.datastores.push(SnmpDatastore {
                index: indices.next().unwrap_or_default(),
                name: d.name.clone(),
                capacity_mib: mib_u32(capacity),
                used_mib: mib_u32(used),
                used: hundredths((capacity > 0).then(|| used as f64 * 100.0 / capacity as f64)),
            });
        }
        view.degraded = degraded;
        view.hosts_total = count(view.hosts.len());
        view.hosts_online = count(
            hosts
                .iter()
                .filter(|h| h.status == HostStatus::Online)
                .count(),
        );
        view.vms_total = count(view.vms.len());
        view.vms_running = count(view.vms.iter().filter(|v| v.power == 1).count());
        view.jobs_running = count(
            self.jobs
                .recent(usize::MAX, |j| {
                    j.state == JobState::Running && self.job_visible(who, j)
                })
                .len(),
        );
        let filter = super::AlertFilter {
            limit: SNMP_ALARMS,
            ..Default::default()
        };
        view.alarms = self
            .alerts(who, &filter)?
            .iter()
            .rev()
            .map(SnmpAlarm::of)
            .collect();
        Ok(view)
    }
}

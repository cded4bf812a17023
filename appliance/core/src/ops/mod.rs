//! The operations layer: every action any interface offers is one function
//! here that takes the acting [`Principal`], checks access, writes the audit
//! record and does the work. Web, REST and CLI adapters only translate.

mod alerts;
mod backup;
mod directories;
mod downloads;
mod ha;
mod ha_engine;
mod ha_failover;
mod ha_physical;
mod host_storage;
mod logging;
mod metrics;
pub mod offline;
pub use metrics::{
    ChargebackPeriod, ChargebackQuery, ChargebackRow, EstateUsage, LabelledCurrent, Usage,
    INTERVAL_SECS,
};
mod open;
mod policies;
mod retention;
mod scope;
mod snmp;
mod sql_export;
mod users;
mod vm_query;

use std::sync::Arc;
use std::time::Duration;

use lifeboat_proto::{Command, PowerAction, PowerState};

use crate::access::audit::AuditLog;
use crate::access::{require, Access, AccessError, Principal, Privilege};
pub use crate::alerts::send::SnmpNotifier;
pub use crate::backup::boot_verify::BootVerifyState;
use crate::hub::enrollment::EnrollmentToken;
use crate::hub::Hub;
use crate::inventory::{HostStatus, HostView, Inventory, Vm};
use crate::jobs::{Job, Jobs, NewJob};
use crate::pki::Pki;
use crate::store::StoreError;
pub use alerts::{AlertFilter, ChannelView, MAX_ALERT_LIST};
pub use backup::{BackupRef, BackupSummary, BootVerifyOptions, DatastoreView, RestoreOptions};
pub use downloads::AgentDownload;
pub use ha::ClusterView;
pub use logging::{LoggingSettings, LoggingView, MAX_LOG_LIST};
pub use open::{ControllerConfig, OpenError, Opened};
pub use policies::PolicyInput;
pub use snmp::{
    AgentCommunity, AgentUsmUser, SnmpAgentConfig, SnmpAlarm, SnmpDatastore, SnmpHost,
    SnmpSettingsView, SnmpView, SnmpVm, SNMP_ALARMS,
};
pub use sql_export::SqlTargetView;
pub use users::{AuditFilter, UserView};
pub use vm_query::{VmPage, VmQuery, VmSort};

/// Guest ACPI shutdown waits this long before powering off, unless told otherwise.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 60;
const MAX_SHUTDOWN_TIMEOUT_SECS: u64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for OpsError {
    fn from(e: StoreError) -> Self {
        tracing::error!("store: {e}");
        OpsError::Internal(e.to_string())
    }
}

impl From<AccessError> for OpsError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::InvalidCredentials | AccessError::LockedOut(_) => {
                OpsError::Unauthorized(e.to_string())
            }
            AccessError::Forbidden(..) => OpsError::Forbidden(e.to_string()),
            AccessError::Invalid(m) => OpsError::BadRequest(m),
            AccessError::Conflict(m) => OpsError::Conflict(m),
            AccessError::NotFound(m) => OpsError::NotFound(m),
            AccessError::Store(e) => e.into(),
        }
    }
}

/// The controller's state and the only way to act on it. Every field is
/// private: adapters call the functions below, never a domain module.
pub struct Ops {
    access: Access,
    alerts: crate::alerts::Alerts,
    /// Where the domain modules report events (alert rules match them).
    sink: crate::alerts::Sink,
    /// Registered by the SNMP adapter: sends the SNMP channels' alerts.
    snmp_notifier: std::sync::OnceLock<Arc<dyn crate::alerts::send::SnmpNotifier>>,
    /// Taken by the alert loop when background work starts.
    alert_events:
        std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::alerts::Event>>>,
    audit: AuditLog,
    /// The process's log, attached by the binary at start.
    log: std::sync::OnceLock<Arc<crate::logging::Log>>,
    logging: crate::store::book::Book<logging::LoggingSettings>,
    /// The newest error forwarding the log to syslog, while it fails.
    forward_error: std::sync::Mutex<Option<String>>,
    inventory: Arc<Inventory>,
    hub: Arc<Hub>,
    metrics: Arc<crate::metrics::Metrics>,
    jobs: Arc<Jobs>,
    pki: Arc<Pki>,
    /// Port agents dial, shown in the enrollment command.
    agent_port: u16,
    datastores: crate::backup::datastores::Datastores,
    policies: crate::store::book::Book<crate::backup::policy::BackupPolicy>,
    ha: crate::ha::Ha,
    /// VMs' own category tags, by UUID.
    vm_tags: crate::store::book::Book<crate::inventory::categories::Categories>,
    category_rules: crate::store::book::Book<crate::inventory::categories::CategoryRule>,
    directories: crate::store::book::Book<crate::access::directory::Directory>,
    /// Seals directory bind passwords.
    secrets: Arc<crate::secrets::Secrets>,
    /// The PostgreSQL export's target and status.
    sql: crate::sql_export::SqlExport,
    /// The SNMP agent's settings, engine and table indices.
    snmp: crate::snmp::Snmp,
    /// Where the controller keeps its files (the initial admin password).
    data_dir: std::path::PathBuf,
    /// The agent served for download.
    agent_download: Option<downloads::AgentDownload>,
}

/// What the dashboard shows.
pub struct Summary {
    pub hosts_online: usize,
    pub hosts_offline: usize,
    pub vm_states: Vec<(&'static str, usize)>,
    pub recent_jobs: Vec<Job>,
}

/// A freshly issued enrollment token with what an operator needs to use it.
pub struct IssuedToken {
    pub token: String,
    pub ca_fingerprint: String,
    pub record: EnrollmentToken,
}

impl Ops {
    async fn audited<T>(
        &self,
        who: &Principal,
        action: &str,
        object: &str,
        result: Result<T, OpsError>,
    ) -> Result<T, OpsError> {
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        self.audit.record(who, action, object, &outcome).await?;
        result
    }

    /// Records a login attempt in the trail: a failure under the name
    /// tried (cut short: it is whatever the client sent).
    async fn audit_login(
        &self,
        user: &str,
        source: &str,
        object: &str,
        result: Result<Principal, OpsError>,
    ) -> Result<Principal, OpsError> {
        match &result {
            Ok(principal) => {
                self.audit
                    .record(principal, "login", object, &Ok(()))
                    .await?
            }
            Err(e) => {
                let tried = Principal::nobody(&user.chars().take(64).collect::<String>(), source);
                self.audit
                    .record(&tried, "login", object, &Err(e.to_string()))
                    .await?;
            }
        }
        result
    }

    /// A password login that opens a session: (principal, session token,
    /// CSRF token). Audited, success or failure.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        source: &str,
    ) -> Result<(Principal, String, String), OpsError> {
        let result = self.authenticate_password(user, password, source).await;
        let principal = self.audit_login(user, source, "session", result).await?;
        let (token, csrf) = self.access.create_session(&principal).await?;
        Ok((principal, token, csrf))
    }

    /// HTTP Basic credentials sent with a request. A verification is
    /// audited like any login; credentials verified in the last minute are
    /// taken from a cache (no argon2, no audit record per request), with
    /// the user's current role and scope.
    pub async fn basic_login(
        &self,
        user: &str,
        password: &str,
        source: &str,
    ) -> Result<Principal, OpsError> {
        if let Some(principal) = self.access.cached_basic(user, password, source) {
            return Ok(principal);
        }
        let result = self.authenticate_password(user, password, source).await;
        let principal = self.audit_login(user, source, "http basic", result).await?;
        self.access.remember_basic(user, password, &principal);
        Ok(principal)
    }

    /// A bearer token: a session's, else an API token's.
    pub fn bearer(&self, token: &str, source: &str) -> Result<Principal, OpsError> {
        self.access
            .session(token, source)
            .map(|(p, _)| p)
            .or_else(|| self.access.api_token_principal(token, source))
            .ok_or_else(|| OpsError::Unauthorized("invalid or expired token".into()))
    }

    /// An API token alone (never a session's): the credential a URL may
    /// carry for a read-only export (an Excel web query sends no headers).
    pub fn api_token(&self, token: &str, source: &str) -> Result<Principal, OpsError> {
        self.access
            .api_token_principal(token, source)
            .ok_or_else(|| OpsError::Unauthorized("invalid or expired API token".into()))
    }

    /// A console session cookie: its principal and CSRF token.
    pub fn session(&self, token: &str, source: &str) -> Option<(Principal, String)> {
        self.access.session(token, source)
    }

    /// The privilege check an adapter makes for a route or form before it
    /// parses anything; a refusal is audited under `action`.
    pub async fn require_for(
        &self,
        who: &Principal,
        privilege: Privilege,
        action: &str,
        object: &str,
    ) -> Result<(), OpsError> {
        if let Err(e) = require(who, privilege, "this request") {
            self.audit
                .record(who, action, object, &Err(e.to_string()))
                .await?;
            return Err(e.into());
        }
        Ok(())
    }

    /// Port agents dial, for the enrollment command shown to operators.
    pub fn agent_port(&self) -> u16 {
        self.agent_port
    }

    pub async fn logout(&self, who: &Principal, token: &str) -> Result<(), OpsError> {
        self.access.end_session(token).await?;
        self.audit.record(who, "logout", "session", &Ok(())).await?;
        Ok(())
    }

    /// Refuses (409) an action on a VM whose host's agent is not connected.
    fn require_host_online(&self, vm: &Vm) -> Result<(), OpsError> {
        if self.hub.is_connected(&vm.host_id)
            && self.inventory.host_status(&vm.host_id) == HostStatus::Online
        {
            return Ok(());
        }
        Err(OpsError::Conflict(format!(
            "host {} of VM {} is offline",
            self.inventory.host_name(&vm.host_id),
            vm.info.name
        )))
    }

    pub fn summary(&self, who: &Principal) -> Result<Summary, OpsError> {
        require(who, Privilege::View, "viewing the dashboard")?;
        let (online, all) = self.inventory.host_counts();
        Ok(Summary {
            hosts_online: online,
            hosts_offline: all - online,
            vm_states: self.power_state_counts(who),
            recent_jobs: self.jobs.recent(10, |j| self.job_visible(who, j)),
        })
    }

    pub fn hosts(&self, who: &Principal) -> Result<Vec<HostView>, OpsError> {
        require(who, Privilege::View, "listing hosts")?;
        let mut hosts = self.inventory.hosts();
        if who.scope.is_some() {
            let counts = self.visible_vms_per_host(who);
            for h in &mut hosts {
                h.vm_count = counts.get(&h.host.id).copied().unwrap_or(0);
            }
        }
        Ok(hosts)
    }

    pub fn host(&self, who: &Principal, id: &str) -> Result<HostView, OpsError> {
        require(who, Privilege::View, "viewing a host")?;
        let mut h = self
            .inventory
            .host(id)
            .ok_or_else(|| OpsError::NotFound(format!("no host with id {id}")))?;
        if who.scope.is_some() {
            h.vm_count = self.visible_vms_per_host(who).get(id).copied().unwrap_or(0);
        }
        Ok(h)
    }

    /// How many VMs `who` sees on each host, in one pass.
    fn visible_vms_per_host(&self, who: &Principal) -> std::collections::HashMap<String, usize> {
        let visible = self.visibility(who);
        let mut counts = std::collections::HashMap::new();
        self.inventory.with_vms(|vms| {
            for vm in vms.filter(|v| visible(v)) {
                *counts.entry(vm.host_id.clone()).or_insert(0) += 1;
            }
        });
        counts
    }

    /// VM counts per power state, of the VMs `who` may see.
    fn power_state_counts(&self, who: &Principal) -> Vec<(&'static str, usize)> {
        let mut counts = self.inventory.power_state_counts();
        if who.scope.is_some() {
            let visible = self.visibility(who);
            for (state, count) in counts.iter_mut() {
                *count = self.inventory.with_vms(|vms| {
                    vms.filter(|v| v.info.power_state.as_str() == *state && visible(v))
                        .count()
                });
            }
        }
        counts
    }

    fn job_visible(&self, who: &Principal, job: &Job) -> bool {
        job.vm
            .as_deref()
            .is_none_or(|uuid| self.visible_uuid(who, uuid))
    }

    pub fn vms(&self, who: &Principal, query: &VmQuery) -> Result<VmPage, OpsError> {
        require(who, Privilege::View, "listing VMs")?;
        let usage = match query.sort {
            VmSort::CpuUse | VmSort::MemoryUse => self.vm_usage(who)?,
            _ => Default::default(),
        };
        let usage_of = |uuid: &str| {
            usage
                .get(uuid)
                .map_or((None, None), |u| (u.cpu_percent, u.memory_used_bytes))
        };
        Ok(vm_query::run(
            &self.inventory,
            query,
            &self.visibility(who),
            &usage_of,
        ))
    }

    /// A VM by UUID; one outside `who`'s scope is "not found", exactly like
    /// one that does not exist.
    pub fn vm(&self, who: &Principal, id: &str) -> Result<Vm, OpsError> {
        require(who, Privilege::View, "viewing a VM")?;
        self.inventory
            .vm(id)
            .filter(|vm| self.visible(who, vm))
            .ok_or_else(|| OpsError::NotFound(format!("no VM with id {id}")))
    }

    /// The host a VM (already shown to the caller) runs on.
    pub fn vm_host(&self, vm: &Vm) -> Option<HostView> {
        self.inventory.host(&vm.host_id)
    }

    /// The name of the host a VM (already shown to the caller) runs on.
    pub fn vm_host_name(&self, vm: &Vm) -> String {
        self.inventory.host_name(&vm.host_id)
    }

    pub fn jobs(
        &self,
        who: &Principal,
        vm: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>, OpsError> {
        require(who, Privilege::View, "listing jobs")?;
        Ok(self.jobs.recent(limit, |j| {
            (vm.is_none() || j.vm.as_deref() == vm) && self.job_visible(who, j)
        }))
    }

    pub fn job(&self, who: &Principal, id: u64) -> Result<Job, OpsError> {
        require(who, Privilege::View, "viewing a job")?;
        self.jobs
            .get(id)
            .filter(|j| self.job_visible(who, j))
            .ok_or_else(|| OpsError::NotFound(format!("no job with id {id}")))
    }

    pub async fn issue_enrollment_token(&self, who: &Principal) -> Result<IssuedToken, OpsError> {
        let result = async {
            require(who, Privilege::ManageHosts, "issuing enrollment tokens")?;
            let (token, record) = self.hub.tokens.issue(&who.user).await?;
            Ok(IssuedToken {
                token,
                ca_fingerprint: self.pki.ca_fingerprint(),
                record,
            })
        }
        .await;
        self.audited(who, "issue enrollment token", "agents", result)
            .await
    }

    pub fn pending_enrollment_tokens(
        &self,
        who: &Principal,
    ) -> Result<Vec<EnrollmentToken>, OpsError> {
        require(who, Privilege::ManageHosts, "viewing enrollment tokens")?;
        Ok(self.hub.tokens.pending())
    }

    /// Starts a power job. Refuses at once (changing nothing) when the VM is
    /// unknown, its host is offline, or the action makes no sense in its state.
    pub async fn power(
        self: &Arc<Self>,
        who: &Principal,
        vm_id: &str,
        action: PowerAction,
        shutdown_timeout_secs: Option<u64>,
    ) -> Result<Job, OpsError> {
        let vm = self.vm(who, vm_id)?;
        let object = format!("vm {} ({})", vm.info.name, vm.info.uuid);
        let result = self
            .start_power_job(who, &vm, action, shutdown_timeout_secs)
            .await;
        self.audited(who, &format!("power {}", action.as_str()), &object, result)
            .await
    }

    async fn start_power_job(
        self: &Arc<Self>,
        who: &Principal,
        vm: &Vm,
        action: PowerAction,
        shutdown_timeout_secs: Option<u64>,
    ) -> Result<Job, OpsError> {
        require(who, Privilege::Power, "power operations")?;
        let timeout_secs = shutdown_timeout_secs.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS);
        if timeout_secs > MAX_SHUTDOWN_TIMEOUT_SECS {
            return Err(OpsError::BadRequest(format!(
                "timeout_secs must be at most {MAX_SHUTDOWN_TIMEOUT_SECS}"
            )));
        }
        check_power_transition(vm.info.power_state, action)?;
        self.require_host_online(vm)?;
        let job = self
            .jobs
            .create(NewJob {
                kind: "power",
                description: format!("{} {}", action.as_str(), vm.info.name),
                vm: Some(vm.info.uuid.clone()),
                host: Some(vm.host_id.clone()),
                user: who.user.clone(),
            })
            .await?;
        let ops = self.clone();
        let (job_id, host_id) = (job.id, vm.host_id.clone());
        let command = Command::Power {
            vm: vm.info.uuid.clone(),
            action,
            timeout_secs,
        };
        tokio::spawn(async move {
            if let Err(e) = ops.jobs.start(job_id).await {
                tracing::error!(job_id, "cannot record job start: {e}");
            }
            let deadline = Duration::from_secs(timeout_secs + 30);
            let result = ops
                .hub
                .request(&host_id, command, deadline)
                .await
                .map_err(|e| e.to_string());
            if let Err(e) = ops.jobs.finish(job_id, result).await {
                tracing::error!(job_id, "cannot record job end: {e}");
            }
        });
        Ok(job)
    }
}

/// What only an unrestricted principal (one without access policies) may
/// do: anything that decides scope — access policies, category rules, VM
/// tags, directory group mappings. A restricted principal could otherwise
/// widen their own scope or reach VMs outside it.
fn require_unrestricted(who: &Principal, what: &str) -> Result<(), OpsError> {
    if who.scope.is_none() {
        return Ok(());
    }
    Err(OpsError::Forbidden(format!(
        "permission denied: {what} is for users without access policies"
    )))
}

/// Whether `action` makes sense for a VM in `state`; a clear refusal if not.
pub fn check_power_transition(state: PowerState, action: PowerAction) -> Result<(), OpsError> {
    use PowerAction::*;
    use PowerState::*;
    let ok = match action {
        Start => state == Stopped,
        Pause => state == Running,
        Resume => state == Paused,
        Shutdown | Reboot => state == Running,
        Poweroff => matches!(state, Running | Paused),
    };
    if ok || state == Unknown {
        Ok(())
    } else {
        Err(OpsError::Conflict(format!(
            "cannot {} a VM that is {}",
            action.as_str(),
            state.as_str()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_transitions() {
        assert!(check_power_transition(PowerState::Stopped, PowerAction::Start).is_ok());
        assert!(check_power_transition(PowerState::Running, PowerAction::Start).is_err());
        assert!(check_power_transition(PowerState::Paused, PowerAction::Resume).is_ok());
        assert!(check_power_transition(PowerState::Running, PowerAction::Resume).is_err());
        assert!(check_power_transition(PowerState::Paused, PowerAction::Poweroff).is_ok());
        assert!(check_power_transition(PowerState::Stopped, PowerAction::Shutdown).is_err());
        assert!(check_power_transition(PowerState::Unknown, PowerAction::Start).is_ok());
    }
}

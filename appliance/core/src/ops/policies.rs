//! Backup policy operations: manage policies, run one (its backups, then
//! retention, then garbage collection), and the scheduler's tick that runs
//! whatever is due.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{BootVerifyOptions, Ops, OpsError};
use crate::access::{require, Principal, Privilege};
use crate::backup::boot_verify;
use crate::backup::calendar::CalendarEvent;
use crate::backup::datastores::DEFAULT_DATASTORE;
use crate::backup::policy::{BackupPolicy, PolicyBootVerify, PolicyMode};
use crate::backup::prune::PruneOptions;
use crate::backup::VmUuid;
use crate::clock::unix_now;
use crate::jobs::{Job, JobState, NewJob};
use lifeboat_proto::BootSignal;

/// What a client sends to create or replace a policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    pub name: String,
    pub schedule: String,
    #[serde(default)]
    pub datastore: Option<String>,
    #[serde(default)]
    pub mode: Option<PolicyMode>,
    #[serde(default)]
    pub vms: Vec<String>,
    #[serde(default)]
    pub name_pattern: Option<String>,
    /// Every VM of this category, `key=value`.
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub retention: PruneOptions,
    /// Calendar expression for re-verifying the covered VMs' backups.
    #[serde(default)]
    pub verify_schedule: Option<String>,
    /// Boot-verify each VM's new backup after each run.
    #[serde(default)]
    pub boot_verify: Option<PolicyBootVerify>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// The principal scheduled runs act as; audited like anyone else.
fn scheduler() -> Principal {
    Principal::system("scheduler", "schedule")
}

/// Retention removes backups: whoever sets or runs it needs `delete-backup`.
/// Boot verification restores: whoever sets it needs `restore`.
fn require_policy_rights(who: &Principal, input: &PolicyInput) -> Result<(), OpsError> {
    if input.retention.prunes() {
        require(
            who,
            Privilege::DeleteBackup,
            "a policy with retention rules",
        )?;
    }
    if input.boot_verify.is_some() {
        require(who, Privilege::Restore, "a policy that boot-verifies")?;
    }
    Ok(())
}

impl PolicyBootVerify {
    fn options(&self) -> BootVerifyOptions {
        BootVerifyOptions {
            host: None,
            signal: self
                .serial_line
                .clone()
                .map(|text| BootSignal::SerialLine { text }),
            timeout_secs: self.timeout_secs,
        }
    }
}

impl Ops {
    pub fn policies(&self, who: &Principal) -> Result<Vec<BackupPolicy>, OpsError> {
        require(who, Privilege::View, "listing backup policies")?;
        Ok(self
            .policies
            .all()
            .into_iter()
            .map(|p| self.scoped_policy(who, p))
            .collect())
    }

    pub fn policy(&self, who: &Principal, id: &str) -> Result<BackupPolicy, OpsError> {
        require(who, Privilege::View, "viewing backup policies")?;
        self.policies
            .get(id)
            .map(|p| self.scoped_policy(who, p))
            .ok_or_else(|| OpsError::NotFound(format!("no backup policy {id}")))
    }

    /// A policy as `who` may see it: VMs outside their scope left out.
    fn scoped_policy(&self, who: &Principal, mut policy: BackupPolicy) -> BackupPolicy {
        if who.scope.is_some() {
            policy.vms.retain(|uuid| self.visible_uuid(who, uuid));
        }
        policy
    }

    fn validate_policy(
        &self,
        id: String,
        input: PolicyInput,
        last_run: u64,
    ) -> Result<BackupPolicy, OpsError> {
        let bad = |m: String| Err(OpsError::BadRequest(m));
        let name = input.name.trim().to_string();
        if name.is_empty() || name.len() > 64 {
            return bad("a policy needs a name of 1 to 64 characters".into());
        }
        let schedule = CalendarEvent::parse(&input.schedule)
            .map_err(|e| OpsError::BadRequest(format!("schedule: {:?}: {e}", input.schedule)))?;
        let datastore = input.datastore.unwrap_or_else(|| DEFAULT_DATASTORE.into());
        if !self.datastores.contains(&datastore) {
            return bad(format!("no datastore named {datastore:?}"));
        }
        if let Some(c) = &input.category {
            let (k, v) = c.split_once('=').ok_or_else(|| {
                OpsError::BadRequest(format!("category: {c:?} must be key=value"))
            })?;
            crate::inventory::categories::check_key(k).map_err(OpsError::BadRequest)?;
            crate::inventory::categories::check_value(v).map_err(OpsError::BadRequest)?;
        }
        if input.vms.is_empty() && input.name_pattern.is_none() && input.category.is_none() {
            return bad("a policy needs vms, a name_pattern or a category".into());
        }
        if let Some(v) = input.vms.iter().find(|v| v.parse::<VmUuid>().is_err()) {
            return bad(format!("{v:?} is not a VM id"));
        }
        let verify_schedule = input
            .verify_schedule
            .as_deref()
            .map(|text| {
                CalendarEvent::parse(text)
                    .map_err(|e| OpsError::BadRequest(format!("verify_schedule: {text:?}: {e}")))
            })
            .transpose()?;
        if let Some(b) = &input.boot_verify {
            let options = b.options();
            boot_verify::check_options(
                &options.signal.unwrap_or(BootSignal::GuestAgent),
                options
                    .timeout_secs
                    .unwrap_or(boot_verify::DEFAULT_TIMEOUT_SECS),
            )
            .map_err(|e| OpsError::BadRequest(format!("boot_verify: {e}")))?;
        }
        Ok(BackupPolicy {
            id,
            name,
            enabled: input.enabled,
            schedule,
            datastore,
            mode: input.mode.unwrap_or(PolicyMode::Auto),
            vms: input.vms,
            name_pattern: input.name_pattern,
            category: input.category,
            retention: input.retention,
            last_run,
            owner: None,
            verify_schedule,
            last_verify: last_run,
            boot_verify: input.boot_verify,
        })
    }

    pub async fn create_policy(
        &self,
        who: &Principal,
        input: PolicyInput,
    ) -> Result<BackupPolicy, OpsError> {
        let result = async {
            require(who, Privilege::Backup, "managing backup policies")?;
            require_policy_rights(who, &input)?;
            let mut policy =
                self.validate_policy(uuid::Uuid::new_v4().to_string(), input, unix_now())?;
            policy.owner = Some(who.user.clone());
            self.policies.put(&policy.id, policy.clone()).await?;
            Ok(policy)
        }
        .await;
        self.audited(who, "create backup policy", "backup policies", result)
            .await
    }

    pub async fn update_policy(
        &self,
        who: &Principal,
        id: &str,
        input: PolicyInput,
    ) -> Result<BackupPolicy, OpsError> {
        let old = self.policy(who, id)?;
        let result = async {
            require(who, Privilege::Backup, "managing backup policies")?;
            require_policy_rights(who, &input)?;
            let mut policy = self.validate_policy(old.id.clone(), input, old.last_run)?;
            policy.owner = Some(who.user.clone());
            // VMs the caller cannot see stay in the policy: they could not
            // have meant to remove what they were not shown.
            if who.scope.is_some() {
                let stored = self.policies.get(id).map(|p| p.vms).unwrap_or_default();
                policy.vms.extend(
                    stored
                        .into_iter()
                        .filter(|uuid| !self.visible_uuid(who, uuid)),
                );
            }
            self.policies.put(&policy.id, policy.clone()).await?;
            Ok(policy)
        }
        .await;
        self.audited(who, "update backup policy", &format!("policy {id}"), result)
            .await
    }

    pub async fn delete_policy(&self, who: &Principal, id: &str) -> Result<(), OpsError> {
        self.policy(who, id)?;
        let result = async {
            require(who, Privilege::Backup, "managing backup policies")?;
            self.policies.delete(id).await?;
            Ok(())
        }
        .await;
        self.audited(who, "delete backup policy", &format!("policy {id}"), result)
            .await
    }

    /// Runs a policy now: a parent job that backs up every covered VM whose
    /// host is online, then applies retention and collects garbage.
    pub async fn run_policy(self: &Arc<Self>, who: &Principal, id: &str) -> Result<Job, OpsError> {
        let policy = self.policy(who, id)?;
        let result = async {
            require(who, Privilege::Backup, "running backup policies")?;
            let job = self
                .jobs
                .create(NewJob {
                    kind: "policy",
                    description: format!("backup policy {}", policy.name),
                    vm: None,
                    host: None,
                    user: who.user.clone(),
                })
                .await?;
            let (ops, who, job_id) = (self.clone(), who.clone(), job.id);
            tokio::spawn(async move {
                let _ = ops.jobs.start(job_id).await;
                let result = ops.policy_run(&who, &policy).await;
                if let Err(e) = &result {
                    tracing::warn!(policy = policy.name, "policy run: {e}");
                }
                let _ = ops.jobs.finish(job_id, result).await;
            });
            Ok(job)
        }
        .await;
        self.audited(who, "run backup policy", &format!("policy {id}"), result)
            .await
    }

    async fn policy_run(
        self: &Arc<Self>,
        who: &Principal,
        policy: &BackupPolicy,
    ) -> Result<(), String> {
        let store = self
            .datastores
            .for_backup(&policy.datastore)
            .map_err(|e| e.to_string())?;
        // Only what the caller may see: a scoped user's run neither backs
        // up, nor names, nor prunes a VM outside their scope.
        let covered: Vec<_> = self
            .covered_vms(policy)
            .into_iter()
            .filter(|(uuid, _)| self.visible_uuid(who, uuid))
            .collect();
        let mode = match policy.mode {
            PolicyMode::Auto => lifeboat_proto::BackupMode::Auto,
            PolicyMode::Full => lifeboat_proto::BackupMode::Full,
        };
        let mut failures = Vec::new();
        let mut started = Vec::new();
        for (uuid, name) in &covered {
            match self.backup(who, uuid, Some(&policy.datastore), mode).await {
                Ok(job) => started.push((uuid.clone(), name.clone(), job.id)),
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        let mut backed_up = Vec::new();
        for (uuid, name, job_id) in started {
            let job = self.wait_job(job_id).await;
            if job.map(|j| j.state) == Some(JobState::Succeeded) {
                backed_up.push((uuid, name));
            } else {
                failures.push(format!("{name}: backup job {job_id} failed"));
            }
        }
        if let Some(b) = &policy.boot_verify {
            failures.extend(self.boot_verify_newest(who, policy, b, &backed_up).await);
        }
        let mut retention = policy.retention;
        if retention.prunes() && !who.can(Privilege::DeleteBackup) {
            failures.push(format!(
                "retention not applied: {} lacks the 'delete-backup' privilege",
                who.user
            ));
            retention = PruneOptions::default();
        }
        let vms: Vec<String> = covered.into_iter().map(|(u, _)| u).collect();
        let oldest = self.oldest_running_backup();
        let housekeeping = tokio::task::spawn_blocking(move || {
            super::retention::apply_retention(&store, &vms, &retention, oldest)
        })
        .await
        .map_err(|e| e.to_string())?;
        if let Err(e) = housekeeping {
            failures.push(e);
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    /// Boot-verifies the newest backup (in the policy's datastore) of each
    /// VM, one at a time so a host boots one sandbox at once. Returns the
    /// failures.
    async fn boot_verify_newest(
        self: &Arc<Self>,
        who: &Principal,
        policy: &BackupPolicy,
        how: &PolicyBootVerify,
        vms: &[(String, String)],
    ) -> Vec<String> {
        let mut failures = Vec::new();
        for (uuid, name) in vms {
            let newest = self.vm_backups(who, uuid).await.ok().and_then(|list| {
                list.into_iter()
                    .rev()
                    .find(|b| b.reference.datastore == policy.datastore)
            });
            let Some(newest) = newest else {
                failures.push(format!("{name}: no backup to boot-verify"));
                continue;
            };
            let reference = newest.reference.to_string();
            match self.boot_verify(who, &reference, how.options()).await {
                Err(e) => failures.push(format!("{name}: boot verification not started: {e}")),
                Ok(job) => {
                    let job = self.wait_job(job.id).await;
                    if job.as_ref().map(|j| j.state) != Some(JobState::Succeeded) {
                        let why = job.and_then(|j| j.error).unwrap_or_default();
                        failures.push(format!("{name}: boot verification failed: {why}"));
                    }
                }
            }
        }
        failures
    }

    /// The VMs a policy covers now, as (UUID, name).
    fn covered_vms(&self, policy: &BackupPolicy) -> Vec<(String, String)> {
        let categories = self.categorizer();
        self.inventory.with_vms(|vms| {
            vms.filter(|v| policy.covers(&v.info.uuid, &v.info.name, &categories(v)))
                .map(|v| (v.info.uuid.clone(), v.info.name.clone()))
                .collect()
        })
    }

    /// Starts a verify job for every backup of the VMs a policy covers.
    async fn verify_covered(self: &Arc<Self>, policy: &BackupPolicy) {
        let who = self.scheduled_as(policy);
        let vms: Vec<String> = self
            .covered_vms(policy)
            .into_iter()
            .map(|(uuid, _)| uuid)
            .filter(|uuid| self.visible_uuid(&who, uuid))
            .collect();
        for vm in vms {
            let Ok(backups) = self.vm_backups(&who, &vm).await else {
                continue;
            };
            for b in backups
                .iter()
                .filter(|b| b.reference.datastore == policy.datastore)
            {
                if let Err(e) = self.verify(&who, &b.reference.to_string()).await {
                    tracing::warn!(policy = policy.name, "scheduled verify not started: {e}");
                }
            }
        }
    }

    async fn wait_job(&self, id: u64) -> Option<Job> {
        loop {
            let job = self.jobs.get(id)?;
            if job.state.is_finished() {
                return Some(job);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// When the oldest backup still running started: GC must keep every
    /// chunk such a backup may still reference.
    fn oldest_running_backup(&self) -> Option<SystemTime> {
        self.jobs
            .recent(10_000, |j| j.kind == "backup" && !j.state.is_finished())
            .iter()
            .map(|j| j.started_at.unwrap_or(j.created_at))
            .min()
            .map(|t| UNIX_EPOCH + Duration::from_secs(t))
    }

    /// Imports archives dropped into each datastore's `import/` directory.
    async fn rescan_drop_dirs(&self) {
        let stores: Vec<_> = self
            .datastores
            .names()
            .filter_map(|n| self.datastores.get(n))
            .collect();
        for store in stores {
            let drop_dir = store.root().join("import");
            if !drop_dir.is_dir() {
                continue;
            }
            let results = tokio::task::spawn_blocking(move || {
                crate::backup::archive::rescan(&store, &drop_dir)
            })
            .await;
            match results {
                Ok(Ok(results)) => {
                    for r in results {
                        match &r.outcome {
                            Ok((vm, id)) => {
                                tracing::info!(archive = %r.archive.display(), vm = vm.as_str(), backup = id.as_str(), "imported")
                            }
                            Err(e) => {
                                tracing::warn!(archive = %r.archive.display(), "import refused: {e}")
                            }
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!("rescan failed: {e}"),
                Err(e) => tracing::error!("rescan task: {e}"),
            }
        }
    }

    /// Who a scheduled run of `policy` acts as: its owner with their rights
    /// and scope as they are now (nobody, if the owner is gone or
    /// disabled), or the scheduler for a policy without a recorded owner.
    fn scheduled_as(&self, policy: &BackupPolicy) -> Principal {
        match &policy.owner {
            None => scheduler(),
            Some(owner) => self
                .access
                .current_principal(owner, "schedule")
                .unwrap_or_else(|| Principal::nobody(owner, "schedule")),
        }
    }

    /// Runs every enabled policy that is due, and imports dropped archives.
    /// Called by the scheduler.
    pub(super) async fn scheduler_tick(self: &Arc<Self>) {
        self.rescan_drop_dirs().await;
        let now = unix_now();
        for mut policy in self.policies.all().into_iter().filter(|p| p.enabled) {
            if policy.verify_due(now).is_some() {
                policy.last_verify = now;
                if let Err(e) = self.policies.put(&policy.id, policy.clone()).await {
                    tracing::error!(policy = policy.name, "cannot record the verification: {e}");
                } else {
                    self.verify_covered(&policy).await;
                }
            }
            if policy.due(now).is_none() {
                continue;
            }
            // Recorded first: a crash mid-run does not repeat the run.
            policy.last_run = now;
            if let Err(e) = self.policies.put(&policy.id, policy.clone()).await {
                tracing::error!(policy = policy.name, "cannot record the run: {e}");
                continue;
            }
            match self
                .run_policy(&self.scheduled_as(&policy), &policy.id)
                .await
            {
                Ok(job) => tracing::info!(
                    policy = policy.name,
                    job = job.id,
                    "scheduled backup started"
                ),
                Err(e) => tracing::warn!(policy = policy.name, "scheduled backup not started: {e}"),
            }
        }
    }
}

//! Driving failovers: placing each waiting VM, starting it on its
//! destination (from shared storage, or by restoring its latest backup),
//! and forgetting stale copies on hosts that come back. Every decision is
//! stored before it is acted on, so a restarted controller resumes safely.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_proto::{Command, PowerState, StartVmRequest};

use super::ha_engine::{ha_engine, EngineState, RETRY_EVERY, START_TIMEOUT};
use super::Ops;
use crate::ha::detect::HostState;
use crate::ha::failover::{FailoverState, MoveState, VmMove};
use crate::ha::placement::{choose, reserve, Candidate};
use crate::ha::remap::remap_disks;
use crate::ha::settings::FailoverMethod;

impl Ops {
    pub(super) fn drive_failovers(self: &Arc<Self>, state: &Arc<Mutex<EngineState>>) {
        for f in self.ha.failovers.all() {
            if f.state != FailoverState::Running {
                continue;
            }
            {
                let mut s = state.lock().expect("engine lock");
                let recent = s
                    .last_drive
                    .get(&f.id)
                    .is_some_and(|at| at.elapsed() < RETRY_EVERY);
                if s.driving.contains(&f.id) || recent {
                    continue;
                }
                s.driving.insert(f.id.clone());
                s.last_drive.insert(f.id.clone(), Instant::now());
            }
            let (ops, state) = (self.clone(), state.clone());
            tokio::spawn(async move {
                if let Err(e) = ops.drive_failover(&f.id).await {
                    tracing::error!(failover = f.id, "failover step failed: {e}");
                }
                state.lock().expect("engine lock").driving.remove(&f.id);
            });
        }
    }

    /// Places and starts every waiting VM of one failover, in priority
    /// order, persisting each decision before acting on it.
    async fn drive_failover(self: &Arc<Self>, id: &str) -> Result<(), super::OpsError> {
        let Some(mut f) = self.ha.failovers.get(id) else {
            return Ok(());
        };
        let mut candidates = self.placement_candidates(&f.source_id);
        for i in 0..f.vms.len() {
            let vm = f.vms[i].clone();
            match vm.state {
                MoveState::Started | MoveState::Failed => continue,
                MoveState::Placed => {}
                MoveState::Pending | MoveState::Unplaceable => {
                    if self.runs_elsewhere(&vm.uuid, &f.source_id) {
                        f.vms[i].state = MoveState::Started;
                        f.step(format!("started: {} (found running)", vm.name));
                        self.ha.save_failover(&f).await?;
                        continue;
                    }
                    let memory = vm.memory_mib * 1024 * 1024;
                    let Some(pick) = choose(memory, &vm.anti_affinity_group, &candidates) else {
                        if vm.state == MoveState::Pending {
                            f.vms[i].state = MoveState::Unplaceable;
                            f.step(format!(
                                "unplaceable: {} (no host has room); retrying",
                                vm.name
                            ));
                            self.ha.save_failover(&f).await?;
                            let message = format!("ALERT: VM {} cannot be placed", vm.name);
                            self.ha
                                .event(&f.source_id, HostState::Failed, message)
                                .await;
                        }
                        continue;
                    };
                    reserve(&mut candidates[pick], memory, &vm.anti_affinity_group);
                    let dest = candidates[pick].host_id.clone();
                    f.vms[i].destination = Some(dest.clone());
                    f.vms[i].state = MoveState::Placed;
                    let dest_name = self.inventory.host_name(&dest);
                    f.step(format!("placed: {} on {dest_name}", vm.name));
                    self.ha.save_failover(&f).await?;
                }
            }
            let dest = f.vms[i].destination.clone().unwrap_or_default();
            f.vms[i].attempts += 1;
            let result = self.start_moved_vm(&f.source_id, &dest, &f.vms[i]).await;
            match result {
                Ok(()) => {
                    f.vms[i].state = MoveState::Started;
                    let dest_name = self.inventory.host_name(&dest);
                    f.step(format!("started: {} on {dest_name}", vm.name));
                }
                Err(e) if f.vms[i].attempts < 3 => {
                    f.vms[i].error = Some(e);
                }
                Err(e) => {
                    f.vms[i].state = MoveState::Failed;
                    f.step(format!("failed: {}: {e}", vm.name));
                    f.vms[i].error = Some(e);
                }
            }
            self.ha.save_failover(&f).await?;
        }
        f.settle();
        self.ha.save_failover(&f).await?;
        Ok(())
    }

    /// Connected hosts other than the failed one, with their free memory.
    fn placement_candidates(&self, source: &str) -> Vec<Candidate> {
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        self.inventory.with_vms(|vms| {
            for v in vms.filter(|v| v.info.power_state == PowerState::Running) {
                let group = self.ha.vm(&v.info.uuid).anti_affinity_group;
                if !group.is_empty() {
                    groups.entry(v.host_id.clone()).or_default().push(group);
                }
            }
        });
        self.inventory
            .hosts()
            .into_iter()
            .filter(|h| h.host.id != source && self.hub.is_connected(&h.host.id))
            .filter(|h| self.ha.watch(&h.host.id).state == HostState::Ok)
            .map(|h| Candidate {
                groups: groups.remove(&h.host.id).unwrap_or_default(),
                host_id: h.host.id.clone(),
                free_bytes: h.host.facts.memory_free_bytes,
            })
            .collect()
    }

    fn runs_elsewhere(&self, uuid: &str, source: &str) -> bool {
        self.inventory.vm(uuid).is_some_and(|v| {
            v.host_id != source
                && matches!(v.info.power_state, PowerState::Running | PowerState::Paused)
        })
    }

    async fn start_moved_vm(
        self: &Arc<Self>,
        source: &str,
        dest: &str,
        vm: &VmMove,
    ) -> Result<(), String> {
        match vm.method {
            FailoverMethod::Restart => {
                let from = self.ha.host(source).storage_mounts;
                let config = if from.is_empty() {
                    vm.config.clone()
                } else {
                    remap_disks(&vm.config, &from, &self.ha.host(dest).storage_mounts)
                        .map_err(|e| e.to_string())?
                };
                self.check_definition_for(dest, &config, &vm.name, &vm.uuid, false)
                    .map_err(|e| format!("not started on the destination: {e}"))?;
                self.inventory.expect_move(&vm.uuid, dest);
                let request = StartVmRequest {
                    uuid: vm.uuid.clone(),
                    config,
                    state: vm.prior_state,
                };
                self.hub
                    .request(dest, Command::StartVm(request), START_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
            FailoverMethod::Restore => self.restore_moved_vm(dest, vm).await,
        }
    }

    /// Failover without shared storage: the latest backup, restored exactly
    /// onto the destination.
    async fn restore_moved_vm(self: &Arc<Self>, dest: &str, vm: &VmMove) -> Result<(), String> {
        let who = ha_engine();
        let backups = self
            .vm_backups(&who, &vm.uuid)
            .await
            .map_err(|e| e.to_string())?;
        let latest = backups
            .iter()
            .max_by(|a, b| a.reference.id.cmp(&b.reference.id))
            .ok_or_else(|| format!("VM {} has no backup to restore", vm.name))?;
        let start = vm.prior_state == PowerState::Running;
        let job = self
            .restore(
                &who,
                &latest.reference.to_string(),
                super::RestoreOptions {
                    host: Some(dest.to_string()),
                    start,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(6 * 3600);
        loop {
            match self.jobs.get(job.id) {
                Some(j) if j.state.is_finished() => {
                    return match j.error {
                        None => Ok(()),
                        Some(e) => Err(format!("restore job {}: {e}", j.id)),
                    };
                }
                _ if Instant::now() > deadline => return Err("restore did not finish".into()),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// A host that came back still has the definition of a VM that now runs
    /// elsewhere: forget it there (disks stay), so it is never started twice.
    /// A host reported a live copy of a VM another host owns: the report
    /// was refused (the owner's VM is left alone); this raises it in the
    /// claimant's history and the audit trail.
    pub(super) async fn refused_claim(&self, claim: crate::inventory::RefusedClaim) {
        let owner = self.inventory.host_name(&claim.owner);
        let message = format!(
            "report refused: it claims VM {} ({}), which host {owner} owns",
            claim.name, claim.uuid
        );
        tracing::warn!(host = claim.claimant, "{message}");
        let state = self.ha.watch(&claim.claimant).state;
        self.ha.event(&claim.claimant, state, message.clone()).await;
        let object = format!("host {}", self.inventory.host_name(&claim.claimant));
        let _ = self
            .audit
            .record(&ha_engine(), "agent report", &object, &Err(message))
            .await;
    }

    pub(super) fn forget_stale_copy(self: &Arc<Self>, host_id: String, uuid: String) {
        let ops = self.clone();
        tokio::spawn(async move {
            let command = Command::Undefine { uuid: uuid.clone() };
            let result = ops
                .hub
                .request(&host_id, command, Duration::from_secs(60))
                .await;
            let message = match result {
                Ok(()) => format!("stale copy of VM {uuid} undefined (it runs elsewhere)"),
                Err(e) => format!("could not undefine the stale copy of VM {uuid}: {e}"),
            };
            let state = ops.ha.watch(&host_id).state;
            ops.ha.event(&host_id, state, message).await;
        });
    }
}

//! HA operations: settings for the cluster, hosts and VMs, the cluster view
//! with admission control, failover history, physical machines.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Ops, OpsError};
use crate::access::{require, Principal, Privilege};
use crate::ha::detect::HostState;
use crate::ha::failover::Failover;
use crate::ha::physical::{PhysicalMachine, PhysicalState};
use crate::ha::settings::{ClusterHa, HostHa, HostHaView, VmHa};
use crate::ha::HostEvent;
use crate::inventory::{HostView, Vm};
use lifeboat_proto::{Command, PowerAction, PowerState};

/// One host in the cluster view.
pub struct ClusterHost {
    pub view: HostView,
    pub state: HostState,
    pub reason: &'static str,
    pub protected_vms: usize,
    /// Memory of its running HA VMs.
    pub protected_bytes: u64,
}

pub struct ClusterView {
    pub settings: ClusterHa,
    pub hosts: Vec<ClusterHost>,
    /// Set when losing `tolerated_host_failures` hosts could leave HA VMs
    /// without a place.
    pub admission_warning: Option<String>,
}

impl Ops {
    pub fn cluster_view(&self, who: &Principal) -> Result<ClusterView, OpsError> {
        require(who, Privilege::View, "viewing the cluster")?;
        let settings = self.ha.cluster();
        let visible = self.visibility(who);
        let load: HashMap<String, (usize, u64)> = self
            .ha_vms_by_host()
            .into_iter()
            .map(|(host, mut vms)| {
                vms.retain(|(vm, _)| visible(vm));
                let running = vms
                    .iter()
                    .filter(|(vm, _)| vm.info.power_state == PowerState::Running)
                    .map(|(vm, _)| vm.info.memory_mib << 20)
                    .sum();
                (host, (vms.len(), running))
            })
            .collect();
        let mut hosts: Vec<ClusterHost> = self
            .hosts(who)?
            .into_iter()
            .map(|view| {
                let watch = self.ha.watch(&view.host.id);
                let (count, bytes) = load.get(&view.host.id).copied().unwrap_or_default();
                ClusterHost {
                    state: watch.state,
                    reason: watch.reason,
                    protected_vms: count,
                    protected_bytes: bytes,
                    view,
                }
            })
            .collect();
        hosts.sort_by(|a, b| a.view.host.name.cmp(&b.view.host.name));
        let admission_warning = admission(&hosts, settings.tolerated_host_failures as usize);
        Ok(ClusterView {
            settings,
            hosts,
            admission_warning,
        })
    }

    /// The HA-enabled VMs of every host with their settings, by UUID: one
    /// pass over the HA settings (few), never over the inventory per host.
    pub(super) fn ha_vms_by_host(&self) -> HashMap<String, Vec<(Vm, VmHa)>> {
        let mut by_host: HashMap<String, Vec<(Vm, VmHa)>> = HashMap::new();
        for (uuid, ha) in self.ha.vms.entries() {
            if let Some(vm) = ha.enabled.then(|| self.inventory.vm(&uuid)).flatten() {
                by_host
                    .entry(vm.host_id.clone())
                    .or_default()
                    .push((vm, ha));
            }
        }
        // Entries come in UUID order, so each list is sorted already.
        by_host
    }

    pub async fn set_cluster_ha(
        &self,
        who: &Principal,
        settings: ClusterHa,
    ) -> Result<ClusterHa, OpsError> {
        let result = async {
            require(who, Privilege::ManageHa, "changing HA settings")?;
            settings.validate().map_err(OpsError::BadRequest)?;
            self.ha.set_cluster(settings.clone()).await?;
            Ok(settings)
        }
        .await;
        self.audited(who, "set cluster HA settings", "cluster", result)
            .await
    }

    pub fn host_ha(&self, who: &Principal, host_id: &str) -> Result<HostHaView, OpsError> {
        let host = self.host(who, host_id)?;
        Ok(self.ha.host(&host.host.id).into())
    }

    /// Replaces a host's HA settings; the fence command (a secret) is kept
    /// unless the request names one, and only an administrator sets it.
    pub async fn set_host_ha(
        &self,
        who: &Principal,
        host_id: &str,
        mut settings: HostHa,
    ) -> Result<HostHaView, OpsError> {
        let host = self.host(who, host_id)?;
        let result = async {
            require(who, Privilege::ManageHa, "changing HA settings")?;
            settings.validate().map_err(OpsError::BadRequest)?;
            settings.fence_command_sealed = match settings.fence_command.take() {
                None => self.ha.host(&host.host.id).fence_command_sealed,
                Some(command) => {
                    require(who, Privilege::Administer, "setting a fence command")?;
                    if command.trim().is_empty() {
                        String::new()
                    } else {
                        self.secrets
                            .seal(&command)
                            .map_err(|e| OpsError::Internal(e.to_string()))?
                    }
                }
            };
            self.ha.hosts.put(&host.host.id, settings.clone()).await?;
            Ok(settings.into())
        }
        .await;
        let object = format!("host {}", host.host.name);
        self.audited(who, "set host HA settings", &object, result)
            .await
    }

    pub fn vm_ha(&self, who: &Principal, vm_id: &str) -> Result<VmHa, OpsError> {
        let vm = self.vm(who, vm_id)?;
        Ok(self.ha.vm(&vm.info.uuid))
    }

    pub async fn set_vm_ha(
        &self,
        who: &Principal,
        vm_id: &str,
        settings: VmHa,
    ) -> Result<VmHa, OpsError> {
        let vm = self.vm(who, vm_id)?;
        let result = async {
            require(who, Privilege::ManageHa, "changing HA settings")?;
            settings.validate().map_err(OpsError::BadRequest)?;
            self.ha.vms.put(&vm.info.uuid, settings.clone()).await?;
            Ok(settings)
        }
        .await;
        let object = format!("vm {}", vm.info.name);
        self.audited(who, "set VM HA settings", &object, result)
            .await
    }

    /// Failovers; one that moved a VM hidden from `who` is hidden too.
    pub fn failovers(&self, who: &Principal) -> Result<Vec<Failover>, OpsError> {
        require(who, Privilege::View, "viewing failovers")?;
        let mut list = self.ha.failover_list();
        list.retain(|f| self.failover_visible(who, f));
        Ok(list)
    }

    pub fn failover(&self, who: &Principal, id: &str) -> Result<Failover, OpsError> {
        require(who, Privilege::View, "viewing failovers")?;
        self.ha
            .failovers
            .get(id)
            .filter(|f| self.failover_visible(who, f))
            .ok_or_else(|| OpsError::NotFound(format!("no failover {id}")))
    }

    fn failover_visible(&self, who: &Principal, f: &Failover) -> bool {
        f.vms.iter().all(|v| self.visible_uuid(who, &v.uuid))
    }

    /// History of a host or physical machine (all when `None`), newest first.
    pub fn ha_history(
        &self,
        who: &Principal,
        source: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HostEvent>, OpsError> {
        require(who, Privilege::View, "viewing HA history")?;
        let filter = self.text_filter(who);
        let events = self.ha.history(source, limit.min(1000));
        Ok(super::scope::allowed_by(events, filter.as_ref(), |e| {
            e.message.clone()
        }))
    }

    pub fn physical_machines(&self, who: &Principal) -> Result<Vec<PhysicalMachine>, OpsError> {
        require(who, Privilege::View, "listing physical machines")?;
        let mut all = self.ha.physical.all();
        all.retain(|pm| self.visible_uuid(who, &pm.standby_vm));
        Ok(all)
    }

    pub fn physical_machine(&self, who: &Principal, id: &str) -> Result<PhysicalMachine, OpsError> {
        require(who, Privilege::View, "viewing physical machines")?;
        self.ha
            .physical
            .get(id)
            .filter(|pm| self.visible_uuid(who, &pm.standby_vm))
            .ok_or_else(|| OpsError::NotFound(format!("no physical machine {id}")))
    }

    pub async fn add_physical_machine(
        &self,
        who: &Principal,
        mut pm: PhysicalMachine,
    ) -> Result<PhysicalMachine, OpsError> {
        let object = format!("physical machine {}", pm.name);
        let result = async {
            require(who, Privilege::ManageHa, "managing physical machines")?;
            pm.validate().map_err(OpsError::BadRequest)?;
            // By name among the VMs the caller sees (never telling of one
            // they do not), else by UUID.
            let visible = self.visibility(who);
            let by_name = self.inventory.with_vms(|vms| {
                let named: Vec<String> = vms
                    .filter(|v| v.info.name == pm.standby_vm && visible(v))
                    .map(|v| v.info.uuid.clone())
                    .collect();
                (named.len() == 1).then(|| named[0].clone())
            });
            let vm = self
                .vm(who, by_name.as_deref().unwrap_or(&pm.standby_vm))
                .map_err(|_| {
                    OpsError::NotFound(format!("no VM named or with id {:?}", pm.standby_vm))
                })?;
            pm.standby_vm = vm.info.uuid.clone();
            pm.id = uuid::Uuid::new_v4().to_string();
            pm.state = PhysicalState::Monitoring;
            self.ha.physical.put(&pm.id, pm.clone()).await?;
            Ok(pm)
        }
        .await;
        self.audited(who, "add physical machine", &object, result)
            .await
    }

    pub async fn delete_physical_machine(&self, who: &Principal, id: &str) -> Result<(), OpsError> {
        let pm = self.physical_machine(who, id)?;
        let result = async {
            require(who, Privilege::ManageHa, "managing physical machines")?;
            self.ha.physical.delete(id).await?;
            Ok(())
        }
        .await;
        let object = format!("physical machine {}", pm.name);
        self.audited(who, "delete physical machine", &object, result)
            .await
    }

    /// Back to the physical machine: stops the standby VM (guest shutdown,
    /// then power off) and watches the machine again. Must be confirmed.
    pub async fn failback_physical(
        self: &Arc<Self>,
        who: &Principal,
        id: &str,
        confirmed: bool,
    ) -> Result<PhysicalMachine, OpsError> {
        let mut pm = self.physical_machine(who, id)?;
        let object = format!("physical machine {}", pm.name);
        let result = async {
            require(who, Privilege::ManageHa, "failing back")?;
            if !confirmed {
                return Err(OpsError::BadRequest(
                    "failback stops the standby VM: repeat with \"confirm\": true".into(),
                ));
            }
            if pm.state != PhysicalState::FailedOver {
                return Err(OpsError::Conflict(format!(
                    "{} has not failed over",
                    pm.name
                )));
            }
            let prober = crate::ha::probe::Prober::new();
            if let Some(why) = super::ha_physical::health_round(&pm, &prober).await {
                return Err(OpsError::Conflict(format!(
                    "{} still fails its health checks ({why}); repair it before failing back",
                    pm.name
                )));
            }
            if let Some(vm) = self.inventory.vm(&pm.standby_vm) {
                if vm.info.power_state != PowerState::Stopped {
                    let command = Command::Power {
                        vm: vm.info.uuid.clone(),
                        action: PowerAction::Shutdown,
                        timeout_secs: super::DEFAULT_SHUTDOWN_TIMEOUT_SECS,
                    };
                    let wait =
                        std::time::Duration::from_secs(super::DEFAULT_SHUTDOWN_TIMEOUT_SECS + 30);
                    self.hub
                        .request(&vm.host_id, command, wait)
                        .await
                        .map_err(|e| OpsError::Conflict(format!("stopping the standby VM: {e}")))?;
                }
            }
            pm.state = PhysicalState::Monitoring;
            self.ha.physical.put(&pm.id, pm.clone()).await?;
            Ok(pm)
        }
        .await;
        let outcome = self.audited(who, "failback", &object, result).await;
        if outcome.is_ok() {
            let message = format!("failback confirmed by {}", who.user);
            self.ha.event(id, HostState::Ok, message).await;
        }
        outcome
    }
}

/// Admission control: would the HA VMs of the `n` most loaded hosts fit in
/// the free memory of the others?
fn admission(hosts: &[ClusterHost], n: usize) -> Option<String> {
    if n == 0 {
        return None;
    }
    let mut by_load: Vec<&ClusterHost> = hosts.iter().collect();
    by_load.sort_by_key(|h| std::cmp::Reverse(h.protected_bytes));
    if by_load.len() <= n {
        return (by_load.iter().any(|h| h.protected_vms > 0)).then(|| {
            format!(
                "the cluster has {} host(s): losing {n} leaves nowhere to restart HA VMs",
                hosts.len()
            )
        });
    }
    let (lost, rest) = by_load.split_at(n);
    let needed: u64 = lost.iter().map(|h| h.protected_bytes).sum();
    let free: u64 = rest
        .iter()
        .filter(|h| h.state == HostState::Ok)
        .map(|h| h.view.host.facts.memory_free_bytes)
        .sum();
    (needed > free).then(|| {
        format!(
            "losing {n} host(s) would need {} MiB for HA VMs; the others have {} MiB free",
            needed >> 20,
            free >> 20
        )
    })
}

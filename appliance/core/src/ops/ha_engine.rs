//! The HA engine: every tick it keeps each agent's HA configuration
//! current, watches silent hosts (network probe, storage heartbeat, VM
//! probes), runs out-of-band fences, opens a failover once `detect::assess`
//! allows it, and drives open failovers: placement, then start (or restore)
//! on the destination, every step persisted before it is taken.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_proto::{ControllerMessage, HaAgentConfig};

use super::Ops;
use crate::access::Principal;
use crate::ha::detect::{assess, HostState, Observation, Timing};
use crate::ha::failover::{start_order, Failover, FailoverKind, FailoverState, MoveState, VmMove};
use crate::ha::probe::{read_storage_heartbeat, run_fence_command, Prober};
use crate::ha::settings::ClusterHa;
use crate::ha::OobFence;
use crate::inventory::HostView;

const TICK: Duration = Duration::from_millis(200);
/// Directory, on each shared storage, holding the agents' heartbeat files.
pub const HEARTBEAT_DIR: &str = ".lifeboat-heartbeat";
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(120);
const FENCE_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// An unplaceable VM is tried again this often while its failover runs.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(3);

/// The principal failovers act as; audited like anyone else.
pub(super) fn ha_engine() -> Principal {
    Principal::system("ha", "ha-engine")
}

pub fn timing(c: &ClusterHa) -> Timing {
    Timing {
        interval: Duration::from_millis(c.heartbeat_interval_ms),
        misses: c.misses,
        fence_timeout: Duration::from_millis(c.fence_timeout_ms),
        margin: Duration::from_millis(c.fence_margin_ms),
    }
}

#[derive(Default)]
pub(super) struct EngineState {
    last_round: HashMap<String, Instant>,
    probing: HashSet<String>,
    pub(super) driving: HashSet<String>,
    pub(super) last_drive: HashMap<String, Instant>,
    pub(super) physical: super::ha_physical::PhysicalWatch,
}

impl Ops {
    /// Runs the HA engine forever.
    /// Seals fence commands stored in clear by earlier versions.
    async fn seal_old_fence_commands(&self) {
        for (id, mut host) in self.ha.hosts.entries() {
            let Some(command) = host.fence_command.take().filter(|c| !c.is_empty()) else {
                continue;
            };
            match self.secrets.seal(&command) {
                Ok(sealed) => {
                    host.fence_command_sealed = sealed;
                    if let Err(e) = self.ha.hosts.put(&id, host).await {
                        tracing::error!(host = id, "cannot seal the fence command: {e}");
                    }
                }
                Err(e) => tracing::error!(host = id, "cannot seal the fence command: {e}"),
            }
        }
    }

    pub(super) async fn ha_loop(self: Arc<Self>) {
        self.seal_old_fence_commands().await;
        let prober = Arc::new(Prober::new());
        let state = Arc::new(Mutex::new(EngineState::default()));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.ha_tick(&prober, &state).await;
        }
    }

    async fn ha_tick(self: &Arc<Self>, prober: &Arc<Prober>, state: &Arc<Mutex<EngineState>>) {
        let cluster = self.ha.cluster();
        let t = timing(&cluster);
        let hosts = self.inventory.hosts();
        let mut protected = self.ha_vms_by_host();
        for h in &hosts {
            let vms = protected.remove(&h.host.id).unwrap_or_default();
            let uuids = vms.into_iter().map(|(vm, _)| vm.info.uuid).collect();
            self.send_ha_config(h, &cluster, uuids).await;
        }
        for (host_id, record) in self.hub.take_fence_reports() {
            let message = format!(
                "its agent reports a self-fence while cut off: {} VM(s) stopped{}",
                record.stopped.len(),
                if record.failed.is_empty() {
                    String::new()
                } else {
                    format!(", could not stop: {}", record.failed.join("; "))
                }
            );
            self.ha.event(&host_id, HostState::Fenced, message).await;
        }
        for (host_id, uuid) in self.inventory.take_stale_copies() {
            self.forget_stale_copy(host_id, uuid);
        }
        for (host_id, epoch) in self.hub.take_epoch_acks() {
            if self.ha.epochs.get(&host_id) != Some(epoch) {
                if let Err(e) = self.ha.epochs.put(&host_id, epoch).await {
                    tracing::error!("cannot record the heartbeat epoch of {host_id}: {e}");
                }
            }
        }
        for claim in self.inventory.take_refused_claims() {
            self.refused_claim(claim).await;
        }
        let now = Instant::now();
        for h in &hosts {
            let id = &h.host.id;
            let last_heartbeat = self
                .inventory
                .last_heard(id)
                .unwrap_or(self.ha.started)
                .max(self.ha.started);
            let silent = now.saturating_duration_since(last_heartbeat);
            if silent >= t.interval {
                self.maybe_probe(h, &cluster, prober, state);
            } else {
                self.ha.forget_storage_heartbeat(id);
            }
            let watch = self.ha.watch(id);
            let observation = Observation {
                now,
                last_heartbeat,
                probe_failures: if silent >= t.interval {
                    watch.probe_failures
                } else {
                    0
                },
                storage_changed: watch.storage_changed,
                storage_reports_fence: watch.storage_fenced,
                vm_answers: watch.vm_answers,
                oob_fenced: watch.oob == OobFence::Succeeded,
            };
            let (new_state, reason) = assess(&observation, &t);
            if new_state != watch.state {
                self.host_state_changed(id, watch.state, new_state, reason)
                    .await;
            }
            if new_state != HostState::Ok
                && watch.probe_failures >= t.misses
                && watch.oob == OobFence::NotTried
            {
                self.maybe_fence_out_of_band(id);
            }
            if new_state.allows_failover() && !self.ha.watch(id).failover_opened {
                self.open_failover(h, new_state, reason, last_heartbeat)
                    .await;
            }
        }
        self.drive_failovers(state);
        self.watch_physical_machines(prober, state);
    }

    async fn host_state_changed(
        &self,
        id: &str,
        old: HostState,
        new: HostState,
        reason: &'static str,
    ) {
        {
            let mut watches = self.ha.lock_watches();
            let w = watches.entry(id.to_string()).or_default();
            w.state = new;
            w.reason = reason;
            if new == HostState::Ok {
                // A new outage starts from scratch.
                w.probe_failures = 0;
                w.storage_fenced = false;
                w.vm_answers = false;
                w.oob = OobFence::NotTried;
                w.failover_opened = false;
            }
        }
        let what = match (old, new) {
            (_, HostState::Ok) => format!("back: {reason}"),
            (HostState::Ok, _) => format!("detected: {reason}"),
            _ => reason.to_string(),
        };
        self.ha.event(id, new, what).await;
    }

    /// The key host `host_id` signs its storage heartbeat with.
    fn storage_key(&self, host_id: &str) -> [u8; 32] {
        self.secrets.derive("storage heartbeat", host_id)
    }

    /// Tells a connected agent what to fence and where its storage
    /// heartbeat goes, whenever that changes or it reconnects.
    async fn send_ha_config(&self, h: &HostView, cluster: &ClusterHa, protected: Vec<String>) {
        let id = &h.host.id;
        let Some(connection) = self.hub.connection(id) else {
            return;
        };
        let host_ha = self.ha.host(id);
        let config = HaAgentConfig {
            heartbeat_interval_ms: cluster.heartbeat_interval_ms,
            fence_timeout_ms: cluster.fence_timeout_ms,
            protected,
            heartbeat_dirs: cluster
                .shared_storages
                .keys()
                .filter_map(|name| host_ha.storage_mounts.get(name))
                .map(|mount| format!("{}/{HEARTBEAT_DIR}", mount.trim_end_matches('/')))
                .collect(),
            isolation_addresses: cluster.isolation_addresses.clone(),
            storage_key: hex::encode(self.storage_key(id)),
            epoch: self.ha.epoch(connection),
        };
        let watch = self.ha.watch(id);
        if watch.config_sent.as_ref() == Some(&(connection, config.clone())) {
            return;
        }
        if !self
            .hub
            .notify(id, ControllerMessage::HaConfig(config.clone()))
        {
            return;
        }
        if self.ha.told_to_protect.get(id).as_ref() != Some(&config.protected) {
            if let Err(e) = self
                .ha
                .told_to_protect
                .put(id, config.protected.clone())
                .await
            {
                tracing::error!("cannot record the protected VMs of {id}: {e}");
            }
        }
        self.ha
            .lock_watches()
            .entry(id.clone())
            .or_default()
            .config_sent = Some((connection, config));
    }

    /// One probe round per interval for a silent host, in the background:
    /// its network, its storage heartbeat and its HA VMs' addresses.
    fn maybe_probe(
        self: &Arc<Self>,
        h: &HostView,
        cluster: &ClusterHa,
        prober: &Arc<Prober>,
        state: &Arc<Mutex<EngineState>>,
    ) {
        let id = h.host.id.clone();
        let interval = Duration::from_millis(cluster.heartbeat_interval_ms);
        {
            let mut s = state.lock().expect("engine lock");
            let due = s
                .last_round
                .get(&id)
                .is_none_or(|at| at.elapsed() >= interval);
            if !due || s.probing.contains(&id) {
                return;
            }
            s.last_round.insert(id.clone(), Instant::now());
            s.probing.insert(id.clone());
        }
        let host_ha = self.ha.host(&id);
        let address = if host_ha.address.is_empty() {
            h.host.address.clone()
        } else {
            host_ha.address.clone()
        };
        let storage_dirs: Vec<String> = cluster
            .shared_storages
            .iter()
            .filter(|(name, _)| host_ha.storage_mounts.contains_key(*name))
            .map(|(_, path)| format!("{}/{HEARTBEAT_DIR}", path.trim_end_matches('/')))
            .collect();
        let vm_addresses: Vec<IpAddr> = self.inventory.with_host_vms(&id, |vms| {
            vms.filter_map(|v| self.ha.vm(&v.info.uuid).probe_address.parse().ok())
                .collect()
        });
        let (ops, prober, state) = (self.clone(), prober.clone(), state.clone());
        // Only a heartbeat this host signed counts (anyone who can write the
        // shared storage could fake its life or its fence), and only one of
        // the epoch its agent last said it holds reports a fence (a fence
        // written in an earlier outage cannot be replayed into this one).
        let key = self.storage_key(&id);
        let epoch = self.ha.epochs.get(&id);
        tokio::spawn(async move {
            // The storage heartbeat first: a reported fence needs no probe.
            let host_id = id.clone();
            let beats = tokio::task::spawn_blocking(move || {
                storage_dirs
                    .iter()
                    .filter_map(|dir| read_storage_heartbeat(Path::new(dir), &host_id))
                    .filter(|b| b.verify(&key))
                    .max_by_key(|b| b.seq)
            })
            .await
            .ok()
            .flatten();
            if let Some(beat) = beats {
                let mut watches = ops.ha.lock_watches();
                let w = watches.entry(id.clone()).or_default();
                // The first beat seen in an outage is only a baseline (it may
                // be the last one a dead host wrote); a newer one after it is
                // a sign of life, an older or the same one (a replay) is not.
                match w.storage_seq {
                    None => w.storage_seq = Some(beat.seq),
                    Some(seen) if beat.seq > seen => {
                        w.storage_seq = Some(beat.seq);
                        w.storage_changed = Some(Instant::now());
                    }
                    Some(_) => {}
                }
                w.storage_fenced = beat.fenced.is_some() && Some(beat.epoch) == epoch;
            }
            let timeout = interval.mul_f32(0.8);
            let host_answers = match address.parse::<IpAddr>() {
                Ok(ip) => prober.answers(ip, host_ha.probe, timeout).await,
                Err(_) => false,
            };
            let mut vm_answers = false;
            for ip in vm_addresses {
                if prober
                    .answers(ip, crate::ha::settings::HostProbe::Icmp, timeout)
                    .await
                {
                    vm_answers = true;
                    break;
                }
            }
            {
                let mut watches = ops.ha.lock_watches();
                let w = watches.entry(id.clone()).or_default();
                w.probe_failures = if host_answers {
                    0
                } else {
                    w.probe_failures + 1
                };
                w.vm_answers = vm_answers;
            }
            state.lock().expect("engine lock").probing.remove(&id);
        });
    }

    fn maybe_fence_out_of_band(self: &Arc<Self>, id: &str) {
        let sealed = self.ha.host(id).fence_command_sealed;
        if sealed.is_empty() {
            return;
        }
        let command = match self.secrets.open(&sealed) {
            Ok(command) => command,
            Err(e) => {
                tracing::error!(host = id, "cannot open the fence command: {e}");
                return;
            }
        };
        self.ha
            .lock_watches()
            .entry(id.to_string())
            .or_default()
            .oob = OobFence::Running;
        let (ops, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let result = run_fence_command(&command, FENCE_COMMAND_TIMEOUT).await;
            let (oob, message) = match &result {
                Ok(()) => (
                    OobFence::Succeeded,
                    "out-of-band fence succeeded".to_string(),
                ),
                Err(e) => (
                    OobFence::Failed(e.to_string()),
                    format!("out-of-band fence failed: {e}"),
                ),
            };
            ops.ha.lock_watches().entry(id.clone()).or_default().oob = oob;
            let state = ops.ha.watch(&id).state;
            ops.ha.event(&id, state, message).await;
        });
    }

    /// Records a failover for the host's HA VMs. Only VMs its agent was
    /// told to protect (and so fences) move, unless an out-of-band fence
    /// powered the host off.
    async fn open_failover(
        &self,
        h: &HostView,
        state: HostState,
        reason: &str,
        last_heartbeat: Instant,
    ) {
        let id = &h.host.id;
        self.ha
            .lock_watches()
            .entry(id.clone())
            .or_default()
            .failover_opened = true;
        let already = self
            .ha
            .failovers
            .all()
            .into_iter()
            .any(|f| f.source_id == *id && f.state == FailoverState::Running);
        if already {
            return; // a failover resumed after a restart covers it
        }
        let told = self.ha.told_to_protect.get(id).unwrap_or_default();
        let oob = self.ha.watch(id).oob == OobFence::Succeeded;
        let mut vms: Vec<VmMove> = self
            .ha_vms_by_host()
            .remove(id)
            .unwrap_or_default()
            .into_iter()
            .filter(|(v, _)| oob || told.contains(&v.info.uuid))
            .map(|(v, ha)| VmMove {
                uuid: v.info.uuid,
                name: v.info.name,
                priority: ha.priority,
                method: ha.method,
                memory_mib: v.info.memory_mib,
                anti_affinity_group: ha.anti_affinity_group,
                prior_state: v.info.power_state,
                config: v.info.config,
                destination: None,
                state: MoveState::Pending,
                error: None,
                attempts: 0,
            })
            .collect();
        if vms.is_empty() {
            return;
        }
        start_order(&mut vms);
        let silent_ms = last_heartbeat.elapsed().as_millis() as u64;
        let now_ms = crate::clock::unix_now_ms();
        let mut f = Failover {
            id: format!("fo-{now_ms}-{}", &id[..id.len().min(8)]),
            kind: FailoverKind::Host,
            source_id: id.clone(),
            source_name: h.host.name.clone(),
            last_seen_ms: now_ms.saturating_sub(silent_ms),
            state: FailoverState::Running,
            reason: reason.to_string(),
            steps: Vec::new(),
            vms,
        };
        let detected_after = timing(&self.ha.cluster()).interval * self.ha.cluster().misses;
        f.steps.push(crate::ha::failover::Step {
            at_ms: f.last_seen_ms + detected_after.as_millis() as u64,
            what: "detected: heartbeats missed".into(),
        });
        f.step(format!("{}: {reason}", state.as_str()));
        if let Err(e) = self.ha.save_failover(&f).await {
            tracing::error!("cannot record failover: {e}");
            return;
        }
        let message = format!("failover {} opened for {} VM(s)", f.id, f.vms.len());
        self.ha.event(id, state, message).await;
        let _ = self
            .audit
            .record(
                &ha_engine(),
                "failover",
                &format!("host {}", h.host.name),
                &Ok(()),
            )
            .await;
    }
}

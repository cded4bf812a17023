//! Hosts and VMs: the in-memory picture every page and API call reads, backed
//! by the store. An agent's inventory report replaces what the controller knew
//! of that host; only records that changed are written.
//!
//! Writes are queued to the store while the inventory lock is held, so the
//! commit order always matches the order of in-memory updates.

pub mod categories;

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use lifeboat_proto::{HostFacts, PowerState, VmInfo};
use serde::{Deserialize, Serialize};

use crate::clock::unix_now;
use crate::store::{Store, StoreError, Table, Write};

/// A host whose agent has not sent a heartbeat for this long counts as offline
/// even if its connection has not yet been torn down.
pub const HEARTBEAT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    pub name: String,
    pub cert_fingerprint: String,
    pub enrolled_at: u64,
    pub last_seen: u64,
    pub agent_version: String,
    pub facts: HostFacts,
    /// The IP address its agent last connected from.
    #[serde(default)]
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vm {
    pub host_id: String,
    pub updated_at: u64,
    pub info: VmInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    Online,
    Offline,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Online => "online",
            HostStatus::Offline => "offline",
        }
    }
}

/// A host as shown to callers: the record plus its live status.
#[derive(Debug, Clone)]
pub struct HostView {
    pub host: Host,
    pub status: HostStatus,
    pub vm_count: usize,
}

struct Liveness {
    connection: u64,
    last_heartbeat: Instant,
}

#[derive(Default)]
struct Data {
    hosts: BTreeMap<String, Host>,
    vms: HashMap<String, Vm>,
    live: HashMap<String, Liveness>,
    /// The last heartbeat of each host, kept after it disconnects.
    last_heard: HashMap<String, Instant>,
    /// (host, VM) reports of a stopped copy of a VM that runs elsewhere.
    stale_copies: Vec<(String, String)>,
}

pub struct Inventory {
    store: Store,
    data: RwLock<Data>,
}

impl Inventory {
    pub fn load(store: Store) -> Result<Inventory, StoreError> {
        let hosts = store.load::<Host>(Table::Hosts)?.into_iter().collect();
        let vms = store.load::<Vm>(Table::Vms)?.into_iter().collect();
        Ok(Inventory {
            store,
            data: RwLock::new(Data {
                hosts,
                vms,
                ..Data::default()
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Data> {
        self.data.read().expect("inventory lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Data> {
        self.data.write().expect("inventory lock")
    }

    pub async fn add_host(&self, host: Host) -> Result<(), StoreError> {
        let ack = {
            let mut d = self.write();
            let ack = self
                .store
                .enqueue(vec![Write::put(Table::Hosts, host.id.clone(), &host)])?;
            d.hosts.insert(host.id.clone(), host);
            ack
        };
        ack.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::CommitFailed)
    }

    pub fn host_by_fingerprint(&self, fingerprint: &str) -> Option<Host> {
        self.read()
            .hosts
            .values()
            .find(|h| h.cert_fingerprint == fingerprint)
            .cloned()
    }

    fn status(d: &Data, id: &str) -> HostStatus {
        match d.live.get(id) {
            Some(l) if l.last_heartbeat.elapsed() < HEARTBEAT_GRACE => HostStatus::Online,
            _ => HostStatus::Offline,
        }
    }

    pub fn host_status(&self, id: &str) -> HostStatus {
        Self::status(&self.read(), id)
    }

    pub fn hosts(&self) -> Vec<HostView> {
        let d = self.read();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for vm in d.vms.values() {
            *counts.entry(vm.host_id.as_str()).or_default() += 1;
        }
        d.hosts
            .values()
            .map(|h| HostView {
                host: h.clone(),
                status: Self::status(&d, &h.id),
                vm_count: counts.get(h.id.as_str()).copied().unwrap_or(0),
            })
            .collect()
    }

    pub fn host(&self, id: &str) -> Option<HostView> {
        let d = self.read();
        let host = d.hosts.get(id)?.clone();
        let vm_count = d.vms.values().filter(|v| v.host_id == id).count();
        Some(HostView {
            status: Self::status(&d, id),
            host,
            vm_count,
        })
    }

    pub fn host_name(&self, id: &str) -> String {
        self.read()
            .hosts
            .get(id)
            .map(|h| h.name.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// Marks a host connected (a new connection generation) and stores its facts.
    pub async fn host_connected(
        &self,
        id: &str,
        connection: u64,
        agent_version: String,
        facts: HostFacts,
        address: std::net::IpAddr,
    ) -> Result<(), StoreError> {
        let ack = {
            let mut d = self.write();
            d.last_heard.insert(id.to_string(), Instant::now());
            d.live.insert(
                id.to_string(),
                Liveness {
                    connection,
                    last_heartbeat: Instant::now(),
                },
            );
            let Some(host) = d.hosts.get_mut(id) else {
                return Ok(());
            };
            host.agent_version = agent_version;
            host.facts = facts;
            host.address = address.to_string();
            host.last_seen = unix_now();
            let w = Write::put(Table::Hosts, id, &*host);
            self.store.enqueue(vec![w])?
        };
        ack.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::CommitFailed)
    }

    /// Records a heartbeat. Kept in memory only: liveness is not history.
    pub fn heartbeat(&self, id: &str, connection: u64, memory_free_bytes: u64) {
        let mut d = self.write();
        let now = Instant::now();
        if let Some(l) = d.live.get_mut(id) {
            if l.connection == connection {
                l.last_heartbeat = now;
                d.last_heard.insert(id.to_string(), now);
            }
        }
        if let Some(h) = d.hosts.get_mut(id) {
            h.facts.memory_free_bytes = memory_free_bytes;
        }
    }

    /// Marks a host disconnected, unless a newer connection already replaced this one.
    pub fn host_disconnected(&self, id: &str, connection: u64) {
        let mut d = self.write();
        if d.live.get(id).is_some_and(|l| l.connection == connection) {
            d.live.remove(id);
            if let Some(h) = d.hosts.get_mut(id) {
                h.last_seen = unix_now();
                let w = Write::put(Table::Hosts, id, &*h);
                let _ = self.store.enqueue(vec![w]);
            }
        }
    }

    /// Replaces everything known about a host's VMs with its agent's report.
    /// Returns how many records changed.
    pub async fn replace_host_vms(
        &self,
        host_id: &str,
        vms: Vec<VmInfo>,
    ) -> Result<usize, StoreError> {
        let now = unix_now();
        let ack = {
            let mut d = self.write();
            let mut writes = Vec::new();
            let reported: std::collections::HashSet<&str> =
                vms.iter().map(|v| v.uuid.as_str()).collect();
            let gone: Vec<String> = d
                .vms
                .iter()
                .filter(|(uuid, vm)| vm.host_id == host_id && !reported.contains(uuid.as_str()))
                .map(|(uuid, _)| uuid.clone())
                .collect();
            for uuid in gone {
                d.vms.remove(&uuid);
                writes.push(Write::delete(Table::Vms, uuid));
            }
            for info in vms {
                // A stopped copy on a host that came back after its VMs
                // failed over must not take the record of the running VM.
                let runs_elsewhere = d.vms.get(&info.uuid).is_some_and(|old| {
                    old.host_id != host_id
                        && matches!(
                            old.info.power_state,
                            PowerState::Running | PowerState::Paused
                        )
                        && !matches!(info.power_state, PowerState::Running | PowerState::Paused)
                });
                if runs_elsewhere {
                    let copy = (host_id.to_string(), info.uuid.clone());
                    if !d.stale_copies.contains(&copy) {
                        d.stale_copies.push(copy);
                    }
                    continue;
                }
                // A VM now running here that was recorded on another host
                // has moved (failover, restore): the copy there is stale.
                let moved_from = d
                    .vms
                    .get(&info.uuid)
                    .filter(|old| old.host_id != host_id)
                    .filter(|_| {
                        matches!(info.power_state, PowerState::Running | PowerState::Paused)
                    })
                    .map(|old| old.host_id.clone());
                if let Some(old_host) = moved_from {
                    let copy = (old_host, info.uuid.clone());
                    if !d.stale_copies.contains(&copy) {
                        d.stale_copies.push(copy);
                    }
                }
                let unchanged = d
                    .vms
                    .get(&info.uuid)
                    .is_some_and(|old| old.host_id == host_id && old.info == info);
                if unchanged {
                    continue;
                }
                let vm = Vm {
                    host_id: host_id.to_string(),
                    updated_at: now,
                    info,
                };
                writes.push(Write::put(Table::Vms, vm.info.uuid.clone(), &vm));
                d.vms.insert(vm.info.uuid.clone(), vm);
            }
            if writes.is_empty() {
                return Ok(0);
            }
            let n = writes.len();
            (self.store.enqueue(writes)?, n)
        };
        ack.0
            .await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::CommitFailed)?;
        Ok(ack.1)
    }

    /// When the host's agent was last heard in this controller's life.
    pub fn last_heard(&self, id: &str) -> Option<Instant> {
        self.read().last_heard.get(id).copied()
    }

    /// Stopped copies of VMs that run on another host, reported since the
    /// last call, as (host id, VM UUID).
    pub fn take_stale_copies(&self) -> Vec<(String, String)> {
        std::mem::take(&mut self.write().stale_copies)
    }

    pub fn vm(&self, uuid: &str) -> Option<Vm> {
        self.read().vms.get(uuid).cloned()
    }

    /// Calls `f` with every VM while holding the read lock; used by listings
    /// that filter and page without cloning 25,000 records.
    pub fn with_vms<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &Vm>) -> R) -> R {
        let d = self.read();
        let mut it = d.vms.values();
        f(&mut it)
    }

    /// VM counts per power state, in [`PowerState::ALL`] order, for the dashboard.
    pub fn power_state_counts(&self) -> Vec<(&'static str, usize)> {
        let d = self.read();
        let mut counts = [0usize; PowerState::ALL.len()];
        for vm in d.vms.values() {
            if let Some(i) = PowerState::ALL
                .iter()
                .position(|s| *s == vm.info.power_state)
            {
                counts[i] += 1;
            }
        }
        PowerState::ALL
            .iter()
            .map(|s| s.as_str())
            .zip(counts)
            .collect()
    }
}

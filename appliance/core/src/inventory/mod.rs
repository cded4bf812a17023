//! Hosts and VMs: the in-memory picture every page and API call reads, backed
//! by the store. An agent's inventory report replaces what the controller knew
//! of that host; only records that changed are written.
//!
//! Writes are queued to the store while the inventory lock is held, so the
//! commit order always matches the order of in-memory updates. VM UUIDs are
//! kept in one canonical form (lower-case), whatever an agent sends.

pub mod categories;
pub mod claims;
pub mod definition;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lifeboat_proto::{HostFacts, PowerState, VmInfo};
use serde::{Deserialize, Serialize};

use crate::clock::unix_now;
use crate::store::{Store, StoreError, Table, Write};
use claims::Claim;

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
    /// Shared with the inventory: listing hosts copies no record.
    pub host: Arc<Host>,
    pub status: HostStatus,
    pub vm_count: usize,
}

struct Liveness {
    connection: u64,
    last_heartbeat: Instant,
}

#[derive(Default)]
struct Data {
    hosts: BTreeMap<String, Arc<Host>>,
    /// Changed only through `put_vm` and `remove_vm`, which keep `by_host`.
    vms: HashMap<String, Vm>,
    /// Each host's VM UUIDs: counts and a host's report without a pass
    /// over every VM (26,000 of them at 2,000 hosts).
    by_host: HashMap<String, HashSet<String>>,
    live: HashMap<String, Liveness>,
    /// The last heartbeat of each host, kept after it disconnects.
    last_heard: HashMap<String, Instant>,
    /// (host, VM) reports of a stopped copy of a VM that runs elsewhere.
    stale_copies: Vec<(String, String)>,
    /// VMs the controller is putting on a host: UUID → (host, since when).
    expected: HashMap<String, (String, Instant)>,
    /// Claims refused because another host owns the VM: UUID → (claimant,
    /// what it reported), adopted if the owner stops reporting the VM.
    refused: HashMap<String, (String, VmInfo)>,
    /// Refusals not yet taken by [`Inventory::take_refused_claims`].
    refused_claims: Vec<RefusedClaim>,
}

/// How long a move the controller started (a restore can take hours) makes
/// the destination's report of that VM believable.
const EXPECTED_MOVE_TTL: Duration = Duration::from_secs(24 * 3600);

/// A host's report that claimed a VM another host owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedClaim {
    pub claimant: String,
    pub owner: String,
    pub uuid: String,
    pub name: String,
}

impl Data {
    fn put_vm(&mut self, uuid: String, vm: Vm) {
        self.by_host
            .entry(vm.host_id.clone())
            .or_default()
            .insert(uuid.clone());
        if let Some(old) = self.vms.insert(uuid.clone(), vm) {
            if old.host_id != self.vms[&uuid].host_id {
                self.unindex(&old.host_id, &uuid);
            }
        }
    }

    fn remove_vm(&mut self, uuid: &str) {
        if let Some(old) = self.vms.remove(uuid) {
            self.unindex(&old.host_id, uuid);
        }
    }

    fn unindex(&mut self, host_id: &str, uuid: &str) {
        if let Some(set) = self.by_host.get_mut(host_id) {
            set.remove(uuid);
            if set.is_empty() {
                self.by_host.remove(host_id);
            }
        }
    }

    fn vm_count(&self, host_id: &str) -> usize {
        self.by_host.get(host_id).map_or(0, HashSet::len)
    }
}

fn push_once<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

pub struct Inventory {
    store: Store,
    data: RwLock<Data>,
}

impl Inventory {
    pub fn load(store: Store) -> Result<Inventory, StoreError> {
        let hosts = store
            .load::<Host>(Table::Hosts)?
            .into_iter()
            .map(|(id, h)| (id, Arc::new(h)))
            .collect();
        let mut data = Data {
            hosts,
            ..Data::default()
        };
        for (uuid, vm) in store.load::<Vm>(Table::Vms)? {
            data.put_vm(uuid, vm);
        }
        Ok(Inventory {
            store,
            data: RwLock::new(data),
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
            d.hosts.insert(host.id.clone(), Arc::new(host));
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
            .map(|h| Host::clone(h))
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
        d.hosts
            .values()
            .map(|h| HostView {
                host: h.clone(),
                status: Self::status(&d, &h.id),
                vm_count: d.vm_count(&h.id),
            })
            .collect()
    }

    /// (online, all) hosts, without listing them.
    pub fn host_counts(&self) -> (usize, usize) {
        let d = self.read();
        let online = d
            .hosts
            .keys()
            .filter(|id| Self::status(&d, id) == HostStatus::Online)
            .count();
        (online, d.hosts.len())
    }

    pub fn host(&self, id: &str) -> Option<HostView> {
        let d = self.read();
        let host = d.hosts.get(id)?.clone();
        let vm_count = d.vm_count(id);
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
            let Some(host) = d.hosts.get_mut(id).map(Arc::make_mut) else {
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
        if let Some(h) = d.hosts.get_mut(id).map(Arc::make_mut) {
            h.facts.memory_free_bytes = memory_free_bytes;
        }
    }

    /// Marks a host disconnected, unless a newer connection already
    /// replaced this one; true if it did.
    pub fn host_disconnected(&self, id: &str, connection: u64) -> bool {
        let mut d = self.write();
        let current = d.live.get(id).is_some_and(|l| l.connection == connection);
        if current {
            d.live.remove(id);
            if let Some(h) = d.hosts.get_mut(id).map(Arc::make_mut) {
                h.last_seen = unix_now();
                let w = Write::put(Table::Hosts, id, &*h);
                let _ = self.store.enqueue(vec![w]);
            }
        }
        current
    }

    /// Replaces everything known about a host's VMs with its agent's report,
    /// believing it only about that host (see [`claims`]): a VM another
    /// host owns is refused (kept in [`Inventory::take_refused_claims`],
    /// and adopted if its owner later stops reporting it). Returns how many
    /// records changed.
    pub async fn replace_host_vms(
        &self,
        host_id: &str,
        vms: Vec<VmInfo>,
    ) -> Result<usize, StoreError> {
        let now = unix_now();
        let ack = {
            let mut d = self.write();
            let d = &mut *d;
            let mut writes = Vec::new();
            let mut report = HashMap::new();
            for mut info in vms {
                match claims::canonical_uuid(&info.uuid) {
                    Some(uuid) => {
                        info.uuid = uuid;
                        report.insert(info.uuid.clone(), info);
                    }
                    None => tracing::warn!(host_id, uuid = info.uuid, "report: not a VM UUID"),
                }
            }
            d.expected
                .retain(|_, (_, since)| since.elapsed() < EXPECTED_MOVE_TTL);
            let earlier_refusals: Vec<String> = d
                .refused
                .iter()
                .filter(|(_, (claimant, _))| claimant == host_id)
                .map(|(uuid, _)| uuid.clone())
                .collect();
            for uuid in &earlier_refusals {
                d.refused.remove(uuid);
            }
            let gone: Vec<String> = d
                .by_host
                .get(host_id)
                .into_iter()
                .flatten()
                .filter(|uuid| !report.contains_key(uuid.as_str()))
                .cloned()
                .collect();
            for uuid in gone {
                d.remove_vm(&uuid);
                writes.push(Write::delete(Table::Vms, uuid.clone()));
                // A claim refused while this host owned the VM stands now.
                if let Some((claimant, info)) = d.refused.remove(&uuid) {
                    let vm = Vm {
                        host_id: claimant,
                        updated_at: now,
                        info,
                    };
                    writes.push(Write::put(Table::Vms, uuid.clone(), &vm));
                    d.put_vm(uuid, vm);
                }
            }
            for (uuid, info) in report {
                let expected = d.expected.get(&uuid).is_some_and(|(h, _)| h == host_id);
                match claims::decide(d.vms.get(&uuid), host_id, &info, expected) {
                    Claim::Accept => {}
                    Claim::Moved { from } => {
                        d.expected.remove(&uuid);
                        push_once(&mut d.stale_copies, (from, uuid.clone()));
                    }
                    Claim::StaleCopy => {
                        push_once(&mut d.stale_copies, (host_id.to_string(), uuid));
                        continue;
                    }
                    Claim::Ignore => continue,
                    Claim::Refuse { owner } => {
                        if !earlier_refusals.contains(&uuid) {
                            d.refused_claims.push(RefusedClaim {
                                claimant: host_id.to_string(),
                                owner,
                                uuid: uuid.clone(),
                                name: info.name.clone(),
                            });
                        }
                        d.refused.insert(uuid, (host_id.to_string(), info));
                        continue;
                    }
                }
                let unchanged = d
                    .vms
                    .get(&uuid)
                    .is_some_and(|old| old.host_id == host_id && old.info == info);
                if unchanged {
                    continue;
                }
                let vm = Vm {
                    host_id: host_id.to_string(),
                    updated_at: now,
                    info,
                };
                writes.push(Write::put(Table::Vms, uuid.clone(), &vm));
                d.put_vm(uuid, vm);
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

    /// The controller is about to put VM `uuid` on host `host_id` (a
    /// failover, a restore): that host's report of it will be believed.
    pub fn expect_move(&self, uuid: &str, host_id: &str) {
        if let Some(uuid) = claims::canonical_uuid(uuid) {
            self.write()
                .expected
                .insert(uuid, (host_id.to_string(), Instant::now()));
        }
    }

    /// Reports refused since the last call: a host claiming another's VM.
    pub fn take_refused_claims(&self) -> Vec<RefusedClaim> {
        std::mem::take(&mut self.write().refused_claims)
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

    /// A VM by UUID, in any letter case.
    pub fn vm(&self, uuid: &str) -> Option<Vm> {
        let d = self.read();
        d.vms
            .get(uuid)
            .or_else(|| d.vms.get(&uuid.to_ascii_lowercase()))
            .cloned()
    }

    /// Whether host `host_id` owns VM `uuid` (without cloning the record).
    pub fn owns(&self, host_id: &str, uuid: &str) -> bool {
        self.read()
            .vms
            .get(uuid)
            .is_some_and(|v| v.host_id == host_id)
    }

    /// Calls `f` with every VM while holding the read lock; used by listings
    /// that filter and page without cloning 25,000 records.
    pub fn with_vms<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &Vm>) -> R) -> R {
        let d = self.read();
        let mut it = d.vms.values();
        f(&mut it)
    }

    /// Like [`Inventory::with_vms`], for one host's VMs only (no pass over
    /// the others).
    pub fn with_host_vms<R>(
        &self,
        host_id: &str,
        f: impl FnOnce(&mut dyn Iterator<Item = &Vm>) -> R,
    ) -> R {
        let d = self.read();
        let mut it = d
            .by_host
            .get(host_id)
            .into_iter()
            .flatten()
            .filter_map(|uuid| d.vms.get(uuid));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(i: usize) -> VmInfo {
        VmInfo {
            uuid: format!("00000000-0000-0000-0000-{i:012}"),
            name: format!("vm-{i}"),
            power_state: PowerState::Running,
            vcpus: 1,
            memory_mib: 256,
            disks: vec![],
            nics: vec![],
            config: String::new(),
        }
    }

    fn counts(inv: &Inventory) -> Vec<(String, usize, usize)> {
        inv.hosts()
            .into_iter()
            .map(|h| {
                let listed = inv.with_host_vms(&h.host.id, |vms| vms.count());
                (h.host.id.clone(), h.vm_count, listed)
            })
            .collect()
    }

    #[tokio::test]
    async fn per_host_vm_counts_follow_reports_and_restarts() {
        let dir = std::env::temp_dir().join(format!("lifeboat-inv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inv.redb");
        {
            let inv = Inventory::load(Store::open(&path).unwrap()).unwrap();
            for h in ["h1", "h2"] {
                inv.add_host(Host {
                    id: h.into(),
                    name: h.into(),
                    cert_fingerprint: h.into(),
                    enrolled_at: 0,
                    last_seen: 0,
                    agent_version: String::new(),
                    facts: Default::default(),
                    address: String::new(),
                })
                .await
                .unwrap();
            }
            inv.replace_host_vms("h1", (0..3).map(vm).collect())
                .await
                .unwrap();
            // h2 claims h1's VM 2: refused while h1 reports it.
            inv.replace_host_vms("h2", vec![vm(2), vm(3)])
                .await
                .unwrap();
            assert_eq!(counts(&inv), [("h1".into(), 3, 3), ("h2".into(), 1, 1)]);
            // h1 stops reporting VMs 1 and 2: 1 is gone, h2's claim on 2 stands.
            inv.replace_host_vms("h1", vec![vm(0)]).await.unwrap();
            assert_eq!(counts(&inv), [("h1".into(), 1, 1), ("h2".into(), 2, 2)]);
        }
        let inv = Inventory::load(Store::open(&path).unwrap()).unwrap();
        assert_eq!(counts(&inv), [("h1".into(), 1, 1), ("h2".into(), 2, 2)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

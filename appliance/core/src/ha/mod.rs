//! High availability: settings (cluster, host, VM), failure detection,
//! fencing, placement and the failover records; physical machines with
//! standby VMs. The decisions are pure functions (`detect`, `placement`,
//! `remap`); the engine that drives them runs in `ops::ha_engine`.
//!
//! Guarantee: a host's VMs start elsewhere only once `detect::assess` says
//! the host failed or was fenced, and every step is recorded before it is
//! taken, so no VM runs on two hosts at once.

pub mod detect;
pub mod failover;
pub mod physical;
pub mod placement;
pub mod probe;
pub mod remap;
pub mod settings;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::store::book::Book;
use crate::store::{Store, StoreError, Table};
use detect::HostState;
use failover::Failover;
use physical::PhysicalMachine;
use settings::{ClusterHa, HostHa, VmHa};

const CLUSTER_KEY: &str = "cluster";
/// Host history kept per controller; older events are dropped.
const MAX_EVENTS: usize = 20_000;

/// One entry of a host's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostEvent {
    pub at_ms: u64,
    pub host_id: String,
    pub state: String,
    pub message: String,
}

/// What the engine knows of a host right now (memory only: after a
/// restart, detection starts again from the controller's start).
#[derive(Debug, Clone)]
pub struct HostWatch {
    pub state: HostState,
    pub reason: &'static str,
    pub probe_failures: u32,
    pub storage_seq: Option<u64>,
    pub storage_changed: Option<Instant>,
    pub storage_fenced: bool,
    pub vm_answers: bool,
    pub oob: OobFence,
    /// A failover was opened in this outage (one per outage).
    pub failover_opened: bool,
    /// The connection the HA configuration was last sent on, and what.
    pub config_sent: Option<(u64, lifeboat_proto::HaAgentConfig)>,
}

impl Default for HostWatch {
    fn default() -> Self {
        HostWatch {
            state: HostState::Ok,
            reason: "",
            probe_failures: 0,
            storage_seq: None,
            storage_changed: None,
            storage_fenced: false,
            vm_answers: false,
            oob: OobFence::NotTried,
            failover_opened: false,
            config_sent: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OobFence {
    NotTried,
    Running,
    Succeeded,
    Failed(String),
}

pub struct Ha {
    cluster: Book<ClusterHa>,
    pub hosts: Book<HostHa>,
    pub vms: Book<VmHa>,
    pub failovers: Book<Failover>,
    pub physical: Book<PhysicalMachine>,
    /// Per host: the UUIDs the agent was last told to protect (and fence).
    pub told_to_protect: Book<Vec<String>>,
    /// Per host: the storage-heartbeat epoch its agent was last given, so a
    /// restarted controller still knows which heartbeats are current.
    pub epochs: Book<u64>,
    events: Book<HostEvent>,
    pub watches: Mutex<HashMap<String, HostWatch>>,
    /// Detection counts silence from here for hosts not heard since.
    pub started: Instant,
    event_seq: std::sync::atomic::AtomicU64,
    /// Random per controller start: with the connection number it makes
    /// each connection's storage-heartbeat epoch unique across restarts.
    epoch_base: u64,
    sink: crate::alerts::Sink,
}

impl Ha {
    pub fn load(store: Store, sink: crate::alerts::Sink) -> Result<Ha, StoreError> {
        Ok(Ha {
            cluster: Book::load(store.clone(), Table::HaSettings)?,
            hosts: Book::load(store.clone(), Table::HostHa)?,
            vms: Book::load(store.clone(), Table::VmHa)?,
            failovers: Book::load(store.clone(), Table::Failovers)?,
            physical: Book::load(store.clone(), Table::PhysicalMachines)?,
            told_to_protect: Book::load(store.clone(), Table::HaProtected)?,
            epochs: Book::load(store.clone(), Table::HaEpochs)?,
            events: Book::load(store, Table::HaEvents)?,
            watches: Mutex::new(HashMap::new()),
            started: Instant::now(),
            event_seq: std::sync::atomic::AtomicU64::new(0),
            epoch_base: rand::random::<u64>() & !0xffff_ffff,
            sink,
        })
    }

    /// Heartbeats arrive: what the storage heartbeat said in the last
    /// outage is no baseline for the next.
    pub fn forget_storage_heartbeat(&self, host_id: &str) {
        if let Some(w) = self.lock_watches().get_mut(host_id) {
            w.storage_seq = None;
            w.storage_changed = None;
            w.storage_fenced = false;
        }
    }

    /// The storage-heartbeat epoch of agent connection `connection`.
    pub fn epoch(&self, connection: u64) -> u64 {
        self.epoch_base | (connection & 0xffff_ffff)
    }

    pub fn cluster(&self) -> ClusterHa {
        self.cluster.get(CLUSTER_KEY).unwrap_or_default()
    }

    pub async fn set_cluster(&self, settings: ClusterHa) -> Result<(), StoreError> {
        self.cluster.put(CLUSTER_KEY, settings).await
    }

    pub fn host(&self, host_id: &str) -> HostHa {
        self.hosts.get(host_id).unwrap_or_default()
    }

    pub fn vm(&self, uuid: &str) -> VmHa {
        self.vms.get(uuid).unwrap_or_default()
    }

    pub fn watch(&self, host_id: &str) -> HostWatch {
        self.lock_watches()
            .get(host_id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn lock_watches(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostWatch>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends to a host's history (and the log).
    pub async fn event(&self, host_id: &str, state: HostState, message: String) {
        tracing::info!(host = host_id, state = state.as_str(), "{message}");
        use crate::alerts::EventKind;
        let kind = match state {
            HostState::Ok => EventKind::HostRecovered,
            HostState::Suspect | HostState::Partitioned => EventKind::HostSuspect,
            HostState::Failed | HostState::Fenced => EventKind::HostFailed,
        };
        self.sink.raise(crate::alerts::Event::new(
            kind,
            crate::alerts::Subject {
                kind: "host".into(),
                id: host_id.to_string(),
                name: String::new(),
                vm: None,
            },
            format!("{}: {message}", state.as_str()),
        ));
        let at_ms = crate::clock::unix_now_ms();
        let n = self
            .event_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("{at_ms:016}-{n:06}");
        let event = HostEvent {
            at_ms,
            host_id: host_id.to_string(),
            state: state.as_str().to_string(),
            message,
        };
        if let Err(e) = self.events.put(&key, event).await {
            tracing::error!("cannot record a host event: {e}");
        }
        let excess = self.events.len().saturating_sub(MAX_EVENTS);
        for key in self.events.first_keys(excess) {
            let _ = self.events.delete(&key).await;
        }
    }

    /// Stores a failover; its start and its end (done, or incomplete) are
    /// events.
    pub async fn save_failover(&self, f: &Failover) -> Result<(), StoreError> {
        use crate::alerts::EventKind;
        use failover::FailoverState;
        let before = self.failovers.get(&f.id).map(|old| old.state);
        self.failovers.put(&f.id, f.clone()).await?;
        let kind = match (before, f.state) {
            (None, FailoverState::Running) => EventKind::FailoverStarted,
            (Some(FailoverState::Running) | None, FailoverState::Done) => {
                EventKind::FailoverFinished
            }
            (Some(FailoverState::Running) | None, FailoverState::Incomplete) => {
                EventKind::FailoverFailed
            }
            _ => return Ok(()),
        };
        let moved = f.vms.len();
        self.sink.raise(crate::alerts::Event::new(
            kind,
            crate::alerts::Subject {
                kind: "host".into(),
                id: f.source_id.clone(),
                name: f.source_name.clone(),
                vm: None,
            },
            format!("failover {} of {moved} VM(s): {}", f.id, kind.as_str()),
        ));
        Ok(())
    }

    /// A host's history, newest first.
    pub fn history(&self, host_id: Option<&str>, limit: usize) -> Vec<HostEvent> {
        let mut events: Vec<HostEvent> = self
            .events
            .all()
            .into_iter()
            .filter(|e| host_id.is_none_or(|h| e.host_id == h))
            .collect();
        events.reverse();
        events.truncate(limit);
        events
    }

    /// Failovers, newest first.
    pub fn failover_list(&self) -> Vec<Failover> {
        let mut all = self.failovers.all();
        all.sort_by_key(|f| std::cmp::Reverse(f.started_at_ms()));
        all
    }
}

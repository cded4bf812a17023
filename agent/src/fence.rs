//! Self-fencing. When the controller has been silent for longer than the
//! fence timeout and this host cannot prove it is merely cut off from the
//! controller (isolation addresses unreachable, or the storage heartbeat not
//! being written), the agent hard-stops its HA-protected VMs. The controller
//! restarts them elsewhere only after that timeout plus a margin, so a VM
//! never runs on two hosts at once.
//!
//! Runs on plain threads, away from the async runtime, and writes the
//! storage heartbeat (`<dir>/<host id>.json`) every second.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lifeboat_proto::{FenceRecord, HaAgentConfig, StorageHeartbeat};

use crate::hypervisor::Hypervisor;

const CONFIG_FILE: &str = "ha.json";
const TICK: Duration = Duration::from_millis(100);
const STORAGE_BEAT: Duration = Duration::from_secs(1);
/// How long an isolation address may take to answer (or refuse).
const ISOLATION_PROBE: Duration = Duration::from_millis(300);
/// Heartbeats remembered for matching acknowledgements.
const SENT_WINDOW: usize = 64;

pub struct FenceWatchdog {
    state: Mutex<State>,
    state_dir: PathBuf,
    host_id: String,
}

struct State {
    config: HaAgentConfig,
    /// When the newest heartbeat the controller acknowledged was sent.
    last_round_trip: Instant,
    sent: VecDeque<(u64, Instant)>,
    /// Heartbeat numbers, unique across sessions: an acknowledgement from
    /// an old session must never match a new heartbeat.
    next_heartbeat: u64,
    /// Storage heartbeat numbers.
    storage_seq: u64,
    /// Counts the outages; a fence belongs to one.
    outage: u64,
    in_outage: bool,
    fenced: Option<FenceRecord>,
    /// A fence to report once the link is back.
    unreported: Option<FenceRecord>,
    /// The last time every heartbeat directory took a write.
    storage_ok: Option<Instant>,
}

impl FenceWatchdog {
    /// Loads the last HA configuration from the state directory and starts
    /// the watchdog and storage-heartbeat threads. Until the controller
    /// answers, the silence counts from now: an agent restarted while cut
    /// off still fences.
    pub fn start(
        state_dir: &Path,
        host_id: &str,
        driver: Arc<dyn Hypervisor>,
    ) -> Arc<FenceWatchdog> {
        let watchdog = Arc::new(FenceWatchdog::new(state_dir, host_id));
        let w = watchdog.clone();
        std::thread::Builder::new()
            .name("fence-watchdog".into())
            .spawn(move || loop {
                w.check(driver.as_ref());
                std::thread::sleep(TICK);
            })
            .expect("spawn the fence watchdog");
        let w = watchdog.clone();
        std::thread::Builder::new()
            .name("storage-heartbeat".into())
            .spawn(move || loop {
                w.write_storage_heartbeat();
                std::thread::sleep(STORAGE_BEAT);
            })
            .expect("spawn the storage heartbeat");
        watchdog
    }

    fn new(state_dir: &Path, host_id: &str) -> FenceWatchdog {
        let config = std::fs::read(state_dir.join(CONFIG_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        FenceWatchdog {
            state: Mutex::new(State {
                config,
                last_round_trip: Instant::now(),
                sent: VecDeque::new(),
                next_heartbeat: 0,
                storage_seq: 0,
                outage: 0,
                in_outage: false,
                fenced: None,
                unreported: None,
                storage_ok: None,
            }),
            state_dir: state_dir.to_path_buf(),
            host_id: host_id.to_string(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers and records a heartbeat about to be sent.
    pub fn heartbeat_sent(&self) -> u64 {
        let mut s = self.lock();
        if s.sent.len() == SENT_WINDOW {
            s.sent.pop_front();
        }
        s.next_heartbeat += 1;
        let seq = s.next_heartbeat;
        s.sent.push_back((seq, Instant::now()));
        seq
    }

    /// The controller heard heartbeat `seq`: the silence counts from when
    /// it was sent, never from when the answer came (the controller's clock
    /// for this host started no earlier than that).
    pub fn heartbeat_acked(&self, seq: u64) {
        let mut s = self.lock();
        let Some(&(_, sent_at)) = s.sent.iter().find(|(n, _)| *n == seq) else {
            return;
        };
        if sent_at > s.last_round_trip {
            s.last_round_trip = sent_at;
        }
        if s.in_outage {
            s.in_outage = false;
            if let Some(record) = s.fenced.take() {
                s.unreported = Some(record);
            }
        }
    }

    /// How often to send heartbeats: as the controller says, else the default.
    /// The storage-heartbeat epoch of the configuration held now.
    pub fn epoch(&self) -> u64 {
        self.lock().config.epoch
    }

    pub fn heartbeat_interval(&self) -> Duration {
        match self.lock().config.heartbeat_interval_ms {
            0 => Duration::from_millis(lifeboat_proto::HEARTBEAT_INTERVAL_MS),
            ms => Duration::from_millis(ms.clamp(100, 60_000)),
        }
    }

    /// A fence the controller has not heard of yet, once.
    pub fn take_unreported(&self) -> Option<FenceRecord> {
        self.lock().unreported.take()
    }

    pub fn set_config(&self, config: HaAgentConfig) {
        let mut s = self.lock();
        if s.config == config {
            return;
        }
        if let Err(e) = save_atomically(&self.state_dir.join(CONFIG_FILE), &config) {
            tracing::warn!("cannot keep the HA configuration on disk: {e}");
        }
        tracing::info!(
            protected = config.protected.len(),
            fence_timeout_ms = config.fence_timeout_ms,
            "HA configuration received"
        );
        s.config = config;
    }

    fn check(&self, driver: &dyn Hypervisor) {
        let (config, silent, storage_ok, outage) = {
            let mut s = self.lock();
            let silent = s.last_round_trip.elapsed();
            if s.config.fence_timeout_ms == 0 || s.config.protected.is_empty() || s.fenced.is_some()
            {
                return;
            }
            if silent < Duration::from_millis(s.config.fence_timeout_ms) {
                return;
            }
            if !s.in_outage {
                s.in_outage = true;
                s.outage += 1;
            }
            (s.config.clone(), silent, s.storage_ok, s.outage)
        };
        let timeout = Duration::from_millis(config.fence_timeout_ms);
        let storage_proves_life = !config.heartbeat_dirs.is_empty()
            && storage_ok.is_some_and(|at| at.elapsed() < timeout / 2);
        if storage_proves_life && !isolated(&config.isolation_addresses) {
            // The controller is away, not us: our storage heartbeat tells it
            // we live, so it will not restart our VMs elsewhere.
            return;
        }
        tracing::warn!(
            silent_ms = silent.as_millis() as u64,
            vms = config.protected.len(),
            "SELF-FENCE: the controller is silent and this host looks isolated; hard-stopping HA-protected VMs"
        );
        let mut record = FenceRecord {
            outage,
            ..FenceRecord::default()
        };
        for uuid in &config.protected {
            match driver.hard_stop(uuid) {
                Ok(()) => record.stopped.push(uuid.clone()),
                Err(e) => {
                    tracing::error!(vm = uuid, "self-fence could not stop the VM: {e}");
                    record.failed.push(format!("{uuid}: {e}"));
                }
            }
        }
        tracing::warn!(
            stopped = record.stopped.len(),
            failed = record.failed.len(),
            "self-fence done"
        );
        {
            let mut s = self.lock();
            // The link may have come back while we fenced; report it then.
            if s.in_outage {
                s.fenced = Some(record);
            } else {
                s.unreported = Some(record);
            }
        }
        // Tell the storage now, not at the next beat: the controller may
        // restart the VMs as soon as it reads this.
        self.write_storage_heartbeat();
    }

    fn write_storage_heartbeat(&self) {
        let (dirs, beat) = {
            let mut s = self.lock();
            s.storage_seq += 1;
            let mut beat = StorageHeartbeat {
                host_id: self.host_id.clone(),
                seq: s.storage_seq,
                controller_silent_ms: s.last_round_trip.elapsed().as_millis() as u64,
                fenced: s.fenced.clone(),
                epoch: s.config.epoch,
                mac: String::new(),
            };
            // Unsigned only for a controller that sent no key (older): it
            // then trusts nothing the storage says.
            if let Ok(key) = hex::decode(&s.config.storage_key) {
                if !key.is_empty() {
                    beat.sign(&key);
                }
            }
            (s.config.heartbeat_dirs.clone(), beat)
        };
        if dirs.is_empty() {
            return;
        }
        let mut all_ok = true;
        for dir in &dirs {
            let path = Path::new(dir).join(format!("{}.json", self.host_id));
            if let Err(e) =
                std::fs::create_dir_all(dir).and_then(|()| save_atomically(&path, &beat))
            {
                all_ok = false;
                tracing::warn!(dir, "cannot write the storage heartbeat: {e}");
            }
        }
        if all_ok {
            self.lock().storage_ok = Some(Instant::now());
        }
    }
}

/// True when none of the isolation addresses answers, not even with a
/// refusal. Without configured addresses the default gateway is tried.
fn isolated(addresses: &[String]) -> bool {
    let mut targets: Vec<SocketAddr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
    if targets.is_empty() {
        targets.extend(default_gateway().map(|ip| SocketAddr::new(ip.into(), 9)));
    }
    !targets
        .iter()
        .any(|t| match TcpStream::connect_timeout(t, ISOLATION_PROBE) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        })
}

fn default_gateway() -> Option<std::net::Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_gateway(&routes)
}

/// `/proc/net/route`: the gateway of destination 00000000, little-endian hex.
fn parse_default_gateway(routes: &str) -> Option<std::net::Ipv4Addr> {
    routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"00000000") {
            return None;
        }
        let raw = u32::from_str_radix(fields.get(2)?, 16).ok()?;
        (raw != 0).then(|| std::net::Ipv4Addr::from(raw.to_le_bytes()))
    })
}

fn save_atomically<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    lifeboat_os::durable::AtomicWrite::new(0o644).write(path, &serde_json::to_vec(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_default_gateway() {
        let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                      eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                      eth0\t00000000\t01014D0A\t0003\t0\t0\t0\t00000000\n";
        assert_eq!(
            parse_default_gateway(routes),
            Some(std::net::Ipv4Addr::new(10, 77, 1, 1))
        );
        assert_eq!(parse_default_gateway("Iface\tDestination\n"), None);
    }

    #[test]
    fn only_the_newest_acknowledged_heartbeat_moves_the_fence_clock() {
        let dir = std::env::temp_dir().join(format!("lifeboat-fence-{}", std::process::id()));
        let w = FenceWatchdog::new(&dir, "h1");
        let first = w.heartbeat_sent();
        std::thread::sleep(Duration::from_millis(5));
        let second = w.heartbeat_sent();
        assert_ne!(first, second, "numbers never repeat, even across sessions");
        w.heartbeat_acked(second);
        let clock = w.lock().last_round_trip;
        w.heartbeat_acked(first); // a late answer to an older heartbeat
        assert_eq!(w.lock().last_round_trip, clock);
        w.heartbeat_acked(999); // never sent
        assert_eq!(w.lock().last_round_trip, clock);
        std::thread::sleep(Duration::from_millis(5));
        let third = w.heartbeat_sent();
        w.heartbeat_acked(third);
        assert!(w.lock().last_round_trip > clock);
    }

    /// The decision, with the simulated driver (which refuses to stop
    /// anything, so an attempted fence shows as `failed`).
    #[test]
    fn fences_only_when_silent_and_isolated_or_unable_to_prove_life() {
        let driver = crate::hypervisor::sim::SimDriver::new("h1", 1);
        let dir = std::env::temp_dir().join(format!("lifeboat-fence-d-{}", std::process::id()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refusing = listener.local_addr().unwrap().to_string();
        drop(listener);
        let config = |isolation: &str, dirs: Vec<String>| HaAgentConfig {
            fence_timeout_ms: 40,
            protected: vec!["vm-1".into()],
            heartbeat_dirs: dirs,
            isolation_addresses: vec![isolation.to_string()],
            ..HaAgentConfig::default()
        };
        let storage = vec![dir.join("hb").display().to_string()];

        // Controller away, network and storage fine: no fence.
        let w = FenceWatchdog::new(&dir, "h1");
        w.set_config(config(&refusing, storage.clone()));
        std::thread::sleep(Duration::from_millis(50)); // silent past the timeout
        w.write_storage_heartbeat();
        w.check(&driver);
        assert!(w.lock().fenced.is_none());

        // Isolated: fence, once per outage, recorded in the storage file.
        w.set_config(config("224.0.0.1:9", storage.clone()));
        w.check(&driver);
        let record = w.lock().fenced.clone().expect("fenced");
        assert_eq!(record.failed.len(), 1, "{record:?}");
        let beat: StorageHeartbeat =
            serde_json::from_slice(&std::fs::read(dir.join("hb/h1.json")).unwrap()).unwrap();
        assert_eq!(beat.fenced, Some(record));

        // Not isolated but no storage heartbeat to prove life: fence too.
        let w = FenceWatchdog::new(&dir.join("other"), "h1");
        w.set_config(config(&refusing, Vec::new()));
        std::thread::sleep(Duration::from_millis(50));
        w.check(&driver);
        assert!(w.lock().fenced.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_refusing_address_proves_the_network_works() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap().to_string();
        drop(listener); // now it refuses
        assert!(!isolated(&[closed]));
        // TCP cannot reach a multicast group: no answer, on any machine.
        assert!(isolated(&["224.0.0.1:9".to_string()]));
    }
}

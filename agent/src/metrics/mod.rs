//! Performance sampling: the host's figures and its running VMs', turned
//! from counters into rates here, sent as one batch per interval on the
//! control link. The interval is the controller's to set.

pub mod counters;
pub mod host;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_proto::metrics::{clamp_interval_ms, MetricBatch, DEFAULT_INTERVAL_MS};

use crate::hypervisor::Hypervisor;
use counters::VmRates;
use host::HostSampler;

/// What sampling keeps between rounds (and across reconnects, so a new
/// session does not start without rates).
pub struct Sampler {
    host: HostSampler,
    vms: VmRates,
    last: Option<Instant>,
}

impl Sampler {
    pub fn new(storage: Vec<PathBuf>) -> Arc<Mutex<Sampler>> {
        Arc::new(Mutex::new(Sampler {
            host: HostSampler::new(storage),
            vms: VmRates::default(),
            last: None,
        }))
    }

    /// One round; blocking (reads `/proc` and runs the driver's tools).
    pub fn batch(&mut self, driver: &dyn Hypervisor) -> MetricBatch {
        let host = self.host.sample();
        let readings = driver.vm_counters().unwrap_or_else(|e| {
            tracing::warn!("cannot read VM statistics: {e}");
            Vec::new()
        });
        let now = Instant::now();
        let vms = self.vms.sample(readings, now);
        let interval_ms = self
            .last
            .replace(now)
            .map_or(0, |t| now.duration_since(t).as_millis() as u64);
        MetricBatch {
            interval_ms,
            host,
            vms,
        }
    }
}

/// How often to sample: the controller's choice, clamped to what agents
/// accept; shared by the link's reader (which sets it) and the sampler.
pub struct Interval(AtomicU64);

impl Default for Interval {
    fn default() -> Interval {
        Interval(AtomicU64::new(DEFAULT_INTERVAL_MS))
    }
}

impl Interval {
    pub fn set_ms(&self, ms: u64) {
        self.0.store(clamp_interval_ms(ms), Ordering::Relaxed);
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

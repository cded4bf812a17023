//! Failure detection as a pure function: from what the controller observed
//! of a host (agent heartbeats, its own network probe, the storage
//! heartbeat, probes of the VMs, an out-of-band fence), the host's state and
//! whether its VMs may start elsewhere now. No I/O, so every rule is tested
//! with instants.

use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Ok,
    /// Heartbeats missed; not yet known to be dead or fenced.
    Suspect,
    /// Alive (its storage heartbeat moves) but cut off from the controller.
    Partitioned,
    /// Silent everywhere past the fence timeout: dead, or fenced by its agent.
    Failed,
    /// Its agent reported a self-fence, or the out-of-band fence succeeded.
    Fenced,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ok => "ok",
            HostState::Suspect => "suspect",
            HostState::Partitioned => "partitioned",
            HostState::Failed => "failed",
            HostState::Fenced => "fenced",
        }
    }

    /// Whether the host's HA VMs may be started elsewhere now.
    pub fn allows_failover(self) -> bool {
        matches!(self, HostState::Failed | HostState::Fenced)
    }
}

/// Everything observed about one host, at `now`.
#[derive(Debug, Clone)]
pub struct Observation {
    pub now: Instant,
    /// The last agent heartbeat (or the controller's start, if none since).
    pub last_heartbeat: Instant,
    /// Consecutive failed network probes of the host.
    pub probe_failures: u32,
    /// When the storage heartbeat last changed, if the host writes one.
    pub storage_changed: Option<Instant>,
    /// The storage heartbeat reports a self-fence in the current outage.
    pub storage_reports_fence: bool,
    /// One of the host's HA VMs still answers its probe.
    pub vm_answers: bool,
    /// The out-of-band fence command reported success in this outage.
    pub oob_fenced: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    pub misses: u32,
    pub fence_timeout: Duration,
    pub margin: Duration,
}

impl Timing {
    fn detection(&self) -> Duration {
        self.interval * self.misses
    }
}

/// The host's state, with the reason in words for its history.
pub fn assess(o: &Observation, t: &Timing) -> (HostState, &'static str) {
    let silent = o.now.saturating_duration_since(o.last_heartbeat);
    if silent < t.detection() {
        return (HostState::Ok, "heartbeats arrive");
    }
    if o.oob_fenced {
        return (HostState::Fenced, "out-of-band fence succeeded");
    }
    if o.storage_reports_fence {
        return (HostState::Fenced, "its agent reports a self-fence");
    }
    if o.probe_failures < t.misses {
        return (
            HostState::Suspect,
            "agent silent, but the host answers the network probe",
        );
    }
    if o.vm_answers {
        return (
            HostState::Suspect,
            "agent and host silent, but a VM answers",
        );
    }
    let storage_fresh = o
        .storage_changed
        .is_some_and(|at| o.now.saturating_duration_since(at) < t.detection());
    if storage_fresh {
        return (
            HostState::Partitioned,
            "cut off, yet its storage heartbeat goes on",
        );
    }
    // The agent fences at most `fence_timeout` after the last heartbeat the
    // controller acknowledged, or after its last storage write: wait that
    // out from the newest sign of life, plus the margin.
    let last_sign = o
        .storage_changed
        .map_or(o.last_heartbeat, |at| at.max(o.last_heartbeat));
    if o.now.saturating_duration_since(last_sign) >= t.fence_timeout + t.margin {
        (HostState::Failed, "silent past the fence timeout")
    } else {
        (HostState::Suspect, "silent; waiting out the fence timeout")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        interval: Duration::from_secs(1),
        misses: 3,
        fence_timeout: Duration::from_secs(5),
        margin: Duration::from_secs(2),
    };

    fn silent_for(secs: u64) -> Observation {
        let now = Instant::now() + Duration::from_secs(1000);
        Observation {
            now,
            last_heartbeat: now - Duration::from_secs(secs),
            probe_failures: 10,
            storage_changed: None,
            storage_reports_fence: false,
            vm_answers: false,
            oob_fenced: false,
        }
    }

    fn state(o: &Observation) -> HostState {
        assess(o, &T).0
    }

    #[test]
    fn a_dead_host_fails_only_after_fence_timeout_plus_margin() {
        assert_eq!(state(&silent_for(2)), HostState::Ok);
        assert_eq!(state(&silent_for(3)), HostState::Suspect);
        assert_eq!(state(&silent_for(6)), HostState::Suspect);
        assert_eq!(state(&silent_for(7)), HostState::Failed);
    }

    #[test]
    fn a_host_that_answers_the_probe_or_through_a_vm_is_never_failed() {
        let mut o = silent_for(60);
        o.probe_failures = 2;
        assert_eq!(state(&o), HostState::Suspect);
        let mut o = silent_for(60);
        o.vm_answers = true;
        assert_eq!(state(&o), HostState::Suspect);
    }

    #[test]
    fn a_moving_storage_heartbeat_means_partitioned_and_delays_the_failover() {
        let mut o = silent_for(60);
        o.storage_changed = Some(o.now - Duration::from_millis(500));
        assert_eq!(state(&o), HostState::Partitioned);
        // Storage went quiet 4 s ago: the agent may fence up to 5 s after
        // its last write, so not yet.
        o.storage_changed = Some(o.now - Duration::from_secs(4));
        assert_eq!(state(&o), HostState::Suspect);
        o.storage_changed = Some(o.now - Duration::from_secs(7));
        assert_eq!(state(&o), HostState::Failed);
    }

    #[test]
    fn a_reported_fence_allows_failover_at_once() {
        let mut o = silent_for(3);
        o.storage_changed = Some(o.now);
        o.storage_reports_fence = true;
        assert_eq!(state(&o), HostState::Fenced);
        let mut o = silent_for(3);
        o.probe_failures = 0;
        o.oob_fenced = true;
        assert!(state(&o).allows_failover());
        assert!(!state(&silent_for(1)).allows_failover());
    }
}

//! A failover as recorded: which host failed, the steps with their times
//! (the timeline the console shows), and each VM's move. It is written to
//! the store before every action it records, so a restarted controller
//! resumes it without starting anything twice.

use lifeboat_proto::PowerState;
use serde::{Deserialize, Serialize};

use super::settings::{FailoverMethod, Priority};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverKind {
    Host,
    /// A physical machine's standby VM.
    Physical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverState {
    Running,
    Done,
    /// Finished with VMs that could not be moved.
    Incomplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveState {
    Pending,
    /// A destination is chosen and the start was (or is being) sent.
    Placed,
    Started,
    /// No host can take it now; retried while the failover runs.
    Unplaceable,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub at_ms: u64,
    /// `detected`, `fenced`, `placed`, `started`, ... with detail after a colon.
    pub what: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmMove {
    pub uuid: String,
    pub name: String,
    pub priority: Priority,
    pub method: FailoverMethod,
    pub memory_mib: u64,
    pub anti_affinity_group: String,
    /// Its power state before the failure; it returns to it.
    pub prior_state: PowerState,
    /// The cached definition, as its failed host had it.
    pub config: String,
    pub destination: Option<String>,
    pub state: MoveState,
    pub error: Option<String>,
    pub attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failover {
    pub id: String,
    pub kind: FailoverKind,
    /// The failed host (or physical machine) id and name.
    pub source_id: String,
    pub source_name: String,
    /// Wall-clock milliseconds of the last sign of life before the failure.
    pub last_seen_ms: u64,
    pub state: FailoverState,
    pub reason: String,
    pub steps: Vec<Step>,
    pub vms: Vec<VmMove>,
}

impl Failover {
    pub fn step(&mut self, what: impl Into<String>) {
        self.steps.push(Step {
            at_ms: crate::clock::unix_now_ms(),
            what: what.into(),
        });
    }

    pub fn started_at_ms(&self) -> u64 {
        self.steps.first().map_or(0, |s| s.at_ms)
    }

    /// Ends the failover once no VM is waiting for a place.
    pub fn settle(&mut self) {
        let open = self.vms.iter().any(|v| {
            matches!(
                v.state,
                MoveState::Pending | MoveState::Placed | MoveState::Unplaceable
            )
        });
        if open || self.state != FailoverState::Running {
            return;
        }
        let all_started = self.vms.iter().all(|v| v.state == MoveState::Started);
        self.state = if all_started {
            FailoverState::Done
        } else {
            FailoverState::Incomplete
        };
        self.step(if all_started { "done" } else { "incomplete" });
    }

    /// Seconds from the last sign of life to each step, for the timeline.
    pub fn timeline(&self) -> Vec<(f64, &str)> {
        self.steps
            .iter()
            .map(|s| {
                let secs = s.at_ms.saturating_sub(self.last_seen_ms) as f64 / 1000.0;
                (secs, s.what.as_str())
            })
            .collect()
    }
}

/// The order VMs start in: priority, then name.
pub fn start_order(vms: &mut [VmMove]) {
    vms.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, priority: Priority, state: MoveState) -> VmMove {
        VmMove {
            uuid: name.into(),
            name: name.into(),
            priority,
            method: FailoverMethod::Restart,
            memory_mib: 64,
            anti_affinity_group: String::new(),
            prior_state: PowerState::Running,
            config: String::new(),
            destination: None,
            state,
            error: None,
            attempts: 0,
        }
    }

    #[test]
    fn high_priority_first_and_settles_when_nothing_waits() {
        let mut vms = vec![
            vm("b", Priority::Low, MoveState::Pending),
            vm("c", Priority::High, MoveState::Pending),
            vm("a", Priority::Low, MoveState::Pending),
        ];
        start_order(&mut vms);
        let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        let mut f = Failover {
            id: "f".into(),
            kind: FailoverKind::Host,
            source_id: "h".into(),
            source_name: "h".into(),
            last_seen_ms: 0,
            state: FailoverState::Running,
            reason: String::new(),
            steps: Vec::new(),
            vms,
        };
        f.settle();
        assert_eq!(f.state, FailoverState::Running);
        for v in &mut f.vms {
            v.state = MoveState::Started;
        }
        f.vms[0].state = MoveState::Failed;
        f.settle();
        assert_eq!(f.state, FailoverState::Incomplete);
    }
}

//! Whose VM is it? An agent's report may name a VM UUID the controller has
//! recorded on another host. An agent is believed only about its own host:
//! it takes over another host's VM only when the controller itself moved
//! that VM there (a failover, a restore onto it). The decision is a pure
//! function of the record, the report and whether a move was expected.

use lifeboat_proto::{PowerState, VmInfo};

use super::Vm;

/// What to do with one VM of a host's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Record it on the reporting host (it is its own, or new).
    Accept,
    /// Record it on the reporting host, where the controller moved it; the
    /// copy left on `from` is stale.
    Moved { from: String },
    /// The reporter holds a stopped copy of a VM that runs on its owner:
    /// the record stays, the reporter's copy is stale.
    StaleCopy,
    /// The reporter holds a stopped copy of a VM recorded elsewhere: the
    /// record stays with its owner, nothing else happens.
    Ignore,
    /// The reporter claims a live copy of a VM another host owns, and the
    /// controller moved nothing there: refused, the record stays.
    Refuse { owner: String },
}

fn live(state: PowerState) -> bool {
    matches!(state, PowerState::Running | PowerState::Paused)
}

/// The decision for `reported` from host `reporter`, given the record and
/// whether the controller expects that VM on `reporter`.
pub fn decide(recorded: Option<&Vm>, reporter: &str, reported: &VmInfo, expected: bool) -> Claim {
    let Some(old) = recorded.filter(|old| old.host_id != reporter) else {
        return Claim::Accept;
    };
    match (live(reported.power_state), expected) {
        (true, true) => Claim::Moved {
            from: old.host_id.clone(),
        },
        // Defined by a restore or a failover, not started (yet).
        (false, true) => Claim::Accept,
        (false, false) if live(old.info.power_state) => Claim::StaleCopy,
        (false, false) => Claim::Ignore,
        (true, false) => Claim::Refuse {
            owner: old.host_id.clone(),
        },
    }
}

/// A VM UUID in the one form every record, job and datastore path uses:
/// lower-case, hyphenated. `None` for anything that is not a UUID.
pub fn canonical_uuid(text: &str) -> Option<String> {
    text.parse::<crate::backup::VmUuid>()
        .ok()
        .map(|u| u.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(state: PowerState) -> VmInfo {
        VmInfo {
            uuid: "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162".into(),
            name: "web01".into(),
            power_state: state,
            vcpus: 1,
            memory_mib: 64,
            disks: vec![],
            nics: vec![],
            config: String::new(),
        }
    }

    fn on(host: &str, state: PowerState) -> Vm {
        Vm {
            host_id: host.into(),
            updated_at: 0,
            info: info(state),
        }
    }

    #[test]
    fn a_host_takes_over_another_hosts_vm_only_when_the_controller_moved_it() {
        use PowerState::*;
        let running_on_a = on("a", Running);
        assert_eq!(decide(None, "b", &info(Running), false), Claim::Accept);
        assert_eq!(
            decide(Some(&running_on_a), "a", &info(Stopped), false),
            Claim::Accept,
            "its own VM"
        );
        assert_eq!(
            decide(Some(&running_on_a), "b", &info(Running), false),
            Claim::Refuse { owner: "a".into() }
        );
        assert_eq!(
            decide(Some(&on("a", Stopped)), "b", &info(Paused), false),
            Claim::Refuse { owner: "a".into() },
            "also when the owner's copy is stopped"
        );
        assert_eq!(
            decide(Some(&running_on_a), "b", &info(Running), true),
            Claim::Moved { from: "a".into() }
        );
        assert_eq!(
            decide(Some(&on("a", Stopped)), "b", &info(Stopped), true),
            Claim::Accept
        );
        assert_eq!(
            decide(Some(&running_on_a), "b", &info(Stopped), false),
            Claim::StaleCopy
        );
        assert_eq!(
            decide(Some(&on("a", Stopped)), "b", &info(Stopped), false),
            Claim::Ignore
        );
    }

    #[test]
    fn uuids_have_one_form() {
        assert_eq!(
            canonical_uuid("6F1C3E2A-0B4D-4C8E-9A7B-1D2E3F405162").as_deref(),
            Some("6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162")
        );
        assert_eq!(canonical_uuid("../../etc"), None);
        assert_eq!(
            canonical_uuid("{6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162}"),
            None
        );
    }
}

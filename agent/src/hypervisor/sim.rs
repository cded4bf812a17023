//! The simulated host: an in-memory hypervisor with N made-up VMs, for demos
//! and load tests only. It reports driver `sim`, so the console and API show
//! plainly that nothing real is behind it; no feature is proven on it.

use std::sync::Mutex;
use std::time::Duration;

use lifeboat_proto::{DiskInfo, HostFacts, NicInfo, PowerAction, PowerState, VmInfo};
use sha2::{Digest, Sha256};

use super::{Hypervisor, HypervisorError, Restorer};
use crate::metrics::counters::{DiskCounters, NicCounters, VmCounters};

pub struct SimDriver {
    host: String,
    vms: Mutex<Vec<VmInfo>>,
    /// Counters grow from here, at made-up per-VM rates.
    started: std::time::Instant,
}

/// Made-up cumulative counters of a simulated VM `seconds` after the
/// driver started: each VM has its own steady load, with a slow wave on top.
fn sim_counters(vm: &VmInfo, index: usize, seconds: f64) -> VmCounters {
    let share = ((index * 37) % 90 + 5) as f64 / 100.0;
    let wave = 1.0 + 0.2 * (seconds / 300.0 + index as f64).sin();
    let busy = share * seconds * wave.min(1.2);
    let grow = |per_second: f64| (per_second * busy) as u64;
    let memory = vm.memory_mib << 20;
    VmCounters {
        uuid: vm.uuid.clone(),
        cpu_time_ns: Some((busy * f64::from(vm.vcpus) * 1e9) as u64),
        vcpus: vm.vcpus,
        memory_used_bytes: Some((memory as f64 * (0.3 + share / 2.0)) as u64),
        balloon_bytes: Some(memory),
        disks: vm
            .disks
            .iter()
            .map(|d| DiskCounters {
                name: d.target.clone(),
                read_bytes: grow(2e6),
                write_bytes: grow(1e6),
                read_ops: grow(120.0),
                write_ops: grow(60.0),
            })
            .collect(),
        nics: (0..vm.nics.len())
            .map(|i| NicCounters {
                name: format!("vnet{index}-{i}"),
                rx_bytes: grow(5e5),
                tx_bytes: grow(2.5e5),
            })
            .collect(),
    }
}

/// A stable UUID for VM `index` of simulated host `host`, so a restarted sim
/// agent reports the same VMs.
fn sim_uuid(host: &str, index: usize) -> String {
    let h = Sha256::digest(format!("{host}/{index}").as_bytes());
    let x = hex::encode(&h[..16]);
    format!(
        "{}-{}-4{}-8{}-{}",
        &x[..8],
        &x[8..12],
        &x[13..16],
        &x[17..20],
        &x[20..32]
    )
}

fn sim_vm(host: &str, index: usize) -> VmInfo {
    let uuid = sim_uuid(host, index);
    let name = format!("sim-{host}-{index:05}");
    let state = match index % 10 {
        0..=6 => PowerState::Running,
        7 => PowerState::Paused,
        _ => PowerState::Stopped,
    };
    VmInfo {
        config: format!("<domain type='sim'><name>{name}</name><uuid>{uuid}</uuid></domain>"),
        uuid,
        name,
        power_state: state,
        vcpus: 1 + (index % 8) as u32,
        memory_mib: 512 << (index % 4),
        disks: vec![DiskInfo {
            target: "vda".into(),
            device: "disk".into(),
            source: Some(format!("/sim/{host}/{index}.qcow2")),
            format: Some("qcow2".into()),
            capacity_bytes: Some(20 << 30),
        }],
        nics: vec![NicInfo {
            mac: format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                (index >> 16) & 0xff,
                (index >> 8) & 0xff,
                index & 0xff
            ),
            network: Some("default".into()),
            model: Some("virtio".into()),
        }],
    }
}

impl SimDriver {
    pub fn new(host: &str, vm_count: usize) -> SimDriver {
        SimDriver {
            host: host.to_string(),
            vms: Mutex::new((0..vm_count).map(|i| sim_vm(host, i)).collect()),
            started: std::time::Instant::now(),
        }
    }
}

impl Restorer for SimDriver {
    fn check_restore(
        &self,
        _request: &lifeboat_proto::RestoreRequest,
    ) -> Result<(), HypervisorError> {
        Err(HypervisorError::Refused(
            "the sim driver cannot restore VMs".into(),
        ))
    }

    fn define_restored(
        &self,
        _request: &lifeboat_proto::RestoreRequest,
        _images: &[(std::path::PathBuf, String)],
    ) -> Result<(), HypervisorError> {
        Err(HypervisorError::Refused(
            "the sim driver cannot restore VMs".into(),
        ))
    }
}

impl Hypervisor for SimDriver {
    fn driver(&self) -> &'static str {
        "sim"
    }

    fn host_facts(&self) -> Result<HostFacts, HypervisorError> {
        Ok(HostFacts {
            hostname: self.host.clone(),
            driver: "sim".into(),
            hypervisor_version: "simulated host (demo/load test)".into(),
            cpus: 64,
            memory_total_bytes: 1 << 40,
            memory_free_bytes: 1 << 39,
            image_dirs: Vec::new(),
        })
    }

    fn inventory(&self) -> Result<Vec<VmInfo>, HypervisorError> {
        Ok(self.vms.lock().expect("sim lock").clone())
    }

    fn vm_counters(&self) -> Result<Vec<VmCounters>, HypervisorError> {
        let seconds = self.started.elapsed().as_secs_f64();
        Ok(self
            .vms
            .lock()
            .expect("sim lock")
            .iter()
            .enumerate()
            .filter(|(_, vm)| vm.power_state == PowerState::Running)
            .map(|(i, vm)| sim_counters(vm, i, seconds))
            .collect())
    }

    fn power(
        &self,
        uuid: &str,
        action: PowerAction,
        _timeout: Duration,
    ) -> Result<(), HypervisorError> {
        let mut vms = self.vms.lock().expect("sim lock");
        let vm = vms
            .iter_mut()
            .find(|v| v.uuid == uuid)
            .ok_or_else(|| HypervisorError::UnknownVm(uuid.to_string()))?;
        use PowerAction::*;
        use PowerState::*;
        vm.power_state = match (action, vm.power_state) {
            (Start, Stopped) | (Resume, Paused) | (Reboot, Running) => Running,
            (Pause, Running) => Paused,
            (Shutdown | Poweroff, Running | Paused) => Stopped,
            (a, s) => {
                return Err(HypervisorError::Refused(format!(
                    "cannot {} a VM that is {}",
                    a.as_str(),
                    s.as_str()
                )))
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_vms_are_stable_and_obey_power_rules() {
        let a = SimDriver::new("h", 20);
        let b = SimDriver::new("h", 20);
        assert_eq!(a.inventory().unwrap(), b.inventory().unwrap());
        let vms = a.inventory().unwrap();
        assert_eq!(vms[0].uuid.len(), 36);
        let stopped = vms
            .iter()
            .find(|v| v.power_state == PowerState::Stopped)
            .unwrap();
        a.power(&stopped.uuid, PowerAction::Start, Duration::ZERO)
            .unwrap();
        assert!(a
            .power(&stopped.uuid, PowerAction::Start, Duration::ZERO)
            .is_err());
        assert!(matches!(
            a.power("nope", PowerAction::Start, Duration::ZERO),
            Err(HypervisorError::UnknownVm(_))
        ));
    }
}

//! Physical machines: a health round per interval (every check must pass);
//! after the configured failed rounds the standby VM starts through a
//! failover record, like a host's VMs. Failback is manual.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ha_engine::EngineState;
use super::Ops;
use crate::ha::detect::HostState;
use crate::ha::failover::{Failover, FailoverKind, FailoverState, MoveState, VmMove};
use crate::ha::physical::{HealthCheck, PhysicalMachine, PhysicalState};
use crate::ha::probe::{http_status_is, Prober};
use crate::ha::settings::{FailoverMethod, HostProbe, Priority};

#[derive(Default)]
pub struct PhysicalWatch {
    rounds: HashMap<String, Round>,
}

#[derive(Default)]
struct Round {
    failures: u32,
    last: Option<Instant>,
    running: bool,
}

impl Ops {
    pub(super) fn watch_physical_machines(
        self: &Arc<Self>,
        prober: &Arc<Prober>,
        state: &Arc<Mutex<EngineState>>,
    ) {
        for pm in self.ha.physical.all() {
            if pm.state != PhysicalState::Monitoring {
                continue;
            }
            {
                let mut s = state.lock().expect("engine lock");
                let round = s.physical.rounds.entry(pm.id.clone()).or_default();
                let due = round
                    .last
                    .is_none_or(|at| at.elapsed() >= Duration::from_millis(pm.interval_ms));
                if !due || round.running {
                    continue;
                }
                round.last = Some(Instant::now());
                round.running = true;
            }
            let (ops, prober, state) = (self.clone(), prober.clone(), state.clone());
            tokio::spawn(async move {
                let failure = health_round(&pm, &prober).await;
                let failures = {
                    let mut s = state.lock().expect("engine lock");
                    let round = s.physical.rounds.entry(pm.id.clone()).or_default();
                    round.running = false;
                    round.failures = if failure.is_some() {
                        round.failures + 1
                    } else {
                        0
                    };
                    round.failures
                };
                if let Some(why) = failure {
                    if failures == 1 || failures == pm.failed_rounds {
                        let message = format!("health round {failures} failed: {why}");
                        ops.ha.event(&pm.id, HostState::Suspect, message).await;
                    }
                    if failures >= pm.failed_rounds {
                        state
                            .lock()
                            .expect("engine lock")
                            .physical
                            .rounds
                            .remove(&pm.id);
                        ops.fail_over_physical(pm, &why).await;
                    }
                }
            });
        }
    }

    async fn fail_over_physical(&self, mut pm: PhysicalMachine, why: &str) {
        let Some(vm) = self.inventory.vm(&pm.standby_vm) else {
            let message = format!(
                "ALERT: standby VM {} is not in the inventory",
                pm.standby_vm
            );
            self.ha.event(&pm.id, HostState::Failed, message).await;
            return;
        };
        let dest = if pm.standby_host.is_empty() {
            vm.host_id.clone()
        } else {
            self.inventory
                .hosts()
                .into_iter()
                .find(|h| h.host.id == pm.standby_host || h.host.name == pm.standby_host)
                .map_or(vm.host_id.clone(), |h| h.host.id.clone())
        };
        pm.state = PhysicalState::FailedOver;
        if let Err(e) = self.ha.physical.put(&pm.id, pm.clone()).await {
            tracing::error!("cannot record the physical failover: {e}");
            return;
        }
        let now_ms = crate::clock::unix_now_ms();
        let rounds_ms = u64::from(pm.failed_rounds) * pm.interval_ms;
        let mut f = Failover {
            id: format!("fo-{now_ms}-{}", &pm.id[..pm.id.len().min(8)]),
            kind: FailoverKind::Physical,
            source_id: pm.id.clone(),
            source_name: pm.name.clone(),
            last_seen_ms: now_ms.saturating_sub(rounds_ms),
            state: FailoverState::Running,
            reason: why.to_string(),
            steps: Vec::new(),
            vms: vec![VmMove {
                uuid: vm.info.uuid.clone(),
                name: vm.info.name.clone(),
                priority: Priority::High,
                method: FailoverMethod::Restart,
                memory_mib: vm.info.memory_mib,
                anti_affinity_group: String::new(),
                prior_state: lifeboat_proto::PowerState::Running,
                config: vm.info.config.clone(),
                destination: Some(dest.clone()),
                state: MoveState::Placed,
                error: None,
                attempts: 0,
            }],
        };
        f.step(format!("failed: {} health rounds: {why}", pm.failed_rounds));
        f.step(format!(
            "placed: {} on {}",
            vm.info.name,
            self.inventory.host_name(&dest)
        ));
        if let Err(e) = self.ha.save_failover(&f).await {
            tracing::error!("cannot record the physical failover: {e}");
            return;
        }
        let message = format!("failover {}: starting standby VM {}", f.id, vm.info.name);
        self.ha.event(&pm.id, HostState::Failed, message).await;
    }
}

/// `None` when every check passed, else what failed.
pub(super) async fn health_round(pm: &PhysicalMachine, prober: &Prober) -> Option<String> {
    let timeout = Duration::from_millis(pm.interval_ms).mul_f32(0.8);
    for check in &pm.checks {
        let failure = match check {
            HealthCheck::Icmp { address } => {
                let ip: Option<IpAddr> = address.parse().ok();
                match ip {
                    Some(ip) if prober.answers(ip, HostProbe::Icmp, timeout).await => None,
                    _ => Some(format!("no ICMP answer from {address}")),
                }
            }
            HealthCheck::Tcp { address, port } => {
                let target = address.parse().map(|ip| SocketAddr::new(ip, *port));
                let connected = match target {
                    Ok(target) => matches!(
                        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await,
                        Ok(Ok(_))
                    ),
                    Err(_) => false,
                };
                (!connected).then(|| format!("no TCP connection to {address}:{port}"))
            }
            HealthCheck::Http { url, expect_status } => {
                http_status_is(url, *expect_status, timeout)
                    .await
                    .err()
                    .map(|e| format!("GET {url}: {e}"))
            }
        };
        if failure.is_some() {
            return failure;
        }
    }
    None
}

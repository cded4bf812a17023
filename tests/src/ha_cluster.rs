//! A [`Cluster`] with a controller and an agent per host, HA configured:
//! the shared storage registered, each host's mount of it declared. For the
//! failover tests and the failover benchmark.

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::Api;
use crate::cluster::{running_qemu_hosts, Cluster};
use crate::tiny_vm::TinyVm;
use crate::wait::{wait_until, READY_TIMEOUT};
use crate::{Agent, Controller};

/// Long enough for the default timing (detection 3 s, fence 5 s + 1 s margin)
/// and a VM start under TCG.
pub const FAILOVER_DEADLINE: Duration = Duration::from_secs(60);

pub struct HaCluster {
    // Fields drop in order: agents and controller before the cluster.
    pub agents: Vec<Agent>,
    pub controller: Controller,
    pub cluster: Cluster,
    /// The controller's id of host N at index N-1.
    pub host_ids: Vec<String>,
}

impl HaCluster {
    /// `hosts` hosts named `h1`..., online, with HA storage settings.
    pub fn start(hosts: usize) -> HaCluster {
        let cluster = Cluster::start(hosts);
        let controller = Controller::options().agent_listen_any().start();
        let agents: Vec<Agent> = (1..=hosts)
            .map(|n| cluster.host(n).start_agent(&controller, &format!("h{n}")))
            .collect();
        let api = controller.api();
        let host_ids: Vec<String> = (1..=hosts)
            .map(|n| {
                let h = api.wait_host_status(&format!("h{n}"), "online", READY_TIMEOUT);
                h["id"].as_str().expect("host id").to_string()
            })
            .collect();
        let ha = HaCluster {
            agents,
            controller,
            cluster,
            host_ids,
        };
        let shared = ha.cluster.shared_dir().display().to_string();
        ha.put(
            "/api/v1/ha/settings",
            json!({"shared_storages": {"shared": shared}}),
        );
        for (n, id) in ha.host_ids.iter().enumerate() {
            let mount = ha.cluster.host(n + 1).shared_mount().display().to_string();
            ha.put(
                &format!("/api/v1/hosts/{id}/ha"),
                json!({"storage_mounts": {"shared": mount}}),
            );
        }
        ha
    }

    pub fn api(&self) -> Api {
        self.controller.api()
    }

    fn put(&self, path: &str, body: Value) {
        let (status, answer) = self.api().put(path, &body);
        assert_eq!(status, 200, "PUT {path} {body}: {answer}");
    }

    /// Defines and starts a tiny VM on host `n`, protects it with HA and
    /// waits until that host's agent knows it must fence it.
    pub fn protected_vm(&self, n: usize, label: &str) -> TinyVm {
        let vm = self.cluster.host(n).define_tiny_vm(label);
        vm.start();
        let api = self.api();
        let found = api.wait_vm(vm.name(), READY_TIMEOUT);
        let id = found["id"].as_str().expect("vm id");
        self.put(
            &format!("/api/v1/vms/{id}/ha"),
            json!({"enabled": true, "priority": "high"}),
        );
        self.wait_protected_on(n, 1);
        wait_until("the VM to show running", READY_TIMEOUT, || {
            api.get(&format!("/api/v1/vms/{}", vm.uuid())).1["power_state"] == "running"
        });
        vm
    }

    /// Waits until host `n`'s agent was last told to fence `count` VMs.
    pub fn wait_protected_on(&self, n: usize, count: usize) {
        let agent = &self.agents[n - 1];
        let what = format!("h{n}'s agent to be told to protect {count} VM(s)");
        let wanted = format!("protected={count} ");
        wait_until(&what, READY_TIMEOUT, || {
            agent
                .log()
                .lines()
                .rev()
                .find(|l| l.contains("HA configuration received"))
                .is_some_and(|l| l.contains(&wanted))
        });
    }

    /// Waits until the VM runs on host `n` (its QEMU in that namespace, and
    /// the controller showing it there) and nowhere else.
    pub fn wait_running_only_on(&self, vm: &TinyVm, n: usize) {
        let host = format!("lbh{n}");
        let api = self.api();
        let what = format!("{} to run on {host} only", vm.name());
        wait_until(&what, FAILOVER_DEADLINE, || {
            let (_, v) = api.get(&format!("/api/v1/vms/{}", vm.uuid()));
            running_qemu_hosts(vm.disk_file_name()) == [host.clone()]
                && v["host"] == self.host_ids[n - 1].as_str()
                && v["power_state"] == "running"
        });
    }

    /// Failovers, newest first.
    pub fn failovers(&self) -> Vec<Value> {
        let (status, body) = self.api().get("/api/v1/failovers");
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().unwrap_or_default()
    }

    /// The newest failover once it is done.
    pub fn wait_failover_done(&self) -> Value {
        let mut done = Value::Null;
        wait_until(
            "the failover to be recorded as done",
            FAILOVER_DEADLINE,
            || {
                done = self.failovers().first().cloned().unwrap_or(Value::Null);
                done["state"] == "done"
            },
        );
        done
    }

    /// Brings a killed host back (power on, libvirtd, its agent) and waits
    /// until it is online again and has forgotten VMs that moved away.
    pub fn revive(&mut self, n: usize) {
        self.cluster.host(n).restart();
        self.agents[n - 1].restart_without_token();
        self.api()
            .wait_host_status(&format!("h{n}"), "online", FAILOVER_DEADLINE);
    }
}

/// The steps of a failover record's timeline, in order.
pub fn failover_steps(failover: &Value) -> Vec<String> {
    failover["timeline"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter_map(|s| s["what"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

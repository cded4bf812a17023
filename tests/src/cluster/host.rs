//! One simulated hypervisor host of a [`crate::Cluster`]: a network namespace
//! `lbhN` and, inside it, a mount namespace held by an anchor process, where
//! the host's own virtlogd and libvirtd run over per-host libvirt
//! directories, and the cluster's shared storage is mounted at the host's
//! own path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::agent::{Agent, AgentOptions};
use crate::cluster::anchor;
use crate::cluster::net::{run, Netns, KILL_TIMEOUT};
use crate::controller::Controller;
use crate::libvirt::Libvirt;
use crate::process::{print_log_if_failing, LoggedProcess};
use crate::scratch::ScratchDir;
use crate::tiny_vm::TinyVm;
use crate::wait::poll_until;

/// What reaches into a host, shared by its [`Libvirt`] handles, tiny VMs
/// and agents so they follow it across a restart.
#[derive(Debug)]
pub(crate) struct HostNs {
    /// `lbhN`.
    pub(crate) name: String,
    /// The anchor process's pid; 0 while the host is down.
    anchor_pid: AtomicU32,
    /// Where the shared storage is mounted inside this host.
    pub(crate) shared_mount: PathBuf,
    /// The host's own `/var/lib/libvirt/images`, as the test process sees
    /// it; set when the host is created.
    pub(crate) local_images: std::sync::OnceLock<PathBuf>,
}

impl HostNs {
    pub(crate) fn is_up(&self) -> bool {
        self.anchor_pid() != 0
    }

    fn anchor_pid(&self) -> u32 {
        self.anchor_pid.load(Ordering::SeqCst)
    }

    /// `nsenter -t ANCHOR -m -n`, or `Err` while the host is down (a dead
    /// anchor's pid may belong to another process by now).
    pub(crate) fn nsenter_prefix(&self) -> Result<Vec<String>, String> {
        match self.anchor_pid() {
            0 => Err(format!("host {} is down", self.name)),
            pid => Ok(["nsenter", "-t", &pid.to_string(), "-m", "-n"]
                .map(str::to_string)
                .to_vec()),
        }
    }

    /// A command running `program` inside the host.
    pub(crate) fn command(&self, program: &str) -> Result<Command, String> {
        let prefix = self.nsenter_prefix()?;
        let mut command = Command::new(&prefix[0]);
        command.args(&prefix[1..]).arg(program);
        Ok(command)
    }
}

/// The cluster's shared storage, and every host that mounts it.
#[derive(Debug)]
pub(crate) struct SharedStorage {
    /// The directory, as the test process (root namespace) sees it.
    pub(crate) dir: PathBuf,
    pub(crate) hosts: Vec<Arc<HostNs>>,
}

/// One host of a [`crate::Cluster`]; all its methods take `&self`, so a test
/// can hold several hosts at once. It is torn down by the cluster's drop.
pub struct Host {
    index: usize,
    netns: Netns,
    ns: Arc<HostNs>,
    storage: Arc<SharedStorage>,
    state: Mutex<HostState>,
    scratch: ScratchDir,
}

#[derive(Default)]
struct HostState {
    anchor: Option<LoggedProcess>,
    killed_at: Option<Instant>,
    partitioned: bool,
}

impl Host {
    /// The description of host `index` (1-based); nothing is created yet.
    pub(crate) fn ns_for(index: usize) -> Arc<HostNs> {
        Arc::new(HostNs {
            name: format!("lbh{index}"),
            anchor_pid: AtomicU32::new(0),
            shared_mount: PathBuf::from(format!("/mnt/lifeboat-shared-h{index}")),
            local_images: std::sync::OnceLock::new(),
        })
    }

    /// Creates the host's network namespace and starts it (see
    /// [`Host::restart`] for what starting means).
    pub(crate) fn create(index: usize, ns: Arc<HostNs>, storage: Arc<SharedStorage>) -> Host {
        let subnet = u8::try_from(index).expect("host index fits a subnet number");
        let netns = Netns::new(&ns.name, subnet);
        let scratch = ScratchDir::new(&format!("host-{}", ns.name));
        anchor::prepare_dirs(scratch.path(), &ns.shared_mount);
        let images = scratch.path().join("lib/images");
        anchor::make_dir(&images);
        let _ = ns.local_images.set(images);
        let host = Host {
            index,
            netns,
            ns,
            storage,
            state: Mutex::new(HostState::default()),
            scratch,
        };
        host.netns.create();
        host.boot();
        host
    }

    /// `lbhN`: the network namespace's name, and the host's name in logs.
    pub fn name(&self) -> &str {
        &self.ns.name
    }

    /// N, from 1.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `10.77.N.2`, the host's address.
    pub fn address(&self) -> String {
        self.netns.address()
    }

    /// `10.77.N.1`, the root namespace's address on the host's link: where
    /// the host reaches the controller.
    pub fn gateway(&self) -> String {
        self.netns.gateway()
    }

    /// The pid of the process holding the host's mount namespace, or `None`
    /// while the host is down.
    pub fn anchor_pid(&self) -> Option<u32> {
        Some(self.ns.anchor_pid()).filter(|&pid| pid != 0)
    }

    /// True unless the host was killed (and not restarted).
    pub fn is_up(&self) -> bool {
        self.ns.is_up()
    }

    /// The host's libvirtd (`qemu:///system` inside the host); its virsh
    /// calls fail while the host is down.
    pub fn libvirt(&self) -> Libvirt {
        Libvirt::in_host(self.ns.clone(), self.storage.clone())
    }

    /// Where this host sees the shared storage: `/mnt/lifeboat-shared-hN`,
    /// a different path on every host (the product must map disk paths).
    pub fn shared_mount(&self) -> &Path {
        &self.ns.shared_mount
    }

    /// A tiny VM defined on this host, its disk on the shared storage; see
    /// [`TinyVm`].
    pub fn define_tiny_vm(&self, label: &str) -> TinyVm {
        self.libvirt().define_tiny_vm(label)
    }

    /// A tiny VM defined on this host with its disk on the host's own
    /// storage (`/var/lib/libvirt/images` inside it), which no other host
    /// sees: a VM that can fail over only by restore.
    pub fn define_local_tiny_vm(&self, label: &str) -> TinyVm {
        TinyVm::define_local(self.libvirt(), label)
    }

    /// The host's own `/var/lib/libvirt/images`, as the test process sees it.
    pub fn local_images(&self) -> &Path {
        self.ns
            .local_images
            .get()
            .expect("set when the host was created")
    }

    /// A command that runs `program` inside the host (its network and mount
    /// namespaces). Panics if the host is down.
    pub fn command(&self, program: &str) -> Command {
        self.ns.command(program).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The processes in the host's network namespace.
    pub fn pids(&self) -> Vec<u32> {
        self.netns.pids().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The host's `/var/log/libvirt` (libvirtd.log, virtlogd.log, and
    /// `qemu/<domain>.log`), as the test process sees it.
    pub fn libvirt_log_dir(&self) -> PathBuf {
        self.scratch.path().join("log")
    }

    /// How to start an agent for this host: it runs inside the host, dials
    /// the controller at `GATEWAY:AGENT_PORT` and manages the host's
    /// libvirtd; add flags with [`AgentOptions::arg`]. Every (re)start
    /// enters the host as it is then, so after [`Host::restart`] the agent
    /// is restarted with [`Agent::restart_without_token`]. Panics if the
    /// controller does not listen for agents on all addresses
    /// ([`crate::ControllerOptions::agent_listen_any`]).
    pub fn agent_options(&self, controller: &Controller, name: &str) -> AgentOptions {
        assert!(
            controller.agent_listen_any(),
            "agents in cluster hosts cannot reach a controller that listens on {}: \
             start it with Controller::options().agent_listen_any()",
            controller.agent_listen()
        );
        let ns = self.ns.clone();
        Agent::options(name)
            .controller_addr(&format!("{}:{}", self.gateway(), controller.agent_port()))
            .libvirt_uri(self.libvirt().uri())
            .command_prefix(move || {
                ns.nsenter_prefix()
                    .unwrap_or_else(|e| panic!("cannot start an agent: {e}"))
            })
    }

    /// Enrolls and starts an agent called `name` inside this host, see
    /// [`Host::agent_options`]. Does not wait for it to come online.
    pub fn start_agent(&self, controller: &Controller, name: &str) -> Agent {
        self.agent_options(controller, name).start(controller)
    }

    /// Powers the host off: SIGKILLs every process in its namespace (QEMU,
    /// libvirtd, virtlogd, the agent, the anchor) until none is left, and
    /// takes its NIC down, so it answers neither TCP nor ARP. Returns the
    /// instant just before the first kill (also [`Host::killed_at`]), for
    /// timing failovers. Its domain definitions and disks stay. Panics if
    /// the host is already down or processes survive 30 s.
    pub fn kill(&self) -> Instant {
        let mut state = self.state();
        assert!(
            self.is_up(),
            "kill {}: the host is already down",
            self.name()
        );
        // First, so nothing enters the namespace through a dead pid.
        self.ns.anchor_pid.store(0, Ordering::SeqCst);
        let at = Instant::now();
        let first = self.netns.pids().unwrap_or_default();
        super::net::kill_9(&first);
        let down = self.netns.link_down();
        self.netns
            .kill_all(KILL_TIMEOUT)
            .unwrap_or_else(|e| panic!("kill {}: {e}", self.name()));
        down.unwrap_or_else(|e| panic!("kill {}: {e}", self.name()));
        if let Some(mut anchor) = state.anchor.take() {
            anchor.kill_9(); // reaps it
        }
        state.killed_at = Some(at);
        at
    }

    /// When [`Host::kill`] last killed the host.
    pub fn killed_at(&self) -> Option<Instant> {
        self.state().killed_at
    }

    /// Starts a killed host again, as after a power cycle: the NIC up, an
    /// empty `/run/libvirt`, a new anchor, virtlogd and libvirtd, which keep
    /// the host's domain definitions (and autostart what is marked so).
    /// Agents do not come back by themselves: restart them with
    /// [`Agent::restart_without_token`]. A partition survives the restart
    /// (it is the network's, not the host's). Panics if the host is up.
    pub fn restart(&self) {
        assert!(
            !self.is_up(),
            "restart {}: the host is up; kill() it first",
            self.name()
        );
        anchor::empty_run_dir(self.scratch.path());
        self.netns.link_up();
        self.boot();
        self.warm_up();
    }

    /// Cuts the host off the network: iptables rules inside its namespace
    /// drop everything in and out of its NIC (connections to it time out),
    /// while everything in it keeps running. The shared storage stays
    /// reachable: it is a local mount. Panics if already partitioned.
    pub fn partition(&self) {
        let mut state = self.state();
        assert!(!state.partitioned, "{} is already partitioned", self.name());
        for rule in self.partition_rules() {
            self.iptables("-I", &rule)
                .unwrap_or_else(|e| panic!("partition {}: {e}", self.name()));
        }
        state.partitioned = true;
    }

    /// Removes the rules of [`Host::partition`]. Panics if not partitioned.
    pub fn heal(&self) {
        let mut state = self.state();
        assert!(state.partitioned, "{} is not partitioned", self.name());
        for rule in self.partition_rules() {
            self.iptables("-D", &rule)
                .unwrap_or_else(|e| panic!("heal {}: {e}", self.name()));
        }
        state.partitioned = false;
    }

    pub fn is_partitioned(&self) -> bool {
        self.state().partitioned
    }

    /// Makes the host's libvirtd load what it knows of QEMU now, not on the
    /// first VM start a test may be timing (see [`anchor::keep_capabilities`]),
    /// and keeps a copy of that for the hosts of later clusters.
    pub(crate) fn warm_up(&self) {
        self.libvirt().virsh(&["domcapabilities"]);
        if self.index == 1 {
            anchor::keep_capabilities(self.scratch.path());
        }
    }

    /// Kills everything in the host and prints its logs if the test is
    /// failing; the namespace itself is removed by the cluster.
    pub(crate) fn tear_down(&self) -> Result<(), String> {
        self.ns.anchor_pid.store(0, Ordering::SeqCst);
        let killed = self.netns.kill_all(KILL_TIMEOUT);
        if let Some(mut anchor) = self.state().anchor.take() {
            anchor.kill_9();
        }
        let what = format!("{} anchor", self.name());
        print_log_if_failing(&what, &self.scratch.path().join("anchor.log"));
        let libvirtd = format!("{} libvirtd", self.name());
        print_log_if_failing(&libvirtd, &self.libvirt_log_dir().join("libvirtd.log"));
        killed
    }

    fn partition_rules(&self) -> [Vec<String>; 2] {
        let nic = self.netns.inner_if();
        [
            ["INPUT", "-i", &nic, "-j", "DROP"]
                .map(str::to_string)
                .to_vec(),
            ["OUTPUT", "-o", &nic, "-j", "DROP"]
                .map(str::to_string)
                .to_vec(),
        ]
    }

    fn iptables(&self, action: &str, rule: &[String]) -> Result<String, String> {
        run(self.netns.exec("iptables").arg("-w").arg(action).args(rule))
    }

    fn state(&self) -> MutexGuard<'_, HostState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Starts the anchor (see [`anchor::start`]) and waits until the host's
    /// libvirtd answers.
    fn boot(&self) {
        let anchor = anchor::start(
            &self.netns,
            self.scratch.path(),
            &self.storage.dir,
            self.shared_mount(),
        );
        self.ns.anchor_pid.store(anchor.pid(), Ordering::SeqCst);
        self.state().anchor = Some(anchor);
        let libvirt = self.libvirt();
        let what = format!(
            "libvirtd in {} to answer (see {})",
            self.name(),
            self.libvirt_log_dir().join("libvirtd.log").display()
        );
        poll_until(&what, anchor::START_TIMEOUT, || libvirt.try_virsh(&["uri"]));
    }
}

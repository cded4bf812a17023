//! Several hypervisor hosts on one machine, for failover tests: each host is
//! a network namespace `lbhN` (address `10.77.N.2`, gateway `10.77.N.1` in
//! the root namespace) with its own libvirtd over its own libvirt
//! directories, and all of them mount one shared-storage directory, each at
//! its own path. Hosts can be killed (powered off), partitioned and healed;
//! [`DoubleRunMonitor`] watches that no VM disk is ever used by two QEMUs;
//! a [`PhysicalMachine`] is a plain service in a namespace of its own.
//!
//! ```no_run
//! use lifeboat_e2e::*;
//! use std::time::Duration;
//!
//! let cluster = Cluster::start(2);
//! let controller = Controller::options().agent_listen_any().start();
//! let (h1, h2) = (cluster.host(1), cluster.host(2));
//! let _a1 = h1.start_agent(&controller, "h1");
//! let _a2 = h2.start_agent(&controller, "h2");
//! let vm = h1.define_tiny_vm("ha");
//! let monitor = DoubleRunMonitor::start(&[vm.disk_file_name()]);
//! vm.start();
//! h1.kill();
//! // ... the product restarts the VM on h2 ...
//! monitor.assert_never_doubled();
//! ```
//!
//! Guarantees:
//! - One cluster at a time on the machine (a [`HostLock`] held for its
//!   lifetime); leftovers of a killed earlier run (namespaces `lbh1`..
//!   `lbh9`, their processes and veths, shared directories of dead test
//!   processes) are swept when a cluster starts.
//! - Hosts never touch the machine's own libvirtd, its domain definitions,
//!   pid files or [`Libvirt::ensure`]'s image directory, nor it theirs.
//! - When the cluster drops, every `lbe2e-` domain on every host that is up
//!   is destroyed and undefined, every process in the hosts is killed, the
//!   namespaces and veths are deleted, and the shared directory and the
//!   mount points are removed.

mod anchor;
mod host;
mod monitor;
mod net;
mod physical;
mod proc_events;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use host::Host;
pub(crate) use host::{HostNs, SharedStorage};
pub use monitor::{running_qemu_hosts, DoubleRun, DoubleRunMonitor, QemuProcess};
pub use net::{probe_tcp, TcpProbe};
pub use physical::PhysicalMachine;

use crate::host_lock::HostLock;
use crate::libvirt::{is_leftover, let_qemu_use_kvm, Libvirt, NAME_PREFIX};
use crate::scratch::unique_suffix;
use anchor::make_dir;
use net::Netns;

/// Where shared-storage directories are made, one per cluster:
/// `<SHARED_ROOT>/<pid>-<n>-<time>`.
pub const SHARED_ROOT: &str = "/srv/lifeboat-e2e-shared";
/// Host numbers are subnet numbers; 9 is the [`PhysicalMachine`]'s.
const MAX_HOSTS: usize = 8;
/// Leftover host namespaces swept at start: `lbh1`..`lbh9`.
const SWEPT_HOSTS: usize = 9;

/// A running cluster; see the module documentation.
pub struct Cluster {
    hosts: Vec<Host>,
    /// How many hosts were asked for: all of their namespaces are removed on
    /// drop, even those of hosts whose start failed half-way.
    count: usize,
    storage: Arc<SharedStorage>,
    // Dropped last: the next cluster may start only once this one is gone.
    _lock: HostLock,
}

impl Cluster {
    /// Starts `hosts` hosts (1 to 8; failover tests use 2 or 3), each with
    /// its libvirtd answering, and the shared storage mounted in each.
    /// Waits (up to five minutes) for another cluster on the machine to go.
    pub fn start(hosts: usize) -> Cluster {
        assert!(
            (1..=MAX_HOSTS).contains(&hosts),
            "a cluster has 1 to {MAX_HOSTS} hosts, not {hosts}"
        );
        let lock = HostLock::acquire("cluster");
        sweep_leftovers();
        let_qemu_use_kvm();
        make_dir(Path::new(SHARED_ROOT));
        let shared_dir = Path::new(SHARED_ROOT).join(unique_suffix());
        make_dir(&shared_dir);
        let storage = Arc::new(SharedStorage {
            dir: shared_dir,
            hosts: (1..=hosts).map(Host::ns_for).collect(),
        });
        let mut cluster = Cluster {
            hosts: Vec::new(),
            count: hosts,
            storage: storage.clone(),
            _lock: lock,
        };
        for (i, ns) in storage.hosts.iter().enumerate() {
            let host = Host::create(i + 1, ns.clone(), storage.clone());
            cluster.hosts.push(host);
        }
        std::thread::scope(|scope| {
            for host in &cluster.hosts {
                scope.spawn(|| host.warm_up());
            }
        });
        cluster
    }

    /// Host `n`, counting from 1 like the names (`lbh1`).
    pub fn host(&self, n: usize) -> &Host {
        assert!(
            (1..=self.hosts.len()).contains(&n),
            "host {n} of a cluster of {}",
            self.hosts.len()
        );
        &self.hosts[n - 1]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The shared storage as the test process (root namespace) sees it; a
    /// host sees it at [`Host::shared_mount`]. Mode 0755 along the path.
    pub fn shared_dir(&self) -> &Path {
        &self.storage.dir
    }

    /// The names of the hosts that are up and have a domain `name` defined.
    pub fn hosts_defining(&self, name: &str) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| h.is_up())
            .filter(|h| h.libvirt().try_virsh(&["domstate", name]).is_ok())
            .map(|h| h.name().to_string())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for host in self.hosts.iter().filter(|h| h.is_up()) {
            remove_test_domains(&host.libvirt());
        }
        for host in &self.hosts {
            if let Err(e) = host.tear_down() {
                eprintln!("tearing down {}: {e}", host.name());
            }
        }
        for netns in (1..=self.count).map(host_netns) {
            if let Err(e) = netns.remove() {
                eprintln!("removing namespace {}: {e}", netns.name);
            }
        }
        remove_shared_dir(&self.storage.dir);
        for ns in &self.storage.hosts {
            let _ = std::fs::remove_dir(&ns.shared_mount); // only if empty
        }
    }
}

/// Destroys and undefines every `lbe2e-` domain of `libvirt`, best effort.
fn remove_test_domains(libvirt: &Libvirt) {
    let Ok(names) = libvirt.try_virsh(&["list", "--all", "--name"]) else {
        return;
    };
    for name in names.lines().map(str::trim) {
        if name.starts_with(NAME_PREFIX) {
            if let Err(e) = libvirt.try_remove_domain(name) {
                eprintln!("{e}");
            }
        }
    }
}

fn host_netns(index: usize) -> Netns {
    let subnet = u8::try_from(index).expect("host index fits a subnet number");
    Netns::new(&format!("lbh{index}"), subnet)
}

/// Removes what a killed earlier run left: host namespaces with their
/// processes and veths, and shared directories of dead test processes.
/// Only called with the cluster lock held, so none of it is in use.
fn sweep_leftovers() {
    for netns in (1..=SWEPT_HOSTS).map(host_netns) {
        netns
            .remove()
            .unwrap_or_else(|e| panic!("sweeping leftover namespace {}: {e}", netns.name));
    }
    let Ok(entries) = std::fs::read_dir(SHARED_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        // `<pid>-...`: the same test as the domain names'.
        let name = format!("{NAME_PREFIX}{}", entry.file_name().to_string_lossy());
        if is_leftover(&name) {
            remove_shared_dir(&entry.path());
        }
    }
}

fn remove_shared_dir(dir: &PathBuf) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("removing {}: {e}", dir.display());
        }
    }
}

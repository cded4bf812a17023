//! Harness for the end-to-end tests: starts the real `lifeboat` controller and
//! `lifeboat-agent` binaries, a real libvirtd with tiny real VMs, and Debian's
//! Chromium, and talks to them the way an operator's tools would.
//!
//! A test reads like this:
//! ```no_run
//! use lifeboat_e2e::*;
//! use std::time::Duration;
//!
//! let libvirt = Libvirt::ensure();
//! let vm = libvirt.define_tiny_vm("power");
//! let controller = Controller::start();
//! let _agent = Agent::start(&controller, "host-a", Some(libvirt.uri()));
//! let api = controller.api();
//! api.wait_host_status("host-a", "online", Duration::from_secs(30));
//! let found = api.wait_vm(vm.name(), Duration::from_secs(30));
//! let job = api.post_job(
//!     &format!("/api/v1/vms/{}/power", found["id"].as_str().unwrap()),
//!     &json!({"action": "start"}),
//!     Duration::from_secs(60),
//! );
//! assert_eq!(job["state"], "succeeded", "{}", controller.log());
//! assert_eq!(libvirt.domstate(vm.name()), "running");
//! ```
//!
//! Guarantees the tests can lean on:
//! - Every process a test starts is SIGKILLed when its handle drops; its
//!   stdout and stderr are in a log file, and the tail of that log is printed
//!   when the test fails.
//! - Every libvirt domain made by [`Libvirt::define_tiny_vm`] is named
//!   `lbe2e-<pid>-...` and is destroyed and undefined, with its disk, when its
//!   guard drops; ones left by a killed test run are swept on the next run.
//! - Failover tests get several hosts on this one machine, each a network
//!   namespace with its own libvirtd and agent over shared storage, that
//!   can be killed and partitioned: see [`Cluster`]; [`DoubleRunMonitor`]
//!   proves no VM disk ever runs twice.
//! - Scratch directories live under `$TMPDIR/lifeboat-e2e/` and are kept when
//!   a test fails (or `LIFEBOAT_E2E_KEEP=1`), removed otherwise.
//! - Nothing sleeps for a fixed time: every wait polls against a deadline and
//!   panics with a message naming what it waited for.
//!
//! The binaries come from the cargo target directory this test was built in
//! (override with `LIFEBOAT_BIN` and `LIFEBOAT_AGENT_BIN`); they are not
//! dependencies of this crate, so build them first:
//! `cargo build -p lifeboat -p lifeboat-agent` (`tests/run` does).
//!
//! Every test runs in CI, long scenarios included: none is ignored.

mod agent;
mod api;
mod appliance;
mod binaries;
mod browser;
mod cluster;
mod console_client;
mod controller;
mod guest;
mod ha_cluster;
mod host_lock;
mod hostile_agent;
mod image;
mod libvirt;
mod ports;
mod postgres;
mod process;
mod receivers;
mod rsyslog;
mod scratch;
mod shares;
mod slapd;
mod snmptrapd;
mod tiny_vm;
mod wait;

pub use agent::{Agent, AgentOptions};
pub use api::{Api, RawResponse};
pub use appliance::{accelerator, pinned_ca, Appliance, ApplianceImage, Hardware};
pub use binaries::{agent_binary, controller_binary};
pub use browser::browser_screenshots;
pub use cluster::{
    probe_tcp, running_qemu_hosts, Cluster, DoubleRun, DoubleRunMonitor, Host, PhysicalMachine,
    QemuProcess, TcpProbe, SHARED_ROOT,
};
pub use console_client::{csrf_of, ConsoleClient};
pub use controller::{Controller, ControllerOptions, ADMIN_USER, DEFAULT_ADMIN_PASSWORD};
pub use guest::{LinuxGuest, DISK_BOOTED_LINE};
pub use ha_cluster::{failover_steps, HaCluster, FAILOVER_DEADLINE};
pub use host_lock::HostLock;
pub use hostile_agent::{json_frame, reported_vm, stranger_tls, web_tls, HostileAgent, TlsStream};
pub use image::{assert_image_pattern, sha256_file, write_image_pattern};
pub use libvirt::{virt_type, Libvirt, RestoredVm};
pub use ports::free_port;
pub use postgres::{Postgres, PG_DATABASE, PG_PASSWORD, PG_USER};
pub use process::status_kib;
pub use receivers::Receiver;
pub use rsyslog::Rsyslog;
pub use scratch::ScratchDir;
pub use serde_json::{json, Value};
pub use shares::{NfsServer, SmbServer};
pub use slapd::{
    user_dn, Slapd, ADMIN_DN as LDAP_ADMIN_DN, ADMIN_PASSWORD as LDAP_ADMIN_PASSWORD,
    BASE_DN as LDAP_BASE_DN,
};
pub use snmptrapd::{Snmptrapd, TrapUser};
pub use tiny_vm::TinyVm;
pub use wait::{poll_until, wait_until, READY_TIMEOUT};

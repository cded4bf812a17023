//! A physical (non-virtual) machine on the test network: the namespace
//! `lbp1` at `10.77.9.2` (gateway `10.77.9.1`), serving HTTP with Python's
//! `http.server`, for tests of things a product watches or reaches that are
//! not hypervisor hosts.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cluster::net::{Netns, TcpProbe, KILL_TIMEOUT};
use crate::host_lock::HostLock;
use crate::process::{print_log_if_failing, LoggedProcess};
use crate::scratch::ScratchDir;
use crate::wait::{poll_until, READY_TIMEOUT};

const NAME: &str = "lbp1";
const SUBNET: u8 = 9;
/// The port its HTTP service listens on (it has the namespace to itself).
const HTTP_PORT: u16 = 8080;

/// A running physical machine; one at a time on the machine (a host lock,
/// independent of [`crate::Cluster`]'s), leftovers of a killed run swept at
/// start. Everything in it is killed and the namespace deleted on drop.
pub struct PhysicalMachine {
    netns: Netns,
    server: Mutex<Option<LoggedProcess>>,
    killed_at: Mutex<Option<Instant>>,
    scratch: ScratchDir,
    // Dropped last.
    _lock: HostLock,
}

impl PhysicalMachine {
    /// Creates the namespace and starts the HTTP service (it serves one
    /// file, `index.html`), and waits until the test process can fetch it.
    pub fn start() -> PhysicalMachine {
        let lock = HostLock::acquire("physical-machine");
        let netns = Netns::new(NAME, SUBNET);
        netns
            .remove()
            .unwrap_or_else(|e| panic!("sweeping leftover namespace {NAME}: {e}"));
        let scratch = ScratchDir::new("physical-machine");
        let www = scratch.path().join("www");
        std::fs::create_dir_all(&www).unwrap_or_else(|e| panic!("create {}: {e}", www.display()));
        std::fs::write(www.join("index.html"), "lifeboat-e2e physical machine\n")
            .unwrap_or_else(|e| panic!("write index.html: {e}"));
        let machine = PhysicalMachine {
            netns,
            server: Mutex::new(None),
            killed_at: Mutex::new(None),
            scratch,
            _lock: lock,
        };
        machine.netns.create();
        let mut command = machine.netns.exec("python3");
        command
            .args(["-m", "http.server", &HTTP_PORT.to_string(), "--bind"])
            .arg(machine.address())
            .arg("--directory")
            .arg(&www);
        let log = machine.scratch.path().join("http.log");
        let server = LoggedProcess::spawn("physical machine HTTP service", command, &log);
        *lock_ignoring_poison(&machine.server) = Some(server);
        let what = format!(
            "the HTTP service of {NAME} at {}:{HTTP_PORT}",
            machine.address()
        );
        poll_until(&what, READY_TIMEOUT, || {
            match super::probe_tcp(&machine.address(), HTTP_PORT, Duration::from_secs(1)) {
                TcpProbe::Connected => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        machine
    }

    /// `lbp1`.
    pub fn name(&self) -> &str {
        NAME
    }

    /// `10.77.9.2`.
    pub fn address(&self) -> String {
        self.netns.address()
    }

    /// `10.77.9.1`, the root namespace's address on its link.
    pub fn gateway(&self) -> String {
        self.netns.gateway()
    }

    /// The TCP port of its HTTP service.
    pub fn port(&self) -> u16 {
        HTTP_PORT
    }

    /// `http://10.77.9.2:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}:{HTTP_PORT}/", self.address())
    }

    /// Powers it off: SIGKILLs every process in its namespace until none is
    /// left and takes its NIC down. Returns the instant just before.
    pub fn kill(&self) -> Instant {
        let at = Instant::now();
        let down = self.netns.link_down();
        self.netns
            .kill_all(KILL_TIMEOUT)
            .unwrap_or_else(|e| panic!("kill {NAME}: {e}"));
        down.unwrap_or_else(|e| panic!("kill {NAME}: {e}"));
        if let Some(mut server) = lock_ignoring_poison(&self.server).take() {
            server.kill_9();
        }
        *lock_ignoring_poison(&self.killed_at) = Some(at);
        at
    }

    /// When [`PhysicalMachine::kill`] killed it.
    pub fn killed_at(&self) -> Option<Instant> {
        *lock_ignoring_poison(&self.killed_at)
    }
}

impl Drop for PhysicalMachine {
    fn drop(&mut self) {
        if let Some(mut server) = lock_ignoring_poison(&self.server).take() {
            server.kill_9();
        }
        print_log_if_failing(
            "physical machine HTTP service",
            &self.scratch.path().join("http.log"),
        );
        if let Err(e) = self.netns.remove() {
            eprintln!("removing namespace {NAME}: {e}");
        }
    }
}

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

//! Network namespaces for the simulated machines, driven with iproute2: one
//! veth pair each, `10.77.S.1/24` on the root side and `10.77.S.2/24` inside,
//! where S is the machine's subnet number.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::wait::try_poll_until;

/// How long killing every process of a namespace may take.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// One simulated machine's network: the namespace `name`, the veth pair
/// `<name>r` (root side) / `<name>h` (inside), and the subnet `10.77.S.0/24`.
#[derive(Clone, Debug)]
pub(crate) struct Netns {
    pub(crate) name: String,
    pub(crate) subnet: u8,
}

impl Netns {
    pub(crate) fn new(name: &str, subnet: u8) -> Netns {
        Netns {
            name: name.to_string(),
            subnet,
        }
    }

    /// The veth end in the root namespace.
    pub(crate) fn root_if(&self) -> String {
        format!("{}r", self.name)
    }

    /// The veth end inside the namespace: the machine's NIC.
    pub(crate) fn inner_if(&self) -> String {
        format!("{}h", self.name)
    }

    /// The machine's address, inside the namespace.
    pub(crate) fn address(&self) -> String {
        format!("10.77.{}.2", self.subnet)
    }

    /// The root side's address: the machine's gateway, and where it reaches
    /// services of the root namespace (the controller).
    pub(crate) fn gateway(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    /// Creates the namespace and veth pair, addresses them, brings up both
    /// ends and `lo`, and routes by default through the gateway. Leftovers of
    /// the same name must have been removed first ([`Netns::remove`]).
    pub(crate) fn create(&self) {
        self.write_etc();
        let (name, root_if, inner_if) = (&self.name, self.root_if(), self.inner_if());
        let steps: [&[&str]; 5] = [
            &["netns", "add", name],
            &[
                "link", "add", &root_if, "type", "veth", "peer", "name", &inner_if, "netns", name,
            ],
            &[
                "addr",
                "add",
                &format!("{}/24", self.gateway()),
                "dev",
                &root_if,
            ],
            &["link", "set", &root_if, "up"],
            &[
                "-n",
                name,
                "addr",
                "add",
                &format!("{}/24", self.address()),
                "dev",
                &inner_if,
            ],
        ];
        for args in steps {
            ip(args).unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        }
        ip(&["-n", name, "link", "set", "lo", "up"])
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        self.link_up();
    }

    /// `/etc/netns/NAME/{hosts,resolv.conf}`, which `ip netns exec` mounts
    /// over /etc's for what it starts: the machine knows its own name, and
    /// has no DNS server (the root's is not reachable from the test network,
    /// and a lookup would hang for seconds: Python's `http.server` looks up
    /// its own address before it listens). `localhost` still resolves.
    fn write_etc(&self) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let files = [
            (
                "hosts",
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost\n{}\t{}\n",
                    self.address(),
                    self.name
                ),
            ),
            (
                "resolv.conf",
                "# lifeboat-e2e: no DNS in the test network; lookups fail at once\n\
                 nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
                    .to_string(),
            ),
        ];
        for (file, text) in files {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    }

    fn etc_dir(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    /// Brings the machine's NIC up and (again: taking a link down drops its
    /// routes) routes by default through the gateway.
    pub(crate) fn link_up(&self) {
        let name = &self.name;
        ip(&["-n", name, "link", "set", &self.inner_if(), "up"])
            .and_then(|_| {
                ip(&[
                    "-n",
                    name,
                    "route",
                    "replace",
                    "default",
                    "via",
                    &self.gateway(),
                ])
            })
            .unwrap_or_else(|e| panic!("bringing up the network of {name}: {e}"));
    }

    /// Takes the machine's NIC down: connections to it then fail as to a
    /// powered-off machine on a LAN (no ARP answer: "no route to host"
    /// after about 3 s), not with a refusal.
    pub(crate) fn link_down(&self) -> Result<(), String> {
        ip(&["-n", &self.name, "link", "set", &self.inner_if(), "down"]).map(drop)
    }

    /// Runs `program` in the namespace (network only, the root's mounts).
    pub(crate) fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    pub(crate) fn exists(&self) -> bool {
        Path::new("/run/netns").join(&self.name).exists()
    }

    /// The processes in the namespace (not zombies: they have left it).
    pub(crate) fn pids(&self) -> Result<Vec<u32>, String> {
        let out = ip(&["netns", "pids", &self.name])?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// SIGKILLs every process in the namespace, again and again until none
    /// is left (a dying libvirtd may still fork), for up to `timeout`.
    pub(crate) fn kill_all(&self, timeout: Duration) -> Result<(), String> {
        try_poll_until(timeout, || {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            kill_9(&pids);
            Err(format!("processes still in {}: {pids:?}", self.name))
        })
    }

    /// Kills every process in the namespace and deletes it with its veth
    /// pair and its /etc files, waiting until the pair is gone (the kernel
    /// frees a deleted namespace's devices asynchronously). Also removes a
    /// lone root-side veth end without a namespace. Nothing there is not an
    /// error.
    pub(crate) fn remove(&self) -> Result<(), String> {
        if self.exists() {
            self.kill_all(KILL_TIMEOUT)?;
        }
        let root_if = self.root_if();
        if link_exists(&root_if) {
            ip(&["link", "del", &root_if])?;
        }
        if self.exists() {
            ip(&["netns", "del", &self.name])?;
        }
        let etc = self.etc_dir();
        if etc.exists() {
            std::fs::remove_dir_all(&etc).map_err(|e| format!("remove {}: {e}", etc.display()))?;
        }
        try_poll_until(KILL_TIMEOUT, || {
            if link_exists(&root_if) {
                Err(format!("{root_if} still exists"))
            } else {
                Ok(())
            }
        })
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// `kill -9 PIDS`; processes that are already gone are fine.
pub(crate) fn kill_9(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-9")
        .args(pids.iter().map(u32::to_string))
        .output();
}

/// `ip ARGS`, its stdout, or its stderr as the error.
pub(crate) fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// Runs `command` to completion: its stdout, or a message with its stderr.
pub(crate) fn run(command: &mut Command) -> Result<String, String> {
    let described = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let output = command
        .output()
        .map_err(|e| format!("cannot run {described}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{described} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// What a TCP connect saw, see [`probe_tcp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpProbe {
    /// Something listens there.
    Connected,
    /// The machine answered that nothing listens there: it is up and
    /// reachable.
    Refused,
    /// No answer within the timeout: a partition (packets dropped).
    TimedOut,
    /// The network said the machine cannot be reached (e.g. "no route to
    /// host": nobody answers ARP for it, as for a powered-off machine).
    Unreachable(String),
}

/// Connects to `address:port` from the test process (the root namespace)
/// once, waiting at most `timeout`, and says how that went.
pub fn probe_tcp(address: &str, port: u16, timeout: Duration) -> TcpProbe {
    let target: SocketAddr = format!("{address}:{port}")
        .parse()
        .unwrap_or_else(|e| panic!("bad address {address}:{port}: {e}"));
    match TcpStream::connect_timeout(&target, timeout) {
        Ok(_) => TcpProbe::Connected,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => TcpProbe::Refused,
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            TcpProbe::TimedOut
        }
        Err(e) => TcpProbe::Unreachable(e.to_string()),
    }
}

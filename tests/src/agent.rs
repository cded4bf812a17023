//! A real `lifeboat-agent` process enrolled with a test's controller: the
//! harness mints the enrollment token, the agent keeps its identity in its
//! own state directory and can be killed and restarted without a token.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::binaries::agent_binary;
use crate::controller::Controller;
use crate::process::{print_log_if_failing, read_log, LoggedProcess};
use crate::scratch::ScratchDir;

/// How to start an agent; [`Agent::start`] is the usual shortcut.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    name: String,
    libvirt_uri: Option<String>,
    controller_addr: Option<String>,
    command_prefix: Option<CommandPrefix>,
    binary: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// Words put before the agent binary on every (re)start, computed anew each
/// time: e.g. `nsenter -t PID -m -n` for a host whose anchor changes when
/// the host restarts.
#[derive(Clone)]
struct CommandPrefix(Arc<dyn Fn() -> Vec<String> + Send + Sync>);

impl fmt::Debug for CommandPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandPrefix({:?})", (self.0)())
    }
}

impl AgentOptions {
    /// The hypervisor to manage, e.g. [`crate::Libvirt::uri`]. Without it
    /// the agent uses its own default.
    pub fn libvirt_uri(mut self, uri: &str) -> Self {
        self.libvirt_uri = Some(uri.to_string());
        self
    }

    /// The controller address the agent dials, instead of
    /// [`Controller::agent_addr`] (loopback): e.g. the controller's address
    /// as seen from a cluster host, see [`crate::Host::agent_options`].
    pub fn controller_addr(mut self, addr: &str) -> Self {
        self.controller_addr = Some(addr.to_string());
        self
    }

    /// Runs the agent as `PREFIX... lifeboat-agent ARGS...`, with the prefix
    /// computed by `prefix` on every start and restart (it may panic to
    /// refuse a start, saying why). The process the harness kills is the
    /// prefix's first word, so the prefix must `exec` the agent (as
    /// `nsenter` without `--fork` does), not fork it.
    pub fn command_prefix(
        mut self,
        prefix: impl Fn() -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.command_prefix = Some(CommandPrefix(Arc::new(prefix)));
        self
    }

    /// Runs this agent binary instead of [`agent_binary`] (e.g. one
    /// downloaded from the appliance).
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// An extra argument, passed on every start.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Mints an enrollment token on `controller` and starts the agent with
    /// it. Does not wait: use [`crate::Api::wait_host_status`] for that.
    pub fn start(self, controller: &Controller) -> Agent {
        let (token, ca_fingerprint) = controller.api().enrollment_token();
        let addr = self
            .controller_addr
            .clone()
            .unwrap_or_else(|| controller.agent_addr());
        self.enroll(&addr, &token, &ca_fingerprint)
    }

    /// Starts the agent against the controller at `controller_addr` with a
    /// token minted elsewhere (e.g. shown by an appliance's console).
    pub fn enroll(self, controller_addr: &str, token: &str, ca_fingerprint: &str) -> Agent {
        let mut agent = self.prepare(controller_addr);
        agent.launch(Some((token, ca_fingerprint)));
        agent
    }

    /// Starts one agent process that plays `hosts` simulated hosts
    /// (`--driver sim --sim-hosts`, named NAME-0000, NAME-0001, ...), each
    /// enrolled with its own token from a token file. Load tests only.
    pub fn start_sim_fleet(mut self, controller: &Controller, hosts: usize) -> Agent {
        let api = controller.api();
        let (tokens, fingerprints): (Vec<String>, Vec<String>) =
            (0..hosts).map(|_| api.enrollment_token()).unzip();
        let addr = self
            .controller_addr
            .clone()
            .unwrap_or_else(|| controller.agent_addr());
        self.args.extend(["--driver".into(), "sim".into()]);
        self.args.extend(["--sim-hosts".into(), hosts.to_string()]);
        let mut agent = self.prepare(&addr);
        let token_file = agent.state_dir.with_file_name("tokens");
        std::fs::write(&token_file, tokens.join("\n"))
            .unwrap_or_else(|e| panic!("write {}: {e}", token_file.display()));
        let fingerprint = fingerprints.first().expect("a fleet of at least one host");
        agent.options.args.extend([
            "--token-file".into(),
            token_file.display().to_string(),
            "--ca-fingerprint".into(),
            fingerprint.clone(),
        ]);
        agent.launch(None);
        agent
    }

    fn prepare(self, controller_addr: &str) -> Agent {
        let scratch = ScratchDir::new(&format!("agent-{}", self.name));
        let state_dir = scratch.path().join("state");
        std::fs::create_dir_all(&state_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", state_dir.display()));
        Agent {
            process: None,
            controller_addr: controller_addr.to_string(),
            state_dir,
            log_path: scratch.path().join("agent.log"),
            options: self,
            _scratch: scratch,
        }
    }
}

pub struct Agent {
    // Dropped first: the process dies before its state directory goes.
    process: Option<LoggedProcess>,
    controller_addr: String,
    state_dir: PathBuf,
    log_path: PathBuf,
    options: AgentOptions,
    _scratch: ScratchDir,
}

impl Agent {
    /// Enrolls and starts an agent called `name` that manages `libvirt_uri`.
    pub fn start(controller: &Controller, name: &str, libvirt_uri: Option<&str>) -> Agent {
        let mut options = Agent::options(name);
        if let Some(uri) = libvirt_uri {
            options = options.libvirt_uri(uri);
        }
        options.start(controller)
    }

    pub fn options(name: &str) -> AgentOptions {
        AgentOptions {
            name: name.to_string(),
            libvirt_uri: None,
            controller_addr: None,
            command_prefix: None,
            binary: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.options.name
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the agent printed, across restarts.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The process id, or `None` after [`Agent::kill_9`].
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(LoggedProcess::pid)
    }

    /// Kills the agent with SIGKILL, as a crash would.
    pub fn kill_9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_9();
        }
    }

    /// Kills the agent if it runs and starts it again on the same state
    /// directory, without token or fingerprint: it must reuse its identity.
    pub fn restart_without_token(&mut self) {
        self.kill_9();
        self.launch(None);
    }

    fn launch(&mut self, enrollment: Option<(&str, &str)>) {
        let binary = self.options.binary.clone().unwrap_or_else(agent_binary);
        let mut command = match &self.options.command_prefix {
            None => Command::new(&binary),
            Some(CommandPrefix(prefix)) => {
                let words = prefix();
                let (program, args) = words
                    .split_first()
                    .unwrap_or_else(|| panic!("agent {}: empty command prefix", self.options.name));
                let mut command = Command::new(program);
                command.args(args).arg(&binary);
                command
            }
        };
        command.arg("--controller").arg(&self.controller_addr);
        if let Some((token, ca_fingerprint)) = enrollment {
            command
                .arg("--token")
                .arg(token)
                .arg("--ca-fingerprint")
                .arg(ca_fingerprint);
        }
        command
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--name")
            .arg(&self.options.name);
        if let Some(uri) = &self.options.libvirt_uri {
            command.arg("--libvirt-uri").arg(uri);
        }
        command
            .args(&self.options.args)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)));
        let what = format!("agent {}", self.options.name);
        self.process = Some(LoggedProcess::spawn(&what, command, &self.log_path));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill_9();
        print_log_if_failing(&format!("agent {}", self.options.name), &self.log_path);
    }
}

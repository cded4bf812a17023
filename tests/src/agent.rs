//! A real `lifeboat-agent` process enrolled with a test's controller: the
//! harness mints the enrollment token, the agent keeps its identity in its
//! own state directory and can be killed and restarted without a token.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::binaries::agent_binary;
use crate::controller::Controller;
use crate::process::{print_log_if_failing, read_log, LoggedProcess};
use crate::scratch::ScratchDir;

/// How to start an agent; [`Agent::start`] is the usual shortcut.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    name: String,
    libvirt_uri: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl AgentOptions {
    /// The hypervisor to manage, e.g. [`crate::Libvirt::uri`]. Without it
    /// the agent uses its own default.
    pub fn libvirt_uri(mut self, uri: &str) -> Self {
        self.libvirt_uri = Some(uri.to_string());
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
        let scratch = ScratchDir::new(&format!("agent-{}", self.name));
        let state_dir = scratch.path().join("state");
        std::fs::create_dir_all(&state_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", state_dir.display()));
        let mut agent = Agent {
            process: None,
            controller_addr: controller.agent_addr(),
            state_dir,
            log_path: scratch.path().join("agent.log"),
            options: self,
            _scratch: scratch,
        };
        agent.launch(Some((&token, &ca_fingerprint)));
        agent
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
        let mut command = Command::new(agent_binary());
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

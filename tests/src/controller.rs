//! A real `lifeboat serve` process on loopback ports (the agent port on all
//! addresses if asked, for agents in cluster hosts), with its own data
//! directory, started and restarted the way an operator would: the same data
//! directory and ports across restarts, SIGKILL to simulate a crash.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::api::Api;
use crate::binaries::controller_binary;
use crate::ports::free_port;
use crate::process::{print_log_if_failing, read_log, LoggedProcess};
use crate::scratch::ScratchDir;
use crate::wait::{poll_until, READY_TIMEOUT};

pub const ADMIN_USER: &str = "admin";
/// Set through `LIFEBOAT_ADMIN_PASSWORD` unless a test chooses another.
pub const DEFAULT_ADMIN_PASSWORD: &str = "e2e-Admin-Passw0rd";

const LOG_FILE: &str = "controller.log";

/// How to start a controller; [`Controller::start`] is the usual shortcut.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    data_dir: Option<PathBuf>,
    admin_password: String,
    agent_listen_any: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl ControllerOptions {
    /// Use (and keep) this data directory instead of a fresh scratch one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn admin_password(mut self, password: &str) -> Self {
        self.admin_password = password.to_string();
        self
    }

    /// Listen for agents on `0.0.0.0:PORT` instead of `127.0.0.1:PORT`, so
    /// that agents in cluster hosts (network namespaces) reach it at their
    /// gateway address, see [`crate::Host::agent_options`]. The port is
    /// still [`Controller::agent_port`], and loopback agents still work.
    pub fn agent_listen_any(mut self) -> Self {
        self.agent_listen_any = true;
        self
    }

    /// An extra argument after `serve ...`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Starts the controller and waits until its API answers.
    pub fn start(self) -> Controller {
        let (scratch, data_dir) = match &self.data_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let scratch = ScratchDir::new("controller");
                let dir = scratch.path().to_path_buf();
                (Some(scratch), dir)
            }
        };
        std::fs::create_dir_all(&data_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", data_dir.display()));
        let mut controller = Controller {
            process: None,
            data_dir,
            api_port: free_port(),
            agent_port: free_port(),
            options: self,
            _scratch: scratch,
        };
        controller.launch();
        controller
    }
}

pub struct Controller {
    // Dropped first: the process dies before its data directory goes.
    process: Option<LoggedProcess>,
    data_dir: PathBuf,
    api_port: u16,
    agent_port: u16,
    options: ControllerOptions,
    _scratch: Option<ScratchDir>,
}

impl Controller {
    /// A controller with a fresh data directory and the default admin password.
    pub fn start() -> Controller {
        Controller::options().start()
    }

    /// A controller on an existing (or new) data directory, e.g. one a
    /// previous controller left behind.
    pub fn start_in(data_dir: impl Into<PathBuf>) -> Controller {
        Controller::options().data_dir(data_dir).start()
    }

    pub fn options() -> ControllerOptions {
        ControllerOptions {
            data_dir: None,
            admin_password: DEFAULT_ADMIN_PASSWORD.to_string(),
            agent_listen_any: false,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// `https://127.0.0.1:PORT`, the web console and REST API.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// `127.0.0.1:PORT` where agents connect.
    pub fn agent_addr(&self) -> String {
        format!("127.0.0.1:{}", self.agent_port)
    }

    /// The address `--agent-listen` got: `127.0.0.1:PORT`, or
    /// `0.0.0.0:PORT` with [`ControllerOptions::agent_listen_any`].
    pub fn agent_listen(&self) -> String {
        if self.options.agent_listen_any {
            format!("0.0.0.0:{}", self.agent_port)
        } else {
            self.agent_addr()
        }
    }

    /// True if agents in cluster hosts can reach it, see
    /// [`ControllerOptions::agent_listen_any`].
    pub fn agent_listen_any(&self) -> bool {
        self.options.agent_listen_any
    }

    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    pub fn agent_port(&self) -> u16 {
        self.agent_port
    }

    pub fn admin_password(&self) -> &str {
        &self.options.admin_password
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The controller's CA certificate, written by the controller.
    pub fn ca_pem(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.pem")
    }

    /// A client authenticated as `admin`.
    pub fn api(&self) -> Api {
        self.api_as(ADMIN_USER, self.admin_password())
    }

    /// A client authenticated with HTTP Basic as `user`.
    pub fn api_as(&self, user: &str, password: &str) -> Api {
        Api::new(&self.url(), &self.ca_pem())
            .unwrap_or_else(|e| panic!("controller CA: {e}"))
            .with_basic(user, password)
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// Everything the controller printed, across restarts: for assertion
    /// messages, e.g. `assert!(ok, "{}", controller.log())`.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// The process id, or `None` after [`Controller::kill_9`].
    /// The controller's resident memory now, in KiB (0 when not running).
    pub fn rss_kib(&self) -> u64 {
        self.pid()
            .map_or(0, |pid| crate::process::status_kib(pid, "VmRSS:"))
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(LoggedProcess::pid)
    }

    /// Kills the controller with SIGKILL, as a crash or power loss would.
    pub fn kill_9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_9();
        }
    }

    /// Kills the controller if it runs, starts it again on the same data
    /// directory and ports, and waits until its API answers.
    pub fn restart(&mut self) {
        self.kill_9();
        self.launch();
    }

    fn launch(&mut self) {
        let mut command = Command::new(controller_binary());
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .arg("--agent-listen")
            .arg(self.agent_listen())
            .args(&self.options.args)
            .env("LIFEBOAT_ADMIN_PASSWORD", &self.options.admin_password)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)));
        self.process = Some(LoggedProcess::spawn(
            "controller",
            command,
            &self.log_path(),
        ));
        self.wait_ready();
    }

    /// Ready means: the CA is written and `GET /api/v1/hosts` as admin
    /// answers 200 over TLS verified against it. (The agent port is not
    /// probed: a bare connect would log a failed handshake.)
    fn wait_ready(&mut self) {
        let what = format!(
            "controller at {} to answer GET /api/v1/hosts as admin",
            self.url()
        );
        poll_until(&what, READY_TIMEOUT, || {
            if let Some(status) = self.process.as_mut().and_then(LoggedProcess::exit_status) {
                panic!("controller exited ({status}) before it was ready");
            }
            let api = Api::new(&self.url(), &self.ca_pem())?
                .with_basic(ADMIN_USER, self.admin_password());
            match api.try_get("/api/v1/hosts")? {
                (200, _) => Ok(()),
                (status, body) => Err(format!("answered {status}: {body}")),
            }
        });
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill_9();
        print_log_if_failing("controller", &self.log_path());
    }
}

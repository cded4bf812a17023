//! Real receivers for alert channels, on high loopback ports with a private
//! CA (`tests/peers/alert_receivers.py`): an HTTPS server for webhooks and
//! Common Base Events, and aiosmtpd requiring STARTTLS and authentication.
//! Each keeps every message it got as a JSON file in its scratch directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::ports::free_port;
use crate::process::{print_log_if_failing, LoggedProcess};
use crate::scratch::ScratchDir;
use crate::slapd::make_ca_and_server_certificate;
use crate::wait::{wait_until, READY_TIMEOUT};

/// Debian's Python: aiosmtpd is its package `python3-aiosmtpd`.
const PYTHON: &str = "/usr/bin/python3";

pub struct Receiver {
    process: Option<LoggedProcess>,
    args: Vec<String>,
    port: u16,
    out: PathBuf,
    log: PathBuf,
    ca_pem: String,
    _scratch: ScratchDir,
}

impl Receiver {
    /// An HTTPS receiver checking `X-Lifeboat-Signature` against `secret`.
    pub fn https(secret: &str) -> Receiver {
        Receiver::start("https", &[secret])
    }

    /// An SMTP server requiring STARTTLS, then AUTH as `user`.
    pub fn smtp(user: &str, password: &str) -> Receiver {
        Receiver::start("smtp", &[user, password])
    }

    fn start(kind: &str, extra: &[&str]) -> Receiver {
        let scratch = ScratchDir::new(&format!("receiver-{kind}"));
        let dir = scratch.path().to_path_buf();
        make_ca_and_server_certificate(&dir);
        let out = dir.join("received");
        std::fs::create_dir_all(&out).expect("receiver output directory");
        let port = free_port();
        let script = format!("{}/peers/alert_receivers.py", env!("CARGO_MANIFEST_DIR"));
        let mut args = vec![
            script,
            kind.to_string(),
            out.to_string_lossy().into_owned(),
            port.to_string(),
            dir.join("server.pem").to_string_lossy().into_owned(),
            dir.join("server.key").to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
        let mut r = Receiver {
            process: None,
            args,
            port,
            log: dir.join(format!("{kind}.log")),
            out,
            ca_pem,
            _scratch: scratch,
        };
        r.resume();
        r
    }

    /// Starts it again on the same port (after [`Receiver::stop`]).
    pub fn resume(&mut self) {
        let _ = std::fs::remove_file(self.out.join("ready"));
        let mut command = Command::new(PYTHON);
        command.args(&self.args);
        self.process = Some(LoggedProcess::spawn("alert receiver", command, &self.log));
        let ready = self.out.join("ready");
        wait_until("the alert receiver to listen", READY_TIMEOUT, || {
            ready.exists()
        });
    }

    /// Kills it: the channel is down.
    pub fn stop(&mut self) {
        self.process = None;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }

    /// The PEM of the CA that signed its certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Every message received so far, oldest first.
    pub fn received(&self) -> Vec<Value> {
        received_in(&self.out)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn received_in(dir: &Path) -> Vec<Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
        .collect()
}

impl Drop for Receiver {
    fn drop(&mut self) {
        print_log_if_failing("alert receiver", &self.log);
    }
}

//! A real net-snmp `snmptrapd` on a high loopback port, receiving v2c
//! traps for one community and v3 authPriv traps and informs for USM users.
//! Each notification it accepts is logged as one line: the security name
//! it was accepted under, then its variable bindings with numeric OIDs.

use std::path::PathBuf;
use std::process::Command;

use crate::ports::free_port;
use crate::process::{print_log_if_failing, LoggedProcess};
use crate::scratch::ScratchDir;
use crate::wait::{wait_until, READY_TIMEOUT};

/// One USM user the receiver knows: name, SHA-256 authentication and AES
/// privacy passwords, and for traps the sending engine's ID (hex), which
/// snmptrapd needs to localise the keys; `None` for informs, where
/// snmptrapd is the authoritative engine.
pub struct TrapUser<'a> {
    pub name: &'a str,
    pub auth_password: &'a str,
    pub priv_password: &'a str,
    pub engine_id: Option<&'a str>,
}

pub struct Snmptrapd {
    process: Option<LoggedProcess>,
    port: u16,
    conf: PathBuf,
    received: PathBuf,
    log: PathBuf,
    scratch: ScratchDir,
}

impl Snmptrapd {
    /// Configured for `community` (v2c) and `users` (v3, authPriv); not
    /// started until [`Snmptrapd::start`], so a sender can first find the
    /// port closed.
    pub fn configure(community: &str, users: &[TrapUser]) -> Snmptrapd {
        let scratch = ScratchDir::new("snmptrapd");
        let dir = scratch.path().to_path_buf();
        let mut conf = format!("authCommunity log {community}\n");
        for u in users {
            let engine = u
                .engine_id
                .map(|e| format!("-e 0x{e} "))
                .unwrap_or_default();
            conf.push_str(&format!(
                "createUser {engine}{} SHA-256 {} AES {}\nauthUser log {} priv\n",
                u.name, u.auth_password, u.priv_password, u.name
            ));
        }
        let conf_path = dir.join("snmptrapd.conf");
        std::fs::write(&conf_path, conf).expect("snmptrapd.conf");
        std::fs::create_dir_all(dir.join("persist")).expect("snmptrapd persistent directory");
        Snmptrapd {
            process: None,
            port: free_port(),
            conf: conf_path,
            received: dir.join("received.log"),
            log: dir.join("snmptrapd.log"),
            scratch,
        }
    }

    pub fn start(&mut self) {
        let dir = self.scratch.path();
        let mut command = Command::new("/usr/sbin/snmptrapd");
        command
            .env("SNMP_PERSISTENT_DIR", dir.join("persist"))
            .env("MIBS", "")
            // Foreground, our configuration only, numeric OIDs, no name
            // lookups; one line per notification.
            .args(["-f", "-C", "-c"])
            .arg(&self.conf)
            .args(["-On", "-n", "-Lf"])
            .arg(&self.received)
            .args(["-F", "NOTIFICATION %P | %V| %v\n"])
            .arg("-p")
            .arg(dir.join("snmptrapd.pid"))
            .arg(format!("udp:127.0.0.1:{}", self.port));
        self.process = Some(LoggedProcess::spawn("snmptrapd", command, &self.log));
        // UDP has no handshake: ready once it says so in its own log.
        wait_until("snmptrapd to start", READY_TIMEOUT, || {
            std::fs::read_to_string(&self.received)
                .unwrap_or_default()
                .contains("NET-SNMP version")
        });
    }

    /// `127.0.0.1:PORT`.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every notification line received so far, oldest first.
    pub fn received(&self) -> Vec<String> {
        std::fs::read_to_string(&self.received)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("NOTIFICATION "))
            .map(str::to_string)
            .collect()
    }

    pub fn log(&self) -> String {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(&self.received).unwrap_or_default()
        )
    }
}

impl Drop for Snmptrapd {
    fn drop(&mut self) {
        print_log_if_failing("snmptrapd", &self.log);
        print_log_if_failing("snmptrapd notifications", &self.received);
    }
}

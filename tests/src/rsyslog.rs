//! A real rsyslogd receiving RFC 5424 over TCP with TLS (RFC 5425, the
//! gtls driver, a private CA) on a high loopback port. Each message it
//! parses is written as one JSON line: its MSGID, structured data, message,
//! severity, facility, host and app name as rsyslog understood them.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::ports::free_port;
use crate::process::{print_log_if_failing, LoggedProcess};
use crate::scratch::ScratchDir;
use crate::slapd::make_ca_and_server_certificate;
use crate::wait::{wait_until, READY_TIMEOUT};

pub struct Rsyslog {
    _process: LoggedProcess,
    port: u16,
    messages: PathBuf,
    log: PathBuf,
    ca_pem: String,
    _scratch: ScratchDir,
}

impl Rsyslog {
    pub fn start_tls() -> Rsyslog {
        let scratch = ScratchDir::new("rsyslog");
        let dir = scratch.path().to_path_buf();
        make_ca_and_server_certificate(&dir);
        let port = free_port();
        let d = dir.display();
        let messages = dir.join("messages.json");
        std::fs::create_dir_all(dir.join("work")).expect("rsyslog work directory");
        let conf = format!(
            r#"global(workDirectory="{d}/work"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{d}/ca.pem"
       DefaultNetstreamDriverCertFile="{d}/server.pem"
       DefaultNetstreamDriverKeyFile="{d}/server.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="lbjson" type="list" option.jsonf="on") {{
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="severity" name="syslogseverity-text" format="jsonf")
  property(outname="facility" name="syslogfacility-text" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="protocol" name="protocol-version" format="jsonf")
}}
action(type="omfile" file="{m}" template="lbjson")
"#,
            m = messages.display()
        );
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).expect("rsyslog.conf");
        let log = dir.join("rsyslogd.log");
        let mut command = Command::new("/usr/sbin/rsyslogd");
        command
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"));
        let process = LoggedProcess::spawn("rsyslogd", command, &log);
        wait_until("rsyslogd to listen", READY_TIMEOUT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Rsyslog {
            _process: process,
            port,
            messages,
            log,
            ca_pem: std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem"),
            _scratch: scratch,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Every message received so far, oldest first.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.messages)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        print_log_if_failing("rsyslogd", &self.log);
    }
}

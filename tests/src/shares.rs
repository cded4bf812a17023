//! Real share servers on this machine for the appliance's datastores:
//! nfs-ganesha exporting a directory over NFSv4 and Samba's smbd serving one
//! share with a user and password, each on a loopback port of its own. The
//! appliance under QEMU reaches them at 10.0.2.2 (user-mode networking maps
//! that address to this machine's loopback); this machine's own kernel
//! cannot mount them, which is why shares are proven from the appliance.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ports::free_port;
use crate::process::{print_log_if_failing, run_checked, LoggedProcess};
use crate::scratch::ScratchDir;
use crate::wait::{poll_until, READY_TIMEOUT};

/// Where a server is listening once it answers on `port`.
fn wait_listening(what: &str, port: u16, process: &mut LoggedProcess, log: &Path) {
    poll_until(
        &format!("{what} listening on port {port}"),
        READY_TIMEOUT,
        || {
            if let Some(status) = process.exit_status() {
                panic!(
                    "{what} exited ({status}): {}",
                    crate::process::read_log(log)
                );
            }
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
}

/// nfs-ganesha exporting a scratch directory as `/backups` (NFSv4, TCP,
/// no root squash: the appliance's controller writes as root).
pub struct NfsServer {
    process: LoggedProcess,
    port: u16,
    export_dir: PathBuf,
    log: PathBuf,
    _scratch: ScratchDir,
}

impl NfsServer {
    pub const EXPORT: &'static str = "/backups";

    pub fn start() -> NfsServer {
        let scratch = ScratchDir::new("nfs-ganesha");
        let dir = scratch.path();
        let export_dir = dir.join("export");
        let recovery = dir.join("recovery");
        for d in [&export_dir, &recovery] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        let port = free_port();
        let config = format!(
            "NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = {port}; Bind_addr = 127.0.0.1; \
               Enable_NLM = false; Enable_RQUOTA = false; }}\n\
             NFSv4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {recovery}; }}\n\
             EXPORT {{ Export_Id = 1; Path = {export}; Pseudo = {pseudo}; Access_Type = RW; \
               Squash = No_Root_Squash; SecType = sys; Protocols = 4; Transports = TCP; \
               FSAL {{ Name = VFS; }} }}\n\
             LOG {{ Default_Log_Level = EVENT; }}\n",
            recovery = recovery.display(),
            export = export_dir.display(),
            pseudo = Self::EXPORT,
        );
        let conf = dir.join("ganesha.conf");
        std::fs::write(&conf, config).expect("write ganesha.conf");
        let log = dir.join("ganesha.log");
        let mut command = Command::new("ganesha.nfsd");
        command
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(dir.join("ganesha.pid"));
        let mut process = LoggedProcess::spawn("nfs-ganesha", command, &dir.join("stdout.log"));
        wait_listening("nfs-ganesha", port, &mut process, &log);
        NfsServer {
            process,
            port,
            export_dir,
            log,
            _scratch: scratch,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory behind the export, as this machine sees it.
    pub fn export_dir(&self) -> &Path {
        &self.export_dir
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        self.process.kill_9();
        print_log_if_failing("nfs-ganesha", &self.log);
    }
}

/// smbd serving the share `backups` to one user, on a loopback port.
pub struct SmbServer {
    process: LoggedProcess,
    port: u16,
    share_dir: PathBuf,
    log: PathBuf,
    _scratch: ScratchDir,
}

impl SmbServer {
    pub const SHARE: &'static str = "backups";
    pub const USER: &'static str = "lbe2e-smb";
    pub const PASSWORD: &'static str = "Smb-e2e-pass,word1";

    pub fn start() -> SmbServer {
        let scratch = ScratchDir::new("smbd");
        let dir = scratch.path();
        for d in [
            "run", "lock", "state", "cache", "private", "ncalrpc", "share",
        ] {
            std::fs::create_dir_all(dir.join(d)).expect("create smbd directories");
        }
        // Samba maps its users to Unix accounts.
        if Command::new("id")
            .arg(Self::USER)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            run_checked(
                "useradd",
                &[
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    Self::USER,
                ],
                dir,
            );
        }
        let share_dir = dir.join("share");
        run_checked("chown", &[Self::USER, &share_dir.to_string_lossy()], dir);
        let port = free_port();
        let d = dir.display();
        let config = format!(
            "[global]\n server role = standalone server\n smb ports = {port}\n\
             interfaces = 127.0.0.1\n bind interfaces only = yes\n\
             pid directory = {d}/run\n lock directory = {d}/lock\n state directory = {d}/state\n\
             cache directory = {d}/cache\n private dir = {d}/private\n ncalrpc dir = {d}/ncalrpc\n\
             log file = {d}/smbd.log\n passdb backend = tdbsam:{d}/private/passdb.tdb\n\
             disable netbios = yes\n load printers = no\n printcap name = /dev/null\n\
             disable spoolss = yes\n\
             [{share}]\n path = {d}/share\n read only = no\n valid users = {user}\n",
            share = Self::SHARE,
            user = Self::USER,
        );
        let conf = dir.join("smb.conf");
        std::fs::write(&conf, config).expect("write smb.conf");
        let conf_arg = conf.to_string_lossy().into_owned();
        let mut passwd = Command::new("smbpasswd")
            .args(["-c", &conf_arg, "-s", "-a", Self::USER])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run smbpasswd");
        {
            use std::io::Write;
            let stdin = passwd.stdin.as_mut().expect("smbpasswd stdin");
            write!(stdin, "{0}\n{0}\n", Self::PASSWORD).expect("write the password");
        }
        assert!(
            passwd.wait().expect("wait smbpasswd").success(),
            "smbpasswd failed"
        );
        let log = dir.join("smbd.log");
        let mut command = Command::new("smbd");
        command.args(["-F", "--no-process-group", "-d", "1", "-s", &conf_arg]);
        let mut process = LoggedProcess::spawn("smbd", command, &dir.join("stdout.log"));
        wait_listening("smbd", port, &mut process, &log);
        SmbServer {
            process,
            port,
            share_dir,
            log,
            _scratch: scratch,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory behind the share, as this machine sees it.
    pub fn share_dir(&self) -> &Path {
        &self.share_dir
    }
}

impl Drop for SmbServer {
    fn drop(&mut self) {
        self.process.kill_9();
        print_log_if_failing("smbd", &self.log);
    }
}

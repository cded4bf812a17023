//! The appliance image booted under QEMU, as an operator would run it: the
//! system disk built by `image/build` (a copy-on-write overlay of it, so the
//! image stays pristine), a data disk, user-mode networking with the
//! console (443) and agent (8444) ports forwarded to loopback, the serial
//! console read and typed into, and QMP for the power button. KVM when it
//! can boot Linux on this machine, TCG otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::guest::LinuxGuest;
use crate::host_lock::HostLock;
use crate::ports::free_port;
use crate::process::{print_log_if_failing, run_checked, LoggedProcess};
use crate::scratch::ScratchDir;
use crate::wait::poll_until;

/// Where built images are kept, by version (a build takes minutes).
fn image_cache() -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    Path::new(root).join("artifacts/appliance")
}

/// A built appliance: the outputs of `image/build --version V`.
#[derive(Clone, Debug)]
pub struct ApplianceImage {
    dir: PathBuf,
    version: String,
}

impl ApplianceImage {
    /// Builds the image at `version` with `image/build` (once per test
    /// process and version; a rebuild reuses cargo's and the package cache).
    pub fn build(version: &str) -> ApplianceImage {
        static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let dir = image_cache().join(version);
        let image = ApplianceImage {
            dir: dir.clone(),
            version: version.to_string(),
        };
        let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
        if built.iter().any(|v| v == version) {
            return image;
        }
        let _lock = HostLock::acquire("appliance-image");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new("bash")
            .arg(repo.join("image/build"))
            .arg("--out")
            .arg(&dir)
            .arg("--version")
            .arg(version)
            .arg("--data-size")
            .arg("4G")
            .env(
                "LIFEBOAT_IMAGE_DEBS",
                std::env::var("LIFEBOAT_IMAGE_DEBS")
                    .unwrap_or_else(|_| "/var/cache/lifeboat-e2e/appliance-debs".into()),
            )
            .status()
            .expect("run image/build");
        assert!(status.success(), "image/build --version {version} failed");
        built.push(version.to_string());
        image
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn qcow2(&self) -> PathBuf {
        self.dir.join("lifeboat-appliance.qcow2")
    }

    pub fn vmdk(&self) -> PathBuf {
        self.dir.join("lifeboat-appliance.vmdk")
    }

    pub fn ova(&self) -> PathBuf {
        self.dir.join("lifeboat-appliance.ova")
    }
}

/// The virtual hardware the appliance boots on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hardware {
    /// KVM / Proxmox: virtio disks and NIC, BIOS.
    Virtio,
    /// Another hypervisor's kind: SATA (AHCI) disks, an E1000 NIC, UEFI
    /// firmware (OVMF).
    SataE1000Uefi,
}

/// Debian's OVMF (package `ovmf`): code read-only, variables copied.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// `kvm` when this machine's KVM boots a Linux kernel, else `tcg`: some
/// nested hosts open /dev/kvm but hang every Linux guest early.
pub fn accelerator() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            return "tcg";
        }
        let guest = LinuxGuest::ensure();
        let scratch = ScratchDir::new("kvm-probe");
        let serial = scratch.path().join("serial.log");
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "kvm", "-m", "256", "-display", "none", "-kernel"])
            .arg(&guest.kernel)
            .arg("-initrd")
            .arg(&guest.initrd)
            .args(["-append", "console=ttyS0 loglevel=7", "-serial"])
            .arg(format!("file:{}", serial.display()));
        let mut qemu = LoggedProcess::spawn("kvm probe", command, &scratch.path().join("qemu.log"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let booted = loop {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            if text.contains("Run /init as init process") {
                break true;
            }
            if Instant::now() > deadline || qemu.exit_status().is_some() {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        qemu.kill_9();
        let accel = if booted { "kvm" } else { "tcg" };
        eprintln!("appliance tests run QEMU with -accel {accel}");
        accel
    })
}

/// A booted (or booting) appliance.
pub struct Appliance {
    qemu: Option<LoggedProcess>,
    console: Arc<Mutex<String>>,
    serial: UnixStream,
    qmp: PathBuf,
    https_port: u16,
    agent_port: u16,
    console_log: PathBuf,
    _scratch: ScratchDir,
}

impl Appliance {
    /// Boots `system` (a qcow2 the caller owns, e.g. from
    /// [`Appliance::system_disk`]) with `data` as its second disk.
    pub fn boot(system: &Path, data: &Path, hardware: Hardware) -> Appliance {
        Appliance::boot_on_ports(system, data, hardware, (free_port(), free_port()))
    }

    /// [`Appliance::boot`] with the console and agent ports forwarded from
    /// these loopback ports (to boot a new system disk where agents already
    /// look for the old one).
    pub fn boot_on_ports(
        system: &Path,
        data: &Path,
        hardware: Hardware,
        (https_port, agent_port): (u16, u16),
    ) -> Appliance {
        let scratch = ScratchDir::new("appliance");
        let dir = scratch.path();
        let serial_sock = dir.join("serial.sock");
        let qmp = dir.join("qmp.sock");
        let mut command = Command::new("qemu-system-x86_64");
        command.args(["-accel", accelerator(), "-smp", "2", "-m", "1536"]);
        let drive = |file: &Path, id: &str, interface: &str| {
            format!(
                "file={},format=qcow2,if={interface},id={id},cache=unsafe",
                file.display()
            )
        };
        let net = format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{https_port}-:443,hostfwd=tcp:127.0.0.1:{agent_port}-:8444"
        );
        match hardware {
            Hardware::Virtio => {
                command
                    .args(["-machine", "pc", "-drive", &drive(system, "sys", "virtio")])
                    .args(["-drive", &drive(data, "data", "virtio")])
                    .args(["-netdev", &net, "-device", "virtio-net-pci,netdev=net0"]);
            }
            Hardware::SataE1000Uefi => {
                let vars = dir.join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars).expect("copy the OVMF variables");
                command
                    .args(["-machine", "q35", "-drive"])
                    .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", vars.display()))
                    .args(["-drive", &drive(system, "sys", "ide")])
                    .args(["-drive", &drive(data, "data", "ide")])
                    .args(["-netdev", &net, "-device", "e1000,netdev=net0"]);
            }
        }
        command
            .args(["-display", "none", "-chardev"])
            .arg(format!(
                "socket,id=serial0,path={},server=on,wait=on",
                serial_sock.display()
            ))
            .args(["-serial", "chardev:serial0", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        let qemu = LoggedProcess::spawn("appliance qemu", command, &dir.join("qemu.log"));
        // QEMU waits for this connection before it starts the machine, so
        // the console is read from its first byte.
        let serial = poll_until(
            "the appliance's serial socket",
            Duration::from_secs(30),
            || UnixStream::connect(&serial_sock).map_err(|e| e.to_string()),
        );
        let console = Arc::new(Mutex::new(String::new()));
        let console_log = dir.join("console.log");
        let (reader, text, log_path) = (
            serial.try_clone().expect("clone the serial socket"),
            console.clone(),
            console_log.clone(),
        );
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(&log_path).ok();
            let mut reader = BufReader::new(reader);
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(&buf[..n]);
                }
                let chunk = String::from_utf8_lossy(&buf[..n]).into_owned();
                text.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&chunk);
            }
        });
        Appliance {
            qemu: Some(qemu),
            console,
            serial,
            qmp,
            https_port,
            agent_port,
            console_log,
            _scratch: scratch,
        }
    }

    /// A fresh copy-on-write system disk over `image` in `dir`.
    pub fn system_disk(image: &ApplianceImage, dir: &Path) -> PathBuf {
        let disk = dir.join(format!("system-{}.qcow2", image.version()));
        let backing = image.qcow2();
        run_checked(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                &backing.to_string_lossy(),
                &disk.to_string_lossy(),
            ],
            dir,
        );
        disk
    }

    /// A blank data disk of `size` (e.g. "4G") in `dir`.
    pub fn blank_disk(dir: &Path, name: &str, size: &str) -> PathBuf {
        let disk = dir.join(name);
        run_checked(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &disk.to_string_lossy(), size],
            dir,
        );
        disk
    }

    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// The forwarded (console, agent) ports.
    pub fn ports(&self) -> (u16, u16) {
        (self.https_port, self.agent_port)
    }

    /// The agent port as this machine reaches it.
    pub fn agent_addr(&self) -> String {
        format!("127.0.0.1:{}", self.agent_port)
    }

    /// Everything the serial console printed so far, terminal escape
    /// sequences removed.
    pub fn console_text(&self) -> String {
        let raw = self
            .console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        strip_escapes(&raw)
    }

    fn console_len(&self) -> usize {
        self.console.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Types `line` and Enter on the serial console.
    pub fn type_line(&self, line: &str) {
        let mut serial = &self.serial;
        serial
            .write_all(format!("{line}\r").as_bytes())
            .expect("type on the serial console");
    }

    /// Waits until the console, after what it showed so far, prints text
    /// for which `find` returns something; types `line` first, and again
    /// every few seconds (menus redraw on Enter). Returns what `find` found.
    pub fn ask<T>(
        &self,
        line: &str,
        what: &str,
        timeout: Duration,
        find: impl Fn(&str) -> Option<T>,
    ) -> T {
        let from = self.console_len();
        let mut typed = Instant::now() - Duration::from_secs(60);
        poll_until(what, timeout, || {
            if typed.elapsed() > Duration::from_secs(5) {
                self.type_line(line);
                typed = Instant::now();
            }
            let raw = self
                .console
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let new = strip_escapes(raw.get(from..).unwrap_or_default());
            find(&new).ok_or_else(|| format!("console so far: …{}", tail_chars(&new, 600)))
        })
    }

    /// Waits until the console shows `text` (anywhere since boot).
    pub fn wait_console(&self, text: &str, timeout: Duration) {
        poll_until(
            &format!("`{text}` on the appliance console"),
            timeout,
            || {
                let seen = self.console_text();
                if seen.contains(text) {
                    Ok(())
                } else {
                    Err(format!("…{}", tail_chars(&seen, 600)))
                }
            },
        );
    }

    /// How many times the console printed `text` since power-on.
    pub fn console_count(&self, text: &str) -> usize {
        self.console_text().matches(text).count()
    }

    /// Presses the ACPI power button (QMP `system_powerdown`).
    pub fn power_button(&self) {
        let stream = poll_until("the QMP socket", Duration::from_secs(10), || {
            UnixStream::connect(&self.qmp).map_err(|e| e.to_string())
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("QMP read timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone QMP socket"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("QMP greeting");
        let mut writer = &stream;
        for request in [
            r#"{"execute":"qmp_capabilities"}"#,
            r#"{"execute":"system_powerdown"}"#,
        ] {
            writeln!(writer, "{request}").expect("QMP request");
            // Events (POWERDOWN, ...) may come before the answer.
            loop {
                line.clear();
                reader.read_line(&mut line).expect("QMP answer");
                if !line.contains("\"event\"") {
                    break;
                }
            }
            assert!(line.contains("\"return\""), "QMP {request}: {line}");
        }
    }

    /// Waits for QEMU to exit (the guest powered off), at most `timeout`.
    pub fn wait_powered_off(&mut self, timeout: Duration) {
        let qemu = self.qemu.as_mut().expect("the appliance is running");
        poll_until("the appliance to power off", timeout, || {
            qemu.exit_status().ok_or("still running")
        });
        self.qemu = None;
    }

    /// Pulls the plug.
    pub fn kill(&mut self) {
        if let Some(mut qemu) = self.qemu.take() {
            qemu.kill_9();
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.kill();
        print_log_if_failing("appliance console", &self.console_log);
    }
}

/// Removes ANSI escape sequences (GRUB's menu, cursor moves) and carriage
/// returns.
fn strip_escapes(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    while let Some(&n) = chars.peek() {
                        chars.next();
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The last `n` characters of `text`.
fn tail_chars(text: &str, n: usize) -> &str {
    let start = text
        .char_indices()
        .rev()
        .take(n)
        .last()
        .map_or(text.len(), |(i, _)| i);
    &text[start..]
}

/// The CA certificate the appliance's console presents (last in its
/// chain), checked against the fingerprint its text console showed, the
/// way an operator pins it. Written to `dir/ca.pem`.
pub fn pinned_ca(https_port: u16, fingerprint: &str, dir: &Path) -> PathBuf {
    let chain = Command::new("openssl")
        .args(["s_client", "-showcerts", "-connect"])
        .arg(format!("127.0.0.1:{https_port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&chain.stdout).into_owned();
    let last = text
        .rmatch_indices("-----BEGIN CERTIFICATE-----")
        .next()
        .map(|(i, _)| i)
        .expect("a certificate chain from the appliance");
    let end = text[last..]
        .find("-----END CERTIFICATE-----")
        .expect("end of the CA certificate")
        + last
        + "-----END CERTIFICATE-----".len();
    let pem = format!("{}\n", &text[last..end]);
    let path = dir.join("ca.pem");
    std::fs::write(&path, &pem).expect("write ca.pem");
    let fp = run_checked(
        "openssl",
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            &path.to_string_lossy(),
        ],
        dir,
    );
    let hex: String = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_lowercase();
    assert_eq!(
        format!("sha256:{hex}"),
        fingerprint,
        "the console's CA is not the one the appliance's text console showed"
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_carriage_returns_are_removed() {
        assert_eq!(strip_escapes("\u{1b}[1;1Ha\r\nb\u{1b}[?25l"), "a\nb");
        assert_eq!(tail_chars("abcdef", 3), "def");
        assert_eq!(tail_chars("ab", 3), "ab");
        assert_eq!(tail_chars("äbc", 2), "bc");
        assert_eq!(tail_chars("abc", 0), "");
    }
}

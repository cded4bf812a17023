//! Mounting network datastores with the kernel, by the mount(2) system
//! call itself: the appliance carries no `mount.nfs` or `mount.cifs`, and
//! nothing of a share's login ever reaches a command line, a file or a log.
//! What the kernel is given is built by pure functions that refuse option
//! injection (every field is checked against a narrow grammar; free options
//! may not carry credentials or change what the mount is), and every mount is
//! `nosuid,nodev,noexec` whatever the options say: a share holds data,
//! never programs.
//!
//! Like the helpers it replaces, the controller resolves the server's name
//! itself and hands the kernel its address (`addr=` for NFS, `ip=` for SMB).

use std::fs;
use std::io::ErrorKind;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// A mount or unmount that takes longer is reported as timed out: an NFS
/// server that does not answer must not hold an API request for minutes.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// Always set, so no option can undo them.
const HARDENING: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);
/// NFS version used unless the options name one.
const DEFAULT_NFS_VERSION: &str = "vers=4.1";
/// SMB dialect used unless the options name one.
const DEFAULT_SMB_VERSION: &str = "vers=3.0";
/// Earlier releases passed SMB logins to `mount.cifs` in files so named;
/// leftovers of a killed controller are removed at start.
pub const CREDENTIALS_PREFIX: &str = ".credentials-";
/// Free options that would carry a secret or an address of their own,
/// change what the mount is (a loop device, a bind or move, user mounts), or
/// undo the hardening above.
const FORBIDDEN_OPTIONS: &str = "credentials cred password password2 pass username user users \
    domain dom workgroup helper loop offset sizelimit bind rbind move remount owner group \
    suid dev exec defaults addr ip unc clientaddr source";
/// Options that are mount flags rather than the file system's own.
const FLAG_OPTIONS: [(&str, MsFlags); 5] = [
    ("ro", MsFlags::MS_RDONLY),
    ("noatime", MsFlags::MS_NOATIME),
    ("nodiratime", MsFlags::MS_NODIRATIME),
    ("relatime", MsFlags::MS_RELATIME),
    ("sync", MsFlags::MS_SYNCHRONOUS),
];

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A field that would let input reach the kernel as something else.
    #[error("{field} {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot resolve the server {server}: {message}")]
    Resolve { server: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {fstype} mount did not finish within {} s (is the server answering?)", MOUNT_TIMEOUT.as_secs())]
    TimedOut { fstype: &'static str },
    /// What the kernel said, in an operator's words.
    #[error("mount failed: {message}")]
    Failed {
        fstype: &'static str,
        errno: Errno,
        message: String,
    },
    #[error("unmount failed: {0}")]
    Unmount(Errno),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> MountError {
    MountError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Refuses `value` unless its length is in `len` and every character is
/// `allowed`; the message names the first character that is not.
fn check_chars(
    field: &'static str,
    value: &str,
    len: std::ops::RangeInclusive<usize>,
    what: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), MountError> {
    if !len.contains(&value.len()) {
        let (min, max) = (len.start(), len.end());
        return Err(invalid(field, format!("must be {min} to {max} characters")));
    }
    match value.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(invalid(
            field,
            format!("must be {what}; {c:?} is not allowed"),
        )),
        None => Ok(()),
    }
}

/// A host name or IPv4 address, or an IPv6 address in brackets. Never
/// starting with '-', so it cannot become an option of `mount`.
pub fn check_server(server: &str) -> Result<(), MountError> {
    if let Some(ip) = server.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let ipv6 = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
        return check_chars("server", ip, 2..=45, "an IPv6 address inside [ ]", ipv6);
    }
    if server.starts_with(['-', '.']) {
        return Err(invalid("server", "must not start with '-' or '.'"));
    }
    let host = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    check_chars("server", server, 1..=253, "a host name or IP address", host)
}

/// The exported directory: absolute and printable.
pub fn check_export(export: &str) -> Result<(), MountError> {
    if !export.starts_with('/') {
        return Err(invalid("export", "must be an absolute path"));
    }
    check_chars("export", export, 1..=1024, "a path", |c| !c.is_control())
}

/// A share name, not a path: `//server/share` is all `mount.cifs` is given.
pub fn check_share(share: &str) -> Result<(), MountError> {
    let ok = |c: char| !c.is_control() && !r#"/\,:*?"<>|=+;[]"#.contains(c);
    check_chars("share", share, 1..=80, "a share name", ok)
}

/// A user name, as `user`, `user@realm` or `DOMAIN\user`.
pub fn check_username(username: &str) -> Result<(), MountError> {
    let ok = |c: char| !c.is_control() && c != ',';
    check_chars("username", username, 1..=256, "a user name", ok)
}

/// A Windows domain or workgroup; may be empty.
pub fn check_domain(domain: &str) -> Result<(), MountError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    check_chars("domain", domain, 0..=64, "a domain name", ok)
}

/// The password travels in the kernel's option string, where a comma is
/// written twice ([`cifs_request`]); NUL would end the string early. The
/// message never quotes the password.
pub fn check_password(password: &str) -> Result<(), MountError> {
    if password.len() > 256 || password.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            "password",
            "must be at most 256 characters without line breaks",
        ));
    }
    Ok(())
}

/// Free mount options: `key` or `key=value`, separated by commas. Keys are
/// lowercase words; values are letters, digits and `. _ : / + @ -`, so
/// nothing can end an option early or start a new one.
pub fn parse_options(options: &str) -> Result<Vec<&str>, MountError> {
    let field = "options";
    if options.len() > 512 {
        return Err(invalid(field, "must be at most 512 characters"));
    }
    if options.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in options.split(',') {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let key_ok = key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !key_ok {
            return Err(invalid(
                field,
                format!("{item:?} is not `key` or `key=value` with a lowercase key"),
            ));
        }
        if let Some(v) = value {
            let value_ok = !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:/+@-".contains(c));
            if !value_ok {
                return Err(invalid(
                    field,
                    format!("the value of {key:?} has characters not allowed"),
                ));
            }
        }
        if FORBIDDEN_OPTIONS.split_whitespace().any(|f| f == key) || key.starts_with("x_") {
            return Err(invalid(
                field,
                format!("{key:?} is not allowed here (credentials are given as fields; nosuid,nodev,noexec are always set)"),
            ));
        }
        out.push(item);
    }
    Ok(out)
}

fn dir_arg(dir: &Path) -> Result<&Path, MountError> {
    if !dir.is_absolute() {
        return Err(invalid("mount directory", "must be absolute"));
    }
    Ok(dir)
}

/// What one mount(2) call is given. The option string may hold a password:
/// it prints as asterisks.
pub struct MountRequest {
    pub fstype: &'static str,
    pub source: String,
    pub flags: MsFlags,
    data: String,
}

impl MountRequest {
    pub fn data(&self) -> &str {
        &self.data
    }
}

impl std::fmt::Debug for MountRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountRequest")
            .field("fstype", &self.fstype)
            .field("source", &self.source)
            .field("flags", &self.flags)
            .field("data", &"********")
            .finish()
    }
}

/// Splits free options into mount flags and the file system's own options.
fn split_options(free: &[&str]) -> (MsFlags, Vec<String>) {
    let mut flags = HARDENING;
    let mut own = Vec::new();
    for option in free {
        match FLAG_OPTIONS.iter().find(|(name, _)| name == option) {
            Some((_, flag)) => flags |= *flag,
            None if *option == "rw" => flags.remove(MsFlags::MS_RDONLY),
            None => own.push(option.to_string()),
        }
    }
    (flags, own)
}

fn has_version(options: &[String]) -> bool {
    options
        .iter()
        .any(|o| o.starts_with("vers=") || o.starts_with("nfsvers="))
}

/// The server's address, from `server` as the datastore names it.
pub fn resolve(server: &str) -> Result<IpAddr, MountError> {
    check_server(server)?;
    let bare = server.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip);
    }
    let failed = |message: String| MountError::Resolve {
        server: server.to_string(),
        message,
    };
    let addrs: Vec<IpAddr> = (bare, 0)
        .to_socket_addrs()
        .map_err(|e| failed(e.to_string()))?
        .map(|a| a.ip())
        .collect();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| failed("no address".into()))
}

/// `mount -t nfs SERVER:EXPORT DIR -o addr=IP,vers=4.1,OPTIONS` with
/// nosuid,nodev,noexec, as one request.
pub fn nfs_request(
    server: &str,
    ip: IpAddr,
    export: &str,
    options: &str,
) -> Result<MountRequest, MountError> {
    check_server(server)?;
    check_export(export)?;
    let (flags, own) = split_options(&parse_options(options)?);
    let mut data = vec![format!("addr={ip}")];
    if !has_version(&own) {
        data.push(DEFAULT_NFS_VERSION.into());
    }
    data.extend(own);
    Ok(MountRequest {
        fstype: "nfs",
        source: format!("{server}:{export}"),
        flags,
        data: data.join(","),
    })
}

/// The login of an SMB share; prints no password.
pub struct SmbLogin<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub domain: &'a str,
}

impl std::fmt::Debug for SmbLogin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmbLogin")
            .field("username", &self.username)
            .field("password", &"********")
            .field("domain", &self.domain)
            .finish()
    }
}

/// `mount -t cifs //SERVER/SHARE DIR -o ip=IP,username=…,password=…,
/// domain=…,vers=3.0,OPTIONS` with nosuid,nodev,noexec, as one request. The
/// kernel reads a doubled comma in the password as a comma.
pub fn cifs_request(
    server: &str,
    ip: IpAddr,
    share: &str,
    login: &SmbLogin<'_>,
    options: &str,
) -> Result<MountRequest, MountError> {
    check_server(server)?;
    check_share(share)?;
    check_username(login.username)?;
    check_password(login.password)?;
    check_domain(login.domain)?;
    let (flags, own) = split_options(&parse_options(options)?);
    let mut data = vec![
        format!("ip={ip}"),
        format!("username={}", login.username),
        format!("password={}", login.password.replace(',', ",,")),
    ];
    if !login.domain.is_empty() {
        data.push(format!("domain={}", login.domain));
    }
    if !has_version(&own) {
        data.push(DEFAULT_SMB_VERSION.into());
    }
    data.extend(own);
    Ok(MountRequest {
        fstype: "cifs",
        source: format!("//{server}/{share}"),
        flags,
        data: data.join(","),
    })
}

/// Mounts an NFS export at `dir`.
pub fn mount_nfs(server: &str, export: &str, options: &str, dir: &Path) -> Result<(), MountError> {
    let request = nfs_request(server, resolve(server)?, export, options)?;
    mount(&request, dir)
}

/// Mounts an SMB share at `dir`.
pub fn mount_cifs(
    server: &str,
    share: &str,
    login: &SmbLogin<'_>,
    options: &str,
    dir: &Path,
) -> Result<(), MountError> {
    let request = cifs_request(server, resolve(server)?, share, login, options)?;
    mount(&request, dir)
}

/// Runs mount(2) on a thread of its own, waiting at most [`MOUNT_TIMEOUT`]:
/// the call cannot be interrupted from here, but the caller is not held.
pub fn mount(request: &MountRequest, dir: &Path) -> Result<(), MountError> {
    let dir = dir_arg(dir)?.to_path_buf();
    let (fstype, source, flags, data) = (
        request.fstype,
        request.source.clone(),
        request.flags,
        request.data.clone(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("mount {fstype}"))
        .spawn(move || {
            let result = nix::mount::mount(
                Some(source.as_str()),
                &dir,
                Some(fstype),
                flags,
                Some(data.as_str()),
            );
            let _ = tx.send(result);
        })
        .map_err(|source| MountError::Io {
            path: PathBuf::from("mount thread"),
            source,
        })?;
    match rx.recv_timeout(MOUNT_TIMEOUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(errno)) => Err(MountError::Failed {
            fstype,
            errno,
            message: explain(fstype, errno),
        }),
        Err(_) => Err(MountError::TimedOut { fstype }),
    }
}

/// The kernel's answer in an operator's words; the errno's own text last.
fn explain(fstype: &str, errno: Errno) -> String {
    let what = match errno {
        Errno::EACCES => "access denied by the server: wrong user name or password, \
            or the export/share does not admit this appliance"
            .to_string(),
        Errno::ENOENT => "the server has no such export or share".into(),
        Errno::ECONNREFUSED => format!(
            "the server refused the connection (is its {} service running?)",
            if fstype == "nfs" { "NFS" } else { "SMB" }
        ),
        Errno::EHOSTUNREACH | Errno::ENETUNREACH | Errno::EHOSTDOWN | Errno::ETIMEDOUT => {
            "the server is unreachable".into()
        }
        Errno::ENODEV => {
            format!("unknown filesystem type '{fstype}': this kernel cannot mount {fstype} shares")
        }
        Errno::EPERM => "not permitted: the controller must run as root to mount shares".into(),
        Errno::EOPNOTSUPP | Errno::EPROTONOSUPPORT => {
            "the server does not speak the requested protocol version (see the vers= option)".into()
        }
        _ => "the kernel refused the mount".into(),
    };
    format!("{what} ({})", errno.desc())
}

pub fn unmount(dir: &Path) -> Result<(), MountError> {
    nix::mount::umount2(dir_arg(dir)?, MntFlags::empty()).map_err(MountError::Unmount)
}

/// Whether something is mounted exactly at `dir` (an absolute, canonical
/// path). Reads the mount table rather than stat'ing the directory, which
/// would hang on a hard NFS mount whose server is gone.
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = dir.to_string_lossy();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape_mountinfo(mount_point) == wanted)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) if bytes[i] == b'\\' => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, b| acc.wrapping_mul(8) + (b - b'0')),
                );
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes credentials files a killed controller left in `dir`.
pub fn sweep_credentials(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(CREDENTIALS_PREFIX)
        {
            match fs::remove_file(entry.path()) {
                Ok(()) => tracing::warn!(
                    "removed a leftover credentials file {}",
                    entry.path().display()
                ),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => tracing::error!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 2, 2));

    /// `cifs_request` from `[server, share, username, password, domain, options]`.
    fn cifs(f: [&str; 6]) -> Result<MountRequest, MountError> {
        let login = SmbLogin {
            username: f[2],
            password: f[3],
            domain: f[4],
        };
        cifs_request(f[0], IP, f[1], &login, f[5])
    }

    fn nfs(server: &str, export: &str, options: &str) -> Result<MountRequest, MountError> {
        nfs_request(server, IP, export, options)
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, MountError>) -> &'static str {
        match r {
            Err(MountError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn nfs_request_is_exact_and_hardened() {
        let r = nfs("nas.example", "/srv/backup", "vers=4.2,soft,timeo=600,ro").unwrap();
        assert_eq!(
            (r.fstype, r.source.as_str()),
            ("nfs", "nas.example:/srv/backup")
        );
        assert_eq!(r.data(), "addr=10.0.2.2,vers=4.2,soft,timeo=600");
        assert_eq!(r.flags, HARDENING | MsFlags::MS_RDONLY);
        let r = nfs("[fd00::5]", "/x", "port=2049").unwrap();
        assert_eq!(r.source, "[fd00::5]:/x");
        assert_eq!(r.data(), "addr=10.0.2.2,vers=4.1,port=2049");
        assert_eq!(r.flags, HARDENING);
        // `rw` cannot undo the hardening, only `ro`.
        assert_eq!(nfs("n", "/x", "ro,rw").unwrap().flags, HARDENING);
    }

    #[test]
    fn cifs_request_carries_the_login_only_in_the_kernel_options() {
        let r = cifs(["fs1", "backups$", "svc", "p,a=ss hunter2", "CORP", ""]).unwrap();
        assert_eq!((r.fstype, r.source.as_str()), ("cifs", "//fs1/backups$"));
        assert_eq!(
            r.data(),
            "ip=10.0.2.2,username=svc,password=p,,a=ss hunter2,domain=CORP,vers=3.0"
        );
        assert_eq!(r.flags, HARDENING);
        let login = SmbLogin {
            username: "svc",
            password: "p,a=ss hunter2",
            domain: "",
        };
        assert!(!format!("{r:?} {login:?}").contains("hunter2"));
        // The options' own dialect wins; no domain when there is none.
        let r = cifs(["10.0.0.9", "b", "svc", "pw", "", "vers=2.1,cache=none"]).unwrap();
        assert_eq!(
            r.data(),
            "ip=10.0.2.2,username=svc,password=pw,vers=2.1,cache=none"
        );
    }

    #[test]
    fn injection_through_any_field_is_refused() {
        for (server, export, field) in [
            ("a,credentials=/etc/shadow", "/x", "server"),
            ("-oremount", "/x", "server"),
            ("a b", "/x", "server"),
            ("a:b", "/x", "server"),
            ("[::1,x]", "/x", "server"),
            ("", "/x", "server"),
            ("nas", "relative", "export"),
            ("nas", "/x\n-o", "export"),
        ] {
            assert_eq!(
                refused(nfs(server, export, "")),
                field,
                "{server:?} {export:?}"
            );
        }
        for (fields, field) in [
            (["a,b", "s", "u", "pw", "", ""], "server"),
            (["nas", "s,vers=1.0", "u", "pw", "", ""], "share"),
            (["nas", "s/../t", "u", "pw", "", ""], "share"),
            (["nas", "s", "u,uid=0", "pw", "", ""], "username"),
            (["nas", "s", "u\npassword=x", "pw", "", ""], "username"),
            (["nas", "s", "", "pw", "", ""], "username"),
            (["nas", "s", "u", "pw\nusername=root", "", ""], "password"),
            (["nas", "s", "u", "pw\0", "", ""], "password"),
            (["nas", "s", "u", "pw", "D,sec=none", ""], "domain"),
            (["nas", "s", "u", "pw", "", "password=x"], "options"),
            (["nas", "s", "u", "pw", "", "ip=10.9.9.9"], "options"),
        ] {
            assert_eq!(refused(cifs(fields)), field, "{fields:?}");
        }
        assert_eq!(refused(nfs("nas", "/x", "addr=10.9.9.9")), "options");
    }

    #[test]
    fn free_options_follow_the_grammar_and_carry_no_credentials() {
        let good = parse_options("vers=4.2,hard,rsize=1048576,sec=krb5p,port=20049");
        assert_eq!(good.unwrap().len(), 5);
        assert!(parse_options("").unwrap().is_empty());
        for bad in [
            "credentials=/etc/shadow",
            "password=x",
            "username=root",
            "user=root",
            "pass=x",
            "dom=x",
            "helper=foo",
            "loop",
            "remount",
            "bind",
            "suid",
            "exec",
            "dev",
            "clientaddr=fd00::1",
            "x_mount.mkdir",
            "vers=4.2,,soft",
            "vers=4.2 soft",
            "vers=4\n2",
            "Vers=4.2",
            "vers=",
            "vers=a=b",
            "uid=0\ncredentials=/x",
            "=x",
            "vers=\"4\"",
            "o;rm",
        ] {
            assert_eq!(refused(parse_options(bad)), "options", "{bad:?}");
        }
        assert_eq!(refused(parse_options(&"a".repeat(513))), "options");
        let msg = parse_options("credentials=/etc/shadow")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"credentials\" is not allowed"), "{msg}");
    }

    #[test]
    fn servers_resolve_to_addresses_and_bad_names_do_not() {
        assert_eq!(resolve("10.0.2.2").unwrap(), IP);
        assert_eq!(resolve("[::1]").unwrap(), "::1".parse::<IpAddr>().unwrap());
        assert!(resolve("localhost").unwrap().is_loopback());
        assert!(matches!(resolve("a,b"), Err(MountError::Invalid { .. })));
        assert!(matches!(
            resolve("no-such-host.invalid"),
            Err(MountError::Resolve { .. })
        ));
    }

    #[test]
    fn kernel_refusals_read_as_operator_messages() {
        let denied = explain("cifs", Errno::EACCES);
        assert!(
            denied.starts_with("access denied by the server: wrong user name or password"),
            "{denied}"
        );
        assert!(explain("nfs", Errno::ENODEV).contains("unknown filesystem type 'nfs'"));
        assert!(explain("nfs", Errno::ECONNREFUSED).contains("NFS service"));
    }

    #[test]
    fn mount_table_names_are_unescaped() {
        assert_eq!(
            unescape_mountinfo("/data/my\\040dir/mnt"),
            "/data/my dir/mnt"
        );
        assert_eq!(unescape_mountinfo("/odd\\9"), "/odd\\9");
        assert!(is_mounted(Path::new("/")));
        assert!(!is_mounted(Path::new("/no/such/mount/point")));
    }

    #[test]
    fn leftover_credentials_files_are_swept() {
        let dir = std::env::temp_dir().join(format!("lifeboat-mount-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{CREDENTIALS_PREFIX}old")), "x").unwrap();
        fs::write(dir.join("keep"), "x").unwrap();
        sweep_credentials(&dir);
        assert!(!dir.join(format!("{CREDENTIALS_PREFIX}old")).exists());
        assert!(dir.join("keep").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}

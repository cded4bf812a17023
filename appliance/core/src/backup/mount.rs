//! Mounting network datastores with the kernel. The `mount` command lines for
//! NFS and SMB (CIFS) are built by pure functions that refuse option injection
//! (every field is checked against a narrow grammar; free options may not carry
//! credentials or change what `mount` does), and every mount is `nosuid,nodev,
//! noexec` whatever the options say: a share holds data, never programs.
//!
//! The SMB password never appears in argv, in an error or in a log: it travels
//! only in a 0600 credentials file that exists for the length of one `mount`
//! call (`mount.cifs` from cifs-utils reads it; `mount.nfs` from nfs-common does
//! the NFS side).

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lifeboat_os::command::{run_bounded, CommandError};

/// A mount or unmount that takes longer is killed and reported: an NFS
/// server that does not answer must not hold an API request for minutes.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// Appended last, so no option given before can undo them.
const HARDENING: &str = "nosuid,nodev,noexec";
/// SMB dialect used unless the options name one.
const DEFAULT_SMB_VERSION: &str = "vers=3.0";
/// Credentials files are named so; leftovers of a killed controller are
/// removed at start.
pub const CREDENTIALS_PREFIX: &str = ".credentials-";
/// Free options that would carry a secret, or change what `mount` does
/// (another helper, a loop device, a bind or move, user mounts), or undo the
/// hardening above.
const FORBIDDEN_OPTIONS: &str = "credentials cred password password2 pass username user users \
    domain dom workgroup helper loop offset sizelimit bind rbind move remount owner group \
    suid dev exec defaults";

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A field that would let input reach `mount` as something else.
    #[error("{field} {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {} s", MOUNT_TIMEOUT.as_secs())]
    TimedOut { program: &'static str },
    /// The program's own message (the kernel's or the helper's), one line.
    #[error("{program} failed ({status}): {message}")]
    Failed {
        program: &'static str,
        status: String,
        message: String,
    },
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

/// The credentials file is one `key=value` a line, so only line breaks (and
/// NUL) could smuggle in another key. The message never quotes the password.
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

fn option_string(first: &[String], free: &[&str]) -> String {
    let mut all: Vec<&str> = first.iter().map(String::as_str).collect();
    all.extend_from_slice(free);
    all.push(HARDENING);
    all.join(",")
}

fn dir_arg(dir: &Path) -> Result<String, MountError> {
    let s = dir
        .to_str()
        .ok_or_else(|| invalid("mount directory", "is not valid UTF-8"))?;
    if !s.starts_with('/') {
        return Err(invalid("mount directory", "must be absolute"));
    }
    Ok(s.to_string())
}

/// `mount` arguments for `mount -t nfs SERVER:EXPORT DIR -o OPTIONS,nosuid,nodev,noexec`.
pub fn nfs_mount_args(
    server: &str,
    export: &str,
    options: &str,
    dir: &Path,
) -> Result<Vec<String>, MountError> {
    check_server(server)?;
    check_export(export)?;
    let free = parse_options(options)?;
    Ok(vec![
        "-t".into(),
        "nfs".into(),
        format!("{server}:{export}"),
        dir_arg(dir)?,
        "-o".into(),
        option_string(&[], &free),
    ])
}

/// What `mount.cifs` logs in with; prints no password.
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

/// The text of a credentials file; prints as asterisks.
pub struct CredentialsText(String);

impl CredentialsText {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for CredentialsText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialsText(********)")
    }
}

/// `mount` arguments for
/// `mount -t cifs //SERVER/SHARE DIR -o credentials=FILE,vers=3.0,OPTIONS,nosuid,nodev,noexec`
/// and the text of FILE (`username=`, `password=`, `domain=` lines).
pub fn cifs_mount_args(
    server: &str,
    share: &str,
    login: &SmbLogin<'_>,
    options: &str,
    dir: &Path,
    credentials_file: &Path,
) -> Result<(Vec<String>, CredentialsText), MountError> {
    check_server(server)?;
    check_share(share)?;
    check_username(login.username)?;
    check_password(login.password)?;
    check_domain(login.domain)?;
    let free = parse_options(options)?;
    let file = credentials_file.to_str().unwrap_or_default();
    if !file.starts_with('/') || file.contains(',') || file.chars().any(char::is_control) {
        return Err(invalid(
            "credentials file",
            "must be an absolute path without ',' (is the data directory's name unusual?)",
        ));
    }
    let mut first = vec![format!("credentials={file}")];
    if !free.iter().any(|o| o.starts_with("vers=")) {
        first.push(DEFAULT_SMB_VERSION.into());
    }
    let mut text = format!("username={}\npassword={}\n", login.username, login.password);
    if !login.domain.is_empty() {
        text.push_str(&format!("domain={}\n", login.domain));
    }
    let args = vec![
        "-t".into(),
        "cifs".into(),
        format!("//{server}/{share}"),
        dir_arg(dir)?,
        "-o".into(),
        option_string(&first, &free),
    ];
    Ok((args, CredentialsText(text)))
}

/// A credentials file that is removed when this is dropped, whatever happens
/// to the mount call.
struct CredentialsFile(PathBuf);

impl CredentialsFile {
    fn write(path: &Path, text: &CredentialsText) -> Result<CredentialsFile, MountError> {
        let io = |source| MountError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let guard = CredentialsFile(path.to_path_buf());
        f.write_all(text.expose().as_bytes()).map_err(io)?;
        Ok(guard)
    }
}

impl Drop for CredentialsFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.0) {
            tracing::error!("cannot remove credentials file {}: {e}", self.0.display());
        }
    }
}

/// Mounts an NFS export at `dir`.
pub fn mount_nfs(server: &str, export: &str, options: &str, dir: &Path) -> Result<(), MountError> {
    let args = nfs_mount_args(server, export, options, dir)?;
    run_program("mount", &args, None)
}

/// Mounts an SMB share at `dir`, with the password in a one-shot
/// credentials file at `credentials_file`.
pub fn mount_cifs(
    server: &str,
    share: &str,
    login: &SmbLogin<'_>,
    options: &str,
    dir: &Path,
    credentials_file: &Path,
) -> Result<(), MountError> {
    let (args, text) = cifs_mount_args(server, share, login, options, dir, credentials_file)?;
    let _file = CredentialsFile::write(credentials_file, &text)?;
    run_program("mount", &args, Some(login.password))
}

pub fn unmount(dir: &Path) -> Result<(), MountError> {
    run_program("umount", &[dir_arg(dir)?], None)
}

/// Runs `program` (found on PATH), waiting at most [`MOUNT_TIMEOUT`]. Its
/// message is folded to one line with `redact` (a password) masked, in case
/// a helper ever echoed it.
fn run_program(
    program: &'static str,
    args: &[String],
    redact: Option<&str>,
) -> Result<(), MountError> {
    let mut command = Command::new(program);
    command.args(args);
    let out = run_bounded(command, MOUNT_TIMEOUT, 64 * 1024).map_err(|e| match e {
        CommandError::TimedOut(_) => MountError::TimedOut { program },
        CommandError::Spawn(source) | CommandError::Wait(source) => {
            MountError::Spawn { program, source }
        }
    })?;
    let (status, output) = (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    if status.success() {
        return Ok(());
    }
    let mut message = output.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(secret) = redact.filter(|s| !s.is_empty()) {
        message = message.replace(secret, "********");
    }
    if message.is_empty() {
        message = "no message".into();
    }
    Err(MountError::Failed {
        program,
        status: status
            .code()
            .map_or_else(|| "killed".to_string(), |c| format!("exit {c}")),
        message,
    })
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

    const DIR: &str = "/var/lib/lifeboat/mnt/nas";
    const CRED: &str = "/var/lib/lifeboat/mnt/.credentials-nas-1";

    /// `cifs_mount_args` from `[server, share, username, password, domain, options]`.
    fn cifs(f: [&str; 6]) -> Result<(Vec<String>, CredentialsText), MountError> {
        let login = SmbLogin {
            username: f[2],
            password: f[3],
            domain: f[4],
        };
        cifs_mount_args(f[0], f[1], &login, f[5], Path::new(DIR), Path::new(CRED))
    }

    fn nfs(server: &str, export: &str, options: &str) -> Result<Vec<String>, MountError> {
        nfs_mount_args(server, export, options, Path::new(DIR))
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, MountError>) -> &'static str {
        match r {
            Err(MountError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn nfs_command_line_is_exact_and_hardened() {
        let args = nfs("nas.example", "/srv/backup", "vers=4.2,soft,timeo=600").unwrap();
        let options = "vers=4.2,soft,timeo=600,nosuid,nodev,noexec";
        assert_eq!(
            args,
            ["-t", "nfs", "nas.example:/srv/backup", DIR, "-o", options]
        );
        let args = nfs("[fd00::5]", "/x", "").unwrap();
        assert_eq!(
            (args[2].as_str(), args[5].as_str()),
            ("[fd00::5]:/x", HARDENING)
        );
    }

    #[test]
    fn cifs_keeps_the_password_out_of_argv() {
        let (args, text) = cifs(["fs1", "backups$", "svc", "p,a=ss hunter2", "CORP", ""]).unwrap();
        let options = format!("credentials={CRED},vers=3.0,nosuid,nodev,noexec");
        assert_eq!(args, ["-t", "cifs", "//fs1/backups$", DIR, "-o", &options]);
        assert_eq!(
            text.expose(),
            "username=svc\npassword=p,a=ss hunter2\ndomain=CORP\n"
        );
        assert!(args.iter().all(|a| !a.contains("hunter2")));
        let login = SmbLogin {
            username: "svc",
            password: "p,a=ss hunter2",
            domain: "",
        };
        assert!(!format!("{text:?} {login:?}").contains("hunter2"));
        // The options' own dialect wins; no domain line when there is none.
        let (args, text) = cifs(["10.0.0.9", "b", "svc", "pw", "", "vers=2.1,cache=none"]).unwrap();
        let options = format!("credentials={CRED},vers=2.1,cache=none,nosuid,nodev,noexec");
        assert_eq!(args[5], options);
        assert_eq!(text.expose(), "username=svc\npassword=pw\n");
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
            (["nas", "s", "u", "pw", "D,sec=none", ""], "domain"),
            (
                ["nas", "s", "u", "pw", "", "credentials=/etc/shadow"],
                "options",
            ),
        ] {
            assert_eq!(refused(cifs(fields)), field, "{fields:?}");
        }
        let login = SmbLogin {
            username: "u",
            password: "pw",
            domain: "",
        };
        let odd = cifs_mount_args("nas", "s", &login, "", Path::new(DIR), Path::new("/d,x/c"));
        assert_eq!(refused(odd), "credentials file");
    }

    #[test]
    fn free_options_follow_the_grammar_and_carry_no_credentials() {
        let good = parse_options("vers=4.2,hard,rsize=1048576,sec=krb5p,clientaddr=fd00::1");
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
    fn credentials_file_is_private_and_gone_after_use() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lifeboat-mount-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{CREDENTIALS_PREFIX}t"));
        {
            let text = CredentialsText("password=x\n".into());
            let _file = CredentialsFile::write(&path, &text).unwrap();
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            // Never reuses a file someone else put there.
            assert!(CredentialsFile::write(&path, &text).is_err());
            assert!(path.exists());
        }
        assert!(!path.exists());
        fs::write(dir.join(format!("{CREDENTIALS_PREFIX}old")), "x").unwrap();
        fs::write(dir.join("keep"), "x").unwrap();
        sweep_credentials(&dir);
        assert!(!dir.join(format!("{CREDENTIALS_PREFIX}old")).exists());
        assert!(dir.join("keep").exists());
    }

    #[test]
    fn a_failed_command_reports_its_message_on_one_line_masked() {
        let script = "echo 'mount error: bad pw hunter2' >&2; echo ' second' >&2; exit 32";
        let err = run_program("sh", &["-c".into(), script.into()], Some("hunter2"));
        let expected = "sh failed (exit 32): mount error: bad pw ******** second";
        assert_eq!(err.unwrap_err().to_string(), expected);
        assert!(run_program("true", &[], None).is_ok());
    }
}

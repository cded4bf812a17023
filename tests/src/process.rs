//! A child process of a test, its stdout and stderr appended to a log file.
//! SIGKILLed and reaped when dropped, so no test leaves a process behind.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

/// Arguments whose value is a secret, masked in the log's start line so a
/// test can assert that a product log never shows one.
const SECRET_ARGS: &[&str] = &["--token"];

pub(crate) struct LoggedProcess {
    child: Child,
}

impl LoggedProcess {
    /// Starts `command` with stdin closed and its output appended to `log`,
    /// after a line saying what starts (secret arguments masked).
    pub(crate) fn spawn(what: &str, mut command: Command, log: &Path) -> LoggedProcess {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        writeln!(
            file,
            "==== e2e harness: starting {what}: {} ====",
            describe(&command)
        )
        .unwrap_or_else(|e| panic!("write log {}: {e}", log.display()));
        let stderr = file.try_clone().expect("clone log file handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("start {what} ({}): {e}", describe(&command)));
        LoggedProcess { child }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL (what `Child::kill` sends on unix), then reap.
    pub(crate) fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    let mut mask_next = false;
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        words.push(if mask_next {
            "<secret>".to_string()
        } else {
            arg.to_string()
        });
        mask_next = SECRET_ARGS.contains(&arg.as_ref());
    }
    words.join(" ")
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> &str {
    if lines == 0 {
        return "";
    }
    let mut start = text.len();
    for _ in 0..lines {
        match text[..start].trim_end_matches('\n').rfind('\n') {
            Some(newline) => start = newline,
            None => return text,
        }
    }
    &text[start + 1..]
}

/// Reads a log file; a missing or unreadable file reads as a note saying so.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("<no log at {}: {e}>", path.display()))
}

/// Prints the tail of a log to the test's stderr if the test is failing.
pub(crate) fn print_log_if_failing(what: &str, log: &Path) {
    if std::thread::panicking() {
        let text = read_log(log);
        eprintln!(
            "---- {what} log {} (last 80 lines) ----\n{}\n---- end of {what} log ----",
            log.display(),
            tail(&text, 80)
        );
    }
}

/// Runs `program ARGS` in `dir` and returns its stdout; panics with its
/// stderr if it fails.
pub(crate) fn run_checked(program: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `kB` figure (`VmRSS:`, `VmHWM:`) from `/proc/PID/status`; 0 if unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn secret_arguments_are_masked() {
        let mut command = Command::new("lifeboat-agent");
        command.args(["--token", "s3cret", "--name", "h1"]);
        assert_eq!(
            describe(&command),
            "lifeboat-agent --token <secret> --name h1"
        );
    }
}

//! Running a helper program with a deadline: it is killed when the time is
//! up, and its output pipes are drained on their own threads (to a bound),
//! so a chatty or stuck child can neither block nor exhaust its caller.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start it: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("no answer within {0:?}, killed")]
    TimedOut(Duration),
    #[error("waiting for it failed: {0}")]
    Wait(#[source] std::io::Error),
}

/// Runs `cmd` (stdin closed) until it exits or `limit` passes. Each output
/// is kept up to `max_output` bytes; the rest is read and dropped.
pub fn run_bounded(
    mut cmd: Command,
    limit: Duration,
    max_output: usize,
) -> Result<Output, CommandError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(CommandError::Spawn)?;
    let stdout = drain(child.stdout.take(), max_output);
    let stderr = drain(child.stderr.take(), max_output);
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(CommandError::Wait)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The readers are left behind: a grandchild (an ssh transport)
            // may still hold the pipes open.
            return Err(CommandError::TimedOut(limit));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>, max: usize) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.by_ref().take(max as u64).read_to_end(&mut kept);
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        }
        kept
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn output_is_kept_to_its_bound_and_a_slow_child_is_killed() {
        let out = run_bounded(
            sh("echo hello; echo oops >&2; exit 3"),
            Duration::from_secs(5),
            64,
        )
        .unwrap();
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.stderr, b"oops\n");
        assert_eq!(out.status.code(), Some(3));
        let big = run_bounded(sh("head -c 100000 /dev/zero"), Duration::from_secs(5), 10).unwrap();
        assert_eq!(big.stdout.len(), 10);
        assert!(
            big.status.success(),
            "the rest was drained, not left blocking"
        );
        let started = Instant::now();
        let slow = run_bounded(sh("sleep 10"), Duration::from_millis(200), 10);
        assert!(matches!(slow, Err(CommandError::TimedOut(_))));
        assert!(started.elapsed() < Duration::from_secs(5));
        let missing = run_bounded(Command::new("/nonexistent/x"), Duration::from_secs(1), 10);
        assert!(matches!(missing, Err(CommandError::Spawn(_))));
    }
}

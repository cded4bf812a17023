//! Waiting for something to become true, by polling against a deadline.
//! The only way the harness waits: no fixed sleeps, and a timeout panics with
//! what was awaited and the last thing seen.

use std::fmt::Display;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long the harness waits for a process it started to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(20);
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Calls `attempt` until it returns `Ok`, and returns that value. Panics after
/// `timeout` with `what` and the last error `attempt` returned.
pub fn poll_until<T, E: Display>(
    what: &str,
    timeout: Duration,
    attempt: impl FnMut() -> Result<T, E>,
) -> T {
    try_poll_until(timeout, attempt).unwrap_or_else(|last_error| {
        panic!("timed out after {timeout:?} waiting for {what}; last seen: {last_error}")
    })
}

/// Like [`poll_until`], but a timeout returns the last error instead of
/// panicking: for cleanup in `Drop`, which must not panic.
pub(crate) fn try_poll_until<T, E>(
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    let mut interval = FIRST_POLL_INTERVAL;
    loop {
        let last_error = match attempt() {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(last_error);
        }
        sleep(interval.min(deadline - now));
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    }
}

/// Calls `done` until it returns true. Panics after `timeout`, naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    poll_until(
        what,
        timeout,
        || if done() { Ok(()) } else { Err("not yet") },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_until_returns_the_first_success() {
        let mut calls = 0;
        let value = poll_until("the third call", Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        });
        assert_eq!(value, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible; last seen: still false")]
    fn poll_until_names_what_it_waited_for() {
        poll_until::<(), _>("the impossible", Duration::from_millis(50), || {
            Err("still false")
        });
    }
}

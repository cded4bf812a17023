//! A machine-wide mutex between test threads and test processes, for setup
//! steps that must not run twice at once (starting libvirtd, `npm ci`).
//!
//! It is a bound Linux abstract unix socket: only one socket can hold a name,
//! and the kernel releases it when the holder closes it or dies, so a killed
//! test never leaves a stale lock. Abstract names are per network namespace.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::time::Duration;

use crate::wait::poll_until;

const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// Held while alive.
pub struct HostLock {
    _socket: UnixListener,
}

impl HostLock {
    /// Waits (up to five minutes) until no one else holds the lock `name`.
    pub fn acquire(name: &str) -> HostLock {
        let address = SocketAddr::from_abstract_name(format!("lifeboat-e2e/{name}"))
            .unwrap_or_else(|e| panic!("lock name {name}: {e}"));
        let socket = poll_until(&format!("the host lock `{name}`"), LOCK_TIMEOUT, || {
            UnixListener::bind_addr(&address)
        });
        HostLock { _socket: socket }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn only_one_holder_at_a_time() {
        let name = format!("unit-test-{}", std::process::id());
        let first = HostLock::acquire(&name);
        let second_holds = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (name, second_holds) = (name.clone(), second_holds.clone());
            std::thread::spawn(move || {
                let _second = HostLock::acquire(&name);
                second_holds.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!second_holds.load(Ordering::SeqCst));
        drop(first);
        waiter.join().unwrap();
        assert!(second_holds.load(Ordering::SeqCst));
    }
}

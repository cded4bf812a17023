//! Loopback ports for the processes a test starts.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// A TCP port on 127.0.0.1 that was free a moment ago and that no other call
/// in this test process has handed out (tests run in parallel threads).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if handed_out.insert(port) {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_not_handed_out_twice() {
        let ports: BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }
}

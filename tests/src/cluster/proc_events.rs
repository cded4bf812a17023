//! The kernel's process event connector (netlink `NETLINK_CONNECTOR`,
//! `CN_IDX_PROC`): a message for every exec and exit on the machine, as it
//! happens. Polling /proc can miss a process that lives less than the poll
//! interval (a QEMU that fails on an image lock lives about 15 ms); this
//! does not. Needs CAP_NET_ADMIN (tests run as root).
//!
//! std has no netlink sockets, and the crate avoids a libc dependency for
//! three calls: they are declared here (std links libc anyway).

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

const AF_NETLINK: c_int = 16;
const SOCK_DGRAM: c_int = 2;
const SOCK_CLOEXEC: c_int = 0o2_000_000;
const NETLINK_CONNECTOR: c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const NLMSG_DONE: u16 = 3;
const SOL_SOCKET: c_int = 1;
const SO_RCVBUFFORCE: c_int = 33;
/// `SO_RCVTIMEO` with a 64-bit `struct timeval`, on x86_64 and aarch64.
const SO_RCVTIMEO: c_int = 20;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// `struct nlmsghdr` (16 bytes) + `struct cn_msg` (20 bytes).
const HEADERS: usize = 36;
/// A big receive buffer, so a burst of forks elsewhere does not overflow it.
const RECEIVE_BUFFER: c_int = 8 << 20;

#[repr(C)]
struct SockaddrNl {
    nl_family: u16,
    nl_pad: u16,
    nl_pid: u32,
    nl_groups: u32,
}

#[repr(C)]
struct Timeval {
    tv_sec: i64,
    tv_usec: i64,
}

extern "C" {
    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const SockaddrNl, len: u32) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: u32) -> c_int;
}

/// What happened to a process (thread group), as the kernel reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProcEvent {
    /// The process now runs a new program; read its /proc entry now.
    Exec(u32),
    /// The process ended (its main thread exited).
    Exit(u32),
}

/// What one wait for an event gave.
pub(crate) enum Received {
    Event(ProcEvent),
    /// Something else (a fork, a thread's exit...).
    Other,
    /// Nothing within the timeout.
    Idle,
    /// The receive buffer overflowed: events were lost; re-read /proc.
    Lost,
}

/// A subscription to exec and exit events.
pub(crate) struct ProcEvents {
    socket: File,
}

impl ProcEvents {
    /// Subscribes; `recv` then waits at most `timeout` for an event.
    pub(crate) fn subscribe(timeout: Duration) -> Result<ProcEvents, String> {
        // SAFETY: plain syscalls on a descriptor this function owns; the
        // pointers are to live, correctly sized `repr(C)` values.
        let socket = unsafe {
            let fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR);
            if fd < 0 {
                return Err(format!(
                    "netlink socket: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let owned = OwnedFd::from_raw_fd(fd);
            let address = SockaddrNl {
                nl_family: AF_NETLINK as u16,
                nl_pad: 0,
                nl_pid: 0,
                nl_groups: CN_IDX_PROC,
            };
            let size = std::mem::size_of::<SockaddrNl>() as u32;
            if bind(fd, &address, size) != 0 {
                return Err(format!("netlink bind: {}", std::io::Error::last_os_error()));
            }
            let buffer = RECEIVE_BUFFER;
            // Best effort: the default buffer works too, just less deep.
            setsockopt(
                fd,
                SOL_SOCKET,
                SO_RCVBUFFORCE,
                (&buffer as *const c_int).cast(),
                std::mem::size_of::<c_int>() as u32,
            );
            let timeval = Timeval {
                tv_sec: timeout.as_secs() as i64,
                tv_usec: i64::from(timeout.subsec_micros()),
            };
            let size = std::mem::size_of::<Timeval>() as u32;
            if setsockopt(
                fd,
                SOL_SOCKET,
                SO_RCVTIMEO,
                (&timeval as *const Timeval).cast(),
                size,
            ) != 0
            {
                return Err(format!("SO_RCVTIMEO: {}", std::io::Error::last_os_error()));
            }
            File::from(owned)
        };
        let mut events = ProcEvents { socket };
        events
            .socket
            .write_all(&listen_message())
            .map_err(|e| format!("subscribing to process events: {e}"))?;
        Ok(events)
    }

    /// Waits for the next message, up to the timeout given at subscription.
    pub(crate) fn recv(&mut self) -> Result<Received, String> {
        let mut buffer = [0u8; 256];
        match self.socket.read(&mut buffer) {
            Ok(n) => Ok(parse(&buffer[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Ok(Received::Idle)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(Received::Other),
            // ENOBUFS: the kernel dropped messages for us.
            Err(e) if e.raw_os_error() == Some(105) => Ok(Received::Lost),
            Err(e) => Err(format!("reading process events: {e}")),
        }
    }
}

/// `nlmsghdr` + `cn_msg` + `PROC_CN_MCAST_LISTEN`, in native byte order.
fn listen_message() -> Vec<u8> {
    let op = PROC_CN_MCAST_LISTEN.to_ne_bytes();
    let mut cn = Vec::new();
    for word in [CN_IDX_PROC, CN_VAL_PROC, 0, 0] {
        cn.extend_from_slice(&word.to_ne_bytes()); // id.idx, id.val, seq, ack
    }
    cn.extend_from_slice(&(op.len() as u16).to_ne_bytes()); // len
    cn.extend_from_slice(&0u16.to_ne_bytes()); // flags
    cn.extend_from_slice(&op);
    let mut message = Vec::new();
    message.extend_from_slice(&((16 + cn.len()) as u32).to_ne_bytes()); // nlmsg_len
    message.extend_from_slice(&NLMSG_DONE.to_ne_bytes()); // nlmsg_type
    message.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
    message.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
    message.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    message.extend_from_slice(&cn);
    message
}

/// A `proc_event` after the headers: `what` (u32), `cpu` (u32),
/// `timestamp_ns` (u64), then for exec and exit `process_pid` and
/// `process_tgid` (u32 each).
fn parse(message: &[u8]) -> Received {
    let word = |at: usize| {
        message
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(what), Some(pid), Some(tgid)) =
        (word(HEADERS), word(HEADERS + 16), word(HEADERS + 20))
    else {
        return Received::Other;
    };
    match what {
        PROC_EVENT_EXEC => Received::Event(ProcEvent::Exec(tgid)),
        // A thread's exit is not the process's.
        PROC_EVENT_EXIT if pid == tgid => Received::Event(ProcEvent::Exit(tgid)),
        _ => Received::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Instant;

    #[test]
    fn the_listen_message_is_well_formed() {
        let message = listen_message();
        assert_eq!(message.len(), 40);
        assert_eq!(u32::from_ne_bytes(message[..4].try_into().unwrap()), 40);
    }

    /// Root only (CAP_NET_ADMIN), like the end-to-end tests.
    #[test]
    fn sees_a_short_lived_process_start_and_end() {
        let mut events = ProcEvents::subscribe(Duration::from_millis(50)).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let (mut exec, mut exit) = (false, false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(exec && exit) && Instant::now() < deadline {
            match events.recv().unwrap() {
                Received::Event(ProcEvent::Exec(p)) if p == pid => exec = true,
                Received::Event(ProcEvent::Exit(p)) if p == pid => exit = true,
                _ => {}
            }
        }
        child.wait().unwrap();
        assert!(exec && exit, "exec seen: {exec}, exit seen: {exit}");
    }
}

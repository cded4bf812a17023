//! Tests of the NBD client: against a real qemu-nbd (`qemu.rs`) and against
//! scripted hostile peers (`hostile.rs`). Here: what both use.

use super::wire::WireRead;
use super::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const MIB: u64 = 1 << 20;

/// A directory removed when the test ends, however it ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lifeboat-nbd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(client: &mut NbdClient, offset: u64, length: u64) -> Vec<u8> {
    let mut buf = vec![0x5a; length as usize];
    client.read_at(offset, &mut buf).expect("read");
    buf
}

fn assert_all(bytes: &[u8], value: u8, what: &str) {
    if let Some(i) = bytes.iter().position(|&b| b != value) {
        panic!("{what}: byte {i} is {:#04x}, not {value:#04x}", bytes[i]);
    }
}

fn extent(offset: u64, length: u64, flags: u32) -> Extent {
    Extent {
        offset,
        length,
        flags,
    }
}

mod hostile;
mod qemu;

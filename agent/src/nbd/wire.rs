//! NBD framing shared by both phases: the socket, exact-size big-endian reads,
//! bounded payload fields, and server text made printable.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::{io_error, protocol, NbdError, MAX_STRING};

pub(super) enum Transport {
    Unix(UnixStream),
    #[cfg_attr(not(test), allow(dead_code))]
    Tcp(TcpStream),
}

impl Transport {
    pub(super) fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Transport::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            Transport::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
        }
    }

    pub(super) fn shutdown(&self) {
        let _ = match self {
            Transport::Unix(s) => s.shutdown(Shutdown::Both),
            Transport::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Unix(s) => s.read(buf),
            Transport::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Unix(s) => s.write(buf),
            Transport::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Exact-size reads with the error mapping every caller wants.
pub(super) trait WireRead: Read {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), NbdError> {
        self.read_exact(buf).map_err(io_error)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], NbdError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    /// Reads a payload whose length the caller has already bounded.
    fn payload(&mut self, length: u32) -> Result<Vec<u8>, NbdError> {
        let mut buf = vec![0u8; length as usize];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    fn skip(&mut self, length: u64) -> Result<(), NbdError> {
        let copied = io::copy(&mut self.take(length), &mut io::sink()).map_err(io_error)?;
        if copied == length {
            Ok(())
        } else {
            Err(NbdError::Closed)
        }
    }
}

impl<R: Read + ?Sized> WireRead for R {}

/// Big-endian fields of a payload that is already in memory; running past
/// its end is a protocol error, never a panic.
pub(super) struct Fields<'a> {
    pub(super) rest: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub(super) fn new(rest: &'a [u8], what: &'static str) -> Self {
        Fields { rest, what }
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], NbdError> {
        if n > self.rest.len() {
            return Err(protocol(format!("{} is truncated", self.what)));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], NbdError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(super) fn u16(&mut self) -> Result<u16, NbdError> {
        self.array().map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self) -> Result<u32, NbdError> {
        self.array().map(u32::from_be_bytes)
    }

    pub(super) fn u64(&mut self) -> Result<u64, NbdError> {
        self.array().map(u64::from_be_bytes)
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    pub(super) fn finish(&self) -> Result<(), NbdError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(protocol(format!("{} has trailing bytes", self.what)))
        }
    }
}

/// Server text shown to people: lossy UTF-8, control characters dropped.
pub(super) fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_STRING)])
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

//! Blocking NBD client for qemu's exports (qemu-nbd, libvirt pull-mode backup), without libnbd.
//! Guarantees: server lengths and offsets are bounded before use; a read returns exactly the
//! server's bytes (holes as zeros) or an error; a write returns only once the server acknowledged
//! every byte; a protocol violation poisons the connection.
//!
//! `handshake` negotiates the export, `reply` sends one request and checks its reply,
//! `wire` holds the framing both use; the protocol's numbers stay here, in one table.

// Items allowed to be dead outside tests are API the agent does not use yet;
// the tests exercise them.

mod handshake;
mod reply;
pub mod server;
mod wire;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use handshake::{ExportInfo, MetaContext};
use reply::Span;
use wire::Transport;

/// `base:allocation` context: which extents are holes and which read as zeros.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` flag: the extent is not allocated on the server.
#[cfg_attr(not(test), allow(dead_code))]
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` flag: the extent reads as zeros.
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:*` flag: the extent was written since the bitmap started.
pub const STATE_DIRTY: u32 = 1;

/// Per-syscall timeout; a live qemu answers a 32 MiB read well within it.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);

const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_ABORT: u32 = 2;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_BIT: u32 = 1 << 31;
const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;
const TRANSMISSION_HAS_FLAGS: u16 = 1;
const TRANSMISSION_READ_ONLY: u16 = 2;
const TRANSMISSION_SEND_FLUSH: u16 = 1 << 2;
#[cfg_attr(not(test), allow(dead_code))]
const TRANSMISSION_SEND_WRITE_ZEROES: u16 = 1 << 6;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
#[cfg_attr(not(test), allow(dead_code))]
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;
const REPLY_FLAG_DONE: u16 = 1;
const REPLY_NONE: u16 = 0;
const REPLY_OFFSET_DATA: u16 = 1;
const REPLY_OFFSET_HOLE: u16 = 2;
const REPLY_BLOCK_STATUS: u16 = 5;
const REPLY_ERROR_BIT: u16 = 1 << 15;
const REPLY_ERROR_OFFSET: u16 = REPLY_ERROR_BIT | 2;

/// The spec's limit on names and strings; longer ones are hostile.
const MAX_STRING: usize = 4096;
/// Largest read when the server states no maximum (the spec's safe default).
const DEFAULT_MAX_REQUEST: u32 = 32 << 20;
/// Largest block-status request: a multiple of every legal minimum block size.
const MAX_STATUS_REQUEST: u32 = 1 << 30;
/// Largest NBD_CMD_WRITE_ZEROES: it carries no payload, so the maximum block
/// size does not bound it (qemu checks it only for reads and writes); like
/// [`MAX_STATUS_REQUEST`], a multiple of every legal minimum block size.
#[cfg_attr(not(test), allow(dead_code))]
const MAX_ZEROES_REQUEST: u32 = 1 << 30;
/// Largest zero buffer written when the server lacks NBD_CMD_WRITE_ZEROES.
#[cfg_attr(not(test), allow(dead_code))]
const MAX_ZERO_BUFFER: u32 = 4 << 20;
/// Bounds on what the server may make us buffer or loop over.
const MAX_OPTION_PAYLOAD: u32 = 64 << 10;
const MAX_OPTION_REPLIES: usize = 1024;
const MAX_STATUS_CHUNKS: usize = 1024;
/// Error chunks a reply without data (write, flush) may carry before its end.
const MAX_ERROR_CHUNKS: usize = 1024;
const MAX_ERROR_PAYLOAD: u32 = 6 + 0xffff + 8;
const MAX_STATUS_PAYLOAD: u32 = 4 + (16 << 20);
/// A 32 MiB read in 512-byte extents alternating data and hole, plus slack.
const MAX_CHUNKS_PER_REPLY: usize = (1 << 16) + 64;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD connection failed: {0}")]
    Io(io::Error),
    /// Also what ending the libvirt backup job does to a connected client.
    #[error("NBD server closed the connection")]
    Closed,
    #[error("NBD server did not answer within the I/O timeout")]
    Timeout,
    #[error("NBD server broke the protocol: {0}")]
    Protocol(String),
    #[error("NBD server does not support {0}")]
    Unsupported(&'static str),
    #[error("NBD server refused {option}: {reason}{}", detail(message))]
    Refused {
        option: &'static str,
        reason: &'static str,
        message: String,
    },
    #[error(
        "NBD {command} failed on the server: {} (errno {errno}){}",
        errno_name(*errno),
        detail(message)
    )]
    Server {
        command: &'static str,
        errno: u32,
        message: String,
    },
    #[error("invalid NBD request: {0}")]
    InvalidRequest(String),
    /// Refused before sending: the server would only fail the write.
    #[error("NBD export is read-only: writes are refused")]
    ReadOnly,
    #[error("NBD meta context {0:?} was not granted by the server")]
    UnknownContext(String),
    #[error("NBD connection is unusable after an earlier protocol or I/O error")]
    Broken,
}

impl NbdError {
    /// Whether the stream may be out of step with the server afterwards.
    fn desynchronises(&self) -> bool {
        matches!(
            self,
            NbdError::Io(_) | NbdError::Closed | NbdError::Timeout | NbdError::Protocol(_)
        )
    }
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

fn errno_name(errno: u32) -> &'static str {
    match errno {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "unknown error",
    }
}

fn protocol(message: impl Into<String>) -> NbdError {
    NbdError::Protocol(message.into())
}

fn io_error(error: io::Error) -> NbdError {
    match error.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset => NbdError::Closed,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => NbdError::Timeout,
        _ => NbdError::Io(error),
    }
}

/// One range of an export with the flags a meta context gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// The meta context in which qemu publishes a dirty bitmap of the export.
#[cfg_attr(not(test), allow(dead_code))]
pub fn dirty_bitmap_context(bitmap: &str) -> String {
    format!("qemu:dirty-bitmap:{bitmap}")
}

/// A connection to one NBD export in the transmission phase.
pub struct NbdClient {
    stream: Transport,
    export: ExportInfo,
    structured: bool,
    contexts: Vec<MetaContext>,
    next_cookie: u64,
    broken: bool,
}

impl NbdClient {
    /// Connects to `export` on a Unix socket (libvirt's and qemu-nbd's usual
    /// transport) and selects `meta_contexts`; ungranted ones are not an error
    /// here (see [`NbdClient::has_context`]).
    pub fn connect_unix(
        path: &Path,
        export: &str,
        meta_contexts: &[&str],
    ) -> Result<NbdClient, NbdError> {
        let stream = UnixStream::connect(path).map_err(NbdError::Io)?;
        Self::handshake(
            Transport::Unix(stream),
            export,
            meta_contexts,
            DEFAULT_IO_TIMEOUT,
        )
    }

    /// Like [`NbdClient::connect_unix`], over TCP.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn connect_tcp(
        address: impl ToSocketAddrs,
        export: &str,
        meta_contexts: &[&str],
    ) -> Result<NbdClient, NbdError> {
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in address.to_socket_addrs().map_err(NbdError::Io)? {
            match TcpStream::connect_timeout(&addr, DEFAULT_IO_TIMEOUT) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Self::handshake(
                        Transport::Tcp(stream),
                        export,
                        meta_contexts,
                        DEFAULT_IO_TIMEOUT,
                    );
                }
                Err(error) => last_error = error,
            }
        }
        Err(NbdError::Io(last_error))
    }

    /// Replaces the per-syscall read and write timeout.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn set_io_timeout(&mut self, timeout: Duration) -> Result<(), NbdError> {
        self.stream.set_timeout(timeout).map_err(NbdError::Io)
    }

    /// Size of the export in bytes.
    pub fn size(&self) -> u64 {
        self.export.size
    }

    pub fn is_read_only(&self) -> bool {
        self.export.flags & TRANSMISSION_READ_ONLY != 0
    }

    /// Offsets and lengths of requests must be multiples of this.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn min_block_size(&self) -> u32 {
        self.export.min_block
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn has_structured_replies(&self) -> bool {
        self.structured
    }

    /// Whether the server granted this meta context during the handshake.
    pub fn has_context(&self, name: &str) -> bool {
        self.contexts.iter().any(|c| c.name == name)
    }

    /// Fills `buf` from the export at `offset`, in requests no larger than
    /// the server allows; holes read as zeros.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.check_range(offset, buf.len() as u64)?;
        let piece = self.export.max_request as usize;
        self.guarded(|client| {
            let mut position = offset;
            for part in buf.chunks_mut(piece) {
                client.read_request(position, part)?;
                position += part.len() as u64;
            }
            Ok(())
        })
    }

    /// The extents of `[offset, offset + length)` in meta context `context`,
    /// asking again until the whole range is covered. Adjacent extents with
    /// equal flags are merged; the result covers exactly the range.
    pub fn block_status(
        &mut self,
        context: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<Extent>, NbdError> {
        self.check_range(offset, length)?;
        let id = self
            .contexts
            .iter()
            .find(|c| c.name == context)
            .map(|c| c.id)
            .ok_or_else(|| NbdError::UnknownContext(context.to_string()))?;
        let end = offset + length;
        self.guarded(|client| {
            let mut extents: Vec<Extent> = Vec::new();
            let mut position = offset;
            while position < end {
                let span = Span {
                    offset: position,
                    length: (end - position).min(u64::from(MAX_STATUS_REQUEST)),
                };
                for extent in client.block_status_request(id, span)? {
                    match extents.last_mut() {
                        Some(last) if last.flags == extent.flags => last.length += extent.length,
                        _ => extents.push(extent),
                    }
                    position = extent.end();
                }
            }
            Ok(extents)
        })
    }

    /// Writes `data` to the export at `offset`, in requests no larger than
    /// the server allows; returns once the server acknowledged all of them.
    /// Durable only after [`NbdClient::flush`].
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        let piece = self.export.max_request as usize;
        self.guarded(|client| {
            let mut position = offset;
            for part in data.chunks(piece) {
                client.write_request(position, part)?;
                position += part.len() as u64;
            }
            Ok(())
        })
    }

    /// Makes `[offset, offset + length)` read as zeros: NBD_CMD_WRITE_ZEROES
    /// (the server may leave holes) if offered, else writes of zero buffers.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn write_zeroes(&mut self, offset: u64, length: u64) -> Result<(), NbdError> {
        self.check_writable()?;
        self.check_range(offset, length)?;
        let end = offset + length;
        if self.export.flags & TRANSMISSION_SEND_WRITE_ZEROES == 0 {
            // max_request and MAX_ZERO_BUFFER are multiples of the minimum
            // block size, so every piece but the aligned tail is too.
            let piece = u64::from(self.export.max_request.min(MAX_ZERO_BUFFER));
            let zeros = vec![0u8; piece.min(length) as usize];
            return self.guarded(|client| {
                let mut position = offset;
                while position < end {
                    let part = (end - position).min(piece) as usize;
                    client.write_request(position, &zeros[..part])?;
                    position += part as u64;
                }
                Ok(())
            });
        }
        self.guarded(|client| {
            let mut position = offset;
            while position < end {
                let span = Span {
                    offset: position,
                    length: (end - position).min(u64::from(MAX_ZEROES_REQUEST)),
                };
                // Command flags 0: NBD_CMD_FLAG_NO_HOLE unset, holes are fine.
                let cookie = client.send_request(CMD_WRITE_ZEROES, span)?;
                client.empty_reply(cookie, "write zeroes", span)?;
                position += span.length;
            }
            Ok(())
        })
    }

    /// Asks the server to make every acknowledged write durable; a no-op if
    /// it does not offer NBD_CMD_FLUSH (nothing more can be asked of it then).
    pub fn flush(&mut self) -> Result<(), NbdError> {
        let offered = self.export.flags & TRANSMISSION_SEND_FLUSH != 0;
        // Even the no-op reports a broken connection: its writes are in doubt.
        self.guarded(|client| {
            if !offered {
                return Ok(());
            }
            let span = Span {
                offset: 0,
                length: 0,
            };
            let cookie = client.send_request(CMD_FLUSH, span)?;
            client.empty_reply(cookie, "flush", span)
        })
    }

    fn check_writable(&self) -> Result<(), NbdError> {
        if self.is_read_only() {
            Err(NbdError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), NbdError> {
        let end = offset.checked_add(length);
        if end.is_none_or(|end| end > self.export.size) {
            return Err(NbdError::InvalidRequest(format!(
                "[{offset}, +{length}) is beyond the end of the {}-byte export",
                self.export.size
            )));
        }
        let min = u64::from(self.export.min_block);
        // min is a power of two (checked in the handshake).
        if (offset | length) & (min - 1) != 0 {
            return Err(NbdError::InvalidRequest(format!(
                "[{offset}, +{length}) is not aligned to the server's {min}-byte blocks"
            )));
        }
        Ok(())
    }

    /// Runs one exchange; a failure that may leave unread bytes on the
    /// stream poisons the connection so no later reply is misattributed.
    fn guarded<T>(
        &mut self,
        exchange: impl FnOnce(&mut Self) -> Result<T, NbdError>,
    ) -> Result<T, NbdError> {
        if self.broken {
            return Err(NbdError::Broken);
        }
        let result = exchange(self);
        if result.as_ref().is_err_and(NbdError::desynchronises) {
            self.broken = true;
        }
        result
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        // A desynchronised server might misread NBD_CMD_DISC; just hang up.
        if !self.broken {
            self.disconnect();
        }
        self.stream.shutdown();
    }
}

/// For the fuzz target: `server` is everything a hostile NBD server says,
/// sent at once; the client shakes hands and reads, writes and asks for
/// block status. It must end with an error or a result, never a panic or a
/// hang (every read has a short deadline).
#[doc(hidden)]
pub fn fuzz_server_replies(server: &[u8]) {
    use std::io::{Read, Write};
    let Ok((client_end, mut server_end)) = UnixStream::pair() else {
        return;
    };
    let said = server.to_vec();
    let peer = std::thread::spawn(move || {
        let _ = server_end.write_all(&said);
        let _ = server_end.shutdown(std::net::Shutdown::Write);
        let _ = io::copy(&mut Read::take(&mut server_end, 1 << 24), &mut io::sink());
    });
    let contexts = [BASE_ALLOCATION, "qemu:dirty-bitmap:backup-vda"];
    let timeout = Duration::from_millis(200);
    if let Ok(mut client) =
        NbdClient::handshake(Transport::Unix(client_end), "disk", &contexts, timeout)
    {
        let size = client.size().min(1 << 20);
        let mut buf = vec![0u8; size.min(64 * 1024) as usize];
        let _ = client.read_at(0, &mut buf);
        let _ = client.block_status(BASE_ALLOCATION, 0, size);
        let _ = client.write_at(0, &buf);
    }
    let _ = peer.join();
}

//! Blocking NBD client for qemu's exports (qemu-nbd, libvirt pull-mode backup), without libnbd.
//! Guarantees: server lengths and offsets are bounded before use; a read returns exactly the
//! server's bytes (holes as zeros) or an error; a write returns only once the server acknowledged
//! every byte; a protocol violation poisons the connection.

// Tests use the whole API; the agent build uses only what backup needs so far.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// `base:allocation` context: which extents are holes and which read as zeros.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` flag: the extent is not allocated on the server.
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
const TRANSMISSION_SEND_WRITE_ZEROES: u16 = 1 << 6;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
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
const MAX_ZEROES_REQUEST: u32 = 1 << 30;
/// Largest zero buffer written when the server lacks NBD_CMD_WRITE_ZEROES.
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

fn option_error_name(reply: u32) -> &'static str {
    match reply & !REP_ERR_BIT {
        1 => "unsupported option (NBD_REP_ERR_UNSUP)",
        2 => "forbidden by policy (NBD_REP_ERR_POLICY)",
        3 => "invalid request (NBD_REP_ERR_INVALID)",
        4 => "unsupported on this platform (NBD_REP_ERR_PLATFORM)",
        5 => "TLS required (NBD_REP_ERR_TLS_REQD)",
        6 => "no such export (NBD_REP_ERR_UNKNOWN)",
        7 => "server shutting down (NBD_REP_ERR_SHUTDOWN)",
        8 => "block size negotiation required (NBD_REP_ERR_BLOCK_SIZE_REQD)",
        9 => "request too big (NBD_REP_ERR_TOO_BIG)",
        10 => "extended headers required (NBD_REP_ERR_EXT_HEADER_REQD)",
        _ => "unknown error reply",
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
pub fn dirty_bitmap_context(bitmap: &str) -> String {
    format!("qemu:dirty-bitmap:{bitmap}")
}

enum Transport {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Transport {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
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

    fn shutdown(&self) {
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
trait WireRead: Read {
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
struct Fields<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(rest: &'a [u8], what: &'static str) -> Self {
        Fields { rest, what }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], NbdError> {
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

    fn u16(&mut self) -> Result<u16, NbdError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, NbdError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, NbdError> {
        self.array().map(u64::from_be_bytes)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn finish(&self) -> Result<(), NbdError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(protocol(format!("{} has trailing bytes", self.what)))
        }
    }
}

struct OptionReply {
    kind: u32,
    payload: Vec<u8>,
}

impl OptionReply {
    fn refusal(&self, option: &'static str) -> NbdError {
        NbdError::Refused {
            option,
            reason: option_error_name(self.kind),
            message: printable(&self.payload),
        }
    }
}

/// Server text shown to people: lossy UTF-8, control characters dropped.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_STRING)])
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

fn string_field(value: &str, what: &str) -> Result<Vec<u8>, NbdError> {
    if value.len() > MAX_STRING {
        return Err(NbdError::InvalidRequest(format!(
            "{what} is longer than {MAX_STRING} bytes"
        )));
    }
    let mut field = (value.len() as u32).to_be_bytes().to_vec();
    field.extend_from_slice(value.as_bytes());
    Ok(field)
}

/// What NBD_OPT_GO told us about the export.
struct ExportInfo {
    size: u64,
    flags: u16,
    min_block: u32,
    max_request: u32,
}

struct MetaContext {
    name: String,
    id: u32,
}

/// The fixed-newstyle handshake, one option at a time.
struct Handshake {
    stream: Transport,
}

impl Handshake {
    fn greet(&mut self) -> Result<(), NbdError> {
        let [magic, style] = [self.read_u64()?, self.read_u64()?];
        if magic != NBD_MAGIC {
            return Err(protocol("not an NBD server (bad greeting magic)"));
        }
        match style {
            IHAVEOPT => {}
            OLDSTYLE_MAGIC => return Err(NbdError::Unsupported("newstyle negotiation")),
            _ => return Err(protocol("bad newstyle magic in greeting")),
        }
        let server_flags = u16::from_be_bytes(self.stream.array()?);
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Unsupported("fixed newstyle negotiation"));
        }
        // Echo NO_ZEROES only if offered: the spec forbids unoffered flags.
        let client_flags = u32::from(server_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        self.write(&client_flags.to_be_bytes())
    }

    fn read_u64(&mut self) -> Result<u64, NbdError> {
        self.stream.array().map(u64::from_be_bytes)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), NbdError> {
        self.stream.write_all(bytes).map_err(io_error)
    }

    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<(), NbdError> {
        let mut message = Vec::with_capacity(16 + data.len());
        message.extend_from_slice(&IHAVEOPT.to_be_bytes());
        message.extend_from_slice(&option.to_be_bytes());
        message.extend_from_slice(&(data.len() as u32).to_be_bytes());
        message.extend_from_slice(data);
        self.write(&message)
    }

    fn read_option_reply(&mut self, option: u32) -> Result<OptionReply, NbdError> {
        let header: [u8; 20] = self.stream.array()?;
        let mut fields = Fields::new(&header, "option reply header");
        let (magic, echoed, kind, length) =
            (fields.u64()?, fields.u32()?, fields.u32()?, fields.u32()?);
        if magic != OPTION_REPLY_MAGIC {
            return Err(protocol("bad option reply magic"));
        }
        if echoed != option {
            return Err(protocol(format!(
                "reply to option {echoed} while waiting for option {option}"
            )));
        }
        if length > MAX_OPTION_PAYLOAD {
            return Err(protocol(format!("option reply of {length} bytes")));
        }
        let payload = self.stream.payload(length)?;
        Ok(OptionReply { kind, payload })
    }

    /// Returns whether the server will send structured replies.
    fn structured_replies(&mut self) -> Result<bool, NbdError> {
        self.send_option(OPT_STRUCTURED_REPLY, &[])?;
        let reply = self.read_option_reply(OPT_STRUCTURED_REPLY)?;
        match reply.kind {
            REP_ACK if reply.payload.is_empty() => Ok(true),
            REP_ERR_UNSUP => Ok(false),
            kind if kind & REP_ERR_BIT != 0 => Err(reply.refusal("NBD_OPT_STRUCTURED_REPLY")),
            kind => Err(protocol(format!(
                "reply type {kind} to NBD_OPT_STRUCTURED_REPLY"
            ))),
        }
    }

    fn set_meta_contexts(
        &mut self,
        export: &str,
        queries: &[&str],
    ) -> Result<Vec<MetaContext>, NbdError> {
        let mut data = string_field(export, "export name")?;
        data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for query in queries {
            data.extend(string_field(query, "meta context name")?);
        }
        self.send_option(OPT_SET_META_CONTEXT, &data)?;
        let mut granted = Vec::new();
        for _ in 0..MAX_OPTION_REPLIES {
            let reply = self.read_option_reply(OPT_SET_META_CONTEXT)?;
            match reply.kind {
                REP_ACK => return Ok(granted),
                REP_META_CONTEXT => granted.push(parse_meta_context(&reply.payload)?),
                kind if kind & REP_ERR_BIT != 0 => {
                    return Err(reply.refusal("NBD_OPT_SET_META_CONTEXT"))
                }
                kind => {
                    return Err(protocol(format!(
                        "reply type {kind} to NBD_OPT_SET_META_CONTEXT"
                    )))
                }
            }
        }
        Err(protocol("endless NBD_OPT_SET_META_CONTEXT replies"))
    }

    fn go(&mut self, export: &str) -> Result<ExportInfo, NbdError> {
        let mut data = string_field(export, "export name")?;
        // Asking for NBD_INFO_BLOCK_SIZE promises to honour it, which we do.
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.send_option(OPT_GO, &data)?;
        let mut export_info = None;
        let mut block_size = None;
        for _ in 0..MAX_OPTION_REPLIES {
            let reply = self.read_option_reply(OPT_GO)?;
            match reply.kind {
                REP_INFO => {
                    let mut fields = Fields::new(&reply.payload, "NBD_REP_INFO");
                    match fields.u16()? {
                        INFO_EXPORT => {
                            export_info = Some((fields.u64()?, fields.u16()?));
                            fields.finish()?;
                        }
                        INFO_BLOCK_SIZE => {
                            block_size = Some([fields.u32()?, fields.u32()?, fields.u32()?]);
                            fields.finish()?;
                        }
                        _ => {} // name, description: not needed
                    }
                }
                REP_ACK => {
                    let (size, flags) = export_info
                        .ok_or_else(|| protocol("NBD_OPT_GO acknowledged without export size"))?;
                    return export_limits(size, flags, block_size);
                }
                REP_ERR_UNSUP => return Err(NbdError::Unsupported("NBD_OPT_GO")),
                kind if kind & REP_ERR_BIT != 0 => return Err(reply.refusal("NBD_OPT_GO")),
                kind => return Err(protocol(format!("reply type {kind} to NBD_OPT_GO"))),
            }
        }
        Err(protocol("endless NBD_OPT_GO replies"))
    }
}

fn parse_meta_context(payload: &[u8]) -> Result<MetaContext, NbdError> {
    let mut fields = Fields::new(payload, "NBD_REP_META_CONTEXT");
    let id = fields.u32()?;
    let name = fields.rest();
    if name.len() > MAX_STRING {
        return Err(protocol("meta context name longer than 4096 bytes"));
    }
    let name = std::str::from_utf8(name)
        .map_err(|_| protocol("meta context name is not UTF-8"))?
        .to_string();
    Ok(MetaContext { name, id })
}

/// Validates the export's size, flags and block sizes; [min, preferred, max].
fn export_limits(
    size: u64,
    flags: u16,
    block_size: Option<[u32; 3]>,
) -> Result<ExportInfo, NbdError> {
    if flags & TRANSMISSION_HAS_FLAGS == 0 {
        return Err(protocol("transmission flags lack NBD_FLAG_HAS_FLAGS"));
    }
    let (min_block, max_block) = match block_size {
        None => (1, DEFAULT_MAX_REQUEST),
        Some([min, _preferred, max]) => {
            if !min.is_power_of_two() || min > 64 << 10 || max < min {
                return Err(protocol(format!(
                    "nonsensical block sizes: minimum {min}, maximum {max}"
                )));
            }
            (min, max)
        }
    };
    // min is a power of two, so masking keeps requests aligned to it.
    let max_request = max_block.min(DEFAULT_MAX_REQUEST) & !(min_block - 1);
    Ok(ExportInfo {
        size,
        flags,
        min_block,
        max_request,
    })
}

/// The part of one read request that chunks have filled, so an overlapping
/// chunk is rejected and a missing one noticed. Adjacent ranges merge.
#[derive(Default)]
struct Coverage {
    ranges: BTreeMap<u64, u64>,
    total: u64,
}

impl Coverage {
    fn insert(&mut self, start: u64, end: u64) -> Result<(), NbdError> {
        let overlap = || protocol(format!("overlapping reply chunks at offset {start}"));
        let (mut merged_start, mut merged_end) = (start, end);
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e > start {
                return Err(overlap());
            }
            if e == start {
                self.ranges.remove(&s);
                merged_start = s;
            }
        }
        if let Some((&s, &e)) = self.ranges.range(start..).next() {
            if s < end {
                return Err(overlap());
            }
            if s == end {
                self.ranges.remove(&s);
                merged_end = e;
            }
        }
        self.ranges.insert(merged_start, merged_end);
        self.total += end - start;
        Ok(())
    }
}

struct ChunkHeader {
    flags: u16,
    kind: u16,
    length: u32,
}

impl ChunkHeader {
    fn is_done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }
}

enum ReplyHeader {
    Simple { errno: u32 },
    Chunk(ChunkHeader),
}

/// A request's offset and length, to check the server's chunks against.
#[derive(Clone, Copy)]
struct Span {
    offset: u64,
    length: u64,
}

impl Span {
    /// Position of `[offset, offset + length)` inside the span, if it fits.
    fn locate(&self, offset: u64, length: u64) -> Result<(usize, usize), NbdError> {
        let start = offset.checked_sub(self.offset);
        let end = start.and_then(|s| s.checked_add(length));
        match (start, end) {
            (Some(start), Some(end)) if end <= self.length => Ok((start as usize, end as usize)),
            _ => Err(protocol(format!(
                "chunk [{offset}, +{length}) lies outside the request [{}, +{}]",
                self.offset, self.length
            ))),
        }
    }
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

    fn handshake(
        stream: Transport,
        export: &str,
        meta_contexts: &[&str],
        io_timeout: Duration,
    ) -> Result<NbdClient, NbdError> {
        stream.set_timeout(io_timeout).map_err(NbdError::Io)?;
        let mut handshake = Handshake { stream };
        handshake.greet()?;
        match Self::negotiate(&mut handshake, export, meta_contexts) {
            Ok((structured, contexts, export)) => Ok(NbdClient {
                stream: handshake.stream,
                export,
                structured,
                contexts,
                next_cookie: 1,
                broken: false,
            }),
            Err(error) => {
                // The server is still in step after a refusal: say goodbye
                // properly rather than leave it an EOF to log.
                if !error.desynchronises() {
                    let _ = handshake.send_option(OPT_ABORT, &[]);
                }
                Err(error)
            }
        }
    }

    fn negotiate(
        handshake: &mut Handshake,
        export: &str,
        meta_contexts: &[&str],
    ) -> Result<(bool, Vec<MetaContext>, ExportInfo), NbdError> {
        let structured = handshake.structured_replies()?;
        let contexts = match (meta_contexts.is_empty(), structured) {
            (true, _) => Vec::new(),
            (false, true) => handshake.set_meta_contexts(export, meta_contexts)?,
            (false, false) => {
                return Err(NbdError::Unsupported(
                    "structured replies, needed for meta contexts",
                ))
            }
        };
        Ok((structured, contexts, handshake.go(export)?))
    }

    /// Replaces the per-syscall read and write timeout.
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
    pub fn min_block_size(&self) -> u32 {
        self.export.min_block
    }

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

    fn send_request(&mut self, command: u16, span: Span) -> Result<u64, NbdError> {
        self.send_request_with(command, span, &[])
    }

    /// Sends one request header followed by `payload` (NBD_CMD_WRITE's data,
    /// `span.length` bytes; empty for every other command).
    fn send_request_with(
        &mut self,
        command: u16,
        span: Span,
        payload: &[u8],
    ) -> Result<u64, NbdError> {
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let length = u32::try_from(span.length)
            .map_err(|_| NbdError::InvalidRequest("request over 4 GiB".into()))?;
        let mut request = [0u8; 28];
        request[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        // bytes 4..6: command flags, none needed
        request[6..8].copy_from_slice(&command.to_be_bytes());
        request[8..16].copy_from_slice(&cookie.to_be_bytes());
        request[16..24].copy_from_slice(&span.offset.to_be_bytes());
        request[24..28].copy_from_slice(&length.to_be_bytes());
        self.stream.write_all(&request).map_err(io_error)?;
        // A failure part-way leaves the server waiting for the rest: it is an
        // I/O error, so the connection is poisoned.
        self.stream.write_all(payload).map_err(io_error)?;
        Ok(cookie)
    }

    fn read_reply_header(&mut self, cookie: u64) -> Result<ReplyHeader, NbdError> {
        let magic = u32::from_be_bytes(self.stream.array()?);
        let header = match magic {
            SIMPLE_REPLY_MAGIC => {
                let rest: [u8; 12] = self.stream.array()?;
                let mut fields = Fields::new(&rest, "simple reply");
                let errno = fields.u32()?;
                (ReplyHeader::Simple { errno }, fields.u64()?)
            }
            STRUCTURED_REPLY_MAGIC if self.structured => {
                let rest: [u8; 16] = self.stream.array()?;
                let mut fields = Fields::new(&rest, "structured reply");
                let (flags, kind) = (fields.u16()?, fields.u16()?);
                let got = fields.u64()?;
                let length = fields.u32()?;
                (
                    ReplyHeader::Chunk(ChunkHeader {
                        flags,
                        kind,
                        length,
                    }),
                    got,
                )
            }
            STRUCTURED_REPLY_MAGIC => {
                return Err(protocol("structured reply that was not negotiated"))
            }
            _ => return Err(protocol(format!("bad reply magic {magic:#010x}"))),
        };
        if header.1 != cookie {
            return Err(protocol(format!(
                "reply for request {} while waiting for {cookie}",
                header.1
            )));
        }
        Ok(header.0)
    }

    /// One NBD_CMD_READ of at most `max_request` bytes.
    fn read_request(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let span = Span {
            offset,
            length: buf.len() as u64,
        };
        let cookie = self.send_request(CMD_READ, span)?;
        let mut coverage = Coverage::default();
        let mut failure = None;
        for _ in 0..MAX_CHUNKS_PER_REPLY {
            let chunk = match self.read_reply_header(cookie)? {
                ReplyHeader::Simple { .. } if coverage.total > 0 || failure.is_some() => {
                    return Err(protocol("simple reply inside a structured reply"))
                }
                ReplyHeader::Simple { errno: 0 } => return self.stream.fill(buf),
                // A simple error reply carries no data, so the stream stays in step.
                ReplyHeader::Simple { errno } => return Err(server_error("read", errno, "")),
                ReplyHeader::Chunk(chunk) => chunk,
            };
            match chunk.kind {
                REPLY_OFFSET_DATA => self.read_data_chunk(&chunk, span, buf, &mut coverage)?,
                REPLY_OFFSET_HOLE => self.read_hole_chunk(&chunk, span, buf, &mut coverage)?,
                REPLY_NONE => expect_final_none(&chunk)?,
                kind if kind & REPLY_ERROR_BIT != 0 => {
                    let error = self.read_error_chunk(&chunk, "read", span)?;
                    failure.get_or_insert(error);
                }
                kind => return Err(protocol(format!("chunk type {kind} in a read reply"))),
            }
            if chunk.is_done() {
                return match failure {
                    Some(error) => Err(error),
                    None if coverage.total == span.length => Ok(()),
                    None => Err(protocol(format!(
                        "read reply covered {} of {} bytes",
                        coverage.total, span.length
                    ))),
                };
            }
        }
        Err(protocol("read reply with too many chunks"))
    }

    fn read_data_chunk(
        &mut self,
        chunk: &ChunkHeader,
        span: Span,
        buf: &mut [u8],
        coverage: &mut Coverage,
    ) -> Result<(), NbdError> {
        let data_length = chunk
            .length
            .checked_sub(8)
            .filter(|&n| n > 0)
            .ok_or_else(|| protocol("NBD_REPLY_TYPE_OFFSET_DATA without data"))?;
        // Reject an oversized chunk before waiting for bytes it may never send.
        if u64::from(data_length) > span.length {
            return Err(protocol(format!("{data_length}-byte data chunk")));
        }
        let offset = u64::from_be_bytes(self.stream.array()?);
        let (start, end) = span.locate(offset, u64::from(data_length))?;
        coverage.insert(offset, offset + u64::from(data_length))?;
        self.stream.fill(&mut buf[start..end])
    }

    fn read_hole_chunk(
        &mut self,
        chunk: &ChunkHeader,
        span: Span,
        buf: &mut [u8],
        coverage: &mut Coverage,
    ) -> Result<(), NbdError> {
        if chunk.length != 12 {
            return Err(protocol("NBD_REPLY_TYPE_OFFSET_HOLE of the wrong size"));
        }
        let body: [u8; 12] = self.stream.array()?;
        let mut fields = Fields::new(&body, "NBD_REPLY_TYPE_OFFSET_HOLE");
        let (offset, length) = (fields.u64()?, u64::from(fields.u32()?));
        if length == 0 {
            return Err(protocol("empty NBD_REPLY_TYPE_OFFSET_HOLE"));
        }
        let (start, end) = span.locate(offset, length)?;
        coverage.insert(offset, offset + length)?;
        buf[start..end].fill(0);
        Ok(())
    }

    /// Parses an error chunk into the error to report once the reply is done.
    fn read_error_chunk(
        &mut self,
        chunk: &ChunkHeader,
        command: &'static str,
        span: Span,
    ) -> Result<NbdError, NbdError> {
        if chunk.length > MAX_ERROR_PAYLOAD {
            return Err(protocol(format!("error chunk of {} bytes", chunk.length)));
        }
        let payload = self.stream.payload(chunk.length)?;
        let mut fields = Fields::new(&payload, "error chunk");
        let errno = fields.u32()?;
        let message_length = fields.u16()?;
        let message = printable(fields.bytes(usize::from(message_length))?);
        if errno == 0 {
            return Err(protocol("error chunk with error number 0"));
        }
        let message = if chunk.kind == REPLY_ERROR_OFFSET {
            let offset = fields.u64()?;
            span.locate(offset, 0)?;
            format!("at offset {offset}{}", detail(&message))
        } else {
            message
        };
        Ok(server_error(command, errno, &message))
    }

    /// One NBD_CMD_WRITE of at most `max_request` bytes.
    fn write_request(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        let span = Span {
            offset,
            length: data.len() as u64,
        };
        let cookie = self.send_request_with(CMD_WRITE, span, data)?;
        self.empty_reply(cookie, "write", span)
    }

    /// The reply to a command that returns no data: a simple reply, or
    /// structured error chunks ended by a final chunk (often NBD_REPLY_TYPE_NONE).
    fn empty_reply(
        &mut self,
        cookie: u64,
        command: &'static str,
        span: Span,
    ) -> Result<(), NbdError> {
        let mut failure = None;
        for _ in 0..MAX_ERROR_CHUNKS {
            let chunk = match self.read_reply_header(cookie)? {
                // Only a non-final error chunk can have come before.
                ReplyHeader::Simple { .. } if failure.is_some() => {
                    return Err(protocol("simple reply inside a structured reply"))
                }
                // qemu answers a successful write, write zeroes or flush
                // this way even with structured replies negotiated.
                ReplyHeader::Simple { errno: 0 } => return Ok(()),
                ReplyHeader::Simple { errno } => return Err(server_error(command, errno, "")),
                ReplyHeader::Chunk(chunk) => chunk,
            };
            match chunk.kind {
                REPLY_NONE => expect_final_none(&chunk)?,
                kind if kind & REPLY_ERROR_BIT != 0 => {
                    let error = self.read_error_chunk(&chunk, command, span)?;
                    failure.get_or_insert(error);
                }
                kind => return Err(protocol(format!("chunk type {kind} in a {command} reply"))),
            }
            if chunk.is_done() {
                return failure.map_or(Ok(()), Err);
            }
        }
        Err(protocol(format!("{command} reply with too many chunks")))
    }

    /// One NBD_CMD_BLOCK_STATUS: the extents the server chose to report for
    /// context `id`, clipped to the request and at least one byte long.
    fn block_status_request(&mut self, id: u32, span: Span) -> Result<Vec<Extent>, NbdError> {
        let cookie = self.send_request(CMD_BLOCK_STATUS, span)?;
        let mut extents = None;
        let mut failure = None;
        for _ in 0..MAX_STATUS_CHUNKS {
            let chunk = match self.read_reply_header(cookie)? {
                ReplyHeader::Simple { errno: 0 } => {
                    return Err(protocol("block status answered without a structured reply"))
                }
                ReplyHeader::Simple { errno } => {
                    return Err(server_error("block status", errno, ""))
                }
                ReplyHeader::Chunk(chunk) => chunk,
            };
            match chunk.kind {
                REPLY_BLOCK_STATUS => {
                    if let Some(found) = self.read_status_chunk(&chunk, id, span)? {
                        if extents.replace(found).is_some() {
                            return Err(protocol("two block status chunks for one context"));
                        }
                    }
                }
                REPLY_NONE => expect_final_none(&chunk)?,
                kind if kind & REPLY_ERROR_BIT != 0 => {
                    let error = self.read_error_chunk(&chunk, "block status", span)?;
                    failure.get_or_insert(error);
                }
                kind => return Err(protocol(format!("chunk type {kind} in a status reply"))),
            }
            if chunk.is_done() {
                return match (failure, extents) {
                    (Some(error), _) => Err(error),
                    (None, Some(extents)) => Ok(extents),
                    (None, None) => Err(protocol("block status reply lacks the asked context")),
                };
            }
        }
        Err(protocol("block status reply with too many chunks"))
    }

    /// Reads one NBD_REPLY_TYPE_BLOCK_STATUS chunk; `None` if it is for
    /// another of the negotiated contexts.
    fn read_status_chunk(
        &mut self,
        chunk: &ChunkHeader,
        id: u32,
        span: Span,
    ) -> Result<Option<Vec<Extent>>, NbdError> {
        if chunk.length < 12 || chunk.length > MAX_STATUS_PAYLOAD || (chunk.length - 4) & 7 != 0 {
            return Err(protocol(format!(
                "block status chunk of {} bytes",
                chunk.length
            )));
        }
        let context = u32::from_be_bytes(self.stream.array()?);
        let descriptors = chunk.length - 4;
        if context != id {
            if !self.contexts.iter().any(|c| c.id == context) {
                return Err(protocol(format!(
                    "block status for unknown context {context}"
                )));
            }
            self.stream.skip(u64::from(descriptors))?;
            return Ok(None);
        }
        let payload = self.stream.payload(descriptors)?;
        parse_extents(&payload, span).map(Some)
    }

    fn disconnect(&mut self) {
        let span = Span {
            offset: 0,
            length: 0,
        };
        let _ = self.send_request(CMD_DISC, span);
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

fn server_error(command: &'static str, errno: u32, message: &str) -> NbdError {
    NbdError::Server {
        command,
        errno,
        message: message.to_string(),
    }
}

fn expect_final_none(chunk: &ChunkHeader) -> Result<(), NbdError> {
    if chunk.length != 0 || !chunk.is_done() {
        return Err(protocol(
            "NBD_REPLY_TYPE_NONE that is not an empty final chunk",
        ));
    }
    Ok(())
}

/// Turns (length, flags) descriptors into extents from `span.offset` on. The
/// last may run past the request (the spec allows it) and is clipped.
fn parse_extents(payload: &[u8], span: Span) -> Result<Vec<Extent>, NbdError> {
    let end = span.offset + span.length;
    let mut fields = Fields::new(payload, "block status descriptors");
    let mut extents = Vec::with_capacity(payload.len() / 8);
    let mut position = span.offset;
    while !fields.rest.is_empty() {
        let (length, flags) = (u64::from(fields.u32()?), fields.u32()?);
        if length == 0 {
            return Err(protocol("zero-length block status extent"));
        }
        if position >= end {
            return Err(protocol("block status extents past the end of the request"));
        }
        let length = length.min(end - position);
        extents.push(Extent {
            offset: position,
            length,
            flags,
        });
        position += length;
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// Runs a qemu tool and returns its output (stdout, then stderr); a missing tool
    /// fails the test (CI installs qemu-utils).
    fn run(tool: &str, args: &[&str]) -> String {
        let output = Command::new(tool).args(args).output().unwrap_or_else(|e| {
            panic!("cannot run {tool} ({e}): install qemu-utils, the NBD tests need a real qemu")
        });
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{tool} {args:?} failed: {text}");
        text
    }

    /// A 64 MiB qcow2 with the given qemu-io writes.
    fn image(scratch: &Scratch, writes: &[&str]) -> PathBuf {
        let image = scratch.path("disk.qcow2");
        let path = image.to_str().expect("utf-8 temp path");
        run("qemu-img", &["create", "-q", "-f", "qcow2", path, "64M"]);
        for write in writes {
            run("qemu-io", &["-f", "qcow2", "-c", write, path]);
        }
        image
    }

    /// qemu-nbd serving one image on a Unix socket, killed on drop.
    struct QemuNbd {
        child: Child,
        socket: PathBuf,
    }

    impl QemuNbd {
        /// Serves `image` read-only to any number of clients.
        fn start(scratch: &Scratch, image: &Path, extra: &[&str]) -> QemuNbd {
            let mut args = vec!["--read-only", "--shared=4", "--persistent"];
            args.extend_from_slice(extra);
            Self::spawn(scratch, image, &args)
        }

        /// Serves `image` writable, as a restore does, to one client; qemu-nbd
        /// closes the image and exits when that client disconnects.
        fn start_writable(scratch: &Scratch, image: &Path) -> QemuNbd {
            Self::spawn(scratch, image, &[])
        }

        fn spawn(scratch: &Scratch, image: &Path, args: &[&str]) -> QemuNbd {
            let socket = scratch.path("nbd.sock");
            let _ = std::fs::remove_file(&socket);
            let child = Command::new("qemu-nbd")
                .arg(format!("--socket={}", socket.display()))
                .args(["--format=qcow2", "--export-name=disk"])
                .args(args)
                .arg(image)
                .stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run qemu-nbd ({e}): install qemu-utils, the NBD tests need it")
                });
            let mut server = QemuNbd { child, socket };
            // Poll for the socket file rather than connecting: a probe
            // connection makes qemu-nbd log a broken pipe.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !server.socket.exists() {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("qemu-nbd exited early: {status}");
                }
                assert!(Instant::now() < deadline, "qemu-nbd did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }

        fn connect(&self, contexts: &[&str]) -> NbdClient {
            NbdClient::connect_unix(&self.socket, "disk", contexts).expect("connect to qemu-nbd")
        }

        /// Waits for a non-persistent qemu-nbd to exit after its client left.
        fn wait_for_exit(mut self) {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match self.child.try_wait().expect("poll qemu-nbd") {
                    Some(status) => {
                        assert!(status.success(), "qemu-nbd exited with {status}");
                        return;
                    }
                    None => assert!(Instant::now() < deadline, "qemu-nbd did not exit"),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for QemuNbd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
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

    #[test]
    fn nbd_reads_back_what_qemu_io_wrote() {
        let scratch = Scratch::new();
        let image = image(&scratch, &["write -P 0xab 0 1M", "write -P 0xcd 4M 512k"]);
        let server = QemuNbd::start(&scratch, &image, &[]);
        let mut client = server.connect(&[]);
        assert_eq!(client.size(), 64 * MIB);
        assert!(client.is_read_only());
        assert!(client.has_structured_replies());
        assert_eq!(client.min_block_size(), 1);

        let chunk = read(&mut client, 0, 4 * MIB);
        assert_all(&chunk[..MIB as usize], 0xab, "pattern at 0");
        assert_all(&chunk[MIB as usize..], 0, "hole after it");
        assert_all(&read(&mut client, 4 * MIB, MIB / 2), 0xcd, "pattern at 4M");
        let edge = read(&mut client, MIB - 100, 200);
        assert_all(&edge[..100], 0xab, "end of pattern");
        assert_all(&edge[100..], 0, "start of hole");

        // Larger than qemu's 32 MiB maximum: split into several requests.
        let whole = read(&mut client, 0, 64 * MIB);
        assert_all(&whole[..MIB as usize], 0xab, "whole disk, first pattern");
        assert_all(
            &whole[4 * MIB as usize..9 * MIB as usize / 2],
            0xcd,
            "second",
        );
        assert_eq!(
            whole.iter().filter(|&&b| b != 0).count() as u64,
            MIB * 3 / 2
        );
    }

    #[test]
    fn nbd_rejects_requests_outside_the_export_without_breaking() {
        let scratch = Scratch::new();
        let image = image(&scratch, &[]);
        let server = QemuNbd::start(&scratch, &image, &[]);
        let mut client = server.connect(&[BASE_ALLOCATION]);
        let mut buf = [0u8; 512];
        for offset in [64 * MIB - 256, u64::MAX - 10] {
            let error = client.read_at(offset, &mut buf).unwrap_err();
            assert!(matches!(error, NbdError::InvalidRequest(_)), "{error}");
        }
        let error = client
            .block_status(BASE_ALLOCATION, 0, 65 * MIB)
            .unwrap_err();
        assert!(matches!(error, NbdError::InvalidRequest(_)), "{error}");
        client.read_at(0, &mut buf).expect("still usable");
    }

    #[test]
    fn nbd_base_allocation_reports_data_and_holes() {
        let scratch = Scratch::new();
        let image = image(&scratch, &["write -P 0xab 0 1M", "write -P 0xcd 4M 512k"]);
        let server = QemuNbd::start(&scratch, &image, &[]);
        let mut client = server.connect(&[BASE_ALLOCATION]);
        assert!(client.has_context(BASE_ALLOCATION));
        let hole = STATE_HOLE | STATE_ZERO;
        assert_eq!(
            client.block_status(BASE_ALLOCATION, 0, 64 * MIB).unwrap(),
            [
                extent(0, MIB, 0),
                extent(MIB, 3 * MIB, hole),
                extent(4 * MIB, MIB / 2, 0),
                extent(4 * MIB + MIB / 2, 60 * MIB - MIB / 2, hole),
            ]
        );
        // A range inside one extent comes back clipped to the range.
        assert_eq!(
            client.block_status(BASE_ALLOCATION, MIB / 2, 4096).unwrap(),
            [extent(MIB / 2, 4096, 0)]
        );
    }

    #[test]
    fn nbd_dirty_bitmap_lists_exactly_the_writes_since_it_started() {
        let scratch = Scratch::new();
        let image = image(&scratch, &["write -P 0xab 0 1M"]);
        let path = image.to_str().unwrap();
        run("qemu-img", &["bitmap", "--add", "--enable", path, "bm0"]);
        for write in ["write -P 0x11 8M 64k", "write -P 0x22 20M 1M"] {
            run("qemu-io", &["-f", "qcow2", "-c", write, path]);
        }
        let server = QemuNbd::start(&scratch, &image, &["-B", "bm0"]);
        let bitmap = dirty_bitmap_context("bm0");
        let mut client = server.connect(&[BASE_ALLOCATION, &bitmap]);
        let extents = client.block_status(&bitmap, 0, client.size()).unwrap();
        let dirty: Vec<_> = extents
            .iter()
            .filter(|e| e.flags & STATE_DIRTY != 0)
            .copied()
            .collect();
        assert_eq!(
            dirty,
            [extent(8 * MIB, 64 << 10, 1), extent(20 * MIB, MIB, 1)]
        );
        assert_eq!(extents.first().map(|e| e.offset), Some(0));
        assert_eq!(extents.last().map(Extent::end), Some(64 * MIB));
        // Both contexts were negotiated: asking one skips the other's chunk.
        let allocation = client.block_status(BASE_ALLOCATION, 0, 2 * MIB).unwrap();
        assert_eq!(allocation[0], extent(0, MIB, 0));
        assert_all(&read(&mut client, 20 * MIB, MIB), 0x22, "dirty data");
    }

    #[test]
    fn nbd_reports_unknown_exports_and_contexts_clearly() {
        let scratch = Scratch::new();
        let image = image(&scratch, &[]);
        let server = QemuNbd::start(&scratch, &image, &[]);
        let error = NbdClient::connect_unix(&server.socket, "nope", &[])
            .err()
            .expect("unknown export must fail");
        assert!(
            matches!(
                &error,
                NbdError::Refused {
                    option: "NBD_OPT_GO",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("no such export"), "{error}");

        let missing = dirty_bitmap_context("backup-vda");
        let mut client = server.connect(&[&missing]);
        assert!(!client.has_context(&missing));
        let error = client.block_status(&missing, 0, MIB).unwrap_err();
        assert!(matches!(error, NbdError::UnknownContext(_)), "{error}");
        client
            .read_at(0, &mut [0u8; 512])
            .expect("reads still work");
    }

    /// Checks with qemu-io, on the image no server holds any more, that
    /// `[offset, offset + length)` is all `pattern`.
    fn assert_image_pattern(image: &Path, pattern: u8, offset: u64, length: u64) {
        let command = format!("read -P {pattern:#04x} {offset} {length}");
        let path = image.to_str().expect("utf-8 temp path");
        let output = run("qemu-io", &["-r", "-f", "qcow2", "-c", &command, path]);
        assert!(
            output.contains(&format!("read {length}/{length} bytes at offset {offset}")),
            "{command}: {output}"
        );
        assert!(
            !output.contains("Pattern verification failed"),
            "{command}: {output}"
        );
    }

    fn assert_same(got: &[u8], expected: &[u8], what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}: length");
        if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
            panic!(
                "{what}: byte {i} is {:#04x}, not {:#04x}",
                got[i], expected[i]
            );
        }
    }

    #[test]
    fn nbd_writes_reach_the_image() {
        let scratch = Scratch::new();
        let image = image(&scratch, &[]);
        let server = QemuNbd::start_writable(&scratch, &image);
        let mut client = server.connect(&[]);
        assert!(!client.is_read_only());
        assert_eq!(
            client.export.max_request,
            32 << 20,
            "qemu's maximum block size"
        );
        let writes: [(u64, u64, u8); 4] = [
            (0, MIB, 0xab),
            (5 * MIB + 512, 100_000, 0xcd), // not cluster-aligned
            (20 * MIB, 40 * MIB, 0xef),     // over the maximum block size
            (64 * MIB - 4096, 4096, 0x11),  // the export's last bytes
        ];
        let mut expected = vec![0u8; 64 * MIB as usize];
        for (offset, length, pattern) in writes {
            let cookie = client.next_cookie;
            client
                .write_at(offset, &vec![pattern; length as usize])
                .expect("write");
            assert_eq!(
                client.next_cookie - cookie,
                length.div_ceil(32 * MIB),
                "requests for {length} bytes"
            );
            expected[offset as usize..(offset + length) as usize].fill(pattern);
        }
        client.flush().expect("flush");
        drop(client);
        server.wait_for_exit();

        for (offset, length, pattern) in writes {
            assert_image_pattern(&image, pattern, offset, length);
        }
        let gaps = [
            (MIB, 4 * MIB + 512),
            (5 * MIB + 100_512, 15 * MIB - 100_512),
            (60 * MIB, 4 * MIB - 4096),
        ];
        for (offset, length) in gaps {
            assert_image_pattern(&image, 0, offset, length);
        }

        let server = QemuNbd::start(&scratch, &image, &[]);
        let mut client = server.connect(&[]);
        assert_same(&read(&mut client, 0, 64 * MIB), &expected, "read back");
    }

    #[test]
    fn nbd_write_zeroes_clears_written_data() {
        let scratch = Scratch::new();
        let image = image(&scratch, &[]);
        let server = QemuNbd::start_writable(&scratch, &image);
        let mut client = server.connect(&[BASE_ALLOCATION]);
        assert_ne!(client.export.flags & TRANSMISSION_SEND_WRITE_ZEROES, 0);
        client
            .write_at(0, &vec![0x77; 48 * MIB as usize])
            .expect("write");
        let mut expected = vec![0x77; 48 * MIB as usize];
        expected.resize(64 * MIB as usize, 0);

        // One NBD_CMD_WRITE_ZEROES, larger than the maximum block size.
        let (offset, length) = (MIB + 4096, 40 * MIB);
        let cookie = client.next_cookie;
        client.write_zeroes(offset, length).expect("write zeroes");
        assert_eq!(client.next_cookie - cookie, 1, "one request");
        expected[offset as usize..(offset + length) as usize].fill(0);
        // Holes were allowed, so qemu deallocated the clusters it could.
        let status = client
            .block_status(BASE_ALLOCATION, 2 * MIB, 38 * MIB)
            .unwrap();
        assert_eq!(status, [extent(2 * MIB, 38 * MIB, STATE_HOLE | STATE_ZERO)]);

        // As against a server without it: zero buffers, 4 MiB at a time.
        client.export.flags &= !TRANSMISSION_SEND_WRITE_ZEROES;
        let (offset, length) = (43 * MIB, 4 * MIB + 100);
        let cookie = client.next_cookie;
        client.write_zeroes(offset, length).expect("zero buffers");
        assert_eq!(client.next_cookie - cookie, 2, "two writes");
        expected[offset as usize..(offset + length) as usize].fill(0);

        assert_same(
            &read(&mut client, 0, 64 * MIB),
            &expected,
            "same connection",
        );
        client.flush().expect("flush");
        drop(client);
        server.wait_for_exit();
        assert_image_pattern(&image, 0x77, 0, MIB + 4096);
        assert_image_pattern(&image, 0, MIB + 4096, 40 * MIB);
        assert_image_pattern(&image, 0x77, 41 * MIB + 4096, 2 * MIB - 4096);
        assert_image_pattern(&image, 0, 43 * MIB, 4 * MIB + 100);
        assert_image_pattern(&image, 0x77, 47 * MIB + 100, MIB - 100);
    }

    #[test]
    fn nbd_writes_to_a_read_only_export_are_refused_without_sending() {
        let scratch = Scratch::new();
        let image = image(&scratch, &["write -P 0xab 0 1M"]);
        let server = QemuNbd::start(&scratch, &image, &[]);
        let mut client = server.connect(&[]);
        assert!(client.is_read_only());
        let cookie = client.next_cookie;
        let error = client.write_at(0, &[1; 4096]).unwrap_err();
        assert!(matches!(error, NbdError::ReadOnly), "{error}");
        assert!(error.to_string().contains("read-only"), "{error}");
        let error = client.write_zeroes(0, MIB).unwrap_err();
        assert!(matches!(error, NbdError::ReadOnly), "{error}");
        assert_eq!(client.next_cookie, cookie, "a request was sent");
        client
            .flush()
            .expect("flushing a read-only export is harmless");

        // Had the write been sent, qemu would have failed it (EINVAL, in a
        // structured error chunk): the reply is parsed, the connection kept.
        client.export.flags &= !TRANSMISSION_READ_ONLY;
        let error = client.write_at(0, &[1; 4096]).unwrap_err();
        assert!(
            matches!(
                error,
                NbdError::Server {
                    command: "write",
                    errno: 22,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("read-only"), "{error}");
        assert_all(&read(&mut client, 0, MIB), 0xab, "data untouched");
    }

    #[test]
    fn nbd_writes_beyond_the_export_are_refused_without_sending() {
        let scratch = Scratch::new();
        let image = image(&scratch, &[]);
        let server = QemuNbd::start_writable(&scratch, &image);
        let mut client = server.connect(&[]);
        let cookie = client.next_cookie;
        for (offset, length) in [(64 * MIB - 256, 512), (64 * MIB, 1), (u64::MAX - 10, 512)] {
            let error = client.write_at(offset, &vec![1; length]).unwrap_err();
            assert!(matches!(error, NbdError::InvalidRequest(_)), "{error}");
            let error = client.write_zeroes(offset, length as u64).unwrap_err();
            assert!(matches!(error, NbdError::InvalidRequest(_)), "{error}");
        }
        assert_eq!(client.next_cookie, cookie, "a request was sent");
        client
            .write_at(64 * MIB - 512, &[2; 512])
            .expect("the last bytes");
        assert_all(&read(&mut client, 64 * MIB - 512, 512), 2, "last bytes");
    }

    // ---- hostile peers ----

    /// A peer on a Unix socket that runs `script` on the first connection.
    fn fake_unix_server(
        scratch: &Scratch,
        script: impl FnOnce(UnixStream) + Send + 'static,
    ) -> PathBuf {
        let socket = scratch.path("fake.sock");
        let listener = UnixListener::bind(&socket).expect("bind fake server");
        std::thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                script(stream);
            }
        });
        socket
    }

    fn connect_with_timeout(socket: &Path, timeout: Duration) -> Result<NbdClient, NbdError> {
        let stream = UnixStream::connect(socket).expect("connect fake server");
        NbdClient::handshake(Transport::Unix(stream), "disk", &[BASE_ALLOCATION], timeout)
    }

    /// Reads until the client hangs up, so it never sees a reset.
    fn drain(mut stream: impl Read) {
        let _ = io::copy(&mut stream, &mut io::sink());
    }

    #[test]
    fn nbd_garbage_peer_is_an_error_not_a_hang() {
        let scratch = Scratch::new();
        let socket = fake_unix_server(&scratch, |mut stream| {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            drain(stream);
        });
        let started = Instant::now();
        let error = connect_with_timeout(&socket, Duration::from_secs(5))
            .err()
            .expect("garbage must fail");
        assert!(matches!(error, NbdError::Protocol(_)), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn nbd_silent_peer_times_out() {
        let scratch = Scratch::new();
        let socket = fake_unix_server(&scratch, drain);
        let error = connect_with_timeout(&socket, Duration::from_millis(200))
            .err()
            .expect("silence must fail");
        assert!(matches!(error, NbdError::Timeout), "{error}");
    }

    #[test]
    fn nbd_peer_closing_mid_greeting_is_an_error() {
        let scratch = Scratch::new();
        let socket = fake_unix_server(&scratch, |mut stream| {
            let _ = stream.write_all(&NBD_MAGIC.to_be_bytes()[..5]);
        });
        let error = connect_with_timeout(&socket, Duration::from_secs(5))
            .err()
            .expect("a truncated greeting must fail");
        assert!(matches!(error, NbdError::Closed), "{error}");
    }

    /// Bytes the fake server sends in answer to the request with this cookie.
    type ReplyScript = fn(u64) -> Vec<u8>;

    /// How the fake server answers the handshake.
    #[derive(Clone, Copy)]
    struct FakeExport {
        structured: bool,
        size: u64,
        /// Transmission flags besides NBD_FLAG_HAS_FLAGS.
        flags: u16,
    }

    const FAKE: FakeExport = FakeExport {
        structured: true,
        size: MIB,
        flags: TRANSMISSION_READ_ONLY,
    };

    const WRITABLE: FakeExport = FakeExport {
        flags: TRANSMISSION_SEND_FLUSH | TRANSMISSION_SEND_WRITE_ZEROES,
        ..FAKE
    };

    fn option_reply(stream: &mut impl Write, option: u32, kind: u32, data: &[u8]) {
        let mut reply = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
        reply.extend_from_slice(&option.to_be_bytes());
        reply.extend_from_slice(&kind.to_be_bytes());
        reply.extend_from_slice(&(data.len() as u32).to_be_bytes());
        reply.extend_from_slice(data);
        stream.write_all(&reply).unwrap();
    }

    /// The server side of a well-behaved handshake; grants base:allocation as id 7.
    fn serve_handshake(stream: &mut (impl Read + Write), export: FakeExport) {
        let mut greeting = NBD_MAGIC.to_be_bytes().to_vec();
        greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
        greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        stream.write_all(&greeting).unwrap();
        let _client_flags: [u8; 4] = stream.array().unwrap();
        loop {
            let header: [u8; 16] = stream.array().unwrap();
            let option = u32::from_be_bytes(header[8..12].try_into().unwrap());
            let length = u32::from_be_bytes(header[12..16].try_into().unwrap());
            let _data = stream.payload(length).unwrap();
            match option {
                OPT_STRUCTURED_REPLY if export.structured => {
                    option_reply(stream, option, REP_ACK, &[])
                }
                OPT_STRUCTURED_REPLY => option_reply(stream, option, REP_ERR_UNSUP, &[]),
                OPT_SET_META_CONTEXT => {
                    let mut context = 7u32.to_be_bytes().to_vec();
                    context.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    option_reply(stream, option, REP_META_CONTEXT, &context);
                    option_reply(stream, option, REP_ACK, &[]);
                }
                OPT_GO => {
                    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                    info.extend_from_slice(&export.size.to_be_bytes());
                    let flags = TRANSMISSION_HAS_FLAGS | export.flags;
                    info.extend_from_slice(&flags.to_be_bytes());
                    option_reply(stream, option, REP_INFO, &info);
                    option_reply(stream, option, REP_ACK, &[]);
                    return;
                }
                _ => option_reply(stream, option, REP_ERR_UNSUP, &[]),
            }
        }
    }

    /// Serves the handshake, then answers each request with `reply(cookie)`.
    fn fake_tcp_server(export: FakeExport, replies: Vec<ReplyScript>) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            serve_handshake(&mut stream, export);
            for reply in replies {
                let Ok(request) = stream.array::<28>() else {
                    return;
                };
                let cookie = u64::from_be_bytes(request[8..16].try_into().unwrap());
                let command = u16::from_be_bytes(request[6..8].try_into().unwrap());
                let length = u32::from_be_bytes(request[24..28].try_into().unwrap());
                if command == CMD_WRITE && stream.skip(u64::from(length)).is_err() {
                    return;
                }
                if stream.write_all(&reply(cookie)).is_err() {
                    return;
                }
            }
            drain(stream);
        });
        address
    }

    fn chunk(cookie: u64, flags: u16, kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut bytes = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&cookie.to_be_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn data(cookie: u64, flags: u16, offset: u64, bytes: &[u8]) -> Vec<u8> {
        let mut payload = offset.to_be_bytes().to_vec();
        payload.extend_from_slice(bytes);
        chunk(cookie, flags, REPLY_OFFSET_DATA, &payload)
    }

    fn hole(cookie: u64, flags: u16, offset: u64, length: u32) -> Vec<u8> {
        let mut payload = offset.to_be_bytes().to_vec();
        payload.extend_from_slice(&length.to_be_bytes());
        chunk(cookie, flags, REPLY_OFFSET_HOLE, &payload)
    }

    fn error_chunk(cookie: u64, errno: u32, message: &str) -> Vec<u8> {
        let mut payload = errno.to_be_bytes().to_vec();
        payload.extend_from_slice(&(message.len() as u16).to_be_bytes());
        payload.extend_from_slice(message.as_bytes());
        chunk(cookie, REPLY_FLAG_DONE, REPLY_ERROR_BIT | 1, &payload)
    }

    fn status(cookie: u64, context: u32, extents: &[(u32, u32)]) -> Vec<u8> {
        let mut payload = context.to_be_bytes().to_vec();
        for (length, flags) in extents {
            payload.extend_from_slice(&length.to_be_bytes());
            payload.extend_from_slice(&flags.to_be_bytes());
        }
        chunk(cookie, REPLY_FLAG_DONE, REPLY_BLOCK_STATUS, &payload)
    }

    fn fake_client(export: FakeExport, replies: Vec<ReplyScript>) -> NbdClient {
        let address = fake_tcp_server(export, replies);
        let mut client =
            NbdClient::connect_tcp(address, "disk", &[BASE_ALLOCATION]).expect("fake handshake");
        // A bug that makes the client wait must fail the test, not stall it.
        client.set_io_timeout(Duration::from_secs(5)).unwrap();
        client
    }

    /// Each hostile read reply (to a 4 KiB read at 0) poisons the connection.
    #[test]
    fn nbd_hostile_read_replies_are_protocol_errors() {
        let cases: [(&str, ReplyScript); 9] = [
            ("wrong cookie", |c| {
                data(c + 1, REPLY_FLAG_DONE, 0, &[1; 4096])
            }),
            ("data past the request", |c| {
                data(c, REPLY_FLAG_DONE, 1, &[1; 4096])
            }),
            ("hole past the request", |c| {
                hole(c, REPLY_FLAG_DONE, 0, u32::MAX)
            }),
            ("offset overflow", |c| hole(c, REPLY_FLAG_DONE, u64::MAX, 2)),
            ("huge chunk length", |c| {
                let mut bytes = chunk(c, REPLY_FLAG_DONE, REPLY_OFFSET_DATA, &[]);
                bytes[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
                bytes
            }),
            ("overlapping chunks", |c| {
                let mut bytes = data(c, 0, 0, &[1; 2048]);
                bytes.extend(hole(c, REPLY_FLAG_DONE, 1024, 3072));
                bytes
            }),
            ("missing coverage", |c| {
                data(c, REPLY_FLAG_DONE, 0, &[1; 2048])
            }),
            ("bad magic", |_| vec![0xff; 64]),
            ("status chunk in a read", |c| status(c, 7, &[(4096, 0)])),
        ];
        for (name, reply) in cases {
            let mut client = fake_client(FAKE, vec![reply]);
            let error = client.read_at(0, &mut [0u8; 4096]).unwrap_err();
            assert!(matches!(error, NbdError::Protocol(_)), "{name}: {error}");
            let again = client.read_at(0, &mut [0u8; 4096]).unwrap_err();
            assert!(matches!(again, NbdError::Broken), "{name}: {again}");
        }
    }

    #[test]
    fn nbd_truncated_reply_is_an_error() {
        let mut client = fake_client(
            FAKE,
            vec![|c| data(c, REPLY_FLAG_DONE, 0, &[1; 4096])[..2000].to_vec()],
        );
        // The fake server then waits for more requests: the client must not
        // wait forever for the rest of the chunk.
        client.set_io_timeout(Duration::from_millis(300)).unwrap();
        let error = client.read_at(0, &mut [0u8; 4096]).unwrap_err();
        assert!(matches!(error, NbdError::Timeout), "{error}");
    }

    #[test]
    fn nbd_chunks_in_any_order_assemble_the_read() {
        let mut client = fake_client(
            FAKE,
            vec![|c| {
                let mut bytes = data(c, 0, 3072, &[3; 1024]);
                bytes.extend(hole(c, 0, 1024, 2048));
                bytes.extend(data(c, 0, 0, &[1; 1024]));
                bytes.extend(chunk(c, REPLY_FLAG_DONE, REPLY_NONE, &[]));
                bytes
            }],
        );
        let mut buf = [0xee; 4096];
        client.read_at(0, &mut buf).unwrap();
        assert_all(&buf[..1024], 1, "first chunk");
        assert_all(&buf[1024..3072], 0, "hole");
        assert_all(&buf[3072..], 3, "last chunk");
    }

    #[test]
    fn nbd_server_errors_carry_the_message_and_keep_the_connection() {
        let mut client = fake_client(
            FAKE,
            vec![
                |c| error_chunk(c, 5, "disk on fire"),
                |c| {
                    // Data for the first half, then a failure in the second.
                    let mut payload = 28u32.to_be_bytes().to_vec();
                    payload.extend_from_slice(&0u16.to_be_bytes());
                    payload.extend_from_slice(&256u64.to_be_bytes());
                    let mut bytes = data(c, 0, 0, &[1; 256]);
                    bytes.extend(chunk(c, REPLY_FLAG_DONE, REPLY_ERROR_OFFSET, &payload));
                    bytes
                },
                |c| data(c, REPLY_FLAG_DONE, 0, &[9; 512]),
            ],
        );
        let error = client.read_at(0, &mut [0u8; 512]).unwrap_err();
        assert!(
            matches!(error, NbdError::Server { errno: 5, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("EIO"), "{error}");
        assert!(error.to_string().contains("disk on fire"), "{error}");
        let error = client.read_at(0, &mut [0u8; 512]).unwrap_err();
        assert!(
            matches!(error, NbdError::Server { errno: 28, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("at offset 256"), "{error}");
        let mut buf = [0u8; 512];
        client
            .read_at(0, &mut buf)
            .expect("connection still in step");
        assert_all(&buf, 9, "second read");
    }

    #[test]
    fn nbd_simple_replies_work_without_structured_replies() {
        let export = FakeExport {
            structured: false,
            ..FAKE
        };
        let address = fake_tcp_server(
            export,
            vec![|c| {
                let mut bytes = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
                bytes.extend_from_slice(&0u32.to_be_bytes());
                bytes.extend_from_slice(&c.to_be_bytes());
                bytes.extend_from_slice(&[4; 4096]);
                bytes
            }],
        );
        // Meta contexts need structured replies, so this server cannot give them.
        let error = NbdClient::connect_tcp(address, "disk", &[BASE_ALLOCATION])
            .err()
            .expect("contexts without structured replies");
        assert!(matches!(error, NbdError::Unsupported(_)), "{error}");

        let address = fake_tcp_server(
            export,
            vec![|c| {
                let mut bytes = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
                bytes.extend_from_slice(&0u32.to_be_bytes());
                bytes.extend_from_slice(&c.to_be_bytes());
                bytes.extend_from_slice(&[4; 4096]);
                bytes
            }],
        );
        let mut client = NbdClient::connect_tcp(address, "disk", &[]).unwrap();
        assert!(!client.has_structured_replies());
        let mut buf = [0u8; 4096];
        client.read_at(0, &mut buf).unwrap();
        assert_all(&buf, 4, "simple reply data");
    }

    #[test]
    fn nbd_hostile_block_status_replies_are_protocol_errors() {
        let cases: [(&str, ReplyScript); 5] = [
            ("zero-length extent", |c| status(c, 7, &[(0, 0)])),
            ("unknown context", |c| status(c, 99, &[(4096, 0)])),
            ("extents after the end", |c| {
                status(c, 7, &[(4096, 0), (4096, 3)])
            }),
            ("no descriptors", |c| status(c, 7, &[])),
            ("context missing", |c| {
                chunk(c, REPLY_FLAG_DONE, REPLY_NONE, &[])
            }),
        ];
        for (name, reply) in cases {
            let mut client = fake_client(FAKE, vec![reply]);
            let error = client.block_status(BASE_ALLOCATION, 0, 4096).unwrap_err();
            assert!(matches!(error, NbdError::Protocol(_)), "{name}: {error}");
        }
    }

    #[test]
    fn nbd_block_status_asks_again_until_the_range_is_covered() {
        // The server answers for less than asked (allowed); the last extent
        // overshoots the second request and is clipped.
        let mut client = fake_client(
            FAKE,
            vec![|c| status(c, 7, &[(1024, 0), (1024, 3)]), |c| {
                status(c, 7, &[(1024, 3), (1 << 20, 0)])
            }],
        );
        assert_eq!(
            client.block_status(BASE_ALLOCATION, 0, 8192).unwrap(),
            [
                extent(0, 1024, 0),
                extent(1024, 2048, 3),
                extent(3072, 5120, 0)
            ]
        );
    }

    fn simple(cookie: u64, errno: u32) -> Vec<u8> {
        let mut bytes = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&errno.to_be_bytes());
        bytes.extend_from_slice(&cookie.to_be_bytes());
        bytes
    }

    fn error_payload(errno: u32, message: &str) -> Vec<u8> {
        let mut payload = errno.to_be_bytes().to_vec();
        payload.extend_from_slice(&(message.len() as u16).to_be_bytes());
        payload.extend_from_slice(message.as_bytes());
        payload
    }

    /// Each hostile reply to a 4 KiB write at 0 poisons the connection.
    #[test]
    fn nbd_hostile_write_replies_are_protocol_errors() {
        let cases: [(&str, ReplyScript); 9] = [
            ("wrong cookie", |c| simple(c + 1, 0)),
            ("late structured reply", |c| {
                chunk(c - 1, REPLY_FLAG_DONE, REPLY_NONE, &[])
            }),
            ("data chunk in a write reply", |c| {
                data(c, REPLY_FLAG_DONE, 0, &[1; 4096])
            }),
            ("none that is not final", |c| chunk(c, 0, REPLY_NONE, &[])),
            ("none with a payload", |c| {
                chunk(c, REPLY_FLAG_DONE, REPLY_NONE, &[0; 8])
            }),
            ("simple reply after an error chunk", |c| {
                let mut bytes = chunk(c, 0, REPLY_ERROR_BIT | 1, &error_payload(5, ""));
                bytes.extend(simple(c, 0));
                bytes
            }),
            ("error offset outside the request", |c| {
                let mut payload = error_payload(5, "");
                payload.extend_from_slice(&8192u64.to_be_bytes());
                chunk(c, REPLY_FLAG_DONE, REPLY_ERROR_OFFSET, &payload)
            }),
            ("huge error chunk", |c| {
                let mut bytes = chunk(c, REPLY_FLAG_DONE, REPLY_ERROR_BIT | 1, &[]);
                bytes[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
                bytes
            }),
            ("bad magic", |_| vec![0xff; 64]),
        ];
        for (name, reply) in cases {
            let mut client = fake_client(WRITABLE, vec![reply]);
            let error = client.write_at(0, &[1; 4096]).unwrap_err();
            assert!(matches!(error, NbdError::Protocol(_)), "{name}: {error}");
            let again = client.write_at(0, &[1; 4096]).unwrap_err();
            assert!(matches!(again, NbdError::Broken), "{name}: {again}");
            let flush = client.flush().unwrap_err();
            assert!(matches!(flush, NbdError::Broken), "{name}: {flush}");
        }
    }

    #[test]
    fn nbd_write_replies_may_be_simple_or_structured() {
        let mut client = fake_client(
            WRITABLE,
            vec![
                |c| error_chunk(c, 28, "disk full"),
                |c| simple(c, 1),
                |c| {
                    // Two errors: the first is the one reported.
                    let mut bytes = chunk(c, 0, REPLY_ERROR_BIT | 1, &error_payload(5, "first"));
                    bytes.extend(error_chunk(c, 28, "second"));
                    bytes
                },
                |c| simple(c, 0),
                |c| chunk(c, REPLY_FLAG_DONE, REPLY_NONE, &[]),
                |c| chunk(c, REPLY_FLAG_DONE, REPLY_NONE, &[]),
                |c| simple(c, 0),
                |c| error_chunk(c, 5, "flush failed"),
            ],
        );
        let error = client.write_at(0, &[1; 4096]).unwrap_err();
        assert!(
            matches!(
                error,
                NbdError::Server {
                    command: "write",
                    errno: 28,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("ENOSPC"), "{error}");
        assert!(error.to_string().contains("disk full"), "{error}");
        let error = client.write_at(0, &[1; 4096]).unwrap_err();
        assert!(
            matches!(error, NbdError::Server { errno: 1, .. }),
            "{error}"
        );
        let error = client.write_at(0, &[1; 4096]).unwrap_err();
        assert!(error.to_string().contains("first"), "{error}");
        client.write_at(0, &[1; 4096]).expect("simple success");
        client.write_at(0, &[1; 4096]).expect("structured success");
        client.flush().expect("flush");
        client.write_zeroes(0, MIB).expect("write zeroes");
        let error = client.flush().unwrap_err();
        assert!(
            matches!(
                error,
                NbdError::Server {
                    command: "flush",
                    errno: 5,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn nbd_flush_is_a_no_op_when_not_offered() {
        let export = FakeExport { flags: 0, ..FAKE };
        let mut client = fake_client(export, vec![]);
        let cookie = client.next_cookie;
        client.flush().expect("nothing to flush");
        assert_eq!(client.next_cookie, cookie, "a request was sent");
    }
}

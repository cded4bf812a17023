//! One transmission-phase request and its reply: simple or structured chunks, each
//! checked against the request (cookie, range, overlap, count) before it is believed.

use std::collections::BTreeMap;
use std::io::Write;

use super::wire::{printable, Fields, WireRead};
use super::{
    detail, io_error, protocol, Extent, NbdClient, NbdError, CMD_BLOCK_STATUS, CMD_DISC, CMD_READ,
    CMD_WRITE, MAX_CHUNKS_PER_REPLY, MAX_ERROR_CHUNKS, MAX_ERROR_PAYLOAD, MAX_STATUS_CHUNKS,
    MAX_STATUS_PAYLOAD, REPLY_BLOCK_STATUS, REPLY_ERROR_BIT, REPLY_ERROR_OFFSET, REPLY_FLAG_DONE,
    REPLY_NONE, REPLY_OFFSET_DATA, REPLY_OFFSET_HOLE, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
};

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
pub(super) struct Span {
    pub(super) offset: u64,
    pub(super) length: u64,
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

impl NbdClient {
    pub(super) fn send_request(&mut self, command: u16, span: Span) -> Result<u64, NbdError> {
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
    pub(super) fn read_request(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
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
    pub(super) fn write_request(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        let span = Span {
            offset,
            length: data.len() as u64,
        };
        let cookie = self.send_request_with(CMD_WRITE, span, data)?;
        self.empty_reply(cookie, "write", span)
    }

    /// The reply to a command that returns no data: a simple reply, or
    /// structured error chunks ended by a final chunk (often NBD_REPLY_TYPE_NONE).
    pub(super) fn empty_reply(
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
    pub(super) fn block_status_request(
        &mut self,
        id: u32,
        span: Span,
    ) -> Result<Vec<Extent>, NbdError> {
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

    pub(super) fn disconnect(&mut self) {
        let span = Span {
            offset: 0,
            length: 0,
        };
        let _ = self.send_request(CMD_DISC, span);
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

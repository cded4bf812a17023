//! The fixed-newstyle handshake: greeting, structured replies, meta contexts and
//! NBD_OPT_GO, each server reply bounded and checked before the connection is handed over.

use std::io::Write;
use std::time::Duration;

use super::wire::{printable, Fields, Transport, WireRead};
use super::{
    io_error, protocol, NbdClient, NbdError, DEFAULT_MAX_REQUEST, FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES, IHAVEOPT, INFO_BLOCK_SIZE, INFO_EXPORT, MAX_OPTION_PAYLOAD, MAX_OPTION_REPLIES,
    MAX_STRING, NBD_MAGIC, OLDSTYLE_MAGIC, OPTION_REPLY_MAGIC, OPT_ABORT, OPT_GO,
    OPT_SET_META_CONTEXT, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_BIT, REP_ERR_UNSUP, REP_INFO,
    REP_META_CONTEXT, TRANSMISSION_HAS_FLAGS,
};

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
pub(super) struct ExportInfo {
    pub(super) size: u64,
    pub(super) flags: u16,
    pub(super) min_block: u32,
    pub(super) max_request: u32,
}

pub(super) struct MetaContext {
    pub(super) name: String,
    pub(super) id: u32,
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

impl NbdClient {
    pub(super) fn handshake(
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
}

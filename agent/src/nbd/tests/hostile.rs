//! Against scripted hostile peers: garbage, silence, malformed and
//! out-of-order replies.

use super::*;

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
            OPT_STRUCTURED_REPLY if export.structured => option_reply(stream, option, REP_ACK, &[]),
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

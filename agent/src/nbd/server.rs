//! A read-only NBD server of one export on a Unix socket: what QEMU reads an
//! instant restore's backing image through. Fixed newstyle handshake with
//! `NBD_OPT_GO`/`NBD_OPT_INFO` (and the old `NBD_OPT_EXPORT_NAME`), simple
//! replies only; everything the export cannot do (writes, trims, structured
//! replies, meta contexts) is refused with the spec's error, never guessed.
//! Requests are bounded before a byte is read for them; a client that
//! breaks the protocol loses its connection, nothing else.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::*;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const REP_SERVER: u32 = 2;
const REP_ERR_INVALID: u32 = REP_ERR_BIT | 3;
const REP_ERR_UNKNOWN: u32 = REP_ERR_BIT | 6;
const CLIENT_FLAG_NO_ZEROES: u32 = FLAG_NO_ZEROES as u32;
/// The export never changes while served, so any number of connections see
/// the same data.
const TRANSMISSION_CAN_MULTI_CONN: u16 = 1 << 8;
const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
/// Options a client may send before it picks the export.
const MAX_OPTIONS: usize = 64;

/// What the server exports: a fixed-size, read-only disk.
pub trait Export: Send + Sync {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (within the size), or fails.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()>;
}

/// Serves one export until dropped; dropping it also ends every connection.
pub struct NbdServer {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<UnixStream>>>,
    path: PathBuf,
}

impl NbdServer {
    /// Listens on `path` (replacing a stale socket there) and serves
    /// `export` to every client as `name`.
    pub fn serve(path: &Path, name: &str, export: Arc<dyn Export>) -> io::Result<NbdServer> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (s, c, name) = (stop.clone(), connections.clone(), name.to_string());
        let accept = std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || accept_loop(listener, &s, &c, &name, export))?;
        Ok(NbdServer {
            stop,
            accept: Some(accept),
            connections,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        if let Ok(conns) = self.connections.lock() {
            for c in conns.iter() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    stop: &AtomicBool,
    connections: &Mutex<Vec<UnixStream>>,
    name: &str,
    export: Arc<dyn Export>,
) {
    while !stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                tracing::warn!("NBD server: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        if let (Ok(mut conns), Ok(copy)) = (connections.lock(), stream.try_clone()) {
            conns.retain(|c| c.peer_addr().is_ok());
            conns.push(copy);
        }
        let (name, export) = (name.to_string(), export.clone());
        let spawned = std::thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || {
                let mut stream = stream;
                if let Err(e) = serve_connection(&mut stream, &name, &*export) {
                    tracing::debug!("NBD client {name}: {e}");
                }
                // The accept loop keeps a clone for shutdown on drop: close
                // explicitly so the client sees the end of the connection.
                let _ = stream.shutdown(std::net::Shutdown::Both);
            });
        if let Err(e) = spawned {
            tracing::warn!("NBD server: cannot serve a client: {e}");
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn option_reply(w: &mut impl Write, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    w.write_all(&out)
}

fn transmission_flags() -> u16 {
    TRANSMISSION_HAS_FLAGS | TRANSMISSION_READ_ONLY | TRANSMISSION_CAN_MULTI_CONN
}

/// The handshake: true when the client picked the export and transmission
/// begins, false when it aborted.
fn handshake(s: &mut UnixStream, name: &str, size: u64) -> io::Result<bool> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBD_MAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let client_flags = read_u32(s)?;
    let export_info = {
        let mut info = Vec::with_capacity(12);
        info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        info.extend_from_slice(&size.to_be_bytes());
        info.extend_from_slice(&transmission_flags().to_be_bytes());
        info
    };
    for _ in 0..MAX_OPTIONS {
        if read_u64(s)? != IHAVEOPT {
            return Err(bad("option without IHAVEOPT"));
        }
        let option = read_u32(s)?;
        let length = read_u32(s)?;
        if length > MAX_OPTION_PAYLOAD {
            return Err(bad(format!("option payload of {length} bytes")));
        }
        let mut data = vec![0u8; length as usize];
        s.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                if data != name.as_bytes() {
                    // This option has no error reply: the spec says close.
                    return Err(bad("a client asked for an unknown export"));
                }
                let mut reply = Vec::with_capacity(134);
                reply.extend_from_slice(&size.to_be_bytes());
                reply.extend_from_slice(&transmission_flags().to_be_bytes());
                if client_flags & CLIENT_FLAG_NO_ZEROES == 0 {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&reply)?;
                return Ok(true);
            }
            OPT_GO | OPT_INFO => {
                let wanted = requested_name(&data);
                match wanted {
                    None => option_reply(s, option, REP_ERR_INVALID, b"malformed request")?,
                    Some(n) if n != name.as_bytes() && !n.is_empty() => {
                        option_reply(s, option, REP_ERR_UNKNOWN, b"no such export")?
                    }
                    Some(_) => {
                        option_reply(s, option, REP_INFO, &export_info)?;
                        option_reply(s, option, REP_ACK, &[])?;
                        if option == OPT_GO {
                            return Ok(true);
                        }
                    }
                }
            }
            OPT_LIST => {
                let mut entry = (name.len() as u32).to_be_bytes().to_vec();
                entry.extend_from_slice(name.as_bytes());
                option_reply(s, option, REP_SERVER, &entry)?;
                option_reply(s, option, REP_ACK, &[])?;
            }
            OPT_ABORT => {
                let _ = option_reply(s, option, REP_ACK, &[]);
                return Ok(false);
            }
            _ => option_reply(s, option, REP_ERR_UNSUP, &[])?,
        }
    }
    Err(bad("too many options"))
}

/// The export name of an `NBD_OPT_GO`/`NBD_OPT_INFO` payload, if well formed.
fn requested_name(data: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4 + len)?;
    let count = u16::from_be_bytes(data.get(4 + len..6 + len)?.try_into().ok()?) as usize;
    (data.len() == 6 + len + 2 * count).then_some(name)
}

fn simple_reply(w: &mut impl Write, error: u32, cookie: u64, data: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 16];
    head[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    head[4..8].copy_from_slice(&error.to_be_bytes());
    head[8..].copy_from_slice(&cookie.to_be_bytes());
    w.write_all(&head)?;
    w.write_all(data)
}

fn serve_connection(s: &mut UnixStream, name: &str, export: &dyn Export) -> io::Result<()> {
    s.set_read_timeout(None)?;
    s.set_write_timeout(Some(DEFAULT_IO_TIMEOUT))?;
    let size = export.size();
    if !handshake(s, name, size)? {
        return Ok(());
    }
    let mut buf = Vec::new();
    loop {
        let mut head = [0u8; 28];
        match s.read_exact(&mut head) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            other => other?,
        }
        let field = |r: std::ops::Range<usize>| &head[r];
        let magic = u32::from_be_bytes(field(0..4).try_into().expect("4 bytes"));
        let kind = u16::from_be_bytes(field(6..8).try_into().expect("2 bytes"));
        let cookie = u64::from_be_bytes(field(8..16).try_into().expect("8 bytes"));
        let offset = u64::from_be_bytes(field(16..24).try_into().expect("8 bytes"));
        let length = u32::from_be_bytes(field(24..28).try_into().expect("4 bytes"));
        if magic != REQUEST_MAGIC {
            return Err(bad("request without the request magic"));
        }
        let in_bounds = offset.checked_add(length as u64).is_some_and(|e| e <= size);
        match kind {
            CMD_READ if length > DEFAULT_MAX_REQUEST || !in_bounds => {
                simple_reply(s, EINVAL, cookie, &[])?
            }
            CMD_READ => {
                buf.resize(length as usize, 0);
                match export.read_at(offset, &mut buf) {
                    Ok(()) => simple_reply(s, 0, cookie, &buf)?,
                    Err(e) => {
                        tracing::warn!("NBD export {name}: read at {offset} failed: {e:#}");
                        simple_reply(s, EIO, cookie, &[])?
                    }
                }
            }
            CMD_WRITE => {
                // The payload follows the request whatever the answer.
                if length > DEFAULT_MAX_REQUEST {
                    return Err(bad("oversized write"));
                }
                io::copy(&mut (&mut *s).take(length as u64), &mut io::sink())?;
                simple_reply(s, EPERM, cookie, &[])?
            }
            CMD_DISC => return Ok(()),
            CMD_FLUSH => simple_reply(s, 0, cookie, &[])?,
            CMD_TRIM | CMD_WRITE_ZEROES => simple_reply(s, EPERM, cookie, &[])?,
            _ => simple_reply(s, EINVAL, cookie, &[])?,
        }
    }
}

const CMD_TRIM: u16 = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::NbdClient;

    struct Pattern(u64);

    impl Export for Pattern {
        fn size(&self) -> u64 {
            self.0
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
            if offset >= 1 << 20 {
                anyhow::bail!("the backing store is gone");
            }
            for (k, b) in buf.iter_mut().enumerate() {
                *b = ((offset + k as u64) % 251) as u8;
            }
            Ok(())
        }
    }

    fn socket(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("lifeboat-nbd-{tag}-{}.sock", std::process::id()))
    }

    #[test]
    fn our_client_reads_what_the_server_exports_and_cannot_write() {
        let path = socket("rw");
        let server = NbdServer::serve(&path, "vda", Arc::new(Pattern(2 << 20))).unwrap();
        let mut client = NbdClient::connect_unix(&path, "vda", &[]).unwrap();
        assert_eq!(client.size(), 2 << 20);
        let mut buf = vec![0u8; 70_000];
        client.read_at(1000, &mut buf).unwrap();
        assert!(buf
            .iter()
            .enumerate()
            .all(|(k, b)| *b == ((1000 + k) % 251) as u8));
        // A read the export cannot serve is an error, and the connection
        // goes on.
        let err = client.read_at(1 << 20, &mut buf).unwrap_err();
        assert!(err.to_string().contains("errno 5"), "{err}");
        client.read_at(0, &mut buf[..10]).unwrap();
        assert!(client.write_at(0, b"x").is_err());
        // Past the end: refused.
        assert!(client.read_at((2 << 20) - 5, &mut buf[..10]).is_err());
        assert!(NbdClient::connect_unix(&path, "other", &[]).is_err());
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn qemu_img_reads_the_export() {
        if std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("qemu-img is not installed; skipped");
            return;
        }
        let path = socket("qemu");
        let _server = NbdServer::serve(&path, "vda", Arc::new(Pattern(1 << 20))).unwrap();
        let out = std::env::temp_dir().join(format!("lifeboat-nbd-{}.raw", std::process::id()));
        let status = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(format!("nbd+unix:///vda?socket={}", path.display()))
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        let data = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        assert_eq!(data.len(), 1 << 20);
        assert!(data.iter().enumerate().all(|(k, b)| *b == (k % 251) as u8));
    }

    #[test]
    fn a_client_that_breaks_the_protocol_loses_only_its_connection() {
        let path = socket("bad");
        let _server = NbdServer::serve(&path, "vda", Arc::new(Pattern(1 << 20))).unwrap();
        let mut raw = UnixStream::connect(&path).unwrap();
        let mut hello = [0u8; 18];
        raw.read_exact(&mut hello).unwrap();
        raw.write_all(&1u32.to_be_bytes()).unwrap();
        // An option claiming a huge payload.
        let mut opt = IHAVEOPT.to_be_bytes().to_vec();
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&u32::MAX.to_be_bytes());
        raw.write_all(&opt).unwrap();
        let mut rest = Vec::new();
        let _ = raw.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
        let client = NbdClient::connect_unix(&path, "vda", &[]).unwrap();
        assert_eq!(client.size(), 1 << 20);
    }
}

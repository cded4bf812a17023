//! Against a real qemu-nbd: reads, writes, block status, dirty bitmaps.

use super::*;

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

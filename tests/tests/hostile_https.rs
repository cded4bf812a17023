//! The console and API port under attack: a cross-site form cannot change
//! anything (state changes need `Content-Type: application/json`, which a
//! form cannot send, and no answer makes a browser remember Basic
//! credentials); a slow client holds a connection only for the header and
//! body deadlines; one source cannot take every connection.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use lifeboat_e2e::*;

#[test]
fn a_cross_site_form_post_changes_nothing() {
    let libvirt = Libvirt::ensure();
    let vm = libvirt.define_tiny_vm("csrf");
    let controller = Controller::start();
    let _agent = Agent::start(&controller, "csrf-host", Some(libvirt.uri()));
    let api = controller.api();
    api.wait_host_with_vm("csrf-host", vm.name());
    let power = format!("/api/v1/vms/{}/power", vm.uuid());
    // What an HTML form on another site can send, with credentials the
    // browser might attach: text/plain holding JSON, form encoding, nothing.
    for (content_type, body) in [
        ("text/plain", r#"{"action": "start"}"#),
        ("application/x-www-form-urlencoded", "action=start"),
        ("multipart/form-data; boundary=x", "--x--"),
    ] {
        let answer = api.raw_request(
            "POST",
            &power,
            &[("content-type", content_type)],
            body.as_bytes(),
        );
        assert_eq!(answer.status, 415, "{content_type}: {}", answer.text());
    }
    let answer = api.raw_request(
        "POST",
        &format!("/api/v1/vms/{}/backups", vm.uuid()),
        &[],
        b"",
    );
    assert_eq!(answer.status, 415, "a body-less POST: {}", answer.text());
    assert_eq!(libvirt.domstate(vm.name()), "shut off", "nothing started");
    assert!(api.backups(vm.uuid()).is_empty(), "nothing backed up");

    // No Basic challenge for a browser to answer and then replay.
    let answer = api.anonymous().raw_request("GET", "/api/v1/vms", &[], b"");
    assert_eq!(answer.status, 401);
    let challenge = answer.header("www-authenticate").unwrap_or_default();
    assert!(
        !challenge.to_ascii_lowercase().contains("basic"),
        "{challenge}"
    );

    // The same request as JSON is what works.
    let job = api.post_job(&power, &json!({"action": "start"}), READY_TIMEOUT);
    assert_eq!(job["state"], "succeeded", "{job}");
}

/// Reads until the server closes the connection; how long that took.
fn time_to_close(stream: &mut TlsStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
        assert!(started.elapsed() < limit, "still open after {limit:?}");
    }
}

#[test]
fn slow_clients_and_connection_floods_are_cut_off() {
    let controller = Controller::start();
    let api = controller.api();

    // Slowloris: headers one byte at a time, never finished.
    let mut slow = web_tls(&controller);
    slow.write_all(b"GET /api/v1/hosts HTTP/1.1\r\nHost: x\r\n")
        .expect("start");
    let writer_started = Instant::now();
    let mut cut_after = None;
    while writer_started.elapsed() < Duration::from_secs(25) {
        if slow.write_all(b"X").and_then(|()| slow.flush()).is_err() {
            cut_after = Some(writer_started.elapsed());
            break;
        }
        // The API still answers others meanwhile.
        assert_eq!(api.get("/api/v1/hosts").0, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
    let cut_after = cut_after.unwrap_or_else(|| time_to_close(&mut slow, Duration::from_secs(5)));
    assert!(
        cut_after < Duration::from_secs(20),
        "a slow header held the connection for {cut_after:?}"
    );

    // A body that never comes: 408 once the body deadline passes.
    let mut stalled = web_tls(&controller);
    let head = "POST /api/v1/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";
    stalled.write_all(head.as_bytes()).expect("headers");
    stalled
        .sock
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = stalled.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{:?}",
        started.elapsed()
    );

    // One source cannot hold every connection: past its share, new ones
    // are closed at once, and its old ones are freed when they go.
    // All opened first (the header deadline would free the early ones if
    // each were checked as it opened), then each checked.
    let opened: Vec<(TlsStream, bool)> = (0..40)
        .map(|_| {
            let mut s = web_tls(&controller);
            // The handshake happens on the first write; a refused
            // connection fails it, or is closed right after.
            let written = s
                .write_all(b"GET /api/v1/hosts HTTP/1.1\r\nHost: x\r\n")
                .is_ok();
            (s, written)
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for (mut s, written) in opened {
        s.sock
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let mut buf = [0u8; 64];
        let open = written
            && matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        if open {
            held.push(s);
        } else {
            refused += 1;
        }
    }
    // The harness's own client may hold a pooled connection or two.
    assert!((29..=32).contains(&held.len()), "{} accepted", held.len());
    assert!(refused >= 8, "{refused} refused");
    drop(held);
    poll_until("the API to serve again", READY_TIMEOUT, || {
        match api.try_get("/api/v1/hosts") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

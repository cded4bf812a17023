//! Every bad input the issue lists gets a clear error, is logged, and changes
//! nothing: wrong, reused or expired enrollment tokens, a wrong CA fingerprint,
//! an unknown client certificate, garbage on the agent port, oversized or
//! malformed API requests, unknown ids, wrong credentials.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_e2e::*;

/// Runs `lifeboat-agent` with `args` until it exits (or `timeout`, then kills
/// it). Returns whether it exited by itself, its success, and its stderr.
fn run_agent(
    controller: &Controller,
    state: &ScratchDir,
    args: &[&str],
    timeout: Duration,
) -> (bool, bool, String) {
    let log = state.path().join("agent-once.log");
    let file = std::fs::File::create(&log).expect("agent log");
    let mut child = Command::new(agent_binary())
        .arg("--controller")
        .arg(controller.agent_addr())
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn agent");
    let deadline = Instant::now() + timeout;
    let (exited, success) = loop {
        if let Some(status) = child.try_wait().expect("wait agent") {
            break (true, status.success());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break (false, false);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        exited,
        success,
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

fn host_count(api: &Api) -> usize {
    let (status, hosts) = api.get("/api/v1/hosts");
    assert_eq!(status, 200, "{hosts}");
    hosts.as_array().map_or(0, Vec::len)
}

#[test]
fn wrong_reused_and_unpinned_enrollments_are_refused() {
    let controller = Controller::start();
    let api = controller.api();
    let (token, fingerprint) = api.enrollment_token();
    let scratch = ScratchDir::new("enroll-bad");

    // Not enrolled and no token: a clear message, no connection attempt needed.
    let (exited, ok, log) = run_agent(&controller, &scratch, &[], Duration::from_secs(10));
    assert!(exited && !ok, "{log}");
    assert!(log.contains("not enrolled"), "{log}");

    // A wrong token.
    let (exited, ok, log) = run_agent(
        &controller,
        &scratch,
        &["--token", "not-a-token", "--ca-fingerprint", &fingerprint],
        Duration::from_secs(20),
    );
    assert!(exited && !ok, "{log}");
    assert!(
        log.contains("invalid, used or expired enrollment token"),
        "{log}"
    );
    assert_eq!(host_count(&api), 0);

    // A wrong CA fingerprint: the agent refuses the controller before it
    // sends the token, so the token stays usable.
    let wrong_fp = format!("sha256:{}", "0".repeat(64));
    let (exited, ok, log) = run_agent(
        &controller,
        &scratch,
        &["--token", &token, "--ca-fingerprint", &wrong_fp],
        Duration::from_secs(20),
    );
    assert!(exited && !ok, "{log}");
    assert!(
        log.contains("does not match the pinned fingerprint"),
        "{log}"
    );
    let (exited, ok, log) = run_agent(
        &controller,
        &scratch,
        &["--token", &token, "--ca-fingerprint", "md5:abc"],
        Duration::from_secs(20),
    );
    assert!(exited && !ok && log.contains("sha256:"), "{log}");
    assert_eq!(host_count(&api), 0);

    // The right token and fingerprint enroll (the agent then keeps running).
    let (exited, _, log) = run_agent(
        &controller,
        &scratch,
        &[
            "--token",
            &token,
            "--ca-fingerprint",
            &fingerprint,
            "--name",
            "first",
        ],
        Duration::from_secs(5),
    );
    assert!(!exited, "the enrolled agent should keep running: {log}");
    assert!(log.contains("enrolled with the controller"), "{log}");
    assert_eq!(host_count(&api), 1);

    // The same token again, from another machine (fresh state dir): refused.
    let other = ScratchDir::new("enroll-reuse");
    let (exited, ok, log) = run_agent(
        &controller,
        &other,
        &[
            "--token",
            &token,
            "--ca-fingerprint",
            &fingerprint,
            "--name",
            "second",
        ],
        Duration::from_secs(20),
    );
    assert!(exited && !ok, "{log}");
    assert!(
        log.contains("invalid, used or expired enrollment token"),
        "{log}"
    );
    assert_eq!(host_count(&api), 1);
    assert!(
        controller.log().contains("agent refused"),
        "{}",
        controller.log()
    );
}

#[test]
fn unknown_client_certificates_are_refused() {
    let libvirt = Libvirt::ensure();
    let mut controller = Controller::start();
    let mut agent = Agent::start(&controller, "kvm-forgotten", Some(libvirt.uri()));
    controller
        .api()
        .wait_host_status("kvm-forgotten", "online", READY_TIMEOUT);
    agent.kill_9();

    // Same CA, but a store that never heard of this agent (as after restoring
    // an old database): the certificate is valid, yet refused.
    controller.kill_9();
    std::fs::remove_file(controller.data_dir().join("lifeboat.redb")).expect("remove store");
    controller.restart();
    agent.restart_without_token();
    poll_until(
        "the controller to refuse the forgotten agent",
        READY_TIMEOUT,
        || {
            if controller.log().contains("unknown client certificate") {
                Ok(())
            } else {
                Err(controller.log())
            }
        },
    );
    poll_until("the agent to report the refusal", READY_TIMEOUT, || {
        if agent
            .log()
            .contains("refused this agent: unknown client certificate")
        {
            Ok(())
        } else {
            Err(agent.log())
        }
    });
    assert_eq!(host_count(&controller.api()), 0);

    // A certificate from another CA does not get past the TLS handshake.
    let other = Controller::start();
    let stranger = Agent::start(&other, "stranger", Some(libvirt.uri()));
    other
        .api()
        .wait_host_status("stranger", "online", READY_TIMEOUT);
    let (status, _) = other.api().get("/api/v1/hosts");
    assert_eq!(status, 200);
    // Make the stranger trust our controller, so it is our side that refuses.
    std::fs::copy(controller.ca_pem(), stranger.state_dir().join("ca.pem")).expect("copy CA");
    let scratch = ScratchDir::new("stranger");
    copy_dir(stranger.state_dir(), &scratch.path().join("state"));
    drop(stranger);
    let (exited, _, log) = run_agent(&controller, &scratch, &[], Duration::from_secs(4));
    assert!(!exited, "agents keep retrying: {log}");
    assert!(log.contains("link to the controller lost"), "{log}");
    assert!(
        controller.log().contains("TLS handshake failed"),
        "{}",
        controller.log()
    );
    assert_eq!(host_count(&controller.api()), 0);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        // The identity files; the scratch directory stays behind.
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

fn read_reply(stream: &mut impl Read) -> String {
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn garbage_on_the_agent_port_is_refused_and_harmless() {
    let controller = Controller::start();

    // Not TLS at all.
    let mut tcp = TcpStream::connect(controller.agent_addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x13garbage")
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "expected a TLS alert or a close, got {:?}",
        &buf[..n]
    );

    // TLS without a client certificate, but not an enrollment.
    let mut s = stranger_tls(&controller);
    s.write_all(&json_frame(r#"{"type":"hello","protocol_version":1,"agent_version":"x","facts":{"hostname":"","driver":"","hypervisor_version":"","cpus":0,"memory_total_bytes":0,"memory_free_bytes":0}}"#))
        .expect("write");
    let reply = read_reply(&mut s);
    assert!(reply.contains("only enrollment is allowed"), "{reply}");

    // A frame claiming 4 GiB: refused before anything is allocated.
    let mut s = stranger_tls(&controller);
    s.write_all(&u32::MAX.to_be_bytes()).expect("write");
    let reply = read_reply(&mut s);
    assert!(reply.contains("exceeds"), "{reply}");

    // Malformed JSON in a well-formed frame.
    let mut s = stranger_tls(&controller);
    s.write_all(&json_frame("{\"type\": \"enroll\", "))
        .expect("write");
    let reply = read_reply(&mut s);
    assert!(reply.contains("bad enrollment message"), "{reply}");

    let log = controller.log();
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(log.contains("agent refused"), "{log}");
    // The controller is unharmed.
    assert_eq!(host_count(&controller.api()), 0);
}

#[test]
fn bad_api_requests_get_clear_errors() {
    let controller = Controller::start();
    let api = controller.api();
    let anon = api.anonymous();

    let r = anon.raw_request("GET", "/api/v1/vms", &[], b"");
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    assert!(r.json()["error"].as_str().is_some());
    let (status, body) = api.with_basic(ADMIN_USER, "wrong").get("/api/v1/vms");
    assert_eq!(status, 401, "{body}");
    let (status, _) = api.with_bearer("forged-token").get("/api/v1/vms");
    assert_eq!(status, 401);
    let r = anon.raw_request(
        "GET",
        "/api/v1/vms",
        &[("authorization", "Basic !!!notbase64")],
        b"",
    );
    assert_eq!(r.status, 401);

    let (status, body) = api.get("/api/v1/vms/00000000-0000-0000-0000-000000000000");
    assert_eq!(status, 404, "{body}");
    let (status, _) = api.get("/api/v1/hosts/nope");
    assert_eq!(status, 404);
    let (status, _) = api.get("/api/v1/jobs/999999");
    assert_eq!(status, 404);
    let (status, _) = api.get("/api/v1/jobs/not-a-number");
    assert_eq!(status, 404);
    let (status, _) = api.get("/api/v1/no-such-thing");
    assert_eq!(status, 404);
    let (status, body) = api.delete("/api/v1/hosts");
    assert_eq!(status, 405, "{body}");
    let (status, _) = api.get("/api/v1/vms?sort=colour");
    assert_eq!(status, 400);
    let (status, _) = api.get("/api/v1/vms?state=melted");
    assert_eq!(status, 400);
    let (status, _) = api.get("/api/v1/vms?page=-1");
    assert_eq!(status, 400);

    let power = "/api/v1/vms/00000000-0000-0000-0000-000000000000/power";
    let r = api.raw_request(
        "POST",
        power,
        &[("content-type", "application/json")],
        b"{not json",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("malformed JSON"));
    let r = api.raw_request("POST", power, &[], b"");
    assert_eq!(
        r.status,
        415,
        "a POST without a JSON content type: {}",
        r.text()
    );
    let (status, body) = api.post(power, &json!({"action": "explode"}));
    assert_eq!(status, 400, "{body}");
    let (status, _) = api.post(power, &json!({"action": "start", "surprise": 1}));
    assert_eq!(status, 400);
    let (status, _) = api.post(power, &json!({"action": "start"}));
    assert_eq!(status, 404, "a valid request for an unknown VM");

    let big = vec![b'x'; 2 * 1024 * 1024];
    let r = api.raw_request("POST", power, &[("content-type", "application/json")], &big);
    assert_eq!(r.status, 413, "{}", r.text());

    // None of it created anything.
    let (_, jobs) = api.get("/api/v1/jobs");
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");

    // Repeated wrong passwords lock the account out, even for the right one.
    for _ in 0..5 {
        let (status, _) = anon.post(
            "/api/v1/session",
            &json!({"username": "admin", "password": "guess"}),
        );
        assert_eq!(status, 401);
    }
    let (status, body) = anon.post(
        "/api/v1/session",
        &json!({"username": ADMIN_USER, "password": controller.admin_password()}),
    );
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("too many failed logins"),
        "{body}"
    );
}

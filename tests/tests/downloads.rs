//! The static agent the controller hands out, attacked before it is
//! trusted: `/downloads/` serves exactly the agent and its SHA-256 to
//! anyone, GET and HEAD only, and nothing else under that prefix; the
//! enrollment command the API and console show downloads with the
//! console's key pinned and checks the binary before installing it (a wrong
//! pin or a wrong digest installs nothing); a Host header cannot put shell
//! words into that command; a missing agent file stops the controller
//! with a clear error.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use lifeboat_e2e::*;

fn sh(script: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh")
}

/// The enrollment command's download-and-install part, installing into
/// `dir` instead of /usr/local/bin.
fn install_part(command: &str, dir: &Path) -> String {
    command
        .split(" && /usr/local/bin/lifeboat-agent --controller ")
        .next()
        .expect("download part")
        .replace("/usr/local/bin/", &format!("{}/", dir.display()))
}

#[test]
fn the_agent_download_is_exact_pinned_and_checked() {
    let agent = agent_binary();
    let controller = Controller::options()
        .arg("--agent-binary")
        .arg(&agent.to_string_lossy())
        .start();
    let api = controller.api();
    let anonymous = api.anonymous();
    let digest = sha256_file(&agent);

    let sums = anonymous.raw_request("GET", "/downloads/lifeboat-agent.sha256", &[], b"");
    assert_eq!(sums.status, 200);
    assert_eq!(sums.text(), format!("{digest}  lifeboat-agent\n"));
    let head = anonymous.raw_request("HEAD", "/downloads/lifeboat-agent", &[], b"");
    assert_eq!(head.status, 200);
    let len = std::fs::metadata(&agent).expect("agent").len().to_string();
    assert_eq!(head.header("content-length"), Some(len.as_str()));
    assert!(head.body.is_empty());
    let head = anonymous.raw_request("HEAD", "/downloads/lifeboat-agent.sha256", &[], b"");
    let sums_len = sums.body.len().to_string();
    assert_eq!(head.header("content-length"), Some(sums_len.as_str()));

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = anonymous.raw_request(method, "/downloads/lifeboat-agent", &[], b"x");
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    for path in [
        "/downloads/",
        "/downloads/lifeboat-agent/",
        "/downloads/lifeboat-agent/x",
        "/downloads/LIFEBOAT-AGENT",
        "/downloads/../api/v1/users",
        "/downloads/%2e%2e/lifeboat.redb",
        "/downloads/lifeboat.redb",
    ] {
        let r = anonymous.raw_request("GET", path, &[], b"");
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(r.body.len() < 200, "{path} served {} bytes", r.body.len());
    }

    // The command as an operator pastes it: the download works and installs
    // exactly the agent.
    let (status, issued) = api.post("/api/v1/enrollment-tokens", &json!({}));
    assert_eq!(status, 201, "{issued}");
    let command = issued["command"].as_str().unwrap_or_default().to_string();
    assert!(command.contains(&digest), "{command}");
    assert!(
        command.contains(&format!(
            "--controller 127.0.0.1:{} ",
            controller.agent_port()
        )),
        "{command}"
    );
    let dir = ScratchDir::new("download");
    let out = sh(&install_part(&command, dir.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = dir.path().join("lifeboat-agent");
    assert_eq!(sha256_file(&installed), digest);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);

    // Another key than the console's: curl refuses, nothing is installed.
    let pin = command
        .split("--pinnedpubkey '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .expect("the pin");
    let wrong_pin = command.replace(pin, "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let elsewhere = ScratchDir::new("download-wrong-pin");
    let out = sh(&install_part(&wrong_pin, elsewhere.path()));
    assert!(!out.status.success());
    assert!(!elsewhere.path().join("lifeboat-agent").exists());
    // A binary that is not the one the console vouches for: not installed.
    let wrong_digest = command.replace(&digest, &"0".repeat(64));
    let out = sh(&install_part(&wrong_digest, elsewhere.path()));
    assert!(!out.status.success());
    assert!(!elsewhere.path().join("lifeboat-agent").exists());
}

#[test]
fn a_host_header_cannot_put_shell_words_into_the_enrollment_command() {
    let controller = Controller::start();
    let (status, session) = controller.api().anonymous().post(
        "/api/v1/session",
        &json!({"username": ADMIN_USER, "password": controller.admin_password()}),
    );
    assert_eq!(status, 201, "{session}");
    let token = session["token"].as_str().unwrap_or_default();
    for host in [
        "evil.example;touch${IFS}/tmp/lifeboat-pwned",
        "a$(id)b",
        "x`id`",
        "h'o",
        "h o",
    ] {
        let mut tls = web_tls(&controller);
        let request = format!(
            "POST /api/v1/enrollment-tokens HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        tls.write_all(request.as_bytes()).expect("send");
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let issued: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let command = issued["command"].as_str().unwrap_or_default();
        assert!(
            command.contains("https://CONTROLLER/downloads/lifeboat-agent"),
            "{host}: {text}"
        );
        assert!(
            command.contains("--controller CONTROLLER:"),
            "{host}: {command}"
        );
        assert!(!command.contains(host), "{host}: {command}");
    }
    assert!(!Path::new("/tmp/lifeboat-pwned").exists());
}

#[test]
fn a_missing_agent_binary_stops_the_controller_with_a_clear_error() {
    let dir = ScratchDir::new("no-agent");
    let out = Command::new(controller_binary())
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0"])
        .args(["--agent-binary", "/nonexistent/lifeboat-agent"])
        .env("LIFEBOAT_ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD)
        .output()
        .expect("run the controller");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent binary /nonexistent/lifeboat-agent: No such file or directory"),
        "{stderr}"
    );
}

//! First start on an empty data directory: the default `./lifeboat-data`, a
//! CA, and an `admin` account whose random password is printed once and kept
//! in `initial-admin-password` (mode 0600) — and not made up again later,
//! and removed once that password is changed. The data directory is 0700
//! and every file in it private, even under a permissive umask.

use lifeboat_e2e::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(cwd: &std::path::Path, web: u16, agents: u16, out: &std::path::Path) -> Killed {
    let stdout = std::fs::File::create(out).expect("stdout file");
    // umask 000: the controller must not rely on the operator's umask.
    let child = Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(controller_binary())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{web}"),
            "--agent-listen",
            &format!("127.0.0.1:{agents}"),
        ])
        .current_dir(cwd)
        .env_remove("LIFEBOAT_ADMIN_PASSWORD")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn controller");
    Killed(child)
}

fn wait_api(url: &str, ca: &std::path::Path, password: &str) -> u16 {
    poll_until("the API to answer", READY_TIMEOUT, || {
        let api = Api::new(url, ca)?.with_basic(ADMIN_USER, password);
        api.try_get("/api/v1/hosts").map(|(status, _)| status)
    })
}

#[test]
fn first_start_makes_a_data_dir_and_a_one_time_admin_password() {
    let scratch = ScratchDir::new("first-start");
    let (web, agents) = (free_port(), free_port());
    let out = scratch.path().join("stdout.txt");
    let data = scratch.path().join("lifeboat-data");
    let password_file = data.join("initial-admin-password");
    let url = format!("https://127.0.0.1:{web}");

    let mut first = serve(scratch.path(), web, agents, &out);
    poll_until("the initial password file", READY_TIMEOUT, || {
        if let Some(status) = first.0.try_wait().expect("wait") {
            return Err(format!("controller exited: {status}"));
        }
        std::fs::read_to_string(&password_file).map_err(|e| e.to_string())
    });
    let password = std::fs::read_to_string(&password_file)
        .expect("password")
        .trim()
        .to_string();
    assert!(password.len() >= 16, "weak generated password {password:?}");
    let mode = std::fs::metadata(&password_file)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "initial-admin-password must be private");
    let key_mode = std::fs::metadata(data.join("tls/ca.key"))
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    assert!(data.join("lifeboat.redb").is_file());
    let mode_of = |path: &std::path::Path| {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    };
    assert_eq!(mode_of(&data), 0o700, "the data directory is private");
    for file in ["lifeboat.redb", "secrets.key", "tls/server.key"] {
        assert_eq!(mode_of(&data.join(file)), 0o600, "{file}");
    }

    assert_eq!(wait_api(&url, &data.join("tls/ca.pem"), &password), 200);
    let printed = std::fs::read_to_string(&out).expect("stdout");
    assert!(
        printed.contains(&password),
        "the password must be printed once: {printed}"
    );
    let (status, _) = Api::new(&url, &data.join("tls/ca.pem"))
        .expect("api")
        .with_basic(ADMIN_USER, "guess")
        .get("/api/v1/hosts");
    assert_eq!(status, 401);

    // A restart keeps the account and prints no new password.
    drop(first);
    let out2 = scratch.path().join("stdout2.txt");
    let _second = serve(scratch.path(), web, agents, &out2);
    assert_eq!(wait_api(&url, &data.join("tls/ca.pem"), &password), 200);
    let printed = std::fs::read_to_string(&out2).expect("stdout");
    assert!(
        !printed.contains("password"),
        "no second password: {printed}"
    );
    assert_eq!(
        std::fs::read_to_string(&password_file)
            .expect("file")
            .trim(),
        password
    );

    // Once the password is changed, the file that held it goes.
    let api = Api::new(&url, &data.join("tls/ca.pem"))
        .expect("api")
        .with_basic(ADMIN_USER, &password);
    let (status, body) = api.put(
        "/api/v1/users/admin",
        &json!({"password": "a-new-Long-passw0rd"}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        !password_file.exists(),
        "the stale password file is removed"
    );
}

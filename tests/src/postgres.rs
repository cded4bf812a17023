//! A real PostgreSQL server for the SQL export: a throwaway cluster made by
//! Debian's `initdb` in a scratch directory, run as the `postgres` user on a
//! high loopback port with TLS (a private CA) required for the export's
//! role, and queried with `psql` over its Unix socket as the superuser.
//! It can be stopped (a fast shutdown, as an outage) and started again on
//! the same data and port.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ports::free_port;
use crate::process::{print_log_if_failing, run_checked, LoggedProcess};
use crate::scratch::ScratchDir;
use crate::slapd::make_ca_and_server_certificate;
use crate::wait::{poll_until, wait_until, READY_TIMEOUT};

/// The role and database the export writes to.
pub const PG_USER: &str = "lifeboat";
pub const PG_DATABASE: &str = "lifeboat";
pub const PG_PASSWORD: &str = "export-db-secret-1";

pub struct Postgres {
    process: Option<LoggedProcess>,
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    _scratch: ScratchDir,
}

/// Debian's newest installed server binaries.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql (is the postgresql package installed?)")
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
        .1
}

/// `program` run as the `postgres` user (execs, so the pid is the program's).
fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
    command
}

impl Postgres {
    /// A new cluster with the export's role and database, started.
    pub fn start() -> Postgres {
        let scratch = ScratchDir::new("postgres");
        let dir = scratch.path().to_path_buf();
        make_ca_and_server_certificate(&dir);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        run_checked(
            "chown",
            &["-R", "postgres:postgres", &dir.to_string_lossy()],
            Path::new("/"),
        );
        let bin = server_bin();
        let data = dir.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--auth-local=trust",
                "--auth-host=reject",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The export's role over TLS with a password; nothing else by TCP.
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all postgres trust\n\
                 hostssl {PG_DATABASE} {PG_USER} 127.0.0.1/32 scram-sha-256\n\
                 host all all 0.0.0.0/0 reject\n"
            ),
        )
        .expect("write pg_hba.conf");
        let mut pg = Postgres {
            process: None,
            bin,
            port: free_port(),
            log: dir.join("postgres.log"),
            dir,
            _scratch: scratch,
        };
        pg.start_server();
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}'"),
        );
        pg.psql(
            "postgres",
            &format!("CREATE DATABASE {PG_DATABASE} OWNER {PG_USER}"),
        );
        pg
    }

    fn start_server(&mut self) {
        let d = &self.dir;
        let mut command = as_postgres(&self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(d.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(d)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", d.join("server.pem").display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", d.join("server.key").display()))
            .args(["-c", "fsync=off"]);
        self.process = Some(LoggedProcess::spawn("postgres", command, &self.log));
        poll_until("PostgreSQL to answer", READY_TIMEOUT, || {
            self.try_psql("postgres", "SELECT 1")
        });
    }

    /// `postgresql://lifeboat@127.0.0.1:PORT/lifeboat`.
    pub fn url(&self) -> String {
        format!(
            "postgresql://{PG_USER}@127.0.0.1:{}/{PG_DATABASE}",
            self.port
        )
    }

    /// The PEM of the CA that signed the server's certificate.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca.pem")).expect("read ca.pem")
    }

    /// Runs SQL in the export's database as the superuser; the rows as
    /// `psql -At` prints them (`|` between columns).
    pub fn query(&self, sql: &str) -> String {
        self.psql(PG_DATABASE, sql)
    }

    fn psql(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = as_postgres(&self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// A fast shutdown (clients are disconnected), waited for.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-INT", &p.pid().to_string()])
                .status();
            wait_until("PostgreSQL to shut down", Duration::from_secs(60), || {
                p.exit_status().is_some()
            });
        }
    }

    /// Starts the server again on the same data and port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop();
        } else if let Some(mut p) = self.process.take() {
            p.kill_9();
        }
        print_log_if_failing("postgres", &self.log);
    }
}

//! The SQL export: a PostgreSQL database to which the controller streams
//! its inventory (every change, as it happens) and every finished minute of
//! the metric archives.
//!
//! Guarantees: each sample row reaches the database once. The position up
//! to which minutes are exported lives in the database itself and moves in
//! the same transaction as the rows, so a lost connection, a database
//! restart or a controller restart resumes exactly where the last commit
//! ended; the primary keys refuse a duplicate even if that position is
//! tampered with. While the database is away the controller keeps its
//! minute archive (a day) and catches up when it returns; inventory changes
//! made meanwhile arrive as one change per object, its state now.

pub mod schema;
pub(crate) mod session;

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, Table, Write};

const TARGET_KEY: &str = "postgresql";

/// How the connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SqlTls {
    /// TLS, the server's certificate checked against `ca_pem` (or the
    /// system's trust store) and its name against the URL's host.
    #[default]
    VerifyFull,
    /// No TLS: the password is sent as a SCRAM exchange, the data in clear.
    Disable,
}

/// A target as an operator gives it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlTargetInput {
    /// `postgresql://USER@HOST:PORT/DATABASE`, without a password.
    pub url: String,
    /// Empty keeps the stored one.
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub tls: SqlTls,
    /// PEM of the CA that signed the server's certificate; empty: the
    /// system's trust store.
    #[serde(default)]
    pub ca_pem: String,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// A target as stored: the password sealed with the controller's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SqlTarget {
    pub url: String,
    pub tls: SqlTls,
    pub ca_pem: String,
    pub enabled: bool,
    pub password_sealed: String,
}

/// Most bytes of a URL and of a CA bundle.
const MAX_URL: usize = 1024;
const MAX_CA_PEM: usize = 64 * 1024;

impl SqlTargetInput {
    /// Checks the URL and the CA; errors start with the field's name.
    pub fn validate(&self) -> Result<(), String> {
        if self.url.len() > MAX_URL {
            return Err(format!("url: at most {MAX_URL} characters"));
        }
        session::parse_url(&self.url)?;
        if self.ca_pem.len() > MAX_CA_PEM {
            return Err(format!("ca_pem: at most {} KiB", MAX_CA_PEM / 1024));
        }
        if self.tls == SqlTls::VerifyFull {
            crate::pki::client_tls(&self.ca_pem)?;
        } else if !self.ca_pem.trim().is_empty() {
            return Err("ca_pem: a CA is for tls verify-full".into());
        }
        Ok(())
    }
}

/// Where the export is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SqlState {
    /// Not configured, or disabled.
    #[default]
    Off,
    Connecting,
    /// Connected and up to date (or catching up).
    Exporting,
    /// The last attempt failed; the next is due in `retry_in_secs`.
    Waiting,
}

impl SqlState {
    /// As in the API (`off`, `connecting`, `exporting`, `waiting`).
    pub fn as_str(self) -> &'static str {
        match self {
            SqlState::Off => "off",
            SqlState::Connecting => "connecting",
            SqlState::Exporting => "exporting",
            SqlState::Waiting => "waiting",
        }
    }
}

/// What the export has done; shown by the console and the API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SqlExportStatus {
    pub state: SqlState,
    /// Why the last attempt failed.
    pub error: Option<String>,
    pub error_at: Option<u64>,
    pub connected_since: Option<u64>,
    /// The last commit.
    pub last_export_at: Option<u64>,
    /// Every minute before this time (UNIX seconds) is in the database.
    pub metrics_through: Option<u64>,
    /// Finished minutes not yet in the database (as of the answer).
    pub lag_minutes: u64,
    /// Sample rows and inventory changes written since the controller started.
    pub sample_rows: u64,
    pub inventory_changes: u64,
    /// Minutes the database was away for longer than the minute archive
    /// keeps them: these were skipped.
    pub skipped_minutes: u64,
    pub retry_in_secs: Option<u64>,
}

pub struct SqlExport {
    store: Store,
    target: Mutex<Option<SqlTarget>>,
    status: Mutex<SqlExportStatus>,
    /// Told when the target changes.
    pub(crate) changed: tokio::sync::Notify,
    generation: std::sync::atomic::AtomicU64,
}

impl SqlExport {
    pub fn load(store: Store) -> Result<SqlExport, StoreError> {
        let target = store
            .load::<SqlTarget>(Table::Exports)?
            .into_iter()
            .find(|(k, _)| k == TARGET_KEY)
            .map(|(_, t)| t);
        Ok(SqlExport {
            store,
            target: Mutex::new(target),
            status: Mutex::new(SqlExportStatus::default()),
            changed: tokio::sync::Notify::new(),
            generation: Default::default(),
        })
    }

    pub fn target(&self) -> Option<SqlTarget> {
        self.target.lock().expect("sql export lock").clone()
    }

    /// Replaces (`Some`) or removes the target; a running session ends.
    pub async fn set_target(&self, target: Option<SqlTarget>) -> Result<(), StoreError> {
        let write = match &target {
            Some(t) => Write::put(Table::Exports, TARGET_KEY, t),
            None => Write::delete(Table::Exports, TARGET_KEY),
        };
        self.store.commit(vec![write]).await?;
        *self.target.lock().expect("sql export lock") = target;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.changed.notify_one();
        Ok(())
    }

    /// Bumped by every change of the target.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn status(&self) -> SqlExportStatus {
        self.status.lock().expect("sql export lock").clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut SqlExportStatus)) {
        f(&mut self.status.lock().expect("sql export lock"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(url: &str) -> SqlTargetInput {
        SqlTargetInput {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_state_reads_as_the_api_shows_it() {
        for state in [
            SqlState::Off,
            SqlState::Connecting,
            SqlState::Exporting,
            SqlState::Waiting,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }

    #[test]
    fn a_target_names_one_tcp_server_a_user_and_a_database_and_no_password() {
        assert!(input("postgresql://lifeboat@db.example:5432/estate")
            .validate()
            .is_ok());
        assert!(input("postgres://lifeboat@10.0.0.5/estate")
            .validate()
            .is_ok());
        for (url, want) in [
            ("postgresql://lifeboat:pw@db/estate", "password"),
            ("postgresql://db/estate", "user"),
            ("postgresql://lifeboat@db", "database"),
            ("host=db user=x dbname=y", "postgresql://"),
            ("postgresql://lifeboat@%2Frun%2Fpostgresql/estate", "TCP"),
            ("postgresql://lifeboat@a,b/estate", "one server"),
            ("postgresql://lifeboat@db/estate?sslmode=disable", "tls"),
            ("postgresql://lifeboat@db:99999/estate", "url"),
        ] {
            let err = input(url).validate().unwrap_err();
            assert!(err.starts_with("url:"), "{url}: {err}");
            assert!(err.contains(want), "{url}: {err}");
        }
        let mut bad_ca = input("postgresql://lifeboat@db/estate");
        bad_ca.ca_pem = "not a certificate".into();
        assert!(bad_ca.validate().unwrap_err().starts_with("ca_pem:"));
    }
}

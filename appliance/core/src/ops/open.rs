//! Opening a controller: the data directory (private, 0700), the CA, the
//! store and every domain module loaded from it, wired into one [`Ops`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Ops, OpsError};
use crate::access::audit::AuditLog;
use crate::access::Access;
use crate::access::Principal;
use crate::backup::datastores::Datastores;
use crate::hub::enrollment::EnrollmentTokens;
use crate::hub::Hub;
use crate::inventory::Inventory;
use crate::jobs::Jobs;
use crate::pki::Pki;
use crate::secrets::Secrets;
use crate::store::book::Book;
use crate::store::{Store, Table};

/// Where the controller lives and what it listens for.
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    /// Port agents dial (shown in enrollment commands).
    pub agent_port: u16,
    /// Directories under which local datastores may be added; empty: the
    /// defaults (`DATA_DIR/datastores` and `/srv/lifeboat`).
    pub datastore_roots: Vec<PathBuf>,
    /// The first administrator's password when no user exists yet; `None`
    /// makes one up.
    pub admin_password: Option<String>,
    /// The static agent to serve for download; `None`: no download.
    pub agent_binary: Option<PathBuf>,
}

/// A freshly opened controller.
pub struct Opened {
    pub ops: Arc<Ops>,
    /// Set when this start created `admin` with a made-up password, and
    /// where that password was written (0600).
    pub initial_admin_password: Option<(String, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct OpenError {
    what: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn context<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> OpenError {
    let what = what.into();
    move |e| OpenError {
        what,
        source: Box::new(e),
    }
}

/// The name of the file holding a made-up first admin password.
pub(super) const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";

impl Ops {
    pub fn open(config: ControllerConfig) -> Result<Opened, OpenError> {
        let data_dir = config.data_dir;
        // It holds the store, keys and sealed secrets.
        lifeboat_os::durable::private_dir(&data_dir)
            .map_err(context(format!("data directory {}", data_dir.display())))?;
        let pki = Arc::new(Pki::load_or_create(&data_dir.join("tls")).map_err(context("CA"))?);
        let store = Store::open(&data_dir.join("lifeboat.redb"))
            .map_err(context("cannot open the store"))?;
        tracing::info!(
            "store schema version {}",
            store.schema_version().map_err(context("store"))?
        );
        let access = Access::load(store.clone()).map_err(context("users"))?;
        let generated = access
            .ensure_admin(config.admin_password)
            .map_err(context("first administrator"))?;
        let (sink, alert_events) = crate::alerts::Sink::channel();
        let inventory = Arc::new(Inventory::load(store.clone()).map_err(context("inventory"))?);
        let tokens = EnrollmentTokens::load(store.clone()).map_err(context("enrollment"))?;
        let metrics = Arc::new(
            crate::metrics::Metrics::load(store.clone(), crate::clock::unix_now())
                .map_err(context("metrics"))?,
        );
        let hub = Arc::new(Hub::new(
            inventory.clone(),
            metrics.clone(),
            pki.clone(),
            tokens,
            sink.clone(),
        ));
        let datastore_roots = if config.datastore_roots.is_empty() {
            vec![data_dir.join("datastores"), PathBuf::from("/srv/lifeboat")]
        } else {
            config.datastore_roots
        };
        let agent_download = match &config.agent_binary {
            Some(path) => Some(
                super::downloads::AgentDownload::load(path)
                    .map_err(context(format!("agent binary {}", path.display())))?,
            ),
            None => None,
        };
        let ops = Ops {
            audit: AuditLog::load(store.clone()).map_err(context("audit log"))?,
            jobs: Arc::new(Jobs::load(store.clone(), sink.clone()).map_err(context("jobs"))?),
            datastores: Datastores::open(&data_dir, datastore_roots, store.clone())
                .map_err(context("datastores"))?,
            ha: crate::ha::Ha::load(store.clone(), sink.clone()).map_err(context("HA settings"))?,
            alerts: crate::alerts::Alerts::load(store.clone()).map_err(context("alerts"))?,
            alert_events: std::sync::Mutex::new(Some(alert_events)),
            snmp_notifier: std::sync::OnceLock::new(),
            log: std::sync::OnceLock::new(),
            logging: Book::load(store.clone(), Table::Logging).map_err(context("store"))?,
            forward_error: std::sync::Mutex::default(),
            sink,
            policies: Book::load(store.clone(), Table::BackupPolicies).map_err(context("store"))?,
            vm_tags: Book::load(store.clone(), Table::VmCategories).map_err(context("store"))?,
            category_rules: Book::load(store.clone(), Table::CategoryRules)
                .map_err(context("store"))?,
            directories: Book::load(store.clone(), Table::Directories).map_err(context("store"))?,
            secrets: Arc::new(Secrets::load_or_create(&data_dir).map_err(context("secret key"))?),
            sql: crate::sql_export::SqlExport::load(store.clone())
                .map_err(context("SQL export"))?,
            snmp: crate::snmp::Snmp::load(store.clone()).map_err(context("SNMP settings"))?,
            access,
            inventory,
            hub,
            metrics,
            pki,
            agent_port: config.agent_port,
            agent_download,
            data_dir,
        };
        // Written last: once it is there, the data directory is complete.
        let initial_admin_password = match generated {
            Some(password) => {
                let path = ops.data_dir.join(INITIAL_PASSWORD_FILE);
                write_private(&path, &format!("{password}\n"))
                    .map_err(context(format!("cannot write {}", path.display())))?;
                Some((password, path))
            }
            None => None,
        };
        Ok(Opened {
            ops: Arc::new(ops),
            initial_admin_password,
        })
    }

    /// Starts what the controller does on its own: the backup scheduler
    /// (every 15 s) and the HA engine. Call once, inside the runtime.
    pub fn start_background_work(self: &Arc<Self>) {
        let scheduled = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
            loop {
                tick.tick().await;
                scheduled.scheduler_tick().await;
            }
        });
        tokio::spawn(self.clone().ha_loop());
        tokio::spawn(self.clone().sql_export_loop());
        tokio::spawn(self.clone().alert_loop());
        tokio::spawn(self.clone().delivery_loop());
        tokio::spawn(self.clone().condition_loop());
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let period = std::time::Duration::from_secs(crate::metrics::FLUSH_INTERVAL_SECS);
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                if let Err(e) = metrics.flush(crate::clock::unix_now()).await {
                    tracing::error!("cannot write metric archives: {e}");
                }
            }
        });
    }

    /// Removes the file holding the made-up first admin password, once
    /// that password has been changed: it no longer opens anything, and a
    /// stale secret lying around invites mistakes.
    pub(super) fn forget_initial_password(&self) {
        let path = self.data_dir.join(INITIAL_PASSWORD_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!("removed {}: the admin password was changed", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
        }
    }

    /// The appliance console's password reset (whoever has the local
    /// console owns the machine): `admin` gets a new made-up password,
    /// written where the first one was (0600, shown by the console menu
    /// until changed). Audited as the console.
    pub async fn reset_admin_password_from_console(&self) -> Result<PathBuf, OpsError> {
        let console = Principal::system("appliance-console", "console");
        let password = Access::made_up_password();
        let path = self.data_dir.join(INITIAL_PASSWORD_FILE);
        let result = self.access.reset_admin(password.clone()).await;
        let outcome = result.as_ref().map(|_| ()).map_err(ToString::to_string);
        self.audit
            .record(
                &console,
                "reset admin password",
                crate::access::ADMIN,
                &outcome,
            )
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))?;
        result.map_err(OpsError::from)?;
        write_private(&path, &format!("{password}\n"))
            .map_err(|e| OpsError::Internal(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    }

    /// The console's HTTPS configuration.
    pub fn web_tls_config(&self) -> Result<rustls::ServerConfig, crate::pki::TlsSetupError> {
        self.pki.web_server_config()
    }

    /// `sha256:<hex>` of the controller's CA, what agents pin.
    pub fn ca_fingerprint(&self) -> String {
        self.pki.ca_fingerprint()
    }

    /// Accepts agent connections on `listener` forever.
    pub async fn serve_agents(
        &self,
        listener: tokio::net::TcpListener,
    ) -> Result<(), crate::pki::TlsSetupError> {
        self.hub.clone().serve(listener).await
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    lifeboat_os::durable::AtomicWrite::new(0o600).write(path, contents.as_bytes())
}

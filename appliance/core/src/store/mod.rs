//! The only code that opens redb transactions. Owns the database file, its
//! schema version and the group-commit writer.
//!
//! Guarantee: when [`Store::commit`] returns `Ok`, the writes are durable
//! (fsync'd by redb). Concurrent callers share one transaction per batch, so a
//! burst of agent updates costs one fsync, not one each.

pub mod book;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;

/// Schema version written into every new database; bump with a migration.
pub const SCHEMA_VERSION: u32 = 1;

/// Most writes one group commit takes before it commits.
const MAX_BATCH: usize = 4096;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Fixed-size binary records patched in place (the metric archives'
/// blocks, see [`Write::Patch`]); their owner defines the format.
const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("metric_blocks");

/// The typed tables. Every value is the JSON form of the owning module's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Users,
    Sessions,
    EnrollmentTokens,
    Hosts,
    Vms,
    Jobs,
    Audit,
    BackupPolicies,
    Datastores,
    HaSettings,
    HostHa,
    VmHa,
    Failovers,
    PhysicalMachines,
    HaEvents,
    HaProtected,
    Roles,
    AccessPolicies,
    VmCategories,
    CategoryRules,
    Directories,
    ApiTokens,
    HaEpochs,
    /// Metrics settings and the consolidation cursor.
    Metrics,
    /// Every object with metric archives, and when it last reported.
    MetricObjects,
    /// Export targets (the SQL database).
    Exports,
    /// SNMP agent settings, engine state and table indices.
    Snmp,
    /// Alert history, each alert with its deliveries (the queue).
    Alerts,
    AlertRules,
    AlertChannels,
    /// The controller's log level and syslog forwarding.
    Logging,
}

impl Table {
    const ALL: [Table; 31] = [
        Table::Users,
        Table::Sessions,
        Table::EnrollmentTokens,
        Table::Hosts,
        Table::Vms,
        Table::Jobs,
        Table::Audit,
        Table::BackupPolicies,
        Table::Datastores,
        Table::HaSettings,
        Table::HostHa,
        Table::VmHa,
        Table::Failovers,
        Table::PhysicalMachines,
        Table::HaEvents,
        Table::HaProtected,
        Table::Roles,
        Table::AccessPolicies,
        Table::VmCategories,
        Table::CategoryRules,
        Table::Directories,
        Table::ApiTokens,
        Table::HaEpochs,
        Table::Metrics,
        Table::MetricObjects,
        Table::Exports,
        Table::Snmp,
        Table::Alerts,
        Table::AlertRules,
        Table::AlertChannels,
        Table::Logging,
    ];

    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Table::Users => "users",
            Table::Sessions => "sessions",
            Table::EnrollmentTokens => "enrollment_tokens",
            Table::Hosts => "hosts",
            Table::Vms => "vms",
            Table::Jobs => "jobs",
            Table::Audit => "audit",
            Table::BackupPolicies => "backup_policies",
            Table::Datastores => "datastores",
            Table::HaSettings => "ha_settings",
            Table::HostHa => "host_ha",
            Table::VmHa => "vm_ha",
            Table::Failovers => "failovers",
            Table::PhysicalMachines => "physical_machines",
            Table::HaEvents => "ha_events",
            Table::HaProtected => "ha_protected",
            Table::Roles => "roles",
            Table::AccessPolicies => "access_policies",
            Table::VmCategories => "vm_categories",
            Table::CategoryRules => "category_rules",
            Table::Directories => "directories",
            Table::ApiTokens => "api_tokens",
            Table::HaEpochs => "ha_epochs",
            Table::Metrics => "metrics",
            Table::MetricObjects => "metric_objects",
            Table::Exports => "exports",
            Table::Snmp => "snmp",
            Table::Alerts => "alerts",
            Table::AlertRules => "alert_rules",
            Table::AlertChannels => "alert_channels",
            Table::Logging => "logging",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    #[error("record in table {table:?} under {key:?} is corrupt: {source}")]
    Corrupt {
        table: Table,
        key: String,
        source: serde_json::Error,
    },
    #[error("database schema version {found} is newer than this controller's {SCHEMA_VERSION}")]
    NewerSchema { found: u32 },
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("commit failed: {0}")]
    CommitFailed(String),
    #[error("cannot start the store writer: {0}")]
    Spawn(std::io::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Makes a block's new bytes from its current ones, inside the commit.
pub type BlockUpdate = Box<dyn FnOnce(Option<&[u8]>) -> Option<Vec<u8>> + Send>;

/// One change to apply inside a group commit.
pub enum Write {
    Put {
        table: Table,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: String,
    },
    /// Replaces the binary block under `key` by what `update` makes of
    /// it (its owner defines the format); `None` leaves it as it is.
    Update {
        key: String,
        update: BlockUpdate,
    },
    DeleteBlock {
        key: String,
    },
    /// Makes the group commit it is in fail: for tests of what a failed
    /// commit leaves behind.
    #[cfg(test)]
    Fail,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Write::Put { table, key, value } => {
                write!(f, "put {table:?}/{key} ({} bytes)", value.len())
            }
            Write::Delete { table, key } => write!(f, "delete {table:?}/{key}"),
            Write::Update { key, .. } => write!(f, "update block {key}"),
            Write::DeleteBlock { key } => write!(f, "delete block {key}"),
            #[cfg(test)]
            Write::Fail => write!(f, "fail"),
        }
    }
}

impl Write {
    pub fn put<T: Serialize>(table: Table, key: impl Into<String>, value: &T) -> Write {
        Write::Put {
            table,
            key: key.into(),
            // Serialising our own plain records cannot fail.
            value: serde_json::to_vec(value).expect("record serialises"),
        }
    }

    pub fn delete(table: Table, key: impl Into<String>) -> Write {
        Write::Delete {
            table,
            key: key.into(),
        }
    }
}

type Ack = oneshot::Sender<Result<(), String>>;

type Queue = std::sync::mpsc::Sender<(Vec<Write>, Ack)>;

/// Cheap to clone; the last clone to go closes the queue and waits for the
/// writer to finish, so every queued write is committed before the file closes.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    writer: Option<Queue>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the database and starts its writer thread.
    /// Opens (or creates) the store; the file is made 0600 whatever the
    /// umask: it holds password hashes and every setting.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Arc::new(Database::create(path)?);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Db(redb::Error::Io(e)))?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get("schema_version")?
                .map(|v| v.value().parse::<u32>().unwrap_or(u32::MAX));
            match found {
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::NewerSchema { found: v }),
                Some(_) => {}
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION.to_string().as_str())?;
                }
            }
            for table in Table::ALL {
                txn.open_table(table.definition())?;
            }
            txn.open_table(BLOCKS)?;
        }
        txn.commit()?;

        let (tx, rx) = std::sync::mpsc::channel::<(Vec<Write>, Ack)>();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(&writer_db, rx))
            .map_err(StoreError::Spawn)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                writer: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta
            .get("schema_version")?
            .and_then(|v| v.value().parse().ok())
            .unwrap_or(0))
    }

    /// Reads a whole table. Blocking: call at start-up or from `spawn_blocking`.
    pub fn load<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let t = txn.open_table(table.definition())?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let key = k.value().to_string();
            let value =
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                    table,
                    key: key.clone(),
                    source,
                })?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// The blocks under `keys`, in one read transaction. Blocking.
    pub fn read_blocks(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let t = txn.open_table(BLOCKS)?;
        keys.iter()
            .map(|k| Ok(t.get(k.as_str())?.map(|v| v.value().to_vec())))
            .collect()
    }

    /// Keys of every block whose key starts with `prefix`. Blocking.
    pub fn block_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let t = txn.open_table(BLOCKS)?;
        let mut keys = Vec::new();
        for row in t.range(prefix..)? {
            let (k, _) = row?;
            if !k.value().starts_with(prefix) {
                break;
            }
            keys.push(k.value().to_string());
        }
        Ok(keys)
    }

    /// Queues writes for the next group commit and waits until they are durable.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let rx = self.enqueue(writes)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StoreError::CommitFailed(msg)),
            Err(_) => Err(StoreError::WriterGone),
        }
    }

    /// Blocking form of [`Store::commit`], for start-up code outside the runtime.
    pub fn commit_blocking(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let rx = self.enqueue(writes)?;
        match rx.blocking_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StoreError::CommitFailed(msg)),
            Err(_) => Err(StoreError::WriterGone),
        }
    }

    /// Queues writes and returns the receiver of their acknowledgement. Callers
    /// that enqueue under their own lock keep the commit order equal to the
    /// order of their in-memory updates.
    pub fn enqueue(
        &self,
        writes: Vec<Write>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, StoreError> {
        let (ack, rx) = oneshot::channel();
        self.inner
            .writer
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .send((writes, ack))
            .map_err(|_| StoreError::WriterGone)?;
        Ok(rx)
    }
}

fn run_writer(db: &Database, rx: std::sync::mpsc::Receiver<(Vec<Write>, Ack)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut count = batch[0].0.len();
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => {
                    count += next.0.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (writes, acks): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let result = apply_batch(db, writes).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!("group commit of {count} writes failed: {e}");
        }
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

fn apply_batch(db: &Database, batch: Vec<Vec<Write>>) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    for writes in batch {
        for w in writes {
            match w {
                Write::Put { table, key, value } => {
                    txn.open_table(table.definition())?
                        .insert(key.as_str(), value.as_slice())?;
                }
                Write::Delete { table, key } => {
                    txn.open_table(table.definition())?.remove(key.as_str())?;
                }
                Write::Update { key, update } => {
                    let mut t = txn.open_table(BLOCKS)?;
                    let current = t.get(key.as_str())?.map(|v| v.value().to_vec());
                    if let Some(new) = update(current.as_deref()) {
                        t.insert(key.as_str(), new.as_slice())?;
                    }
                }
                Write::DeleteBlock { key } => {
                    txn.open_table(BLOCKS)?.remove(key.as_str())?;
                }
                #[cfg(test)]
                Write::Fail => return Err(StoreError::CommitFailed("injected failure".into())),
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lifeboat-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("test.redb")
    }

    #[tokio::test]
    async fn committed_writes_survive_reopen() {
        let path = temp_path("reopen");
        {
            let store = Store::open(&path).unwrap();
            store
                .commit(vec![Write::put(
                    Table::Hosts,
                    "h1",
                    &serde_json::json!({"n": 1}),
                )])
                .await
                .unwrap();
            store
                .commit(vec![
                    Write::put(Table::Hosts, "h2", &serde_json::json!({"n": 2})),
                    Write::delete(Table::Hosts, "h1"),
                ])
                .await
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let rows: Vec<(String, serde_json::Value)> = store.load(Table::Hosts).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, "h2");
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn concurrent_commits_are_all_acknowledged() {
        let store = Store::open(&temp_path("concurrent")).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.commit(vec![Write::put(Table::Vms, format!("vm{i:03}"), &i)])
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let rows: Vec<(String, u32)> = store.load(Table::Vms).unwrap();
        assert_eq!(rows.len(), 200);
    }

    #[test]
    fn block_updates_see_the_current_bytes_and_may_leave_them() {
        let store = Store::open(&temp_path("blocks")).unwrap();
        let append = |byte: u8| Write::Update {
            key: "b/1".into(),
            update: Box::new(move |old: Option<&[u8]>| {
                let mut v = old.map(<[u8]>::to_vec).unwrap_or_default();
                v.push(byte);
                Some(v)
            }),
        };
        store.commit_blocking(vec![append(1), append(2)]).unwrap();
        store
            .commit_blocking(vec![Write::Update {
                key: "b/1".into(),
                update: Box::new(|_| None),
            }])
            .unwrap();
        let block = store.read_blocks(&["b/1".into()]).unwrap().remove(0);
        assert_eq!(block, Some(vec![1, 2]));
        assert_eq!(store.block_keys("b/").unwrap(), vec!["b/1".to_string()]);
        assert!(store.block_keys("c/").unwrap().is_empty());
        store
            .commit_blocking(vec![Write::DeleteBlock { key: "b/1".into() }])
            .unwrap();
        assert_eq!(store.read_blocks(&["b/1".into()]).unwrap(), vec![None]);
    }

    #[test]
    fn corrupt_record_is_reported_not_panicked() {
        let store = Store::open(&temp_path("corrupt")).unwrap();
        store
            .commit_blocking(vec![Write::Put {
                table: Table::Users,
                key: "x".into(),
                value: b"not json".to_vec(),
            }])
            .unwrap();
        let err = store.load::<serde_json::Value>(Table::Users).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
    }
}

//! The controller's configured datastores by name: the built-in `local` in the
//! data directory, local directories under the allowed roots, and NFS or SMB
//! shares the kernel mounts at `DATA_DIR/mnt/<name>`. The configuration is in
//! the store, so it survives restarts; shares are mounted again at start.
//!
//! Guarantees: a local path is canonical, inside an allowed root, and overlaps
//! no other datastore; a share that is not mounted is never handed out to
//! write into (it is listed unreachable with its mount error); the SMB
//! password is stored sealed (`crate::secrets`) and is in clear only in memory
//! and in the mount(2) call itself; incomplete backups
//! (no manifest) are removed when a datastore opens.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

// Declared here rather than in `backup/mod.rs`: mounting serves only this
// registry.
#[path = "location.rs"]
mod location;
#[path = "mount.rs"]
pub mod mount;
pub use location::{DatastoreInput, Location};

use self::mount::{MountError, SmbLogin};
use super::{BackupError, Datastore};
use crate::secrets::{Secrets, SecretsError};
use crate::store::{Store, StoreError, Table, Write};

pub const DEFAULT_DATASTORE: &str = "local";
/// Shares are mounted below this directory of the data directory.
const MOUNT_DIR: &str = "mnt";

/// Whether a datastore can be used now.
#[derive(Clone)]
pub enum Health {
    Ready(Arc<Datastore>),
    /// Being mounted or removed; neither used nor changed meanwhile.
    Pending(&'static str),
    Unreachable(String),
}

/// One configured datastore as listed.
#[derive(Clone)]
pub struct DatastoreEntry {
    pub name: String,
    pub location: Location,
    /// Where its files are: the local directory or the mount point.
    pub root: PathBuf,
    pub health: Health,
}

impl DatastoreEntry {
    pub fn built_in(&self) -> bool {
        self.name == DEFAULT_DATASTORE
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatastoresError {
    #[error("{0}")]
    Invalid(String),
    #[error("no datastore named {0:?}")]
    NotFound(String),
    #[error("a datastore named {0:?} already exists")]
    Duplicate(String),
    #[error("datastore {name} is unreachable: {error}")]
    Unreachable { name: String, error: String },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Backup(#[from] BackupError),
}

impl From<MountError> for DatastoresError {
    fn from(e: MountError) -> Self {
        DatastoresError::Invalid(e.to_string())
    }
}

/// Cheap to clone; reads take a shared lock on an in-memory map.
#[derive(Clone)]
pub struct Datastores {
    inner: Arc<Inner>,
}

struct Inner {
    /// Canonical.
    data_dir: PathBuf,
    /// Local datastores must lie under one of these.
    roots: Vec<PathBuf>,
    store: Store,
    /// Loaded (and the key file created) on first use.
    secrets: Mutex<Option<Arc<Secrets>>>,
    entries: RwLock<BTreeMap<String, DatastoreEntry>>,
}

type Map = BTreeMap<String, DatastoreEntry>;

impl Datastores {
    /// Opens the built-in `local` datastore and every configured one, and
    /// starts mounting the shares in the background, so a dead NFS server
    /// cannot hold up the controller's start. Call before any backup can run.
    pub fn open(
        data_dir: &Path,
        roots: Vec<PathBuf>,
        store: Store,
    ) -> Result<Datastores, DatastoresError> {
        let data_dir = data_dir.canonicalize().map_err(super::io_at(data_dir))?;
        let local_root = data_dir.join("datastores").join(DEFAULT_DATASTORE);
        let local = open_store(&local_root)?;
        let mut entries = BTreeMap::new();
        entries.insert(
            DEFAULT_DATASTORE.to_string(),
            DatastoreEntry {
                name: DEFAULT_DATASTORE.to_string(),
                location: Location::Local {
                    path: local_root.clone(),
                },
                root: local_root,
                health: Health::Ready(Arc::new(local)),
            },
        );
        mount::sweep_credentials(&data_dir.join(MOUNT_DIR));
        let mut shares = Vec::new();
        for (name, location) in store.load::<Location>(Table::Datastores)? {
            let root = root_of(&data_dir, &name, &location);
            let health = match &location {
                // Never re-created at start: a missing directory is more
                // likely a disk that did not come up than one to start over.
                Location::Local { path } if !path.join(".chunks").is_dir() => {
                    let error = format!("{} is missing or not a datastore", path.display());
                    tracing::warn!(datastore = name, "{error}");
                    Health::Unreachable(error)
                }
                Location::Local { path } => match open_store(path) {
                    Ok(s) => Health::Ready(Arc::new(s)),
                    Err(e) => {
                        tracing::warn!(datastore = name, "cannot open: {e}");
                        Health::Unreachable(e.to_string())
                    }
                },
                _ => {
                    shares.push(name.clone());
                    Health::Pending("mounting")
                }
            };
            entries.insert(
                name.clone(),
                DatastoreEntry {
                    name,
                    location,
                    root,
                    health,
                },
            );
        }
        let datastores = Datastores {
            inner: Arc::new(Inner {
                data_dir,
                roots,
                store,
                secrets: Mutex::new(None),
                entries: RwLock::new(entries),
            }),
        };
        for name in shares {
            let ds = datastores.clone();
            let n = name.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("mount {name}"))
                .spawn(move || ds.mount_now(&n));
            if let Err(e) = spawned {
                datastores.set_health(
                    &name,
                    Health::Unreachable(format!("cannot start mounting: {e}")),
                );
            }
        }
        Ok(datastores)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.inner.entries.read().expect("datastores lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Map> {
        self.inner.entries.write().expect("datastores lock")
    }

    /// A datastore that is ready, for reading and housekeeping.
    pub fn get(&self, name: impl AsRef<str>) -> Option<Arc<Datastore>> {
        match &self.read().get(name.as_ref())?.health {
            Health::Ready(store) => Some(store.clone()),
            _ => None,
        }
    }

    /// Every configured name, reachable or not.
    pub fn names(&self) -> std::vec::IntoIter<String> {
        self.read().keys().cloned().collect::<Vec<_>>().into_iter()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// Every datastore that is ready, by name.
    pub fn ready(&self) -> Vec<(String, Arc<Datastore>)> {
        self.read()
            .values()
            .filter_map(|e| match &e.health {
                Health::Ready(s) => Some((e.name.clone(), s.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every configured datastore, reachable or not, by name.
    pub fn entries(&self) -> Vec<DatastoreEntry> {
        self.read().values().cloned().collect()
    }

    pub fn entry(&self, name: &str) -> Result<DatastoreEntry, DatastoresError> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| DatastoresError::NotFound(name.to_string()))
    }

    /// The datastore to write a backup into. A share is checked to be still
    /// mounted (one read of the mount table): otherwise the backup would land
    /// on the controller's own disk under the empty mount point.
    pub fn for_backup(&self, name: &str) -> Result<Arc<Datastore>, DatastoresError> {
        let entry = self.entry(name)?;
        let unreachable = |error: String| DatastoresError::Unreachable {
            name: name.to_string(),
            error,
        };
        match entry.health {
            Health::Ready(store) => {
                if entry.location.is_share() && !mount::is_mounted(&entry.root) {
                    let error = format!("{} is no longer mounted", entry.root.display());
                    if let Some(e) = self.write().get_mut(name) {
                        if matches!(e.health, Health::Ready(_)) {
                            e.health = Health::Unreachable(error.clone());
                        }
                    }
                    return Err(unreachable(error));
                }
                Ok(store)
            }
            Health::Pending(what) => Err(unreachable(what.to_string())),
            Health::Unreachable(error) => Err(unreachable(error)),
        }
    }

    /// Checks and saves a new datastore; a share is then mounted. Blocking
    /// (a mount may take up to [`mount::MOUNT_TIMEOUT`]). A failed mount still
    /// saves the datastore, listed unreachable with the mount's error.
    pub fn add(&self, input: DatastoreInput) -> Result<DatastoreEntry, DatastoresError> {
        let name = input.name.clone();
        let location = self.check(input)?;
        let root = root_of(&self.inner.data_dir, &name, &location);
        check_free(&self.read(), &name, &root)?;
        let health = match &location {
            Location::Local { path } => {
                fs::create_dir_all(path).map_err(super::io_at(path))?;
                // A symlink swapped in since the check would show here.
                if path.canonicalize().ok().as_ref() != Some(path) {
                    return Err(DatastoresError::Invalid(format!(
                        "{} changed while being added",
                        path.display()
                    )));
                }
                Health::Ready(Arc::new(open_store(path)?))
            }
            _ => Health::Pending("mounting"),
        };
        let entry = DatastoreEntry {
            name: name.clone(),
            location,
            root,
            health,
        };
        let ack = {
            let mut map = self.write();
            check_free(&map, &name, &entry.root)?;
            let ack = self.inner.store.enqueue(vec![Write::put(
                Table::Datastores,
                name.clone(),
                &entry.location,
            )])?;
            map.insert(name.clone(), entry.clone());
            ack
        };
        if let Err(e) = wait(ack) {
            self.write().remove(&name);
            return Err(e.into());
        }
        tracing::info!(
            datastore = name,
            kind = entry.location.kind(),
            "datastore added"
        );
        if entry.location.is_share() {
            self.mount_now(&name);
        }
        self.entry(&name)
    }

    /// Removes a datastore from the configuration; its files stay where they
    /// are. Refused for the built-in one and while it holds backups; a share
    /// is unmounted first. An unreachable one can always be removed: what it
    /// holds cannot be counted, and re-adding it brings its backups back.
    pub fn remove(&self, name: &str) -> Result<(), DatastoresError> {
        if name == DEFAULT_DATASTORE {
            return Err(DatastoresError::Conflict(format!(
                "the built-in datastore {DEFAULT_DATASTORE} cannot be removed"
            )));
        }
        let (entry, previous) = self.claim(name, "being removed")?;
        let emptied = (|| {
            if let Health::Ready(store) = &previous {
                let count = store.list_all()?.len();
                if count > 0 {
                    return Err(DatastoresError::Conflict(format!(
                        "datastore {name} holds {count} backups; it can be removed once it holds none"
                    )));
                }
            }
            if entry.location.is_share() && mount::is_mounted(&entry.root) {
                mount::unmount(&entry.root).map_err(|e| {
                    DatastoresError::Conflict(format!("cannot unmount datastore {name}: {e}"))
                })?;
            }
            Ok(())
        })();
        if let Err(e) = emptied {
            self.set_health(name, previous);
            return Err(e);
        }
        if entry.location.is_share() {
            // Only ever an empty directory: never delete what a share holds.
            let _ = fs::remove_dir(&entry.root);
        }
        let ack = {
            let mut map = self.write();
            map.remove(name);
            self.inner
                .store
                .enqueue(vec![Write::delete(Table::Datastores, name)])?
        };
        wait(ack)?;
        tracing::info!(datastore = name, "datastore removed");
        Ok(())
    }

    /// Mounts a share again (after its server came back). Blocking.
    pub fn remount(&self, name: &str) -> Result<DatastoreEntry, DatastoresError> {
        let entry = self.entry(name)?;
        if !entry.location.is_share() {
            return Err(DatastoresError::Conflict(format!(
                "datastore {name} is a local directory; there is nothing to mount"
            )));
        }
        if matches!(entry.health, Health::Ready(_)) && mount::is_mounted(&entry.root) {
            return Ok(entry);
        }
        self.claim(name, "mounting")?;
        self.mount_now(name);
        self.entry(name)
    }

    /// Marks a datastore pending so nothing else uses or changes it; returns
    /// it and its health before.
    fn claim(
        &self,
        name: &str,
        what: &'static str,
    ) -> Result<(DatastoreEntry, Health), DatastoresError> {
        let mut map = self.write();
        let entry = map
            .get_mut(name)
            .ok_or_else(|| DatastoresError::NotFound(name.to_string()))?;
        if let Health::Pending(now) = entry.health {
            return Err(DatastoresError::Conflict(format!(
                "datastore {name} is {now}; try again when that is done"
            )));
        }
        let previous = std::mem::replace(&mut entry.health, Health::Pending(what));
        Ok((entry.clone(), previous))
    }

    fn set_health(&self, name: &str, health: Health) {
        if let Some(entry) = self.write().get_mut(name) {
            entry.health = health;
        }
    }

    /// Mounts the (pending) share `name` and records the outcome.
    fn mount_now(&self, name: &str) {
        let Ok(entry) = self.entry(name) else { return };
        let health = match self.mount_share(&entry) {
            Ok(store) => {
                tracing::info!(datastore = name, "mounted at {}", entry.root.display());
                Health::Ready(Arc::new(store))
            }
            Err(error) => {
                tracing::warn!(datastore = name, "cannot mount: {error}");
                Health::Unreachable(error)
            }
        };
        self.set_health(name, health);
    }

    fn mount_share(&self, entry: &DatastoreEntry) -> Result<Datastore, String> {
        let parent = self.inner.data_dir.join(MOUNT_DIR);
        for dir in [&parent, &entry.root] {
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                    return Err(format!("{}: {e}", dir.display()))
                }
                _ => {}
            }
        }
        // Still mounted from before a restart: use it as it is.
        if !mount::is_mounted(&entry.root) {
            match &entry.location {
                Location::Local { .. } => return Err("not a share".into()),
                Location::Nfs {
                    server,
                    export,
                    options,
                } => mount::mount_nfs(server, export, options, &entry.root),
                Location::Smb {
                    server,
                    share,
                    username,
                    password,
                    domain,
                    options,
                } => {
                    let clear = self
                        .secrets()
                        .and_then(|s| s.open(&password.0).map_err(Into::into))
                        .map_err(|e| format!("cannot read the stored password: {e}"))?;
                    let login = SmbLogin {
                        username,
                        password: &clear,
                        domain,
                    };
                    mount::mount_cifs(server, share, &login, options, &entry.root)
                }
            }
            .map_err(|e| e.to_string())?;
            if !mount::is_mounted(&entry.root) {
                return Err(format!(
                    "mount succeeded but nothing is mounted at {}",
                    entry.root.display()
                ));
            }
        }
        open_store(&entry.root).map_err(|e| e.to_string())
    }

    fn secrets(&self) -> Result<Arc<Secrets>, DatastoresError> {
        let mut slot = self.inner.secrets.lock().expect("secrets lock");
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(Secrets::load_or_create(&self.inner.data_dir)?);
        *slot = Some(s.clone());
        Ok(s)
    }
}

fn root_of(data_dir: &Path, name: &str, location: &Location) -> PathBuf {
    match location {
        Location::Local { path } => path.clone(),
        _ => data_dir.join(MOUNT_DIR).join(name),
    }
}

/// Refuses a taken name, and a root inside, around or equal to another's:
/// two datastores sharing files would collect each other's garbage.
fn check_free(map: &Map, name: &str, root: &Path) -> Result<(), DatastoresError> {
    if map.contains_key(name) {
        return Err(DatastoresError::Duplicate(name.to_string()));
    }
    if let Some(other) = map
        .values()
        .find(|e| root.starts_with(&e.root) || e.root.starts_with(root))
    {
        return Err(DatastoresError::Conflict(format!(
            "{} overlaps datastore {} at {}",
            root.display(),
            other.name,
            other.root.display()
        )));
    }
    Ok(())
}

fn open_store(root: &Path) -> Result<Datastore, BackupError> {
    let store = Datastore::create_or_open(root)?;
    for (vm, id) in store.cleanup_incomplete()? {
        tracing::warn!(
            vm = vm.as_str(),
            id = id.as_str(),
            "removed an incomplete backup"
        );
    }
    Ok(store)
}

fn wait(ack: tokio::sync::oneshot::Receiver<Result<(), String>>) -> Result<(), StoreError> {
    ack.blocking_recv()
        .map_err(|_| StoreError::WriterGone)?
        .map_err(StoreError::CommitFailed)
}

/// Capacity of the filesystem a datastore lives on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capacity {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// Reads the capacity; an unreachable datastore is an error, not zeros.
pub fn capacity(store: &Datastore) -> std::io::Result<Capacity> {
    let st = nix::sys::statvfs::statvfs(store.root()).map_err(std::io::Error::from)?;
    let block = st.fragment_size() as u64;
    Ok(Capacity {
        total_bytes: st.blocks() as u64 * block,
        free_bytes: st.blocks_available() as u64 * block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_may_not_overlap() {
        let entry = |name: &str, root: &str| DatastoreEntry {
            name: name.into(),
            location: Location::Local { path: root.into() },
            root: root.into(),
            health: Health::Pending("test"),
        };
        let map: Map = [entry("a", "/srv/a"), entry("b", "/srv/b/inner")]
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        let free = |name: &str, root: &str| check_free(&map, name, Path::new(root));
        assert!(free("c", "/srv/c").is_ok());
        assert!(free("c", "/srv/ab").is_ok());
        assert!(matches!(
            free("a", "/srv/c"),
            Err(DatastoresError::Duplicate(_))
        ));
        for clash in ["/srv/a", "/srv/a/x", "/srv/b", "/srv"] {
            assert!(
                matches!(free("c", clash), Err(DatastoresError::Conflict(_))),
                "{clash}"
            );
        }
    }
}

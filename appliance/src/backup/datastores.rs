//! The controller's configured datastores by name. Out of the box there is
//! one, `local`, inside the data directory, so a first backup needs no setup.
//! Incomplete backups (no manifest) left by a crash are removed at start.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{Datastore, Result};

pub const DEFAULT_DATASTORE: &str = "local";

pub struct Datastores {
    by_name: BTreeMap<String, Arc<Datastore>>,
}

impl Datastores {
    /// Opens the built-in `local` datastore under `data_dir` and cleans up
    /// what interrupted backups left. Call before any backup can run.
    pub fn open(data_dir: &Path) -> Result<Datastores> {
        let local =
            Datastore::create_or_open(&data_dir.join("datastores").join(DEFAULT_DATASTORE))?;
        for (vm, id) in local.cleanup_incomplete()? {
            tracing::warn!(
                vm = vm.as_str(),
                id = id.as_str(),
                "removed an incomplete backup"
            );
        }
        let mut by_name = BTreeMap::new();
        by_name.insert(DEFAULT_DATASTORE.to_string(), Arc::new(local));
        Ok(Datastores { by_name })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Datastore>> {
        self.by_name.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
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

//! A keyed collection of records kept in memory and in one store table:
//! readers never touch redb, and a change is committed before it returns.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Store, StoreError, Table, Write};

pub struct Book<T> {
    store: Store,
    table: Table,
    records: RwLock<BTreeMap<String, T>>,
}

impl<T: Clone + Serialize + DeserializeOwned> Book<T> {
    pub fn load(store: Store, table: Table) -> Result<Book<T>, StoreError> {
        let records = store.load(table)?.into_iter().collect();
        Ok(Book {
            store,
            table,
            records: RwLock::new(records),
        })
    }

    pub fn all(&self) -> Vec<T> {
        self.read().values().cloned().collect()
    }

    pub fn entries(&self) -> Vec<(String, T)> {
        self.read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// The `n` smallest keys (the oldest, for time-ordered keys).
    pub fn first_keys(&self, n: usize) -> Vec<String> {
        self.read().keys().take(n).cloned().collect()
    }

    pub fn get(&self, key: &str) -> Option<T> {
        self.read().get(key).cloned()
    }

    pub async fn put(&self, key: &str, record: T) -> Result<(), StoreError> {
        let ack = {
            let mut map = self.records.write().expect("book lock");
            let ack = self
                .store
                .enqueue(vec![Write::put(self.table, key, &record)])?;
            map.insert(key.to_string(), record);
            ack
        };
        ack.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::CommitFailed)
    }

    /// False when there was nothing under `key`.
    pub async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let ack = {
            let mut map = self.records.write().expect("book lock");
            if map.remove(key).is_none() {
                return Ok(false);
            }
            self.store.enqueue(vec![Write::delete(self.table, key)])?
        };
        ack.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::CommitFailed)?;
        Ok(true)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, T>> {
        self.records.read().expect("book lock")
    }
}

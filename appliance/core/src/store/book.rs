//! A keyed collection of records kept in memory and in one store table:
//! readers never touch redb, and a change is committed before it returns.
//! Readers see only committed state: a change reaches the in-memory copy
//! after its commit succeeds, and never if it fails. Changes are queued in
//! the order they are made and numbered, so a change to a key never
//! replaces a later one in memory, whatever order their callers resume in.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Store, StoreError, Table, Write};

pub struct Book<T> {
    store: Store,
    table: Table,
    records: RwLock<BTreeMap<String, T>>,
    /// Numbers changes as they are queued; per key, the number of the
    /// change the in-memory copy shows.
    order: Mutex<(u64, HashMap<String, u64>)>,
    /// Held by [`Book::update`] from its read to its commit.
    updating: tokio::sync::Mutex<()>,
}

impl<T: Clone + Serialize + DeserializeOwned> Book<T> {
    pub fn load(store: Store, table: Table) -> Result<Book<T>, StoreError> {
        let records = store.load(table)?.into_iter().collect();
        Ok(Book {
            store,
            table,
            records: RwLock::new(records),
            order: Mutex::new((0, HashMap::new())),
            updating: tokio::sync::Mutex::new(()),
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
        let write = Write::put(self.table, key, &record);
        self.change(key, write, Some(record)).await
    }

    /// Changes the record under `key` in place and commits it; updates are
    /// serialised, so two of them never both start from the same copy and
    /// lose one change. `None` when there is no such record, or when `f`
    /// returns `None` (nothing to write).
    pub async fn update<R>(
        &self,
        key: &str,
        f: impl FnOnce(&mut T) -> Option<R>,
    ) -> Result<Option<R>, StoreError> {
        let _turn = self.updating.lock().await;
        let Some(mut record) = self.get(key) else {
            return Ok(None);
        };
        let Some(result) = f(&mut record) else {
            return Ok(None);
        };
        self.put(key, record).await?;
        Ok(Some(result))
    }

    /// False when there was nothing under `key`.
    pub async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        if !self.read().contains_key(key) {
            return Ok(false);
        }
        self.change(key, Write::delete(self.table, key), None)
            .await?;
        Ok(true)
    }

    /// Queues `write`, waits for its commit, then shows `after` (a record,
    /// or `None`: gone) unless a later change to `key` is already shown.
    async fn change(&self, key: &str, write: Write, after: Option<T>) -> Result<(), StoreError> {
        let (seq, ack) = {
            let mut order = self.order.lock().expect("book order lock");
            order.0 += 1;
            (order.0, self.store.enqueue(vec![write])?)
        };
        ack.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::CommitFailed)?;
        let mut order = self.order.lock().expect("book order lock");
        let shown = order.1.entry(key.to_string()).or_insert(0);
        if *shown < seq {
            *shown = seq;
            let mut map = self.records.write().expect("book lock");
            match after {
                Some(record) => map.insert(key.to_string(), record),
                None => map.remove(key),
            };
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, T>> {
        self.records.read().expect("book lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(name: &str) -> Book<u32> {
        let dir = std::env::temp_dir().join(format!("lifeboat-book-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Book::load(Store::open(&dir.join("b.redb")).unwrap(), Table::Roles).unwrap()
    }

    #[tokio::test]
    async fn concurrent_updates_lose_nothing() {
        let book = std::sync::Arc::new(book("updates"));
        book.put("k", 0).await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let book = book.clone();
                tokio::spawn(async move {
                    book.update("k", |n| {
                        *n += 1;
                        Some(())
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Some(()));
        }
        assert_eq!(book.get("k"), Some(20));
        assert_eq!(book.update("absent", |n| Some(*n)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn readers_never_see_a_change_whose_commit_failed() {
        let book = book("failed");
        book.put("k", 1).await.unwrap();
        let failed = book.change("k", Write::Fail, Some(2)).await;
        assert!(
            matches!(failed, Err(StoreError::CommitFailed(_))),
            "{failed:?}"
        );
        assert_eq!(book.get("k"), Some(1), "the failed change is not shown");
        let failed = book.change("k", Write::Fail, None).await;
        assert!(failed.is_err());
        assert_eq!(book.get("k"), Some(1), "nor a failed delete");
        assert!(book.delete("k").await.unwrap());
        assert_eq!(book.get("k"), None);
    }

    #[tokio::test]
    async fn the_last_change_queued_is_the_one_shown() {
        let book = std::sync::Arc::new(book("order"));
        let writers: Vec<_> = (0..50u32)
            .map(|n| {
                let book = book.clone();
                tokio::spawn(async move { book.put("k", n).await })
            })
            .collect();
        for w in writers {
            w.await.unwrap().unwrap();
        }
        let shown = book.get("k").unwrap();
        let stored: Vec<(String, u32)> = book.store.load(Table::Roles).unwrap();
        assert_eq!(
            stored,
            vec![("k".to_string(), shown)],
            "memory and store agree"
        );
    }
}

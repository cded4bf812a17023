//! The append-only audit trail: who did what, from where, to which object,
//! with what result. Records are only ever added, never rewritten.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::Principal;
use crate::clock::unix_now;
use crate::store::{Store, StoreError, Table, Write};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub time: u64,
    pub user: String,
    pub source: String,
    pub action: String,
    pub object: String,
    pub result: String,
}

pub struct AuditLog {
    store: Store,
    next: AtomicU64,
    recent: Mutex<VecDeque<AuditRecord>>,
}

/// Records are kept in memory too, for filtering without a transaction;
/// the store is the durable, append-only copy.
const KEPT_IN_MEMORY: usize = 200_000;

impl AuditLog {
    pub fn load(store: Store) -> Result<AuditLog, StoreError> {
        // Keys are zero-padded sequence numbers: loaded in order.
        let all = store.load::<AuditRecord>(Table::Audit)?;
        let last = all.last().map_or(0, |(_, r)| r.seq);
        let skip = all.len().saturating_sub(KEPT_IN_MEMORY);
        let recent = all.into_iter().skip(skip).map(|(_, r)| r).collect();
        Ok(AuditLog {
            store,
            next: AtomicU64::new(last + 1),
            recent: Mutex::new(recent),
        })
    }

    /// Appends one record and waits until it is durable.
    pub async fn record(
        &self,
        who: &Principal,
        action: &str,
        object: &str,
        result: &Result<(), String>,
    ) -> Result<(), StoreError> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let record = AuditRecord {
            seq,
            time: unix_now(),
            user: who.user.clone(),
            source: who.source.clone(),
            action: action.to_string(),
            object: object.to_string(),
            result: match result {
                Ok(()) => "ok".into(),
                Err(e) => format!("refused: {e}"),
            },
        };
        self.store
            .commit(vec![Write::put(
                Table::Audit,
                format!("{seq:020}"),
                &record,
            )])
            .await?;
        let mut recent = self.recent.lock().expect("audit lock");
        if recent.len() == KEPT_IN_MEMORY {
            recent.pop_front();
        }
        // Concurrent records may commit out of order; keep them sorted.
        let at = recent.partition_point(|r| r.seq < seq);
        recent.insert(at, record);
        Ok(())
    }

    /// Up to `limit` records that `keep` accepts, newest first.
    pub fn newest(&self, limit: usize, keep: impl Fn(&AuditRecord) -> bool) -> Vec<AuditRecord> {
        let recent = self.recent.lock().expect("audit lock");
        recent
            .iter()
            .rev()
            .filter(|r| keep(r))
            .take(limit)
            .cloned()
            .collect()
    }
}

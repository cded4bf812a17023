//! The append-only audit trail: who did what, from where, to which object,
//! with what result. Records are only ever added, never rewritten.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl AuditLog {
    pub fn load(store: Store) -> Result<AuditLog, StoreError> {
        let last = store
            .load::<AuditRecord>(Table::Audit)?
            .into_iter()
            .map(|(_, r)| r.seq)
            .max()
            .unwrap_or(0);
        Ok(AuditLog {
            store,
            next: AtomicU64::new(last + 1),
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
            .await
    }
}

//! The configured backup policies, in memory and in the store.

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::policy::BackupPolicy;
use crate::store::{Store, StoreError, Table, Write};

pub struct PolicyBook {
    store: Store,
    policies: RwLock<BTreeMap<String, BackupPolicy>>,
}

impl PolicyBook {
    pub fn load(store: Store) -> Result<PolicyBook, StoreError> {
        let policies = store.load(Table::BackupPolicies)?.into_iter().collect();
        Ok(PolicyBook {
            store,
            policies: RwLock::new(policies),
        })
    }

    pub fn all(&self) -> Vec<BackupPolicy> {
        self.policies
            .read()
            .expect("policies lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<BackupPolicy> {
        self.policies
            .read()
            .expect("policies lock")
            .get(id)
            .cloned()
    }

    pub async fn put(&self, policy: BackupPolicy) -> Result<(), StoreError> {
        let ack = {
            let mut map = self.policies.write().expect("policies lock");
            let ack = self.store.enqueue(vec![Write::put(
                Table::BackupPolicies,
                policy.id.clone(),
                &policy,
            )])?;
            map.insert(policy.id.clone(), policy);
            ack
        };
        ack.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::CommitFailed)
    }

    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let ack = {
            let mut map = self.policies.write().expect("policies lock");
            if map.remove(id).is_none() {
                return Ok(false);
            }
            self.store
                .enqueue(vec![Write::delete(Table::BackupPolicies, id)])?
        };
        ack.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::CommitFailed)?;
        Ok(true)
    }
}

//! One-time enrollment tokens. Only a token's SHA-256 is stored; a token is
//! removed (durably) before the agent that used it gets its certificate, so a
//! token can never enroll two agents, even across a controller crash.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::access::{random_token, token_hash};
use crate::clock::unix_now;
use crate::store::{Store, StoreError, Table, Write};

/// How long a new token stays valid.
pub const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentToken {
    pub created_by: String,
    pub created_at: u64,
    pub expires_at: u64,
}

pub struct EnrollmentTokens {
    store: Store,
    tokens: Mutex<HashMap<String, EnrollmentToken>>,
}

impl EnrollmentTokens {
    pub fn load(store: Store) -> Result<EnrollmentTokens, StoreError> {
        let tokens = store.load(Table::EnrollmentTokens)?.into_iter().collect();
        Ok(EnrollmentTokens {
            store,
            tokens: Mutex::new(tokens),
        })
    }

    /// Issues a token; returns it in clear (shown once) with its record.
    pub async fn issue(&self, created_by: &str) -> Result<(String, EnrollmentToken), StoreError> {
        let token = random_token();
        let now = unix_now();
        let record = EnrollmentToken {
            created_by: created_by.to_string(),
            created_at: now,
            expires_at: now + TOKEN_LIFETIME_SECS,
        };
        let key = token_hash(&token);
        self.store
            .commit(vec![Write::put(
                Table::EnrollmentTokens,
                key.clone(),
                &record,
            )])
            .await?;
        self.tokens
            .lock()
            .expect("tokens lock")
            .insert(key, record.clone());
        Ok((token, record))
    }

    /// Consumes a token: `Ok(true)` if it was valid and is now spent.
    pub async fn consume(&self, token: &str) -> Result<bool, StoreError> {
        let key = token_hash(token);
        let record = self.tokens.lock().expect("tokens lock").remove(&key);
        let Some(record) = record else {
            return Ok(false);
        };
        self.store
            .commit(vec![Write::delete(Table::EnrollmentTokens, key)])
            .await?;
        Ok(record.expires_at > unix_now())
    }

    /// Tokens not yet used or expired, newest first (for the console).
    pub fn pending(&self) -> Vec<EnrollmentToken> {
        let now = unix_now();
        let mut v: Vec<_> = self
            .tokens
            .lock()
            .expect("tokens lock")
            .values()
            .filter(|t| t.expires_at > now)
            .cloned()
            .collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.created_at));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> EnrollmentTokens {
        let dir = std::env::temp_dir().join(format!(
            "lifeboat-tokens-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        EnrollmentTokens::load(Store::open(&dir.join("t.redb")).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_token_works_once() {
        let t = tokens();
        let (token, _) = t.issue("admin").await.unwrap();
        assert_eq!(t.pending().len(), 1);
        assert!(t.consume(&token).await.unwrap());
        assert!(!t.consume(&token).await.unwrap());
        assert!(!t.consume("made-up").await.unwrap());
        assert!(t.pending().is_empty());
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_and_spent() {
        let t = tokens();
        let (token, _) = t.issue("admin").await.unwrap();
        t.tokens
            .lock()
            .unwrap()
            .get_mut(&token_hash(&token))
            .unwrap()
            .expires_at = unix_now() - 1;
        assert!(t.pending().is_empty());
        assert!(!t.consume(&token).await.unwrap());
        assert!(!t.consume(&token).await.unwrap());
    }
}

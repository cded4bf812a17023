//! API tokens: per user, each with its own name, expiry and privileges (a
//! subset of the owner's, checked again at every use, so a token never
//! outlives or outranks its owner). Only the token's SHA-256 is stored; the
//! token itself is shown once, when made.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{random_token, token_hash, Access, AccessError, Principal, Privilege, Privileges};
use crate::clock::unix_now;

const MAX_DAYS: u64 = 366;
const MAX_PER_USER: usize = 50;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub created_at: u64,
    pub expires_at: u64,
    pub privileges: BTreeSet<Privilege>,
    /// The owner's `created_at` when the token was made: a token is void
    /// for any later user of the same name. `None` on tokens made before
    /// this was recorded (those of deleted owners are dropped at start).
    #[serde(default)]
    pub owner_since: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    /// Days until it expires (1 to 366).
    pub expires_in_days: u64,
    /// Defaults to everything the owner holds now.
    #[serde(default)]
    pub privileges: Option<BTreeSet<Privilege>>,
}

impl Access {
    /// Makes a token for `owner` (the caller); returns it and its record.
    pub async fn create_api_token(
        &self,
        owner: &Principal,
        request: TokenRequest,
    ) -> Result<(String, ApiToken), AccessError> {
        let invalid = |m: &str| AccessError::Invalid(m.to_string());
        if request.name.trim().is_empty() || request.name.len() > 64 {
            return Err(invalid("token name: 1-64 characters"));
        }
        if !(1..=MAX_DAYS).contains(&request.expires_in_days) {
            return Err(invalid("expires_in_days must be between 1 and 366"));
        }
        let privileges: BTreeSet<Privilege> = request
            .privileges
            .unwrap_or_else(|| owner.privileges.iter().collect());
        let wanted: Privileges = privileges.iter().copied().collect();
        if !owner.privileges.covers(wanted) {
            return Err(AccessError::Forbidden(
                "a token with privileges its owner lacks",
                "all of them",
            ));
        }
        let now = unix_now();
        let mut expires_at = now + request.expires_in_days * 86_400;
        let record = self
            .user(&owner.user)
            .ok_or_else(|| AccessError::NotFound(format!("no user {}", owner.user)))?;
        if record.directory.is_some() {
            // The directory is asked again only at a login: a directory
            // user's token lasts no longer than a session would.
            expires_at = expires_at.min(now + super::SESSION_ABSOLUTE_SECS);
        }
        if let Some(limit) = owner.credential_expires_at {
            if expires_at > limit {
                return Err(invalid(
                    "a token cannot make a token that outlives it: ask for fewer days",
                ));
            }
        }
        if self.api_tokens_of(&owner.user).len() >= MAX_PER_USER {
            return Err(AccessError::Conflict(format!(
                "at most {MAX_PER_USER} tokens per user"
            )));
        }
        let token = format!("lbt_{}", random_token());
        let record = ApiToken {
            id: random_token()[..16].to_string(),
            owner: owner.user.clone(),
            name: request.name.trim().to_string(),
            created_at: now,
            expires_at,
            privileges,
            owner_since: Some(record.created_at),
        };
        self.api_tokens
            .put(&token_hash(&token), record.clone())
            .await?;
        Ok((token, record))
    }

    /// The principal a bearer API token stands for: its owner as they are
    /// now, narrowed to the token's privileges; `None` when expired, unknown
    /// or the owner is disabled or gone.
    pub fn api_token_principal(&self, token: &str, source: &str) -> Option<Principal> {
        let record = self.api_tokens.get(&token_hash(token))?;
        if record.expires_at <= unix_now() {
            return None;
        }
        let owner = self.user(&record.owner)?;
        if record
            .owner_since
            .is_some_and(|since| since != owner.created_at)
        {
            return None;
        }
        let mut principal = self.principal_for(&record.owner, source)?;
        principal.credential_expires_at = Some(record.expires_at);
        let granted: Privileges = record.privileges.iter().copied().collect();
        principal.privileges = principal
            .privileges
            .iter()
            .filter(|p| granted.contains(*p))
            .collect();
        Some(principal)
    }

    /// Revokes every token of `owner` (who is being deleted).
    pub async fn revoke_api_tokens_of(&self, owner: &str) -> Result<(), AccessError> {
        for (key, token) in self.api_tokens.entries() {
            if token.owner == owner {
                self.api_tokens.delete(&key).await?;
            }
        }
        Ok(())
    }

    pub fn api_tokens_of(&self, owner: &str) -> Vec<ApiToken> {
        self.api_tokens
            .all()
            .into_iter()
            .filter(|t| t.owner == owner)
            .collect()
    }

    pub fn all_api_tokens(&self) -> Vec<ApiToken> {
        self.api_tokens.all()
    }

    /// Revokes the token with `id`, if `may(owner)` allows; false if none.
    pub async fn revoke_api_token(
        &self,
        id: &str,
        may: impl Fn(&str) -> bool,
    ) -> Result<bool, AccessError> {
        let found = self
            .api_tokens
            .entries()
            .into_iter()
            .find(|(_, t)| t.id == id && may(&t.owner));
        match found {
            Some((key, _)) => self.api_tokens.delete(&key).await.map_err(Into::into),
            None => Ok(false),
        }
    }
}

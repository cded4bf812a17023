//! Local users: create, change role or password, disable, delete. Disabling
//! or deleting a user ends every session and cached credential of theirs at
//! once; the last enabled administrator can be neither disabled, demoted
//! nor deleted, so the controller can always be administered.

use serde::Deserialize;

use super::{hash_password, roles, Access, AccessError, User};
use crate::clock::unix_now;
use crate::store::{Table, Write};

const MIN_PASSWORD: usize = 10;

/// A user to create (all but `disabled` required) or a change (any field).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    pub name: Option<String>,
    pub password: Option<String>,
    pub role: Option<String>,
    pub disabled: Option<bool>,
    /// Access policies; empty: every VM.
    pub policies: Option<Vec<String>>,
}

fn invalid(message: impl Into<String>) -> AccessError {
    AccessError::Invalid(message.into())
}

fn check_name(name: &str) -> Result<(), AccessError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "user name {name:?}: 1-64 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

fn check_password(password: &str) -> Result<(), AccessError> {
    if password.chars().count() < MIN_PASSWORD || password.len() > 1024 {
        return Err(invalid(format!(
            "the password must have {MIN_PASSWORD} to 1024 characters"
        )));
    }
    Ok(())
}

impl Access {
    /// Every user, by name.
    pub fn users(&self) -> Vec<User> {
        let mut users: Vec<User> = self
            .users
            .read()
            .expect("users lock")
            .values()
            .cloned()
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    pub fn user(&self, name: &str) -> Option<User> {
        let name = super::normalize_login(name);
        self.users.read().expect("users lock").get(&name).cloned()
    }

    pub async fn create_user(&self, input: UserInput) -> Result<User, AccessError> {
        let name = super::normalize_login(&input.name.unwrap_or_default());
        check_name(&name)?;
        let password = input
            .password
            .ok_or_else(|| invalid("a password is required"))?;
        check_password(&password)?;
        let role = input.role.ok_or_else(|| invalid("a role is required"))?;
        self.role(&role)
            .ok_or_else(|| invalid(format!("no role {role:?}")))?;
        let policies = input.policies.unwrap_or_default();
        self.check_policies(&policies)?;
        if self.user(&name).is_some() {
            return Err(AccessError::Conflict(format!("user {name} exists")));
        }
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let user = User {
            name: name.clone(),
            password_hash: hash,
            role,
            disabled: input.disabled.unwrap_or(false),
            created_at: unix_now(),
            policies,
            directory: None,
        };
        self.put_user(user.clone()).await?;
        Ok(user)
    }

    pub async fn update_user(&self, name: &str, input: UserInput) -> Result<User, AccessError> {
        let name = &super::normalize_login(name);
        let mut user = self
            .user(name)
            .ok_or_else(|| AccessError::NotFound(format!("no user {name}")))?;
        if input
            .name
            .as_deref()
            .is_some_and(|n| super::normalize_login(n) != *name)
        {
            return Err(invalid("a user cannot be renamed"));
        }
        if let Some(role) = input.role {
            self.role(&role)
                .ok_or_else(|| invalid(format!("no role {role:?}")))?;
            user.role = role;
        }
        if let Some(disabled) = input.disabled {
            user.disabled = disabled;
        }
        if let Some(policies) = input.policies {
            self.check_policies(&policies)?;
            user.policies = policies;
        }
        if let Some(password) = input.password {
            check_password(&password)?;
            user.password_hash = tokio::task::spawn_blocking(move || hash_password(&password))
                .await
                .map_err(|e| invalid(e.to_string()))?;
        }
        self.keep_an_administrator(name, Some(&user))?;
        self.put_user(user.clone()).await?;
        // Anything that may have lowered the user's rights ends their
        // sessions; a role change also applies at once to live sessions.
        if user.disabled {
            self.end_sessions_of(name).await?;
        }
        self.forget_cached_credentials(name);
        Ok(user)
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), AccessError> {
        let name = &super::normalize_login(name);
        if self.user(name).is_none() {
            return Err(AccessError::NotFound(format!("no user {name}")));
        }
        self.keep_an_administrator(name, None)?;
        self.store
            .commit(vec![Write::delete(Table::Users, name)])
            .await?;
        self.users.write().expect("users lock").remove(name);
        self.end_sessions_of(name).await?;
        self.forget_cached_credentials(name);
        // Tokens end with their owner: a new user of the same name
        // inherits nothing.
        self.revoke_api_tokens_of(name).await?;
        Ok(())
    }

    /// The appliance console's "reset admin password": `admin` gets
    /// `password`, the administrator role over every VM, and is enabled and
    /// unlocked; its sessions end. Made if it does not exist.
    pub async fn reset_admin(&self, password: String) -> Result<(), AccessError> {
        let name = super::ADMIN;
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let mut user = User::admin(hash);
        if let Some(existing) = self.user(name) {
            user.created_at = existing.created_at;
        }
        self.put_user(user).await?;
        self.end_sessions_of(name).await?;
        self.forget_cached_credentials(name);
        Ok(())
    }

    fn check_policies(&self, names: &[String]) -> Result<(), AccessError> {
        match names.iter().find(|n| self.policies.get(n).is_none()) {
            Some(unknown) => Err(invalid(format!("no access policy {unknown:?}"))),
            None => Ok(()),
        }
    }

    /// Refuses a change that would leave no enabled administrator.
    fn keep_an_administrator(&self, name: &str, after: Option<&User>) -> Result<(), AccessError> {
        let is_admin =
            |u: &User| !u.disabled && u.role == roles::ADMINISTRATOR && u.policies.is_empty();
        let others = self
            .users
            .read()
            .expect("users lock")
            .values()
            .filter(|u| u.name != name)
            .any(is_admin);
        if others || after.is_some_and(is_admin) {
            Ok(())
        } else {
            Err(AccessError::Conflict(
                "this would leave no enabled administrator".into(),
            ))
        }
    }

    async fn put_user(&self, user: User) -> Result<(), AccessError> {
        self.store
            .commit(vec![Write::put(Table::Users, user.name.clone(), &user)])
            .await?;
        self.users
            .write()
            .expect("users lock")
            .insert(user.name.clone(), user);
        Ok(())
    }

    /// Logout everywhere: every session of `name` ends now.
    async fn end_sessions_of(&self, name: &str) -> Result<(), AccessError> {
        let keys: Vec<String> = {
            let mut sessions = self.sessions.write().expect("sessions lock");
            let keys: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| s.stored.user == name)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &keys {
                sessions.remove(k);
            }
            keys
        };
        if !keys.is_empty() {
            let writes = keys
                .into_iter()
                .map(|k| Write::delete(Table::Sessions, k))
                .collect();
            self.store.commit(writes).await?;
        }
        Ok(())
    }

    fn forget_cached_credentials(&self, name: &str) {
        self.basic_cache
            .lock()
            .expect("basic cache lock")
            .retain(|_, (user, _)| user != name);
    }
}

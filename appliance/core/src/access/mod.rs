//! Users, roles, sessions and the privilege check. This is the one place that
//! decides whether a principal may do something; `ops` asks it before acting.
//!
//! Passwords are stored as argon2id PHC strings; session and API tokens are
//! stored as SHA-256 hashes, so a copy of the database grants no access.

pub mod audit;
pub mod directory;
pub mod roles;
pub mod scope;
pub mod tokens;
mod users;

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::unix_now;
use crate::store::book::Book;
use crate::store::{Store, StoreError, Table, Write};
pub use roles::{Privilege, Privileges, RoleDef};
pub use users::UserInput;

/// A session unused for this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login whatever its use.
pub const SESSION_ABSOLUTE_SECS: u64 = 12 * 3600;
/// Failed logins before a temporary lockout, per user and per source address.
const MAX_FAILURES: u32 = 5;
const LOCKOUT: Duration = Duration::from_secs(60);
/// Verified HTTP Basic credentials are remembered this long, so scripts that
/// send them on every request do not pay an argon2 verification each time.
const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);
/// Users and addresses whose failed logins are tracked at most; a flood of
/// made-up names cannot grow the table past it.
const MAX_TRACKED_FAILURES: usize = 100_000;

/// Who is acting, and from where; handed to every operation.
#[derive(Debug, Clone)]
///
/// Its fields are private to this crate: an adapter gets a principal only
/// from a login, a session or a token, and cannot widen one.
pub struct Principal {
    pub(crate) user: String,
    /// The role's name, for display; `privileges` is what it grants.
    pub(crate) role: String,
    pub(crate) privileges: Privileges,
    /// Which VMs the principal sees; `None`: all of them.
    pub(crate) scope: Option<std::sync::Arc<scope::Scope>>,
    pub(crate) source: String,
    /// When the credential this principal acts with ends, if it is an API
    /// token: a token it makes may not outlive it.
    pub(crate) credential_expires_at: Option<u64>,
}

impl Principal {
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    /// The privileges held, in their canonical order.
    pub fn privileges(&self) -> impl Iterator<Item = Privilege> + '_ {
        self.privileges.iter()
    }

    /// Whether access policies limit which VMs this principal sees.
    pub fn is_scoped(&self) -> bool {
        self.scope.is_some()
    }

    pub fn can(&self, privilege: Privilege) -> bool {
        self.privileges.contains(privilege)
    }

    /// The controller itself acting (scheduler, HA engine): every
    /// privilege, audited under `user`.
    pub(crate) fn system(user: &str, source: &str) -> Principal {
        Principal {
            user: user.to_string(),
            role: roles::ADMINISTRATOR.to_string(),
            privileges: Privileges::all(),
            scope: None,
            source: source.to_string(),
            credential_expires_at: None,
        }
    }

    /// Someone who may do nothing (a user who no longer exists, a failed
    /// login), audited under their name.
    pub(crate) fn nobody(user: &str, source: &str) -> Principal {
        Principal {
            user: user.to_string(),
            role: String::new(),
            privileges: Privileges::default(),
            scope: Some(std::sync::Arc::new(scope::Scope::default())),
            source: source.to_string(),
            credential_expires_at: None,
        }
    }

    /// Whether the principal may see a VM with these categories.
    pub fn sees(&self, categories: &std::collections::BTreeMap<String, String>) -> bool {
        self.scope.as_ref().is_none_or(|s| s.allows(categories))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    /// A built-in or custom role's name.
    pub role: String,
    pub disabled: bool,
    pub created_at: u64,
    /// Access policies limiting which VMs the user sees; empty: all.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Set for a directory user: the directory that vouched for them at
    /// their last login (they have no local password).
    #[serde(default)]
    pub directory: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSession {
    user: String,
    csrf: String,
    created_at: u64,
}

struct LiveSession {
    stored: StoredSession,
    last_used: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("invalid user name or password")]
    InvalidCredentials,
    #[error("too many failed logins; try again in {0} s")]
    LockedOut(u64),
    #[error("permission denied: {0} requires the '{1}' privilege")]
    Forbidden(&'static str, &'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Access {
    store: Store,
    /// Custom roles; built-in ones are in code.
    pub custom_roles: Book<RoleDef>,
    pub policies: Book<scope::AccessPolicy>,
    /// API tokens by the SHA-256 of the token.
    api_tokens: Book<tokens::ApiToken>,
    users: RwLock<HashMap<String, User>>,
    sessions: RwLock<HashMap<String, LiveSession>>,
    basic_cache: Mutex<HashMap<String, (String, Instant)>>,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// Password hashing is slow on purpose: this many at once (one per
    /// core), the rest wait their turn instead of starving the machine.
    password_work: tokio::sync::Semaphore,
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The Basic-credentials cache keeps only this hash of a user and password.
fn basic_cache_key(user: &str, password: &str) -> String {
    token_hash(&format!("{user}\0{password}"))
}

/// A fresh random token: 32 random bytes as 64 hex digits. Hex, so a token
/// never starts with `-` and pastes safely into any command line.
/// The built-in administrator, made on first start and by the appliance
/// console's reset.
pub const ADMIN: &str = "admin";

impl User {
    /// `admin` with this password hash: the administrator role over every
    /// VM, enabled, local.
    fn admin(password_hash: String) -> User {
        User {
            name: ADMIN.into(),
            password_hash,
            role: roles::ADMINISTRATOR.to_string(),
            disabled: false,
            created_at: unix_now(),
            policies: Vec::new(),
            directory: None,
        }
    }
}

pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

impl Access {
    pub fn load(store: Store) -> Result<Access, StoreError> {
        let users = normalized_users(&store, store.load::<User>(Table::Users)?)?;
        let now = unix_now();
        let sessions = store
            .load::<StoredSession>(Table::Sessions)?
            .into_iter()
            .filter(|(_, s)| s.created_at + SESSION_ABSOLUTE_SECS > now)
            .map(|(k, stored)| {
                (
                    k,
                    LiveSession {
                        stored,
                        last_used: Instant::now(),
                    },
                )
            })
            .collect();
        // Tokens whose owner is gone end with them (a later user of the
        // same name must inherit nothing).
        let orphans: Vec<Write> = store
            .load::<tokens::ApiToken>(Table::ApiTokens)?
            .into_iter()
            .filter(|(_, t)| !users.contains_key(&normalize_login(&t.owner)))
            .map(|(key, _)| Write::delete(Table::ApiTokens, key))
            .collect();
        if !orphans.is_empty() {
            tracing::info!("revoked {} API tokens of deleted users", orphans.len());
            store.commit_blocking(orphans)?;
        }
        Ok(Access {
            custom_roles: Book::load(store.clone(), Table::Roles)?,
            policies: Book::load(store.clone(), Table::AccessPolicies)?,
            api_tokens: Book::load(store.clone(), Table::ApiTokens)?,
            store,
            users: RwLock::new(users),
            sessions: RwLock::new(sessions),
            basic_cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            password_work: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        })
    }

    /// A password made up for `admin` (first start, console reset).
    pub fn made_up_password() -> String {
        random_token()[..20].to_string()
    }

    /// Creates `admin` if no user exists yet. Returns the password when this
    /// call made one up (so the caller can show it once).
    pub fn ensure_admin(&self, password: Option<String>) -> Result<Option<String>, StoreError> {
        if !self.users.read().expect("users lock").is_empty() {
            return Ok(None);
        }
        let generated = password.is_none();
        let password = password.unwrap_or_else(Access::made_up_password);
        let user = User::admin(hash_password(&password));
        self.store
            .commit_blocking(vec![Write::put(Table::Users, ADMIN, &user)])?;
        self.users
            .write()
            .expect("users lock")
            .insert(ADMIN.into(), user);
        Ok(generated.then_some(password))
    }

    fn check_lockout(&self, keys: &[String]) -> Result<(), AccessError> {
        let failures = self.failures.lock().expect("failures lock");
        for key in keys {
            if let Some((count, since)) = failures.get(key) {
                if *count >= MAX_FAILURES && since.elapsed() < LOCKOUT {
                    return Err(AccessError::LockedOut(
                        (LOCKOUT - since.elapsed()).as_secs() + 1,
                    ));
                }
            }
        }
        Ok(())
    }

    fn record_failure(&self, keys: &[String]) {
        let mut failures = self.failures.lock().expect("failures lock");
        if failures.len() >= MAX_TRACKED_FAILURES {
            failures.retain(|_, (_, since)| since.elapsed() < LOCKOUT);
        }
        for key in keys {
            if failures.len() >= MAX_TRACKED_FAILURES && !failures.contains_key(key) {
                continue; // the other key of the pair still counts
            }
            let entry = failures.entry(key.clone()).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= LOCKOUT {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
            entry.1 = Instant::now();
        }
    }

    /// Whether `user` logs in with a local password (not a directory user).
    pub fn is_local(&self, user: &str) -> bool {
        self.user(user).is_some_and(|u| u.directory.is_none())
    }

    /// Refuses while `user` or `source` is locked out after failures.
    pub fn check_lockout_for(&self, user: &str, source: &str) -> Result<(), AccessError> {
        let user = &normalize_login(user);
        self.check_lockout(&[format!("user:{user}"), format!("addr:{source}")])
    }

    pub fn login_failed(&self, user: &str, source: &str) {
        let user = &normalize_login(user);
        self.record_failure(&[format!("user:{user}"), format!("addr:{source}")]);
        tracing::warn!(user, source, "failed login");
    }

    /// Records a directory user as the directory describes them now (role
    /// and policies from their groups) and returns their principal.
    pub async fn directory_login(
        &self,
        user: &str,
        directory: &str,
        role: String,
        policies: Vec<String>,
        source: &str,
    ) -> Result<Principal, AccessError> {
        let user = &normalize_login(user);
        if self.user(user).is_some_and(|u| u.disabled) {
            self.login_failed(user, source);
            return Err(AccessError::InvalidCredentials);
        }
        let record = User {
            name: user.to_string(),
            password_hash: String::new(),
            role,
            disabled: false,
            created_at: self.user(user).map_or_else(unix_now, |u| u.created_at),
            policies,
            directory: Some(directory.to_string()),
        };
        self.store
            .commit(vec![Write::put(Table::Users, user, &record)])
            .await?;
        self.users
            .write()
            .expect("users lock")
            .insert(user.to_string(), record.clone());
        self.failures
            .lock()
            .expect("failures lock")
            .remove(&format!("user:{user}"));
        Ok(self.principal(&record, source))
    }

    /// Checks a user name and password. Rate limited per user and per source.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        source: &str,
    ) -> Result<Principal, AccessError> {
        let user = &normalize_login(user);
        let keys = [format!("user:{user}"), format!("addr:{source}")];
        self.check_lockout(&keys)?;
        let record = self.users.read().expect("users lock").get(user).cloned();
        let hash = record.as_ref().map(|u| u.password_hash.clone());
        let password_owned = password.to_string();
        // argon2 is deliberately slow: keep it off the async workers, and
        // run no more at once than there are cores.
        let _turn = self.password_work.acquire().await;
        let ok = tokio::task::spawn_blocking(move || match hash {
            Some(h) => verify_password(&h, &password_owned),
            None => {
                // Spend the same time for unknown users, so timing does not tell.
                let _ = hash_password(&password_owned);
                false
            }
        })
        .await
        .unwrap_or(false);
        match record {
            Some(u) if ok && !u.disabled => {
                self.failures
                    .lock()
                    .expect("failures lock")
                    .remove(&keys[0]);
                Ok(self.principal(&u, source))
            }
            _ => {
                self.record_failure(&keys);
                tracing::warn!(user, source, "failed login");
                Err(AccessError::InvalidCredentials)
            }
        }
    }

    /// HTTP Basic credentials verified less than [`BASIC_CACHE_TTL`] ago:
    /// the user's current principal, without another argon2 verification.
    pub fn cached_basic(&self, user: &str, password: &str, source: &str) -> Option<Principal> {
        let name = self
            .basic_cache
            .lock()
            .expect("basic cache lock")
            .get(&basic_cache_key(user, password))
            .filter(|(_, at)| at.elapsed() < BASIC_CACHE_TTL)
            .map(|(u, _)| u.clone())?;
        self.principal_for(&name, source)
    }

    /// Remembers verified HTTP Basic credentials for [`BASIC_CACHE_TTL`].
    /// Entries past it are pruned here, so the cache stays bounded by the
    /// logins of the last minute.
    pub fn remember_basic(&self, user: &str, password: &str, principal: &Principal) {
        let mut cache = self.basic_cache.lock().expect("basic cache lock");
        cache.retain(|_, (_, at)| at.elapsed() < BASIC_CACHE_TTL);
        cache.insert(
            basic_cache_key(user, password),
            (principal.user.clone(), Instant::now()),
        );
    }

    /// A user's principal as they are now; `None` when gone or disabled.
    pub fn current_principal(&self, user: &str, source: &str) -> Option<Principal> {
        self.principal_for(user, source)
    }

    /// The user's current rights: the role is looked up at every request,
    /// so a changed role or a disabled user takes effect at once.
    pub(crate) fn principal_for(&self, user: &str, source: &str) -> Option<Principal> {
        let user = &normalize_login(user);
        let users = self.users.read().expect("users lock");
        let u = users.get(user).filter(|u| !u.disabled)?;
        Some(self.principal(u, source))
    }

    fn principal(&self, u: &User, source: &str) -> Principal {
        Principal {
            user: u.name.clone(),
            privileges: self
                .role(&u.role)
                .map(|r| r.privileges())
                .unwrap_or_default(),
            role: u.role.clone(),
            scope: self.scope_of(&u.policies),
            source: source.to_string(),
            credential_expires_at: None,
        }
    }

    /// The scope of a list of policy names; `None` (everything) only for an
    /// empty list. A name no longer defined narrows, never widens.
    pub fn scope_of(&self, names: &[String]) -> Option<std::sync::Arc<scope::Scope>> {
        if names.is_empty() {
            return None;
        }
        let policies: Vec<scope::AccessPolicy> =
            names.iter().filter_map(|n| self.policies.get(n)).collect();
        Some(std::sync::Arc::new(scope::Scope::of(&policies)))
    }

    /// A built-in or custom role by name.
    pub fn role(&self, name: &str) -> Option<RoleDef> {
        roles::builtin_role(name).or_else(|| self.custom_roles.get(name))
    }

    /// Starts a session; returns (token, csrf token). Only the token's hash is kept.
    pub async fn create_session(
        &self,
        principal: &Principal,
    ) -> Result<(String, String), AccessError> {
        let token = random_token();
        let stored = StoredSession {
            user: principal.user.clone(),
            csrf: random_token(),
            created_at: unix_now(),
        };
        let key = token_hash(&token);
        self.store
            .commit(vec![Write::put(Table::Sessions, key.clone(), &stored)])
            .await?;
        let csrf = stored.csrf.clone();
        self.sessions.write().expect("sessions lock").insert(
            key,
            LiveSession {
                stored,
                last_used: Instant::now(),
            },
        );
        Ok((token, csrf))
    }

    /// Resolves a session token to its principal and CSRF token, refreshing its
    /// idle timer. Expired sessions and disabled users resolve to `None`.
    pub fn session(&self, token: &str, source: &str) -> Option<(Principal, String)> {
        let key = token_hash(token);
        let mut sessions = self.sessions.write().expect("sessions lock");
        let live = sessions.get_mut(&key)?;
        let expired = live.last_used.elapsed() > SESSION_IDLE
            || live.stored.created_at + SESSION_ABSOLUTE_SECS <= unix_now();
        let principal = if expired {
            None
        } else {
            self.principal_for(&live.stored.user, source)
        };
        match principal {
            Some(p) => {
                live.last_used = Instant::now();
                Some((p, live.stored.csrf.clone()))
            }
            None => {
                sessions.remove(&key);
                let _ = self
                    .store
                    .enqueue(vec![Write::delete(Table::Sessions, key)]);
                None
            }
        }
    }

    pub async fn end_session(&self, token: &str) -> Result<(), AccessError> {
        let key = token_hash(token);
        self.sessions.write().expect("sessions lock").remove(&key);
        self.store
            .commit(vec![Write::delete(Table::Sessions, key)])
            .await?;
        Ok(())
    }
}

/// A login name as it is stored and compared: trimmed and lower-case, so
/// `Admin`, ` admin` and `admin` are one user with one lockout counter.
pub fn normalize_login(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Names of roles, access policies and directories: 2-40 lower-case
/// letters, digits or '-', so they are safe in URLs, logs and CSV.
pub fn check_slug(what: &str, name: &str) -> Result<(), String> {
    let ok = (2..=40).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?}: 2-40 lower-case letters, digits or '-'"
        ))
    }
}

/// Users stored before login names were normalized are stored again under
/// their normalized name (the first of several that now coincide wins).
fn normalized_users(
    store: &Store,
    stored: Vec<(String, User)>,
) -> Result<HashMap<String, User>, StoreError> {
    let mut users = HashMap::new();
    let mut writes = Vec::new();
    for (key, mut user) in stored {
        let name = normalize_login(&user.name);
        if key != name || user.name != name {
            writes.push(Write::delete(Table::Users, key.clone()));
            if users.contains_key(&name) {
                tracing::warn!(
                    user = user.name,
                    "dropped: another user has the same normalized name"
                );
                continue;
            }
            user.name = name.clone();
            writes.push(Write::put(Table::Users, name.clone(), &user));
        }
        users.insert(name, user);
    }
    if !writes.is_empty() {
        store.commit_blocking(writes)?;
    }
    Ok(users)
}

/// The privilege check every operation starts with.
pub fn require(
    principal: &Principal,
    privilege: Privilege,
    what: &'static str,
) -> Result<(), AccessError> {
    if principal.can(privilege) {
        Ok(())
    } else {
        Err(AccessError::Forbidden(what, privilege.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        let dir = std::env::temp_dir().join(format!(
            "lifeboat-access-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let access = Access::load(Store::open(&dir.join("a.redb")).unwrap()).unwrap();
        assert!(access.ensure_admin(Some("pw".into())).unwrap().is_none());
        access
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn sessions_expire_when_idle_and_end_on_logout() {
        let access = access();
        block_on(async {
            let who = access.login("admin", "pw", "test").await.unwrap();
            let (token, csrf) = access.create_session(&who).await.unwrap();
            let (p, c) = access.session(&token, "test").unwrap();
            assert_eq!((p.user.as_str(), c.as_str()), ("admin", csrf.as_str()));
            assert!(access.session("forged", "test").is_none());

            // Idle past the limit: gone, and stays gone.
            access
                .sessions
                .write()
                .unwrap()
                .get_mut(&token_hash(&token))
                .unwrap()
                .last_used = Instant::now() - SESSION_IDLE - Duration::from_secs(1);
            assert!(access.session(&token, "test").is_none());
            assert!(access.session(&token, "test").is_none());

            let (token, _) = access.create_session(&who).await.unwrap();
            access.end_session(&token).await.unwrap();
            assert!(access.session(&token, "test").is_none());
        });
    }

    #[test]
    fn repeated_failures_lock_out_even_the_right_password() {
        let access = access();
        block_on(async {
            for _ in 0..MAX_FAILURES {
                assert!(matches!(
                    access.login("admin", "nope", "1.2.3.4").await,
                    Err(AccessError::InvalidCredentials)
                ));
            }
            assert!(matches!(
                access.login("admin", "pw", "5.6.7.8").await,
                Err(AccessError::LockedOut(_))
            ));
            assert!(matches!(
                access.login("nobody", "pw", "1.2.3.4").await,
                Err(AccessError::LockedOut(_))
            ));
        });
    }

    #[test]
    fn password_hash_verifies_only_the_right_password() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong"));
        assert!(!verify_password("not a hash", "x"));
    }
}

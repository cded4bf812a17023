//! Directories (LDAP / Active Directory) and password logins. Local users
//! are checked first and never wait on a directory, so a directory that is
//! down cannot lock out local administrators. A directory user's role and
//! policies are taken from their groups at every login.

use super::{Ops, OpsError};
use crate::access::directory::{Directory, DirectoryError};
use crate::access::{require, AccessError, Principal, Privilege};

impl Ops {
    /// Checks a user name and password: a local user's, or else each
    /// directory's in turn.
    pub async fn authenticate_password(
        &self,
        user: &str,
        password: &str,
        source: &str,
    ) -> Result<Principal, OpsError> {
        let directories = self.directories.all();
        if self.access.is_local(user) || directories.is_empty() {
            return Ok(self.access.login(user, password, source).await?);
        }
        self.access.check_lockout_for(user, source)?;
        for d in directories {
            let bind_password = match self.secrets.open(&d.bind_password_sealed) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(directory = d.name, "cannot open the bind password: {e}");
                    continue;
                }
            };
            match d.authenticate(&bind_password, user, password).await {
                Ok(groups) => {
                    let Some((role, policies)) = d.map_groups(&groups) else {
                        tracing::warn!(user, directory = d.name, "no group of the user is mapped");
                        // Whatever they had before is gone with the groups.
                        if self
                            .access
                            .user(user)
                            .is_some_and(|u| u.directory.is_some())
                        {
                            let _ = self.access.delete_user(user).await;
                        }
                        break;
                    };
                    return Ok(self
                        .access
                        .directory_login(user, &d.name, role, policies, source)
                        .await?);
                }
                Err(DirectoryError::Rejected) => continue,
                Err(e @ DirectoryError::Unavailable(..)) => {
                    tracing::warn!("{e}");
                    continue;
                }
            }
        }
        self.access.login_failed(user, source);
        Err(AccessError::InvalidCredentials.into())
    }

    pub fn directories(&self, who: &Principal) -> Result<Vec<Directory>, OpsError> {
        require(who, Privilege::ManageUsers, "listing directories")?;
        Ok(self.directories.all())
    }

    pub fn directory(&self, who: &Principal, name: &str) -> Result<Directory, OpsError> {
        require(who, Privilege::ManageUsers, "viewing directories")?;
        self.directories
            .get(name)
            .ok_or_else(|| OpsError::NotFound(format!("no directory {name}")))
    }

    /// Adds (`create`) or replaces a directory. The bind password is sealed;
    /// a replacement without one keeps the old.
    pub async fn put_directory(
        &self,
        who: &Principal,
        mut d: Directory,
        create: bool,
    ) -> Result<Directory, OpsError> {
        let object = format!("directory {}", d.name);
        let result = async {
            require(who, Privilege::ManageUsers, "managing directories")?;
            super::require_unrestricted(who, "managing directories")?;
            d.validate().map_err(OpsError::BadRequest)?;
            let old = self.directories.get(&d.name);
            match (create, &old) {
                (true, Some(_)) => {
                    return Err(OpsError::Conflict(format!("directory {} exists", d.name)))
                }
                (false, None) => {
                    return Err(OpsError::NotFound(format!("no directory {}", d.name)))
                }
                _ => {}
            }
            for m in &d.mappings {
                let role = self
                    .access
                    .role(&m.role)
                    .ok_or_else(|| OpsError::BadRequest(format!("no role {:?}", m.role)))?;
                if !who.privileges.covers(role.privileges()) {
                    return Err(OpsError::Forbidden(format!(
                        "permission denied: mapping a group to {} needs every privilege it grants",
                        m.role
                    )));
                }
                if let Some(p) = m
                    .policies
                    .iter()
                    .find(|p| self.access.policies.get(p).is_none())
                {
                    return Err(OpsError::BadRequest(format!("no access policy {p:?}")));
                }
            }
            let password = std::mem::take(&mut d.bind_password);
            d.bind_password_sealed = if password.is_empty() {
                old.map(|o| o.bind_password_sealed)
                    .ok_or_else(|| OpsError::BadRequest("bind_password is required".into()))?
            } else {
                self.secrets
                    .seal(&password)
                    .map_err(|e| OpsError::Internal(e.to_string()))?
            };
            self.directories.put(&d.name, d.clone()).await?;
            Ok(d)
        }
        .await;
        let action = if create {
            "add directory"
        } else {
            "update directory"
        };
        self.audited(who, action, &object, result).await
    }

    pub async fn delete_directory(&self, who: &Principal, name: &str) -> Result<(), OpsError> {
        let result = async {
            require(who, Privilege::ManageUsers, "managing directories")?;
            super::require_unrestricted(who, "managing directories")?;
            if !self.directories.delete(name).await? {
                return Err(OpsError::NotFound(format!("no directory {name}")));
            }
            Ok(())
        }
        .await;
        self.audited(
            who,
            "delete directory",
            &format!("directory {name}"),
            result,
        )
        .await
    }
}

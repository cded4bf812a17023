//! Users, roles and the audit trail. Nobody can hand out more than they
//! hold: creating or assigning a role needs every privilege it grants, and
//! only someone holding all of a user's rights may change that user.

use serde::Serialize;

use super::{Ops, OpsError};
use crate::access::audit::AuditRecord;
use crate::access::{require, Principal, Privilege, Privileges, RoleDef, User, UserInput};

/// A user as shown: never the password hash.
#[derive(Debug, Serialize)]
pub struct UserView {
    pub name: String,
    pub role: String,
    pub policies: Vec<String>,
    pub disabled: bool,
    pub created_at: u64,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            name: u.name,
            role: u.role,
            policies: u.policies,
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

/// Which audit records to show; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub action: Option<String>,
    /// Substring of the object.
    pub object: Option<String>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub limit: usize,
}

impl Ops {
    fn role_privileges(&self, role: &str) -> Result<Privileges, OpsError> {
        self.access
            .role(role)
            .map(|r| r.privileges())
            .ok_or_else(|| OpsError::BadRequest(format!("no role {role:?}")))
    }

    /// Refuses granting (or touching a holder of) rights `who` lacks.
    fn require_covers(
        &self,
        who: &Principal,
        rights: Privileges,
        what: &str,
    ) -> Result<(), OpsError> {
        if who.privileges.covers(rights) {
            Ok(())
        } else {
            Err(OpsError::Forbidden(format!(
                "permission denied: {what} needs every privilege it involves"
            )))
        }
    }

    /// Whether `who` may manage a user held to `policies`: anyone
    /// unrestricted may; a restricted manager only users held to exactly
    /// their own access policies, so nothing they do widens a scope.
    fn manages_scope(&self, who: &Principal, policies: &[String]) -> bool {
        if who.scope.is_none() {
            return true;
        }
        let own = self
            .access
            .user(&who.user)
            .map(|u| sorted(u.policies))
            .unwrap_or_default();
        !own.is_empty() && own == sorted(policies.to_vec())
    }

    fn require_scope(&self, who: &Principal, policies: &[String]) -> Result<(), OpsError> {
        if self.manages_scope(who, policies) {
            return Ok(());
        }
        Err(OpsError::Forbidden(
            "permission denied: a user with access policies manages only users held to exactly \
             their own policies"
                .into(),
        ))
    }

    /// `who` manages users and holds every privilege user `name` has.
    fn require_over(&self, who: &Principal, name: &str, what: &str) -> Result<(), OpsError> {
        require(who, Privilege::ManageUsers, "managing users")?;
        let current = self.user(who, name)?;
        let rights = self.role_privileges(&current.role).unwrap_or_default();
        self.require_covers(who, rights, what)
    }

    /// The users `who` manages (a restricted manager: those of their scope).
    pub fn users(&self, who: &Principal) -> Result<Vec<UserView>, OpsError> {
        require(who, Privilege::ManageUsers, "listing users")?;
        Ok(self
            .access
            .users()
            .into_iter()
            .filter(|u| self.manages_scope(who, &u.policies))
            .map(UserView::from)
            .collect())
    }

    pub fn user(&self, who: &Principal, name: &str) -> Result<UserView, OpsError> {
        require(who, Privilege::ManageUsers, "viewing users")?;
        let name = crate::access::normalize_login(name);
        self.access
            .user(&name)
            .filter(|u| self.manages_scope(who, &u.policies))
            .map(UserView::from)
            .ok_or_else(|| OpsError::NotFound(format!("no user {name}")))
    }

    pub async fn create_user(
        &self,
        who: &Principal,
        input: UserInput,
    ) -> Result<UserView, OpsError> {
        let object = format!("user {}", input.name.clone().unwrap_or_default());
        let result = async {
            require(who, Privilege::ManageUsers, "managing users")?;
            self.require_scope(who, input.policies.as_deref().unwrap_or_default())?;
            if let Some(role) = &input.role {
                self.require_covers(who, self.role_privileges(role)?, "assigning a role")?;
            }
            Ok(UserView::from(self.access.create_user(input).await?))
        }
        .await;
        self.audited(who, "create user", &object, result).await
    }

    pub async fn update_user(
        &self,
        who: &Principal,
        name: &str,
        input: UserInput,
    ) -> Result<UserView, OpsError> {
        let result = async {
            self.require_over(who, name, "changing this user")?;
            if let Some(policies) = &input.policies {
                self.require_scope(who, policies)?;
            }
            if let Some(role) = &input.role {
                self.require_covers(who, self.role_privileges(role)?, "assigning a role")?;
            }
            let new_password = input.password.is_some();
            let user = self.access.update_user(name, input).await?;
            if new_password && user.name == "admin" {
                self.forget_initial_password();
            }
            Ok(UserView::from(user))
        }
        .await;
        self.audited(who, "update user", &format!("user {name}"), result)
            .await
    }

    pub async fn delete_user(&self, who: &Principal, name: &str) -> Result<(), OpsError> {
        let result = async {
            self.require_over(who, name, "deleting this user")?;
            if crate::access::normalize_login(name) == who.user {
                return Err(OpsError::Conflict("you cannot delete yourself".into()));
            }
            Ok(self.access.delete_user(name).await?)
        }
        .await;
        self.audited(who, "delete user", &format!("user {name}"), result)
            .await
    }

    /// Built-in roles first, then custom ones.
    pub fn roles(&self, who: &Principal) -> Result<Vec<RoleDef>, OpsError> {
        require(who, Privilege::View, "listing roles")?;
        let mut roles = crate::access::roles::builtin_roles();
        roles.extend(self.access.custom_roles.all());
        Ok(roles)
    }

    pub fn role(&self, who: &Principal, name: &str) -> Result<RoleDef, OpsError> {
        require(who, Privilege::View, "viewing roles")?;
        self.access
            .role(name)
            .ok_or_else(|| OpsError::NotFound(format!("no role {name}")))
    }

    /// Creates or replaces a custom role.
    pub async fn put_role(
        &self,
        who: &Principal,
        role: RoleDef,
        create: bool,
    ) -> Result<RoleDef, OpsError> {
        let object = format!("role {}", role.name);
        let result = async {
            require(who, Privilege::ManageUsers, "managing roles")?;
            role.validate().map_err(OpsError::BadRequest)?;
            let exists = self.access.custom_roles.get(&role.name).is_some();
            if create && exists {
                return Err(OpsError::Conflict(format!("role {} exists", role.name)));
            }
            if !create && !exists {
                return Err(OpsError::NotFound(format!("no custom role {}", role.name)));
            }
            self.require_covers(who, role.privileges(), "granting a role")?;
            self.access
                .custom_roles
                .put(&role.name, role.clone())
                .await?;
            Ok(role)
        }
        .await;
        let action = if create { "create role" } else { "update role" };
        self.audited(who, action, &object, result).await
    }

    pub async fn delete_role(&self, who: &Principal, name: &str) -> Result<(), OpsError> {
        let result = async {
            require(who, Privilege::ManageUsers, "managing roles")?;
            if self.access.custom_roles.get(name).is_none() {
                return Err(match self.access.role(name) {
                    Some(_) => OpsError::Conflict(format!("{name} is a built-in role")),
                    None => OpsError::NotFound(format!("no role {name}")),
                });
            }
            let holders: Vec<String> = self
                .access
                .users()
                .into_iter()
                .filter(|u| u.role == name)
                .map(|u| u.name)
                .collect();
            if !holders.is_empty() {
                return Err(OpsError::Conflict(format!(
                    "role {name} is held by {}",
                    holders.join(", ")
                )));
            }
            self.access.custom_roles.delete(name).await?;
            Ok(())
        }
        .await;
        self.audited(who, "delete role", &format!("role {name}"), result)
            .await
    }

    /// Audit records, newest first.
    pub fn audit_records(
        &self,
        who: &Principal,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, OpsError> {
        require(who, Privilege::ViewReports, "viewing the audit trail")?;
        let keep = |r: &AuditRecord| {
            filter.user.as_ref().is_none_or(|u| &r.user == u)
                && filter.action.as_ref().is_none_or(|a| &r.action == a)
                && filter
                    .object
                    .as_ref()
                    .is_none_or(|o| r.object.contains(o.as_str()))
                && filter.since.is_none_or(|t| r.time >= t)
                && filter.until.is_none_or(|t| r.time <= t)
        };
        let text_filter = self.text_filter(who);
        let records = self.audit.newest(filter.limit.clamp(1, 100_000), keep);
        Ok(super::scope::allowed_by(
            records,
            text_filter.as_ref(),
            |r| format!("{} {}", r.object, r.result),
        ))
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names.dedup();
    names
}

impl Ops {
    /// Makes an API token for the caller; the token is in the answer only.
    pub async fn create_api_token(
        &self,
        who: &Principal,
        request: crate::access::tokens::TokenRequest,
    ) -> Result<(String, crate::access::tokens::ApiToken), OpsError> {
        let object = format!("api token {}", request.name);
        let result = async { Ok(self.access.create_api_token(who, request).await?) }.await;
        self.audited(who, "create api token", &object, result).await
    }

    /// The caller's tokens; everyone's for those who manage users.
    pub fn api_tokens(&self, who: &Principal) -> Vec<crate::access::tokens::ApiToken> {
        if who.can(Privilege::ManageUsers) {
            self.access.all_api_tokens()
        } else {
            self.access.api_tokens_of(&who.user)
        }
    }

    /// Revokes one of the caller's tokens (anyone's, for those who manage
    /// users); another user's token is "not found" to the rest.
    pub async fn revoke_api_token(&self, who: &Principal, id: &str) -> Result<(), OpsError> {
        let result = async {
            let manage = who.can(Privilege::ManageUsers);
            if !self
                .access
                .revoke_api_token(id, |owner| manage || owner == who.user)
                .await?
            {
                return Err(OpsError::NotFound(format!("no API token {id}")));
            }
            Ok(())
        }
        .await;
        self.audited(who, "revoke api token", &format!("api token {id}"), result)
            .await
    }
}

//! LDAP and Active Directory: look a user up with a service account, bind
//! as them with their password, read their groups, and map groups to a role
//! and access policies. TLS (LDAPS or StartTLS) unless plain LDAP is
//! explicitly allowed. Nothing here stores anything: the caller records
//! the outcome at each login, so rights follow the directory.

use std::sync::Arc;
use std::time::Duration;

use ldap3::{ldap_escape, LdapConnAsync, LdapConnSettings, Scope as LdapScope, SearchEntry};
use serde::{Deserialize, Serialize};

const TIMEOUT: Duration = Duration::from_secs(5);
/// AD's LDAP_MATCHING_RULE_IN_CHAIN: group membership through nesting.
const IN_CHAIN: &str = "1.2.840.113556.1.4.1941";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserAttribute {
    #[serde(rename = "uid")]
    Uid,
    #[serde(rename = "sAMAccountName")]
    SamAccountName,
    #[serde(rename = "userPrincipalName")]
    UserPrincipalName,
}

impl UserAttribute {
    fn as_str(self) -> &'static str {
        match self {
            UserAttribute::Uid => "uid",
            UserAttribute::SamAccountName => "sAMAccountName",
            UserAttribute::UserPrincipalName => "userPrincipalName",
        }
    }
}

/// Members of `group` (its DN, or its `cn`) get `role` and `policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMapping {
    pub group: String,
    pub role: String,
    #[serde(default)]
    pub policies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub name: String,
    /// `ldaps://host:636` or `ldap://host:389`.
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    /// Allow `ldap://` without StartTLS: passwords cross the network in clear.
    #[serde(default)]
    pub allow_plain: bool,
    /// PEM of the CA that signed the server's certificate (empty: the
    /// system's trust store).
    #[serde(default)]
    pub ca_pem: String,
    pub bind_dn: String,
    /// In requests only; stored sealed in `bind_password_sealed`, never shown.
    #[serde(default, skip_serializing)]
    pub bind_password: String,
    /// Sealed with the controller's key; left out of every answer.
    #[serde(default)]
    pub bind_password_sealed: String,
    pub user_base: String,
    pub user_attribute: UserAttribute,
    pub group_base: String,
    /// Follow nested groups (Active Directory only).
    #[serde(default)]
    pub nested_groups: bool,
    pub mappings: Vec<GroupMapping>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// Wrong password, unknown user: the login fails.
    #[error("invalid user name or password")]
    Rejected,
    /// The directory cannot be used now: try the next one.
    #[error("directory {0}: {1}")]
    Unavailable(String, String),
}

impl Directory {
    pub fn validate(&self) -> Result<(), String> {
        super::check_slug("directory", &self.name)?;
        let url = url::Url::parse(&self.url).map_err(|e| format!("url: {e}"))?;
        match (url.scheme(), self.starttls, self.allow_plain) {
            ("ldaps", false, _) => {}
            ("ldaps", true, _) => return Err("StartTLS is for ldap:// URLs".into()),
            ("ldap", true, _) | ("ldap", false, true) => {}
            ("ldap", false, false) => {
                return Err(
                    "ldap:// sends passwords in clear: use ldaps://, starttls, or allow_plain"
                        .into(),
                )
            }
            (other, ..) => return Err(format!("url scheme {other}: ldap or ldaps")),
        }
        for (what, dn) in [
            ("bind_dn", &self.bind_dn),
            ("user_base", &self.user_base),
            ("group_base", &self.group_base),
        ] {
            if dn.is_empty() || dn.len() > 512 {
                return Err(format!("{what}: 1-512 characters"));
            }
        }
        if self.mappings.is_empty() {
            return Err("mappings: at least one group → role mapping".into());
        }
        Ok(())
    }

    /// Checks `user`'s password against the directory and returns the DNs
    /// and common names of their groups.
    pub async fn authenticate(
        &self,
        bind_password: &str,
        user: &str,
        password: &str,
    ) -> Result<Vec<String>, DirectoryError> {
        if password.is_empty() {
            // An empty password is an anonymous bind to LDAP: never a login.
            return Err(DirectoryError::Rejected);
        }
        let down =
            |e: ldap3::LdapError| DirectoryError::Unavailable(self.name.clone(), e.to_string());
        let mut ldap = self.connect().await?;
        ldap.simple_bind(&self.bind_dn, bind_password)
            .await
            .and_then(|r| r.success())
            .map_err(down)?;
        let filter = format!("({}={})", self.user_attribute.as_str(), ldap_escape(user));
        let (entries, _) = ldap
            .search(&self.user_base, LdapScope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(down)?;
        let [entry] = entries.as_slice() else {
            return Err(DirectoryError::Rejected); // none, or ambiguous
        };
        let user_dn = SearchEntry::construct(entry.clone()).dn;
        // A fresh connection for the user's own bind, so the service
        // account's rights never mix with theirs.
        let mut as_user = self.connect().await?;
        let bound = as_user
            .simple_bind(&user_dn, password)
            .await
            .map_err(down)?;
        if bound.rc != 0 {
            return Err(DirectoryError::Rejected);
        }
        let _ = as_user.unbind().await;
        let member = member_filter(&user_dn, self.nested_groups);
        let (groups, _) = ldap
            .search(&self.group_base, LdapScope::Subtree, &member, vec!["cn"])
            .await
            .and_then(|r| r.success())
            .map_err(down)?;
        let _ = ldap.unbind().await;
        Ok(groups
            .into_iter()
            .map(SearchEntry::construct)
            .flat_map(|g| {
                let cns = g.attrs.get("cn").cloned().unwrap_or_default();
                std::iter::once(g.dn).chain(cns)
            })
            .collect())
    }

    async fn connect(&self) -> Result<ldap3::Ldap, DirectoryError> {
        let down = |e: String| DirectoryError::Unavailable(self.name.clone(), e);
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(TIMEOUT)
            .set_starttls(self.starttls);
        if self.url.starts_with("ldaps:") || self.starttls {
            settings = settings.set_config(Arc::new(self.tls_config().map_err(down)?));
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| down(e.to_string()))?;
        ldap3::drive!(conn);
        ldap.with_timeout(TIMEOUT);
        Ok(ldap)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        crate::pki::client_tls(&self.ca_pem)
    }

    /// The role and policies the groups map to: the first mapping that
    /// matches decides the role; policies of all matching mappings add up.
    pub fn map_groups(&self, groups: &[String]) -> Option<(String, Vec<String>)> {
        let matching: Vec<&GroupMapping> = self
            .mappings
            .iter()
            .filter(|m| groups.iter().any(|g| g.eq_ignore_ascii_case(&m.group)))
            .collect();
        let role = matching.first()?.role.clone();
        let mut policies: Vec<String> = matching.iter().flat_map(|m| m.policies.clone()).collect();
        policies.sort();
        policies.dedup();
        Some((role, policies))
    }
}

/// The filter for the groups `user_dn` is in: directly, or with AD's
/// in-chain rule through nested groups too.
fn member_filter(user_dn: &str, nested: bool) -> String {
    let dn = ldap_escape(user_dn);
    if nested {
        format!("(member:{IN_CHAIN}:={dn})")
    } else {
        format!("(|(member={dn})(uniqueMember={dn}))")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_filters_escape_the_dn_and_use_the_in_chain_rule_for_nesting() {
        assert_eq!(
            member_filter("cn=a*b,dc=x", false),
            "(|(member=cn=a\\2ab,dc=x)(uniqueMember=cn=a\\2ab,dc=x))"
        );
        assert_eq!(
            member_filter("cn=Ann (HR),dc=corp", true),
            "(member:1.2.840.113556.1.4.1941:=cn=Ann \\28HR\\29,dc=corp)"
        );
    }

    fn directory(url: &str, starttls: bool, allow_plain: bool) -> Directory {
        Directory {
            name: "corp".into(),
            url: url.into(),
            starttls,
            allow_plain,
            ca_pem: String::new(),
            bind_dn: "cn=svc,dc=corp".into(),
            bind_password: String::new(),
            bind_password_sealed: String::new(),
            user_base: "ou=people,dc=corp".into(),
            user_attribute: UserAttribute::Uid,
            group_base: "ou=groups,dc=corp".into(),
            nested_groups: false,
            mappings: vec![
                GroupMapping {
                    group: "finance-backup".into(),
                    role: "backup-admin".into(),
                    policies: vec!["finance".into()],
                },
                GroupMapping {
                    group: "auditors".into(),
                    role: "auditor".into(),
                    policies: vec![],
                },
            ],
        }
    }

    #[test]
    fn plain_ldap_needs_to_be_allowed() {
        assert!(directory("ldaps://dc1:636", false, false)
            .validate()
            .is_ok());
        assert!(directory("ldap://dc1:389", true, false).validate().is_ok());
        assert!(directory("ldap://dc1:389", false, false)
            .validate()
            .unwrap_err()
            .contains("clear"));
        assert!(directory("ldap://dc1:389", false, true).validate().is_ok());
        assert!(directory("http://dc1", false, true).validate().is_err());
    }

    #[test]
    fn the_first_matching_mapping_gives_the_role() {
        let d = directory("ldaps://dc1", false, false);
        let groups = vec![
            "cn=auditors,ou=groups,dc=corp".to_string(),
            "auditors".into(),
            "Finance-Backup".into(),
        ];
        assert_eq!(
            d.map_groups(&groups),
            Some(("backup-admin".into(), vec!["finance".into()]))
        );
        assert_eq!(d.map_groups(&["others".to_string()]), None);
    }
}

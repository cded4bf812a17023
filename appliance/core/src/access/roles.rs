//! Privileges and roles. A privilege names one controller function; a role
//! is a named set of them. Four roles are built in and cannot be changed;
//! administrators add custom ones. A role grants nothing beyond its set.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Named controller functions a role may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Privilege {
    View,
    Power,
    ConsoleSettings,
    Backup,
    Restore,
    /// Restore as a new VM, or anything else that creates a VM.
    CreateVm,
    DeleteBackup,
    ManageDatastores,
    ManageHa,
    ManageHosts,
    ManageUsers,
    /// Reports and the audit trail.
    ViewReports,
    Administer,
}

impl Privilege {
    pub const ALL: [Privilege; 13] = [
        Privilege::View,
        Privilege::Power,
        Privilege::ConsoleSettings,
        Privilege::Backup,
        Privilege::Restore,
        Privilege::CreateVm,
        Privilege::DeleteBackup,
        Privilege::ManageDatastores,
        Privilege::ManageHa,
        Privilege::ManageHosts,
        Privilege::ManageUsers,
        Privilege::ViewReports,
        Privilege::Administer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Privilege::View => "view",
            Privilege::Power => "power",
            Privilege::ConsoleSettings => "console-settings",
            Privilege::Backup => "backup",
            Privilege::Restore => "restore",
            Privilege::CreateVm => "create-vm",
            Privilege::DeleteBackup => "delete-backup",
            Privilege::ManageDatastores => "manage-datastores",
            Privilege::ManageHa => "manage-ha",
            Privilege::ManageHosts => "manage-hosts",
            Privilege::ManageUsers => "manage-users",
            Privilege::ViewReports => "view-reports",
            Privilege::Administer => "administer",
        }
    }
}

/// A set of privileges, cheap to copy into every principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Privileges(u16);

impl Privileges {
    pub fn all() -> Privileges {
        Privileges::from_iter(Privilege::ALL)
    }

    pub fn contains(self, p: Privilege) -> bool {
        self.0 & (1 << p as u16) != 0
    }

    /// Whether every privilege of `other` is also in `self`.
    pub fn covers(self, other: Privileges) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn iter(self) -> impl Iterator<Item = Privilege> {
        Privilege::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }
}

impl FromIterator<Privilege> for Privileges {
    fn from_iter<I: IntoIterator<Item = Privilege>>(iter: I) -> Self {
        Privileges(iter.into_iter().fold(0, |bits, p| bits | (1 << p as u16)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub privileges: BTreeSet<Privilege>,
    #[serde(default, skip_deserializing)]
    pub builtin: bool,
}

impl RoleDef {
    pub fn privileges(&self) -> Privileges {
        self.privileges.iter().copied().collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        super::check_slug("role", &self.name)?;
        if builtin_role(&self.name).is_some() {
            return Err(format!("{} is a built-in role", self.name));
        }
        if self.description.len() > 200 {
            return Err("description: at most 200 characters".into());
        }
        Ok(())
    }
}

pub const ADMINISTRATOR: &str = "administrator";

/// The built-in roles: administrator (everything), operator (day-to-day VM
/// work), backup-admin (backups and exact restores, no new VMs), auditor
/// (read-only, with reports and the audit trail).
pub fn builtin_roles() -> Vec<RoleDef> {
    use Privilege::*;
    let role = |name: &str, description: &str, privileges: &[Privilege]| RoleDef {
        name: name.to_string(),
        description: description.to_string(),
        privileges: privileges.iter().copied().collect(),
        builtin: true,
    };
    vec![
        role(ADMINISTRATOR, "Everything", &Privilege::ALL),
        role(
            "operator",
            "Run VMs: power, back up, restore, create VMs",
            &[View, Power, Backup, Restore, CreateVm, ViewReports],
        ),
        role(
            "backup-admin",
            "Back up and restore in place; no new VMs",
            &[View, Backup, Restore, DeleteBackup, ViewReports],
        ),
        role(
            "auditor",
            "Read-only, with reports and the audit trail",
            &[View, ViewReports],
        ),
    ]
}

/// A built-in role by name; `viewer` (before custom roles) is the auditor.
pub fn builtin_role(name: &str) -> Option<RoleDef> {
    let name = if name == "viewer" { "auditor" } else { name };
    builtin_roles().into_iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_roles_grant_what_they_say() {
        let get = |n: &str| builtin_role(n).unwrap().privileges();
        assert!(get(ADMINISTRATOR).covers(Privileges::all()));
        assert!(get("operator").contains(Privilege::Power));
        assert!(!get("operator").contains(Privilege::ManageHosts));
        let backup = get("backup-admin");
        assert!(backup.contains(Privilege::Backup) && !backup.contains(Privilege::CreateVm));
        assert!(get("viewer") == get("auditor"));
        assert!(!get("auditor").contains(Privilege::Power));
        assert!(get("operator").covers(get("auditor")));
        assert!(!get("auditor").covers(get("operator")));
    }

    #[test]
    fn privilege_names_round_trip_and_custom_names_are_checked() {
        for p in Privilege::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        let role: RoleDef =
            serde_json::from_str(r#"{"name":"finance-backup","privileges":["view","backup"]}"#)
                .unwrap();
        role.validate().unwrap();
        assert_eq!(role.privileges().iter().count(), 2);
        let clash = RoleDef {
            name: "operator".into(),
            ..role.clone()
        };
        assert!(clash.validate().is_err());
        assert!(serde_json::from_str::<RoleDef>(r#"{"name":"x-y","privileges":["fly"]}"#).is_err());
    }
}

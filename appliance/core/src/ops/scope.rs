//! What a principal may see: VM categories (own tags and derived rules),
//! access policies, and the visibility checks every listing and lookup
//! goes through. A VM outside the principal's scope is treated exactly
//! like one that does not exist.

use std::collections::HashSet;

use super::{Ops, OpsError};
use crate::access::scope::AccessPolicy;
use crate::access::{require, Principal, Privilege};
use crate::inventory::categories::{
    categories_of, check_key, check_value, Categories, CategoryRule,
};
use crate::inventory::Vm;

impl Ops {
    /// A VM's categories: derived by the rules, then its own tags.
    pub fn vm_categories(&self, vm: &Vm) -> Categories {
        let rules = self.category_rules.all();
        let host_name = self.inventory.host_name(&vm.host_id);
        categories_of(
            &rules,
            self.vm_tags.get(&vm.info.uuid).as_ref(),
            &vm.info.name,
            &vm.host_id,
            &host_name,
        )
    }

    pub fn visible(&self, who: &Principal, vm: &Vm) -> bool {
        who.scope.is_none() || who.sees(&self.vm_categories(vm))
    }

    /// A VM's categories for many VMs: rules and host names read once, so
    /// it may run inside an inventory scan.
    pub fn categorizer(&self) -> impl Fn(&Vm) -> Categories + '_ {
        let rules = self.category_rules.all();
        let hosts: std::collections::HashMap<String, String> = self
            .inventory
            .hosts()
            .into_iter()
            .map(|h| (h.host.id.clone(), h.host.name.clone()))
            .collect();
        move |vm: &Vm| {
            let host_name = hosts.get(&vm.host_id).map_or("", String::as_str);
            let own = self.vm_tags.get(&vm.info.uuid);
            categories_of(&rules, own.as_ref(), &vm.info.name, &vm.host_id, host_name)
        }
    }

    /// [`Ops::visible`] for many VMs (see [`Ops::categorizer`]).
    pub fn visibility<'a>(&'a self, who: &'a Principal) -> impl Fn(&Vm) -> bool + 'a {
        let categories = who.scope.is_some().then(|| self.categorizer());
        move |vm: &Vm| categories.as_ref().is_none_or(|c| who.sees(&c(vm)))
    }

    /// Whether a VM known only by UUID (a job's, a backup's) is visible:
    /// one no longer in the inventory only to unrestricted principals.
    pub fn visible_uuid(&self, who: &Principal, uuid: &str) -> bool {
        if who.scope.is_none() {
            return true;
        }
        self.inventory
            .vm(uuid)
            .is_some_and(|vm| self.visible(who, &vm))
    }

    /// Whether a request path (`vms/ID/...`, `backups/REF/...`) names a VM
    /// hidden from `who` (or, for a restricted principal, one that does
    /// not exist: the two must look the same).
    pub fn names_hidden_vm(&self, who: &Principal, segments: &[&str]) -> bool {
        let uuid = match segments {
            ["vms", id, ..] => id.to_string(),
            ["backups", reference, ..] => match super::BackupRef::parse(reference) {
                Some(r) => r.vm.as_str().to_string(),
                None => return who.scope.is_some(),
            },
            _ => return false,
        };
        !self.visible_uuid(who, &uuid)
    }

    /// What filters text that may mention VMs (events, audit records) for
    /// `who`; `None` when unrestricted.
    pub fn text_filter(&self, who: &Principal) -> Option<TextFilter> {
        who.scope.as_ref()?;
        let visible = self.visibility(who);
        let mut filter = TextFilter::default();
        self.inventory.with_vms(|vms| {
            for vm in vms {
                if visible(vm) {
                    filter.known_ids.insert(vm.info.uuid.to_ascii_lowercase());
                } else {
                    filter.hidden_words.insert(vm.info.name.clone());
                    filter.hidden_words.insert(vm.info.uuid.clone());
                }
            }
        });
        for h in self.inventory.hosts() {
            filter.known_ids.insert(h.host.id.to_ascii_lowercase());
        }
        Some(filter)
    }

    pub fn vm_own_categories(
        &self,
        who: &Principal,
        vm_id: &str,
    ) -> Result<(Categories, Categories), OpsError> {
        let vm = self.vm(who, vm_id)?;
        Ok((
            self.vm_tags.get(&vm.info.uuid).unwrap_or_default(),
            self.vm_categories(&vm),
        ))
    }

    /// Replaces a VM's own tags.
    pub async fn set_vm_categories(
        &self,
        who: &Principal,
        vm_id: &str,
        tags: Categories,
    ) -> Result<Categories, OpsError> {
        let vm = self.vm(who, vm_id)?;
        let result = async {
            require(who, Privilege::ManageUsers, "setting VM categories")?;
            super::require_unrestricted(who, "setting VM categories")?;
            for (k, v) in &tags {
                check_key(k).map_err(OpsError::BadRequest)?;
                check_value(v).map_err(OpsError::BadRequest)?;
            }
            if tags.len() > 32 {
                return Err(OpsError::BadRequest("at most 32 categories per VM".into()));
            }
            self.vm_tags.put(&vm.info.uuid, tags.clone()).await?;
            Ok(tags)
        }
        .await;
        let object = format!("vm {} ({})", vm.info.name, vm.info.uuid);
        self.audited(who, "set VM categories", &object, result)
            .await
    }

    pub fn category_rules(&self, who: &Principal) -> Result<Vec<CategoryRule>, OpsError> {
        require(who, Privilege::View, "listing category rules")?;
        Ok(self.category_rules.all())
    }

    pub async fn add_category_rule(
        &self,
        who: &Principal,
        mut rule: CategoryRule,
    ) -> Result<CategoryRule, OpsError> {
        let object = format!("category rule {}={}", rule.key, rule.value);
        let result = async {
            require(who, Privilege::ManageUsers, "managing category rules")?;
            super::require_unrestricted(who, "managing category rules")?;
            rule.validate().map_err(OpsError::BadRequest)?;
            rule.id = uuid::Uuid::new_v4().to_string();
            self.category_rules.put(&rule.id, rule.clone()).await?;
            Ok(rule)
        }
        .await;
        self.audited(who, "add category rule", &object, result)
            .await
    }

    pub async fn delete_category_rule(&self, who: &Principal, id: &str) -> Result<(), OpsError> {
        let result = async {
            require(who, Privilege::ManageUsers, "managing category rules")?;
            super::require_unrestricted(who, "managing category rules")?;
            if !self.category_rules.delete(id).await? {
                return Err(OpsError::NotFound(format!("no category rule {id}")));
            }
            Ok(())
        }
        .await;
        self.audited(
            who,
            "delete category rule",
            &format!("category rule {id}"),
            result,
        )
        .await
    }

    pub fn access_policies(&self, who: &Principal) -> Result<Vec<AccessPolicy>, OpsError> {
        require(who, Privilege::ManageUsers, "listing access policies")?;
        Ok(self.access.policies.all())
    }

    pub fn access_policy(&self, who: &Principal, name: &str) -> Result<AccessPolicy, OpsError> {
        require(who, Privilege::ManageUsers, "viewing access policies")?;
        self.access
            .policies
            .get(name)
            .ok_or_else(|| OpsError::NotFound(format!("no access policy {name}")))
    }

    /// Creates (`create`) or replaces an access policy.
    pub async fn put_access_policy(
        &self,
        who: &Principal,
        policy: AccessPolicy,
        create: bool,
    ) -> Result<AccessPolicy, OpsError> {
        let object = format!("access policy {}", policy.name);
        let result = async {
            require(who, Privilege::ManageUsers, "managing access policies")?;
            super::require_unrestricted(who, "managing access policies")?;
            policy.validate().map_err(OpsError::BadRequest)?;
            let exists = self.access.policies.get(&policy.name).is_some();
            if create && exists {
                return Err(OpsError::Conflict(format!(
                    "access policy {} exists",
                    policy.name
                )));
            }
            if !create && !exists {
                return Err(OpsError::NotFound(format!(
                    "no access policy {}",
                    policy.name
                )));
            }
            self.access
                .policies
                .put(&policy.name, policy.clone())
                .await?;
            Ok(policy)
        }
        .await;
        let action = if create {
            "create access policy"
        } else {
            "update access policy"
        };
        self.audited(who, action, &object, result).await
    }

    pub async fn delete_access_policy(&self, who: &Principal, name: &str) -> Result<(), OpsError> {
        let result = async {
            require(who, Privilege::ManageUsers, "managing access policies")?;
            super::require_unrestricted(who, "managing access policies")?;
            let holders: Vec<String> = self
                .access
                .users()
                .into_iter()
                .filter(|u| u.policies.iter().any(|p| p == name))
                .map(|u| u.name)
                .collect();
            if !holders.is_empty() {
                return Err(OpsError::Conflict(format!(
                    "access policy {name} is assigned to {}",
                    holders.join(", ")
                )));
            }
            if !self.access.policies.delete(name).await? {
                return Err(OpsError::NotFound(format!("no access policy {name}")));
            }
            Ok(())
        }
        .await;
        self.audited(
            who,
            "delete access policy",
            &format!("access policy {name}"),
            result,
        )
        .await
    }
}

/// Decides whether a text may reach a restricted principal: it names no
/// VM hidden from them, and every UUID in it is a VM they see or a host.
/// A UUID of a VM no longer in the inventory (whose name is no longer
/// known either) is therefore hidden too.
#[derive(Debug, Default)]
pub struct TextFilter {
    hidden_words: HashSet<String>,
    known_ids: HashSet<String>,
}

impl TextFilter {
    pub fn allows(&self, text: &str) -> bool {
        !self.hidden_words.iter().any(|w| text.contains(w.as_str()))
            && uuids_in(text).all(|u| self.known_ids.contains(&u.to_ascii_lowercase()))
    }
}

/// Keeps the items whose text `filter` allows (all, without a filter).
pub fn allowed_by<T>(
    items: Vec<T>,
    filter: Option<&TextFilter>,
    text: impl Fn(&T) -> String,
) -> Vec<T> {
    match filter {
        None => items,
        Some(f) => items.into_iter().filter(|i| f.allows(&text(i))).collect(),
    }
}

/// Every UUID-shaped run (8-4-4-4-12 hex digits) in `text`.
fn uuids_in(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(35))
        .filter(move |&i| {
            bytes[i..i + 36].iter().enumerate().all(|(j, b)| match j {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            })
        })
        .map(move |i| &text[i..i + 36])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_naming_a_hidden_or_unknown_vm_is_held_back() {
        let mut f = TextFilter::default();
        f.hidden_words.insert("hr-db".into());
        f.known_ids
            .insert("6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162".into());
        assert!(f.allows("vm fin-app (6F1C3E2A-0B4D-4C8E-9A7B-1D2E3F405162)"));
        assert!(f.allows("login"));
        assert!(!f.allows("vm hr-db (00000000-0000-4000-8000-000000000001)"));
        assert!(
            !f.allows("vm gone (00000000-0000-4000-8000-000000000002)"),
            "a VM no longer in the inventory"
        );
        assert!(!f.allows("backup local:00000000-0000-4000-8000-000000000002@2026-01-01T00:00:00Z"));
        assert_eq!(uuids_in("x").count(), 0);
    }
}

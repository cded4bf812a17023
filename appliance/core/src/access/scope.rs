//! Access policies: which VMs a user sees and acts on, by category. A
//! policy is a list of rules; across all of a user's policies a matching
//! `deny` beats any `allow`, and a VM no `allow` matches is invisible. A
//! user without policies is unrestricted. Invisible means absent: every
//! interface answers 404 for it, as for a VM that does not exist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
}

/// Matches VMs whose category `key` is `value` (`*`: has the key at all;
/// key `*` and value `*`: every VM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRule {
    pub effect: Effect,
    pub key: String,
    pub value: String,
}

impl ScopeRule {
    fn matches(&self, categories: &BTreeMap<String, String>) -> bool {
        if self.key == "*" {
            return self.value == "*" || categories.values().any(|v| *v == self.value);
        }
        categories
            .get(&self.key)
            .is_some_and(|v| self.value == "*" || *v == self.value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rules: Vec<ScopeRule>,
}

impl AccessPolicy {
    pub fn validate(&self) -> Result<(), String> {
        super::check_slug("policy", &self.name)?;
        if self.rules.is_empty() || self.rules.len() > 100 {
            return Err("a policy has 1 to 100 rules".into());
        }
        for r in &self.rules {
            if r.key != "*" {
                crate::inventory::categories::check_key(&r.key)?;
            }
            if r.value != "*" {
                crate::inventory::categories::check_value(&r.value)?;
            }
        }
        Ok(())
    }
}

/// The rules of all of a user's policies together.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    rules: Vec<ScopeRule>,
}

impl Scope {
    pub fn of(policies: &[AccessPolicy]) -> Scope {
        Scope {
            rules: policies.iter().flat_map(|p| p.rules.clone()).collect(),
        }
    }

    /// Deny first, then allow; nothing matching means no.
    pub fn allows(&self, categories: &BTreeMap<String, String>) -> bool {
        let matching = |effect| {
            self.rules
                .iter()
                .any(|r| r.effect == effect && r.matches(categories))
        };
        !matching(Effect::Deny) && matching(Effect::Allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(effect: Effect, key: &str, value: &str) -> ScopeRule {
        ScopeRule {
            effect,
            key: key.into(),
            value: value.into(),
        }
    }

    fn cats(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn deny_beats_allow_and_nothing_matching_hides() {
        let finance = AccessPolicy {
            name: "finance".into(),
            description: String::new(),
            rules: vec![rule(Effect::Allow, "department", "Finance")],
        };
        let not_hr = AccessPolicy {
            name: "not-hr".into(),
            description: String::new(),
            rules: vec![
                rule(Effect::Allow, "*", "*"),
                rule(Effect::Deny, "department", "HR"),
            ],
        };
        let s = Scope::of(std::slice::from_ref(&finance));
        assert!(s.allows(&cats(&[("department", "Finance")])));
        assert!(!s.allows(&cats(&[("department", "HR")])));
        assert!(!s.allows(&cats(&[])), "untagged VMs are outside");
        let s = Scope::of(std::slice::from_ref(&not_hr));
        assert!(s.allows(&cats(&[])));
        assert!(!s.allows(&cats(&[("department", "HR")])));
        not_hr.validate().unwrap();
        let s = Scope::of(&[finance, not_hr]);
        assert!(
            !s.allows(&cats(&[("department", "HR")])),
            "a deny anywhere wins"
        );
    }
}

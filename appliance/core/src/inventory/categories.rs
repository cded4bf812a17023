//! VM categories: `key=value` tags such as `department=Finance`, set on a
//! VM explicitly or derived by rules from its name (a glob) or its host.
//! Access policies select VMs by them. Pure functions; stored by `ops`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Categories = BTreeMap<String, String>;

/// Gives `key=value` to every VM whose name matches `name_pattern` (a glob
/// with `*` and `?`; empty: any) and whose host is `host` (id or name;
/// empty: any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    #[serde(default)]
    pub id: String,
    pub key: String,
    pub value: String,
    #[serde(default)]
    pub name_pattern: String,
    #[serde(default)]
    pub host: String,
}

impl CategoryRule {
    pub fn validate(&self) -> Result<(), String> {
        check_key(&self.key)?;
        check_value(&self.value)?;
        if self.name_pattern.is_empty() && self.host.is_empty() {
            return Err("a rule needs a name_pattern or a host".into());
        }
        if self.name_pattern.len() > 200 || self.host.len() > 200 {
            return Err("name_pattern and host: at most 200 characters".into());
        }
        Ok(())
    }

    fn applies(&self, vm_name: &str, host_id: &str, host_name: &str) -> bool {
        (self.name_pattern.is_empty() || glob_match(&self.name_pattern, vm_name))
            && (self.host.is_empty() || self.host == host_id || self.host == host_name)
    }
}

pub fn check_key(key: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then_some(())
        .ok_or_else(|| format!("category {key:?}: 1-64 letters, digits, '-', '_' or '.'"))
}

pub fn check_value(value: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&value.len()) && !value.chars().any(char::is_control);
    ok.then_some(())
        .ok_or_else(|| format!("category value {value:?}: 1-128 printable characters"))
}

/// A VM's categories: what the rules derive, then its own tags on top.
pub fn categories_of(
    rules: &[CategoryRule],
    own: Option<&Categories>,
    vm_name: &str,
    host_id: &str,
    host_name: &str,
) -> Categories {
    let mut out: Categories = rules
        .iter()
        .filter(|r| r.applies(vm_name, host_id, host_name))
        .map(|r| (r.key.clone(), r.value.clone()))
        .collect();
    if let Some(own) = own {
        out.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// `*` matches any run of characters, `?` any one; case-sensitive.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("fin-*", "fin-db"));
        assert!(glob_match("*-db-?", "hr-db-1"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("fin-*", "hr-fin-db"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn own_tags_win_over_rules() {
        let rule = |key: &str, value: &str, pattern: &str, host: &str| CategoryRule {
            id: String::new(),
            key: key.into(),
            value: value.into(),
            name_pattern: pattern.into(),
            host: host.into(),
        };
        let rules = [
            rule("department", "Finance", "fin-*", ""),
            rule("site", "berlin", "", "kvm-7"),
        ];
        let c = categories_of(&rules, None, "fin-db", "id7", "kvm-7");
        assert_eq!(c.get("department").map(String::as_str), Some("Finance"));
        assert_eq!(c.get("site").map(String::as_str), Some("berlin"));
        let own: Categories = [("department".to_string(), "HR".to_string())].into();
        let c = categories_of(&rules, Some(&own), "fin-db", "id1", "kvm-1");
        assert_eq!(c.get("department").map(String::as_str), Some("HR"));
        assert!(!c.contains_key("site"));
        assert!(rule("k", "v", "", "").validate().is_err());
        assert!(rule("bad key", "v", "*", "").validate().is_err());
    }
}

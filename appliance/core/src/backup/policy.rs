//! Backup policies: what to back up (VMs by id, name pattern or category), when (a
//! calendar schedule), where, and what to keep afterwards (retention). The
//! decisions — which VMs a policy covers, whether it is due — are pure
//! functions of plain data, tested without a clock or a datastore.

use serde::{Deserialize, Serialize};

use super::calendar::CalendarEvent;
use super::prune::PruneOptions;
use crate::inventory::categories::Categories;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    Auto,
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPolicy {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub schedule: CalendarEvent,
    pub datastore: String,
    pub mode: PolicyMode,
    /// VMs by UUID.
    #[serde(default)]
    pub vms: Vec<String>,
    /// And/or every VM whose name matches this pattern (`*` any run of
    /// characters, e.g. `fin-*`).
    #[serde(default)]
    pub name_pattern: Option<String>,
    /// And/or every VM of this category, `key=value`.
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub retention: PruneOptions,
    /// UNIX seconds of the last scheduled run (or of creation).
    pub last_run: u64,
    /// Who last saved the policy: scheduled runs act with that user's
    /// current rights and scope. `None` (policies saved before owners were
    /// recorded): the scheduler's full rights.
    #[serde(default)]
    pub owner: Option<String>,
    /// When to re-verify every backup of the covered VMs, if at all.
    #[serde(default)]
    pub verify_schedule: Option<CalendarEvent>,
    /// UNIX seconds of the last scheduled verification (or of creation).
    #[serde(default)]
    pub last_verify: u64,
    /// Boot-verify each VM's new backup after each run, if set.
    #[serde(default)]
    pub boot_verify: Option<PolicyBootVerify>,
}

/// How a policy boot-verifies its new backups (see `backup::boot_verify`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBootVerify {
    /// Wait for this serial console line; unset: for the guest agent.
    #[serde(default)]
    pub serial_line: Option<String>,
    /// Seconds each guest has; unset: the default (300).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// `*`-glob match, case-insensitive.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    crate::inventory::categories::glob_match(&pattern.to_lowercase(), &name.to_lowercase())
}

impl BackupPolicy {
    /// Whether the policy covers the VM `uuid` named `name`, of these
    /// categories.
    pub fn covers(&self, uuid: &str, name: &str, categories: &Categories) -> bool {
        self.vms.iter().any(|v| v == uuid)
            || self
                .name_pattern
                .as_deref()
                .is_some_and(|p| name_matches(p, name))
            || self
                .category
                .as_deref()
                .and_then(|c| c.split_once('='))
                .is_some_and(|(k, v)| categories.get(k).is_some_and(|have| have == v))
    }

    /// The scheduled time of the next run after the last one, if it has come.
    pub fn due(&self, now: u64) -> Option<u64> {
        self.schedule
            .next_after(self.last_run)
            .filter(|t| *t <= now)
    }

    /// Like [`BackupPolicy::due`], for the verify schedule.
    pub fn verify_due(&self, now: u64) -> Option<u64> {
        self.verify_schedule
            .as_ref()?
            .next_after(self.last_verify)
            .filter(|t| *t <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(schedule: &str, last_run: u64) -> BackupPolicy {
        BackupPolicy {
            id: "p".into(),
            name: "nightly".into(),
            enabled: true,
            schedule: CalendarEvent::parse(schedule).unwrap(),
            datastore: "local".into(),
            mode: PolicyMode::Auto,
            vms: vec!["u1".into()],
            name_pattern: Some("fin-*".into()),
            category: None,
            retention: PruneOptions::default(),
            last_run,
            owner: None,
            verify_schedule: Some(CalendarEvent::parse("sun 03:00").unwrap()),
            last_verify: last_run,
            boot_verify: None,
        }
    }

    #[test]
    fn covers_vms_by_id_name_pattern_and_category() {
        let none = Categories::new();
        let mut p = policy("daily 02:00", 0);
        assert!(p.covers("u1", "anything", &none));
        assert!(p.covers("u2", "FIN-db01", &none));
        assert!(!p.covers("u2", "hr-db01", &none));
        p.category = Some("department=HR".into());
        let hr: Categories = [("department".to_string(), "HR".to_string())].into();
        assert!(p.covers("u3", "payroll", &hr));
        assert!(!p.covers("u3", "payroll", &none));
        assert!(name_matches("*db*", "fin-db-01"));
        assert!(name_matches("web", "WEB"));
        assert!(!name_matches("a*c", "abd"));
        assert!(name_matches("a*b*c", "axxbyyc"));
    }

    #[test]
    fn is_due_once_the_next_scheduled_time_has_passed() {
        // 2026-11-25T20:47:00Z, a Wednesday.
        let now = 1_795_639_620;
        let p = policy("daily 02:00", now - 60);
        assert_eq!(p.due(now), None, "next 02:00 is tomorrow");
        let tomorrow_2am = p.schedule.next_after(now).unwrap();
        assert_eq!(p.due(tomorrow_2am), Some(tomorrow_2am));
        let p = policy("*:0/15", now - 3600);
        assert!(p.due(now).is_some(), "missed runs are caught up once");
        assert_eq!(
            p.verify_due(now),
            None,
            "the next Sunday 03:00 is days away"
        );
        assert!(p.verify_due(now + 5 * 86_400).is_some());
    }
}

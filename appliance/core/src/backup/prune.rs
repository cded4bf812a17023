//! Retention: which backups of one VM a keep-last/hourly/.../yearly policy
//! keeps. A pure function over (id, protected) pairs, with Proxmox Backup
//! Server's semantics; protected backups are always kept, and no policy keeps all.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::BackupId;

/// How many of each period to keep. `None` and `Some(0)` both mean "this
/// rule keeps nothing"; if no rule keeps anything, every backup is kept
/// (an empty policy must not delete a VM's backups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruneOptions {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
}

impl PruneOptions {
    /// Whether any rule is set, i.e. whether applying these options can
    /// remove a backup.
    pub fn prunes(&self) -> bool {
        RULES.iter().any(|(_, count)| count(self).unwrap_or(0) > 0)
    }
}

/// The rule that kept a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepReason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    /// No rule is set, so nothing is pruned.
    NoPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneMark {
    Keep(KeepReason),
    Protected,
    Remove,
}

impl PruneMark {
    pub fn keeps(self) -> bool {
        self != PruneMark::Remove
    }
}

/// A rule's count, read from the options.
type CountOf = fn(&PruneOptions) -> Option<u32>;

/// The rules in the order they are applied.
const RULES: [(KeepReason, CountOf); 6] = [
    (KeepReason::Last, |o| o.keep_last),
    (KeepReason::Hourly, |o| o.keep_hourly),
    (KeepReason::Daily, |o| o.keep_daily),
    (KeepReason::Weekly, |o| o.keep_weekly),
    (KeepReason::Monthly, |o| o.keep_monthly),
    (KeepReason::Yearly, |o| o.keep_yearly),
];

impl KeepReason {
    /// The rule's period that `id` falls in, as a key: equal keys, same
    /// period. UTC; weeks are ISO 8601 weeks (Monday to Sunday, numbered
    /// within their ISO year, which may differ from the calendar year).
    fn period(self, id: &BackupId) -> i64 {
        let unix = id.unix_seconds() as i64;
        // A parsed BackupId is always a valid time; the fallback is unreachable.
        let t = OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        match self {
            KeepReason::Last | KeepReason::NoPolicy => unix,
            KeepReason::Hourly => unix / 3600,
            KeepReason::Daily => unix / 86_400,
            KeepReason::Weekly => {
                let (year, week, _) = t.to_iso_week_date();
                i64::from(year) * 100 + i64::from(week)
            }
            KeepReason::Monthly => i64::from(t.year()) * 100 + i64::from(u8::from(t.month())),
            KeepReason::Yearly => i64::from(t.year()),
        }
    }
}

impl PruneOptions {
    /// Whether any rule keeps at least one backup.
    pub fn keeps_something(&self) -> bool {
        RULES.iter().any(|(_, count)| count(self).unwrap_or(0) > 0)
    }
}

/// Marks each backup of one VM, returned newest first. Each rule in turn
/// walks the backups not yet marked, newest first, and keeps the newest
/// backup of each of its periods that no backup kept by an earlier rule falls
/// in, until it has kept `N`. A backup in a period the rule already kept is
/// marked Remove, so later rules skip it too (as PBS does). Protected backups
/// are kept without counting toward any rule; what is left unmarked is removed.
pub fn compute_prune(
    backups: &[(BackupId, bool)],
    opts: &PruneOptions,
) -> Vec<(BackupId, PruneMark)> {
    let mut list: Vec<&(BackupId, bool)> = backups.iter().collect();
    list.sort_by(|a, b| b.0.cmp(&a.0));
    let keep_all = !opts.keeps_something();
    let mut marks: Vec<Option<PruneMark>> = list
        .iter()
        .map(|(_, protected)| match (protected, keep_all) {
            (true, _) => Some(PruneMark::Protected),
            (false, true) => Some(PruneMark::Keep(KeepReason::NoPolicy)),
            (false, false) => None,
        })
        .collect();
    for (reason, count) in RULES {
        if let Some(count) = count(opts) {
            mark_rule(&list, &mut marks, count as usize, reason);
        }
    }
    list.iter()
        .zip(marks)
        .map(|((id, _), mark)| (id.clone(), mark.unwrap_or(PruneMark::Remove)))
        .collect()
}

fn mark_rule(
    list: &[&(BackupId, bool)],
    marks: &mut [Option<PruneMark>],
    count: usize,
    reason: KeepReason,
) {
    let covered: HashSet<i64> = list
        .iter()
        .zip(marks.iter())
        .filter(|(_, mark)| matches!(mark, Some(PruneMark::Keep(_))))
        .map(|((id, _), _)| reason.period(id))
        .collect();
    let mut kept = HashSet::new();
    for ((id, _), mark) in list.iter().zip(marks.iter_mut()) {
        let p = reason.period(id);
        if mark.is_some() || covered.contains(&p) {
            continue;
        }
        if kept.contains(&p) {
            *mark = Some(PruneMark::Remove);
        } else if kept.len() < count {
            kept.insert(p);
            *mark = Some(PruneMark::Keep(reason));
        } else {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeepReason::*;
    use PruneMark::{Keep, Protected, Remove};

    fn id(text: &str) -> BackupId {
        text.parse().unwrap()
    }

    /// Runs the policy on unprotected backups given oldest first, and returns
    /// the marks oldest first too, so a test reads like the timeline.
    fn run(times: &[&str], opts: PruneOptions) -> Vec<PruneMark> {
        let backups: Vec<_> = times.iter().map(|t| (id(t), false)).collect();
        let mut marks: Vec<_> = compute_prune(&backups, &opts)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        marks.reverse();
        marks
    }

    #[test]
    fn no_policy_keeps_everything() {
        let times = ["2026-11-24T10:00:00Z", "2026-11-25T10:00:00Z"];
        let zeros = PruneOptions {
            keep_last: Some(0),
            keep_daily: Some(0),
            ..Default::default()
        };
        for opts in [PruneOptions::default(), zeros] {
            assert_eq!(run(&times, opts), vec![Keep(NoPolicy); 2]);
        }
        assert!(compute_prune(&[], &PruneOptions::default()).is_empty());
    }

    #[test]
    fn keep_last_keeps_the_newest_and_returns_newest_first() {
        let backups = [
            (id("2026-11-24T10:00:00Z"), false),
            (id("2026-11-25T10:00:00Z"), false),
            (id("2026-11-23T10:00:00Z"), false),
        ];
        let opts = PruneOptions {
            keep_last: Some(2),
            ..Default::default()
        };
        let got = compute_prune(&backups, &opts);
        let expected = [
            ("2026-11-25T10:00:00Z", Keep(Last)),
            ("2026-11-24T10:00:00Z", Keep(Last)),
            ("2026-11-23T10:00:00Z", Remove),
        ];
        assert_eq!(got, expected.map(|(t, m)| (id(t), m)));
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let times = [
            "2026-11-23T01:00:00Z",
            "2026-11-23T23:00:00Z",
            "2026-11-24T08:00:00Z",
            "2026-11-25T08:00:00Z",
            "2026-11-25T20:00:00Z",
        ];
        let opts = PruneOptions {
            keep_daily: Some(2),
            ..Default::default()
        };
        assert_eq!(
            run(&times, opts),
            [Remove, Remove, Keep(Daily), Remove, Keep(Daily)]
        );
    }

    #[test]
    fn later_rules_only_cover_older_periods() {
        // Every day at 00:00 and 12:00 from Sunday 2026-11-01 to Monday 2026-11-30.
        let ids: Vec<BackupId> = (0..60)
            .map(|i| {
                BackupId::from_unix(id("2026-11-01T00:00:00Z").unix_seconds() + i * 43_200).unwrap()
            })
            .collect();
        let backups: Vec<_> = ids.iter().map(|id| (id.clone(), false)).collect();
        let opts = PruneOptions {
            keep_last: Some(3),
            keep_daily: Some(2),
            keep_weekly: Some(2),
            ..Default::default()
        };
        let kept: Vec<(String, KeepReason)> = compute_prune(&backups, &opts)
            .into_iter()
            .filter_map(|(id, m)| match m {
                Keep(r) => Some((id.to_string(), r)),
                _ => None,
            })
            .collect();
        let expected = [
            ("2026-11-30T12:00:00Z", Last),
            ("2026-11-30T00:00:00Z", Last),
            ("2026-11-29T12:00:00Z", Last),
            ("2026-11-28T12:00:00Z", Daily), // 29th is covered by keep-last
            ("2026-11-27T12:00:00Z", Daily),
            ("2026-11-22T12:00:00Z", Weekly), // weeks of 30th and 23rd..29th are covered
            ("2026-11-15T12:00:00Z", Weekly),
        ];
        assert_eq!(kept, expected.map(|(t, r)| (t.to_string(), r)));
    }

    #[test]
    fn iso_weeks_monthly_and_yearly() {
        // 2026-12-31 (Thu) and 2027-01-03 (Sun) are both in ISO week 2026-W53.
        let times = [
            "2026-12-31T10:00:00Z",
            "2027-01-03T10:00:00Z",
            "2027-01-04T10:00:00Z",
        ];
        let weekly = PruneOptions {
            keep_weekly: Some(5),
            ..Default::default()
        };
        assert_eq!(run(&times, weekly), [Remove, Keep(Weekly), Keep(Weekly)]);
        let monthly = PruneOptions {
            keep_monthly: Some(5),
            ..Default::default()
        };
        assert_eq!(run(&times, monthly), [Keep(Monthly), Remove, Keep(Monthly)]);
        let times = [
            "2024-06-01T00:00:00Z",
            "2025-01-01T00:00:00Z",
            "2025-12-31T23:59:59Z",
        ];
        let yearly = PruneOptions {
            keep_yearly: Some(1),
            ..Default::default()
        };
        assert_eq!(run(&times, yearly), [Remove, Remove, Keep(Yearly)]);
    }

    #[test]
    fn a_week_removal_is_final_for_monthly_as_in_pbs() {
        // Sat 10-31 and Sun 11-01 share ISO week 44; keep-weekly keeps 11-01 and
        // marks 10-31 Remove, so keep-monthly's October pick is the older 10-25.
        let times = [
            "2026-10-25T10:00:00Z",
            "2026-10-31T10:00:00Z",
            "2026-11-01T10:00:00Z",
        ];
        let opts = PruneOptions {
            keep_weekly: Some(1),
            keep_monthly: Some(2),
            ..Default::default()
        };
        assert_eq!(run(&times, opts), [Keep(Monthly), Remove, Keep(Weekly)]);
    }

    #[test]
    fn protected_backups_are_kept_and_do_not_count() {
        let backups = [
            (id("2026-11-23T10:00:00Z"), false),
            (id("2026-11-24T10:00:00Z"), false),
            (id("2026-11-25T10:00:00Z"), true),
        ];
        let opts = PruneOptions {
            keep_last: Some(1),
            keep_daily: Some(1),
            ..Default::default()
        };
        let marks: Vec<_> = compute_prune(&backups, &opts)
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        // The protected 25th neither counts as "last" nor covers its day.
        assert_eq!(marks, [Protected, Keep(Last), Keep(Daily)]);
        let none = compute_prune(&backups[2..], &PruneOptions::default());
        assert_eq!(none[0].1, Protected);
    }

    #[test]
    fn options_serde() {
        let opts: PruneOptions =
            serde_json::from_str(r#"{"keep_last": 3, "keep_daily": 7}"#).unwrap();
        assert_eq!(
            (opts.keep_last, opts.keep_daily, opts.keep_yearly),
            (Some(3), Some(7), None)
        );
        assert!(serde_json::from_str::<PruneOptions>(r#"{"keep_lsat": 3}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Keep(NoPolicy)).unwrap(),
            r#"{"keep":"no-policy"}"#
        );
    }
}

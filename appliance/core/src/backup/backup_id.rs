//! `VmUuid` and `BackupId`, the names that become datastore path components.
//! Both parse strictly, so no name from a request, manifest or listing can
//! escape the datastore (`..`, `/`) or spell one backup two ways.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use super::{BackupError, Result};

/// A VM's UUID in canonical form: 36 characters, lowercase hex and dashes at
/// 8-4-4-4-12. Uppercase input is accepted and lowercased.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmUuid(String);

impl VmUuid {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VmUuid {
    type Err = BackupError;
    fn from_str(s: &str) -> Result<Self> {
        let well_formed = s.len() == 36
            && s.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if !well_formed {
            return Err(invalid("VM uuid", s));
        }
        Ok(VmUuid(s.to_ascii_lowercase()))
    }
}

/// A backup's id: its start time in UTC, whole seconds, RFC 3339 with `Z`
/// (`2026-11-25T20:30:00Z`). Fixed width, so text order is time order.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId {
    text: String,
    unix: u64,
}

impl BackupId {
    /// The id for a backup started at `unix` seconds (years 1970–9999).
    pub fn from_unix(unix: u64) -> Result<Self> {
        let t = i64::try_from(unix)
            .ok()
            .and_then(|u| OffsetDateTime::from_unix_timestamp(u).ok())
            .filter(|t| t.year() <= 9999)
            .ok_or_else(|| invalid("backup time", &unix.to_string()))?;
        let text = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        Ok(BackupId { text, unix })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn unix_seconds(&self) -> u64 {
        self.unix
    }
}

impl FromStr for BackupId {
    type Err = BackupError;
    fn from_str(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        let shape_ok = b.len() == 20
            && b.iter().enumerate().all(|(i, &c)| match i {
                4 | 7 => c == b'-',
                10 => c == b'T',
                13 | 16 => c == b':',
                19 => c == b'Z',
                _ => c.is_ascii_digit(),
            });
        if !shape_ok {
            return Err(invalid("backup id", s));
        }
        // Digits only from here on, so these parses cannot fail.
        let num = |r: std::ops::Range<usize>| s[r].parse::<u16>().unwrap_or(u16::MAX);
        let date = Month::try_from(num(5..7) as u8)
            .ok()
            .and_then(|m| Date::from_calendar_date(i32::from(num(0..4)), m, num(8..10) as u8).ok());
        let time = Time::from_hms(num(11..13) as u8, num(14..16) as u8, num(17..19) as u8).ok();
        let unix = date
            .zip(time)
            .map(|(d, t)| PrimitiveDateTime::new(d, t).assume_utc().unix_timestamp())
            .and_then(|u| u64::try_from(u).ok())
            .ok_or_else(|| invalid("backup id", s))?;
        Ok(BackupId {
            text: s.to_string(),
            unix,
        })
    }
}

fn invalid(kind: &'static str, value: &str) -> BackupError {
    BackupError::InvalidName {
        kind,
        value: value.chars().take(80).collect(),
    }
}

macro_rules! string_name {
    ($t:ty, $field:tt) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.$field)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), &self.$field)
            }
        }
        impl TryFrom<String> for $t {
            type Error = BackupError;
            fn try_from(s: String) -> Result<Self> {
                s.parse()
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}
string_name!(VmUuid, 0);
string_name!(BackupId, text);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_uuid_is_canonical_and_strict() {
        let u: VmUuid = "6F1C3E2A-0B4D-4C8E-9A7B-1D2E3F405162".parse().unwrap();
        assert_eq!(u.as_str(), "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f405162");
        for bad in [
            "",
            "..",
            "../../../../etc/passwd",
            "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f40516",
            "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f4051622",
            "6f1c3e2a/0b4d-4c8e-9a7b-1d2e3f405162",
            "6f1c3e2a-0b4d-4c8e-9a7b-1d2e3f40516g",
            "6f1c3e2a0b4d-4c8e-9a7b-1d2e3f4051623",
        ] {
            assert!(bad.parse::<VmUuid>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn backup_id_round_trips_time() {
        let id = BackupId::from_unix(1_795_638_600).unwrap();
        assert_eq!(id.as_str(), "2026-11-25T20:30:00Z");
        let parsed: BackupId = "2026-11-25T20:30:00Z".parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(parsed.unix_seconds(), 1_795_638_600);
        assert_eq!(
            BackupId::from_unix(0).unwrap().as_str(),
            "1970-01-01T00:00:00Z"
        );
        assert!(BackupId::from_unix(1).unwrap() > BackupId::from_unix(0).unwrap());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"2026-11-25T20:30:00Z\"");
        assert_eq!(serde_json::from_str::<BackupId>(&json).unwrap(), id);
    }

    #[test]
    fn backup_id_rejects_anything_else() {
        for bad in [
            "",
            "..",
            "../2026-11-25T20:30:00Z",
            "2026-11-25T20:30:00",
            "2026-11-25T20:30:00.5Z",
            "2026-11-25T20:30:00+00:00",
            "2026-11-25 20:30:00Z",
            "2026-13-25T20:30:00Z",
            "2026-02-30T20:30:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T20:30:60Z",
            "1969-12-31T23:59:59Z",
            "2026-11-25t20:30:00z",
            "+026-11-25T20:30:00Z",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "accepted {bad:?}");
        }
        assert!(serde_json::from_str::<BackupId>("\"../x\"").is_err());
    }
}

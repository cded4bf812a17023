//! `CalendarEvent`: when a scheduled job runs, as a systemd-like calendar
//! expression (`mon..fri 22:30`, `*:0/15`, `daily`, `*-*-01 03:00`). Parsing is
//! strict (bad input is an error, never a guess), and all times are UTC.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};

/// A set of minutes: those whose weekday, day of month, hour and minute are
/// each in its set. Sets are bit masks (bit n = value n; bit 0 = Monday).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CalendarEvent {
    weekdays: u64,
    days: u64,
    hours: u64,
    minutes: u64,
}

/// Why an expression was refused. Keywords: `hourly`, and `daily`, `weekly`,
/// `monthly`, each optionally followed by a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("empty calendar expression")]
    Empty,
    #[error("unknown weekday {0:?}: use mon, tue, wed, thu, fri, sat or sun")]
    UnknownWeekday(String),
    #[error("{field} {text:?} is not a number")]
    NotANumber { field: &'static str, text: String },
    #[error("{field} {value} is out of range {}..{}", range.0, range.1)]
    OutOfRange {
        field: &'static str,
        value: u32,
        range: (u32, u32),
    },
    #[error("{field} range {text:?} runs backwards")]
    BackwardsRange { field: &'static str, text: String },
    #[error("{field} repetition must be at least 1")]
    ZeroRepetition { field: &'static str },
    #[error("unexpected {0:?}: use [weekdays] [*-*-DD] [HH:MM], or a keyword")]
    Unexpected(String),
}

/// One numeric component: its name (for errors) and its value range.
#[derive(Clone, Copy)]
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
}

const fn field(name: &'static str, min: u32, max: u32) -> Field {
    Field { name, min, max }
}

const WEEKDAY: Field = field("weekday", 0, 6);
const DAY: Field = field("day", 1, 31);
const HOUR: Field = field("hour", 0, 23);
const MINUTE: Field = field("minute", 0, 59);
/// Accepted in full or as their first three letters, which Display writes.
const WEEKDAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
/// Longer than any wait between two matching days (the longest: a weekday
/// that is also the 31st, up to 609 days apart).
const MAX_SEARCH_DAYS: u32 = 1000;

impl Field {
    fn all(self) -> u64 {
        (u64::MAX >> (63 - self.max)) & (u64::MAX << self.min)
    }
}

type Parsed<T> = Result<T, CalendarError>;

fn bit(n: u32) -> u64 {
    1 << n
}

impl CalendarEvent {
    pub fn parse(text: &str) -> Result<Self, CalendarError> {
        let lower = text.to_ascii_lowercase();
        let tokens: Vec<&str> = lower.split_whitespace().collect();
        let mut event = CalendarEvent {
            weekdays: WEEKDAY.all(),
            days: DAY.all(),
            hours: bit(0),
            minutes: bit(0),
        };
        let mut rest = &tokens[..];
        match rest.first() {
            None => return Err(CalendarError::Empty),
            Some(&"hourly") => {
                event.hours = HOUR.all();
                rest = &rest[1..];
                if let Some(extra) = rest.first() {
                    return Err(unexpected(extra));
                }
            }
            Some(&"daily") => rest = &rest[1..],
            Some(&"weekly") => (event.weekdays, rest) = (bit(0), &rest[1..]),
            Some(&"monthly") => (event.days, rest) = (bit(1), &rest[1..]),
            Some(first) => {
                if first.starts_with(|c: char| c.is_ascii_alphabetic()) && !first.contains(':') {
                    event.weekdays = parse_weekdays(first)?;
                    rest = &rest[1..];
                }
                if let Some(date) = rest.first().filter(|t| t.contains('-') && !t.contains(':')) {
                    event.days = parse_date(date)?;
                    rest = &rest[1..];
                }
            }
        }
        if let Some(time) = rest.first().filter(|t| t.contains(':')) {
            (event.hours, event.minutes) = parse_time(time)?;
            rest = &rest[1..];
        }
        if let Some(extra) = rest.first() {
            return Err(unexpected(extra));
        }
        Ok(event)
    }

    /// The first matching minute strictly after `unix` (UTC seconds), as UNIX
    /// seconds; None only if that would be after year 9999.
    pub fn next_after(&self, unix: u64) -> Option<u64> {
        let start = (unix / 60).checked_add(1)?.checked_mul(60)?;
        let start = OffsetDateTime::from_unix_timestamp(i64::try_from(start).ok()?).ok()?;
        let (mut date, mut hour, mut minute) = (start.date(), start.hour(), start.minute());
        for _ in 0..MAX_SEARCH_DAYS {
            let time = self
                .date_matches(date)
                .then(|| self.time_from(hour, minute));
            if let Some((h, m)) = time.flatten() {
                let at = PrimitiveDateTime::new(date, Time::from_hms(h, m, 0).ok()?);
                return u64::try_from(at.assume_utc().unix_timestamp()).ok();
            }
            (date, hour, minute) = (date.next_day()?, 0, 0);
        }
        None
    }

    fn date_matches(&self, date: Date) -> bool {
        self.weekdays & bit(date.weekday().number_days_from_monday().into()) != 0
            && self.days & bit(date.day().into()) != 0
    }

    /// The first (hour, minute) of the day at or after `hour:minute`, if any.
    fn time_from(&self, hour: u8, minute: u8) -> Option<(u8, u8)> {
        for h in (hour..24).filter(|h| self.hours & bit((*h).into()) != 0) {
            let from = if h == hour { minute } else { 0 };
            let minutes = self.minutes & (u64::MAX << from);
            if minutes != 0 {
                return Some((h, minutes.trailing_zeros() as u8));
            }
        }
        None
    }
}

fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

fn unexpected(token: &str) -> CalendarError {
    CalendarError::Unexpected(clip(token))
}

fn parse_weekdays(text: &str) -> Parsed<u64> {
    let day = |name: &str| {
        let found = WEEKDAY_NAMES
            .iter()
            .position(|n| *n == name || n[..3] == *name);
        found
            .map(|i| i as u32)
            .ok_or_else(|| CalendarError::UnknownWeekday(clip(name)))
    };
    let mut mask = 0;
    for item in text.split(',') {
        let (first, last) = match item.split_once("..") {
            Some((a, b)) => (day(a)?, day(b)?),
            None => (day(item)?, day(item)?),
        };
        mask |= range_mask(WEEKDAY, item, first, last, 1)?;
    }
    Ok(mask)
}

/// `*-*-DD`: days of the month; years and months are not scheduled.
fn parse_date(text: &str) -> Parsed<u64> {
    match text.strip_prefix("*-*-") {
        Some(days) => parse_field(days, DAY),
        None => Err(unexpected(text)),
    }
}

/// `HH:MM`, or `HH:MM:00` as systemd writes it (seconds are not scheduled).
fn parse_time(text: &str) -> Parsed<(u64, u64)> {
    match text.split(':').collect::<Vec<_>>()[..] {
        [hour, minute] | [hour, minute, "0" | "00"] => {
            Ok((parse_field(hour, HOUR)?, parse_field(minute, MINUTE)?))
        }
        _ => Err(unexpected(text)),
    }
}

/// A comma list of `*`, `N`, `N..M`, each optionally `/step`; `N/step`
/// runs to the end of the range (`0/15` = 0, 15, 30, 45).
fn parse_field(text: &str, field: Field) -> Parsed<u64> {
    let mut mask = 0;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(number(step, field)?)),
            None => (item, None),
        };
        let (first, last) = match (range, range.split_once("..")) {
            ("*", _) => (field.min, field.max),
            (_, Some((a, b))) => (value(a, field)?, value(b, field)?),
            (a, None) if step.is_some() => (value(a, field)?, field.max),
            (a, None) => (value(a, field)?, value(a, field)?),
        };
        mask |= range_mask(field, item, first, last, step.unwrap_or(1))?;
    }
    Ok(mask)
}

fn range_mask(field: Field, text: &str, first: u32, last: u32, step: u32) -> Parsed<u64> {
    if step == 0 {
        return Err(CalendarError::ZeroRepetition { field: field.name });
    }
    if first > last {
        let (field, text) = (field.name, clip(text));
        return Err(CalendarError::BackwardsRange { field, text });
    }
    Ok((first..=last)
        .step_by(step as usize)
        .fold(0, |m, v| m | bit(v)))
}

fn number(text: &str, field: Field) -> Parsed<u32> {
    let digits = !text.is_empty() && text.len() <= 4 && text.bytes().all(|b| b.is_ascii_digit());
    let parsed = digits.then(|| text.parse().ok()).flatten();
    let (field, text) = (field.name, clip(text));
    parsed.ok_or(CalendarError::NotANumber { field, text })
}

fn value(text: &str, field: Field) -> Parsed<u32> {
    let value = number(text, field)?;
    if !(field.min..=field.max).contains(&value) {
        let (field, range) = (field.name, (field.min, field.max));
        return Err(CalendarError::OutOfRange {
            field,
            value,
            range,
        });
    }
    Ok(value)
}

/// The normal spelling of a set: `*`, `00/15` for a step running to the end
/// (not for weekdays, which take no step), else values and `a..b` runs.
fn format_field(mask: u64, field: Field, name: impl Fn(u32) -> String) -> String {
    if mask == field.all() {
        return "*".into();
    }
    let values: Vec<u32> = (field.min..=field.max)
        .filter(|v| mask & bit(*v) != 0)
        .collect();
    if let [first, second, _, ..] = values[..] {
        let step = second - first;
        if step > 1
            && field.name != WEEKDAY.name
            && range_mask(field, "", first, field.max, step).ok() == Some(mask)
        {
            return format!("{}/{step}", name(first));
        }
    }
    let mut items = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        match j - i {
            0 => items.push(name(values[i])),
            1 => items.extend([name(values[i]), name(values[j])]),
            _ => items.push(format!("{}..{}", name(values[i]), name(values[j]))),
        }
        i = j + 1;
    }
    items.join(",")
}

impl fmt::Display for CalendarEvent {
    /// systemd's normal form without year and seconds: `mon..fri 22:30`,
    /// `*-*-01 00:00`, `*:00/15`. It parses back to the same event.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let two = |v: u32| format!("{v:02}");
        if self.weekdays != WEEKDAY.all() {
            let day = |v: u32| WEEKDAY_NAMES[v as usize][..3].to_string();
            write!(f, "{} ", format_field(self.weekdays, WEEKDAY, day))?;
        }
        if self.days != DAY.all() {
            write!(f, "*-*-{} ", format_field(self.days, DAY, two))?;
        }
        let hours = format_field(self.hours, HOUR, two);
        write!(f, "{hours}:{}", format_field(self.minutes, MINUTE, two))
    }
}

impl fmt::Debug for CalendarEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CalendarEvent({self})")
    }
}

impl TryFrom<String> for CalendarEvent {
    type Error = CalendarError;
    fn try_from(s: String) -> Result<Self, CalendarError> {
        Self::parse(&s)
    }
}

impl From<CalendarEvent> for String {
    fn from(event: CalendarEvent) -> String {
        event.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::BackupId;

    /// UNIX seconds of `YYYY-MM-DDTHH:MM[:SS]` UTC.
    fn at(text: &str) -> u64 {
        let full = if text.len() == 16 {
            format!("{text}:00Z")
        } else {
            format!("{text}Z")
        };
        full.parse::<BackupId>().unwrap().unix_seconds()
    }

    /// The next run of `expr` after `after`, as `YYYY-MM-DDTHH:MM`.
    fn next(expr: &str, after: &str) -> String {
        let event = CalendarEvent::parse(expr).unwrap();
        let next = event.next_after(at(after)).unwrap();
        BackupId::from_unix(next).unwrap().as_str()[..16].to_string()
    }

    const WED: &str = "2026-11-25T20:47"; // a Wednesday

    #[test]
    fn every_documented_example() {
        for (expr, expected) in [
            ("hourly", "2026-11-25T21:00"),
            ("daily", "2026-11-26T00:00"),
            ("daily 02:00", "2026-11-26T02:00"),
            ("weekly", "2026-11-30T00:00"),
            ("monthly", "2026-12-01T00:00"),
            ("mon..fri 22:30", "2026-11-25T22:30"),
            ("sat,sun 03:15", "2026-11-28T03:15"),
            ("*:0/15", "2026-11-25T21:00"),
            ("*:00", "2026-11-25T21:00"),
            ("02:00", "2026-11-26T02:00"),
            ("mon 02:00", "2026-11-30T02:00"),
            ("Wednesday 20:47", "2026-12-02T20:47"),
        ] {
            assert_eq!(next(expr, WED), expected, "{expr}");
        }
    }

    #[test]
    fn strictly_after_and_rollovers() {
        for (expr, after, expected) in [
            ("hourly", "2026-11-25T21:00", "2026-11-25T22:00"),
            ("hourly", "2026-11-25T20:59:59", "2026-11-25T21:00"),
            ("*:0/15", "2026-11-25T20:44:10", "2026-11-25T20:45"),
            ("8..18/2:30", "2026-11-25T18:30", "2026-11-26T08:30"),
            ("mon..fri 22:30", "2026-11-27T23:00", "2026-11-30T22:30"),
            ("daily", "2026-12-31T23:59", "2027-01-01T00:00"),
            ("monthly", "2026-12-15T10:00", "2027-01-01T00:00"),
            ("*-*-31 00:00", "2026-11-25T00:00", "2026-12-31T00:00"),
            ("*-*-29 12:00", "2027-01-30T00:00", "2027-03-29T12:00"),
            ("fri *-*-31", "2026-08-01T00:00", "2027-12-31T00:00"),
        ] {
            assert_eq!(next(expr, after), expected, "{expr} after {after}");
        }
        let daily = CalendarEvent::parse("daily").unwrap();
        assert_eq!(daily.next_after(u64::MAX), None);
        assert_eq!(daily.next_after(at("9999-12-31T12:00")), None);
    }

    #[test]
    fn display_is_a_normal_form_that_parses_back() {
        for (expr, normal) in [
            ("hourly", "*:00"),
            ("daily", "00:00"),
            ("daily 02:00", "02:00"),
            ("weekly", "mon 00:00"),
            ("monthly", "*-*-01 00:00"),
            ("MON..FRI 22:30", "mon..fri 22:30"),
            ("sun,sat 03:15", "sat,sun 03:15"),
            ("mon,tue,wed,fri 1:5", "mon..wed,fri 01:05"),
            ("sun,mon,wed,fri", "mon,wed,fri,sun 00:00"),
            ("*:0/15", "*:00/15"),
            ("*:0,15,30,45", "*:00/15"),
            ("*:00", "*:00"),
            ("0/2:0,30", "00/2:00,30"),
            ("mon 02:00:00", "mon 02:00"),
            ("mon..sun *-*-* *:*", "*:*"),
            ("sun *-*-1..7 3:00", "sun *-*-01..07 03:00"),
        ] {
            let event = CalendarEvent::parse(expr).unwrap();
            assert_eq!(event.to_string(), normal, "{expr}");
            assert_eq!(CalendarEvent::parse(normal).unwrap(), event, "{normal}");
        }
        let json = serde_json::to_string(&CalendarEvent::parse("weekly").unwrap()).unwrap();
        assert_eq!(json, "\"mon 00:00\"");
        assert!(serde_json::from_str::<CalendarEvent>("\"25:00\"").is_err());
    }

    #[test]
    fn junk_is_refused_with_a_clear_error() {
        for (expr, message) in [
            ("mon..xyz 25:00", "unknown weekday \"xyz\": use mon, tue"),
            ("*:0/0", "minute repetition must be at least 1"),
            ("99:99", "hour 99 is out of range 0..23"),
            ("12:60", "minute 60 is out of range 0..59"),
            ("fri..mon", "weekday range \"fri..mon\" runs backwards"),
            ("  ", "empty calendar expression"),
            ("hourly 02:00", "unexpected \"02:00\""),
            ("daily mon", "unexpected \"mon\""),
            ("2026-*-* 00:00", "unexpected \"2026-*-*\""),
            ("*-11-25", "unexpected \"*-11-25\""),
            ("*-*-32", "day 32 is out of range 1..31"),
            ("02:00:30", "unexpected \"02:00:30\""),
            ("mon 02:00 extra", "unexpected \"extra\""),
            ("*", "unexpected \"*\""),
            ("x:00", "hour \"x\" is not a number"),
            ("-1:00", "hour \"-1\" is not a number"),
            ("1..:00", "hour \"\" is not a number"),
            ("mon,,tue", "unknown weekday \"\""),
        ] {
            let err = CalendarEvent::parse(expr).unwrap_err().to_string();
            assert!(err.starts_with(message), "{expr}: {err}");
        }
        let err = CalendarEvent::parse("mon..xyz 25:00").unwrap_err();
        assert_eq!(err, CalendarError::UnknownWeekday("xyz".into()));
    }
}

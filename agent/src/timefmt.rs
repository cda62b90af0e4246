//! UTC timestamps in the metadata service's format, `%Y-%m-%dT%H:%M:%SZ`, and HTTP dates
//! (`Wed, 02 Dec 2026 05:22:54 GMT`, RFC 9110's IMF-fixdate).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "day is 1..=31 and month 1..=12 by construction"
)]
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats as `2026-11-22T12:00:00Z` (sub-second part dropped; times before 1970 clamp to it).
pub(crate) fn format_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Formats as an HTTP date, `Wed, 02 Dec 2026 05:22:54 GMT` (times before 1970 clamp to it).
pub(crate) fn format_http_date(t: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let days = secs.div_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let rem = secs.rem_euclid(86_400);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let month = MONTHS[usize::try_from(mo - 1).unwrap_or(0)];
    format!(
        "{weekday}, {d:02} {month} {y:04} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Why a timestamp was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TimeError {
    /// Not of the shape `2026-11-22T12:00:00Z`.
    #[error("{0:?} is not a UTC time like 2026-11-22T12:00:00Z")]
    Shape(String),
    /// A field out of its range (month 13, February 30, hour 24, ...).
    #[error("{text:?}: {field} {value} is out of range")]
    Range {
        /// The text parsed.
        text: String,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
}

/// Largest year accepted (four digits).
const MAX_YEAR: u32 = 9999;

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses exactly `digits` ASCII digits.
fn fixed(s: &str, digits: usize) -> Option<u32> {
    (s.len() == digits && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Parses `2026-11-22T12:00:00Z` (also with fractional seconds, or `+00:00` for `Z`): four-digit
/// years from 1970, real calendar dates, hours 00-23, minutes and seconds 00-59.
#[allow(
    clippy::many_single_char_names,
    reason = "y, m, d, h, s: the fields of the timestamp"
)]
pub(crate) fn parse_utc(text: &str) -> Result<SystemTime, TimeError> {
    let shape = || TimeError::Shape(text.to_owned());
    let s = text.trim();
    let s = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))
        .ok_or_else(shape)?;
    let (date, time) = s.split_once('T').ok_or_else(shape)?;
    let mut d = date.split('-');
    let (Some(y), Some(mo), Some(da), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(shape());
    };
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    if fraction
        .is_some_and(|f| f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(shape());
    }
    let mut t = clock.split(':');
    let (Some(h), Some(mi), Some(se), None) = (t.next(), t.next(), t.next(), t.next()) else {
        return Err(shape());
    };
    let field = |s: &str, digits| fixed(s, digits).ok_or_else(shape);
    let (year, month, day) = (field(y, 4)?, field(mo, 2)?, field(da, 2)?);
    let (hour, minute, second) = (field(h, 2)?, field(mi, 2)?, field(se, 2)?);
    let range = |field: &'static str, value: u32| TimeError::Range {
        text: text.to_owned(),
        field,
        value,
    };
    if !(1970..=MAX_YEAR).contains(&year) {
        return Err(range("year", year));
    }
    if !(1..=12).contains(&month) {
        return Err(range("month", month));
    }
    if !(1..=days_in_month(year, month)).contains(&day) {
        return Err(range("day", day));
    }
    if hour > 23 {
        return Err(range("hour", hour));
    }
    if minute > 59 {
        return Err(range("minute", minute));
    }
    if second > 59 {
        return Err(range("second", second));
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let secs = u64::try_from(secs).map_err(|_| shape())?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format_utc(t), "2023-11-14T22:13:20Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_utc(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn http_dates() {
        let at = |secs| format_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        // RFC 9110's example.
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn round_trips() {
        for secs in [0u64, 59, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_utc(&format_utc(t)), Ok(t), "{secs}");
        }
        assert_eq!(
            parse_utc("2023-11-14T22:13:20.123+00:00"),
            Ok(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            parse_utc("9999-12-31T23:59:59Z"),
            Ok(UNIX_EPOCH + Duration::from_secs(253_402_300_799))
        );
    }

    #[test]
    fn impossible_times_are_refused() {
        for bad in [
            "yesterday",
            "2023-11-14T22:13:20",
            "2021388888888888-01-01T00:00:00Z",
            "-2021-01-01T00:00:00Z",
            "2026-1-01T00:00:00Z",
            "2026-01-01T-1:00:00Z",
            "2026-01-01T+1:00:00Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.12a Z",
            "2026-01-01T00:00Z",
            "2026-01-01-01T00:00:00Z",
            "2026-01-01T00:00:00:00Z",
            "２０２６-01-01T00:00:00Z",
        ] {
            assert!(matches!(parse_utc(bad), Err(TimeError::Shape(_))), "{bad}");
        }
        for (bad, field) in [
            ("2023-13-14T22:13:20Z", "month"),
            ("2023-00-14T22:13:20Z", "month"),
            ("2026-02-30T00:00:00Z", "day"),
            ("2025-02-29T00:00:00Z", "day"),
            ("2026-04-31T00:00:00Z", "day"),
            ("2026-01-00T00:00:00Z", "day"),
            ("2026-01-01T24:00:00Z", "hour"),
            ("2026-01-01T00:60:00Z", "minute"),
            ("2026-01-01T00:00:60Z", "second"),
            ("1969-12-31T23:59:59Z", "year"),
        ] {
            match parse_utc(bad) {
                Err(TimeError::Range { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(parse_utc("2024-02-29T00:00:00Z").is_ok());
        assert!(parse_utc("2000-02-29T00:00:00Z").is_ok());
        assert!(parse_utc("1900-02-29T00:00:00Z").is_err());
        let e = parse_utc("2026-02-30T00:00:00Z").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "\"2026-02-30T00:00:00Z\": day 30 is out of range"
        );
    }
}

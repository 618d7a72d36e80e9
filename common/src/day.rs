//! Days: metrics are reported per day *in the advertiser's time zone* (the design
//! brief, "Metrics" and "Serving layer"). A day is carried as an `i32` day number
//! (days since 1970-01-01 of the local calendar) in hot paths and as
//! [`chrono::NaiveDate`] at the edges (keys, SQL, JSON).

use chrono::{DateTime, Datelike, NaiveDate, TimeZone};
use chrono_tz::Tz;

use crate::event::DAY_MS;

/// Days since 1970-01-01 of a local calendar.
pub type DayNum = i32;

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// The local calendar day of `ts_ms` (ms since the Unix epoch, UTC) in `tz`.
///
/// ```
/// use common::day::{local_day, date_of};
/// let ts = 1_510_271_999_000; // 2017-11-09 23:59:59 UTC
/// assert_eq!(date_of(local_day(ts, chrono_tz::UTC)).to_string(), "2017-11-09");
/// assert_eq!(date_of(local_day(ts, chrono_tz::Asia::Tokyo)).to_string(), "2017-11-10");
/// ```
#[inline]
pub fn local_day(ts_ms: i64, tz: Tz) -> DayNum {
    if tz == chrono_tz::UTC {
        // Fast path: the common case costs a division.
        #[allow(clippy::cast_possible_truncation)] // i32 days cover ±5.8 million years
        return ts_ms.div_euclid(DAY_MS) as DayNum;
    }
    match tz.timestamp_millis_opt(ts_ms).single() {
        Some(t) => day_num(t.date_naive()),
        #[allow(clippy::cast_possible_truncation)]
        None => ts_ms.div_euclid(DAY_MS) as DayNum,
    }
}

/// Day number of a calendar date.
pub fn day_num(date: NaiveDate) -> DayNum {
    date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

/// Calendar date of a day number.
pub fn date_of(day: DayNum) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day + UNIX_EPOCH_DAYS_FROM_CE).unwrap_or(NaiveDate::MIN)
}

/// `[start, end)` in ms UTC of the local day `date` in `tz` (23, 24 or 25 hours long
/// across DST changes).
pub fn day_bounds_ms(date: NaiveDate, tz: Tz) -> (i64, i64) {
    (
        local_midnight_ms(date, tz),
        local_midnight_ms(date.succ_opt().unwrap_or(date), tz),
    )
}

fn local_midnight_ms(date: NaiveDate, tz: Tz) -> i64 {
    let naive = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    // A midnight that does not exist (DST gap at 00:00) resolves to the first valid instant.
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.timestamp_millis()
        }
        chrono::LocalResult::None => tz
            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
            .map_or(0, |t| t.timestamp_millis()),
    }
}

/// Today's date in `tz` at `now_ms`.
pub fn today(now_ms: i64, tz: Tz) -> NaiveDate {
    date_of(local_day(now_ms, tz))
}

/// Current wall-clock time, ms since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Formats ms UTC as RFC 3339 (`2026-11-23T09:39:09.123Z`), for JSON and logs.
pub fn rfc3339_ms(ts_ms: i64) -> String {
    DateTime::from_timestamp_millis(ts_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Parses a `YYYY-MM-DD` date strictly: four-digit year, two-digit month and day
/// (`2026-1-8` is refused), from [`MIN_DATE`] on.
///
/// # Errors
///
/// A message naming the expected format (with the input clipped to 24 characters)
/// when `s` is not such a date.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    let shown = clip(s, 24);
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return Err(format!("`{shown}` is not a date of the form YYYY-MM-DD"));
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("`{shown}` is not a calendar date (YYYY-MM-DD)"))?;
    if d < MIN_DATE {
        return Err(format!(
            "`{shown}` is before {MIN_DATE}, the first day the stores hold"
        ));
    }
    Ok(d)
}

/// The first date [`parse_date`] accepts: MySQL's `DATE` range starts here (and the
/// last, 9999-12-31, is the largest four-digit year).
pub const MIN_DATE: NaiveDate = match NaiveDate::from_ymd_opt(1000, 1, 1) {
    Some(d) => d,
    None => panic!("1000-01-01 is a date"),
};

/// `s` cut to at most `max` characters (with `…` when cut), for echoing client input
/// in error messages without echoing unbounded input.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// Parses an IANA time-zone name (`Europe/Berlin`, `UTC`).
///
/// # Errors
///
/// A message naming the bad zone.
pub fn parse_tz(s: &str) -> Result<Tz, String> {
    s.parse::<Tz>()
        .map_err(|_| format!("`{s}` is not an IANA time zone"))
}

/// Year, for sanity checks in tests.
pub fn year_of(day: DayNum) -> i32 {
    date_of(day).year()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_strictly_within_the_stores_range() {
        assert_eq!(
            parse_date("2026-01-08"),
            Ok(NaiveDate::from_ymd_opt(2026, 1, 8).unwrap())
        );
        assert_eq!(parse_date("1000-01-01"), Ok(MIN_DATE));
        assert!(parse_date("9999-12-31").is_ok());
        for bad in [
            "2026-1-8",
            "2026-01-8",
            "0000-01-01",
            "0999-12-31",
            "+2026-01-08",
            "2026-02-30",
            "2026-13-01",
            "20260108",
            " 2026-01-08",
            "２０２６-01-08",
            "",
        ] {
            assert!(parse_date(bad).is_err(), "{bad:?} is refused");
        }
        let long = "9".repeat(60_000);
        let msg = parse_date(&long).unwrap_err();
        assert!(
            msg.len() < 100,
            "the message does not echo unbounded input: {msg}"
        );
    }

    #[test]
    fn utc_fast_path_agrees_with_chrono() {
        for ts in [
            -1_i64,
            0,
            1,
            DAY_MS - 1,
            DAY_MS,
            1_510_271_999_999,
            1_510_272_000_000,
        ] {
            let slow = day_num(chrono::Utc.timestamp_millis_opt(ts).unwrap().date_naive());
            assert_eq!(local_day(ts, chrono_tz::UTC), slow, "ts {ts}");
        }
    }

    #[test]
    fn dst_days_have_their_real_length() {
        let tz = chrono_tz::Europe::Berlin;
        let (s, e) = day_bounds_ms(NaiveDate::from_ymd_opt(2026, 3, 29).unwrap(), tz);
        assert_eq!(e - s, 23 * 3_600_000);
        let (s, e) = day_bounds_ms(NaiveDate::from_ymd_opt(2026, 10, 25).unwrap(), tz);
        assert_eq!(e - s, 25 * 3_600_000);
        assert_eq!(
            local_day(s, tz),
            day_num(NaiveDate::from_ymd_opt(2026, 10, 25).unwrap())
        );
        assert_eq!(
            local_day(s - 1, tz),
            day_num(NaiveDate::from_ymd_opt(2026, 10, 24).unwrap())
        );
    }

    #[test]
    fn day_numbers_round_trip() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        assert_eq!(date_of(day_num(d)), d);
        assert_eq!(day_num(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()), 0);
        assert_eq!(year_of(day_num(d)), 2026);
    }
}

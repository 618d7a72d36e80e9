//! The real input data set, `talkingdata_train_sample.csv` (TalkingData AdTracking,
//! 2018), and its mapping onto the platform's events, as fixed by
//! `../shared/data/README.md` (part of the product's contract):
//!
//! | platform | from the row |
//! |---|---|
//! | `user_id` | `td:{ip}:{device}:{os}` |
//! | `advertiser_id`, `campaign_id`, `product_id` | `app` |
//! | `ad_id` | `app * 1000 + channel` |
//! | click | one per row: `event_id = "td-c-{n}"` (n = 1-based data row), `ts = click_time` |
//! | click cost | `cpc_micros = 10000 + (ad_id * 7919) % 90000` |
//! | order | per row with `is_attributed = 1`: `event_id = "td-o-{n}"`, `ts = attributed_time` |
//!
//! The data has no exposures. Categories are not in the data; the replay files each
//! app under category `1 + app % 10` so category reports have something to group.

use std::path::Path;

use chrono::NaiveDateTime;

use crate::event::{DAY_MS, Event, EventKind, SCHEMA_VERSION};

/// One data row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based data row number (header excluded).
    pub n: u64,
    /// Source IP (anonymised upstream).
    pub ip: u64,
    /// App id: advertiser, campaign and product.
    pub app: i64,
    /// Device type.
    pub device: u64,
    /// OS version.
    pub os: u64,
    /// Publisher channel.
    pub channel: i64,
    /// Click time, ms UTC.
    pub click_ms: i64,
    /// Download (conversion) time, ms UTC, when the click led to one.
    pub attributed_ms: Option<i64>,
}

/// Errors reading the file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line does not have the expected shape.
    #[error("line {line}: {reason}")]
    Parse {
        /// 1-based line number of the file (header = 1).
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The ad id of an (app, channel) pair.
pub fn ad_id(app: i64, channel: i64) -> i64 {
    app * 1000 + channel
}

/// The stand-in bid per click of an ad, micros.
pub fn cpc_micros(ad_id: i64) -> i64 {
    10_000 + (ad_id * 7919) % 90_000
}

/// The category the replay files an app's product under.
pub fn category_of(app: i64) -> i64 {
    1 + app % 10
}

impl Row {
    /// The user id of this row.
    pub fn user_id(&self) -> String {
        format!("td:{}:{}:{}", self.ip, self.device, self.os)
    }

    /// The row's ad.
    pub fn ad_id(&self) -> i64 {
        ad_id(self.app, self.channel)
    }

    /// The row's click event, shifted by `shift_days` whole days.
    pub fn click(&self, shift_days: i64) -> Event<'static> {
        let ad = self.ad_id();
        Event {
            v: SCHEMA_VERSION,
            kind: EventKind::Click,
            event_id: format!("td-c-{}", self.n).into(),
            ts: self.click_ms + shift_days * DAY_MS,
            user_id: self.user_id().into(),
            ad_id: Some(ad),
            advertiser_id: self.app,
            product_id: Some(self.app),
            cost_micros: Some(cpc_micros(ad)),
            gmv_micros: None,
        }
    }

    /// The row's order event, if the click led to a download.
    pub fn order(&self, shift_days: i64) -> Option<Event<'static>> {
        self.attributed_ms.map(|ts| Event {
            v: SCHEMA_VERSION,
            kind: EventKind::Order,
            event_id: format!("td-o-{}", self.n).into(),
            ts: ts + shift_days * DAY_MS,
            user_id: self.user_id().into(),
            ad_id: None,
            advertiser_id: self.app,
            product_id: Some(self.app),
            cost_micros: None,
            gmv_micros: None,
        })
    }
}

fn parse_time(s: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// Parses the CSV text (header `ip,app,device,os,channel,click_time,attributed_time,is_attributed`).
///
/// # Errors
///
/// [`DatasetError::Parse`] naming the first bad line.
pub fn parse(text: &str) -> Result<Vec<Row>, DatasetError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i as u64 + 1;
        if i == 0 || line.trim().is_empty() {
            continue;
        }
        let bad = |reason: &str| DatasetError::Parse {
            line: line_no,
            reason: reason.to_owned(),
        };
        let f: Vec<&str> = line.trim_end_matches('\r').split(',').collect();
        if f.len() != 8 {
            return Err(bad(&format!("{} fields, expected 8", f.len())));
        }
        let num = |s: &str, name: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(&format!("{name} `{s}` is not a number")))
        };
        let click_ms = parse_time(f[5]).ok_or_else(|| bad("click_time is not YYYY-MM-DD H:MM"))?;
        let attributed_ms = match (f[7], f[6]) {
            ("1", t) => {
                Some(parse_time(t).ok_or_else(|| bad("attributed_time is not YYYY-MM-DD H:MM"))?)
            }
            ("0", "") => None,
            _ => {
                return Err(bad(
                    "is_attributed must be 0 with no attributed_time, or 1 with one",
                ));
            }
        };
        #[allow(clippy::cast_possible_wrap)] // app and channel ids are small
        rows.push(Row {
            n: line_no - 1,
            ip: num(f[0], "ip")?,
            app: num(f[1], "app")? as i64,
            device: num(f[2], "device")?,
            os: num(f[3], "os")?,
            channel: num(f[4], "channel")? as i64,
            click_ms,
            attributed_ms,
        });
    }
    Ok(rows)
}

/// Reads and parses the file at `path`.
///
/// # Errors
///
/// [`DatasetError::Io`] or [`DatasetError::Parse`].
pub fn read(path: &Path) -> Result<Vec<Row>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// All events of `rows`, shifted by `shift_days`, in replay order: event time, then
/// traffic before effects, then row number (so among equal times the later row's
/// click comes later, as the data README's tie rule wants).
pub fn events(rows: &[Row], shift_days: i64) -> Vec<Event<'static>> {
    let mut keyed: Vec<((i64, u8, u64), Event<'static>)> =
        Vec::with_capacity(rows.len() + rows.len() / 100);
    for r in rows {
        let c = r.click(shift_days);
        keyed.push(((c.ts, 0, r.n), c));
        if let Some(o) = r.order(shift_days) {
            keyed.push(((o.ts, 1, r.n), o));
        }
    }
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// The whole-day shift that makes the data's last event fall on `today` (UTC days
/// since the epoch) — `exact_today` — or, without it, the largest shift that keeps
/// every event at or before `now_ms` (so the last day is today once the clock has
/// passed the data's last time of day, and yesterday before that).
pub fn shift_days(rows: &[Row], now_ms: i64, exact_today: bool) -> i64 {
    let last = rows
        .iter()
        .map(|r| r.click_ms.max(r.attributed_ms.unwrap_or(i64::MIN)))
        .max()
        .unwrap_or(now_ms);
    let days = now_ms.div_euclid(DAY_MS) - last.div_euclid(DAY_MS);
    if exact_today || last + days * DAY_MS <= now_ms {
        days
    } else {
        days - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "ip,app,device,os,channel,click_time,attributed_time,is_attributed\n\
        87540,12,1,13,497,2017-11-07 9:30,,0\n\
        105560,25,1,17,259,2017-11-07 13:40,2017-11-07 13:52,1\n";

    #[test]
    fn maps_rows_as_the_data_readme_says() {
        let rows = parse(SAMPLE).unwrap();
        assert_eq!(rows.len(), 2);
        let c = rows[0].click(0);
        assert_eq!(c.event_id, "td-c-1");
        assert_eq!(c.user_id, "td:87540:1:13");
        assert_eq!(c.ad_id, Some(12_497));
        assert_eq!(c.cost_micros, Some(10_000 + (12_497 * 7919) % 90_000));
        assert_eq!(
            c.ts,
            NaiveDateTime::parse_from_str("2017-11-07 09:30", "%Y-%m-%d %H:%M")
                .unwrap()
                .and_utc()
                .timestamp_millis()
        );
        assert!(rows[0].order(0).is_none());
        let o = rows[1].order(0).unwrap();
        assert_eq!(
            (o.event_id.as_ref(), o.advertiser_id, o.product_id),
            ("td-o-2", 25, Some(25))
        );
        let evs = events(&rows, 3);
        assert_eq!(evs.len(), 3);
        assert!(evs.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert_eq!(evs[0].ts, c.ts + 3 * DAY_MS);
    }

    #[test]
    fn shift_keeps_events_in_the_past_unless_asked() {
        let rows = parse(SAMPLE).unwrap();
        let last = rows[1].attributed_ms.unwrap();
        let now = last + 400 * DAY_MS - 3_600_000; // an hour earlier in the day than the last event
        assert_eq!(shift_days(&rows, now, true), 400);
        assert_eq!(shift_days(&rows, now, false), 399);
        assert_eq!(shift_days(&rows, last + 400 * DAY_MS, false), 400);
    }

    #[test]
    fn bad_lines_are_named() {
        let err = parse("h\n1,2,3\n").unwrap_err();
        assert!(err.to_string().starts_with("line 2:"), "{err}");
    }
}

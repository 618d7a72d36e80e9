//! Request parameters, parsed strictly into typed values; every error is a JSON 400
//! naming the parameter ([`ApiError::BadParameter`]), never a framework rejection.
//!
//! - Query strings are read as `application/x-www-form-urlencoded` pairs; a known
//!   parameter given twice is a 400 naming it; unknown parameters are ignored (cache
//!   busters, tracking parameters).
//! - Dates are `YYYY-MM-DD`, four-digit years from 1000 on ([`common::day::parse_date`]:
//!   the range MySQL's `DATE` holds).
//! - The advertiser id of the path is a decimal `i64`; anything else (including
//!   invalid UTF-8) is a 404, like another tenant's id.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use chrono::NaiveDate;
use common::day::{clip, parse_date};

use crate::error::ApiError;
use crate::merge::GroupBy;

/// The values of the parameters `names` in `raw` (a query string without `?`), in
/// that order.
///
/// # Errors
///
/// A 400 naming a parameter given more than once.
pub fn query<const N: usize>(
    raw: Option<&str>,
    names: [&'static str; N],
) -> Result<[Option<String>; N], ApiError> {
    let mut out: [Option<String>; N] = std::array::from_fn(|_| None);
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if let Some(i) = names.iter().position(|n| *n == k) {
            if out[i].is_some() {
                return Err(ApiError::bad(
                    names[i],
                    format!("`{}` is given more than once", names[i]),
                ));
            }
            out[i] = Some(v.into_owned());
        }
    }
    Ok(out)
}

/// A validated `from..=to` range of days (`from` and `to` parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    /// First day, inclusive.
    pub from: NaiveDate,
    /// Last day, inclusive.
    pub to: NaiveDate,
}

impl DayRange {
    /// Parses `from` and `to` (both required) of a query; the range may span at most
    /// `max_days` days. Other parameters are ignored.
    ///
    /// # Errors
    ///
    /// A 400 naming the parameter.
    pub fn parse(raw: Option<&str>, max_days: i64) -> Result<DayRange, ApiError> {
        let [from, to] = query(raw, ["from", "to"])?;
        DayRange::of(from, to, max_days)
    }

    fn of(from: Option<String>, to: Option<String>, max_days: i64) -> Result<DayRange, ApiError> {
        let date = |name: &'static str, v: Option<String>| {
            let v =
                v.ok_or_else(|| ApiError::bad(name, format!("`{name}` is required (YYYY-MM-DD)")))?;
            parse_date(&v).map_err(|m| ApiError::bad(name, m))
        };
        let from = date("from", from)?;
        let to = date("to", to)?;
        if from > to {
            return Err(ApiError::bad(
                "from",
                format!("`from` ({from}) is after `to` ({to})"),
            ));
        }
        let days = (to - from).num_days() + 1;
        if days > max_days {
            return Err(ApiError::bad(
                "to",
                format!("the range has {days} days; at most {max_days} are allowed"),
            ));
        }
        Ok(DayRange { from, to })
    }
}

/// Validated parameters of a metrics request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First day, inclusive.
    pub from: NaiveDate,
    /// Last day, inclusive.
    pub to: NaiveDate,
    /// Grouping.
    pub group_by: GroupBy,
}

impl Range {
    /// Parses `from`, `to` and `group_by` (default `day`) of a metrics query; the range
    /// may span at most `max_days` days ([`DayRange`]).
    ///
    /// # Errors
    ///
    /// A 400 naming the parameter.
    pub fn parse(raw: Option<&str>, max_days: i64) -> Result<Range, ApiError> {
        let [from, to, group_by] = query(raw, ["from", "to", "group_by"])?;
        let DayRange { from, to } = DayRange::of(from, to, max_days)?;
        let group_by = match group_by.as_deref().unwrap_or("day") {
            "day" => GroupBy::Day,
            "ad" => GroupBy::Ad,
            "campaign" => GroupBy::Campaign,
            other => {
                return Err(ApiError::bad(
                    "group_by",
                    format!("`{}` is not one of day, ad, campaign", clip(other, 24)),
                ));
            }
        };
        Ok(Range { from, to, group_by })
    }
}

/// The `{id}` segment of an advertiser route, as it was sent (checked against the
/// key by [`crate::state::AppState::advertiser_of_key`]).
pub struct AdvertiserSegment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AdvertiserSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // A segment that does not decode (invalid UTF-8) names no advertiser: 404.
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(s)| AdvertiserSegment(s))
            .map_err(|_| ApiError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(e: ApiError) -> &'static str {
        match e {
            ApiError::BadParameter { parameter, .. } => parameter,
            other => panic!("expected a bad parameter, got {other:?}"),
        }
    }

    fn bad(q: &str) -> &'static str {
        param_of(Range::parse(Some(q), 31).unwrap_err())
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(bad("from=2026-13-01&to=2026-11-02"), "from");
        assert_eq!(bad("from=2026-11-01&to=yesterday"), "to");
        assert_eq!(bad("from=2026-11-05&to=2026-11-02"), "from");
        assert_eq!(bad("from=2026-01-01&to=2026-11-02"), "to");
        assert_eq!(
            bad("from=2026-11-01&to=2026-11-02&group_by=week"),
            "group_by"
        );
        assert_eq!(bad("to=2026-11-02"), "from");
        assert_eq!(bad("from=0000-01-01&to=2026-11-02"), "from");
        assert_eq!(bad("from=2026-1-8&to=2026-11-02"), "from");
        assert_eq!(
            bad("from=2026-11-01&to=2026-11-02&group_by=ad&group_by=day"),
            "group_by"
        );
        assert_eq!(bad("from=2026-11-01&from=2026-11-01&to=2026-11-02"), "from");
        let r = Range::parse(Some("from=2026-11-01&to=2026-11-02&group_by=ad&utm=x"), 31).unwrap();
        assert_eq!(r.group_by, GroupBy::Ad);
        assert_eq!(r.from, NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
    }

    #[test]
    fn a_day_range_has_the_limits_of_a_metrics_range_and_no_grouping() {
        let bad = |q: &str| param_of(DayRange::parse(Some(q), 31).unwrap_err());
        assert_eq!(bad("from=2026-11-05&to=2026-11-02"), "from");
        assert_eq!(bad("from=2026-01-01&to=2026-11-02"), "to");
        assert_eq!(bad("from=2026-11-01"), "to");
        assert_eq!(bad("from=2026-11-01&to=2026-11-02&to=2026-11-03"), "to");
        let r = DayRange::parse(Some("from=2026-11-01&to=2026-11-02&group_by=week"), 31).unwrap();
        assert_eq!(
            (r.from, r.to),
            (
                NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
                NaiveDate::from_ymd_opt(2026, 11, 2).unwrap()
            )
        );
    }

    #[test]
    fn errors_do_not_echo_unbounded_input() {
        let long = "x".repeat(60_000);
        for q in [
            format!("from={long}&to=2026-11-02"),
            format!("from=2026-11-01&to=2026-11-02&group_by={long}"),
        ] {
            let e = Range::parse(Some(&q), 31).unwrap_err();
            assert!(e.to_string().len() < 120, "{e}");
        }
    }
}

//! Decoding and validating raw Kafka payloads into [`Event`]s.
//!
//! A bad event is data, not an error: [`decode`] returns a [`Rejection`] whose
//! [`RejectReason`] has a stable snake_case code. The code goes into the dead-letter
//! record and is the `reason` label of `admetrics_events_dead_lettered_total`
//! (the design brief, "Events": bad input never stops a consumer and is never
//! silently dropped).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, TopicKind};

/// Limits applied to every event, from the `[validation]` config section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted payload, bytes.
    pub max_message_bytes: usize,
    /// How far in the future (vs. the consumer's clock) an event time may be, ms.
    pub max_future_ms: i64,
    /// How far in the past an event time may be, ms; `i64::MAX` disables the check.
    pub max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_future_ms: 10 * 60_000,
            max_age_ms: 7 * crate::event::DAY_MS,
        }
    }
}

/// Why a message was rejected. The codes (`as_str`) are stable: they are stored in the
/// dead-letter topic and used as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Payload larger than `max_message_bytes`.
    Oversized,
    /// Not a JSON object (syntax error, truncated, wrong top-level type).
    NotJson,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong JSON type (string for a number, ...).
    WrongType,
    /// `kind` is not one of the schema's kinds.
    UnknownKind,
    /// `v` names a schema version this consumer does not know.
    UnsupportedVersion,
    /// A field has an impossible value (empty id, negative money, cost on an exposure).
    InvalidValue,
    /// A traffic kind on the effects topic or the reverse.
    WrongTopic,
    /// `ts` is more than `max_future_ms` ahead of the consumer's clock.
    TsInFuture,
    /// `ts` is more than `max_age_ms` behind the consumer's clock.
    TsTooOld,
    /// The ad is not in the dimension tables (MySQL).
    UnknownAd,
    /// The advertiser is not in the dimension tables.
    UnknownAdvertiser,
    /// The event's advertiser or product disagrees with the ad's dimension row.
    DimensionMismatch,
}

impl RejectReason {
    /// Every reason, for metrics registration and docs.
    pub const ALL: [RejectReason; 13] = [
        RejectReason::Oversized,
        RejectReason::NotJson,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::UnknownKind,
        RejectReason::UnsupportedVersion,
        RejectReason::InvalidValue,
        RejectReason::WrongTopic,
        RejectReason::TsInFuture,
        RejectReason::TsTooOld,
        RejectReason::UnknownAd,
        RejectReason::UnknownAdvertiser,
        RejectReason::DimensionMismatch,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::NotJson => "not_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::UnknownKind => "unknown_kind",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::WrongTopic => "wrong_topic",
            RejectReason::TsInFuture => "ts_in_future",
            RejectReason::TsTooOld => "ts_too_old",
            RejectReason::UnknownAd => "unknown_ad",
            RejectReason::UnknownAdvertiser => "unknown_advertiser",
            RejectReason::DimensionMismatch => "dimension_mismatch",
        }
    }

    /// Parses a code written by [`RejectReason::as_str`].
    pub fn parse(s: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected message: the reason code and a human-readable detail naming the field.
/// The original bytes stay with the caller, which forwards them to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code.
    pub reason: RejectReason,
    /// What exactly is wrong, e.g. ``missing field `ts` at line 1 column 40``.
    pub detail: String,
}

impl Rejection {
    /// A rejection with a reason and detail.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

const MAX_ID_BYTES: usize = 128;

/// Decodes and validates one payload read from `topic`, with `now_ms` the consumer's
/// clock (ms since the Unix epoch, UTC).
///
/// # Errors
///
/// A [`Rejection`] for any payload that is not a valid event of schema version 1 on
/// this topic; see [`RejectReason`] for the cases.
///
/// # Examples
///
/// ```
/// use common::decode::{decode, Limits, RejectReason};
/// use common::event::TopicKind;
///
/// let now = 1_763_900_000_000;
/// let ok = br#"{"kind":"click","event_id":"e1","ts":1763899990000,"user_id":"u1",
///              "ad_id":101,"advertiser_id":1,"product_id":200,"cost_micros":50000}"#;
/// assert_eq!(decode(ok, TopicKind::Traffic, now, &Limits::default()).unwrap().cost(), 50_000);
///
/// let bad = br#"{"kind":"click","event_id":"e1","user_id":"u1"}"#;
/// let r = decode(bad, TopicKind::Traffic, now, &Limits::default()).unwrap_err();
/// assert_eq!(r.reason, RejectReason::MissingField);
/// ```
pub fn decode<'a>(
    raw: &'a [u8],
    topic: TopicKind,
    now_ms: i64,
    limits: &Limits,
) -> Result<Event<'a>, Rejection> {
    if raw.len() > limits.max_message_bytes {
        return Err(Rejection::new(
            RejectReason::Oversized,
            format!("{} bytes > limit {}", raw.len(), limits.max_message_bytes),
        ));
    }
    // The canonical flat form takes the fast path; anything else (and every error)
    // goes through serde_json, the reference.
    let event: Event<'a> = match crate::flat_json::parse(raw) {
        Some(e) => e,
        None => serde_json::from_slice(raw).map_err(classify_json_error)?,
    };
    validate(&event, topic, now_ms, limits)?;
    Ok(event)
}

/// Validates an already parsed event (used by [`decode`] and by producers that build
/// events in code, such as the replay command).
///
/// # Errors
///
/// A [`Rejection`] naming the first rule the event breaks.
pub fn validate(
    e: &Event<'_>,
    topic: TopicKind,
    now_ms: i64,
    limits: &Limits,
) -> Result<(), Rejection> {
    use RejectReason::{
        InvalidValue, MissingField, TsInFuture, TsTooOld, UnsupportedVersion, WrongTopic,
    };
    if e.v != 1 {
        return Err(Rejection::new(
            UnsupportedVersion,
            format!("schema version {} (this consumer reads 1)", e.v),
        ));
    }
    if e.kind.topic() != topic {
        return Err(Rejection::new(
            WrongTopic,
            format!(
                "kind `{}` does not belong on the {} topic",
                e.kind,
                topic.as_str()
            ),
        ));
    }
    check_id("event_id", &e.event_id)?;
    check_id("user_id", &e.user_id)?;
    if e.advertiser_id <= 0 {
        return Err(Rejection::new(
            InvalidValue,
            format!("advertiser_id {} must be positive", e.advertiser_id),
        ));
    }
    match e.product_id {
        None => return Err(Rejection::new(MissingField, "missing field `product_id`")),
        Some(p) if p <= 0 => {
            return Err(Rejection::new(
                InvalidValue,
                format!("product_id {p} must be positive"),
            ));
        }
        Some(_) => {}
    }
    if e.kind.is_traffic() {
        match e.ad_id {
            None => {
                return Err(Rejection::new(
                    MissingField,
                    format!("missing field `ad_id` on {}", e.kind),
                ));
            }
            Some(a) if a <= 0 => {
                return Err(Rejection::new(
                    InvalidValue,
                    format!("ad_id {a} must be positive"),
                ));
            }
            Some(_) => {}
        }
    }
    match (e.kind, e.cost_micros) {
        (EventKind::Click, None) => {
            return Err(Rejection::new(
                MissingField,
                "missing field `cost_micros` on click",
            ));
        }
        (_, Some(c)) if c < 0 => {
            return Err(Rejection::new(
                InvalidValue,
                format!("cost_micros {c} is negative"),
            ));
        }
        (k, Some(c)) if k != EventKind::Click && c != 0 => {
            return Err(Rejection::new(
                InvalidValue,
                format!("cost_micros {c} on {k}: only clicks are billed"),
            ));
        }
        _ => {}
    }
    match (e.kind, e.gmv_micros) {
        (EventKind::Payment, None) => {
            return Err(Rejection::new(
                MissingField,
                "missing field `gmv_micros` on payment",
            ));
        }
        (_, Some(g)) if g < 0 => {
            return Err(Rejection::new(
                InvalidValue,
                format!("gmv_micros {g} is negative"),
            ));
        }
        (k, Some(g)) if k != EventKind::Payment && g != 0 => {
            return Err(Rejection::new(
                InvalidValue,
                format!("gmv_micros {g} on {k}: only payments carry GMV"),
            ));
        }
        _ => {}
    }
    if e.ts > now_ms.saturating_add(limits.max_future_ms) {
        return Err(Rejection::new(
            TsInFuture,
            format!(
                "ts {} is {} ms ahead of the consumer clock (limit {})",
                e.ts,
                e.ts - now_ms,
                limits.max_future_ms
            ),
        ));
    }
    if e.ts < now_ms.saturating_sub(limits.max_age_ms) {
        return Err(Rejection::new(
            TsTooOld,
            format!(
                "ts {} is {} ms old (limit {})",
                e.ts,
                now_ms - e.ts,
                limits.max_age_ms
            ),
        ));
    }
    Ok(())
}

fn check_id(field: &str, v: &str) -> Result<(), Rejection> {
    if v.is_empty() || v.len() > MAX_ID_BYTES {
        return Err(Rejection::new(
            RejectReason::InvalidValue,
            format!("{field} must be 1..={MAX_ID_BYTES} bytes, got {}", v.len()),
        ));
    }
    Ok(())
}

/// Maps serde_json's error categories (and its stable message prefixes for data
/// errors) onto reason codes.
fn classify_json_error(err: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    let detail = err.to_string();
    let reason = match err.classify() {
        Category::Io | Category::Syntax | Category::Eof => RejectReason::NotJson,
        Category::Data => {
            if detail.starts_with("missing field") || detail.starts_with("invalid type: null") {
                RejectReason::MissingField
            } else if detail.starts_with("unknown variant") {
                RejectReason::UnknownKind
            } else if detail.starts_with("invalid type: map") && !detail.contains("expected") {
                RejectReason::NotJson
            } else if detail.starts_with("invalid type") && detail.contains("expected struct") {
                // A JSON array, string or number at the top level.
                RejectReason::NotJson
            } else if detail.starts_with("invalid type") || detail.starts_with("invalid value") {
                RejectReason::WrongType
            } else {
                RejectReason::InvalidValue
            }
        }
    };
    Rejection::new(reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_900_000_000;

    fn reason(raw: &str, topic: TopicKind) -> RejectReason {
        decode(raw.as_bytes(), topic, NOW, &Limits::default())
            .unwrap_err()
            .reason
    }

    fn click(ts: i64) -> String {
        format!(
            r#"{{"kind":"click","event_id":"e1","ts":{ts},"user_id":"u1","ad_id":101,"advertiser_id":1,"product_id":200,"cost_micros":50000}}"#
        )
    }

    #[test]
    fn accepts_the_benchmark_load_shape() {
        let raw = br#"{"kind":"payment","event_id":"f0-7","ts":1763899990000,"user_id":"u42","ad_id":null,"advertiser_id":3,"product_id":601,"cost_micros":null,"gmv_micros":2500000}"#;
        let e = decode(raw, TopicKind::Effects, NOW, &Limits::default()).unwrap();
        assert_eq!(e.kind, EventKind::Payment);
        assert_eq!(e.gmv(), 2_500_000);
        assert!(
            matches!(e.event_id, std::borrow::Cow::Borrowed(_)),
            "plain strings are borrowed, not copied"
        );
    }

    #[test]
    fn rejects_each_kind_of_poison_with_its_reason() {
        use RejectReason::*;
        let t = TopicKind::Traffic;
        assert_eq!(reason("not json at all", t), NotJson);
        assert_eq!(reason(r#"{"kind":"click""#, t), NotJson);
        assert_eq!(reason("[1,2]", t), NotJson);
        assert_eq!(
            reason(r#"{"kind":"click","event_id":"e1","user_id":"u1"}"#, t),
            MissingField
        );
        assert_eq!(
            reason(
                &click(NOW).replace(r#""ts":1763900000000"#, r#""ts":"yesterday""#),
                t
            ),
            WrongType
        );
        assert_eq!(
            reason(&click(NOW).replace("click", "purchase"), t),
            UnknownKind
        );
        assert_eq!(reason(&click(NOW + 10 * 365 * 86_400_000), t), TsInFuture);
        assert_eq!(reason(&click(NOW - 30 * 86_400_000), t), TsTooOld);
        assert_eq!(reason(&click(NOW), TopicKind::Effects), WrongTopic);
        assert_eq!(reason(&click(NOW).replace("50000", "-1"), t), InvalidValue);
        assert_eq!(
            reason(
                &click(NOW).replace(r#""event_id":"e1""#, r#""event_id":"""#),
                t
            ),
            InvalidValue
        );
        assert_eq!(
            reason(&click(NOW).replace(r#","cost_micros":50000"#, ""), t),
            MissingField
        );
        assert_eq!(
            reason(&click(NOW).replace(r#""ad_id":101"#, r#""ad_id":null"#), t),
            MissingField
        );
        assert_eq!(
            reason(
                &click(NOW).replace(r#""kind":"click""#, r#""v":2,"kind":"click""#),
                t
            ),
            UnsupportedVersion
        );
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(reason(&big, t), Oversized);
    }

    #[test]
    fn reason_codes_round_trip() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::parse(r.as_str()), Some(r));
        }
    }
}

//! The event schema: the one place the wire format of `ad-traffic` and `ad-effects` is
//! defined, and its version history.
//!
//! # Wire format (schema version 1)
//!
//! One JSON object per Kafka message, keyed by `user_id` (so a user's traffic and
//! effects land in the same partition number of both topics: the design brief,
//! "Events"). Unknown fields are ignored, so producers may add fields before
//! consumers know them.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `v` | int, optional | schema version; absent means 1 |
//! | `kind` | string | `exposure`, `click` (topic `ad-traffic`); `consultation`, `private_message`, `order`, `payment` (topic `ad-effects`) |
//! | `event_id` | string, 1..=128 bytes | globally unique; the dedup key |
//! | `ts` | int | event time, milliseconds since the Unix epoch, UTC |
//! | `user_id` | string, 1..=128 bytes | the user; also the Kafka key |
//! | `ad_id` | int or null | the ad shown or clicked; required on traffic, ignored on effects |
//! | `advertiser_id` | int | the ad's or the effect's advertiser |
//! | `product_id` | int or null | the product advertised / converted on; required on every kind |
//! | `cost_micros` | int or null | billed cost of a click in micros of the platform currency; required on clicks, null or 0 otherwise |
//! | `gmv_micros` | int or null | order value of a payment in micros; required on payments, null or 0 otherwise |
//!
//! Money is integer micros (1 currency unit = 1 000 000 micros), never floats.
//!
//! # Version history
//!
//! - **1** (2026-11): the fields above. This is also the column set of
//!   `../shared/bench/gen_events.py`, so the standard benchmark load is valid input.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Current schema version written by producers of this repository.
pub const SCHEMA_VERSION: u16 = 1;

/// Milliseconds in one day; days are whole multiples of it in UTC.
pub const DAY_MS: i64 = 86_400_000;

/// What happened. Exposures and clicks are *traffic*; the rest are *effects*
/// (post-click conversions that name no ad: attribution decides which ad earns them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An impression of an ad.
    Exposure,
    /// A click on an ad; carries the billed `cost_micros`.
    Click,
    /// A buyer messages the seller about the product.
    Consultation,
    /// A private message between buyer and seller.
    PrivateMessage,
    /// An order of the product.
    Order,
    /// A payment; carries `gmv_micros`.
    Payment,
}

impl EventKind {
    /// Every kind, in a stable order (used for indexes and tests).
    pub const ALL: [EventKind; 6] = [
        EventKind::Exposure,
        EventKind::Click,
        EventKind::Consultation,
        EventKind::PrivateMessage,
        EventKind::Order,
        EventKind::Payment,
    ];

    /// True for `exposure` and `click`, which travel on the traffic topic.
    pub fn is_traffic(self) -> bool {
        matches!(self, EventKind::Exposure | EventKind::Click)
    }

    /// The topic this kind belongs to.
    pub fn topic(self) -> TopicKind {
        if self.is_traffic() {
            TopicKind::Traffic
        } else {
            TopicKind::Effects
        }
    }

    /// The wire name (`"private_message"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Exposure => "exposure",
            EventKind::Click => "click",
            EventKind::Consultation => "consultation",
            EventKind::PrivateMessage => "private_message",
            EventKind::Order => "order",
            EventKind::Payment => "payment",
        }
    }

    /// Parses a wire name; `None` for an unknown kind.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two input topics. Both have the same partition count and are keyed by
/// `user_id` (co-partitioned), so partition `p` of both holds the same users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicKind {
    /// `ad-traffic`: exposures and clicks.
    Traffic,
    /// `ad-effects`: consultations, private messages, orders, payments.
    Effects,
}

impl TopicKind {
    /// Both topics, traffic first.
    pub const ALL: [TopicKind; 2] = [TopicKind::Traffic, TopicKind::Effects];

    /// A stable index (0 traffic, 1 effects) for per-topic arrays.
    pub fn index(self) -> usize {
        match self {
            TopicKind::Traffic => 0,
            TopicKind::Effects => 1,
        }
    }

    /// Short stable name used in Redis fields and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Traffic => "traffic",
            TopicKind::Effects => "effects",
        }
    }
}

/// One validated event. Strings borrow from the message payload where they can
/// (`Event<'static>` owns them; see [`Event::into_owned`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<'a> {
    /// Schema version the producer wrote.
    #[serde(default = "default_version")]
    pub v: u16,
    /// What happened.
    pub kind: EventKind,
    /// Globally unique id; the dedup key.
    #[serde(borrow)]
    pub event_id: Cow<'a, str>,
    /// Event time, ms since the Unix epoch, UTC.
    pub ts: i64,
    /// The user (also the Kafka message key).
    #[serde(borrow)]
    pub user_id: Cow<'a, str>,
    /// The ad, on traffic; `None` on effects.
    #[serde(default)]
    pub ad_id: Option<i64>,
    /// The advertiser.
    pub advertiser_id: i64,
    /// The product advertised (traffic) or converted on (effects).
    #[serde(default)]
    pub product_id: Option<i64>,
    /// Billed cost of a click, micros; `None` on other kinds.
    #[serde(default)]
    pub cost_micros: Option<i64>,
    /// Value of a payment, micros; `None` on other kinds.
    #[serde(default)]
    pub gmv_micros: Option<i64>,
}

fn default_version() -> u16 {
    1
}

impl Event<'_> {
    /// Copies borrowed strings so the event outlives its message.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            v: self.v,
            kind: self.kind,
            event_id: Cow::Owned(self.event_id.into_owned()),
            ts: self.ts,
            user_id: Cow::Owned(self.user_id.into_owned()),
            ad_id: self.ad_id,
            advertiser_id: self.advertiser_id,
            product_id: self.product_id,
            cost_micros: self.cost_micros,
            gmv_micros: self.gmv_micros,
        }
    }

    /// The wire JSON of this event (what producers write).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of plain fields cannot fail.
        serde_json::to_vec(self).expect("event serialises")
    }

    /// Billed cost in micros (0 unless a click).
    pub fn cost(&self) -> i64 {
        self.cost_micros.unwrap_or(0)
    }

    /// GMV in micros (0 unless a payment).
    pub fn gmv(&self) -> i64 {
        self.gmv_micros.unwrap_or(0)
    }
}

/// A stable 64-bit hash of a string id (XXH3), used for dedup sets, user sets in
/// HyperLogLogs and state keys. Collisions are ~n²/2⁶⁵: negligible at the design's
/// volumes (10⁷ ids give ~3·10⁻⁶), and exact counts never depend on it alone.
pub fn id_hash(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(EventKind::parse("purchase"), None);
    }

    #[test]
    fn wire_json_round_trips() {
        let e = Event {
            v: 1,
            kind: EventKind::Click,
            event_id: "td-c-1".into(),
            ts: 1_510_047_000_000,
            user_id: "td:1:2:3".into(),
            ad_id: Some(12_497),
            advertiser_id: 12,
            product_id: Some(12),
            cost_micros: Some(34_567),
            gmv_micros: None,
        };
        let bytes = e.to_json();
        let back: Event<'_> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, e);
    }
}

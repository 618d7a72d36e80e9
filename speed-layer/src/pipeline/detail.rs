//! Enriched detail rows: one per accepted event, with its dimensions and, for effects,
//! the attribution result. They feed the ClickHouse detail table
//! (`deploy/sql/clickhouse.sql`, table `events`).

use common::attribution::Attribution;
use common::day::DayNum;
use common::event::Event;
use serde::{Deserialize, Serialize};

/// One row of the ClickHouse `events` table. Field order is the table's column order
/// (RowBinary is positional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct DetailRow {
    /// Dedup key of the table (ReplacingMergeTree).
    pub event_id: String,
    /// `exposure`, `click`, `consultation`, `private_message`, `order`, `payment`.
    pub kind: String,
    /// Event time, ms UTC.
    pub ts_ms: i64,
    /// Event time, seconds UTC (ClickHouse `DateTime`).
    pub event_time: u32,
    /// Advertiser-local day, days since 1970-01-01 (ClickHouse `Date`).
    pub day: u16,
    /// The user.
    pub user_id: String,
    /// Advertiser.
    pub advertiser_id: i64,
    /// Campaign of the ad (traffic) or of the winning click's ad (effects); 0 if none.
    pub campaign_id: i64,
    /// The ad (traffic) or the winning click's ad (effects); 0 if unattributed.
    pub ad_id: i64,
    /// Product.
    pub product_id: i64,
    /// Product category (0 when unknown).
    pub category_id: i64,
    /// Billed cost, micros (clicks).
    pub cost_micros: i64,
    /// GMV, micros (payments).
    pub gmv_micros: i64,
    /// `direct`, `indirect`, `none` for effects; empty for traffic.
    pub attribution: String,
    /// Time of the winning click, ms UTC (0 if none).
    pub click_ts_ms: i64,
    /// Kafka partition.
    pub kafka_partition: i32,
    /// Kafka offset.
    pub kafka_offset: i64,
    /// When the speed layer wrote the row, ms UTC: the ReplacingMergeTree version, so
    /// a re-processed event replaces the older row.
    pub version: u64,
}

/// Where an event sits: its Kafka position, its day and the ids it is counted under.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Advertiser-local day.
    pub day: DayNum,
    /// Campaign (0 if none).
    pub campaign_id: i64,
    /// Ad (0 if unattributed).
    pub ad_id: i64,
    /// Product category (0 if unknown).
    pub category_id: i64,
}

impl DetailRow {
    /// The row of `e`, written at `now_ms` (the row's version); `attribution` for
    /// effects, `None` for traffic.
    pub fn new(
        e: &Event<'_>,
        at: Placement,
        attribution: Option<Attribution>,
        now_ms: i64,
    ) -> Self {
        DetailRow {
            event_id: e.event_id.to_string(),
            kind: e.kind.as_str().to_owned(),
            ts_ms: e.ts,
            event_time: u32::try_from(e.ts.div_euclid(1000)).unwrap_or(0),
            day: u16::try_from(at.day).unwrap_or(0),
            user_id: e.user_id.to_string(),
            advertiser_id: e.advertiser_id,
            campaign_id: at.campaign_id,
            ad_id: at.ad_id,
            product_id: e.product_id.unwrap_or_default(),
            category_id: at.category_id,
            cost_micros: e.cost(),
            gmv_micros: e.gmv(),
            attribution: attribution.map_or(String::new(), |a| a.kind.as_str().to_owned()),
            click_ts_ms: attribution.and_then(|a| a.click).map_or(0, |c| c.ts),
            kafka_partition: at.partition,
            kafka_offset: at.offset,
            version: u64::try_from(now_ms).unwrap_or(0),
        }
    }
}

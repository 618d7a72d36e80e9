//! Enriched detail rows: one per accepted event, with its dimensions and, for effects,
//! the attribution result. They feed the ClickHouse detail table
//! (`deploy/sql/clickhouse.sql`, table `events`).

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

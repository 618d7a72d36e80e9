//! Enriched detail rows: one per accepted event, with its dimensions and, for effects,
//! the attribution result. They feed the ClickHouse detail table
//! (`deploy/sql/clickhouse.sql`, table `events`).
//!
//! The processor encodes each row once, in ClickHouse's `RowBinary` format, straight
//! from the event it borrows ([`DetailRef`] into [`DetailRows`]); the sink journals
//! those bytes and sends them as they are (`INSERT ... FORMAT RowBinary`). The owned
//! [`DetailRow`] is the decoded form: for reading journal and spill files back, for
//! tests, and for journal files of JSON lines written by earlier versions.
//!
//! # RowBinary
//!
//! The row is its columns in the table's order, without separators
//! (<https://clickhouse.com/docs/interfaces/formats/RowBinary>): a `String` is its
//! length in bytes as unsigned LEB128 followed by the bytes; `Int32`, `Int64`,
//! `UInt64` are little-endian; `DateTime` is a `UInt32` of seconds and `Date` a
//! `UInt16` of days since 1970-01-01.

use common::attribution::Attribution;
use common::day::DayNum;
use common::event::{Event, EventKind};
use serde::{Deserialize, Serialize};

use crate::clickhouse_sink::shard_of;

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

/// A [`DetailRow`] whose strings are borrowed (from the event, or from an owned row):
/// what is encoded. Its fields are those of [`DetailRow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetailRef<'a> {
    pub(crate) event_id: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) ts_ms: i64,
    pub(crate) event_time: u32,
    pub(crate) day: u16,
    pub(crate) user_id: &'a str,
    pub(crate) advertiser_id: i64,
    pub(crate) campaign_id: i64,
    pub(crate) ad_id: i64,
    pub(crate) product_id: i64,
    pub(crate) category_id: i64,
    pub(crate) cost_micros: i64,
    pub(crate) gmv_micros: i64,
    pub(crate) attribution: &'a str,
    pub(crate) click_ts_ms: i64,
    pub(crate) kafka_partition: i32,
    pub(crate) kafka_offset: i64,
    pub(crate) version: u64,
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

impl<'a> DetailRef<'a> {
    /// The row of `e`, written at `now_ms` (the row's version); `attribution` for
    /// effects, `None` for traffic.
    pub fn new(
        e: &'a Event<'_>,
        at: Placement,
        attribution: Option<Attribution>,
        now_ms: i64,
    ) -> Self {
        DetailRef {
            event_id: &e.event_id,
            kind: e.kind.as_str(),
            ts_ms: e.ts,
            event_time: u32::try_from(e.ts.div_euclid(1000)).unwrap_or(0),
            day: u16::try_from(at.day).unwrap_or(0),
            user_id: &e.user_id,
            advertiser_id: e.advertiser_id,
            campaign_id: at.campaign_id,
            ad_id: at.ad_id,
            product_id: e.product_id.unwrap_or_default(),
            category_id: at.category_id,
            cost_micros: e.cost(),
            gmv_micros: e.gmv(),
            attribution: attribution.map_or("", |a| a.kind.as_str()),
            click_ts_ms: attribution.and_then(|a| a.click).map_or(0, |c| c.ts),
            kafka_partition: at.partition,
            kafka_offset: at.offset,
            version: u64::try_from(now_ms).unwrap_or(0),
        }
    }

    /// Appends the row to `out` in RowBinary (module docs).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, self.event_id);
        put_str(out, self.kind);
        out.extend_from_slice(&self.ts_ms.to_le_bytes());
        out.extend_from_slice(&self.event_time.to_le_bytes());
        out.extend_from_slice(&self.day.to_le_bytes());
        put_str(out, self.user_id);
        for v in [
            self.advertiser_id,
            self.campaign_id,
            self.ad_id,
            self.product_id,
            self.category_id,
            self.cost_micros,
            self.gmv_micros,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_str(out, self.attribution);
        out.extend_from_slice(&self.click_ts_ms.to_le_bytes());
        out.extend_from_slice(&self.kafka_partition.to_le_bytes());
        out.extend_from_slice(&self.kafka_offset.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
    }
}

/// Why bytes are not a RowBinary detail row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end inside the row (a write that did not complete).
    #[error("the row is cut short")]
    Truncated,
    /// The bytes are whole but not a row this sink writes.
    #[error("not a detail row: {0}")]
    Invalid(&'static str),
}

impl DetailRow {
    /// The row, borrowed for encoding.
    pub fn as_ref(&self) -> DetailRef<'_> {
        DetailRef {
            event_id: &self.event_id,
            kind: &self.kind,
            ts_ms: self.ts_ms,
            event_time: self.event_time,
            day: self.day,
            user_id: &self.user_id,
            advertiser_id: self.advertiser_id,
            campaign_id: self.campaign_id,
            ad_id: self.ad_id,
            product_id: self.product_id,
            category_id: self.category_id,
            cost_micros: self.cost_micros,
            gmv_micros: self.gmv_micros,
            attribution: &self.attribution,
            click_ts_ms: self.click_ts_ms,
            kafka_partition: self.kafka_partition,
            kafka_offset: self.kafka_offset,
            version: self.version,
        }
    }

    /// Decodes one RowBinary row from the front of `input` ([`DetailRef::decode`]).
    ///
    /// # Errors
    ///
    /// As [`DetailRef::decode`].
    pub fn decode(input: &mut &[u8]) -> Result<DetailRow, DecodeError> {
        let r = DetailRef::decode(input)?;
        Ok(DetailRow {
            event_id: r.event_id.to_owned(),
            kind: r.kind.to_owned(),
            ts_ms: r.ts_ms,
            event_time: r.event_time,
            day: r.day,
            user_id: r.user_id.to_owned(),
            advertiser_id: r.advertiser_id,
            campaign_id: r.campaign_id,
            ad_id: r.ad_id,
            product_id: r.product_id,
            category_id: r.category_id,
            cost_micros: r.cost_micros,
            gmv_micros: r.gmv_micros,
            attribution: r.attribution.to_owned(),
            click_ts_ms: r.click_ts_ms,
            kafka_partition: r.kafka_partition,
            kafka_offset: r.kafka_offset,
            version: r.version,
        })
    }
}

impl<'b> DetailRef<'b> {
    /// Decodes one RowBinary row from the front of `input`, borrowing its strings
    /// (no allocation: the sink checks every row of a batch file before sending it),
    /// and advances `input` past the row. A row this sink did not write (an empty
    /// event id, an unknown kind: the zeros a file system can leave after a power
    /// loss) is refused.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] when `input` ends inside the row;
    /// [`DecodeError::Invalid`] when the bytes are not a detail row.
    pub fn decode(input: &mut &'b [u8]) -> Result<DetailRef<'b>, DecodeError> {
        let mut r = Reader(input);
        let event_id = r.string()?;
        let kind = r.string()?;
        if event_id.is_empty() {
            return Err(DecodeError::Invalid("empty event id"));
        }
        if EventKind::parse(kind).is_none() {
            return Err(DecodeError::Invalid("unknown event kind"));
        }
        Ok(DetailRef {
            event_id,
            kind,
            ts_ms: r.i64()?,
            event_time: u32::from_le_bytes(r.take()?),
            day: u16::from_le_bytes(r.take()?),
            user_id: r.string()?,
            advertiser_id: r.i64()?,
            campaign_id: r.i64()?,
            ad_id: r.i64()?,
            product_id: r.i64()?,
            category_id: r.i64()?,
            cost_micros: r.i64()?,
            gmv_micros: r.i64()?,
            attribution: r.string()?,
            click_ts_ms: r.i64()?,
            kafka_partition: i32::from_le_bytes(r.take()?),
            kafka_offset: r.i64()?,
            version: u64::from_le_bytes(r.take()?),
        })
    }
}

/// Appends `s` as a RowBinary `String`: its length as unsigned LEB128, then its bytes.
fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    while n >= 0x80 {
        #[allow(clippy::cast_possible_truncation)] // the low 7 bits
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)] // below 0x80
    out.push(n as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Reads RowBinary values off the front of a slice.
struct Reader<'i, 'b>(&'i mut &'b [u8]);

impl<'b> Reader<'_, 'b> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated)?;
        *self.0 = rest;
        Ok(*head)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take()?))
    }

    fn string(&mut self) -> Result<&'b str, DecodeError> {
        let mut len = 0_usize;
        let mut shift = 0;
        loop {
            let [b] = self.take::<1>()?;
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return Err(DecodeError::Invalid("string length over 4 GiB"));
            }
        }
        if self.0.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (s, rest) = self.0.split_at(len);
        *self.0 = rest;
        std::str::from_utf8(s).map_err(|_| DecodeError::Invalid("a string is not UTF-8"))
    }
}

/// RowBinary rows of one shard, in the order they were made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedRows {
    /// The rows, back to back.
    pub bytes: Vec<u8>,
    /// How many.
    pub rows: usize,
}

/// Encoded detail rows split by ClickHouse shard ([`shard_of`] of the event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetailRows {
    shards: Vec<EncodedRows>,
}

impl DetailRows {
    /// No rows yet, for `shards` shards (at least one).
    pub fn new(shards: usize) -> Self {
        DetailRows {
            shards: vec![EncodedRows::default(); shards.max(1)],
        }
    }

    /// Encodes `row` into its shard's rows.
    pub fn push(&mut self, row: &DetailRef<'_>) {
        let s = shard_of(row.event_id, self.shards.len());
        let to = &mut self.shards[s];
        row.encode(&mut to.bytes);
        to.rows += 1;
    }

    /// Rows held, over all shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// No rows held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each shard's rows, by shard number.
    pub fn into_shards(self) -> Vec<EncodedRows> {
        self.shards
    }

    /// Every row, decoded (for tests and tools).
    ///
    /// # Panics
    ///
    /// Never for rows made by [`DetailRows::push`].
    pub fn decoded(&self) -> Vec<DetailRow> {
        let mut out = Vec::with_capacity(self.len());
        for s in &self.shards {
            let mut b = s.bytes.as_slice();
            while !b.is_empty() {
                out.push(DetailRow::decode(&mut b).expect("rows encoded by push"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn row() -> impl Strategy<Value = DetailRow> {
        (
            ("[a-z0-9:-]{1,200}", 0_usize..6, "\\PC{0,40}", 0_usize..4),
            (any::<i64>(), any::<u32>(), any::<u16>(), any::<[i64; 7]>()),
            (any::<i64>(), any::<i32>(), any::<i64>(), any::<u64>()),
        )
            .prop_map(
                |(
                    (event_id, kind, user_id, attr),
                    (ts_ms, event_time, day, ids),
                    (click_ts_ms, kafka_partition, kafka_offset, version),
                )| DetailRow {
                    event_id,
                    kind: EventKind::ALL[kind].as_str().to_owned(),
                    ts_ms,
                    event_time,
                    day,
                    user_id,
                    advertiser_id: ids[0],
                    campaign_id: ids[1],
                    ad_id: ids[2],
                    product_id: ids[3],
                    category_id: ids[4],
                    cost_micros: ids[5],
                    gmv_micros: ids[6],
                    attribution: ["", "direct", "indirect", "none"][attr].to_owned(),
                    click_ts_ms,
                    kafka_partition,
                    kafka_offset,
                    version,
                },
            )
    }

    proptest! {
        /// Encoding then decoding gives the row back; every cut inside the bytes is
        /// `Truncated`, never a row.
        #[test]
        fn rows_survive_encoding_and_a_cut_row_never_decodes(rows in proptest::collection::vec(row(), 1..4), cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            for r in &rows {
                r.as_ref().encode(&mut bytes);
            }
            let mut b = bytes.as_slice();
            for r in &rows {
                prop_assert_eq!(&DetailRow::decode(&mut b).unwrap(), r);
            }
            prop_assert!(b.is_empty());
            let mut last = Vec::new();
            rows.last().unwrap().as_ref().encode(&mut last);
            let at = cut.index(last.len());
            let mut torn = &last[..at];
            prop_assert_eq!(DetailRow::decode(&mut torn), Err(DecodeError::Truncated));
        }
    }

    #[test]
    fn zeros_are_not_a_row() {
        let mut zeros: &[u8] = &[0; 200];
        assert_eq!(
            DetailRow::decode(&mut zeros),
            Err(DecodeError::Invalid("empty event id"))
        );
    }

    /// The bytes ClickHouse documents for a RowBinary `String`: LEB128 length, then
    /// the bytes; a 300-byte string's length is `0xAC 0x02`.
    #[test]
    fn a_long_string_has_a_two_byte_length() {
        let mut out = Vec::new();
        put_str(&mut out, &"x".repeat(300));
        assert_eq!(&out[..2], &[0xAC, 0x02]);
        assert_eq!(out.len(), 302);
    }
}

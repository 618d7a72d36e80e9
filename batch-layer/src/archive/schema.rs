//! The archive's Parquet schema: the event schema ([`common::event`]) as columns, plus
//! where each event came from in Kafka, plus a version column so the schema can evolve
//! (readers check it and refuse versions they do not know).
//!
//! | column | type | notes |
//! |---|---|---|
//! | `schema_version` | UInt16 | archive schema version; 1 |
//! | `kind` | Utf8 | event kind |
//! | `event_id` | Utf8 | dedup key |
//! | `ts` | Int64 | event time, ms UTC |
//! | `user_id` | Utf8 | |
//! | `ad_id` | Int64, nullable | traffic only |
//! | `advertiser_id` | Int64 | |
//! | `product_id` | Int64, nullable | |
//! | `cost_micros` | Int64, nullable | clicks |
//! | `gmv_micros` | Int64, nullable | payments |
//! | `kafka_partition` | Int32 | source partition (users are co-partitioned by it) |
//! | `kafka_offset` | Int64 | source offset: the tie-break among clicks with equal `ts` |
//!
//! Rows within a file are sorted by (`kind`, `user_id`, `ts`): row-group statistics on
//! `kind` let the recompute skip exposures when it only needs lookback clicks.
//!
//! Version history: **1** (2026-11), the columns above.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, UInt16Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use common::config::ArchiveCompression;
use common::event::Event;

/// Version written into `schema_version`.
pub const ARCHIVE_SCHEMA_VERSION: u16 = 1;

/// The Arrow schema of archive files.
pub static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("schema_version", DataType::UInt16, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("ad_id", DataType::Int64, true),
        Field::new("advertiser_id", DataType::Int64, false),
        Field::new("product_id", DataType::Int64, true),
        Field::new("cost_micros", DataType::Int64, true),
        Field::new("gmv_micros", DataType::Int64, true),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]))
});

/// An event with its Kafka position, as archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedEvent {
    /// The event.
    pub event: Event<'static>,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

/// Builds a record batch from events (in the given order).
///
/// # Errors
///
/// Only if the columns disagree with [`SCHEMA`] (a bug).
pub fn to_batch(rows: &[ArchivedEvent]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt16Array::from(vec![ARCHIVE_SCHEMA_VERSION; rows.len()])),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.event.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.event.event_id.as_ref()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.event.ts),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.event.user_id.as_ref()),
        )),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.event.ad_id))),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.event.advertiser_id),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|r| r.event.product_id),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|r| r.event.cost_micros),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|r| r.event.gmv_micros),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.partition),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
    ];
    RecordBatch::try_new(Arc::clone(&SCHEMA), cols)
}

/// Encodes rows as one Parquet file compressed with `compression`, sorted by (kind,
/// user_id, ts, offset), in row groups of `row_group_rows`.
///
/// # Errors
///
/// Parquet or Arrow errors (bugs or out of memory).
pub fn encode_parquet(
    mut rows: Vec<ArchivedEvent>,
    row_group_rows: usize,
    compression: ArchiveCompression,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;

    rows.sort_by(|a, b| {
        (
            a.event.kind.as_str(),
            a.event.user_id.as_ref(),
            a.event.ts,
            a.offset,
        )
            .cmp(&(
                b.event.kind.as_str(),
                b.event.user_id.as_ref(),
                b.event.ts,
                b.offset,
            ))
    });
    let props = WriterProperties::builder()
        .set_compression(match compression {
            ArchiveCompression::Lz4 => Compression::LZ4_RAW,
            ArchiveCompression::Zstd => Compression::ZSTD(ZstdLevel::try_new(3)?),
            ArchiveCompression::Snappy => Compression::SNAPPY,
        })
        .set_max_row_group_row_count(Some(row_group_rows))
        // Pages of at most 1 024 rows, found by the offset index: a reader that wants a
        // few rows (the recompute's lookback wants the clicks of the day's converting
        // users, about 1 % of them) decompresses only their pages.
        .set_data_page_row_count_limit(1_024)
        .set_created_by(format!("admetrics archiver {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, Arc::clone(&SCHEMA), Some(props))?;
    for chunk in rows.chunks(row_group_rows.max(1)) {
        w.write(&to_batch(chunk)?)?;
    }
    w.close()?;
    Ok(buf)
}

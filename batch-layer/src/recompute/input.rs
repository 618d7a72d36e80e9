//! Which archive files a day's recompute reads, and decoding them into [`Rec`]s.
//!
//! Day D (advertiser-local) needs: both topics' files of the UTC dates D's local day
//! can span (D alone when every advertiser is on UTC, else D-1..D+1), and the traffic
//! files of the lookback before them, of which only clicks are decoded (row groups
//! whose `kind` statistics exclude `click` are skipped; a row filter drops the rest).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{Int64Type, UInt16Type};
use bytes::Bytes;
use chrono::{Days, NaiveDate};
use common::event::{EventKind, TopicKind};
use object_store::ObjectMeta;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, ParquetRecordBatchReaderBuilder, RowFilter};
use parquet::file::statistics::Statistics;
use xxhash_rust::xxh3::xxh3_128;

use super::compute::Rec;
use crate::archive::layout;
use crate::archive::schema::ARCHIVE_SCHEMA_VERSION;
use crate::archive::store::Archive;
use crate::archiver::list_date;

/// One file to read.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Its metadata (path, size).
    pub meta: ObjectMeta,
    /// True for lookback traffic (clicks only are read).
    pub lookback: bool,
}

/// The files of a day, grouped by Kafka partition.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Partition -> files.
    pub groups: BTreeMap<i32, Vec<InputFile>>,
    /// UTC dates of the day's own rows.
    pub day_dates: Vec<NaiveDate>,
    /// UTC dates of the lookback clicks.
    pub lookback_dates: Vec<NaiveDate>,
}

impl Plan {
    /// Number of files.
    pub fn files(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }
}

/// Errors of reading the input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// No archive file exists for the day itself.
    #[error("no archive files for {day} (looked under topic=*/date={dates})")]
    Missing {
        /// The day.
        day: NaiveDate,
        /// The dates looked at.
        dates: String,
    },
    /// Listing or fetching failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A file does not decode.
    #[error("corrupt archive file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Lists the files day `day` needs. `span_days` is 0 when every advertiser reports in
/// UTC, else 1 (the local day may reach into the neighbouring UTC dates).
///
/// # Errors
///
/// [`InputError::Missing`] when the day has no files at all, or a listing error.
pub async fn plan(
    archive: &Archive,
    topics: [&str; 2],
    day: NaiveDate,
    span_days: u64,
    lookback_days: u64,
) -> Result<Plan, InputError> {
    let first = day.checked_sub_days(Days::new(span_days)).unwrap_or(day);
    let last = day.checked_add_days(Days::new(span_days)).unwrap_or(day);
    let day_dates: Vec<NaiveDate> = first.iter_days().take_while(|d| *d <= last).collect();
    let lb_first = first
        .checked_sub_days(Days::new(lookback_days))
        .unwrap_or(first);
    let lookback_dates: Vec<NaiveDate> = lb_first.iter_days().take_while(|d| *d < first).collect();
    let mut plan = Plan {
        day_dates: day_dates.clone(),
        lookback_dates: lookback_dates.clone(),
        ..Plan::default()
    };
    let mut own = 0;
    for d in &day_dates {
        for t in topics {
            for meta in list_date(archive, t, *d).await? {
                own += 1;
                push(&mut plan, meta, false);
            }
        }
    }
    if own == 0 {
        let dates = day_dates
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        return Err(InputError::Missing { day, dates });
    }
    for d in &lookback_dates {
        for meta in list_date(archive, topics[TopicKind::Traffic.index()], *d).await? {
            push(&mut plan, meta, true);
        }
    }
    Ok(plan)
}

fn push(plan: &mut Plan, meta: ObjectMeta, lookback: bool) {
    let p = layout::partition_of(&meta.location).unwrap_or(-1);
    plan.groups
        .entry(p)
        .or_default()
        .push(InputFile { meta, lookback });
}

/// Rows of a file from its footer (no data read).
///
/// # Errors
///
/// [`InputError::Corrupt`] when the footer does not decode.
pub fn row_count(path: &str, bytes: Bytes) -> Result<i64, InputError> {
    let b = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| corrupt(path, &e))?;
    Ok(b.metadata().file_metadata().num_rows())
}

fn corrupt(path: &str, e: &dyn std::fmt::Display) -> InputError {
    InputError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Decodes a file into records, keeping only users with `xxh3_128(user) % slices == slice`.
///
/// # Errors
///
/// [`InputError::Corrupt`] for an unreadable file, a missing column, or an archive
/// schema version this code does not know.
pub fn decode_file(
    path: &str,
    bytes: Bytes,
    lookback: bool,
    slice: (u64, u64),
    out: &mut Vec<Rec>,
) -> Result<(), InputError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| corrupt(path, &e))?;
    if builder.metadata().file_metadata().num_rows() == 0 {
        return Ok(());
    }
    let schema = Arc::clone(builder.schema());
    let col = |name: &str| schema.index_of(name).map_err(|e| corrupt(path, &e));
    let kind_i = col("kind")?;
    let parquet_schema = builder.metadata().file_metadata().schema_descr_ptr();
    let mut builder = builder.with_batch_size(65_536);
    if lookback {
        // Skip row groups that hold no click (rows are sorted by kind), then filter rows.
        let kind_leaf = parquet_schema
            .columns()
            .iter()
            .position(|c| c.name() == "kind")
            .ok_or_else(|| corrupt(path, &"no kind column"))?;
        let keep: Vec<usize> = builder
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, rg)| match rg.column(kind_leaf).statistics() {
                Some(Statistics::ByteArray(s)) => {
                    let (min, max) = (s.min_opt().map(|v| v.data()), s.max_opt().map(|v| v.data()));
                    min.is_none_or(|m| m <= b"click".as_slice())
                        && max.is_none_or(|m| m >= b"click".as_slice())
                }
                _ => true,
            })
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::leaves(&parquet_schema, [kind_leaf]);
        let pred = ArrowPredicateFn::new(mask, |b: RecordBatch| {
            let k = b.column(0).as_string::<i32>();
            Ok(BooleanArray::from_iter(
                k.iter().map(|v| Some(v == Some("click"))),
            ))
        });
        builder = builder
            .with_row_groups(keep)
            .with_row_filter(RowFilter::new(vec![Box::new(pred)]));
    }
    let reader = builder.build().map_err(|e| corrupt(path, &e))?;
    let (version_i, id_i, ts_i, user_i) = (
        col("schema_version")?,
        col("event_id")?,
        col("ts")?,
        col("user_id")?,
    );
    let (ad_i, adv_i, prod_i, cost_i, gmv_i, off_i) = (
        col("ad_id")?,
        col("advertiser_id")?,
        col("product_id")?,
        col("cost_micros")?,
        col("gmv_micros")?,
        col("kafka_offset")?,
    );
    for batch in reader {
        let b = batch.map_err(|e| corrupt(path, &e))?;
        let version = b.column(version_i).as_primitive::<UInt16Type>();
        if version
            .iter()
            .any(|v| v.is_some_and(|v| v > ARCHIVE_SCHEMA_VERSION))
        {
            return Err(corrupt(
                path,
                &format!(
                    "archive schema version above {ARCHIVE_SCHEMA_VERSION}: written by newer code"
                ),
            ));
        }
        let kinds = b.column(kind_i).as_string::<i32>();
        let ids = b.column(id_i).as_string::<i32>();
        let ts = b.column(ts_i).as_primitive::<Int64Type>();
        let users = b.column(user_i).as_string::<i32>();
        let ads = b.column(ad_i).as_primitive::<Int64Type>();
        let advs = b.column(adv_i).as_primitive::<Int64Type>();
        let prods = b.column(prod_i).as_primitive::<Int64Type>();
        let costs = b.column(cost_i).as_primitive::<Int64Type>();
        let gmvs = b.column(gmv_i).as_primitive::<Int64Type>();
        let offs = b.column(off_i).as_primitive::<Int64Type>();
        out.reserve(b.num_rows());
        let mut last_kind: (&str, EventKind) = ("click", EventKind::Click);
        for i in 0..b.num_rows() {
            let user = xxh3_128(users.value(i).as_bytes());
            if slice.1 > 1 && (user % u128::from(slice.1)) as u64 != slice.0 {
                continue;
            }
            let k = kinds.value(i);
            if k != last_kind.0 {
                let parsed = EventKind::parse(k)
                    .ok_or_else(|| corrupt(path, &format!("unknown kind `{k}`")))?;
                last_kind = (k, parsed);
            }
            out.push(Rec {
                user,
                id: xxh3_128(ids.value(i).as_bytes()),
                ts: ts.value(i),
                seq: offs.value(i),
                kind: last_kind.1,
                ad: if ads.is_null(i) { 0 } else { ads.value(i) },
                advertiser: advs.value(i),
                product: if prods.is_null(i) { 0 } else { prods.value(i) },
                cost: if costs.is_null(i) { 0 } else { costs.value(i) },
                gmv: if gmvs.is_null(i) { 0 } else { gmvs.value(i) },
                lookback,
            });
        }
    }
    Ok(())
}

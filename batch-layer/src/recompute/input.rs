//! Which archive files a day's recompute reads, and decoding them into [`Rec`]s.
//!
//! Day D (advertiser-local) needs: both topics' files of the UTC dates D's local day
//! can span (D alone when every advertiser is on UTC, else D-1..D+1), and the traffic
//! files of the lookback before them, of which only the clicks of the (user,
//! advertiser) pairs with an effect on the day are decoded (a semi-join: row groups
//! whose `kind` statistics exclude `click` are skipped, row filters on `kind` then
//! (`user_id`, `advertiser_id`) select the rest, and only the selected rows' other
//! columns are decoded).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, RecordBatchReader as _};
use arrow::datatypes::{Int64Type, UInt16Type};
use bytes::Bytes;
use chrono::{Days, NaiveDate};
use common::event::{EventKind, TopicKind};
use object_store::{ObjectMeta, ObjectStoreExt as _};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder, RowFilter,
};
use parquet::file::metadata::{FooterTail, PageIndexPolicy, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use rustc_hash::FxHashSet;
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
    FetchedFile::open(path.to_owned(), bytes, false).map(|f| f.rows())
}

/// Rows of an archived file, reading only its footer: two ranged reads (the last 8
/// bytes, which give the footer's length, then the footer), as the nightly late-data
/// check does for every file of the horizon.
///
/// # Errors
///
/// [`InputError::Store`] when the object cannot be read, [`InputError::Corrupt`] when
/// the footer does not decode.
pub async fn footer_row_count(archive: &Archive, meta: &ObjectMeta) -> Result<i64, InputError> {
    const TAIL: u64 = 8;
    let path = meta.location.as_ref();
    if meta.size < TAIL {
        return Err(corrupt(path, &"shorter than a Parquet footer"));
    }
    let tail = archive
        .store
        .get_range(&meta.location, meta.size - TAIL..meta.size)
        .await?;
    let tail = FooterTail::try_from(tail.as_ref()).map_err(|e| corrupt(path, &e))?;
    let len = u64::try_from(tail.metadata_length()).unwrap_or(u64::MAX);
    let start = (meta.size - TAIL)
        .checked_sub(len)
        .ok_or_else(|| corrupt(path, &"footer longer than the file"))?;
    let footer = archive
        .store
        .get_range(&meta.location, start..meta.size - TAIL)
        .await?;
    let footer = ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| corrupt(path, &e))?;
    Ok(footer.file_metadata().num_rows())
}

fn corrupt(path: &str, e: &dyn std::fmt::Display) -> InputError {
    InputError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// The columns the day's own rows are decoded from (all but `kafka_partition`).
const DAY_COLUMNS: [&str; 11] = [
    "schema_version",
    "kind",
    "event_id",
    "ts",
    "user_id",
    "ad_id",
    "advertiser_id",
    "product_id",
    "cost_micros",
    "gmv_micros",
    "kafka_offset",
];

/// The columns of a lookback click: what attribution and dedup read (no money).
const LOOKBACK_COLUMNS: [&str; 9] = [
    "schema_version",
    "kind",
    "event_id",
    "ts",
    "user_id",
    "ad_id",
    "advertiser_id",
    "product_id",
    "kafka_offset",
];

/// An archive file fetched into memory, its footer parsed once.
pub struct FetchedFile {
    /// Its path in the archive (for error messages).
    pub path: String,
    /// True for lookback traffic (only clicks of the day's converting users are read).
    pub lookback: bool,
    bytes: Bytes,
    meta: ArrowReaderMetadata,
}

impl FetchedFile {
    /// Parses the footer of `bytes`.
    ///
    /// # Errors
    ///
    /// [`InputError::Corrupt`] when the footer does not decode.
    pub fn open(path: String, bytes: Bytes, lookback: bool) -> Result<Self, InputError> {
        // The offset index (where each page starts) lets a selective read skip the
        // pages it needs no row of without decompressing them.
        let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
        let meta = ArrowReaderMetadata::load(&bytes, options).map_err(|e| corrupt(&path, &e))?;
        Ok(FetchedFile {
            path,
            lookback,
            bytes,
            meta,
        })
    }

    /// Rows of the file (from its footer).
    pub fn rows(&self) -> i64 {
        self.meta.metadata().file_metadata().num_rows()
    }

    fn builder(&self) -> ParquetRecordBatchReaderBuilder<Bytes> {
        ParquetRecordBatchReaderBuilder::new_with_metadata(self.bytes.clone(), self.meta.clone())
            .with_batch_size(65_536)
    }

    /// The leaves of `names` (each must exist).
    fn projection(&self, names: &[&str]) -> Result<ProjectionMask, InputError> {
        let leaves = names
            .iter()
            .map(|n| self.leaf(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProjectionMask::leaves(self.meta.parquet_schema(), leaves))
    }

    fn leaf(&self, name: &str) -> Result<usize, InputError> {
        self.meta
            .metadata()
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.name() == name)
            .ok_or_else(|| corrupt(&self.path, &format!("no {name} column")))
    }
}

/// Decodes a file of the day itself into records, keeping only users with
/// `xxh3_128(user) % slices == slice`. Returns the rows kept.
///
/// # Errors
///
/// [`InputError::Corrupt`] for an unreadable file, a missing column, or an archive
/// schema version this code does not know.
pub fn decode_day(
    file: &FetchedFile,
    slice: (u64, u64),
    out: &mut Vec<Rec>,
) -> Result<usize, InputError> {
    if file.rows() == 0 {
        return Ok(0);
    }
    let reader = file
        .builder()
        .with_projection(file.projection(&DAY_COLUMNS)?)
        .build()
        .map_err(|e| corrupt(&file.path, &e))?;
    let before = out.len();
    push_records(file, reader, false, slice, out)?;
    Ok(out.len() - before)
}

/// Decodes from a lookback file the clicks of the (user, advertiser) pairs in
/// `converters`: the attribution history of the day's effects (an effect is credited
/// only to a click of its own user and advertiser, so no other click is decoded).
/// Returns the file's clicks of every user (the rows the rules consider, as counted
/// in input rows).
///
/// Row groups whose `kind` statistics exclude `click` are skipped (rows are sorted by
/// kind); of the rest, `kind` is decoded for every row, `user_id` and
/// `advertiser_id` for the clicks, and the other columns only for the clicks of
/// `converters`.
///
/// # Errors
///
/// As [`decode_day`].
pub fn decode_lookback_clicks(
    file: &FetchedFile,
    converters: &Arc<Converters>,
    out: &mut Vec<Rec>,
) -> Result<u64, InputError> {
    if file.rows() == 0 {
        return Ok(0);
    }
    let path = &file.path;
    let (kind_leaf, user_leaf, adv_leaf) = (
        file.leaf("kind")?,
        file.leaf("user_id")?,
        file.leaf("advertiser_id")?,
    );
    let keep: Vec<usize> = file
        .meta
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
    if keep.is_empty() {
        return Ok(0);
    }
    let schema = file.meta.parquet_schema();
    let clicks = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&clicks);
    let is_click = ArrowPredicateFn::new(
        ProjectionMask::leaves(schema, [kind_leaf]),
        move |b: RecordBatch| {
            let k = b.column(0).as_string::<i32>();
            let m = BooleanArray::from_iter(k.iter().map(|v| Some(v == Some("click"))));
            counted.fetch_add(m.true_count() as u64, Ordering::Relaxed);
            Ok(m)
        },
    );
    let converters = Arc::clone(converters);
    let of_converters = ArrowPredicateFn::new(
        ProjectionMask::leaves(schema, [user_leaf, adv_leaf]),
        move |b: RecordBatch| {
            let missing =
                || arrow::error::ArrowError::SchemaError("user_id or advertiser_id".into());
            let users = b
                .column_by_name("user_id")
                .ok_or_else(missing)?
                .as_string::<i32>();
            let advs = b
                .column_by_name("advertiser_id")
                .ok_or_else(missing)?
                .as_primitive::<Int64Type>();
            Ok(BooleanArray::from_iter((0..b.num_rows()).map(|i| {
                Some(
                    !users.is_null(i)
                        && converters
                            .contains(&(xxh3_128(users.value(i).as_bytes()), advs.value(i))),
                )
            })))
        },
    );
    let reader = file
        .builder()
        .with_projection(file.projection(&LOOKBACK_COLUMNS)?)
        .with_row_groups(keep)
        .with_row_filter(RowFilter::new(vec![
            Box::new(is_click),
            Box::new(of_converters),
        ]))
        .build()
        .map_err(|e| corrupt(path, &e))?;
    push_records(file, reader, true, (0, 1), out)?;
    Ok(clicks.load(Ordering::Relaxed))
}

/// The (user, advertiser) pairs of the day's effects: `xxh3_128(user_id)` and the
/// advertiser id.
pub type Converters = FxHashSet<(u128, i64)>;

/// Appends the records of `reader`'s batches to `out` (users outside `slice` left out).
fn push_records(
    file: &FetchedFile,
    reader: ParquetRecordBatchReader,
    lookback: bool,
    slice: (u64, u64),
    out: &mut Vec<Rec>,
) -> Result<(), InputError> {
    let path = file.path.as_str();
    // Column positions in the projected batches (the lookback reads no money columns).
    let schema = reader.schema();
    let col = |name: &str| schema.index_of(name).map_err(|e| corrupt(path, &e));
    let (kind_i, version_i, id_i, ts_i, user_i) = (
        col("kind")?,
        col("schema_version")?,
        col("event_id")?,
        col("ts")?,
        col("user_id")?,
    );
    let (ad_i, adv_i, prod_i, off_i) = (
        col("ad_id")?,
        col("advertiser_id")?,
        col("product_id")?,
        col("kafka_offset")?,
    );
    let (cost_i, gmv_i) = (col("cost_micros").ok(), col("gmv_micros").ok());
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
        let costs = cost_i.map(|i| b.column(i).as_primitive::<Int64Type>());
        let gmvs = gmv_i.map(|i| b.column(i).as_primitive::<Int64Type>());
        let money = |a: Option<&arrow::array::Int64Array>, i: usize| {
            a.filter(|a| !a.is_null(i)).map_or(0, |a| a.value(i))
        };
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
                cost: money(costs, i),
                gmv: money(gmvs, i),
                lookback,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::schema::{ArchivedEvent, encode_parquet};
    use common::config::ArchiveCompression;
    use common::event::Event;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, GzipLevel};
    use parquet::file::properties::WriterProperties;

    fn event(i: i64, kind: EventKind, user: &str) -> ArchivedEvent {
        let traffic = kind.is_traffic();
        ArchivedEvent {
            event: Event {
                v: 1,
                kind,
                event_id: format!("e{i}").into(),
                ts: 1_700_000_000_000 + i * 1_000,
                user_id: user.to_owned().into(),
                ad_id: traffic.then_some(100 + i % 3),
                advertiser_id: 1,
                product_id: Some(200 + i % 2),
                cost_micros: (kind == EventKind::Click).then_some(10_000 + i),
                gmv_micros: (kind == EventKind::Payment).then_some(5_000_000),
            },
            partition: 0,
            offset: i,
        }
    }

    /// Exposures and clicks of users u0..u4, and a payment of u1.
    fn rows() -> Vec<ArchivedEvent> {
        (0..60)
            .map(|i| {
                let kind = match i % 4 {
                    0 | 1 => EventKind::Exposure,
                    2 => EventKind::Click,
                    _ if i == 7 => EventKind::Payment,
                    _ => EventKind::Click,
                };
                event(i, kind, &format!("u{}", i % 5))
            })
            .collect()
    }

    /// The same rows re-encoded the way another writer would (pyarrow and Spark write
    /// Snappy by default), one row group of 16 rows at most.
    fn reencode(zstd: &[u8], compression: Compression) -> Bytes {
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::copy_from_slice(zstd))
            .unwrap()
            .build()
            .unwrap();
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(16))
            .build();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(
            &mut buf,
            Arc::clone(&crate::archive::schema::SCHEMA),
            Some(props),
        )
        .unwrap();
        for b in reader {
            w.write(&b.unwrap()).unwrap();
        }
        w.close().unwrap();
        Bytes::from(buf)
    }

    #[test]
    fn files_of_every_common_codec_decode_to_the_same_records() {
        let zstd = encode_parquet(rows(), 1_000, ArchiveCompression::Zstd).unwrap();
        let open = |b: Bytes| FetchedFile::open("t.parquet".into(), b, false).unwrap();
        let mut expected = Vec::new();
        decode_day(&open(Bytes::from(zstd.clone())), (0, 1), &mut expected).unwrap();
        assert_eq!(expected.len(), 60);
        for c in [
            Compression::SNAPPY,
            Compression::GZIP(GzipLevel::default()),
            Compression::LZ4_RAW,
            Compression::LZ4,
            Compression::UNCOMPRESSED,
        ] {
            let mut got = Vec::new();
            decode_day(&open(reencode(&zstd, c)), (0, 1), &mut got)
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert_eq!(got, expected, "{c:?}");
        }
    }

    #[test]
    fn a_lookback_file_yields_only_the_clicks_of_the_given_users_and_advertisers_and_counts_every_click()
     {
        let all = rows();
        let clicks = all
            .iter()
            .filter(|r| r.event.kind == EventKind::Click)
            .count() as u64;
        // Several row groups, so row-group skipping and the row filters both work.
        let file = FetchedFile::open(
            "lb.parquet".into(),
            reencode(
                &encode_parquet(all.clone(), 1_000, ArchiveCompression::Zstd).unwrap(),
                Compression::SNAPPY,
            ),
            true,
        )
        .unwrap();
        let u1 = xxh3_128(b"u1");
        let users = Arc::new(Converters::from_iter([(u1, 1), (xxh3_128(b"u2"), 2)]));
        let mut got = Vec::new();
        let counted = decode_lookback_clicks(&file, &users, &mut got).unwrap();
        assert_eq!(
            counted, clicks,
            "every click of the file is counted as read"
        );
        let want = all
            .iter()
            .filter(|r| r.event.kind == EventKind::Click && r.event.user_id == "u1")
            // (u2 clicked advertiser 1 only: its pair with advertiser 2 selects nothing)
            .count();
        assert!(want > 0);
        assert_eq!(got.len(), want);
        assert!(
            got.iter()
                .all(|r| r.user == u1 && r.kind == EventKind::Click && r.lookback)
        );
        let none = Arc::new(FxHashSet::default());
        let mut got = Vec::new();
        assert_eq!(
            decode_lookback_clicks(&file, &none, &mut got).unwrap(),
            clicks
        );
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn the_row_count_of_a_stored_file_comes_from_its_footer_alone() {
        use object_store::memory::InMemory;
        use object_store::path::Path;
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(InMemory::new());
        let archive = Archive {
            store: Arc::clone(&store),
            root: Path::from("archive"),
            location: "memory://".into(),
            compression: ArchiveCompression::Zstd,
            local_dir: None,
        };
        let path = Path::from("archive/t.parquet");
        let bytes = encode_parquet(rows(), 16, ArchiveCompression::Lz4).unwrap();
        store.put(&path, bytes.clone().into()).await.unwrap();
        let meta = store.head(&path).await.unwrap();
        assert_eq!(footer_row_count(&archive, &meta).await.unwrap(), 60);
        // A truncated object is corrupt, not a panic.
        store
            .put(&path, bytes[..bytes.len() - 3].to_vec().into())
            .await
            .unwrap();
        let meta = store.head(&path).await.unwrap();
        assert!(matches!(
            footer_row_count(&archive, &meta).await,
            Err(InputError::Corrupt { .. })
        ));
    }
}

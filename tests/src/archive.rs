//! Reading the Parquet archive directly (with the `parquet` crate, not the batch
//! layer's reader), for checks that must not trust the code under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::AsArray;

/// Every `.parquet` file under `dir`.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Copies of each `event_id` in the archive under `dir`.
pub fn event_id_counts(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for f in files(dir) {
        let Ok(file) = std::fs::File::open(&f) else {
            continue;
        };
        let Ok(builder) =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        else {
            continue;
        };
        let reader = builder.build().expect("reader");
        for b in reader {
            let b = b.expect("batch");
            let ids = b.column_by_name("event_id").expect("event_id column");
            for id in ids.as_string::<i32>().iter().flatten() {
                *counts.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    counts
}

/// The Kafka offsets archived under `dir`, per (topic, partition), one entry per
/// copy: the topic from the file's `topic=` directory, the partition and offset from
/// the `kafka_partition` and `kafka_offset` columns.
pub fn offsets(dir: &Path) -> BTreeMap<(String, i32), Vec<i64>> {
    let mut out: BTreeMap<(String, i32), Vec<i64>> = BTreeMap::new();
    for f in files(dir) {
        let topic = f
            .components()
            .filter_map(|c| c.as_os_str().to_str()?.strip_prefix("topic="))
            .next_back()
            .unwrap_or_else(|| panic!("{} is not under a topic= directory", f.display()))
            .to_owned();
        let file = std::fs::File::open(&f).expect("archive file");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("a Parquet file")
            .build()
            .expect("reader");
        for b in reader {
            let b = b.expect("batch");
            let parts = b
                .column_by_name("kafka_partition")
                .expect("kafka_partition column")
                .as_primitive::<arrow::datatypes::Int32Type>()
                .clone();
            let offs = b
                .column_by_name("kafka_offset")
                .expect("kafka_offset column")
                .as_primitive::<arrow::datatypes::Int64Type>()
                .clone();
            for (p, o) in parts.values().iter().zip(offs.values().iter()) {
                out.entry((topic.clone(), *p)).or_default().push(*o);
            }
        }
    }
    out
}

/// Total rows in the archive (footers only).
pub fn rows(dir: &Path) -> i64 {
    files(dir)
        .iter()
        .filter_map(|f| std::fs::File::open(f).ok())
        .filter_map(|f| {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).ok()
        })
        .map(|b| b.metadata().file_metadata().num_rows())
        .sum()
}

/// Asserts that the archive under `dir` holds each of `events` exactly once and no
/// other event: no `event_id` twice (a duplicate), none of `events` missing (a gap).
/// `after` says what the archive went through, for the failure message.
///
/// # Panics
///
/// On a duplicate, a missing or an unknown event, naming up to 5 of them.
pub fn assert_exactly_once(dir: &Path, events: &[common::event::Event<'_>], after: &str) {
    let counts = event_id_counts(dir);
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates after {after}: {dups:?}");
    let missing: Vec<&str> = events
        .iter()
        .map(|e| e.event_id.as_ref())
        .filter(|id| !counts.contains_key(*id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "events missing from the archive after {after} ({} archived of {}): {missing:?}",
        counts.len(),
        events.len()
    );
    assert_eq!(
        counts.len(),
        events.len(),
        "the archive holds exactly the replayed events after {after}"
    );
}

//! Where archive files live in the object store:
//!
//! ```text
//! <root>/topic=<topic>/date=<YYYY-MM-DD>/hour=<HH>/p<PPP>-<first offset>-<last offset>.parquet
//! <root>/_intents/topic=<topic>/p<PPP>.json
//! <root>/_progress/topic=<topic>/p<PPP>.json   (how far the archive is complete: [`super::progress`])
//! ```
//!
//! `date` and `hour` are the event time's UTC date and hour, so late events land in
//! their own date. The name carries the partition and the offset range of the batch
//! the file came from: re-archiving the same range after a crash writes the same
//! names (overwriting, never duplicating). Offsets are zero-padded so names sort.

use chrono::NaiveDate;
use object_store::path::Path;

/// The object-store path of an archive file.
pub fn file_path(
    root: &Path,
    topic: &str,
    date: NaiveDate,
    hour: u32,
    partition: i32,
    first: i64,
    last: i64,
) -> Path {
    Path::from(format!(
        "{}topic={topic}/date={date}/hour={hour:02}/p{partition:03}-{first:020}-{last:020}.parquet",
        prefix(root)
    ))
}

/// The prefix of one topic's files (its `date=` prefixes below it).
pub fn topic_prefix(root: &Path, topic: &str) -> Path {
    Path::from(format!("{}topic={topic}/", prefix(root)))
}

/// The prefix of one topic's files of one date.
pub fn date_prefix(root: &Path, topic: &str, date: NaiveDate) -> Path {
    Path::from(format!("{}topic={topic}/date={date}/", prefix(root)))
}

/// The intent record of a partition's batch in flight.
pub fn intent_path(root: &Path, topic: &str, partition: i32) -> Path {
    Path::from(format!(
        "{}_intents/topic={topic}/p{partition:03}.json",
        prefix(root)
    ))
}

fn prefix(root: &Path) -> String {
    let r = root.as_ref();
    if r.is_empty() {
        String::new()
    } else {
        format!("{r}/")
    }
}

/// Kafka partition of an archive file, from its name.
pub fn partition_of(path: &Path) -> Option<i32> {
    let name = path.filename()?;
    name.strip_prefix('p')?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_topic_date_hour_partition_and_offsets() {
        let root = Path::from("archive");
        let d = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let p = file_path(&root, "ad-traffic", d, 13, 3, 100, 199);
        assert_eq!(
            p.as_ref(),
            "archive/topic=ad-traffic/date=2026-11-20/hour=13/p003-00000000000000000100-00000000000000000199.parquet"
        );
        assert_eq!(partition_of(&p), Some(3));
        assert!(
            p.as_ref()
                .starts_with(date_prefix(&root, "ad-traffic", d).as_ref())
        );
        assert_eq!(
            file_path(&Path::from(""), "t", d, 1, 0, 0, 0)
                .as_ref()
                .split('/')
                .next(),
            Some("topic=t")
        );
    }
}

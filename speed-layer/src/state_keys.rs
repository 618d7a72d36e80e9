//! The speed layer's state keys in Redis, under each partition's hash tag (the
//! results' keys and the whole layout: [`common::redis_keys`]):
//!
//! | key | type | content |
//! |---|---|---|
//! | `am:{am:p3}:epoch` | string | fencing token, incremented by each new owner of the partition |
//! | `am:{am:p3}:open` | string | snapshot of windows not yet closed, and the watermarks |
//! | `am:{am:p3}:clk:<YYYY-MM-DD>` | list | clicks (attribution state), one JSON batch per flush, by click day (UTC) |
//! | `am:{am:p3}:pend` | hash | effects waiting for their click: field = offset, value = JSON |
//! | `am:{am:p3}:ids:<hour>` | list | `event_id`s seen, by event hour (dedup state): one blob per flush, the 8-byte little-endian hashes of its new ids end to end |
//! | `am:{am:p3}:seen:<hour>` | set | the same as one member per id, as versions before the `ids` lists wrote it; read on load, no longer written |

use common::day::{DayNum, date_of};
use common::redis_keys::Keys;

/// The state keys of a partition, built from the results' [`Keys`].
pub trait StateKeys {
    /// Fencing token of a partition.
    fn epoch(&self, partition: i32) -> String;

    /// Snapshot of open windows and watermarks.
    fn open_windows(&self, partition: i32) -> String;

    /// Click log of one UTC day.
    fn clicks(&self, partition: i32, utc_day: DayNum) -> String;

    /// Pending effects.
    fn pending(&self, partition: i32) -> String;

    /// Dedup ids of one event hour (hours since the Unix epoch): a list of blobs of
    /// 8-byte hashes, one blob per flush.
    fn seen_ids(&self, partition: i32, hour: i64) -> String;

    /// Dedup set of one event hour as earlier versions wrote it (one member per id);
    /// read on load, no longer written.
    fn seen(&self, partition: i32, hour: i64) -> String;
}

impl StateKeys for Keys {
    fn epoch(&self, partition: i32) -> String {
        self.partition_key(partition, "epoch")
    }

    fn open_windows(&self, partition: i32) -> String {
        self.partition_key(partition, "open")
    }

    fn clicks(&self, partition: i32, utc_day: DayNum) -> String {
        self.partition_key(partition, &format!("clk:{}", date_of(utc_day)))
    }

    fn pending(&self, partition: i32) -> String {
        self.partition_key(partition, "pend")
    }

    fn seen_ids(&self, partition: i32, hour: i64) -> String {
        self.partition_key(partition, &format!("ids:{hour}"))
    }

    fn seen(&self, partition: i32, hour: i64) -> String {
        self.partition_key(partition, &format!("seen:{hour}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_share_the_partitions_hash_tag() {
        let k = Keys::new("am");
        let keys = [
            k.epoch(3),
            k.open_windows(3),
            k.clicks(3, 20_000),
            k.pending(3),
            k.seen(3, 480_000),
            k.seen_ids(3, 480_000),
        ];
        for key in &keys {
            let tag = &key[key.find('{').unwrap() + 1..key.find('}').unwrap()];
            assert_eq!(tag, "am:p3", "{key}");
        }
        assert_eq!(k.clicks(3, 20_000), "am:{am:p3}:clk:2024-10-04");
        assert_eq!(k.seen_ids(3, 7), "am:{am:p3}:ids:7");
    }
}

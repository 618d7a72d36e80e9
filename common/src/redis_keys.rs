//! The Redis key layout of the speed layer's results, shared by the writer (speed
//! layer) and the readers (serving layer, reconciliation). The speed layer's own state
//! keys (rows from `epoch` down) are built in `speed_layer::state_keys`, under the
//! same hash tag.
//!
//! Every key carries the hash tag `{<prefix>:p<N>}` of the Kafka partition `N` whose
//! events it holds. One partition's window flush (its result deltas, its state changes
//! and its consumed offsets) therefore touches keys of one hash slot only, and stays
//! one atomic Lua script on a single Redis and on Redis Cluster alike. A user's events
//! all live in one partition (both topics are keyed by `user_id`), so per-partition
//! HyperLogLogs count disjoint users and their counts add up.
//!
//! | key | type | content |
//! |---|---|---|
//! | `am:{am:p3}:m:<advertiser>:<YYYY-MM-DD>` | hash | per-ad counters of that advertiser-day: field `<ad_id>:<measure>` (ad `0` = unattributed effects), plus `_as_of` (ms UTC of the last write) |
//! | `am:{am:p3}:s:<advertiser>:<YYYY-MM-DD>` | hash | 10-second series: field `<window_start_ms>:<measure>` |
//! | `am:{am:p3}:u:<YYYY-MM-DD>:<scope>` | HyperLogLog | distinct users; scope `a<ad>`, `c<campaign>` or `v<advertiser>` |
//! | `am:{am:p3}:off` | hash | next offset to consume: fields `traffic`, `effects`; `flush_seq`, the partition's flush sequence number, advanced by every flush in the same atomic script (the serving layer caches by it) |
//! | `am:{am:p3}:epoch` | string | fencing token, incremented by each new owner of the partition |
//! | `am:{am:p3}:open` | string | snapshot of windows not yet closed, and the watermarks |
//! | `am:{am:p3}:clk:<YYYY-MM-DD>` | list | clicks (attribution state), one JSON batch per flush, by click day (UTC) |
//! | `am:{am:p3}:pend` | hash | effects waiting for their click: field = offset, value = JSON |
//! | `am:{am:p3}:ids:<hour>` | list | `event_id`s seen, by event hour (dedup state): one blob per flush, the 8-byte little-endian hashes of its new ids end to end |
//! | `am:{am:p3}:seen:<hour>` | set | the same as one member per id, as versions before the `ids` lists wrote it; read on load, no longer written |
//!
//! Dates in keys are the advertiser's local day. Measures are the names of
//! [`crate::counters::Measure`].
//!
//! # How the serving layer reads this layout
//!
//! The layout is the writer's (one hash tag per partition keeps a flush atomic); an
//! advertiser-day is spread over one `m:` hash and one `u:` HyperLogLog per scope in
//! every partition. The reader does not pay that per request: it polls every
//! partition's `flush_seq` (one round trip, pipelined per slot on a cluster) every
//! half of `serving.speed_staleness` (default 1 s), and keeps in process the summed
//! advertiser-days and whole answers read under the current flush generation. A
//! request then costs O(days) in-memory lookups; a flush anywhere makes the next
//! request re-read (only) the provisional days it needs, so an answer lags the last
//! completed flush by at most `serving.speed_staleness`. Details and the batch side:
//! `serving_layer::read_path`.

use chrono::NaiveDate;

use crate::counters::UvScope;

/// Field of the `off` hash holding the partition's flush sequence number.
pub const FLUSH_SEQ_FIELD: &str = "flush_seq";

/// Field of the `m:` hashes holding the last write time.
pub const AS_OF_FIELD: &str = "_as_of";

/// Builds keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (config `redis.key_prefix`).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn base(&self, partition: i32) -> String {
        format!("{p}:{{{p}:p{partition}}}", p = self.prefix)
    }

    /// The key `<prefix>:{<prefix>:p<N>}:<suffix>`: under the partition's hash tag, as
    /// every key of the partition (the speed layer's state keys are built with it).
    pub fn partition_key(&self, partition: i32, suffix: &str) -> String {
        format!("{}:{suffix}", self.base(partition))
    }

    /// Per-ad counters of an advertiser-day.
    pub fn metrics(&self, partition: i32, advertiser: i64, day: NaiveDate) -> String {
        format!("{}:m:{advertiser}:{day}", self.base(partition))
    }

    /// The 10-second series of an advertiser-day.
    pub fn series(&self, partition: i32, advertiser: i64, day: NaiveDate) -> String {
        format!("{}:s:{advertiser}:{day}", self.base(partition))
    }

    /// The UV HyperLogLog of a scope and day.
    pub fn uv(&self, partition: i32, day: NaiveDate, scope: UvScope) -> String {
        let s = match scope {
            UvScope::Ad(id) => format!("a{id}"),
            UvScope::Campaign(id) => format!("c{id}"),
            UvScope::Advertiser(id) => format!("v{id}"),
        };
        format!("{}:u:{day}:{s}", self.base(partition))
    }

    /// Consumed offsets of a partition.
    pub fn offsets(&self, partition: i32) -> String {
        format!("{}:off", self.base(partition))
    }
}

/// Field name `<id>:<measure>` used in the `m:` and `s:` hashes.
pub fn field(id: i64, measure: &str) -> String {
    format!("{id}:{measure}")
}

/// Splits a `<id>:<measure>` field.
pub fn parse_field(f: &str) -> Option<(i64, &str)> {
    let (id, m) = f.split_once(':')?;
    Some((id.parse().ok()?, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_of_a_partition_share_one_hash_tag() {
        let k = Keys::new("am");
        let d = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let keys = [
            k.metrics(3, 12, d),
            k.series(3, 12, d),
            k.uv(3, d, UvScope::Ad(12_001)),
            k.offsets(3),
            k.partition_key(3, "epoch"),
        ];
        for key in &keys {
            let tag = &key[key.find('{').unwrap() + 1..key.find('}').unwrap()];
            assert_eq!(tag, "am:p3", "{key}");
        }
        assert_eq!(k.metrics(3, 12, d), "am:{am:p3}:m:12:2026-11-23");
        assert_eq!(parse_field("12001:clicks"), Some((12_001, "clicks")));
    }
}

//! Reading the speed layer's provisional results from Redis or Redis Cluster (key
//! layout: [`common::redis_keys`]); used by the serving layer's read path and by the
//! batch layer's reconciliation (speed vs batch of each final day). A day of an advertiser is spread over one hash per
//! Kafka partition; all are fetched at once and summed: one pipeline on a single Redis,
//! one pipeline per partition's hash slot, concurrently, on a cluster
//! ([`crate::redis_conn::query_by_partition`]). UV is the sum of the per-partition
//! HyperLogLog counts, exact in expectation because a user lives in one partition only.
//!
//! [`SpeedReader::flush_generation`] reads, per partition, the flush sequence number
//! that the speed layer's flush script advances in the same atomic script as the
//! results (`flush_seq` in the `off` hash): while it stands still, no result of that
//! partition has changed. The serving layer's read path caches by it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash as _, Hasher as _};

use chrono::NaiveDate;
use redis::Cmd;

use crate::redis_conn::{RedisConn, query_by_partition};
use common::counters::UvScope;
use common::counters::{Counters, Measure};
use common::redis_keys::{AS_OF_FIELD, FLUSH_SEQ_FIELD, Keys, parse_field};

/// Largest |relative error| of the speed layer's UV against the exact batch UV that
/// still counts as agreement in reconciliation: 2 %, about 2.5 standard errors of a
/// Redis HyperLogLog (0.81 %, the Redis documentation of `PFCOUNT`).
pub const UV_TOLERANCE: f64 = 0.02;

/// One advertiser-day of the speed layer, summed over Kafka partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpeedDay {
    /// Counters per ad (ad 0 = unattributed effects).
    pub by_ad: BTreeMap<i64, Counters>,
    /// Last write time, ms UTC (`None`: nothing written for this day).
    pub as_of: Option<i64>,
    /// HyperLogLog counts of the scopes a grouping needs (the serving layer's
    /// `merge::uv_scopes`; filled by the caller from [`SpeedReader::uv`]).
    pub uv: HashMap<UvScope, i64>,
}

/// Reads provisional results.
#[derive(Clone)]
pub struct SpeedReader {
    conn: RedisConn,
    keys: Keys,
    partitions: i32,
}

impl SpeedReader {
    /// A reader over `partitions` Kafka partitions' keys.
    pub fn new(conn: RedisConn, keys: Keys, partitions: i32) -> Self {
        SpeedReader {
            conn,
            keys,
            partitions,
        }
    }

    /// Answers when Redis does.
    ///
    /// # Errors
    ///
    /// When Redis does not answer.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
    }

    /// One number that changes whenever any partition completes a flush: a hash of
    /// every partition's flush sequence number, read in one round trip (one pipeline
    /// per partition slot on a cluster).
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn flush_generation(&self) -> redis::RedisResult<u64> {
        let seqs: Vec<Option<i64>> = self
            .per_partition(&[()], |p, ()| {
                Cmd::hget(self.keys.offsets(p), FLUSH_SEQ_FIELD)
            })
            .await?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        seqs.hash(&mut h);
        Ok(h.finish())
    }

    /// The counters of `advertiser` on each of `days` (UV left empty: [`Self::uv`]).
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn days(
        &self,
        advertiser: i64,
        days: &[NaiveDate],
    ) -> redis::RedisResult<BTreeMap<NaiveDate, SpeedDay>> {
        let hashes: Vec<HashMap<String, i64>> = self
            .per_partition(days, |p, d| {
                Cmd::hgetall(self.keys.metrics(p, advertiser, d))
            })
            .await?;
        let mut out = BTreeMap::new();
        for (i, h) in hashes.into_iter().enumerate() {
            let d = days[i / usize::try_from(self.partitions).unwrap_or(1)];
            let day: &mut SpeedDay = out.entry(d).or_default();
            for (f, v) in h {
                if f == AS_OF_FIELD {
                    day.as_of = Some(day.as_of.map_or(v, |a: i64| a.max(v)));
                } else if let Some((ad, m)) = parse_field(&f)
                    && let Some(m) = Measure::parse(m)
                {
                    day.by_ad.entry(ad).or_default()[m] += v;
                }
            }
        }
        Ok(out)
    }

    /// Distinct users per (day, scope), summed over partitions.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn uv(
        &self,
        wanted: &[(NaiveDate, UvScope)],
    ) -> redis::RedisResult<HashMap<(NaiveDate, UvScope), i64>> {
        let counts: Vec<i64> = self
            .per_partition(wanted, |p, (d, s)| {
                let mut c = redis::cmd("PFCOUNT");
                c.arg(self.keys.uv(p, d, s));
                c
            })
            .await?;
        let per = usize::try_from(self.partitions).unwrap_or(1);
        Ok(wanted
            .iter()
            .zip(counts.chunks(per))
            .map(|(k, c)| (*k, c.iter().sum()))
            .collect())
    }

    /// The 10-second series of `advertiser` on `days`: counters per window start (ms
    /// UTC), summed over partitions. Only the series measures of the speed layer are
    /// present (exposures, clicks, cost and the attributed/unattributed effects).
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn series(
        &self,
        advertiser: i64,
        days: &[NaiveDate],
    ) -> redis::RedisResult<BTreeMap<i64, Counters>> {
        let hashes: Vec<HashMap<String, i64>> = self
            .per_partition(days, |p, d| {
                Cmd::hgetall(self.keys.series(p, advertiser, d))
            })
            .await?;
        let mut out: BTreeMap<i64, Counters> = BTreeMap::new();
        for (f, v) in hashes.into_iter().flatten() {
            if let Some((start, m)) = parse_field(&f)
                && let Some(m) = Measure::parse(m)
            {
                out.entry(start).or_default()[m] += v;
            }
        }
        Ok(out)
    }

    /// The last write time (ms UTC) of `advertiser` over `days`, from the `_as_of`
    /// field of every partition's hash; `None` when nothing was written.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn last_write(
        &self,
        advertiser: i64,
        days: &[NaiveDate],
    ) -> redis::RedisResult<Option<i64>> {
        let stamps: Vec<Option<i64>> = self
            .per_partition(days, |p, d| {
                Cmd::hget(self.keys.metrics(p, advertiser, d), AS_OF_FIELD)
            })
            .await?;
        Ok(stamps.into_iter().flatten().max())
    }

    /// Runs `cmd(partition, item)` for every item and every partition, in that order
    /// (item-major), in as few round trips as the deployment allows.
    async fn per_partition<I: Copy, T: redis::FromRedisValue>(
        &self,
        items: &[I],
        cmd: impl Fn(i32, I) -> Cmd,
    ) -> redis::RedisResult<Vec<T>> {
        let cmds = items
            .iter()
            .flat_map(|i| (0..self.partitions).map(|p| (p, cmd(p, *i))))
            .collect();
        query_by_partition(&self.conn, cmds).await
    }
}

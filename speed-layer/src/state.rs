//! A partition's results and state in Redis: taking ownership (epoch), loading the
//! state a [`Processor`] restarts from, and writing a [`Flush`] atomically.
//!
//! Key layout: [`common::redis_keys`]. Every key of partition `p` shares one hash
//! tag, so the flush script is valid on Redis Cluster too.
//!
//! # The flush script
//!
//! One `EVALSHA` per flush. It first checks that the caller still owns the partition
//! (its epoch is current) and that the flush sequence number is the one it expects,
//! then applies every write. A flush whose reply was lost is retried with the same
//! sequence number and answered `ALREADY`, so a retry never applies twice.

use std::collections::BTreeMap;

use crate::state_keys::StateKeys;
use common::counters::Counters;
use common::counters::UvScope;
use common::day::{DayNum, date_of};
use common::event::{DAY_MS, TopicKind};
use common::redis_keys::{AS_OF_FIELD, Keys, field};
use redis::aio::ConnectionLike;
use rustc_hash::FxHashMap;

use crate::pipeline::clicks::StoredClick;
use crate::pipeline::processor::{
    Checkpoint, Flush, PendingEffect, Processor, ProcessorConfig, Snapshot,
};

/// Most arguments one command of the script takes (Lua's `unpack` has a stack limit).
const MAX_ARGS_PER_OP: usize = 1_000;

const FLUSH_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED partition is owned by a newer epoch')
end
local seq = redis.call('HGET', KEYS[2], 'flush_seq') or '0'
if seq == ARGV[3] then return 'ALREADY' end
if seq ~= ARGV[2] then
  return redis.error_reply('CONFLICT flush_seq is ' .. seq .. ', expected ' .. ARGV[2])
end
redis.call('HSET', KEYS[2], 'flush_seq', ARGV[3])
local i = 4
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  redis.call(ARGV[i], KEYS[tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + n))
  i = i + 3 + n
end
return 'OK'
";

/// Errors of state I/O.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another instance took the partition (its epoch is newer): stop, write nothing.
    #[error("partition {0} is fenced: another instance owns it now")]
    Fenced(i32),
    /// Redis holds another flush sequence than this process wrote last: Redis lost
    /// acknowledged writes (or a second writer exists). The partition must restart
    /// from the offsets stored in Redis.
    #[error("partition {partition}: Redis state diverged from this process ({detail})")]
    Diverged {
        /// Partition.
        partition: i32,
        /// Redis's message.
        detail: String,
    },
    /// Redis failed ([`StateError::is_retriable`] tells whether a retry may cure it).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Stored state does not decode.
    #[error("partition {partition}: stored state does not decode: {source}")]
    Corrupt {
        /// Partition.
        partition: i32,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StateError {
    /// True for failures a retry may cure, by the Redis error's kind: the connection
    /// (refused, dropped, timed out), a server loading its AOF or failing over, a
    /// cluster redirect. Not a script or command error (a bug a retry repeats), nor
    /// fencing, divergence or corrupt state.
    pub fn is_retriable(&self) -> bool {
        match self {
            StateError::Redis(e) => !matches!(e.retry_method(), redis::RetryMethod::NoRetry),
            _ => false,
        }
    }
}

/// What a new owner reads first: its epoch and where to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// The partition.
    pub partition: i32,
    /// This owner's fencing token.
    pub epoch: i64,
    /// Flush sequence number stored with the offsets.
    pub flush_seq: i64,
    /// Next offset per topic (traffic, effects), if any was stored.
    pub next_offsets: [Option<i64>; 2],
}

fn parse_ownership(partition: i32, epoch: i64, off: &BTreeMap<String, i64>) -> Ownership {
    Ownership {
        partition,
        epoch,
        flush_seq: off.get("flush_seq").copied().unwrap_or(0),
        next_offsets: [
            off.get(TopicKind::Traffic.as_str()).copied(),
            off.get(TopicKind::Effects.as_str()).copied(),
        ],
    }
}

/// Takes ownership of `partition`: a new epoch (the fencing token every later flush
/// checks) and the offsets and flush sequence number stored with the results.
///
/// # Errors
///
/// [`StateError::Redis`] when Redis does not answer.
pub async fn acquire<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    partition: i32,
) -> Result<Ownership, StateError> {
    let epoch: i64 = redis::cmd("INCR")
        .arg(keys.epoch(partition))
        .query_async(conn)
        .await?;
    let off: BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.offsets(partition))
        .query_async(conn)
        .await?;
    Ok(parse_ownership(partition, epoch, &off))
}

/// Loads the state of a partition this process owns and builds its processor.
///
/// # Errors
///
/// [`StateError::Redis`] or [`StateError::Corrupt`].
pub async fn load<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    own: &Ownership,
    cfg: ProcessorConfig,
) -> Result<Processor, StateError> {
    let p = own.partition;
    let corrupt = |source: serde_json::Error| StateError::Corrupt {
        partition: p,
        source: source.into(),
    };
    let open: Option<String> = redis::cmd("GET")
        .arg(keys.open_windows(p))
        .query_async(conn)
        .await?;
    let snapshot: Option<Snapshot> = open
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(corrupt)?;
    let mut clicks = Vec::new();
    let mut seen = Vec::new();
    if let Some(s) = &snapshot {
        for day in s.click_days(cfg.rules.lookback_ms).into_iter().flatten() {
            let blobs: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(keys.clicks(p, day_num(day)))
                .arg(0)
                .arg(-1)
                .query_async(conn)
                .await?;
            for b in blobs {
                decode_clicks(&b, &mut clicks).map_err(|source| StateError::Corrupt {
                    partition: p,
                    source,
                })?;
            }
        }
        for hour in s.seen_hours(cfg.dedup_horizon_ms).into_iter().flatten() {
            let blobs: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(keys.seen_ids(p, hour))
                .arg(0)
                .arg(-1)
                .query_async(conn)
                .await?;
            // Sets written by earlier versions, one member per id.
            let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                .arg(keys.seen(p, hour))
                .query_async(conn)
                .await?;
            let ids: Vec<u64> = blobs
                .iter()
                .flat_map(|b| b.chunks_exact(8))
                .chain(members.iter().map(Vec::as_slice))
                .filter_map(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .collect();
            if !ids.is_empty() {
                seen.push((hour, ids));
            }
        }
    }
    let pend: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.pending(p))
        .query_async(conn)
        .await?;
    let pending: Vec<PendingEffect> = pend
        .values()
        .map(|v| serde_json::from_str(v))
        .collect::<Result<_, _>>()
        .map_err(corrupt)?;
    Ok(Processor::restore(
        cfg,
        Checkpoint {
            snapshot,
            clicks,
            pending,
            seen,
            next_offsets: own.next_offsets,
        },
    ))
}

fn day_num(day: i64) -> DayNum {
    DayNum::try_from(day).unwrap_or(0)
}

/// Time-to-live settings of the keys a flush writes, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// Result hashes and HyperLogLogs.
    pub results_s: i64,
    /// Click logs.
    pub clicks_s: i64,
    /// Dedup sets.
    pub seen_s: i64,
}

impl Ttls {
    /// From the configuration.
    pub fn from_config(cfg: &common::config::Config) -> Self {
        let s = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Ttls {
            results_s: s(cfg.speed.result_ttl),
            clicks_s: s(cfg.attribution.lookback) + 3 * 86_400,
            seen_s: s(cfg.speed.dedup_horizon) + 2 * 3_600,
        }
    }
}

/// Builds the script's KEYS and ARGV.
struct ScriptOps {
    keys: Vec<String>,
    index: FxHashMap<String, usize>,
    args: Vec<Vec<u8>>,
}

impl ScriptOps {
    fn new(epoch: i64, flush_seq: i64, fixed_keys: [String; 2]) -> Self {
        let mut ops = ScriptOps {
            keys: Vec::new(),
            index: FxHashMap::default(),
            args: Vec::new(),
        };
        for k in fixed_keys {
            ops.key(&k);
        }
        ops.args.push(epoch.to_string().into_bytes());
        ops.args.push(flush_seq.to_string().into_bytes());
        ops.args.push((flush_seq + 1).to_string().into_bytes());
        ops
    }

    fn key(&mut self, k: &str) -> usize {
        if let Some(&i) = self.index.get(k) {
            return i;
        }
        self.keys.push(k.to_owned());
        let i = self.keys.len(); // Lua arrays are 1-based
        self.index.insert(k.to_owned(), i);
        i
    }

    fn op(&mut self, cmd: &str, key: &str, args: Vec<Vec<u8>>) {
        let k = self.key(key);
        for chunk in args.chunks(MAX_ARGS_PER_OP) {
            self.args.push(cmd.as_bytes().to_vec());
            self.args.push(k.to_string().into_bytes());
            self.args.push(chunk.len().to_string().into_bytes());
            self.args.extend(chunk.iter().cloned());
        }
    }
}

fn num(v: impl ToString) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// Sums a flush into per advertiser-day writes: the day deltas into day counters and
/// UV, the closed windows into series buckets.
#[derive(Default)]
struct Totals {
    /// (advertiser, day) -> ad -> counters.
    by_ad: BTreeMap<(i64, DayNum), BTreeMap<i64, Counters>>,
    /// (advertiser, day) -> window start -> counters summed over ads.
    series: BTreeMap<(i64, DayNum), BTreeMap<i64, Counters>>,
    /// (scope, day) -> user hashes.
    users: BTreeMap<(UvScope, DayNum), Vec<u64>>,
}

fn totals(flush: &Flush) -> Totals {
    let mut t = Totals::default();
    for (k, c) in &flush.days.counters {
        *t.by_ad
            .entry((k.advertiser_id, k.day))
            .or_default()
            .entry(k.ad_id)
            .or_default() += c;
    }
    for (start, w) in &flush.closed {
        for (k, c) in &w.counters {
            *t.series
                .entry((k.advertiser_id, k.day))
                .or_default()
                .entry(*start)
                .or_default() += c;
        }
    }
    for u in &flush.days.users {
        t.users.entry((u.scope, u.day)).or_default().push(u.user);
    }
    for users in t.users.values_mut() {
        users.sort_unstable();
        users.dedup();
    }
    t
}

/// Builds the flush script's arguments: results of closed windows, offsets, and
/// state changes.
fn build_ops(keys: &Keys, own: &Ownership, flush: &Flush, now_ms: i64, ttl: Ttls) -> ScriptOps {
    let p = own.partition;
    let mut ops = ScriptOps::new(own.epoch, own.flush_seq, [keys.epoch(p), keys.offsets(p)]);
    let t = totals(flush);
    for ((adv, day), ads) in &t.by_ad {
        let key = keys.metrics(p, *adv, date_of(*day));
        for (ad, c) in ads {
            for (m, v) in c.non_zero() {
                ops.op("HINCRBY", &key, vec![num(field(*ad, m.name())), num(v)]);
            }
        }
        ops.op(
            "HSET",
            &key,
            vec![AS_OF_FIELD.as_bytes().to_vec(), num(now_ms)],
        );
        ops.op("EXPIRE", &key, vec![num(ttl.results_s)]);
    }
    for ((adv, day), windows) in &t.series {
        let key = keys.series(p, *adv, date_of(*day));
        for (start, c) in windows {
            for (m, v) in c.non_zero() {
                if m.in_series() {
                    ops.op("HINCRBY", &key, vec![num(field(*start, m.name())), num(v)]);
                }
            }
        }
        ops.op("EXPIRE", &key, vec![num(ttl.results_s)]);
    }
    for ((scope, day), users) in &t.users {
        let key = keys.uv(p, date_of(*day), *scope);
        ops.op(
            "PFADD",
            &key,
            users.iter().map(|u| u.to_le_bytes().to_vec()).collect(),
        );
        ops.op("EXPIRE", &key, vec![num(ttl.results_s)]);
    }
    let mut offsets = Vec::new();
    for topic in TopicKind::ALL {
        if let Some(o) = flush.next_offsets[topic.index()] {
            offsets.push(topic.as_str().as_bytes().to_vec());
            offsets.push(num(o));
        }
    }
    if !offsets.is_empty() {
        ops.op("HSET", &keys.offsets(p), offsets);
    }
    if let Some(s) = &flush.snapshot {
        // Serialising plain data cannot fail.
        ops.op(
            "SET",
            &keys.open_windows(p),
            vec![serde_json::to_vec(s).expect("snapshot serialises")],
        );
    }
    let mut clicks_by_day: BTreeMap<i64, Vec<&StoredClick>> = BTreeMap::new();
    for c in &flush.new_clicks {
        clicks_by_day
            .entry(c.click.ts.div_euclid(DAY_MS))
            .or_default()
            .push(c);
    }
    for (day, clicks) in clicks_by_day {
        let key = keys.clicks(p, day_num(day));
        ops.op("RPUSH", &key, vec![encode_clicks(&clicks)]);
        ops.op("EXPIRE", &key, vec![num(ttl.clicks_s)]);
    }
    if !flush.pending_added.is_empty() {
        let mut args = Vec::new();
        for e in &flush.pending_added {
            args.push(num(e.seq));
            args.push(serde_json::to_vec(e).expect("pending effect serialises"));
        }
        ops.op("HSET", &keys.pending(p), args);
    }
    if !flush.pending_removed.is_empty() {
        ops.op(
            "HDEL",
            &keys.pending(p),
            flush.pending_removed.iter().map(num).collect(),
        );
    }
    // One blob of 8-byte ids per hour and flush: a single argument however many ids
    // (a member per id cost Redis about 1 µs each, most of a flush's time).
    let mut seen_by_hour: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
    for (hour, id) in &flush.seen_added {
        seen_by_hour
            .entry(*hour)
            .or_default()
            .extend_from_slice(&id.to_le_bytes());
    }
    for (hour, blob) in seen_by_hour {
        let key = keys.seen_ids(p, hour);
        ops.op("RPUSH", &key, vec![blob]);
        ops.op("EXPIRE", &key, vec![num(ttl.seen_s)]);
    }
    ops
}

/// First byte of a binary blob of clicks ([`encode_clicks`]); a blob of earlier versions
/// is a JSON array and starts with `[`.
const CLICKS_V1: u8 = 1;
/// Bytes of one click in a binary blob.
const CLICK_BYTES: usize = 7 * 8 + 4;

/// One list element of new clicks (a flush's clicks of one day): [`CLICKS_V1`], then
/// per click its user hash (`u64`), advertiser, time (ms UTC), sequence, ad, campaign
/// and product (`i64` each) and day (`i32`), little-endian: 60 bytes a click, where
/// the JSON of earlier versions took some 150 (Redis copies each through the flush
/// script and its AOF, so the bytes were most of a flush's time there).
fn encode_clicks(clicks: &[&StoredClick]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + clicks.len() * CLICK_BYTES);
    out.push(CLICKS_V1);
    for c in clicks {
        out.extend_from_slice(&c.user.to_le_bytes());
        for v in [
            c.advertiser_id,
            c.click.ts,
            c.click.seq,
            c.click.ad_id,
            c.click.campaign_id,
            c.click.product_id,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&c.click.day.to_le_bytes());
    }
    out
}

/// Appends the clicks of one list element (binary, or the JSON of earlier versions)
/// to `out`.
fn decode_clicks(
    blob: &[u8],
    out: &mut Vec<StoredClick>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match blob.split_first() {
        Some((&CLICKS_V1, rest)) if rest.len() % CLICK_BYTES == 0 => {
            for c in rest.chunks_exact(CLICK_BYTES) {
                let i =
                    |k: usize| i64::from_le_bytes(c[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
                out.push(StoredClick {
                    user: u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                    advertiser_id: i(1),
                    click: common::attribution::ClickRef {
                        ts: i(2),
                        seq: i(3),
                        ad_id: i(4),
                        campaign_id: i(5),
                        product_id: i(6),
                        day: i32::from_le_bytes(c[56..60].try_into().expect("4 bytes")),
                    },
                });
            }
            Ok(())
        }
        Some((b'[', _)) => {
            out.extend(serde_json::from_slice::<Vec<StoredClick>>(blob)?);
            Ok(())
        }
        _ => Err(format!(
            "a list element of clicks of {} bytes is neither binary clicks nor JSON",
            blob.len()
        )
        .into()),
    }
}

/// Writes `flush` for the partition owned by `own`, atomically, and advances
/// `own.flush_seq`. Safe to retry with the same `own` and `flush` after an error.
///
/// # Errors
///
/// [`StateError::Fenced`] when another instance owns the partition now,
/// [`StateError::Diverged`] when Redis lost writes, [`StateError::Redis`] otherwise.
pub async fn write_flush<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    own: &mut Ownership,
    flush: &Flush,
    now_ms: i64,
    ttl: Ttls,
) -> Result<(), StateError> {
    let ops = build_ops(keys, own, flush, now_ms, ttl);
    let script = redis::Script::new(FLUSH_SCRIPT);
    let mut inv = script.prepare_invoke();
    for k in &ops.keys {
        inv.key(k);
    }
    for a in &ops.args {
        inv.arg(a.as_slice());
    }
    match inv.invoke_async::<String>(conn).await {
        Ok(_) => {
            own.flush_seq += 1;
            Ok(())
        }
        // The script's own refusals are error replies with codes of their own.
        Err(e) => match e.code() {
            Some("FENCED") => Err(StateError::Fenced(own.partition)),
            Some("CONFLICT") => Err(StateError::Diverged {
                partition: own.partition,
                detail: e.to_string(),
            }),
            _ => Err(StateError::Redis(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::windows::{AdDay, DayDeltas, UvEntry, Window};

    #[test]
    fn clicks_are_stored_in_binary_and_json_of_earlier_versions_still_loads() {
        let click = |n: i64| StoredClick {
            user: u64::MAX - 7,
            advertiser_id: n,
            click: common::attribution::ClickRef {
                ts: 1_700_000_000_000 + n,
                seq: -n,
                ad_id: 11,
                campaign_id: 12,
                product_id: 13,
                day: -3,
            },
        };
        let clicks = [click(1), click(2)];
        let blob = encode_clicks(&clicks.iter().collect::<Vec<_>>());
        assert_eq!(blob.len(), 1 + 2 * 60);
        let mut back = Vec::new();
        decode_clicks(&blob, &mut back).unwrap();
        decode_clicks(&serde_json::to_vec(&clicks).unwrap(), &mut back).unwrap();
        assert_eq!(back, [clicks, clicks].concat());
        assert!(
            decode_clicks(&blob[..blob.len() - 1], &mut back).is_err(),
            "a cut blob"
        );
    }

    #[test]
    fn redis_errors_are_retried_by_kind() {
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(StateError::Redis(refused).is_retriable(), "Redis down");
        let loading = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
            "Redis is loading the dataset in memory",
        ));
        assert!(
            StateError::Redis(loading).is_retriable(),
            "restarting from its AOF"
        );
        let script = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "Error running script",
        ));
        assert!(
            !StateError::Redis(script).is_retriable(),
            "a script error repeats"
        );
        assert!(!StateError::Fenced(3).is_retriable());
    }
    use common::counters::Measure;

    #[test]
    fn one_flush_touches_one_hash_slot_and_writes_days_and_series() {
        let keys = Keys::new("am");
        let own = Ownership {
            partition: 5,
            epoch: 3,
            flush_seq: 7,
            next_offsets: [Some(10), None],
        };
        let key = AdDay {
            advertiser_id: 1,
            ad_id: 11,
            day: 20_000,
        };
        let mut c = Counters::ZERO;
        c[Measure::Clicks] = 2;
        let mut w = Window::default();
        w.counters.insert(key, c);
        // Two windows of 2 clicks closed; the day deltas hold 3 clicks (one more in a
        // window still open) and one user.
        let mut days = DayDeltas::default();
        c[Measure::Clicks] = 3;
        days.counters.insert(key, c);
        days.users.push(UvEntry {
            scope: UvScope::Ad(11),
            day: 20_000,
            user: 42,
        });
        let flush = Flush {
            days,
            closed: vec![(0, w.clone()), (10_000, w)],
            next_offsets: [Some(10), Some(4)],
            ..Flush::default()
        };
        let ops = build_ops(
            &keys,
            &own,
            &flush,
            1_000,
            Ttls {
                results_s: 1,
                clicks_s: 1,
                seen_s: 1,
            },
        );
        assert!(
            ops.keys.iter().all(|k| k.contains("{am:p5}")),
            "{:?}",
            ops.keys
        );
        let args: Vec<String> = ops
            .args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let after = |field: &str| {
            let pos = args
                .iter()
                .position(|a| a == field)
                .unwrap_or_else(|| panic!("{field} written"));
            args[pos + 1].clone()
        };
        assert_eq!(
            after("11:clicks"),
            "3",
            "the day counter gets the day deltas"
        );
        assert_eq!(
            after("0:clicks"),
            "2",
            "each closed window its series bucket"
        );
        assert_eq!(after("10000:clicks"), "2");
        assert_eq!(&args[..3], &["3", "7", "8"]);
        let pfadd = args.iter().position(|a| a == "PFADD").unwrap();
        assert_eq!(args[pfadd + 2], "1", "one user added");
    }
}

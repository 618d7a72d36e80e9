//! The read path: what a metrics request costs, and why it is cheap.
//!
//! The dashboard is read far more often than its numbers change. Final days change
//! only when a batch run replaces them (a new `computed_at` of their zone-day in
//! `day_finality`); provisional days only when the speed layer completes a flush
//! (every 10 s per partition). So the read path caches by those
//! versions, as Apache Druid's brokers cache per-segment results of immutable
//! segments, and a request costs O(days) in-process lookups, not
//! O(days x partitions x scopes) round trips.
//!
//! # Versions, polled in the background
//!
//! | what | version | bound (polled every half of it) |
//! |---|---|---|
//! | final days | per (day, time zone) with `status = 'final'`: the `computed_at` of the run that last wrote its rows (`day_finality`, [`crate::batch::read_catalog`]); an advertiser-day is final iff (day, the advertiser's zone) is in the catalog; the whole catalog hashes to the *batch generation* | `serving.batch_staleness` (1 s): a zone-day turned final, or replaced (revised) by a new run, is served from the new rows at most this long after the run committed |
//! | provisional days | the *flush generation*: a hash of every partition's `flush_seq` ([`platform::speed_results::SpeedReader::flush_generation`]) | `serving.speed_staleness` (1 s): an answer is never older than the last completed flush by more than this |
//!
//! A poll older than its bound is never used: when the poller is late or failing
//! (MySQL or Redis down), a request reads the version itself (and answers 503 if that
//! fails too).
//!
//! # Caches (in process, bounded by `serving.cache_mib`)
//!
//! | cache | key | valid while |
//! |---|---|---|
//! | answers | (advertiser, from, to, group_by) | its batch generation, flush generation and the advertiser's today are current |
//! | final advertiser-days (rows and latest revision) | (advertiser, day, zone-day `computed_at`) | forever: a new run (a revision too) is a new key |
//! | provisional advertiser-days | (advertiser, day, group_by), holding counters and HyperLogLog counts | its flush generation is current |
//! | advertisers | id -> time zone (which zone-days of the catalog apply), `final_through` | its batch generation is current (`final_through` moves with a run), at most `serving.dimension_cache_ttl` |
//! | ad -> campaign | advertiser | `serving.dimension_cache_ttl`, reloaded at once when a speed day names an ad it lacks |
//!
//! A miss reads only what it lacks: the missing final days, their versions and their
//! latest `day_revisions` rows in one MySQL transaction ([`crate::batch::load_days`]),
//! the missing provisional days in one pipeline per partition slot
//! ([`platform::speed_results::SpeedReader`]). Counts and sums are the sums of the
//! per-partition hashes exactly as before; UV is the sum of the per-partition
//! HyperLogLog counts. On Redis Cluster every read is pipelined per slot, all in
//! flight at once.

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::NaiveDate;
use chrono_tz::Tz;
use common::config::ServingConfig;
use common::day::{now_ms, today};
use mysql_async::Pool;
use mysql_async::prelude::Queryable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, Catalog};
use crate::error::ApiError;
use crate::merge::{self, BatchDay, GroupBy, SpeedDay};
use platform::speed_results::SpeedReader;

/// Which (day, time zone) pairs are final, and in which version, as of one poll of
/// `day_finality`.
#[derive(Debug, Default)]
pub struct BatchCatalog {
    /// Hash of `days`: changes whenever any zone-day turns final or gets a new version.
    pub generation: u64,
    /// Final zone-days -> `computed_at`, ms UTC.
    pub days: Catalog,
    /// When the read started (`None`: never).
    pub read_at: Option<Instant>,
}

impl BatchCatalog {
    fn of(days: Catalog, read_at: Instant) -> Self {
        let mut sorted: Vec<(NaiveDate, &str, i64)> = days
            .iter()
            .map(|((d, tz), v)| (*d, tz.name(), *v))
            .collect();
        sorted.sort_unstable();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        sorted.hash(&mut h);
        BatchCatalog {
            generation: h.finish(),
            days,
            read_at: Some(read_at),
        }
    }
}

/// The flush generation as of one poll.
#[derive(Debug, Clone, Copy, Default)]
struct FlushGeneration {
    value: u64,
    read_at: Option<Instant>,
}

/// An advertiser's reporting zone and `final_through`.
#[derive(Debug, Clone)]
pub struct Advertiser {
    /// The id.
    pub id: i64,
    /// Reporting time zone.
    pub tz: Tz,
    /// Latest final day.
    pub final_through: Option<NaiveDate>,
    batch_generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AnswerKey {
    advertiser: i64,
    from: NaiveDate,
    to: NaiveDate,
    group_by: GroupBy,
}

struct CachedAnswer {
    batch_generation: u64,
    flush_generation: u64,
    today: NaiveDate,
    body: Bytes,
}

struct CachedSpeedDay {
    flush_generation: u64,
    day: SpeedDay,
}

/// The serving layer's reads of MySQL and Redis, behind version-checked caches
/// (module docs).
pub struct ReadPath {
    pool: Pool,
    speed: SpeedReader,
    batch_staleness: Duration,
    speed_staleness: Duration,
    catalog: watch::Receiver<Arc<BatchCatalog>>,
    catalog_tx: watch::Sender<Arc<BatchCatalog>>,
    flushes: watch::Receiver<FlushGeneration>,
    flushes_tx: watch::Sender<FlushGeneration>,
    /// Held while a request reads a version itself, so that a late poller makes one
    /// request wait for one read rather than every request read.
    inline_refresh: tokio::sync::Mutex<()>,
    answers: moka::sync::Cache<AnswerKey, Arc<CachedAnswer>>,
    batch_days: moka::sync::Cache<(i64, NaiveDate, i64), Arc<BatchDay>>,
    speed_days: moka::sync::Cache<(i64, NaiveDate, GroupBy), Arc<CachedSpeedDay>>,
    advertisers: moka::sync::Cache<i64, Arc<Advertiser>>,
    campaigns: moka::sync::Cache<i64, Arc<BTreeMap<i64, i64>>>,
}

/// Rough in-memory size of one cached advertiser-day row, bytes (for the weigher).
const ROW_BYTES: u32 = 256;

impl ReadPath {
    /// A read path over `pool` and `speed` with the intervals and bounds of `cfg`.
    /// Call [`ReadPath::spawn_pollers`] to keep the versions current.
    pub fn new(cfg: &ServingConfig, pool: Pool, speed: SpeedReader) -> Arc<Self> {
        let bytes = cfg.cache_mib.saturating_mul(1 << 20);
        let ttl = cfg.dimension_cache_ttl;
        let (catalog_tx, catalog) = watch::channel(Arc::new(BatchCatalog::default()));
        let (flushes_tx, flushes) = watch::channel(FlushGeneration::default());
        let weigh_rows = |n: usize| {
            u32::try_from(n.max(1))
                .unwrap_or(u32::MAX)
                .saturating_mul(ROW_BYTES)
        };
        Arc::new(ReadPath {
            pool,
            speed,
            batch_staleness: cfg.batch_staleness,
            speed_staleness: cfg.speed_staleness,
            catalog,
            catalog_tx,
            flushes,
            flushes_tx,
            inline_refresh: tokio::sync::Mutex::new(()),
            answers: moka::sync::Cache::builder()
                .max_capacity(bytes / 4)
                .weigher(|_, v: &Arc<CachedAnswer>| u32::try_from(v.body.len()).unwrap_or(u32::MAX))
                .time_to_live(ttl)
                .build(),
            batch_days: moka::sync::Cache::builder()
                .max_capacity(bytes / 2)
                .weigher(move |_, v: &Arc<BatchDay>| weigh_rows(v.by_ad.len()))
                .build(),
            speed_days: moka::sync::Cache::builder()
                .max_capacity(bytes / 4)
                .weigher(move |_, v: &Arc<CachedSpeedDay>| weigh_rows(v.day.by_ad.len()))
                .time_to_live(ttl)
                .build(),
            advertisers: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            campaigns: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
        })
    }

    /// Starts the two pollers (batch catalog, flush generation), each ticking every half
    /// of its staleness bound; they stop with `shutdown`. A failed poll is logged and
    /// retried on the next tick.
    pub fn spawn_pollers(self: &Arc<Self>, shutdown: &CancellationToken) {
        spawn_poller(
            Arc::clone(self),
            self.batch_staleness / 2,
            shutdown.clone(),
            "reading day_finality failed; requests read it themselves",
            |me| async move { me.refresh_catalog().await.map(drop) },
        );
        spawn_poller(
            Arc::clone(self),
            self.speed_staleness / 2,
            shutdown.clone(),
            "reading flush sequence numbers failed; requests read them themselves",
            |me| async move { me.refresh_flushes().await.map(drop) },
        );
    }

    async fn refresh_catalog(&self) -> Result<Arc<BatchCatalog>, mysql_async::Error> {
        // The poll's age counts from before the query: what it read is at least that new.
        let started = Instant::now();
        let c = Arc::new(BatchCatalog::of(
            batch::read_catalog(&self.pool).await?,
            started,
        ));
        self.catalog_tx.send_replace(Arc::clone(&c));
        Ok(c)
    }

    async fn refresh_flushes(&self) -> redis::RedisResult<u64> {
        let started = Instant::now();
        let value = self.speed.flush_generation().await?;
        self.flushes_tx.send_replace(FlushGeneration {
            value,
            read_at: Some(started),
        });
        Ok(value)
    }

    /// The batch catalog, read now if the poller's copy is older than its bound.
    ///
    /// # Errors
    ///
    /// 503 when it must be read now and MySQL fails.
    pub async fn catalog(&self) -> Result<Arc<BatchCatalog>, ApiError> {
        let c = Arc::clone(&self.catalog.borrow());
        if fresh(c.read_at, self.batch_staleness) {
            return Ok(c);
        }
        let _one_at_a_time = self.inline_refresh.lock().await;
        let c = Arc::clone(&self.catalog.borrow());
        if fresh(c.read_at, self.batch_staleness) {
            return Ok(c); // read by whoever held the lock
        }
        Ok(self.refresh_catalog().await?)
    }

    async fn flush_generation(&self) -> Result<u64, ApiError> {
        let g = *self.flushes.borrow();
        if fresh(g.read_at, self.speed_staleness) {
            return Ok(g.value);
        }
        let _one_at_a_time = self.inline_refresh.lock().await;
        let g = *self.flushes.borrow();
        if fresh(g.read_at, self.speed_staleness) {
            return Ok(g.value);
        }
        Ok(self.refresh_flushes().await?)
    }

    /// The advertiser `id` (time zone, `final_through`), `None` when unknown.
    ///
    /// # Errors
    ///
    /// 503 when MySQL fails.
    pub async fn advertiser(&self, id: i64) -> Result<Option<Arc<Advertiser>>, ApiError> {
        let generation = self.catalog().await?.generation;
        if let Some(a) = self.advertisers.get(&id)
            && a.batch_generation == generation
        {
            return Ok(Some(a));
        }
        let mut conn = self.pool.get_conn().await?;
        let row: Option<(String, Option<NaiveDate>)> = conn
            .exec_first(
                "SELECT time_zone, final_through FROM advertisers WHERE advertiser_id = ?",
                (id,),
            )
            .await?;
        let Some((tz_name, final_through)) = row else {
            return Ok(None);
        };
        let tz = common::day::parse_tz(&tz_name).map_err(|e| {
            ApiError::Internal(format!("advertiser {id} has a bad time zone in MySQL: {e}"))
        })?;
        let a = Arc::new(Advertiser {
            id,
            tz,
            final_through,
            batch_generation: generation,
        });
        self.advertisers.insert(id, Arc::clone(&a));
        Ok(Some(a))
    }

    /// The serialized metrics answer (JSON, [`merge::MetricsAnswer`]) of `adv` over
    /// `from..=to` grouped by `group_by`.
    ///
    /// # Errors
    ///
    /// 503 when a store the answer needs fails.
    pub async fn metrics(
        &self,
        adv: &Advertiser,
        from: NaiveDate,
        to: NaiveDate,
        group_by: GroupBy,
    ) -> Result<Bytes, ApiError> {
        // Versions first: whatever is read after them is at least as new, so an
        // answer cached under them is never newer than its key says.
        let catalog = self.catalog().await?;
        let flush_generation = self.flush_generation().await?;
        let today = today(now_ms(), adv.tz);
        let key = AnswerKey {
            advertiser: adv.id,
            from,
            to,
            group_by,
        };
        if let Some(hit) = self.answers.get(&key)
            && hit.batch_generation == catalog.generation
            && hit.flush_generation == flush_generation
            && hit.today == today
        {
            metrics::counter!(CACHE_LOOKUPS, "cache" => "answer", "result" => "hit").increment(1);
            return Ok(hit.body.clone());
        }
        metrics::counter!(CACHE_LOOKUPS, "cache" => "answer", "result" => "miss").increment(1);
        let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
        let batch = self.batch_days(adv, &days, &catalog).await?;
        let speed_wanted: Vec<NaiveDate> = days
            .iter()
            .copied()
            .filter(|d| !batch.contains_key(d))
            .collect();
        let campaigns = if group_by == GroupBy::Day {
            Arc::new(BTreeMap::new())
        } else {
            self.campaigns(adv.id, false).await?
        };
        let (speed, campaigns) = self
            .speed_days(adv.id, &speed_wanted, group_by, flush_generation, campaigns)
            .await?;
        let batch_refs: BTreeMap<NaiveDate, &BatchDay> =
            batch.iter().map(|(d, b)| (*d, b.as_ref())).collect();
        let speed_refs: BTreeMap<NaiveDate, &SpeedDay> =
            speed.iter().map(|(d, s)| (*d, &s.day)).collect();
        let answer = merge::answer(&merge::Inputs {
            advertiser_id: adv.id,
            time_zone: adv.tz.name(),
            final_through: adv.final_through,
            from,
            to,
            group_by,
            today,
            batch: &batch_refs,
            speed: &speed_refs,
            campaigns: &campaigns,
        });
        let body = Bytes::from(
            serde_json::to_vec(&answer).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
        // `adv` (its `final_through`) was read under some batch generation; an answer
        // is cached only under that same one, so a run that lands meanwhile cannot
        // leave an old `final_through` in a current entry.
        if adv.batch_generation == catalog.generation {
            self.answers.insert(
                key,
                Arc::new(CachedAnswer {
                    batch_generation: catalog.generation,
                    flush_generation,
                    today,
                    body: body.clone(),
                }),
            );
        }
        Ok(body)
    }

    /// The days among `days` that are final for `adv` (final in its time zone), from
    /// the cache or, for the missing ones, MySQL.
    async fn batch_days(
        &self,
        adv: &Advertiser,
        days: &[NaiveDate],
        catalog: &BatchCatalog,
    ) -> Result<BTreeMap<NaiveDate, Arc<BatchDay>>, ApiError> {
        let mut out = BTreeMap::new();
        let mut missing = Vec::new();
        for d in days {
            let Some(v) = catalog.days.get(&(*d, adv.tz)) else {
                continue;
            };
            match self.batch_days.get(&(adv.id, *d, *v)) {
                Some(b) => {
                    out.insert(*d, b);
                }
                None => missing.push(*d),
            }
        }
        if !missing.is_empty() {
            for (d, b) in batch::load_days(&self.pool, adv.id, adv.tz, &missing).await? {
                // Keyed by the version read with the rows (never older than the
                // catalog's: the transaction started after the catalog was read).
                let b = Arc::new(b);
                self.batch_days
                    .insert((adv.id, d, b.computed_at), Arc::clone(&b));
                out.insert(d, b);
            }
        }
        Ok(out)
    }

    /// Ad -> campaign of `adv`'s ads; `reload` skips the cache.
    async fn campaigns(&self, adv: i64, reload: bool) -> Result<Arc<BTreeMap<i64, i64>>, ApiError> {
        if !reload && let Some(c) = self.campaigns.get(&adv) {
            return Ok(c);
        }
        let mut conn = self.pool.get_conn().await?;
        let rows: Vec<(i64, i64)> = conn
            .exec(
                "SELECT ad_id, campaign_id FROM ads WHERE advertiser_id = ?",
                (adv,),
            )
            .await?;
        let c = Arc::new(rows.into_iter().collect::<BTreeMap<_, _>>());
        self.campaigns.insert(adv, Arc::clone(&c));
        Ok(c)
    }

    /// The provisional days `days` of `adv` for `group_by`, from the cache when read
    /// under `generation`, else from Redis; returns the ad -> campaign map used (it is
    /// reloaded once when Redis names an ad the cached map lacks).
    async fn speed_days(
        &self,
        adv: i64,
        days: &[NaiveDate],
        group_by: GroupBy,
        generation: u64,
        mut campaigns: Arc<BTreeMap<i64, i64>>,
    ) -> Result<
        (
            BTreeMap<NaiveDate, Arc<CachedSpeedDay>>,
            Arc<BTreeMap<i64, i64>>,
        ),
        ApiError,
    > {
        let mut out = BTreeMap::new();
        let mut missing = Vec::new();
        for d in days {
            match self.speed_days.get(&(adv, *d, group_by)) {
                Some(s) if s.flush_generation == generation => {
                    out.insert(*d, s);
                }
                _ => missing.push(*d),
            }
        }
        if missing.is_empty() {
            return Ok((out, campaigns));
        }
        let mut read = self.speed.days(adv, &missing).await?;
        let unknown_ad = read.values().any(|s| {
            s.by_ad
                .keys()
                .any(|a| *a != common::counters::UNATTRIBUTED_AD && !campaigns.contains_key(a))
        });
        if group_by != GroupBy::Day && unknown_ad {
            campaigns = self.campaigns(adv, true).await?;
        }
        let mut wanted = Vec::new();
        for (d, s) in &read {
            for scope in merge::uv_scopes(group_by, adv, &s.by_ad, &campaigns) {
                wanted.push((*d, scope));
            }
        }
        for ((d, scope), n) in self.speed.uv(&wanted).await? {
            if let Some(s) = read.get_mut(&d) {
                s.uv.insert(scope, n);
            }
        }
        for d in missing {
            let day = read.remove(&d).unwrap_or_default();
            let s = Arc::new(CachedSpeedDay {
                flush_generation: generation,
                day,
            });
            self.speed_days.insert((adv, d, group_by), Arc::clone(&s));
            out.insert(d, s);
        }
        Ok((out, campaigns))
    }
}

/// Runs `poll(me)` every `every` until `stop`; a failure is logged with `failed`.
fn spawn_poller<F, Fut, E>(
    me: Arc<ReadPath>,
    every: Duration,
    stop: CancellationToken,
    failed: &'static str,
    poll: F,
) where
    F: Fn(Arc<ReadPath>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = poll(Arc::clone(&me)).await {
                        tracing::warn!(error = %e, "{failed}");
                    }
                }
            }
        }
    });
}

/// Counter of cache lookups of the read path, by `cache` and `result` (hit, miss).
pub const CACHE_LOOKUPS: &str = "admetrics_serving_cache_lookups_total";

/// True when a version read at `read_at` is younger than `bound`.
fn fresh(read_at: Option<Instant>, bound: Duration) -> bool {
    read_at.is_some_and(|t| t.elapsed() < bound)
}

//! Dimension join: ads, advertisers and products from MySQL behind bounded caches
//! with TTL eviction (moka, a Caffeine-style cache), so MySQL sees a small fraction of
//! lookups (the design brief, "Dimensions").
//!
//! The partition task calls [`DimCache::resolve`] for a batch of events before
//! processing it: hits are counted, misses are fetched with one query per table, and
//! ids MySQL does not know are cached as absent for a short time (so a flood of events
//! for an unknown ad costs one query per negative TTL, not one per event). Such events
//! go to the dead-letter topic as `unknown_ad`: the replay and the ad-management
//! system write dimension rows before they produce events, so an unknown ad is a
//! data error to fix and re-drive, not a row that will appear by waiting.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dims::{AdDim, AdvertiserDim, ProductDim, StaticDimensions};
use common::event::Event;
use common::telemetry::{DIM_CACHE_LOOKUPS, DIM_MYSQL_QUERIES};
use moka::sync::Cache;
use mysql_async::Pool;
use platform::db::DbError;

/// How long "not in MySQL" is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

struct TtlPolicy {
    ttl: Duration,
}

impl<K, V> moka::Expiry<K, Option<V>> for TtlPolicy {
    fn expire_after_create(
        &self,
        _key: &K,
        value: &Option<V>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(if value.is_some() {
            self.ttl
        } else {
            NEGATIVE_TTL.min(self.ttl)
        })
    }
}

fn cache<V: Clone + Send + Sync + 'static>(capacity: u64, ttl: Duration) -> Cache<i64, Option<V>> {
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(TtlPolicy { ttl })
        .build()
}

/// Lookup counts, for the hit-rate metric and the benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered by the cache.
    pub hits: u64,
    /// Lookups that went to MySQL.
    pub misses: u64,
}

/// The dimension caches, shared by all partition tasks of an instance.
#[derive(Clone)]
pub struct DimCache {
    pool: Pool,
    ads: Cache<i64, Option<AdDim>>,
    advertisers: Cache<i64, Option<AdvertiserDim>>,
    products: Cache<i64, Option<ProductDim>>,
    stats: Arc<std::sync::Mutex<CacheStats>>,
}

impl DimCache {
    /// Caches of `capacity` entries per table living `ttl`.
    pub fn new(pool: Pool, capacity: u64, ttl: Duration) -> Self {
        DimCache {
            pool,
            ads: cache(capacity, ttl),
            advertisers: cache(capacity, ttl),
            products: cache(capacity, ttl),
            stats: Arc::default(),
        }
    }

    /// Lookup counts so far.
    pub fn stats(&self) -> CacheStats {
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves the dimension rows `events` need: from the cache, else from MySQL
    /// (one query per table for all misses). Returns them as a batch-local map, so an
    /// entry expiring mid-batch cannot turn a known ad into an unknown one.
    ///
    /// # Errors
    ///
    /// When MySQL fails; the caller retries the batch.
    pub async fn resolve<'a, 'e: 'a>(
        &self,
        events: impl Iterator<Item = &'a Event<'e>>,
    ) -> Result<StaticDimensions, DbError> {
        let mut out = StaticDimensions::default();
        let mut want: [Vec<i64>; 3] = Default::default();
        let (mut hits, mut misses) = ([0_u64; 3], [0_u64; 3]);
        for e in events {
            lookup(
                &self.advertisers,
                e.advertiser_id,
                &mut out.advertisers,
                &mut want[1],
                &mut hits[1],
                &mut misses[1],
            );
            if let Some(ad) = e.ad_id.filter(|_| e.kind.is_traffic()) {
                lookup(
                    &self.ads,
                    ad,
                    &mut out.ads,
                    &mut want[0],
                    &mut hits[0],
                    &mut misses[0],
                );
            } else if let Some(p) = e.product_id {
                lookup(
                    &self.products,
                    p,
                    &mut out.products,
                    &mut want[2],
                    &mut hits[2],
                    &mut misses[2],
                );
            }
        }
        for (i, table) in ["ads", "advertisers", "products"].into_iter().enumerate() {
            metrics::counter!(DIM_CACHE_LOOKUPS, "table" => table, "result" => "hit")
                .increment(hits[i]);
            metrics::counter!(DIM_CACHE_LOOKUPS, "table" => table, "result" => "miss")
                .increment(misses[i]);
        }
        {
            let mut s = self
                .stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.hits += hits.iter().sum::<u64>();
            s.misses += misses.iter().sum::<u64>();
        }
        for ids in &mut want {
            ids.sort_unstable();
            ids.dedup();
        }
        let [ads, advertisers, products] = want;
        if !ads.is_empty() {
            let rows = platform::dims::fetch_ads(&self.pool, &ads).await?;
            metrics::counter!(DIM_MYSQL_QUERIES, "table" => "ads").increment(1);
            fill(
                &self.ads,
                &ads,
                rows.into_iter().map(|r| (r.ad_id, r)),
                &mut out.ads,
            );
        }
        if !advertisers.is_empty() {
            let rows = platform::dims::fetch_advertisers(&self.pool, &advertisers).await?;
            metrics::counter!(DIM_MYSQL_QUERIES, "table" => "advertisers").increment(1);
            fill(
                &self.advertisers,
                &advertisers,
                rows.into_iter().map(|r| (r.advertiser_id, r)),
                &mut out.advertisers,
            );
        }
        if !products.is_empty() {
            let rows = platform::dims::fetch_products(&self.pool, &products).await?;
            metrics::counter!(DIM_MYSQL_QUERIES, "table" => "products").increment(1);
            fill(
                &self.products,
                &products,
                rows.into_iter().map(|r| (r.product_id, r)),
                &mut out.products,
            );
        }
        Ok(out)
    }
}

/// One cache lookup for a batch: copies a hit into the batch map, notes a miss once.
fn lookup<V: Copy + Send + Sync + 'static>(
    cache: &Cache<i64, Option<V>>,
    id: i64,
    out: &mut HashMap<i64, V>,
    want: &mut Vec<i64>,
    hits: &mut u64,
    misses: &mut u64,
) {
    if out.contains_key(&id) {
        *hits += 1;
        return;
    }
    match cache.get(&id) {
        Some(found) => {
            *hits += 1;
            if let Some(v) = found {
                out.insert(id, v);
            }
        }
        None => {
            *misses += 1;
            want.push(id);
        }
    }
}

/// Caches what MySQL returned for `asked` (absent ids as `None`) and copies the
/// found rows into the batch map.
fn fill<V: Copy + Send + Sync + 'static>(
    cache: &Cache<i64, Option<V>>,
    asked: &[i64],
    found: impl Iterator<Item = (i64, V)>,
    out: &mut HashMap<i64, V>,
) {
    let mut found: rustc_hash::FxHashMap<i64, V> = found.collect();
    for id in asked {
        let v = found.remove(id);
        if let Some(v) = v {
            out.insert(*id, v);
        }
        cache.insert(*id, v);
    }
}

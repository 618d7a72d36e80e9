//! `speed-layer bench e2e`: throughput and freshness through the real path, producer ->
//! Kafka -> speed layer -> Redis, against a speed layer that is already running.
//!
//! It produces live clicks (event time = now) of one advertiser of the data set, on its
//! users (so every partition is busy), at a fixed rate or as fast as possible, and polls
//! the advertiser's click counters in Redis every 50 ms. The k-th click produced is
//! taken as visible at the first poll where the counters hold k clicks more than before
//! the run; its freshness is that time minus the time it was handed to the producer.
//! Tumbling 10-second windows bound freshness from below: a click waits for its window
//! to close (on average 5 s, at most 10 s) plus the watermark delay and a flush.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::config::Config;
use common::dataset;
use common::day::{now_ms, today};
use common::event::{Event, EventKind};
use common::redis_keys::{Keys, field};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct E2eFigures {
    /// Clicks produced.
    pub events: usize,
    /// Target rate, events/s (0 = as fast as possible).
    pub target_rate: u64,
    /// Seconds from the first send to the last click visible in Redis.
    pub seconds: f64,
    /// Events per second through the whole path.
    pub events_per_second: f64,
    /// Freshness (produced -> visible in Redis), seconds: median.
    pub freshness_p50_s: f64,
    /// 99th percentile.
    pub freshness_p99_s: f64,
    /// Maximum.
    pub freshness_max_s: f64,
}

/// Runs the benchmark: `events` clicks at `rate` per second (0 = unpaced).
///
/// # Errors
///
/// When the data set, MySQL, Kafka or Redis fail, or the clicks do not all show up in
/// Redis within `timeout`.
pub async fn run(
    cfg: &Config,
    data: &std::path::Path,
    events: usize,
    rate: u64,
    timeout: Duration,
) -> anyhow::Result<E2eFigures> {
    let rows = dataset::read(data).with_context(|| format!("reading {}", data.display()))?;
    let pool = common::db::pool(&cfg.mysql)?;
    crate::replay::load_dimensions(&pool, &rows).await?;
    pool.disconnect().await.ok();
    // The advertiser with the most rows, and its rows' users and ads.
    let mut per_app = std::collections::HashMap::<i64, usize>::new();
    for r in &rows {
        *per_app.entry(r.app).or_default() += 1;
    }
    let app = per_app
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(a, _)| a)
        .context("empty data set")?;
    let mine: Vec<&dataset::Row> = rows.iter().filter(|r| r.app == app).collect();
    let ads: std::collections::BTreeSet<i64> = mine.iter().map(|r| r.ad_id()).collect();
    let template = mine[0].click(0);
    let advertiser = template.advertiser_id;

    let keys = Keys::new(&cfg.redis.key_prefix);
    let client = redis::Client::open(cfg.redis.url.expose()).context("redis.url")?;
    let conn = client.get_multiplexed_async_connection().await?;
    let day = today(now_ms(), chrono_tz::UTC);
    let count_clicks = |mut conn: redis::aio::MultiplexedConnection| {
        let keys = keys.clone();
        let ads = ads.clone();
        let partitions = cfg.kafka.partitions;
        async move {
            let mut pipe = redis::pipe();
            for p in 0..partitions {
                for ad in &ads {
                    pipe.hget(keys.metrics(p, advertiser, day), field(*ad, "clicks"));
                }
            }
            let v: Vec<Option<i64>> = pipe.query_async(&mut conn).await?;
            anyhow::Ok(v.into_iter().flatten().sum::<i64>())
        }
    };
    let before = count_clicks(conn.clone()).await?;

    let producer: FutureProducer = common::kafka::producer_config(&cfg.kafka)
        .create()
        .context("kafka producer")?;
    let run_id = now_ms();
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let topic = cfg.kafka.traffic_topic.clone();
    let sender = {
        let mine: Vec<(String, i64, i64)> = mine
            .iter()
            .map(|r| {
                let c = r.click(0);
                (
                    c.user_id.into_owned(),
                    c.ad_id.unwrap_or(0),
                    c.product_id.unwrap_or(0),
                )
            })
            .collect();
        let cost = template.cost_micros;
        tokio::spawn(async move {
            let mut inflight = Vec::new();
            for i in 0..events {
                if rate > 0 {
                    #[allow(clippy::cast_precision_loss)]
                    let due = Duration::from_secs_f64(i as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let (user, ad, product) = &mine[i % mine.len()];
                let e = Event {
                    v: 1,
                    kind: EventKind::Click,
                    event_id: format!("e2e-{run_id}-{i}").into(),
                    ts: now_ms(),
                    user_id: user.as_str().into(),
                    ad_id: Some(*ad),
                    advertiser_id: advertiser,
                    product_id: Some(*product),
                    cost_micros: cost,
                    gmv_micros: None,
                };
                let payload = e.to_json();
                let _ = tx.send(Instant::now());
                match producer.send_result(
                    FutureRecord::to(&topic)
                        .key(user.as_bytes())
                        .payload(&payload),
                ) {
                    Ok(f) => inflight.push(f),
                    Err((err, _)) => anyhow::bail!("producing: {err}"),
                }
                if inflight.len() >= 10_000 {
                    for f in inflight.drain(..) {
                        let _ = f.await;
                    }
                }
            }
            for f in inflight {
                let _ = f.await;
            }
            anyhow::Ok(())
        })
    };

    let mut sent: Vec<Instant> = Vec::with_capacity(events);
    let mut visible: Vec<Instant> = Vec::with_capacity(events);
    let deadline = Instant::now() + timeout;
    while visible.len() < events {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {events} clicks visible in Redis after {timeout:?}: is `speed-layer run` running with this configuration?",
            visible.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(t) = rx.try_recv() {
            sent.push(t);
        }
        let seen = usize::try_from(count_clicks(conn.clone()).await? - before).unwrap_or(0);
        let now = Instant::now();
        while visible.len() < seen.min(sent.len()) {
            visible.push(now);
        }
    }
    sender.await??;
    let seconds = visible
        .last()
        .map_or(0.0, |t| t.duration_since(started).as_secs_f64());
    let mut fresh: Vec<f64> = sent
        .iter()
        .zip(&visible)
        .map(|(s, v)| v.duration_since(*s).as_secs_f64())
        .collect();
    fresh.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((fresh.len() as f64 - 1.0) * p).round() as usize;
        fresh.get(i).copied().unwrap_or(0.0)
    };
    #[allow(clippy::cast_precision_loss)]
    Ok(E2eFigures {
        events,
        target_rate: rate,
        seconds,
        events_per_second: events as f64 / seconds.max(1e-9),
        freshness_p50_s: pct(0.5),
        freshness_p99_s: pct(0.99),
        freshness_max_s: fresh.last().copied().unwrap_or(0.0),
    })
}

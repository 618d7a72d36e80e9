//! `speed-layer replay`: turns the real data set (`../shared/data/`) into the design's
//! events (mapping: [`fixtures::dataset`]), loads the dimension rows it implies into
//! MySQL, and produces the events to Kafka keyed by `user_id`, in event-time order.
//!
//! Pacing: as fast as possible by default; `--speed 60` plays an hour of event time in a
//! minute. `--shift` moves every time by whole days: `auto` (the default) makes the
//! data end as close to now as it can without any event in the future; `today` makes
//! the last day today, and events later than now are produced when the clock reaches
//! them (a live tail); a number shifts by that many days.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::config::Config;
use common::day::{date_of, now_ms};
use common::event::{DAY_MS, Event, TopicKind};
use fixtures::dataset::{self, Row};
use mysql_async::prelude::Queryable;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Serialize;

/// How to shift the data's dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shift {
    /// Latest whole-day shift keeping every event at or before now.
    Auto,
    /// Last day = today (later events wait for their time).
    Today,
    /// Exactly this many days.
    Days(i64),
}

impl std::str::FromStr for Shift {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Shift::Auto),
            "today" => Ok(Shift::Today),
            n => n
                .parse()
                .map(Shift::Days)
                .map_err(|_| format!("--shift takes auto, today or a number of days, not `{s}`")),
        }
    }
}

/// Options of one replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The CSV file.
    pub data: PathBuf,
    /// Event-time speed-up factor; 0 = as fast as possible.
    pub speed: f64,
    /// Date shift.
    pub shift: Shift,
    /// Replay only the first N data rows.
    pub limit: Option<usize>,
    /// 0 for the data set itself; N > 0 makes copy N: every `event_id` gets the prefix
    /// `c<N>-`, so a copy replayed with another date shift is new data rather than
    /// duplicates (benchmarks lay many days of real data this way).
    pub copy: u32,
}

/// What a replay did (printed as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    /// Data rows read.
    pub rows: usize,
    /// Events produced.
    pub events: usize,
    /// Clicks produced.
    pub clicks: usize,
    /// Orders produced.
    pub orders: usize,
    /// Whole days added to every time.
    pub shift_days: i64,
    /// First and last event day (UTC).
    pub first_day: String,
    /// Last event day (UTC).
    pub last_day: String,
    /// Advertisers, campaigns, products and ads written to MySQL.
    pub dimension_rows: usize,
    /// Wall time of the production, seconds.
    pub seconds: f64,
    /// Events per second produced.
    pub events_per_second: f64,
    /// The busiest advertiser-day, counted straight from the file, to check the API
    /// answer against.
    pub busiest: Option<FileCount>,
}

/// Counts of one advertiser-day taken directly from the data set file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileCount {
    /// Advertiser (app).
    pub advertiser_id: i64,
    /// Day (UTC, after the shift).
    pub day: String,
    /// Click rows of that app on that day.
    pub clicks: i64,
    /// Sum of their cost, micros.
    pub cost_micros: i64,
    /// Downloads (orders) of that app on that day.
    pub orders: i64,
}

/// The advertiser-day with the most clicks among `events`.
pub fn busiest(events: &[Event<'_>]) -> Option<FileCount> {
    let mut by: std::collections::BTreeMap<(i64, i64), (i64, i64, i64)> =
        std::collections::BTreeMap::new();
    for e in events {
        let c = by
            .entry((e.advertiser_id, e.ts.div_euclid(DAY_MS)))
            .or_default();
        if e.kind.is_traffic() {
            c.0 += 1;
            c.1 += e.cost();
        } else {
            c.2 += 1;
        }
    }
    by.into_iter()
        .max_by_key(|(k, c)| (c.0, std::cmp::Reverse(*k)))
        .map(|((adv, day), (clicks, cost, orders))| FileCount {
            advertiser_id: adv,
            day: date_of(i32::try_from(day).unwrap_or(0)).to_string(),
            clicks,
            cost_micros: cost,
            orders,
        })
}

/// Upserts the dimension rows implied by `rows` (bound parameters only).
///
/// # Errors
///
/// When MySQL refuses.
pub async fn load_dimensions(pool: &mysql_async::Pool, rows: &[Row]) -> anyhow::Result<usize> {
    let mut apps: Vec<i64> = rows.iter().map(|r| r.app).collect();
    apps.sort_unstable();
    apps.dedup();
    let mut ads: Vec<(i64, i64)> = rows.iter().map(|r| (r.ad_id(), r.app)).collect();
    ads.sort_unstable();
    ads.dedup();
    let mut cats: Vec<i64> = apps.iter().map(|a| dataset::category_of(*a)).collect();
    cats.sort_unstable();
    cats.dedup();
    let mut conn = pool.get_conn().await.context("mysql connection")?;
    let mut tx = conn
        .start_transaction(mysql_async::TxOpts::default())
        .await?;
    tx.exec_batch(
        "INSERT INTO categories (category_id, name) VALUES (?, ?) ON DUPLICATE KEY UPDATE name = VALUES(name)",
        cats.iter().map(|c| (*c, format!("category {c}"))),
    )
    .await?;
    tx.exec_batch(
        "INSERT INTO advertisers (advertiser_id, name, time_zone) VALUES (?, ?, 'UTC') \
         ON DUPLICATE KEY UPDATE name = VALUES(name)",
        apps.iter().map(|a| (*a, format!("app {a}"))),
    )
    .await?;
    tx.exec_batch(
        "INSERT INTO campaigns (campaign_id, advertiser_id, name) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE advertiser_id = VALUES(advertiser_id), name = VALUES(name)",
        apps.iter().map(|a| (*a, *a, format!("app {a} campaign"))),
    )
    .await?;
    tx.exec_batch(
        "INSERT INTO products (product_id, advertiser_id, category_id, name) VALUES (?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE advertiser_id = VALUES(advertiser_id), category_id = VALUES(category_id), name = VALUES(name)",
        apps.iter().map(|a| (*a, *a, dataset::category_of(*a), format!("app {a}"))),
    )
    .await?;
    tx.exec_batch(
        "INSERT INTO ads (ad_id, campaign_id, advertiser_id, product_id, cpc_micros, name) VALUES (?, ?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE campaign_id = VALUES(campaign_id), advertiser_id = VALUES(advertiser_id), \
         product_id = VALUES(product_id), cpc_micros = VALUES(cpc_micros), name = VALUES(name)",
        ads.iter().map(|(ad, app)| (*ad, *app, *app, *app, dataset::cpc_micros(*ad), format!("app {app} channel {}", ad - app * 1000))),
    )
    .await?;
    tx.commit().await?;
    Ok(cats.len() + 3 * apps.len() + ads.len())
}

/// Produces `events` in order, keyed by `user_id`, paced by `speed` and never before
/// their event time when `hold_future`. Calls `progress` with the count produced.
///
/// # Errors
///
/// When a delivery fails.
pub async fn produce(
    cfg: &Config,
    producer: &FutureProducer,
    events: &[Event<'static>],
    speed: f64,
    hold_future: bool,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<()> {
    let started = Instant::now();
    let first_ts = events.first().map_or(0, |e| e.ts);
    let mut in_flight: Vec<DeliveryFuture> = Vec::with_capacity(10_000);
    for (i, e) in events.iter().enumerate() {
        let mut wait = Duration::ZERO;
        if speed > 0.0 {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let due = Duration::from_millis(((e.ts - first_ts) as f64 / speed) as u64);
            wait = due.saturating_sub(started.elapsed());
        }
        if hold_future {
            let ahead = u64::try_from(e.ts - now_ms()).unwrap_or(0);
            wait = wait.max(Duration::from_millis(ahead));
        }
        if !wait.is_zero() {
            await_all(&mut in_flight).await?;
            tokio::time::sleep(wait).await;
        }
        let topic = cfg.kafka.topic(e.kind.topic());
        let payload = e.to_json();
        let mut record = FutureRecord::to(topic)
            .key(e.user_id.as_bytes())
            .payload(&payload)
            .timestamp(e.ts);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    in_flight.push(f);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    await_all(&mut in_flight).await?;
                }
                Err((e, _)) => anyhow::bail!("producing to {topic}: {e}"),
            }
        }
        if in_flight.len() >= 10_000 {
            await_all(&mut in_flight).await?;
        }
        if (i + 1) % 10_000 == 0 {
            progress(i + 1);
        }
    }
    await_all(&mut in_flight).await?;
    progress(events.len());
    Ok(())
}

async fn await_all(in_flight: &mut Vec<DeliveryFuture>) -> anyhow::Result<()> {
    for f in in_flight.drain(..) {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => anyhow::bail!("delivery failed: {e}"),
            Err(_) => anyhow::bail!("delivery cancelled (producer closed)"),
        }
    }
    Ok(())
}

/// Runs a whole replay: dimensions, then events.
///
/// # Errors
///
/// When the file, MySQL or Kafka fail.
pub async fn run(cfg: &Config, opts: &ReplayOptions) -> anyhow::Result<ReplaySummary> {
    let mut rows =
        dataset::read(&opts.data).with_context(|| format!("reading {}", opts.data.display()))?;
    if let Some(n) = opts.limit {
        rows.truncate(n);
    }
    let now = now_ms();
    let shift_days = match opts.shift {
        Shift::Auto => dataset::shift_days(&rows, now, false),
        Shift::Today => dataset::shift_days(&rows, now, true),
        Shift::Days(d) => d,
    };
    let pool = platform::db::pool(&cfg.mysql)?;
    platform::db::migrate(&pool)
        .await
        .context("applying the MySQL schema")?;
    let dimension_rows = load_dimensions(&pool, &rows).await?;
    pool.disconnect().await.ok();
    let mut events = dataset::events(&rows, shift_days);
    if opts.copy > 0 {
        for e in &mut events {
            e.event_id = format!("c{}-{}", opts.copy, e.event_id).into();
        }
    }
    let producer: FutureProducer = platform::kafka::producer_config(&cfg.kafka)
        .create()
        .context("kafka producer")?;
    let started = Instant::now();
    tracing::info!(events = events.len(), shift_days, "replaying");
    produce(
        cfg,
        &producer,
        &events,
        opts.speed,
        opts.shift == Shift::Today,
        |n| {
            tracing::info!(produced = n, of = events.len(), "replay progress");
        },
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let day = |ts: i64| date_of(i32::try_from(ts.div_euclid(DAY_MS)).unwrap_or(0)).to_string();
    #[allow(clippy::cast_precision_loss)]
    Ok(ReplaySummary {
        rows: rows.len(),
        events: events.len(),
        clicks: events
            .iter()
            .filter(|e| e.kind.topic() == TopicKind::Traffic)
            .count(),
        orders: events
            .iter()
            .filter(|e| e.kind.topic() == TopicKind::Effects)
            .count(),
        shift_days,
        first_day: events.first().map(|e| day(e.ts)).unwrap_or_default(),
        last_day: events.last().map(|e| day(e.ts)).unwrap_or_default(),
        dimension_rows,
        seconds,
        events_per_second: events.len() as f64 / seconds.max(1e-9),
        busiest: busiest(&events),
    })
}

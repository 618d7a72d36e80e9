//! When a day may turn final: "final" is what advertisers are billed on, so a day is
//! final only once it is complete.
//!
//! An advertiser's day D *closes* at the end of D in the advertiser's own time zone
//! plus `batch.late_allowance` (default 1 h): the moment the day may turn final. Days
//! close per time zone ([`ZoneDay`]): at 02:30 UTC a UTC advertiser's yesterday has
//! closed, a UTC-8 one's has not (it ends at 08:00 UTC and closes at 09:00).
//!
//! Closing by the clock is not enough: the archive must hold the day. Each partition
//! of both topics is *complete through* an instant ([`archive_completeness`]):
//!
//! | partition | complete through |
//! |---|---|
//! | archived up to the topic's end offset (idle, nothing unarchived) | now |
//! | messages not archived yet | the newest event time archived (the archiver's progress record) |
//! | never archived, messages waiting | never |
//!
//! A zone-day turns final when its close is at or before both the clock and the
//! smallest "complete through" of the partitions its run read. Until then a recompute
//! writes nothing for it: a day not closed yet is refused ([`Refusal::Open`]); a
//! closed day whose archive lags is recorded as `waiting` in `day_finality`, with the
//! partitions behind as the reason ([`Refusal::Waiting`]), and the scheduler retries it.
//! No option makes an incomplete day final.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono_tz::Tz;
use common::config::Config;
use common::day::{day_bounds_ms, rfc3339_ms};
use common::dims::StaticDimensions;
use mysql_async::Pool;
use mysql_async::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::archive::progress;
use crate::archive::store::Archive;
use crate::recompute::Shard;

/// The advertisers of one time zone on one day, and when that day closes for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneDay {
    /// The zone.
    pub tz: Tz,
    /// Its advertisers, ascending.
    pub advertisers: Vec<i64>,
    /// End of the day in the zone plus the late allowance, ms UTC.
    pub closes_at_ms: i64,
}

/// The zones of `day` that have advertisers, by close (earliest first).
pub fn zone_days(
    day: chrono::NaiveDate,
    dims: &StaticDimensions,
    allowance: Duration,
) -> Vec<ZoneDay> {
    let allowance_ms = i64::try_from(allowance.as_millis()).unwrap_or(i64::MAX / 4);
    let mut by_zone: BTreeMap<&'static str, (Tz, Vec<i64>)> = BTreeMap::new();
    for a in dims.advertisers.values() {
        by_zone
            .entry(a.tz.name())
            .or_insert_with(|| (a.tz, Vec::new()))
            .1
            .push(a.advertiser_id);
    }
    let mut out: Vec<ZoneDay> = by_zone
        .into_values()
        .map(|(tz, mut advertisers)| {
            advertisers.sort_unstable();
            ZoneDay {
                tz,
                advertisers,
                closes_at_ms: day_bounds_ms(day, tz).1.saturating_add(allowance_ms),
            }
        })
        .collect();
    out.sort_by_key(|z| (z.closes_at_ms, z.tz.name()));
    out
}

/// How complete one partition's archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCompleteness {
    /// Topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Offsets below this are archived (0 when never archived).
    pub archived_offset: i64,
    /// The topic's end offset (high watermark) when checked.
    pub end_offset: i64,
    /// Newest event time archived, ms UTC.
    pub max_event_ms: Option<i64>,
    /// The archive holds every event of this partition up to this instant (ms UTC;
    /// `i64::MIN`: nothing yet).
    pub complete_through_ms: i64,
}

impl std::fmt::Display for PartitionCompleteness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} archived to offset {} of {} (events through {})",
            self.topic,
            self.partition,
            self.archived_offset,
            self.end_offset,
            self.max_event_ms
                .map_or_else(|| "none".to_owned(), rfc3339_ms)
        )
    }
}

/// How complete the archive of a set of partitions is, at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completeness {
    /// When checked (the clock of the run), ms UTC.
    pub checked_at_ms: i64,
    /// Every partition of both topics (of the shard), by topic and partition.
    pub partitions: Vec<PartitionCompleteness>,
}

impl Completeness {
    /// The archive of these partitions holds every event up to this instant, ms UTC.
    pub fn through_ms(&self) -> i64 {
        self.partitions
            .iter()
            .map(|p| p.complete_through_ms)
            .min()
            .unwrap_or(self.checked_at_ms)
            .min(self.checked_at_ms)
    }

    /// The partitions not complete through `instant_ms`.
    pub fn behind(&self, instant_ms: i64) -> impl Iterator<Item = &PartitionCompleteness> {
        self.partitions
            .iter()
            .filter(move |p| p.complete_through_ms < instant_ms)
    }
}

/// Reads the archive progress of every partition of both input topics that `shard`
/// owns, and the topics' end offsets from Kafka, as of `now_ms`.
///
/// # Errors
///
/// When Kafka does not answer (metadata, watermarks) or a progress record cannot be
/// read.
pub async fn archive_completeness(
    cfg: &Config,
    archive: &Archive,
    shard: Shard,
    now_ms: i64,
) -> anyhow::Result<Completeness> {
    let ends = end_offsets(cfg, shard).await?;
    let mut partitions = Vec::with_capacity(ends.len());
    for (topic, partition, end_offset) in ends {
        let rec = progress::read(archive, &topic, partition).await?;
        let archived_offset = rec.map_or(0, |r| r.next_offset);
        // A record never vouches for events after it was written.
        let max_event_ms = rec.and_then(|r| r.max_event_ms.map(|m| m.min(r.recorded_at_ms)));
        let complete_through_ms = if archived_offset >= end_offset {
            now_ms
        } else {
            max_event_ms.unwrap_or(i64::MIN)
        };
        partitions.push(PartitionCompleteness {
            topic,
            partition,
            archived_offset,
            end_offset,
            max_event_ms,
            complete_through_ms,
        });
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(Completeness {
        checked_at_ms: now_ms,
        partitions,
    })
}

/// The end offset (high watermark) of every partition of both input topics that
/// `shard` owns: `(topic, partition, end offset)`.
///
/// # Errors
///
/// When Kafka does not answer.
pub async fn end_offsets(cfg: &Config, shard: Shard) -> anyhow::Result<Vec<(String, i32, i64)>> {
    let kafka = cfg.kafka.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, i32, i64)>> {
        let client: BaseConsumer = platform::kafka::client_config(&kafka)
            .create()
            .context("kafka client")?;
        let timeout = Duration::from_secs(10);
        let mut out = Vec::new();
        for topic in [&kafka.traffic_topic, &kafka.effects_topic] {
            let partitions = platform::kafka::topic_partitions(&client, topic, timeout)
                .with_context(|| format!("metadata of {topic}"))?;
            anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
            for p in partitions.into_iter().filter(|p| shard.owns(*p)) {
                let (_, high) = client
                    .fetch_watermarks(topic, p, timeout)
                    .with_context(|| format!("end offset of {topic}/{p}"))?;
                out.push((topic.clone(), p, high));
            }
        }
        Ok(out)
    })
    .await
    .context("kafka watermarks task")?
}

/// Why a recompute of a day wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The day has not closed in any time zone yet.
    #[error("{day} is still open: it closes at {} ({}) and for every advertiser at {} ({}); nothing was written", rfc3339_ms(*first_close_ms), first_zone, rfc3339_ms(*last_close_ms), last_zone)]
    Open {
        /// The day.
        day: chrono::NaiveDate,
        /// The first close, ms UTC.
        first_close_ms: i64,
        /// Its zone.
        first_zone: String,
        /// The last close, ms UTC.
        last_close_ms: i64,
        /// Its zone.
        last_zone: String,
    },
    /// The day has closed, but the archive is not complete through its close.
    #[error("{day} is waiting for the archive: {reason}")]
    Waiting {
        /// The day.
        day: chrono::NaiveDate,
        /// The partitions behind.
        reason: String,
    },
    /// No advertiser.
    #[error("{day}: no advertiser in the dimension tables; nothing to finalize")]
    NoAdvertisers {
        /// The day.
        day: chrono::NaiveDate,
    },
}

/// What a run of a day may finalize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Zones whose day has closed and whose archive is complete: they turn final.
    pub ready: Vec<ZoneDay>,
    /// Zones closed by the clock whose archive lags, with the reason.
    pub waiting: Vec<(ZoneDay, String)>,
    /// Zones not closed yet.
    pub open: Vec<ZoneDay>,
}

/// Splits the zones of a day by the rule in the module docs.
pub fn decide(zones: Vec<ZoneDay>, now_ms: i64, archive: &Completeness) -> Decision {
    let through = archive.through_ms();
    let mut d = Decision {
        ready: Vec::new(),
        waiting: Vec::new(),
        open: Vec::new(),
    };
    for z in zones {
        if z.closes_at_ms > now_ms {
            d.open.push(z);
        } else if z.closes_at_ms > through {
            let behind: Vec<String> = archive
                .behind(z.closes_at_ms)
                .map(ToString::to_string)
                .collect();
            let reason = format!(
                "the day closed at {} ({}), but {} partition(s) are not archived that far: {}",
                rfc3339_ms(z.closes_at_ms),
                z.tz.name(),
                behind.len(),
                behind.join("; ")
            );
            d.waiting.push((z, reason));
        } else {
            d.ready.push(z);
        }
    }
    d
}

/// The refusal when nothing of the day is ready.
pub fn refusal(day: chrono::NaiveDate, d: &Decision) -> Option<Refusal> {
    if !d.ready.is_empty() {
        return None;
    }
    if let Some((_, reason)) = d.waiting.first() {
        return Some(Refusal::Waiting {
            day,
            reason: reason.clone(),
        });
    }
    match (d.open.first(), d.open.last()) {
        (Some(f), Some(l)) => Some(Refusal::Open {
            day,
            first_close_ms: f.closes_at_ms,
            first_zone: f.tz.name().to_owned(),
            last_close_ms: l.closes_at_ms,
            last_zone: l.tz.name().to_owned(),
        }),
        _ => Some(Refusal::NoAdvertisers { day }),
    }
}

/// Records the zones of `day` that wait for the archive (a zone already final keeps
/// its status: a re-run that cannot complete leaves the final numbers as they are).
///
/// # Errors
///
/// MySQL errors.
pub async fn record_waiting(
    pool: &Pool,
    day: chrono::NaiveDate,
    waiting: &[(ZoneDay, String)],
) -> Result<(), mysql_async::Error> {
    if waiting.is_empty() {
        return Ok(());
    }
    let mut c = pool.get_conn().await?;
    for (z, reason) in waiting {
        c.exec_drop(
            "INSERT INTO day_finality (day, time_zone, status, closes_at, reason, checked_at) \
             VALUES (?, ?, 'waiting', FROM_UNIXTIME(? / 1000), ?, CURRENT_TIMESTAMP(3)) \
             ON DUPLICATE KEY UPDATE checked_at = CURRENT_TIMESTAMP(3), \
             reason = IF(status = 'waiting', VALUES(reason), reason)",
            (day, z.tz.name(), z.closes_at_ms, reason),
        )
        .await?;
    }
    Ok(())
}

/// The zones of each day from `from` on whose status is `final`.
///
/// # Errors
///
/// MySQL errors.
pub async fn final_zones_since(
    pool: &Pool,
    from: chrono::NaiveDate,
) -> Result<BTreeMap<chrono::NaiveDate, Vec<String>>, mysql_async::Error> {
    let mut c = pool.get_conn().await?;
    let rows: Vec<(chrono::NaiveDate, String)> = c
        .exec(
            "SELECT day, time_zone FROM day_finality WHERE day >= ? AND status = 'final'",
            (from,),
        )
        .await?;
    let mut out: BTreeMap<chrono::NaiveDate, Vec<String>> = BTreeMap::new();
    for (d, z) in rows {
        out.entry(d).or_default().push(z);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::dims::AdvertiserDim;

    fn dims(zones: &[(i64, Tz)]) -> StaticDimensions {
        let mut d = StaticDimensions::default();
        for (id, tz) in zones {
            d.advertisers.insert(
                *id,
                AdvertiserDim {
                    advertiser_id: *id,
                    tz: *tz,
                },
            );
        }
        d
    }

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    fn idle(now: i64) -> Completeness {
        Completeness {
            checked_at_ms: now,
            partitions: vec![PartitionCompleteness {
                topic: "t".into(),
                partition: 0,
                archived_offset: 5,
                end_offset: 5,
                max_event_ms: Some(0),
                complete_through_ms: now,
            }],
        }
    }

    #[test]
    fn a_day_closes_per_time_zone_after_the_allowance() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let d = dims(&[
            (1, chrono_tz::UTC),
            (2, chrono_tz::Etc::GMTPlus8),
            (3, chrono_tz::UTC),
        ]);
        let zones = zone_days(day, &d, Duration::from_secs(3600));
        assert_eq!(zones.len(), 2);
        assert_eq!(zones[0].advertisers, vec![1, 3]);
        assert_eq!(zones[0].closes_at_ms, ms("2026-12-01T01:00:00Z"));
        assert_eq!(zones[1].closes_at_ms, ms("2026-12-01T09:00:00Z"));

        let at = |s: &str| {
            let now = ms(s);
            let d = decide(zones.clone(), now, &idle(now));
            (d.ready.len(), d.waiting.len(), d.open.len())
        };
        assert_eq!(at("2026-12-01T00:30:00Z"), (0, 0, 2), "nothing closed");
        assert_eq!(
            at("2026-12-01T02:30:00Z"),
            (1, 0, 1),
            "UTC final, UTC-8 open"
        );
        assert_eq!(at("2026-12-01T09:00:00Z"), (2, 0, 0), "both final");
        let now = ms("2026-12-01T00:30:00Z");
        assert!(matches!(
            refusal(day, &decide(zones.clone(), now, &idle(now))),
            Some(Refusal::Open { .. })
        ));
    }

    #[test]
    fn a_lagging_partition_keeps_a_closed_day_waiting() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let zones = zone_days(day, &dims(&[(1, chrono_tz::UTC)]), Duration::ZERO);
        let now = ms("2026-12-01T06:00:00Z");
        let mut c = idle(now);
        c.partitions.push(PartitionCompleteness {
            topic: "ad-effects".into(),
            partition: 3,
            archived_offset: 10,
            end_offset: 20,
            max_event_ms: Some(ms("2026-11-30T23:10:00Z")),
            complete_through_ms: ms("2026-11-30T23:10:00Z"),
        });
        let d = decide(zones.clone(), now, &c);
        assert!(d.ready.is_empty());
        let Some(Refusal::Waiting { reason, .. }) = refusal(day, &d) else {
            panic!("{d:?}")
        };
        assert!(
            reason.contains("ad-effects/3 archived to offset 10 of 20"),
            "{reason}"
        );
        // Once the archiver has passed the close, the day is ready.
        c.partitions[1].complete_through_ms = ms("2026-12-01T00:00:01Z");
        assert_eq!(decide(zones, now, &c).ready.len(), 1);
    }
}

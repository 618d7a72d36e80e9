//! The per-partition core of the speed layer: dedup, dimension join, attribution and
//! window aggregation, with no I/O. The Kafka/Redis shell (`crate::partition`) feeds it
//! decoded events and persists what [`Processor::take_flush`] returns; the benchmark
//! feeds it a JSON-lines file.
//!
//! # Watermarks and the effect wait
//!
//! The partition tracks the newest event time of each topic. The *event watermark*
//! (newest time of either topic minus the out-of-orderness bound) closes windows. The
//! *traffic watermark* (newest traffic time minus the bound) tells when every click at
//! or before a time has been seen, since a user's traffic arrives in order within its
//! partition.
//!
//! An effect waits in two stages, both timed by the traffic watermark (never by the
//! effects topic, which runs ahead of the traffic when a backlog is caught up):
//!
//! 1. until the traffic watermark passes its time: then, if a click explains it, it is
//!    attributed with every earlier click known (the batch layer's answer);
//! 2. otherwise it waits for a late click (one that arrives after it, the design
//!    brief's "effects can arrive before the click that explains them") until the
//!    traffic watermark passes its time plus `effect_wait` (3 h); a click of its user
//!    and advertiser that arrives meanwhile attributes it at once. Then it is counted
//!    unattributed.
//!
//! A quiet partition lets its watermarks follow the wall clock
//! ([`Processor::advance_idle`]), so waits end on a live stream without traffic.

use std::collections::BTreeMap;

use common::attribution::{Attribution, ClickRef, Rules, attribute};
use common::counters::UNATTRIBUTED_AD;
use common::day::{DayNum, local_day};
use common::decode::{RejectReason, Rejection};
use common::dims::Dimensions;
use common::event::{Event, EventKind, TopicKind, id_hash};
use common::redis_keys::UvScope;
use serde::{Deserialize, Serialize};

use super::clicks::{ClickIndex, StoredClick};
use super::dedup::Dedup;
use super::detail::DetailRow;
use super::windows::{AdDay, DayDeltas, UvEntry, Window, Windows};

/// Parameters of a processor (from `[speed]` and `[attribution]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessorConfig {
    /// Kafka partition number (goes into detail rows).
    pub partition: i32,
    /// Tumbling window length, ms.
    pub window_ms: i64,
    /// Out-of-orderness bound, ms.
    pub out_of_orderness_ms: i64,
    /// Longest wait of an effect for its click, ms of event time.
    pub effect_wait_ms: i64,
    /// Dedup horizon, ms.
    pub dedup_horizon_ms: i64,
    /// Attribution rules.
    pub rules: Rules,
    /// Produce ClickHouse detail rows.
    pub detail_rows: bool,
}

impl ProcessorConfig {
    /// From the configuration sections.
    pub fn from_config(partition: i32, cfg: &common::config::Config) -> Self {
        use common::config::duration_ms;
        ProcessorConfig {
            partition,
            window_ms: duration_ms(cfg.speed.window),
            out_of_orderness_ms: duration_ms(cfg.speed.out_of_orderness),
            effect_wait_ms: duration_ms(cfg.attribution.effect_wait),
            dedup_horizon_ms: duration_ms(cfg.speed.dedup_horizon),
            rules: cfg.attribution.rules(),
            detail_rows: cfg.clickhouse.enabled,
        }
    }
}

/// An effect waiting for its click, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEffect {
    /// Kafka offset on the effects topic (unique within the partition).
    pub seq: i64,
    /// The event.
    #[serde(deserialize_with = "owned_event")]
    pub event: Event<'static>,
    /// Advertiser-local day of the effect.
    pub day: DayNum,
    /// Product category (0 if unknown), for the detail row.
    pub category_id: i64,
}

fn owned_event<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Event<'static>, D::Error> {
    Event::deserialize(d).map(Event::into_owned)
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Counted (or waiting for attribution).
    Accepted,
    /// An `event_id` already seen: dropped.
    Duplicate,
    /// Not processable: goes to the dead-letter topic.
    Rejected(Rejection),
}

/// Counters of what the processor did, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events accepted per topic.
    pub accepted: [u64; 2],
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Rejections (unknown dimensions).
    pub rejected: u64,
    /// Events whose window had closed.
    pub late: u64,
    /// Effects by attribution (direct, indirect, unattributed).
    pub attributed: [u64; 3],
}

/// What survives in Redis besides deltas: the open windows and the watermarks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Windows not yet closed.
    pub windows: Windows,
    /// Newest event time seen per topic (traffic, effects).
    pub max_ts: [i64; 2],
}

/// Everything one flush writes, atomically with the offsets.
#[derive(Debug, Default)]
pub struct Flush {
    /// What the day counters and UV gained since the last flush (early firing).
    pub days: DayDeltas,
    /// Closed windows (start ms, contents), for the 10-second series.
    pub closed: Vec<(i64, Window)>,
    /// Next offset to consume per topic (traffic, effects); `None` if nothing consumed.
    pub next_offsets: [Option<i64>; 2],
    /// Clicks added to the attribution state.
    pub new_clicks: Vec<StoredClick>,
    /// Effects that started waiting.
    pub pending_added: Vec<PendingEffect>,
    /// Waiting effects (by `seq`) that were attributed.
    pub pending_removed: Vec<i64>,
    /// Dedup ids added, as (hour, id hash).
    pub seen_added: Vec<(i64, u64)>,
    /// The state to restore open windows from.
    pub snapshot: Option<Snapshot>,
}

/// The speed-layer core of one partition.
#[derive(Debug)]
pub struct Processor {
    cfg: ProcessorConfig,
    dedup: Dedup,
    clicks: ClickIndex,
    /// Stage 1: effects waiting for the traffic watermark to pass them, by (ts, seq).
    pending: BTreeMap<(i64, i64), PendingEffect>,
    /// Stage 2: effects no click explained yet, by (deadline, seq).
    orphans: BTreeMap<(i64, i64), PendingEffect>,
    /// Stage-2 keys by (user hash, advertiser), for late clicks.
    orphans_by_user: rustc_hash::FxHashMap<(u64, i64), Vec<(i64, i64)>>,
    pending_added: BTreeMap<i64, PendingEffect>,
    pending_removed: Vec<i64>,
    windows: Windows,
    max_ts: [i64; 2],
    idle_floor: [i64; 2],
    next_offsets: [Option<i64>; 2],
    details: Vec<DetailRow>,
    stats: Stats,
    now_ms: i64,
}

impl Processor {
    /// A processor with empty state.
    pub fn new(cfg: ProcessorConfig) -> Self {
        Processor {
            dedup: Dedup::new(cfg.dedup_horizon_ms),
            clicks: ClickIndex::new(cfg.rules.lookback_ms),
            pending: BTreeMap::new(),
            orphans: BTreeMap::new(),
            orphans_by_user: rustc_hash::FxHashMap::default(),
            pending_added: BTreeMap::new(),
            pending_removed: Vec::new(),
            windows: Windows::new(cfg.window_ms),
            max_ts: [i64::MIN; 2],
            idle_floor: [i64::MIN; 2],
            next_offsets: [None; 2],
            details: Vec::new(),
            stats: Stats::default(),
            now_ms: 0,
            cfg,
        }
    }

    /// Rebuilds a processor from persisted state (see `crate::state`).
    pub fn restore(
        cfg: ProcessorConfig,
        snapshot: Option<Snapshot>,
        clicks: impl IntoIterator<Item = StoredClick>,
        pending: impl IntoIterator<Item = PendingEffect>,
        seen: impl IntoIterator<Item = (i64, Vec<u64>)>,
        next_offsets: [Option<i64>; 2],
    ) -> Self {
        let mut p = Processor::new(cfg);
        if let Some(s) = snapshot {
            p.windows = s.windows.restored();
            p.max_ts = s.max_ts;
        }
        for c in clicks {
            p.clicks.restore(c);
        }
        for e in pending {
            p.pending.insert((e.event.ts, e.seq), e);
        }
        for (hour, ids) in seen {
            p.dedup.restore(hour, ids);
        }
        p.next_offsets = next_offsets;
        p
    }

    /// Sets the clock used for detail-row versions (ms UTC).
    pub fn set_now(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    /// Records that `offset` of `topic` was consumed, whatever became of the message
    /// (rejected messages are consumed too, once dead-lettered).
    pub fn consumed(&mut self, topic: TopicKind, offset: i64) {
        self.next_offsets[topic.index()] = Some(offset + 1);
    }

    /// The next offset to consume per topic, as restored or advanced.
    pub fn next_offsets(&self) -> [Option<i64>; 2] {
        self.next_offsets
    }

    /// Processes one decoded, validated event read at `offset` of `topic`.
    /// The caller also calls [`Processor::consumed`].
    pub fn process(
        &mut self,
        topic: TopicKind,
        offset: i64,
        e: &Event<'_>,
        dims: &impl Dimensions,
    ) -> Outcome {
        let Some(adv) = dims.advertiser(e.advertiser_id) else {
            self.stats.rejected += 1;
            return Outcome::Rejected(Rejection::new(
                RejectReason::UnknownAdvertiser,
                format!(
                    "advertiser_id {} is not in the advertisers table",
                    e.advertiser_id
                ),
            ));
        };
        let ad = if e.kind.is_traffic() {
            let ad_id = e.ad_id.unwrap_or_default();
            let Some(ad) = dims.ad(ad_id) else {
                self.stats.rejected += 1;
                return Outcome::Rejected(Rejection::new(
                    RejectReason::UnknownAd,
                    format!("ad_id {ad_id} is not in the ads table"),
                ));
            };
            if ad.advertiser_id != e.advertiser_id {
                self.stats.rejected += 1;
                return Outcome::Rejected(Rejection::new(
                    RejectReason::DimensionMismatch,
                    format!(
                        "ad {ad_id} belongs to advertiser {}, the event says {}",
                        ad.advertiser_id, e.advertiser_id
                    ),
                ));
            }
            Some(ad)
        } else {
            None
        };
        if !self.dedup.insert(id_hash(&e.event_id), e.ts) {
            self.stats.duplicates += 1;
            return Outcome::Duplicate;
        }
        let t = topic.index();
        self.max_ts[t] = self.max_ts[t].max(e.ts);
        self.stats.accepted[t] += 1;
        if self.windows.is_late(e.ts) {
            self.stats.late += 1;
        }
        let day = local_day(e.ts, adv.tz);
        let user = id_hash(&e.user_id);
        let product_id = e.product_id.unwrap_or_default();
        if let Some(ad) = ad {
            let key = AdDay {
                advertiser_id: ad.advertiser_id,
                ad_id: ad.ad_id,
                day,
            };
            self.windows.add(e.ts, key, |c| c.add_traffic(e));
            for scope in [
                UvScope::Ad(ad.ad_id),
                UvScope::Campaign(ad.campaign_id),
                UvScope::Advertiser(ad.advertiser_id),
            ] {
                self.windows.add_user(UvEntry { scope, day, user });
            }
            if e.kind == EventKind::Click {
                let click = ClickRef {
                    ts: e.ts,
                    seq: offset,
                    ad_id: ad.ad_id,
                    campaign_id: ad.campaign_id,
                    product_id,
                    day,
                };
                self.clicks.insert(StoredClick {
                    user,
                    advertiser_id: ad.advertiser_id,
                    click,
                });
                self.retry_orphans(user, ad.advertiser_id);
            }
            if self.cfg.detail_rows {
                let row = self.detail_row(
                    e,
                    offset,
                    day,
                    (ad.campaign_id, ad.ad_id, ad.category_id),
                    None,
                );
                self.details.push(row);
            }
        } else {
            let category_id = dims.product(product_id).map_or(0, |p| p.category_id);
            let pending = PendingEffect {
                seq: offset,
                event: e.clone().into_owned(),
                day,
                category_id,
            };
            self.pending.insert((e.ts, offset), pending.clone());
            self.pending_added.insert(offset, pending);
        }
        self.resolve_ready();
        Outcome::Accepted
    }

    /// Traffic watermark: every click at or before it has been seen.
    fn traffic_watermark(&self) -> i64 {
        let t = TopicKind::Traffic.index();
        self.max_ts[t]
            .saturating_sub(self.cfg.out_of_orderness_ms)
            .max(self.idle_floor[t])
    }

    /// Event watermark: windows ending at or before it are complete.
    pub fn watermark(&self) -> i64 {
        let newest = self.max_ts[0]
            .max(self.max_ts[1])
            .saturating_sub(self.cfg.out_of_orderness_ms);
        newest.max(self.idle_floor[0].min(self.idle_floor[1]))
    }

    /// Newest event time seen on `topic` (ms UTC), `i64::MIN` before the first.
    pub fn newest_ts(&self, topic: TopicKind) -> i64 {
        self.max_ts[topic.index()]
    }

    /// Lets the watermark of an idle topic follow the wall clock: nothing older than
    /// `floor_ms` is expected from it any more.
    pub fn advance_idle(&mut self, topic: TopicKind, floor_ms: i64) {
        let t = topic.index();
        self.idle_floor[t] = self.idle_floor[t].max(floor_ms);
        self.resolve_ready();
    }

    /// Moves waiting effects along their two stages as the traffic watermark advances.
    fn resolve_ready(&mut self) {
        let traffic_wm = self.traffic_watermark();
        while let Some((&(ts, seq), _)) = self.pending.first_key_value() {
            if ts >= traffic_wm {
                break;
            }
            let Some(p) = self.pending.remove(&(ts, seq)) else {
                break;
            };
            let a = self.attribution_of(&p);
            if a.click.is_some() {
                self.record_effect(&p, a);
            } else {
                let key = (ts.saturating_add(self.cfg.effect_wait_ms), seq);
                self.orphans_by_user
                    .entry((id_hash(&p.event.user_id), p.event.advertiser_id))
                    .or_default()
                    .push(key);
                self.orphans.insert(key, p);
            }
        }
        while let Some((&key, _)) = self.orphans.first_key_value() {
            if key.0 > traffic_wm {
                break;
            }
            let Some(p) = self.orphans.remove(&key) else {
                break;
            };
            self.forget_orphan(&p, key);
            let a = self.attribution_of(&p);
            self.record_effect(&p, a);
        }
    }

    /// A click of `user` on `advertiser` arrived: attributes the effects of that pair
    /// that were waiting for a late click and that it explains.
    fn retry_orphans(&mut self, user: u64, advertiser_id: i64) {
        let Some(keys) = self.orphans_by_user.get(&(user, advertiser_id)) else {
            return;
        };
        for key in keys.clone() {
            let Some(p) = self.orphans.get(&key) else {
                continue;
            };
            let a = self.attribution_of(p);
            if a.click.is_none() {
                continue;
            }
            if let Some(p) = self.orphans.remove(&key) {
                self.forget_orphan(&p, key);
                self.record_effect(&p, a);
            }
        }
    }

    fn forget_orphan(&mut self, p: &PendingEffect, key: (i64, i64)) {
        let user = (id_hash(&p.event.user_id), p.event.advertiser_id);
        if let Some(keys) = self.orphans_by_user.get_mut(&user) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.orphans_by_user.remove(&user);
            }
        }
    }

    fn attribution_of(&self, p: &PendingEffect) -> Attribution {
        let e = &p.event;
        let mut clicks = Vec::new();
        self.clicks
            .clicks_into(id_hash(&e.user_id), e.advertiser_id, &mut clicks);
        attribute(
            &clicks,
            e.ts,
            e.product_id.unwrap_or_default(),
            p.day,
            &self.cfg.rules,
        )
    }

    /// Counts a waiting effect with its attribution and ends its wait.
    fn record_effect(&mut self, p: &PendingEffect, a: Attribution) {
        if self.pending_added.remove(&p.seq).is_none() {
            self.pending_removed.push(p.seq);
        }
        let e = &p.event;
        let ad_id = a.click.map_or(UNATTRIBUTED_AD, |c| c.ad_id);
        self.stats.attributed[a.kind.offset()] += 1;
        let key = AdDay {
            advertiser_id: e.advertiser_id,
            ad_id,
            day: p.day,
        };
        self.windows
            .add(e.ts, key, |c| c.add_effect(e.kind, e.gmv(), a.kind));
        if self.cfg.detail_rows {
            let campaign = a.click.map_or(0, |c| c.campaign_id);
            let row = self.detail_row(e, p.seq, p.day, (campaign, ad_id, p.category_id), Some(a));
            self.details.push(row);
        }
    }

    fn detail_row(
        &self,
        e: &Event<'_>,
        offset: i64,
        day: DayNum,
        ids: (i64, i64, i64),
        a: Option<Attribution>,
    ) -> DetailRow {
        let (campaign_id, ad_id, category_id) = ids;
        DetailRow {
            event_id: e.event_id.to_string(),
            kind: e.kind.as_str().to_owned(),
            ts_ms: e.ts,
            event_time: u32::try_from(e.ts.div_euclid(1000)).unwrap_or(0),
            day: u16::try_from(day).unwrap_or(0),
            user_id: e.user_id.to_string(),
            advertiser_id: e.advertiser_id,
            campaign_id,
            ad_id,
            product_id: e.product_id.unwrap_or_default(),
            category_id,
            cost_micros: e.cost(),
            gmv_micros: e.gmv(),
            attribution: a.map_or(String::new(), |a| a.kind.as_str().to_owned()),
            click_ts_ms: a.and_then(|a| a.click).map_or(0, |c| c.ts),
            kafka_partition: self.cfg.partition,
            kafka_offset: offset,
            version: u64::try_from(self.now_ms).unwrap_or(0),
        }
    }

    /// True when some open window has closed (a flush would write results).
    pub fn has_closed_windows(&self) -> bool {
        self.windows.has_closable(self.watermark())
    }

    /// Closes windows up to the watermark (all of them when `close_all`, for a graceful
    /// shutdown) and returns everything to persist since the last flush.
    pub fn take_flush(&mut self, close_all: bool) -> Flush {
        let closed = if close_all {
            self.windows.close_all()
        } else {
            self.windows.close_through(self.watermark())
        };
        let prune_at = self.traffic_watermark();
        if prune_at > i64::MIN {
            self.clicks.prune(prune_at);
        }
        let newest = self.max_ts[0].max(self.max_ts[1]);
        if newest > i64::MIN {
            self.dedup.expire(newest);
        }
        Flush {
            days: self.windows.take_day_deltas(),
            closed,
            next_offsets: self.next_offsets,
            new_clicks: self.clicks.take_added(),
            pending_added: std::mem::take(&mut self.pending_added)
                .into_values()
                .collect(),
            pending_removed: std::mem::take(&mut self.pending_removed),
            seen_added: self.dedup.take_added(),
            snapshot: Some(Snapshot {
                windows: self.windows.clone(),
                max_ts: self.max_ts,
            }),
        }
    }

    /// Detail rows produced since the last call.
    pub fn take_details(&mut self) -> Vec<DetailRow> {
        std::mem::take(&mut self.details)
    }

    /// What the processor did so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Effects waiting for their click.
    pub fn pending_len(&self) -> usize {
        self.pending.len() + self.orphans.len()
    }

    /// Clicks held for attribution.
    pub fn clicks_len(&self) -> usize {
        self.clicks.len()
    }

    /// Event ids remembered for dedup.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Open windows.
    pub fn open_windows(&self) -> usize {
        self.windows.open_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::counters::{Counters, Measure};
    use common::dims::{AdDim, AdvertiserDim, ProductDim, StaticDimensions};
    use common::event::DAY_MS;

    const T0: i64 = 20_000 * DAY_MS;

    fn dims() -> StaticDimensions {
        let mut d = StaticDimensions::default();
        for ad in [101, 102] {
            d.ads.insert(
                ad,
                AdDim {
                    ad_id: ad,
                    campaign_id: 10,
                    advertiser_id: 1,
                    product_id: ad + 100,
                    category_id: 3,
                },
            );
        }
        d.advertisers.insert(
            1,
            AdvertiserDim {
                advertiser_id: 1,
                tz: chrono_tz::UTC,
            },
        );
        d.products.insert(
            201,
            ProductDim {
                product_id: 201,
                category_id: 3,
            },
        );
        d
    }

    fn cfg() -> ProcessorConfig {
        ProcessorConfig {
            partition: 0,
            window_ms: 10_000,
            out_of_orderness_ms: 0,
            effect_wait_ms: 3 * 3_600_000,
            dedup_horizon_ms: DAY_MS,
            rules: Rules::default(),
            detail_rows: true,
        }
    }

    fn ev(kind: EventKind, id: &str, ts: i64, ad: Option<i64>, product: i64) -> Event<'static> {
        Event {
            v: 1,
            kind,
            event_id: id.to_owned().into(),
            ts,
            user_id: "u1".into(),
            ad_id: ad,
            advertiser_id: 1,
            product_id: Some(product),
            cost_micros: (kind == EventKind::Click).then_some(1_000),
            gmv_micros: (kind == EventKind::Payment).then_some(5_000),
        }
    }

    /// Day totals per (ad, day) as the flushes wrote them; asserts that the closed
    /// windows (the series) agree with them once every window has closed.
    fn totals(flushes: &[Flush]) -> std::collections::BTreeMap<(i64, DayNum), Counters> {
        let mut days = std::collections::BTreeMap::new();
        let mut series = std::collections::BTreeMap::new();
        for f in flushes {
            for (k, c) in &f.days.counters {
                *days.entry((k.ad_id, k.day)).or_insert(Counters::ZERO) += c;
            }
            for (_, w) in &f.closed {
                for (k, c) in &w.counters {
                    *series.entry((k.ad_id, k.day)).or_insert(Counters::ZERO) += c;
                }
            }
        }
        if flushes
            .last()
            .and_then(|f| f.snapshot.as_ref())
            .is_some_and(|s| s.windows.open_count() == 0)
        {
            assert_eq!(series, days, "closed windows sum to the day counters");
        }
        days
    }

    #[test]
    fn counts_traffic_and_drops_duplicates() {
        let d = dims();
        let mut p = Processor::new(cfg());
        let click = ev(EventKind::Click, "c1", T0 + 1_000, Some(101), 201);
        assert_eq!(
            p.process(TopicKind::Traffic, 0, &click, &d),
            Outcome::Accepted
        );
        assert_eq!(
            p.process(TopicKind::Traffic, 1, &click, &d),
            Outcome::Duplicate
        );
        let expo = ev(EventKind::Exposure, "x1", T0 + 2_000, Some(101), 201);
        assert_eq!(
            p.process(TopicKind::Traffic, 2, &expo, &d),
            Outcome::Accepted
        );
        let unknown = ev(EventKind::Exposure, "x2", T0 + 2_000, Some(999), 201);
        assert!(
            matches!(p.process(TopicKind::Traffic, 3, &unknown, &d), Outcome::Rejected(r) if r.reason == RejectReason::UnknownAd)
        );
        let f = p.take_flush(true);
        let t = totals(&[f]);
        let c = t[&(101, 20_000)];
        assert_eq!(
            (
                c[Measure::Clicks],
                c[Measure::Exposures],
                c[Measure::CostMicros]
            ),
            (1, 1, 1_000)
        );
        assert_eq!(p.take_details().len(), 2);
    }

    #[test]
    fn an_effect_waits_for_traffic_to_pass_its_time_then_takes_the_last_click() {
        let d = dims();
        let mut p = Processor::new(cfg());
        // The order arrives first; its click (earlier in event time) arrives after it.
        let order = ev(EventKind::Order, "o1", T0 + 60_000, None, 201);
        assert_eq!(
            p.process(TopicKind::Effects, 0, &order, &d),
            Outcome::Accepted
        );
        assert_eq!(p.pending_len(), 1);
        p.process(
            TopicKind::Traffic,
            0,
            &ev(EventKind::Click, "c1", T0 + 30_000, Some(101), 201),
            &d,
        );
        assert_eq!(
            p.pending_len(),
            1,
            "traffic has not passed the order's time yet"
        );
        p.process(
            TopicKind::Traffic,
            1,
            &ev(EventKind::Click, "c2", T0 + 50_000, Some(102), 202),
            &d,
        );
        p.process(
            TopicKind::Traffic,
            2,
            &ev(EventKind::Exposure, "x1", T0 + 61_000, Some(101), 201),
            &d,
        );
        assert_eq!(p.pending_len(), 0);
        let t = totals(&[p.take_flush(true)]);
        assert_eq!(
            t[&(101, 20_000)][Measure::OrdersDirect],
            1,
            "same product same day beats the later click on another product"
        );
        assert_eq!(p.stats().attributed, [1, 0, 0]);
    }

    #[test]
    fn a_late_click_attributes_an_effect_within_the_wait_and_not_after_it() {
        let d = dims();
        let mut p = Processor::new(cfg());
        let hour = 3_600_000;
        p.process(
            TopicKind::Effects,
            0,
            &ev(EventKind::Payment, "p1", T0, None, 201),
            &d,
        );
        p.process(
            TopicKind::Effects,
            1,
            &ev(EventKind::Order, "o1", T0 + 4 * hour, None, 201),
            &d,
        );
        // The effects topic alone never ends a wait (it runs ahead during a backlog).
        p.process(
            TopicKind::Effects,
            2,
            &ev(EventKind::Consultation, "q1", T0 + 9 * hour, None, 201),
            &d,
        );
        assert_eq!(p.pending_len(), 3);
        // Traffic passes p1 + 3 h: no click came for it, so it is unattributed.
        p.process(
            TopicKind::Traffic,
            0,
            &ev(EventKind::Exposure, "x1", T0 + 3 * hour, Some(101), 201),
            &d,
        );
        assert_eq!(p.pending_len(), 2, "p1 is done");
        // Traffic passes o1 with no click for it: o1 now waits for a late click.
        p.process(
            TopicKind::Traffic,
            1,
            &ev(
                EventKind::Exposure,
                "x2",
                T0 + 4 * hour + 1_000,
                Some(101),
                201,
            ),
            &d,
        );
        assert_eq!(p.pending_len(), 2, "o1 still waits for a late click");
        // Late clicks: one explains o1 (within its wait), one comes too late for p1.
        p.process(
            TopicKind::Traffic,
            2,
            &ev(
                EventKind::Click,
                "c1",
                T0 + 4 * hour - 1_000,
                Some(101),
                201,
            ),
            &d,
        );
        p.process(
            TopicKind::Traffic,
            3,
            &ev(EventKind::Click, "c0", T0 - 1_000, Some(101), 201),
            &d,
        );
        assert_eq!(p.pending_len(), 1, "only q1 still waits");
        let t = totals(&[p.take_flush(true)]);
        assert_eq!(
            t[&(UNATTRIBUTED_AD, 20_000)][Measure::PaymentsUnattributed],
            1
        );
        assert_eq!(
            t[&(UNATTRIBUTED_AD, 20_000)][Measure::GmvMicrosUnattributed],
            5_000
        );
        assert_eq!(t[&(101, 20_000)][Measure::OrdersDirect], 1);
    }

    #[test]
    fn pending_effects_added_and_resolved_between_flushes_are_not_persisted() {
        let d = dims();
        let mut p = Processor::new(cfg());
        p.process(
            TopicKind::Traffic,
            0,
            &ev(EventKind::Click, "c1", T0 + 1_000, Some(101), 201),
            &d,
        );
        p.process(
            TopicKind::Effects,
            0,
            &ev(EventKind::Order, "o1", T0 + 5_000, None, 201),
            &d,
        );
        let f = p.take_flush(false);
        assert_eq!(f.pending_added.len(), 1);
        p.process(
            TopicKind::Effects,
            1,
            &ev(EventKind::Order, "o2", T0 + 6_000, None, 201),
            &d,
        );
        p.process(
            TopicKind::Traffic,
            1,
            &ev(EventKind::Exposure, "x1", T0 + 7_000, Some(101), 201),
            &d,
        );
        let f = p.take_flush(false);
        assert!(
            f.pending_added.is_empty(),
            "o2 came and went within one flush"
        );
        assert_eq!(f.pending_removed, vec![0]);
    }
}

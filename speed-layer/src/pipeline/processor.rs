//! The per-partition core of the speed layer, as typed stages with no I/O:
//!
//! ```text
//! raw message ─ decode, validate (common::decode) ─> Event
//!   ─ dimension join (enrich) ───────────────> Enriched        or Rejected
//!   ─ dedup by event_id (dedup) ─────────────> deduplicated    or Duplicate
//!   ─ attribution (clicks, effect_wait) ─────> WindowDelta per counted event
//!   ─ window aggregation (windows) ───────────> day deltas, closed windows
//!   ─ take_flush ────────────────────────────> Flush (one atomic Redis script)
//! ```
//!
//! [`Processor::process_batch`] runs a batch through each stage in turn, in message
//! order, so a stage's state is touched by one loop at a time (the dedup set's and
//! the window maps' cache misses overlap instead of stalling every event: the dedup
//! slots of the batch are read ahead, and the batch's window deltas are added at its
//! end, one loop per map). The result equals processing the
//! messages one by one: the join reads only the dimensions, the dedup set changes only
//! by its own inserts, and attribution and windows see the survivors in order.
//! The Kafka/Redis shell (`crate::partition`) feeds it decoded batches and persists
//! what [`Processor::take_flush`] returns; the benchmark feeds it a JSON-lines file.
//! Watermarks live in [`super::watermark`], the effect wait in [`super::effect_wait`],
//! detail rows in [`super::detail`], the restart state in [`super::checkpoint`].

use common::attribution::{Attribution, Rules, attribute};
use common::counters::UvScope;
use common::counters::{Increment, UNATTRIBUTED_AD};
use common::decode::Rejection;
use common::dims::{AdDim, Dimensions};
use common::event::{Event, TopicKind, id_hash};

pub use super::checkpoint::{Checkpoint, Snapshot};
use super::clicks::{ClickIndex, StoredClick};
use super::dedup::Dedup;
use super::detail::{DetailRef, DetailRows, Placement};
pub use super::effect_wait::PendingEffect;
use super::effect_wait::{EffectWait, Settled};
pub use super::enrich::Message;
use super::enrich::{Enriched, enrich};
use super::watermark::Watermarks;
use super::windows::{AdDay, DayDeltas, UvEntry, Window, WindowDelta, Windows};

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
    /// ClickHouse shards the detail rows are split over (`clickhouse.shards`; 1 for a
    /// single server).
    pub detail_shards: usize,
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
            detail_shards: cfg.clickhouse.shards.len().max(1),
        }
    }
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

/// The speed-layer core of one partition: the state of each stage.
#[derive(Debug)]
pub struct Processor {
    cfg: ProcessorConfig,
    dedup: Dedup,
    clicks: ClickIndex,
    waiting: EffectWait,
    windows: Windows,
    watermarks: Watermarks,
    next_offsets: [Option<i64>; 2],
    details: DetailRows,
    /// Effects settled by the current step, recorded right after (a reused buffer).
    settled: Vec<Settled>,
    /// What the current batch adds to windows and days, applied at its end (a
    /// reused buffer; empty between calls).
    deltas: Vec<WindowDelta>,
    stats: Stats,
    now_ms: i64,
}

/// The last-click attribution of a waiting effect, against the clicks known now.
fn attribution_of(clicks: &ClickIndex, rules: &Rules, p: &PendingEffect) -> Attribution {
    let e = &p.event;
    let mut candidates = Vec::new();
    clicks.clicks_into(id_hash(&e.user_id), e.advertiser_id, &mut candidates);
    attribute(
        &candidates,
        e.ts,
        e.product_id.unwrap_or_default(),
        p.day,
        rules,
    )
}

impl Processor {
    /// A processor with empty state.
    pub fn new(cfg: ProcessorConfig) -> Self {
        Processor {
            dedup: Dedup::new(cfg.dedup_horizon_ms),
            clicks: ClickIndex::new(cfg.rules.lookback_ms),
            waiting: EffectWait::new(cfg.effect_wait_ms),
            windows: Windows::new(cfg.window_ms),
            watermarks: Watermarks::new(cfg.out_of_orderness_ms),
            next_offsets: [None; 2],
            details: DetailRows::new(cfg.detail_shards),
            settled: Vec::new(),
            deltas: Vec::new(),
            stats: Stats::default(),
            now_ms: 0,
            cfg,
        }
    }

    /// Rebuilds a processor from its checkpoint (see `crate::state`).
    pub fn restore(cfg: ProcessorConfig, cp: Checkpoint) -> Self {
        let mut p = Processor::new(cfg);
        if let Some(s) = cp.snapshot {
            p.windows = s.windows.restored();
            p.watermarks = Watermarks::restored(cfg.out_of_orderness_ms, s.max_ts);
        }
        for c in cp.clicks {
            p.clicks.restore(c);
        }
        for e in cp.pending {
            p.waiting.restore(e);
        }
        for (hour, ids) in cp.seen {
            p.dedup.restore(hour, ids);
        }
        p.next_offsets = cp.next_offsets;
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

    /// Processes one decoded, validated event read at `offset` of `topic` (a batch of
    /// one). The caller also calls [`Processor::consumed`].
    pub fn process(
        &mut self,
        topic: TopicKind,
        offset: i64,
        e: &Event<'_>,
        dims: &impl Dimensions,
    ) -> Outcome {
        let mut out = Vec::with_capacity(1);
        self.process_batch(
            &[Message {
                topic,
                offset,
                event: e,
            }],
            dims,
            &mut out,
        );
        out.pop().expect("one outcome per message")
    }

    /// Runs decoded, validated messages through the stages, appending one
    /// [`Outcome`] per message to `outcomes`, in order. The caller also calls
    /// [`Processor::consumed`] for each.
    pub fn process_batch(
        &mut self,
        batch: &[Message<'_, '_>],
        dims: &impl Dimensions,
        outcomes: &mut Vec<Outcome>,
    ) {
        let enriched: Vec<Result<Enriched<'_, '_>, Rejection>> =
            batch.iter().map(|m| enrich(*m, dims)).collect();
        self.dedup.warm(
            enriched
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|x| x.id)),
        );
        let fresh: Vec<bool> = enriched
            .iter()
            .map(|r| {
                r.as_ref()
                    .is_ok_and(|x| self.dedup.insert(x.id, x.msg.event.ts))
            })
            .collect();
        for (r, fresh) in enriched.into_iter().zip(fresh) {
            outcomes.push(match r {
                Err(rejection) => {
                    self.stats.rejected += 1;
                    Outcome::Rejected(rejection)
                }
                Ok(_) if !fresh => {
                    self.stats.duplicates += 1;
                    Outcome::Duplicate
                }
                Ok(x) => {
                    self.absorb(&x);
                    Outcome::Accepted
                }
            });
        }
        self.windows.apply(&mut self.deltas);
    }

    /// Stages 4 and 5 for one new event: attribution state and window aggregation.
    fn absorb(&mut self, x: &Enriched<'_, '_>) {
        let e = x.msg.event;
        self.watermarks.observe(x.msg.topic, e.ts);
        self.stats.accepted[x.msg.topic.index()] += 1;
        if self.windows.is_late(e.ts) {
            self.stats.late += 1;
        }
        if let Some(ad) = x.ad {
            self.count_traffic(x, ad);
        } else {
            self.waiting.wait(PendingEffect {
                seq: x.msg.offset,
                event: e.clone().into_owned(),
                day: x.day,
                category_id: x.category_id,
            });
        }
        self.settle_ready();
    }

    /// Counts an exposure or click; a click joins the click index and may settle
    /// effects that were waiting for it.
    fn count_traffic(&mut self, x: &Enriched<'_, '_>, ad: AdDim) {
        let e = x.msg.event;
        let key = AdDay {
            advertiser_id: ad.advertiser_id,
            ad_id: ad.ad_id,
            day: x.day,
        };
        self.deltas.push(WindowDelta {
            ts: e.ts,
            key,
            inc: Increment::traffic(e),
        });
        for scope in [
            UvScope::Ad(ad.ad_id),
            UvScope::Campaign(ad.campaign_id),
            UvScope::Advertiser(ad.advertiser_id),
        ] {
            self.windows.add_user(UvEntry {
                scope,
                day: x.day,
                user: x.user,
            });
        }
        if let Some(click) = StoredClick::of_click(x) {
            self.clicks.insert(click);
            let (clicks, rules) = (&self.clicks, &self.cfg.rules);
            self.waiting.click_arrived(
                x.user,
                ad.advertiser_id,
                |p| attribution_of(clicks, rules, p),
                &mut self.settled,
            );
            self.record_settled();
        }
        if self.cfg.detail_rows {
            let at = Placement {
                partition: self.cfg.partition,
                offset: x.msg.offset,
                day: x.day,
                campaign_id: ad.campaign_id,
                ad_id: ad.ad_id,
                category_id: ad.category_id,
            };
            self.details.push(&DetailRef::new(e, at, None, self.now_ms));
        }
    }

    /// Settles the effects whose wait the traffic watermark has ended.
    fn settle_ready(&mut self) {
        let (clicks, rules) = (&self.clicks, &self.cfg.rules);
        self.waiting.advance(
            self.watermarks.traffic(),
            |p| attribution_of(clicks, rules, p),
            &mut self.settled,
        );
        self.record_settled();
    }

    /// Counts the settled effects under their attribution.
    fn record_settled(&mut self) {
        let settled = std::mem::take(&mut self.settled);
        for s in &settled {
            let (p, a) = (&s.effect, s.attribution);
            let e = &p.event;
            let ad_id = a.click.map_or(UNATTRIBUTED_AD, |c| c.ad_id);
            self.stats.attributed[a.kind.offset()] += 1;
            let key = AdDay {
                advertiser_id: e.advertiser_id,
                ad_id,
                day: p.day,
            };
            self.deltas.push(WindowDelta {
                ts: e.ts,
                key,
                inc: Increment::effect(e.kind, e.gmv(), a.kind),
            });
            if self.cfg.detail_rows {
                let at = Placement {
                    partition: self.cfg.partition,
                    offset: p.seq,
                    day: p.day,
                    campaign_id: a.click.map_or(0, |c| c.campaign_id),
                    ad_id,
                    category_id: p.category_id,
                };
                self.details
                    .push(&DetailRef::new(e, at, Some(a), self.now_ms));
            }
        }
        self.settled = settled;
        self.settled.clear();
    }

    /// Event watermark: windows ending at or before it are complete.
    pub fn watermark(&self) -> i64 {
        self.watermarks.event()
    }

    /// Newest event time seen on `topic` (ms UTC), `i64::MIN` before the first.
    pub fn newest_ts(&self, topic: TopicKind) -> i64 {
        self.watermarks.newest(topic)
    }

    /// Lets the watermark of an idle topic follow the wall clock: nothing older than
    /// `floor_ms` is expected from it any more.
    pub fn advance_idle(&mut self, topic: TopicKind, floor_ms: i64) {
        self.watermarks.advance_idle(topic, floor_ms);
        self.settle_ready();
        self.windows.apply(&mut self.deltas);
    }

    /// True when some open window has closed (a flush would write results).
    pub fn has_closed_windows(&self) -> bool {
        self.windows.has_closable(self.watermark())
    }

    /// Closes windows up to the watermark (all of them when `close_all`, for a graceful
    /// shutdown) and returns everything to persist since the last flush.
    pub fn take_flush(&mut self, close_all: bool) -> Flush {
        debug_assert!(self.deltas.is_empty(), "every step applies its deltas");
        let closed = if close_all {
            self.windows.close_all()
        } else {
            self.windows.close_through(self.watermark())
        };
        let prune_at = self.watermarks.traffic();
        if prune_at > i64::MIN {
            self.clicks.prune(prune_at);
        }
        let newest = self.watermarks.newest_any();
        if newest > i64::MIN {
            self.dedup.expire(newest);
        }
        Flush {
            days: self.windows.take_day_deltas(),
            closed,
            next_offsets: self.next_offsets,
            new_clicks: self.clicks.take_added(),
            pending_added: self.waiting.take_added(),
            pending_removed: self.waiting.take_removed(),
            seen_added: self.dedup.take_added(),
            snapshot: Some(Snapshot {
                windows: self.windows.clone(),
                max_ts: self.watermarks.max_ts(),
            }),
        }
    }

    /// Detail rows produced since the last call, encoded.
    pub fn take_details(&mut self) -> DetailRows {
        std::mem::replace(&mut self.details, DetailRows::new(self.cfg.detail_shards))
    }

    /// What the processor did so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Effects waiting for their click.
    pub fn pending_len(&self) -> usize {
        self.waiting.len()
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
    use common::day::DayNum;
    use common::decode::RejectReason;
    use common::dims::{AdDim, AdvertiserDim, ProductDim, StaticDimensions};
    use common::event::DAY_MS;
    use common::event::EventKind;

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
            detail_shards: 1,
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

    #[test]
    fn a_batch_gives_what_the_same_messages_give_one_by_one() {
        let d = dims();
        let mut events = Vec::new();
        for i in 0..60_i64 {
            let ts = T0 + i * 700;
            let e = match i % 6 {
                0 => ev(
                    EventKind::Click,
                    &format!("c{i}"),
                    ts,
                    Some(101 + i % 2),
                    201,
                ),
                1 => ev(EventKind::Exposure, &format!("x{i}"), ts, Some(102), 202),
                2 => ev(EventKind::Order, &format!("o{i}"), ts - 5_000, None, 201),
                3 => ev(EventKind::Click, &format!("c{}", i - 3), ts, Some(101), 201), // duplicate
                4 => ev(EventKind::Exposure, &format!("x{i}"), ts, Some(999), 201),    // unknown ad
                _ => ev(EventKind::Payment, &format!("p{i}"), ts + 20_000, None, 202),
            };
            events.push((e.kind.topic(), e));
        }
        let mut offsets = [0_i64; 2];
        let messages: Vec<Message<'_, '_>> = events
            .iter()
            .map(|(topic, e)| {
                let offset = offsets[topic.index()];
                offsets[topic.index()] += 1;
                Message {
                    topic: *topic,
                    offset,
                    event: e,
                }
            })
            .collect();
        let mut single = Processor::new(cfg());
        let one_by_one: Vec<Outcome> = messages
            .iter()
            .map(|m| single.process(m.topic, m.offset, m.event, &d))
            .collect();
        let mut batched = Processor::new(cfg());
        let mut outcomes = Vec::new();
        for chunk in messages.chunks(7) {
            batched.process_batch(chunk, &d, &mut outcomes);
        }
        assert_eq!(outcomes, one_by_one);
        assert_eq!(batched.stats(), single.stats());
        assert_eq!(batched.stats().duplicates, 10);
        assert_eq!(batched.stats().rejected, 10);
        assert_eq!(batched.take_details(), single.take_details());
        assert_eq!(
            totals(&[batched.take_flush(true)]),
            totals(&[single.take_flush(true)])
        );
    }
}

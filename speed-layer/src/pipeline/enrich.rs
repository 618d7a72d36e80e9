//! Stage 2 of the core: the dimension join. A decoded, validated event gets its
//! advertiser's day, its ad's hierarchy (traffic) or its product's category (effects),
//! and the id hashes later stages key on; or it is rejected, here and nowhere else,
//! with the reason the dead-letter record carries.

use common::day::{DayNum, local_day};
use common::decode::{RejectReason, Rejection};
use common::dims::{AdDim, Dimensions};
use common::event::{Event, TopicKind, id_hash};

/// One message as the core receives it: where it was read and what it decoded to.
#[derive(Debug, Clone, Copy)]
pub struct Message<'b, 'e> {
    /// The topic it was read from.
    pub topic: TopicKind,
    /// Its Kafka offset (unique within the partition and topic).
    pub offset: i64,
    /// The decoded, validated event.
    pub event: &'b Event<'e>,
}

/// An event joined with its dimensions.
#[derive(Debug, Clone, Copy)]
pub struct Enriched<'b, 'e> {
    /// The message.
    pub msg: Message<'b, 'e>,
    /// `id_hash(event_id)`: the dedup key.
    pub id: u64,
    /// `id_hash(user_id)`: the attribution and UV key.
    pub user: u64,
    /// The event's day in its advertiser's time zone.
    pub day: DayNum,
    /// The ad's row, on traffic; `None` on effects.
    pub ad: Option<AdDim>,
    /// The category of the effect's product (0 when unknown); the ad's on traffic.
    pub category_id: i64,
}

/// Joins `msg` with `dims`.
///
/// # Errors
///
/// A [`Rejection`] for an unknown advertiser or ad, or an ad of another advertiser.
pub fn enrich<'b, 'e>(
    msg: Message<'b, 'e>,
    dims: &impl Dimensions,
) -> Result<Enriched<'b, 'e>, Rejection> {
    let e = msg.event;
    let Some(adv) = dims.advertiser(e.advertiser_id) else {
        return Err(Rejection::new(
            RejectReason::UnknownAdvertiser,
            format!(
                "advertiser_id {} is not in the advertisers table",
                e.advertiser_id
            ),
        ));
    };
    let (ad, category_id) = if e.kind.is_traffic() {
        let ad_id = e.ad_id.unwrap_or_default();
        let Some(ad) = dims.ad(ad_id) else {
            return Err(Rejection::new(
                RejectReason::UnknownAd,
                format!("ad_id {ad_id} is not in the ads table"),
            ));
        };
        if ad.advertiser_id != e.advertiser_id {
            return Err(Rejection::new(
                RejectReason::DimensionMismatch,
                format!(
                    "ad {ad_id} belongs to advertiser {}, the event says {}",
                    ad.advertiser_id, e.advertiser_id
                ),
            ));
        }
        (Some(ad), ad.category_id)
    } else {
        let product = e.product_id.unwrap_or_default();
        (None, dims.product(product).map_or(0, |p| p.category_id))
    };
    Ok(Enriched {
        msg,
        id: id_hash(&e.event_id),
        user: id_hash(&e.user_id),
        day: local_day(e.ts, adv.tz),
        ad,
        category_id,
    })
}

#[cfg(test)]
mod tests {
    use common::dims::{AdvertiserDim, ProductDim, StaticDimensions};
    use common::event::EventKind;

    use super::*;

    fn dims() -> StaticDimensions {
        let mut d = StaticDimensions::default();
        d.ads.insert(
            101,
            AdDim {
                ad_id: 101,
                campaign_id: 10,
                advertiser_id: 1,
                product_id: 201,
                category_id: 3,
            },
        );
        d.advertisers.insert(
            1,
            AdvertiserDim {
                advertiser_id: 1,
                tz: chrono_tz::Asia::Shanghai,
            },
        );
        d.products.insert(
            202,
            ProductDim {
                product_id: 202,
                category_id: 4,
            },
        );
        d
    }

    fn event(kind: EventKind, ad: Option<i64>, advertiser: i64) -> Event<'static> {
        Event {
            v: 1,
            kind,
            event_id: "e1".into(),
            // 2026-11-01 20:00 UTC: already 2 November in Shanghai.
            ts: 1_793_563_200_000,
            user_id: "u1".into(),
            ad_id: ad,
            advertiser_id: advertiser,
            product_id: Some(202),
            cost_micros: None,
            gmv_micros: None,
        }
    }

    fn msg<'b>(e: &'b Event<'static>) -> Message<'b, 'static> {
        Message {
            topic: e.kind.topic(),
            offset: 7,
            event: e,
        }
    }

    #[test]
    fn traffic_gets_its_ad_and_the_advertiser_local_day() {
        let e = event(EventKind::Exposure, Some(101), 1);
        let x = enrich(msg(&e), &dims()).unwrap();
        assert_eq!(x.ad.map(|a| a.campaign_id), Some(10));
        assert_eq!(x.category_id, 3);
        assert_eq!(common::day::date_of(x.day).to_string(), "2026-11-02");
        assert_eq!((x.id, x.user), (id_hash("e1"), id_hash("u1")));
    }

    #[test]
    fn an_effect_gets_its_product_category() {
        let e = event(EventKind::Order, None, 1);
        let x = enrich(msg(&e), &dims()).unwrap();
        assert_eq!((x.ad, x.category_id), (None, 4));
    }

    #[test]
    fn unknown_or_mismatched_dimensions_are_rejected_with_their_reason() {
        let d = dims();
        let reason = |e: Event<'static>| enrich(msg(&e), &d).unwrap_err().reason;
        assert_eq!(
            reason(event(EventKind::Click, Some(101), 9)),
            RejectReason::UnknownAdvertiser
        );
        assert_eq!(
            reason(event(EventKind::Click, Some(999), 1)),
            RejectReason::UnknownAd
        );
        let mut other = d.clone();
        other.advertisers.insert(
            2,
            AdvertiserDim {
                advertiser_id: 2,
                tz: chrono_tz::UTC,
            },
        );
        let e = event(EventKind::Click, Some(101), 2);
        assert_eq!(
            enrich(msg(&e), &other).unwrap_err().reason,
            RejectReason::DimensionMismatch
        );
    }
}

//! The DIM layer as the pipelines see it: ad, advertiser and product rows from MySQL
//! (tables `ads`, `advertisers`, `products`; schema in `deploy/sql/mysql.sql`).
//!
//! The speed layer puts these behind bounded TTL caches; the batch layer loads the
//! (small) ad table once per run.

use rustc_hash::FxHashMap as HashMap;

use chrono_tz::Tz;
use mysql_async::Pool;
use mysql_async::prelude::Queryable;

use crate::db::DbError;

/// An ad with its place in the hierarchy (ad -> campaign -> advertiser, ad -> product).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdDim {
    /// The ad.
    pub ad_id: i64,
    /// Its campaign.
    pub campaign_id: i64,
    /// Its advertiser.
    pub advertiser_id: i64,
    /// The product it advertises.
    pub product_id: i64,
    /// That product's category (0 when the product row is missing).
    pub category_id: i64,
}

/// An advertiser and the time zone its days are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvertiserDim {
    /// The advertiser.
    pub advertiser_id: i64,
    /// IANA time zone of its reporting day.
    pub tz: Tz,
}

/// A product and its category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductDim {
    /// The product.
    pub product_id: i64,
    /// Its category.
    pub category_id: i64,
}

/// Looks dimension rows up synchronously. Implemented by the speed layer's caches and
/// by in-memory maps in benchmarks and tests.
pub trait Dimensions {
    /// The ad, if known.
    fn ad(&self, ad_id: i64) -> Option<AdDim>;
    /// The advertiser, if known.
    fn advertiser(&self, advertiser_id: i64) -> Option<AdvertiserDim>;
    /// The product, if known.
    fn product(&self, product_id: i64) -> Option<ProductDim>;
}

/// Dimension rows held in plain maps (benchmarks, tests, batch runs).
#[derive(Debug, Clone, Default)]
pub struct StaticDimensions {
    /// Ads by id.
    pub ads: HashMap<i64, AdDim>,
    /// Advertisers by id.
    pub advertisers: HashMap<i64, AdvertiserDim>,
    /// Products by id.
    pub products: HashMap<i64, ProductDim>,
}

impl StaticDimensions {
    /// Dimensions of the standard benchmark load (`../shared/bench/gen_events.py`):
    /// advertisers `0..advertisers`, all on UTC; ads `advertiser * 100 + k` (k < 10,
    /// campaign `advertiser * 10 + k / 5`, product `advertiser * 200 + k`, category k);
    /// products `advertiser * 200 + p` (p < 20, category `p % 10`).
    pub fn standard_load(advertisers: i64) -> StaticDimensions {
        let mut d = StaticDimensions::default();
        for adv in 0..advertisers {
            d.advertisers.insert(
                adv,
                AdvertiserDim {
                    advertiser_id: adv,
                    tz: chrono_tz::UTC,
                },
            );
            for k in 0..10 {
                let ad = adv * 100 + k;
                d.ads.insert(
                    ad,
                    AdDim {
                        ad_id: ad,
                        campaign_id: adv * 10 + k / 5,
                        advertiser_id: adv,
                        product_id: adv * 200 + k,
                        category_id: k,
                    },
                );
            }
            for p in 0..20 {
                d.products.insert(
                    adv * 200 + p,
                    ProductDim {
                        product_id: adv * 200 + p,
                        category_id: p % 10,
                    },
                );
            }
        }
        d
    }
}

impl Dimensions for StaticDimensions {
    fn ad(&self, ad_id: i64) -> Option<AdDim> {
        self.ads.get(&ad_id).copied()
    }
    fn advertiser(&self, advertiser_id: i64) -> Option<AdvertiserDim> {
        self.advertisers.get(&advertiser_id).copied()
    }
    fn product(&self, product_id: i64) -> Option<ProductDim> {
        self.products.get(&product_id).copied()
    }
}

fn tz_or_utc(name: &str) -> Tz {
    name.parse().unwrap_or(chrono_tz::UTC)
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

/// Fetches the ads in `ids` (one query; ids are bound parameters).
///
/// # Errors
///
/// [`DbError::Mysql`] when the query fails.
pub async fn fetch_ads(pool: &Pool, ids: &[i64]) -> Result<Vec<AdDim>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT a.ad_id, a.campaign_id, a.advertiser_id, a.product_id, COALESCE(p.category_id, 0) \
         FROM ads a LEFT JOIN products p ON p.product_id = a.product_id WHERE a.ad_id IN ({})",
        placeholders(ids.len())
    );
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(i64, i64, i64, i64, i64)> = conn.exec(sql, ids.to_vec()).await?;
    Ok(rows
        .into_iter()
        .map(
            |(ad_id, campaign_id, advertiser_id, product_id, category_id)| AdDim {
                ad_id,
                campaign_id,
                advertiser_id,
                product_id,
                category_id,
            },
        )
        .collect())
}

/// Fetches the advertisers in `ids`.
///
/// # Errors
///
/// [`DbError::Mysql`] when the query fails.
pub async fn fetch_advertisers(pool: &Pool, ids: &[i64]) -> Result<Vec<AdvertiserDim>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT advertiser_id, time_zone FROM advertisers WHERE advertiser_id IN ({})",
        placeholders(ids.len())
    );
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(i64, String)> = conn.exec(sql, ids.to_vec()).await?;
    Ok(rows
        .into_iter()
        .map(|(advertiser_id, tz)| AdvertiserDim {
            advertiser_id,
            tz: tz_or_utc(&tz),
        })
        .collect())
}

/// Fetches the products in `ids`.
///
/// # Errors
///
/// [`DbError::Mysql`] when the query fails.
pub async fn fetch_products(pool: &Pool, ids: &[i64]) -> Result<Vec<ProductDim>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT product_id, category_id FROM products WHERE product_id IN ({})",
        placeholders(ids.len())
    );
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(i64, i64)> = conn.exec(sql, ids.to_vec()).await?;
    Ok(rows
        .into_iter()
        .map(|(product_id, category_id)| ProductDim {
            product_id,
            category_id,
        })
        .collect())
}

/// Loads every ad, advertiser and product (batch runs; the tables are small next to
/// the event volume).
///
/// # Errors
///
/// [`DbError::Mysql`] when a query fails.
pub async fn load_all(pool: &Pool) -> Result<StaticDimensions, DbError> {
    let mut conn = pool.get_conn().await?;
    let ads: Vec<(i64, i64, i64, i64, i64)> = conn
        .query(
            "SELECT a.ad_id, a.campaign_id, a.advertiser_id, a.product_id, COALESCE(p.category_id, 0) \
             FROM ads a LEFT JOIN products p ON p.product_id = a.product_id",
        )
        .await?;
    let advertisers: Vec<(i64, String)> = conn
        .query("SELECT advertiser_id, time_zone FROM advertisers")
        .await?;
    let products: Vec<(i64, i64)> = conn
        .query("SELECT product_id, category_id FROM products")
        .await?;
    Ok(StaticDimensions {
        ads: ads
            .into_iter()
            .map(
                |(ad_id, campaign_id, advertiser_id, product_id, category_id)| {
                    (
                        ad_id,
                        AdDim {
                            ad_id,
                            campaign_id,
                            advertiser_id,
                            product_id,
                            category_id,
                        },
                    )
                },
            )
            .collect(),
        advertisers: advertisers
            .into_iter()
            .map(|(id, tz)| {
                (
                    id,
                    AdvertiserDim {
                        advertiser_id: id,
                        tz: tz_or_utc(&tz),
                    },
                )
            })
            .collect(),
        products: products
            .into_iter()
            .map(|(id, c)| {
                (
                    id,
                    ProductDim {
                        product_id: id,
                        category_id: c,
                    },
                )
            })
            .collect(),
    })
}

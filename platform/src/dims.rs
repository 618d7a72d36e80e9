//! Dimension rows fetched from MySQL (tables `ads`, `advertisers`, `products`; schema
//! in `deploy/sql/mysql.sql`) into the types of [`common::dims`]. Ids are bound
//! parameters.

use chrono_tz::Tz;
use common::dims::{AdDim, AdvertiserDim, ProductDim, StaticDimensions};
use mysql_async::Pool;
use mysql_async::prelude::Queryable;

use crate::db::DbError;

/// The advertiser's time zone; an unknown name (a data error in the `advertisers`
/// table, which the ad-management system validates) counts its days in UTC, with a
/// warning naming the advertiser, rather than dropping its events.
fn tz_or_utc(advertiser_id: i64, name: &str) -> Tz {
    name.parse().unwrap_or_else(|_| {
        tracing::warn!(
            advertiser_id,
            time_zone = name,
            "unknown IANA time zone in the advertisers table; counting its days in UTC"
        );
        chrono_tz::UTC
    })
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
            tz: tz_or_utc(advertiser_id, &tz),
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
                        tz: tz_or_utc(id, &tz),
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

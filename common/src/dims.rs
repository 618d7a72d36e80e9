//! The DIM layer as the pipelines see it: ad, advertiser and product rows (MySQL
//! tables `ads`, `advertisers`, `products`; schema in `deploy/sql/mysql.sql`; fetched
//! by `platform::dims`).
//!
//! The speed layer puts these behind bounded TTL caches; the batch layer loads the
//! (small) ad table once per run.

use rustc_hash::FxHashMap as HashMap;

use chrono_tz::Tz;

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

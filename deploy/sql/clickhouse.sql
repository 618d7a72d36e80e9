-- ClickHouse schema of the BI path (ClickHouse 18.16 and later).
-- Applied by deploy/local/up.sh (clickhouse-client --database admetrics --multiquery)
-- and by the speed layer at start; every statement is idempotent and unqualified,
-- so it lands in the session's database. Statements end with `;` at line end.

-- One enriched row per event. Replays and re-processing insert the same event_id
-- again; ReplacingMergeTree keeps the newest `version` per sorting key when parts
-- merge, so exact counts read the table with FINAL (or argMax by version).
-- The sorting key holds only what is fixed for an event (advertiser, day, id):
-- an effect's ad comes from attribution and must not split its duplicates.
CREATE TABLE IF NOT EXISTS events (
    event_id      String,
    kind          String,
    ts_ms         Int64,
    event_time    DateTime,
    day           Date,
    user_id       String,
    advertiser_id Int64,
    campaign_id   Int64,
    ad_id         Int64,
    product_id    Int64,
    category_id   Int64,
    cost_micros   Int64,
    gmv_micros    Int64,
    attribution   String,
    click_ts_ms   Int64,
    kafka_partition Int32,
    kafka_offset  Int64,
    version       UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY day
ORDER BY (advertiser_id, day, event_id);

-- Daily per-ad totals, kept by a materialized view on insert (SummingMergeTree adds
-- rows with equal keys when parts merge; read with sum() ... GROUP BY).
CREATE TABLE IF NOT EXISTS daily_ad (
    day           Date,
    advertiser_id Int64,
    campaign_id   Int64,
    ad_id         Int64,
    exposures     UInt64,
    clicks        UInt64,
    cost_micros   Int64,
    consultations_direct      UInt64,
    consultations_indirect    UInt64,
    consultations_unattributed UInt64,
    private_messages_direct   UInt64,
    private_messages_indirect UInt64,
    private_messages_unattributed UInt64,
    orders_direct             UInt64,
    orders_indirect           UInt64,
    orders_unattributed       UInt64,
    payments_direct           UInt64,
    payments_indirect         UInt64,
    payments_unattributed     UInt64,
    gmv_micros_direct         Int64,
    gmv_micros_indirect       Int64,
    gmv_micros_unattributed   Int64
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (advertiser_id, day, campaign_id, ad_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS daily_ad_mv TO daily_ad AS
SELECT
    day, advertiser_id, campaign_id, ad_id,
    countIf(kind = 'exposure') AS exposures,
    countIf(kind = 'click') AS clicks,
    sum(cost_micros) AS cost_micros,
    countIf(kind = 'consultation' AND attribution = 'direct') AS consultations_direct,
    countIf(kind = 'consultation' AND attribution = 'indirect') AS consultations_indirect,
    countIf(kind = 'consultation' AND attribution = 'none') AS consultations_unattributed,
    countIf(kind = 'private_message' AND attribution = 'direct') AS private_messages_direct,
    countIf(kind = 'private_message' AND attribution = 'indirect') AS private_messages_indirect,
    countIf(kind = 'private_message' AND attribution = 'none') AS private_messages_unattributed,
    countIf(kind = 'order' AND attribution = 'direct') AS orders_direct,
    countIf(kind = 'order' AND attribution = 'indirect') AS orders_indirect,
    countIf(kind = 'order' AND attribution = 'none') AS orders_unattributed,
    countIf(kind = 'payment' AND attribution = 'direct') AS payments_direct,
    countIf(kind = 'payment' AND attribution = 'indirect') AS payments_indirect,
    countIf(kind = 'payment' AND attribution = 'none') AS payments_unattributed,
    sumIf(gmv_micros, attribution = 'direct') AS gmv_micros_direct,
    sumIf(gmv_micros, attribution = 'indirect') AS gmv_micros_indirect,
    sumIf(gmv_micros, attribution = 'none') AS gmv_micros_unattributed
FROM events
GROUP BY day, advertiser_id, campaign_id, ad_id;

-- Daily per-ad distinct users (exposures and clicks), as mergeable uniq states.
CREATE TABLE IF NOT EXISTS daily_ad_uv (
    day           Date,
    advertiser_id Int64,
    ad_id         Int64,
    uv            AggregateFunction(uniq, String)
) ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (advertiser_id, day, ad_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS daily_ad_uv_mv TO daily_ad_uv AS
SELECT day, advertiser_id, ad_id, uniqState(user_id) AS uv
FROM events
WHERE kind IN ('exposure', 'click')
GROUP BY day, advertiser_id, ad_id;

-- MySQL / MariaDB schema of the ad-metrics platform.
-- Applied idempotently by every binary at start (common::db::migrate) and by
-- deploy/local/up.sh; statements are separated by lines holding only `;`.
-- All times are UTC; money is integer micros; days are the advertiser's local day.

-- DIM layer -------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS advertisers (
  advertiser_id BIGINT NOT NULL PRIMARY KEY,
  name          VARCHAR(255) NOT NULL,
  time_zone     VARCHAR(64)  NOT NULL DEFAULT 'UTC' COMMENT 'IANA zone; the advertiser''s day',
  final_through DATE NULL COMMENT 'latest day whose batch results are final for this advertiser',
  updated_at    TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3)
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS campaigns (
  campaign_id   BIGINT NOT NULL PRIMARY KEY,
  advertiser_id BIGINT NOT NULL,
  name          VARCHAR(255) NOT NULL,
  KEY campaigns_by_advertiser (advertiser_id)
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS categories (
  category_id BIGINT NOT NULL PRIMARY KEY,
  name        VARCHAR(255) NOT NULL
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS products (
  product_id    BIGINT NOT NULL PRIMARY KEY,
  advertiser_id BIGINT NOT NULL,
  category_id   BIGINT NOT NULL,
  name          VARCHAR(255) NOT NULL
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS ads (
  ad_id         BIGINT NOT NULL PRIMARY KEY,
  campaign_id   BIGINT NOT NULL,
  advertiser_id BIGINT NOT NULL,
  product_id    BIGINT NOT NULL,
  cpc_micros    BIGINT NOT NULL COMMENT 'bid per click, micros',
  name          VARCHAR(255) NOT NULL,
  KEY ads_by_advertiser (advertiser_id)
) ENGINE=InnoDB
;

-- Batch results ----------------------------------------------------------------

CREATE TABLE IF NOT EXISTS daily_ad_metrics (
  day           DATE   NOT NULL COMMENT 'advertiser-local day',
  advertiser_id BIGINT NOT NULL,
  ad_id         BIGINT NOT NULL COMMENT '0 = effects of the advertiser that no click earned',
  campaign_id   BIGINT NOT NULL COMMENT '0 for ad 0',
  exposures     BIGINT NOT NULL DEFAULT 0,
  clicks        BIGINT NOT NULL DEFAULT 0,
  cost_micros   BIGINT NOT NULL DEFAULT 0,
  uv            BIGINT NOT NULL DEFAULT 0 COMMENT 'exact distinct users who saw or clicked the ad that day',
  consultations_direct          BIGINT NOT NULL DEFAULT 0,
  consultations_indirect        BIGINT NOT NULL DEFAULT 0,
  consultations_unattributed    BIGINT NOT NULL DEFAULT 0,
  private_messages_direct       BIGINT NOT NULL DEFAULT 0,
  private_messages_indirect     BIGINT NOT NULL DEFAULT 0,
  private_messages_unattributed BIGINT NOT NULL DEFAULT 0,
  orders_direct                 BIGINT NOT NULL DEFAULT 0,
  orders_indirect               BIGINT NOT NULL DEFAULT 0,
  orders_unattributed           BIGINT NOT NULL DEFAULT 0,
  payments_direct               BIGINT NOT NULL DEFAULT 0,
  payments_indirect             BIGINT NOT NULL DEFAULT 0,
  payments_unattributed         BIGINT NOT NULL DEFAULT 0,
  gmv_micros_direct             BIGINT NOT NULL DEFAULT 0,
  gmv_micros_indirect           BIGINT NOT NULL DEFAULT 0,
  gmv_micros_unattributed       BIGINT NOT NULL DEFAULT 0,
  computed_at   TIMESTAMP(3) NOT NULL,
  PRIMARY KEY (day, advertiser_id, ad_id),
  KEY daily_ad_metrics_by_advertiser (advertiser_id, day)
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS daily_uv (
  day           DATE   NOT NULL,
  advertiser_id BIGINT NOT NULL,
  campaign_id   BIGINT NOT NULL COMMENT '0 = the whole advertiser',
  uv            BIGINT NOT NULL,
  PRIMARY KEY (day, advertiser_id, campaign_id)
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS batch_runs (
  day           DATE NOT NULL PRIMARY KEY,
  finality      ENUM('none','final','revised') NOT NULL DEFAULT 'none'
                COMMENT 'summary of the day: final once a zone of it is final, revised once an advertiser-day of it was revised; per zone: day_finality',
  run_status    ENUM('running','succeeded','failed') NOT NULL,
  attempts      INT NOT NULL DEFAULT 0,
  started_at    TIMESTAMP(3) NULL,
  finished_at   TIMESTAMP(3) NULL,
  first_final_at TIMESTAMP(3) NULL,
  input_rows    BIGINT NOT NULL DEFAULT 0,
  output_rows   BIGINT NOT NULL DEFAULT 0,
  archive_rows  BIGINT NOT NULL DEFAULT 0 COMMENT 'rows of the day in the archive when it was computed',
  code_version  VARCHAR(64) NOT NULL DEFAULT '',
  error         TEXT NULL
) ENGINE=InnoDB
;

-- Finality (batch_layer::finality): a day turns final per time zone, once it has
-- ended in the zone plus `batch.late_allowance` and the archive holds every event up
-- to that instant. The serving layer shows an advertiser-day from daily_ad_metrics
-- exactly when (day, the advertiser's time_zone) is `final` here.

CREATE TABLE IF NOT EXISTS day_finality (
  day           DATE NOT NULL COMMENT 'advertiser-local day',
  time_zone     VARCHAR(64) NOT NULL COMMENT 'IANA zone: this row covers the advertisers of that zone',
  status        ENUM('waiting','final') NOT NULL
                COMMENT 'waiting: closed by the clock, but the archive is not complete through closes_at (see reason)',
  closes_at     TIMESTAMP(3) NOT NULL COMMENT 'end of the day in the zone + batch.late_allowance, UTC',
  reason        TEXT NULL COMMENT 'while waiting: the partitions behind and how far they are archived',
  final_at      TIMESTAMP(3) NULL COMMENT 'when the zone-day first turned final',
  computed_at   TIMESTAMP(3) NULL COMMENT 'when the run that last wrote its rows finished (the version the serving layer caches by)',
  revised_at    TIMESTAMP(3) NULL COMMENT 'last run that changed a total of one of its advertisers (day_revisions)',
  checked_at    TIMESTAMP(3) NOT NULL COMMENT 'last time a run looked at this zone-day',
  PRIMARY KEY (day, time_zone)
) ENGINE=InnoDB
;
-- One row per revision of an advertiser-day: a run of a final day that changed any of
-- its totals (late data). Totals are JSON objects {"<measure>": n, ..., "uv": n}.
CREATE TABLE IF NOT EXISTS day_revisions (
  day             DATE   NOT NULL,
  advertiser_id   BIGINT NOT NULL,
  revision        INT    NOT NULL COMMENT '1 = the first revision after the day turned final',
  revised_at      TIMESTAMP(3) NOT NULL,
  previous_totals JSON NOT NULL COMMENT 'the advertiser-day totals before this revision',
  new_totals      JSON NOT NULL COMMENT 'the totals this revision wrote',
  PRIMARY KEY (day, advertiser_id, revision)
) ENGINE=InnoDB
;
-- Speed (provisional, Redis) minus batch (final) of every advertiser-day, recorded when
-- the day turns final or is revised; one row per measure (`uv`: distinct users, where
-- the speed layer's HyperLogLog may differ by its ~1 % error). A count or sum that is
-- not 0 is lost or doubled data somewhere.
CREATE TABLE IF NOT EXISTS reconciliation (
  day           DATE   NOT NULL,
  advertiser_id BIGINT NOT NULL,
  measure       VARCHAR(64) NOT NULL COMMENT 'a column of daily_ad_metrics, or uv (the advertiser''s distinct users)',
  speed         BIGINT NOT NULL COMMENT 'the speed layer''s number (Redis) when checked',
  batch         BIGINT NOT NULL COMMENT 'the final number (daily_ad_metrics / daily_uv)',
  diff          BIGINT NOT NULL COMMENT 'speed - batch',
  checked_at    TIMESTAMP(3) NOT NULL,
  PRIMARY KEY (day, advertiser_id, measure),
  KEY reconciliation_by_advertiser (advertiser_id, day)
) ENGINE=InnoDB
;

-- Split runs (`batch-layer recompute --shard i/N`): each worker writes its part of a
-- day here (its users only); the part that completes the set sums the parts into
-- daily_ad_metrics / daily_uv in the same transaction (users are disjoint across
-- parts, so sums and UV sums are exact). A single worker is part 0 of 1. Parts are
-- kept so that one worker can redo its part (late data) without the others.

CREATE TABLE IF NOT EXISTS batch_run_parts (
  day           DATE NOT NULL,
  shard         INT  NOT NULL COMMENT 'i of i/N: Kafka partitions p with p mod N = i',
  shards        INT  NOT NULL COMMENT 'N: the split this part belongs to',
  input_rows    BIGINT NOT NULL,
  output_rows   BIGINT NOT NULL,
  archive_rows  BIGINT NOT NULL COMMENT 'rows of this part''s input files when computed',
  finished_at   TIMESTAMP(3) NOT NULL,
  complete_through TIMESTAMP(3) NULL COMMENT 'the archive of this part''s partitions was complete through this instant when it was read',
  PRIMARY KEY (day, shard)
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS daily_ad_metrics_parts (
  day           DATE   NOT NULL,
  shard         INT    NOT NULL,
  advertiser_id BIGINT NOT NULL,
  ad_id         BIGINT NOT NULL,
  campaign_id   BIGINT NOT NULL,
  uv            BIGINT NOT NULL DEFAULT 0,
  exposures                     BIGINT NOT NULL DEFAULT 0,
  clicks                        BIGINT NOT NULL DEFAULT 0,
  cost_micros                   BIGINT NOT NULL DEFAULT 0,
  consultations_direct          BIGINT NOT NULL DEFAULT 0,
  consultations_indirect        BIGINT NOT NULL DEFAULT 0,
  consultations_unattributed    BIGINT NOT NULL DEFAULT 0,
  private_messages_direct       BIGINT NOT NULL DEFAULT 0,
  private_messages_indirect     BIGINT NOT NULL DEFAULT 0,
  private_messages_unattributed BIGINT NOT NULL DEFAULT 0,
  orders_direct                 BIGINT NOT NULL DEFAULT 0,
  orders_indirect               BIGINT NOT NULL DEFAULT 0,
  orders_unattributed           BIGINT NOT NULL DEFAULT 0,
  payments_direct               BIGINT NOT NULL DEFAULT 0,
  payments_indirect             BIGINT NOT NULL DEFAULT 0,
  payments_unattributed         BIGINT NOT NULL DEFAULT 0,
  gmv_micros_direct             BIGINT NOT NULL DEFAULT 0,
  gmv_micros_indirect           BIGINT NOT NULL DEFAULT 0,
  gmv_micros_unattributed       BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (day, shard, advertiser_id, ad_id)
) ENGINE=InnoDB
;
CREATE TABLE IF NOT EXISTS daily_uv_parts (
  day           DATE   NOT NULL,
  shard         INT    NOT NULL,
  advertiser_id BIGINT NOT NULL,
  campaign_id   BIGINT NOT NULL,
  uv            BIGINT NOT NULL,
  PRIMARY KEY (day, shard, advertiser_id, campaign_id)
) ENGINE=InnoDB
;

-- Serving ----------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS api_keys (
  key_id        VARCHAR(32) NOT NULL PRIMARY KEY COMMENT 'public part of the key',
  key_hash      CHAR(64)    NOT NULL COMMENT 'SHA-256 hex of the whole key',
  advertiser_id BIGINT NULL COMMENT 'NULL for the internal role',
  role          ENUM('advertiser','internal') NOT NULL,
  label         VARCHAR(255) NOT NULL DEFAULT '',
  created_at    TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  revoked_at    TIMESTAMP(3) NULL
) ENGINE=InnoDB
;

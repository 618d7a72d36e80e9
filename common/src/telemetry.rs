//! Metric names: one place for every metric name (prefixed `admetrics_`, counters end
//! in `_total`, units in the name: Vector's instrumentation spec). The tracing
//! subscriber and the Prometheus exporter are set up by `platform::telemetry`.
//!
//! Ids (`ad_id`, `user_id`, API keys) are never labels; they go into spans.

/// Events read from Kafka. Labels: `topic`.
pub const EVENTS_CONSUMED: &str = "admetrics_events_consumed_total";
/// Events that passed validation and were aggregated. Labels: `topic`.
pub const EVENTS_PROCESSED: &str = "admetrics_events_processed_total";
/// Messages sent to the dead-letter topic. Labels: `topic`, `reason`.
pub const EVENTS_DEAD_LETTERED: &str = "admetrics_events_dead_lettered_total";
/// Events dropped as duplicates of an `event_id` already seen.
pub const DUPLICATES_DROPPED: &str = "admetrics_duplicates_dropped_total";
/// Effects attributed. Labels: `attribution` (`direct`, `indirect`, `none`).
pub const EFFECTS_ATTRIBUTED: &str = "admetrics_effects_attributed_total";
/// Effects currently waiting for their click (gauge).
pub const EFFECTS_PENDING: &str = "admetrics_effects_pending";
/// Dimension cache lookups. Labels: `table`, `result` (`hit`, `miss`).
pub const DIM_CACHE_LOOKUPS: &str = "admetrics_dimension_cache_lookups_total";
/// Dimension rows fetched from MySQL.
pub const DIM_MYSQL_QUERIES: &str = "admetrics_dimension_mysql_queries_total";
/// Duration of one window flush (Redis transaction), seconds.
pub const WINDOW_FLUSH_DURATION: &str = "admetrics_window_flush_duration_seconds";
/// Windows closed and written.
pub const WINDOWS_CLOSED: &str = "admetrics_windows_closed_total";
/// Events that arrived after their window closed (still counted). Labels: `topic`.
pub const LATE_EVENTS: &str = "admetrics_late_events_total";
/// Wall clock minus watermark, seconds (gauge). Labels: `partition`.
pub const WATERMARK_LAG: &str = "admetrics_watermark_lag_seconds";
/// Consumer lag in messages (gauge). Labels: `topic`, `partition`.
pub const CONSUMER_LAG: &str = "admetrics_consumer_lag_messages";
/// Clicks held in attribution state (gauge).
pub const CLICKS_TRACKED: &str = "admetrics_clicks_tracked";
/// Flushes refused because another instance owns the partition now.
pub const FLUSHES_FENCED: &str = "admetrics_flushes_fenced_total";
/// Rows written to ClickHouse.
pub const CLICKHOUSE_ROWS_WRITTEN: &str = "admetrics_clickhouse_rows_written_total";
/// Rows spilled to disk after ClickHouse retries were spent.
pub const CLICKHOUSE_ROWS_SPILLED: &str = "admetrics_clickhouse_rows_spilled_total";
/// ClickHouse insert attempts that failed.
pub const CLICKHOUSE_INSERT_ERRORS: &str = "admetrics_clickhouse_insert_errors_total";
/// Rows archived to Parquet. Labels: `topic`.
pub const ARCHIVE_ROWS_WRITTEN: &str = "admetrics_archive_rows_written_total";
/// Parquet files uploaded.
pub const ARCHIVE_FILES_WRITTEN: &str = "admetrics_archive_files_written_total";
/// HTTP requests. Labels: `route`, `status`.
pub const HTTP_REQUESTS: &str = "admetrics_http_requests_total";
/// HTTP request duration, seconds. Labels: `route`.
pub const HTTP_REQUEST_DURATION: &str = "admetrics_http_request_duration_seconds";
/// Batch runs found `running` with no process holding their lease (killed, out of
/// memory), recorded failed and retried by the scheduler.
pub const BATCH_RUNS_ABANDONED: &str = "admetrics_batch_runs_abandoned_total";

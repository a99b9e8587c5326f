-- v6: usage_summary answers stats exactly (cancelled requests and requests with a duration are
-- counted too), raw rows the summary does not count are found by index, and the day zone the
-- summary rows were counted in is recorded (migrate.rs rebuilds the summary in the configured
-- zone after this, and again whenever the zone changes). The two columns are added by
-- migrate.rs, only when missing.
CREATE INDEX IF NOT EXISTS idx_request_logs_summarized_start_time
    ON request_logs (summarized, start_time);
CREATE TABLE IF NOT EXISTS usage_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- The requests of a day by inbound API key (`""` without one): `by_api_key` stats for whole
-- days. Filled by the rebuild that follows this version.
CREATE TABLE IF NOT EXISTS usage_key_summary (
    date TEXT NOT NULL,
    api_key_name TEXT NOT NULL,
    request_count INTEGER NOT NULL DEFAULT 0,
    success_count INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0,
    cancelled_count INTEGER NOT NULL DEFAULT 0,
    duration_count INTEGER NOT NULL DEFAULT 0,
    total_duration_ms INTEGER NOT NULL DEFAULT 0,
    total_input_tokens INTEGER NOT NULL DEFAULT 0,
    total_output_tokens INTEGER NOT NULL DEFAULT 0,
    total_cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    total_cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    total_cost_nano_usd INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT,
    PRIMARY KEY (date, api_key_name)
);

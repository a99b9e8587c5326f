-- v7: the summaries by local hour (`hour_start`: the Unix seconds of its first instant, in the zone of
-- `usage_summary`'s days): stats read the whole hours of the partial days at a range's edges
-- from here instead of raw rows. Kept in the same write transaction as `usage_summary`; filled
-- by the rebuild that follows this version (forgetting the recorded zone makes it run).
CREATE TABLE IF NOT EXISTS usage_hourly_summary (
    hour_start INTEGER NOT NULL,
    model_name TEXT NOT NULL,
    endpoint_name TEXT NOT NULL,
    group_name TEXT NOT NULL,
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
    PRIMARY KEY (hour_start, model_name, endpoint_name, group_name)
);
CREATE TABLE IF NOT EXISTS usage_hourly_key_summary (
    hour_start INTEGER NOT NULL,
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
    PRIMARY KEY (hour_start, api_key_name)
);
DELETE FROM usage_settings WHERE name = 'summary_day_zone';
-- The p95 reads the latest durations of a range: (start_time, duration_ms) answers it from the
-- index alone. It replaces the start_time index (same prefix for every range query; one index
-- per row written, as before), under either name it has (this port's v1, the Go schema).
CREATE INDEX IF NOT EXISTS idx_request_logs_start_time_duration
    ON request_logs (start_time, duration_ms);
DROP INDEX IF EXISTS idx_request_logs_start_time;
DROP INDEX IF EXISTS idx_start_time;

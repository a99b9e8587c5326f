-- v7: the summaries by local hour (`hour_start`: the Unix seconds of its first instant, in the
-- zone of `usage_summary`'s days): stats read the whole hours of the partial days at a range's
-- edges from here instead of raw rows. Kept in the same write transaction as `usage_summary`;
-- filled by the rebuild that follows this version (forgetting the recorded zone makes it run).
-- The unique key (8 + 3 x 1020 bytes) fits InnoDB's 3072-byte limit. Idempotent statements.
CREATE TABLE IF NOT EXISTS usage_hourly_summary (
    hour_start BIGINT NOT NULL,
    model_name VARCHAR(255) NOT NULL,
    endpoint_name VARCHAR(255) NOT NULL,
    group_name VARCHAR(255) NOT NULL,
    request_count BIGINT NOT NULL DEFAULT 0,
    success_count BIGINT NOT NULL DEFAULT 0,
    error_count BIGINT NOT NULL DEFAULT 0,
    cancelled_count BIGINT NOT NULL DEFAULT 0,
    duration_count BIGINT NOT NULL DEFAULT 0,
    total_duration_ms BIGINT NOT NULL DEFAULT 0,
    total_input_tokens BIGINT NOT NULL DEFAULT 0,
    total_output_tokens BIGINT NOT NULL DEFAULT 0,
    total_cache_creation_tokens BIGINT NOT NULL DEFAULT 0,
    total_cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    total_cost_nano_usd BIGINT NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NULL,
    PRIMARY KEY (hour_start, model_name, endpoint_name, group_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS usage_hourly_key_summary (
    hour_start BIGINT NOT NULL,
    api_key_name VARCHAR(255) NOT NULL,
    request_count BIGINT NOT NULL DEFAULT 0,
    success_count BIGINT NOT NULL DEFAULT 0,
    error_count BIGINT NOT NULL DEFAULT 0,
    cancelled_count BIGINT NOT NULL DEFAULT 0,
    duration_count BIGINT NOT NULL DEFAULT 0,
    total_duration_ms BIGINT NOT NULL DEFAULT 0,
    total_input_tokens BIGINT NOT NULL DEFAULT 0,
    total_output_tokens BIGINT NOT NULL DEFAULT 0,
    total_cache_creation_tokens BIGINT NOT NULL DEFAULT 0,
    total_cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    total_cost_nano_usd BIGINT NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NULL,
    PRIMARY KEY (hour_start, api_key_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
DELETE FROM usage_settings WHERE name = 'summary_day_zone';
-- The p95 reads the latest durations of a range: (start_time, duration_ms) answers it from the
-- index alone, without a primary-key lookup per row. It replaces the Go schema's start_time
-- index (same prefix for every range query; one index per row written, as before).
CREATE INDEX idx_request_logs_start_time_duration ON request_logs (start_time, duration_ms);
DROP INDEX idx_start_time ON request_logs;

-- v6: usage_summary answers stats exactly (cancelled requests and requests with a duration are
-- counted too), raw rows the summary does not count are found by index, and the day zone the
-- summary rows were counted in is recorded (migrate.rs rebuilds the summary in the configured
-- zone after this, and again whenever the zone changes). Idempotent statements.
ALTER TABLE usage_summary ADD COLUMN cancelled_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_summary ADD COLUMN duration_count BIGINT NOT NULL DEFAULT 0;
CREATE INDEX idx_request_logs_summarized_start_time ON request_logs (summarized, start_time);
CREATE TABLE IF NOT EXISTS usage_settings (
    name VARCHAR(100) PRIMARY KEY,
    value VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
-- The requests of a day by inbound API key (`''` without one): `by_api_key` stats for whole
-- days. Filled by the rebuild that follows this version.
CREATE TABLE IF NOT EXISTS usage_key_summary (
    date DATE NOT NULL,
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
    PRIMARY KEY (date, api_key_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

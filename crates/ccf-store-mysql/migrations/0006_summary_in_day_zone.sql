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

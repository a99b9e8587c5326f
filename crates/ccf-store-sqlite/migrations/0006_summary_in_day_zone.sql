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

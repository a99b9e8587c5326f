-- Version 2: columns this port adds. Existing rows keep their values; the exact integer cost
-- columns are filled from the legacy USD columns and rows with a terminal status become final.
-- The Go forwarder's triggers, whatever their names, are dropped before this runs and replaced by
-- the UTC ones of triggers.sql after it.

ALTER TABLE request_logs ADD COLUMN cache_creation_5m_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN cache_creation_1h_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN time_to_first_byte_ms INTEGER;
ALTER TABLE request_logs ADD COLUMN attempts_json TEXT;
ALTER TABLE request_logs ADD COLUMN model_mismatch BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN partial BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN instance_id TEXT;
ALTER TABLE request_logs ADD COLUMN is_final BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN summarized BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN input_cost_nano_usd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN output_cost_nano_usd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN cache_creation_cost_nano_usd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN cache_read_cost_nano_usd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN total_cost_nano_usd INTEGER NOT NULL DEFAULT 0;

UPDATE request_logs SET
    is_final = CASE WHEN status IN ('completed', 'cancelled', 'failed', 'error', 'timeout',
        'auth_error', 'rate_limited', 'server_error', 'network_error', 'stream_error')
        THEN 1 ELSE 0 END,
    input_cost_nano_usd = CAST(ROUND(COALESCE(input_cost_usd, 0) * 1000000000) AS INTEGER),
    output_cost_nano_usd = CAST(ROUND(COALESCE(output_cost_usd, 0) * 1000000000) AS INTEGER),
    cache_creation_cost_nano_usd = CAST(ROUND(COALESCE(cache_creation_cost_usd, 0) * 1000000000) AS INTEGER),
    cache_read_cost_nano_usd = CAST(ROUND(COALESCE(cache_read_cost_usd, 0) * 1000000000) AS INTEGER),
    total_cost_nano_usd = CAST(ROUND(COALESCE(total_cost_usd, 0) * 1000000000) AS INTEGER);

CREATE INDEX IF NOT EXISTS idx_request_logs_instance_id ON request_logs(instance_id);
-- request_id is UNIQUE, which already indexes it: the Go schema's extra index only slows writes.
DROP INDEX IF EXISTS idx_request_logs_request_id;
DROP INDEX IF EXISTS idx_request_id;

ALTER TABLE usage_summary ADD COLUMN total_cost_nano_usd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_summary ADD COLUMN total_duration_ms INTEGER NOT NULL DEFAULT 0;

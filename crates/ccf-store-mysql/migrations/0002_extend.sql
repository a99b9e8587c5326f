-- Version 2: columns this port adds. Each statement is applied on its own (MySQL DDL commits
-- implicitly); a column or index that already exists is skipped, so a half-applied run resumes.
-- The Go schema's idx_request_id duplicates the UNIQUE key on request_id and only slows writes.
-- usage_summary's cost column is widened so that a day's total cannot overflow DECIMAL(10,6).

ALTER TABLE request_logs ADD COLUMN cache_creation_5m_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN cache_creation_1h_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN time_to_first_byte_ms BIGINT NULL;
ALTER TABLE request_logs ADD COLUMN attempts_json MEDIUMTEXT NULL;
ALTER TABLE request_logs ADD COLUMN model_mismatch BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE request_logs ADD COLUMN partial BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE request_logs ADD COLUMN instance_id VARCHAR(255) NULL;
ALTER TABLE request_logs ADD COLUMN is_final BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE request_logs ADD COLUMN summarized BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE request_logs ADD COLUMN input_cost_nano_usd BIGINT NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN output_cost_nano_usd BIGINT NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN cache_creation_cost_nano_usd BIGINT NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN cache_read_cost_nano_usd BIGINT NOT NULL DEFAULT 0;
ALTER TABLE request_logs ADD COLUMN total_cost_nano_usd BIGINT NOT NULL DEFAULT 0;
CREATE INDEX idx_instance_id ON request_logs (instance_id);
DROP INDEX idx_request_id ON request_logs;
ALTER TABLE usage_summary ADD COLUMN total_cost_nano_usd BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_summary ADD COLUMN total_duration_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_summary MODIFY COLUMN total_cost_usd DECIMAL(20,9) DEFAULT 0;
-- `updated_at = updated_at`: without it ON UPDATE CURRENT_TIMESTAMP would stamp every legacy
-- row with the migration's time (which v3 would then shift as if it were a legacy local time).
UPDATE request_logs SET
    updated_at = updated_at,
    is_final = CASE WHEN status IN ('completed', 'cancelled', 'failed', 'error', 'timeout',
        'auth_error', 'rate_limited', 'server_error', 'network_error', 'stream_error')
        THEN TRUE ELSE FALSE END,
    input_cost_nano_usd = CAST(COALESCE(input_cost_usd, 0) * 1000000000 AS SIGNED),
    output_cost_nano_usd = CAST(COALESCE(output_cost_usd, 0) * 1000000000 AS SIGNED),
    cache_creation_cost_nano_usd = CAST(COALESCE(cache_creation_cost_usd, 0) * 1000000000 AS SIGNED),
    cache_read_cost_nano_usd = CAST(COALESCE(cache_read_cost_usd, 0) * 1000000000 AS SIGNED),
    total_cost_nano_usd = CAST(COALESCE(total_cost_usd, 0) * 1000000000 AS SIGNED);

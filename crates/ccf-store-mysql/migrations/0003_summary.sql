-- Version 3 (after the legacy local times are rewritten in UTC by code, in the same transaction):
-- usage_summary rebuilt from every final row, which are then marked as counted.

DELETE FROM usage_summary;
INSERT INTO usage_summary (
    date, model_name, endpoint_name, group_name,
    request_count, success_count, error_count,
    total_input_tokens, total_output_tokens, total_cache_creation_tokens, total_cache_read_tokens,
    total_cost_usd, total_cost_nano_usd, total_duration_ms, avg_duration_ms
)
SELECT
    DATE(start_time),
    COALESCE(NULLIF(model_name, ''), 'unknown'),
    COALESCE(NULLIF(endpoint_name, ''), 'unknown'),
    COALESCE(group_name, ''),
    COUNT(*),
    SUM(status = 'completed'),
    SUM(status IN ('failed', 'error', 'timeout', 'auth_error', 'rate_limited', 'server_error',
        'network_error', 'stream_error')),
    SUM(COALESCE(input_tokens, 0)),
    SUM(COALESCE(output_tokens, 0)),
    SUM(COALESCE(cache_creation_tokens, 0)),
    SUM(COALESCE(cache_read_tokens, 0)),
    SUM(total_cost_nano_usd) / 1000000000,
    SUM(total_cost_nano_usd),
    SUM(COALESCE(duration_ms, 0)),
    AVG(COALESCE(duration_ms, 0))
FROM request_logs
WHERE is_final = TRUE
GROUP BY 1, 2, 3, 4;
-- `updated_at = updated_at` keeps ON UPDATE CURRENT_TIMESTAMP from restamping every row.
UPDATE request_logs SET summarized = is_final, updated_at = updated_at;

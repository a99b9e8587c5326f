-- v10 partial_key_indexes (issue 19: "usage on costs little"): two more b-trees a request row
-- no longer enters. `instance_id` is only ever a filter of the request list, which pages by
-- time through (start_time, duration_ms) and filters the page, as migration 9 reasoned for
-- the model, endpoint and group: its index is dropped (every row this port writes has an
-- instance id, so a partial index would hold every row). `api_key_name` is NULL unless inbound
-- keys are named: its index keeps only the rows with a key; `api_key_name = ?` implies
-- IS NOT NULL, so the partial index still serves that filter.
DROP INDEX IF EXISTS idx_request_logs_instance_id;
DROP INDEX IF EXISTS idx_request_logs_api_key_name;
CREATE INDEX IF NOT EXISTS idx_request_logs_api_key_name_set
    ON request_logs (api_key_name) WHERE api_key_name IS NOT NULL;

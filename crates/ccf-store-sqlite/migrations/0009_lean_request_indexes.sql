-- v9 lean_request_indexes (issue 19: "usage on costs little"): every request row was inserted
-- into ten b-trees besides the table. Four of them indexed low-cardinality columns (status,
-- model, endpoint, group) that no query of this port looks rows up by: the request list pages
-- by time through (start_time, duration_ms) and filters the page, and every aggregate is served
-- from the summaries. They are dropped under both names they have (this port's v1 and the Go
-- schema's). The Go forwarder recreates them if it is run on this file again.
DROP INDEX IF EXISTS idx_request_logs_status;
DROP INDEX IF EXISTS idx_status;
DROP INDEX IF EXISTS idx_request_logs_model_name;
DROP INDEX IF EXISTS idx_model_name;
DROP INDEX IF EXISTS idx_request_logs_endpoint_name;
DROP INDEX IF EXISTS idx_endpoint_name;
DROP INDEX IF EXISTS idx_request_logs_group_name;
DROP INDEX IF EXISTS idx_group_name;
-- A failure reason is set on a few rows only: the index holds those rows and a successful
-- request (NULL) is not inserted into it. `failure_reason = ?` implies IS NOT NULL, so the
-- partial index still serves that filter.
DROP INDEX IF EXISTS idx_request_logs_failure_reason;
DROP INDEX IF EXISTS idx_failure_reason;
CREATE INDEX IF NOT EXISTS idx_request_logs_failure_reason_set
    ON request_logs (failure_reason) WHERE failure_reason IS NOT NULL;
-- The rows the summary does not count (in flight, or never final) are found through this
-- index; a final row is written counted (summarized = 1) and never enters it.
DROP INDEX IF EXISTS idx_request_logs_summarized_start_time;
CREATE INDEX IF NOT EXISTS idx_request_logs_unsummarized_start_time
    ON request_logs (start_time) WHERE summarized = 0;

-- v8: the model the client asked for (issue 20: an endpoint's model_map may send another name;
-- `model_name` keeps the model billed, the upstream's). Rows written before it, and by the Go
-- forwarder, keep NULL.
ALTER TABLE request_logs ADD COLUMN requested_model VARCHAR(255) NULL;

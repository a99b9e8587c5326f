-- v5: per-key usage. Rows written before it, and by the Go forwarder, keep NULL.
ALTER TABLE request_logs ADD COLUMN api_key_name VARCHAR(255) NULL;
CREATE INDEX idx_request_logs_api_key_name ON request_logs (api_key_name);

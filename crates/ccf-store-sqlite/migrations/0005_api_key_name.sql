-- v5: per-key usage. The column itself is added by migrate.rs (only when missing, since SQLite
-- has no `ADD COLUMN IF NOT EXISTS`); rows written before it, and by the Go forwarder, keep NULL.
CREATE INDEX IF NOT EXISTS idx_request_logs_api_key_name ON request_logs (api_key_name);

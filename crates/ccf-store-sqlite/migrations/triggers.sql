-- updated_at triggers (UTC): refresh updated_at after an UPDATE that did not set it.
CREATE TRIGGER IF NOT EXISTS update_request_logs_updated_at
    AFTER UPDATE ON request_logs
    FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN
    UPDATE request_logs SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;

CREATE TRIGGER IF NOT EXISTS update_usage_summary_updated_at
    AFTER UPDATE ON usage_summary
    FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN
    UPDATE usage_summary SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;

-- v4: settings shared by every forwarder instance using this database (operator pauses,
-- activations, priority overrides). One row per scope; writes compare-and-set on `version`.
CREATE TABLE IF NOT EXISTS cluster_state (
    scope VARCHAR(255) NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_by VARCHAR(255) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (scope)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

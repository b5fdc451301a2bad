-- Secret values, encrypted with age to the host's X25519 identity before
-- they reach this table.
CREATE TABLE secrets (
    agent_id   TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (agent_id, key)
);

-- When the agent's task last started, and when its secrets last changed:
-- a change after the start waits for a restart.
ALTER TABLE agents ADD COLUMN started_at INTEGER;
ALTER TABLE agents ADD COLUMN secrets_changed_at INTEGER;

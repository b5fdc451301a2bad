-- Workspace backups. A row is `pending` until its object is durable and its
-- size known; only `complete` rows are listed, counted against the quota
-- and offered for download.
CREATE TABLE backups (
    id         TEXT PRIMARY KEY,
    agent_id   TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status     TEXT NOT NULL,
    -- Object key inside the storage plugin's prefix, once known.
    object     TEXT,
    file_name  TEXT,
    size       INTEGER NOT NULL DEFAULT 0,
    pinned     INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX backups_agent ON backups (agent_id, created_at);
CREATE INDEX backups_user ON backups (user_id, status);

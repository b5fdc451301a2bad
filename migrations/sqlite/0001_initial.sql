-- Times are milliseconds since the Unix epoch, UTC.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

-- Login sessions; the cookie value is never stored, only its SHA-256.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Personal access tokens; the value is stored only as its SHA-256.
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER
);
CREATE INDEX tokens_user ON tokens (user_id);

CREATE TABLE agents (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    agent_type     TEXT NOT NULL,
    region         TEXT NOT NULL,
    runtime        TEXT NOT NULL,
    port           INTEGER NOT NULL UNIQUE,
    -- ONLINE, OFFLINE, ERROR or a transitional state such as STARTING.
    status         TEXT NOT NULL,
    status_message TEXT,
    -- What the operator asked for last: running or stopped.
    desired        TEXT NOT NULL,
    -- Opaque task handle of the runtime plugin.
    handle         BLOB,
    -- Parts of the last launch plan the host needs between calls, as JSON.
    launch         TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX agents_user ON agents (user_id, created_at);

CREATE TABLE agent_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX agent_events_agent ON agent_events (agent_id, id);

-- Cron schedules of agents. `cron` is the 5-field expression as the user
-- wrote it; times are UTC.
CREATE TABLE schedules (
    id          TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    cron        TEXT NOT NULL,
    action      TEXT NOT NULL,
    enabled     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    last_run_at INTEGER,
    last_status TEXT,
    last_error  TEXT
);
CREATE INDEX schedules_agent ON schedules (agent_id, created_at);

-- One row per firing that a host claimed: the primary key makes sure that
-- hosts sharing the database run each firing once.
CREATE TABLE schedule_runs (
    schedule_id TEXT NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_at     INTEGER NOT NULL,
    host        TEXT NOT NULL,
    claimed_at  INTEGER NOT NULL,
    PRIMARY KEY (schedule_id, fire_at)
);

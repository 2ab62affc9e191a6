-- baton's job board: jobs posted and claimed under leases, and the live conductor fleet.
--
-- Keep this schema logically identical to ../postgres/20250701000000_jobs.sql.
-- Applied migrations are immutable: change the schema with a new migration, in both directories.

CREATE TABLE jobs (
    -- Posting order: claims go by priority, then by this.
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    name             TEXT    NOT NULL,
    factory          TEXT    NOT NULL,
    params           TEXT    NOT NULL,  -- JSON
    job_key          TEXT,
    priority         INTEGER NOT NULL,
    state            TEXT    NOT NULL,  -- UNCLAIMED, CLAIMED, COMPLETE, TRASHED
    owner            TEXT,              -- the conductor holding the claim
    -- The owner's liveness lock (PostgreSQL advisory lock key); always NULL on SQLite, where
    -- leases alone detect dead owners.
    owner_lock       INTEGER,
    lease_expires_at INTEGER,           -- milliseconds since the Unix epoch
    token            INTEGER NOT NULL,  -- fencing token of the latest claim (0: never claimed)
    attempts         INTEGER NOT NULL,
    outcome          TEXT,              -- JSON
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL
);

CREATE INDEX jobs_claimable ON jobs (state, priority, seq);
CREATE INDEX jobs_by_key ON jobs (job_key, seq);

CREATE TABLE conductors (
    id         TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL,
    host       TEXT    NOT NULL,
    pid        INTEGER NOT NULL,
    started_at TEXT    NOT NULL,
    last_seen  TEXT    NOT NULL
);

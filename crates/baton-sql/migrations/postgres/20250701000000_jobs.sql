-- baton's job board: jobs posted and claimed under leases, and the live conductor fleet.
--
-- Keep this schema logically identical to ../sqlite/20250701000000_jobs.sql.
-- Applied migrations are immutable: change the schema with a new migration, in both directories.

CREATE TABLE jobs (
    -- Posting order: claims go by priority, then by this.
    seq              BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               UUID        NOT NULL UNIQUE,
    name             TEXT        NOT NULL,
    factory          TEXT        NOT NULL,
    params           JSONB       NOT NULL,
    job_key          TEXT,
    priority         INTEGER     NOT NULL,
    state            TEXT        NOT NULL,  -- UNCLAIMED, CLAIMED, COMPLETE, TRASHED
    owner            UUID,                  -- the conductor holding the claim
    -- The session advisory lock its owner holds for as long as its process lives: when the
    -- lock is gone, the owner is dead and the job can be claimed at once. NULL when the owner
    -- claimed without one (then only the lease counts).
    owner_lock       BIGINT,
    lease_expires_at BIGINT,                -- milliseconds since the Unix epoch (server clock)
    token            BIGINT      NOT NULL,  -- fencing token of the latest claim (0: never)
    attempts         BIGINT      NOT NULL,
    outcome          JSONB,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX jobs_claimable ON jobs (state, priority DESC, seq);
CREATE INDEX jobs_by_key ON jobs (job_key, seq) WHERE job_key IS NOT NULL;

CREATE TABLE conductors (
    id         UUID        PRIMARY KEY,
    name       TEXT        NOT NULL,
    host       TEXT        NOT NULL,
    pid        BIGINT      NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL
);

-- Milliseconds since the Unix epoch, by the server's clock: every lease is measured by it, so
-- conductors on machines with skewed clocks still agree.
CREATE FUNCTION now_ms() RETURNS BIGINT
LANGUAGE sql VOLATILE
AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT $$;

-- Whether the session advisory lock `key` (taken with pg_advisory_lock(key)) is held by a live
-- session of this database.
CREATE FUNCTION lock_held(key BIGINT) RETURNS BOOLEAN
LANGUAGE sql VOLATILE
AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid::BIGINT = (key >> 32) AND l.objid::BIGINT = (key & 4294967295)
    )
$$;

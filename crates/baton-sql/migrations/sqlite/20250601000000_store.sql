-- baton's store: flow runs, their atoms, the append-only history of transitions, and the
-- current claim token of each job (fencing).
--
-- Keep this schema logically identical to ../postgres/20250601000000_store.sql: same tables,
-- same columns, same meaning. Types differ only where the databases do: ids are UUID text here,
-- JSON is TEXT (JSONB there), timestamps are RFC 3339 text in UTC with nanoseconds
-- (TIMESTAMPTZ there).
--
-- Applied migrations are immutable: change the schema with a new migration, in both directories.

CREATE TABLE flows (
    -- Creation order: listings are newest first by this.
    seq           INTEGER PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    intention     TEXT    NOT NULL,
    inputs        TEXT    NOT NULL,  -- JSON object
    meta          TEXT    NOT NULL,  -- JSON
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    -- baton_core::model::MODEL_VERSION of the writer; a newer one than the reader's is refused.
    model_version INTEGER NOT NULL
);

CREATE INDEX flows_by_name ON flows (name, seq);
CREATE INDEX flows_by_state ON flows (state, seq);

CREATE TABLE atoms (
    flow_id        TEXT    NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    name           TEXT    NOT NULL,
    -- Creation order within the flow (0-based): atoms load in this order.
    position       INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    intention      TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    round          INTEGER NOT NULL,
    result         TEXT,             -- JSON; NULL when there is none (JSON null is a result)
    failure        TEXT,             -- JSON
    revert_failure TEXT,             -- JSON
    retry_history  TEXT    NOT NULL, -- JSON array
    retry_at       TEXT,
    progress       REAL    NOT NULL,
    started_at     TEXT,
    finished_at    TEXT,
    model_version  INTEGER NOT NULL,
    PRIMARY KEY (flow_id, name),
    UNIQUE (flow_id, position)
);

CREATE TABLE history (
    flow_id    TEXT    NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    -- Position in the flow's history, from 1.
    seq        INTEGER NOT NULL,
    at         TEXT    NOT NULL,
    subject    TEXT    NOT NULL,  -- 'flow' or 'atom'
    atom       TEXT,              -- the atom's name when subject = 'atom'
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    attempt    INTEGER,           -- the atom's attempt after the change
    PRIMARY KEY (flow_id, seq)
);

-- The current claim token of each job; a fenced write must present it. The job board updates
-- it when it claims a job.
CREATE TABLE fences (
    job_id TEXT    PRIMARY KEY,
    token  INTEGER NOT NULL
);

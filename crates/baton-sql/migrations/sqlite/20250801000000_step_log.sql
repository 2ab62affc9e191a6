-- The step log: a commit appends one row (see baton-sql's src/steplog.rs for the design).
--
-- A step is one batch of the engine, numbered from 1 per flow (`seq`). `body` holds its
-- writes as JSON, in order: {"op":"flow","from","to","intention"} or {"op":"atom","from" (the
-- state expected), "expected_attempt", "record" (the atom's new record)}. An atom's current
-- record is its last one in the log, else its row in `atoms` (as created, or as an older baton
-- left it). The history is the `history` rows, then the log's changes numbered on from them.
--
-- The key is the compare-and-set: a writer appends the number after the last step it knows,
-- so an append made after another writer's fails. The key is an integer, `id` = the flow's
-- `flows.seq` * 2^32 + `seq`, rather than the pair (flow_id, seq): a flow's steps are then a
-- range of the table's own b-tree, in order, and a step of the newest flow is an append at the
-- b-tree's end, which SQLite does by starting a new page when the last is full. Keyed by the
-- pair, the same rows needed an index b-tree, where an append rebalances up to three pages
-- every few rows: about 2.5 pages written per commit instead of about 1.
--
-- No foreign key: checking one costs a read of `flows` per step, and flows are never deleted.
--
-- `flow_state` and `flow_intention` are set when the step moves the flow; the trigger below
-- keeps the flow's row current, so listings by state read `flows` alone.
--
-- This table is keyed differently from PostgreSQL's (../postgres/20250801000000_step_log.sql),
-- where the pair is the primary key; the columns and their meaning are the same.
--
-- Applied migrations are immutable: change this with a new migration.

CREATE TABLE steps (
    id             INTEGER PRIMARY KEY,
    flow_id        TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    at             TEXT    NOT NULL,
    flow_state     TEXT,
    flow_intention TEXT,
    body           TEXT    NOT NULL,
    model_version  INTEGER NOT NULL
);

CREATE TRIGGER steps_move_flow AFTER INSERT ON steps WHEN NEW.flow_state IS NOT NULL
BEGIN
    UPDATE flows
       SET state = NEW.flow_state, intention = NEW.flow_intention, updated_at = NEW.at
     WHERE id = NEW.flow_id;
END;

-- Commits no longer go through the view of 20250615000000_one_statement_commit.sql (its
-- triggers go with it).
DROP VIEW commit_rows;

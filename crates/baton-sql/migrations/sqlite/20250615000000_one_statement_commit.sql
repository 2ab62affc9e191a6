-- A commit in one statement. The client inserts a batch into the view `commit_rows`, one row
-- per operation; the view's triggers apply them in order, and refuse the whole statement (so
-- the whole batch: a statement outside a transaction is its own transaction) when a check
-- fails. One statement is one message to the connection's thread and needs no BEGIN and
-- COMMIT of its own, which is most of what a commit used to cost.
--
-- The client sends only batches it has checked on its own: every transition legal, and every
-- write to a flow or atom expecting what the write before it to the same one left. So the
-- database checks each flow and atom once, against what it holds: the flow row carries the
-- state the flow must be in and the state it ends in, each atom row the state and attempt the
-- atom must hold and its final record. Anything else, and every refusal, goes the careful way
-- (a transaction checking write by write), which reports exactly what was wrong.
--
-- The migration adds no table: ../postgres/20250615000000_one_statement_commit.sql does the
-- same with a function. Applied migrations are immutable: change this with a new migration.
--
-- Rows (columns unused by an operation are NULL):
--
--   op = 'flow'     first, once: flow_id, at (the new updated_at), fence_job and fence_token
--                   (NULL: not fenced), expected_state (the state the flow must be in; NULL:
--                   no flow write), state and intention (what it ends in; NULL: unchanged)
--   op = 'atom'     one per atom written: flow_id, name, expected_state, expected_attempt, and
--                   the new record: kind, state, intention, attempt, round, result, failure,
--                   revert_failure, retry_history, retry_at, progress, started_at, finished_at,
--                   model_version
--   op = 'history'  one per change, in order: flow_id, at, subject, name (the atom, NULL for
--                   the flow), expected_state (from), state (to), attempt
--
-- A refusal is `RAISE(ABORT, 'baton: batch refused')`.

CREATE VIEW commit_rows (
    op, flow_id, at, fence_job, fence_token, subject, name, expected_state, expected_attempt,
    kind, state, intention, attempt, round, result, failure, revert_failure, retry_history,
    retry_at, progress, started_at, finished_at, model_version
) AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
     WHERE 0;

CREATE TRIGGER commit_rows_flow INSTEAD OF INSERT ON commit_rows WHEN NEW.op = 'flow'
BEGIN
    SELECT RAISE(ABORT, 'baton: batch refused')
     WHERE NEW.fence_job IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM fences
                        WHERE job_id = NEW.fence_job AND token = NEW.fence_token);
    UPDATE flows
       SET state = coalesce(NEW.state, state),
           intention = coalesce(NEW.intention, intention),
           updated_at = NEW.at
     WHERE id = NEW.flow_id
       AND (NEW.expected_state IS NULL OR state = NEW.expected_state);
    SELECT RAISE(ABORT, 'baton: batch refused') WHERE changes() = 0;
END;

CREATE TRIGGER commit_rows_atom INSTEAD OF INSERT ON commit_rows WHEN NEW.op = 'atom'
BEGIN
    UPDATE atoms
       SET kind = NEW.kind, state = NEW.state, intention = NEW.intention,
           attempt = NEW.attempt, round = NEW.round, result = NEW.result,
           failure = NEW.failure, revert_failure = NEW.revert_failure,
           retry_history = NEW.retry_history, retry_at = NEW.retry_at,
           progress = NEW.progress, started_at = NEW.started_at,
           finished_at = NEW.finished_at, model_version = NEW.model_version
     WHERE flow_id = NEW.flow_id AND name = NEW.name
       AND state = NEW.expected_state AND attempt = NEW.expected_attempt;
    SELECT RAISE(ABORT, 'baton: batch refused') WHERE changes() = 0;
END;

CREATE TRIGGER commit_rows_history INSTEAD OF INSERT ON commit_rows WHEN NEW.op = 'history'
BEGIN
    INSERT INTO history (flow_id, seq, at, subject, atom, from_state, to_state, attempt)
    VALUES (NEW.flow_id,
            (SELECT coalesce(max(seq), 0) + 1 FROM history WHERE flow_id = NEW.flow_id),
            NEW.at, NEW.subject, NEW.name, NEW.expected_state, NEW.state, NEW.attempt);
END;

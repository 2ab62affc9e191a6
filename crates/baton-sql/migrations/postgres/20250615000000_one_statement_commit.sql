-- A cheaper commit. `commit_batch` reads its batch from JSON and applies it write by write,
-- two statements or more per write. `commit_plan` takes a batch the client has already
-- reduced, as arrays (no JSON to take apart): one statement for the flow, one per atom
-- written, and one for the whole history.
--
-- The client sends only batches it has checked on its own: every transition legal, and every
-- write to the flow or to an atom expecting what the write before it to the same one left.
-- So the database checks the flow and each atom once, against what it holds: the flow's
-- arguments carry the state the flow must be in and what it ends in, each atom's the state
-- and attempt it must hold and its final record. Anything else, and every refusal, goes to
-- `commit_batch`, which checks write by write and reports exactly what was wrong.
--
-- The same as ../sqlite/20250615000000_one_statement_commit.sql, which does it with a view and
-- triggers. No table changes. Applied migrations are immutable: change this with a new
-- migration.
--
-- Refuses with SQLSTATE BT000 (nothing is applied: raising aborts the statement).

-- p_flow_expected: the state the flow must be in (NULL: no flow write); p_flow_state and
-- p_flow_intention: what it ends in (NULL: unchanged). The atom arrays have one element per
-- atom written, the history arrays one per change, in order. Times come as RFC 3339 text and
-- JSON values as text, parsed here exactly as `commit_batch` parses them from its JSON.
CREATE FUNCTION commit_plan(
    p_flow              UUID,
    p_at                TEXT,
    p_fence_job         UUID,
    p_fence_token       BIGINT,
    p_flow_expected     TEXT,
    p_flow_state        TEXT,
    p_flow_intention    TEXT,
    p_model_version     BIGINT,
    p_names             TEXT[],
    p_expected_states   TEXT[],
    p_expected_attempts BIGINT[],
    p_kinds             TEXT[],
    p_states            TEXT[],
    p_intentions        TEXT[],
    p_attempts          BIGINT[],
    p_rounds            BIGINT[],
    p_results           TEXT[],
    p_failures          TEXT[],
    p_revert_failures   TEXT[],
    p_retry_histories   TEXT[],
    p_retry_ats         TEXT[],
    p_progresses        DOUBLE PRECISION[],
    p_started_ats       TEXT[],
    p_finished_ats      TEXT[],
    p_subjects          TEXT[],
    p_atoms             TEXT[],
    p_froms             TEXT[],
    p_tos               TEXT[],
    p_history_attempts  BIGINT[]
) RETURNS VOID
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_at TIMESTAMPTZ := p_at::TIMESTAMPTZ;
BEGIN
    -- As check_fence: the fence row stays share-locked until the transaction ends, so a new
    -- claim of the job waits for this write to commit.
    IF p_fence_job IS NOT NULL THEN
        PERFORM 1 FROM fences WHERE job_id = p_fence_job AND token = p_fence_token FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'batch refused' USING ERRCODE = 'BT000';
        END IF;
    END IF;

    -- Locking the flow row serialises the commits of one flow; the statements below take their
    -- snapshots after the lock, so they see what the commit before this one wrote.
    UPDATE flows
       SET state = coalesce(p_flow_state, state),
           intention = coalesce(p_flow_intention, intention),
           updated_at = v_at
     WHERE id = p_flow
       AND (p_flow_expected IS NULL OR state = p_flow_expected);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch refused' USING ERRCODE = 'BT000';
    END IF;

    -- One statement per atom: an equality on the primary key is an index lookup whatever the
    -- planner knows about the table (a join with the arrays is not, on a table it has no
    -- statistics for yet).
    FOR i IN 1 .. coalesce(cardinality(p_names), 0) LOOP
        UPDATE atoms
           SET kind = p_kinds[i], state = p_states[i], intention = p_intentions[i],
               attempt = p_attempts[i], round = p_rounds[i], result = p_results[i]::JSONB,
               failure = p_failures[i]::JSONB, revert_failure = p_revert_failures[i]::JSONB,
               retry_history = p_retry_histories[i]::JSONB,
               retry_at = p_retry_ats[i]::TIMESTAMPTZ, progress = p_progresses[i],
               started_at = p_started_ats[i]::TIMESTAMPTZ,
               finished_at = p_finished_ats[i]::TIMESTAMPTZ, model_version = p_model_version
         WHERE flow_id = p_flow AND name = p_names[i]
           AND state = p_expected_states[i] AND attempt = p_expected_attempts[i];
        IF NOT FOUND THEN
            RAISE EXCEPTION 'batch refused' USING ERRCODE = 'BT000';
        END IF;
    END LOOP;

    INSERT INTO history (flow_id, seq, at, subject, atom, from_state, to_state, attempt)
    SELECT p_flow, last.seq + c.n, v_at, c.subject, c.atom, c.from_state, c.to_state, c.attempt
      FROM unnest(p_subjects, p_atoms, p_froms, p_tos, p_history_attempts)
           WITH ORDINALITY AS c(subject, atom, from_state, to_state, attempt, n),
           (SELECT coalesce(max(seq), 0) AS seq FROM history WHERE flow_id = p_flow) AS last;
END
$$;

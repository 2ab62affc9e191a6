-- baton's store: flow runs, their atoms, the append-only history of transitions, and the
-- current claim token of each job (fencing).
--
-- Keep this schema logically identical to ../sqlite/20250601000000_store.sql: same tables,
-- same columns, same meaning.
--
-- Everything lives in the store's own schema (`baton` unless configured otherwise). The store
-- creates that schema before it runs the migrations, because sqlx creates its bookkeeping table
-- `_sqlx_migrations` before the first migration runs, and every connection of the store has its
-- `search_path` set to that schema alone; so the unqualified names below and `_sqlx_migrations`
-- land in it, and functions capture it with `SET search_path FROM CURRENT`.
--
-- Applied migrations are immutable: change the schema with a new migration, in both directories.

CREATE TABLE flows (
    -- Creation order: listings are newest first by this.
    seq           BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            UUID        NOT NULL UNIQUE,
    name          TEXT        NOT NULL,
    state         TEXT        NOT NULL,
    intention     TEXT        NOT NULL,
    inputs        JSONB       NOT NULL,
    meta          JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    -- baton_core::model::MODEL_VERSION of the writer; a newer one than the reader's is refused.
    model_version BIGINT      NOT NULL
);

CREATE INDEX flows_by_name ON flows (name, seq);
CREATE INDEX flows_by_state ON flows (state, seq);

CREATE TABLE atoms (
    flow_id        UUID             NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    name           TEXT             NOT NULL,
    -- Creation order within the flow (0-based): atoms load in this order.
    position       BIGINT           NOT NULL,
    kind           TEXT             NOT NULL,
    state          TEXT             NOT NULL,
    intention      TEXT             NOT NULL,
    attempt        BIGINT           NOT NULL,
    round          BIGINT           NOT NULL,
    result         JSONB,            -- NULL when there is none (JSON null is a result)
    failure        JSONB,
    revert_failure JSONB,
    retry_history  JSONB            NOT NULL,
    retry_at       TIMESTAMPTZ,
    progress       DOUBLE PRECISION NOT NULL,
    started_at     TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ,
    model_version  BIGINT           NOT NULL,
    PRIMARY KEY (flow_id, name),
    UNIQUE (flow_id, position)
);

CREATE TABLE history (
    flow_id    UUID        NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    -- Position in the flow's history, from 1.
    seq        BIGINT      NOT NULL,
    at         TIMESTAMPTZ NOT NULL,
    subject    TEXT        NOT NULL,  -- 'flow' or 'atom'
    atom       TEXT,                  -- the atom's name when subject = 'atom'
    from_state TEXT        NOT NULL,
    to_state   TEXT        NOT NULL,
    attempt    BIGINT,                -- the atom's attempt after the change
    PRIMARY KEY (flow_id, seq)
);

-- The current claim token of each job; a fenced write must present it. The job board updates
-- it when it claims a job.
CREATE TABLE fences (
    job_id UUID   PRIMARY KEY,
    token  BIGINT NOT NULL
);

-- The functions below do a whole store operation in one statement, so that a commit costs one
-- round trip. The client validates what it can on its own (sizes, the state machine) and sends
-- the outcome with each write (`legal`, `change`); the functions do what needs the data: the
-- fence check, the compare-and-set of every write against the state the writes before it
-- left, and the history. They refuse with these SQLSTATEs, which the client maps back to
-- baton_core::store::Error (the DETAIL is a JSON object naming the write by its index):
--
--   BT001  flow not found
--   BT002  atom not found              {"index": i}
--   BT003  fenced: stale claim token
--   BT004  conflict                    {"index": i, "state": s, "attempt": n}
--   BT005  illegal transition          {"index": i}
--   BT006  flow already exists
--
-- Raising aborts the statement, so a refused operation leaves nothing behind.

-- Refuses with BT003 unless `fence` (NULL, or {"job": uuid, "token": n}) is the job's current
-- claim. The fence row stays share-locked until the transaction ends, so a new claim of the job
-- (an UPDATE of that row) waits for the fenced write to commit: the two never interleave.
CREATE FUNCTION check_fence(fence JSONB) RETURNS VOID
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF fence IS NULL OR jsonb_typeof(fence) = 'null' THEN
        RETURN;
    END IF;
    PERFORM 1 FROM fences
     WHERE job_id = (fence->>'job')::UUID AND token = (fence->>'token')::BIGINT
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'write refused: job % is no longer claimed with token %',
            fence->>'job', fence->>'token'
            USING ERRCODE = 'BT003';
    END IF;
END
$$;

-- payload: {"flow": FlowRecord, "atoms": [atom], "fence": fence?, "model_version": n}
CREATE FUNCTION create_flow(payload JSONB) RETURNS BIGINT
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    f         JSONB  := payload->'flow';
    v_flow    UUID   := (payload->'flow'->>'id')::UUID;
    v_version BIGINT := (payload->>'model_version')::BIGINT;
BEGIN
    PERFORM check_fence(payload->'fence');
    INSERT INTO flows (id, name, state, intention, inputs, meta, created_at, updated_at,
                       model_version)
    VALUES (v_flow, f->>'name', f->>'state', f->>'intention', f->'inputs', f->'meta',
            (f->>'created_at')::TIMESTAMPTZ, (f->>'updated_at')::TIMESTAMPTZ, v_version)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'flow % already exists', v_flow USING ERRCODE = 'BT006';
    END IF;
    INSERT INTO atoms (flow_id, name, position, kind, state, intention, attempt, round, result,
                       failure, revert_failure, retry_history, retry_at, progress, started_at,
                       finished_at, model_version)
    SELECT v_flow, a->>'name', t.pos - 1, a->>'kind', a->>'state', a->>'intention',
           (a->>'attempt')::BIGINT, (a->>'round')::BIGINT, a->'result', a->'failure',
           a->'revert_failure', a->'retry_history', (a->>'retry_at')::TIMESTAMPTZ,
           (a->>'progress')::DOUBLE PRECISION, (a->>'started_at')::TIMESTAMPTZ,
           (a->>'finished_at')::TIMESTAMPTZ, v_version
      FROM jsonb_array_elements(payload->'atoms') WITH ORDINALITY AS t(a, pos);
    RETURN 0;
END
$$;

-- batch: {"flow": uuid, "at": timestamp, "fence": fence?, "model_version": n, "writes": [
--   {"kind": "flow", "from": s, "to": s, "intention": s, "legal": b, "change": change?}
--   {"kind": "atom", "expected_state": s, "expected_attempt": n, "record": atom, "legal": b,
--    "change": change?} ]}
-- change: {"subject": "flow"|"atom", "atom": name?, "from": s, "to": s, "attempt": n?}
-- Returns the flow's last history seq.
CREATE FUNCTION commit_batch(batch JSONB) RETURNS BIGINT
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_flow      UUID        := (batch->>'flow')::UUID;
    v_at        TIMESTAMPTZ := (batch->>'at')::TIMESTAMPTZ;
    v_version   BIGINT      := (batch->>'model_version')::BIGINT;
    v_state     TEXT;
    v_intention TEXT;
    v_seq       BIGINT;
    v_index     INTEGER     := 0;
    w           JSONB;
    a           JSONB;
    c           JSONB;
    cur_state   TEXT;
    cur_attempt BIGINT;
BEGIN
    PERFORM check_fence(batch->'fence');
    -- Locking the flow row serialises the commits of one flow.
    SELECT state, intention INTO v_state, v_intention FROM flows WHERE id = v_flow FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'flow % not found', v_flow USING ERRCODE = 'BT001';
    END IF;
    SELECT coalesce(max(seq), 0) INTO v_seq FROM history WHERE flow_id = v_flow;

    FOR w IN SELECT value FROM jsonb_array_elements(batch->'writes') LOOP
        IF w->>'kind' = 'flow' THEN
            IF v_state IS DISTINCT FROM w->>'from' THEN
                RAISE EXCEPTION 'conflict in flow %: flow is %, expected %',
                    v_flow, v_state, w->>'from'
                    USING ERRCODE = 'BT004',
                          DETAIL = jsonb_build_object('index', v_index, 'state', v_state,
                                                      'attempt', 0)::TEXT;
            END IF;
            IF NOT (w->>'legal')::BOOLEAN THEN
                RAISE EXCEPTION 'illegal transition in flow %', v_flow
                    USING ERRCODE = 'BT005',
                          DETAIL = jsonb_build_object('index', v_index)::TEXT;
            END IF;
            v_state := w->>'to';
            v_intention := w->>'intention';
        ELSE
            a := w->'record';
            UPDATE atoms
               SET kind = a->>'kind', state = a->>'state', intention = a->>'intention',
                   attempt = (a->>'attempt')::BIGINT, round = (a->>'round')::BIGINT,
                   result = a->'result', failure = a->'failure',
                   revert_failure = a->'revert_failure', retry_history = a->'retry_history',
                   retry_at = (a->>'retry_at')::TIMESTAMPTZ,
                   progress = (a->>'progress')::DOUBLE PRECISION,
                   started_at = (a->>'started_at')::TIMESTAMPTZ,
                   finished_at = (a->>'finished_at')::TIMESTAMPTZ,
                   model_version = v_version
             WHERE flow_id = v_flow AND name = a->>'name'
               AND state = w->>'expected_state'
               AND attempt = (w->>'expected_attempt')::BIGINT
               AND (w->>'legal')::BOOLEAN;
            IF NOT FOUND THEN
                SELECT state, attempt INTO cur_state, cur_attempt
                  FROM atoms WHERE flow_id = v_flow AND name = a->>'name';
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'flow % has no atom named %', v_flow, a->>'name'
                        USING ERRCODE = 'BT002',
                              DETAIL = jsonb_build_object('index', v_index)::TEXT;
                END IF;
                IF cur_state IS DISTINCT FROM w->>'expected_state'
                   OR cur_attempt IS DISTINCT FROM (w->>'expected_attempt')::BIGINT THEN
                    RAISE EXCEPTION 'conflict in flow %: atom % is % at attempt %',
                        v_flow, a->>'name', cur_state, cur_attempt
                        USING ERRCODE = 'BT004',
                              DETAIL = jsonb_build_object('index', v_index, 'state', cur_state,
                                                          'attempt', cur_attempt)::TEXT;
                END IF;
                RAISE EXCEPTION 'illegal transition in flow %: atom %', v_flow, a->>'name'
                    USING ERRCODE = 'BT005',
                          DETAIL = jsonb_build_object('index', v_index)::TEXT;
            END IF;
        END IF;

        c := w->'change';
        IF c IS NOT NULL AND jsonb_typeof(c) = 'object' THEN
            v_seq := v_seq + 1;
            INSERT INTO history (flow_id, seq, at, subject, atom, from_state, to_state, attempt)
            VALUES (v_flow, v_seq, v_at, c->>'subject', c->>'atom', c->>'from', c->>'to',
                    (c->>'attempt')::BIGINT);
        END IF;
        v_index := v_index + 1;
    END LOOP;

    UPDATE flows SET state = v_state, intention = v_intention, updated_at = v_at
     WHERE id = v_flow;
    RETURN v_seq;
END
$$;

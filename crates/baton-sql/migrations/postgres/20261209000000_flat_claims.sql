-- Claims whose cost does not grow with the backlog or with the jobs that ended (issue 18).
-- Keep logically in step with ../sqlite/20261209000000_flat_claims.sql.
--
-- What a claim cost was measured with EXPLAIN (ANALYZE, BUFFERS) while a backlog of 50 000
-- jobs drained (docs/performance.md, "Backlogs"). Two things made it grow:
--
-- 1. The plan. On a table never analyzed (the server's autovacuum off), or analyzed while the
--    queue was empty, the planner believes a handful of jobs wait; it then reads every waiting
--    job through a bitmap scan and sorts them all (on disk past work_mem) to keep 4: a claim
--    read 1 100 buffers and sorted 4 MB at a 50 000-job backlog. The claim's choice of jobs
--    now lives in `claimable_jobs`, whose statements are planned with sorts and bitmap scans
--    ruled out wherever an index gives the order: the waiting jobs are walked along
--    `jobs_unclaimed` in claim order, and the walk stops at the `n`-th job it can take.
--    (A plain index scan also marks the entries of rows it finds dead, so the next claim
--    skips them without visiting the table; a bitmap scan never does.) JIT compilation is off
--    for them: the penalty that rules a sort out makes the plan's estimated cost huge, and
--    the server then compiled it, inlined and optimized, at every call (0.9 s a claim).
-- 2. Dead index entries. A claim moves its job out of `jobs_unclaimed`, an end moves it out
--    of `jobs_leased`, but the entries stay in the index until the table is vacuumed, at the
--    head of each walk: every claim walked past every job claimed since the last vacuum. The
--    board vacuums `jobs` itself when dead rows pile up (`PostgresJobBoard::with_vacuum`), and
--    these settings have the server's autovacuum (when it runs) do it after a fixed number
--    of dead rows instead of a fifth of the table.
--
-- A claim of the previous release does not use the function, and keeps working as it did.

ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE fences SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0
);

-- The jobs a claim takes: at most `n`, the best first (priority, then posting order), each
-- locked (`FOR UPDATE`, skipping rows other claims hold), among the waiting jobs and the
-- claimed jobs whose lease ran out, that the claimant offers (`factories` and `versions`,
-- parallel arrays: a factory, and the version it runs) and whose key, if any, no earlier
-- unfinished job holds.
CREATE FUNCTION claimable_jobs(n BIGINT, factories TEXT[], versions BIGINT[])
RETURNS TABLE (id UUID, priority INTEGER, seq BIGINT)
LANGUAGE plpgsql VOLATILE
-- What a claim takes (the default, 1 000 rows, had the claim's update join them to the table
-- by reading all of it, ended jobs and all).
ROWS 4
SET enable_sort = off
SET enable_bitmapscan = off
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH fresh AS (
        SELECT j.id, j.priority, j.seq FROM jobs j
         WHERE j.state = 'UNCLAIMED'
           AND EXISTS (SELECT 1 FROM unnest(factories, versions) o(f, v)
                        WHERE o.f = j.factory AND (j.version IS NULL OR o.v = j.version))
           AND (j.job_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM jobs k WHERE k.job_key = j.job_key
                   AND k.state IN ('UNCLAIMED', 'CLAIMED', 'PARKED') AND k.seq < j.seq))
         ORDER BY j.priority DESC, j.seq LIMIT n
         FOR UPDATE OF j SKIP LOCKED
    ), stale AS (
        SELECT j.id, j.priority, j.seq FROM jobs j
         WHERE j.state = 'CLAIMED' AND j.lease_expires_at <= (SELECT now_ms())
           AND EXISTS (SELECT 1 FROM unnest(factories, versions) o(f, v)
                        WHERE o.f = j.factory AND (j.version IS NULL OR o.v = j.version))
           AND (j.job_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM jobs k WHERE k.job_key = j.job_key
                   AND k.state IN ('UNCLAIMED', 'CLAIMED', 'PARKED') AND k.seq < j.seq))
         ORDER BY j.priority DESC, j.seq LIMIT n
         FOR UPDATE OF j SKIP LOCKED
    )
    SELECT c.id, c.priority, c.seq FROM (SELECT * FROM fresh UNION ALL SELECT * FROM stale) c
     ORDER BY c.priority DESC, c.seq LIMIT n;
END
$$;

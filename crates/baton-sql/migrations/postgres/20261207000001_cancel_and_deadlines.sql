-- Cancel requests, supersede by key, and job deadlines. Keep logically identical to
-- ../sqlite/20261207000001_cancel_and_deadlines.sql.
--
-- It comes in the same release as 20261206000000_versions_and_parking, so the only processes of
-- an earlier release that may still run are those that migration already stops from claiming
-- (its trigger is left as it is). What they still do is unchanged by this one: they read and
-- write the columns they know, and post jobs without the new ones (no deadline, superseding
-- nothing).

ALTER TABLE jobs
    -- When the job's run must be done by, in milliseconds since the Unix epoch (NULL: none).
    ADD COLUMN deadline BIGINT,
    -- The earlier jobs of its key that posting it superseded (NULL: none).
    ADD COLUMN supersedes UUID[];

-- `cancel` now holds 'REVERT' or 'SUSPEND' (it has no CHECK constraint; the boards refuse
-- anything else as corrupt when they read it).

-- What an owner polls to learn of cancel requests on the jobs it holds: a few rows at most.
CREATE INDEX jobs_cancel_requests ON jobs (owner, seq)
    WHERE state = 'CLAIMED' AND cancel IS NOT NULL;

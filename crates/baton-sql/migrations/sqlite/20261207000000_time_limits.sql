-- baton 0.4: time limits. A run may carry a deadline (and what happens at it), and a task's
-- running `execute` or `revert` the deadline of its attempt, so that an engine resuming the run
-- counts from the original start. Keep logically identical to
-- ../postgres/20261207000000_time_limits.sql.
--
-- Safe while processes of the previous release still run: the columns are new and nullable,
-- and that release neither reads nor writes them (it can no longer claim jobs anyway, see
-- 20261206000000_versions_and_parking.sql). Atoms' deadlines are written by steps, as every
-- later change of an atom is; the column holds what a run's creation gives.

ALTER TABLE flows ADD COLUMN deadline TEXT;
ALTER TABLE flows ADD COLUMN deadline_then TEXT;  -- 'REVERT' or 'FAIL', set with deadline
ALTER TABLE atoms ADD COLUMN deadline TEXT;

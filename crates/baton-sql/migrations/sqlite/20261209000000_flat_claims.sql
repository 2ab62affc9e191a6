-- Claims whose cost does not grow with the backlog or with the jobs that ended (issue 18).
-- Keep logically in step with ../postgres/20261209000000_flat_claims.sql.
--
-- SQLite keeps no dead index entries (a row that leaves an index leaves it at once), so what
-- made a claim grow here was the plan alone: given `state IN ('UNCLAIMED', 'CLAIMED')`, the
-- planner chose `jobs_claimable (state, priority, seq)`, read every waiting job through it and
-- sorted them all in a temporary b-tree to keep the first few, where `jobs_open` walks them in
-- claim order and stops at the first it can take. The claim now names `jobs_open` (`INDEXED
-- BY`), and `jobs_claimable`, which lured the planner away from it, gives way to a narrower
-- index of jobs by state in posting order, which purges use to find the jobs that ended.
--
-- A claim of the previous release keeps working (it plans as before, along the new index).

DROP INDEX jobs_claimable;
CREATE INDEX jobs_by_state ON jobs (state, seq);

-- Two indexes of `jobs` that every post, claim and end wrote and no statement needs, as on
-- PostgreSQL, which dropped `jobs_claimable` in ../postgres/20251125000000_claim_paths.sql and
-- has kept `jobs_by_key` partial since ../postgres/20250701000000_jobs.sql.
--
-- `jobs_claimable` (state, priority, seq) was the claim's index until claims walked
-- `jobs_open`; reads by state go along `jobs_by_state` (state, seq). `jobs_by_key` held every
-- job, most of them without a key; the listing by key reads only jobs that have one. Each
-- index is a b-tree a write reads down and changes: on a database of a million ended jobs,
-- three or four pages deep, read again after every other process's write (SQLite empties a
-- connection's page cache when the file changed under it).
--
-- Safe while processes of the previous release still run: none names either index.

DROP INDEX jobs_claimable;
DROP INDEX jobs_by_key;
CREATE INDEX jobs_by_key ON jobs (job_key, seq) WHERE job_key IS NOT NULL;

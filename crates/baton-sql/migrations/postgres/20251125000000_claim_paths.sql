-- Claims look for work along two paths, each with an index of its own: unclaimed jobs in
-- claim order (priority, then posting order), and claimed jobs whose lease has run out, by
-- lease. An empty claim, the usual answer when idle conductors are all woken by one posted
-- job, then reads no row at all, where the index of open jobs made it visit every claimed
-- job to check its lease. The two indexes replace the open-jobs and by-state ones, so a job's
-- updates keep no more index entries than before.
--
-- PostgreSQL only: the SQLite board's claim is one statement over its own indexes and is
-- unchanged.

CREATE INDEX jobs_unclaimed ON jobs (priority DESC, seq) WHERE state = 'UNCLAIMED';
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'CLAIMED';
DROP INDEX jobs_open;
DROP INDEX jobs_claimable;

-- Claims look for work along two paths, each with an index of its own: unclaimed jobs in
-- claim order (priority, then posting order), and claimed jobs by lease, so that the claims
-- whose lease has run out are a range of it. An empty claim, the usual answer when idle
-- conductors are all woken by one posted job, then reads next to nothing, where the index of
-- open jobs made it visit every claimed job to check its lease.
--
-- The two indexes replace the open-jobs and by-state ones. The price: a heartbeat changes an
-- indexed column (the lease), so it writes new index entries where it used to update the row
-- in place; a heartbeat comes every few seconds per job, a claim many times a second.
--
-- PostgreSQL only: the SQLite board's claim is one statement over its own indexes and is
-- unchanged.

CREATE INDEX jobs_unclaimed ON jobs (priority DESC, seq) WHERE state = 'UNCLAIMED';
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'CLAIMED';
DROP INDEX jobs_open;
DROP INDEX jobs_claimable;

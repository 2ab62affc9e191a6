-- Cancel requests, supersede by key, and job deadlines. Keep logically identical to
-- ../postgres/20261207000001_cancel_and_deadlines.sql, which says why it is safe while
-- processes of the previous release still run.

ALTER TABLE jobs ADD COLUMN deadline INTEGER;  -- milliseconds since the Unix epoch
ALTER TABLE jobs ADD COLUMN supersedes TEXT;   -- JSON array of job ids

-- `cancel` now holds 'REVERT' or 'SUSPEND'.
CREATE INDEX jobs_cancel_requests ON jobs (owner, seq)
    WHERE state = 'CLAIMED' AND cancel IS NOT NULL;

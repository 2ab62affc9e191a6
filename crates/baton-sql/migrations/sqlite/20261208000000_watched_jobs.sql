-- Jobs someone waits for. Keep logically identical to
-- ../postgres/20261208000000_watched_jobs.sql, which says what the mark is for. On SQLite
-- nothing reads it yet (ends made in this process wake its waiters directly, and no news
-- crosses processes): it is kept so that the two schemas stay the same.

ALTER TABLE jobs ADD COLUMN watched INTEGER NOT NULL DEFAULT 0;

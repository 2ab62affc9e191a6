-- Jobs someone waits for. Keep logically identical to
-- ../sqlite/20261208000000_watched_jobs.sql.
--
-- A job whose end someone waits for (a `JobHandle`, `JobBoard::wait_for_end`) is marked
-- `watched`, when it is posted or by the wait's first look, and the statements that end a job
-- (consume, also in a flow's last step; park; trash) send a `NOTIFY` on the board's channel
-- only for marked jobs: nobody pays for news nobody hears.
--
-- A constant default: adding the column rewrites no row. Processes of the previous release
-- still running post jobs unmarked and end jobs without a `NOTIFY`; a wait on a job they end
-- sees the end when it next looks (its fallback poll).

ALTER TABLE jobs ADD COLUMN watched BOOLEAN NOT NULL DEFAULT false;

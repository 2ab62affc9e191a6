-- Claims and listings of unfinished jobs look only at jobs that are not finished: keep them in
-- an index of their own, so the cost of a claim does not grow with the history of finished
-- jobs. Keep logically identical to ../postgres/20250702000000_open_jobs.sql.

CREATE INDEX jobs_open ON jobs (priority DESC, seq) WHERE state IN ('UNCLAIMED', 'CLAIMED');
CREATE INDEX jobs_open_by_key ON jobs (job_key, seq)
    WHERE job_key IS NOT NULL AND state IN ('UNCLAIMED', 'CLAIMED');

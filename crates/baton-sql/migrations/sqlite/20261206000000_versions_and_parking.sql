-- baton 0.4: runs pinned to a versioned definition, claims that take only what the claimant can
-- run, and parked jobs. Keep logically identical to
-- ../postgres/20261206000000_versions_and_parking.sql, which says why each change is safe while
-- processes of the previous release still run.

ALTER TABLE flows ADD COLUMN factory TEXT;
ALTER TABLE flows ADD COLUMN factory_version INTEGER;
ALTER TABLE flows ADD COLUMN fingerprint TEXT;
CREATE INDEX flows_by_factory ON flows (factory, factory_version, seq) WHERE factory IS NOT NULL;

ALTER TABLE jobs ADD COLUMN version INTEGER;
ALTER TABLE jobs ADD COLUMN stalled_claims INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cancel TEXT;
ALTER TABLE jobs ADD COLUMN claim_token INTEGER;

UPDATE jobs SET version = 1 WHERE version IS NULL AND attempts > 0;

CREATE INDEX jobs_keyed_open ON jobs (job_key, seq)
    WHERE job_key IS NOT NULL AND state IN ('UNCLAIMED', 'CLAIMED', 'PARKED');
DROP INDEX jobs_open_by_key;

ALTER TABLE conductors ADD COLUMN offer TEXT;  -- JSON array of [factory, version] pairs

CREATE TRIGGER jobs_claims_need_this_release BEFORE UPDATE OF token ON jobs
    WHEN NEW.state = 'CLAIMED' AND NEW.token <> OLD.token AND NEW.claim_token IS NOT NEW.token
BEGIN
    SELECT RAISE(ABORT, 'baton: this process is older than the database schema and may not claim jobs (claims need baton 0.4 or later): upgrade it');
END;

-- baton 0.4: runs pinned to a versioned definition, claims that take only what the claimant can
-- run, and parked jobs. Keep logically identical to
-- ../sqlite/20261206000000_versions_and_parking.sql.
--
-- Processes of the previous release may still be running when this is applied (the first
-- process of the new release to open the database applies it). What they do must stay right:
--
-- - They post jobs without a version: the new columns have defaults, and an unpinned job is
--   pinned by its first claim.
-- - They finish the runs they hold: their steps, heartbeats and consumes are unchanged.
-- - They must not claim: they would take a job of any factory and version and run it with the
--   only definition they have. A trigger refuses their claims (a claim of this release also
--   writes `claim_token`), so they log the refusal and claim nothing more.

-- What a run was built with (NULL for runs of earlier releases).
ALTER TABLE flows
    ADD COLUMN factory TEXT,
    ADD COLUMN factory_version BIGINT,
    ADD COLUMN fingerprint TEXT;
CREATE INDEX flows_by_factory ON flows (factory, factory_version, seq) WHERE factory IS NOT NULL;

ALTER TABLE jobs
    -- The factory version the job's run is pinned to (NULL until its first claim, unless
    -- posted with one).
    ADD COLUMN version BIGINT,
    -- Claims in a row that ended neither with progress reported nor with a hand-back.
    ADD COLUMN stalled_claims BIGINT NOT NULL DEFAULT 0,
    -- A request to cancel the run ('REVERT'), for whoever runs it next.
    ADD COLUMN cancel TEXT,
    -- The token a claim of this release set; see the trigger below.
    ADD COLUMN claim_token BIGINT;

-- A job an earlier release claimed has a run built by the only version it knew: version 1.
UPDATE jobs SET version = 1 WHERE version IS NULL AND attempts > 0;

-- A parked job holds its key like a waiting or claimed one.
CREATE INDEX jobs_keyed_open ON jobs (job_key, seq)
    WHERE job_key IS NOT NULL AND state IN ('UNCLAIMED', 'CLAIMED', 'PARKED');
DROP INDEX jobs_open_by_key;

-- What each conductor offers: a JSON array of [factory, version] pairs.
ALTER TABLE conductors ADD COLUMN offer JSONB;

CREATE FUNCTION refuse_claims_of_earlier_releases() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'baton: this process is older than the database schema and may not claim jobs (claims need baton 0.4 or later): upgrade it'
        USING ERRCODE = 'BT001';
END
$$;

-- Only a claim moves a job to CLAIMED with a new token; a claim of this release also sets
-- claim_token to that token. The condition is checked before the function is called, so other
-- updates pay nothing.
CREATE TRIGGER jobs_claims_need_this_release BEFORE UPDATE OF token ON jobs
    FOR EACH ROW
    WHEN (NEW.state = 'CLAIMED' AND NEW.token <> OLD.token
          AND NEW.claim_token IS DISTINCT FROM NEW.token)
    EXECUTE FUNCTION refuse_claims_of_earlier_releases();

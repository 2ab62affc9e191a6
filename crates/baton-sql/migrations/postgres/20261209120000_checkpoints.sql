-- Checkpoints of a run's state in the step log. Keep logically identical to
-- ../sqlite/20261209120000_checkpoints.sql, which says what they are.
--
-- Constant defaults: adding the columns rewrites no row.

ALTER TABLE flows ADD COLUMN checkpoint_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN checkpoint_at TIMESTAMPTZ;

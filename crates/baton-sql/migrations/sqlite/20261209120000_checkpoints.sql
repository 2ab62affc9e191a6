-- Checkpoints of a run's state in the step log. Keep logically identical to
-- ../postgres/20261209120000_checkpoints.sql.
--
-- Every so many steps (see baton-sql's src/steplog.rs, "Checkpoints"), the step that is due
-- also rewrites, in its own transaction, the `atoms` rows of the atoms changed since the last
-- checkpoint to their records as of that step, and records the step's number here. A load
-- then reads the atoms and only the steps after `checkpoint_seq`; the log keeps every step (the
-- history is still read from all of them).
--
-- `checkpoint_at` is the latest time of the steps up to the checkpoint (a load takes the run's
-- `updated_at` as the latest of its row's, this and the later steps'); NULL while there is no
-- checkpoint.
--
-- A run written before this migration has `checkpoint_seq` 0 and loads from its whole log, as
-- before. A baton of an earlier release reading a run with a checkpoint replays the whole log
-- over the rewritten rows, which gives the same state: a step holds each atom's whole record.

ALTER TABLE flows ADD COLUMN checkpoint_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN checkpoint_at TEXT;

-- Indexes for listings that page. Keep logically identical to
-- ../sqlite/20261209000010_listing_indexes.sql.
--
-- `baton flows list` and `baton jobs list` (`Store::list_flows`, `JobBoard::list`) read one
-- page at a time, after a position given by the previous page (keyset pagination on `seq`).
-- A page is then one range of one index, read in order and stopped after the page's rows, if
-- every filter has an index that leads with the filtered column and ends with `seq`. The
-- indexes below complete the set; the others exist already:
--   flows: by state (flows_by_state), name (flows_by_name), factory and version
--          (flows_by_factory), no filter (the primary key);
--   jobs:  by key (jobs_by_key), no filter (the primary key).
--
-- The price: each index is written when a row is inserted, and when an update changes one
-- of its columns (a run's state, a job's state or owner) it gets a new entry. A run changes
-- state a few times; a job on a claim and at its end.

-- Runs of a factory, whatever their version (flows_by_factory has the version before seq).
CREATE INDEX flows_by_factory_seq ON flows (factory, seq) WHERE factory IS NOT NULL;
-- Runs of a version, whatever their factory.
CREATE INDEX flows_by_version ON flows (factory_version, seq) WHERE factory_version IS NOT NULL;
-- Unfinished runs (`--stranded`, `FlowQuery::unfinished`): few among many ended ones. The
-- predicate is the one the listing writes, word for word, so both planners match it.
CREATE INDEX flows_unfinished ON flows (seq) WHERE state NOT IN ('SUCCESS', 'FAILURE', 'REVERTED');
-- Jobs by state in posting order (the claim indexes order by priority first).
CREATE INDEX jobs_by_state ON jobs (state, seq);
-- Jobs by owner in posting order (jobs_cancel_requests holds only claimed jobs with a request).
CREATE INDEX jobs_by_owner ON jobs (owner, seq) WHERE owner IS NOT NULL;

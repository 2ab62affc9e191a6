-- A step that moves its flow updates the flow's row in the same statement that appends it
-- (a data-modifying CTE, see baton-sql's src/postgres.rs), instead of through the trigger of
-- 20250801000000_step_log.sql.
--
-- The trigger cost every append, also the many that do not move the flow: a table with an
-- AFTER ROW trigger makes each insert set up the trigger machinery even when the trigger's
-- WHEN clause is false. Measured with pgbench, one client, prepared statements: appending a
-- step-sized row ran at 0.93 of a one-column insert's rate without the trigger and at
-- 0.84-0.89 with it; and the appends that do move the flow paid a PL/pgSQL call (with its
-- search_path set and restored) on top.
--
-- A baton older than this migration refuses the database (it does not know this migration),
-- so no writer relies on the trigger once it is gone.
--
-- PostgreSQL only: SQLite keeps its trigger, which costs it little.

DROP TRIGGER steps_move_flow ON steps;
DROP FUNCTION steps_move_flow();

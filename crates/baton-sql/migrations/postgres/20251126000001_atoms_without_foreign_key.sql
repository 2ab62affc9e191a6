-- Atoms rows no longer reference their flow's row by a foreign key.
--
-- A run's atoms are inserted only in the statement that inserts its flow's row (and only if
-- that insert happened), and baton never deletes a run, so the key protected nothing; it cost
-- every creation a check per atom (a row trigger that share-locks the flow's row: a lock
-- written to the WAL). The step log has had no foreign key from the start, for the same
-- reason. Measured: about 7 % more one-task jobs a second through a fleet of 4 conductors.
--
-- Whoever deletes runs by hand deletes their atoms, steps and history rows too.
--
-- PostgreSQL only: SQLite cannot drop a constraint without rebuilding the table, and its
-- check is a cheap lookup.

ALTER TABLE atoms DROP CONSTRAINT atoms_flow_id_fkey;

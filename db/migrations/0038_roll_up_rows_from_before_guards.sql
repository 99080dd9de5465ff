-- cicd-db: no-transaction
-- Every rollup row checked, and rolled up again where it differs from its runs: for
-- those written before the guards of 0033 and 0034 existed. A run that finished
-- after 0032 got its row when it finished; a finished stage or job of it changed by
-- hand before 0033 or 0034 committed (an upgrade retried behind a writer's lock, or
-- stopped between them) wrote nothing, and the backfill (0035) fills only runs
-- without a row: the row kept the old values. Which rows those are cannot be told
-- reliably (a dump and restore renumbers the transaction ids PostgreSQL stamps on
-- rows, and they wrap around), so every row is checked: read, and compared with what
-- it should hold (0037); only a row that differs is locked and written.
--
-- Live: the backfill's procedure (0037), in batches of 2,000 runs by id, each its
-- own transaction, reading every run's stages and jobs once, as 0035 did. A batch
-- that meets a busy row waits at most lock_timeout and tries again. Idempotent and
-- resumable: `CALL cicd_db_backfill_run_rollups(every_row => TRUE)` at any time.
SET lock_timeout = '1s';
SET statement_timeout = '0';
CALL cicd_db_backfill_run_rollups(every_row => TRUE);

-- cicd-db: no-transaction
-- pipeline_executions: rows the plan left without a status become PENDING, in batches of
-- about 10,000 rows, each its own transaction (procedure of 0006). No table lock
-- that stops a writer; a writer touching a row of the current batch waits for
-- its commit, milliseconds. Idempotent and resumable: run it again at any time.
-- One statement (CALL) runs the whole walk, hence no statement_timeout; each
-- batch waits at most lock_timeout for a busy row, then retries.
SET lock_timeout = '1s';
SET statement_timeout = '0';
CALL cicd_db_backfill_status('pipeline_executions');

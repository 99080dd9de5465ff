-- cicd-db: no-transaction
-- The rollup rows (0032) of the runs recorded before it, in batches of 2,000
-- runs by id, each its own transaction (the procedure of 0032). No table lock;
-- a batch reads its runs' stages and jobs and writes their rows, about a second
-- each. Idempotent and resumable: run it again at any time. Until a run has its
-- row, insights reads it from its stages and jobs: the figures are the same.
-- One statement (CALL) runs the whole walk, hence no statement_timeout; each
-- batch waits at most lock_timeout for a busy row, then retries.
SET lock_timeout = '1s';
SET statement_timeout = '0';
CALL cicd_db_backfill_run_rollups();

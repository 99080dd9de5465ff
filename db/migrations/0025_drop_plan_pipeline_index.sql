-- cicd-db: no-transaction
-- The plan's (pipeline_name, run_number) index duplicates the unique key of 0017.
-- Live: dropped CONCURRENTLY, under SHARE UPDATE EXCLUSIVE, which lets reads and
-- writes through; it waits for older transactions, so it may wait a while, but
-- not forever.
SET lock_timeout = '1min';
SET statement_timeout = '0';
DROP INDEX CONCURRENTLY IF EXISTS idx_pipeline_executions;

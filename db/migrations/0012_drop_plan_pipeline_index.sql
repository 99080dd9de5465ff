-- cicd-db: no-transaction
-- The plan's (pipeline_name, run_number) index duplicates the unique key of 0006.
-- A concurrent build or drop waits for older transactions; it blocks no reads or
-- writes meanwhile, so it may wait a while, but not forever.
SET lock_timeout = '1min';
SET statement_timeout = '0';
DROP INDEX CONCURRENTLY IF EXISTS idx_pipeline_executions;

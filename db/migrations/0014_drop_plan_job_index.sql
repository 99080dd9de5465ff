-- cicd-db: no-transaction
-- The plan's (stage_execution_id, job_name) index duplicates the unique key of 0009.
-- A concurrent build or drop waits for older transactions; it blocks no reads or
-- writes meanwhile, so it may wait a while, but not forever.
SET lock_timeout = '1min';
SET statement_timeout = '0';
DROP INDEX CONCURRENTLY IF EXISTS idx_job_executions;

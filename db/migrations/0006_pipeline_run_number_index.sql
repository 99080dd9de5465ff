-- cicd-db: no-transaction
-- (pipeline_name, run_number) unique, built without blocking writes; 0010 makes
-- it the constraint. It also serves "newest runs of a pipeline" (read backwards).
-- A concurrent build or drop waits for older transactions; it blocks no reads or
-- writes meanwhile, so it may wait a while, but not forever.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS pipeline_executions_pipeline_run_key
ON pipeline_executions (pipeline_name, run_number);

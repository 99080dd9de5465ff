-- cicd-db: no-transaction
-- (pipeline_name, run_number) unique; 0024 makes it the constraint. It also serves
-- "newest runs of a pipeline" (read backwards).
-- Live: built CONCURRENTLY, under SHARE UPDATE EXCLUSIVE, which lets reads and
-- writes through; it waits for older transactions, so it may wait a while, but
-- not forever. Costs CPU and I/O while it builds.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS pipeline_executions_pipeline_run_key
ON pipeline_executions (pipeline_name, run_number);

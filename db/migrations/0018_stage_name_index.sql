-- cicd-db: no-transaction
-- A stage name appears once per run; 0023 makes it the constraint.
-- Live: built CONCURRENTLY, under SHARE UPDATE EXCLUSIVE, which lets reads and
-- writes through; it waits for older transactions, so it may wait a while, but
-- not forever. Costs CPU and I/O while it builds.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS stage_executions_run_stage_name_key
ON stage_executions (pipeline_execution_id, stage_name);

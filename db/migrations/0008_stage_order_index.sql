-- cicd-db: no-transaction
-- An execution order appears once per run; built without blocking writes, constraint in 0010.
-- A concurrent build or drop waits for older transactions; it blocks no reads or
-- writes meanwhile, so it may wait a while, but not forever.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS stage_executions_run_order_key
ON stage_executions (pipeline_execution_id, execution_order);

-- cicd-db: no-transaction
-- "Runs still active": a small partial index, only PENDING and RUNNING runs.
-- A concurrent build or drop waits for older transactions; it blocks no reads or
-- writes meanwhile, so it may wait a while, but not forever.
SET lock_timeout = '1min';
SET statement_timeout = '0';
CREATE INDEX CONCURRENTLY IF NOT EXISTS pipeline_executions_active
ON pipeline_executions (pipeline_name, start_time)
WHERE status IN ('PENDING', 'RUNNING');
